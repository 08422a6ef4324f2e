//! The process's operator listener on `TIDINGS_METRICS_ADDR` (one per process, whatever
//! roles it runs):
//!
//! - `/metrics`: Prometheus text, from the `metrics` facade's recorder
//!   (`metrics-exporter-prometheus`, rendered here: no push gateway, no TLS stack). The
//!   queue gauges are read by passive declares at most every [`DEPTH_EVERY`], not per scrape;
//! - `/livez`: 200 while the process's runtime ticks;
//! - `/readyz`: 200 when every role's broker session is open with its consumers attached,
//!   the database answers and the templates are loaded; 503 with the problems otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tidings_common::Config;
use tidings_common::amqp::Topology;
use tidings_common::observe;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long queue depths are cached.
pub const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// Open connections the listener serves at once; more wait in the listen backlog.
const METRICS_CONNECTIONS: usize = 32;
/// How long a database check is trusted.
const DB_EVERY: Duration = Duration::from_secs(2);
/// `/livez` fails when the runtime has not ticked for this long.
const STALL: Duration = Duration::from_secs(10);

struct Observer {
    handle: PrometheusHandle,
    config: Config,
    topology: Topology,
    started: Instant,
    /// Milliseconds since `started` of the last heartbeat.
    beat: AtomicU64,
    depths: Mutex<(Option<Instant>, Option<lapin::Connection>)>,
    db: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Installs the recorder (with explicit histogram buckets) and serves the listener until
/// `shutdown`.
pub async fn serve(
    addr: std::net::SocketAddr,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut builder = PrometheusBuilder::new();
    for name in observe::HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), observe::SECONDS_BUCKETS)?;
    }
    let handle = builder.install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("TIDINGS_METRICS_ADDR {addr}: cannot listen: {e}"))?;
    let config_limits = config.http_limits;
    let observer = Arc::new(Observer {
        handle,
        topology: Topology::from_config(&config),
        config,
        started: Instant::now(),
        beat: AtomicU64::new(0),
        depths: Mutex::new((None, None)),
        db: Mutex::new(None),
    });
    let ticking = observer.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            ticking.beat.store(
                ticking.started.elapsed().as_millis() as u64,
                Ordering::Relaxed,
            );
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(observer);
    info!(%addr, "metrics and health listening");
    // The api's bounded accept loop: a connection cap, header and idle timeouts, a request
    // timeout, so a slow or greedy scraper cannot hold the process's file descriptors.
    let limits = tidings_common::config::HttpLimits {
        max_connections: METRICS_CONNECTIONS,
        ..config_limits
    };
    tidings_api::serve::serve(listener, app, limits, &shutdown).await;
    Ok(())
}

async fn metrics(State(o): State<Arc<Observer>>) -> Response {
    o.refresh_depths().await;
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        o.handle.render(),
    )
        .into_response()
}

async fn livez(State(o): State<Arc<Observer>>) -> Response {
    let beat = Duration::from_millis(o.beat.load(Ordering::Relaxed));
    let since = o.started.elapsed().saturating_sub(beat);
    if since < STALL {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the process loop has not ticked for {since:?}\n"),
        )
            .into_response()
    }
}

async fn readyz(State(o): State<Arc<Observer>>) -> Response {
    let mut problems = observe::health().problems();
    // Whoever can reach the listener reads this: the database's host and libpq's words go to
    // the log, not into the answer.
    if let Err(e) = o.database().await {
        warn!(error = %e, "readiness: the database does not answer");
        problems.push("database unreachable".into());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "problems": problems})),
        )
            .into_response()
    }
}

impl Observer {
    /// Whether the database answers, checked at most every [`DB_EVERY`].
    async fn database(&self) -> Result<(), String> {
        let mut cached = self.db.lock().await;
        if let Some((at, result)) = cached.as_ref()
            && at.elapsed() < DB_EVERY
        {
            return result.clone();
        }
        let url = self.config.database_url.expose().clone();
        let check = tokio::task::spawn_blocking(move || {
            use diesel::{Connection, RunQueryDsl};
            let mut conn = diesel::PgConnection::establish(&url).map_err(|e| e.to_string())?;
            diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let result = match tokio::time::timeout(Duration::from_secs(3), check).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 3 s".into()),
        };
        *cached = Some((Instant::now(), result.clone()));
        result
    }

    /// Reads every queue's depth by passive declare, at most every [`DEPTH_EVERY`].
    async fn refresh_depths(&self) {
        let mut state = self.depths.lock().await;
        if state.0.is_some_and(|at| at.elapsed() < DEPTH_EVERY) {
            return;
        }
        state.0 = Some(Instant::now());
        if !state.1.as_ref().is_some_and(|c| c.status().connected()) {
            state.1 = match tidings_common::amqp::connect(&self.config.amqp_url, "metrics").await {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %e, "queue depths unavailable: the broker does not answer");
                    return;
                }
            };
        }
        let Some(connection) = state.1.as_ref() else {
            return;
        };
        for queue in self.topology.queues() {
            // A failed passive declare (a queue not declared yet) closes its channel.
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if let Ok(q) = declared {
                observe::queue_depth(&queue, q.message_count(), q.consumer_count());
                let _ = channel.close(200, "depth read".into()).await;
            }
        }
    }
}
