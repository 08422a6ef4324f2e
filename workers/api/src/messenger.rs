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

/// What the signed-link pages (unsubscribe, invitation) may do: nothing but post their own
/// form; no script, no style from elsewhere, never inside a frame.
const LINK_PAGE_POLICY: &str = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; \
                                base-uri 'none'";

/// A signed-link page: `body` (trusted HTML the api wrote) in a minimal document, with a
/// policy that forbids every script and any framing.
pub fn link_page(title: &str, body: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, LINK_PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title></head><body><main>{body}</main></body></html>"
        ),
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

const ADMIN_INDEX: &str = include_str!("../admin/index.html");
const ADMIN_SCRIPT: &str = include_str!("../admin/admin.js");
const ADMIN_STYLE: &str = include_str!("../admin/admin.css");

/// The console's own files only, as the messenger's; inline style attributes are allowed so
/// that an email's HTML preview (a sandboxed frame without scripts, which inherits this
/// policy) looks as it will in a mail reader.
const ADMIN_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
                            style-src 'self' 'unsafe-inline'; script-src 'self'; \
                            connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; \
                            base-uri 'none'; form-action 'self'";

fn admin_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, ADMIN_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The admin console (HTML). Its calls are the admin routes, with an admin's session.
#[utoipa::path(get, path = "/admin", tag = "admin",
    responses((status = 200, description = "the admin console", content_type = "text/html")))]
pub async fn admin_page() -> Response {
    admin_file("text/html; charset=utf-8", ADMIN_INDEX)
}

/// The admin console's script and style sheet.
#[utoipa::path(get, path = "/admin/{file}", tag = "admin",
    params(("file" = String, Path, description = "admin.js or admin.css")),
    responses(
        (status = 200, description = "the file"),
        (status = 404, description = "no such file", body = crate::error::ErrorBody),
    ))]
pub async fn admin_asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "admin.js" => admin_file("text/javascript; charset=utf-8", ADMIN_SCRIPT),
        "admin.css" => admin_file("text/css; charset=utf-8", ADMIN_STYLE),
        _ => crate::error::ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no admin console file {name:?}"),
            field: None,
        }
        .into_response(),
    }
}
