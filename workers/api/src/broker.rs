//! The api role's broker connection, kept open in the background so that HTTP keeps serving
//! while RabbitMQ restarts. Events that cannot be published are left for dispatch's sweep.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tidings_common::amqp::{self, MESSAGE_POSTED, MessagePosted, Publisher, Topology};
use tidings_common::{Config, Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The current publisher, if the broker is reachable.
#[derive(Clone, Default)]
pub struct BrokerHandle {
    publisher: Arc<RwLock<Option<Publisher>>>,
}

impl BrokerHandle {
    fn current(&self) -> Option<Publisher> {
        self.publisher.read().expect("broker lock").clone()
    }

    fn set(&self, publisher: Option<Publisher>) {
        *self.publisher.write().expect("broker lock") = publisher;
    }

    /// Publishes `message.posted` with a confirm. On failure the message stays undispatched in
    /// the database and dispatch's sweep publishes it again.
    pub async fn message_posted(&self, topology: &Topology, message_id: i64) -> Result<()> {
        let publisher = self
            .current()
            .ok_or_else(|| Error::Task("broker not connected".into()))?;
        publisher
            .publish_json_retrying(
                &topology.events_exchange(),
                MESSAGE_POSTED,
                &MessagePosted { message_id },
            )
            .await
    }
}

/// Connects, declares the topology, and reconnects whenever the connection drops.
pub async fn keep_connected(
    handle: BrokerHandle,
    config: Arc<Config>,
    topology: Arc<Topology>,
    shutdown: CancellationToken,
) {
    let _ = amqp::run_resilient("api", &shutdown, || async {
        let connection = amqp::connect(&config.amqp_url, "api").await?;
        let publisher = Publisher::open(&connection).await?;
        topology.declare(publisher.channel()).await?;
        handle.set(Some(publisher));
        info!("api connected to the broker");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    handle.set(None);
                    let _ = connection.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !connection.status().connected() {
                        handle.set(None);
                        warn!("api lost the broker connection");
                        return Err(Error::Task("broker connection lost".into()));
                    }
                }
            }
        }
    })
    .await;
}
