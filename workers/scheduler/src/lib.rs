//! The scheduler role: runs housekeeping jobs on cron schedules from the configuration.
//!
//! | job | default schedule | does |
//! |---|---|---|
//! | `purge_log` | every 5 minutes | deletes email log rows (and handled domain events, job records, old automation runs) older than `TIDINGS_LOG_RETENTION` (72 h), live events older than `TIDINGS_EVENT_RETENTION` (7 d), spooled mails left behind after 7 d, and files no message shows any more after `TIDINGS_ATTACHMENT_GRACE` (24 h) |
//! | `expire_threading` | daily 03:30 | deletes threading data older than `TIDINGS_THREADING_RETENTION` (365 d): stored Message-IDs of received mail and finished outbox rows; reply addresses that old are refused by the inbound role |
//! | `sweep` | every 30 s | republishes stuck notifications and outbox emails, undispatched messages and unhandled domain events |
//!
//! Several scheduler processes may run: each tick of each job runs once across all of them.
//! The first process to insert the `(job, tick)` row into `scheduler_runs` runs it; the
//! others find the row taken and skip the tick.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Interval;
use tidings_common::amqp::{Session, SharedPublisher, Topology};
use tidings_common::db::Db;
use tidings_common::db::models::OutboxState;
use tidings_common::db::schema::{outbox_emails, scheduler_runs};
use tidings_common::sweep::{self, Sweep, SweepAges};
use tidings_common::{Config, Error, Result, clock};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a spooled inbound mail whose delivery never completed is kept (a dead-lettered
/// delivery can be moved back and processed within it).
const SPOOL_KEPT: Duration = Duration::from_secs(7 * 86_400);

/// Every job the scheduler knows, by name.
pub const JOBS: [&str; 3] = ["purge_log", "expire_threading", "sweep"];

/// The context a job runs in.
pub struct Scheduler {
    db: Db,
    config: Config,
    topology: Topology,
    broker: SharedPublisher,
    runner: String,
}

impl Scheduler {
    pub fn new(config: Config) -> Self {
        Scheduler {
            db: Db::new(&config.database_url, 2),
            topology: Topology::from_config(&config),
            broker: SharedPublisher::default(),
            runner: format!(
                "{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into()),
                std::process::id()
            ),
            config,
        }
    }

    fn schedule(&self, job: &str) -> &str {
        match job {
            "purge_log" => &self.config.schedule_purge_log,
            "expire_threading" => &self.config.schedule_expire_threading,
            _ => &self.config.schedule_sweep,
        }
    }

    /// Runs `job` now, whatever its schedule; returns what it did.
    pub async fn run_job(&self, job: &str) -> Result<String> {
        match job {
            "purge_log" => self.purge_log().await,
            "expire_threading" => self.expire_threading().await,
            "sweep" => self.sweep().await,
            other => Err(Error::Task(format!(
                "unknown job {other:?}; jobs are {}",
                JOBS.join(", ")
            ))),
        }
    }

    /// Deletes log rows, handled events, job records and automation runs past retention, and
    /// live events past `TIDINGS_EVENT_RETENTION`.
    async fn purge_log(&self) -> Result<String> {
        let retention = interval(self.config.log_retention);
        let oldest_window = self
            .config
            .automation_limits
            .iter()
            .map(|(_, w)| *w)
            .max()
            .unwrap_or_default()
            .max(self.config.log_retention);
        let runs = interval(oldest_window);
        let live = interval(self.config.event_retention);
        let grace = self.config.attachment_grace;
        self.db
            .run(move |conn| {
                let mut counts = Vec::new();
                for (what, sql, keep) in [
                    ("email log rows", "DELETE FROM email_log WHERE created_at < now() - $1", retention),
                    ("handled domain events", "DELETE FROM domain_events WHERE handled_at IS NOT NULL AND created_at < now() - $1", retention),
                    ("job records", "DELETE FROM scheduler_runs WHERE started_at < now() - $1", retention),
                    ("automation runs", "DELETE FROM automation_runs WHERE created_at < now() - $1", runs),
                    ("live events", "DELETE FROM live_events WHERE created_at < now() - $1", live),
                    ("inbound sources", "DELETE FROM inbound_raw WHERE created_at < now() - $1", retention),
                    ("sent sources", "DELETE FROM outbound_sources WHERE created_at < now() - $1", retention),
                    ("spooled mails left behind", "DELETE FROM inbound_spool WHERE created_at < now() - $1", interval(SPOOL_KEPT)),
                ] {
                    let n = diesel::sql_query(sql).bind::<Interval, _>(keep).execute(conn)?;
                    counts.push(format!("{n} {what}"));
                }
                let files = tidings_common::attachments::purge_orphans(conn, grace)?;
                counts.push(format!("{files} files"));
                Ok(format!("purged {}", counts.join(", ")))
            })
            .await
    }

    /// Deletes threading data past its retention.
    async fn expire_threading(&self) -> Result<String> {
        let lifetime = interval(self.config.threading_retention);
        let retention = self.config.threading_retention;
        self.db
            .run(move |conn| {
                let received =
                    diesel::sql_query("DELETE FROM inbound_emails WHERE received_at < now() - $1")
                        .bind::<Interval, _>(lifetime)
                        .execute(conn)?;
                let finished = [OutboxState::Sent, OutboxState::Skipped, OutboxState::Failed];
                let outbox = diesel::delete(
                    outbox_emails::table
                        .filter(outbox_emails::state.eq_any(finished))
                        .filter(
                            outbox_emails::created_at
                                .lt(tidings_common::sweep::database_before(retention)),
                        ),
                )
                .execute(conn)?;
                Ok(format!(
                    "expired {received} received Message-IDs, {outbox} finished outbox emails"
                ))
            })
            .await
    }

    /// Runs every sweep once.
    async fn sweep(&self) -> Result<String> {
        let ages = SweepAges::from_config(&self.config);
        let (db, topology) = (&self.db, &self.topology);
        // The role keeps a connection; a one-off run (`tidings schedule sweep`) opens one.
        let n = match self.broker.get() {
            Ok(publisher) => sweep::run(db, &publisher, topology, &Sweep::ALL, ages).await?,
            Err(_) => {
                let session = Session::open(&self.config.amqp_url, "scheduler", topology).await?;
                let n = sweep::run(db, &session.publisher, topology, &Sweep::ALL, ages).await;
                session.close().await;
                n?
            }
        };
        Ok(format!("republished {n}"))
    }

    /// Claims tick `tick` of `job` for this process; false if another process has it.
    async fn claim(&self, job: &'static str, tick: DateTime<Utc>) -> Result<bool> {
        let runner = self.runner.clone();
        self.db
            .run(move |conn| {
                Ok(diesel::insert_into(scheduler_runs::table)
                    .values((
                        scheduler_runs::job.eq(job),
                        scheduler_runs::tick.eq(tick),
                        scheduler_runs::runner.eq(runner),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)?
                    == 1)
            })
            .await
    }

    async fn finish(&self, job: &'static str, tick: DateTime<Utc>, outcome: String) -> Result<()> {
        self.db
            .run(move |conn| {
                diesel::update(scheduler_runs::table.find((job, tick)))
                    .set((
                        scheduler_runs::finished_at.eq(diesel::dsl::now),
                        scheduler_runs::outcome.eq(outcome),
                    ))
                    .execute(conn)?;
                Ok(())
            })
            .await
    }

    /// Runs tick `tick` of `job` if no other process has.
    async fn tick(&self, job: &'static str, tick: DateTime<Utc>) {
        match self.claim(job, tick).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                warn!(job, error = %e, "cannot claim the job's tick; skipped");
                return;
            }
        }
        let outcome = match self.run_job(job).await {
            Ok(done) => {
                info!(job, tick = %tick, done, "job ran");
                tidings_common::observe::job_succeeded(job);
                done
            }
            Err(e) => {
                warn!(job, tick = %tick, error = %e, "job failed");
                format!("failed: {e}")
            }
        };
        if let Err(e) = self.finish(job, tick, outcome).await {
            warn!(job, error = %e, "cannot record the job's outcome");
        }
    }
}

fn interval(d: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(d.as_micros() as i64)
}

/// Runs the scheduler role until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let scheduler = std::sync::Arc::new(Scheduler::new(config));
    let mut schedules = Vec::new();
    for job in JOBS {
        let expression = scheduler.schedule(job);
        let schedule = cron::Schedule::from_str(expression)
            .map_err(|e| anyhow::anyhow!("schedule of {job} ({expression:?}): {e}"))?;
        schedules.push((job, schedule));
    }
    scheduler.broker.spawn_keeper(
        scheduler.config.amqp_url.expose().clone(),
        "scheduler",
        scheduler.topology.clone(),
        shutdown.clone(),
    );
    info!(runner = scheduler.runner, "scheduler starting");
    let mut next: Vec<Option<DateTime<Utc>>> = schedules
        .iter()
        .map(|(_, s)| s.after(&clock::now()).next())
        .collect();
    while let Some(soonest) = next.iter().flatten().min().copied() {
        let wait = (soonest - clock::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        for (i, (job, schedule)) in schedules.iter().enumerate() {
            if let Some(tick) = next[i].filter(|t| *t <= clock::now()) {
                scheduler.tick(job, tick).await;
                // Ticks missed while this one ran are left to other schedulers, not replayed.
                next[i] = schedule.after(&tick.max(clock::now())).next();
            }
        }
    }
    info!("scheduler stopped");
    Ok(())
}
