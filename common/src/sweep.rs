//! Sweeps that find work whose announcement never reached (or left) the broker, and announce it
//! again. Every consumer is idempotent, so a sweep that overlaps a live delivery is harmless.
//! The dispatch and mailer roles run their sweeps on an interval; the scheduler role runs all
//! of them on a cron schedule, once per tick across the fleet.
//!
//! Each [`Sweep`] only finds what to announce; [`crate::announce`] publishes it.

use std::time::Duration;

use crate::db::states::claimable;
use diesel::prelude::*;
use tracing::warn;

use crate::Result;
use crate::amqp::{NotificationBatch, Publisher, Topology};
use crate::announce::Announcements;
use crate::clock;
use crate::db::Db;
use crate::db::schema::{domain_events, messages, notifications, outbox_emails};
use crate::events::RecordedEvent;

/// Most rows one sweep announces again; the next sweep takes the rest.
const SWEEP_LIMIT: i64 = 1000;

/// One kind of lost work to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Messages never dispatched: `message.posted` again.
    UndispatchedMessages,
    /// Domain events never handled: announced again.
    UnhandledEvents,
    /// Notifications past due plus the lease with no live batch (still `pending`, or
    /// `sending` by a worker whose lease ran out): straight to the due exchange.
    StuckNotifications,
    /// Outbox emails past due with no live claim (a lost announcement, a retry whose time
    /// came, a worker that died mid-send): announced to the mailer again.
    StuckOutbox,
}

/// How old work must be before a sweep takes it.
#[derive(Debug, Clone, Copy)]
pub struct SweepAges {
    /// Undispatched messages and unhandled events older than this are announced again.
    pub unannounced: Duration,
    /// A send claim older than this has lapsed (its worker died or stalled).
    pub lease: Duration,
}

impl SweepAges {
    /// The ages the configuration sets: one sweep interval for unannounced work, and the
    /// send lease.
    pub fn from_config(config: &crate::Config) -> Self {
        SweepAges {
            unannounced: config.sweep_interval,
            lease: config.send_lease,
        }
    }
}

impl Sweep {
    pub const MAILER: [Sweep; 2] = [Sweep::StuckNotifications, Sweep::StuckOutbox];
    pub const DISPATCH: [Sweep; 2] = [Sweep::UndispatchedMessages, Sweep::UnhandledEvents];
    pub const ALL: [Sweep; 4] = [
        Sweep::StuckNotifications,
        Sweep::StuckOutbox,
        Sweep::UndispatchedMessages,
        Sweep::UnhandledEvents,
    ];

    /// Finds what this sweep must announce again.
    fn find(self, conn: &mut PgConnection, ages: SweepAges) -> Result<Announcements> {
        let lapsed = clock::before(ages.lease);
        let mut found = Announcements::default();
        match self {
            Sweep::UndispatchedMessages => {
                found.messages = messages::table
                    .filter(undispatched_messages(ages.unannounced))
                    .select(messages::id)
                    .order(messages::id.asc())
                    .limit(SWEEP_LIMIT)
                    .load(conn)?;
            }
            Sweep::UnhandledEvents => {
                let rows: Vec<(i64, String)> = domain_events::table
                    .filter(domain_events::handled_at.is_null())
                    .filter(domain_events::created_at.lt(database_before(ages.unannounced)))
                    .select((domain_events::id, domain_events::kind))
                    .order(domain_events::id.asc())
                    .limit(SWEEP_LIMIT)
                    .load(conn)?;
                found.events = rows
                    .into_iter()
                    .map(|(id, kind)| RecordedEvent { id, kind })
                    .collect();
            }
            Sweep::StuckNotifications => found.due = stuck_notifications(conn, lapsed)?,
            Sweep::StuckOutbox => {
                found.outbox = outbox_emails::table
                    .filter(outbox_emails::due_at.lt(clock::before(Duration::from_secs(2))))
                    .filter(claimable::outbox_emails(lapsed))
                    .select(outbox_emails::id)
                    .order(outbox_emails::id.asc())
                    .limit(SWEEP_LIMIT)
                    .load(conn)?;
            }
        }
        Ok(found)
    }
}

/// Messages posted more than `age` ago whose `message.posted` never reached dispatch (the
/// sweep announces them again; `tidings status` counts them). The age is measured with the
/// database's clock, which stamped `created_at`.
pub fn undispatched_messages(
    age: Duration,
) -> Box<dyn BoxableExpression<messages::table, diesel::pg::Pg, SqlType = diesel::sql_types::Bool>>
{
    Box::new(
        messages::dispatched_at
            .is_null()
            .and(messages::created_at.lt(database_before(age))),
    )
}

/// The database's `now()` minus `age`: the cut-off for an audit column it stamped.
pub fn database_before(
    age: Duration,
) -> diesel::expression::SqlLiteral<diesel::sql_types::Timestamptz> {
    let micros = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
    diesel::dsl::sql::<diesel::sql_types::Timestamptz>(&format!(
        "(now() - interval '{micros} microseconds')"
    ))
}

/// Stuck notifications, with their due time pushed forward so the next sweep leaves them
/// alone while their batch is in flight, in batches ([`NotificationBatch::of_rows`]).
fn stuck_notifications(
    conn: &mut PgConnection,
    lapsed: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<NotificationBatch>> {
    let ids: Vec<i64> = notifications::table
        .filter(notifications::due_at.lt(lapsed))
        .filter(claimable::notifications(lapsed))
        .select(notifications::id)
        .limit(5 * SWEEP_LIMIT)
        .load(conn)?;
    let stuck: Vec<(i64, i64)> =
        diesel::update(notifications::table.filter(notifications::id.eq_any(ids)))
            .set(notifications::due_at.eq(clock::now()))
            .returning((notifications::id, notifications::message_id))
            .get_results(conn)?;
    Ok(NotificationBatch::of_rows(stuck))
}

/// Runs `sweeps` and announces what they found; returns how many rows or batches that was.
pub async fn run(
    db: &Db,
    publisher: &Publisher,
    topology: &Topology,
    sweeps: &[Sweep],
    ages: SweepAges,
) -> Result<usize> {
    let mut total = 0;
    for &sweep in sweeps {
        let found = db.run(move |conn| sweep.find(conn, ages)).await?;
        if found.is_empty() {
            continue;
        }
        warn!(
            sweep = ?sweep,
            count = found.len(),
            "announcing again work the broker lost or never got"
        );
        found.publish(publisher, topology).await?;
        let kind = match sweep {
            Sweep::UndispatchedMessages => "undispatched_messages",
            Sweep::UnhandledEvents => "unhandled_events",
            Sweep::StuckNotifications => "stuck_notifications",
            Sweep::StuckOutbox => "stuck_outbox",
        };
        crate::observe::sweep_recovered(kind, found.len());
        total += found.len();
    }
    Ok(total)
}

/// Runs `sweeps` every sweep interval until `stop` fires; a failed sweep is logged and tried
/// again at the next interval.
pub async fn every(
    config: &crate::Config,
    stop: &tokio_util::sync::CancellationToken,
    db: &Db,
    publisher: &Publisher,
    topology: &Topology,
    sweeps: &[Sweep],
) -> Result<()> {
    let ages = SweepAges::from_config(config);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(config.sweep_interval) => {}
        }
        if let Err(e) = run(db, publisher, topology, sweeps, ages).await {
            warn!(error = %e, sweeps = ?sweeps, "sweep failed");
        }
    }
}
