//! Who is calling: the host application with the API token, or one person with a person
//! token that the host application minted (`POST /people/{id}/sessions`).
//!
//! A person token is `<person id>.<expires unix seconds>.<mac>`, signed with
//! `TIDINGS_TOKEN_SECRET` for the purpose `session`. It is presented as
//! `Authorization: Bearer <token>`, or (for the messenger page, whose `EventSource` cannot
//! send headers) in the HttpOnly, SameSite=Strict cookie that `POST /session` sets. The API
//! token is only ever accepted from the header.
//!
//! The two kinds never overlap: the admin routes refuse a person token (403), and the `/me`
//! routes refuse the API token (403), so a person token can never reach another person's data
//! or an admin route.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings_common::db::models::PersonKind;
use tidings_common::mail::{LinkError, sign_link, verify_link};

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::find_person;
use crate::state::{AppState, with_db};

/// What person tokens are signed for.
const PURPOSE: &str = "session";
/// The messenger's cookie.
pub const COOKIE: &str = "tidings_session";

/// The caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The host application (the API token).
    Admin,
    /// One person (a person token).
    Person(i64),
}

/// The person a `/me` request acts as; set by [`require_person`].
#[derive(Debug, Clone, Copy)]
pub struct Me {
    pub id: i64,
    pub kind: PersonKind,
}

impl Me {
    /// Customers see external messages only (D5).
    pub fn sees_internal(&self) -> bool {
        self.kind != PersonKind::Customer
    }
}

/// Why a request has no principal.
enum Refusal {
    Missing,
    Wrong(&'static str),
}

fn now() -> i64 {
    tidings_common::clock::now().timestamp()
}

/// A person token for `person_id`, valid for `ttl`; returns it and its expiry (unix seconds).
pub fn mint(state: &AppState, person_id: i64, ttl: std::time::Duration) -> (String, i64) {
    let expires_at = now() + ttl.as_secs() as i64;
    (
        sign_link(&state.config.token_secret, PURPOSE, person_id, expires_at),
        expires_at,
    )
}

fn verify(state: &AppState, token: &str) -> Result<i64, Refusal> {
    verify_link(&state.config.token_secret, PURPOSE, token.trim(), now()).map_err(|e| match e {
        LinkError::Expired => Refusal::Wrong("the person token has expired"),
        LinkError::BadSignature | LinkError::Malformed => {
            Refusal::Wrong("missing or wrong bearer token")
        }
    })
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        let expected = state.config.api_token.as_bytes();
        if constant_time_eq(token.trim().as_bytes(), expected) {
            return Ok(Principal::Admin);
        }
        return verify(state, token).map(Principal::Person);
    }
    match cookie(headers) {
        Some(token) => verify(state, token).map(Principal::Person),
        None => Err(Refusal::Missing),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": message})),
    )
        .into_response()
}

fn forbidden(message: &str) -> Response {
    (StatusCode::FORBIDDEN, Json(json!({"error": message}))).into_response()
}

/// The admin routes: the API token only.
pub async fn require_api_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match principal(&state, req.headers()) {
        Ok(Principal::Admin) => next.run(req).await,
        Ok(Principal::Person(_)) => forbidden(
            "a person token cannot use this route; it needs the host application's API token",
        ),
        Err(Refusal::Missing) => unauthorized("missing or wrong bearer token"),
        Err(Refusal::Wrong(why)) => unauthorized(why),
    }
}

/// The `/me` routes: a person token (header or cookie) of an active person.
pub async fn require_person(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = match principal(&state, req.headers()) {
        Ok(Principal::Person(id)) => id,
        Ok(Principal::Admin) => {
            return forbidden(
                "this route acts as one person; use a person token (POST /people/{id}/sessions)",
            );
        }
        Err(Refusal::Missing) => return unauthorized("missing or wrong bearer token"),
        Err(Refusal::Wrong(why)) => return unauthorized(why),
    };
    let person = with_db(&state, move |conn| find_person(conn, id)).await;
    match person {
        Ok(p) if !p.active => forbidden("the person is deactivated"),
        Ok(p) if p.kind == PersonKind::Bot => forbidden("bots have no messenger"),
        Ok(p) => {
            req.extensions_mut().insert(Me {
                id: p.id,
                kind: p.kind,
            });
            next.run(req).await
        }
        // The person the token names no longer exists.
        Err(_) => unauthorized("the person token names no person"),
    }
}

/// A minted person token.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Session {
    person_id: i64,
    /// `Authorization: Bearer <token>` for the `/me` routes, or exchanged for the messenger's
    /// cookie with `POST /session`.
    token: String,
    /// Unix seconds.
    expires_at: i64,
    /// The messenger page signed in as the person (the token travels in the URL fragment,
    /// which never reaches a server log).
    messenger_url: String,
}

/// Mints a person token (users and customers; bots have no messenger).
#[utoipa::path(
    post,
    path = "/people/{id}/sessions",
    tag = "sessions",
    params(("id" = i64, Path, description = "the person id")),
    responses(
        (status = 201, description = "a person token", body = Session),
        (status = 400, description = "the person is a bot or deactivated", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_session(
    State(state): State<AppState>,
    axum::extract::Path(person_id): axum::extract::Path<i64>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let person = with_db(&state, move |conn| find_person(conn, person_id)).await?;
    if person.kind == PersonKind::Bot {
        return Err(ApiError::bad_field("id", "id: bots have no messenger"));
    }
    if !person.active {
        return Err(ApiError::bad_field("id", "id: the person is deactivated"));
    }
    let (token, expires_at) = mint(&state, person_id, state.config.session_ttl);
    let messenger_url = format!(
        "{}/messenger#token={token}",
        state.config.public_url.trim_end_matches('/')
    );
    Ok((
        StatusCode::CREATED,
        Json(Session {
            person_id,
            token,
            expires_at,
            messenger_url,
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    token: String,
}

/// Exchanges a person token for the messenger's HttpOnly, SameSite=Strict cookie.
#[utoipa::path(
    post,
    path = "/session",
    tag = "sessions",
    request_body = SignIn,
    responses(
        (status = 204, description = "signed in; the cookie is set"),
        (status = 401, description = "the token is wrong or expired", body = crate::error::ErrorBody),
    ),
)]
pub async fn sign_in(State(state): State<AppState>, Body(body): Body<SignIn>) -> Response {
    let token = body.token.trim();
    let expires_at = match verify(&state, token) {
        Ok(_) => token
            .split('.')
            .nth(1)
            .and_then(|e| e.parse::<i64>().ok())
            .unwrap_or_default(),
        Err(Refusal::Wrong(why)) => return unauthorized(why),
        Err(Refusal::Missing) => return unauthorized("missing or wrong bearer token"),
    };
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        (expires_at - now()).max(0)
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

/// Signs out: clears the messenger's cookie.
#[utoipa::path(
    delete,
    path = "/session",
    tag = "sessions",
    responses((status = 204, description = "signed out")),
)]
pub async fn sign_out() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
    )
        .into_response()
}
