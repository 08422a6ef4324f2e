//! What `tidings status` and the admin console's Status page show, read from the broker and
//! the database (no running role needed):
//!
//! - the depth and consumers of every queue (passive declares: nothing is created);
//! - notifications pending, by how far past due they are;
//! - stuck claims: notifications and outbox emails claimed longer ago than the send lease;
//! - the scheduler's last sweep and what the sweeps recovered in the last 24 hours (anything
//!   but zero means the broker lost something);
//! - the dead-letter count;
//! - whether the templates load now, as a reload would.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::Config;
use crate::amqp::Topology;
use crate::db::schema::{messages, notifications, outbox_emails};
use crate::db::states::claimable;
use crate::sweep;

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
pub fn database(conn: &mut PgConnection, config: &Config) -> QueryResult<Value> {
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
    .bind::<Timestamptz, _>(crate::clock::now())
    .load(conn)?;
    // Stuck claims and undispatched messages by the sweeps' own definitions.
    let lapsed = crate::clock::before(config.send_lease);
    let stuck_notifications: i64 = notifications::table
        .filter(claimable::lapsed_notification_claims(lapsed))
        .count()
        .get_result(conn)?;
    let stuck_outbox: i64 = outbox_emails::table
        .filter(claimable::lapsed_outbox_claims(lapsed))
        .count()
        .get_result(conn)?;
    let undispatched: i64 = messages::table
        .filter(sweep::undispatched_messages(crate::clock::before(
            config.seen_window,
        )))
        .count()
        .get_result(conn)?;
    let last_sweep: Option<SweepRun> = diesel::sql_query(
        "SELECT started_at, outcome FROM scheduler_runs
         WHERE job = 'sweep' AND finished_at IS NOT NULL ORDER BY tick DESC LIMIT 1",
    )
    .get_result(conn)
    .optional()?;
    let recovered: Count = diesel::sql_query(
        "SELECT COALESCE(sum(substring(outcome FROM 'republished ([0-9]+)')::bigint), 0)::bigint
                AS count
         FROM scheduler_runs WHERE job = 'sweep' AND started_at > now() - interval '24 hours'",
    )
    .get_result(conn)?;
    Ok(json!({
        "notifications_pending": pending.iter().map(|b| json!({"when": b.bucket, "count": b.count})).collect::<Vec<_>>(),
        "stuck_claims": {"notifications": stuck_notifications, "outbox": stuck_outbox, "lease_s": config.send_lease.as_secs()},
        "messages_not_dispatched_after_window": undispatched,
        "last_sweep": last_sweep.map(|s| json!({"at": s.started_at, "outcome": s.outcome})),
        "sweep_recoveries_24h": recovered.count,
    }))
}

/// Every queue's depth and consumers, by passive declare.
pub async fn broker(config: &Config) -> crate::Result<Vec<Value>> {
    let topology = Topology::from_config(config);
    let connection = crate::amqp::connect(&config.amqp_url, "status").await?;
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

/// The whole report from its parts (each part's error is reported in its place).
pub fn report(
    config: &Config,
    queues: &Result<Vec<Value>, String>,
    database: &Result<Value, String>,
    templates: Result<(), String>,
) -> Value {
    let topology = Topology::from_config(config);
    let dead = queues.as_ref().ok().and_then(|qs| {
        qs.iter()
            .find(|q| q["queue"] == topology.dead_queue())
            .and_then(|q| q["messages"].as_u64())
    });
    json!({
        "queues": match queues { Ok(q) => json!(q), Err(e) => json!({"error": e}) },
        "dead_letters": dead,
        "database": match database { Ok(d) => d.clone(), Err(e) => json!({"error": e}) },
        "templates": match templates {
            Ok(()) => json!({"ok": true, "dir": config.templates_dir.clone()}),
            Err(e) => json!({"ok": false, "dir": config.templates_dir.clone(), "error": e}),
        },
    })
}
