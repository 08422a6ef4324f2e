//! System notifications (SPEC M4): listing them and switching them on or off.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tracing::info;

use crate::error::{ApiError, ApiResult, Body};
use crate::state::{AppState, with_db};

#[utoipa::path(
    get,
    path = "/system-notifications",
    tag = "system-notifications",
    responses(
        (status = 200, description = "every system notification", body = Vec<SystemNotificationView>),
    ),
    security(("bearer" = [])),
)]
pub async fn list_system_notifications(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<SystemNotificationView>>> {
    with_db(&state, move |conn| {
        let rows: Vec<SystemNotification> = system_notifications::table
            .order(system_notifications::event.asc())
            .select(SystemNotification::as_select())
            .load(conn)?;
        Ok(Json(rows.into_iter().map(system_json).collect()))
    })
    .await
}

/// A system notification as the api shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SystemNotificationView {
    #[serde(flatten)]
    notification: SystemNotification,
    /// Set on security-sensitive notifications, which cannot be disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'static str>,
}

fn system_json(n: SystemNotification) -> SystemNotificationView {
    SystemNotificationView {
        warning: (!n.can_disable).then_some(
            "security-sensitive: cannot be disabled; edit its template with care and keep the link and its expiry",
        ),
        notification: n,
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemPatch {
    enabled: bool,
}

#[utoipa::path(
    patch,
    path = "/system-notifications/{event}",
    tag = "system-notifications",
    params(("event" = String, Path, description = "e.g. user_created")),
    request_body = SystemPatch,
    responses(
        (status = 200, description = "the notification after the change", body = SystemNotificationView),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
        (status = 409, description = "conflicts with the current state", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn update_system_notification(
    State(state): State<AppState>,
    Path(event): Path<String>,
    Body(patch): Body<SystemPatch>,
) -> ApiResult<Json<SystemNotificationView>> {
    with_db(&state, move |conn| {
        let found: Option<SystemNotification> = system_notifications::table
            .find(&event)
            .select(SystemNotification::as_select())
            .first(conn)
            .optional()?;
        let Some(found) = found else {
            let known: Vec<String> = system_notifications::table
                .select(system_notifications::event)
                .load(conn)?;
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "system notification {event:?} not found; known: {}",
                    known.join(", ")
                ),
                field: None,
            });
        };
        if !patch.enabled && !found.can_disable {
            return Err(ApiError::conflict(
                format!(
                    "the {event} notification cannot be disabled: people must always be able to reset their password"
                ),
                Some("enabled"),
            ));
        }
        let updated = diesel::update(system_notifications::table.find(&event))
            .set((
                system_notifications::enabled.eq(patch.enabled),
                system_notifications::updated_at.eq(diesel::dsl::now),
            ))
            .returning(SystemNotification::as_returning())
            .get_result(conn)?;
        info!(event, enabled = patch.enabled, "system notification changed");
        Ok(Json(system_json(updated)))
    })
    .await
}
