//! Running it as a fleet: structured logs, and `tidings status`, on real services.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::Env;

const SETTLE: Duration = Duration::from_secs(30);

/// Ann writes in a ticket's conversation that Bob follows; returns (ann, conversation).
async fn ann_writes_to_bob(env: &Env) -> (i64, i64) {
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    (ann, conv)
}

/// `TIDINGS_LOG_FORMAT=json`: every line is one JSON object; lines inside a role, a delivery
/// or a notification carry those span fields; no email address appears unmasked.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_span_fields_and_masked_addresses() {
    let env = Env::new("1s");
    let mut roles = env.spawn_named(
        "json",
        &["api", "dispatch", "mailer"],
        &[
            ("TIDINGS_LOG_FORMAT", "json"),
            (
                "TIDINGS_LOG",
                "debug,lapin=warn,hyper=warn,h2=warn,reqwest=warn",
            ),
        ],
    );
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, conv) = ann_writes_to_bob(&env).await;
    let m = env.post(conv, ann, "Is the printer fixed?", false).await;
    env.settled(m, SETTLE).await;
    assert_eq!(env.mails_to("bob@example.com").len(), 1);
    let status = tokio::task::spawn_blocking(move || roles.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let log = env.log_of(&["json"]);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "{} lines", lines.len());
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let in_span = |field: &str, value: Option<&str>| {
        lines.iter().any(|l| {
            l["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| match value {
                    Some(v) => s[field] == v,
                    None => !s[field].is_null(),
                })
            })
        })
    };
    for role in ["api", "dispatch", "mailer"] {
        assert!(in_span("role", Some(role)), "no line names role {role}");
    }
    assert!(
        in_span("delivery.tag", None),
        "no line carries delivery.tag"
    );
    assert!(
        in_span("notification.id", None),
        "no line carries notification.id"
    );
    assert!(
        lines.iter().any(|l| l["message.id"] == m),
        "no line names the message posted"
    );
    for address in ["bob@example.com", "ann@example.com"] {
        assert!(!log.contains(address), "{address} unmasked in the log");
    }
    // A format that does not exist is refused before anything runs.
    let out = env
        .command(&["check"])
        .env("TIDINGS_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TIDINGS_LOG_FORMAT"));
}

/// `tidings status` reads the broker and the database: the due queue holding a batch no
/// mailer takes, the notification pending past due, a claim stuck past its lease, dead
/// letters, and whether the templates load. It fails (exit 1) when the broker is down.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_queues_pending_notifications_and_stuck_claims() {
    let env = Env::new("1s");
    let _roles = env.spawn(&["api", "dispatch"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let cy = env.user("Cy").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    env.follow_item(item, cy).await;
    let m = env.post(conv, ann, "Is the printer fixed?", false).await;
    env.dispatched(m).await;
    // Cy's notification was claimed by a mailer that died an hour ago.
    env.sql(&format!(
        "UPDATE notifications SET state = 'sending', claimed_at = now() - interval '1 hour'
         WHERE message_id = {m} AND recipient_id = {cy}"
    ));
    let topology = env.topology();
    let due = topology.due_queue();
    let report = loop {
        let out = env.command(&["status", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let due_depth = report["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == due.as_str())
            .and_then(|q| q["messages"].as_u64());
        if due_depth == Some(1) {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let db = &report["database"];
    let pending: i64 = db["notifications_pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["when"] != "not due yet")
        .map(|b| b["count"].as_i64().unwrap())
        .sum();
    assert_eq!(pending, 1, "Bob's notification is past due: {report}");
    assert_eq!(db["stuck_claims"]["notifications"], 1, "{report}");
    assert_eq!(db["stuck_claims"]["outbox"], 0);
    assert_eq!(report["dead_letters"], 0);
    assert_eq!(report["templates"]["ok"], true);
    // The database's upkeep: autovacuum as the server has it, and the notifications written.
    let autovacuum = env.sql("SELECT current_setting('autovacuum')");
    assert_eq!(
        db["upkeep"]["autovacuum"],
        autovacuum.trim() == "on",
        "{report}"
    );
    let tables = db["upkeep"]["tables"].as_array().unwrap();
    assert!(
        tables.iter().any(|t| t["table"] == "notifications"),
        "{report}"
    );
    let dispatch_queue = report["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == topology.dispatch_queue().as_str())
        .cloned()
        .unwrap();
    assert_eq!(dispatch_queue["consumers"], 1, "dispatch is attached");
    // The text form, for people.
    let out = env.command(&["status"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&due) && text.contains("stuck claims") && text.contains("database upkeep"),
        "{text}"
    );
    // No broker: exit 1, saying which service does not answer.
    let out = env
        .command(&["status"])
        .env("TIDINGS_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker"));
}

async fn get_text(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The value of the sample `name` (with its labels, as rendered) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `/metrics`, `/livez` and `/readyz` on `TIDINGS_METRICS_ADDR`, one listener for `run all`:
/// a message emailed once shows in the counters, the lateness and SMTP histograms (with
/// their explicit buckets) and the queue gauges; `/readyz` says what is not ready.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_on_the_metrics_listener() {
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = Env::with("1s", &[("TIDINGS_METRICS_ADDR", &addr)], &[]);
    let _all = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let base = format!("http://{addr}");
    assert_eq!(get_text(&format!("{base}/livez")).await.0, 200);
    support::wait_for(env.root(), "readyz", async || {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let (ann, conv) = ann_writes_to_bob(&env).await;
    let m = env.post(conv, ann, "Is the printer fixed?", false).await;
    env.settled(m, SETTLE).await;
    let (status, text) = get_text(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "tidings_notifications_created_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tidings_notifications_emailed_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "tidings_emails_total{source=\"notification\",outcome=\"sent\"}"
        ),
        Some(1.0),
        "{text}"
    );
    for histogram in [
        "tidings_lateness_seconds",
        "tidings_smtp_transaction_seconds",
        "tidings_post_to_dispatch_seconds",
    ] {
        assert_eq!(
            sample(&text, &format!("{histogram}_count")),
            Some(1.0),
            "{histogram}"
        );
        assert!(
            text.contains(&format!("{histogram}_bucket{{le=\"0.25\"}}")),
            "{histogram} has explicit buckets"
        );
    }
    let dispatch = format!(
        "tidings_queue_messages{{queue=\"{}\"}}",
        env.topology().dispatch_queue()
    );
    assert_eq!(sample(&text, &dispatch), Some(0.0), "{text}");
    let consumers = format!(
        "tidings_queue_consumers{{queue=\"{}\"}}",
        env.topology().due_queue()
    );
    assert_eq!(sample(&text, &consumers), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tidings_smtp_slots_in_use"), Some(0.0));
    assert!(sample(&text, "tidings_db_pool_in_use").is_some());
    assert!(text.contains("tidings_consumer_in_flight{queue="));
    // A process whose database does not answer is alive but not ready, and says why.
    let api_port = support::free_port();
    let other = support::free_port();
    let lost = format!("127.0.0.1:{other}");
    let _lost = env.spawn_named(
        "lost",
        &["api"],
        &[
            (
                "TIDINGS_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nowhere",
            ),
            ("TIDINGS_HTTP_ADDR", &format!("127.0.0.1:{api_port}")),
            ("TIDINGS_METRICS_ADDR", &lost),
        ],
    );
    support::wait_for(env.root(), "the second listener", async || {
        get_text(&format!("http://{lost}/livez")).await.0 == 200
    })
    .await;
    let (status, body) = get_text(&format!("http://{lost}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database"), "{body}");
}

/// Closes every broker connection of process `pid`, as a node failure would. `rabbitmqctl`
/// runs as root (directly or through sudo) for the broker's Erlang cookie.
fn close_connections_of(pid: u32) -> usize {
    let rabbitmqctl = || support::system::as_root("rabbitmqctl").expect("rabbitmqctl as root");
    let out = rabbitmqctl()
        .args([
            "-q",
            "--timeout",
            "20",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let mut closed = 0;
    for line in listing.lines() {
        let Some((conn, name)) = line.split_once('\t') else {
            continue;
        };
        if name.contains(&format!("(pid {pid})")) {
            let status = rabbitmqctl()
                .args([
                    "-q",
                    "--timeout",
                    "20",
                    "close_connection",
                    conn,
                    "failover test",
                ])
                .status()
                .unwrap();
            assert!(status.success());
            closed += 1;
        }
    }
    closed
}

/// `TIDINGS_AMQP_URL` as a node list: a dead first node is skipped. When the api's broker
/// connection is cut, a message posted at that moment is announced again on the new
/// connection at once, not left for the sweep (whose interval here is 10 minutes).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_list_fails_over_and_unconfirmed_publishes_are_sent_again() {
    if support::system::as_root_or_skip("rabbitmqctl", "the failover test").is_none() {
        return;
    }
    let env = Env::with(
        "1s",
        &[
            (
                "TIDINGS_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:1/%2f, amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            ("TIDINGS_SWEEP_INTERVAL", "10m"),
        ],
        &[],
    );
    let api = env.spawn(&["api"]);
    let _workers = env.spawn(&["dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, conv) = ann_writes_to_bob(&env).await;
    let first = env.post(conv, ann, "Through the second node", false).await;
    env.settled(first, SETTLE).await;
    // Cut the api's connections (its publisher and its live listener), then post at once.
    assert!(
        close_connections_of(api.pid()) >= 1,
        "the api's connections are listed by pid"
    );
    let second = env
        .post(conv, ann, "Posted while the connection was cut", false)
        .await;
    let dispatched = tokio::time::timeout(Duration::from_secs(15), env.dispatched(second)).await;
    assert!(
        dispatched.is_ok(),
        "announced again after the reconnect, not by a sweep"
    );
    env.settled(second, SETTLE).await;
    assert_eq!(env.mails_to("bob@example.com").len(), 2);
    assert!(env.log_of(&["api"]).contains("connected to a broker node"));
}

/// Each broker connection asks for frames of `FRAME_MAX` (two ring buffers of 32 frames each
/// per connection: 1 MiB, not the 8 MiB of the broker's default frame), unless the URL names a
/// frame size; a message many frames long crosses such a connection intact.
#[tokio::test(flavor = "multi_thread")]
async fn broker_connections_use_small_frames_and_carry_long_messages() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use tidings_common::amqp;
    let conn = amqp::connect(support::AMQP_URL, "test").await.unwrap();
    assert_eq!(conn.configuration().frame_max(), amqp::FRAME_MAX);
    let named = format!("{}?frame_max=65536", support::AMQP_URL);
    let other = amqp::connect(&named, "test").await.unwrap();
    assert_eq!(other.configuration().frame_max(), 65_536);
    other.close(200, "done".into()).await.unwrap();
    let Err(bad) =
        amqp::connect("amqp://guest:secret@127.0.0.1:5672/%2f?frame_max=x", "test").await
    else {
        panic!("a bad frame_max is refused");
    };
    let bad = bad.to_string();
    assert!(bad.contains("not an AMQP URL"), "{bad}");
    assert!(!bad.contains("secret"), "the password is masked: {bad}");

    let publisher = amqp::Publisher::open(&conn).await.unwrap();
    let queue = format!("frames-{}", std::process::id());
    publisher
        .channel()
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    // 40 frames' worth, with bytes that differ from frame to frame.
    let long: Vec<u8> = (0..40 * amqp::FRAME_MAX as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    publisher.publish("", &queue, &long, None).await.unwrap();
    let got = publisher
        .channel()
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is in the queue");
    assert!(
        got.delivery.data == long,
        "the long message arrived changed"
    );
    publisher
        .channel()
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}
