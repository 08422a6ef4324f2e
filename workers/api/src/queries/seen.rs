//! Moving a read cursor (D4), with the live events it causes.

use diesel::prelude::*;
use tidings_common::db::schema::seen_cursors;
use tidings_common::posting;

use crate::error::ApiResult;

/// Moves `person`'s read cursor in the conversation up to `message_id` and, if it moved,
/// writes the live `seen` and `delivery` events in the same transaction; returns the people
/// to announce.
pub fn advance_seen(
    conn: &mut PgConnection,
    person: i64,
    conversation_id: i64,
    message_id: i64,
) -> ApiResult<Vec<i64>> {
    conn.transaction(|conn| {
        let before: Option<i64> = seen_cursors::table
            .find((person, conversation_id))
            .select(seen_cursors::last_seen_message_id)
            .for_update()
            .first(conn)
            .optional()?;
        if posting::advance_cursor(conn, person, conversation_id, message_id)? == 0 {
            return Ok(Vec::new());
        }
        let from = before.unwrap_or(0);
        Ok(tidings_common::live::seen(
            conn,
            person,
            conversation_id,
            from,
            message_id,
        )?)
    })
}
