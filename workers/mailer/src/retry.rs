//! Retrying: the tier a temporarily failed email waits in before its next attempt, and the loop
//! that keeps recording sent emails through a short database outage.

use std::time::{Duration, Instant};

use diesel::PgConnection;
use tidings_common::Result;
use tidings_common::db::Db;
use tracing::warn;

/// How long the outcome of sent emails is retried through a database outage.
const RECORD_PATIENCE: Duration = Duration::from_secs(60);

/// What follows a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after retry tier `tier`, `delay` from now.
    After { tier: usize, delay: Duration },
    /// Every tier was tried: the email has failed.
    GiveUp,
}

/// The retry after attempt number `attempts` (1 for the first) failed temporarily: tier 0
/// after the first attempt, tier 1 after the second, …, and giving up after the last tier.
pub fn after_attempt(attempts: i32, tiers: &[Duration]) -> Retry {
    let attempt = usize::try_from(attempts).unwrap_or(1).max(1);
    match tiers.get(attempt - 1) {
        Some(&delay) => Retry::After {
            tier: attempt - 1,
            delay,
        },
        None => Retry::GiveUp,
    }
}

/// Runs `work` (the recording of emails that went out already) until it succeeds, retrying a
/// transient failure with back-off for up to a minute: giving up early would let a later worker
/// take the claims over and send the emails again.
pub async fn record_through_outage<T, F>(db: &Db, what: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: Fn(&mut PgConnection) -> Result<T> + Clone + Send + 'static,
{
    let mut pause = Duration::from_millis(200);
    let deadline = Instant::now() + RECORD_PATIENCE;
    loop {
        match db.run(work.clone()).await {
            Ok(done) => return Ok(done),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                warn!(error = %e, what, "recording sent emails failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `work` on all of `ids` at once; if that fails for a reason that is not transient, runs
/// it on each id alone, so one row that cannot be processed holds up none of its neighbours.
/// A row that fails alone is logged and left to the sweep; a transient failure (the database
/// is gone) ends the whole run, to be tried again.
pub async fn isolating<T, F, Fut>(what: &'static str, ids: Vec<i64>, work: F) -> Result<Vec<T>>
where
    F: Fn(Vec<i64>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let e = match work(ids.clone()).await {
        Ok(done) => return Ok(vec![done]),
        Err(e) if e.is_transient() || ids.len() < 2 => return Err(e),
        Err(e) => e,
    };
    warn!(what, count = ids.len(), error = %e, "a batch failed together; trying each row alone");
    let mut parts = Vec::with_capacity(ids.len());
    for id in ids {
        match work(vec![id]).await {
            Ok(done) => parts.push(done),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tracing::error!(what, id, error = %e, "row cannot be processed; left to the sweep")
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_taken_in_order_then_given_up() {
        let tiers = [Duration::from_secs(60), Duration::from_secs(300)];
        assert_eq!(
            after_attempt(1, &tiers),
            Retry::After {
                tier: 0,
                delay: tiers[0]
            }
        );
        assert_eq!(
            after_attempt(2, &tiers),
            Retry::After {
                tier: 1,
                delay: tiers[1]
            }
        );
        assert_eq!(after_attempt(3, &tiers), Retry::GiveUp);
        assert_eq!(after_attempt(0, &tiers), after_attempt(1, &tiers));
        assert_eq!(after_attempt(1, &[]), Retry::GiveUp);
    }
}
