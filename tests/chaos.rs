//! Faults under a steady, bounded load (loopback only), each followed by a full accounting from
//! the database and from the sink's files by Message-ID: every notification ends in exactly one
//! terminal state, every email that should have gone arrived (a duplicate is tolerated only for
//! a send in flight at a `kill -9`), and nothing went that should not have.
//!
//! Restarting RabbitMQ and PostgreSQL affects every user of those services, so the tests in
//! this file take turns, and this file runs on its own (cargo runs test files one at a time).
//! `CHAOS_MESSAGES` scales the load (default 40 per fault); `scripts/chaos` runs it larger.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::rabbit::{Cluster, NodeTls};
use support::{Env, Process, system};

/// Nodes of the cluster test.
const CLUSTER_SIZE: usize = 3;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SMTP transactions a mailer may have in flight; bounds the duplicates a `kill -9` can cause.
const SMTP_CONCURRENCY: usize = 4;

fn messages_per_fault() -> usize {
    std::env::var("CHAOS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn chaos_env() -> Env {
    Env::with(
        "1s",
        &[
            ("TIDINGS_SMTP_CONCURRENCY", "4"),
            ("TIDINGS_RETRY_TIERS", "1s,2s,4s,8s,8s"),
            ("TIDINGS_SEND_LEASE", "3s"),
            ("TIDINGS_SWEEP_INTERVAL", "1s"),
            ("TIDINGS_DB_POOL_SIZE", "4"),
        ],
        &[],
    )
}

/// One reader per conversation, one conversation per message: no coalescing, so every
/// notification maps to exactly one email.
struct Load {
    author: i64,
    conversations: Vec<i64>,
}

async fn prepare(env: &Env, count: usize) -> Load {
    let author = env.user("Author").await;
    let mut conversations = Vec::new();
    let (project, _, _) = env.ticket("Chaos").await;
    for i in 0..count {
        let reader = env.user(&format!("Reader{i}")).await;
        let item = env
            .ok(
                "POST",
                "/items",
                Some(json!({"project_id": project, "kind": "task", "title": format!("t{i}")})),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        env.follow_item(item, reader).await;
        let conv = env
            .ok(
                "POST",
                "/conversations",
                Some(json!({"subject": format!("c{i}"), "item_id": item})),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        conversations.push(conv);
    }
    Load {
        author,
        conversations,
    }
}

/// Posts one message per conversation, spread over `over`, retrying a post the api could not
/// take (it is down, or its database is). Returns when every message was accepted.
async fn post_all(env: &Env, load: &Load, over: Duration) {
    let pause = over / load.conversations.len() as u32;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (i, conv) in load.conversations.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let sent = http
                .post(format!("{}/conversations/{conv}/messages", env.base()))
                .bearer_auth(support::TOKEN)
                .json(&json!({"author_id": load.author, "body": format!("chaos message {i}"), "internal": false}))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                // A 5xx may come after the commit (the response was lost); posting again would
                // be a second message, so look before retrying.
                _ if already_posted(env, *conv).await => break,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "could not post to conversation {conv}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Whether the conversation already holds its message, asked of the database itself: the api
/// may be the process that is down. Waits (bounded) while the database cannot answer either,
/// since guessing "no" would post a second message.
async fn already_posted(env: &Env, conv: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql = format!("SELECT count(*) FROM messages WHERE conversation_id = {conv}");
    loop {
        if let Some(count) = try_psql(env, &sql) {
            return count != "0";
        }
        assert!(
            Instant::now() < deadline,
            "the database did not answer for a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `sql` on the test's database; `None` when psql fails (the database is down).
fn try_psql(env: &Env, sql: &str) -> Option<String> {
    let out = Command::new(system::program("psql"))
        .args([
            "-At",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &env.database,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn psql(env: &Env, sql: &str) -> String {
    try_psql(env, sql).unwrap_or_default()
}

/// The accounting after a fault.
#[derive(Debug)]
struct Accounting {
    messages: usize,
    notifications: usize,
    sent: usize,
    received: usize,
    duplicates: usize,
    lost: usize,
    unexpected: usize,
}

/// Waits for every message to be dispatched and every notification to be terminal, then
/// counts the sink's files by Message-ID.
async fn account(env: &Env, fault: &str, expected_messages: usize) -> Accounting {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open = psql(
            env,
            "SELECT (SELECT count(*) FROM messages WHERE dispatched_at IS NULL)
                  + (SELECT count(*) FROM notifications WHERE state IN ('pending', 'sending'))",
        );
        if open == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fault}: {open} messages or notifications never finished"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let any last SMTP transaction land in the sink.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = psql(
        env,
        "SELECT state || ' ' || email_message_id FROM notifications",
    );
    let mut sent_ids = Vec::new();
    let mut notifications: usize = 0;
    for line in rows.lines() {
        notifications += 1;
        let (state, id) = line.split_once(' ').unwrap();
        assert!(
            matches!(state, "sent" | "skipped" | "failed"),
            "{fault}: non-terminal {line}"
        );
        if state == "sent" {
            sent_ids.push(id.to_string());
        }
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    for mail in env.mails() {
        // A file without a Message-ID is a transaction the sink cut off, not an email.
        if let Some(id) = mail.header("Message-ID") {
            *received.entry(id).or_default() += 1;
        }
    }
    let messages: usize = psql(env, "SELECT count(*) FROM messages").parse().unwrap();
    let lost = sent_ids
        .iter()
        .filter(|id| !received.contains_key(*id))
        .count()
        + notifications.saturating_sub(sent_ids.len());
    let unexpected = received.keys().filter(|id| !sent_ids.contains(id)).count();
    let duplicates = received.values().map(|n| n - 1).sum();
    let accounting = Accounting {
        messages,
        notifications,
        sent: sent_ids.len(),
        received: received.values().sum(),
        duplicates,
        lost,
        unexpected,
    };
    println!(
        "chaos {fault}: messages {} (expected {expected_messages}), notifications {}, sent {}, \
         emails received {}, duplicates {}, lost {}, unexpected {}",
        accounting.messages,
        accounting.notifications,
        accounting.sent,
        accounting.received,
        accounting.duplicates,
        accounting.lost,
        accounting.unexpected
    );
    assert_eq!(
        accounting.messages, expected_messages,
        "{fault}: {accounting:?}"
    );
    assert_eq!(
        accounting.notifications, expected_messages,
        "{fault}: one reader each: {accounting:?}"
    );
    assert_eq!(accounting.lost, 0, "{fault}: {accounting:?}");
    assert_eq!(accounting.unexpected, 0, "{fault}: {accounting:?}");
    accounting
}

/// Kills (SIGKILL) one role in the middle of the load, restarts it, and accounts.
async fn kill_role_under_load(role: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = chaos_env();
    let roles = ["api", "dispatch", "mailer"];
    let mut procs: Vec<(&str, Process)> = roles.iter().map(|r| (*r, env.spawn(&[r]))).collect();
    env.wait_for_api().await;
    let n = messages_per_fault();
    let load = prepare(&env, n).await;
    let posting = post_all(&env, &load, Duration::from_secs(4));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        let (_, process) = procs.iter_mut().find(|(r, _)| *r == role).unwrap();
        process.kill9();
        tokio::time::sleep(Duration::from_millis(700)).await;
        *process = env.spawn(&[role]);
    };
    tokio::join!(posting, chaos);
    let a = account(&env, &format!("kill -9 {role}"), n).await;
    let allowed = if role == "mailer" {
        SMTP_CONCURRENCY
    } else {
        0
    };
    assert!(a.duplicates <= allowed, "kill -9 {role}: {a:?}");
    drop(procs);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_api_under_load() {
    kill_role_under_load("api").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_dispatch_under_load() {
    kill_role_under_load("dispatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mailer_under_load() {
    kill_role_under_load("mailer").await;
}

/// Restarts a service the roles depend on in the middle of the load.
async fn restart_service_under_load(service: &str, stop: &[&str], start: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let what = format!("the {service} restart");
    let (Some(mut stop_cmd), Some(mut start_cmd)) = (
        system::as_root_or_skip(stop[0], &what),
        system::as_root_or_skip(start[0], &what),
    ) else {
        return;
    };
    let env = chaos_env();
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let n = messages_per_fault();
    let load = prepare(&env, n).await;
    let posting = post_all(&env, &load, Duration::from_secs(4));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ok = stop_cmd.args(&stop[1..]).status().unwrap().success();
        assert!(ok, "{stop:?}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ok = start_cmd.args(&start[1..]).status().unwrap().success();
        assert!(ok, "{start:?}");
    };
    tokio::join!(posting, chaos);
    let a = account(&env, &format!("restart {service}"), n).await;
    assert_eq!(a.duplicates, 0, "restart {service}: {a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_rabbitmq_under_load() {
    restart_service_under_load(
        "RabbitMQ",
        &["rabbitmqctl", "-q", "stop_app"],
        &["rabbitmqctl", "-q", "start_app"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_postgresql_under_load() {
    let version = std::fs::read_dir("/etc/postgresql").ok().and_then(|d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
    });
    let Some(version) = version else {
        eprintln!("skipping the PostgreSQL restart: no local cluster");
        return;
    };
    let ctl = |action: &'static str| {
        vec![
            "pg_ctlcluster".to_string(),
            "--skip-systemctl-redirect".into(),
            version.clone(),
            "main".into(),
            action.into(),
        ]
    };
    let stop = ctl("stop");
    let start = ctl("start");
    let stop: Vec<&str> = stop.iter().map(String::as_str).collect();
    let start: Vec<&str> = start.iter().map(String::as_str).collect();
    restart_service_under_load("PostgreSQL", &stop, &start).await;
}

/// SIGTERM under load: the mailer stops taking work, finishes or returns what is in flight,
/// exits in bounded time, and its successor delivers the rest with no loss and no duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mailer_under_load_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = chaos_env();
    let _front = env.spawn(&["api", "dispatch"]);
    let mut mailer = env.spawn(&["mailer"]);
    env.wait_for_api().await;
    let n = messages_per_fault();
    let load = prepare(&env, n).await;
    let posting = post_all(&env, &load, Duration::from_secs(4));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let started = Instant::now();
        let status = mailer.terminate();
        assert!(status.success(), "mailer exited with {status}");
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "SIGTERM took {:?}",
            started.elapsed()
        );
        mailer = env.spawn(&["mailer"]);
    };
    tokio::join!(posting, chaos);
    let a = account(&env, "SIGTERM mailer", n).await;
    assert_eq!(a.duplicates, 0, "{a:?}");
}

/// SMTP connections dropped right after DATA are retried through the back-off tiers and
/// delivered once the server behaves.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_connections_dropped_mid_data_are_retried() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut env = chaos_env();
    let (port, dir) = (env.sink.port, env.sink.dir.clone());
    env.sink.stop();
    env.sink = support::Sink::start(port, &dir, &["-q", "DATA"]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let n = messages_per_fault().min(20);
    let load = prepare(&env, n).await;
    post_all(&env, &load, Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(
        &env,
        "SELECT count(*) FROM email_log WHERE status = 'deferred'",
    ) == "0"
    {
        assert!(Instant::now() < deadline, "nothing was deferred");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.sink.stop();
    env.sink = support::Sink::start(port, &dir, &[]);
    let a = account(&env, "SMTP drops mid-DATA", n).await;
    assert_eq!(a.sent, n, "{a:?}");
    assert_eq!(a.duplicates, 0, "{a:?}");
}

/// A notification whose delayed batch was lost (the delay queue purged) is found by the sweep
/// once it is past due plus the lease, and delivered.
#[tokio::test(flavor = "multi_thread")]
async fn sweep_delivers_notifications_whose_batch_was_lost() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = chaos_env();
    let _front = env.spawn(&["api", "dispatch"]);
    env.wait_for_api().await;
    let load = prepare(&env, 3).await;
    post_all(&env, &load, Duration::from_millis(100)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql(
        &env,
        "SELECT count(*) FROM messages WHERE dispatched_at IS NULL",
    ) != "0"
    {
        assert!(Instant::now() < deadline, "not dispatched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_conn, channel) = env.channel().await;
    // Dispatch commits before it publishes, and with a 1 s window the batches may already
    // have moved on to the due queue (no mailer consumes it yet): lose them from both.
    let topology = env.topology();
    let queues = [topology.delay_queue(), topology.due_queue()];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut waiting = 0;
        for queue in &queues {
            waiting += channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .unwrap()
                .message_count();
        }
        if waiting >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batches never reached the broker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut purged = 0;
    for queue in &queues {
        purged += channel
            .queue_purge(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    assert_eq!(purged, 3, "the three batches were waiting on the broker");
    let _mailer = env.spawn(&["mailer"]);
    let a = account(&env, "purged delay queue", 3).await;
    assert_eq!(a.sent, 3, "{a:?}");
}

/// p99 and max lateness (sent − posted − the 1 s window), in ms, of the messages posted in
/// the `seconds` after `from` (a database timestamp).
fn lateness_p99(env: &Env, from: &str, seconds: u32) -> String {
    psql(
        env,
        &format!(
            "SELECT COALESCE(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY l))::text
                             || ' ms (max ' || round(max(l))::text || ' ms, '
                             || count(*)::text || ' messages)', 'no messages')
             FROM (SELECT greatest(extract(epoch FROM n.sent_at - m.created_at) * 1000 - 1000, 0) AS l
                   FROM notifications n JOIN messages m ON m.id = n.message_id
                   WHERE n.state = 'sent'
                     AND m.created_at >= '{from}'::timestamptz
                     AND m.created_at < '{from}'::timestamptz + interval '{seconds} seconds') t"
        ),
    )
}

/// The cluster test (`scripts/cluster-test`, which CI runs): quorum queues on all three
/// nodes; dispatch and the mailer connected to different nodes; under a steady load, kill -9
/// the delay queue's leader, then the mailer's node, then restart both. Accounted like the
/// faults above: nothing lost, duplicates only for sends in flight; the lateness p99 of each
/// failover is printed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "starts its own RabbitMQ cluster: run by scripts/cluster-test"]
async fn cluster_loses_nodes_under_load_with_nothing_lost() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = chaos_env();
    let root = env.root().join("cluster");
    let started = Instant::now();
    // Over TLS, as between the hosts of a fleet: each node listens with amqps only, with a
    // certificate from the test's own CA, which the roles are given as TIDINGS_AMQP_CA.
    let pki = support::pki::Pki::new(&root.join("pki"), "cluster");
    let server = pki.issue("node", &["localhost"], false);
    let tls = NodeTls {
        ca: pki.ca(),
        cert: server.cert,
        key: server.key,
        require_client_cert: false,
        plain_port: None,
    };
    let mut cluster =
        tokio::task::block_in_place(|| Cluster::start(&root, CLUSTER_SIZE, Some(tls)));
    println!(
        "cluster: three nodes up and joined in {:?}, listening with TLS",
        started.elapsed()
    );
    let ca = pki.ca().display().to_string();
    let spawn = |name: &str, role: &str, first: usize| {
        env.spawn_named(
            name,
            &[role],
            &[
                ("TIDINGS_AMQP_URL", &cluster.urls(first)),
                ("TIDINGS_AMQP_CA", &ca),
            ],
        )
    };
    let _api = spawn("api", "api", 0);
    let _dispatch = spawn("dispatch", "dispatch", 1);
    let mailer = spawn("mailer", "mailer", 2);
    env.wait_for_api().await;
    let n = std::env::var("CLUSTER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let load = prepare(&env, n).await;
    let delay_queue = env.topology().delay_queue();
    let members = cluster.ctl(0, &["-q", "list_queues", "name", "type", "members"]);
    let line = members
        .lines()
        .find(|l| l.starts_with(&format!("{delay_queue}\t")))
        .unwrap_or_else(|| panic!("{delay_queue} not declared: {members}"));
    assert!(line.contains("quorum"), "{line}");
    for node in 0..CLUSTER_SIZE {
        assert!(
            line.contains(&cluster.name(node)),
            "replicated on every node: {line}"
        );
    }
    let posting = post_all(&env, &load, Duration::from_secs(12));
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = cluster.leader_of(&delay_queue);
        let at_leader = psql(&env, "SELECT now()");
        cluster.kill9(leader);
        println!("cluster: killed node {leader}, the leader of {delay_queue}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mailer_node = cluster.node_of(mailer.pid());
        let at_mailer = psql(&env, "SELECT now()");
        cluster.kill9(mailer_node);
        println!("cluster: killed node {mailer_node}, the mailer's");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for node in [leader, mailer_node] {
            cluster.launch(node);
        }
        tokio::task::block_in_place(|| {
            for node in [leader, mailer_node] {
                cluster.await_startup(node);
            }
        });
        println!("cluster: both restarted");
        (at_leader, at_mailer)
    };
    let ((), (at_leader, at_mailer)) = tokio::join!(posting, faults);
    let a = account(&env, "cluster failovers", n).await;
    assert!(
        a.duplicates <= 2 * SMTP_CONCURRENCY,
        "duplicates only for sends in flight: {a:?}"
    );
    println!(
        "cluster: lateness p99 of the messages posted in the 3 s after killing the leader: {}; \
         in the 5 s after killing the mailer's node (until both restarted): {}",
        lateness_p99(&env, &at_leader, 3),
        lateness_p99(&env, &at_mailer, 5)
    );
    drop(mailer);
}
