//! RabbitMQ: topology, confirmed publishing, and the consume loop every role uses.
//!
//! Topology (all names start with the configured prefix `P`):
//!
//! ```text
//! P.events  (topic)  --message.posted-->  P.dispatch                      (dispatch consumes)
//! P.delay   (direct) --<window ms>----->  P.delay.<window ms>  TTL = seen window
//!                                            \-- dead-letters --> P.due (direct) --due--> P.due   (mailer consumes)
//! P.retry   (direct) --<tier ms>------->  P.retry.<tier ms>    TTL = tier, dead-letters to P.due
//! P.dead    (fanout) ------------------>  P.dead               payloads that cannot be processed,
//!                                                              reason in header x-tidings-reason
//! ```
//!
//! The delay and retry queues are named after their TTL, so changing the seen window declares a
//! new queue instead of failing on the old one's arguments; the old queue keeps draining.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::config::{Config, QueueType};
use crate::error::{Error, Result};

/// Routing key of the event published after a message is committed.
pub const MESSAGE_POSTED: &str = "message.posted";
/// Routing key of a raw email accepted by the inbound listener.
pub const EMAIL_RECEIVED: &str = "email.received";
/// Header of a raw email: the envelope recipients, comma-separated.
pub const RCPT_HEADER: &str = "x-tidings-rcpt";
/// Header of a raw email: the envelope sender.
pub const MAIL_FROM_HEADER: &str = "x-tidings-mail-from";
/// Routing key inside the due exchange.
pub const DUE_ROUTING_KEY: &str = "due";
/// Header carrying why a payload was dead-lettered.
pub const REASON_HEADER: &str = "x-tidings-reason";
/// Header naming the queue a dead-lettered payload came from.
pub const SOURCE_HEADER: &str = "x-tidings-source-queue";
/// Upper bound on messages held in a delay or retry queue; beyond it publishes are refused
/// (and retried by the publisher) instead of silently dropping the oldest.
const DELAY_MAX_LENGTH: i64 = 5_000_000;

/// `message.posted`: a message was committed and needs its recipients decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessagePosted {
    pub message_id: i64,
}

/// What rides the delay: one posted message's notifications, checked and sent when due.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationBatch {
    pub message_id: i64,
    pub notification_ids: Vec<i64>,
}

/// Names and arguments of every exchange and queue.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub queue_type: QueueType,
    pub seen_window: Duration,
    pub retry_tiers: Vec<Duration>,
}

impl Topology {
    pub fn from_config(config: &Config) -> Self {
        Topology {
            prefix: config.queue_prefix.clone(),
            queue_type: config.queue_type,
            seen_window: config.seen_window,
            retry_tiers: config.retry_tiers.clone(),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }
    pub fn events_exchange(&self) -> String {
        self.name("events")
    }
    pub fn dispatch_queue(&self) -> String {
        self.name("dispatch")
    }
    pub fn inbound_queue(&self) -> String {
        self.name("inbound")
    }
    /// Domain events (user created, item assigned, …), consumed by dispatch.
    pub fn domain_queue(&self) -> String {
        self.name("domain")
    }
    /// Outbox emails (system notifications, automation emails), consumed by the mailer.
    pub fn outbox_queue(&self) -> String {
        self.name("outbox")
    }
    pub fn delay_exchange(&self) -> String {
        self.name("delay")
    }
    pub fn delay_routing_key(&self) -> String {
        self.seen_window.as_millis().to_string()
    }
    pub fn delay_queue(&self) -> String {
        self.name(&format!("delay.{}", self.delay_routing_key()))
    }
    pub fn due_exchange(&self) -> String {
        self.name("due")
    }
    pub fn due_queue(&self) -> String {
        self.name("due")
    }
    pub fn retry_exchange(&self) -> String {
        self.name("retry")
    }
    /// Routing key of retry tier `tier` (0-based); the last tier is used past the end.
    pub fn retry_routing_key(&self, tier: usize) -> String {
        let tier = tier.min(self.retry_tiers.len().saturating_sub(1));
        self.retry_tiers
            .get(tier)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default()
    }
    fn retry_queue(&self, delay: Duration) -> String {
        self.name(&format!("retry.{}", delay.as_millis()))
    }
    pub fn dead_exchange(&self) -> String {
        self.name("dead")
    }
    pub fn dead_queue(&self) -> String {
        self.name("dead")
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.queue_type.as_str().into()),
        );
        args
    }

    fn delayed_queue_arguments(&self, ttl: Duration) -> FieldTable {
        let mut args = self.queue_arguments();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(ttl.as_millis() as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.due_exchange().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(DUE_ROUTING_KEY.into()),
        );
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(DELAY_MAX_LENGTH),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
        }
        args
    }

    /// Declares every exchange, queue and binding; safe to run from every process at start.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (exchange, kind) in [
            (self.events_exchange(), ExchangeKind::Topic),
            (self.delay_exchange(), ExchangeKind::Direct),
            (self.due_exchange(), ExchangeKind::Direct),
            (self.retry_exchange(), ExchangeKind::Direct),
            (self.dead_exchange(), ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
                .await?;
        }
        let mut bindings = vec![
            (
                self.dispatch_queue(),
                self.queue_arguments(),
                self.events_exchange(),
                MESSAGE_POSTED.to_string(),
            ),
            (
                self.inbound_queue(),
                self.queue_arguments(),
                self.events_exchange(),
                EMAIL_RECEIVED.to_string(),
            ),
            (
                self.domain_queue(),
                self.queue_arguments(),
                self.events_exchange(),
                format!("{}#", crate::events::ROUTING_PREFIX),
            ),
            (
                self.outbox_queue(),
                self.queue_arguments(),
                self.events_exchange(),
                crate::outbox::EMAIL_QUEUED.to_string(),
            ),
            (
                self.delay_queue(),
                self.delayed_queue_arguments(self.seen_window),
                self.delay_exchange(),
                self.delay_routing_key(),
            ),
            (
                self.due_queue(),
                self.queue_arguments(),
                self.due_exchange(),
                DUE_ROUTING_KEY.to_string(),
            ),
            (
                self.dead_queue(),
                self.queue_arguments(),
                self.dead_exchange(),
                String::new(),
            ),
        ];
        for tier in &self.retry_tiers {
            bindings.push((
                self.retry_queue(*tier),
                self.delayed_queue_arguments(*tier),
                self.retry_exchange(),
                tier.as_millis().to_string(),
            ));
        }
        for (name, args, exchange, key) in bindings {
            channel
                .queue_declare(name.as_str().into(), queue, args)
                .await?;
            channel
                .queue_bind(
                    name.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes every exchange and queue of this topology (used by tests to clean up).
    pub async fn delete(&self, channel: &Channel) -> Result<()> {
        let mut queues = vec![
            self.dispatch_queue(),
            self.inbound_queue(),
            self.domain_queue(),
            self.outbox_queue(),
            self.delay_queue(),
            self.due_queue(),
            self.dead_queue(),
        ];
        queues.extend(self.retry_tiers.iter().map(|t| self.retry_queue(*t)));
        for q in queues {
            channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in [
            self.events_exchange(),
            self.delay_exchange(),
            self.due_exchange(),
            self.retry_exchange(),
            self.dead_exchange(),
        ] {
            channel
                .exchange_delete(e.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// Opens a connection named after the role, so the management UI shows who is who.
pub async fn connect(url: &str, role: &str) -> Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("tidings {role}").into());
    Ok(Connection::connect(url, properties).await?)
}

/// A channel in confirm mode; every publish waits for the broker's confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent, mandatory message and waits for its confirm. A nack or an
    /// unroutable return is an error, so the caller never believes a dropped message was sent.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<()> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(headers) = headers {
            properties = properties.with_headers(headers);
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties,
            )
            .await?
            .await?;
        let refused = |reason: &str| Error::PublishRefused {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            reason: reason.to_string(),
        };
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(refused(&format!(
                "unroutable: {}",
                returned.reply_text.as_str()
            ))),
            Confirmation::Nack(_) => Err(refused("nacked (queue full or broker failure)")),
            Confirmation::NotRequested => Err(refused("channel is not in confirm mode")),
        }
    }

    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<()> {
        self.publish(exchange, routing_key, &serde_json::to_vec(body)?, None)
            .await
    }

    /// Publishes like [`Publisher::publish_json`], retrying a few times with back-off when the
    /// broker refuses or the channel hiccups.
    pub async fn publish_json_retrying<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<()> {
        let payload = serde_json::to_vec(body)?;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.publish(exchange, routing_key, &payload, None).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 && e.is_transient() => {
                    warn!(error = %e, attempt, exchange, "publish not confirmed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A publisher kept connected in the background, for roles that must keep serving (HTTP,
/// SMTP) while the broker restarts. `None` while disconnected.
#[derive(Clone, Default)]
pub struct SharedPublisher {
    current: std::sync::Arc<std::sync::RwLock<Option<Publisher>>>,
}

impl SharedPublisher {
    /// The connected publisher, or an error saying the broker is not connected.
    pub fn get(&self) -> Result<Publisher> {
        self.current
            .read()
            .expect("publisher lock")
            .clone()
            .ok_or_else(|| Error::Task("broker not connected".into()))
    }

    fn set(&self, publisher: Option<Publisher>) {
        *self.current.write().expect("publisher lock") = publisher;
    }

    /// Connects, declares the topology, and reconnects whenever the connection drops, until
    /// `shutdown` fires.
    pub async fn keep_connected(
        &self,
        url: &str,
        role: &str,
        topology: &Topology,
        shutdown: &CancellationToken,
    ) {
        let _ = run_resilient(role, shutdown, || async {
            let connection = connect(url, role).await?;
            let publisher = Publisher::open(&connection).await?;
            topology.declare(publisher.channel()).await?;
            self.set(Some(publisher));
            info!(role, "connected to the broker");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.set(None);
                        let _ = connection.close(200, "shutdown".into()).await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if !connection.status().connected() {
                            self.set(None);
                            warn!(role, "lost the broker connection");
                            return Err(Error::Task("broker connection lost".into()));
                        }
                    }
                }
            }
        })
        .await;
    }
}

/// What a handler decided about one delivery.
#[derive(Debug)]
pub enum Outcome {
    /// Done (its effects are committed): acknowledge.
    Ack,
    /// A temporary failure: return it to the queue after a pause.
    Requeue(String),
    /// It can never be processed: move it to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// How long to wait before returning a delivery after a temporary failure, so a database or
/// broker outage does not turn into a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);
/// How long in-flight deliveries get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Consumes `queue` until `shutdown` fires or the channel fails, running `handler` on up to
/// `prefetch` deliveries at once. Each delivery is acknowledged only after its handler returns
/// [`Outcome::Ack`]; a panic or [`Outcome::DeadLetter`] moves it to the dead-letter exchange
/// with the reason in a header.
pub async fn consume<H, F>(
    connection: &Connection,
    publisher: &Publisher,
    topology: &Topology,
    queue: &str,
    prefetch: u16,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<()>
where
    H: Fn(Delivery) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let one_by_one = move |mut group: Vec<Delivery>| {
        let handler = handler.clone();
        async move {
            match group.pop() {
                Some(delivery) => vec![handler(delivery).await],
                None => Vec::new(),
            }
        }
    };
    consume_grouped(
        connection, publisher, topology, queue, prefetch, 1, shutdown, one_by_one,
    )
    .await
}

/// Like [`consume`], but hands the handler every delivery already waiting (up to `max_group`)
/// as one group, so it can do set-based work; it returns one outcome per delivery, in order.
/// Under light load groups have one delivery and nothing waits; under heavy load the work per
/// delivery shrinks.
#[allow(clippy::too_many_arguments)]
pub async fn consume_grouped<H, F>(
    connection: &Connection,
    publisher: &Publisher,
    topology: &Topology,
    queue: &str,
    prefetch: u16,
    max_group: usize,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<()>
where
    H: Fn(Vec<Delivery>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<Outcome>> + Send + 'static,
{
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue, prefetch, max_group, "consuming");
    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "delivery task failed");
                }
            }
            next = consumer.next() => match next {
                Some(Ok(first)) => {
                    let mut group = vec![first];
                    let mut failed = None;
                    while group.len() < max_group {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(delivery))) => group.push(delivery),
                            Some(Some(Err(e))) => {
                                failed = Some(e);
                                break;
                            }
                            _ => break,
                        }
                    }
                    let handler = handler.clone();
                    let publisher = publisher.clone();
                    let dead_exchange = topology.dead_exchange();
                    let queue = queue.to_string();
                    let span = tracing::info_span!(
                        "delivery",
                        delivery.id = group[0].delivery_tag,
                        group = group.len(),
                        queue = %queue,
                        redelivered = group[0].redelivered
                    );
                    in_flight.spawn(
                        async move {
                            handle_group(group, handler, &publisher, &dead_exchange, &queue).await
                        }
                        .instrument(span),
                    );
                    if let Some(e) = failed {
                        break Err(e.into());
                    }
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Err(Error::Task(format!("consumer of {queue} was cancelled by the broker"))),
            }
        }
    };
    // Finish what is in flight; anything still unacknowledged goes back to the queue when the
    // channel closes.
    let drain = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(
            queue,
            "in-flight deliveries did not finish in time; the broker will redeliver them"
        );
    }
    let _ = channel.close(200, "bye".into()).await;
    result
}

async fn handle_group<H, F>(
    group: Vec<Delivery>,
    handler: H,
    publisher: &Publisher,
    dead_exchange: &str,
    queue: &str,
) where
    H: Fn(Vec<Delivery>) -> F,
    F: Future<Output = Vec<Outcome>>,
{
    let kept: Vec<(lapin::Acker, Vec<u8>)> = group
        .iter()
        .map(|d| (d.acker.clone(), d.data.clone()))
        .collect();
    let count = kept.len();
    let outcomes = match AssertUnwindSafe(handler(group)).catch_unwind().await {
        Ok(outcomes) if outcomes.len() == count => outcomes,
        Ok(outcomes) => {
            let reason = format!(
                "handler returned {} outcomes for {count} deliveries",
                outcomes.len()
            );
            (0..count)
                .map(|_| Outcome::Requeue(reason.clone()))
                .collect()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            (0..count)
                .map(|_| Outcome::DeadLetter(format!("handler panicked: {what}")))
                .collect()
        }
    };
    let mut requeue_pause = false;
    for ((acker, data), outcome) in kept.into_iter().zip(outcomes) {
        let result = match outcome {
            Outcome::Ack => acker.ack(BasicAckOptions::default()).await,
            Outcome::Requeue(reason) => {
                warn!(
                    reason,
                    "temporary failure; returning the delivery to the queue"
                );
                if !requeue_pause {
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    requeue_pause = true;
                }
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Outcome::DeadLetter(reason) => {
                error!(reason, "dead-lettering a delivery that cannot be processed");
                let mut headers = FieldTable::default();
                headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
                headers.insert(SOURCE_HEADER.into(), AMQPValue::LongString(queue.into()));
                match publisher
                    .publish(dead_exchange, "", &data, Some(headers))
                    .await
                {
                    Ok(()) => acker.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        error!(error = %e, "dead-letter publish failed; returning the delivery");
                        tokio::time::sleep(REQUEUE_PAUSE).await;
                        acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await
                    }
                }
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "acknowledgement failed; the broker will redeliver");
        }
    }
}

/// Runs `session` again and again until it returns `Ok` (a clean shutdown), pausing with
/// growing back-off after each failure, so a broker or database restart is survived.
pub async fn run_resilient<S, F>(
    role: &str,
    shutdown: &CancellationToken,
    mut session: S,
) -> Result<()>
where
    S: FnMut() -> F,
    F: Future<Output = Result<()>>,
{
    let mut backoff = Duration::from_millis(250);
    loop {
        match session().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                error!(role, error = %e, retry_in_ms = backoff.as_millis() as u64, "session failed; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Parses a JSON payload, or says why it cannot be processed.
pub fn parse_payload<T: for<'de> Deserialize<'de>>(data: &[u8]) -> Result<T, String> {
    serde_json::from_slice(data).map_err(|e| {
        format!(
            "malformed payload ({e}): {}",
            String::from_utf8_lossy(&data[..data.len().min(200)])
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix_and_ttls() {
        let t = Topology {
            prefix: "p".into(),
            queue_type: QueueType::Quorum,
            seen_window: Duration::from_secs(60),
            retry_tiers: vec![Duration::from_secs(60), Duration::from_secs(300)],
        };
        assert_eq!(t.delay_queue(), "p.delay.60000");
        assert_eq!(t.retry_routing_key(0), "60000");
        assert_eq!(t.retry_routing_key(7), "300000");
        let args = t.delayed_queue_arguments(Duration::from_secs(60));
        let inner = args.inner();
        assert_eq!(
            inner.get(&ShortString::from("x-message-ttl")),
            Some(&AMQPValue::LongLongInt(60_000))
        );
        assert!(inner.contains_key(&ShortString::from("x-dead-letter-strategy")));
        assert!(!inner.contains_key(&ShortString::from("x-expires")));
    }

    #[test]
    fn malformed_payload_says_why() {
        let err = parse_payload::<NotificationBatch>(b"{\"message_id\": \"x\"}").unwrap_err();
        assert!(err.starts_with("malformed payload"), "{err}");
    }
}
