//! `tidings status`: the operator's first look at a running fleet, read from the broker and
//! the database (it needs no running role):
//!
//! - the depth and consumers of every queue (passive declares: nothing is created);
//! - notifications pending, by how far past due they are;
//! - stuck claims: notifications and outbox emails claimed longer ago than the send lease;
//! - the scheduler's last sweep and what the sweeps recovered in the last 24 hours (anything
//!   but zero means the broker lost something);
//! - the dead-letter count;
//! - whether the templates load now, as a reload would.
//!
//! Exit code 0 when everything answers, 1 when the broker or the database does not.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tidings_common::Config;
use tidings_common::amqp::Topology;
use tidings_common::db::schema::{messages, notifications, outbox_emails};
use tidings_common::db::states::claimable;
use tidings_common::sweep;

#[derive(QueryableByName)]
struct Bucket {
    #[diesel(sql_type = Text)]
    bucket: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct SweepRun {
    #[diesel(sql_type = Timestamptz)]
    started_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    outcome: Option<String>,
}

/// The pending notifications by lateness, stuck claims and sweeps.
fn database(config: &Config) -> anyhow::Result<Value> {
    let mut conn = PgConnection::establish(&config.database_url)?;
    let pending: Vec<Bucket> = diesel::sql_query(
        // Due times come from the application clock, so they are compared with it ($1).
        "SELECT CASE WHEN due_at > $1 THEN 'not due yet'
                     WHEN due_at > $1 - interval '1 minute' THEN 'due, under 1 min late'
                     WHEN due_at > $1 - interval '10 minutes' THEN '1-10 min late'
                     WHEN due_at > $1 - interval '1 hour' THEN '10-60 min late'
                     ELSE 'over 1 h late' END AS bucket,
                count(*) AS count
         FROM notifications WHERE state = 'pending' GROUP BY 1 ORDER BY min(due_at)",
    )
    .bind::<Timestamptz, _>(tidings_common::clock::now())
    .load(&mut conn)?;
    // Stuck claims and undispatched messages by the sweeps' own definitions.
    let lapsed = tidings_common::clock::before(config.send_lease);
    let stuck_notifications: i64 = notifications::table
        .filter(claimable::lapsed_notification_claims(lapsed))
        .count()
        .get_result(&mut conn)?;
    let stuck_outbox: i64 = outbox_emails::table
        .filter(claimable::lapsed_outbox_claims(lapsed))
        .count()
        .get_result(&mut conn)?;
    let undispatched: i64 = messages::table
        .filter(sweep::undispatched_messages(tidings_common::clock::before(
            config.seen_window,
        )))
        .count()
        .get_result(&mut conn)?;
    let last_sweep: Option<SweepRun> = diesel::sql_query(
        "SELECT started_at, outcome FROM scheduler_runs
         WHERE job = 'sweep' AND finished_at IS NOT NULL ORDER BY tick DESC LIMIT 1",
    )
    .get_result(&mut conn)
    .optional()?;
    let recovered: Count = diesel::sql_query(
        "SELECT COALESCE(sum(substring(outcome FROM 'republished ([0-9]+)')::bigint), 0)::bigint
                AS count
         FROM scheduler_runs WHERE job = 'sweep' AND started_at > now() - interval '24 hours'",
    )
    .get_result(&mut conn)?;
    Ok(json!({
        "notifications_pending": pending.iter().map(|b| json!({"when": b.bucket, "count": b.count})).collect::<Vec<_>>(),
        "stuck_claims": {"notifications": stuck_notifications, "outbox": stuck_outbox, "lease_s": config.send_lease.as_secs()},
        "messages_not_dispatched_after_window": undispatched,
        "last_sweep": last_sweep.map(|s| json!({"at": s.started_at, "outcome": s.outcome})),
        "sweep_recoveries_24h": recovered.count,
    }))
}

/// Every queue's depth and consumers, by passive declare.
async fn broker(config: &Config) -> anyhow::Result<Vec<Value>> {
    let topology = Topology::from_config(config);
    let connection = tidings_common::amqp::connect(&config.amqp_url, "status").await?;
    let mut queues = Vec::new();
    for name in topology.queues() {
        // A failed passive declare closes the channel: one channel per queue.
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        queues.push(match declared {
            Ok(q) => {
                json!({"queue": name, "messages": q.message_count(), "consumers": q.consumer_count()})
            }
            Err(_) => json!({"queue": name, "missing": true}),
        });
        let _ = channel.close(200, "status".into()).await;
    }
    let _ = connection.close(200, "status".into()).await;
    Ok(queues)
}

pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let topology = Topology::from_config(config);
    let queues = broker(config).await;
    let db = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || database(&config)).await?
    };
    let templates = tidings_common::templates::Templates::load(
        &config.templates_dir,
        &config.default_locale,
        &tidings_common::REQUIRED_TEMPLATES,
    );
    let dead = queues.as_ref().ok().and_then(|qs| {
        qs.iter()
            .find(|q| q["queue"] == topology.dead_queue())
            .and_then(|q| q["messages"].as_u64())
    });
    let report = json!({
        "queues": queues.as_ref().map_err(|e| format!("{e:#}")).map(|q| json!(q)).unwrap_or_else(|e| json!({"error": e})),
        "dead_letters": dead,
        "database": db.as_ref().map_err(|e| format!("{e:#}")).cloned().unwrap_or_else(|e| json!({"error": e})),
        "templates": match &templates {
            Ok(_) => json!({"ok": true, "dir": config.templates_dir.clone()}),
            Err(e) => json!({"ok": false, "dir": config.templates_dir.clone(), "error": e.to_string()}),
        },
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    match (queues, db) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), _) => Err(e.context("the broker does not answer")),
        (_, Err(e)) => Err(e.context("the database does not answer")),
    }
}

fn print_text(report: &Value) {
    println!("queues                                  messages  consumers");
    match report["queues"].as_array() {
        Some(queues) => {
            for q in queues {
                if q["missing"] == true {
                    println!(
                        "  {:<38} missing (no role has declared it)",
                        q["queue"].as_str().unwrap_or("")
                    );
                } else {
                    println!(
                        "  {:<38} {:>8}  {:>9}",
                        q["queue"].as_str().unwrap_or(""),
                        q["messages"],
                        q["consumers"]
                    );
                }
            }
        }
        None => println!("  broker: {}", report["queues"]["error"]),
    }
    println!("dead letters: {}", report["dead_letters"]);
    let db = &report["database"];
    if let Some(error) = db.get("error") {
        println!("database: {error}");
    } else {
        println!("notifications pending:");
        let pending = db["notifications_pending"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if pending.is_empty() {
            println!("  none");
        }
        for b in pending {
            println!("  {:<24} {}", b["when"].as_str().unwrap_or(""), b["count"]);
        }
        println!(
            "stuck claims (older than the {} s send lease): {} notifications, {} outbox emails",
            db["stuck_claims"]["lease_s"],
            db["stuck_claims"]["notifications"],
            db["stuck_claims"]["outbox"]
        );
        println!(
            "messages not dispatched a window after posting: {}",
            db["messages_not_dispatched_after_window"]
        );
        match db["last_sweep"].as_object() {
            Some(s) => println!(
                "last sweep: {} ({})",
                s["at"].as_str().unwrap_or(""),
                s["outcome"].as_str().unwrap_or("no outcome")
            ),
            None => println!("last sweep: none recorded (is a scheduler running?)"),
        }
        println!(
            "sweep recoveries in 24 h: {} (not zero means the broker lost something)",
            db["sweep_recoveries_24h"]
        );
    }
    let t = &report["templates"];
    if t["ok"] == true {
        println!("templates: load ({})", t["dir"].as_str().unwrap_or(""));
    } else {
        println!(
            "templates: REFUSED ({}): {}",
            t["dir"].as_str().unwrap_or(""),
            t["error"].as_str().unwrap_or("")
        );
    }
}
