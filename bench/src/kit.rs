//! Shared by every phase: knobs, ports, child processes, memory, percentiles, printing, the
//! benchmark database (seeding and the realistic background) and the corpora folder.

use super::*;

pub(crate) fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Percentiles (p50, p99) of a list of milliseconds.
pub(crate) fn p50_p99(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        values
            .get(((values.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pick(0.5), pick(0.99))
}

pub(crate) fn row(label: String, value: String, ratio: String) {
    println!("{label:<56} {value:>16} {ratio:>10}");
}

pub(crate) fn per_s(v: f64) -> String {
    format!("{v:.0} /s")
}

pub(crate) fn fmt_rss(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

pub(crate) struct BenchEnv {
    pub(crate) database: String,
    pub(crate) database_url: String,
    pub(crate) topology: Topology,
    pub(crate) project: i64,
    pub(crate) author: i64,
    pub(crate) readers: Vec<i64>,
}

pub(crate) fn seed(database_url: &str) -> anyhow::Result<(i64, i64, Vec<i64>)> {
    let mut db = PgConnection::establish(database_url)?;
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let project: Id =
        diesel::sql_query("INSERT INTO projects (name) VALUES ('Bench') RETURNING id")
            .get_result(&mut db)?;
    let people: Vec<Id> = diesel::sql_query(
        "INSERT INTO people (kind, name, email)
         SELECT 'user', 'Reader ' || g, 'reader' || g || '@bench.example' FROM generate_series(0, 10) g
         RETURNING id",
    )
    .load(&mut db)?;
    diesel::sql_query(
        "INSERT INTO user_preferences (person_id) SELECT id FROM people WHERE kind = 'user'",
    )
    .execute(&mut db)?;
    let mut ids: Vec<i64> = people.into_iter().map(|p| p.id).collect();
    let author = ids.remove(0);
    background(&mut db, project.id)?;
    Ok((project.id, author, ids))
}

/// A realistic background around the benchmark's own rows: `BENCH_PEOPLE` users and as many
/// customers, `BENCH_BACKGROUND` messages spread over conversations of 20 messages, each
/// author a participant with a read cursor, a tenth of the users following the project, a
/// twentieth with "From customers" set to all. None of it is notified about the benchmark's
/// messages (they are replies to customers in conversations only the readers follow), but
/// every query that scans people or messages instead of looking them up pays for it.
pub(crate) fn background(db: &mut PgConnection, project: i64) -> anyhow::Result<()> {
    let people = knob("BENCH_PEOPLE", 2_000) as i64;
    let messages = knob("BENCH_BACKGROUND", 100_000) as i64;
    let conversations = (messages / 20).max(1);
    for statement in [
        "INSERT INTO people (kind, name, email)
         SELECT k, initcap(k) || ' ' || g, k || g || '@background.example'
         FROM generate_series(1, $1) g, unnest(ARRAY['user', 'customer']) k",
        "INSERT INTO user_preferences (person_id, from_customers)
         SELECT id, CASE WHEN id % 20 = 0 THEN 'all' ELSE 'mine' END FROM people
         WHERE kind = 'user' ON CONFLICT DO NOTHING",
        "INSERT INTO project_follows (project_id, person_id)
         SELECT $2, id FROM people WHERE kind = 'user' AND email LIKE '%@background.example'
         AND id % 10 = 0",
        "WITH i AS (INSERT INTO items (project_id, kind, title)
                    SELECT $2, 'ticket', 'background' FROM generate_series(1, $3) RETURNING id)
         INSERT INTO conversations (item_id, subject) SELECT id, 'Background' FROM i",
        "WITH ppl AS (SELECT array_agg(id) AS ids FROM people WHERE email LIKE '%@background.example'),
              conv AS (SELECT array_agg(id) AS ids FROM conversations WHERE subject = 'Background')
         INSERT INTO messages (conversation_id, author_id, body, internal, dispatched_at)
         SELECT conv.ids[1 + g % cardinality(conv.ids)],
                ppl.ids[1 + (g * 7919) % cardinality(ppl.ids)],
                'Background message ' || g, g % 5 = 0, now()
         FROM generate_series(1, $4) g, ppl, conv",
        "INSERT INTO conversation_participants (conversation_id, person_id)
         SELECT DISTINCT conversation_id, author_id FROM messages ON CONFLICT DO NOTHING",
        "INSERT INTO seen_cursors (person_id, conversation_id, last_seen_message_id)
         SELECT author_id, conversation_id, max(id) FROM messages
         GROUP BY author_id, conversation_id ON CONFLICT DO NOTHING",
    ] {
        diesel::sql_query(statement)
            .bind::<BigInt, _>(people)
            .bind::<BigInt, _>(project)
            .bind::<BigInt, _>(conversations)
            .bind::<BigInt, _>(messages)
            .execute(db)
            .with_context(|| format!("seeding the background: {statement}"))?;
    }
    diesel::sql_query("ANALYZE").execute(db)?;
    Ok(())
}

/// Enables `pg_stat_statements` in the benchmark database when the server has it loaded;
/// says whether it did.
pub(crate) fn track_statements(database_url: &str) -> bool {
    #[derive(QueryableByName)]
    struct Loaded {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        loaded: bool,
    }
    let Ok(mut db) = PgConnection::establish(database_url) else {
        return false;
    };
    let loaded = diesel::sql_query(
        "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%' AS loaded",
    )
    .get_result::<Loaded>(&mut db)
    .is_ok_and(|l| l.loaded);
    loaded
        && diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut db)
            .is_ok()
}

pub(crate) fn drop_database(name: &str) {
    let _ = Command::new(system::program("psql"))
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub(crate) fn corpora_dir() -> String {
    std::env::var("BENCH_CORPORA").unwrap_or_else(|_| "../shared/corpora".into())
}
