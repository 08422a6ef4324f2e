//! Phase 3: the pipeline's burst rate at a fan-out, with the CPU per notification of every
//! process and the database statements it ran.

use super::*;

/// Creates `conversations` conversations, each followed by the first `fanout` readers, and
/// returns their ids.
pub(crate) fn create_conversations(
    conn: &mut PgConnection,
    project: i64,
    readers: &[i64],
    conversations: u64,
    fanout: usize,
) -> anyhow::Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<Id> = diesel::sql_query(
        "WITH i AS (INSERT INTO items (project_id, kind, title)
                    SELECT $1, 'ticket', 'bench' FROM generate_series(1, $2) RETURNING id)
         INSERT INTO conversations (item_id, subject) SELECT id, 'Bench ticket' FROM i RETURNING id",
    )
    .bind::<BigInt, _>(project)
    .bind::<BigInt, _>(conversations as i64)
    .load(conn)?;
    let ids: Vec<i64> = ids.into_iter().map(|r| r.id).collect();
    diesel::sql_query(
        "INSERT INTO item_follows (item_id, person_id)
         SELECT c.item_id, r FROM conversations c, unnest($2::bigint[]) r WHERE c.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
    .bind::<diesel::sql_types::Array<BigInt>, _>(&readers[..fanout])
    .execute(conn)?;
    Ok(ids)
}

/// Inserts one message per conversation and returns the message ids.
pub(crate) fn insert_messages(
    conn: &mut PgConnection,
    author: i64,
    conversations: &[i64],
) -> anyhow::Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<Id> = diesel::sql_query(
        "INSERT INTO messages (conversation_id, author_id, body, internal)
         SELECT c, $2, 'The printer is on fire again.', false FROM unnest($1::bigint[]) c
         RETURNING id",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(conversations)
    .bind::<BigInt, _>(author)
    .load(conn)?;
    Ok(ids.into_iter().map(|r| r.id).collect())
}

pub(crate) fn event(message_id: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({ "message_id": message_id })).expect("json")
}

/// Waits until `expected` notifications of `messages` are terminal; returns the time of the
/// last email and how many were sent.
pub(crate) fn wait_terminal(
    conn: &mut PgConnection,
    messages: &[i64],
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<(chrono::DateTime<Utc>, i64)> {
    #[derive(QueryableByName)]
    struct Progress {
        #[diesel(sql_type = BigInt)]
        done: i64,
        #[diesel(sql_type = BigInt)]
        sent: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        last: Option<chrono::DateTime<Utc>>,
    }
    let first = messages.iter().copied().min().unwrap_or(0);
    let last = messages.iter().copied().max().unwrap_or(0);
    let deadline = Instant::now() + timeout;
    loop {
        // The phase's messages were inserted by one statement: their ids are one range,
        // which is much cheaper to read than a list of thousands of ids.
        let p: Progress = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE state IN ('sent', 'skipped', 'failed')) AS done,
                    count(*) FILTER (WHERE state = 'sent') AS sent, max(sent_at) AS last
             FROM notifications WHERE message_id BETWEEN $1 AND $2",
        )
        .bind::<BigInt, _>(first)
        .bind::<BigInt, _>(last)
        .get_result(conn)?;
        if p.done >= expected {
            return Ok((p.last.unwrap_or_else(tidings_common::clock::now), p.sent));
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} notifications finished in {timeout:?}",
                p.done
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) struct PipelineResult {
    pub(crate) notifications: i64,
    pub(crate) sent: i64,
    pub(crate) rate: f64,
    /// CPU milliseconds per notification, by process group, and the total.
    pub(crate) cost: Vec<(String, f64)>,
    /// Database statements per notification (with `pg_stat_statements`).
    pub(crate) statements: Option<f64>,
}

/// Phase 3: `messages` messages at `fanout` recipients each, from event to accepted email.
pub(crate) async fn pipeline(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    messages: u64,
    fanout: usize,
) -> anyhow::Result<PipelineResult> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let conversations = create_conversations(&mut db, env.project, &env.readers, messages, fanout)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let statements_before = statements_run(&mut db);
    let cpu_before = processes.sample();
    let started = tidings_common::clock::now();
    publish_pipelined(
        &channel,
        &env.topology.events_exchange(),
        MESSAGE_POSTED,
        ids.iter().map(|&id| event(id)),
    )
    .await?;
    let expected = messages as i64 * fanout as i64;
    let (last, sent) = wait_terminal(&mut db, &ids, expected, Duration::from_secs(600))?;
    let cost = cpu_cost(&cpu_before, &processes.sample(), expected);
    let statements = statements_before
        .zip(statements_run(&mut db))
        .map(|(before, after)| (after - before) as f64 / expected as f64);
    let elapsed = (last - started).as_seconds_f64() - env.topology.seen_window.as_secs_f64();
    Ok(PipelineResult {
        notifications: expected,
        sent,
        rate: expected as f64 / elapsed,
        cost,
        statements,
    })
}

/// CPU time (user + system) a process has used, in seconds, from /proc (clock ticks of 10 ms).
pub(crate) fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

pub(crate) fn cpu_seconds() -> f64 {
    cpu_of(std::process::id()).unwrap_or(0.0)
}

/// Every process whose command name is one of `names`.
pub(crate) fn pids_named(names: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim()))
        })
        .collect()
}

/// The processes whose CPU time is counted, by group.
pub(crate) struct Processes {
    pub(crate) roles: Vec<(&'static str, u32)>,
    pub(crate) sink: u32,
}

/// CPU seconds per process (pid) of each group at one moment.
pub(crate) type CpuSample = Vec<(String, Vec<(u32, f64)>)>;

impl Processes {
    pub(crate) fn sample(&self) -> CpuSample {
        let of = |pids: Vec<u32>| -> Vec<(u32, f64)> {
            pids.into_iter()
                .filter_map(|pid| Some((pid, cpu_of(pid)?)))
                .collect()
        };
        let mut sample: CpuSample = self
            .roles
            .iter()
            .map(|(role, pid)| (role.to_string(), of(vec![*pid])))
            .collect();
        sample.push(("postgres".into(), of(pids_named(&["postgres"]))));
        sample.push((
            "rabbitmq".into(),
            of(pids_named(&["beam.smp", "erl_child_setup", "inet_gethost"])),
        ));
        sample.push(("smtp-sink".into(), of(vec![self.sink])));
        sample
    }
}

/// CPU milliseconds per notification of each group between two samples, and their total.
/// Processes that started in between count from zero; ones that ended are missed.
pub(crate) fn cpu_cost(
    before: &CpuSample,
    after: &CpuSample,
    notifications: i64,
) -> Vec<(String, f64)> {
    let mut cost: Vec<(String, f64)> = after
        .iter()
        .map(|(group, pids)| {
            let earlier = before
                .iter()
                .find(|(g, _)| g == group)
                .map(|(_, p)| p.as_slice())
                .unwrap_or_default();
            let spent: f64 = pids
                .iter()
                .map(|(pid, cpu)| {
                    let was = earlier
                        .iter()
                        .find(|(p, _)| p == pid)
                        .map_or(0.0, |(_, c)| *c);
                    (cpu - was).max(0.0)
                })
                .sum();
            (group.clone(), spent * 1000.0 / notifications.max(1) as f64)
        })
        .collect();
    let total = cost.iter().map(|(_, ms)| ms).sum();
    cost.push(("total".into(), total));
    cost
}

/// Statements the benchmark database has run so far, when `pg_stat_statements` is loaded.
pub(crate) fn statements_run(conn: &mut PgConnection) -> Option<i64> {
    #[derive(QueryableByName)]
    struct Calls {
        #[diesel(sql_type = Nullable<BigInt>)]
        calls: Option<i64>,
    }
    diesel::sql_query(
        "SELECT sum(calls)::bigint AS calls FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .get_result::<Calls>(conn)
    .ok()?
    .calls
}

/// The statements of the benchmark database that took the most time so far (with
/// `pg_stat_statements`): calls, total and mean milliseconds, and the start of the text.
pub(crate) fn top_statements(conn: &mut PgConnection, limit: i64) -> Vec<(i64, f64, f64, String)> {
    #[derive(QueryableByName)]
    struct Statement {
        #[diesel(sql_type = BigInt)]
        calls: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        total_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        mean_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        query: String,
    }
    diesel::sql_query(
        "SELECT calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS query
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load::<Statement>(conn)
    .map(|rows| {
        rows.into_iter()
            .map(|r| (r.calls, r.total_ms, r.mean_ms, r.query))
            .collect()
    })
    .unwrap_or_default()
}
