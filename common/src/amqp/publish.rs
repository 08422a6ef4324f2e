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

/// How long one node gets to accept a connection before the next is tried.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the next connect of this process starts in the node list.
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Opens a connection named after the role and process, so the management UI (and
/// `rabbitmqctl list_connections name`) shows who is who.
/// `url` may list several nodes of a cluster, comma-separated: each connect (and so each
/// reconnect) starts at the next node and tries them all in turn, so a client whose node died
/// reconnects to another.
/// `amqps://` nodes are verified with the TLS settings given to [`use_tls`] (the system's
/// roots alone until then).
pub async fn connect(url: &str, role: &str) -> Result<Connection> {
    let tls = TLS.read().unwrap_or_else(|e| e.into_inner()).clone();
    connect_with(url, role, &tls).await
}

/// The TLS settings of every later [`connect`] of this process (`TIDINGS_AMQP_CA` and the
/// client certificate, read by the configuration).
pub fn use_tls(tls: crate::tls::AmqpTls) {
    *TLS.write().unwrap_or_else(|e| e.into_inner()) = tls;
}

static TLS: std::sync::RwLock<crate::tls::AmqpTls> = std::sync::RwLock::new(crate::tls::AmqpTls {
    ca: None,
    client: None,
});

/// [`connect`] with TLS settings of its own.
pub async fn connect_with(url: &str, role: &str, tls: &crate::tls::AmqpTls) -> Result<Connection> {
    let nodes = crate::secret::split_url_list(url);
    let start = NEXT_NODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for i in 0..nodes.len() {
        let node = nodes[(start + i) % nodes.len()];
        let name = format!("tidings {role} (pid {})", std::process::id());
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let uri = match node.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => with_frame_max(uri),
            Err(e) => {
                failures.push(format!(
                    "{}: not an AMQP URL: {e}",
                    crate::secret::mask_url_passwords(node)
                ));
                continue;
            }
        };
        let secure = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
        let attempt = async {
            Connection::connect_uri_with_config(
                uri,
                properties,
                tls.lapin(),
                lapin::runtime::default_runtime()?,
            )
            .await
        };
        match tokio::time::timeout(NODE_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => {
                if nodes.len() > 1 {
                    info!(role, node = %crate::secret::mask_url_passwords(node), "connected to a broker node");
                }
                return Ok(connection);
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                let meaning = secure
                    .then(|| {
                        crate::tls::explain_refusal(
                            &e,
                            tls.client.is_some(),
                            crate::tls::AMQP_SETTINGS,
                        )
                    })
                    .flatten()
                    .map(|m| format!("TLS refused: {m}: "))
                    .unwrap_or_default();
                failures.push(format!(
                    "{}: {meaning}{e}",
                    crate::secret::mask_url_passwords(node)
                ))
            }
            Err(_) => failures.push(format!(
                "{}: no answer within {} s",
                crate::secret::mask_url_passwords(node),
                NODE_TIMEOUT.as_secs()
            )),
        }
    }
    Err(Error::Task(format!(
        "no broker node accepts a connection ({})",
        failures.join("; ")
    )))
}

/// The largest frame Tidings asks the broker for, unless the URL sets `frame_max` itself.
/// Each connection keeps two ring buffers of 32 frames, which fill up over time: at the
/// broker's default of 128 KiB that is 8 MiB of memory per connection, at 16 KiB it is 1 MiB.
/// Tidings' messages are ids and small events; an inbound email is split into more frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// `uri` asking for [`FRAME_MAX`] unless it names a frame size of its own.
fn with_frame_max(mut uri: lapin::uri::AMQPUri) -> lapin::uri::AMQPUri {
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    uri
}

/// A channel in confirm mode, where every publish waits for the broker's confirm; and a
/// channel without confirms for wake-up calls ([`Publisher::publish_transient`]).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// Not in confirm mode: a confirm nobody waits for would be kept by the client until the
    /// channel closes (lapin keeps each dropped, unresolved confirm for `wait_for_confirms`),
    /// which on a long-lived channel is memory growing with every publish.
    transient: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let transient = connection.create_channel().await?;
        Ok(Publisher { channel, transient })
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
        // Without confirm mode the publish resolves at once: nothing is kept.
        drop(
            self.transient
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
    /// Incremented at each (re)connection.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        if publisher.is_some() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        *self.current.write().expect("publisher lock") = publisher;
    }

    /// Runs `publish` with the connected publisher. When it fails for a reason that may pass
    /// (a connection lost mid-publish, a confirm that never came, a nack), it runs it again:
    /// at once on the same connection if that is still up (a nack), or with the new
    /// publisher once the keeper has reconnected, possibly to another node of the cluster. So
    /// a publish that was not confirmed before a failover is sent again after it, for up to
    /// `patience`. What it publishes must be safe to receive twice (every consumer here is
    /// idempotent).
    pub async fn with_failover<T, F, Fut>(&self, patience: Duration, publish: F) -> Result<T>
    where
        F: Fn(Publisher) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.get().is_err() && !self.wait_connected(left).await {
                return Err(Error::Task(format!(
                    "broker not connected within {} s",
                    patience.as_secs()
                )));
            }
            let generation = self.generation.load(Ordering::SeqCst);
            let publisher = self.get()?;
            let failed = match publish(publisher.clone()).await {
                Ok(done) => return Ok(done),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(failed);
            }
            warn!(error = %failed, "publish not confirmed; sending it again");
            if publisher.channel().status().connected() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // The keeper notices a lost connection within half a second and reconnects.
            while self.generation.load(Ordering::SeqCst) == generation {
                if tokio::time::Instant::now() >= deadline {
                    return Err(failed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
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
            crate::observe::health().attached(role, true);
            info!(role, "connected to the broker");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.set(None);
                        crate::observe::health().attached(role, false);
                        // The channel first: closing the connection under an open channel
                        // makes lapin log an error for a clean stop.
                        let _ = publisher.channel().close(200, "shutdown".into()).await;
                        let _ = connection.close(200, "shutdown".into()).await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if !connection.status().connected() {
                            self.set(None);
                            crate::observe::health().attached(role, false);
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
