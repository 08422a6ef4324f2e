//! The dispatch role: decides who is notified about each posted message (SPEC D1, D3, D5, F1,
//! P1–P5; see `tidings_common::rules`),
//! writes one notification row per recipient, and publishes one batch per message into the
//! delay, where it waits out the seen window.
//!
//! It also sweeps for messages whose `message.posted` event never reached the broker (the api
//! commits first and publishes after) and publishes them again; dispatching is idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use lapin::message::Delivery;
use tidings_common::amqp::{
    self, MESSAGE_POSTED, MessagePosted, NotificationBatch, Outcome, Publisher, Topology,
};
use tidings_common::db::Db;
use tidings_common::db::models::Message;
use tidings_common::db::schema::{messages, notifications};
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

/// Rows per INSERT statement, well under PostgreSQL's limit on bound parameters.
const INSERT_CHUNK: usize = 2000;

/// Writes the notifications of a set of messages in one transaction. Running it again for the
/// same messages writes nothing new and returns the same pending batches.
pub fn dispatch_messages(
    conn: &mut PgConnection,
    message_ids: &[i64],
    seen_window: Duration,
    reply_domain: &str,
) -> Result<HashMap<i64, Dispatched>> {
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
        Ok(result)
    })
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
            Ok(HashMap::new())
        } else {
            self.db
                .run(move |conn| dispatch_messages(conn, &ids, window, &domain))
                .instrument(span)
                .await
        };
        let dispatched = match dispatched {
            Ok(dispatched) => dispatched,
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

    /// Publishes `message.posted` again for messages older than one sweep interval that were
    /// never dispatched.
    async fn sweep(&self, publisher: &Publisher) -> Result<usize> {
        let age =
            chrono::Duration::from_std(self.config.sweep_interval).unwrap_or(chrono::Duration::MAX);
        let stale: Vec<i64> = self
            .db
            .run(move |conn| {
                Ok(messages::table
                    .filter(messages::dispatched_at.is_null())
                    .filter(messages::created_at.lt(chrono::Utc::now() - age))
                    .select(messages::id)
                    .order(messages::id.asc())
                    .limit(1000)
                    .load(conn)?)
            })
            .await?;
        for &message_id in &stale {
            publisher
                .publish_json(
                    &self.topology.events_exchange(),
                    MESSAGE_POSTED,
                    &MessagePosted { message_id },
                )
                .await?;
        }
        if !stale.is_empty() {
            warn!(
                count = stale.len(),
                "republished message.posted for undispatched messages"
            );
        }
        Ok(stale.len())
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
        let result = amqp::consume_grouped(
            &connection,
            &publisher,
            &self.topology,
            &self.topology.dispatch_queue(),
            self.config.prefetch,
            MAX_GROUP,
            shutdown,
            move |deliveries| {
                this.clone()
                    .handle_group(handler_publisher.clone(), deliveries)
            },
        )
        .await;
        drop(sweeper.1);
        let _ = sweeper.0.await;
        let _ = connection.close(200, "bye".into()).await;
        result
    }
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
