//! Inbound mail as the console shows it: what was set aside (ignored or rejected) and why,
//! each email's source as received, and posting an email set aside by mistake.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::announce::Announcements;
use tidings_inbound::process::{self, NotRecovered};

use crate::error::{ApiError, ApiResult, Params};
use crate::session::Actor;
use crate::state::{AppState, with_db};

/// An inbound email that was not posted.
#[derive(Serialize, utoipa::ToSchema, QueryableByName)]
pub struct SetAside {
    /// The inbound email's id.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    received_at: chrono::DateTime<chrono::Utc>,
    /// The From address.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    sender: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    mail_from: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    rcpt_to: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    subject: Option<String>,
    /// What inspection made of it: `auto_reply`, `bulk`, `bounce`, `rejected`, …
    #[diesel(sql_type = diesel::sql_types::Text)]
    verdict: String,
    /// Why it was not posted.
    #[diesel(sql_type = diesel::sql_types::Text)]
    reason: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    size: i32,
    /// When an admin posted it anyway, who, and as which message.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    recovered_at: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    recovered_by: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    recovered_message_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    conversation_id: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SetAsideQuery {
    /// Only emails with an id below this (the next page).
    before: Option<i64>,
    limit: Option<i64>,
}

/// Inbound mail that was set aside (ignored or rejected), newest first, while the log keeps
/// its source (`TIDINGS_LOG_RETENTION`).
#[utoipa::path(
    get,
    path = "/set-aside",
    tag = "email-log",
    params(SetAsideQuery),
    responses(
        (status = 200, description = "emails set aside, newest first", body = Vec<SetAside>),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn set_aside(
    State(state): State<AppState>,
    Params(query): Params<SetAsideQuery>,
) -> ApiResult<Json<Vec<SetAside>>> {
    let limit = crate::validate::limit(query.limit, 50, 500)?;
    let before = query.before.unwrap_or(i64::MAX);
    with_db(&state, move |conn| {
        Ok(Json(
            diesel::sql_query(
                "SELECT r.inbound_email_id AS id, e.received_at, e.sender, r.mail_from, r.rcpt_to,
                        r.subject, e.verdict, r.set_aside AS reason,
                        octet_length(r.raw) AS size, r.recovered_at, p.name AS recovered_by,
                        r.recovered_message_id, e.conversation_id
                 FROM inbound_raw r
                 JOIN inbound_emails e ON e.id = r.inbound_email_id
                 LEFT JOIN people p ON p.id = r.recovered_by
                 WHERE r.set_aside IS NOT NULL AND r.inbound_email_id < $1
                 ORDER BY r.inbound_email_id DESC LIMIT $2",
            )
            .bind::<diesel::sql_types::BigInt, _>(before)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(conn)?,
        ))
    })
    .await
}

/// An inbound email's source as it was received (text; bytes that are not UTF-8 are shown
/// as U+FFFD), while the log keeps it.
#[utoipa::path(
    get,
    path = "/inbound-emails/{id}/source",
    tag = "email-log",
    params(("id" = i64, Path, description = "the inbound email")),
    responses(
        (status = 200, description = "the email as received", content_type = "text/plain"),
        (status = 404, description = "no source kept for it", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn source(State(state): State<AppState>, Path(id): Path<i64>) -> ApiResult<Response> {
    let raw: Option<Vec<u8>> = with_db(&state, move |conn| {
        use tidings_common::db::schema::inbound_raw as r;
        Ok(r::table.find(id).select(r::raw).first(conn).optional()?)
    })
    .await?;
    let Some(raw) = raw else {
        return Err(ApiError::not_found("inbound email source", id));
    };
    Ok(text(raw))
}

/// A log row's email as it went over the wire: an inbound email as received, an outbound one
/// as the SMTP server accepted it (its first 64 KiB), while the log keeps it.
#[utoipa::path(
    get,
    path = "/email-log/{id}/source",
    tag = "email-log",
    params(("id" = i64, Path, description = "the log row")),
    responses(
        (status = 200, description = "the email's source", content_type = "text/plain"),
        (status = 404, description = "no such row, or no source kept for it", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn log_source(State(state): State<AppState>, Path(id): Path<i64>) -> ApiResult<Response> {
    let raw: Option<Vec<u8>> = with_db(&state, move |conn| {
        use tidings_common::db::schema::{email_log as l, inbound_raw as r, outbound_sources as o};
        let row: Option<(Option<i64>, Option<String>)> = l::table
            .find(id)
            .select((l::inbound_email_id, l::message_id_header))
            .first(conn)
            .optional()?;
        let Some((inbound, header)) = row else {
            return Err(ApiError::not_found("email log row", id));
        };
        Ok(match (inbound, header) {
            (Some(inbound), _) => r::table
                .find(inbound)
                .select(r::raw)
                .first(conn)
                .optional()?,
            (None, Some(header)) => o::table
                .find(header)
                .select(o::raw)
                .first(conn)
                .optional()?,
            (None, None) => None,
        })
    })
    .await?;
    let Some(raw) = raw else {
        return Err(ApiError::not_found("source of email log row", id));
    };
    Ok(text(raw))
}

fn text(raw: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        String::from_utf8_lossy(&raw).into_owned(),
    )
        .into_response()
}

/// What posting an email set aside did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Posted {
    conversation_id: i64,
    message_id: i64,
    /// As the email log words it.
    action: String,
}

/// Posts an email that was set aside by mistake, once: into the conversation it answers, or
/// as a new ticket for a customer's fresh email. The automatic-mail verdict, a failed
/// authentication and the rate limit are overruled; who did it is recorded on the email and
/// in the log.
#[utoipa::path(
    post,
    path = "/inbound-emails/{id}/post",
    tag = "email-log",
    params(("id" = i64, Path, description = "the inbound email")),
    responses(
        (status = 201, description = "posted", body = Posted),
        (status = 404, description = "no source kept for it", body = crate::error::ErrorBody),
        (status = 409, description = "it was posted already", body = crate::error::ErrorBody),
        (status = 422, description = "it cannot be posted, and why", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn post_anyway(
    State(state): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, Json<Posted>)> {
    let config = state.config.clone();
    let admin = actor.map(|a| a.id);
    let done = with_db(&state, move |conn| {
        let admin = match admin {
            Some(admin) => Some((admin, crate::lookup::find_person(conn, admin)?.name)),
            None => None,
        };
        Ok(process::recover(
            conn,
            &config,
            id,
            admin.as_ref().map(|(id, name)| (*id, name.as_str())),
        )?)
    })
    .await?;
    let disposition = match done {
        Ok(disposition) => disposition,
        Err(why) => {
            let status = match why {
                NotRecovered::NotKept => StatusCode::NOT_FOUND,
                NotRecovered::WasPosted | NotRecovered::Already(_) => StatusCode::CONFLICT,
                NotRecovered::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return Err(ApiError {
                status,
                message: why.to_string(),
                field: None,
            });
        }
    };
    let mut announce = Announcements::default();
    announce.extend(disposition.announcements());
    state.announce(announce).await;
    let (conversation_id, message_id) = disposition
        .posted_into()
        .expect("a recovered email was posted");
    Ok((
        StatusCode::CREATED,
        Json(Posted {
            conversation_id,
            message_id,
            action: disposition.action(),
        }),
    ))
}
