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
//! One file per phase: `baseline.rs` (1, 2), `pipeline.rs` (3), `sustained.rs` (4),
//! `inbound.rs` (inbound rows and extraction), `live.rs` (live events), `dkim.rs` (the cost of
//! DKIM signing against unsigned emails); `kit.rs` holds what
//! they share (processes, the database and its background, printing). This file runs them
//! in order and prints the table.
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

mod baseline;
mod console;
mod dkim;
mod files;
mod history;
mod inbound;
mod kit;
mod live;
mod pipeline;
mod soak;
mod sustained;
mod tls;

use baseline::*;
use console::*;
use dkim::*;
use files::*;
use history::*;
use inbound::*;
use kit::*;
use live::*;
use pipeline::*;
use soak::*;
use sustained::*;

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

/// The broker of this run: `BENCH_AMQP_URL`, or the local node.
fn amqp_url() -> String {
    std::env::var("BENCH_AMQP_URL").unwrap_or_else(|_| AMQP_URL.into())
}

/// Publisher confirms kept outstanding at once.
const CONFIRM_WINDOW: usize = 512;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "extraction" {
        let extraction = extraction_rate(std::path::Path::new(&corpora_dir()))?;
        print_extraction(Some(&extraction));
        return Ok(());
    }
    if only == "dkim" {
        print_signing(Some(&signing_rate()?));
        return Ok(());
    }
    if only == "tls" {
        return tls::tls_phase().await;
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
    let mut database_url = format!("{DB_SERVER}/{database}");
    if let Ok(options) = std::env::var("BENCH_DATABASE_OPTIONS") {
        database_url = format!("{database_url}?{options}");
    }
    let mut vars: Vec<(&str, String)> = vec![
        ("TIDINGS_DATABASE_URL", database_url.clone()),
        ("TIDINGS_AMQP_URL", amqp_url()),
        ("TIDINGS_SMTP_URL", format!("smtp://127.0.0.1:{sink_port}")),
        ("TIDINGS_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("TIDINGS_INBOUND_ADDR", format!("127.0.0.1:{}", free_port())),
        // A thousand event streams, and the connections posting beside them.
        ("TIDINGS_HTTP_MAX_CONNECTIONS", "4096".into()),
        // The loop-defence limit would stop a benchmark's single sender.
        ("TIDINGS_INBOUND_RATE", "1000000/1m".into()),
        // The live phase posts as one author, far beyond a person's rate.
        ("TIDINGS_POST_RATE", "1000000/1m".into()),
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
        "TIDINGS_KEEP_SOURCE",
        "TIDINGS_AMQP_CA",
    ] {
        if let Ok(value) = std::env::var(knob) {
            vars.push((knob, value));
        }
    }
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    amqp::use_tls(config.amqp_tls.clone());
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
        && let Ok(conn) = amqp::connect(&amqp_url(), "bench").await
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
    let conn = amqp::connect(&amqp_url(), "bench").await?;
    let corpora = corpora_dir();
    eprintln!("bench: reply extraction over {corpora}");
    let extraction = extraction_rate(std::path::Path::new(&corpora)).ok();
    eprintln!("bench: DKIM signing");
    let signing = signing_rate()
        .inspect_err(|e| eprintln!("bench: DKIM signing not measured: {e}"))
        .ok();

    eprintln!("bench: baseline, {n_baseline} raw messages through the delay topology");
    let mut raw = Topology::from_config(config);
    raw.prefix = format!("{}_raw", config.queue_prefix);
    let baseline_rate = baseline(&conn, &raw, n_baseline).await?;
    eprintln!("bench: smtp-sink acceptance with smtp-source");
    let sink_rate = smtp_sink_rate(sink_port, 20_000)?;

    eprintln!("bench: seeding the background");
    let (project, author, readers) = seed(database_url)?;
    // Each role serves /metrics on a port of its own (the soak reads its pool waits).
    let metrics: MetricsPorts = ["api", "dispatch", "mailer", "inbound"]
        .into_iter()
        .map(|role| (role, free_port()))
        .collect();
    let spawn = |role: &str| -> anyhow::Result<Killed> {
        let port = metrics
            .iter()
            .find(|(r, _)| *r == role)
            .map_or(0, |(_, p)| *p);
        Ok(Killed(
            Command::new(tidings)
                .args(["run", role])
                .envs(vars.iter().cloned())
                .env("TIDINGS_METRICS_ADDR", format!("127.0.0.1:{port}"))
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
        let live = live_phase(&env, &conn, config, processes.roles[0].1).await?;
        let again = match with_history(&env)? {
            Some(history) => Some((
                history,
                live_phase(&env, &conn, config, processes.roles[0].1).await?,
            )),
            None => None,
        };
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        print_live(&live);
        if let Some((history, later)) = again {
            print_history(&history);
            print_live(&later);
        }
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "console") {
        eprintln!("bench: the admin console over a busy log");
        let console = console_phase(&env, config).await?;
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        print_console(&console);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "files") {
        eprintln!("bench: files");
        let files = files_phase(&env, config, &processes).await?;
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        print_files(&files);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "inbound") {
        let replies = inbound_phases(&env, config).await?;
        let again = match with_history(&env)? {
            Some(history) => Some((history, inbound_phases(&env, config).await?)),
            None => None,
        };
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
        if let Some((history, later)) = again {
            print_history(&history);
            print_inbound(&later, sink_rate);
            against_fresh("inbound, 1 sender", replies.one, later.one);
            against_fresh("inbound, many senders", replies.many, later.many);
        }
        print_extraction(extraction.as_ref());
        print_signing(signing.as_ref());
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "history") {
        // The pipeline, inbound and live rows on the fresh database, then again over a year
        // of history, in one run.
        let mut runs: Vec<HistoryRun> = Vec::new();
        for pass in ["fresh", "history"] {
            let history = if pass == "history" {
                eprintln!("bench: writing a year of history");
                Some(seed_history(&env.database_url, env.project)?)
            } else {
                None
            };
            eprintln!("bench: {pass}: pipeline at fan-out 1 and 10");
            let fan1 = pipeline(&env, &conn, &processes, n_fanout1, 1).await?;
            let fan10 = pipeline(&env, &conn, &processes, n_fanout10, 10).await?;
            // Both passes step through the same offered rates: those of the fresh bursts.
            let (base1, base10) = runs
                .first()
                .map_or((fan1.rate, fan10.rate), |r: &HistoryRun| {
                    (r.1.rate, r.2.rate)
                });
            eprintln!("bench: {pass}: sustained rates");
            let (held1, _) =
                sustained(&env, &conn, &processes, 1, base1, step_seconds, steps).await?;
            let (held10, _) =
                sustained(&env, &conn, &processes, 10, base10, step_seconds, steps).await?;
            let replies = inbound_phases(&env, config).await?;
            eprintln!("bench: {pass}: live event streams");
            let live = live_phase(&env, &conn, config, processes.roles[0].1).await?;
            runs.push((
                history,
                fan1,
                fan10,
                replies,
                live,
                [(held1, base1), (held10, base10)],
            ));
        }
        let top = if statements {
            top_statements(&mut PgConnection::establish(database_url)?, 10)
        } else {
            Vec::new()
        };
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        row(
            "baseline: raw AMQP through the delay".into(),
            per_s(baseline_rate),
            "1.00x".into(),
        );
        for (history, fan1, fan10, replies, live, held) in &runs {
            match history {
                Some(history) => print_history(history),
                None => println!("fresh database:"),
            }
            print_pipelines(baseline_rate, sink_rate, fan1, fan10);
            print_sustained(&[(1, &held[0].0, held[0].1), (10, &held[1].0, held[1].1)]);
            print_costs(fan1, fan10, &[]);
            print_inbound(replies, sink_rate);
            print_live(live);
        }
        let (fresh, later) = (&runs[0], &runs[1]);
        against_fresh("pipeline fan-out 1", fresh.1.rate, later.1.rate);
        against_fresh("pipeline fan-out 10", fresh.2.rate, later.2.rate);
        for (n, fanout) in [(0, 1), (1, 10)] {
            let rate = |held: &Option<Lateness>| held.as_ref().map_or(0.0, |l| l.offered_rate);
            against_fresh(
                &format!("sustained fan-out {fanout}"),
                rate(&fresh.5[n].0),
                rate(&later.5[n].0),
            );
        }
        against_fresh("inbound, 1 sender", fresh.3.one, later.3.one);
        against_fresh("inbound, many senders", fresh.3.many, later.3.many);
        if !top.is_empty() {
            println!("database time by statement over the whole run (calls, total ms, mean ms):");
            for (calls, total, mean, query) in &top {
                println!("  {calls:>7} {total:>9.0} {mean:>8.3}  {query}");
            }
        }
        return Ok(());
    }
    if let Some(minutes) = soak_minutes() {
        let mut soaks = Vec::new();
        for fanout in soak_fanouts() {
            let (rate, burst) = match std::env::var(format!("BENCH_SOAK_RATE{fanout}"))
                .ok()
                .and_then(|r| r.parse::<f64>().ok())
            {
                Some(rate) => (rate, None),
                None => {
                    let n = if fanout == 1 { n_fanout1 } else { n_fanout10 };
                    eprintln!("bench: pipeline at fan-out {fanout}, {n} messages");
                    let burst = pipeline(&env, &conn, &processes, n, fanout).await?;
                    let (held, _) = sustained(
                        &env,
                        &conn,
                        &processes,
                        fanout,
                        burst.rate,
                        step_seconds,
                        steps,
                    )
                    .await?;
                    let Some(held) = held else {
                        bail!("no steady rate held at fan-out {fanout}: nothing to soak");
                    };
                    (held.asked_rate, Some(burst.rate))
                }
            };
            soaks.push(
                soak(
                    &env, &conn, &processes, &metrics, fanout, rate, burst, minutes,
                )
                .await?,
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        for soak in &soaks {
            print_soak(soak);
        }
        let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench-soak.json".into());
        let report = json!({
            "when": tidings_common::clock::now(),
            "window_ms": env.topology.seen_window.as_millis() as u64,
            "settings": {"prefetch": config.prefetch, "smtp_concurrency": config.smtp_concurrency, "db_pool_size": config.db_pool_size},
            "soaks": soaks.iter().map(Soak::json).collect::<Vec<_>>(),
        });
        std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
        println!("\nresults written to {out}");
        if soaks.iter().any(|s| !s.held()) {
            bail!("a soak did not hold");
        }
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
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "pipeline") {
        let again = match with_history(&env)? {
            Some(history) => {
                eprintln!("bench: pipeline at fan-out 1 over the history");
                let fan1 = pipeline(&env, &conn, &processes, n_fanout1, 1).await?;
                eprintln!("bench: pipeline at fan-out 10 over the history");
                let fan10 = pipeline(&env, &conn, &processes, n_fanout10, 10).await?;
                Some((history, fan1, fan10))
            }
            None => None,
        };
        let rss: Vec<(&str, Option<u64>)> = processes
            .roles
            .iter()
            .map(|(role, pid)| (*role, peak_rss_kib(*pid)))
            .collect();
        drop((api, dispatch, mailer, inbound));
        let channel = conn.create_channel().await?;
        env.topology.delete(&channel).await?;
        println!();
        row(
            "baseline: raw AMQP through the delay".into(),
            per_s(baseline_rate),
            "1.00x".into(),
        );
        print_pipelines(baseline_rate, sink_rate, &fan1, &fan10);
        print_costs(&fan1, &fan10, &top);
        if let Some((history, later1, later10)) = again {
            print_history(&history);
            print_pipelines(baseline_rate, sink_rate, &later1, &later10);
            print_costs(&later1, &later10, &[]);
            against_fresh("pipeline fan-out 1", fan1.rate, later1.rate);
            against_fresh("pipeline fan-out 10", fan10.rate, later10.rate);
        }
        for (role, kib) in &rss {
            row(format!("peak RSS {role}"), fmt_rss(*kib), String::new());
        }
        if let Ok(out) = std::env::var("BENCH_OUT") {
            let report = json!({
                "baseline_rate": baseline_rate,
                "fanout1_rate": fan1.rate,
                "fanout10_rate": fan10.rate,
            });
            std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
        }
        return Ok(());
    }
    let (held1, tried1) =
        sustained(&env, &conn, &processes, 1, fan1.rate, step_seconds, steps).await?;
    let (held10, tried10) =
        sustained(&env, &conn, &processes, 10, fan10.rate, step_seconds, steps).await?;
    let replies = inbound_phases(&env, config).await?;
    eprintln!("bench: live event streams");
    let live = live_phase(&env, &conn, config, processes.roles[0].1).await?;
    // Peak RSS of the phases above, before the file phase resets the peaks it measures.
    let rss: Vec<(&str, Option<u64>)> = processes
        .roles
        .iter()
        .map(|(role, pid)| (*role, peak_rss_kib(*pid)))
        .collect();
    eprintln!("bench: files");
    let files = files_phase(&env, config, &processes).await?;
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
        "settings: TIDINGS_PREFETCH={} TIDINGS_SMTP_CONCURRENCY={} TIDINGS_DB_POOL_SIZE={} TIDINGS_KEEP_SOURCE={}; background {} people, {} messages; steady steps {} s; pg_stat_statements {}",
        config.prefetch,
        config.smtp_concurrency,
        config.db_pool_size,
        config.keep_source,
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
    print_pipelines(baseline_rate, sink_rate, &fan1, &fan10);
    print_sustained(&[(1, &held1, fan1.rate), (10, &held10, fan10.rate)]);
    print_costs(&fan1, &fan10, &top);
    for (role, kib) in &rss {
        row(format!("peak RSS {role}"), fmt_rss(*kib), String::new());
    }
    print_inbound(&replies, sink_rate);
    print_files(&files);
    print_extraction(extraction.as_ref());
    print_signing(signing.as_ref());
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
        "live": live.json(),
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

/// The pipeline rows: each fan-out's rate against the raw broker and smtp-sink baselines.
fn print_pipelines(
    baseline_rate: f64,
    sink_rate: f64,
    fan1: &PipelineResult,
    fan10: &PipelineResult,
) {
    row(
        format!("pipeline fan-out 1 ({} notifications)", fan1.notifications),
        per_s(fan1.rate),
        format!("{:.2}x", fan1.rate / baseline_rate),
    );
    row(
        format!(
            "pipeline fan-out 10 ({} notifications)",
            fan10.notifications
        ),
        per_s(fan10.rate),
        format!("{:.2}x", fan10.rate / baseline_rate),
    );
    row(
        "pipeline fan-out 1 vs smtp-sink acceptance".into(),
        per_s(fan1.rate),
        format!("{:.2}x", fan1.rate / sink_rate),
    );
}

/// CPU per notification of each process group, database statements per notification and the
/// statements that took the most database time.
fn print_costs(fan1: &PipelineResult, fan10: &PipelineResult, top: &[(i64, f64, f64, String)]) {
    for (fanout, result) in [(1, fan1), (10, fan10)] {
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
        for (calls, total, mean, query) in top {
            println!("  {calls:>7} {total:>9.0} {mean:>8.3}  {query}");
        }
    }
}

/// The sustained rows: for each fan-out, the best rate held (against that fan-out's burst).
fn print_sustained(rows: &[(usize, &Option<Lateness>, f64)]) {
    for &(fanout, held, burst) in rows {
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
}

/// One pass of `BENCH_ONLY=history`: what it wrote first (none on the fresh pass), the
/// pipeline rows, the inbound and live rows, and each fan-out's best sustained rate with the
/// burst its steps started from.
type HistoryRun = (
    Option<History>,
    PipelineResult,
    PipelineResult,
    Inbound,
    Live,
    [(Option<Lateness>, f64); 2],
);

/// With `BENCH_HISTORY` set, writes a year of history into the database (see
/// [`seed_history`]) and returns what it wrote; the caller measures its rows again.
fn with_history(env: &BenchEnv) -> anyhow::Result<Option<History>> {
    if std::env::var("BENCH_HISTORY").is_err() {
        return Ok(None);
    }
    eprintln!("bench: writing a year of history");
    Ok(Some(seed_history(&env.database_url, env.project)?))
}

/// A row measured over the history against the same row on the fresh database.
fn against_fresh(what: &str, fresh: f64, history: f64) {
    row(
        format!("{what}: over the history vs fresh (goal >= 0.9x)"),
        per_s(history),
        format!("{:.2}x", history / fresh),
    );
}
