//! A person's inbox: the conversations they were notified in or take part in, with unread
//! counts and the last message they may see; read by `/me`, `/me/inbox`, the live stream and
//! the admin API's `/people/{id}/inbox`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use serde::Serialize;
use tidings_common::db::models::PersonKind;

use crate::error::ApiResult;
use crate::session::Me;

/// Most conversations the messenger lists.
const INBOX_MAX: i64 = 200;

/// One open conversation of the messenger.
#[derive(Debug, Clone, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct InboxEntry {
    #[diesel(sql_type = BigInt)]
    pub conversation_id: i64,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = BigInt)]
    pub unread: i64,
    #[diesel(sql_type = BigInt)]
    last_message_id: i64,
    #[diesel(sql_type = Timestamptz)]
    last_message_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    last_excerpt: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    seen_up_to: Option<i64>,
    /// A customer takes part (the "From customers" group).
    #[diesel(sql_type = Bool)]
    from_customers: bool,
    /// The person muted it (A4): no ping, desktop notification or email.
    #[diesel(sql_type = Bool)]
    muted: bool,
}

/// A person's inbox: the total unread count and each open conversation, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Inbox {
    pub person_id: i64,
    pub unread: i64,
    pub conversations: Vec<InboxEntry>,
}

/// Every conversation `me` was notified in or takes part in and may still see (T6), with its
/// unread count and last message they may see; customer conversations left out when P2 is off. The person's own
/// messenger (`/me/inbox`) and the admin API (`/people/{id}/inbox`) both read this, so an
/// admin sees exactly the inbox the person sees.
pub fn inbox_of(conn: &mut PgConnection, me: Me) -> ApiResult<Inbox> {
    let show = me.kind == PersonKind::Customer || show_customers(conn, me)?;
    let conversations: Vec<InboxEntry> = diesel::sql_query(
        "WITH mine AS (
             SELECT conversation_id FROM notifications WHERE recipient_id = $1
             UNION
             SELECT conversation_id FROM conversation_participants WHERE person_id = $1),
         listed AS (
             SELECT c.id, c.subject, sc.last_seen_message_id,
                    ((SELECT true FROM conversation_participants cp JOIN people p ON p.id = cp.person_id
                       WHERE cp.conversation_id = c.id AND p.kind = 'customer' LIMIT 1) IS NOT NULL
                     OR (SELECT true FROM item_follows f JOIN people p ON p.id = f.person_id
                          WHERE f.item_id = c.item_id AND p.kind = 'customer' LIMIT 1) IS NOT NULL)
                      AS from_customers
             FROM mine JOIN conversations c ON c.id = mine.conversation_id
             LEFT JOIN seen_cursors sc ON sc.person_id = $1 AND sc.conversation_id = c.id)
         SELECT l.id AS conversation_id, l.subject,
                (SELECT count(*) FROM notifications n JOIN messages m ON m.id = n.message_id
                  WHERE n.recipient_id = $1 AND n.conversation_id = l.id AND m.deleted_at IS NULL
                    AND n.message_id > COALESCE(l.last_seen_message_id, 0)) AS unread,
                lm.id AS last_message_id, lm.created_at AS last_message_at,
                left(lm.body, 120) AS last_excerpt, l.last_seen_message_id AS seen_up_to,
                l.from_customers,
                (SELECT true FROM conversation_mutes cm
                  WHERE cm.person_id = $1 AND cm.conversation_id = l.id) IS NOT NULL AS muted
         FROM listed l
         CROSS JOIN LATERAL (
             SELECT m.id, m.created_at, m.body FROM messages m
              WHERE m.conversation_id = l.id AND m.deleted_at IS NULL AND (NOT m.internal OR $2)
              ORDER BY m.id DESC LIMIT 1) lm
         WHERE ($3 OR NOT l.from_customers) AND tidings_may_see($1, l.id)
         ORDER BY lm.id DESC
         LIMIT $4",
    )
    .bind::<BigInt, _>(me.id)
    .bind::<Bool, _>(me.sees_internal())
    .bind::<Bool, _>(show)
    .bind::<BigInt, _>(INBOX_MAX)
    .load(conn)?;
    let unread = conversations.iter().map(|c| c.unread).sum();
    Ok(Inbox {
        person_id: me.id,
        unread,
        conversations,
    })
}

/// P2: whether `me` is shown customer conversations (users; on by default).
pub fn show_customers(conn: &mut PgConnection, me: Me) -> ApiResult<bool> {
    use tidings_common::db::schema::user_preferences as up;
    Ok(up::table
        .find(me.id)
        .select(up::show_customer_conversations)
        .first::<bool>(conn)
        .optional()?
        .unwrap_or(true))
}
