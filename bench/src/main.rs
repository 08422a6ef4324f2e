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
//! 4. delay precision: lateness (email accepted − message posted − window) at a steady rate;
//! 5. peak RSS of each role process.
//!
//! Every loop is bounded in count and time; traffic goes to 127.0.0.1 only.
//!
//! Knobs (environment): `BENCH_BASELINE` (messages, default 20000), `BENCH_FANOUT1`
//! (messages, 20000), `BENCH_FANOUT10` (messages, 3000), `BENCH_RATE` (notifications/s, 2000),
//! `BENCH_SECONDS` (10), `BENCH_OUT` (JSON file, `bench-results.json`), `BENCH_TIDINGS`
//! (path of the `tidings` binary, default beside this one).

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

fn postfix_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/lib/postfix/sbin", "/usr/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
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
    let status = Command::new(postfix_tool("smtp-source"))
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
    let deadline = Instant::now() + timeout;
    loop {
        let p: Progress = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE state IN ('sent', 'skipped', 'failed')) AS done,
                    count(*) FILTER (WHERE state = 'sent') AS sent, max(sent_at) AS last
             FROM notifications WHERE message_id = ANY($1)",
        )
        .bind::<diesel::sql_types::Array<BigInt>, _>(messages)
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct PipelineResult {
    notifications: i64,
    sent: i64,
    rate: f64,
}

/// Phase 3: `messages` messages at `fanout` recipients each, from event to accepted email.
async fn pipeline(
    env: &BenchEnv,
    conn: &Connection,
    messages: u64,
    fanout: usize,
) -> anyhow::Result<PipelineResult> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let conversations = create_conversations(&mut db, env.project, &env.readers, messages, fanout)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
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
    let elapsed = (last - started).as_seconds_f64() - env.topology.seen_window.as_secs_f64();
    Ok(PipelineResult {
        notifications: expected,
        sent,
        rate: expected as f64 / elapsed,
    })
}

struct Lateness {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    notifications: i64,
    offered_rate: f64,
}

/// Phase 4: a steady `rate` notifications/s (fan-out 1) for `seconds`. Messages are written
/// beforehand; the paced loop only publishes their events and notes when. Lateness is email
/// accepted (the mailer's `sent_at`) − event published − window.
async fn delay_precision(
    env: &BenchEnv,
    conn: &Connection,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Lateness> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let total = rate * seconds;
    let conversations = create_conversations(&mut db, env.project, &env.readers, total, 1)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let tick = Duration::from_millis(10);
    let per_tick = (rate as f64 * tick.as_secs_f64()).round().max(1.0) as usize;
    let mut published: Vec<(i64, chrono::DateTime<Utc>)> = Vec::with_capacity(ids.len());
    let started = Instant::now();
    let mut next = started;
    for chunk in ids.chunks(per_tick) {
        let at = tidings_common::clock::now();
        publish_pipelined(
            &channel,
            &env.topology.events_exchange(),
            MESSAGE_POSTED,
            chunk.iter().map(|&id| event(id)),
        )
        .await?;
        published.extend(chunk.iter().map(|&id| (id, at)));
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    let offered_rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    wait_terminal(&mut db, &ids, ids.len() as i64, Duration::from_secs(600))?;
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
    let mut late: Vec<f64> = sent
        .iter()
        .filter_map(|(id, sent_at)| Some((*sent_at)? - *at.get(id)?))
        .map(|d| d.as_seconds_f64() * 1000.0 - window_ms)
        .collect();
    late.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        late.get(((late.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Lateness {
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: late.last().copied().unwrap_or(f64::NAN),
        notifications: late.len() as i64,
        offered_rate,
    })
}

/// CPU time (user + system) this process has used, from /proc (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .unwrap_or_default()
        .split(' ')
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Phase 6: parse + classify + extract over every body in the corpora, per CPU-second.
fn extraction_rate(corpora: &std::path::Path) -> anyhow::Result<(f64, usize)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(bool, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                // Raw messages (.eml) go through the whole path; plain bodies (.txt under an
                // emails folder) through the extractor alone.
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
    let mut bodies = Vec::new();
    walk(corpora, &mut bodies);
    if bodies.is_empty() {
        bail!("no email bodies under {}", corpora.display());
    }
    let context = tidings_common::inbound::InboundContext {
        reply_domain: "reply.tidings.localhost".into(),
        own_address: None,
        authserv_id: None,
    };
    let started = cpu_seconds();
    let wall = Instant::now();
    let mut done = 0usize;
    while wall.elapsed() < Duration::from_secs(3) {
        for (is_email, bytes) in &bodies {
            if *is_email {
                std::hint::black_box(tidings_common::inbound::inspect(bytes, &context));
            } else {
                std::hint::black_box(tidings_common::inbound::split_reply(
                    &String::from_utf8_lossy(bytes),
                ));
            }
            done += 1;
        }
    }
    let cpu = (cpu_seconds() - started).max(0.01);
    Ok((done as f64 / cpu, bodies.len()))
}

/// Phase 5: replies from one reader into one conversation, sent by smtp-source to the inbound
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
    let started = Instant::now();
    let status = Command::new(postfix_tool("smtp-source"))
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
    #[derive(QueryableByName)]
    struct Posted {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let posted: Posted = diesel::sql_query(
            "SELECT count(*) AS n FROM inbound_emails WHERE posted_message_id IS NOT NULL",
        )
        .get_result(&mut db)?;
        if posted.n as u64 >= count {
            return Ok(count as f64 / started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("only {} of {count} inbound replies were posted", posted.n);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    Ok((project.id, author, ids))
}

fn drop_database(name: &str) {
    let _ = Command::new("psql")
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
    let mut sink_cmd = Command::new(postfix_tool("smtp-sink"));
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
    {
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
    let vars: Vec<(&str, String)> = vec![
        ("TIDINGS_DATABASE_URL", database_url.clone()),
        ("TIDINGS_AMQP_URL", AMQP_URL.into()),
        ("TIDINGS_SMTP_URL", format!("smtp://127.0.0.1:{sink_port}")),
        ("TIDINGS_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("TIDINGS_INBOUND_ADDR", format!("127.0.0.1:{}", free_port())),
        // The loop-defence limit would stop a benchmark's single sender.
        ("TIDINGS_INBOUND_RATE", "1000000/1m".into()),
        ("TIDINGS_SEEN_WINDOW", WINDOW.into()),
        ("TIDINGS_QUEUE_PREFIX", format!("bench_{run}")),
        ("TIDINGS_SWEEP_INTERVAL", "10m".into()),
        (
            "TIDINGS_SMTP_CONCURRENCY",
            std::env::var("TIDINGS_SMTP_CONCURRENCY").unwrap_or_else(|_| "256".into()),
        ),
        (
            "TIDINGS_PREFETCH",
            std::env::var("TIDINGS_PREFETCH").unwrap_or_else(|_| "1024".into()),
        ),
        ("TIDINGS_DB_POOL_SIZE", "16".into()),
        (
            "TIDINGS_LOG",
            std::env::var("TIDINGS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        (
            "TIDINGS_TEMPLATES_DIR",
            std::env::var("TIDINGS_TEMPLATES_DIR").unwrap_or_else(|_| "templates".into()),
        ),
    ];
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
    let result = run_phases(
        &tidings,
        &vars,
        &config,
        &database,
        &database_url,
        sink_port,
    )
    .await;
    drop_database(&database);
    result
}

async fn run_phases(
    tidings: &PathBuf,
    vars: &[(&str, String)],
    config: &Config,
    database: &str,
    database_url: &str,
    sink_port: u16,
) -> anyhow::Result<()> {
    let n_baseline = knob("BENCH_BASELINE", 20_000);
    let n_fanout1 = knob("BENCH_FANOUT1", 20_000);
    let n_fanout10 = knob("BENCH_FANOUT10", 3_000);
    let rate = knob("BENCH_RATE", 2_000);
    let seconds = knob("BENCH_SECONDS", 10);
    let conn = amqp::connect(AMQP_URL, "bench").await?;
    let corpora = std::env::var("BENCH_CORPORA").unwrap_or_else(|_| "../shared/corpora".into());
    eprintln!("bench: reply extraction over {corpora}");
    let extraction = extraction_rate(std::path::Path::new(&corpora)).ok();

    eprintln!("bench: baseline, {n_baseline} raw messages through the delay topology");
    let mut raw = Topology::from_config(config);
    raw.prefix = format!("{}_raw", config.queue_prefix);
    let baseline_rate = baseline(&conn, &raw, n_baseline).await?;
    eprintln!("bench: smtp-sink acceptance with smtp-source");
    let sink_rate = smtp_sink_rate(sink_port, 20_000)?;

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
    let (project, author, readers) = seed(database_url)?;
    let env = BenchEnv {
        database: database.to_string(),
        database_url: database_url.to_string(),
        topology: Topology::from_config(config),
        project,
        author,
        readers,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("bench: pipeline at fan-out 1, {n_fanout1} messages");
    let fan1 = pipeline(&env, &conn, n_fanout1, 1).await?;
    eprintln!("bench: pipeline at fan-out 10, {n_fanout10} messages");
    let fan10 = pipeline(&env, &conn, n_fanout10, 10).await?;
    eprintln!("bench: delay precision at {rate} notifications/s for {seconds} s");
    let late = delay_precision(&env, &conn, rate, seconds).await?;
    let n_inbound = knob("BENCH_INBOUND", 2_000);
    eprintln!("bench: inbound, {n_inbound} replies through the SMTP listener (smtp-source)");
    let inbound_rate = inbound_rate(&env, config, n_inbound)?;
    let rss = [
        ("api", peak_rss_kib(api.0.id())),
        ("dispatch", peak_rss_kib(dispatch.0.id())),
        ("mailer", peak_rss_kib(mailer.0.id())),
        ("inbound", peak_rss_kib(inbound.0.id())),
    ];
    let channel = conn.create_channel().await?;
    env.topology.delete(&channel).await?;
    drop((api, dispatch, mailer, inbound));

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
    println!("{:<52} {:>14} {:>10}", "measure", "value", "ratio");
    println!(
        "{:<52} {:>10.0} /s {:>10}",
        "baseline: raw AMQP through the delay", baseline_rate, "1.00x"
    );
    println!(
        "{:<52} {:>10.0} /s {:>10}",
        "baseline: smtp-sink acceptance (smtp-source)", sink_rate, ""
    );
    println!(
        "{:<52} {:>10.0} /s {:>9.2}x",
        format!("pipeline fan-out 1 ({} notifications)", fan1.notifications),
        fan1.rate,
        ratio1
    );
    println!(
        "{:<52} {:>10.0} /s {:>9.2}x",
        format!(
            "pipeline fan-out 10 ({} notifications)",
            fan10.notifications
        ),
        fan10.rate,
        ratio10
    );
    println!(
        "{:<52} {:>10.0} /s {:>9.2}x",
        "pipeline fan-out 1 vs smtp-sink acceptance",
        fan1.rate,
        fan1.rate / sink_rate
    );
    println!(
        "{:<52} {:>11.1} ms",
        format!(
            "lateness p50 at {:.0}/s ({} notifications)",
            late.offered_rate, late.notifications
        ),
        late.p50_ms
    );
    println!("{:<52} {:>11.1} ms", "lateness p99", late.p99_ms);
    println!("{:<52} {:>11.1} ms", "lateness max", late.max_ms);
    for (role, kib) in rss {
        println!("{:<52} {:>14}", format!("peak RSS {role}"), fmt_rss(kib));
    }
    println!(
        "{:<52} {:>10.0} /s {:>9.2}x",
        format!("inbound SMTP ingress to posted ({n_inbound}) vs smtp-sink"),
        inbound_rate,
        inbound_rate / sink_rate
    );
    match extraction {
        Some((rate, bodies)) => println!(
            "{:<52} {:>10.0} /s",
            format!("reply extraction per CPU-second ({bodies} bodies)"),
            rate
        ),
        None => println!(
            "{:<52} {:>14}",
            "reply extraction per CPU-second", "no corpora"
        ),
    }
    if fan1.sent != fan1.notifications || fan10.sent != fan10.notifications {
        println!(
            "warning: not every notification was sent ({}, {})",
            fan1.sent, fan10.sent
        );
    }
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench-results.json".into());
    let report = json!({
        "when": tidings_common::clock::now(),
        "database": env.database,
        "queue_type": config.queue_type.as_str(),
        "window_ms": env.topology.seen_window.as_millis() as u64,
        "baseline_amqp_per_s": baseline_rate,
        "smtp_sink_per_s": sink_rate,
        "pipeline_fanout1_per_s": fan1.rate,
        "pipeline_fanout10_per_s": fan10.rate,
        "ratio_fanout1": ratio1,
        "ratio_fanout10": ratio10,
        "lateness_ms": {"offered_rate": late.offered_rate, "p50": late.p50_ms, "p99": late.p99_ms, "max": late.max_ms},
        "peak_rss_kib": rss.iter().map(|(r, k)| (r.to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
        "inbound_per_s": inbound_rate,
        "ratio_inbound_vs_smtp_sink": inbound_rate / sink_rate,
        "extraction_per_cpu_s": extraction.map(|(rate, _)| rate),
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("\nresults written to {out}");
    Ok(())
}
