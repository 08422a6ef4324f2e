//! Conversations: creating and reading them, participants, posting messages and marking them seen
//! (SPEC D4).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::announce::Announcements;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::posting;

use crate::error::{ApiError, ApiResult, Body, Params};
use crate::lookup::*;
use crate::posting::post_and_announce;
use crate::queries::conversation::{self as page, PageQuery, PagedMessage};
use crate::queries::seen::advance_seen;
use crate::state::{AppState, with_db};
use crate::validate::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConversationBody {
    subject: String,
    item_id: Option<i64>,
    project_id: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/conversations",
    tag = "conversations",
    request_body = NewConversationBody,
    responses(
        (status = 201, description = "the conversation", body = Conversation),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_conversation(
    State(state): State<AppState>,
    Body(body): Body<NewConversationBody>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    let subject = single_line("subject", &body.subject, SUBJECT_MAX)?;
    if body.item_id.is_some() && body.project_id.is_some() {
        return Err(ApiError::bad_field(
            "project_id",
            "project_id: a conversation links to an item or a project, not both",
        ));
    }
    with_db(&state, move |conn| {
        if let Some(item_id) = body.item_id {
            require_item(conn, item_id)?;
        }
        if let Some(project_id) = body.project_id {
            require_project(conn, project_id)?;
        }
        let conversation = diesel::insert_into(conversations::table)
            .values((
                conversations::subject.eq(subject),
                conversations::item_id.eq(body.item_id),
                conversations::project_id.eq(body.project_id),
            ))
            .returning(Conversation::as_returning())
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(conversation)))
    })
    .await
}

/// Which conversations to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationQuery {
    /// Only the conversations of this item.
    item_id: Option<i64>,
    /// Only the conversations linked directly to this project.
    project_id: Option<i64>,
    /// Most conversations to return, 1 to 1000 (default 100).
    limit: Option<i64>,
}

/// Conversations, newest first.
#[utoipa::path(
    get,
    path = "/conversations",
    tag = "conversations",
    params(ConversationQuery),
    responses(
        (status = 200, description = "conversations, newest first", body = Vec<Conversation>),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_conversations(
    State(state): State<AppState>,
    crate::error::Params(query): crate::error::Params<ConversationQuery>,
) -> ApiResult<Json<Vec<Conversation>>> {
    let limit = crate::validate::limit(query.limit, 100, 1000)?;
    with_db(&state, move |conn| {
        let mut q = conversations::table
            .select(Conversation::as_select())
            .order(conversations::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(item) = query.item_id {
            q = q.filter(conversations::item_id.eq(item));
        }
        if let Some(project) = query.project_id {
            q = q.filter(conversations::project_id.eq(project));
        }
        Ok(Json(q.load(conn)?))
    })
    .await
}

/// A conversation with its participants and one page of its messages.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    conversation: Conversation,
    /// Person ids, ascending.
    participants: Vec<i64>,
    /// Messages not deleted, oldest first: the newest page (or the one before `before`),
    /// within `TIDINGS_READ_BUDGET` bytes; long bodies come cut and flagged `truncated`.
    messages: Vec<PagedMessage>,
    /// `before` for the next older page; `null` at the first message.
    older: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/conversations/{id}",
    tag = "conversations",
    params(("id" = i64, Path, description = "the id"), AdminPageQuery),
    responses(
        (status = 200, description = "the conversation, participants and a page of messages", body = ConversationView),
        (status = 400, description = "a bad query parameter, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Params(query): Params<AdminPageQuery>,
) -> ApiResult<Json<ConversationView>> {
    let query = PageQuery {
        limit: Some(query.limit.unwrap_or(page::PAGE_MAX)),
        before: query.before,
    };
    let bounds = page::checked(&query)?;
    let budget = state.config.http_limits.read_budget;
    with_db(&state, move |conn| {
        let conversation = find_conversation(conn, id)?;
        let page = page::page(conn, id, true, bounds, budget)?;
        let participants: Vec<i64> = conversation_participants::table
            .filter(conversation_participants::conversation_id.eq(id))
            .select(conversation_participants::person_id)
            .order(conversation_participants::person_id.asc())
            .load(conn)?;
        Ok(Json(ConversationView {
            conversation,
            participants,
            messages: page.messages,
            older: page.older,
        }))
    })
    .await
}

/// `?limit=&before=` of the admin read: 200 messages by default.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminPageQuery {
    /// Messages in the page (1 to 200; 200 by default).
    limit: Option<i64>,
    /// Only messages older than this message id (the `older` cursor of the previous page).
    before: Option<i64>,
}

#[utoipa::path(
    put,
    path = "/conversations/{id}/participants/{person_id}",
    tag = "conversations",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 204, description = "a participant"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn add_participant(
    State(state): State<AppState>,
    Path((conversation_id, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        find_conversation(conn, conversation_id)?;
        find_person(conn, person_id)?;
        posting::add_participant(conn, conversation_id, person_id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessageBody {
    author_id: i64,
    body: String,
    internal: bool,
}

/// Posts a message: stores it, makes the author a participant who has seen it (D4), commits,
/// then publishes `message.posted`. If the publish fails the message is still stored, and
/// dispatch's sweep publishes it later.
#[utoipa::path(
    post,
    path = "/conversations/{id}/messages",
    tag = "conversations",
    params(("id" = i64, Path, description = "the id")),
    request_body(content((NewMessageBody = "application/json"), (crate::upload::MessageUpload = "multipart/form-data"))),
    responses(
        (status = 201, description = "the message; its notifications follow", body = Message),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 429, description = "the author's TIDINGS_POST_RATE is spent; see Retry-After", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn post_message(
    State(state): State<AppState>,
    Path(conversation_id): Path<i64>,
    crate::upload::WithFiles {
        fields: body,
        files,
    }: crate::upload::WithFiles<NewMessageBody>,
) -> Result<(StatusCode, Json<Message>), crate::posting::Refused> {
    let text = crate::posting::text_of(&body.body, &files)?;
    let (author_id, internal) = (body.author_id, body.internal);
    post_and_announce(
        &state,
        conversation_id,
        author_id,
        text,
        internal,
        files,
        move |conn| {
            find_conversation(conn, conversation_id)?;
            let author = find_person(conn, author_id)?;
            if internal && author.kind == PersonKind::Customer {
                return Err(ApiError::bad_field(
                    "internal",
                    "internal: a customer cannot post an internal message",
                ));
            }
            Ok(())
        },
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeenBody {
    person_id: i64,
    message_id: i64,
}

/// Marks every message of the conversation up to `message_id` seen by `person_id`.
#[utoipa::path(
    put,
    path = "/conversations/{id}/seen",
    tag = "conversations",
    params(("id" = i64, Path, description = "the id")),
    request_body = SeenBody,
    responses(
        (status = 204, description = "everything up to the message is seen"),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn mark_seen(
    State(state): State<AppState>,
    Path(conversation_id): Path<i64>,
    Body(body): Body<SeenBody>,
) -> ApiResult<StatusCode> {
    let live = with_db(&state, move |conn| {
        find_conversation(conn, conversation_id)?;
        find_person(conn, body.person_id)?;
        let message_conversation: Option<i64> = messages::table
            .find(body.message_id)
            .select(messages::conversation_id)
            .first(conn)
            .optional()?;
        match message_conversation {
            None => return Err(ApiError::not_found("message", body.message_id)),
            Some(c) if c != conversation_id => {
                return Err(ApiError::bad_field(
                    "message_id",
                    format!(
                        "message_id: message {} belongs to conversation {c}, not {conversation_id}",
                        body.message_id
                    ),
                ));
            }
            Some(_) => {}
        }
        advance_seen(conn, body.person_id, conversation_id, body.message_id)
    })
    .await?;
    state.announce(Announcements::live(live)).await;
    Ok(StatusCode::NO_CONTENT)
}
