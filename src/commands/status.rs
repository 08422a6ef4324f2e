//! `tidings status`: the operator's first look at a running fleet, read from the broker and
//! the database (it needs no running role):
//!
//! - the depth and consumers of every queue (passive declares: nothing is created);
//! - notifications pending, by how far past due they are;
//! - stuck claims: notifications and outbox emails claimed longer ago than the send lease;
//! - the scheduler's last sweep and what the sweeps recovered in the last 24 hours (anything
//!   but zero means the broker lost something);
//! - the dead-letter count;
//! - whether the templates load now, as a reload would;
//! - the database's upkeep: whether autovacuum runs, and the dead rows of the tables every
//!   notification rewrites (a warning when autovacuum is off).
//!
//! Exit code 0 when everything answers, 1 when the broker or the database does not.

use diesel::prelude::*;
use tidings_common::Config;
use tidings_common::status;

pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let queues = status::broker(config).await.map_err(|e| e.to_string());
    let db = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut conn = PgConnection::establish(&config.database_url).map_err(|e| {
                anyhow::anyhow!(tidings_common::tls::explain_database_error(
                    &config.database_url,
                    &e.to_string()
                ))
            })?;
            Ok(status::database(&mut conn, &config)?)
        })
        .await?
        .map_err(|e| format!("{e:#}"))
    };
    let templates = tidings_common::templates::Templates::load(
        &config.templates_dir,
        &config.default_locale,
        &tidings_common::REQUIRED_TEMPLATES,
    )
    .map(|_| ())
    .map_err(|e| e.to_string());
    let report = status::report(config, &queues, &db, templates);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    match (queues, db) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), _) => Err(anyhow::anyhow!("the broker does not answer: {e}")),
        (_, Err(e)) => Err(anyhow::anyhow!("the database does not answer: {e}")),
    }
}

fn print_text(report: &serde_json::Value) {
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
        print_upkeep(&db["upkeep"]);
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

fn print_upkeep(upkeep: &serde_json::Value) {
    if upkeep["autovacuum"] == false {
        println!(
            "database upkeep: WARNING: autovacuum is off on this server; nothing reclaims the \
             row versions every notification leaves, so the tables below and their indexes grow \
             and slow down for good (set autovacuum = on, or VACUUM them on a schedule)"
        );
    } else {
        println!("database upkeep: autovacuum on");
    }
    for t in upkeep["tables"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {:>10} live rows {:>10} dead, last vacuumed {}",
            t["table"].as_str().unwrap_or(""),
            t["live_rows"],
            t["dead_rows"],
            t["last_vacuum"].as_str().unwrap_or("never")
        );
    }
}
