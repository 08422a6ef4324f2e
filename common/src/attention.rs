//! A1 do not disturb: a person's pause, stored with its end (`attention.dnd_until`). While it
//! lasts the mailer holds the person's emails (pending, due at its end, rule A1) and the live
//! stream sends their events without a ping; when it ends the sweep wakes what was held, and
//! ending it early releases the held emails at once.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::amqp::NotificationBatch;
use crate::clock;
use crate::db::schema::{attention, notifications};

/// The longest pause that can be set.
pub const LONGEST: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// The end of `person`'s pause, when one is on now.
pub fn paused_until(conn: &mut PgConnection, person: i64) -> QueryResult<Option<DateTime<Utc>>> {
    Ok(attention::table
        .find(person)
        .select(attention::dnd_until)
        .first::<Option<DateTime<Utc>>>(conn)
        .optional()?
        .flatten()
        .filter(|until| *until > clock::now()))
}

/// A3: the person's own choice to wait for quiet (`None`: the organisation's default).
pub fn wait_for_quiet(conn: &mut PgConnection, person: i64) -> QueryResult<Option<bool>> {
    Ok(attention::table
        .find(person)
        .select(attention::wait_for_quiet)
        .first::<Option<bool>>(conn)
        .optional()?
        .flatten())
}

/// A3: sets the person's own choice (`None`: back to the organisation's default).
pub fn set_wait_for_quiet(
    conn: &mut PgConnection,
    person: i64,
    choice: Option<bool>,
) -> QueryResult<()> {
    diesel::insert_into(attention::table)
        .values((
            attention::person_id.eq(person),
            attention::wait_for_quiet.eq(choice),
            attention::updated_at.eq(clock::now()),
        ))
        .on_conflict(attention::person_id)
        .do_update()
        .set((
            attention::wait_for_quiet.eq(choice),
            attention::updated_at.eq(clock::now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Why `until` cannot be a pause's end (`None`: it can). A time already past ends the pause.
pub fn refuse(until: DateTime<Utc>) -> Option<String> {
    (until > clock::now() + LONGEST).then(|| {
        format!(
            "dnd_until: at most {} days ahead (got {until})",
            LONGEST.num_days()
        )
    })
}

/// Sets or ends (`None`, or a time already past) `person`'s pause. Emails held for a later
/// end than the new one are due at the new end; those due now come back as batches to
/// announce at once.
pub fn set(
    conn: &mut PgConnection,
    person: i64,
    until: Option<DateTime<Utc>>,
) -> QueryResult<Vec<NotificationBatch>> {
    let now = clock::now();
    let until = until.filter(|u| *u > now);
    conn.transaction(|conn| {
        diesel::insert_into(attention::table)
            .values((
                attention::person_id.eq(person),
                attention::dnd_until.eq(until),
                attention::updated_at.eq(now),
            ))
            .on_conflict(attention::person_id)
            .do_update()
            .set((
                attention::dnd_until.eq(until),
                attention::updated_at.eq(now),
            ))
            .execute(conn)?;
        let end = until.unwrap_or(now);
        let released: Vec<(i64, i64)> = diesel::update(
            notifications::table
                .filter(notifications::recipient_id.eq(person))
                .filter(notifications::state.eq(crate::db::models::NotificationState::Pending))
                .filter(notifications::rule.eq("A1"))
                .filter(notifications::due_at.gt(end)),
        )
        .set(notifications::due_at.eq(end))
        .returning((notifications::id, notifications::message_id))
        .get_results(conn)?;
        if until.is_some() {
            return Ok(Vec::new());
        }
        Ok(NotificationBatch::of_rows(released))
    })
}
