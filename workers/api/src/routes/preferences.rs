//! A user's preferences (SPEC P1–P5 and the per-kind email switches): read, update, and the
//! audit trail of every change.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Map, Value};

use crate::error::{ApiError, Body};
use crate::queries::preferences::{self, Preferences, PreferencesPatch};
use crate::state::{AppState, with_db};

#[utoipa::path(
    get,
    path = "/people/{id}/preferences",
    tag = "preferences",
    params(("id" = i64, Path, description = "the id")),
    responses(
        (status = 200, description = "every preference of the user", body = Preferences),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_preferences(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    with_db(&state, move |conn| {
        preferences::read(conn, person_id).map(Json)
    })
    .await
}

/// Updates some preferences (a partial JSON object) and logs each change.
#[utoipa::path(
    patch,
    path = "/people/{id}/preferences",
    tag = "preferences",
    params(("id" = i64, Path, description = "the id")),
    request_body = PreferencesPatch,
    responses(
        (status = 200, description = "every preference after the change", body = Preferences),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn update_preferences(
    State(state): State<AppState>,
    Path(person_id): Path<i64>,
    Body(patch): Body<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let changes = preferences::validate(&patch)?;
    with_db(&state, move |conn| {
        preferences::update(conn, person_id, &changes).map(Json)
    })
    .await
}
