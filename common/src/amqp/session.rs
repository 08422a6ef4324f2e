//! The broker session of a worker role: connect, declare the topology, run its consumers and
//! background loops until shutdown or a failure, then close; [`run_resilient`] starts it again
//! after a failure, so a broker or database restart is survived.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use lapin::Connection;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::{Publisher, Topology, connect};
use crate::error::Result;

/// Runs `session` again and again until it returns `Ok` (a clean shutdown), pausing with
/// growing back-off after each failure, so a broker or database restart is survived.
pub async fn run_resilient<S, F>(
    role: &str,
    shutdown: &CancellationToken,
    mut session: S,
) -> Result<()>
where
    S: FnMut() -> F,
    F: Future<Output = Result<()>>,
{
    let mut backoff = Duration::from_millis(250);
    crate::observe::health().register(role);
    loop {
        match session().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                error!(role, error = %e, retry_in_ms = backoff.as_millis() as u64, "session failed; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// A consumer or background loop of a session, borrowing the session's connection.
pub type Task<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// One connection to the broker with its confirm-mode publisher, topology declared.
pub struct Session {
    pub connection: Connection,
    pub publisher: Publisher,
    /// Whose session it is (for `/readyz`).
    role: String,
}

impl Session {
    /// Connects as `role` and declares every exchange and queue.
    pub async fn open(url: &str, role: &str, topology: &Topology) -> Result<Self> {
        let connection = connect(url, role).await?;
        let publisher = Publisher::open(&connection).await?;
        topology.declare(publisher.channel()).await?;
        Ok(Session {
            connection,
            publisher,
            role: role.to_string(),
        })
    }

    /// Runs `tasks` (consumers and background loops, all watching `stop`) until every one
    /// has ended. When one ends, for shutdown or a failure, `stop` is cancelled so the others
    /// end too. Returns the first failure.
    pub async fn serve(&self, stop: &CancellationToken, tasks: Vec<Task<'_>>) -> Result<()> {
        let guarded = tasks.into_iter().map(|task| async move {
            let result = task.await;
            stop.cancel();
            result
        });
        crate::observe::health().attached(&self.role, true);
        let served = futures_util::future::join_all(guarded).await;
        crate::observe::health().attached(&self.role, false);
        served.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// Closes the connection; unacknowledged deliveries return to their queues.
    pub async fn close(self) {
        let _ = self.publisher.channel().close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
