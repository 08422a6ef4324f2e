//! The api role: the product's HTTP front door (JSON). People, projects, items, follows,
//! conversations, posting messages, marking seen, inboxes and delivery status; person
//! sessions, the `/me` routes, each person's live event stream and the messenger page.
//!
//! The admin routes need `Authorization: Bearer <TIDINGS_API_TOKEN>`; the `/me` routes a
//! person token (see `session`). Errors are JSON objects `{"error": "...", "field": "..."}`:
//! 400 for a bad body (naming the field), 401 without a token, 403 with the other kind, 404
//! for an unknown id.

mod error;
pub mod hub;
pub mod live;
mod lookup;
mod messenger;
pub mod openapi;
mod posting;
mod queries;
pub mod routes;
pub mod serve;
mod session;
mod state;
mod upload;
mod validate;

use std::sync::Arc;

use tidings_common::Config;
use tidings_common::amqp::Topology;
use tidings_common::db::Db;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long the api waits for its broker connection before it listens.
const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub use error::ApiError;
pub use routes::router;
pub use state::AppState;

/// Serves the API on `config.http_addr` until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let db = Db::new(&config.database_url, config.db_pool_size);
    let topology = Arc::new(Topology::from_config(&config));
    let broker = tidings_common::amqp::SharedPublisher::default();
    let keeper = broker.spawn_keeper(
        config.amqp_url.expose().clone(),
        "api",
        (*topology).clone(),
        shutdown.clone(),
    );
    let templates = Arc::new(tidings_common::templates::TemplateStore::open(
        &config.templates_dir,
        &config.default_locale,
        &tidings_common::REQUIRED_TEMPLATES,
    )?);
    templates
        .clone()
        .watch(config.templates_reload, shutdown.clone());
    // The console's saved versions, before the first email or preview.
    tidings_common::templates::versions::look(&templates, &db).await;
    tidings_common::templates::versions::follow(
        templates.clone(),
        db.clone(),
        config.amqp_url.expose().clone(),
        (*topology).clone(),
        config.templates_reload,
        shutdown.clone(),
    );
    let hub = Arc::new(hub::Hub::default());
    let listener_task = hub::spawn_listener(
        hub.clone(),
        config.amqp_url.expose().clone(),
        (*topology).clone(),
        shutdown.clone(),
    );
    let state = AppState {
        db,
        config: config.clone(),
        topology,
        broker,
        templates,
        hub,
        shutdown: shutdown.clone(),
    };
    if !state.broker.wait_connected(BROKER_WAIT).await {
        warn!(
            wait = ?BROKER_WAIT,
            "the broker is not reachable yet; listening anyway (the sweeps announce what is accepted meanwhile)"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!("TIDINGS_HTTP_ADDR {}: cannot listen: {e}", config.http_addr)
        })?;
    info!(addr = %config.http_addr, "api listening");
    serve::serve(listener, router(state), config.http_limits, &shutdown).await;
    shutdown.cancel();
    let _ = keeper.await;
    let _ = listener_task.await;
    info!("api stopped");
    Ok(())
}
