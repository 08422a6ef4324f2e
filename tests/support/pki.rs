//! A test certificate authority: a CA made for one test, and the server and client
//! certificates it signs (ECDSA P-256), written as PEM files into the test's folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`; its certificate is written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Tidings test CA {name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Pki {
            dir: dir.join(name),
            issuer: Issuer::new(params, key),
        }
        .created()
    }

    fn created(self) -> Pki {
        std::fs::create_dir_all(&self.dir).unwrap();
        self
    }

    /// The CA's certificate file.
    pub fn ca(&self) -> PathBuf {
        let name = self.dir.file_name().unwrap().to_string_lossy().to_string();
        self.dir.with_file_name(format!("{name}-ca.pem"))
    }

    /// A certificate for `names` (DNS names or IP addresses), valid from yesterday for a
    /// year, or expired since yesterday when `expired`.
    pub fn issue(&self, stem: &str, names: &[&str], expired: bool) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.distinguished_name = dn;
        let day = time::Duration::days(1);
        let now = time::OffsetDateTime::now_utc();
        if expired {
            params.not_before = now - day * 30;
            params.not_after = now - day;
        } else {
            params.not_before = now - day;
            params.not_after = now + day * 365;
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pair.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        pair
    }
}
