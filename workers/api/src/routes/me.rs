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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings_common::announce::Announcements;

use crate::error::{ApiError, ApiResult, Body, Params};
use crate::lookup::{find_conversation, find_person};
use crate::queries::conversation::{self, PageQuery, PagedMessage};
use crate::queries::deliveries::{self, MeDelivery};
use crate::queries::inbox::{Inbox, inbox_of, show_customers};
use crate::queries::preferences;
use crate::queries::visibility::{require_visible, visible_message};
use crate::session::Me;
use crate::state::{AppState, with_db};

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
    /// The largest file a message may carry, in bytes (`TIDINGS_ATTACHMENT_MAX`).
    attachment_max: usize,
    /// An admin may open the admin console (`/admin`).
    admin: bool,
}

#[utoipa::path(get, path = "/me", tag = "me",
    responses((status = 200, description = "the signed-in person", body = MeView)),
    security(("person" = [])))]
pub async fn me(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> ApiResult<Json<MeView>> {
    let attachment_max = state.config.attachment_max;
    with_db(&state, move |conn| {
        let person = find_person(conn, me.id)?;
        let inbox = inbox_of(conn, me)?;
        Ok(Json(MeView {
            id: person.id,
            name: person.name,
            kind: person.kind.as_str().to_string(),
            unread: inbox.unread,
            show_customer_conversations: show_customers(conn, me)?,
            attachment_max,
            admin: person.admin,
        }))
    })
    .await
}

#[utoipa::path(get, path = "/me/inbox", tag = "me",
    responses((status = 200, description = "open conversations, newest first", body = Inbox)),
    security(("person" = [])))]
pub async fn inbox(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> ApiResult<Json<Inbox>> {
    with_db(&state, move |conn| inbox_of(conn, me).map(Json)).await
}

/// A conversation with one page of the messages `me` may see, and their delivery status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeConversation {
    id: i64,
    subject: String,
    /// Oldest first: the newest page (or the one before `before`), within
    /// `TIDINGS_READ_BUDGET` bytes; long bodies come cut and flagged `truncated`.
    messages: Vec<PagedMessage>,
    /// `before` for the next older page; `null` at the first message.
    older: Option<i64>,
    deliveries: Vec<MeDelivery>,
    /// You muted it (A4).
    muted: bool,
}

#[utoipa::path(get, path = "/me/conversations/{id}", tag = "me",
    params(("id" = i64, Path, description = "the conversation id"), PageQuery),
    responses(
        (status = 200, description = "the conversation", body = MeConversation),
        (status = 400, description = "a bad query parameter, named in `field`", body = crate::error::ErrorBody),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn conversation(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(id): Path<i64>,
    Params(query): Params<PageQuery>,
) -> ApiResult<Json<MeConversation>> {
    let bounds = conversation::checked(&query)?;
    let budget = state.config.http_limits.read_budget;
    with_db(&state, move |conn| {
        require_visible(conn, me, id)?;
        let subject = find_conversation(conn, id)?.subject;
        let page = conversation::page(conn, id, me.sees_internal(), bounds, budget)?;
        let ids: Vec<i64> = page.messages.iter().map(|m| m.message.id).collect();
        let deliveries = deliveries::for_person(conn, &ids)?;
        let muted = is_muted(conn, me.id, id)?;
        Ok(Json(MeConversation {
            id,
            subject,
            messages: page.messages,
            older: page.older,
            deliveries,
            muted,
        }))
    })
    .await
}

/// One message whole (a conversation's pages cut long bodies).
#[utoipa::path(get, path = "/me/messages/{id}", tag = "me",
    params(("id" = i64, Path, description = "the message id")),
    responses(
        (status = 200, description = "the message, its whole text", body = PagedMessage),
        (status = 403, description = "you may not see its conversation", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn message(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(id): Path<i64>,
) -> ApiResult<Json<PagedMessage>> {
    with_db(&state, move |conn| {
        visible_message(conn, me, id)?;
        conversation::whole(conn, id).map(Json)
    })
    .await
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
        deliveries::for_person(conn, &[id]).map(Json)
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
    request_body(content((MeNewMessage = "application/json"), (crate::upload::MessageUpload = "multipart/form-data"))),
    responses(
        (status = 201, description = "the message; its notifications follow", body = tidings_common::db::models::Message),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 429, description = "your TIDINGS_POST_RATE is spent; see Retry-After", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn post_message(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(conversation_id): Path<i64>,
    crate::upload::WithFiles {
        fields: body,
        files,
    }: crate::upload::WithFiles<MeNewMessage>,
) -> Result<(StatusCode, Json<tidings_common::db::models::Message>), crate::posting::Refused> {
    let text = crate::posting::text_of(&body.body, &files)?;
    if body.internal && !me.sees_internal() {
        return Err(ApiError::bad_field(
            "internal",
            "internal: a customer cannot post an internal message",
        )
        .into());
    }
    crate::posting::post_and_announce(
        &state,
        conversation_id,
        me.id,
        text,
        body.internal,
        files,
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
        crate::queries::seen::advance_seen(conn, me.id, conversation_id, body.message_id)
    })
    .await?;
    state.announce(Announcements::live(live)).await;
    Ok(StatusCode::NO_CONTENT)
}

fn is_muted(
    conn: &mut diesel::PgConnection,
    person: i64,
    conversation: i64,
) -> diesel::QueryResult<bool> {
    use diesel::prelude::*;
    use tidings_common::db::schema::conversation_mutes as cm;
    diesel::select(diesel::dsl::exists(cm::table.find((person, conversation)))).get_result(conn)
}

/// A4: mutes the conversation for you: no ping, no desktop notification and no email about
/// its messages (they still count as unread). Assignment emails (E1) still come. Muting twice
/// changes nothing more.
#[utoipa::path(put, path = "/me/conversations/{id}/mute", tag = "me",
    params(("id" = i64, Path, description = "the conversation id")),
    responses(
        (status = 204, description = "muted"),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn mute(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(conversation_id): Path<i64>,
) -> ApiResult<StatusCode> {
    set_muted(&state, me, conversation_id, true).await
}

/// A4: ends your mute of the conversation (for a customer, also the unsubscribe from its
/// emails). Unmuting one that is not muted changes nothing.
#[utoipa::path(delete, path = "/me/conversations/{id}/mute", tag = "me",
    params(("id" = i64, Path, description = "the conversation id")),
    responses(
        (status = 204, description = "not muted"),
        (status = 403, description = "you may not see it", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn unmute(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(conversation_id): Path<i64>,
) -> ApiResult<StatusCode> {
    set_muted(&state, me, conversation_id, false).await
}

/// Mutes or unmutes a conversation `me` may see; idempotent.
async fn set_muted(
    state: &AppState,
    me: Me,
    conversation_id: i64,
    muted: bool,
) -> ApiResult<StatusCode> {
    with_db(state, move |conn| {
        use diesel::prelude::*;
        use tidings_common::db::schema::conversation_mutes as cm;
        require_visible(conn, me, conversation_id)?;
        if muted {
            diesel::insert_into(cm::table)
                .values((
                    cm::person_id.eq(me.id),
                    cm::conversation_id.eq(conversation_id),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
        } else {
            diesel::delete(cm::table.find((me.id, conversation_id))).execute(conn)?;
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Your pause (A1: when it ends, or `null`) and whether your emails wait for quiet (A3).
#[utoipa::path(get, path = "/me/attention", tag = "me",
    responses((status = 200, description = "your settings", body = crate::routes::people::Attention)),
    security(("person" = [])))]
pub async fn get_attention(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> ApiResult<Json<crate::routes::people::Attention>> {
    let by_default = state.config.wait_for_quiet;
    with_db(&state, move |conn| {
        Ok(Json(crate::routes::people::attention_of(
            conn, me.id, by_default,
        )?))
    })
    .await
}

/// Pause (do not disturb) until a time or end the pause (A1); wait for quiet or not (A3).
#[utoipa::path(put, path = "/me/attention", tag = "me",
    request_body = crate::routes::people::AttentionChange,
    responses(
        (status = 200, description = "your pause as it is now", body = crate::routes::people::Attention),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn put_attention(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Body(change): Body<crate::routes::people::AttentionChange>,
) -> ApiResult<Json<crate::routes::people::Attention>> {
    crate::routes::people::set_attention(&state, me.id, change)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/me/preferences", tag = "me",
    responses((status = 200, description = "your preferences (users)", body = Object)),
    security(("person" = [])))]
pub async fn get_preferences(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
) -> Result<Json<Value>, ApiError> {
    with_db(&state, move |conn| preferences::read(conn, me.id).map(Json)).await
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
    Body(patch): Body<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    if !me.sees_internal() {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: "customers have no messenger preferences".into(),
            field: None,
        });
    }
    if patch.contains_key(preferences::PERMISSION) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "{}: a permission only an admin changes (PATCH /people/{{id}}/preferences); \
                 you can read it here",
                preferences::PERMISSION
            ),
            field: Some(preferences::PERMISSION.into()),
        });
    }
    let changes = preferences::validate(&patch)?;
    with_db(&state, move |conn| {
        preferences::update(conn, me.id, &changes).map(Json)
    })
    .await
}

/// Where a new stream resumes: after event `last_event_id` (what `Last-Event-ID` says, for a
/// client that cannot send the header).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    pub last_event_id: Option<String>,
}

/// The live event stream (see `live`).
#[utoipa::path(get, path = "/me/events", tag = "me",
    params(EventsQuery),
    responses(
        (status = 200, description = "a text/event-stream of notification, seen, delivery, conversation and reset events"),
        (status = 429, description = "the person holds too many streams on this server", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    crate::live::stream(state, me, &headers, query.last_event_id.as_deref())
}
