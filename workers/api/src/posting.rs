//! Posting a message on someone's behalf (the admin route and `/me`): the check, the insert
//! and the commit in one transaction, then the announcement.

use axum::Json;
use axum::http::StatusCode;
use diesel::prelude::*;
use tidings_common::announce::Announcements;
use tidings_common::db::models::Message;
use tidings_common::posting;
use tracing::info;

use crate::error::ApiResult;
use crate::state::{AppState, with_db};

/// Stores a message once `check` (run in the same transaction) allows it, commits, then
/// announces it; its author has seen everything before it (D4).
pub async fn post_and_announce<C>(
    state: &AppState,
    conversation_id: i64,
    author_id: i64,
    body: String,
    internal: bool,
    check: C,
) -> ApiResult<(StatusCode, Json<Message>)>
where
    C: FnOnce(&mut PgConnection) -> ApiResult<()> + Send + 'static,
{
    let message = with_db(state, move |conn| {
        conn.transaction(|conn| {
            check(conn)?;
            Ok(posting::insert_message(
                conn,
                conversation_id,
                author_id,
                &body,
                internal,
            )?)
        })
    })
    .await?;
    info!(message.id = message.id, "message posted");
    state.announce(Announcements::message(message.id)).await;
    Ok((StatusCode::CREATED, Json(message)))
}
