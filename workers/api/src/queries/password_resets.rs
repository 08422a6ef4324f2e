//! Password reset links (M4): each issued once as a row, and used at most once within its
//! hour.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};

use crate::error::ApiResult;

#[derive(diesel::QueryableByName)]
pub struct ResetRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub person_id: i64,
}

/// A new reset for `person_id`, valid until `expires`.
pub fn create(
    conn: &mut PgConnection,
    person_id: i64,
    expires: DateTime<Utc>,
) -> ApiResult<ResetRow> {
    Ok(diesel::sql_query(
        "INSERT INTO password_resets (person_id, expires_at) VALUES ($1, $2)
         RETURNING id, person_id",
    )
    .bind::<BigInt, _>(person_id)
    .bind::<Timestamptz, _>(expires)
    .get_result(conn)?)
}

/// Marks reset `id` used at `now`, if it was neither used nor expired and its person is
/// still active; `None` otherwise.
pub fn use_once(
    conn: &mut PgConnection,
    id: i64,
    now: DateTime<Utc>,
) -> ApiResult<Option<ResetRow>> {
    Ok(diesel::sql_query(
        "UPDATE password_resets r SET used_at = $2
         FROM people p
         WHERE r.id = $1 AND r.used_at IS NULL AND r.expires_at > $2
           AND p.id = r.person_id AND p.active
         RETURNING r.id, r.person_id",
    )
    .bind::<BigInt, _>(id)
    .bind::<Timestamptz, _>(now)
    .get_result(conn)
    .optional()?)
}

/// Whether reset `id` is for a person who is deactivated now.
pub fn person_inactive(conn: &mut PgConnection, id: i64) -> ApiResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Inactive {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        inactive: bool,
    }
    Ok(diesel::sql_query(
        "SELECT NOT p.active AS inactive FROM password_resets r JOIN people p ON p.id = r.person_id
         WHERE r.id = $1",
    )
    .bind::<BigInt, _>(id)
    .get_result::<Inactive>(conn)
    .optional()?
    .is_some_and(|r| r.inactive))
}
