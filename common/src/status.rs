//! What `tidings status` and the admin console's Status page show, read from the broker and
//! the database (no running role needed):
//!
//! - the depth and consumers of every queue (passive declares: nothing is created);
//! - notifications pending, by how far past due they are;
//! - stuck claims: notifications and outbox emails claimed longer ago than the send lease;
//! - the scheduler's last sweep and what the sweeps recovered in the last 24 hours (anything
//!   but zero means the broker lost something);
//! - the dead-letter count;
//! - whether the templates load now, as a reload would;
//! - the database's upkeep: whether autovacuum runs, and the dead rows of the tables every
//!   notification rewrites.

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
         FROM notifications WHERE is_open AND state = 'pending' GROUP BY 1 ORDER BY min(due_at)",
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
        .filter(sweep::undispatched_messages(config.seen_window))
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
    let upkeep = upkeep(conn)?;
    Ok(json!({
        "upkeep": upkeep,
        "notifications_pending": pending.iter().map(|b| json!({"when": b.bucket, "count": b.count})).collect::<Vec<_>>(),
        "stuck_claims": {"notifications": stuck_notifications, "outbox": stuck_outbox, "lease_s": config.send_lease.as_secs()},
        "messages_not_dispatched_after_window": undispatched,
        "last_sweep": last_sweep.map(|s| json!({"at": s.started_at, "outcome": s.outcome})),
        "sweep_recoveries_24h": recovered.count,
    }))
}

/// The tables whose rows every notification rewrites or adds to: without (auto)vacuum their
/// dead row versions are never reclaimed, and their indexes and lookups slow down for good.
pub const CHURNING: &[&str] = &["notifications", "messages", "outbox_emails", "live_events"];

/// Whether the server runs autovacuum, and each churning table's live and dead rows and when
/// it was last vacuumed (by autovacuum or by hand).
pub fn upkeep(conn: &mut PgConnection) -> QueryResult<Value> {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        autovacuum: String,
    }
    #[derive(QueryableByName)]
    struct Table {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = BigInt)]
        live: i64,
        #[diesel(sql_type = BigInt)]
        dead: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        vacuumed: Option<chrono::DateTime<chrono::Utc>>,
    }
    let setting: Setting =
        diesel::sql_query("SELECT current_setting('autovacuum') AS autovacuum").get_result(conn)?;
    let tables: Vec<Table> = diesel::sql_query(
        "SELECT relname::text AS name, n_live_tup AS live, n_dead_tup AS dead,
                GREATEST(last_vacuum, last_autovacuum) AS vacuumed
         FROM pg_stat_user_tables WHERE relname = ANY($1) ORDER BY relname",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(CHURNING)
    .load(conn)?;
    Ok(json!({
        "autovacuum": setting.autovacuum == "on",
        "tables": tables.iter().map(|t| json!({"table": t.name, "live_rows": t.live, "dead_rows": t.dead, "last_vacuum": t.vacuumed})).collect::<Vec<_>>(),
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
