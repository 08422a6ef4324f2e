//! One-click unsubscribe (RFC 8058). These two routes are public: the signed token in the URL
//! is the authorisation. GET shows a confirmation page and changes nothing (mail scanners
//! follow links); POST, as mail clients send it, turns the emails off and logs the change.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use tidings_common::clock;
use tidings_common::db::schema::people;
use tidings_common::db::unsubscribe;
use tidings_common::mail::{self, UnsubscribeError, UnsubscribeToken};
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
                unsubscribe::describe(t.scope)
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
                let (field, _) = unsubscribe::apply(conn, person_id, token.scope, "unsubscribe")?;
                info!(person.id = person_id, field, "unsubscribed");
                Ok(Json(Unsubscribed {
                    unsubscribed: true,
                    person_id,
                    stopped: unsubscribe::describe(token.scope),
                }))
            }))
        })
        .await?
}
