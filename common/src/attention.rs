//! A1 do not disturb: a person's pause, stored with its end (`attention.dnd_until`). While it
//! lasts the mailer holds the person's emails (pending, due at its end, rule A1) and the live
//! stream sends their events without a ping; when it ends the sweep wakes what was held, and
//! ending it early releases the held emails at once. A2 working hours: outside them the
//! mailer holds emails the same way (rule A2, due at the next start), judged by the SQL
//! function `tidings_work_hold` in the person's time zone.

use chrono::{DateTime, NaiveTime, Utc};
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

/// A2: working days and hours in a time zone. An `end` at or before `start` ends the next
/// day (a night shift).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WorkingHours {
    /// Working days: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`.
    pub days: Vec<&'static str>,
    /// Local start, `HH:MM`.
    pub start: String,
    /// Local end, `HH:MM`.
    pub end: String,
    /// An IANA time zone name, such as `Europe/Berlin`.
    pub time_zone: String,
}

/// A person's own choice of working hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnHours {
    /// The organisation's default (for users; customers have none).
    Default,
    /// No working hours: any hour is fine.
    None,
    Hours(WorkingHours),
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Working hours as stored: the days' bits (Monday 1 … Sunday 64), start, end and zone.
type Stored = (i16, NaiveTime, NaiveTime, String);

/// A person's row of working hours, each column possibly empty.
type StoredOwn = (
    Option<i16>,
    Option<NaiveTime>,
    Option<NaiveTime>,
    Option<String>,
);

fn stored(hours: &WorkingHours) -> Stored {
    let bits = hours.days.iter().fold(0i16, |bits, day| {
        bits | DAYS.iter().position(|d| d == day).map_or(0, |i| 1 << i)
    });
    let time = |t: &str| NaiveTime::parse_from_str(t, "%H:%M").unwrap_or_default();
    (
        bits,
        time(&hours.start),
        time(&hours.end),
        hours.time_zone.clone(),
    )
}

fn from_stored((bits, start, end, time_zone): Stored) -> WorkingHours {
    WorkingHours {
        days: DAYS
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect(),
        start: start.format("%H:%M").to_string(),
        end: end.format("%H:%M").to_string(),
        time_zone,
    }
}

/// Reads working hours from JSON: `null` is the organisation's default, `"none"` no working
/// hours, or `{"days": [...], "start": "09:00", "end": "17:00", "time_zone": "Europe/Berlin"}`.
/// The zone's name is checked against the database's list by [`canonical_zone`]. The error
/// names what is wrong.
pub fn parse_hours(value: &serde_json::Value) -> Result<OwnHours, String> {
    use serde_json::Value;
    const SHAPE: &str = r#"expected null, "none" or {"days": ["mon", …], "start": "HH:MM", "end": "HH:MM", "time_zone": "Area/City"}"#;
    let object = match value {
        Value::Null => return Ok(OwnHours::Default),
        Value::String(s) if s == "none" => return Ok(OwnHours::None),
        Value::Object(o) => o,
        _ => return Err(SHAPE.to_string()),
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !["days", "start", "end", "time_zone"].contains(&k.as_str()))
    {
        return Err(format!("unknown field {unknown:?}; {SHAPE}"));
    }
    let text = |name: &str| -> Result<&str, String> {
        object
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name} is missing or not a string; {SHAPE}"))
    };
    let Some(listed) = object.get("days").and_then(Value::as_array) else {
        return Err(format!("days is missing or not a list; {SHAPE}"));
    };
    let mut days = Vec::new();
    for day in listed {
        let found = day
            .as_str()
            .and_then(|d| DAYS.iter().find(|known| known.eq_ignore_ascii_case(d)));
        match found {
            Some(d) if !days.contains(d) => days.push(*d),
            Some(d) => return Err(format!("days: {d} is listed twice")),
            None => return Err(format!("days: {day} is not one of {}", DAYS.join(", "))),
        }
    }
    if days.is_empty() {
        return Err(r#"days: at least one day (for no working hours, send "none")"#.into());
    }
    days.sort_by_key(|d| DAYS.iter().position(|k| k == d));
    let time = |name: &str| -> Result<String, String> {
        let t = text(name)?;
        (t.len() == 5)
            .then(|| NaiveTime::parse_from_str(t, "%H:%M").ok())
            .flatten()
            .map(|t| t.format("%H:%M").to_string())
            .ok_or_else(|| format!("{name}: {t:?} is not a time of day as HH:MM (00:00 to 23:59)"))
    };
    let (start, end) = (time("start")?, time("end")?);
    if start == end {
        return Err(format!(
            "end: the same as start ({start}); a working day has hours between them"
        ));
    }
    let time_zone = text("time_zone")?;
    if time_zone.is_empty() || time_zone.len() > 64 || time_zone.chars().any(char::is_control) {
        return Err(format!("time_zone: {time_zone:?} is not a time zone name"));
    }
    Ok(OwnHours::Hours(WorkingHours {
        days,
        start,
        end,
        time_zone: time_zone.to_string(),
    }))
}

/// The IANA name PostgreSQL's time zone data knows as `name` (any case), spelled as it
/// spells it; `Err` names the zone when it is unknown.
pub fn canonical_zone(conn: &mut PgConnection, name: &str) -> QueryResult<Result<String, String>> {
    #[derive(QueryableByName)]
    struct Zone {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let found: Option<Zone> = diesel::sql_query(
        "SELECT name FROM pg_timezone_names
          WHERE lower(name) = lower($1) AND name NOT LIKE 'posix%' AND name NOT LIKE 'right/%'
          ORDER BY name = $1 DESC, name LIMIT 1",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .get_result(conn)
    .optional()?;
    Ok(found.map(|z| z.name).ok_or_else(|| {
        format!("time_zone: {name:?} is not an IANA time zone name (such as Europe/Berlin or America/New_York)")
    }))
}

/// `person`'s own choice of working hours.
pub fn own_hours(conn: &mut PgConnection, person: i64) -> QueryResult<OwnHours> {
    let row: Option<StoredOwn> = attention::table
        .find(person)
        .select((
            attention::work_days,
            attention::work_start,
            attention::work_end,
            attention::time_zone,
        ))
        .first(conn)
        .optional()?;
    Ok(match row {
        None | Some((None, ..)) => OwnHours::Default,
        Some((Some(0), ..)) => OwnHours::None,
        Some((Some(bits), Some(start), Some(end), Some(zone))) => {
            OwnHours::Hours(from_stored((bits, start, end, zone)))
        }
        Some(_) => OwnHours::None,
    })
}

/// The organisation's default working hours for users, if set.
pub fn default_hours(conn: &mut PgConnection) -> QueryResult<Option<WorkingHours>> {
    use crate::db::schema::attention_defaults as d;
    Ok(d::table
        .select((d::work_days, d::work_start, d::work_end, d::time_zone))
        .first::<Stored>(conn)
        .optional()?
        .map(from_stored))
}

/// A2 for `person` now: when their next working period starts, if now is outside their
/// working hours, and that start in their zone's words.
pub fn off_hours(
    conn: &mut PgConnection,
    person: i64,
) -> QueryResult<Option<crate::rules::OffHours>> {
    #[derive(QueryableByName)]
    struct Hold {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        until: DateTime<Utc>,
        #[diesel(sql_type = diesel::sql_types::Text)]
        until_local: String,
    }
    let hold: Option<Hold> = diesel::sql_query("SELECT * FROM tidings_work_hold($1, $2)")
        .bind::<diesel::sql_types::BigInt, _>(person)
        .bind::<diesel::sql_types::Timestamptz, _>(clock::now())
        .get_result(conn)
        .optional()?;
    Ok(hold.map(|h| crate::rules::OffHours {
        until: h.until,
        local: h.until_local,
    }))
}

/// Emails held for working hours (rule A2), of `person` or of everyone, made due now: the
/// mailer looks at each again under the hours as they are now. Returns them as batches to
/// announce.
fn release_off_hours(
    conn: &mut PgConnection,
    person: Option<i64>,
) -> QueryResult<Vec<NotificationBatch>> {
    let mut held = notifications::table
        .filter(notifications::state.eq(crate::db::models::NotificationState::Pending))
        .filter(notifications::rule.eq("A2"))
        .into_boxed();
    if let Some(person) = person {
        held = held.filter(notifications::recipient_id.eq(person));
    }
    let ids: Vec<i64> = held.select(notifications::id).load(conn)?;
    let released: Vec<(i64, i64)> =
        diesel::update(notifications::table.filter(notifications::id.eq_any(ids)))
            .set(notifications::due_at.eq(clock::now()))
            .returning((notifications::id, notifications::message_id))
            .get_results(conn)?;
    Ok(NotificationBatch::of_rows(released))
}

/// Sets `person`'s own working hours; what was held for their old hours is released to be
/// judged under the new ones (returned as batches to announce).
pub fn set_own_hours(
    conn: &mut PgConnection,
    person: i64,
    hours: &OwnHours,
) -> QueryResult<Vec<NotificationBatch>> {
    let (bits, start, end, zone) = match hours {
        OwnHours::Default => (None, None, None, None),
        OwnHours::None => (Some(0), None, None, None),
        OwnHours::Hours(h) => {
            let (bits, start, end, zone) = stored(h);
            (Some(bits), Some(start), Some(end), Some(zone))
        }
    };
    let now = clock::now();
    conn.transaction(|conn| {
        diesel::insert_into(attention::table)
            .values((
                attention::person_id.eq(person),
                attention::work_days.eq(bits),
                attention::work_start.eq(start),
                attention::work_end.eq(end),
                attention::time_zone.eq(&zone),
                attention::updated_at.eq(now),
            ))
            .on_conflict(attention::person_id)
            .do_update()
            .set((
                attention::work_days.eq(bits),
                attention::work_start.eq(start),
                attention::work_end.eq(end),
                attention::time_zone.eq(&zone),
                attention::updated_at.eq(now),
            ))
            .execute(conn)?;
        release_off_hours(conn, Some(person))
    })
}

/// Sets (or, `None`, removes) the organisation's default working hours for users; what was
/// held for working hours is released to be judged under the new ones.
pub fn set_default_hours(
    conn: &mut PgConnection,
    hours: Option<&WorkingHours>,
) -> QueryResult<Vec<NotificationBatch>> {
    use crate::db::schema::attention_defaults as d;
    conn.transaction(|conn| {
        diesel::delete(d::table).execute(conn)?;
        if let Some(hours) = hours {
            let (bits, start, end, zone) = stored(hours);
            diesel::insert_into(d::table)
                .values((
                    d::work_days.eq(bits),
                    d::work_start.eq(start),
                    d::work_end.eq(end),
                    d::time_zone.eq(zone),
                    d::updated_at.eq(clock::now()),
                ))
                .execute(conn)?;
        }
        release_off_hours(conn, None)
    })
}
