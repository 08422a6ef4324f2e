//! Confirmed publishing: every publish waits for the broker's confirm, so a caller never
//! believes a dropped message was sent.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Topology;
use super::session::run_resilient;
use crate::error::{Error, Result};

/// Opens a connection named after the role, so the management UI shows who is who.
pub async fn connect(url: &str, role: &str) -> Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("tidings {role}").into());
    Ok(Connection::connect(url, properties).await?)
}

/// A channel in confirm mode; every publish waits for the broker's confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent, mandatory message and waits for its confirm. A nack or an
    /// unroutable return is an error, so the caller never believes a dropped message was sent.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<()> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(headers) = headers {
            properties = properties.with_headers(headers);
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties,
            )
            .await?
            .await?;
        let refused = |reason: &str| Error::PublishRefused {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            reason: reason.to_string(),
        };
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(refused(&format!(
                "unroutable: {}",
                returned.reply_text.as_str()
            ))),
            Confirmation::Nack(_) => Err(refused("nacked (queue full or broker failure)")),
            Confirmation::NotRequested => Err(refused("channel is not in confirm mode")),
        }
    }

    /// Publishes a transient, non-mandatory message without waiting for its confirm: a wake-up
    /// call whose loss costs only latency, and which nobody may be listening for.
    pub async fn publish_transient<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<()> {
        let properties = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into());
        // The confirm is not awaited; dropping it is allowed.
        drop(
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(body)?,
                    properties,
                )
                .await?,
        );
        Ok(())
    }

    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<()> {
        self.publish(exchange, routing_key, &serde_json::to_vec(body)?, None)
            .await
    }

    /// Publishes like [`Publisher::publish_json`], retrying a few times with back-off when the
    /// broker refuses or the channel hiccups.
    pub async fn publish_json_retrying<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<()> {
        let payload = serde_json::to_vec(body)?;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.publish(exchange, routing_key, &payload, None).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 && e.is_transient() => {
                    warn!(error = %e, attempt, exchange, "publish not confirmed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A publisher kept connected in the background, for roles that must keep serving (HTTP,
/// SMTP) while the broker restarts. `None` while disconnected.
#[derive(Clone, Default)]
pub struct SharedPublisher {
    current: std::sync::Arc<std::sync::RwLock<Option<Publisher>>>,
}

impl SharedPublisher {
    /// The connected publisher, or an error saying the broker is not connected.
    pub fn get(&self) -> Result<Publisher> {
        self.current
            .read()
            .expect("publisher lock")
            .clone()
            .ok_or_else(|| Error::Task("broker not connected".into()))
    }

    /// Waits until the keeper has connected, for at most `limit`; true when it has. A role that
    /// serves clients waits for this before it listens, so at an ordinary start nothing it
    /// accepts has to wait for a sweep; with the broker down it starts anyway when the limit
    /// is reached, and the sweeps announce what it accepted meanwhile.
    pub async fn wait_connected(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.get().is_err() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    fn set(&self, publisher: Option<Publisher>) {
        *self.current.write().expect("publisher lock") = publisher;
    }

    /// Keeps this publisher connected in a background task (see [`Self::keep_connected`]).
    pub fn spawn_keeper(
        &self,
        url: String,
        role: &'static str,
        topology: Topology,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.keep_connected(&url, role, &topology, &shutdown).await })
    }

    /// Connects, declares the topology, and reconnects whenever the connection drops, until
    /// `shutdown` fires.
    pub async fn keep_connected(
        &self,
        url: &str,
        role: &str,
        topology: &Topology,
        shutdown: &CancellationToken,
    ) {
        let _ = run_resilient(role, shutdown, || async {
            let connection = connect(url, role).await?;
            let publisher = Publisher::open(&connection).await?;
            topology.declare(publisher.channel()).await?;
            self.set(Some(publisher.clone()));
            info!(role, "connected to the broker");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.set(None);
                        // The channel first: closing the connection under an open channel
                        // makes lapin log an error for a clean stop.
                        let _ = publisher.channel().close(200, "shutdown".into()).await;
                        let _ = connection.close(200, "shutdown".into()).await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if !connection.status().connected() {
                            self.set(None);
                            warn!(role, "lost the broker connection");
                            return Err(Error::Task("broker connection lost".into()));
                        }
                    }
                }
            }
        })
        .await;
    }
}
