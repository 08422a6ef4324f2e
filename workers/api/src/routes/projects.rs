//! Projects, their followers and members (E2), and the teams added to them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::Deserialize;
use tidings_common::announce::Announcements;
use tidings_common::db::models::*;
use tidings_common::db::schema::*;
use tidings_common::events::RecordedEvent;

use crate::error::{ApiResult, Body};
use crate::lookup::*;
use crate::queries::members::{add_member, add_team_members};
use crate::state::{AppState, with_db};
use crate::validate::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProjectBody {
    name: String,
}

#[utoipa::path(
    post,
    path = "/projects",
    tag = "projects",
    request_body = NewProjectBody,
    responses(
        (status = 201, description = "the project", body = Project),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_project(
    State(state): State<AppState>,
    Body(body): Body<NewProjectBody>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let name = single_line("name", &body.name, NAME_MAX)?;
    with_db(&state, move |conn| {
        let project = diesel::insert_into(projects::table)
            .values(projects::name.eq(name))
            .returning(Project::as_returning())
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(project)))
    })
    .await
}

/// Publishes the event of a join, if there was one: 201 when someone joined, 200 when they
/// were already in.
async fn announce_join(state: &AppState, recorded: Option<RecordedEvent>) -> StatusCode {
    let joined = recorded.is_some();
    state
        .announce(Announcements::events(recorded.into_iter().collect()))
        .await;
    if joined {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Adds a user to a project: they follow it, and followers with E2 on are emailed.
#[utoipa::path(
    put,
    path = "/projects/{id}/members/{person_id}",
    tag = "projects",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 201, description = "added"),
        (status = 200, description = "already a member"),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn add_project_member(
    State(state): State<AppState>,
    Path((project, person_id)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    let recorded = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            require_project(conn, project)?;
            require_user(conn, person_id, "person_id")?;
            add_member(conn, project, person_id)
        })
    })
    .await?;
    Ok(announce_join(&state, recorded).await)
}

/// Adds a team to a project: its members follow the project, and the project's followers
/// with E2 on are emailed once about the team.
#[utoipa::path(
    put,
    path = "/projects/{id}/teams/{team_id}",
    tag = "projects",
    params(("id" = i64, Path, description = "the id"), ("team_id" = i64, Path, description = "team id")),
    responses(
        (status = 201, description = "added"),
        (status = 200, description = "already in"),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn add_project_team(
    State(state): State<AppState>,
    Path((project, team)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    let recorded = with_db(&state, move |conn| {
        conn.transaction(|conn| {
            require_project(conn, project)?;
            require_team(conn, team)?;
            let added = diesel::insert_into(project_teams::table)
                .values((
                    project_teams::project_id.eq(project),
                    project_teams::team_id.eq(team),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            if added == 0 {
                return Ok(None);
            }
            Ok(Some(add_team_members(conn, project, team)?))
        })
    })
    .await?;
    Ok(announce_join(&state, recorded).await)
}
