//! `tidings migrate`: create the database if needed and apply pending migrations.

use tidings_common::Config;

pub fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = tidings_common::db::migrate(&config.database_url)
        .map_err(|e| anyhow::anyhow!("TIDINGS_DATABASE_URL: migration failed: {e}"))?;
    if applied.is_empty() {
        println!("database schema is up to date");
    } else {
        println!("applied migrations: {}", applied.join(", "));
    }
    Ok(())
}
