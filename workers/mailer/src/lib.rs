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

/// Most due batches handled together as one set.
const MAX_GROUP: usize = 64;

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

    /// Handles every due batch that arrived together, with set-based database work; returns
    /// one outcome per delivery.
    async fn handle_group(
        self: Arc<Self>,
        publisher: Publisher,
        deliveries: Vec<Delivery>,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(deliveries.len());
        let mut batches = Vec::new();
        for delivery in &deliveries {
            match amqp::parse_payload::<NotificationBatch>(&delivery.data) {
                Ok(batch) => {
                    batches.push((outcomes.len(), batch));
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(Outcome::DeadLetter(reason))),
            }
        }
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|(_, b)| b.notification_ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let span = tracing::info_span!("batches", count = batches.len(), notifications = ids.len());
        let results = if ids.is_empty() {
            Ok(Default::default())
        } else {
            self.deliver_all(ids).instrument(span).await
        };
        match results {
            Err(e) if e.is_transient() => {
                for (i, _) in &batches {
                    outcomes[*i] = Some(Outcome::Requeue(e.to_string()));
                }
            }
            Err(e) => {
                error!(error = %e, "due batches cannot be processed");
                for (i, _) in &batches {
                    outcomes[*i] = Some(Outcome::DeadLetter(e.to_string()));
                }
            }
            Ok(next) => {
                for (i, batch) in batches {
                    outcomes[i] = Some(self.follow_up(&publisher, &batch, &next).await);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Ack))
            .collect()
    }

    /// Sends a batch's notifications that need another look to the retry tiers (temporary SMTP
    /// failures) or back into the delay (claimed by another worker).
    async fn follow_up(
        &self,
        publisher: &Publisher,
        batch: &NotificationBatch,
        next: &std::collections::HashMap<i64, Delivered>,
    ) -> Outcome {
        let mut retries: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        let mut busy = Vec::new();
        for id in &batch.notification_ids {
            match next.get(id) {
                Some(Delivered::RetryLater { tier }) => retries.entry(*tier).or_default().push(*id),
                Some(Delivered::Busy) => busy.push(*id),
                _ => {}
            }
        }
        let mut publishes: Vec<(String, String, Vec<i64>)> = retries
            .into_iter()
            .map(|(tier, ids)| {
                (
                    self.topology.retry_exchange(),
                    self.topology.retry_routing_key(tier),
                    ids,
                )
            })
            .collect();
        if !busy.is_empty() {
            publishes.push((
                self.topology.delay_exchange(),
                self.topology.delay_routing_key(),
                busy,
            ));
        }
        for (exchange, key, notification_ids) in publishes {
            let again = NotificationBatch {
                message_id: batch.message_id,
                notification_ids,
            };
            if let Err(e) = publisher
                .publish_json_retrying(&exchange, &key, &again)
                .await
            {
                return Outcome::Requeue(format!("publish to {exchange} failed: {e}"));
            }
        }
        Outcome::Ack
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
        let result = amqp::consume_grouped(
            &connection,
            &publisher,
            &self.topology,
            &self.topology.due_queue(),
            self.config.prefetch,
            MAX_GROUP,
            shutdown,
            move |deliveries| {
                this.clone()
                    .handle_group(handler_publisher.clone(), deliveries)
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
