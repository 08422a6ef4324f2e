//! Fan-out: deciding who is notified about each posted message (SPEC D1, D3, D5, F1, P1–P5;
//! see `tidings_common::rules`) and writing one notification row per recipient, for a whole
//! set of messages in one transaction.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool};
use tidings_common::amqp::NotificationBatch;
use tidings_common::db::models::NotificationState;
use tidings_common::db::schema::{messages, notifications};
use tidings_common::events::{self, DomainEvent, RecordedEvent};
use tidings_common::{Result, audience, clock, live, mail, rules};

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

/// A message this call marked dispatched (it had not been yet).
#[derive(QueryableByName)]
struct Fresh {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Bool)]
    deleted: bool,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Each message's batch, the domain events to publish, and the people with new live events.
pub type DispatchedSet = (HashMap<i64, Dispatched>, Vec<RecordedEvent>, Vec<i64>);

/// Writes the notifications of a set of messages in one transaction, with a fixed number of
/// statements whatever the size of the set. Running it again for the same messages writes
/// nothing new and returns the same pending batches.
///
/// Messages in an item's conversation also get a `message_posted` domain event when an
/// automation listens for it; the ids of those events are returned, to publish. Each
/// recipient gets a live `notification` event and each author a `conversation` event, in the
/// same transaction.
pub fn dispatch_messages(
    conn: &mut PgConnection,
    message_ids: &[i64],
    seen_window: Duration,
    reply_domain: &str,
) -> Result<DispatchedSet> {
    conn.transaction(|conn| {
        // Marks the messages not dispatched yet, locked in id order, so that two dispatchers
        // given the same message take turns and the second finds it done. No condition on
        // `dispatched_at` reaches the planner: it would pick the partial index of undispatched
        // messages and read all of them, which under a backlog is every message waiting.
        let fresh: Vec<Fresh> = diesel::sql_query(
            "WITH locked AS (
                 SELECT id, dispatched_at IS NULL AS fresh FROM messages WHERE id = ANY($1)
                 ORDER BY id FOR UPDATE)
             UPDATE messages m SET dispatched_at = now() FROM locked
             WHERE m.id = locked.id AND locked.fresh
             RETURNING m.id, m.deleted_at IS NOT NULL AS deleted, m.created_at",
        )
        .bind::<Array<BigInt>, _>(message_ids)
        .load(conn)?;
        let mut result: HashMap<i64, Dispatched> = message_ids
            .iter()
            .map(|&id| (id, Dispatched::UnknownMessage))
            .collect();
        let live: Vec<&Fresh> = fresh.iter().filter(|m| !m.deleted).collect();
        for m in &fresh {
            result.insert(m.id, Dispatched::Batch(NotificationBatch::empty(m.id)));
        }
        let written = write_notifications(conn, &live, clock::after(seen_window), reply_domain)?;
        let (written, posted) = written;
        let mut notified = Vec::with_capacity(written.len());
        for (message_id, id, recipient) in written {
            if let Some(Dispatched::Batch(batch)) = result.get_mut(&message_id) {
                batch.notification_ids.push(id);
            }
            notified.push((message_id, recipient));
        }
        let live_ids: Vec<i64> = live.iter().map(|m| m.id).collect();
        let events = automation_events(conn, &live_ids)?;
        // Ids this call did not mark: dispatched before (a redelivery), or unknown.
        let others: Vec<i64> = message_ids
            .iter()
            .copied()
            .filter(|id| !fresh.iter().any(|m| m.id == *id))
            .collect();
        if !others.is_empty() {
            pending_batches(conn, &others, &mut result)?;
        }
        // Last, so the feed locks are held for the shortest time (see `live`).
        let live = live::posted(conn, &posted, &notified)?;
        tidings_common::observe::notifications_created(notified.len());
        let now = clock::now();
        for m in &fresh {
            tidings_common::observe::post_to_dispatch(
                (now - m.created_at).to_std().unwrap_or_default(),
            );
        }
        Ok((result, events, live))
    })
}

/// The (message, notification, recipient) ids written, and each message for the live feed.
type Written = (Vec<(i64, i64, i64)>, Vec<live::Posted>);

/// Writes a notification for everyone the rules notify about each message; returns the
/// (message, notification, recipient) ids written, and each message as the live feed names it.
fn write_notifications(
    conn: &mut PgConnection,
    messages: &[&Fresh],
    due_at: chrono::DateTime<chrono::Utc>,
    reply_domain: &str,
) -> Result<Written> {
    let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
    let mut rows = Vec::new();
    let mut authors = Vec::with_capacity(ids.len());
    for (facts, audience) in audience::audiences(conn, &ids)? {
        authors.push(live::Posted {
            message_id: facts.message_id,
            conversation_id: facts.conversation_id,
            author_id: facts.author_id,
        });
        for person in audience
            .iter()
            .filter(|person| rules::notify(&facts, person).yes)
        {
            rows.push((
                notifications::message_id.eq(facts.message_id),
                notifications::recipient_id.eq(person.person_id),
                notifications::conversation_id.eq(facts.conversation_id),
                notifications::due_at.eq(due_at),
                notifications::email_message_id.eq(mail::new_message_id(
                    facts.message_id,
                    person.person_id,
                    reply_domain,
                )),
            ));
        }
    }
    let mut written = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(INSERT_CHUNK) {
        written.extend(
            diesel::insert_into(notifications::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .returning((
                    notifications::message_id,
                    notifications::id,
                    notifications::recipient_id,
                ))
                .get_results::<(i64, i64, i64)>(conn)?,
        );
    }
    written.sort_unstable();
    Ok((written, authors))
}

/// Fills in the batch of pending notifications of each of `message_ids` that exists (they
/// were dispatched before); the others stay unknown.
fn pending_batches(
    conn: &mut PgConnection,
    message_ids: &[i64],
    result: &mut HashMap<i64, Dispatched>,
) -> QueryResult<()> {
    let found: Vec<i64> = messages::table
        .filter(messages::id.eq_any(message_ids))
        .select(messages::id)
        .load(conn)?;
    for &id in &found {
        result.insert(id, Dispatched::Batch(NotificationBatch::empty(id)));
    }
    let pending: Vec<(i64, i64)> = notifications::table
        .filter(notifications::message_id.eq_any(&found))
        .filter(notifications::state.eq(NotificationState::Pending))
        .select((notifications::message_id, notifications::id))
        .order(notifications::id.asc())
        .load(conn)?;
    for (message_id, id) in pending {
        if let Some(Dispatched::Batch(batch)) = result.get_mut(&message_id) {
            batch.notification_ids.push(id);
        }
    }
    Ok(())
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
        if let Some(item_id) = item_id {
            let event = DomainEvent::MessagePosted {
                message_id,
                item_id,
            };
            ids.push(events::record(conn, &event)?);
        }
    }
    Ok(ids)
}
