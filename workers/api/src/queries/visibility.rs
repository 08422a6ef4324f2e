//! Who may see what: the one visibility check of a person's conversations (F1, P1) and
//! messages (D5), shared by every `/me` read and write.

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
