//! The messenger page at `/messenger`: static files compiled into the binary, so nothing
//! loads from the internet and no build step is needed. The page signs in by exchanging the
//! person token in its URL fragment for the session cookie (`POST /session`), then uses the
//! `/me` routes and the live event stream.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../messenger/index.html");
const SCRIPT: &str = include_str!("../messenger/app.js");
const STYLE: &str = include_str!("../messenger/app.css");

/// Only the page's own files; no inline script, no third-party origin.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                      script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                      base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The messenger page (HTML).
#[utoipa::path(get, path = "/messenger", tag = "messenger",
    responses((status = 200, description = "the messenger page", content_type = "text/html")))]
pub async fn page() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// The messenger's script and style sheet.
#[utoipa::path(get, path = "/messenger/{file}", tag = "messenger",
    params(("file" = String, Path, description = "app.js or app.css")),
    responses(
        (status = 200, description = "the file"),
        (status = 404, description = "no such file", body = crate::error::ErrorBody),
    ))]
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => file("text/css; charset=utf-8", STYLE),
        _ => crate::error::ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no messenger file {name:?}"),
            field: None,
        }
        .into_response(),
    }
}
