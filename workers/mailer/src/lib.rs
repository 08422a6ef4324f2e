//! The mailer role: when a notification batch comes due, re-checks each notification at send
//! time (seen, own message, internal, deleted), renders the notification template and sends it
//! over SMTP, logging every send and skip.
//!
//! Each notification moves `pending → sending → sent | skipped | failed` by conditional updates,
//! so a redelivered or duplicated batch never sends twice. A temporary SMTP failure returns the
//! notification to `pending` and sends its id through the next retry tier; after the last tier
//! it is `failed`. A periodic sweep re-publishes notifications that are past due with no batch
//! in flight (for example a purged queue, or a worker that died mid-send).

mod send;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use lapin::message::Delivery;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use tidings_common::amqp::{
    self, DUE_ROUTING_KEY, NotificationBatch, Outcome, Publisher, Topology,
};
use tidings_common::db::Db;
use tidings_common::db::schema::notifications;
use tidings_common::templates::Templates;
use tidings_common::{Config, NOTIFICATION_TEMPLATE, Result};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

pub use send::Delivered;

/// Everything a mailer process shares between deliveries.
pub struct Mailer {
    db: Db,
    config: Config,
    topology: Topology,
    templates: Templates,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Bounds simultaneous SMTP transactions (lettre's pool only bounds idle connections).
    smtp_slots: Semaphore,
}

impl Mailer {
    /// Loads templates and builds the SMTP transport; fails with a clear error on a broken
    /// template or SMTP URL.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let templates = Templates::load(&config.templates_dir, &[NOTIFICATION_TEMPLATE])?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| anyhow::anyhow!("TIDINGS_SMTP_URL: {e}"))?
            .pool_config(PoolConfig::new().max_size(config.smtp_concurrency as u32))
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Mailer {
            db: Db::new(&config.database_url, config.db_pool_size),
            topology: Topology::from_config(&config),
            templates,
            transport,
            smtp_slots: Semaphore::new(config.smtp_concurrency),
            config,
        })
    }

    async fn handle_batch(self: Arc<Self>, publisher: Publisher, delivery: Delivery) -> Outcome {
        let batch: NotificationBatch = match amqp::parse_payload(&delivery.data) {
            Ok(batch) => batch,
            Err(reason) => return Outcome::DeadLetter(reason),
        };
        let span = tracing::info_span!(
            "batch",
            message.id = batch.message_id,
            size = batch.notification_ids.len()
        );
        async move {
            let results =
                futures_util::future::join_all(batch.notification_ids.iter().map(|&id| {
                    let this = self.clone();
                    async move { (id, this.deliver(id).await) }
                }))
                .await;
            let mut retries: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
            let mut busy = Vec::new();
            let mut temporary = None;
            for (id, result) in results {
                match result {
                    Ok(Delivered::Done) => {}
                    Ok(Delivered::RetryLater { tier }) => retries.entry(tier).or_default().push(id),
                    Ok(Delivered::Busy) => busy.push(id),
                    Err(e) if e.is_transient() => temporary = Some(e),
                    Err(e) => {
                        error!(notification.id = id, error = %e, "notification cannot be processed")
                    }
                }
            }
            for (tier, notification_ids) in retries {
                let retry = NotificationBatch {
                    message_id: batch.message_id,
                    notification_ids,
                };
                let key = self.topology.retry_routing_key(tier);
                if let Err(e) = publisher
                    .publish_json_retrying(&self.topology.retry_exchange(), &key, &retry)
                    .await
                {
                    return Outcome::Requeue(format!("retry publish failed: {e}"));
                }
            }
            if !busy.is_empty() {
                let again = NotificationBatch {
                    message_id: batch.message_id,
                    notification_ids: busy,
                };
                if let Err(e) = publisher
                    .publish_json_retrying(
                        &self.topology.delay_exchange(),
                        &self.topology.delay_routing_key(),
                        &again,
                    )
                    .await
                {
                    return Outcome::Requeue(format!("delay publish failed: {e}"));
                }
            }
            match temporary {
                Some(e) => Outcome::Requeue(e.to_string()),
                None => Outcome::Ack,
            }
        }
        .instrument(span)
        .await
    }

    /// Finds notifications past due plus the lease with no live batch (still `pending`, or
    /// `sending` by a worker whose lease ran out), pushes their due time forward by one lease
    /// so the next sweep leaves them alone, and publishes them to the due exchange.
    async fn sweep(&self, publisher: &Publisher) -> Result<usize> {
        let lease =
            chrono::Duration::from_std(self.config.send_lease).unwrap_or(chrono::Duration::MAX);
        let stuck: Vec<(i64, i64)> = self
            .db
            .run(move |conn| {
                let now = chrono::Utc::now();
                let ids: Vec<i64> = notifications::table
                    .filter(notifications::due_at.lt(now - lease))
                    .filter(
                        notifications::state.eq("pending").or(notifications::state
                            .eq("sending")
                            .and(notifications::claimed_at.lt(now - lease))),
                    )
                    .select(notifications::id)
                    .limit(5000)
                    .load(conn)?;
                Ok(
                    diesel::update(notifications::table.filter(notifications::id.eq_any(ids)))
                        .set(notifications::due_at.eq(now))
                        .returning((notifications::message_id, notifications::id))
                        .get_results(conn)?,
                )
            })
            .await?;
        let mut batches: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (message_id, id) in &stuck {
            batches.entry(*message_id).or_default().push(*id);
        }
        for (message_id, notification_ids) in batches {
            publisher
                .publish_json(
                    &self.topology.due_exchange(),
                    DUE_ROUTING_KEY,
                    &NotificationBatch {
                        message_id,
                        notification_ids,
                    },
                )
                .await?;
        }
        if !stuck.is_empty() {
            warn!(
                count = stuck.len(),
                "re-published notifications stuck past their due time"
            );
        }
        Ok(stuck.len())
    }

    async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        let connection = amqp::connect(&self.config.amqp_url, "mailer").await?;
        let publisher = Publisher::open(&connection).await?;
        self.topology.declare(publisher.channel()).await?;
        let stop = shutdown.child_token();
        let sweeper = {
            let this = self.clone();
            let publisher = publisher.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(this.config.sweep_interval) => {}
                    }
                    if let Err(e) = this.sweep(&publisher).await {
                        warn!(error = %e, "mailer sweep failed");
                    }
                }
            })
        };
        let this = self.clone();
        let handler_publisher = publisher.clone();
        let result = amqp::consume(
            &connection,
            &publisher,
            &self.topology,
            &self.topology.due_queue(),
            self.config.prefetch,
            shutdown,
            move |delivery| {
                this.clone()
                    .handle_batch(handler_publisher.clone(), delivery)
            },
        )
        .await;
        stop.cancel();
        let _ = sweeper.await;
        let _ = connection.close(200, "bye".into()).await;
        result
    }
}

/// Runs the mailer role until `shutdown` fires, reconnecting after broker or database failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mailer = Arc::new(Mailer::new(config)?);
    info!(
        window_ms = mailer.config.seen_window.as_millis() as u64,
        "mailer starting"
    );
    amqp::run_resilient("mailer", &shutdown, || mailer.session(&shutdown)).await?;
    info!("mailer stopped");
    Ok(())
}
