//! Project membership (E2): joining a project, recorded once as a domain event.

use diesel::prelude::*;
use tidings_common::db::schema::project_follows;
use tidings_common::events::{self, DomainEvent, Joined, RecordedEvent};

use crate::error::ApiResult;

/// Adds `person` to the project (as a follower) and records `project_member_added`, once.
pub fn add_member(
    conn: &mut PgConnection,
    project: i64,
    person: i64,
) -> ApiResult<Option<RecordedEvent>> {
    let added = diesel::insert_into(project_follows::table)
        .values((
            project_follows::project_id.eq(project),
            project_follows::person_id.eq(person),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    if added == 0 {
        return Ok(None);
    }
    Ok(Some(events::record(
        conn,
        &DomainEvent::ProjectMemberAdded {
            project_id: project,
            joined: Joined::User { person_id: person },
        },
    )?))
}

/// Makes every member of `team` follow the project and records `project_member_added` for
/// the team (one E2 email about the team, not one per member).
pub fn add_team_members(
    conn: &mut PgConnection,
    project: i64,
    team: i64,
) -> ApiResult<RecordedEvent> {
    diesel::sql_query(
        "INSERT INTO project_follows (project_id, person_id)
         SELECT $1, person_id FROM team_members WHERE team_id = $2
         ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::BigInt, _>(project)
    .bind::<diesel::sql_types::BigInt, _>(team)
    .execute(conn)?;
    Ok(events::record(
        conn,
        &DomainEvent::ProjectMemberAdded {
            project_id: project,
            joined: Joined::Team { team_id: team },
        },
    )?)
}
