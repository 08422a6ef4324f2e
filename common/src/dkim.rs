//! DKIM signing of outbound mail (RFC 6376, with rsa-sha256 and RFC 8463 ed25519-sha256),
//! and the DNS records the keys are published as. Keys come from PEM files
//! (`TIDINGS_DKIM_KEYS`); every email is signed with each key.

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::config::MailAuth;

/// The headers signed: those a reader sees and acts on, the thread, and the unsubscribe pair
/// (RFC 8058 asks for both to be signed). One that an email lacks is signed as absent, so it
/// cannot be added on the way.
pub const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// The largest key file read (an RSA-4096 PEM is about 3.3 kB).
const KEY_FILE_MAX: u64 = 64 << 10;

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One key, ready to sign.
struct Key {
    selector: String,
    signer: Signer,
    /// The DNS TXT record that publishes it.
    record: String,
    /// The published key (`p=`) in every form a record may hold it (base64 of the DER).
    published: Vec<String>,
}

/// The signing keys of this deployment.
pub struct Dkim {
    domain: String,
    keys: Vec<Key>,
}

/// A key's DNS record and what it should contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// `<selector>._domainkey.<domain>`.
    pub name: String,
    /// The TXT record to publish.
    pub record: String,
    /// Every encoding of the public key a record may carry (`p=`).
    pub accepted: Vec<String>,
}

impl Dkim {
    /// The configured keys, read and checked; `None` when signing is off. `from_domain` is the
    /// domain of `TIDINGS_MAIL_FROM`, the signing domain unless `TIDINGS_DKIM_DOMAIN` says
    /// otherwise. An unreadable or unsupported key is an error naming the file and why.
    pub fn from_config(auth: &MailAuth, from_domain: &str) -> Result<Option<Dkim>, String> {
        if auth.dkim_keys.is_empty() {
            return Ok(None);
        }
        let domain = auth
            .dkim_domain
            .clone()
            .unwrap_or_else(|| from_domain.to_ascii_lowercase());
        let mut keys = Vec::new();
        for file in &auth.dkim_keys {
            let named = |e: &dyn std::fmt::Display| {
                format!("TIDINGS_DKIM_KEYS: {}: {e}", file.path.display())
            };
            // A key is a small regular file; anything else (a device, a directory, a huge
            // file) is refused before it is read.
            let meta = std::fs::metadata(&file.path).map_err(|e| named(&e))?;
            if !meta.is_file() || meta.len() > KEY_FILE_MAX {
                return Err(named(&format!(
                    "not a key file (a regular file of at most {KEY_FILE_MAX} bytes)"
                )));
            }
            let pem = std::fs::read(&file.path).map_err(|e| named(&e))?;
            let key = Key::from_pem(&pem, &file.selector, &domain).map_err(|e| named(&e))?;
            keys.push(key);
        }
        Ok(Some(Dkim { domain, keys }))
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `message` with a DKIM-Signature header per key in front of it.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut headers = String::new();
        for key in &self.keys {
            let signature = match &key.signer {
                Signer::Rsa(s) => s.sign(message),
                Signer::Ed25519(s) => s.sign(message),
            }
            .map_err(|e| format!("DKIM signing with selector {}: {e}", key.selector))?;
            headers.push_str(&signature.to_header());
        }
        let mut signed = Vec::with_capacity(headers.len() + message.len());
        signed.extend_from_slice(headers.as_bytes());
        signed.extend_from_slice(message);
        Ok(signed)
    }

    /// The DNS records the keys must be published as.
    pub fn published(&self) -> Vec<PublishedKey> {
        self.keys
            .iter()
            .map(|k| PublishedKey {
                name: format!("{}._domainkey.{}", k.selector, self.domain),
                record: k.record.clone(),
                accepted: k.published.clone(),
            })
            .collect()
    }
}

impl Key {
    fn from_pem(pem: &[u8], selector: &str, domain: &str) -> Result<Key, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key ({e})"))?;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let pkcs8 = match &der {
            PrivateKeyDer::Pkcs8(p) => Some(p.secret_pkcs8_der().to_vec()),
            _ => None,
        };
        if let Ok(rsa) = RsaKey::<Sha256>::from_key_der(der.clone_key()) {
            let pkcs1 = rsa.public_key();
            let spki = rsa_spki(&pkcs1);
            let signer = DkimSigner::from_key(rsa)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS);
            return Ok(Key {
                selector: selector.to_string(),
                signer: Signer::Rsa(signer),
                record: format!("v=DKIM1; k=rsa; p={}", b64(&spki)),
                published: vec![b64(&spki), b64(&pkcs1)],
            });
        }
        let Some(pkcs8) = pkcs8 else {
            return Err("neither an RSA key nor a PKCS#8 Ed25519 key".into());
        };
        // openssl writes PKCS#8 v1 (no public key inside); the public key is derived then.
        let ed = Ed25519Key::from_pkcs8_der(&pkcs8)
            .or_else(|_| Ed25519Key::from_pkcs8_maybe_unchecked_der(&pkcs8))
            .map_err(|e| format!("neither an RSA key nor an Ed25519 key ({e})"))?;
        let public = ed.public_key();
        let signer = DkimSigner::from_key(ed)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_HEADERS);
        Ok(Key {
            selector: selector.to_string(),
            signer: Signer::Ed25519(signer),
            record: format!("v=DKIM1; k=ed25519; p={}", b64(&public)),
            published: vec![b64(&public)],
        })
    }
}

/// A DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// The SubjectPublicKeyInfo of an RSA public key given as PKCS#1 (what `openssl` prints and
/// DNS records usually hold).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bits);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALGORITHM.len() + bits.len(), &mut out);
    out.extend_from_slice(&ALGORITHM);
    out.extend(bits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        let mut out = Vec::new();
        der_len(5, &mut out);
        der_len(270, &mut out);
        assert_eq!(out, vec![5, 0x82, 0x01, 0x0e]);
    }
}
