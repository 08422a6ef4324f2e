//! What a process tells its operator: Prometheus metrics (through the `metrics` facade; the
//! binary installs the recorder and serves `/metrics`) and the health flags behind `/livez`
//! and `/readyz`. Every metric is recorded here, by name, so the names and their labels are
//! in one place (README, "Metrics"). Without an installed recorder each call is a no-op.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Buckets of the latency histograms, in seconds.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Histograms and their buckets (the binary's recorder sets them).
pub const HISTOGRAMS: &[&str] = &[
    "tidings_lateness_seconds",
    "tidings_post_to_dispatch_seconds",
    "tidings_smtp_transaction_seconds",
    "tidings_db_pool_wait_seconds",
];

/// A notification row was written (dispatch).
pub fn notifications_created(n: usize) {
    metrics::counter!("tidings_notifications_created_total").increment(n as u64);
}

/// A notification ended: emailed, or skipped for `reason`.
pub fn notification_ended(emailed: bool, reason: Option<&str>) {
    if emailed {
        metrics::counter!("tidings_notifications_emailed_total").increment(1);
    } else {
        let reason = reason.unwrap_or("unknown").to_string();
        metrics::counter!("tidings_notifications_skipped_total", "reason" => reason).increment(1);
    }
}

/// An email's outcome (`sent`, `deferred`, `failed`, `bounced`) by source (`notification`,
/// `system`, `automation`).
pub fn email(source: &'static str, outcome: &'static str) {
    metrics::counter!("tidings_emails_total", "source" => source, "outcome" => outcome)
        .increment(1);
}

/// The `source` label of an outbox email, from its `source` column (`system:<event>` or
/// `automation:<id>`).
pub fn outbox_source(source: &str) -> &'static str {
    if source.starts_with("automation") {
        "automation"
    } else {
        "system"
    }
}

/// How late an email went out: sent − posted − window (sent − due).
pub fn lateness(late: Duration) {
    metrics::histogram!("tidings_lateness_seconds").record(late.as_secs_f64());
}

/// From a message's post to its dispatch.
pub fn post_to_dispatch(delay: Duration) {
    metrics::histogram!("tidings_post_to_dispatch_seconds").record(delay.as_secs_f64());
}

/// One SMTP transaction (MAIL FROM to the end of DATA).
pub fn smtp_transaction(took: Duration) {
    metrics::histogram!("tidings_smtp_transaction_seconds").record(took.as_secs_f64());
}

/// SMTP slots taken right now (+1 / −1).
pub fn smtp_slots(delta: f64) {
    metrics::gauge!("tidings_smtp_slots_in_use").increment(delta);
}

/// From asking for a database connection to holding one: the pool's permit, a thread of the
/// blocking pool, the connection itself.
pub fn db_pool_wait(waited: Duration) {
    metrics::histogram!("tidings_db_pool_wait_seconds").record(waited.as_secs_f64());
}

/// Database connections taken right now (+1 / −1).
pub fn db_in_use(delta: f64) {
    metrics::gauge!("tidings_db_pool_in_use").increment(delta);
}

/// Deliveries a consumer of `queue` holds right now (+n / −n).
pub fn in_flight(queue: &str, delta: f64) {
    metrics::gauge!("tidings_consumer_in_flight", "queue" => queue.to_string()).increment(delta);
}

/// An inbound email by verdict.
pub fn inbound(verdict: &'static str) {
    metrics::counter!("tidings_inbound_total", "verdict" => verdict).increment(1);
}

/// Work a sweep found that the broker lost, by kind.
pub fn sweep_recovered(kind: &'static str, n: usize) {
    metrics::counter!("tidings_sweep_recoveries_total", "kind" => kind).increment(n as u64);
}

/// A delivery dead-lettered, by why (`malformed`, `failed`, `panicked`).
pub fn dead_lettered(queue: &str, why: &'static str) {
    metrics::counter!("tidings_dead_lettered_total", "queue" => queue.to_string(), "reason" => why)
        .increment(1);
}

/// A template reload, `ok` or `rejected`.
pub fn template_reload(ok: bool) {
    let result = if ok { "ok" } else { "rejected" };
    metrics::counter!("tidings_template_reloads_total", "result" => result).increment(1);
}

/// A scheduler job ran to its end: the time, for "no sweep lately" alerts.
pub fn job_succeeded(job: &'static str) {
    metrics::gauge!("tidings_job_last_success_timestamp_seconds", "job" => job)
        .set(crate::clock::now().timestamp() as f64);
}

/// Open live event streams (api).
pub fn live_streams(open: usize) {
    metrics::gauge!("tidings_live_streams").set(open as f64);
}

/// A queue's depth, read by passive declare.
pub fn queue_depth(queue: &str, messages: u32, consumers: u32) {
    metrics::gauge!("tidings_queue_messages", "queue" => queue.to_string()).set(messages as f64);
    metrics::gauge!("tidings_queue_consumers", "queue" => queue.to_string()).set(consumers as f64);
}

/// `tidings_ready{role}`: 1 while the role's broker session is open with its consumers
/// attached, as `/readyz` says.
fn ready_gauge(role: &str, ready: bool) {
    metrics::gauge!("tidings_ready", "role" => role.to_string()).set(if ready { 1.0 } else { 0.0 });
}

/// What `/readyz` answers from: each role of the process says whether its broker session is
/// open with its consumers attached. (A role whose templates do not load never starts: the
/// process exits naming the file and line.)
#[derive(Default)]
pub struct Health {
    roles: Mutex<BTreeMap<String, bool>>,
}

static HEALTH: std::sync::OnceLock<Health> = std::sync::OnceLock::new();

/// The process's health flags.
pub fn health() -> &'static Health {
    HEALTH.get_or_init(Health::default)
}

impl Health {
    /// A role starts: not ready until it says it is attached.
    pub fn register(&self, role: &str) {
        ready_gauge(role, false);
        self.roles
            .lock()
            .expect("health lock")
            .entry(role.to_string())
            .or_insert(false);
    }

    /// A role's broker session is open with its consumers attached (or not any more).
    pub fn attached(&self, role: &str, yes: bool) {
        ready_gauge(role, yes);
        self.roles
            .lock()
            .expect("health lock")
            .insert(role.to_string(), yes);
    }

    /// The roles not attached.
    pub fn problems(&self) -> Vec<String> {
        self.roles
            .lock()
            .expect("health lock")
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(role, _)| format!("{role}: broker session or consumers not attached"))
            .collect()
    }
}
