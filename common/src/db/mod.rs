//! PostgreSQL access: the connection pool, the blocking-call helper and embedded migrations.

pub mod email_log;
pub mod models;
pub mod schema;
pub mod states;
pub mod unsubscribe;

use std::sync::{Arc, LazyLock, mpsc};
use std::time::{Duration, Instant};

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use scheduled_thread_pool::ScheduledThreadPool;
use tracing::Instrument;

use crate::error::{Error, Result};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// A pool of PostgreSQL connections; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager<PgConnection>>,
    /// One permit per pooled connection: callers wait here, on the async side, instead of
    /// parking a blocking-pool thread each inside `pool.get()`.
    permits: Arc<tokio::sync::Semaphore>,
}

/// The threads every pool of the process opens, and drops, its connections on (r2d2 runs both
/// outside the caller's thread). Shared, so that [`quiesce`] can wait for all of them; a
/// dropped pool leaves only an idle timer there.
static CONNECTION_THREADS: LazyLock<Arc<ScheduledThreadPool>> = LazyLock::new(|| {
    Arc::new(
        ScheduledThreadPool::builder()
            .num_threads(CONNECTION_THREAD_COUNT)
            .thread_name_pattern("tidings-db-{}")
            .build(),
    )
});

const CONNECTION_THREAD_COUNT: usize = 4;

/// Waits, at most `limit`, until no connection is being opened or closed on the pools'
/// threads, and keeps those threads parked until the process exits. Called last, after
/// every [`Db`] is dropped.
///
/// libpq's TLS library (OpenSSL) frees its state in an `atexit` handler. A pool thread
/// still inside a TLS handshake, or dropping a pool's last connections, while the main
/// thread runs that handler crashes the process (SIGSEGV) on its way out of a clean stop.
/// One job per thread, each waiting for the others, proves every earlier job has ended.
/// Returns whether they all did in time (a connection attempt that hangs, say to an
/// unreachable server, is left behind rather than holding up the exit).
pub fn quiesce(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (arrived, arrivals) = mpsc::channel();
    let (release, parked) = mpsc::channel::<()>();
    let parked = Arc::new(std::sync::Mutex::new(parked));
    for _ in 0..CONNECTION_THREAD_COUNT {
        let (arrived, parked) = (arrived.clone(), Arc::clone(&parked));
        CONNECTION_THREADS.execute(move || {
            let _ = arrived.send(());
            // Each thread stays here: the first waiting for a release that never comes, the
            // others for the first's lock.
            let _ = parked.lock().map(|parked| parked.recv());
        });
    }
    let all = (0..CONNECTION_THREAD_COUNT).all(|_| {
        arrivals
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    });
    // The threads stay parked until the process is gone.
    std::mem::forget(release);
    all
}

/// Settings of every pooled session. JIT compilation is off: every statement Tidings runs is
/// a short one, and PostgreSQL's JIT fires on estimated cost alone, so a statement misjudged
/// on stale statistics (a table that grew since it was last analyzed) paid 5 to 12 ms of
/// compiling for a lookup that runs in one or two.
#[derive(Debug)]
struct SessionSettings;

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(&self, conn: &mut PgConnection) -> std::result::Result<(), diesel::r2d2::Error> {
        use diesel::RunQueryDsl;
        diesel::sql_query("SET jit = off")
            .execute(conn)
            .map(|_| ())
            .map_err(diesel::r2d2::Error::QueryError)
    }
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
            .connection_customizer(Box::new(SessionSettings))
            .thread_pool(Arc::clone(&CONNECTION_THREADS))
            .build_unchecked(ConnectionManager::new(url));
        Db {
            pool,
            permits: Arc::new(tokio::sync::Semaphore::new(size as usize)),
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
        let asked = std::time::Instant::now();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = pool.get()?;
            crate::observe::db_pool_wait(asked.elapsed());
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

/// The current text of every SQL function Tidings calls; see the file's header.
pub const FUNCTIONS_SQL: &str = include_str!("functions.sql");

/// The functions [`FUNCTIONS_SQL`] defines, with their argument types.
pub const FUNCTIONS: &[&str] = &[
    "tidings_messages_facts(BIGINT[])",
    "tidings_next_work_start(SMALLINT, TIME, TIME, TEXT, TIMESTAMPTZ)",
    "tidings_work_hold(BIGINT, TIMESTAMPTZ)",
    "tidings_audiences(BIGINT[], BIGINT[], TIMESTAMPTZ)",
    "tidings_may_see(BIGINT, BIGINT)",
];

/// What [`migrate`] did.
#[derive(Debug, Default)]
pub struct Migrated {
    /// The migration versions applied (empty when the schema was up to date).
    pub migrations: Vec<String>,
    /// Whether the SQL functions were (re)created from [`FUNCTIONS_SQL`].
    pub functions: bool,
}

/// Applies pending migrations, creating the database first if it does not exist, then the
/// SQL functions when the database's differ from [`FUNCTIONS_SQL`].
pub fn migrate(url: &str) -> std::result::Result<Migrated, BoxError> {
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
    Ok(Migrated {
        migrations: applied.iter().map(|v| v.to_string()).collect(),
        functions: apply_functions(&mut conn)?,
    })
}

/// The body of each function of [`FUNCTIONS_SQL`], in order: the text between `AS $$` and
/// `$$;`, as PostgreSQL stores it (`pg_proc.prosrc`).
fn function_bodies() -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut rest = FUNCTIONS_SQL;
    while let Some(start) = rest.find("AS $$") {
        let after = &rest[start + "AS $$".len()..];
        let Some(end) = after.find("$$;") else { break };
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

/// The mark each function's comment carries: the digest of the file that created it.
fn functions_mark() -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(FUNCTIONS_SQL.as_bytes());
    digest
        .iter()
        .fold(String::from("functions.sql sha256 "), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Runs [`FUNCTIONS_SQL`] unless every function's comment already carries its digest;
/// returns whether it ran. Concurrent callers take turns on an advisory lock, and the file
/// and the comments commit together.
pub fn apply_functions(conn: &mut PgConnection) -> diesel::QueryResult<bool> {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel::sql_types::{Nullable, Text};
    #[derive(QueryableByName)]
    struct Comment {
        #[diesel(sql_type = Nullable<Text>)]
        comment: Option<String>,
    }
    let mark = functions_mark();
    let bodies = function_bodies();
    // Current when every function carries this file's mark and still has its body (a
    // function edited by hand keeps its comment).
    let current = |conn: &mut PgConnection| -> diesel::QueryResult<bool> {
        for (function, body) in FUNCTIONS.iter().zip(&bodies) {
            let c: Comment = diesel::sql_query(
                "SELECT CASE WHEN p.prosrc = $2 THEN obj_description(p.oid, 'pg_proc') END AS comment
                 FROM (SELECT to_regprocedure($1) AS oid) f LEFT JOIN pg_proc p ON p.oid = f.oid",
            )
            .bind::<Text, _>(*function)
            .bind::<Text, _>(*body)
            .get_result(conn)?;
            if c.comment.as_deref() != Some(mark.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    if current(conn)? {
        return Ok(false);
    }
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('tidings functions', 0))")
            .execute(conn)?;
        if current(conn)? {
            return Ok(false);
        }
        conn.batch_execute(FUNCTIONS_SQL)?;
        for function in FUNCTIONS {
            conn.batch_execute(&format!("COMMENT ON FUNCTION {function} IS '{mark}'"))?;
        }
        Ok(true)
    })
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
