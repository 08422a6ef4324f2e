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
