//! `BENCH_SOAK=<minutes>`: one steady rate per fan-out held for that long (60 minutes unless a
//! number is given), reported minute by minute, with a verdict.
//!
//! The rate of each fan-out is the one the bench reports as sustained (found by the 30-second
//! steps of phase 4 after the burst), unless `BENCH_SOAK_RATE1` / `BENCH_SOAK_RATE10` name it;
//! `BENCH_SOAK_FANOUTS` (default `1,10`) picks the fan-outs.
//!
//! Each minute publishes that minute's messages evenly (four paced publishers, each message in
//! a conversation of its own, as the steady steps of phase 4), so conversations, messages,
//! notifications and log rows accumulate for the whole soak. The next minute's messages are
//! written while the current minute publishes. A minute's notifications are judged 45 seconds into the minute
//! after it: those not finished by then count as late by at least the time they have waited.
//!
//! Per minute: asked, offered and delivered rates, p50 / p99 lateness, each stage's p99, each
//! role's RSS, the mean database pool wait of dispatch and the mailer (from their
//! `tidings_db_pool_wait_seconds`), the size of the growing tables and their indexes, dead
//! rows and autovacuum runs. `pg_stat_statements` (when loaded) is read over the first and the
//! last ten minutes (or halves, for a shorter soak).
//!
//! The verdict fails when a minute's rate is not delivered, p99 is 250 ms or more in any minute
//! after the first, a role's RSS keeps growing after the warm-up (the slope of a least-squares
//! line over the minutes after it, not one peak), or a role ends above 64 MiB.

use super::*;

/// The tables that grow with every notification, message and email.
const GROWING: &[&str] = &[
    "notifications",
    "messages",
    "email_log",
    "outbound_sources",
    "live_events",
];

/// A role's RSS growing faster than this (MiB a minute) after the warm-up is growth: 6 MiB an
/// hour, more than any cache the roles hold may add.
const RSS_SLOPE_MIB_PER_MINUTE: f64 = 0.1;

/// How far into a minute the minute before it is judged.
const JUDGED_AFTER: Duration = Duration::from_secs(45);

/// Every role's RSS stays under this.
const RSS_LIMIT_MIB: f64 = 64.0;

/// One minute's messages, each in a conversation of its own followed by `fanout` readers (as
/// the steady steps of phase 4 write them).
fn minute_of_messages(
    db: &mut PgConnection,
    env: &BenchEnv,
    messages: u64,
    fanout: usize,
) -> anyhow::Result<Vec<i64>> {
    let conversations = create_conversations(db, env.project, &env.readers, messages, fanout)?;
    insert_messages(db, env.author, &conversations)
}

/// One minute of a soak.
#[derive(Debug, Clone, Default)]
pub(crate) struct SoakMinute {
    pub(crate) minute: u64,
    pub(crate) asked: f64,
    pub(crate) offered: f64,
    /// Notifications of the minute's messages that were terminal when it was judged, per
    /// second of the minute.
    pub(crate) delivered: f64,
    pub(crate) notifications: i64,
    pub(crate) unfinished: i64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// p99 of published → dispatched, due → claimed, claimed → recorded.
    pub(crate) stages_p99: [f64; 3],
    /// Each role's RSS at the minute's end, MiB.
    pub(crate) rss: Vec<(&'static str, f64)>,
    /// Mean database pool wait over the minute, ms, by role.
    pub(crate) pool_wait_ms: Vec<(&'static str, f64)>,
    /// Table and index MiB of each growing table at the minute's end.
    pub(crate) tables: Vec<(String, f64, f64)>,
    /// Dead rows of `notifications` at the minute's end.
    pub(crate) dead_notifications: i64,
    /// Autovacuum and autoanalyze runs over the growing tables during the minute.
    pub(crate) autovacuums: i64,
    /// CPU milliseconds per notification over the minute, all processes.
    pub(crate) cpu_ms: f64,
}

/// A minute waiting to be judged: its row, its message ids and when each was published.
type Waiting = (usize, Vec<i64>, Vec<(i64, chrono::DateTime<Utc>)>);

/// A statement's calls and mean time in one window of the soak.
type Timing = (i64, f64);

/// One fan-out's soak.
pub(crate) struct Soak {
    pub(crate) fanout: usize,
    pub(crate) rate: f64,
    /// The burst rate of the same run, when measured.
    pub(crate) burst: Option<f64>,
    pub(crate) minutes: Vec<SoakMinute>,
    /// Hot statements: text, first window, last window.
    pub(crate) statements: Vec<(String, Option<Timing>, Option<Timing>)>,
    /// The window the statement timings cover, minutes.
    pub(crate) window: u64,
    /// RSS slope after the warm-up, MiB a minute, by role.
    pub(crate) slopes: Vec<(&'static str, f64)>,
    pub(crate) failures: Vec<String>,
    /// Whether the server ran autovacuum.
    pub(crate) autovacuum: bool,
    /// The PostgreSQL settings a soak's lateness depends on most, as the server had them.
    pub(crate) server: String,
}

/// Where a role serves `/metrics`.
pub(crate) type MetricsPorts = Vec<(&'static str, u16)>;

/// Runs one soak at `fanout`, `rate` notifications a second, for `minutes`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn soak(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    metrics: &MetricsPorts,
    fanout: usize,
    rate: f64,
    burst: Option<f64>,
    minutes: u64,
) -> anyhow::Result<Soak> {
    let per_minute = ((rate * 60.0) / fanout as f64).round().max(1.0) as u64;
    let mut db = PgConnection::establish(&env.database_url)?;
    let mut next = minute_of_messages(&mut db, env, per_minute, fanout)?;
    let window = (minutes / 2).clamp(1, 10);
    let autovacuum = tidings_common::status::upkeep(&mut db)
        .map(|u| u["autovacuum"] == true)
        .unwrap_or(false);
    let server = server_settings(&mut db);
    let statements = reset_statements(&mut db);
    let http = reqwest::Client::new();
    let mut first: Vec<(i64, String, Timing)> = Vec::new();
    let mut last: Vec<(i64, String, Timing)> = Vec::new();
    let mut rows: Vec<SoakMinute> = Vec::new();
    // The minute waiting to be judged: its row, its message ids and when each was published.
    let mut pending: Option<Waiting> = None;
    let mut vacuums = autovacuum_runs(&mut db);
    let mut waits = pool_waits(&http, metrics).await;
    let mut cpu = processes.sample();
    let mut db = Some(db);
    for minute in 0..minutes {
        let ids = std::mem::take(&mut next);
        eprintln!(
            "bench: soak fan-out {fanout}, minute {}/{minutes}, {rate:.0} notifications/s",
            minute + 1
        );
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let channel = conn.create_channel().await?;
            channel.confirm_select(Default::default()).await?;
            let share: Vec<i64> = ids.iter().copied().skip(p).step_by(PUBLISHERS).collect();
            tasks.push(tokio::spawn(paced_publisher(
                channel,
                env.topology.events_exchange(),
                share,
                60.0,
            )));
        }
        // While this minute publishes: judge the one before, write the next one's messages.
        let mut conn_db = db.take().expect("the soak's connection");
        let judged = pending.take();
        let more = minute + 1 < minutes;
        let seen_window = env.topology.seen_window;
        let (project, author, readers) = (env.project, env.author, env.readers.clone());
        let minute_started = Instant::now();
        let background = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let next = if more {
                let conversations =
                    create_conversations(&mut conn_db, project, &readers, per_minute, fanout)?;
                insert_messages(&mut conn_db, author, &conversations)?
            } else {
                Vec::new()
            };
            // The minute before is judged late in this one: its last notifications were due
            // a window after this minute began.
            std::thread::sleep(JUDGED_AFTER.saturating_sub(minute_started.elapsed()));
            let verdict = match judged {
                Some((row, ids, published)) => Some((
                    row,
                    judge(&mut conn_db, &ids, published, fanout, seen_window)?,
                )),
                None => None,
            };
            Ok((conn_db, verdict, next))
        });
        let mut published = Vec::with_capacity(ids.len());
        for task in tasks {
            published.extend(task.await??);
        }
        let (mut conn_db, verdict, ids_next) = background.await??;
        next = ids_next;
        if let Some((row, judged)) = verdict {
            apply(&mut rows[row], judged);
            print_minute(&rows[row]);
        }
        let offered = offered_rate(&published, fanout);
        let vacuums_now = autovacuum_runs(&mut conn_db);
        let waits_now = pool_waits(&http, metrics).await;
        let cpu_now = processes.sample();
        let cost = cpu_cost(&cpu, &cpu_now, (ids.len() * fanout) as i64);
        rows.push(SoakMinute {
            minute: minute + 1,
            asked: rate,
            offered,
            rss: processes
                .roles
                .iter()
                .map(|(role, pid)| (*role, rss_kib(*pid).unwrap_or(0) as f64 / 1024.0))
                .collect(),
            pool_wait_ms: waits_now
                .iter()
                .map(|(role, sum, count)| {
                    let (sum0, count0) = waits
                        .iter()
                        .find(|(r, _, _)| r == role)
                        .map_or((0.0, 0.0), |(_, s, c)| (*s, *c));
                    let calls = count - count0;
                    (
                        *role,
                        if calls > 0.0 {
                            (sum - sum0) * 1000.0 / calls
                        } else {
                            0.0
                        },
                    )
                })
                .collect(),
            tables: table_sizes(&mut conn_db),
            dead_notifications: dead_rows(&mut conn_db, "notifications"),
            autovacuums: vacuums_now - vacuums,
            cpu_ms: cost.last().map_or(0.0, |(_, ms)| *ms),
            ..SoakMinute::default()
        });
        (vacuums, waits, cpu) = (vacuums_now, waits_now, cpu_now);
        pending = Some((rows.len() - 1, ids, published));
        if statements {
            let done = minute + 1;
            if done == window {
                first = statement_times(&mut conn_db);
            }
            if done == minutes - window {
                reset_statements(&mut conn_db);
            }
            if done == minutes {
                last = statement_times(&mut conn_db);
            }
        }
        db = Some(conn_db);
    }
    let mut conn_db = db.take().expect("the soak's connection");
    if let Some((row, ids, published)) = pending.take() {
        let expected = (ids.len() * fanout) as i64;
        // The last minute has no next minute to wait through: give it as long.
        let _ = wait_terminal(&mut conn_db, &ids, expected, Duration::from_secs(60));
        let judged = judge(
            &mut conn_db,
            &ids,
            published,
            fanout,
            env.topology.seen_window,
        )?;
        apply(&mut rows[row], judged);
        print_minute(&rows[row]);
    }
    let mut soak = Soak {
        fanout,
        rate,
        burst,
        minutes: rows,
        statements: merge_statements(first, last),
        window,
        slopes: Vec::new(),
        failures: Vec::new(),
        autovacuum,
        server,
    };
    soak.judge_all();
    Ok(soak)
}

/// What judging a minute found.
struct Judged {
    notifications: i64,
    unfinished: i64,
    p50_ms: f64,
    p99_ms: f64,
    stages_p99: [f64; 3],
}

fn apply(row: &mut SoakMinute, judged: Judged) {
    row.notifications = judged.notifications;
    row.unfinished = judged.unfinished;
    row.delivered = (judged.notifications - judged.unfinished) as f64 / 60.0;
    row.p50_ms = judged.p50_ms;
    row.p99_ms = judged.p99_ms;
    row.stages_p99 = judged.stages_p99;
}

/// Lateness of a minute's notifications; one not finished yet counts as late by the time it
/// has waited so far.
fn judge(
    db: &mut PgConnection,
    ids: &[i64],
    published: Vec<(i64, chrono::DateTime<Utc>)>,
    fanout: usize,
    seen_window: Duration,
) -> anyhow::Result<Judged> {
    use tidings_common::db::schema::notifications;
    let rows: Vec<(i64, String, Option<chrono::DateTime<Utc>>)> = notifications::table
        .filter(notifications::message_id.eq_any(ids))
        .select((
            notifications::message_id,
            notifications::state,
            notifications::sent_at,
        ))
        .load(db)?;
    let now = tidings_common::clock::now();
    let at: std::collections::HashMap<i64, chrono::DateTime<Utc>> = published.into_iter().collect();
    let window_ms = seen_window.as_secs_f64() * 1000.0;
    let mut late = Vec::with_capacity(rows.len());
    let mut unfinished = (ids.len() * fanout) as i64 - rows.len() as i64;
    for (id, state, sent) in &rows {
        let Some(published) = at.get(id) else {
            continue;
        };
        let finished = matches!(state.as_str(), "sent" | "skipped" | "failed");
        if !finished {
            unfinished += 1;
        }
        let end = sent.filter(|_| finished).unwrap_or(now);
        late.push((end - *published).as_seconds_f64() * 1000.0 - window_ms);
    }
    // Notifications dispatch has not written yet are as late as the oldest wait.
    let oldest = at
        .values()
        .min()
        .map_or(0.0, |t| (now - *t).as_seconds_f64() * 1000.0 - window_ms);
    late.extend(std::iter::repeat_n(
        oldest,
        ((ids.len() * fanout) as i64 - rows.len() as i64).max(0) as usize,
    ));
    let (p50_ms, p99_ms) = p50_p99(late);
    let stage = stages(db, ids, &at)?;
    Ok(Judged {
        notifications: (ids.len() * fanout) as i64,
        unfinished: unfinished.max(0),
        p50_ms,
        p99_ms,
        stages_p99: [stage[0].1, stage[1].1, stage[2].1],
    })
}

/// n publishes spread over n − 1 intervals, in notifications a second.
fn offered_rate(published: &[(i64, chrono::DateTime<Utc>)], fanout: usize) -> f64 {
    let first = published.iter().map(|(_, at)| *at).min();
    let last = published.iter().map(|(_, at)| *at).max();
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_seconds_f64(),
        _ => 0.0,
    };
    (published.len().saturating_sub(1) * fanout) as f64 / span.max(1e-3)
}

impl Soak {
    /// The verdict: each failed condition, named.
    fn judge_all(&mut self) {
        let warm = if self.minutes.len() >= 20 {
            10
        } else {
            self.minutes.len() as u64 / 3
        };
        for m in &self.minutes {
            if m.offered < 0.95 * m.asked {
                self.failures.push(format!(
                    "minute {}: offered {:.0}/s of {:.0}/s asked (the publisher fell short)",
                    m.minute, m.offered, m.asked
                ));
            }
            if m.unfinished > 0 || m.delivered < 0.95 * m.asked {
                self.failures.push(format!(
                    "minute {}: delivered {:.0}/s of {:.0}/s; {} of {} notifications unfinished 45 s into the next minute",
                    m.minute, m.delivered, m.asked, m.unfinished, m.notifications
                ));
            }
            if m.minute > 1 && (m.p99_ms.is_nan() || m.p99_ms >= ON_TIME_P99_MS) {
                self.failures.push(format!(
                    "minute {}: p99 lateness {:.0} ms (limit {ON_TIME_P99_MS:.0})",
                    m.minute, m.p99_ms
                ));
            }
        }
        let roles: Vec<&'static str> = self
            .minutes
            .first()
            .map(|m| m.rss.iter().map(|(r, _)| *r).collect())
            .unwrap_or_default();
        for role in roles {
            let points: Vec<(f64, f64)> = self
                .minutes
                .iter()
                .filter(|m| m.minute > warm)
                .filter_map(|m| {
                    let (_, mib) = m.rss.iter().find(|(r, _)| *r == role)?;
                    Some((m.minute as f64, *mib))
                })
                .collect();
            let slope = slope(&points);
            self.slopes.push((role, slope));
            if points.len() >= 3 && slope > RSS_SLOPE_MIB_PER_MINUTE {
                self.failures.push(format!(
                    "{role}: RSS grows {slope:.2} MiB a minute after minute {warm} (limit {RSS_SLOPE_MIB_PER_MINUTE})"
                ));
            }
            if let Some(&(_, end)) = points.last()
                && end >= RSS_LIMIT_MIB
            {
                self.failures.push(format!(
                    "{role}: RSS {end:.1} MiB at the end (limit {RSS_LIMIT_MIB})"
                ));
            }
        }
    }

    pub(crate) fn held(&self) -> bool {
        self.failures.is_empty()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "fanout": self.fanout,
            "rate": self.rate,
            "burst": self.burst,
            "held": self.held(),
            "autovacuum": self.autovacuum,
            "server": self.server,
            "failures": self.failures,
            "rss_slope_mib_per_minute": self.slopes.iter().map(|(r, s)| (r.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "statements_window_minutes": self.window,
            "statements": self.statements.iter().map(|(q, a, b)| json!({"query": q, "first": a.map(|(c, m)| json!({"calls": c, "mean_ms": m})), "last": b.map(|(c, m)| json!({"calls": c, "mean_ms": m}))})).collect::<Vec<_>>(),
            "minutes": self.minutes.iter().map(|m| json!({
                "minute": m.minute,
                "asked": m.asked,
                "offered": m.offered,
                "delivered": m.delivered,
                "notifications": m.notifications,
                "unfinished": m.unfinished,
                "p50_ms": m.p50_ms,
                "p99_ms": m.p99_ms,
                "stages_p99_ms": {"published_dispatched": m.stages_p99[0], "due_claimed": m.stages_p99[1], "claimed_recorded": m.stages_p99[2]},
                "rss_mib": m.rss.iter().map(|(r, v)| (r.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "pool_wait_ms": m.pool_wait_ms.iter().map(|(r, v)| (r.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "tables_mib": m.tables.iter().map(|(t, table, index)| (t.clone(), json!({"table": table, "indexes": index}))).collect::<serde_json::Map<_, _>>(),
                "dead_notifications": m.dead_notifications,
                "autovacuums": m.autovacuums,
                "cpu_ms_per_notification": m.cpu_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Least-squares slope of `points` (y per x); 0 with fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

fn print_minute(m: &SoakMinute) {
    let rss: Vec<String> = m.rss.iter().map(|(_, v)| format!("{v:.1}")).collect();
    let waits: Vec<String> = m
        .pool_wait_ms
        .iter()
        .map(|(_, v)| format!("{v:.2}"))
        .collect();
    eprintln!(
        "bench:   minute {}: offered {:.0}/s, delivered {:.0}/s ({} unfinished), p50/p99 {:.0}/{:.0} ms, stage p99 {:.0}/{:.0}/{:.0} ms, RSS {} MiB, pool wait {} ms",
        m.minute,
        m.offered,
        m.delivered,
        m.unfinished,
        m.p50_ms,
        m.p99_ms,
        m.stages_p99[0],
        m.stages_p99[1],
        m.stages_p99[2],
        rss.join("/"),
        waits.join("/")
    );
}

/// The soak's tables: per minute, then the statements and the verdict.
pub(crate) fn print_soak(soak: &Soak) {
    let burst = soak
        .burst
        .map(|b| format!(" ({:.2}x of the burst {b:.0}/s)", soak.rate / b))
        .unwrap_or_default();
    println!(
        "soak fan-out {}: {:.0} notifications/s{burst} for {} minutes; autovacuum {}; {}",
        soak.fanout,
        soak.rate,
        soak.minutes.len(),
        if soak.autovacuum {
            "on"
        } else {
            "OFF on this server (nothing reclaims dead rows: not a production setting)"
        },
        soak.server
    );
    let roles: Vec<&str> = soak
        .minutes
        .first()
        .map(|m| m.rss.iter().map(|(r, _)| *r).collect())
        .unwrap_or_default();
    let tables: Vec<String> = soak
        .minutes
        .first()
        .map(|m| m.tables.iter().map(|(t, _, _)| t.clone()).collect())
        .unwrap_or_default();
    println!(
        "  min  offered delivered   p50   p99 | stage p99 disp/claim/rec ms | RSS {} MiB | pool wait dispatch/mailer ms | {} table+index MiB | dead notif. | autovac | CPU ms/n",
        roles.join("/"),
        tables.join("/")
    );
    for m in &soak.minutes {
        let rss: Vec<String> = m.rss.iter().map(|(_, v)| format!("{v:.1}")).collect();
        let waits: Vec<String> = m
            .pool_wait_ms
            .iter()
            .filter(|(r, _)| *r == "dispatch" || *r == "mailer")
            .map(|(_, v)| format!("{v:.2}"))
            .collect();
        let sizes: Vec<String> = m
            .tables
            .iter()
            .map(|(_, t, i)| format!("{:.0}", t + i))
            .collect();
        println!(
            "  {:>3} {:>8.0} {:>9.0} {:>5.0} {:>5.0} | {:>6.0}/{:.0}/{:.0} | {} | {} | {} | {:>8} | {:>3} | {:.3}",
            m.minute,
            m.offered,
            m.delivered,
            m.p50_ms,
            m.p99_ms,
            m.stages_p99[0],
            m.stages_p99[1],
            m.stages_p99[2],
            rss.join("/"),
            waits.join("/"),
            sizes.join("/"),
            m.dead_notifications,
            m.autovacuums,
            m.cpu_ms
        );
    }
    let slopes: Vec<String> = soak
        .slopes
        .iter()
        .map(|(r, s)| format!("{r} {s:+.3}"))
        .collect();
    println!(
        "  RSS slope after the warm-up, MiB a minute: {}",
        slopes.join(", ")
    );
    if !soak.statements.is_empty() {
        println!(
            "  statements, first and last {} minutes (calls, mean ms):",
            soak.window
        );
        let timing =
            |t: &Option<Timing>| t.map_or("-".to_string(), |(c, m)| format!("{c:>8} {m:>8.3}"));
        for (query, a, b) in &soak.statements {
            println!("    {:>17} {:>17}  {query}", timing(a), timing(b));
        }
    }
    if soak.held() {
        println!("  held: every minute on time, every role's memory flat");
    } else {
        println!("  NOT HELD:");
        for failure in &soak.failures {
            println!("    {failure}");
        }
    }
}

/// `shared_buffers`, `max_wal_size` and `synchronous_commit`: whether the indexes every
/// notification writes stay in memory, how often a checkpoint writes them out, and whether
/// each commit waits for the disk.
fn server_settings(db: &mut PgConnection) -> String {
    #[derive(QueryableByName)]
    struct Settings {
        #[diesel(sql_type = diesel::sql_types::Text)]
        settings: String,
    }
    diesel::sql_query(
        "SELECT format('shared_buffers %s, max_wal_size %s, synchronous_commit %s',
                current_setting('shared_buffers'), current_setting('max_wal_size'),
                current_setting('synchronous_commit')) AS settings",
    )
    .get_result::<Settings>(db)
    .map(|s| s.settings)
    .unwrap_or_else(|e| format!("PostgreSQL settings unknown: {e}"))
}

/// Resets `pg_stat_statements`; says whether it is loaded.
fn reset_statements(db: &mut PgConnection) -> bool {
    diesel::sql_query("SELECT pg_stat_statements_reset()")
        .execute(db)
        .is_ok()
}

/// The benchmark database's statements by time since the last reset: query id, text, calls and
/// mean milliseconds.
fn statement_times(db: &mut PgConnection) -> Vec<(i64, String, Timing)> {
    #[derive(QueryableByName)]
    struct Statement {
        #[diesel(sql_type = BigInt)]
        queryid: i64,
        #[diesel(sql_type = BigInt)]
        calls: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        mean_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        query: String,
    }
    diesel::sql_query(
        "SELECT queryid, calls, mean_exec_time AS mean_ms,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT 12",
    )
    .load::<Statement>(db)
    .map(|rows| {
        rows.into_iter()
            .map(|r| (r.queryid, r.query, (r.calls, r.mean_ms)))
            .collect()
    })
    .unwrap_or_default()
}

/// The union of both windows' hot statements, in the first window's order.
fn merge_statements(
    first: Vec<(i64, String, Timing)>,
    last: Vec<(i64, String, Timing)>,
) -> Vec<(String, Option<Timing>, Option<Timing>)> {
    let mut merged: Vec<(i64, String, Option<Timing>, Option<Timing>)> = first
        .into_iter()
        .map(|(id, q, t)| (id, q, Some(t), None))
        .collect();
    for (id, q, t) in last {
        match merged.iter_mut().find(|(i, _, _, _)| *i == id) {
            Some(entry) => entry.3 = Some(t),
            None => merged.push((id, q, None, Some(t))),
        }
    }
    merged.into_iter().map(|(_, q, a, b)| (q, a, b)).collect()
}

/// Table and index MiB of each growing table.
fn table_sizes(db: &mut PgConnection) -> Vec<(String, f64, f64)> {
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = BigInt)]
        table: i64,
        #[diesel(sql_type = BigInt)]
        indexes: i64,
    }
    diesel::sql_query(
        "SELECT t AS name, pg_table_size(t::regclass) AS table, pg_indexes_size(t::regclass) AS indexes
         FROM unnest($1::text[]) WITH ORDINALITY AS g(t, n) ORDER BY n",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(GROWING)
    .load::<Size>(db)
    .map(|rows| {
        let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
        rows.into_iter()
            .map(|r| (r.name, mib(r.table), mib(r.indexes)))
            .collect()
    })
    .unwrap_or_default()
}

fn dead_rows(db: &mut PgConnection, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Dead {
        #[diesel(sql_type = BigInt)]
        dead: i64,
    }
    diesel::sql_query("SELECT n_dead_tup AS dead FROM pg_stat_user_tables WHERE relname = $1")
        .bind::<diesel::sql_types::Text, _>(table)
        .get_result::<Dead>(db)
        .map_or(0, |d| d.dead)
}

/// Autovacuum and autoanalyze runs over the growing tables so far.
fn autovacuum_runs(db: &mut PgConnection) -> i64 {
    #[derive(QueryableByName)]
    struct Runs {
        #[diesel(sql_type = Nullable<BigInt>)]
        runs: Option<i64>,
    }
    diesel::sql_query(
        "SELECT sum(autovacuum_count + autoanalyze_count)::bigint AS runs
         FROM pg_stat_user_tables WHERE relname = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(GROWING)
    .get_result::<Runs>(db)
    .ok()
    .and_then(|r| r.runs)
    .unwrap_or(0)
}

/// Each role's `tidings_db_pool_wait_seconds` sum and count so far.
async fn pool_waits(
    http: &reqwest::Client,
    metrics: &MetricsPorts,
) -> Vec<(&'static str, f64, f64)> {
    let mut waits = Vec::new();
    for (role, port) in metrics {
        let Ok(response) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        waits.push((
            *role,
            value("tidings_db_pool_wait_seconds_sum"),
            value("tidings_db_pool_wait_seconds_count"),
        ));
    }
    waits
}

/// `BENCH_SOAK` as minutes: a number, or 60 when set to anything else.
pub(crate) fn soak_minutes() -> Option<u64> {
    let value = std::env::var("BENCH_SOAK").ok()?;
    Some(value.trim().parse().ok().filter(|m| *m > 0).unwrap_or(60))
}

/// The fan-outs to soak (`BENCH_SOAK_FANOUTS`, default 1 and 10).
pub(crate) fn soak_fanouts() -> Vec<usize> {
    std::env::var("BENCH_SOAK_FANOUTS")
        .unwrap_or_else(|_| "1,10".into())
        .split(',')
        .filter_map(|f| f.trim().parse().ok())
        .filter(|f| (1..=10).contains(f))
        .collect()
}
