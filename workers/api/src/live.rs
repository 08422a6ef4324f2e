//! `GET /me/events`: each person's live event feed as server-sent events (SPEC D1, D8).
//!
//! The rows of `live_events` are the source of truth (see `tidings_common::live`). Every api
//! process binds its own exclusive, auto-delete queue to the events exchange and wakes the
//! streams it holds for the people a [`LivePoke`] names, so any api process of a fleet serves
//! any person. A woken stream reads its person's rows after the last id it sent; it also
//! reads them on every keep-alive tick, so a lost poke costs latency, never an event.
//!
//! Each event's `id:` is the row id, which increases per person. A client that reconnects
//! with `Last-Event-ID` gets exactly the rows after it; one too far behind (more than
//! [`REPLAY_MAX`] events, or older than the retention) gets one `reset` event and should
//! fetch its inbox again. `notification`, `seen` and `conversation` events carry the unread
//! counts as they are when the event is sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tidings_common::amqp::Topology;
use tidings_common::live::{self, LIVE_ROUTING_KEY, LivePoke};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::routes::me::inbox_of;
use crate::session::Me;
use crate::state::AppState;

/// How often a stream sends a keep-alive comment and reads its rows anyway.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events replayed to a resuming client; further behind, it gets `reset`.
pub const REPLAY_MAX: i64 = 1000;
/// Rows read per query.
const PAGE: i64 = 200;
/// Open streams one person may hold on one api process (tabs and devices); more get 429, so
/// one token cannot take every connection slot of the process.
pub const STREAMS_PER_PERSON: usize = 16;

/// The streams this process holds, by person: a counter each poke increments.
#[derive(Default)]
pub struct Hub {
    people: Mutex<HashMap<i64, watch::Sender<u64>>>,
}

impl Hub {
    /// A new stream of `person`'s; `None` when they hold [`STREAMS_PER_PERSON`] already.
    fn subscribe(&self, person: i64) -> Option<watch::Receiver<u64>> {
        let receiver = {
            let mut people = self.people.lock().expect("hub lock");
            let sender = people.entry(person).or_insert_with(|| watch::channel(0).0);
            (sender.receiver_count() < STREAMS_PER_PERSON).then(|| sender.subscribe())
        };
        tidings_common::observe::live_streams(self.streams());
        receiver
    }

    /// Forgets `person` once none of their streams is open.
    fn release(&self, person: i64) {
        let mut people = self.people.lock().expect("hub lock");
        if people.get(&person).is_some_and(|s| s.receiver_count() == 0) {
            people.remove(&person);
        }
        drop(people);
        tidings_common::observe::live_streams(self.streams());
    }

    fn wake(&self, people: &[i64]) {
        let map = self.people.lock().expect("hub lock");
        for person in people {
            if let Some(sender) = map.get(person) {
                sender.send_modify(|n| *n += 1);
            }
        }
    }

    fn wake_all(&self) {
        for sender in self.people.lock().expect("hub lock").values() {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.people
            .lock()
            .expect("hub lock")
            .values()
            .map(|s| s.receiver_count())
            .sum()
    }
}

/// Listens for [`LivePoke`]s on this process's own queue until `shutdown`, reconnecting
/// after any failure (and then waking every stream, which may have missed pokes).
pub fn spawn_listener(
    hub: Arc<Hub>,
    url: String,
    topology: Topology,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        loop {
            let listened = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listen(&hub, &url, &topology) => r,
            };
            if let Err(e) = listened {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "live event listener failed; reconnecting");
            }
            hub.wake_all();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    })
}

async fn listen(hub: &Hub, url: &str, topology: &Topology) -> tidings_common::Result<()> {
    let connection = tidings_common::amqp::connect(url, "api live").await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology.events_exchange().into(),
            LIVE_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    info!(queue = %queue.name(), "listening for live events");
    // Pokes sent while this listener was not bound are caught by the streams' own reads.
    hub.wake_all();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match serde_json::from_slice::<LivePoke>(&delivery.data) {
            Ok(poke) => hub.wake(&poke.people),
            Err(e) => debug!(error = %e, "ignoring a malformed live poke"),
        }
    }
    Err(tidings_common::Error::Task(
        "live event consumer ended".into(),
    ))
}

fn last_event_id(headers: &HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0)
}

/// Answers `GET /me/events`.
pub fn stream(state: AppState, me: Me, headers: &HeaderMap) -> Response {
    let Some(wake) = state.hub.subscribe(me.id) else {
        return crate::error::ApiError {
            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "you already hold {STREAMS_PER_PERSON} event streams on this server; close one"
            ),
            field: None,
        }
        .into_response();
    };
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(feed(state, me, last_event_id(headers), wake, tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let h = response.headers_mut();
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// Where a new stream starts, and whether it starts with `reset`.
fn start(
    conn: &mut diesel::PgConnection,
    me: Me,
    last: Option<i64>,
) -> diesel::QueryResult<(i64, bool)> {
    let (newest, oldest) = live::bounds(conn, me.id)?;
    let Some(last) = last else {
        // A new client has just read its inbox: only what happens from now on.
        return Ok((newest, false));
    };
    if last >= newest {
        return Ok((last.min(newest), false));
    }
    let missed = live::since(conn, me.id, last, REPLAY_MAX + 1)?.len() as i64;
    // Rows may have been purged after the last id seen when it is older than every row kept.
    let purged = last + 1 < oldest;
    if missed > REPLAY_MAX || purged {
        Ok((newest, true))
    } else {
        Ok((last, false))
    }
}

/// The rows after `cursor`, as events with the current unread counts.
fn page(
    conn: &mut diesel::PgConnection,
    me: Me,
    cursor: i64,
) -> crate::error::ApiResult<Vec<(i64, Event)>> {
    let rows = live::since(conn, me.id, cursor, PAGE)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let counted = |kind: &str| matches!(kind, "notification" | "seen" | "conversation");
    let counts = if rows.iter().any(|r| counted(&r.kind)) {
        let inbox = inbox_of(conn, me)?;
        let by_conversation: HashMap<i64, i64> = inbox
            .conversations
            .iter()
            .map(|c| (c.conversation_id, c.unread))
            .collect();
        Some((by_conversation, inbox.unread))
    } else {
        None
    };
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut payload = row.payload;
            if let (Some((by_conversation, total)), Value::Object(map)) = (&counts, &mut payload)
                && counted(&row.kind)
            {
                let conversation = map
                    .get("conversation_id")
                    .and_then(Value::as_i64)
                    .and_then(|c| by_conversation.get(&c))
                    .copied()
                    .unwrap_or(0);
                map.insert(
                    "unread".into(),
                    json!({"conversation": conversation, "total": total}),
                );
            }
            let event = Event::default()
                .id(row.id.to_string())
                .event(row.kind)
                .data(payload.to_string());
            (row.id, event)
        })
        .collect())
}

async fn feed(
    state: AppState,
    me: Me,
    last: Option<i64>,
    mut wake: watch::Receiver<u64>,
    tx: mpsc::Sender<Event>,
) {
    let shutdown = state.shutdown.clone();
    let begun = state.db.run(move |conn| Ok(start(conn, me, last)?)).await;
    let mut cursor = match begun {
        Ok((cursor, reset)) => {
            if reset
                && tx
                    .send(Event::default().id(cursor.to_string()).event("reset").data(
                        json!({"reason": "too far behind; fetch the inbox again"}).to_string(),
                    ))
                    .await
                    .is_err()
            {
                state.hub.release(me.id);
                return;
            }
            cursor
        }
        Err(e) => {
            warn!(error = %e, "live stream cannot start");
            drop(wake);
            state.hub.release(me.id);
            return;
        }
    };
    'stream: loop {
        // Pokes from here on wake the wait below, even one that arrives during the read.
        wake.mark_unchanged();
        // Read until caught up, then wait for a poke, a tick, the client or shutdown.
        loop {
            let from = cursor;
            let read = state
                .db
                .run(move |conn| Ok(page(conn, me, from)))
                .await
                .map_err(crate::error::ApiError::from)
                .and_then(|r| r);
            let events = match read {
                Ok(events) => events,
                Err(e) => {
                    debug!(
                        error = e.message,
                        "live stream read failed; trying again at the next tick"
                    );
                    break;
                }
            };
            let full = events.len() as i64 == PAGE;
            for (id, event) in events {
                if tx.send(event).await.is_err() {
                    break 'stream;
                }
                cursor = id;
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            changed = wake.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(KEEP_ALIVE) => {}
            _ = tx.closed() => break,
            _ = shutdown.cancelled() => break,
        }
    }
    drop(wake);
    state.hub.release(me.id);
}
