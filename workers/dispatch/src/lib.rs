//! The dispatch role: decides who is notified about each posted message (SPEC D1, D3, D5, F1,
//! P1–P5; see `tidings_common::rules`),
//! writes one notification row per recipient, and publishes one batch per message into the
//! delay, where it waits out the seen window.
//!
//! It also sweeps for messages whose `message.posted` event never reached the broker (the api
//! commits first and publishes after) and publishes them again; dispatching is idempotent.

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

/// What dispatching one message produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatched {
    /// The message does not exist (a poison event).
    UnknownMessage,
    /// Notifications exist; this batch must ride the delay. Empty when nobody is notified.
    Batch(NotificationBatch),
}

/// Writes the notifications of one message in one transaction. Running it again for the same
/// message writes nothing new and returns the same pending batch.
pub fn dispatch_message(
    conn: &mut PgConnection,
    message_id: i64,
    seen_window: Duration,
    reply_domain: &str,
) -> Result<Dispatched> {
    conn.transaction(|conn| {
        let Some(message) = messages::table
            .find(message_id)
            .select(Message::as_select())
            .for_update()
            .first(conn)
            .optional()?
        else {
            return Ok(Dispatched::UnknownMessage);
        };
        if message.dispatched_at.is_none() && message.deleted_at.is_none() {
            let Some((facts, audience)) = audience::load(conn, message.id, None)? else {
                return Ok(Dispatched::UnknownMessage);
            };
            let recipients: Vec<i64> = audience
                .iter()
                .filter(|person| rules::notify(&facts, person).yes)
                .map(|person| person.person_id)
                .collect();
            let due_at = chrono::Utc::now()
                + chrono::Duration::from_std(seen_window).unwrap_or(chrono::Duration::MAX);
            let rows: Vec<_> = recipients
                .iter()
                .map(|&recipient| {
                    (
                        notifications::message_id.eq(message.id),
                        notifications::recipient_id.eq(recipient),
                        notifications::conversation_id.eq(message.conversation_id),
                        notifications::due_at.eq(due_at),
                        notifications::email_message_id.eq(mail::new_message_id(
                            message.id,
                            recipient,
                            reply_domain,
                        )),
                    )
                })
                .collect();
            diesel::insert_into(notifications::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .execute(conn)?;
        }
        diesel::update(messages::table.find(message.id))
            .filter(messages::dispatched_at.is_null())
            .set(messages::dispatched_at.eq(diesel::dsl::now))
            .execute(conn)?;
        let notification_ids: Vec<i64> = notifications::table
            .filter(notifications::message_id.eq(message.id))
            .filter(notifications::state.eq("pending"))
            .select(notifications::id)
            .order(notifications::id.asc())
            .load(conn)?;
        Ok(Dispatched::Batch(NotificationBatch {
            message_id: message.id,
            notification_ids,
        }))
    })
}

struct Dispatcher {
    db: Db,
    config: Config,
    topology: Topology,
}

impl Dispatcher {
    async fn handle(self: Arc<Self>, publisher: Publisher, delivery: Delivery) -> Outcome {
        let event: MessagePosted = match amqp::parse_payload(&delivery.data) {
            Ok(event) => event,
            Err(reason) => return Outcome::DeadLetter(reason),
        };
        let span = tracing::info_span!("dispatch", message.id = event.message_id);
        async move {
            let window = self.config.seen_window;
            let domain = self.config.reply_domain.clone();
            let dispatched = self
                .db
                .run(move |conn| dispatch_message(conn, event.message_id, window, &domain))
                .await;
            let batch = match dispatched {
                Ok(Dispatched::Batch(batch)) => batch,
                Ok(Dispatched::UnknownMessage) => {
                    return Outcome::DeadLetter(format!(
                        "message {} does not exist",
                        event.message_id
                    ));
                }
                Err(e) if e.is_transient() => return Outcome::Requeue(e.to_string()),
                Err(e) => return Outcome::DeadLetter(e.to_string()),
            };
            if batch.notification_ids.is_empty() {
                debug!("nobody to notify");
                return Outcome::Ack;
            }
            let recipients = batch.notification_ids.len();
            match publisher
                .publish_json_retrying(
                    &self.topology.delay_exchange(),
                    &self.topology.delay_routing_key(),
                    &batch,
                )
                .await
            {
                Ok(()) => {
                    info!(recipients, "notifications delayed");
                    Outcome::Ack
                }
                Err(e) => Outcome::Requeue(format!("delay publish failed: {e}")),
            }
        }
        .instrument(span)
        .await
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
        let result = amqp::consume(
            &connection,
            &publisher,
            &self.topology,
            &self.topology.dispatch_queue(),
            self.config.prefetch,
            shutdown,
            move |delivery| this.clone().handle(handler_publisher.clone(), delivery),
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
