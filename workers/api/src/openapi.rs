//! The API's own description: an OpenAPI 3.1 document generated from the route code (every
//! handler's `#[utoipa::path]`, every body's `ToSchema`, gathered by the router's `routes!`),
//! served at `/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(info(
    title = "Tidings",
    description = "The notification and email pipeline of a help-desk messenger. The admin routes need `Authorization: Bearer <TIDINGS_API_TOKEN>` (security `bearer`); the `/me` routes act as one person and need a person token from `POST /people/{id}/sessions`, as a bearer token or the messenger's session cookie (security `person`). Each kind is refused (403) where the other belongs. A write authenticated by the cookie is taken only from the public origin (`Origin`, or `Sec-Fetch-Site: same-origin`); every JSON body must be sent as `Content-Type: application/json` (415 otherwise). The signed-link pages, `/session` and the messenger's static files are public."
))]
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
                if operation.request_body.is_some() {
                    answers.entry("415".into()).or_insert_with(|| {
                        error("the body was not sent as Content-Type: application/json")
                    });
                }
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

/// The document: the description and security schemes of [`ApiDoc`], the paths and schemas
/// the router's groups declared, and the answers every route can give.
pub fn document(
    parts: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for part in parts {
        doc.merge(part);
    }
    BearerToken.modify(&mut doc);
    doc
}
