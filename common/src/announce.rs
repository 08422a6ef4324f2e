//! The one home of every publish-after-commit. A transaction writes rows (a message, domain
//! events, outbox emails); once it commits, what it wrote is announced on the broker so the
//! next role picks it up. A failed announcement loses nothing: the rows stay unhandled and the
//! sweeps (see [`crate::sweep`]) find them and announce them again.

use tracing::warn;

use crate::Result;
use crate::amqp::{
    DUE_ROUTING_KEY, EMAIL_QUEUED, MESSAGE_POSTED, MESSAGE_POSTED_NOW, MessagePosted,
    NotificationBatch, Publisher, Topology,
};
use crate::events::{EventRecorded, RecordedEvent};

/// The AMQP payload announcing outbox rows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxBatch {
    pub outbox_ids: Vec<i64>,
}

/// What one or more committed transactions need announced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Announcements {
    /// Messages to dispatch (`message.posted`): bulk work.
    pub messages: Vec<i64>,
    /// Messages a person just posted (`message.posted.now`): dispatched ahead of bulk work.
    pub interactive: Vec<i64>,
    /// Domain events to handle.
    pub events: Vec<RecordedEvent>,
    /// Outbox emails to send.
    pub outbox: Vec<i64>,
    /// Notification batches due now (straight to the due exchange, past the delay).
    pub due: Vec<NotificationBatch>,
    /// People with new live events (one [`LivePoke`](crate::live::LivePoke) for all). Not
    /// counted by [`Announcements::len`]: a lost poke is caught by the streams' own reads.
    pub live: Vec<i64>,
    /// A new template version (its id): every process loads it. Not counted either: the
    /// processes also look for new versions periodically.
    pub templates: Option<i64>,
}

impl Announcements {
    /// A message a person just posted: the interactive lane.
    pub fn message(id: i64) -> Self {
        Announcements {
            interactive: vec![id],
            ..Default::default()
        }
    }

    /// Wakes the live event streams of `people`.
    pub fn live(people: Vec<i64>) -> Self {
        Announcements {
            live: people,
            ..Default::default()
        }
    }

    pub fn events(events: Vec<RecordedEvent>) -> Self {
        Announcements {
            events,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.live.is_empty() && self.templates.is_none()
    }

    /// Tells every process that template version `marker` was saved.
    pub fn templates(marker: i64) -> Self {
        Announcements {
            templates: Some(marker),
            ..Default::default()
        }
    }

    /// How many rows are announced.
    pub fn len(&self) -> usize {
        self.messages.len()
            + self.interactive.len()
            + self.events.len()
            + self.outbox.len()
            + self
                .due
                .iter()
                .map(|b| b.notification_ids.len())
                .sum::<usize>()
    }

    /// Adds what `other` announces.
    pub fn extend(&mut self, other: Announcements) {
        self.messages.extend(other.messages);
        self.interactive.extend(other.interactive);
        self.events.extend(other.events);
        self.outbox.extend(other.outbox);
        self.due.extend(other.due);
        self.live.extend(other.live);
        self.templates = self.templates.max(other.templates);
    }

    /// Publishes every announcement with a confirm, retrying a broker hiccup a few times. The
    /// messages and events are published together and their confirms awaited together, so a
    /// set of a hundred costs about one confirm's wait, not a hundred.
    pub async fn publish(&self, publisher: &Publisher, topology: &Topology) -> Result<()> {
        let events_exchange = topology.events_exchange();
        let lanes = (self.interactive.iter().map(|&id| (MESSAGE_POSTED_NOW, id)))
            .chain(self.messages.iter().map(|&id| (MESSAGE_POSTED, id)));
        let messages = lanes.map(|(key, message_id)| {
            let exchange = events_exchange.as_str();
            async move {
                publisher
                    .publish_json_retrying(exchange, key, &MessagePosted { message_id })
                    .await
            }
        });
        futures_util::future::try_join_all(messages).await?;
        let events = self.events.iter().map(|event| {
            let exchange = events_exchange.as_str();
            async move {
                publisher
                    .publish_json_retrying(
                        exchange,
                        &event.routing_key(),
                        &EventRecorded { event_id: event.id },
                    )
                    .await
            }
        });
        futures_util::future::try_join_all(events).await?;
        if !self.outbox.is_empty() {
            let batch = OutboxBatch {
                outbox_ids: self.outbox.clone(),
            };
            publisher
                .publish_json_retrying(&events_exchange, EMAIL_QUEUED, &batch)
                .await?;
        }
        for batch in &self.due {
            publisher
                .publish_json_retrying(&topology.due_exchange(), DUE_ROUTING_KEY, batch)
                .await?;
        }
        if !self.live.is_empty() {
            let mut people = self.live.clone();
            people.sort_unstable();
            people.dedup();
            let poke = crate::live::LivePoke { people };
            // Lost, it costs latency only: the streams read their rows on every keep-alive.
            if let Err(e) = publisher
                .publish_transient(&events_exchange, crate::live::LIVE_ROUTING_KEY, &poke)
                .await
            {
                tracing::debug!(error = %e, "live events not announced; the streams will read them");
            }
        }
        if let Some(marker) = self.templates {
            let changed = crate::templates::versions::TemplatesChanged { marker };
            if let Err(e) = publisher
                .publish_transient(
                    &events_exchange,
                    crate::templates::versions::TEMPLATES_ROUTING_KEY,
                    &changed,
                )
                .await
            {
                tracing::debug!(error = %e, "template version not announced; processes look periodically");
            }
        }
        Ok(())
    }

    fn left_to_sweep(&self, e: &crate::Error) {
        warn!(
            error = %e,
            messages = ?self.messages,
            interactive = ?self.interactive,
            events = self.events.len(),
            outbox = self.outbox.len(),
            "not announced; the sweep will announce it again"
        );
    }

    /// Publishes through a kept-connected publisher: what was not confirmed before a broker
    /// failover is published again after it (see [`SharedPublisher::with_failover`]), for up
    /// to `patience`; past that the sweeps announce it. The rows are committed, so nothing is
    /// lost either way.
    pub async fn publish_with_failover(
        &self,
        broker: &crate::amqp::SharedPublisher,
        topology: &Topology,
        patience: std::time::Duration,
    ) {
        if self.is_empty() {
            return;
        }
        let published = broker
            .with_failover(patience, |publisher| async move {
                self.publish(&publisher, topology).await
            })
            .await;
        if let Err(e) = published {
            self.left_to_sweep(&e);
        }
    }

    /// Publishes like [`Announcements::publish`] when a publisher is at hand; otherwise, or
    /// on failure, logs that the sweeps will announce them later. The rows are committed, so
    /// nothing is lost either way.
    pub async fn publish_or_leave_to_sweep(
        &self,
        publisher: Result<Publisher>,
        topology: &Topology,
    ) {
        if self.is_empty() {
            return;
        }
        let published = match publisher {
            Ok(publisher) => self.publish(&publisher, topology).await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            self.left_to_sweep(&e);
        }
    }
}
