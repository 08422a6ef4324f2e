//! Who may see what: the one visibility check of a person's conversations (F1, P1) and
//! messages (D5), shared by every `/me` read and write. The predicate itself is the SQL
//! function `tidings_may_see` (`common/src/db/functions.sql`), which the inbox and the live
//! stream filter by too, so losing access hides a conversation from every read path at once.

use axum::http::StatusCode;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use tidings_common::db::schema::messages;

use crate::error::{ApiError, ApiResult};
use crate::lookup::find_conversation;
use crate::session::Me;

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
    let v: Visible = diesel::sql_query("SELECT tidings_may_see($1, $2) AS visible")
        .bind::<BigInt, _>(me.id)
        .bind::<BigInt, _>(conversation_id)
        .get_result(conn)?;
    if v.visible {
        Ok(())
    } else {
        Err(forbidden(conversation_id))
    }
}

/// The message `message_id` if `me` may see it (404 otherwise, also for an internal message
/// and a customer, so its existence is not told).
pub fn visible_message(conn: &mut PgConnection, me: Me, message_id: i64) -> ApiResult<i64> {
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
