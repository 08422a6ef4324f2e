//! Who is calling: the host application with the API token, or one person with a person
//! token that the host application minted (`POST /people/{id}/sessions`).
//!
//! A person token is `<person id>.<expires unix seconds>.<mac>`, signed with
//! `TIDINGS_TOKEN_SECRET` for the purpose `session.<generation>`, where the generation is the
//! person's `session_generation`: signing out (`DELETE /session`) or an admin's revoke
//! (`DELETE /people/{id}/sessions`) moves it on, so every token minted before stops working
//! at once, open event streams included. It is presented as `Authorization: Bearer <token>`,
//! or (for the messenger page, whose `EventSource` cannot send headers) in the HttpOnly,
//! SameSite=Strict cookie that `POST /session` sets: `__Host-tidings_session` (with `Secure`)
//! when `TIDINGS_PUBLIC_URL` is `https://`, and plain `tidings_session` for plain-HTTP
//! development. The API token is only ever accepted from the header.
//!
//! The cookie is sent by the browser on its own, so a write it authenticates must prove it
//! comes from the product's own pages: its `Origin` must be the origin of
//! `TIDINGS_PUBLIC_URL` (or, where a browser sends no `Origin`, `Sec-Fetch-Site` must be
//! `same-origin`). `SameSite=Strict` alone would let a page on another port or a sibling
//! subdomain (the same *site*) write as the person. `POST /session` follows the same rule.
//!
//! The two kinds never overlap: the admin routes refuse a person token (403), and the `/me`
//! routes refuse the API token (403), so a person token can never reach another person's data
//! or an admin route.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings_common::announce::Announcements;
use tidings_common::db::models::{Person, PersonKind};
use tidings_common::mail::{LinkError, sign_link, verify_link};

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::find_person;
use crate::state::{AppState, with_db};

/// The cookie's name over HTTPS: the `__Host-` prefix makes the browser refuse it unless it
/// was set by this host, over HTTPS, for the whole path, so a sibling subdomain cannot plant
/// one.
const COOKIE_SECURE: &str = "__Host-tidings_session";
/// The cookie's name over plain HTTP (development): browsers refuse `__Host-` there.
const COOKIE_PLAIN: &str = "tidings_session";

/// The person a `/me` request acts as; set by [`require_person`].
#[derive(Debug, Clone, Copy)]
pub struct Me {
    pub id: i64,
    pub kind: PersonKind,
    /// The session generation the token was signed for (see the module's notes).
    pub generation: i32,
}

impl Me {
    /// A person as they are now (for reads on their behalf, such as the admin's view of
    /// their inbox).
    pub fn of(person: &Person) -> Me {
        Me {
            id: person.id,
            kind: person.kind,
            generation: 0,
        }
    }

    /// Customers see external messages only (D5).
    pub fn sees_internal(&self) -> bool {
        self.kind != PersonKind::Customer
    }
}

/// What a request presented.
enum Credential<'a> {
    /// The host application's API token.
    Admin,
    /// A person token, from the `Authorization` header or from the cookie.
    Person { token: &'a str, cookie: bool },
}

/// Why a request is refused.
enum Refusal {
    /// 401: no credential, or one that does not verify.
    Unauthorized(String),
    /// 403: a good credential that may not do this.
    Forbidden(String),
    /// The check itself failed (the database is unreachable): answered as that error (503).
    Failed(ApiError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": why})),
            )
                .into_response(),
            Refusal::Forbidden(why) => {
                (StatusCode::FORBIDDEN, Json(json!({"error": why}))).into_response()
            }
            Refusal::Failed(e) => e.into_response(),
        }
    }
}

fn missing() -> Refusal {
    Refusal::Unauthorized("missing or wrong bearer token".into())
}

fn now() -> i64 {
    tidings_common::clock::now().timestamp()
}

fn purpose(generation: i32) -> String {
    format!("session.{generation}")
}

/// A person token for `person_id` at `generation`, valid for `ttl`; returns it and its
/// expiry (unix seconds).
pub fn mint(
    state: &AppState,
    person_id: i64,
    generation: i32,
    ttl: std::time::Duration,
) -> (String, i64) {
    let expires_at = now() + ttl.as_secs() as i64;
    (
        sign_link(
            &state.config.token_secret,
            &purpose(generation),
            person_id,
            expires_at,
        ),
        expires_at,
    )
}

/// The cookie's name for this deployment (see the module's notes).
pub fn cookie_name(state: &AppState) -> &'static str {
    if state.config.public_url.starts_with("https://") {
        COOKIE_SECURE
    } else {
        COOKIE_PLAIN
    }
}

fn cookie<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    let name = cookie_name(state);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

fn credential<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<Credential<'a>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        let expected = state.config.api_token.as_bytes();
        if constant_time_eq(token.trim().as_bytes(), expected) {
            return Some(Credential::Admin);
        }
        return Some(Credential::Person {
            token: token.trim(),
            cookie: false,
        });
    }
    cookie(state, headers).map(|token| Credential::Person {
        token: token.trim(),
        cookie: true,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The origin (`scheme://host[:port]`, default ports left out) of `url`, lower-cased.
pub fn origin_of(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let authority = match (scheme, authority.rsplit_once(':')) {
        ("https", Some((host, "443"))) | ("http", Some((host, "80"))) => host,
        _ => authority,
    };
    format!("{scheme}://{authority}")
}

/// Whether a request comes from the product's own pages: its `Origin` is the public origin,
/// or (a browser that sends no `Origin`) `Sec-Fetch-Site` is `same-origin`. `Err` says why not.
pub fn same_origin(state: &AppState, headers: &HeaderMap) -> Result<(), String> {
    let expected = origin_of(&state.config.public_url);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let given = origin.to_str().unwrap_or("(not text)");
        return if origin_of(given) == expected {
            Ok(())
        } else {
            Err(format!(
                "cross-origin request refused: Origin {given:?} is not this service's origin \
                 {expected} (TIDINGS_PUBLIC_URL)"
            ))
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin") => Ok(()),
        Some(other) => Err(format!(
            "cross-site request refused: Sec-Fetch-Site is {other:?}, not same-origin"
        )),
        None => Err(
            "a write with the session cookie must come from this service's pages: \
             no Origin or Sec-Fetch-Site header"
                .into(),
        ),
    }
}

fn writes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[derive(QueryableByName)]
struct Generation {
    #[diesel(sql_type = Integer)]
    session_generation: i32,
}

fn generation_of(conn: &mut PgConnection, person_id: i64) -> ApiResult<i32> {
    Ok(
        diesel::sql_query("SELECT session_generation FROM people WHERE id = $1")
            .bind::<BigInt, _>(person_id)
            .get_result::<Generation>(conn)?
            .session_generation,
    )
}

/// The person a person token names, once it verifies for their current generation.
async fn person_of(state: &AppState, token: &str) -> Result<(Person, i32), Refusal> {
    let Some(person_id) = token
        .split('.')
        .next()
        .and_then(|id| id.parse::<i64>().ok())
    else {
        return Err(missing());
    };
    let found = with_db(state, move |conn| {
        let person = find_person(conn, person_id)?;
        let generation = generation_of(conn, person_id)?;
        Ok((person, generation))
    })
    .await;
    let (person, generation) = match found {
        Ok(found) => found,
        Err(e) if e.status == StatusCode::NOT_FOUND => return Err(missing()),
        Err(e) => return Err(Refusal::Failed(e)),
    };
    match verify_link(
        &state.config.token_secret,
        &purpose(generation),
        token,
        now(),
    ) {
        Ok(_) => Ok((person, generation)),
        Err(LinkError::Expired) => {
            Err(Refusal::Unauthorized("the person token has expired".into()))
        }
        Err(LinkError::BadSignature) => Err(Refusal::Unauthorized(
            "the person token is wrong, or was revoked by signing out".into(),
        )),
        Err(LinkError::Malformed) => Err(missing()),
    }
}

/// An admin acting with their own session on an admin route (the console); set by
/// [`require_admin`]. Absent when the host application's API token is used.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub id: i64,
}

/// The most of a JSON body kept in an admin change's record.
const RECORDED_BODY_MAX: usize = 64 * 1024;

/// The admin routes: the API token, or the session (cookie or person token) of an active
/// user who is an admin. A write by cookie must come from the product's own pages, as on the
/// `/me` routes. Every write an admin makes with their session is recorded (who, when, the
/// route, its answer, the JSON body) in `admin_changes`.
pub async fn require_admin(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let (token, cookie) = match credential(&state, req.headers()) {
        Some(Credential::Admin) => return next.run(req).await,
        Some(Credential::Person { token, cookie }) => (token.to_string(), cookie),
        None => return missing().into_response(),
    };
    let person = match person_of(&state, &token).await {
        Ok((p, _)) => p,
        Err(refusal) => return refusal.into_response(),
    };
    if !(person.admin && person.active && person.kind == PersonKind::User) {
        return Refusal::Forbidden(
            "a person token cannot use this route unless its person is an admin; it needs the \
             host application's API token or an admin's session"
                .into(),
        )
        .into_response();
    }
    let write = writes(req.method());
    if cookie
        && write
        && let Err(why) = same_origin(&state, req.headers())
    {
        return Refusal::Forbidden(why).into_response();
    }
    req.extensions_mut().insert(Actor { id: person.id });
    // A preview renders without changing anything: not a change to record.
    if !write || req.uri().path().ends_with("/preview") {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::error::is_json);
    // A JSON body is small (bounded by the extractor's limit): kept for the record. Other
    // bodies (files) are passed on untouched and recorded by size.
    let (req, body) = if json {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, crate::error::JSON_MAX).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!("the body could not be read: {e}"),
                    field: None,
                }
                .into_response();
            }
        };
        let recorded = if bytes.len() > RECORDED_BODY_MAX {
            Some(json!({"cut": true, "bytes": bytes.len()}))
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        (
            Request::from_parts(parts, axum::body::Body::from(bytes)),
            recorded,
        )
    } else {
        let size = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        (req, size.map(|bytes| json!({"bytes": bytes})))
    };
    let response = next.run(req).await;
    let status = response.status().as_u16() as i16;
    let actor = person.id;
    let recorded = with_db(&state, move |conn| {
        use tidings_common::db::schema::admin_changes as c;
        diesel::insert_into(c::table)
            .values((
                c::actor_id.eq(actor),
                c::method.eq(method),
                c::path.eq(path),
                c::status.eq(status),
                c::body.eq(body),
            ))
            .execute(conn)?;
        Ok(())
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(actor, error = %e.message, "an admin change could not be recorded");
    }
    response
}

/// The `/me` routes: a person token (header or cookie) of an active person; a write by
/// cookie only from the product's own pages.
pub async fn require_person(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = match credential(&state, req.headers()) {
        Some(Credential::Person { token, cookie }) => {
            if cookie
                && writes(req.method())
                && let Err(why) = same_origin(&state, req.headers())
            {
                return Refusal::Forbidden(why).into_response();
            }
            token.to_string()
        }
        Some(Credential::Admin) => {
            return Refusal::Forbidden(
                "this route acts as one person; use a person token (POST /people/{id}/sessions)"
                    .into(),
            )
            .into_response();
        }
        None => return missing().into_response(),
    };
    match person_of(&state, &token).await {
        Ok((p, _)) if !p.active => {
            Refusal::Forbidden("the person is deactivated".into()).into_response()
        }
        Ok((p, _)) if p.kind == PersonKind::Bot => {
            Refusal::Forbidden("bots have no messenger".into()).into_response()
        }
        Ok((p, generation)) => {
            req.extensions_mut().insert(Me {
                id: p.id,
                kind: p.kind,
                generation,
            });
            next.run(req).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Whether `me`'s session still holds: the person is active and has not signed out since
/// the token was minted. The live stream asks at every wake-up and keep-alive.
pub fn still_signed_in(conn: &mut PgConnection, me: Me) -> ApiResult<bool> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        active: bool,
        #[diesel(sql_type = Integer)]
        session_generation: i32,
    }
    let row: Option<Row> =
        diesel::sql_query("SELECT active, session_generation FROM people WHERE id = $1")
            .bind::<BigInt, _>(me.id)
            .get_result(conn)
            .optional()?;
    Ok(row.is_some_and(|r| r.active && r.session_generation == me.generation))
}

/// Moves `person_id`'s session generation on (every token minted before stops working) and
/// wakes their open streams so that they end now.
pub async fn revoke(state: &AppState, person_id: i64) -> ApiResult<()> {
    with_db(state, move |conn| {
        find_person(conn, person_id)?;
        diesel::sql_query(
            "UPDATE people SET session_generation = session_generation + 1 WHERE id = $1",
        )
        .bind::<BigInt, _>(person_id)
        .execute(conn)?;
        Ok(())
    })
    .await?;
    state.announce(Announcements::live(vec![person_id])).await;
    Ok(())
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
    actor: Option<axum::Extension<Actor>>,
    Path(person_id): Path<i64>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    // Signing in as someone else is the host application's alone, never an admin's session.
    if actor.is_some() {
        return Err(ApiError::forbidden(
            "minting a person's session needs the host application's API token",
        ));
    }
    let (person, generation) = with_db(&state, move |conn| {
        Ok((
            find_person(conn, person_id)?,
            generation_of(conn, person_id)?,
        ))
    })
    .await?;
    if person.kind == PersonKind::Bot {
        return Err(ApiError::bad_field("id", "id: bots have no messenger"));
    }
    if !person.active {
        return Err(ApiError::bad_field("id", "id: the person is deactivated"));
    }
    let (token, expires_at) = mint(&state, person_id, generation, state.config.session_ttl);
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

/// Revokes every person token of the person (each device signed out, open event streams
/// ended): their session generation moves on.
#[utoipa::path(
    delete,
    path = "/people/{id}/sessions",
    tag = "sessions",
    params(("id" = i64, Path, description = "the person id")),
    responses(
        (status = 204, description = "every token minted before is revoked"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_sessions(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
) -> ApiResult<StatusCode> {
    revoke(&state, person_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    token: String,
}

fn set_cookie(state: &AppState, value: &str, max_age: i64) -> (header::HeaderName, String) {
    let name = cookie_name(state);
    let secure = if name == COOKIE_SECURE {
        "; Secure"
    } else {
        ""
    };
    (
        header::SET_COOKIE,
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"),
    )
}

/// Exchanges a person token for the messenger's HttpOnly, SameSite=Strict cookie; only from
/// the product's own pages (`Origin`), so no other page can sign a browser in as someone else.
#[utoipa::path(
    post,
    path = "/session",
    tag = "sessions",
    request_body = SignIn,
    responses(
        (status = 204, description = "signed in; the cookie is set"),
        (status = 401, description = "the token is wrong, expired or revoked", body = crate::error::ErrorBody),
        (status = 403, description = "not from the product's own pages, or the person is deactivated", body = crate::error::ErrorBody),
        (status = 415, description = "the body is not JSON", body = crate::error::ErrorBody),
    ),
)]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<SignIn>,
) -> Response {
    if let Err(why) = same_origin(&state, &headers) {
        return Refusal::Forbidden(why).into_response();
    }
    let token = body.token.trim();
    match person_of(&state, token).await {
        Ok((person, _)) if !person.active => {
            return Refusal::Forbidden("the person is deactivated".into()).into_response();
        }
        Ok((person, _)) if person.kind == PersonKind::Bot => {
            return Refusal::Forbidden("bots have no messenger".into()).into_response();
        }
        Ok(_) => {}
        Err(refusal) => return refusal.into_response(),
    }
    let expires_at = token
        .split('.')
        .nth(1)
        .and_then(|e| e.parse::<i64>().ok())
        .unwrap_or_default();
    let cookie = set_cookie(&state, token, (expires_at - now()).max(0));
    (StatusCode::NO_CONTENT, [cookie]).into_response()
}

/// Signs out: revokes the person's tokens on the server (every device; open event streams
/// end) and clears the messenger's cookie. A sign-out by cookie is taken only from the
/// product's own pages.
#[utoipa::path(
    delete,
    path = "/session",
    tag = "sessions",
    responses(
        (status = 204, description = "signed out: the token no longer works anywhere"),
        (status = 403, description = "a cookie sign-out not from the product's own pages", body = crate::error::ErrorBody),
    ),
)]
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(Credential::Person { token, cookie }) = credential(&state, &headers) {
        if cookie && let Err(why) = same_origin(&state, &headers) {
            return Refusal::Forbidden(why).into_response();
        }
        if let Ok((person, _)) = person_of(&state, token).await
            && let Err(e) = revoke(&state, person.id).await
        {
            return e.into_response();
        }
    }
    (StatusCode::NO_CONTENT, [set_cookie(&state, "", 0)]).into_response()
}
