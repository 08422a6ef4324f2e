//! The mailer role: when a notification batch comes due, re-checks each notification at send
//! time (seen, own message, internal, deleted), renders the notification template and sends it
//! over SMTP, logging every send and skip.
//!
//! Each notification moves `pending → sending → sent | skipped | failed` by conditional updates,
//! so a redelivered or duplicated batch never sends twice. A temporary SMTP failure returns the
//! notification to `pending` and sends its id through the next retry tier; after the last tier
//! it is `failed`. A periodic sweep re-publishes notifications that are past due with no batch
//! in flight (for example a purged queue, or a worker that died mid-send).

mod outbox;
mod send;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use tidings_common::amqp::{self, NotificationBatch, Outcome, Publisher, Topology};
use tidings_common::db::Db;
use tidings_common::outbox::OutboxBatch;
use tidings_common::sweep;
use tidings_common::templates::TemplateStore;
use tidings_common::{Config, REQUIRED_TEMPLATES, Result};
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
    templates: Arc<TemplateStore>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Bounds simultaneous SMTP transactions (lettre's pool only bounds idle connections).
    smtp_slots: Semaphore,
}

impl Mailer {
    /// Loads templates and builds the SMTP transport; fails with a clear error on a broken
    /// template or SMTP URL.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let templates = Arc::new(TemplateStore::open(
            &config.templates_dir,
            &config.default_locale,
            &REQUIRED_TEMPLATES,
        )?);
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

    /// Re-publishes notifications and outbox emails stuck past their due time.
    async fn sweep(&self, publisher: &Publisher) -> Result<usize> {
        let lease = self.config.send_lease;
        let (db, topology) = (&self.db, &self.topology);
        Ok(
            sweep::stuck_notifications(db, publisher, topology, lease).await?
                + sweep::stuck_outbox(db, publisher, topology, lease).await?,
        )
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
        let consumers = shutdown.child_token();
        let due = async {
            let result = amqp::consume_grouped(
                &connection,
                &publisher,
                &self.topology,
                &self.topology.due_queue(),
                self.config.prefetch,
                MAX_GROUP,
                &consumers,
                move |deliveries| {
                    this.clone()
                        .handle_group(handler_publisher.clone(), deliveries)
                },
            )
            .await;
            consumers.cancel();
            result
        };
        let this = self.clone();
        let outbox = async {
            let result = amqp::consume(
                &connection,
                &publisher,
                &self.topology,
                &self.topology.outbox_queue(),
                self.config.prefetch,
                &consumers,
                move |delivery| {
                    let this = this.clone();
                    async move {
                        let batch = match amqp::parse_payload::<OutboxBatch>(&delivery.data) {
                            Ok(batch) => batch,
                            Err(reason) => return Outcome::DeadLetter(reason),
                        };
                        match this.deliver_outbox(batch.outbox_ids).await {
                            Ok(_) => Outcome::Ack,
                            Err(e) if e.is_transient() => Outcome::Requeue(e.to_string()),
                            Err(e) => Outcome::DeadLetter(e.to_string()),
                        }
                    }
                },
            )
            .await;
            consumers.cancel();
            result
        };
        let (a, b) = tokio::join!(due, outbox);
        let result = a.and(b);
        stop.cancel();
        let _ = sweeper.await;
        let _ = connection.close(200, "bye".into()).await;
        result
    }
}

/// Runs the mailer role until `shutdown` fires, reconnecting after broker or database failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mailer = Arc::new(Mailer::new(config)?);
    mailer
        .templates
        .clone()
        .watch(mailer.config.templates_reload, shutdown.clone());
    info!(
        window_ms = mailer.config.seen_window.as_millis() as u64,
        "mailer starting"
    );
    amqp::run_resilient("mailer", &shutdown, || mailer.session(&shutdown)).await?;
    info!("mailer stopped");
    Ok(())
}
