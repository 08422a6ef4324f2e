//! PostgreSQL access: the connection pool, the blocking-call helper and embedded migrations.

pub mod email_log;
pub mod models;
pub mod schema;
pub mod states;

use std::time::Duration;

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tracing::Instrument;

use crate::error::{Error, Result};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// A pool of PostgreSQL connections; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager<PgConnection>>,
    /// One permit per pooled connection: callers wait here, on the async side, instead of
    /// parking a blocking-pool thread each inside `pool.get()`.
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Db {
    /// Builds the pool without connecting: a database that is down at start shows up as
    /// transient errors on first use, which workers retry, instead of a crash.
    pub fn new(url: &str, size: u32) -> Self {
        let pool = Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            // A broken connection surfaces as an error on use and is then dropped by the pool;
            // testing every checkout would cost a round trip per call.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(5))
            .build_unchecked(ConnectionManager::new(url));
        Db {
            pool,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(size as usize)),
        }
    }

    /// Runs blocking diesel work on the blocking thread pool, inside the caller's span.
    /// The pooled connection is taken and returned inside the closure, never across an `.await`.
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = pool.get()?;
            crate::observe::db_in_use(1.0);
            let done = work(&mut conn);
            crate::observe::db_in_use(-1.0);
            done
        })
        .instrument(tracing::Span::current())
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies pending migrations, creating the database first if it does not exist; returns the
/// versions applied (empty when the schema is up to date).
pub fn migrate(url: &str) -> std::result::Result<Vec<String>, BoxError> {
    use diesel::Connection;
    let mut conn = match PgConnection::establish(url) {
        Ok(conn) => conn,
        Err(e) if e.to_string().contains("does not exist") => {
            create_database(url)?;
            PgConnection::establish(url)?
        }
        Err(e) => return Err(e.into()),
    };
    let applied = conn.run_pending_migrations(MIGRATIONS)?;
    Ok(applied.iter().map(|v| v.to_string()).collect())
}

/// The id of the project called `name`, created when missing (the project customers' new
/// emails become tickets in). Concurrent callers are serialised by a transaction-scoped lock,
/// so one project is created however many ask at once.
pub fn ensure_project(conn: &mut PgConnection, name: &str) -> diesel::QueryResult<i64> {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    use schema::projects;
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<Text, _>(format!("tidings-project {name}"))
            .execute(conn)?;
        let found: Option<i64> = projects::table
            .filter(projects::name.eq(name))
            .select(projects::id)
            .order(projects::id)
            .first(conn)
            .optional()?;
        match found {
            Some(id) => Ok(id),
            None => diesel::insert_into(projects::table)
                .values(projects::name.eq(name))
                .returning(projects::id)
                .get_result(conn),
        }
    })
}

/// Splits `postgres://host/name?opts` into the URL of the server's `postgres` database and `name`.
fn maintenance_url(url: &str) -> Option<(String, String)> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, name) = base.rsplit_once('/')?;
    if name.is_empty() || server.ends_with('/') {
        return None;
    }
    let mut maintenance = format!("{server}/postgres");
    if let Some(query) = query {
        maintenance.push('?');
        maintenance.push_str(query);
    }
    Some((maintenance, name.to_string()))
}

fn create_database(url: &str) -> std::result::Result<(), BoxError> {
    use diesel::{Connection, RunQueryDsl};
    let (maintenance, name) =
        maintenance_url(url).ok_or_else(|| format!("cannot find a database name in {url:?}"))?;
    let mut conn = PgConnection::establish(&maintenance)?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    diesel::sql_query(format!("CREATE DATABASE {quoted}")).execute(&mut conn)?;
    tracing::info!(database = %name, "created database");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn maintenance_url_keeps_options() {
        assert_eq!(
            super::maintenance_url("postgres://u@h:5432/app?sslmode=disable"),
            Some((
                "postgres://u@h:5432/postgres?sslmode=disable".into(),
                "app".into()
            ))
        );
        assert_eq!(super::maintenance_url("postgres://u@h:5432/"), None);
    }
}
