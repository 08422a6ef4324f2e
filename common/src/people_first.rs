//! Bulk work yields to people (SPEC D1: a person's post reaches its recipients at once).
//!
//! A person's post rides its own lane to dispatch (`message.posted.now`), but on a few cores it
//! still waits *beside* bulk work: for the CPU, for the database, for the feed locks a bulk
//! transaction holds until it commits. So the bulk work itself steps aside while people post:
//! dispatch's bulk lane, and the mailer (which hears every `message.posted.now` on a private
//! queue, [`hear`]), wait before each group while a person's post is being dispatched, and
//! for [`QUIET`] after the last one, for a bounded time per group ([`MAX_YIELD`] in dispatch;
//! the mailer's own bound is longer, its emails having waited out their seen window). In a
//! fleet every dispatch process hears the posts too, not only the one dispatching them. Bulk
//! work slows only while people post and never stops; once they pause it runs at full speed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::amqp::{MESSAGE_POSTED_NOW, Topology};

/// How long after the last post bulk work waits before it starts a group.
pub const QUIET: Duration = Duration::from_millis(50);
/// The most one bulk group waits.
pub const MAX_YIELD: Duration = Duration::from_millis(250);

/// When people last posted, as one process knows it.
pub struct PeopleFirst {
    epoch: Instant,
    /// People's posts being dispatched by this process now.
    busy: AtomicUsize,
    /// When a post was last dispatched or heard of, in milliseconds since `epoch` (0: never).
    last: AtomicU64,
}

impl Default for PeopleFirst {
    fn default() -> Self {
        Self::new()
    }
}

impl PeopleFirst {
    pub fn new() -> Self {
        PeopleFirst {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// A person posted just now.
    pub fn heard(&self) {
        self.last.store(self.now_ms(), Ordering::SeqCst);
    }

    /// How long ago a person's post was last dispatched or heard of (`None`: never).
    pub fn since_last(&self) -> Option<Duration> {
        match self.last.load(Ordering::SeqCst) {
            0 => None,
            last => Some(Duration::from_millis(self.now_ms().saturating_sub(last))),
        }
    }

    /// Marks a group of people's posts as being dispatched until the guard drops.
    pub fn dispatching(&self) -> Dispatching<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Dispatching(self)
    }

    /// Whether a person's post is being dispatched, or was less than [`QUIET`] ago.
    pub fn active(&self) -> bool {
        let last = self.last.load(Ordering::SeqCst);
        self.busy.load(Ordering::SeqCst) > 0
            || (last > 0 && self.now_ms().saturating_sub(last) < QUIET.as_millis() as u64)
    }

    /// Waits, at most [`MAX_YIELD`], until nobody has posted for [`QUIET`].
    pub async fn yield_to_people(&self) {
        self.yield_for(MAX_YIELD).await
    }

    /// Waits, at most `bound`, until nobody has posted for [`QUIET`].
    pub async fn yield_for(&self, bound: Duration) {
        let until = Instant::now() + bound;
        while self.active() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A group of people's posts being dispatched; see [`PeopleFirst::dispatching`].
pub struct Dispatching<'a>(&'a PeopleFirst);

impl Drop for Dispatching<'_> {
    fn drop(&mut self) {
        self.0.heard();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hears every person's post (`message.posted.now`, on a private queue on `connection`) until
/// `stop`; a role serves it beside its consumers, so it reconnects with them.
pub async fn hear(
    people: &PeopleFirst,
    connection: &lapin::Connection,
    topology: &Topology,
    stop: &CancellationToken,
) -> crate::Result<()> {
    let exchange = topology.events_exchange();
    let (_, mut consumer) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        subscribed = crate::amqp::subscribe_on(connection, &exchange, MESSAGE_POSTED_NOW) => subscribed?,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                Some(delivery) => {
                    delivery?;
                    people.heard();
                }
                None => {
                    return Err(crate::Error::Task(
                        "the consumer of people's posts was cancelled by the broker".into(),
                    ));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    #[tokio::test]
    async fn bulk_work_yields_to_peoples_posts_for_a_bounded_time() {
        let people = PeopleFirst::new();
        // Nobody has posted: bulk work starts at once.
        let started = Instant::now();
        people.yield_to_people().await;
        assert!(started.elapsed() < MAX_YIELD, "waited with nobody posting");

        // A person's post is being dispatched the whole time: bulk work waits its bound, and
        // then goes ahead all the same.
        let guard = people.dispatching();
        let started = Instant::now();
        people.yield_to_people().await;
        let waited = started.elapsed();
        assert!(waited >= MAX_YIELD, "went ahead after {waited:?}");
        assert!(waited < MAX_YIELD * 8, "waited {waited:?}");
        drop(guard);

        // A post was dispatched just now: bulk work waits for the quiet after it.
        let started = Instant::now();
        people.yield_to_people().await;
        let waited = started.elapsed();
        assert!(
            waited >= QUIET - Duration::from_millis(5),
            "went ahead {waited:?} after a post"
        );

        // Posts heard from elsewhere count the same.
        people.heard();
        assert!(people.active());
        let started = Instant::now();
        people.yield_to_people().await;
        assert!(started.elapsed() >= QUIET - Duration::from_millis(5));
        assert!(!people.active());

        // A post ends midway: the wait ends with the quiet after it, before the bound.
        let people = Arc::new(PeopleFirst::new());
        let posting = people.clone();
        let post = tokio::spawn(async move {
            let _guard = posting.dispatching();
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = Instant::now();
        people.yield_to_people().await;
        let waited = started.elapsed();
        post.await.expect("post task");
        assert!(
            waited >= Duration::from_millis(80),
            "went ahead after {waited:?}"
        );
    }
}
