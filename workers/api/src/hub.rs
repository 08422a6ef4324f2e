//! The live event streams this api process holds, by person, and the listener that wakes them.
//!
//! Every api process binds its own exclusive, auto-delete queue to the events exchange and
//! wakes the streams it holds for the people a [`LivePoke`] names, so any api process of a
//! fleet serves any person. The streams themselves are in `live`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tidings_common::amqp::Topology;
use tidings_common::live::{LIVE_ROUTING_KEY, LivePoke};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    pub(crate) fn subscribe(&self, person: i64) -> Option<watch::Receiver<u64>> {
        let receiver = {
            let mut people = self.people.lock().expect("hub lock");
            let sender = people.entry(person).or_insert_with(|| watch::channel(0).0);
            (sender.receiver_count() < STREAMS_PER_PERSON).then(|| sender.subscribe())
        };
        tidings_common::observe::live_streams(self.streams());
        receiver
    }

    /// Forgets `person` once none of their streams is open.
    pub(crate) fn release(&self, person: i64) {
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
    let (_connection, queue, mut consumer) = tidings_common::amqp::subscribe(
        url,
        "api live",
        &topology.events_exchange(),
        LIVE_ROUTING_KEY,
    )
    .await?;
    info!(queue = %queue, "listening for live events");
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
