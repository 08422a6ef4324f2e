//! The `/me` routes: one person, acting as themselves with a person token (see `session`).
//! They read their inbox and the conversations they may see (P1, P2, D5), read delivery
//! status (D8), mark seen (D4), post as themselves, edit their own preferences and open their
//! live event stream (`live`).
//!
//! A conversation the person may not see is refused with 403, whatever the route; one that
//! does not exist is 404. Customers see external messages only, and post external only.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::{Json, response::Response};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings_common::announce::Announcements;
use tidings_common::db::models::PersonKind;
use tidings_common::db::schema::messages;

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::{find_conversation, find_person};
use crate::session::Me;
use crate::state::{AppState, with_db};

/// Most conversations the messenger lists.
const INBOX_MAX: i64 = 200;
/// Most messages of a conversation the messenger shows (the newest).
const MESSAGES_MAX: i64 = 500;

fn forbidden(conversation_id: i64) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        message: format!("you may not see conversation {conversation_id}"),
        field: None,
    }
}

/// 404 for an unknown conversation, 403 for one `me` may not see: customers only where they
/// take part or follow its item (F1); users by P1 (all projects, or a followed project, or
/// one they take part in).
pub fn require_visible(conn: &mut PgConnection, me: Me, conversation_id: i64) -> ApiResult<()> {
    find_conversation(conn, conversation_id)?;
    #[derive(QueryableByName)]
    struct Visible {
        #[diesel(sql_type = Bool)]
        visible: bool,
    }
    let v: Visible = diesel::sql_query(
        "SELECT CASE p.kind
                  WHEN 'customer' THEN
                       (SELECT true FROM conversation_participants cp
                         WHERE cp.conversation_id = c.id AND cp.person_id = p.id) IS NOT NULL
                    OR (SELECT true FROM item_follows f
                         WHERE f.item_id = c.item_id AND f.person_id = p.id) IS NOT NULL
                  WHEN 'user' THEN
                       COALESCE((SELECT see_conversations FROM user_preferences
                                  WHERE person_id = p.id), 'all_projects') = 'all_projects'
                    OR (SELECT true FROM conversation_participants cp
                         WHERE cp.conversation_id = c.id AND cp.person_id = p.id) IS NOT NULL
                    OR (SELECT true FROM project_follows pf
                         WHERE pf.person_id = p.id
                           AND pf.project_id = COALESCE(i.project_id, c.project_id)) IS NOT NULL
                  ELSE false END AS visible
         FROM conversations c LEFT JOIN items i ON i.id = c.item_id, people p
         WHERE c.id = $1 AND p.id = $2",
    )
    .bind::<BigInt, _>(conversation_id)
    .bind::<BigInt, _>(me.id)
    .get_result(conn)?;
    if v.visible {
        Ok(())
    } else {
        Err(forbidden(conversation_id))
    }
}

/// Who is signed in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeView {
    id: i64,
    name: String,
    /// `user` or `customer`.
    kind: String,
    /// Total unread messages.
    unread: i64,
    /// P2 (users): whether customer conversations are shown.
    show_customer_conversations: bool,
}

#[utoipa::path(get, path = "/me", tag = "me",
    responses((status = 200, description = "the signed-in person", body = MeView)),
    security(("person" = [])))]
pub async fn me(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> ApiResult<Json<MeView>> {
    with_db(&state, move |conn| {
        let person = find_person(conn, me.id)?;
        let inbox = inbox_of(conn, me)?;
        Ok(Json(MeView {
            id: person.id,
            name: person.name,
            kind: person.kind.as_str().to_string(),
            unread: inbox.unread,
            show_customer_conversations: show_customers(conn, me)?,
        }))
    })
    .await
}

fn show_customers(conn: &mut PgConnection, me: Me) -> ApiResult<bool> {
    use tidings_common::db::schema::user_preferences as up;
    Ok(up::table
        .find(me.id)
        .select(up::show_customer_conversations)
        .first::<bool>(conn)
        .optional()?
        .unwrap_or(true))
}

/// One open conversation of the messenger.
#[derive(Debug, Clone, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct MeInboxEntry {
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
}

/// The messenger's open conversations, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeInbox {
    pub unread: i64,
    pub conversations: Vec<MeInboxEntry>,
}

/// Every conversation `me` was notified in or takes part in, with its unread count and last
/// message they may see; customer conversations left out when P2 is off.
pub fn inbox_of(conn: &mut PgConnection, me: Me) -> ApiResult<MeInbox> {
    let show = me.kind == PersonKind::Customer || show_customers(conn, me)?;
    let conversations: Vec<MeInboxEntry> = diesel::sql_query(
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
                l.from_customers
         FROM listed l
         CROSS JOIN LATERAL (
             SELECT m.id, m.created_at, m.body FROM messages m
              WHERE m.conversation_id = l.id AND m.deleted_at IS NULL AND (NOT m.internal OR $2)
              ORDER BY m.id DESC LIMIT 1) lm
         WHERE $3 OR NOT l.from_customers
         ORDER BY lm.id DESC
         LIMIT $4",
    )
    .bind::<BigInt, _>(me.id)
    .bind::<Bool, _>(me.sees_internal())
    .bind::<Bool, _>(show)
    .bind::<BigInt, _>(INBOX_MAX)
    .load(conn)?;
    let unread = conversations.iter().map(|c| c.unread).sum();
    Ok(MeInbox {
        unread,
        conversations,
    })
}

#[utoipa::path(get, path = "/me/inbox", tag = "me",
    responses((status = 200, description = "open conversations, newest first", body = MeInbox)),
    security(("person" = [])))]
pub async fn inbox(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> ApiResult<Json<MeInbox>> {
    with_db(&state, move |conn| inbox_of(conn, me).map(Json)).await
}

/// One recipient's delivery of a message, as the messenger shows it (no addresses).
#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct MeDelivery {
    #[diesel(sql_type = BigInt)]
    message_id: i64,
    #[diesel(sql_type = BigInt)]
    person_id: i64,
    #[diesel(sql_type = Text)]
    person: String,
    #[diesel(sql_type = Timestamptz)]
    notified_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    seen_at: Option<DateTime<Utc>>,
    /// `pending`, `sending`, `sent`, `skipped` or `failed`.
    #[diesel(sql_type = Text)]
    email_state: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    emailed_at: Option<DateTime<Utc>>,
    /// Why it was not emailed, or `bounced`.
    #[diesel(sql_type = Nullable<Text>)]
    email_reason: Option<String>,
}

fn deliveries_of(conn: &mut PgConnection, message_ids: &[i64]) -> ApiResult<Vec<MeDelivery>> {
    Ok(diesel::sql_query(
        "SELECT n.message_id, n.recipient_id AS person_id, p.name AS person,
                n.created_at AS notified_at,
                CASE WHEN sc.last_seen_message_id >= n.message_id THEN sc.seen_at END AS seen_at,
                CASE WHEN n.coalesced_into IS NOT NULL THEN carrier.state ELSE n.state END AS email_state,
                COALESCE(n.sent_at, carrier.sent_at) AS emailed_at, n.reason AS email_reason
         FROM notifications n
         JOIN people p ON p.id = n.recipient_id
         LEFT JOIN notifications carrier ON carrier.id = n.coalesced_into
         LEFT JOIN seen_cursors sc
           ON sc.person_id = n.recipient_id AND sc.conversation_id = n.conversation_id
         WHERE n.message_id = ANY($1)
         ORDER BY n.message_id, n.recipient_id",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(message_ids)
    .load(conn)?)
}

/// A message as the messenger shows it.
#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct MeMessage {
    #[diesel(sql_type = BigInt)]
    id: i64,
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

/// A conversation with the messages `me` may see, oldest first, and their delivery status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeConversation {
    id: i64,
    subject: String,
    messages: Vec<MeMessage>,
    deliveries: Vec<MeDelivery>,
}

#[utoipa::path(get, path = "/me/conversations/{id}", tag = "me",
    params(("id" = i64, Path, description = "the conversation id")),
    responses(
        (status = 200, description = "the conversation", body = MeConversation),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn conversation(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(id): Path<i64>,
) -> ApiResult<Json<MeConversation>> {
    with_db(&state, move |conn| {
        require_visible(conn, me, id)?;
        let subject = find_conversation(conn, id)?.subject;
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
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        let deliveries = deliveries_of(conn, &ids)?;
        Ok(Json(MeConversation {
            id,
            subject,
            messages,
            deliveries,
        }))
    })
    .await
}

/// The message `message_id` if `me` may see it (404 otherwise, also for an internal message
/// and a customer, so its existence is not told).
fn visible_message(conn: &mut PgConnection, me: Me, message_id: i64) -> ApiResult<i64> {
    let found: Option<(i64, bool)> = messages::table
        .find(message_id)
        .filter(messages::deleted_at.is_null())
        .select((messages::conversation_id, messages::internal))
        .first(conn)
        .optional()?;
    match found {
        Some((conversation, internal)) if !internal || me.sees_internal() => {
            require_visible(conn, me, conversation)?;
            Ok(conversation)
        }
        _ => Err(ApiError::not_found("message", message_id)),
    }
}

#[utoipa::path(get, path = "/me/messages/{id}/deliveries", tag = "me",
    params(("id" = i64, Path, description = "the message id")),
    responses(
        (status = 200, description = "per recipient: notified, seen, emailed", body = Vec<MeDelivery>),
        (status = 403, description = "you may not see its conversation", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<MeDelivery>>> {
    with_db(&state, move |conn| {
        visible_message(conn, me, id)?;
        deliveries_of(conn, &[id]).map(Json)
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeNewMessage {
    body: String,
    /// Users choose; customers may only post external messages (false).
    #[serde(default)]
    internal: bool,
}

#[utoipa::path(post, path = "/me/conversations/{id}/messages", tag = "me",
    params(("id" = i64, Path, description = "the conversation id")),
    request_body = MeNewMessage,
    responses(
        (status = 201, description = "the message; its notifications follow", body = tidings_common::db::models::Message),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn post_message(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(conversation_id): Path<i64>,
    Body(body): Body<MeNewMessage>,
) -> ApiResult<(StatusCode, Json<tidings_common::db::models::Message>)> {
    if body.body.trim().is_empty() {
        return Err(ApiError::bad_field("body", "body: must not be empty"));
    }
    if body.internal && !me.sees_internal() {
        return Err(ApiError::bad_field(
            "internal",
            "internal: a customer cannot post an internal message",
        ));
    }
    super::conversations::post_and_announce(
        &state,
        conversation_id,
        me.id,
        body.body,
        body.internal,
        move |conn| require_visible(conn, me, conversation_id),
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeSeen {
    message_id: i64,
}

#[utoipa::path(put, path = "/me/conversations/{id}/seen", tag = "me",
    params(("id" = i64, Path, description = "the conversation id")),
    request_body = MeSeen,
    responses(
        (status = 204, description = "everything up to the message is seen"),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn mark_seen(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(conversation_id): Path<i64>,
    Body(body): Body<MeSeen>,
) -> ApiResult<StatusCode> {
    let live = with_db(&state, move |conn| {
        require_visible(conn, me, conversation_id)?;
        if visible_message(conn, me, body.message_id)? != conversation_id {
            return Err(ApiError::bad_field(
                "message_id",
                format!(
                    "message_id: message {} is not in conversation {conversation_id}",
                    body.message_id
                ),
            ));
        }
        super::conversations::advance_seen(conn, me.id, conversation_id, body.message_id)
    })
    .await?;
    state.announce(Announcements::live(live)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/me/preferences", tag = "me",
    responses((status = 200, description = "your preferences (users)", body = Object)),
    security(("person" = [])))]
pub async fn get_preferences(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> Result<Json<Value>, ApiError> {
    super::preferences::get_preferences(State(state), Path(me.id)).await
}

#[utoipa::path(patch, path = "/me/preferences", tag = "me",
    request_body = Object,
    responses(
        (status = 200, description = "your preferences after the change", body = Object),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn update_preferences(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    body: Body<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    if !me.sees_internal() {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: "customers have no messenger preferences".into(),
            field: None,
        });
    }
    super::preferences::update_preferences(State(state), Path(me.id), body).await
}

/// The live event stream (see `live`).
#[utoipa::path(get, path = "/me/events", tag = "me",
    responses(
        (status = 200, description = "a text/event-stream of notification, seen, delivery, conversation and reset events"),
        (status = 429, description = "the person holds too many streams on this server", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    headers: axum::http::HeaderMap,
) -> Response {
    crate::live::stream(state, me, &headers)
}
