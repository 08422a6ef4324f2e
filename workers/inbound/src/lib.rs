//! The inbound role: an SMTP listener the MX relay delivers to (accepting mail only once it is
//! durably queued on the broker), and a consumer that parses, classifies, extracts, threads and
//! posts each queued email (SPEC I1–I6, L2).

mod bounce;
pub mod process;
pub mod set;
pub mod smtp;
mod thread;

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use std::time::Duration;

use tidings_common::amqp::{
    self, Grouping, MAIL_FROM_HEADER, Outcome, Publisher, RCPT_HEADER, Session, SharedPublisher,
    Topology,
};
use tidings_common::announce::Announcements;
use tidings_common::db::Db;
use tidings_common::dns;
use tidings_common::inbound::{self, InboundContext};
use tidings_common::{Config, Result};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use set::{Envelope, Inbound};

struct Processor {
    db: Db,
    config: Arc<Config>,
    topology: Topology,
    context: InboundContext,
    /// Checks DKIM, SPF and DMARC in-process (`TIDINGS_INBOUND_VERIFY=on` and no relay
    /// authserv-id, whose verdict wins).
    verifier: Option<tidings_common::mail_auth::MessageAuthenticator>,
}

/// Longest an in-process authentication check may take before the email is judged without a
/// verdict.
const VERIFY_PATIENCE: Duration = Duration::from_secs(5);

fn header(delivery: &Delivery, name: &str) -> String {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Queued emails are handled as sets: under load a set holds the emails waiting (up to 64),
/// processed in one transaction; at a trickle a set is one email, started at once.
const GROUPING: Grouping = Grouping {
    max_group: 128,
    in_flight: 2,
    linger: Duration::from_millis(5),
};

/// Header carrying the SMTP client's address and HELO name (`<ip> <helo>`).
const CLIENT_HEADER: &str = "x-tidings-client";

fn envelope(delivery: &Delivery) -> Envelope {
    let client = header(delivery, CLIENT_HEADER);
    let client = client
        .split_once(' ')
        .and_then(|(ip, helo)| Some((ip.parse::<std::net::IpAddr>().ok()?, helo.to_string())));
    Envelope {
        client,
        mail_from: header(delivery, MAIL_FROM_HEADER),
        rcpts: header(delivery, RCPT_HEADER)
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

/// Most bytes of raw mail inspected and processed together: a set of large mails is taken
/// in parts, so the files decoded from them are held for one part at a time.
const PART_BYTES: usize = 16 << 20;

/// One queued email as the consumer received it: the raw mail, or the spool row holding it.
struct Queued {
    envelope: Envelope,
    raw: Vec<u8>,
    /// The spool row and the mail's size, for a large mail.
    spool: Option<(i64, usize)>,
    /// What the in-process authentication check found, when it ran.
    verdict: Option<dns::Verdict>,
}

impl Queued {
    fn size(&self) -> usize {
        self.spool.map_or(self.raw.len(), |(_, size)| size)
    }
}

fn spool_of(delivery: &Delivery) -> Option<(i64, usize)> {
    let headers = delivery.properties.headers().as_ref()?;
    let number = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        _ => None,
    };
    Some((
        number(SPOOL_HEADER)?,
        number(SIZE_HEADER).unwrap_or(0).max(0) as usize,
    ))
}

/// Whether the envelope makes an email a delivery report: a null reverse-path (`MAIL FROM:<>`)
/// to our bounce mailbox or a signed bounce address, whatever its headers say.
fn is_delivery_report(envelope: &Envelope, reply_domain: &str) -> bool {
    envelope
        .mail_from
        .trim()
        .trim_matches(['<', '>'])
        .is_empty()
        && envelope.rcpts.iter().any(|rcpt| {
            rcpt.rsplit_once('@').is_some_and(|(local, domain)| {
                domain.eq_ignore_ascii_case(reply_domain)
                    && (local.eq_ignore_ascii_case(tidings_common::mail::BOUNCE_MAILBOX)
                        || local
                            .to_ascii_lowercase()
                            .starts_with(&format!("{}+", tidings_common::mail::BOUNCE_MAILBOX)))
            })
        })
}

/// The raw mail of a spooled email, or why it cannot be read.
fn unspool(conn: &mut diesel::PgConnection, id: i64) -> std::result::Result<Vec<u8>, String> {
    use diesel::{OptionalExtension, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Raw {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        raw: Vec<u8>,
    }
    match diesel::sql_query("SELECT raw FROM inbound_spool WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(id)
        .get_result::<Raw>(conn)
        .optional()
    {
        Ok(Some(row)) => Ok(row.raw),
        Ok(None) => Err(format!("spooled mail {id} is no longer stored")),
        Err(e) => Err(format!("spooled mail {id} cannot be read: {e}")),
    }
}

fn drop_spooled(conn: &mut diesel::PgConnection, ids: &[i64]) {
    use diesel::RunQueryDsl;
    if ids.is_empty() {
        return;
    }
    if let Err(e) = diesel::sql_query("DELETE FROM inbound_spool WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
        .execute(conn)
    {
        // Left for purge_log; the mails themselves are processed.
        warn!(error = %e, "processed spool rows could not be deleted");
    }
}

type PartResults = (
    Vec<Result<set::Disposition>>,
    Vec<(tidings_common::inbound::InboundVerdict, Option<String>)>,
    Vec<i64>,
);

/// Inspects and processes `set` in parts of at most [`PART_BYTES`] of raw mail (at least one
/// email each), each part in one transaction; a part that fails is processed an email at a
/// time, so one email that cannot be processed never holds up the others.
fn process_in_parts(
    conn: &mut diesel::PgConnection,
    config: &Config,
    context: &inbound::InboundContext,
    set: Vec<Queued>,
) -> PartResults {
    let (mut results, mut notes, mut live) = (Vec::new(), Vec::new(), Vec::new());
    let mut rest = set.into_iter().peekable();
    while rest.peek().is_some() {
        let mut bytes = 0;
        let mut part = Vec::new();
        let mut spooled = Vec::new();
        while let Some(next) = rest.peek() {
            if !part.is_empty() && bytes + next.size() > PART_BYTES {
                break;
            }
            bytes += next.size();
            let queued = rest.next().expect("peeked");
            let (raw, report) = match queued.spool {
                // Read already (for the authentication check).
                _ if !queued.raw.is_empty() => {
                    let report = inbound::inspect(&queued.raw, context);
                    (queued.raw, report)
                }
                None => {
                    let report = inbound::inspect(&queued.raw, context);
                    (queued.raw, report)
                }
                Some((id, _)) => {
                    spooled.push(id);
                    match unspool(conn, id) {
                        Ok(raw) => {
                            let report = inbound::inspect(&raw, context);
                            (raw, report)
                        }
                        Err(why) => (Vec::new(), inbound::unreadable(&why)),
                    }
                }
            };
            let mut report = report;
            match &queued.verdict {
                Some(dns::Verdict::Failed(why)) if report.auth_failure.is_none() => {
                    report.auth_failure = Some(format!("in-process check: {why}"));
                }
                Some(dns::Verdict::Unknown(why)) => {
                    warn!(why = %why, "no authentication verdict for an inbound email (DNS)");
                }
                _ => {}
            }
            if is_delivery_report(&queued.envelope, &config.reply_domain) {
                inbound::as_delivery_report(&mut report, &raw, &config.reply_domain);
            }
            part.push(Inbound {
                report,
                raw,
                envelope: queued.envelope,
            });
        }
        let first = results.len();
        match process::process_set(conn, config, &part) {
            Ok(done) => {
                live.extend(done.live);
                results.extend(done.dispositions.into_iter().map(Ok));
            }
            Err(e) if part.len() == 1 => results.push(Err(e)),
            Err(e) => {
                warn!(error = %e, emails = part.len(), "processing the set failed; processing each email on its own");
                for one in &part {
                    results.push(
                        process::process_set(conn, config, std::slice::from_ref(one)).map(
                            |mut done| {
                                live.append(&mut done.live);
                                done.dispositions.remove(0)
                            },
                        ),
                    );
                }
            }
        }
        // The spool rows of the emails now processed; a failed one keeps its row for the retry.
        if !spooled.is_empty() && results[first..].iter().all(|r| r.is_ok()) {
            drop_spooled(conn, &spooled);
        }
        notes.extend(
            part.into_iter()
                .map(|i| (i.report.verdict, i.report.extraction_note)),
        );
    }
    (results, notes, live)
}

impl Processor {
    /// Checks the authentication of each email of `set` in-process, all at once, each within
    /// [`VERIFY_PATIENCE`]; a spooled email is read from the spool for it.
    async fn verify(
        &self,
        verifier: &tidings_common::mail_auth::MessageAuthenticator,
        mut set: Vec<Queued>,
    ) -> Vec<Queued> {
        let spooled: Vec<(usize, i64)> = set
            .iter()
            .enumerate()
            .filter_map(|(n, q)| q.spool.filter(|_| q.raw.is_empty()).map(|(id, _)| (n, id)))
            .collect();
        if !spooled.is_empty() {
            let ids: Vec<i64> = spooled.iter().map(|(_, id)| *id).collect();
            let read = self
                .db
                .run(move |conn| {
                    Ok(ids
                        .iter()
                        .map(|id| unspool(conn, *id).ok())
                        .collect::<Vec<_>>())
                })
                .await;
            if let Ok(read) = read {
                for ((n, _), raw) in spooled.into_iter().zip(read) {
                    set[n].raw = raw.unwrap_or_default();
                }
            }
        }
        let host = self.config.reply_domain.clone();
        let checks = set.iter().map(|q| {
            let (raw, envelope, host) = (&q.raw, &q.envelope, &host);
            async move {
                if raw.is_empty()
                    || envelope.mail_from.is_empty() && is_delivery_report(envelope, host)
                {
                    return None;
                }
                let check = dns::verify_inbound(
                    verifier,
                    raw,
                    &envelope.mail_from,
                    envelope.client.clone(),
                    host,
                );
                Some(match tokio::time::timeout(VERIFY_PATIENCE, check).await {
                    Ok(verdict) => verdict,
                    Err(_) => dns::Verdict::Unknown(format!(
                        "DNS did not answer within {} s",
                        VERIFY_PATIENCE.as_secs()
                    )),
                })
            }
        });
        let verdicts = futures_util::future::join_all(checks).await;
        for (queued, verdict) in set.iter_mut().zip(verdicts) {
            queued.verdict = verdict;
        }
        set
    }

    /// Inspects and processes a set of queued emails; one outcome per email. The set is
    /// processed in one transaction; if that fails, each email is processed on its own, so
    /// one email that cannot be processed never holds up the others.
    async fn handle_set(self: Arc<Self>, publisher: Publisher, set: Vec<Delivery>) -> Vec<Outcome> {
        let count = set.len();
        let set: Vec<Queued> = set
            .into_iter()
            .map(|delivery| Queued {
                envelope: envelope(&delivery),
                spool: spool_of(&delivery),
                raw: delivery.data,
                verdict: None,
            })
            .collect();
        let set = match &self.verifier {
            Some(verifier) => self.verify(verifier, set).await,
            None => set,
        };
        let (config, context) = (self.config.clone(), self.context.clone());
        let results = self
            .db
            .run(move |conn| Ok(process_in_parts(conn, &config, &context, set)))
            .await;
        let (results, notes, live) = match results {
            Ok(done) => done,
            Err(e) => {
                return std::iter::repeat_with(|| Outcome::from_error(&e))
                    .take(count)
                    .collect();
            }
        };
        let mut announce = Announcements::live(live);
        let mut outcomes = Vec::with_capacity(results.len());
        for (result, (verdict, note)) in results.into_iter().zip(notes) {
            if let Ok(disposition) = &result {
                tidings_common::observe::inbound(verdict.as_str());
                info!(
                    ?verdict,
                    disposition = %tidings_common::mail::mask_addresses(&format!("{disposition:?}")),
                    "inbound email processed"
                );
                if let Some(note) = &note {
                    warn!(note = %note, "inbound email posted whole: no new text was found");
                }
                announce.extend(disposition.announcements());
            }
            outcomes.push(Outcome::of(&result));
        }
        if !announce.is_empty() {
            announce
                .publish_or_leave_to_sweep(Ok(publisher), &self.topology)
                .await;
        }
        outcomes
    }

    async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        let session = Session::open(&self.config.amqp_url, "inbound", &self.topology).await?;
        let (this, handler_publisher) = (self.clone(), session.publisher.clone());
        let queue = self.topology.inbound_queue();
        let stop = shutdown.child_token();
        let consumer = amqp::consume_grouped(
            &session.connection,
            &session.publisher,
            &self.topology,
            &queue,
            self.config.prefetch,
            GROUPING,
            &stop,
            move |set| this.clone().handle_set(handler_publisher.clone(), set),
        );
        let result = session.serve(&stop, vec![Box::pin(consumer)]).await;
        session.close().await;
        result
    }
}

/// `tidings inbound enqueue`: queues one raw message read from standard input. Returns the
/// sysexits code to exit with on failure: 67 for a recipient that is not ours, 75 for a
/// temporary failure (the relay retries), 65 for an oversized message.
pub async fn enqueue_stdin(
    config: &Config,
    from: &str,
    recipients: &[String],
) -> std::result::Result<(), i32> {
    for rcpt in recipients {
        if let Some(refusal) = smtp::refuse_recipient(rcpt, config) {
            eprintln!("tidings: {rcpt}: {refusal}");
            return Err(67);
        }
    }
    let mut raw = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw) {
        eprintln!("tidings: reading the message: {e}");
        return Err(75);
    }
    if raw.len() > config.inbound_max_bytes {
        eprintln!(
            "tidings: message exceeds the {}-byte limit",
            config.inbound_max_bytes
        );
        return Err(65);
    }
    let topology = Topology::from_config(config);
    let queued = async {
        let session = Session::open(&config.amqp_url, "inbound enqueue", &topology).await?;
        let rcpts: Vec<String> = recipients.iter().map(|r| r.to_ascii_lowercase()).collect();
        let db = Db::new(&config.database_url, 1);
        let payload = payload_of(&db, &raw).await;
        queue_raw(&session.publisher, &topology, from, &rcpts, None, &payload).await?;
        session.close().await;
        Ok::<_, tidings_common::Error>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), queued).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            eprintln!("tidings: could not queue the message: {e}");
            Err(75)
        }
        Err(_) => {
            eprintln!("tidings: timed out queueing the message");
            Err(75)
        }
    }
}

/// Mails larger than this wait in the `inbound_spool` table; the broker carries a reference.
pub const SPOOL_OVER: usize = 256 * 1024;
/// The header of a delivery whose mail is in the spool: the row's id.
const SPOOL_HEADER: &str = "x-tidings-spool";
/// The header with the spooled mail's size.
const SIZE_HEADER: &str = "x-tidings-size";

/// What goes on the broker: the raw mail, or the spool row of a large one.
pub(crate) enum Payload<'a> {
    Raw(&'a [u8]),
    Spooled { id: i64, size: usize },
}

/// The payload of `raw`: a large mail is stored in the spool first (once, before any publish
/// attempt); a small one, or any mail when the database cannot take it, goes as it is.
pub(crate) async fn payload_of<'a>(db: &Db, raw: &'a [u8]) -> Payload<'a> {
    if raw.len() <= SPOOL_OVER {
        return Payload::Raw(raw);
    }
    let copy = raw.to_vec();
    let stored = db
        .run(move |conn| {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Id {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                id: i64,
            }
            let row: Id =
                diesel::sql_query("INSERT INTO inbound_spool (raw) VALUES ($1) RETURNING id")
                    .bind::<diesel::sql_types::Bytea, _>(&copy)
                    .get_result(conn)?;
            Ok(row.id)
        })
        .await;
    match stored {
        Ok(id) => Payload::Spooled {
            id,
            size: raw.len(),
        },
        Err(e) => {
            warn!(error = %e, "the spool cannot take a large mail; it goes through the broker");
            Payload::Raw(raw)
        }
    }
}

/// Queues one email (or its spool reference) with its envelope (in headers) and waits for the
/// broker's confirm; the SMTP listener and `inbound enqueue` both hand mail over this way.
pub(crate) async fn queue_raw(
    publisher: &Publisher,
    topology: &Topology,
    mail_from: &str,
    rcpts: &[String],
    client: Option<&(std::net::IpAddr, String)>,
    payload: &Payload<'_>,
) -> Result<()> {
    let mut headers = lapin::types::FieldTable::default();
    let body: &[u8] = match payload {
        Payload::Raw(raw) => raw,
        Payload::Spooled { id, size } => {
            headers.insert(SPOOL_HEADER.into(), AMQPValue::LongLongInt(*id));
            headers.insert(SIZE_HEADER.into(), AMQPValue::LongLongInt(*size as i64));
            b""
        }
    };
    headers.insert(
        RCPT_HEADER.into(),
        AMQPValue::LongString(rcpts.join(",").into()),
    );
    headers.insert(
        MAIL_FROM_HEADER.into(),
        AMQPValue::LongString(mail_from.into()),
    );
    if let Some((ip, helo)) = client {
        headers.insert(
            CLIENT_HEADER.into(),
            AMQPValue::LongString(format!("{ip} {helo}").into()),
        );
    }
    publisher
        .publish(
            &topology.events_exchange(),
            amqp::EMAIL_RECEIVED,
            body,
            Some(headers),
        )
        .await
}

/// Runs the SMTP listener and the processing consumer until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let topology = Topology::from_config(&config);
    let listener = tokio::net::TcpListener::bind(config.inbound_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "TIDINGS_INBOUND_ADDR {}: cannot listen: {e}",
                config.inbound_addr
            )
        })?;
    info!(addr = %config.inbound_addr, domain = %config.reply_domain, "inbound SMTP listening");
    let publisher = SharedPublisher::default();
    let keeper = publisher.spawn_keeper(
        config.amqp_url.expose().clone(),
        "inbound",
        topology.clone(),
        shutdown.clone(),
    );
    // Sessions are accepted once the broker is connected (or after the wait), so an ordinary
    // start does not answer its first mail with 451.
    if !publisher
        .wait_connected(std::time::Duration::from_secs(10))
        .await
    {
        warn!("the broker is not reachable yet; accepting mail anyway (451 until it is)");
    }
    let ingress = Arc::new(smtp::Ingress::new(
        config.clone(),
        topology.clone(),
        publisher,
        Db::new(&config.database_url, 4),
    ));
    let server = tokio::spawn(smtp::serve(listener, ingress, shutdown.clone()));
    let verifier = if config.mail_auth.inbound_verify && config.inbound_authserv_id.is_none() {
        Some(dns::authenticator(config.mail_auth.dns_server).map_err(|e| anyhow::anyhow!(e))?)
    } else {
        None
    };
    let processor = Arc::new(Processor {
        verifier,
        db: Db::new(&config.database_url, config.db_pool_size),
        context: InboundContext::from_config(&config),
        config,
        topology,
    });
    amqp::run_resilient("inbound", &shutdown, || processor.session(&shutdown)).await?;
    let _ = server.await;
    let _ = keeper.await;
    info!("inbound stopped");
    Ok(())
}
