//! `tidings migrate`: create the database if needed, apply pending migrations and the SQL
//! functions' current text.

use tidings_common::Config;

pub fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = tidings_common::db::migrate(&config.database_url).map_err(|e| {
        let e = tidings_common::tls::explain_database_error(&config.database_url, &e.to_string());
        anyhow::anyhow!("TIDINGS_DATABASE_URL: migration failed: {e}")
    })?;
    if applied.migrations.is_empty() {
        println!("database schema is up to date");
    } else {
        println!("applied migrations: {}", applied.migrations.join(", "));
    }
    if applied.functions {
        println!(
            "SQL functions created from functions.sql: {}",
            tidings_common::db::FUNCTIONS.join(", ")
        );
    }
    let mut conn = <diesel::PgConnection as diesel::Connection>::establish(&config.database_url)
        .map_err(|e| anyhow::anyhow!("TIDINGS_DATABASE_URL: {e}"))?;
    let project = tidings_common::db::ensure_project(&mut conn, &config.inbound_project)
        .map_err(|e| anyhow::anyhow!("TIDINGS_INBOUND_PROJECT: cannot create the project: {e}"))?;
    println!(
        "new customer email becomes a ticket in project {project} ({:?})",
        config.inbound_project
    );
    Ok(())
}
