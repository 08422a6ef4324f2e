//! Phase 6: post-to-event latency with many open event streams, and the api's memory per
//! stream.

use super::*;

/// The live event feed under many open streams: `BENCH_LIVE_STREAMS` people (1,000), each
/// with the messenger's stream open and one conversation of their own; messages are posted
/// through the API at `BENCH_LIVE_RATE` per second (100) for `BENCH_LIVE_SECONDS` (10), each
/// to the next person's conversation. Measures post (request sent) to `notification` event
/// received, and the api's resident memory per open stream.
pub(crate) struct Live {
    pub(crate) streams: usize,
    pub(crate) posted: usize,
    pub(crate) received: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) rss_per_stream_kib: f64,
}

pub(crate) async fn live_phase(
    env: &BenchEnv,
    config: &Config,
    api_pid: u32,
) -> anyhow::Result<Live> {
    use std::collections::HashMap;
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
                        SELECT 'user', 'Live ' || g, 'live' || g || '@bench.example'
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
    // Paced posts, each to the next person's conversation.
    let total = (rate * seconds) as usize;
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
        let conversation = pairs[n % pairs.len()].conversation;
        let (http, base, token, author) = (http.clone(), base.clone(), token.clone(), env.author);
        posts.push(async move {
            let at = Instant::now();
            let m: serde_json::Value = http
                .post(format!("{base}/conversations/{conversation}/messages"))
                .bearer_auth(token)
                .json(&json!({"author_id": author, "body": "Is the printer fixed?", "internal": false}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
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
    let mut received: HashMap<i64, Instant> = HashMap::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(15);
    while received.len() < sent_at.len() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((id, at))) => {
                received.entry(id).or_insert(at);
            }
            _ => break,
        }
    }
    for reader in &readers {
        reader.abort();
    }
    if errors > 0 {
        eprintln!("bench: live: {errors} posts failed");
    }
    let latencies: Vec<f64> = sent_at
        .iter()
        .filter_map(|(id, at)| {
            received
                .get(id)
                .map(|r| r.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    let max_ms = latencies.iter().copied().fold(0.0, f64::max);
    let (p50_ms, p99_ms) = p50_p99(latencies.clone());
    Ok(Live {
        streams: readers.len(),
        posted: sent_at.len(),
        received: latencies.len(),
        p50_ms,
        p99_ms,
        max_ms,
        rss_per_stream_kib: after.saturating_sub(before) as f64 / readers.len().max(1) as f64,
    })
}

pub(crate) fn print_live(live: &Live) {
    row(
        format!(
            "live: post to event, {} open streams, p50 / p99 / max",
            live.streams
        ),
        format!(
            "{:.0}/{:.0}/{:.0} ms",
            live.p50_ms, live.p99_ms, live.max_ms
        ),
        String::new(),
    );
    row(
        format!("live: events received of posted ({} posts)", live.posted),
        format!("{}", live.received),
        String::new(),
    );
    row(
        "live: api RSS per open stream".into(),
        format!("{:.1} KiB", live.rss_per_stream_kib),
        String::new(),
    );
}
