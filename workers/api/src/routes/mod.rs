//! The api's routes, one file per resource. [`router`] maps every path to its handler; all
//! but the signed-link pages need the API token.

pub mod automations;
pub mod conversations;
pub mod email_log;
pub mod follows;
pub mod invitations;
pub mod items;
pub mod me;
pub mod messages;
pub mod people;
pub mod preferences;
pub mod projects;
pub mod suppressions;
pub mod system_notifications;
pub mod teams;
pub mod templates;
pub mod unsubscribe;

use axum::Router;
use axum::routing::{delete, get, patch, post, put};

use crate::state::AppState;

/// Builds the router: the admin routes behind the API token, the `/me` routes behind a
/// person token, and the public pages (signed links, the messenger's static files).
pub fn router(state: AppState) -> Router {
    let private = Router::new()
        .route("/users", post(people::create_user))
        .route("/customers", post(people::create_customer))
        .route("/bots", post(people::create_bot))
        .route(
            "/people/{id}",
            get(people::get_person).patch(people::update_person),
        )
        .route(
            "/people/{id}/preferences",
            get(preferences::get_preferences).patch(preferences::update_preferences),
        )
        .route("/people/{id}/inbox", get(people::inbox))
        .route(
            "/people/{id}/sessions",
            post(crate::session::create_session),
        )
        .route("/projects", post(projects::create_project))
        .route(
            "/projects/{id}/followers/{person_id}",
            put(follows::follow_project).delete(follows::unfollow_project),
        )
        .route("/items", post(items::create_item))
        .route(
            "/items/{id}/followers/{person_id}",
            put(follows::follow_item).delete(follows::unfollow_item),
        )
        .route(
            "/conversations",
            get(conversations::list_conversations).post(conversations::create_conversation),
        )
        .route("/conversations/{id}", get(conversations::get_conversation))
        .route(
            "/conversations/{id}/participants/{person_id}",
            put(conversations::add_participant),
        )
        .route(
            "/conversations/{id}/messages",
            post(conversations::post_message),
        )
        .route("/conversations/{id}/seen", put(conversations::mark_seen))
        .route(
            "/messages/{id}",
            patch(messages::edit_message).delete(messages::delete_message),
        )
        .route("/messages/{id}/deliveries", get(messages::deliveries))
        .route("/messages/{id}/email", get(messages::email))
        .route("/messages/{id}/explain/{person_id}", get(messages::explain))
        .route("/email-log", get(email_log::email_log))
        .route("/items/{id}", patch(items::update_item))
        .route(
            "/people/{id}/password-reset",
            post(people::request_password_reset),
        )
        .route(
            "/password-resets/verify",
            post(people::verify_password_reset),
        )
        .route(
            "/projects/{id}/members/{person_id}",
            put(projects::add_project_member),
        )
        .route("/projects/{id}/invitations", post(invitations::invite))
        .route("/teams", post(teams::create_team))
        .route(
            "/teams/{id}/members/{person_id}",
            put(teams::add_team_member),
        )
        .route(
            "/projects/{id}/teams/{team_id}",
            put(projects::add_project_team),
        )
        .route(
            "/system-notifications",
            get(system_notifications::list_system_notifications),
        )
        .route(
            "/system-notifications/{event}",
            patch(system_notifications::update_system_notification),
        )
        .route(
            "/automations",
            get(automations::list_automations).post(automations::create_automation),
        )
        .route(
            "/automations/{id}",
            get(automations::get_automation)
                .patch(automations::update_automation)
                .delete(automations::delete_automation),
        )
        .route("/templates", get(templates::list_templates))
        .route("/suppressions", get(suppressions::suppressions))
        .route(
            "/suppressions/{address}",
            delete(suppressions::reset_suppression),
        )
        .fallback(crate::error::no_such_endpoint)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::session::require_api_token,
        ));
    // One person, with a person token (header or the messenger's cookie).
    let person = Router::new()
        .route("/me", get(me::me))
        .route("/me/inbox", get(me::inbox))
        .route("/me/events", get(me::events))
        .route("/me/conversations/{id}", get(me::conversation))
        .route("/me/conversations/{id}/messages", post(me::post_message))
        .route("/me/conversations/{id}/seen", put(me::mark_seen))
        .route("/me/messages/{id}/deliveries", get(me::deliveries))
        .route(
            "/me/preferences",
            get(me::get_preferences).patch(me::update_preferences),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::session::require_person,
        ));
    // Unsubscribe links are public: the signed token is the authorisation.
    let public = Router::new()
        .route("/openapi.json", get(crate::openapi::document))
        .route(
            "/session",
            post(crate::session::sign_in).delete(crate::session::sign_out),
        )
        .route("/messenger", get(crate::messenger::page))
        .route("/messenger/{file}", get(crate::messenger::asset))
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe::confirm_page).post(unsubscribe::unsubscribe),
        )
        .route(
            "/invitations/{token}",
            get(invitations::invitation_page).post(invitations::accept_invitation),
        );
    public.merge(person).merge(private).with_state(state)
}
