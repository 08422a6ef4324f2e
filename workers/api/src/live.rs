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
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidings_common::live::{self};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::hub::STREAMS_PER_PERSON;
use crate::queries::inbox::inbox_of;
use crate::session::Me;
use crate::state::AppState;

/// How often a stream sends a keep-alive comment and reads its rows anyway.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events replayed to a resuming client; further behind, it gets `reset`.
pub const REPLAY_MAX: i64 = 1000;
/// Rows read per query.
const PAGE: i64 = 200;

/// Where a client resumes: `None` for a new client, `Some(Ok(id))` after event `id`, and
/// `Some(Err(()))` for a `Last-Event-ID` that is not an id this service sent (answered with
/// `reset`, like a client too far behind).
/// The header wins; `?last_event_id=` is for a page that opens a new stream to resume (an
/// `EventSource` cannot set the header itself).
fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<Result<i64, ()>> {
    let value = match headers.get("last-event-id") {
        Some(value) => value.to_str().ok().map(str::to_string),
        None => Some(query?.to_string()),
    };
    Some(
        value
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|id| *id >= 0)
            .ok_or(()),
    )
}

/// Answers `GET /me/events`.
pub fn stream(state: AppState, me: Me, headers: &HeaderMap, resume: Option<&str>) -> Response {
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
    tokio::spawn(feed(state, me, last_event_id(headers, resume), wake, tx));
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
    last: Option<Result<i64, ()>>,
) -> diesel::QueryResult<(i64, bool)> {
    let (newest, oldest) = live::bounds(conn, me.id)?;
    let last = match last {
        // A new client has just read its inbox: only what happens from now on.
        None => return Ok((newest, false)),
        Some(Err(())) => return Ok((newest, true)),
        Some(Ok(last)) => last,
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

/// The rows after `cursor`, as events with the current unread counts; `None` once the
/// session no longer holds (deactivated, or signed out since the token was minted). A row
/// about a conversation the person may no longer see is passed over: its event is `None`.
#[allow(clippy::type_complexity)]
fn page(
    conn: &mut diesel::PgConnection,
    me: Me,
    cursor: i64,
) -> crate::error::ApiResult<Option<Vec<(i64, Option<Event>)>>> {
    if !crate::session::still_signed_in(conn, me)? {
        return Ok(None);
    }
    let rows = live::since(conn, me.id, cursor, PAGE)?;
    if rows.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let counted = |kind: &str| matches!(kind, "notification" | "seen" | "conversation");
    let counts = if rows.iter().any(|r| r.visible && counted(&r.kind)) {
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
    Ok(Some(
        rows.into_iter()
            .map(|row| {
                if !row.visible {
                    return (row.id, None);
                }
                let mut payload = row.payload;
                if let (Some((by_conversation, total)), Value::Object(map)) =
                    (&counts, &mut payload)
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
                (row.id, Some(event))
            })
            .collect(),
    ))
}

async fn feed(
    state: AppState,
    me: Me,
    last: Option<Result<i64, ()>>,
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
                        json!({"reason": "too far behind, or an unknown Last-Event-ID; fetch the inbox again"}).to_string(),
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
                Ok(Some(events)) => events,
                // Signed out or deactivated: the stream says so and ends (the client's
                // reconnect is refused).
                Ok(None) => {
                    let why = json!({"reason": "signed out, or the person was deactivated"});
                    let _ = tx
                        .send(Event::default().event("signed_out").data(why.to_string()))
                        .await;
                    break 'stream;
                }
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
                if let Some(event) = event
                    && tx.send(event).await.is_err()
                {
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
