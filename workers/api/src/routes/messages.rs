//! Messages after the fact (SPEC D9): edits and deletions, delivery status (D8) and the
//! explanation of a decision.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::db::models::*;
use tidings_common::db::schema::*;

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::*;
use crate::queries::conversation::{self, PagedMessage};
use crate::queries::deliveries::{self, Delivery};
use crate::state::{AppState, with_db};

/// One message whole, however long its text (a conversation's pages cut long bodies).
#[utoipa::path(
    get,
    path = "/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "the message, its whole text", body = PagedMessage),
        (status = 404, description = "an unknown or deleted message", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<PagedMessage>> {
    with_db(&state, move |conn| conversation::whole(conn, id).map(Json)).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagePatch {
    body: String,
}

/// Edits a message's text. Emails not yet sent carry the new text; editing it down to nothing
/// counts as deleting it.
#[utoipa::path(
    patch,
    path = "/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "the id")),
    request_body = MessagePatch,
    responses(
        (status = 200, description = "the message after the edit", body = Message),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn edit_message(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(patch): Body<MessagePatch>,
) -> ApiResult<Json<Message>> {
    with_db(&state, move |conn| {
        let message = find_message(conn, id)?;
        if message.deleted_at.is_some() {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!("message {id} was deleted"),
                field: None,
            });
        }
        let edited = diesel::update(messages::table.find(id))
            .set((
                messages::body.eq(patch.body),
                messages::edited_at.eq(diesel::dsl::now),
            ))
            .returning(Message::as_returning())
            .get_result(conn)?;
        Ok(Json(edited))
    })
    .await
}

/// Deletes a message; its pending emails are skipped with reason `deleted`.
#[utoipa::path(
    delete,
    path = "/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 204, description = "deleted; its pending emails are skipped"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_message(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        find_message(conn, id)?;
        diesel::update(
            messages::table
                .find(id)
                .filter(messages::deleted_at.is_null()),
        )
        .set(messages::deleted_at.eq(diesel::dsl::now))
        .execute(conn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Delivery status of one message per recipient (D8): notified, seen, emailed or skipped.
/// Delivery status of one message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Deliveries {
    message_id: i64,
    conversation_id: i64,
    /// Whether dispatch has written its notifications yet.
    dispatched: bool,
    /// One entry per notified person, by id.
    recipients: Vec<Delivery>,
}

#[utoipa::path(
    get,
    path = "/messages/{id}/deliveries",
    tag = "messages",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "per recipient: notified, seen, emailed or skipped", body = Deliveries),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    Path(message_id): Path<i64>,
) -> ApiResult<Json<Deliveries>> {
    with_db(&state, move |conn| {
        let message = messages::table
            .find(message_id)
            .select(Message::as_select())
            .first(conn)
            .optional()?;
        let message = found(message, "message", message_id)?;
        let rows = deliveries::for_admin(conn, &[message_id])?;
        Ok(Json(Deliveries {
            message_id,
            conversation_id: message.conversation_id,
            dispatched: message.dispatched_at.is_some(),
            recipients: rows,
        }))
    })
    .await
}

/// Why a person was or was not notified and emailed about a message, naming the deciding rule.
#[utoipa::path(
    get,
    path = "/messages/{id}/explain/{person_id}",
    tag = "messages",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 200, description = "why they were or were not notified and emailed", body = tidings_common::audience::Explanation),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn explain(
    State(state): State<AppState>,
    Path((message_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<Json<tidings_common::audience::Explanation>> {
    with_db(&state, move |conn| {
        find_message(conn, message_id)?;
        find_person(conn, person_id)?;
        let explanation = tidings_common::audience::explain(conn, message_id, person_id)?;
        Ok(Json(found(explanation, "message", message_id)?))
    })
    .await
}

/// The email a message was posted from: what extraction removed (quoted history, signature)
/// is kept here, beside the message.
#[derive(Serialize, Queryable, utoipa::ToSchema)]
pub struct MessageEmail {
    pub message_id: i64,
    /// The `Message-ID` header of the email.
    pub message_id_header: Option<String>,
    pub received_at: DateTime<Utc>,
    pub sender: Option<String>,
    /// How the email was read (`reply` or `new_conversation`).
    pub verdict: String,
    /// Set when extraction found no new text and the whole text was posted.
    pub note: Option<String>,
    /// What was removed from the posted text: the quoted history, attribution and signature.
    pub removed_text: Option<String>,
}

/// The email a message was posted from, and the files it brought that were kept (those not
/// kept are named in the message's text and the email log).
#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageEmailView {
    #[serde(flatten)]
    pub email: MessageEmail,
    pub files: Vec<tidings_common::attachments::Attachment>,
}

/// The email a message came from, with the text removed from it. 404 for a message that was
/// not posted by email.
#[utoipa::path(
    get,
    path = "/messages/{id}/email",
    tag = "messages",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "the email, what was removed from it, and its files", body = MessageEmailView),
        (status = 404, description = "an unknown message, or one not posted by email", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn email(
    State(state): State<AppState>,
    Path(message_id): Path<i64>,
) -> ApiResult<Json<MessageEmailView>> {
    with_db(&state, move |conn| {
        let message = messages::table
            .find(message_id)
            .select(messages::id)
            .first::<i64>(conn)
            .optional()?;
        found(message, "message", message_id)?;
        let email = inbound_emails::table
            .filter(inbound_emails::posted_message_id.eq(message_id))
            .select((
                inbound_emails::posted_message_id.assume_not_null(),
                inbound_emails::message_id_header,
                inbound_emails::received_at,
                inbound_emails::sender,
                inbound_emails::verdict,
                inbound_emails::reason,
                inbound_emails::quoted_text,
            ))
            .first::<MessageEmail>(conn)
            .optional()?;
        let email = found(email, "email of message", message_id)?;
        let files = tidings_common::attachments::of_messages(conn, &[message_id])?;
        Ok(Json(MessageEmailView { email, files }))
    })
    .await
}
