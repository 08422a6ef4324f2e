//! Teams: groups of users that can be added to projects.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use tidings_common::db::schema::*;

use crate::error::{ApiResult, Body};
use crate::lookup::*;
use crate::state::{AppState, with_db};
use crate::validate::{NAME_MAX, single_line};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamBody {
    name: String,
}

/// A team.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Team {
    id: i64,
    name: String,
}

/// Creates a team (a group of users).
#[utoipa::path(
    post,
    path = "/teams",
    tag = "teams",
    request_body = TeamBody,
    responses(
        (status = 201, description = "the team", body = Team),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_team(
    State(state): State<AppState>,
    Body(body): Body<TeamBody>,
) -> ApiResult<(StatusCode, Json<Team>)> {
    let name = single_line("name", &body.name, NAME_MAX)?;
    with_db(&state, move |conn| {
        let id: i64 = diesel::insert_into(teams::table)
            .values(teams::name.eq(&name))
            .returning(teams::id)
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(Team { id, name })))
    })
    .await
}

/// Adds a user to a team.
#[utoipa::path(
    put,
    path = "/teams/{id}/members/{person_id}",
    tag = "teams",
    params(("id" = i64, Path, description = "the id"), ("person_id" = i64, Path, description = "person id")),
    responses(
        (status = 204, description = "a member"),
        (status = 400, description = "a bad field, named in `field`", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id or path", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn add_team_member(
    State(state): State<AppState>,
    Path((team, person)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    with_db(&state, move |conn| {
        require_team(conn, team)?;
        require_user(conn, person, "person_id")?;
        diesel::insert_into(team_members::table)
            .values((
                team_members::team_id.eq(team),
                team_members::person_id.eq(person),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
