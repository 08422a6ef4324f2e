//! Sweeps that find work whose announcement never reached (or left) the broker, and announce it
//! again. Every consumer is idempotent, so a sweep that overlaps a live delivery is harmless.
//! The dispatch and mailer roles run their sweeps on an interval; the scheduler role runs all
//! of them on a cron schedule, once per tick across the fleet.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use tracing::warn;

use crate::Result;
use crate::amqp::{
    DUE_ROUTING_KEY, MESSAGE_POSTED, MessagePosted, NotificationBatch, Publisher, Topology,
};
use crate::db::Db;
use crate::db::schema::{domain_events, messages, notifications, outbox_emails};
use crate::events::{EventRecorded, routing_key};
use crate::outbox::{EMAIL_QUEUED, OutboxBatch};

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Messages older than `age` never dispatched: publishes `message.posted` again.
pub async fn undispatched_messages(
    db: &Db,
    publisher: &Publisher,
    topology: &Topology,
    age: Duration,
) -> Result<usize> {
    let age = chrono_duration(age);
    let stale: Vec<i64> = db
        .run(move |conn| {
            Ok(messages::table
                .filter(messages::dispatched_at.is_null())
                .filter(messages::created_at.lt(Utc::now() - age))
                .select(messages::id)
                .order(messages::id.asc())
                .limit(1000)
                .load(conn)?)
        })
        .await?;
    publish_messages(publisher, topology, &stale).await?;
    if !stale.is_empty() {
        warn!(
            count = stale.len(),
            "republished message.posted for undispatched messages"
        );
    }
    Ok(stale.len())
}

/// Domain events older than `age` never handled: publishes them again.
pub async fn unhandled_events(
    db: &Db,
    publisher: &Publisher,
    topology: &Topology,
    age: Duration,
) -> Result<usize> {
    let age = chrono_duration(age);
    let stale: Vec<(i64, String)> = db
        .run(move |conn| {
            Ok(domain_events::table
                .filter(domain_events::handled_at.is_null())
                .filter(domain_events::created_at.lt(Utc::now() - age))
                .select((domain_events::id, domain_events::kind))
                .order(domain_events::id.asc())
                .limit(1000)
                .load(conn)?)
        })
        .await?;
    publish_events(publisher, topology, &stale).await?;
    if !stale.is_empty() {
        warn!(count = stale.len(), "republished unhandled domain events");
    }
    Ok(stale.len())
}

/// Publishes `message.posted` for messages a committed transaction wrote.
pub async fn publish_messages(
    publisher: &Publisher,
    topology: &Topology,
    ids: &[i64],
) -> Result<()> {
    for &message_id in ids {
        publisher
            .publish_json(
                &topology.events_exchange(),
                MESSAGE_POSTED,
                &MessagePosted { message_id },
            )
            .await?;
    }
    Ok(())
}

/// Announces outbox emails a committed transaction wrote to the mailer.
pub async fn publish_outbox(publisher: &Publisher, topology: &Topology, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    publisher
        .publish_json(
            &topology.events_exchange(),
            EMAIL_QUEUED,
            &OutboxBatch {
                outbox_ids: ids.to_vec(),
            },
        )
        .await
}

/// Publishes domain events recorded by a committed transaction.
pub async fn publish_events(
    publisher: &Publisher,
    topology: &Topology,
    events: &[(i64, String)],
) -> Result<()> {
    for (event_id, kind) in events {
        publisher
            .publish_json(
                &topology.events_exchange(),
                &routing_key(kind),
                &EventRecorded {
                    event_id: *event_id,
                },
            )
            .await?;
    }
    Ok(())
}

/// Notifications past due plus the lease with no live batch (still `pending`, or `sending` by
/// a worker whose lease ran out): pushes their due time forward so the next sweep leaves them
/// alone, and publishes them to the due exchange.
pub async fn stuck_notifications(
    db: &Db,
    publisher: &Publisher,
    topology: &Topology,
    lease: Duration,
) -> Result<usize> {
    let lease = chrono_duration(lease);
    let stuck: Vec<(i64, i64)> = db
        .run(move |conn| {
            let now = Utc::now();
            let ids: Vec<i64> = notifications::table
                .filter(notifications::due_at.lt(now - lease))
                .filter(
                    notifications::state.eq("pending").or(notifications::state
                        .eq("sending")
                        .and(notifications::claimed_at.lt(now - lease))),
                )
                .select(notifications::id)
                .limit(5000)
                .load(conn)?;
            Ok(
                diesel::update(notifications::table.filter(notifications::id.eq_any(ids)))
                    .set(notifications::due_at.eq(now))
                    .returning((notifications::message_id, notifications::id))
                    .get_results(conn)?,
            )
        })
        .await?;
    let mut batches: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (message_id, id) in &stuck {
        batches.entry(*message_id).or_default().push(*id);
    }
    for (message_id, notification_ids) in batches {
        publisher
            .publish_json(
                &topology.due_exchange(),
                DUE_ROUTING_KEY,
                &NotificationBatch {
                    message_id,
                    notification_ids,
                },
            )
            .await?;
    }
    if !stuck.is_empty() {
        warn!(
            count = stuck.len(),
            "re-published notifications stuck past their due time"
        );
    }
    Ok(stuck.len())
}

/// Outbox emails past due with no live claim (a lost announcement, a retry whose time came,
/// a worker that died mid-send): announces them to the mailer again.
pub async fn stuck_outbox(
    db: &Db,
    publisher: &Publisher,
    topology: &Topology,
    lease: Duration,
) -> Result<usize> {
    let lease = chrono_duration(lease);
    let ids: Vec<i64> = db
        .run(move |conn| {
            let now = Utc::now();
            Ok(outbox_emails::table
                .filter(outbox_emails::due_at.lt(now - chrono::Duration::seconds(2)))
                .filter(
                    outbox_emails::state.eq("pending").or(outbox_emails::state
                        .eq("sending")
                        .and(outbox_emails::claimed_at.lt(now - lease))),
                )
                .select(outbox_emails::id)
                .order(outbox_emails::id.asc())
                .limit(1000)
                .load(conn)?)
        })
        .await?;
    publish_outbox(publisher, topology, &ids).await?;
    Ok(ids.len())
}
