//! `tidings-bench`: measures the outbound pipeline against baselines taken in the same run on
//! the same machine, and prints ratios (machines are noisy; only ratios carry over).
//!
//! Phases, each against the local RabbitMQ, PostgreSQL and a counting smtp-sink:
//! 1. baseline: raw persistent, confirmed AMQP messages through the same TTL + dead-letter
//!    delay topology (same queue type, 1 s window), no application work;
//! 2. smtp-sink's own acceptance rate, driven by Postfix's smtp-source;
//! 3. pipeline: notifications per second from `message.posted` to emails accepted by
//!    smtp-sink, at fan-out 1 and fan-out 10, with separately running dispatch and mailer
//!    processes;
//!    with the CPU time every process spent per notification (each role, all PostgreSQL
//!    processes, the broker, smtp-sink) and, when `pg_stat_statements` is loaded, the database
//!    statements per notification;
//! 4. sustained rate: the highest steady offered rate at which p99 lateness (email accepted −
//!    message posted − window) stays under 250 ms for `BENCH_STEP_SECONDS`, at fan-out 1 and
//!    10, found by stepping the rate up from 0.4× the burst rate;
//! 5. peak RSS of each role process.
//!
//! The database holds a realistic background first (thousands of people, a hundred thousand
//! messages), so that queries which scan people or messages show it.
//!
//! Every loop is bounded in count and time; traffic goes to 127.0.0.1 only.
//!
//! Knobs (environment): `BENCH_BASELINE` (messages, default 20000), `BENCH_FANOUT1`
//! (messages, 20000), `BENCH_FANOUT10` (messages, 3000), `BENCH_STEP_SECONDS` (30),
//! `BENCH_STEPS` (most rates tried per fan-out, 6), `BENCH_PEOPLE` (background users and
//! customers, 2000 each), `BENCH_BACKGROUND` (background messages, 100000), `BENCH_OUT` (JSON
//! file, `bench-results.json`), `BENCH_TIDINGS` (path of the `tidings` binary, default beside
//! this one). The roles run with the product's defaults unless `TIDINGS_PREFETCH`,
//! `TIDINGS_SMTP_CONCURRENCY` or `TIDINGS_DB_POOL_SIZE` are set; the header prints them.

#[path = "../../tests/support/system.rs"]
mod system;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use diesel::Connection as _;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde_json::json;
use tidings_common::Config;
use tidings_common::amqp::{self, MESSAGE_POSTED, Publisher, Topology};

const WINDOW: &str = "1s";
const DB_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Publisher confirms kept outstanding at once.
const CONFIRM_WINDOW: usize = 512;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Publishes `count` payloads with up to [`CONFIRM_WINDOW`] confirms in flight; fails on any nack.
async fn publish_pipelined(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    payloads: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    let mut pending = VecDeque::new();
    for payload in payloads {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= CONFIRM_WINDOW {
            let confirmation = pending.pop_front().expect("non-empty").await?;
            if !confirmation.is_ack() {
                bail!("broker nacked a publish");
            }
        }
    }
    for confirm in pending {
        if !confirm.await?.is_ack() {
            bail!("broker nacked a publish");
        }
    }
    Ok(())
}

/// Phase 1: raw AMQP through the delay topology, no application work.
async fn baseline(conn: &Connection, topology: &Topology, count: u64) -> anyhow::Result<f64> {
    let publisher = Publisher::open(conn).await?;
    topology.declare(publisher.channel()).await?;
    let consumer_channel = conn.create_channel().await?;
    consumer_channel
        .basic_qos(1000, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            topology.due_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut seen = 0u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen < count {
            let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                bail!("baseline consumer stalled after {seen} of {count}");
            };
            delivery.ack(BasicAckOptions::default()).await?;
            seen += 1;
            if Instant::now() > deadline {
                bail!("baseline did not finish in time");
            }
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let payload = serde_json::to_vec(&json!({"message_id": 1, "notification_ids": [1]}))?;
    publish_pipelined(
        publisher.channel(),
        &topology.delay_exchange(),
        &topology.delay_routing_key(),
        (0..count).map(|_| payload.clone()),
    )
    .await?;
    let finished = consume.await??;
    let elapsed =
        finished.duration_since(started).as_secs_f64() - topology.seen_window.as_secs_f64();
    topology.delete(publisher.channel()).await?;
    Ok(count as f64 / elapsed)
}

/// Phase 2: how fast smtp-sink accepts mail from smtp-source, Postfix's load client.
fn smtp_sink_rate(port: u16, count: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new(system::program("smtp-source"))
        .args([
            "-s",
            "16",
            "-m",
            &count.to_string(),
            "-l",
            "2048",
            "-f",
            "bench@127.0.0.1",
        ])
        .args(["-t", "sink@127.0.0.1"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .context("smtp-source (Debian package postfix)")?;
    if !status.success() {
        bail!("smtp-source failed: {status}");
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Creates `conversations` conversations, each followed by the first `fanout` readers, and
/// returns their ids.
fn create_conversations(
    conn: &mut PgConnection,
    project: i64,
    readers: &[i64],
    conversations: u64,
    fanout: usize,
) -> anyhow::Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<Id> = diesel::sql_query(
        "WITH i AS (INSERT INTO items (project_id, kind, title)
                    SELECT $1, 'ticket', 'bench' FROM generate_series(1, $2) RETURNING id)
         INSERT INTO conversations (item_id, subject) SELECT id, 'Bench ticket' FROM i RETURNING id",
    )
    .bind::<BigInt, _>(project)
    .bind::<BigInt, _>(conversations as i64)
    .load(conn)?;
    let ids: Vec<i64> = ids.into_iter().map(|r| r.id).collect();
    diesel::sql_query(
        "INSERT INTO item_follows (item_id, person_id)
         SELECT c.item_id, r FROM conversations c, unnest($2::bigint[]) r WHERE c.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
    .bind::<diesel::sql_types::Array<BigInt>, _>(&readers[..fanout])
    .execute(conn)?;
    Ok(ids)
}

/// Inserts one message per conversation and returns the message ids.
fn insert_messages(
    conn: &mut PgConnection,
    author: i64,
    conversations: &[i64],
) -> anyhow::Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<Id> = diesel::sql_query(
        "INSERT INTO messages (conversation_id, author_id, body, internal)
         SELECT c, $2, 'The printer is on fire again.', false FROM unnest($1::bigint[]) c
         RETURNING id",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(conversations)
    .bind::<BigInt, _>(author)
    .load(conn)?;
    Ok(ids.into_iter().map(|r| r.id).collect())
}

fn event(message_id: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({ "message_id": message_id })).expect("json")
}

/// Waits until `expected` notifications of `messages` are terminal; returns the time of the
/// last email and how many were sent.
fn wait_terminal(
    conn: &mut PgConnection,
    messages: &[i64],
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<(chrono::DateTime<Utc>, i64)> {
    #[derive(QueryableByName)]
    struct Progress {
        #[diesel(sql_type = BigInt)]
        done: i64,
        #[diesel(sql_type = BigInt)]
        sent: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        last: Option<chrono::DateTime<Utc>>,
    }
    let first = messages.iter().copied().min().unwrap_or(0);
    let last = messages.iter().copied().max().unwrap_or(0);
    let deadline = Instant::now() + timeout;
    loop {
        // The phase's messages were inserted by one statement: their ids are one range,
        // which is much cheaper to read than a list of thousands of ids.
        let p: Progress = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE state IN ('sent', 'skipped', 'failed')) AS done,
                    count(*) FILTER (WHERE state = 'sent') AS sent, max(sent_at) AS last
             FROM notifications WHERE message_id BETWEEN $1 AND $2",
        )
        .bind::<BigInt, _>(first)
        .bind::<BigInt, _>(last)
        .get_result(conn)?;
        if p.done >= expected {
            return Ok((p.last.unwrap_or_else(tidings_common::clock::now), p.sent));
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} notifications finished in {timeout:?}",
                p.done
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct PipelineResult {
    notifications: i64,
    sent: i64,
    rate: f64,
    /// CPU milliseconds per notification, by process group, and the total.
    cost: Vec<(String, f64)>,
    /// Database statements per notification (with `pg_stat_statements`).
    statements: Option<f64>,
}

/// Phase 3: `messages` messages at `fanout` recipients each, from event to accepted email.
async fn pipeline(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    messages: u64,
    fanout: usize,
) -> anyhow::Result<PipelineResult> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let conversations = create_conversations(&mut db, env.project, &env.readers, messages, fanout)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let statements_before = statements_run(&mut db);
    let cpu_before = processes.sample();
    let started = tidings_common::clock::now();
    publish_pipelined(
        &channel,
        &env.topology.events_exchange(),
        MESSAGE_POSTED,
        ids.iter().map(|&id| event(id)),
    )
    .await?;
    let expected = messages as i64 * fanout as i64;
    let (last, sent) = wait_terminal(&mut db, &ids, expected, Duration::from_secs(600))?;
    let cost = cpu_cost(&cpu_before, &processes.sample(), expected);
    let statements = statements_before
        .zip(statements_run(&mut db))
        .map(|(before, after)| (after - before) as f64 / expected as f64);
    let elapsed = (last - started).as_seconds_f64() - env.topology.seen_window.as_secs_f64();
    Ok(PipelineResult {
        notifications: expected,
        sent,
        rate: expected as f64 / elapsed,
        cost,
        statements,
    })
}

/// CPU time (user + system) a process has used, in seconds, from /proc (clock ticks of 10 ms).
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn cpu_seconds() -> f64 {
    cpu_of(std::process::id()).unwrap_or(0.0)
}

/// Every process whose command name is one of `names`.
fn pids_named(names: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim()))
        })
        .collect()
}

/// The processes whose CPU time is counted, by group.
struct Processes {
    roles: Vec<(&'static str, u32)>,
    sink: u32,
}

/// CPU seconds per process (pid) of each group at one moment.
type CpuSample = Vec<(String, Vec<(u32, f64)>)>;

impl Processes {
    fn sample(&self) -> CpuSample {
        let of = |pids: Vec<u32>| -> Vec<(u32, f64)> {
            pids.into_iter()
                .filter_map(|pid| Some((pid, cpu_of(pid)?)))
                .collect()
        };
        let mut sample: CpuSample = self
            .roles
            .iter()
            .map(|(role, pid)| (role.to_string(), of(vec![*pid])))
            .collect();
        sample.push(("postgres".into(), of(pids_named(&["postgres"]))));
        sample.push((
            "rabbitmq".into(),
            of(pids_named(&["beam.smp", "erl_child_setup", "inet_gethost"])),
        ));
        sample.push(("smtp-sink".into(), of(vec![self.sink])));
        sample
    }
}

/// CPU milliseconds per notification of each group between two samples, and their total.
/// Processes that started in between count from zero; ones that ended are missed.
fn cpu_cost(before: &CpuSample, after: &CpuSample, notifications: i64) -> Vec<(String, f64)> {
    let mut cost: Vec<(String, f64)> = after
        .iter()
        .map(|(group, pids)| {
            let earlier = before
                .iter()
                .find(|(g, _)| g == group)
                .map(|(_, p)| p.as_slice())
                .unwrap_or_default();
            let spent: f64 = pids
                .iter()
                .map(|(pid, cpu)| {
                    let was = earlier
                        .iter()
                        .find(|(p, _)| p == pid)
                        .map_or(0.0, |(_, c)| *c);
                    (cpu - was).max(0.0)
                })
                .sum();
            (group.clone(), spent * 1000.0 / notifications.max(1) as f64)
        })
        .collect();
    let total = cost.iter().map(|(_, ms)| ms).sum();
    cost.push(("total".into(), total));
    cost
}

/// Statements the benchmark database has run so far, when `pg_stat_statements` is loaded.
fn statements_run(conn: &mut PgConnection) -> Option<i64> {
    #[derive(QueryableByName)]
    struct Calls {
        #[diesel(sql_type = Nullable<BigInt>)]
        calls: Option<i64>,
    }
    diesel::sql_query(
        "SELECT sum(calls)::bigint AS calls FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .get_result::<Calls>(conn)
    .ok()?
    .calls
}

/// The statements of the benchmark database that took the most time so far (with
/// `pg_stat_statements`): calls, total and mean milliseconds, and the start of the text.
fn top_statements(conn: &mut PgConnection, limit: i64) -> Vec<(i64, f64, f64, String)> {
    #[derive(QueryableByName)]
    struct Statement {
        #[diesel(sql_type = BigInt)]
        calls: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        total_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        mean_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        query: String,
    }
    diesel::sql_query(
        "SELECT calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS query
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load::<Statement>(conn)
    .map(|rows| {
        rows.into_iter()
            .map(|r| (r.calls, r.total_ms, r.mean_ms, r.query))
            .collect()
    })
    .unwrap_or_default()
}

/// Percentiles (p50, p99) of a list of milliseconds.
fn p50_p99(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        values
            .get(((values.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pick(0.5), pick(0.99))
}

/// Lateness of a steady phase: email accepted (the mailer's `sent_at`) − message published −
/// window, over every notification.
#[derive(Debug, Clone)]
struct Lateness {
    asked_rate: f64,
    offered_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    notifications: i64,
    /// CPU milliseconds per notification over the step, as in [`cpu_cost`].
    cost: Vec<(String, f64)>,
}

/// p99 under this is "on time".
const ON_TIME_P99_MS: f64 = 250.0;
/// Publishing tasks (each with its own channel) of a steady phase.
const PUBLISHERS: usize = 4;

impl Lateness {
    /// On time, at the rate asked for (the publisher really offered it).
    fn held(&self) -> bool {
        self.p99_ms < ON_TIME_P99_MS && self.offered_rate >= 0.95 * self.asked_rate
    }
}

/// One paced publisher: publishes `ids` evenly over `seconds`, with its confirms pipelined;
/// returns when each id was published.
async fn paced_publisher(
    channel: lapin::Channel,
    exchange: String,
    ids: Vec<i64>,
    seconds: f64,
) -> anyhow::Result<Vec<(i64, chrono::DateTime<Utc>)>> {
    let rate = ids.len() as f64 / seconds;
    let tick = Duration::from_millis(5);
    let mut published = Vec::with_capacity(ids.len());
    let mut pending = VecDeque::new();
    let started = Instant::now();
    let mut next = 0usize;
    while next < ids.len() {
        let due = ((started.elapsed().as_secs_f64() * rate).ceil() as usize).min(ids.len());
        while next < due {
            let id = ids[next];
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    MESSAGE_POSTED.into(),
                    BasicPublishOptions::default(),
                    &event(id),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            published.push((id, tidings_common::clock::now()));
            pending.push_back(confirm);
            while pending.len() >= CONFIRM_WINDOW {
                if !pending.pop_front().expect("non-empty").await?.is_ack() {
                    bail!("broker nacked a publish");
                }
            }
            next += 1;
        }
        tokio::time::sleep(tick).await;
    }
    for confirm in pending {
        if !confirm.await?.is_ack() {
            bail!("broker nacked a publish");
        }
    }
    Ok(published)
}

/// A steady `rate` notifications/s at `fanout` recipients per message for `seconds`.
/// Messages are written beforehand; [`PUBLISHERS`] paced tasks publish their events.
async fn steady(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    fanout: usize,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Lateness> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let messages = ((rate * seconds as f64) / fanout as f64).round().max(1.0) as u64;
    let conversations = create_conversations(&mut db, env.project, &env.readers, messages, fanout)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    let cpu_before = processes.sample();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let channel = conn.create_channel().await?;
        channel.confirm_select(Default::default()).await?;
        let share: Vec<i64> = ids.iter().copied().skip(p).step_by(PUBLISHERS).collect();
        tasks.push(tokio::spawn(paced_publisher(
            channel,
            env.topology.events_exchange(),
            share,
            seconds as f64,
        )));
    }
    let mut published = Vec::with_capacity(ids.len());
    for task in tasks {
        published.extend(task.await??);
    }
    let first = published.iter().map(|(_, at)| *at).min();
    let last = published.iter().map(|(_, at)| *at).max();
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_seconds_f64(),
        _ => 0.0,
    };
    // n publishes spread over n - 1 intervals.
    let offered_rate = (ids.len().saturating_sub(1) * fanout) as f64 / span.max(1e-3);
    let expected = (ids.len() * fanout) as i64;
    wait_terminal(&mut db, &ids, expected, Duration::from_secs(600))?;
    let cost = cpu_cost(&cpu_before, &processes.sample(), expected);
    let sent: Vec<(i64, Option<chrono::DateTime<Utc>>)> =
        tidings_common::db::schema::notifications::table
            .filter(tidings_common::db::schema::notifications::message_id.eq_any(&ids))
            .select((
                tidings_common::db::schema::notifications::message_id,
                tidings_common::db::schema::notifications::sent_at,
            ))
            .load(&mut db)?;
    let at: std::collections::HashMap<i64, chrono::DateTime<Utc>> = published.into_iter().collect();
    let window_ms = env.topology.seen_window.as_secs_f64() * 1000.0;
    let late: Vec<f64> = sent
        .iter()
        .filter_map(|(id, sent_at)| Some((*sent_at)? - *at.get(id)?))
        .map(|d| d.as_seconds_f64() * 1000.0 - window_ms)
        .collect();
    let notifications = late.len() as i64;
    let max_ms = late.iter().copied().reduce(f64::max).unwrap_or(f64::NAN);
    let (p50_ms, p99_ms) = p50_p99(late);
    let stages = stages(&mut db, &ids, &at)?;
    eprintln!(
        "bench:   stages p50/p99 ms: published→dispatched {:.0}/{:.0}, due→claimed {:.0}/{:.0}, claimed→recorded {:.0}/{:.0}",
        stages[0].0, stages[0].1, stages[1].0, stages[1].1, stages[2].0, stages[2].1
    );
    Ok(Lateness {
        asked_rate: rate,
        offered_rate,
        p50_ms,
        p99_ms,
        max_ms,
        notifications,
        cost,
    })
}

/// Where a steady phase's lateness went, as (p50, p99) milliseconds of three stages: event
/// published → message dispatched (dispatch's queue and transaction), notification due →
/// claimed by the mailer (the delay's dead-lettering and the mailer's queue), claimed →
/// recorded as sent (rendering, SMTP and the recording transaction).
fn stages(
    db: &mut PgConnection,
    ids: &[i64],
    published: &std::collections::HashMap<i64, chrono::DateTime<Utc>>,
) -> anyhow::Result<[(f64, f64); 3]> {
    use tidings_common::db::schema::{messages, notifications};
    type Time = chrono::DateTime<Utc>;
    type Row = (i64, Option<Time>, Time, Option<Time>, Option<Time>);
    let rows: Vec<Row> = notifications::table
        .inner_join(messages::table)
        .filter(notifications::message_id.eq_any(ids))
        .select((
            notifications::message_id,
            messages::dispatched_at,
            notifications::due_at,
            notifications::claimed_at,
            notifications::sent_at,
        ))
        .load(db)?;
    let ms = |d: chrono::TimeDelta| d.as_seconds_f64() * 1000.0;
    let (mut dispatch, mut delay, mut send) = (Vec::new(), Vec::new(), Vec::new());
    for (id, dispatched, due, claimed, sent) in rows {
        if let (Some(at), Some(dispatched)) = (published.get(&id), dispatched) {
            dispatch.push(ms(dispatched - *at));
        }
        if let Some(claimed) = claimed {
            delay.push(ms(claimed - due));
            if let Some(sent) = sent {
                send.push(ms(sent - claimed));
            }
        }
    }
    Ok([p50_p99(dispatch), p50_p99(delay), p50_p99(send)])
}

/// Phase 4: the highest steady rate held on time at `fanout`, found by stepping the rate up:
/// from 0.4× the burst rate, by 1.2× per step, until a step does not hold (at most `steps`
/// rates). Starting low keeps a failing step only a little above what the pipeline holds, so
/// its backlog does not spill into the next step. Returns the best rate held (if any) and
/// every step tried.
async fn sustained(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    fanout: usize,
    burst: f64,
    seconds: u64,
    steps: u64,
) -> anyhow::Result<(Option<Lateness>, Vec<Lateness>)> {
    let mut rate = (0.4 * burst).max(10.0);
    let mut tried: Vec<Lateness> = Vec::new();
    let mut best: Option<Lateness> = None;
    for _ in 0..steps {
        eprintln!("bench: steady {rate:.0} notifications/s at fan-out {fanout} for {seconds} s");
        let step = steady(env, conn, processes, fanout, rate, seconds).await?;
        eprintln!(
            "bench:   offered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms -> {}",
            step.offered_rate,
            step.p50_ms,
            step.p99_ms,
            if step.held() { "held" } else { "not held" }
        );
        let held = step.held();
        tried.push(step.clone());
        if !held {
            break;
        }
        best = Some(step);
        rate *= 1.2;
        // The next step starts from a settled system.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok((best, tried))
}

/// Extraction speed over the corpora, per CPU-second: [`Extraction::split`] runs the reply
/// splitter alone over every body, decoded beforehand (plain bodies as they are, raw
/// messages through the MIME parser and the HTML converter first); [`Extraction::inspect`]
/// runs the whole pure path (MIME parse, classify, extract) over every raw message.
struct Extraction {
    split: f64,
    bodies: usize,
    inspect: f64,
    messages: usize,
}

fn extraction_rate(corpora: &std::path::Path) -> anyhow::Result<Extraction> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(bool, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                // Raw messages (.eml), and plain bodies (.txt under an emails folder).
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or_default();
                let body = ext == "txt" && path.to_string_lossy().contains("/emails/");
                if (ext == "eml" || body)
                    && let Ok(bytes) = std::fs::read(&path)
                {
                    out.push((ext == "eml", bytes));
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(corpora, &mut files);
    if files.is_empty() {
        bail!("no email bodies under {}", corpora.display());
    }
    let bodies: Vec<String> = files
        .iter()
        .filter_map(|(is_email, bytes)| match is_email {
            true => tidings_common::inbound::body_of(bytes),
            false => Some(String::from_utf8_lossy(bytes).into_owned()),
        })
        .collect();
    let messages: Vec<&[u8]> = files
        .iter()
        .filter(|(is_email, _)| *is_email)
        .map(|(_, bytes)| bytes.as_slice())
        .collect();
    let context = tidings_common::inbound::InboundContext {
        reply_domain: "reply.tidings.localhost".into(),
        own_address: None,
        authserv_id: None,
    };
    let per_cpu_second = |items: usize, run: &dyn Fn(usize)| {
        let started = cpu_seconds();
        let wall = Instant::now();
        let mut done = 0usize;
        while wall.elapsed() < Duration::from_secs(3) {
            for i in 0..items {
                run(i);
            }
            done += items;
        }
        done as f64 / (cpu_seconds() - started).max(0.01)
    };
    let split = per_cpu_second(bodies.len(), &|i| {
        std::hint::black_box(tidings_common::inbound::split_reply(&bodies[i]));
    });
    let inspect = per_cpu_second(messages.len(), &|i| {
        std::hint::black_box(tidings_common::inbound::inspect(messages[i], &context));
    });
    Ok(Extraction {
        split,
        bodies: bodies.len(),
        inspect,
        messages: messages.len(),
    })
}

/// Emails posted by the inbound role so far.
fn inbound_posted(db: &mut PgConnection) -> anyhow::Result<u64> {
    #[derive(QueryableByName)]
    struct Posted {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let posted: Posted = diesel::sql_query(
        "SELECT count(*) AS n FROM inbound_emails WHERE posted_message_id IS NOT NULL",
    )
    .get_result(db)?;
    Ok(posted.n as u64)
}

/// Waits until `count` more emails than `before` are posted; the rate from `started`.
fn wait_posted(
    db: &mut PgConnection,
    before: u64,
    count: u64,
    started: Instant,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let posted = inbound_posted(db)? - before;
        if posted >= count {
            return Ok(count as f64 / started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("only {posted} of {count} inbound replies were posted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Phase 5a: replies from one reader into one conversation, sent by smtp-source to the inbound
/// listener; the rate is from the first byte sent to the last reply posted.
fn inbound_rate(env: &BenchEnv, config: &Config, count: u64) -> anyhow::Result<f64> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let conversation = create_conversations(&mut db, env.project, &env.readers, 1, 1)?[0];
    let reader = env.readers[0];
    #[derive(QueryableByName)]
    struct Email {
        #[diesel(sql_type = diesel::sql_types::Text)]
        email: String,
    }
    let sender: Email = diesel::sql_query("SELECT email FROM people WHERE id = $1")
        .bind::<BigInt, _>(reader)
        .get_result(&mut db)?;
    let token = tidings_common::mail::ReplyToken {
        conversation_id: conversation,
        person_id: reader,
        issued_day: tidings_common::mail::epoch_day(tidings_common::clock::now()),
    };
    let address = token.address(&config.token_secret, &config.reply_domain);
    let before = inbound_posted(&mut db)?;
    let started = Instant::now();
    let status = Command::new(system::program("smtp-source"))
        .args([
            "-s",
            "8",
            "-m",
            &count.to_string(),
            "-f",
            &sender.email,
            "-t",
            &address,
        ])
        .arg(config.inbound_addr.to_string())
        .stdout(Stdio::null())
        .status()
        .context("smtp-source (Debian package postfix)")?;
    if !status.success() {
        bail!("smtp-source to the inbound listener failed: {status}");
    }
    wait_posted(&mut db, before, count, started)
}

/// One reply as a mail client writes it: new text above an attribution and the quoted
/// notification, threaded by its reply address and In-Reply-To.
fn reply_mail(sender: &str, rcpt: &str, conversation: i64, n: u64) -> String {
    format!(
        "From: Replier <{sender}>\r\nTo: <{rcpt}>\r\nSubject: Re: Bench ticket {conversation}\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench-{conversation}-{n}@client.example>\r\n\
         In-Reply-To: <notification-{conversation}@tidings.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Thanks, that fixed it. Reply number {n}: the printer works again and the queue is empty.\r\n\
         \r\nBest,\r\nReplier\r\n\r\n\
         On Tue, 1 Dec 2026 at 09:58, Tidings <support@tidings.example> wrote:\r\n\
         > Have you tried turning it off and on again?\r\n>\r\n\
         > -- \r\n> Reply to this email or open the conversation.\r\n"
    )
}

/// Sends `mails` (sender, recipient, text) over `connections` SMTP sessions at once, one
/// transaction after another on each; fails on any reply that is not a success.
async fn send_smtp(
    addr: std::net::SocketAddr,
    mails: Vec<(String, String, String)>,
    connections: usize,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    async fn expect(
        reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        code: char,
    ) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                bail!("the listener closed the session");
            }
            if !line.starts_with(code) {
                bail!("unexpected SMTP reply: {}", line.trim_end());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }
    let mut shares: Vec<Vec<(String, String, String)>> = vec![Vec::new(); connections.max(1)];
    for (i, mail) in mails.into_iter().enumerate() {
        shares[i % connections.max(1)].push(mail);
    }
    let mut sessions = tokio::task::JoinSet::new();
    for share in shares {
        sessions.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            // Each command is one write, answered before the next: no Nagle delay.
            stream.set_nodelay(true)?;
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            expect(&mut reader, '2').await?;
            write.write_all(b"EHLO bench.example\r\n").await?;
            expect(&mut reader, '2').await?;
            for (from, to, text) in share {
                write
                    .write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
                    .await?;
                expect(&mut reader, '2').await?;
                write
                    .write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())
                    .await?;
                expect(&mut reader, '2').await?;
                write.write_all(b"DATA\r\n").await?;
                expect(&mut reader, '3').await?;
                write.write_all(format!("{text}.\r\n").as_bytes()).await?;
                expect(&mut reader, '2').await?;
            }
            write.write_all(b"QUIT\r\n").await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = sessions.join_next().await {
        done??;
    }
    Ok(())
}

/// Phase 5b: replies from `senders` people, each answering their own conversation, as a relay
/// delivers them: 32 SMTP sessions at once, mails interleaved across senders. The rate is from
/// the first byte sent to the last reply posted.
async fn inbound_many_rate(
    env: &BenchEnv,
    config: &Config,
    count: u64,
    senders: u64,
) -> anyhow::Result<f64> {
    let mut db = PgConnection::establish(&env.database_url)?;
    #[derive(QueryableByName)]
    struct Pair {
        #[diesel(sql_type = BigInt)]
        person: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        email: String,
    }
    let people: Vec<Pair> = diesel::sql_query(
        "INSERT INTO people (kind, name, email)
         SELECT 'user', 'Replier ' || g, 'replier' || g || '@bench.example'
         FROM generate_series(1, $1) g RETURNING id AS person, email",
    )
    .bind::<BigInt, _>(senders as i64)
    .load(&mut db)?;
    let ids: Vec<i64> = people.iter().map(|p| p.person).collect();
    diesel::sql_query("INSERT INTO user_preferences (person_id) SELECT unnest($1::bigint[])")
        .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
        .execute(&mut db)?;
    let conversations = create_conversations(&mut db, env.project, &env.readers, senders, 1)?;
    let day = tidings_common::mail::epoch_day(tidings_common::clock::now());
    let addresses: Vec<(String, String, i64)> = people
        .iter()
        .zip(&conversations)
        .map(|(p, &conversation)| {
            let token = tidings_common::mail::ReplyToken {
                conversation_id: conversation,
                person_id: p.person,
                issued_day: day,
            };
            let rcpt = token.address(&config.token_secret, &config.reply_domain);
            (p.email.clone(), rcpt, conversation)
        })
        .collect();
    let mails: Vec<(String, String, String)> = (0..count)
        .map(|n| {
            let (from, rcpt, conversation) = &addresses[(n % senders) as usize];
            let text = reply_mail(from, rcpt, *conversation, n);
            (from.clone(), rcpt.clone(), text)
        })
        .collect();
    let before = inbound_posted(&mut db)?;
    let started = Instant::now();
    send_smtp(config.inbound_addr, mails, 32).await?;
    eprintln!(
        "bench: the listener accepted {count} replies at {:.0}/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
    wait_posted(&mut db, before, count, started)
}

fn corpora_dir() -> String {
    std::env::var("BENCH_CORPORA").unwrap_or_else(|_| "../shared/corpora".into())
}

fn row(label: String, value: String, ratio: String) {
    println!("{label:<56} {value:>16} {ratio:>10}");
}

fn per_s(v: f64) -> String {
    format!("{v:.0} /s")
}

fn print_extraction(extraction: Option<&Extraction>) {
    match extraction {
        Some(e) => {
            row(
                format!(
                    "reply extraction per CPU-second ({} decoded bodies)",
                    e.bodies
                ),
                per_s(e.split),
                String::new(),
            );
            row(
                format!(
                    "parse + classify + extract per CPU-second ({} messages)",
                    e.messages
                ),
                per_s(e.inspect),
                String::new(),
            );
        }
        None => row(
            "reply extraction per CPU-second".into(),
            "no corpora".into(),
            String::new(),
        ),
    }
}

/// The inbound rows: one sender (smtp-source) and many senders into as many conversations.
struct Inbound {
    one: f64,
    n_one: u64,
    many: f64,
    n_many: u64,
    senders: u64,
}

async fn inbound_phases(env: &BenchEnv, config: &Config) -> anyhow::Result<Inbound> {
    let n_one = knob("BENCH_INBOUND", 2_000);
    let n_many = knob("BENCH_INBOUND_MANY", 10_000);
    let senders = knob("BENCH_INBOUND_SENDERS", 100).max(1);
    eprintln!("bench: inbound, {n_one} replies from one sender (smtp-source)");
    let one = inbound_rate(env, config, n_one)?;
    eprintln!(
        "bench: inbound, {n_many} replies from {senders} senders into {senders} conversations"
    );
    let many = inbound_many_rate(env, config, n_many, senders).await?;
    Ok(Inbound {
        one,
        n_one,
        many,
        n_many,
        senders,
    })
}

fn print_inbound(inbound: &Inbound, sink_rate: f64) {
    row(
        format!(
            "inbound SMTP to posted, 1 sender ({}) vs smtp-sink",
            inbound.n_one
        ),
        per_s(inbound.one),
        format!("{:.2}x", inbound.one / sink_rate),
    );
    row(
        format!(
            "inbound SMTP to posted, {} senders ({}) vs smtp-sink",
            inbound.senders, inbound.n_many
        ),
        per_s(inbound.many),
        format!("{:.2}x", inbound.many / sink_rate),
    );
}

/// The live event feed under many open streams: `BENCH_LIVE_STREAMS` people (1,000), each
/// with the messenger's stream open and one conversation of their own; messages are posted
/// through the API at `BENCH_LIVE_RATE` per second (100) for `BENCH_LIVE_SECONDS` (10), each
/// to the next person's conversation. Measures post (request sent) to `notification` event
/// received, and the api's resident memory per open stream.
struct Live {
    streams: usize,
    posted: usize,
    received: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rss_per_stream_kib: f64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn live_phase(env: &BenchEnv, config: &Config, api_pid: u32) -> anyhow::Result<Live> {
    use std::collections::HashMap;
    let streams = knob("BENCH_LIVE_STREAMS", 1_000) as i64;
    let rate = knob("BENCH_LIVE_RATE", 100).max(1);
    let seconds = knob("BENCH_LIVE_SECONDS", 10).max(1);
    let base = format!("http://{}", config.http_addr);
    let token = config.api_token.expose().clone();
    #[derive(QueryableByName)]
    struct Pair {
        #[diesel(sql_type = BigInt)]
        person: i64,
        #[diesel(sql_type = BigInt)]
        conversation: i64,
    }
    // One reader per conversation, following its item (F1), as in the pipeline phases.
    let pairs: Vec<Pair> = {
        let mut db = PgConnection::establish(&env.database_url)?;
        diesel::sql_query(
            "WITH p AS (INSERT INTO people (kind, name, email)
                        SELECT 'user', 'Live ' || g, 'live' || g || '@bench.example'
                        FROM generate_series(1, $2) g RETURNING id),
                  up AS (INSERT INTO user_preferences (person_id) SELECT id FROM p),
                  i AS (INSERT INTO items (project_id, kind, title)
                        SELECT $1, 'ticket', 'live ' || id FROM p RETURNING id, title),
                  c AS (INSERT INTO conversations (item_id, subject)
                        SELECT id, 'Live ticket' FROM i RETURNING id, item_id),
                  f AS (INSERT INTO item_follows (item_id, person_id)
                        SELECT i.id, substr(i.title, 6)::bigint FROM i RETURNING item_id, person_id)
             SELECT f.person_id AS person, c.id AS conversation
             FROM f JOIN c ON c.item_id = f.item_id ORDER BY f.person_id",
        )
        .bind::<BigInt, _>(env.project)
        .bind::<BigInt, _>(streams)
        .load(&mut db)?
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut tokens = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let session: serde_json::Value = http
            .post(format!("{base}/people/{}/sessions", pair.person))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(session["token"].as_str().unwrap_or_default().to_string());
    }
    let before = rss_kib(api_pid).unwrap_or(0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let (open_tx, mut open_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut readers = Vec::with_capacity(tokens.len());
    for person_token in tokens {
        let (tx, open_tx) = (tx.clone(), open_tx.clone());
        // Each stream its own connection, as each browser holds its own.
        let client = reqwest::Client::new();
        let url = format!("{base}/me/events");
        readers.push(tokio::spawn(async move {
            let response = client.get(url).bearer_auth(person_token).send().await;
            let Ok(mut response) = response else {
                let _ = open_tx.send(false);
                return;
            };
            let _ = open_tx.send(response.status().is_success());
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if !block.contains("event: notification")
                        && !block.contains("event:notification")
                    {
                        continue;
                    }
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data:"))
                        .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok());
                    if let Some(id) = data.and_then(|d| d["message_id"].as_i64()) {
                        let _ = tx.send((id, Instant::now()));
                    }
                }
            }
        }));
    }
    drop((tx, open_tx));
    let mut open = 0;
    for _ in 0..readers.len() {
        match tokio::time::timeout(Duration::from_secs(30), open_rx.recv()).await {
            Ok(Some(true)) => open += 1,
            Ok(Some(false)) => {}
            _ => break,
        }
    }
    if open < readers.len() {
        bail!("only {open} of {} event streams opened", readers.len());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(api_pid).unwrap_or(0);
    // Paced posts, each to the next person's conversation.
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut posts = futures_util::stream::FuturesUnordered::new();
    let mut sent_at: HashMap<i64, Instant> = HashMap::with_capacity(total);
    let mut errors = 0usize;
    for n in 0..total {
        let due = started + interval * n as u32;
        while Instant::now() < due {
            tokio::select! {
                Some(done) = posts.next(), if !posts.is_empty() => match done {
                    Ok((id, at)) => { sent_at.insert(id, at); }
                    Err(_) => errors += 1,
                },
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        let conversation = pairs[n % pairs.len()].conversation;
        let (http, base, token, author) = (http.clone(), base.clone(), token.clone(), env.author);
        posts.push(async move {
            let at = Instant::now();
            let m: serde_json::Value = http
                .post(format!("{base}/conversations/{conversation}/messages"))
                .bearer_auth(token)
                .json(&json!({"author_id": author, "body": "Is the printer fixed?", "internal": false}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok::<_, anyhow::Error>((m["id"].as_i64().unwrap_or_default(), at))
        });
    }
    while let Some(done) = posts.next().await {
        match done {
            Ok((id, at)) => {
                sent_at.insert(id, at);
            }
            Err(_) => errors += 1,
        }
    }
    let mut received: HashMap<i64, Instant> = HashMap::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(15);
    while received.len() < sent_at.len() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((id, at))) => {
                received.entry(id).or_insert(at);
            }
            _ => break,
        }
    }
    for reader in &readers {
        reader.abort();
    }
    if errors > 0 {
        eprintln!("bench: live: {errors} posts failed");
    }
    let latencies: Vec<f64> = sent_at
        .iter()
        .filter_map(|(id, at)| {
            received
                .get(id)
                .map(|r| r.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    let max_ms = latencies.iter().copied().fold(0.0, f64::max);
    let (p50_ms, p99_ms) = p50_p99(latencies.clone());
    Ok(Live {
        streams: readers.len(),
        posted: sent_at.len(),
        received: latencies.len(),
        p50_ms,
        p99_ms,
        max_ms,
        rss_per_stream_kib: after.saturating_sub(before) as f64 / readers.len().max(1) as f64,
    })
}

fn print_live(live: &Live) {
    row(
        format!(
            "live: post to event, {} open streams, p50 / p99 / max",
            live.streams
        ),
        format!(
            "{:.0}/{:.0}/{:.0} ms",
            live.p50_ms, live.p99_ms, live.max_ms
        ),
        String::new(),
    );
    row(
        format!("live: events received of posted ({} posts)", live.posted),
        format!("{}", live.received),
        String::new(),
    );
    row(
        "live: api RSS per open stream".into(),
        format!("{:.1} KiB", live.rss_per_stream_kib),
        String::new(),
    );
}

struct BenchEnv {
    database: String,
    database_url: String,
    topology: Topology,
    project: i64,
    author: i64,
    readers: Vec<i64>,
}

fn seed(database_url: &str) -> anyhow::Result<(i64, i64, Vec<i64>)> {
    let mut db = PgConnection::establish(database_url)?;
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let project: Id =
        diesel::sql_query("INSERT INTO projects (name) VALUES ('Bench') RETURNING id")
            .get_result(&mut db)?;
    let people: Vec<Id> = diesel::sql_query(
        "INSERT INTO people (kind, name, email)
         SELECT 'user', 'Reader ' || g, 'reader' || g || '@bench.example' FROM generate_series(0, 10) g
         RETURNING id",
    )
    .load(&mut db)?;
    diesel::sql_query(
        "INSERT INTO user_preferences (person_id) SELECT id FROM people WHERE kind = 'user'",
    )
    .execute(&mut db)?;
    let mut ids: Vec<i64> = people.into_iter().map(|p| p.id).collect();
    let author = ids.remove(0);
    background(&mut db, project.id)?;
    Ok((project.id, author, ids))
}

/// A realistic background around the benchmark's own rows: `BENCH_PEOPLE` users and as many
/// customers, `BENCH_BACKGROUND` messages spread over conversations of 20 messages, each
/// author a participant with a read cursor, a tenth of the users following the project, a
/// twentieth with "From customers" set to all. None of it is notified about the benchmark's
/// messages (they are replies to customers in conversations only the readers follow), but
/// every query that scans people or messages instead of looking them up pays for it.
fn background(db: &mut PgConnection, project: i64) -> anyhow::Result<()> {
    let people = knob("BENCH_PEOPLE", 2_000) as i64;
    let messages = knob("BENCH_BACKGROUND", 100_000) as i64;
    let conversations = (messages / 20).max(1);
    for statement in [
        "INSERT INTO people (kind, name, email)
         SELECT k, initcap(k) || ' ' || g, k || g || '@background.example'
         FROM generate_series(1, $1) g, unnest(ARRAY['user', 'customer']) k",
        "INSERT INTO user_preferences (person_id, from_customers)
         SELECT id, CASE WHEN id % 20 = 0 THEN 'all' ELSE 'mine' END FROM people
         WHERE kind = 'user' ON CONFLICT DO NOTHING",
        "INSERT INTO project_follows (project_id, person_id)
         SELECT $2, id FROM people WHERE kind = 'user' AND email LIKE '%@background.example'
         AND id % 10 = 0",
        "WITH i AS (INSERT INTO items (project_id, kind, title)
                    SELECT $2, 'ticket', 'background' FROM generate_series(1, $3) RETURNING id)
         INSERT INTO conversations (item_id, subject) SELECT id, 'Background' FROM i",
        "WITH ppl AS (SELECT array_agg(id) AS ids FROM people WHERE email LIKE '%@background.example'),
              conv AS (SELECT array_agg(id) AS ids FROM conversations WHERE subject = 'Background')
         INSERT INTO messages (conversation_id, author_id, body, internal, dispatched_at)
         SELECT conv.ids[1 + g % cardinality(conv.ids)],
                ppl.ids[1 + (g * 7919) % cardinality(ppl.ids)],
                'Background message ' || g, g % 5 = 0, now()
         FROM generate_series(1, $4) g, ppl, conv",
        "INSERT INTO conversation_participants (conversation_id, person_id)
         SELECT DISTINCT conversation_id, author_id FROM messages ON CONFLICT DO NOTHING",
        "INSERT INTO seen_cursors (person_id, conversation_id, last_seen_message_id)
         SELECT author_id, conversation_id, max(id) FROM messages
         GROUP BY author_id, conversation_id ON CONFLICT DO NOTHING",
    ] {
        diesel::sql_query(statement)
            .bind::<BigInt, _>(people)
            .bind::<BigInt, _>(project)
            .bind::<BigInt, _>(conversations)
            .bind::<BigInt, _>(messages)
            .execute(db)
            .with_context(|| format!("seeding the background: {statement}"))?;
    }
    diesel::sql_query("ANALYZE").execute(db)?;
    Ok(())
}

/// Enables `pg_stat_statements` in the benchmark database when the server has it loaded;
/// says whether it did.
fn track_statements(database_url: &str) -> bool {
    #[derive(QueryableByName)]
    struct Loaded {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        loaded: bool,
    }
    let Ok(mut db) = PgConnection::establish(database_url) else {
        return false;
    };
    let loaded = diesel::sql_query(
        "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%' AS loaded",
    )
    .get_result::<Loaded>(&mut db)
    .is_ok_and(|l| l.loaded);
    loaded
        && diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut db)
            .is_ok()
}

fn drop_database(name: &str) {
    let _ = Command::new(system::program("psql"))
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn fmt_rss(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "extraction" {
        let extraction = extraction_rate(std::path::Path::new(&corpora_dir()))?;
        print_extraction(Some(&extraction));
        return Ok(());
    }
    let tidings = std::env::var("BENCH_TIDINGS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("tidings")
        });
    if !tidings.exists() {
        bail!(
            "{} not found; build it (cargo build --release) or set BENCH_TIDINGS",
            tidings.display()
        );
    }
    let run = format!(
        "{}_{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    );
    let sink_port = free_port();
    let mut sink_cmd = Command::new(system::program("smtp-sink"));
    if system::is_root() {
        sink_cmd.args(["-u", "nobody"]);
    }
    let _sink = Killed(
        sink_cmd
            // Up to 1024 simultaneous SMTP sessions (the default is 256).
            .args(["-m", "1024"])
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("5000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("smtp-sink (Debian package postfix)")?,
    );
    let database = format!("tidings_bench_{run}");
    let database_url = format!("{DB_SERVER}/{database}");
    let mut vars: Vec<(&str, String)> = vec![
        ("TIDINGS_DATABASE_URL", database_url.clone()),
        ("TIDINGS_AMQP_URL", AMQP_URL.into()),
        ("TIDINGS_SMTP_URL", format!("smtp://127.0.0.1:{sink_port}")),
        ("TIDINGS_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("TIDINGS_INBOUND_ADDR", format!("127.0.0.1:{}", free_port())),
        // A thousand event streams, and the connections posting beside them.
        ("TIDINGS_HTTP_MAX_CONNECTIONS", "4096".into()),
        // The loop-defence limit would stop a benchmark's single sender.
        ("TIDINGS_INBOUND_RATE", "1000000/1m".into()),
        ("TIDINGS_SEEN_WINDOW", WINDOW.into()),
        ("TIDINGS_QUEUE_PREFIX", format!("bench_{run}")),
        ("TIDINGS_SWEEP_INTERVAL", "10m".into()),
        (
            "TIDINGS_LOG",
            std::env::var("TIDINGS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        (
            "TIDINGS_TEMPLATES_DIR",
            std::env::var("TIDINGS_TEMPLATES_DIR").unwrap_or_else(|_| "templates".into()),
        ),
    ];
    // The product's defaults, unless set for this run.
    for knob in [
        "TIDINGS_PREFETCH",
        "TIDINGS_SMTP_CONCURRENCY",
        "TIDINGS_DB_POOL_SIZE",
    ] {
        if let Ok(value) = std::env::var(knob) {
            vars.push((knob, value));
        }
    }
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    let status = Command::new(&tidings)
        .arg("migrate")
        .envs(vars.iter().cloned())
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("tidings migrate failed");
    }
    let statements = track_statements(&database_url);
    let phases = run_phases(
        &tidings,
        &vars,
        &config,
        &database,
        &database_url,
        (sink_port, _sink.0.id()),
        statements,
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Interrupted, the phases are dropped (which stops the role processes); the queues,
    // exchanges and database are removed either way.
    let result = tokio::select! {
        result = phases => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    if result.is_err()
        && let Ok(conn) = amqp::connect(AMQP_URL, "bench").await
        && let Ok(channel) = conn.create_channel().await
    {
        for prefix in [
            config.queue_prefix.clone(),
            format!("{}_raw", config.queue_prefix),
        ] {
            let mut topology = Topology::from_config(&config);
            topology.prefix = prefix;
            let _ = topology.delete(&channel).await;
        }
    }
    drop_database(&database);
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_phases(
    tidings: &PathBuf,
    vars: &[(&str, String)],
    config: &Config,
    database: &str,
    database_url: &str,
    (sink_port, sink_pid): (u16, u32),
    statements: bool,
) -> anyhow::Result<()> {
    let n_baseline = knob("BENCH_BASELINE", 20_000);
    let n_fanout1 = knob("BENCH_FANOUT1", 20_000);
    let n_fanout10 = knob("BENCH_FANOUT10", 3_000);
    let step_seconds = knob("BENCH_STEP_SECONDS", 30);
    let steps = knob("BENCH_STEPS", 6);
    let conn = amqp::connect(AMQP_URL, "bench").await?;
    let corpora = corpora_dir();
    eprintln!("bench: reply extraction over {corpora}");
    let extraction = extraction_rate(std::path::Path::new(&corpora)).ok();

    eprintln!("bench: baseline, {n_baseline} raw messages through the delay topology");
    let mut raw = Topology::from_config(config);
    raw.prefix = format!("{}_raw", config.queue_prefix);
    let baseline_rate = baseline(&conn, &raw, n_baseline).await?;
    eprintln!("bench: smtp-sink acceptance with smtp-source");
    let sink_rate = smtp_sink_rate(sink_port, 20_000)?;

    eprintln!("bench: seeding the background");
    let (project, author, readers) = seed(database_url)?;
    let spawn = |role: &str| -> anyhow::Result<Killed> {
        Ok(Killed(
            Command::new(tidings)
                .args(["run", role])
                .envs(vars.iter().cloned())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?,
        ))
    };
    let api = spawn("api")?;
    let dispatch = spawn("dispatch")?;
    let mailer = spawn("mailer")?;
    let inbound = spawn("inbound")?;
    let processes = Processes {
        roles: vec![
            ("api", api.0.id()),
            ("dispatch", dispatch.0.id()),
            ("mailer", mailer.0.id()),
            ("inbound", inbound.0.id()),
        ],
        sink: sink_pid,
    };
    let env = BenchEnv {
        database: database.to_string(),
        database_url: database_url.to_string(),
        topology: Topology::from_config(config),
        project,
        author,
        readers,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "live") {
        eprintln!("bench: live event streams");
        let live = live_phase(&env, config, processes.roles[0].1).await?;
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        print_live(&live);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "inbound") {
        let replies = inbound_phases(&env, config).await?;
        // The roles stop first, so none of them sees its queues vanish.
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        row(
            "baseline: smtp-sink acceptance (smtp-source)".into(),
            per_s(sink_rate),
            String::new(),
        );
        print_inbound(&replies, sink_rate);
        print_extraction(extraction.as_ref());
        return Ok(());
    }
    eprintln!("bench: pipeline at fan-out 1, {n_fanout1} messages");
    let fan1 = pipeline(&env, &conn, &processes, n_fanout1, 1).await?;
    eprintln!("bench: pipeline at fan-out 10, {n_fanout10} messages");
    let fan10 = pipeline(&env, &conn, &processes, n_fanout10, 10).await?;
    let top = if statements {
        top_statements(&mut PgConnection::establish(database_url)?, 10)
    } else {
        Vec::new()
    };
    let (held1, tried1) =
        sustained(&env, &conn, &processes, 1, fan1.rate, step_seconds, steps).await?;
    let (held10, tried10) =
        sustained(&env, &conn, &processes, 10, fan10.rate, step_seconds, steps).await?;
    let replies = inbound_phases(&env, config).await?;
    eprintln!("bench: live event streams");
    let live = live_phase(&env, config, processes.roles[0].1).await?;
    let rss: Vec<(&str, Option<u64>)> = processes
        .roles
        .iter()
        .map(|(role, pid)| (*role, peak_rss_kib(*pid)))
        .collect();
    drop((api, dispatch, mailer, inbound));
    let channel = conn.create_channel().await?;
    env.topology.delete(&channel).await?;

    let ratio1 = fan1.rate / baseline_rate;
    let ratio10 = fan10.rate / baseline_rate;
    println!();
    println!(
        "Tidings benchmark ({} queues, window {WINDOW}, {} cores)",
        config.queue_type.as_str(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "settings: TIDINGS_PREFETCH={} TIDINGS_SMTP_CONCURRENCY={} TIDINGS_DB_POOL_SIZE={}; background {} people, {} messages; steady steps {} s; pg_stat_statements {}",
        config.prefetch,
        config.smtp_concurrency,
        config.db_pool_size,
        2 * knob("BENCH_PEOPLE", 2_000),
        knob("BENCH_BACKGROUND", 100_000),
        step_seconds,
        if statements { "on" } else { "not loaded" }
    );
    row("measure".into(), "value".into(), "ratio".into());
    row(
        "baseline: raw AMQP through the delay".into(),
        per_s(baseline_rate),
        "1.00x".into(),
    );
    row(
        "baseline: smtp-sink acceptance (smtp-source)".into(),
        per_s(sink_rate),
        String::new(),
    );
    row(
        format!("pipeline fan-out 1 ({} notifications)", fan1.notifications),
        per_s(fan1.rate),
        format!("{ratio1:.2}x"),
    );
    row(
        format!(
            "pipeline fan-out 10 ({} notifications)",
            fan10.notifications
        ),
        per_s(fan10.rate),
        format!("{ratio10:.2}x"),
    );
    row(
        "pipeline fan-out 1 vs smtp-sink acceptance".into(),
        per_s(fan1.rate),
        format!("{:.2}x", fan1.rate / sink_rate),
    );
    for (fanout, held, burst) in [(1, &held1, fan1.rate), (10, &held10, fan10.rate)] {
        match held {
            Some(l) => {
                row(
                    format!("sustained fan-out {fanout}: p99 < 250 ms at (vs burst)"),
                    per_s(l.offered_rate),
                    format!("{:.2}x", l.offered_rate / burst),
                );
                row(
                    format!(
                        "  lateness there p50 / p99 / max ({} notifications)",
                        l.notifications
                    ),
                    format!("{:.0}/{:.0}/{:.0} ms", l.p50_ms, l.p99_ms, l.max_ms),
                    String::new(),
                );
                let total = l
                    .cost
                    .iter()
                    .find(|(g, _)| g == "total")
                    .map_or(0.0, |(_, ms)| *ms);
                row(
                    "  CPU ms per notification there, all processes".into(),
                    format!("{total:.3}"),
                    String::new(),
                );
            }
            None => row(
                format!("sustained fan-out {fanout}: p99 < 250 ms at (vs burst)"),
                "none held".into(),
                "0.00x".into(),
            ),
        }
    }
    for (fanout, result) in [(1, &fan1), (10, &fan10)] {
        let cost: Vec<String> = result
            .cost
            .iter()
            .map(|(group, ms)| format!("{group} {ms:.3}"))
            .collect();
        println!(
            "CPU ms per notification, fan-out {fanout}: {}",
            cost.join(", ")
        );
        if let Some(statements) = result.statements {
            row(
                format!("database statements per notification, fan-out {fanout}"),
                format!("{statements:.2}"),
                String::new(),
            );
        }
    }
    if !top.is_empty() {
        println!(
            "database time by statement over both pipeline phases (calls, total ms, mean ms):"
        );
        for (calls, total, mean, query) in &top {
            println!("  {calls:>7} {total:>9.0} {mean:>8.3}  {query}");
        }
    }
    for (role, kib) in &rss {
        row(format!("peak RSS {role}"), fmt_rss(*kib), String::new());
    }
    print_inbound(&replies, sink_rate);
    print_extraction(extraction.as_ref());
    print_live(&live);
    if fan1.sent != fan1.notifications || fan10.sent != fan10.notifications {
        println!(
            "warning: not every notification was sent ({}, {})",
            fan1.sent, fan10.sent
        );
    }
    let steps_json = |tried: &[Lateness]| {
        tried
            .iter()
            .map(|l| json!({"asked": l.asked_rate, "offered": l.offered_rate, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "max_ms": l.max_ms, "held": l.held(), "cpu_ms_per_notification": l.cost.iter().map(|(g, ms)| (g.clone(), json!(ms))).collect::<serde_json::Map<_, _>>()}))
            .collect::<Vec<_>>()
    };
    let cost_json = |cost: &[(String, f64)]| {
        cost.iter()
            .map(|(g, ms)| (g.clone(), json!(ms)))
            .collect::<serde_json::Map<_, _>>()
    };
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench-results.json".into());
    let report = json!({
        "when": tidings_common::clock::now(),
        "database": env.database,
        "queue_type": config.queue_type.as_str(),
        "window_ms": env.topology.seen_window.as_millis() as u64,
        "settings": {"prefetch": config.prefetch, "smtp_concurrency": config.smtp_concurrency, "db_pool_size": config.db_pool_size},
        "baseline_amqp_per_s": baseline_rate,
        "smtp_sink_per_s": sink_rate,
        "live": {"streams": live.streams, "posted": live.posted, "received": live.received, "p50_ms": live.p50_ms, "p99_ms": live.p99_ms, "max_ms": live.max_ms, "api_rss_kib_per_stream": live.rss_per_stream_kib},
        "pipeline_fanout1_per_s": fan1.rate,
        "pipeline_fanout10_per_s": fan10.rate,
        "ratio_fanout1": ratio1,
        "ratio_fanout10": ratio10,
        "sustained_fanout1_per_s": held1.as_ref().map(|l| l.offered_rate),
        "sustained_fanout10_per_s": held10.as_ref().map(|l| l.offered_rate),
        "steady_steps_fanout1": steps_json(&tried1),
        "steady_steps_fanout10": steps_json(&tried10),
        "cpu_ms_per_notification_fanout1": cost_json(&fan1.cost),
        "cpu_ms_per_notification_fanout10": cost_json(&fan10.cost),
        "statements_per_notification_fanout1": fan1.statements,
        "statements_per_notification_fanout10": fan10.statements,
        "top_statements": top.iter().map(|(c, t, m, q)| json!({"calls": c, "total_ms": t, "mean_ms": m, "query": q})).collect::<Vec<_>>(),
        "peak_rss_kib": rss.iter().map(|(r, k)| (r.to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
        "inbound_one_sender_per_s": replies.one,
        "inbound_many_senders_per_s": replies.many,
        "inbound_senders": replies.senders,
        "ratio_inbound_vs_smtp_sink": replies.many / sink_rate,
        "extraction_per_cpu_s": extraction.as_ref().map(|e| e.split),
        "inspect_per_cpu_s": extraction.as_ref().map(|e| e.inspect),
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("\nresults written to {out}");
    Ok(())
}
