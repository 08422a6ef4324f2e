//! The SMTP listener the MX relay delivers to (SPEC I1). Recipients outside the reply domain,
//! or with a reply token that does not verify, are refused during the dialogue (no
//! backscatter). DATA is answered 250 only once the raw message is confirmed by the broker;
//! otherwise 451, so the relay keeps it and retries.
//!
//! With a certificate configured the listener offers STARTTLS (RFC 3207): the session's
//! bounds keep running through the handshake and after it, and with
//! `TIDINGS_INBOUND_REQUIRE_TLS=yes` MAIL is refused until TLS is on.

use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as SmtpError, Request};
use tidings_common::Config;
use tidings_common::amqp::{SharedPublisher, Topology};
use tidings_common::mail::ReplyToken;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most recipients accepted in one transaction.
const MAX_RECIPIENTS: usize = 100;
/// A client silent this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A command line must be complete this long after its first byte.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// A message is received for this long before its rate is checked.
const RATE_GRACE: Duration = Duration::from_secs(10);
/// The longest a TLS handshake may take (within the session's own limit).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Unit of the memory budget (the semaphore counts these).
const MEMORY_UNIT: usize = 1024;

/// What every SMTP session needs.
pub struct Ingress {
    pub config: Arc<Config>,
    pub topology: Topology,
    pub publisher: SharedPublisher,
    /// One permit per session that may run at once.
    sessions: Arc<Semaphore>,
    /// The bytes of messages being received at once, in [`MEMORY_UNIT`]s.
    memory: Arc<Semaphore>,
    /// Where large mails wait for the consumer (see `payload_of`).
    spool: tidings_common::db::Db,
}

impl Ingress {
    pub fn new(
        config: Arc<Config>,
        topology: Topology,
        publisher: SharedPublisher,
        spool: tidings_common::db::Db,
    ) -> Self {
        let limits = config.inbound_limits;
        let units = (limits.memory / MEMORY_UNIT).min(Semaphore::MAX_PERMITS);
        Ingress {
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            memory: Arc::new(Semaphore::new(units)),
            config,
            topology,
            publisher,
            spool,
        }
    }
}

/// Accepts SMTP sessions until `shutdown` fires.
pub async fn serve(listener: TcpListener, ingress: Arc<Ingress>, shutdown: CancellationToken) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    let ingress = ingress.clone();
                    let span = tracing::info_span!("smtp", peer = %peer);
                    let Ok(permit) = ingress.sessions.clone().try_acquire_owned() else {
                        warn!(parent: &span, limit = ingress.config.inbound_limits.max_sessions, "too many SMTP sessions; refused");
                        sessions.spawn(async move {
                            let refusal = b"421 4.3.2 Too many connections, try again later\r\n";
                            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(refusal)).await;
                        });
                        continue;
                    };
                    sessions.spawn(tracing::Instrument::instrument(
                        async move {
                            if let Err(e) = bounded_session_from(stream, &ingress, Some(peer.ip())).await {
                                debug!(error = %e, "session ended with an error");
                            }
                            drop(permit);
                        },
                        span,
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    // Sessions in the middle of DATA finish; the relay retries any that are cut.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
}

/// Why a recipient is refused, or `None` when it is one of ours.
pub fn refuse_recipient(address: &str, config: &Config) -> Option<&'static str> {
    let address = address.to_ascii_lowercase();
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Some("550 5.1.3 Bad recipient address syntax");
    };
    if domain != config.reply_domain {
        return Some("550 5.7.1 Relaying denied: not a domain of this server");
    }
    match local.strip_prefix("reply+") {
        Some(token) => match ReplyToken::decode(token, &config.token_secret) {
            Ok(_) => None,
            Err(_) => Some("550 5.1.1 No such reply address"),
        },
        None if local == tidings_common::mail::BOUNCE_MAILBOX => None,
        None if local.starts_with("bounces+") => {
            match tidings_common::mail::SentEmail::from_bounce_local(local, &config.token_secret) {
                Some(_) => None,
                None => Some("550 5.1.1 No such bounce address"),
            }
        }
        None if config.inbound_mailboxes.iter().any(|m| m == local) => None,
        None => Some("550 5.1.1 No such mailbox"),
    }
}

#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    rcpts: Vec<String>,
    /// The client's address and HELO name, kept across the transactions of a session (the
    /// SPF identity of an in-process check).
    client: Option<(std::net::IpAddr, String)>,
}

impl Transaction {
    /// A new transaction of the same session.
    fn next(&self) -> Transaction {
        Transaction {
            client: self.client.clone(),
            ..Transaction::default()
        }
    }
}

/// What to do after a command.
enum Step {
    Reply(String),
    /// Answer 220 and start TLS.
    StartTls,
    Quit,
}

/// How a session's dialogue ended.
enum Ended {
    Closed,
    /// The client asked for TLS and was told to go ahead.
    StartTls,
}

/// The message being received after DATA: the receiver's state, the bytes so far, the share
/// of the memory budget they hold, and whether it has grown past the size limit or the budget
/// (then it is read to its end and dropped).
struct Incoming {
    receiver: DataReceiver,
    message: Vec<u8>,
    too_big: bool,
    no_room: bool,
    held: Option<OwnedSemaphorePermit>,
    started: Instant,
    received: usize,
}

impl Incoming {
    fn new() -> Self {
        Incoming {
            receiver: DataReceiver::new(),
            message: Vec::new(),
            too_big: false,
            no_room: false,
            held: None,
            started: Instant::now(),
            received: 0,
        }
    }

    /// Holds budget for the bytes received so far; false when the budget has no room.
    fn reserve(&mut self, memory: &Arc<Semaphore>) -> bool {
        let held = self.held.as_ref().map_or(0, |p| p.num_permits());
        let needed = self.message.len().div_ceil(MEMORY_UNIT);
        if needed <= held {
            return true;
        }
        // Reserve ahead, so a growing message asks rarely.
        let more = (needed - held).max(64);
        match memory.clone().try_acquire_many_owned(more as u32) {
            Ok(permit) => {
                match self.held.as_mut() {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// A session within the configured bounds: closed with 421 when it runs past the session
/// time limit. Any byte stream will do (the fuzz target talks over an in-memory pipe).
pub async fn bounded_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ingress: &Ingress,
) -> std::io::Result<()> {
    bounded_session_from(stream, ingress, None).await
}

/// [`bounded_session`] with a client at `peer`. The time limit covers the whole session:
/// the dialogue before STARTTLS, the handshake, and the dialogue after it.
pub async fn bounded_session_from<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ingress: &Ingress,
    peer: Option<std::net::IpAddr>,
) -> std::io::Result<()> {
    let limit = ingress.config.inbound_limits.session_timeout;
    let deadline = Instant::now() + limit;
    match tokio::time::timeout_at(deadline, session(&mut stream, ingress, peer, false)).await {
        Ok(Ok(Ended::Closed)) => return Ok(()),
        Ok(Ok(Ended::StartTls)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return over_time(&mut stream, limit).await,
    }
    let Some(tls) = ingress.config.inbound_tls.as_ref() else {
        return Ok(());
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let handshake_end = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
    let mut stream = match tokio::time::timeout_at(handshake_end, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed; closed");
            return Ok(());
        }
        Err(_) => {
            info!("TLS handshake not finished in time; closed");
            return Ok(());
        }
    };
    match tokio::time::timeout_at(deadline, session(&mut stream, ingress, peer, true)).await {
        Ok(ended) => ended.map(|_| ()),
        Err(_) => over_time(&mut stream, limit).await,
    }
}

/// Tells a client over the session's time limit that it is being closed.
async fn over_time<S: AsyncWrite + Unpin>(stream: &mut S, limit: Duration) -> std::io::Result<()> {
    info!(?limit, "SMTP session over its time limit; closed");
    let reply = b"421 4.4.2 Session time limit reached, closing\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply)).await;
    Ok(())
}

/// Whether a DATA transfer runs below the lowest allowed average rate.
fn too_slow(incoming: &Incoming, min_rate: usize) -> bool {
    let elapsed = incoming.started.elapsed();
    elapsed > RATE_GRACE && (incoming.received as f64) < min_rate as f64 * elapsed.as_secs_f64()
}

/// The dialogue; `secure` once TLS is on (then there is no greeting: the client speaks first,
/// with EHLO).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ingress: &Ingress,
    peer: Option<std::net::IpAddr>,
    secure: bool,
) -> std::io::Result<Ended> {
    let max = ingress.config.inbound_max_bytes;
    let min_rate = ingress.config.inbound_limits.min_rate;
    // The rest of a line refused as too long is skipped, not read as a command.
    let mut skipping_line = false;
    let mut line_started: Option<Instant> = None;
    if !secure {
        stream
            .write_all(format!("220 {} Tidings ESMTP\r\n", ingress.config.reply_domain).as_bytes())
            .await?;
    }
    let mut receiver = RequestReceiver::default();
    let mut data: Option<Incoming> = None;
    let mut transaction = Transaction {
        client: peer.map(|ip| (ip, String::new())),
        ..Transaction::default()
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(Ended::Closed),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        if line_started.is_some_and(|t| t.elapsed() > LINE_TIMEOUT)
            || data.as_ref().is_some_and(|d| too_slow(d, min_rate))
        {
            info!("SMTP client sending too slowly; closed");
            stream.write_all(b"421 4.4.2 Too slow, closing\r\n").await?;
            return Ok(Ended::Closed);
        }
        let mut bytes = buf[..n].iter();
        loop {
            if let Some(incoming) = data.as_mut() {
                let before = bytes.len();
                let done = incoming.receiver.ingest(&mut bytes, &mut incoming.message);
                incoming.received += before - bytes.len();
                if incoming.message.len() > max {
                    // Keep reading to the end, but keep nothing.
                    incoming.too_big = true;
                    incoming.message.clear();
                } else if !incoming.no_room && !incoming.reserve(&ingress.memory) {
                    warn!(
                        bytes = incoming.message.len(),
                        "inbound memory budget full; message deferred"
                    );
                    incoming.no_room = true;
                }
                if incoming.no_room {
                    incoming.message.clear();
                }
                if !done {
                    break;
                }
                let incoming = data.take().expect("in DATA");
                let reply = if incoming.too_big {
                    format!("552 5.3.4 Message exceeds the {max}-byte limit\r\n")
                } else if incoming.no_room {
                    "452 4.3.1 Insufficient system storage, try again later\r\n".into()
                } else {
                    enqueue(ingress, &transaction, incoming.message).await
                };
                transaction = transaction.next();
                stream.write_all(reply.as_bytes()).await?;
                continue;
            }
            if skipping_line {
                match bytes.position(|&b| b == b'\n') {
                    Some(_) => skipping_line = false,
                    None => break,
                }
            }
            let reply = match receiver.ingest(&mut bytes) {
                Ok(request) => {
                    line_started = None;
                    match answer(request, &mut transaction, &mut data, ingress, secure) {
                        Step::Reply(reply) => reply,
                        Step::StartTls => {
                            // Whatever the client sent after STARTTLS, before the handshake,
                            // is dropped unread (RFC 3207 §4.2: no command injection).
                            stream
                                .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                                .await?;
                            stream.flush().await?;
                            return Ok(Ended::StartTls);
                        }
                        Step::Quit => {
                            stream.write_all(b"221 2.0.0 Bye\r\n").await?;
                            return Ok(Ended::Closed);
                        }
                    }
                }
                Err(SmtpError::NeedsMoreData { .. }) => {
                    line_started.get_or_insert_with(Instant::now);
                    break;
                }
                Err(SmtpError::ResponseTooLong) => {
                    line_started = None;
                    receiver = RequestReceiver::default();
                    skipping_line = true;
                    "500 5.5.2 Line too long\r\n".into()
                }
                Err(SmtpError::UnknownCommand) => "500 5.5.1 Unknown command\r\n".into(),
                Err(e) => format!("501 5.5.4 Syntax error: {e:?}\r\n"),
            };
            stream.write_all(reply.as_bytes()).await?;
        }
    }
}

/// Answers one command of the dialogue, updating the transaction; DATA starts `data`.
fn answer(
    request: Request<std::borrow::Cow<'_, str>>,
    transaction: &mut Transaction,
    data: &mut Option<Incoming>,
    ingress: &Ingress,
    secure: bool,
) -> Step {
    let config = &ingress.config;
    let (max, domain) = (config.inbound_max_bytes, &config.reply_domain);
    let offers_tls = config.inbound_tls.is_some() && !secure;
    Step::Reply(match request {
        Request::Ehlo { host } => {
            *transaction = transaction.next();
            if let Some((_, helo)) = &mut transaction.client {
                *helo = host.chars().take(255).collect();
            }
            let starttls = if offers_tls { "250-STARTTLS\r\n" } else { "" };
            format!(
                "250-{domain}\r\n250-SIZE {max}\r\n250-8BITMIME\r\n{starttls}250 ENHANCEDSTATUSCODES\r\n"
            )
        }
        Request::Helo { host } => {
            *transaction = transaction.next();
            if let Some((_, helo)) = &mut transaction.client {
                *helo = host.chars().take(255).collect();
            }
            format!("250 {domain}\r\n")
        }
        Request::StartTls if offers_tls => {
            *transaction = transaction.next();
            return Step::StartTls;
        }
        Request::StartTls if secure => "503 5.5.1 TLS already active\r\n".into(),
        Request::StartTls => "502 5.5.1 STARTTLS not offered\r\n".into(),
        Request::Mail { .. } if config.inbound_require_tls && !secure => {
            "530 5.7.0 Must issue a STARTTLS command first\r\n".into()
        }
        Request::Mail { from } if from.size > max => {
            format!("552 5.3.4 Message size exceeds the {max}-byte limit\r\n")
        }
        Request::Mail { from } => {
            *transaction = Transaction {
                mail_from: Some(from.address.to_string()),
                ..transaction.next()
            };
            "250 2.1.0 OK\r\n".into()
        }
        Request::Rcpt { to } => {
            if transaction.mail_from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else if transaction.rcpts.len() >= MAX_RECIPIENTS {
                "452 4.5.3 Too many recipients\r\n".into()
            } else if let Some(refusal) = refuse_recipient(&to.address, config) {
                info!(rcpt = %tidings_common::mail::mask_address(&to.address), refusal, "recipient refused");
                format!("{refusal}\r\n")
            } else {
                transaction.rcpts.push(to.address.to_ascii_lowercase());
                "250 2.1.5 OK\r\n".into()
            }
        }
        Request::Data if transaction.rcpts.is_empty() => "503 5.5.1 RCPT first\r\n".into(),
        Request::Data => {
            *data = Some(Incoming::new());
            "354 End data with <CR><LF>.<CR><LF>\r\n".into()
        }
        Request::Rset => {
            *transaction = transaction.next();
            "250 2.0.0 OK\r\n".into()
        }
        Request::Noop { .. } => "250 2.0.0 OK\r\n".into(),
        Request::Vrfy { .. } => "252 2.5.2 Cannot verify\r\n".into(),
        Request::Quit => return Step::Quit,
        _ => "502 5.5.1 Command not implemented\r\n".into(),
    })
}

/// How long DATA waits for the broker's confirm across a failover before answering 451.
const QUEUE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes the raw message with its envelope and waits for the broker's confirm.
async fn enqueue(ingress: &Ingress, transaction: &Transaction, message: Vec<u8>) -> String {
    let from = transaction.mail_from.as_deref().unwrap_or_default();
    let payload = crate::payload_of(&ingress.spool, &message).await;
    // Sent again after a broker failover, within the relay's patience; a duplicate is
    // recognised by its Message-ID and sender.
    let published = ingress
        .publisher
        .with_failover(QUEUE_PATIENCE, |publisher| {
            let payload = &payload;
            async move {
                crate::queue_raw(
                    &publisher,
                    &ingress.topology,
                    from,
                    &transaction.rcpts,
                    transaction.client.as_ref(),
                    payload,
                )
                .await
            }
        })
        .await;
    match published {
        Ok(()) => {
            info!(
                bytes = message.len(),
                rcpts = transaction.rcpts.len(),
                "email queued"
            );
            "250 2.0.0 OK: queued\r\n".into()
        }
        Err(e) => {
            warn!(error = %e, "could not queue an email; the relay will retry");
            "451 4.3.0 Temporarily unable to queue the message; try again later\r\n".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_below_the_lowest_rate_is_too_slow_only_after_the_grace() {
        let mut incoming = Incoming::new();
        incoming.received = 10;
        assert!(!too_slow(&incoming, 1024), "within the grace period");
        incoming.started = Instant::now() - RATE_GRACE * 2;
        assert!(too_slow(&incoming, 1024));
        incoming.received = 1024 * 60;
        assert!(!too_slow(&incoming, 1024));
    }
}
