//! The email log (SPEC L1) over HTTP.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tidings_common::clock;
use tidings_common::db::email_log::{self, LogFilter};
use tidings_common::db::models::{Direction, EmailLogEntry, LogStatus};

use crate::error::{ApiError, ApiResult, Params};
use crate::state::{AppState, with_db};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    message_id: Option<i64>,
    limit: Option<i64>,
    /// How far back, e.g. `72h` (default: the whole log, which the scheduler keeps to 72 h).
    since: Option<String>,
    /// `in` or `out`.
    direction: Option<String>,
    status: Option<String>,
    /// Rows from or to this address.
    address: Option<String>,
    /// Rows to or from this person's address.
    person_id: Option<i64>,
    conversation_id: Option<i64>,
    /// Rows written before this time (RFC 3339).
    until: Option<String>,
    /// Rows with an id below this: the next page (queued emails are on the first page only).
    before: Option<i64>,
}

impl LogQuery {
    /// The filter this query asks for, or 400 naming the bad parameter.
    fn filter(self) -> ApiResult<LogFilter> {
        let limit = crate::validate::limit(self.limit, 200, 10_000)?;
        let since = match &self.since {
            None => None,
            Some(v) => Some(clock::before(
                tidings_common::config::parse_positive_duration(v)
                    .map_err(|e| ApiError::bad_field("since", format!("since: {e}, got {v:?}")))?,
            )),
        };
        let direction = match self.direction.as_deref() {
            None => None,
            Some(v) => Some(Direction::parse_loose(v).ok_or_else(|| {
                ApiError::bad_field(
                    "direction",
                    format!("direction: {v:?} is not one of in, out"),
                )
            })?),
        };
        let status = match self.status.as_deref() {
            None => None,
            Some(v) => Some(LogStatus::parse(v).ok_or_else(|| {
                let known: Vec<&str> = LogStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_field(
                    "status",
                    format!("status: {v:?} is not one of {}", known.join(", ")),
                )
            })?),
        };
        let until = match &self.until {
            None => None,
            Some(v) => Some(
                chrono::DateTime::parse_from_rfc3339(v)
                    .map_err(|e| {
                        ApiError::bad_field("until", format!("until: {e} (RFC 3339), got {v:?}"))
                    })?
                    .with_timezone(&chrono::Utc),
            ),
        };
        let address = self
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string);
        Ok(LogFilter {
            message_id: self.message_id,
            since,
            direction,
            status,
            address,
            conversation_id: self.conversation_id,
            until,
            before: self.before,
            limit,
        })
    }
}

/// The email log, newest first; `?message_id=` narrows it to one message.
#[utoipa::path(
    get,
    path = "/email-log",
    tag = "email-log",
    params(LogQuery),
    responses(
        (status = 200, description = "log rows, newest first", body = Vec<EmailLogEntry>),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn email_log(
    State(state): State<AppState>,
    Params(query): Params<LogQuery>,
) -> ApiResult<Json<Vec<EmailLogEntry>>> {
    let person = query.person_id;
    let mut filter = query.filter()?;
    with_db(&state, move |conn| {
        if let Some(person) = person {
            let found = crate::lookup::find_person(conn, person).map_err(|e| {
                if e.status == axum::http::StatusCode::NOT_FOUND {
                    ApiError::bad_field("person_id", format!("person_id: no person {person}"))
                } else {
                    e
                }
            })?;
            let Some(email) = found.email else {
                return Ok(Json(Vec::new()));
            };
            if filter
                .address
                .as_deref()
                .is_some_and(|a| !a.eq_ignore_ascii_case(&email))
            {
                return Ok(Json(Vec::new()));
            }
            filter.address = Some(email);
        }
        Ok(Json(email_log::query(conn, &filter)?))
    })
    .await
}
