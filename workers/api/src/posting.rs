//! Posting a message on someone's behalf (the admin route and `/me`): the check, the
//! per-person rate (`TIDINGS_POST_RATE`), the insert and the commit in one transaction, then
//! the announcement.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable};
use tidings_common::announce::Announcements;
use tidings_common::db::models::Message;
use tidings_common::posting;
use tracing::info;

use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, with_db};

/// Why a post was refused: an [`ApiError`], or the author's rate spent.
pub enum Refused {
    Error(ApiError),
    /// 429: the author posted their `TIDINGS_POST_RATE` already; try again after this long.
    Rate {
        count: u32,
        window: Duration,
        retry_after: Duration,
    },
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Error(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Error(e) => e.into_response(),
            Refused::Rate {
                count,
                window,
                retry_after,
            } => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let seconds = seconds.max(1);
                let mut response = ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: format!(
                        "too many messages: at most {count} per {window:?} from one person \
                         (TIDINGS_POST_RATE); try again in {seconds} s"
                    ),
                    field: None,
                }
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
                response
            }
        }
    }
}

/// How long `author_id` must wait before posting again under `rate` (`None`: they may post
/// now). Bots are the host application's own integrations and are not limited. The count is
/// read from the author's newest messages, so it holds across every api process of a fleet.
fn rate_wait(
    conn: &mut PgConnection,
    author_id: i64,
    (count, window): (u32, Duration),
) -> QueryResult<Option<Duration>> {
    #[derive(QueryableByName)]
    struct Wait {
        #[diesel(sql_type = Nullable<Double>)]
        seconds: Option<f64>,
    }
    let wait: Wait = diesel::sql_query(
        "SELECT CASE WHEN (SELECT kind FROM people WHERE id = $1) = 'bot' THEN NULL
                ELSE (SELECT EXTRACT(EPOCH FROM created_at + make_interval(secs => $3) - now())
                        FROM messages WHERE author_id = $1
                       ORDER BY id DESC OFFSET $2 LIMIT 1)::float8 END AS seconds",
    )
    .bind::<BigInt, _>(author_id)
    .bind::<BigInt, _>(i64::from(count) - 1)
    .bind::<Double, _>(window.as_secs_f64())
    .get_result(conn)?;
    Ok(wait
        .seconds
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64))
}

/// The text of a message: what was written, or, when only files were sent, their names.
pub fn text_of(
    body: &str,
    files: &[tidings_common::attachments::File],
) -> Result<String, crate::error::ApiError> {
    if !body.trim().is_empty() {
        return Ok(body.to_string());
    }
    if files.is_empty() {
        return Err(crate::error::ApiError::bad_field(
            "body",
            "body: must not be empty (or send files)",
        ));
    }
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    Ok(format!("Files: {}", names.join(", ")))
}

/// Stores a message with its files once `check` (run in the same transaction) allows it and its author is
/// within their post rate, commits, then announces it; its author has seen everything before
/// it (D4).
pub async fn post_and_announce<C>(
    state: &AppState,
    conversation_id: i64,
    author_id: i64,
    body: String,
    internal: bool,
    files: Vec<tidings_common::attachments::File>,
    check: C,
) -> Result<(StatusCode, Json<Message>), Refused>
where
    C: FnOnce(&mut PgConnection) -> ApiResult<()> + Send + 'static,
{
    let rate = state.config.http_limits.post_rate;
    let posted = with_db(state, move |conn| {
        conn.transaction(|conn| {
            check(conn)?;
            if let Some(wait) = rate_wait(conn, author_id, rate)? {
                return Ok(Err(wait));
            }
            let message =
                posting::insert_message(conn, conversation_id, author_id, &body, internal)?;
            tidings_common::attachments::attach(conn, message.id, conversation_id, &files)?;
            Ok(Ok(message))
        })
    })
    .await?;
    let message = posted.map_err(|retry_after| Refused::Rate {
        count: rate.0,
        window: rate.1,
        retry_after,
    })?;
    info!(message.id = message.id, "message posted");
    state.announce(Announcements::message(message.id)).await;
    Ok((StatusCode::CREATED, Json(message)))
}
