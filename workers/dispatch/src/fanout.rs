//! Fan-out: deciding who is notified about each posted message (SPEC D1, D3, D5, F1, P1–P5;
//! see `tidings_common::rules`) and writing one notification row per recipient, for a whole
//! set of messages in one transaction.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use tidings_common::amqp::NotificationBatch;
use tidings_common::db::models::{Message, NotificationState};
use tidings_common::db::schema::{messages, notifications};
use tidings_common::events::{self, DomainEvent, RecordedEvent};
use tidings_common::{Result, audience, clock, mail, rules};

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
        let fresh: Vec<i64> = found
            .iter()
            .filter(|m| m.dispatched_at.is_none() && m.deleted_at.is_none())
            .map(|m| m.id)
            .collect();
        write_notifications(
            conn,
            &found,
            &fresh,
            clock::after(seen_window),
            reply_domain,
        )?;
        let events = automation_events(conn, &fresh)?;
        let found_ids: Vec<i64> = found.iter().map(|m| m.id).collect();
        diesel::update(messages::table.filter(messages::id.eq_any(&found_ids)))
            .filter(messages::dispatched_at.is_null())
            .set(messages::dispatched_at.eq(diesel::dsl::now))
            .execute(conn)?;
        Ok((pending_batches(conn, message_ids, &found_ids)?, events))
    })
}

/// Writes a notification for everyone the rules notify about each fresh message.
fn write_notifications(
    conn: &mut PgConnection,
    found: &[Message],
    fresh: &[i64],
    due_at: chrono::DateTime<chrono::Utc>,
    reply_domain: &str,
) -> Result<()> {
    let mut rows = Vec::new();
    for message in found.iter().filter(|m| fresh.contains(&m.id)) {
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
    Ok(())
}

/// The batch of pending notifications of each found message; unknown ids are marked so.
fn pending_batches(
    conn: &mut PgConnection,
    message_ids: &[i64],
    found_ids: &[i64],
) -> QueryResult<HashMap<i64, Dispatched>> {
    let pending: Vec<(i64, i64)> = notifications::table
        .filter(notifications::message_id.eq_any(found_ids))
        .filter(notifications::state.eq(NotificationState::Pending))
        .select((notifications::message_id, notifications::id))
        .order(notifications::id.asc())
        .load(conn)?;
    let mut result: HashMap<i64, Dispatched> = message_ids
        .iter()
        .map(|&id| (id, Dispatched::UnknownMessage))
        .collect();
    for &id in found_ids {
        let batch = NotificationBatch {
            message_id: id,
            notification_ids: Vec::new(),
        };
        result.insert(id, Dispatched::Batch(batch));
    }
    for (message_id, id) in pending {
        if let Some(Dispatched::Batch(batch)) = result.get_mut(&message_id) {
            batch.notification_ids.push(id);
        }
    }
    Ok(result)
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
