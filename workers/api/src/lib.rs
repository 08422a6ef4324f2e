//! The api role: the product's HTTP front door (JSON). People, projects, items, follows,
//! conversations, posting messages, marking seen, inboxes and delivery status.
//!
//! Every request needs `Authorization: Bearer <TIDINGS_API_TOKEN>`. Errors are JSON objects
//! `{"error": "...", "field": "..."}`: 400 for a bad body (naming the field), 401 without the
//! token, 404 for an unknown id.

mod broker;
mod center;
mod error;
mod handlers;
mod preferences;
mod unsubscribe;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, patch, post, put};
use tidings_common::Config;
use tidings_common::amqp::Topology;
use tidings_common::db::Db;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use error::ApiError;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub topology: Arc<Topology>,
    pub broker: tidings_common::amqp::SharedPublisher,
    /// The templates, for listing them and checking automations name one that exists.
    pub templates: Arc<tidings_common::templates::TemplateStore>,
}

/// Builds the router with every route behind the bearer-token check.
pub fn router(state: AppState) -> Router {
    use handlers::*;
    let private = Router::new()
        .route("/users", post(create_user))
        .route("/customers", post(create_customer))
        .route("/bots", post(create_bot))
        .route("/people/{id}", get(get_person).patch(update_person))
        .route(
            "/people/{id}/preferences",
            get(preferences::get_preferences).patch(preferences::update_preferences),
        )
        .route("/people/{id}/inbox", get(inbox))
        .route("/projects", post(create_project))
        .route(
            "/projects/{id}/followers/{person_id}",
            put(follow_project).delete(unfollow_project),
        )
        .route("/items", post(create_item))
        .route(
            "/items/{id}/followers/{person_id}",
            put(follow_item).delete(unfollow_item),
        )
        .route("/conversations", post(create_conversation))
        .route("/conversations/{id}", get(get_conversation))
        .route(
            "/conversations/{id}/participants/{person_id}",
            put(add_participant),
        )
        .route("/conversations/{id}/messages", post(post_message))
        .route("/conversations/{id}/seen", put(mark_seen))
        .route("/messages/{id}", patch(edit_message).delete(delete_message))
        .route("/messages/{id}/deliveries", get(deliveries))
        .route("/messages/{id}/explain/{person_id}", get(explain))
        .route("/email-log", get(email_log))
        .route("/items/{id}", axum::routing::patch(center::update_item))
        .route(
            "/people/{id}/password-reset",
            post(center::request_password_reset),
        )
        .route(
            "/projects/{id}/members/{person_id}",
            put(center::add_project_member),
        )
        .route("/projects/{id}/invitations", post(center::invite))
        .route("/teams", post(center::create_team))
        .route(
            "/teams/{id}/members/{person_id}",
            put(center::add_team_member),
        )
        .route(
            "/projects/{id}/teams/{team_id}",
            put(center::add_project_team),
        )
        .route(
            "/system-notifications",
            get(center::list_system_notifications),
        )
        .route(
            "/system-notifications/{event}",
            patch(center::update_system_notification),
        )
        .route(
            "/automations",
            get(center::list_automations).post(center::create_automation),
        )
        .route(
            "/automations/{id}",
            get(center::get_automation)
                .patch(center::update_automation)
                .delete(center::delete_automation),
        )
        .route("/templates", get(center::list_templates))
        .route("/suppressions", get(suppressions))
        .route(
            "/suppressions/{address}",
            axum::routing::delete(reset_suppression),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::require_bearer_token,
        ));
    // Unsubscribe links are public: the signed token is the authorisation.
    let public = Router::new()
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe::confirm_page).post(unsubscribe::unsubscribe),
        )
        .route(
            "/invitations/{token}",
            get(center::invitation_page).post(center::accept_invitation),
        );
    public.merge(private).with_state(state)
}

/// Serves the API on `config.http_addr` until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let db = Db::new(&config.database_url, config.db_pool_size);
    let topology = Arc::new(Topology::from_config(&config));
    let broker = tidings_common::amqp::SharedPublisher::default();
    let keeper = {
        let (broker, config, topology, shutdown) = (
            broker.clone(),
            config.clone(),
            topology.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            broker
                .keep_connected(&config.amqp_url, "api", &topology, &shutdown)
                .await
        })
    };
    let templates = Arc::new(tidings_common::templates::TemplateStore::open(
        &config.templates_dir,
        &config.default_locale,
        &tidings_common::REQUIRED_TEMPLATES,
    )?);
    templates
        .clone()
        .watch(config.templates_reload, shutdown.clone());
    let state = AppState {
        db,
        config: config.clone(),
        topology,
        broker,
        templates,
    };
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!("TIDINGS_HTTP_ADDR {}: cannot listen: {e}", config.http_addr)
        })?;
    info!(addr = %config.http_addr, "api listening");
    let stop = shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    let _ = keeper.await;
    info!("api stopped");
    Ok(())
}
