//! The consume loop every role uses: bounded prefetch, a span per delivery, panics caught,
//! acknowledgement only after the handler's effects are committed, and a dead-letter with the
//! reason for whatever can never be processed.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use super::{Publisher, REASON_HEADER, SOURCE_HEADER, Topology};
use crate::error::{Error, Result};

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

impl Outcome {
    /// The outcome of a delivery whose handling failed with `error`: returned to the queue
    /// when retrying may help, dead-lettered with the reason when it cannot.
    pub fn from_error(error: &Error) -> Self {
        if error.is_transient() {
            Outcome::Requeue(error.to_string())
        } else {
            Outcome::DeadLetter(error.to_string())
        }
    }

    /// [`Outcome::Ack`] when `result` is `Ok`, otherwise [`Outcome::from_error`].
    pub fn of<T>(result: &Result<T>) -> Self {
        match result {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::from_error(e),
        }
    }
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
    let grouping = Grouping {
        max_group: 1,
        in_flight: usize::from(prefetch),
        linger: Duration::ZERO,
    };
    consume_grouped(
        connection, publisher, topology, queue, prefetch, grouping, shutdown, one_by_one,
    )
    .await
}

/// How [`consume_grouped`] forms groups.
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    /// Most deliveries in one group.
    pub max_group: usize,
    /// Most groups handled at once. While that many are in flight, new deliveries wait in the
    /// prefetch buffer and form the next, larger group: under load the work per delivery
    /// shrinks instead of the groups multiplying.
    pub in_flight: usize,
    /// How long a group that is not full waits for more deliveries before it starts. A few
    /// milliseconds at a steady rate turn groups of one into groups of dozens, which is most of
    /// the difference between the database work per delivery at a steady rate and in a burst.
    pub linger: Duration,
}

/// Like [`consume`], but hands the handler every delivery already waiting (up to
/// `grouping.max_group`) as one group, so it can do set-based work; it returns one outcome per
/// delivery, in order. Under light load groups have one delivery and nothing waits; under
/// heavy load the groups grow (at most `grouping.in_flight` run at once) and the work per
/// delivery shrinks.
#[allow(clippy::too_many_arguments)]
pub async fn consume_grouped<H, F>(
    connection: &Connection,
    publisher: &Publisher,
    topology: &Topology,
    queue: &str,
    prefetch: u16,
    grouping: Grouping,
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
    let Grouping {
        max_group,
        in_flight: max_in_flight,
        linger,
    } = grouping;
    let max_in_flight = max_in_flight.max(1);
    info!(queue, prefetch, max_group, max_in_flight, "consuming");
    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "delivery task failed");
                }
            }
            next = consumer.next(), if in_flight.len() < max_in_flight => match next {
                Some(Ok(first)) => {
                    let (group, failed) = take_waiting(&mut consumer, first, max_group, linger).await;
                    let handler = handler.clone();
                    let publisher = publisher.clone();
                    let dead_exchange = topology.dead_exchange();
                    let queue = queue.to_string();
                    let span = tracing::info_span!(
                        "delivery",
                        delivery.tag = group[0].delivery_tag,
                        group = group.len(),
                        queue = %queue,
                        redelivered = group[0].redelivered
                    );
                    let held = group.len() as f64;
                    crate::observe::in_flight(&queue, held);
                    in_flight.spawn(
                        async move {
                            handle_group(group, handler, &publisher, &dead_exchange, &queue).await;
                            crate::observe::in_flight(&queue, -held);
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

/// `first` and the deliveries already waiting behind it, up to `max_group`, waiting up to
/// `linger` for more while the group is not full; and the error that stopped the consumer, if
/// one did.
async fn take_waiting(
    consumer: &mut lapin::Consumer,
    first: Delivery,
    max_group: usize,
    linger: Duration,
) -> (Vec<Delivery>, Option<lapin::Error>) {
    let deadline = tokio::time::Instant::now() + linger;
    let mut group = vec![first];
    while group.len() < max_group {
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None if linger.is_zero() => break,
            None => match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        match next {
            Some(Ok(delivery)) => group.push(delivery),
            Some(Err(e)) => return (group, Some(e)),
            None => break,
        }
    }
    (group, None)
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
    let outcomes = run_handler(group, handler).await;
    let mut paused = false;
    for ((acker, data), outcome) in kept.into_iter().zip(outcomes) {
        let result = match outcome {
            Outcome::Ack => acker.ack(BasicAckOptions::default()).await,
            Outcome::Requeue(reason) => {
                warn!(
                    reason,
                    "temporary failure; returning the delivery to the queue"
                );
                // One pause per group, so an outage does not turn into a hot loop.
                requeue(&acker, !std::mem::replace(&mut paused, true)).await
            }
            Outcome::DeadLetter(reason) => {
                error!(reason, "dead-lettering a delivery that cannot be processed");
                let why = if reason.starts_with("handler panicked") {
                    "panicked"
                } else if reason.starts_with("malformed payload") {
                    "malformed"
                } else {
                    "failed"
                };
                crate::observe::dead_lettered(queue, why);
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
                        requeue(&acker, true).await
                    }
                }
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "acknowledgement failed; the broker will redeliver");
        }
    }
}

/// Runs the handler on a group; one outcome per delivery whatever it does. A panic
/// dead-letters the whole group with the panic's message; a wrong number of outcomes
/// returns it to the queue.
async fn run_handler<H, F>(group: Vec<Delivery>, handler: H) -> Vec<Outcome>
where
    H: Fn(Vec<Delivery>) -> F,
    F: Future<Output = Vec<Outcome>>,
{
    let count = group.len();
    match AssertUnwindSafe(handler(group)).catch_unwind().await {
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
    }
}

/// Returns a delivery to its queue, after [`REQUEUE_PAUSE`] when `pause` is set.
async fn requeue(acker: &lapin::Acker, pause: bool) -> lapin::Result<bool> {
    if pause {
        tokio::time::sleep(REQUEUE_PAUSE).await;
    }
    acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
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

/// A private queue bound to `exchange` with `routing_key`, consumed without acks: for
/// announcements every process hears (live pokes, new template versions), whose loss costs
/// only latency. Keep the connection for as long as the consumer is read.
pub async fn subscribe(
    url: &str,
    role: &str,
    exchange: &str,
    routing_key: &str,
) -> crate::Result<(lapin::Connection, String, lapin::Consumer)> {
    let connection = super::connect(url, role).await?;
    let (queue, consumer) = subscribe_on(&connection, exchange, routing_key).await?;
    Ok((connection, queue, consumer))
}

/// Like [`subscribe`], on a channel of a connection the caller already has: the queue lives as
/// long as that connection.
pub async fn subscribe_on(
    connection: &lapin::Connection,
    exchange: &str,
    routing_key: &str,
) -> crate::Result<(String, lapin::Consumer)> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().to_string(), consumer))
}
