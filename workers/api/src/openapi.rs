//! The API's own description: an OpenAPI 3.1 document generated from the route code (every
//! handler's `#[utoipa::path]`, every body's `ToSchema`), served at `/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidings",
        description = "The notification and email pipeline of a help-desk messenger. The admin routes need `Authorization: Bearer <TIDINGS_API_TOKEN>` (security `bearer`); the `/me` routes act as one person and need a person token from `POST /people/{id}/sessions`, as a bearer token or the messenger's session cookie (security `person`). Each kind is refused (403) where the other belongs. The signed-link pages, `/session` and the messenger's static files are public."
    ),
    paths(
        crate::routes::people::create_user,
        crate::routes::people::create_customer,
        crate::routes::people::create_bot,
        crate::routes::people::get_person,
        crate::routes::people::update_person,
        crate::routes::people::inbox,
        crate::routes::people::request_password_reset,
        crate::routes::people::verify_password_reset,
        crate::routes::preferences::get_preferences,
        crate::routes::preferences::update_preferences,
        crate::routes::projects::create_project,
        crate::routes::projects::add_project_member,
        crate::routes::projects::add_project_team,
        crate::routes::follows::follow_project,
        crate::routes::follows::unfollow_project,
        crate::routes::follows::follow_item,
        crate::routes::follows::unfollow_item,
        crate::routes::items::create_item,
        crate::routes::items::update_item,
        crate::routes::conversations::list_conversations,
        crate::routes::conversations::create_conversation,
        crate::routes::conversations::get_conversation,
        crate::routes::conversations::add_participant,
        crate::routes::conversations::post_message,
        crate::routes::conversations::mark_seen,
        crate::routes::messages::edit_message,
        crate::routes::messages::delete_message,
        crate::routes::messages::deliveries,
        crate::routes::messages::email,
        crate::routes::messages::explain,
        crate::routes::email_log::email_log,
        crate::routes::suppressions::suppressions,
        crate::routes::suppressions::reset_suppression,
        crate::routes::system_notifications::list_system_notifications,
        crate::routes::system_notifications::update_system_notification,
        crate::routes::automations::list_automations,
        crate::routes::automations::create_automation,
        crate::routes::automations::get_automation,
        crate::routes::automations::update_automation,
        crate::routes::automations::delete_automation,
        crate::routes::templates::list_templates,
        crate::routes::teams::create_team,
        crate::routes::teams::add_team_member,
        crate::routes::invitations::invite,
        crate::routes::invitations::invitation_page,
        crate::routes::invitations::accept_invitation,
        crate::routes::unsubscribe::confirm_page,
        crate::routes::unsubscribe::unsubscribe,
        crate::session::create_session,
        crate::session::sign_in,
        crate::session::sign_out,
        crate::routes::me::me,
        crate::routes::me::inbox,
        crate::routes::me::events,
        crate::routes::me::conversation,
        crate::routes::me::post_message,
        crate::routes::me::mark_seen,
        crate::routes::me::deliveries,
        crate::routes::me::get_preferences,
        crate::routes::me::update_preferences,
        crate::messenger::page,
        crate::messenger::asset
    ),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme the routes refer to, and adds the answers every route
/// can give to each operation: 503 during an outage, and 401 where the token is needed.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "person",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let answers = &mut operation.responses.responses;
                answers.insert(
                    "503".into(),
                    error("a service is temporarily unavailable; try again"),
                );
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    answers.insert("401".into(), error("missing or wrong bearer token"));
                    answers.entry("403".into()).or_insert_with(|| {
                        error("the other kind of token: a person token on an admin route, or the API token on a /me route")
                    });
                }
                // Every route takes a path, a query or a body that can fail to parse.
                answers.entry("400".into()).or_insert_with(|| {
                    error("a path parameter, query or body that does not parse; the error names it")
                });
                answers
                    .entry("413".into())
                    .or_insert_with(|| error("the request body is over the size limit"));
            }
        }
    }
}

/// An error answer with the [`ErrorBody`](crate::error::ErrorBody) schema.
fn error(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .build(),
    )
}

/// The document, as JSON.
pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path and method the router serves, read from the router's source.
    fn routed() -> Vec<(String, Vec<&'static str>)> {
        let source = include_str!("routes/mod.rs");
        let mut routes = Vec::new();
        for chunk in source.split(".route(").skip(1) {
            let chunk = chunk.split(".fallback(").next().unwrap_or(chunk);
            let path = chunk.split('"').nth(1).expect("a path literal").to_string();
            let methods = ["get", "post", "put", "patch", "delete"]
                .into_iter()
                .filter(|m| {
                    chunk.match_indices(&format!("{m}(")).any(|(i, _)| {
                        !chunk[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                })
                .collect();
            routes.push((path, methods));
        }
        routes
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = ApiDoc::openapi();
        let routes = routed();
        assert!(routes.len() > 30, "router source not read: {routes:?}");
        let mut documented = 0;
        for (path, methods) in &routes {
            if path == "/openapi.json" {
                continue;
            }
            let item = doc
                .paths
                .paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} is routed but not documented"));
            let has = |m: &str| match m {
                "get" => item.get.is_some(),
                "post" => item.post.is_some(),
                "put" => item.put.is_some(),
                "patch" => item.patch.is_some(),
                _ => item.delete.is_some(),
            };
            for method in methods {
                assert!(has(method), "{method} {path} is routed but not documented");
                documented += 1;
            }
        }
        let operations: usize = doc
            .paths
            .paths
            .values()
            .map(|i| {
                [&i.get, &i.post, &i.put, &i.patch, &i.delete]
                    .iter()
                    .filter(|o| o.is_some())
                    .count()
            })
            .sum();
        assert_eq!(
            operations, documented,
            "the document lists operations the router does not serve"
        );
    }
}
