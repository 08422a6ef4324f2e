//! The mailer role: one send pipeline ([`pipeline::Pipeline`], a value the role builds once)
//! given to two sources, [`notify::Notifications`] and [`outbox::Outbox`]; `impl Mailer` (this
//! file) only consumes, hands each set to its source and publishes the follow-ups. When a notification
//! batch comes due ([`notify`]) it re-checks each notification at send time (seen, own
//! message, internal, deleted), coalesces one email per recipient and conversation, renders
//! and sends it; outbox emails ([`outbox`]: system notifications, automation emails) are
//! checked and sent one by one. Every send and skip is logged.
//!
//! Each row moves `pending → sending → sent | skipped | failed` by conditional updates, so a
//! redelivered or duplicated batch never sends twice. A temporary SMTP failure returns the row
//! to `pending` for the next retry tier ([`retry`]); after the last tier it is `failed`. A
//! periodic sweep re-publishes rows past due with no batch in flight (a purged queue, a worker
//! that died mid-send).

mod notify;
mod outbox;
mod pipeline;
mod retry;
mod smtp;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use tidings_common::amqp::{
    self, Grouping, NotificationBatch, Outcome, Publisher, Session, Topology,
};
use tidings_common::announce::OutboxBatch;
use tidings_common::db::Db;
use tidings_common::people_first::{self, PeopleFirst};
use tidings_common::sweep::{self, Sweep};
use tidings_common::templates::TemplateStore;
use tidings_common::{Config, REQUIRED_TEMPLATES, Result};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info};

pub use notify::Delivered;

/// Due batches handled together as one set (at most 64, gathered for up to 20 ms), and how
/// many sets run at once; under load the batches waiting meanwhile form the next set. Emails
/// held in memory are bounded by the SMTP slots per set. (8 sets at once did not raise the
/// sustained rate and took the mailer's peak RSS from 49 to 67 MiB.)
const GROUPING: Grouping = Grouping {
    max_group: 64,
    in_flight: 4,
    linger: Duration::from_millis(20),
};

/// The most a set of due notifications waits for people to stop posting (see
/// [`tidings_common::people_first`]); an email has waited out its seen window already.
const PEOPLE_FIRST_BOUND: Duration = Duration::from_secs(1);

/// Most notifications claimed and sent together as one set; a group of due batches with more
/// is handled a slice at a time.
const MAX_SET: usize = 256;

/// Everything a mailer process shares between deliveries.
pub struct Mailer {
    db: Db,
    config: Config,
    topology: Topology,
    pipeline: pipeline::Pipeline,
    /// When people last posted: sets of due notifications wait for them (see
    /// [`tidings_common::people_first`]).
    people_first: Arc<PeopleFirst>,
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
        Ok(Mailer {
            db: Db::new(&config.database_url, config.db_pool_size),
            topology: Topology::from_config(&config),
            pipeline: pipeline::Pipeline::new(&config, templates)?,
            people_first: Arc::new(PeopleFirst::new()),
            config,
        })
    }

    /// The notification source, over this mailer's database and pipeline.
    fn notifications(&self) -> notify::Notifications<'_> {
        notify::Notifications {
            db: &self.db,
            config: &self.config,
            topology: &self.topology,
            pipeline: &self.pipeline,
        }
    }

    /// The outbox source, over this mailer's database and pipeline.
    fn outbox(&self) -> outbox::Outbox<'_> {
        outbox::Outbox {
            db: &self.db,
            config: &self.config,
            pipeline: &self.pipeline,
        }
    }

    /// Handles every due batch that arrived together, with set-based database work; returns
    /// one outcome per delivery.
    async fn handle_due(
        self: Arc<Self>,
        publisher: Publisher,
        deliveries: Vec<Delivery>,
    ) -> Vec<Outcome> {
        let parsed: Vec<std::result::Result<NotificationBatch, String>> = deliveries
            .iter()
            .map(|d| amqp::parse_payload(&d.data))
            .collect();
        let mut ids: Vec<i64> = parsed
            .iter()
            .flatten()
            .flat_map(|b| b.notification_ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let span = tracing::info_span!("batches", count = parsed.len(), notifications = ids.len());
        let results = async {
            // Notifications of many recipients are handled a slice at a time, so what a set
            // holds in memory is bounded whatever the fan-out of its batches.
            let mut results = HashMap::with_capacity(ids.len());
            let notifications = self.notifications();
            for slice in ids.chunks(MAX_SET) {
                // Emails wait out their seen window anyway; a person's post does not wait.
                self.people_first.yield_for(PEOPLE_FIRST_BOUND).await;
                let parts = retry::isolating("notification", slice.to_vec(), |ids| {
                    notifications.deliver_all(ids, &publisher)
                })
                .await?;
                results.extend(parts.into_iter().flatten());
            }
            Ok::<_, tidings_common::Error>(results)
        }
        .instrument(span)
        .await;
        if let Err(e) = &results
            && !e.is_transient()
        {
            error!(error = %e, "due batches cannot be processed");
        }
        let mut outcomes = Vec::with_capacity(parsed.len());
        for batch in parsed {
            outcomes.push(match (batch, &results) {
                (Err(reason), _) => Outcome::DeadLetter(reason),
                (Ok(_), Err(e)) => Outcome::from_error(e),
                (Ok(batch), Ok(next)) => self.follow_up(&publisher, &batch, next).await,
            });
        }
        outcomes
    }

    /// Sends a batch's notifications that need another look to the retry tiers (temporary SMTP
    /// failures) or back into the delay (claimed by another worker).
    async fn follow_up(
        &self,
        publisher: &Publisher,
        batch: &NotificationBatch,
        next: &HashMap<i64, Delivered>,
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

    /// Handles one outbox announcement.
    async fn handle_outbox(self: Arc<Self>, delivery: Delivery) -> Outcome {
        let outbox = self.outbox();
        match amqp::parse_payload::<OutboxBatch>(&delivery.data) {
            Ok(batch) => Outcome::of(
                &retry::isolating("outbox email", batch.outbox_ids, |ids| {
                    outbox.deliver_outbox(ids)
                })
                .await,
            ),
            Err(reason) => Outcome::DeadLetter(reason),
        }
    }

    async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        let session = Session::open(&self.config.amqp_url, "mailer", &self.topology).await?;
        let (connection, publisher) = (&session.connection, &session.publisher);
        let stop = shutdown.child_token();
        let (due_queue, outbox_queue) = (self.topology.due_queue(), self.topology.outbox_queue());
        let (this, handler_publisher) = (self.clone(), publisher.clone());
        let due = amqp::consume_grouped(
            connection,
            publisher,
            &self.topology,
            &due_queue,
            self.config.prefetch,
            GROUPING,
            &stop,
            move |deliveries| {
                this.clone()
                    .handle_due(handler_publisher.clone(), deliveries)
            },
        );
        let this = self.clone();
        let outbox = amqp::consume(
            connection,
            publisher,
            &self.topology,
            &outbox_queue,
            self.config.prefetch,
            &stop,
            move |delivery| this.clone().handle_outbox(delivery),
        );
        let sweeper = sweep::every(
            &self.config,
            &stop,
            &self.db,
            publisher,
            &self.topology,
            &Sweep::MAILER,
        );
        let people = people_first::hear(&self.people_first, connection, &self.topology, &stop);
        let result = session
            .serve(
                &stop,
                vec![
                    Box::pin(due),
                    Box::pin(outbox),
                    Box::pin(sweeper),
                    Box::pin(people),
                ],
            )
            .await;
        session.close().await;
        result
    }
}

/// Runs the mailer role until `shutdown` fires, reconnecting after broker or database failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mailer = Arc::new(Mailer::new(config)?);
    mailer
        .pipeline
        .templates()
        .clone()
        .watch(mailer.config.templates_reload, shutdown.clone());
    // The console's saved versions, before the first email or preview.
    tidings_common::templates::versions::look(mailer.pipeline.templates(), &mailer.db).await;
    tidings_common::templates::versions::follow(
        mailer.pipeline.templates().clone(),
        mailer.db.clone(),
        mailer.config.amqp_url.expose().clone(),
        mailer.topology.clone(),
        mailer.config.templates_reload,
        shutdown.clone(),
    );
    info!(
        window_ms = mailer.config.seen_window.as_millis() as u64,
        "mailer starting"
    );
    amqp::run_resilient("mailer", &shutdown, || mailer.session(&shutdown)).await?;
    info!("mailer stopped");
    Ok(())
}
