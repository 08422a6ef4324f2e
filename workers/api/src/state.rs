//! What every request shares, and the one way a handler reaches the database or the broker.

use std::sync::Arc;

use diesel::PgConnection;
use tidings_common::Config;
use tidings_common::amqp::{SharedPublisher, Topology};
use tidings_common::announce::Announcements;
use tidings_common::db::Db;
use tidings_common::templates::TemplateStore;

use crate::error::ApiResult;

/// How long a request waits for its announcements to be confirmed across a broker failover
/// before leaving them to the sweeps.
const ANNOUNCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub topology: Arc<Topology>,
    /// The broker connection, kept open in the background so HTTP keeps serving while
    /// RabbitMQ restarts.
    pub broker: SharedPublisher,
    /// The templates, for listing them and checking automations name one that exists.
    pub templates: Arc<TemplateStore>,
    /// The live event streams this process holds.
    pub hub: Arc<crate::hub::Hub>,
    /// Fires when the process stops; open event streams end cleanly.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// Announces what a committed transaction wrote, sending it again after a broker
    /// failover; past a few seconds it is left to the sweeps.
    pub async fn announce(&self, announcements: Announcements) {
        announcements
            .publish_with_failover(&self.broker, &self.topology, ANNOUNCE_PATIENCE)
            .await;
    }
}

/// Runs `work` on the pool, mapping its errors (including [`ApiError`](crate::ApiError)s it
/// raises) to responses.
pub async fn with_db<T, F>(state: &AppState, work: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> ApiResult<T> + Send + 'static,
{
    // The closure's ApiError rides inside Ok so that pool and task errors stay typed.
    state.db.run(move |conn| Ok(work(conn))).await?
}
