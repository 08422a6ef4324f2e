//! Phase 4: the highest steady rate held with p99 lateness on time, and where the lateness
//! went.

use super::*;

/// Lateness of a steady phase: email accepted (the mailer's `sent_at`) − message published −
/// window, over every notification.
#[derive(Debug, Clone)]
pub(crate) struct Lateness {
    pub(crate) asked_rate: f64,
    pub(crate) offered_rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) notifications: i64,
    /// CPU milliseconds per notification over the step, as in [`cpu_cost`].
    pub(crate) cost: Vec<(String, f64)>,
}

/// p99 under this is "on time".
pub(crate) const ON_TIME_P99_MS: f64 = 250.0;

/// Publishing tasks (each with its own channel) of a steady phase.
pub(crate) const PUBLISHERS: usize = 4;

impl Lateness {
    /// On time, at the rate asked for (the publisher really offered it).
    pub(crate) fn held(&self) -> bool {
        self.p99_ms < ON_TIME_P99_MS && self.offered_rate >= 0.95 * self.asked_rate
    }
}

/// One paced publisher: publishes `ids` evenly over `seconds`, with its confirms pipelined;
/// returns when each id was published.
pub(crate) async fn paced_publisher(
    channel: lapin::Channel,
    exchange: String,
    ids: Vec<i64>,
    seconds: f64,
) -> anyhow::Result<Vec<(i64, chrono::DateTime<Utc>)>> {
    let rate = ids.len() as f64 / seconds;
    let tick = Duration::from_millis(5);
    let mut published = Vec::with_capacity(ids.len());
    let mut pending = VecDeque::new();
    let started = Instant::now();
    let mut next = 0usize;
    while next < ids.len() {
        let due = ((started.elapsed().as_secs_f64() * rate).ceil() as usize).min(ids.len());
        while next < due {
            let id = ids[next];
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    MESSAGE_POSTED.into(),
                    BasicPublishOptions::default(),
                    &event(id),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            published.push((id, tidings_common::clock::now()));
            pending.push_back(confirm);
            while pending.len() >= CONFIRM_WINDOW {
                if !pending.pop_front().expect("non-empty").await?.is_ack() {
                    bail!("broker nacked a publish");
                }
            }
            next += 1;
        }
        tokio::time::sleep(tick).await;
    }
    for confirm in pending {
        if !confirm.await?.is_ack() {
            bail!("broker nacked a publish");
        }
    }
    channel.close(200, "published".into()).await?;
    Ok(published)
}

/// A steady `rate` notifications/s at `fanout` recipients per message for `seconds`.
/// Messages are written beforehand; [`PUBLISHERS`] paced tasks publish their events.
pub(crate) async fn steady(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    fanout: usize,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Lateness> {
    let mut db = PgConnection::establish(&env.database_url)?;
    let messages = ((rate * seconds as f64) / fanout as f64).round().max(1.0) as u64;
    let conversations = create_conversations(&mut db, env.project, &env.readers, messages, fanout)?;
    let ids = insert_messages(&mut db, env.author, &conversations)?;
    let cpu_before = processes.sample();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let channel = conn.create_channel().await?;
        channel.confirm_select(Default::default()).await?;
        let share: Vec<i64> = ids.iter().copied().skip(p).step_by(PUBLISHERS).collect();
        tasks.push(tokio::spawn(paced_publisher(
            channel,
            env.topology.events_exchange(),
            share,
            seconds as f64,
        )));
    }
    let mut published = Vec::with_capacity(ids.len());
    for task in tasks {
        published.extend(task.await??);
    }
    let first = published.iter().map(|(_, at)| *at).min();
    let last = published.iter().map(|(_, at)| *at).max();
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_seconds_f64(),
        _ => 0.0,
    };
    // n publishes spread over n - 1 intervals.
    let offered_rate = (ids.len().saturating_sub(1) * fanout) as f64 / span.max(1e-3);
    let expected = (ids.len() * fanout) as i64;
    wait_terminal(&mut db, &ids, expected, Duration::from_secs(600))?;
    let cost = cpu_cost(&cpu_before, &processes.sample(), expected);
    let sent: Vec<(i64, Option<chrono::DateTime<Utc>>)> =
        tidings_common::db::schema::notifications::table
            .filter(tidings_common::db::schema::notifications::message_id.eq_any(&ids))
            .select((
                tidings_common::db::schema::notifications::message_id,
                tidings_common::db::schema::notifications::sent_at,
            ))
            .load(&mut db)?;
    let at: std::collections::HashMap<i64, chrono::DateTime<Utc>> = published.into_iter().collect();
    let window_ms = env.topology.seen_window.as_secs_f64() * 1000.0;
    let late: Vec<f64> = sent
        .iter()
        .filter_map(|(id, sent_at)| Some((*sent_at)? - *at.get(id)?))
        .map(|d| d.as_seconds_f64() * 1000.0 - window_ms)
        .collect();
    let notifications = late.len() as i64;
    let max_ms = late.iter().copied().reduce(f64::max).unwrap_or(f64::NAN);
    let (p50_ms, p99_ms) = p50_p99(late);
    let stages = stages(&mut db, &ids, &at)?;
    eprintln!(
        "bench:   stages p50/p99 ms: published→dispatched {:.0}/{:.0}, due→claimed {:.0}/{:.0}, claimed→recorded {:.0}/{:.0}",
        stages[0].0, stages[0].1, stages[1].0, stages[1].1, stages[2].0, stages[2].1
    );
    Ok(Lateness {
        asked_rate: rate,
        offered_rate,
        p50_ms,
        p99_ms,
        max_ms,
        notifications,
        cost,
    })
}

/// Where a steady phase's lateness went, as (p50, p99) milliseconds of three stages: event
/// published → message dispatched (dispatch's queue and transaction), notification due →
/// claimed by the mailer (the delay's dead-lettering and the mailer's queue), claimed →
/// recorded as sent (rendering, SMTP and the recording transaction).
pub(crate) fn stages(
    db: &mut PgConnection,
    ids: &[i64],
    published: &std::collections::HashMap<i64, chrono::DateTime<Utc>>,
) -> anyhow::Result<[(f64, f64); 3]> {
    use tidings_common::db::schema::{messages, notifications};
    type Time = chrono::DateTime<Utc>;
    type Row = (i64, Option<Time>, Time, Option<Time>, Option<Time>);
    let rows: Vec<Row> = notifications::table
        .inner_join(messages::table)
        .filter(notifications::message_id.eq_any(ids))
        .select((
            notifications::message_id,
            messages::dispatched_at,
            notifications::due_at,
            notifications::claimed_at,
            notifications::sent_at,
        ))
        .load(db)?;
    let ms = |d: chrono::TimeDelta| d.as_seconds_f64() * 1000.0;
    let (mut dispatch, mut delay, mut send) = (Vec::new(), Vec::new(), Vec::new());
    for (id, dispatched, due, claimed, sent) in rows {
        if let (Some(at), Some(dispatched)) = (published.get(&id), dispatched) {
            dispatch.push(ms(dispatched - *at));
        }
        if let Some(claimed) = claimed {
            delay.push(ms(claimed - due));
            if let Some(sent) = sent {
                send.push(ms(sent - claimed));
            }
        }
    }
    Ok([p50_p99(dispatch), p50_p99(delay), p50_p99(send)])
}

/// Phase 4: the highest steady rate held on time at `fanout`, found by stepping the rate up:
/// from 0.4× the burst rate, by 1.2× per step, until a step does not hold (at most `steps`
/// rates). Starting low keeps a failing step only a little above what the pipeline holds, so
/// its backlog does not spill into the next step. If even 0.4× does not hold, the rate steps
/// down instead, by 1.25× per step, until one holds, so the row still says what is held.
/// Returns the best rate held (if any) and every step tried.
pub(crate) async fn sustained(
    env: &BenchEnv,
    conn: &Connection,
    processes: &Processes,
    fanout: usize,
    burst: f64,
    seconds: u64,
    steps: u64,
) -> anyhow::Result<(Option<Lateness>, Vec<Lateness>)> {
    let mut rate = (0.4 * burst).max(10.0);
    let mut tried: Vec<Lateness> = Vec::new();
    let mut best: Option<Lateness> = None;
    for _ in 0..steps {
        eprintln!("bench: steady {rate:.0} notifications/s at fan-out {fanout} for {seconds} s");
        let step = steady(env, conn, processes, fanout, rate, seconds).await?;
        eprintln!(
            "bench:   offered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms -> {}",
            step.offered_rate,
            step.p50_ms,
            step.p99_ms,
            if step.held() { "held" } else { "not held" }
        );
        let held = step.held();
        tried.push(step.clone());
        let first = tried.len() == 1;
        if held {
            let stepping_down = best.is_none() && !first;
            best = Some(step);
            if stepping_down {
                break;
            }
            rate *= 1.2;
        } else if best.is_none() {
            rate /= 1.25;
        } else {
            break;
        }
        // The next step starts from a settled system.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok((best, tried))
}
