//! RabbitMQ: topology (here), confirmed publishing ([`publish`]), the consume loop
//! ([`consume`]) and the reconnecting session every role runs ([`session`]).
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

mod consume;
mod publish;
mod session;

pub use consume::{
    Grouping, Outcome, consume, consume_grouped, parse_payload, subscribe, subscribe_on,
};
pub use publish::{FRAME_MAX, Publisher, SharedPublisher, connect, connect_with, use_tls};
pub use session::{Session, Task, run_resilient};

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::config::{Config, QueueType};
use crate::error::Result;

/// Routing key of the event published after a message is committed: bulk work (inbound email,
/// automations, the sweeps' republishing).
pub const MESSAGE_POSTED: &str = "message.posted";
/// Routing key of the event published after a person posts a message (the API or the
/// messenger): the interactive lane, which dispatch serves ahead of the bulk one.
pub const MESSAGE_POSTED_NOW: &str = "message.posted.now";
/// Routing key announcing outbox rows to the mailer.
pub const EMAIL_QUEUED: &str = "email.queued";
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

/// What rides the delay: the notifications of the messages one dispatch group handled (or of
/// one message), checked and sent when due.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationBatch {
    /// The batch's first message (for logs; the notifications name their own messages).
    pub message_id: i64,
    pub notification_ids: Vec<i64>,
}

impl NotificationBatch {
    /// The batch of a message nobody is notified about (yet).
    pub fn empty(message_id: i64) -> Self {
        NotificationBatch {
            message_id,
            notification_ids: Vec::new(),
        }
    }

    /// Most notification ids in one batch published again (as dispatch cuts its batches).
    pub const MAX: usize = 64;

    /// `(notification, message)` rows as batches of up to [`Self::MAX`] ids in id order (one
    /// batch per message would be one broker message per notification at fan-out 1), each
    /// naming its first notification's message.
    pub fn of_rows(mut rows: Vec<(i64, i64)>) -> Vec<Self> {
        rows.sort_unstable();
        rows.chunks(Self::MAX)
            .map(|chunk| NotificationBatch {
                message_id: chunk[0].1,
                notification_ids: chunk.iter().map(|&(id, _)| id).collect(),
            })
            .collect()
    }
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
    /// Messages people post themselves, dispatched ahead of [`Topology::dispatch_queue`].
    pub fn dispatch_now_queue(&self) -> String {
        self.name("dispatch.now")
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
                self.dispatch_now_queue(),
                self.queue_arguments(),
                self.events_exchange(),
                MESSAGE_POSTED_NOW.to_string(),
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
                EMAIL_QUEUED.to_string(),
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

    /// Every durable queue of this topology.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.dispatch_queue(),
            self.dispatch_now_queue(),
            self.inbound_queue(),
            self.domain_queue(),
            self.outbox_queue(),
            self.delay_queue(),
            self.due_queue(),
            self.dead_queue(),
        ];
        queues.extend(self.retry_tiers.iter().map(|t| self.retry_queue(*t)));
        queues
    }

    /// Deletes every exchange and queue of this topology (used by tests to clean up).
    pub async fn delete(&self, channel: &Channel) -> Result<()> {
        for q in self.queues() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

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
