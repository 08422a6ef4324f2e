//! A conversation's messages, one page at a time, as the messenger (`/me`) and the admin API
//! read them: newest first by page (a `before` cursor walks back), oldest first within a
//! page, internal ones only for those who see them (D5).
//!
//! A page is bounded twice: by its `limit` and by `TIDINGS_READ_BUDGET` bytes of text. A
//! body longer than [`BODY_CHARS`] characters comes cut, flagged `truncated` with its whole
//! `length`, and is read whole one message at a time (`GET /me/messages/{id}`,
//! `GET /messages/{id}`). Both bounds are applied in PostgreSQL, so the api never holds more
//! than one page's budget of text however long the conversation and its bodies are.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use serde::{Deserialize, Serialize};

use tidings_common::attachments::{self, Attachment};

use crate::error::{ApiError, ApiResult};

/// Longest body a page carries whole, in characters (at most 64 KiB of UTF-8).
pub const BODY_CHARS: i32 = 16_384;
/// Messages per page unless the caller asks for another number.
pub const PAGE_DEFAULT: i64 = 50;
/// Most messages per page.
pub const PAGE_MAX: i64 = 200;

/// `?limit=&before=`: which page of a conversation to read.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Messages in the page (1 to 200; 50 by default).
    pub limit: Option<i64>,
    /// Only messages older than this message id (the `older` cursor of the previous page).
    pub before: Option<i64>,
}

/// A message as a page shows it, with its files.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PagedMessage {
    #[serde(flatten)]
    pub message: MessageRow,
    /// Its files (I9): id, name, size, type, inline.
    pub attachments: Vec<Attachment>,
}

/// A message's row as a page shows it.
#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct MessageRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    conversation_id: i64,
    #[diesel(sql_type = BigInt)]
    author_id: i64,
    /// The author's name.
    #[diesel(sql_type = Text)]
    author: String,
    /// `user`, `customer` or `bot`: the messenger marks customers' messages.
    #[diesel(sql_type = Text)]
    author_kind: String,
    /// The text, cut at 16,384 characters when `truncated`.
    #[diesel(sql_type = Text)]
    body: String,
    /// The body is longer than shown; read the message whole.
    #[diesel(sql_type = Bool)]
    truncated: bool,
    /// Bytes of the whole body.
    #[diesel(sql_type = BigInt)]
    length: i64,
    #[diesel(sql_type = Bool)]
    internal: bool,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    edited_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    dispatched_at: Option<DateTime<Utc>>,
}

/// One page of a conversation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// Oldest first.
    pub messages: Vec<PagedMessage>,
    /// Pass as `before` for the next older page; `null` when this page reaches the first
    /// message.
    pub older: Option<i64>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(embed)]
    message: MessageRow,
    #[diesel(sql_type = Bool)]
    more: bool,
}

/// Checks `?limit=` and `?before=`.
pub fn checked(query: &PageQuery) -> ApiResult<(i64, i64)> {
    let limit = crate::validate::limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    let before = match query.before {
        Some(b) if b < 1 => {
            return Err(ApiError::bad_field(
                "before",
                "before: expected a message id (1 or more)",
            ));
        }
        Some(b) => b,
        None => i64::MAX,
    };
    Ok((limit, before))
}

/// A page of conversation `id` (its visibility checked already): the newest `limit` messages
/// older than `before`, as many of them as fit in `budget` bytes of text (at least one).
pub fn page(
    conn: &mut PgConnection,
    id: i64,
    sees_internal: bool,
    (limit, before): (i64, i64),
    budget: usize,
) -> ApiResult<Page> {
    // `picked` holds at most limit + 1 rows (the extra one tells whether older ones exist),
    // each cut at BODY_CHARS; of those, the newest that fit in the budget are returned (the
    // newest always), each row saying whether older messages remain.
    let rows: Vec<Row> = diesel::sql_query(
        "WITH picked AS (
             SELECT m.id, m.conversation_id, m.author_id, p.name AS author, p.kind AS author_kind,
                    left(m.body, $5) AS body, octet_length(m.body) AS length, m.internal,
                    m.created_at, m.edited_at, m.dispatched_at
             FROM messages m JOIN people p ON p.id = m.author_id
             WHERE m.conversation_id = $1 AND m.deleted_at IS NULL AND (NOT m.internal OR $2)
               AND m.id < $3
             ORDER BY m.id DESC LIMIT $4 + 1),
         sized AS (
             SELECT picked.*, row_number() OVER (ORDER BY id DESC) AS n,
                    sum(octet_length(body)) OVER (ORDER BY id DESC) AS running
             FROM picked),
         flagged AS (
             SELECT sized.*, bool_or(n > $4 OR (n > 1 AND running > $6)) OVER () AS more
             FROM sized)
         SELECT id, conversation_id, author_id, author, author_kind, body,
                octet_length(body) < length AS truncated, length::bigint AS length, internal,
                created_at, edited_at, dispatched_at, more
         FROM flagged
         WHERE n <= $4 AND (n = 1 OR running <= $6)
         ORDER BY id DESC",
    )
    .bind::<BigInt, _>(id)
    .bind::<Bool, _>(sees_internal)
    .bind::<BigInt, _>(before)
    .bind::<BigInt, _>(limit)
    .bind::<diesel::sql_types::Integer, _>(BODY_CHARS)
    .bind::<BigInt, _>(budget as i64)
    .load(conn)?;
    let more = rows.first().is_some_and(|r| r.more);
    let mut rows: Vec<MessageRow> = rows.into_iter().map(|r| r.message).collect();
    rows.reverse();
    let older = if more {
        rows.first().map(|m| m.id)
    } else {
        None
    };
    Ok(Page {
        messages: with_attachments(conn, rows)?,
        older,
    })
}

/// One message whole (its visibility checked already).
pub fn whole(conn: &mut PgConnection, message_id: i64) -> ApiResult<PagedMessage> {
    let row: Option<MessageRow> = diesel::sql_query(
        "SELECT m.id, m.conversation_id, m.author_id, p.name AS author, p.kind AS author_kind,
                m.body, false AS truncated, octet_length(m.body)::bigint AS length, m.internal,
                m.created_at, m.edited_at, m.dispatched_at
         FROM messages m JOIN people p ON p.id = m.author_id
         WHERE m.id = $1 AND m.deleted_at IS NULL",
    )
    .bind::<BigInt, _>(message_id)
    .get_result(conn)
    .optional()?;
    let row = crate::lookup::found(row, "message", message_id)?;
    Ok(with_attachments(conn, vec![row])?.remove(0))
}

/// Each message with its files.
fn with_attachments(
    conn: &mut PgConnection,
    rows: Vec<MessageRow>,
) -> ApiResult<Vec<PagedMessage>> {
    let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
    let mut files: std::collections::HashMap<i64, Vec<Attachment>> = Default::default();
    for a in attachments::of_messages(conn, &ids)? {
        files.entry(a.message_id).or_default().push(a);
    }
    Ok(rows
        .into_iter()
        .map(|message| PagedMessage {
            attachments: files.remove(&message.id).unwrap_or_default(),
            message,
        })
        .collect())
}
