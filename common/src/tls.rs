//! TLS between the hosts of a fleet: the broker connection (`amqps://`, verified against
//! `TIDINGS_AMQP_CA`, with an optional client certificate) and the inbound listener's
//! STARTTLS (a certificate and key reloaded when their files change).
//!
//! Every TLS configuration here uses the `ring` provider explicitly, so no process-wide default
//! provider has to be installed and `aws-lc-rs` stays out of the build.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::secret::Secret;

/// A TLS client's settings with the `ring` provider, trusting `roots`, with no client
/// certificate: the mailer's `smtps://`, the database diagnosis and the tests use it.
pub fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// The most bytes a certificate or key file may hold (a chain of a few certificates is a few
/// kilobytes).
pub const PEM_FILE_MAX: u64 = 1 << 20;

/// The bytes of PEM file `path`, which must be a regular file of at most [`PEM_FILE_MAX`]
/// bytes: a device, a FIFO or a directory is refused before it is opened, so a wrong path
/// cannot make a start hang or fill memory. The error names the file.
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > PEM_FILE_MAX {
        return Err(format!(
            "{}: larger than {PEM_FILE_MAX} bytes, not a certificate or key file",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The certificates of PEM file `path`; an error names the file and what is wrong with it.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of PEM file `path` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: holds no usable PEM private key: {e}", path.display()))
}

/// The TLS settings of `amqps://` broker connections.
#[derive(Clone, Default)]
pub struct AmqpTls {
    /// PEM text of the CA certificates trusted for the broker, besides the system's roots.
    pub ca: Option<String>,
    /// PEM client certificate (chain) and key, for brokers that ask for one.
    pub client: Option<(Vec<u8>, Secret<Vec<u8>>)>,
}

impl std::fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTls")
            .field("ca", &self.ca.as_ref().map(|_| "<PEM>"))
            .field(
                "client",
                &self.client.as_ref().map(|_| "<certificate and key>"),
            )
            .finish()
    }
}

impl AmqpTls {
    /// Reads `ca` (a PEM file of CA certificates) and the client's certificate and key files;
    /// `Err` is (the variable, the reason).
    pub fn load(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, (&'static str, String)> {
        let ca = match ca {
            Some(path) => {
                read_certificates(path).map_err(|e| ("TIDINGS_AMQP_CA", e))?;
                let pem = read_pem_file(path).map_err(|e| ("TIDINGS_AMQP_CA", e))?;
                Some(String::from_utf8(pem).map_err(|_| {
                    (
                        "TIDINGS_AMQP_CA",
                        format!("{}: not a PEM text file", path.display()),
                    )
                })?)
            }
            None => None,
        };
        let client = match (client_cert, client_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    "TIDINGS_AMQP_CLIENT_KEY",
                    "a client certificate needs its key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "TIDINGS_AMQP_CLIENT_CERT",
                    "a client key needs its certificate".into(),
                ));
            }
            (Some(cert), Some(key)) => {
                read_certificates(cert).map_err(|e| ("TIDINGS_AMQP_CLIENT_CERT", e))?;
                read_private_key(key).map_err(|e| ("TIDINGS_AMQP_CLIENT_KEY", e))?;
                let read = |p: &Path, var| read_pem_file(p).map_err(|e| (var, e));
                Some((
                    read(cert, "TIDINGS_AMQP_CLIENT_CERT")?,
                    Secret::new(read(key, "TIDINGS_AMQP_CLIENT_KEY")?),
                ))
            }
        };
        Ok(AmqpTls { ca, client })
    }

    /// The settings as lapin takes them.
    pub fn lapin(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: self
                .client
                .as_ref()
                .map(|(cert, key)| lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: cert.clone(),
                    key: key.expose().clone(),
                }),
            cert_chain: self.ca.clone(),
        }
    }
}

/// Where an operator sets the trusted CA and the client certificate of one kind of
/// connection, for the hints of [`explain_refusal`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub ca: &'static str,
    pub client: &'static str,
}

/// The broker's settings.
pub const AMQP_SETTINGS: Settings = Settings {
    ca: "TIDINGS_AMQP_CA",
    client: "TIDINGS_AMQP_CLIENT_CERT and TIDINGS_AMQP_CLIENT_KEY",
};

/// The outbound SMTP server's settings.
pub const SMTP_SETTINGS: Settings = Settings {
    ca: "TIDINGS_SMTP_CA",
    client: "a client certificate (not supported for outbound SMTP)",
};

/// The database's settings (libpq's, in the URL).
pub const DATABASE_SETTINGS: Settings = Settings {
    ca: "sslrootcert in TIDINGS_DATABASE_URL",
    client: "sslcert and sslkey in TIDINGS_DATABASE_URL",
};

/// What a server's TLS refusal means, in words an operator can act on; `None` when `error`
/// is no certificate problem. `with_client_cert` tells whether a client certificate was
/// offered: a server that requires one and got none may only close the connection (TLS 1.3
/// sends its alert after the client believes the handshake done), which reads as a reset.
pub fn explain_refusal(error: &str, with_client_cert: bool, settings: Settings) -> Option<String> {
    let e = error.to_ascii_lowercase();
    if !with_client_cert && (e.contains("reset by peer") || e.contains("unexpected eof")) {
        return Some(format!(
            "the server closed the connection during TLS set-up; if it requires a client \
             certificate, set {}",
            settings.client
        ));
    }
    let squeezed = e.replace(['_', ' '], "");
    let meaning = [
        (
            "unknownissuer",
            "the server's certificate is not signed by a trusted CA",
        ),
        ("expired", "the server's certificate has expired"),
        ("notvalidyet", "the server's certificate is not valid yet"),
        (
            "notvalidforname",
            "the server's certificate does not name the host in the URL",
        ),
        (
            "certificaterequired",
            "the server asks for a client certificate",
        ),
        (
            "unknownca",
            "the server does not trust the client certificate's CA",
        ),
        (
            "badcertificate",
            "the server refused the client certificate",
        ),
    ]
    .into_iter()
    .find(|(needle, _)| squeezed.contains(needle))?
    .1;
    Some(match meaning {
        m if m.contains("trusted CA") => format!("{m} (check {})", settings.ca),
        m if m.contains("asks for a client") => format!("{m} (set {})", settings.client),
        m => m.to_string(),
    })
}

/// Why the PostgreSQL server of `url` fails certificate verification, found by a TLS
/// handshake of Tidings' own against the URL's `sslrootcert`: libpq says only "certificate
/// verify failed" whether the CA is wrong or the certificate expired. `None` when the URL
/// names no `sslrootcert`, the server cannot be reached or offers no TLS, or the handshake
/// succeeds.
pub fn diagnose_postgres(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let (authority, query) = url
        .split_once("://")?
        .1
        .split_once('/')
        .map(|(a, rest)| (a, rest.split_once('?').map_or("", |(_, q)| q)))?;
    let ca = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sslrootcert="))?;
    let ca = percent_decode(ca);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host_port.starts_with('[') => {
            (h.trim_matches(['[', ']']), p.parse().ok()?)
        }
        _ => (host_port.trim_matches(['[', ']']), 5432u16),
    };
    if host.is_empty() || host.contains(',') {
        return None;
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(Path::new(&ca)).ok()? {
        roots.add(cert).ok()?;
    }
    let config = client_config(roots).ok()?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).ok()?;
    let timeout = std::time::Duration::from_secs(5);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    tcp.set_read_timeout(Some(timeout)).ok()?;
    tcp.set_write_timeout(Some(timeout)).ok()?;
    // SSLRequest: length 8, code 80877103; the server answers 'S' when it speaks TLS.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).ok()?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).ok()?;
    if answer[0] != b'S' {
        return None;
    }
    let mut conn = rustls::ClientConnection::new(config, name).ok()?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return explain_refusal(&e.to_string(), true, DATABASE_SETTINGS);
        }
    }
    None
}

/// `%XX` escapes of a URL query value decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], s.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'%'));
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A PostgreSQL connection error with, when libpq reports a failed certificate check, what
/// failed (see [`diagnose_postgres`]).
pub fn explain_database_error(url: &str, error: &str) -> String {
    if error.contains("certificate verify failed")
        && let Some(why) = diagnose_postgres(url)
    {
        return format!("{} (TLS refused: {why})", error.trim_end());
    }
    error.to_string()
}

/// The certificate and key of a TLS server, read again whenever either file changes (a
/// renewed certificate is used from the next handshake on, without a restart). A change that
/// cannot be read keeps the last good pair and is logged.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

struct Loaded {
    stamps: (Option<SystemTime>, Option<SystemTime>, u64),
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ServerTls {
    /// Loads the pair now; an error names the file and the fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let config = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new(Loaded {
                stamps: stamps(cert, key),
                config,
            }),
        })
    }

    /// The configuration for the next handshake, reloaded first if a file changed.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.cert, &self.key);
        if now != current.stamps {
            current.stamps = now;
            match server_config(&self.cert, &self.key) {
                Ok(config) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    current.config = config;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be used; keeping the previous one")
                }
            }
        }
        current.config.clone()
    }
}

/// Modification times and the combined size of the two files: what tells a change.
fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>, u64) {
    let meta = |p: &Path| std::fs::metadata(p).ok();
    let (c, k) = (meta(cert), meta(key));
    let size = c.as_ref().map_or(0, |m| m.len()) + k.as_ref().map_or(0, |m| m.len());
    (
        c.and_then(|m| m.modified().ok()),
        k.and_then(|m| m.modified().ok()),
        size,
    )
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = read_certificates(cert)?;
    let key_der = read_private_key(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| {
        format!(
            "{} and {}: the key does not fit the certificate, or is unusable: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_a_fifo_a_directory_or_a_huge_file_is_refused_without_hanging() {
        let dir = std::env::temp_dir().join(format!("tidings-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.pem");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let huge = dir.join("huge.pem");
        std::fs::write(&huge, vec![b'A'; (PEM_FILE_MAX + 1) as usize]).unwrap();
        for (path, says) in [
            (Path::new("/dev/zero"), "not a regular file"),
            (fifo.as_path(), "not a regular file"),
            (dir.as_path(), "not a regular file"),
            (huge.as_path(), "larger than"),
            (
                Path::new("/nonexistent/ca.pem"),
                "cannot read /nonexistent/ca.pem",
            ),
        ] {
            let why = read_certificates(path).unwrap_err();
            assert!(why.contains(says), "{}: {why}", path.display());
            let why = read_private_key(path).unwrap_err();
            assert!(why.contains(says), "{}: {why}", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
