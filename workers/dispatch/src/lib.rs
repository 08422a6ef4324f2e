//! The dispatch role: decides who is notified about each posted message ([`fanout`]), writes
//! one notification row per recipient, and publishes one batch per message into the delay,
//! where it waits out the seen window.
//!
//! It also handles domain events ([`domain`]): system notifications, assignment and
//! project-member emails, and automations.
//!
//! It also sweeps for messages whose `message.posted` event never reached the broker (the api
//! commits first and publishes after) and publishes them again; dispatching is idempotent.

pub mod domain;
pub mod fanout;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use tidings_common::amqp::{
    self, Grouping, MessagePosted, NotificationBatch, Outcome, Publisher, Session, Topology,
};
use tidings_common::announce::Announcements;
use tidings_common::db::Db;
use tidings_common::events::EventRecorded;
use tidings_common::people_first::{self, PeopleFirst};
use tidings_common::sweep::{self, Sweep};
use tidings_common::{Config, Result};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info};

pub use fanout::{Dispatched, dispatch_messages};

/// `message.posted` events dispatched together in one transaction (at most 64, gathered for
/// up to 10 ms), and how many such transactions run at once; under load the events waiting
/// meanwhile form the next group. Two at once dispatch a backlog as fast as four did (the
/// groups grow instead), and leave the CPU and the database more room for the interactive
/// lane.
const GROUPING: Grouping = Grouping {
    max_group: 64,
    in_flight: 2,
    linger: Duration::from_millis(10),
};

/// Most notification ids in one batch on the delay. The mailer takes up to 64 batches as one
/// group and works through it 256 notifications at a time; batches of 64 keep its groups (and
/// its memory) what they were with one batch per message at fan-out 10 or less.
const BATCH_MAX: usize = 64;

/// The interactive lane (`message.posted.now`, messages people post themselves) has its own
/// consumer and transactions, so a person's post never queues behind bulk work (a storm of
/// emailed replies, an automation run): it starts at once (no linger). One group at a time,
/// so people's posts are dispatched in the order they were posted (what arrives meanwhile is
/// the next group): a page never hears of a conversation's newest message before the one
/// before it.
const INTERACTIVE: Grouping = Grouping {
    max_group: 64,
    in_flight: 1,
    linger: Duration::ZERO,
};

struct Dispatcher {
    db: Db,
    config: Config,
    topology: Topology,
    /// The bulk lane yields to the interactive one (see [`tidings_common::people_first`]).
    people_first: PeopleFirst,
}

/// Which lane a group came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Interactive,
    Bulk,
}

impl Dispatcher {
    /// Dispatches every `message.posted` that arrived together in one transaction, then
    /// publishes each message's batch into the delay; one outcome per delivery.
    async fn handle_group(
        self: Arc<Self>,
        publisher: Publisher,
        deliveries: Vec<Delivery>,
        lane: Lane,
    ) -> Vec<Outcome> {
        let _interactive = match lane {
            Lane::Interactive => Some(self.people_first.dispatching()),
            Lane::Bulk => {
                self.people_first.yield_to_people().await;
                None
            }
        };
        let events: Vec<std::result::Result<MessagePosted, String>> = deliveries
            .iter()
            .map(|d| amqp::parse_payload(&d.data))
            .collect();
        let mut ids: Vec<i64> = events.iter().flatten().map(|e| e.message_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let span = tracing::info_span!("dispatch", messages = ids.len());
        let (window, domain) = (self.config.seen_window, self.config.reply_domain.clone());
        let dispatched = if ids.is_empty() {
            Ok((HashMap::new(), Vec::new(), Vec::new()))
        } else {
            self.db
                .run(move |conn| dispatch_messages(conn, &ids, window, &domain))
                .instrument(span)
                .await
        };
        let dispatched = match dispatched {
            Ok((dispatched, recorded, live)) => {
                Announcements {
                    live,
                    ..Announcements::events(recorded)
                }
                .publish_or_leave_to_sweep(Ok(publisher.clone()), &self.topology)
                .await;
                dispatched
            }
            Err(e) => {
                return events
                    .into_iter()
                    .map(|event| match event {
                        Ok(_) => Outcome::from_error(&e),
                        Err(reason) => Outcome::DeadLetter(reason),
                    })
                    .collect();
            }
        };
        // One batch rides the delay for the whole group (cut at [`BATCH_MAX`] ids), not one
        // per message: the broker's work per notification falls with the group's size.
        let mut ids: Vec<i64> = Vec::new();
        let mut first_message = None;
        for event in events.iter().flatten() {
            if let Some(Dispatched::Batch(batch)) = dispatched.get(&event.message_id) {
                first_message.get_or_insert(batch.message_id);
                ids.extend(&batch.notification_ids);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let delayed = self
            .delay(&publisher, first_message.unwrap_or_default(), &ids)
            .await;
        events
            .into_iter()
            .map(|event| match event {
                Err(reason) => Outcome::DeadLetter(reason),
                Ok(e) => match dispatched.get(&e.message_id) {
                    None | Some(Dispatched::UnknownMessage) => {
                        Outcome::DeadLetter(format!("message {} does not exist", e.message_id))
                    }
                    Some(Dispatched::Batch(_)) => match &delayed {
                        Ok(()) => Outcome::Ack,
                        Err(reason) => Outcome::Requeue(reason.clone()),
                    },
                },
            })
            .collect()
    }

    /// Publishes a group's notifications into the delay, in batches of at most
    /// [`BATCH_MAX`] (nothing when nobody is notified).
    async fn delay(
        &self,
        publisher: &Publisher,
        first_message: i64,
        ids: &[i64],
    ) -> std::result::Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        let (exchange, key) = (
            self.topology.delay_exchange(),
            self.topology.delay_routing_key(),
        );
        let publishes = ids.chunks(BATCH_MAX).map(|chunk| {
            let batch = NotificationBatch {
                message_id: first_message,
                notification_ids: chunk.to_vec(),
            };
            let (exchange, key) = (&exchange, &key);
            async move { publisher.publish_json_retrying(exchange, key, &batch).await }
        });
        futures_util::future::try_join_all(publishes)
            .await
            .map_err(|e| format!("delay publish failed: {e}"))?;
        debug!(
            message.id = first_message,
            recipients = ids.len(),
            "notifications delayed"
        );
        Ok(())
    }

    /// Handles one domain event, then announces what it produced: outbox emails to the
    /// mailer, automation messages to dispatch.
    async fn handle_event(self: Arc<Self>, publisher: Publisher, delivery: Delivery) -> Outcome {
        let event = match amqp::parse_payload::<EventRecorded>(&delivery.data) {
            Ok(event) => event,
            Err(reason) => return Outcome::DeadLetter(reason),
        };
        let config = self.config.clone();
        let handled = self
            .db
            .run(move |conn| domain::handle_event(conn, &config, event.event_id))
            .await;
        match handled {
            Ok(Some(handled)) => {
                // Committed already: the sweeps republish what did not reach the broker.
                handled
                    .publish_or_leave_to_sweep(Ok(publisher), &self.topology)
                    .await;
                Outcome::Ack
            }
            Ok(None) => {
                Outcome::DeadLetter(format!("domain event {} does not exist", event.event_id))
            }
            Err(e) => Outcome::from_error(&e),
        }
    }

    async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        let session = Session::open(&self.config.amqp_url, "dispatch", &self.topology).await?;
        let (connection, publisher) = (&session.connection, &session.publisher);
        let stop = shutdown.child_token();
        let (messages_queue, domain_queue) =
            (self.topology.dispatch_queue(), self.topology.domain_queue());
        let (this, handler_publisher) = (self.clone(), publisher.clone());
        let messages = amqp::consume_grouped(
            connection,
            publisher,
            &self.topology,
            &messages_queue,
            self.config.prefetch,
            GROUPING,
            &stop,
            move |deliveries| {
                this.clone()
                    .handle_group(handler_publisher.clone(), deliveries, Lane::Bulk)
            },
        );
        let (this, handler_publisher) = (self.clone(), publisher.clone());
        let interactive_queue = self.topology.dispatch_now_queue();
        let interactive = amqp::consume_grouped(
            connection,
            publisher,
            &self.topology,
            &interactive_queue,
            self.config.prefetch,
            INTERACTIVE,
            &stop,
            move |deliveries| {
                this.clone()
                    .handle_group(handler_publisher.clone(), deliveries, Lane::Interactive)
            },
        );
        let (this, handler_publisher) = (self.clone(), publisher.clone());
        let domain_events = amqp::consume(
            connection,
            publisher,
            &self.topology,
            &domain_queue,
            self.config.prefetch,
            &stop,
            move |delivery| {
                this.clone()
                    .handle_event(handler_publisher.clone(), delivery)
            },
        );
        let sweeper = sweep::every(
            &self.config,
            &stop,
            &self.db,
            publisher,
            &self.topology,
            &Sweep::DISPATCH,
        );
        // Posts another dispatch process of the fleet is dispatching.
        let people = people_first::hear(&self.people_first, connection, &self.topology, &stop);
        let result = session
            .serve(
                &stop,
                vec![
                    Box::pin(interactive),
                    Box::pin(messages),
                    Box::pin(domain_events),
                    Box::pin(sweeper),
                    Box::pin(people),
                ],
            )
            .await;
        session.close().await;
        result
    }
}

/// Runs the dispatch role until `shutdown` fires, reconnecting after broker or database failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dispatcher = Arc::new(Dispatcher {
        db: Db::new(&config.database_url, config.db_pool_size),
        topology: Topology::from_config(&config),
        config,
        people_first: PeopleFirst::new(),
    });
    amqp::run_resilient("dispatch", &shutdown, || dispatcher.session(&shutdown)).await?;
    info!("dispatch stopped");
    Ok(())
}
