//! The dispatch role: decides who is notified about each posted message (SPEC D1, D3, D5, F1,
//! P1–P5; see `tidings_common::rules`),
//! writes one notification row per recipient, and publishes one batch per message into the
//! delay, where it waits out the seen window.
//!
//! It also handles domain events (see [`domain`]): system notifications, assignment and
//! project-member emails, and automations.
//!
//! It also sweeps for messages whose `message.posted` event never reached the broker (the api
//! commits first and publishes after) and publishes them again; dispatching is idempotent.

pub mod domain;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use lapin::message::Delivery;
use tidings_common::amqp::{self, MessagePosted, NotificationBatch, Outcome, Publisher, Topology};
use tidings_common::db::Db;
use tidings_common::db::models::Message;
use tidings_common::db::schema::{messages, notifications};
use tidings_common::events::EventRecorded;
use tidings_common::sweep;
use tidings_common::{Config, Result, mail};
use tidings_common::{audience, rules};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// Most `message.posted` events dispatched together in one transaction.
const MAX_GROUP: usize = 64;

/// What dispatching one message produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatched {
    /// The message does not exist (a poison event).
    UnknownMessage,
    /// Notifications exist; this batch must ride the delay. Empty when nobody is notified.
    Batch(NotificationBatch),
}

/// A domain event written by a transaction, to publish after commit: its id and kind.
pub type RecordedEvent = (i64, String);

/// Rows per INSERT statement, well under PostgreSQL's limit on bound parameters.
const INSERT_CHUNK: usize = 2000;

/// Writes the notifications of a set of messages in one transaction. Running it again for the
/// same messages writes nothing new and returns the same pending batches.
///
/// Messages in an item's conversation also get a `message_posted` domain event when an
/// automation listens for it; the ids of those events are returned, to publish.
pub fn dispatch_messages(
    conn: &mut PgConnection,
    message_ids: &[i64],
    seen_window: Duration,
    reply_domain: &str,
) -> Result<(HashMap<i64, Dispatched>, Vec<RecordedEvent>)> {
    conn.transaction(|conn| {
        let found: Vec<Message> = messages::table
            .filter(messages::id.eq_any(message_ids))
            .order(messages::id.asc())
            .select(Message::as_select())
            .for_update()
            .load(conn)?;
        let due_at = chrono::Utc::now()
            + chrono::Duration::from_std(seen_window).unwrap_or(chrono::Duration::MAX);
        let mut rows = Vec::new();
        for message in found
            .iter()
            .filter(|m| m.dispatched_at.is_none() && m.deleted_at.is_none())
        {
            let Some((facts, audience)) = audience::load(conn, message.id, None)? else {
                continue;
            };
            for person in audience
                .iter()
                .filter(|person| rules::notify(&facts, person).yes)
            {
                rows.push((
                    notifications::message_id.eq(message.id),
                    notifications::recipient_id.eq(person.person_id),
                    notifications::conversation_id.eq(message.conversation_id),
                    notifications::due_at.eq(due_at),
                    notifications::email_message_id.eq(mail::new_message_id(
                        message.id,
                        person.person_id,
                        reply_domain,
                    )),
                ));
            }
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            diesel::insert_into(notifications::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(conn)?;
        }
        let fresh: Vec<i64> = found
            .iter()
            .filter(|m| m.dispatched_at.is_none() && m.deleted_at.is_none())
            .map(|m| m.id)
            .collect();
        let events = automation_events(conn, &fresh)?;
        let found_ids: Vec<i64> = found.iter().map(|m| m.id).collect();
        diesel::update(messages::table.filter(messages::id.eq_any(&found_ids)))
            .filter(messages::dispatched_at.is_null())
            .set(messages::dispatched_at.eq(diesel::dsl::now))
            .execute(conn)?;
        let pending: Vec<(i64, i64)> = notifications::table
            .filter(notifications::message_id.eq_any(&found_ids))
            .filter(notifications::state.eq("pending"))
            .select((notifications::message_id, notifications::id))
            .order(notifications::id.asc())
            .load(conn)?;
        let mut result: HashMap<i64, Dispatched> = message_ids
            .iter()
            .map(|&id| (id, Dispatched::UnknownMessage))
            .collect();
        for id in found_ids {
            result.insert(
                id,
                Dispatched::Batch(NotificationBatch {
                    message_id: id,
                    notification_ids: Vec::new(),
                }),
            );
        }
        for (message_id, id) in pending {
            if let Some(Dispatched::Batch(batch)) = result.get_mut(&message_id) {
                batch.notification_ids.push(id);
            }
        }
        Ok((result, events))
    })
}

/// Records a `message_posted` domain event for each message in an item's conversation, if
/// any enabled automation is triggered by new messages (one cheap query when none is).
fn automation_events(conn: &mut PgConnection, message_ids: &[i64]) -> Result<Vec<RecordedEvent>> {
    use tidings_common::db::schema::{automations, conversations};
    if message_ids.is_empty() {
        return Ok(Vec::new());
    }
    let listening: bool = diesel::select(diesel::dsl::exists(
        automations::table
            .filter(automations::trigger.eq("message_posted"))
            .filter(automations::enabled.eq(true))
            .filter(automations::critical.eq(false)),
    ))
    .get_result(conn)?;
    if !listening {
        return Ok(Vec::new());
    }
    let linked: Vec<(i64, Option<i64>)> = messages::table
        .inner_join(conversations::table)
        .filter(messages::id.eq_any(message_ids))
        .filter(conversations::item_id.is_not_null())
        .select((messages::id, conversations::item_id))
        .load(conn)?;
    let mut ids = Vec::new();
    for (message_id, item_id) in linked {
        ids.push(tidings_common::events::record(
            conn,
            tidings_common::events::MESSAGE_POSTED,
            serde_json::json!({"message_id": message_id, "item_id": item_id}),
        )?);
    }
    Ok(ids)
}

struct Dispatcher {
    db: Db,
    config: Config,
    topology: Topology,
}

impl Dispatcher {
    /// Dispatches every `message.posted` that arrived together in one transaction, then
    /// publishes each message's batch into the delay; one outcome per delivery.
    async fn handle_group(
        self: Arc<Self>,
        publisher: Publisher,
        deliveries: Vec<Delivery>,
    ) -> Vec<Outcome> {
        let events: Vec<Result<MessagePosted, String>> = deliveries
            .iter()
            .map(|d| amqp::parse_payload(&d.data))
            .collect();
        let mut ids: Vec<i64> = events
            .iter()
            .filter_map(|e| e.as_ref().ok().map(|e| e.message_id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let span = tracing::info_span!("dispatch", messages = ids.len());
        let window = self.config.seen_window;
        let domain = self.config.reply_domain.clone();
        let dispatched = if ids.is_empty() {
            Ok((HashMap::new(), Vec::new()))
        } else {
            self.db
                .run(move |conn| dispatch_messages(conn, &ids, window, &domain))
                .instrument(span)
                .await
        };
        let dispatched = match dispatched {
            Ok((dispatched, events)) => {
                if let Err(e) = sweep::publish_events(&publisher, &self.topology, &events).await {
                    // The sweep of unhandled events publishes them later.
                    warn!(error = %e, "publishing domain events failed");
                }
                dispatched
            }
            Err(e) => {
                let outcome = |_| {
                    if e.is_transient() {
                        Outcome::Requeue(e.to_string())
                    } else {
                        Outcome::DeadLetter(e.to_string())
                    }
                };
                return events
                    .into_iter()
                    .map(|event| match event {
                        Ok(event) => outcome(event),
                        Err(reason) => Outcome::DeadLetter(reason),
                    })
                    .collect();
            }
        };
        let publishes = events.into_iter().map(|event| {
            let batch = event.map(|e| (e.message_id, dispatched.get(&e.message_id)));
            let (publisher, topology) = (&publisher, &self.topology);
            async move {
                match batch {
                    Err(reason) => Outcome::DeadLetter(reason),
                    Ok((id, None | Some(Dispatched::UnknownMessage))) => {
                        Outcome::DeadLetter(format!("message {id} does not exist"))
                    }
                    Ok((_, Some(Dispatched::Batch(batch))))
                        if batch.notification_ids.is_empty() =>
                    {
                        debug!(message.id = batch.message_id, "nobody to notify");
                        Outcome::Ack
                    }
                    Ok((_, Some(Dispatched::Batch(batch)))) => {
                        let published = publisher
                            .publish_json_retrying(
                                &topology.delay_exchange(),
                                &topology.delay_routing_key(),
                                batch,
                            )
                            .await;
                        match published {
                            Ok(()) => {
                                debug!(
                                    message.id = batch.message_id,
                                    recipients = batch.notification_ids.len(),
                                    "notifications delayed"
                                );
                                Outcome::Ack
                            }
                            Err(e) => Outcome::Requeue(format!("delay publish failed: {e}")),
                        }
                    }
                }
            }
        });
        futures_util::future::join_all(publishes).await
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
        let handled = match handled {
            Ok(Some(handled)) => handled,
            Ok(None) => {
                return Outcome::DeadLetter(format!(
                    "domain event {} does not exist",
                    event.event_id
                ));
            }
            Err(e) if e.is_transient() => return Outcome::Requeue(e.to_string()),
            Err(e) => return Outcome::DeadLetter(e.to_string()),
        };
        if let Err(e) = announce(
            &publisher,
            &self.topology,
            &handled.outbox_ids,
            &handled.messages,
        )
        .await
        {
            // Committed already: the sweeps republish what did not reach the broker.
            warn!(error = %e, "announcing the results of a domain event failed");
        }
        Outcome::Ack
    }

    /// Publishes again messages and domain events older than one sweep interval that were
    /// never dispatched or handled.
    async fn sweep(&self, publisher: &Publisher) -> Result<usize> {
        let (db, topology, age) = (&self.db, &self.topology, self.config.sweep_interval);
        Ok(
            sweep::undispatched_messages(db, publisher, topology, age).await?
                + sweep::unhandled_events(db, publisher, topology, age).await?,
        )
    }

    async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        let connection = amqp::connect(&self.config.amqp_url, "dispatch").await?;
        let publisher = Publisher::open(&connection).await?;
        self.topology.declare(publisher.channel()).await?;
        let sweeper = {
            let this = self.clone();
            let publisher = publisher.clone();
            let stop = shutdown.child_token();
            let guard = stop.clone().drop_guard();
            let task = tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(this.config.sweep_interval) => {}
                    }
                    if let Err(e) = this.sweep(&publisher).await {
                        warn!(error = %e, "dispatch sweep failed");
                    }
                }
            });
            (task, guard)
        };
        let this = self.clone();
        let handler_publisher = publisher.clone();
        let stop = shutdown.child_token();
        let messages = async {
            let result = amqp::consume_grouped(
                &connection,
                &publisher,
                &self.topology,
                &self.topology.dispatch_queue(),
                self.config.prefetch,
                MAX_GROUP,
                &stop,
                move |deliveries| {
                    this.clone()
                        .handle_group(handler_publisher.clone(), deliveries)
                },
            )
            .await;
            stop.cancel();
            result
        };
        let this = self.clone();
        let handler_publisher = publisher.clone();
        let domain_events = async {
            let result = amqp::consume(
                &connection,
                &publisher,
                &self.topology,
                &self.topology.domain_queue(),
                self.config.prefetch,
                &stop,
                move |delivery| {
                    this.clone()
                        .handle_event(handler_publisher.clone(), delivery)
                },
            )
            .await;
            stop.cancel();
            result
        };
        let (a, b) = tokio::join!(messages, domain_events);
        let result = a.and(b);
        drop(sweeper.1);
        let _ = sweeper.0.await;
        let _ = connection.close(200, "bye".into()).await;
        result
    }
}

/// Announces outbox emails to the mailer and posted messages to dispatch.
pub async fn announce(
    publisher: &Publisher,
    topology: &Topology,
    outbox_ids: &[i64],
    messages: &[i64],
) -> Result<()> {
    sweep::publish_outbox(publisher, topology, outbox_ids).await?;
    sweep::publish_messages(publisher, topology, messages).await
}

/// Runs the dispatch role until `shutdown` fires, reconnecting after broker or database failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dispatcher = Arc::new(Dispatcher {
        db: Db::new(&config.database_url, config.db_pool_size),
        topology: Topology::from_config(&config),
        config,
    });
    amqp::run_resilient("dispatch", &shutdown, || dispatcher.session(&shutdown)).await?;
    info!("dispatch stopped");
    Ok(())
}
