//! Posting a message into a conversation, shared by the api and by inbound email: the message,
//! its author's participation (SPEC F1) and read cursor (D4), in the caller's transaction.

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::db::models::Message;
use crate::db::schema::{conversation_participants, messages};

/// Adds a person to a conversation's participants (no-op if already there).
pub fn add_participant(
    conn: &mut PgConnection,
    conversation_id: i64,
    person_id: i64,
) -> QueryResult<usize> {
    diesel::insert_into(conversation_participants::table)
        .values((
            conversation_participants::conversation_id.eq(conversation_id),
            conversation_participants::person_id.eq(person_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
}

/// Moves a read cursor forward (never back) to `message_id`.
pub fn advance_cursor(
    conn: &mut PgConnection,
    person_id: i64,
    conversation_id: i64,
    message_id: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO seen_cursors (person_id, conversation_id, last_seen_message_id, seen_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (person_id, conversation_id) DO UPDATE
           SET last_seen_message_id = EXCLUDED.last_seen_message_id, seen_at = now()
           WHERE seen_cursors.last_seen_message_id < EXCLUDED.last_seen_message_id",
    )
    .bind::<BigInt, _>(person_id)
    .bind::<BigInt, _>(conversation_id)
    .bind::<BigInt, _>(message_id)
    .execute(conn)
}

/// Inserts a message; its author becomes a participant who has seen everything up to it. The
/// caller checks that the conversation and author exist and commits, then publishes
/// `message.posted`.
pub fn insert_message(
    conn: &mut PgConnection,
    conversation_id: i64,
    author_id: i64,
    body: &str,
    internal: bool,
) -> QueryResult<Message> {
    let message = diesel::insert_into(messages::table)
        .values((
            messages::conversation_id.eq(conversation_id),
            messages::author_id.eq(author_id),
            messages::body.eq(body),
            messages::internal.eq(internal),
        ))
        .returning(Message::as_returning())
        .get_result(conn)?;
    add_participant(conn, conversation_id, author_id)?;
    advance_cursor(conn, author_id, conversation_id, message.id)?;
    Ok(message)
}

/// Inserts messages as one set (the `i`th of each slice is one message), in one statement
/// each for the messages, their authors' participation and their read cursors; returns the
/// message ids in the order given. The caller checks that the conversations and authors exist.
pub fn insert_messages(
    conn: &mut PgConnection,
    conversation_ids: &[i64],
    author_ids: &[i64],
    bodies: &[&str],
    internal: &[bool],
) -> QueryResult<Vec<i64>> {
    use diesel::sql_types::{Array, Bool, Text};
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    if conversation_ids.is_empty() {
        return Ok(Vec::new());
    }
    // The rows are inserted in the order given, so their ids rise in that order.
    let mut ids: Vec<i64> = diesel::sql_query(
        "INSERT INTO messages (conversation_id, author_id, body, internal)
         SELECT c, a, b, i FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bool[])
           WITH ORDINALITY AS m(c, a, b, i, n)
         ORDER BY n
         RETURNING id",
    )
    .bind::<Array<BigInt>, _>(conversation_ids)
    .bind::<Array<BigInt>, _>(author_ids)
    .bind::<Array<Text>, _>(bodies)
    .bind::<Array<Bool>, _>(internal)
    .load::<Id>(conn)?
    .into_iter()
    .map(|r| r.id)
    .collect();
    ids.sort_unstable();
    diesel::sql_query(
        "INSERT INTO conversation_participants (conversation_id, person_id)
         SELECT DISTINCT c, a FROM unnest($1::bigint[], $2::bigint[]) AS p(c, a)
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<BigInt>, _>(conversation_ids)
    .bind::<Array<BigInt>, _>(author_ids)
    .execute(conn)?;
    // Each author's cursor moves to their newest message of the set in each conversation.
    diesel::sql_query(
        "INSERT INTO seen_cursors (person_id, conversation_id, last_seen_message_id, seen_at)
         SELECT a, c, max(m), now() FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS s(c, a, m)
         GROUP BY a, c
         ON CONFLICT (person_id, conversation_id) DO UPDATE
           SET last_seen_message_id = EXCLUDED.last_seen_message_id, seen_at = now()
           WHERE seen_cursors.last_seen_message_id < EXCLUDED.last_seen_message_id",
    )
    .bind::<Array<BigInt>, _>(conversation_ids)
    .bind::<Array<BigInt>, _>(author_ids)
    .bind::<Array<BigInt>, _>(&ids)
    .execute(conn)?;
    Ok(ids)
}
