//! The live event feed of each person (SPEC D1, D8): rows of `live_events`, written in the
//! same transaction as the change that causes them (dispatch, a seen report, the mailer's
//! record of a send, the inbound role's record of a bounce), then announced on the broker after
//! commit so that every api process wakes the streams it holds for those people.
//!
//! Writers lock each person's feed slot (a transaction-scoped advisory lock on one of
//! [`SLOTS`] slots, taken in slot order just before the insert, as the transaction's last
//! step) so a person's events commit in id order: a stream that has sent id N has seen every
//! event of that person below N, and `Last-Event-ID` resumption can never skip one. Because
//! the locks are the last thing a transaction takes, a writer holding them never waits on
//! anything but another writer's locks, in the same order, so they cannot deadlock. The
//! fixed number of slots bounds the locks one transaction holds, whatever its fan-out
//! (PostgreSQL's lock table is shared and finite).
//!
//! An announcement that is lost costs only latency: every stream also reads its rows on each
//! keep-alive tick.

use diesel::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Jsonb, Text};
use serde::{Deserialize, Serialize};

use crate::Result;

/// Routing key (on the events exchange) of [`LivePoke`]s.
pub const LIVE_ROUTING_KEY: &str = "live.people";

/// Announces that these people have new rows in `live_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivePoke {
    pub people: Vec<i64>,
}

/// Advisory lock class of the feed slots (distinct from the inbound keys, which hash text).
const LOCK_CLASS: i32 = 0x7469_6400;
/// Feed slots: a person's feed is slot `person_id % SLOTS`.
pub const SLOTS: i64 = 128;

/// Locks the feed slots of `people` (sorted and deduplicated in place) until commit.
fn lock(conn: &mut PgConnection, people: &mut Vec<i64>) -> QueryResult<()> {
    people.sort_unstable();
    people.dedup();
    if people.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock($1, s::int)
         FROM (SELECT DISTINCT p % $3 AS s FROM unnest($2::bigint[]) AS p ORDER BY 1) AS slots",
    )
    .bind::<diesel::sql_types::Integer, _>(LOCK_CLASS)
    .bind::<Array<BigInt>, _>(&*people)
    .bind::<BigInt, _>(SLOTS)
    .execute(conn)?;
    Ok(())
}

/// A message posted into a conversation, as dispatch knows it.
#[derive(Debug, Clone, Copy)]
pub struct Posted {
    pub message_id: i64,
    pub conversation_id: i64,
    pub author_id: i64,
}

/// Writes a `notification` event for each (message, recipient) of `notified`, and a
/// `conversation` event for each message's author (their conversation moved to the top, with
/// no ping). The rows name the message only; the payload is built when a stream sends them.
/// A recipient who muted the conversation (A4), paused (A1) or was outside their working hours
/// (A2) when the message came gets `{"quiet": true}` as the row's payload: their notification
/// comes without a ping. The organisation's default hours are judged once per call, so with
/// no default and no hours of one's own a row costs one lookup of the person's attention.
/// Returns the people who got events.
pub fn posted(
    conn: &mut PgConnection,
    messages: &[Posted],
    notified: &[(i64, i64)],
) -> Result<Vec<i64>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let conversation_of: std::collections::HashMap<i64, i64> = messages
        .iter()
        .map(|m| (m.message_id, m.conversation_id))
        .collect();
    let rows = notified.len() + messages.len();
    let (mut ids, mut conversations, mut people, mut kinds) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for &(message, person) in notified {
        let Some(&conversation) = conversation_of.get(&message) else {
            continue;
        };
        ids.push(message);
        conversations.push(conversation);
        people.push(person);
        kinds.push("notification");
    }
    for m in messages {
        ids.push(m.message_id);
        conversations.push(m.conversation_id);
        people.push(m.author_id);
        kinds.push("conversation");
    }
    let mut locked = people.clone();
    lock(conn, &mut locked)?;
    diesel::sql_query(
        "WITH dflt AS MATERIALIZED (
             SELECT tidings_next_work_start(d.work_days, d.work_start, d.work_end, d.time_zone,
                                            $5) AS off
             FROM attention_defaults d)
         INSERT INTO live_events (person_id, kind, conversation_id, message_id, payload)
         SELECT person, kind, conversation, message,
                CASE WHEN kind = 'notification'
                      AND ((SELECT true FROM conversation_mutes cm
                             WHERE cm.person_id = v.person
                               AND cm.conversation_id = v.conversation) IS NOT NULL
                        OR (SELECT a.dnd_until > $5
                                OR (a.work_days > 0
                                    AND tidings_next_work_start(a.work_days, a.work_start,
                                            a.work_end, a.time_zone, $5) IS NOT NULL)
                             FROM attention a WHERE a.person_id = v.person) IS TRUE
                        OR ((SELECT off FROM dflt) IS NOT NULL
                            AND (SELECT a.work_days FROM attention a
                                  WHERE a.person_id = v.person) IS NULL
                            AND (SELECT kind FROM people WHERE id = v.person) = 'user'))
                     THEN '{\"quiet\": true}'::jsonb END
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])
           AS v(person, kind, conversation, message)
         ORDER BY person, message",
    )
    .bind::<Array<BigInt>, _>(&people)
    .bind::<Array<Text>, _>(&kinds)
    .bind::<Array<BigInt>, _>(&conversations)
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<diesel::sql_types::Timestamptz, _>(crate::clock::now())
    .execute(conn)?;
    Ok(locked)
}

/// After `person`'s read cursor in `conversation` moved from `from` (exclusive) to `to`:
/// a `seen` event for them, and a `delivery` event ("seen by") for the authors of the
/// messages now seen. Only the authors: telling every other recipient too would write
/// recipients² rows per message; their pages read the delivery status when they show it.
/// Returns the people who got events.
pub fn seen(
    conn: &mut PgConnection,
    person: i64,
    conversation: i64,
    from: i64,
    to: i64,
) -> Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Viewer {
        #[diesel(sql_type = BigInt)]
        person_id: i64,
    }
    let viewers: Vec<Viewer> = diesel::sql_query(
        "SELECT DISTINCT author_id AS person_id FROM messages
          WHERE conversation_id = $1 AND id > $2 AND id <= $3 AND author_id <> $4",
    )
    .bind::<BigInt, _>(conversation)
    .bind::<BigInt, _>(from)
    .bind::<BigInt, _>(to)
    .bind::<BigInt, _>(person)
    .load(conn)?;
    let mut people: Vec<i64> = viewers.iter().map(|v| v.person_id).collect();
    people.push(person);
    lock(conn, &mut people)?;
    let others: Vec<i64> = people.iter().copied().filter(|p| *p != person).collect();
    let seen = serde_json::json!({
        "conversation_id": conversation,
        "up_to_message_id": to,
    });
    diesel::sql_query(
        "INSERT INTO live_events (person_id, kind, payload)
         SELECT $1, 'seen', $2
         UNION ALL
         SELECT o, 'delivery', jsonb_build_object(
                  'status', 'seen', 'conversation_id', $3::bigint, 'from_message_id', $4::bigint,
                  'up_to_message_id', $5::bigint, 'person_id', $1::bigint,
                  'person', (SELECT name FROM people WHERE id = $1), 'at', now())
         FROM unnest($6::bigint[]) AS o",
    )
    .bind::<BigInt, _>(person)
    .bind::<Jsonb, _>(seen)
    .bind::<BigInt, _>(conversation)
    .bind::<BigInt, _>(from)
    .bind::<BigInt, _>(to)
    .bind::<Array<BigInt>, _>(&others)
    .execute(conn)?;
    Ok(people)
}

/// After notifications ended in an email outcome (each `(id, status)`, the status `sent`,
/// `failed` or `bounced`): a `delivery` event for the message's author (one row per email,
/// not one per recipient of the message, which would be recipients² per message). One call
/// per transaction, so the feed locks are taken in one order. Returns the people who got
/// events.
pub fn emailed(conn: &mut PgConnection, ended: &[(i64, &str)]) -> Result<Vec<i64>> {
    if ended.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        notification_id: i64,
        #[diesel(sql_type = BigInt)]
        viewer: i64,
    }
    let (ids, statuses): (Vec<i64>, Vec<&str>) = ended.iter().copied().unzip();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT n.id AS notification_id, m.author_id AS viewer
         FROM notifications n JOIN messages m ON m.id = n.message_id
         WHERE n.id = ANY($1)",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .load(conn)?;
    let status_of: std::collections::HashMap<i64, &str> =
        ids.iter().copied().zip(statuses.iter().copied()).collect();
    let (mut notification_ids, mut viewers, mut status) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        notification_ids.push(r.notification_id);
        viewers.push(r.viewer);
        status.push(status_of.get(&r.notification_id).copied().unwrap_or("sent"));
    }
    let mut people = viewers.clone();
    lock(conn, &mut people)?;
    diesel::sql_query(
        "INSERT INTO live_events (person_id, kind, payload)
         SELECT v.viewer, 'delivery', jsonb_build_object(
                  'status', v.status, 'conversation_id', n.conversation_id,
                  'message_id', n.message_id, 'person_id', n.recipient_id, 'person', p.name,
                  'at', now())
         FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(notification, viewer, status)
         JOIN notifications n ON n.id = v.notification
         JOIN people p ON p.id = n.recipient_id
         ORDER BY v.viewer, n.id",
    )
    .bind::<Array<BigInt>, _>(&notification_ids)
    .bind::<Array<BigInt>, _>(&viewers)
    .bind::<Array<Text>, _>(&status)
    .execute(conn)?;
    Ok(people)
}

/// One stored event.
#[derive(Debug, Clone, QueryableByName)]
pub struct LiveEvent {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    /// Whether the person may still see the conversation the event is about
    /// (`tidings_may_see`); an event about none is visible.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub visible: bool,
}

/// `person`'s events after `after`, oldest first, at most `limit`, each with whether the
/// person may still see its conversation.
pub fn since(
    conn: &mut PgConnection,
    person: i64,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<LiveEvent>> {
    // A message's payload is what it is when the event is sent (an edited message shows its
    // new excerpt; a deleted one, none).
    diesel::sql_query(
        "SELECT e.id, e.kind,
                CASE WHEN e.message_id IS NULL THEN COALESCE(e.payload, '{}'::jsonb)
                     ELSE jsonb_build_object(
                       'conversation_id', e.conversation_id, 'subject', c.subject,
                       'message_id', e.message_id, 'author_id', m.author_id, 'author', a.name,
                       'excerpt', CASE WHEN m.deleted_at IS NULL THEN left(m.body, 140) ELSE '' END,
                       'internal', m.internal,
                       'ping', e.kind = 'notification' AND e.payload IS NULL,
                       'attachments', COALESCE((
                           SELECT jsonb_agg(jsonb_build_object('id', f.id, 'name', f.name,
                                    'size', f.size, 'content_type', b.sniffed_type,
                                    'inline', f.inline) ORDER BY f.id)
                           FROM attachments f JOIN attachment_blobs b ON b.sha256 = f.sha256
                           WHERE f.message_id = e.message_id), '[]'::jsonb)) END AS payload,
                CASE WHEN COALESCE(e.conversation_id, (e.payload->>'conversation_id')::bigint)
                          IS NULL THEN true
                     ELSE tidings_may_see($1, COALESCE(e.conversation_id,
                          (e.payload->>'conversation_id')::bigint)) END AS visible
         FROM live_events e
         LEFT JOIN messages m ON m.id = e.message_id
         LEFT JOIN conversations c ON c.id = e.conversation_id
         LEFT JOIN people a ON a.id = m.author_id
         WHERE e.person_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
    )
    .bind::<BigInt, _>(person)
    .bind::<BigInt, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
}

/// The newest event id of `person` (0 when there is none), and the oldest id still stored
/// of anyone (to tell whether a resuming client missed purged events).
pub fn bounds(conn: &mut PgConnection, person: i64) -> QueryResult<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Bounds {
        #[diesel(sql_type = BigInt)]
        newest: i64,
        #[diesel(sql_type = BigInt)]
        oldest: i64,
    }
    let b: Bounds = diesel::sql_query(
        "SELECT COALESCE((SELECT max(id) FROM live_events WHERE person_id = $1), 0) AS newest,
                COALESCE((SELECT min(id) FROM live_events), 0) AS oldest",
    )
    .bind::<BigInt, _>(person)
    .get_result(conn)?;
    Ok((b.newest, b.oldest))
}
