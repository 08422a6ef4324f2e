//! Addresses suppressed after bounces, and lifting a suppression.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use tidings_common::db::schema::*;

use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, with_db};

#[derive(Queryable, Serialize, utoipa::ToSchema)]
pub struct Suppression {
    address: String,
    suppressed: bool,
    hard_bounces: i32,
    soft_bounces: i32,
    last_status: Option<String>,
    updated_at: DateTime<Utc>,
}

/// Addresses whose email is suppressed after bounces.
#[utoipa::path(
    get,
    path = "/suppressions",
    tag = "suppressions",
    responses(
        (status = 200, description = "suppressed and counted addresses", body = Vec<Suppression>),
    ),
    security(("bearer" = [])),
)]
pub async fn suppressions(State(state): State<AppState>) -> ApiResult<Json<Vec<Suppression>>> {
    with_db(&state, move |conn| {
        let rows = email_suppressions::table
            .order(email_suppressions::updated_at.desc())
            .select((
                email_suppressions::address,
                email_suppressions::suppressed,
                email_suppressions::hard_bounces,
                email_suppressions::soft_bounces,
                email_suppressions::last_status,
                email_suppressions::updated_at,
            ))
            .load::<Suppression>(conn)?;
        Ok(Json(rows))
    })
    .await
}

/// Lets email flow to an address again after it was suppressed.
#[utoipa::path(
    delete,
    path = "/suppressions/{address}",
    tag = "suppressions",
    params(("address" = String, Path, description = "the email address")),
    responses(
        (status = 204, description = "email flows to the address again"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn reset_suppression(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        let deleted = diesel::delete(email_suppressions::table.find(address.to_ascii_lowercase()))
            .execute(conn)?;
        if deleted == 0 {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("{address} is not suppressed"),
                field: None,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
