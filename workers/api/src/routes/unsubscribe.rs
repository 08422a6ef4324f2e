//! One-click unsubscribe (RFC 8058). These two routes are public: the signed token in the URL
//! is the authorisation. GET shows a confirmation page and changes nothing (mail scanners
//! follow links); POST, as mail clients send it, turns the emails off and logs the change.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use serde_json::json;
use tidings_common::clock;
use tidings_common::db::schema::{conversation_mutes, people, preference_changes};
use tidings_common::mail::{self, UnsubscribeError, UnsubscribeScope, UnsubscribeToken};
use tidings_common::rules::MessageKind;
use tracing::info;

use crate::AppState;
use crate::error::ApiError;

fn verify(state: &AppState, token: &str) -> Result<UnsubscribeToken, ApiError> {
    let today = mail::epoch_day(clock::now());
    UnsubscribeToken::decode(token, &state.config.token_secret, today).map_err(|e| ApiError {
        status: match e {
            UnsubscribeError::Expired => StatusCode::GONE,
            UnsubscribeError::Malformed | UnsubscribeError::BadSignature => StatusCode::BAD_REQUEST,
        },
        message: format!("{e}; nothing was changed"),
        field: None,
    })
}

/// The preference switch a user's unsubscribe link turns off.
fn email_field(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::FromCustomer => "email_customer_messages",
        MessageKind::ToCustomer => "email_replies",
        MessageKind::Internal => "email_internal",
    }
}

fn describe(scope: UnsubscribeScope) -> String {
    match scope {
        UnsubscribeScope::UserKind(MessageKind::FromCustomer) => {
            "emails about customer messages".into()
        }
        UnsubscribeScope::UserKind(MessageKind::ToCustomer) => {
            "emails about replies to customers".into()
        }
        UnsubscribeScope::UserKind(MessageKind::Internal) => {
            "emails about internal messages".into()
        }
        UnsubscribeScope::CustomerConversation(id) => format!("emails about conversation {id}"),
    }
}

#[utoipa::path(
    get,
    path = "/unsubscribe/{token}",
    tag = "unsubscribe",
    params(("token" = String, Path, description = "the signed link token")),
    responses(
        (status = 200, description = "an HTML confirmation page; changes nothing", body = String, content_type = "text/html"),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 410, description = "the link has expired", body = crate::error::ErrorBody),
    ),
)]
pub async fn confirm_page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match verify(&state, &token) {
        Ok(t) => crate::messenger::link_page(
            "Unsubscribe",
            &format!(
                "<p>Stop {}?</p>\
                 <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
                 <button type=\"submit\">Unsubscribe</button></form>",
                describe(t.scope)
            ),
        ),
        Err(e) => e.into_response(),
    }
}

/// The answer to a one-click unsubscribe.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Unsubscribed {
    unsubscribed: bool,
    person_id: i64,
    /// What stopped, in words.
    stopped: String,
}

#[utoipa::path(
    post,
    path = "/unsubscribe/{token}",
    tag = "unsubscribe",
    params(("token" = String, Path, description = "the signed link token")),
    responses(
        (status = 200, description = "what was turned off", body = Unsubscribed),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 410, description = "the link has expired", body = crate::error::ErrorBody),
    ),
)]
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Unsubscribed>, ApiError> {
    let token = verify(&state, &token)?;
    let person_id = token.person_id;
    state
        .db
        .run(move |conn| {
            Ok(conn.transaction(|conn| {
                let exists: Option<i64> = people::table
                    .find(person_id)
                    .select(people::id)
                    .first(conn)
                    .optional()?;
                if exists.is_none() {
                    return Err(ApiError::not_found("person", person_id));
                }
                let (field, conversation_id) = match token.scope {
                    UnsubscribeScope::UserKind(kind) => {
                        let field = email_field(kind);
                        crate::queries::preferences::apply(
                            conn,
                            person_id,
                            json!({ field: false }),
                        )?;
                        (field, None)
                    }
                    UnsubscribeScope::CustomerConversation(conversation_id) => {
                        diesel::insert_into(conversation_mutes::table)
                            .values((
                                conversation_mutes::person_id.eq(person_id),
                                conversation_mutes::conversation_id.eq(conversation_id),
                            ))
                            .on_conflict_do_nothing()
                            .execute(conn)?;
                        ("conversation_emails", Some(conversation_id))
                    }
                };
                diesel::insert_into(preference_changes::table)
                    .values((
                        preference_changes::person_id.eq(person_id),
                        preference_changes::conversation_id.eq(conversation_id),
                        preference_changes::field.eq(field),
                        preference_changes::new_value.eq("false"),
                        preference_changes::source.eq("unsubscribe"),
                    ))
                    .execute(conn)?;
                info!(person.id = person_id, field, "unsubscribed");
                Ok(Json(Unsubscribed {
                    unsubscribed: true,
                    person_id,
                    stopped: describe(token.scope),
                }))
            }))
        })
        .await?
}
