//! The SMTP side of the mailer, and the only file that touches lettre: a small pool of reused
//! connections, the slots that bound simultaneous transactions, and the classification of a
//! send result.
//!
//! The pool opens its own TCP sockets with `TCP_NODELAY`. lettre writes the end-of-data marker
//! as a separate 5-byte write after the body; with Nagle's algorithm on, that write waits for
//! the server to acknowledge the body, which a server with delayed ACKs does only after ~40 ms.
//! Every transaction then took ~40 ms even on loopback. `smtps://` connections are the pool's
//! own sockets too: TLS is set up on them here (rustls with the ring provider, trusting the
//! same web roots as lettre plus `TIDINGS_SMTP_CA`) and lettre speaks SMTP over the result.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tidings_common::Config;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::debug;

/// How one SMTP transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpOutcome {
    /// Accepted; the server's reply (`250 …`).
    Accepted(String),
    /// Refused for good (5xx): retrying cannot help.
    Refused(String),
    /// A temporary failure (4xx, a dropped connection, a timeout): try again later.
    Deferred(String),
}

/// Longest connect, greeting, STARTTLS and login together, and longest transaction.
const TIMEOUT: Duration = Duration::from_secs(30);
/// An `smtps://` connection unused for longer than this is checked with NOOP before it is
/// reused (plain and STARTTLS connections are checked on every reuse, for free: see
/// [`Pooled::alive`]).
const CHECK_AFTER: Duration = Duration::from_secs(2);
/// An idle connection unused for longer than this is closed instead of reused.
const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// How the connection is secured, from the URL's scheme and `tls` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Security {
    /// `smtp://host`: plain.
    None,
    /// `smtp://host?tls=opportunistic` or `?tls=required`: STARTTLS after the greeting.
    StartTls { required: bool },
    /// `smtps://host`: TLS from the first byte.
    Wrapper,
}

/// Where and how to connect, read from `TIDINGS_SMTP_URL`.
struct Server {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// CA certificates trusted besides the web roots (`TIDINGS_SMTP_CA`).
    ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// For `smtps://`: the rustls settings, built once, so every pooled connection shares
    /// them (and their TLS session cache, which lets a new connection resume a session).
    wrapper: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// An `smtps://` connection: TLS on a socket of the pool's own (with `TCP_NODELAY`), handed
/// to lettre as a byte stream.
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio::io::AsyncRead for TlsSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl Server {
    /// Reads the URL the way lettre's `from_url` does: `smtp://[user:pass@]host[:port][/helo]`
    /// with `?tls=required|opportunistic`, or `smtps://`.
    fn parse(raw: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(raw).map_err(|e| anyhow::anyhow!("not a URL: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (security, default_port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None | Some("none")) => (Security::None, 25),
            ("smtp", Some("opportunistic")) => (Security::StartTls { required: false }, 587),
            ("smtp", Some("required")) => (Security::StartTls { required: true }, 587),
            ("smtps", None) => (Security::Wrapper, 465),
            (scheme, tls) => anyhow::bail!(
                "unsupported scheme {scheme:?} or tls parameter {tls:?} (smtp://, smtp://…?tls=required, smtp://…?tls=opportunistic, smtps://)"
            ),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| anyhow::anyhow!("the credentials are not UTF-8"))
        };
        let credentials = match url.password() {
            Some(password) => Some(Credentials::new(decode(url.username())?, decode(password)?)),
            None => None,
        };
        let path = url.path().trim_matches('/');
        let hello = if path.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(path.to_string())
        };
        Ok(Server {
            port: url.port().unwrap_or(default_port),
            host,
            security,
            credentials,
            hello,
            ca: Vec::new(),
            wrapper: None,
        })
    }

    /// lettre's TLS settings for STARTTLS: the web roots and `TIDINGS_SMTP_CA`.
    fn tls(&self) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        let mut params = TlsParameters::builder(self.host.clone());
        for cert in &self.ca {
            params = params.add_root_certificate(
                lettre::transport::smtp::client::Certificate::from_der(cert.to_vec())?,
            );
        }
        params.build_rustls()
    }

    /// The rustls settings for `smtps://`: the same roots as [`Server::tls`].
    fn wrapper_tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &self.ca {
            roots
                .add(cert.clone())
                .map_err(|e| format!("TIDINGS_SMTP_CA: {e}"))?;
        }
        tidings_common::tls::client_config(roots)
    }

    /// A TCP connection to the server with `TCP_NODELAY`.
    async fn socket(&self) -> Result<TcpStream, String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(stream)
    }

    /// Opens, greets, secures and logs in one connection.
    async fn connect(&self) -> Result<Pooled, String> {
        let mut probe = None;
        let mut conn = match self.security {
            Security::Wrapper => {
                let stream = self.socket().await?;
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("{}: not a host name for TLS: {e}", self.host))?;
                let config = match &self.wrapper {
                    Some(config) => config.clone(),
                    None => self.wrapper_tls()?,
                };
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| {
                        let e = e.to_string();
                        let why = tidings_common::tls::explain_refusal(
                            &e,
                            true,
                            tidings_common::tls::SMTP_SETTINGS,
                        )
                        .map(|why| format!("{why}: "))
                        .unwrap_or_default();
                        format!("TLS with {}:{}: {why}{e}", self.host, self.port)
                    })?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsSocket(tls)), &self.hello)
                    .await
                    .map_err(|e| e.to_string())?
            }
            _ => {
                let stream = self.socket().await?;
                // A second handle on the same socket, to see whether the server closed it
                // while it sat idle (see `Pooled::alive`).
                let std = stream.into_std().map_err(|e| e.to_string())?;
                probe = Some(std.try_clone().map_err(|e| e.to_string())?);
                let stream = TcpStream::from_std(std).map_err(|e| e.to_string())?;
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        if let Security::StartTls { required } = self.security {
            if conn.can_starttls() {
                let tls = self.tls().map_err(|e| e.to_string())?;
                conn.starttls(tls, &self.hello)
                    .await
                    .map_err(|e| e.to_string())?;
            } else if required {
                conn.abort().await;
                return Err(
                    "the SMTP server does not offer STARTTLS, which tls=required needs".into(),
                );
            }
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(Pooled { conn, probe })
    }
}

/// One connection of the pool.
struct Pooled {
    conn: AsyncSmtpConnection,
    /// The same TCP socket, non-blocking, for [`Pooled::alive`]; `None` for `smtps://`.
    probe: Option<std::net::TcpStream>,
}

impl Pooled {
    /// Whether the connection can carry another transaction. A server that closed it while
    /// it was idle (a restart, an idle timeout, a 421 notice) has left an end-of-file or bytes
    /// on the socket, which a non-blocking peek sees without a round trip. An email sent on a
    /// dead connection would be deferred to the next retry tier; one that has sent nothing
    /// since its last reply is alive. `smtps://` connections, which have no probe, are asked
    /// with NOOP once idle for [`CHECK_AFTER`].
    async fn alive(&mut self, idle: Duration) -> bool {
        match &self.probe {
            Some(probe) => matches!(
                probe.peek(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
            None => idle <= CHECK_AFTER || self.conn.test_connected().await,
        }
    }
}

/// A connection waiting for its next transaction.
struct Idle {
    conn: Pooled,
    since: Instant,
}

/// The pool of connections to the SMTP server and the slots bounding concurrent sends (and so
/// the number of connections).
pub struct Smtp {
    server: Server,
    idle: Mutex<Vec<Idle>>,
    slots: Semaphore,
    /// Signs every email when `TIDINGS_DKIM_KEYS` is set.
    dkim: Option<tidings_common::dkim::Dkim>,
}

impl Smtp {
    /// Reads `TIDINGS_SMTP_URL`; fails naming the variable on a bad URL.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut server = Server::parse(&config.smtp_url)
            .map_err(|e| anyhow::anyhow!("TIDINGS_SMTP_URL: {e}"))?;
        if let Some(ca) = &config.smtp_ca {
            server.ca = tidings_common::tls::read_certificates(ca)
                .map_err(|e| anyhow::anyhow!("TIDINGS_SMTP_CA: {e}"))?;
        }
        if matches!(server.security, Security::Wrapper) {
            server.wrapper = Some(server.wrapper_tls().map_err(|e| anyhow::anyhow!(e))?);
        }
        let own = config.own_address();
        let from_domain = own.rsplit_once('@').map(|(_, d)| d).unwrap_or(&own);
        let dkim = tidings_common::dkim::Dkim::from_config(&config.mail_auth, from_domain)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Smtp {
            server,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(config.smtp_concurrency),
            dkim,
        })
    }

    /// A connection to use: the most recently used idle one that is still fit, or a new one.
    async fn checkout(&self) -> Result<Pooled, String> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(Idle { mut conn, since }) = idle else {
                break;
            };
            let age = since.elapsed();
            if age > IDLE_LIMIT || !conn.alive(age).await {
                debug!("closing a stale SMTP connection");
                conn.conn.abort().await;
                continue;
            }
            return Ok(conn);
        }
        self.server.connect().await
    }

    /// Sends one email once a slot is free, and says how it went; with the bytes it sent
    /// (signed), when it got that far.
    pub async fn send(&self, email: lettre::Message) -> (SmtpOutcome, Option<Vec<u8>>) {
        let _slot = match self.slots.acquire().await {
            Ok(slot) => slot,
            Err(e) => return (SmtpOutcome::Deferred(e.to_string()), None),
        };
        /// Counts the slot in use until the send ends, however it ends.
        struct InUse;
        impl Drop for InUse {
            fn drop(&mut self) {
                tidings_common::observe::smtp_slots(-1.0);
            }
        }
        tidings_common::observe::smtp_slots(1.0);
        let _in_use = InUse;
        let envelope: Envelope = email.envelope().clone();
        let mut bytes = email.formatted();
        if let Some(dkim) = &self.dkim {
            bytes = match dkim.sign(&bytes) {
                Ok(signed) => signed,
                // A key that cannot sign fails every email alike: retried, and said why.
                Err(e) => return (SmtpOutcome::Deferred(e), None),
            };
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(TIMEOUT, self.transact(&envelope, &bytes)).await {
            Ok(outcome) => outcome,
            Err(_) => SmtpOutcome::Deferred(format!(
                "the SMTP server did not finish the transaction within {} s",
                TIMEOUT.as_secs()
            )),
        };
        tidings_common::observe::smtp_transaction(started.elapsed());
        (outcome, Some(bytes))
    }

    async fn transact(&self, envelope: &Envelope, bytes: &[u8]) -> SmtpOutcome {
        let mut conn = match self.checkout().await {
            Ok(conn) => conn,
            Err(e) => return SmtpOutcome::Deferred(e),
        };
        match conn.conn.send(envelope, bytes).await {
            Ok(response) => {
                if !conn.conn.has_broken() {
                    let idle = Idle {
                        conn,
                        since: Instant::now(),
                    };
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(idle);
                }
                SmtpOutcome::Accepted(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ))
            }
            // lettre has already closed the connection (QUIT) after a failed command.
            Err(e) if e.is_permanent() => SmtpOutcome::Refused(e.to_string()),
            Err(e) => SmtpOutcome::Deferred(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_like_lettre_reads_them() {
        let plain = Server::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.security),
            ("127.0.0.1", 2525, Security::None)
        );
        assert!(plain.credentials.is_none());
        let starttls = Server::parse("smtp://u%40x:p%3Aw@mail.example?tls=required").unwrap();
        assert_eq!(
            (starttls.port, starttls.security),
            (587, Security::StartTls { required: true })
        );
        assert_eq!(
            starttls.credentials,
            Some(Credentials::new("u@x".into(), "p:w".into()))
        );
        let wrapped = Server::parse("smtps://mail.example/relay.example").unwrap();
        assert_eq!((wrapped.port, wrapped.security), (465, Security::Wrapper));
        assert_eq!(wrapped.hello, ClientId::Domain("relay.example".into()));
        let v6 = Server::parse("smtp://[::1]:25").unwrap();
        assert_eq!(v6.host, "::1");
        // No SMTP command can be smuggled through the EHLO name: escaped line breaks stay
        // escaped, raw ones are dropped by the URL parser.
        for url in [
            "smtp://mail.example/a%0D%0ARCPT",
            "smtp://mail.example/a\r\nRCPT",
        ] {
            let ClientId::Domain(name) = Server::parse(url).unwrap().hello else {
                panic!("{url}: no EHLO name");
            };
            assert!(!name.contains(['\r', '\n']), "{url}: {name:?}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("smtp://", "no host"),
            ("http://mail.example", "unsupported scheme"),
            ("smtp://mail.example?tls=sometimes", "tls parameter"),
            ("not a url", "not a URL"),
        ] {
            let Err(err) = Server::parse(url) else {
                panic!("{url} was accepted");
            };
            let err = err.to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
