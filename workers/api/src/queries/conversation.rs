//! A conversation's messages as a person's messenger shows them: the newest
//! [`MESSAGES_MAX`], oldest first, internal ones only for users (D5).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamptz};
use serde::Serialize;

use crate::error::ApiResult;
use crate::session::Me;

/// Most messages of a conversation the messenger shows (the newest).
pub const MESSAGES_MAX: i64 = 500;

/// A message as the messenger shows it.
#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct MeMessage {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    author_id: i64,
    #[diesel(sql_type = Text)]
    author: String,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = Bool)]
    internal: bool,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// The messages of conversation `id` that `me` may see (its visibility checked already).
pub fn visible_messages(conn: &mut PgConnection, me: Me, id: i64) -> ApiResult<Vec<MeMessage>> {
    let mut messages: Vec<MeMessage> = diesel::sql_query(
        "SELECT m.id, m.author_id, p.name AS author, m.body, m.internal, m.created_at
         FROM messages m JOIN people p ON p.id = m.author_id
         WHERE m.conversation_id = $1 AND m.deleted_at IS NULL AND (NOT m.internal OR $2)
         ORDER BY m.id DESC LIMIT $3",
    )
    .bind::<BigInt, _>(id)
    .bind::<Bool, _>(me.sees_internal())
    .bind::<BigInt, _>(MESSAGES_MAX)
    .load(conn)?;
    messages.reverse();
    Ok(messages)
}
