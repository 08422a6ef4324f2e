//! Teams: groups of users that can be added to projects.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use tidings_common::db::schema::*;

use crate::error::{ApiError, ApiResult, Body};
use crate::lookup::*;
use crate::state::{AppState, with_db};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamBody {
    name: String,
}

/// Creates a team (a group of users).
pub async fn create_team(
    State(state): State<AppState>,
    Body(body): Body<TeamBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.name.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::bad_field("name", "name: must not be empty"));
    }
    with_db(&state, move |conn| {
        let id: i64 = diesel::insert_into(teams::table)
            .values(teams::name.eq(&name))
            .returning(teams::id)
            .get_result(conn)?;
        Ok((StatusCode::CREATED, Json(json!({"id": id, "name": name}))))
    })
    .await
}

/// Adds a user to a team.
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
