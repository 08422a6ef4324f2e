//! Following projects and items: a follower is notified of their conversations (SPEC F1).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use tidings_common::db::schema::{item_follows, project_follows};

use crate::error::{ApiError, ApiResult};
use crate::lookup::{find_person, require_item, require_project};
use crate::state::{AppState, with_db};

/// What can be followed.
#[derive(Clone, Copy)]
enum Followed {
    Project,
    Item,
}

impl Followed {
    fn name(self) -> &'static str {
        match self {
            Followed::Project => "project",
            Followed::Item => "item",
        }
    }

    /// Makes `person` a follower (no-op if they already are).
    fn follow(self, conn: &mut PgConnection, id: i64, person: i64) -> ApiResult<()> {
        match self {
            Followed::Project => require_project(conn, id)?,
            Followed::Item => require_item(conn, id)?,
        }
        find_person(conn, person)?;
        match self {
            Followed::Project => diesel::insert_into(project_follows::table)
                .values((
                    project_follows::project_id.eq(id),
                    project_follows::person_id.eq(person),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?,
            Followed::Item => diesel::insert_into(item_follows::table)
                .values((
                    item_follows::item_id.eq(id),
                    item_follows::person_id.eq(person),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?,
        };
        Ok(())
    }

    /// Stops `person` following; 404 if they did not.
    fn unfollow(self, conn: &mut PgConnection, id: i64, person: i64) -> ApiResult<()> {
        let deleted = match self {
            Followed::Project => {
                diesel::delete(project_follows::table.find((id, person))).execute(conn)?
            }
            Followed::Item => {
                diesel::delete(item_follows::table.find((id, person))).execute(conn)?
            }
        };
        if deleted == 0 {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("person {person} does not follow {} {id}", self.name()),
                field: None,
            });
        }
        Ok(())
    }
}

async fn change(
    state: AppState,
    what: Followed,
    id: i64,
    person: i64,
    on: bool,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        if on {
            what.follow(conn, id, person)?;
        } else {
            what.unfollow(conn, id, person)?;
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[utoipa::path(
    put,
    path = "/projects/{id}/followers/{person_id}",
    tag = "follows",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 204, description = "following"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn follow_project(
    State(state): State<AppState>,
    Path((id, person)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    change(state, Followed::Project, id, person, true).await
}

#[utoipa::path(
    delete,
    path = "/projects/{id}/followers/{person_id}",
    tag = "follows",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 204, description = "no longer following"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn unfollow_project(
    State(state): State<AppState>,
    Path((id, person)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    change(state, Followed::Project, id, person, false).await
}

#[utoipa::path(
    put,
    path = "/items/{id}/followers/{person_id}",
    tag = "follows",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 204, description = "following"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn follow_item(
    State(state): State<AppState>,
    Path((id, person)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    change(state, Followed::Item, id, person, true).await
}

#[utoipa::path(
    delete,
    path = "/items/{id}/followers/{person_id}",
    tag = "follows",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 204, description = "no longer following"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn unfollow_item(
    State(state): State<AppState>,
    Path((id, person)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    change(state, Followed::Item, id, person, false).await
}
