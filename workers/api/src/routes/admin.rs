//! What the admin console shows besides the resources: the history of changes made with
//! admins' sessions, and the status of the fleet (as `tidings status`).

use axum::Json;
use axum::extract::State;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiResult, Params};
use crate::state::{AppState, with_db};

/// One change an admin made with their session.
#[derive(Serialize, utoipa::ToSchema, QueryableByName)]
pub struct AdminChange {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    actor_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    actor: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    method: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    path: String,
    /// The HTTP status it was answered with.
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    status: i16,
    /// The JSON body sent (cut at 64 KiB), or the size of another body.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    body: Option<Value>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Only changes with an id below this (the next page).
    before: Option<i64>,
    limit: Option<i64>,
    /// Only changes whose path starts with this (for example `/templates/notification`).
    path: Option<String>,
}

/// The changes admins made with their sessions, newest first.
#[utoipa::path(
    get,
    path = "/admin-changes",
    tag = "admin",
    params(ChangesQuery),
    responses(
        (status = 200, description = "changes, newest first", body = Vec<AdminChange>),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn admin_changes(
    State(state): State<AppState>,
    Params(query): Params<ChangesQuery>,
) -> ApiResult<Json<Vec<AdminChange>>> {
    let limit = crate::validate::limit(query.limit, 100, 1000)?;
    let path = query.path.unwrap_or_default();
    with_db(&state, move |conn| {
        Ok(Json(
            diesel::sql_query(
                "SELECT c.id, c.at, c.actor_id, p.name AS actor, c.method, c.path, c.status, c.body
                 FROM admin_changes c JOIN people p ON p.id = c.actor_id
                 WHERE ($1 = 0 OR c.id < $1) AND left(c.path, length($2)) = $2
                 ORDER BY c.id DESC LIMIT $3",
            )
            .bind::<diesel::sql_types::BigInt, _>(query.before.unwrap_or(0))
            .bind::<diesel::sql_types::Text, _>(path)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(conn)?,
        ))
    })
    .await
}

/// What `tidings status` shows: queues, pending and stuck work, dead letters, the last sweep
/// and whether the templates load (with the console's versions).
#[utoipa::path(
    get,
    path = "/status",
    tag = "admin",
    responses((status = 200, description = "the status report", body = Value)),
    security(("bearer" = [])),
)]
pub async fn status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    use tidings_common::status;
    let config = state.config.clone();
    let queues = status::broker(&config).await.map_err(|e| e.to_string());
    let database = {
        let config = config.clone();
        with_db(&state, move |conn| Ok(status::database(conn, &config)?))
            .await
            .map_err(|e| e.message)
    };
    let store = state.templates.clone();
    let templates = tokio::task::spawn_blocking(move || {
        tidings_common::templates::Templates::load_overlaid(
            store.dir(),
            &store.overlay(),
            store.default_locale(),
            &store.required(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    Ok(Json(status::report(&config, &queues, &database, templates)))
}
