//! The api's routes, one file per resource. [`router`] maps every path to its handler and
//! builds the OpenAPI document from the same declarations: each route is named once, in a
//! `routes!` below, and its path and method come from the handler's own `#[utoipa::path]`,
//! so no path can be served without being documented. All but the signed-link pages, the
//! session exchange and the messenger's files need a token.

pub mod admin;
pub mod attachments;
pub mod automations;
pub mod conversations;
pub mod email_log;
pub mod follows;
pub mod inbound;
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
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The routes in three groups by who may call them.
struct Groups {
    /// Behind the API token.
    admin: OpenApiRouter<AppState>,
    /// Behind a person token (header or the messenger's cookie).
    person: OpenApiRouter<AppState>,
    /// Public: signed links (the signed token is the authorisation), the session exchange and
    /// the messenger's files.
    public: OpenApiRouter<AppState>,
}

fn groups() -> Groups {
    let admin = OpenApiRouter::new()
        .routes(routes!(people::create_user))
        .routes(routes!(people::create_customer))
        .routes(routes!(people::create_bot))
        .routes(routes!(people::get_person, people::update_person))
        .routes(routes!(
            preferences::get_preferences,
            preferences::update_preferences
        ))
        .routes(routes!(people::inbox))
        .routes(routes!(people::get_attention, people::put_attention))
        .routes(routes!(
            people::get_attention_defaults,
            people::put_attention_defaults
        ))
        .routes(routes!(
            crate::session::create_session,
            crate::session::revoke_sessions
        ))
        .routes(routes!(people::request_password_reset))
        .routes(routes!(people::verify_password_reset))
        .routes(routes!(projects::create_project))
        .routes(routes!(follows::follow_project, follows::unfollow_project))
        .routes(routes!(projects::add_project_member))
        .routes(routes!(projects::add_project_team))
        .routes(routes!(invitations::invite))
        .routes(routes!(items::create_item))
        .routes(routes!(items::update_item))
        .routes(routes!(follows::follow_item, follows::unfollow_item))
        .routes(routes!(
            conversations::list_conversations,
            conversations::create_conversation
        ))
        .routes(routes!(conversations::get_conversation))
        .routes(routes!(conversations::add_participant))
        .routes(routes!(conversations::post_message))
        .routes(routes!(conversations::mark_seen))
        .routes(routes!(
            messages::get_message,
            messages::edit_message,
            messages::delete_message
        ))
        .routes(routes!(messages::deliveries))
        .routes(routes!(messages::email))
        .routes(routes!(messages::explain))
        .routes(routes!(email_log::email_log))
        .routes(routes!(teams::create_team))
        .routes(routes!(teams::add_team_member))
        .routes(routes!(system_notifications::list_system_notifications))
        .routes(routes!(system_notifications::update_system_notification))
        .routes(routes!(
            automations::list_automations,
            automations::create_automation
        ))
        .routes(routes!(
            automations::get_automation,
            automations::update_automation,
            automations::delete_automation
        ))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::get_template, templates::save_template))
        .routes(routes!(templates::preview_template))
        .routes(routes!(templates::revert_template))
        .routes(routes!(templates::template_versions))
        .routes(routes!(templates::test_template))
        .routes(routes!(people::list_people))
        .routes(routes!(admin::admin_changes))
        .routes(routes!(admin::status))
        .routes(routes!(inbound::set_aside))
        .routes(routes!(inbound::source))
        .routes(routes!(inbound::log_source))
        .routes(routes!(inbound::post_anyway))
        .routes(routes!(attachments::download))
        .routes(routes!(suppressions::suppressions))
        .routes(routes!(suppressions::reset_suppression));
    let person = OpenApiRouter::new()
        .routes(routes!(me::me))
        .routes(routes!(me::inbox))
        .routes(routes!(me::events))
        .routes(routes!(me::conversation))
        .routes(routes!(me::message))
        .routes(routes!(attachments::my_download))
        .routes(routes!(me::post_message))
        .routes(routes!(me::mark_seen))
        .routes(routes!(me::mute, me::unmute))
        .routes(routes!(me::get_attention, me::put_attention))
        .routes(routes!(me::deliveries))
        .routes(routes!(me::get_preferences, me::update_preferences));
    let public = OpenApiRouter::new()
        .routes(routes!(crate::session::sign_in, crate::session::sign_out))
        .routes(routes!(crate::messenger::page))
        .routes(routes!(crate::messenger::asset))
        .routes(routes!(crate::messenger::admin_page))
        .routes(routes!(crate::messenger::admin_asset))
        .routes(routes!(unsubscribe::confirm_page, unsubscribe::unsubscribe))
        .routes(routes!(attachments::linked))
        .routes(routes!(
            invitations::invitation_page,
            invitations::accept_invitation
        ));
    Groups {
        admin,
        person,
        public,
    }
}

/// Builds the router and its OpenAPI document: the admin routes behind the API token, the
/// `/me` routes behind a person token, and the public pages. `/openapi.json` serves the
/// document.
pub fn router(state: AppState) -> Router {
    let groups = groups();
    let (admin, admin_doc) = groups.admin.split_for_parts();
    let (person, person_doc) = groups.person.split_for_parts();
    let (public, public_doc) = groups.public.split_for_parts();
    let document = crate::openapi::document([admin_doc, person_doc, public_doc]);
    let admin =
        admin
            .fallback(crate::error::no_such_endpoint)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::session::require_admin,
            ));
    let person = person.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::session::require_person,
    ));
    let public = public.route(
        "/openapi.json",
        get(move || std::future::ready(axum::Json(document))),
    );
    // Files travel in multipart bodies up to TIDINGS_MAIL_MAX; a JSON body has its own
    // 2 MiB bound (`error::Body`).
    let limit = axum::extract::DefaultBodyLimit::max(state.config.inbound_max_bytes + 64 * 1024);
    public
        .merge(person)
        .merge(admin)
        .layer(limit)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of a group's document and the security it declares.
    fn operations(group: OpenApiRouter<AppState>) -> Vec<(String, Vec<String>)> {
        let doc = group.into_openapi();
        let mut out = Vec::new();
        for (path, item) in doc.paths.paths {
            let ops = [&item.get, &item.post, &item.put, &item.patch, &item.delete];
            for op in ops.into_iter().flatten() {
                let schemes = op
                    .security
                    .iter()
                    .flatten()
                    .flat_map(|r| {
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| {
                                v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                out.push((path.clone(), schemes));
            }
        }
        out
    }

    /// A handler in the wrong group would be served behind the wrong middleware, or
    /// documented with the wrong token: each group's operations declare its own scheme.
    #[test]
    fn each_group_documents_the_token_its_middleware_asks_for() {
        let Groups {
            admin,
            person,
            public,
        } = groups();
        let admin = operations(admin);
        let person = operations(person);
        let public = operations(public);
        assert!(admin.len() > 40 && person.len() >= 9 && public.len() >= 7);
        for (path, schemes) in &admin {
            assert_eq!(schemes, &["bearer"], "{path}");
            assert!(path != "/me" && !path.starts_with("/me/"), "{path}");
        }
        for (path, schemes) in &person {
            assert_eq!(schemes, &["person"], "{path}");
            assert!(path == "/me" || path.starts_with("/me/"), "{path}");
        }
        for (path, schemes) in &public {
            assert!(
                schemes.is_empty(),
                "{path} is public but asks for {schemes:?}"
            );
        }
    }
}
