//! Phase 6: post-to-event latency with many open event streams, alone and while dispatch
//! works through a bulk backlog, and the api's memory per stream.

use std::collections::HashMap;

use super::*;

/// The live event feed under many open streams: `BENCH_LIVE_STREAMS` people (1,000), each
/// with the messenger's stream open and one conversation of their own; messages are posted
/// through the API at `BENCH_LIVE_RATE` per second (100) for `BENCH_LIVE_SECONDS` (10), each
/// to the next person's conversation. Measures post (request sent) to `notification` event
/// received, and the api's resident memory per open stream.
///
/// Then the same posts again while dispatch works through bulk work queued just before them:
/// `BENCH_LIVE_BULK` messages (10,000) at fan-out 1, as a storm of emailed replies, and
/// `BENCH_LIVE_BURST` (3,000) at fan-out 10, all on the bulk lane.
pub(crate) struct Live {
    pub(crate) streams: usize,
    pub(crate) alone: Latency,
    pub(crate) loaded: Option<Loaded>,
    pub(crate) rss_per_stream_kib: f64,
}

/// Post-to-event latencies of one run of paced posts.
pub(crate) struct Latency {
    pub(crate) posted: usize,
    pub(crate) received: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    fn of(latencies: Vec<f64>, posted: usize) -> Latency {
        let max_ms = latencies.iter().copied().fold(0.0, f64::max);
        let received = latencies.len();
        let (p50_ms, p99_ms) = p50_p99(latencies);
        Latency {
            posted,
            received,
            p50_ms,
            p99_ms,
            max_ms,
        }
    }
}

/// The posts made while the bulk backlog was being dispatched.
pub(crate) struct Loaded {
    /// Bulk messages queued, and the notifications they make.
    pub(crate) bulk: usize,
    pub(crate) burst: usize,
    pub(crate) bulk_notifications: i64,
    /// Posts made (and their events) before the last bulk notification was written.
    pub(crate) during: Latency,
    /// Every post of the run.
    pub(crate) all: Latency,
    /// From the first bulk publish to the last bulk notification written.
    pub(crate) bulk_seconds: f64,
    /// Of the posts during the backlog: p50 and p99 from the api's transaction to dispatch's.
    pub(crate) to_dispatch: (f64, f64),
}

pub(crate) async fn live_phase(
    env: &BenchEnv,
    conn: &Connection,
    config: &Config,
    api_pid: u32,
) -> anyhow::Result<Live> {
    let streams = knob("BENCH_LIVE_STREAMS", 1_000) as i64;
    let rate = knob("BENCH_LIVE_RATE", 100).max(1);
    let seconds = knob("BENCH_LIVE_SECONDS", 10).max(1);
    let base = format!("http://{}", config.http_addr);
    let token = config.api_token.expose().clone();
    #[derive(QueryableByName)]
    struct Pair {
        #[diesel(sql_type = BigInt)]
        person: i64,
        #[diesel(sql_type = BigInt)]
        conversation: i64,
    }
    // One reader per conversation, following its item (F1), as in the pipeline phases.
    let pairs: Vec<Pair> = {
        let mut db = PgConnection::establish(&env.database_url)?;
        diesel::sql_query(
            "WITH p AS (INSERT INTO people (kind, name, email)
                        SELECT 'user', 'Live ' || g, 'live' || g || '.' || $3 || '@bench.example'
                        FROM generate_series(1, $2) g RETURNING id),
                  up AS (INSERT INTO user_preferences (person_id) SELECT id FROM p),
                  i AS (INSERT INTO items (project_id, kind, title)
                        SELECT $1, 'ticket', 'live ' || id FROM p RETURNING id, title),
                  c AS (INSERT INTO conversations (item_id, subject)
                        SELECT id, 'Live ticket' FROM i RETURNING id, item_id),
                  f AS (INSERT INTO item_follows (item_id, person_id)
                        SELECT i.id, substr(i.title, 6)::bigint FROM i RETURNING item_id, person_id)
             SELECT f.person_id AS person, c.id AS conversation
             FROM f JOIN c ON c.item_id = f.item_id ORDER BY f.person_id",
        )
        .bind::<BigInt, _>(env.project)
        .bind::<BigInt, _>(streams)
        // Unique per call: the phase runs twice with BENCH_HISTORY.
        .bind::<BigInt, _>(i64::from(rand::random::<u32>()))
        .load(&mut db)?
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut tokens = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let session: serde_json::Value = http
            .post(format!("{base}/people/{}/sessions", pair.person))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(session["token"].as_str().unwrap_or_default().to_string());
    }
    let before = rss_kib(api_pid).unwrap_or(0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let (open_tx, mut open_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut readers = Vec::with_capacity(tokens.len());
    for person_token in tokens {
        let (tx, open_tx) = (tx.clone(), open_tx.clone());
        // Each stream its own connection, as each browser holds its own.
        let client = reqwest::Client::new();
        let url = format!("{base}/me/events");
        readers.push(tokio::spawn(async move {
            let response = client.get(url).bearer_auth(person_token).send().await;
            let Ok(mut response) = response else {
                let _ = open_tx.send(false);
                return;
            };
            let _ = open_tx.send(response.status().is_success());
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if !block.contains("event: notification")
                        && !block.contains("event:notification")
                    {
                        continue;
                    }
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data:"))
                        .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok());
                    if let Some(id) = data.and_then(|d| d["message_id"].as_i64()) {
                        let _ = tx.send((id, Instant::now()));
                    }
                }
            }
        }));
    }
    drop((tx, open_tx));
    let mut open = 0;
    for _ in 0..readers.len() {
        match tokio::time::timeout(Duration::from_secs(30), open_rx.recv()).await {
            Ok(Some(true)) => open += 1,
            Ok(Some(false)) => {}
            _ => break,
        }
    }
    if open < readers.len() {
        bail!("only {open} of {} event streams opened", readers.len());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(api_pid).unwrap_or(0);
    let total = (rate * seconds) as usize;
    let poster = Poster {
        http: &http,
        base: &base,
        token: &token,
        authors: posters(&env.database_url)?,
        conversations: pairs.iter().map(|p| p.conversation).collect(),
    };
    let (sent_at, received) = poster.paced(rate, total, &mut rx).await;
    let alone = Latency::of(latencies(&sent_at, &received, None), sent_at.len());
    let loaded = if knob("BENCH_LIVE_BULK", 10_000) + knob("BENCH_LIVE_BURST", 3_000) > 0 {
        Some(loaded(env, conn, &poster, rate, total, &mut rx).await?)
    } else {
        None
    };
    for reader in &readers {
        reader.abort();
    }
    Ok(Live {
        streams: readers.len(),
        alone,
        loaded,
        rss_per_stream_kib: after.saturating_sub(before) as f64 / readers.len().max(1) as f64,
    })
}

/// Post (request sent) to event received, in milliseconds, of the posts sent before `until`.
fn latencies(
    sent_at: &HashMap<i64, Instant>,
    received: &HashMap<i64, Instant>,
    until: Option<Instant>,
) -> Vec<f64> {
    sent_at
        .iter()
        .filter(|(_, at)| until.is_none_or(|until| **at < until))
        .filter_map(|(id, at)| {
            received
                .get(id)
                .map(|r| r.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect()
}

/// Queues the bulk backlog, then posts as in the quiet run while dispatch works through it.
async fn loaded(
    env: &BenchEnv,
    conn: &Connection,
    poster: &Poster<'_>,
    rate: u64,
    total: usize,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(i64, Instant)>,
) -> anyhow::Result<Loaded> {
    let bulk = knob("BENCH_LIVE_BULK", 10_000);
    let burst = knob("BENCH_LIVE_BURST", 3_000);
    let mut db = PgConnection::establish(&env.database_url)?;
    let one = create_conversations(&mut db, env.project, &env.readers, bulk, 1)?;
    let ten = create_conversations(&mut db, env.project, &env.readers, burst, 10)?;
    // The backlog is written as the pipeline rows' messages are (one agent's posts, fan-out 1
    // and 10 by follows) and rides the bulk lane as emailed replies and automation posts do.
    // (A customer's message on an unassigned ticket notifies the whole team, which would make
    // the backlog a hundred times larger than it says.)
    let mut ids = insert_messages(&mut db, env.author, &one)?;
    ids.extend(insert_messages(&mut db, env.author, &ten)?);
    let expected = bulk as i64 + burst as i64 * 10;
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    // The whole backlog is queued before the first post.
    let queued_from = Instant::now();
    publish_pipelined(
        &channel,
        &env.topology.events_exchange(),
        MESSAGE_POSTED,
        ids.iter().map(|&id| pipeline::event(id)),
    )
    .await?;
    let watch_url = env.database_url.clone();
    let messages = ids.len() as i64;
    let drained = tokio::task::spawn_blocking(move || -> anyhow::Result<Instant> {
        let mut db = PgConnection::establish(&watch_url)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let written: i64 = diesel::sql_query(
                "SELECT count(*) AS n FROM messages
                 WHERE id BETWEEN $1 AND $2 AND dispatched_at IS NOT NULL",
            )
            .bind::<BigInt, _>(first)
            .bind::<BigInt, _>(last)
            .get_result::<Count>(&mut db)?
            .n;
            if written >= messages {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("only {written} of {messages} bulk messages dispatched in 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (sent_at, received) = poster.paced(rate, total, rx).await;
    let drained_at = drained.await??;
    let written: i64 = diesel::sql_query(
        "SELECT count(*) AS n FROM notifications WHERE message_id BETWEEN $1 AND $2",
    )
    .bind::<BigInt, _>(first)
    .bind::<BigInt, _>(last)
    .get_result::<Count>(&mut db)?
    .n;
    if written != expected {
        bail!("the bulk backlog wrote {written} notifications, not the {expected} it stands for");
    }
    // The bulk emails are sent before the next phase starts.
    pipeline::wait_terminal(&mut db, &ids, expected, Duration::from_secs(600))?;
    // Where the wait was: from the api's transaction to dispatch's (both database clocks).
    let during: Vec<i64> = sent_at
        .iter()
        .filter(|(_, at)| **at < drained_at)
        .map(|(id, _)| *id)
        .collect();
    #[derive(QueryableByName)]
    struct Waits {
        #[diesel(sql_type = diesel::sql_types::Double)]
        p50: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        p99: f64,
    }
    let waits: Waits = diesel::sql_query(
        "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0) AS p50,
                coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0) AS p99
         FROM (SELECT extract(epoch FROM dispatched_at - created_at)::float8 * 1000 AS ms
               FROM messages WHERE id = ANY($1)) t",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(&during)
    .get_result(&mut db)?;
    Ok(Loaded {
        to_dispatch: (waits.p50, waits.p99),
        bulk: bulk as usize,
        burst: burst as usize,
        bulk_notifications: expected,
        during: Latency::of(
            latencies(&sent_at, &received, Some(drained_at)),
            sent_at.values().filter(|at| **at < drained_at).count(),
        ),
        all: Latency::of(latencies(&sent_at, &received, None), sent_at.len()),
        bulk_seconds: drained_at.duration_since(queued_from).as_secs_f64(),
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Fifty agents who post in the live rows.
fn posters(database_url: &str) -> anyhow::Result<Vec<i64>> {
    let mut db = PgConnection::establish(database_url)?;
    let ids: Vec<Count> = diesel::sql_query(
        "INSERT INTO people (kind, name, email)
         SELECT 'user', 'Agent ' || g, 'agent' || g || '.' || $1 || '@bench.example'
         FROM generate_series(1, 50) g RETURNING id AS n",
    )
    .bind::<BigInt, _>(i64::from(rand::random::<u32>()))
    .load(&mut db)?;
    Ok(ids.into_iter().map(|c| c.n).collect())
}

/// Posts messages through the API as a person would, each to the next conversation.
struct Poster<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
    /// Who posts, in turn: agents of their own, so the post rate check (which reads an
    /// author's newest messages) reads what a person's own posts are, not the whole
    /// benchmark's.
    authors: Vec<i64>,
    conversations: Vec<i64>,
}

impl Poster<'_> {
    /// `total` posts at `rate` per second; returns when each was sent and when its
    /// `notification` event arrived (waiting up to 15 s for the last).
    async fn paced(
        &self,
        rate: u64,
        total: usize,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(i64, Instant)>,
    ) -> (HashMap<i64, Instant>, HashMap<i64, Instant>) {
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let started = Instant::now();
        let mut posts = futures_util::stream::FuturesUnordered::new();
        let mut sent_at: HashMap<i64, Instant> = HashMap::with_capacity(total);
        let mut errors = 0usize;
        for n in 0..total {
            let due = started + interval * n as u32;
            while Instant::now() < due {
                tokio::select! {
                    Some(done) = posts.next(), if !posts.is_empty() => match done {
                        Ok((id, at)) => { sent_at.insert(id, at); }
                        Err(_) => errors += 1,
                    },
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            let conversation = self.conversations[n % self.conversations.len()];
            let url = format!("{}/conversations/{conversation}/messages", self.base);
            let request = self
                .http
                .post(url)
                .bearer_auth(self.token)
                .json(&json!({"author_id": self.authors[n % self.authors.len()], "body": "Is the printer fixed?", "internal": false}));
            posts.push(async move {
                let at = Instant::now();
                let m: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
                Ok::<_, anyhow::Error>((m["id"].as_i64().unwrap_or_default(), at))
            });
        }
        while let Some(done) = posts.next().await {
            match done {
                Ok((id, at)) => {
                    sent_at.insert(id, at);
                }
                Err(_) => errors += 1,
            }
        }
        if errors > 0 {
            eprintln!("bench: live: {errors} posts failed");
        }
        let mut received: HashMap<i64, Instant> = HashMap::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(15);
        while sent_at.keys().any(|id| !received.contains_key(id)) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((id, at))) => {
                    if sent_at.contains_key(&id) {
                        received.entry(id).or_insert(at);
                    }
                }
                _ => break,
            }
        }
        (sent_at, received)
    }
}

pub(crate) fn print_live(live: &Live) {
    let latency = |label: String, l: &Latency| {
        row(
            label,
            format!("{:.0}/{:.0}/{:.0} ms", l.p50_ms, l.p99_ms, l.max_ms),
            String::new(),
        );
    };
    latency(
        format!(
            "live: post to event, {} open streams, p50 / p99 / max",
            live.streams
        ),
        &live.alone,
    );
    row(
        format!(
            "live: events received of posted ({} posts)",
            live.alone.posted
        ),
        format!("{}", live.alone.received),
        String::new(),
    );
    if let Some(loaded) = &live.loaded {
        latency(
            format!(
                "live: the same during a bulk backlog ({} posts, goal p99 < 100 ms)",
                loaded.during.posted
            ),
            &loaded.during,
        );
        row(
            "  of which the api's transaction to dispatch's, p50 / p99".into(),
            format!("{:.0}/{:.0} ms", loaded.to_dispatch.0, loaded.to_dispatch.1),
            String::new(),
        );
        latency("live: the same, every post of that run".into(), &loaded.all);
        row(
            format!(
                "live: events received of posted ({} posts)",
                loaded.all.posted
            ),
            format!("{}", loaded.all.received),
            String::new(),
        );
        row(
            format!(
                "live: backlog of {} + {} at fan-out 10 dispatched in",
                loaded.bulk, loaded.burst
            ),
            format!("{:.1} s", loaded.bulk_seconds),
            format!(
                "{:.0}/s",
                loaded.bulk_notifications as f64 / loaded.bulk_seconds
            ),
        );
    }
    row(
        "live: api RSS per open stream".into(),
        format!("{:.1} KiB", live.rss_per_stream_kib),
        String::new(),
    );
}

impl Latency {
    fn json(&self) -> serde_json::Value {
        json!({"posted": self.posted, "received": self.received, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms})
    }
}

impl Live {
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "streams": self.streams,
            "alone": self.alone.json(),
            "under_load": self.loaded.as_ref().map(|l| json!({
                "bulk_messages": l.bulk,
                "burst_messages_fanout10": l.burst,
                "bulk_notifications": l.bulk_notifications,
                "bulk_seconds": l.bulk_seconds,
                "api_to_dispatch_ms": {"p50": l.to_dispatch.0, "p99": l.to_dispatch.1},
                "during_backlog": l.during.json(),
                "all": l.all.json(),
            })),
            "api_rss_kib_per_stream": self.rss_per_stream_kib,
        })
    }
}
