//! Running it as a fleet: structured logs, and `tidings status`, on real services.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::Env;

const SETTLE: Duration = Duration::from_secs(30);

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
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
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
        in_span("notification.id", None) || in_span("notifications", None),
        "no line carries the notifications it is about"
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
        text.contains(&due) && text.contains("stuck claims"),
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
