//! Downloading a message's file (I9): `GET /attachments/{id}` with the API token, and
//! `GET /me/attachments/{id}` for a person who may see its message (a customer never gets an
//! internal message's file: 404, as for the message itself).
//!
//! The file is streamed a chunk at a time from the store, so a download costs the api one
//! chunk of memory whatever its size, and `Range` requests (one range) are answered with 206.
//! It is served so that it can never run in the api's origin: `Content-Disposition:
//! attachment` (inline only for PNG, JPEG, GIF and WebP), the type its bytes showed,
//! `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`.

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tidings_common::attachments::{self, CHUNK, INLINE_SAFE, Stored};

use crate::error::{ApiError, ApiResult};
use crate::queries::visibility::visible_message;
use crate::session::Me;
use crate::state::{AppState, with_db};

/// Streams attachment `id` to the host application.
#[utoipa::path(get, path = "/attachments/{id}", tag = "attachments",
    params(("id" = i64, Path, description = "the attachment id")),
    responses(
        (status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range of the file"),
        (status = 404, description = "an unknown id, or its message was deleted", body = crate::error::ErrorBody),
        (status = 416, description = "a range outside the file", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let stored = with_db(&state, move |conn| found(conn, id)).await?;
    Ok(serve(state, stored, &headers))
}

/// Streams attachment `id` to a person who may see its message.
#[utoipa::path(get, path = "/me/attachments/{id}", tag = "me",
    params(("id" = i64, Path, description = "the attachment id")),
    responses(
        (status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range of the file"),
        (status = 403, description = "you may not see its conversation", body = crate::error::ErrorBody),
        (status = 404, description = "an unknown id, or a message you cannot see", body = crate::error::ErrorBody),
        (status = 416, description = "a range outside the file", body = crate::error::ErrorBody),
    ),
    security(("person" = [])))]
pub async fn my_download(
    State(state): State<AppState>,
    Extension(me): Extension<Me>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let stored = with_db(&state, move |conn| {
        let stored = found(conn, id)?;
        visible_message(conn, me, stored.message_id).map_err(|e| match e.status {
            StatusCode::NOT_FOUND => ApiError::not_found("attachment", id),
            _ => e,
        })?;
        Ok(stored)
    })
    .await?;
    Ok(serve(state, stored, &headers))
}

/// Streams the file a notification email linked to, for the person it was sent to: the
/// signed token is the authorisation (no sign-in), it opens that one file for that one
/// person until it expires, and only while they may still see its message.
#[utoipa::path(get, path = "/files/{person_id}/{token}", tag = "attachments",
    params(
        ("person_id" = i64, Path, description = "the person the email was sent to"),
        ("token" = String, Path, description = "the signed link token"),
    ),
    responses(
        (status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range of the file"),
        (status = 400, description = "not a file link of this person", body = crate::error::ErrorBody),
        (status = 403, description = "the person may no longer see its message", body = crate::error::ErrorBody),
        (status = 404, description = "the file or its message is gone", body = crate::error::ErrorBody),
        (status = 410, description = "the link has expired", body = crate::error::ErrorBody),
        (status = 416, description = "a range outside the file", body = crate::error::ErrorBody),
    ))]
pub async fn linked(
    State(state): State<AppState>,
    Path((person_id, token)): Path<(i64, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = tidings_common::clock::now().timestamp();
    let id = attachments::verify_link(&state.config.token_secret, person_id, &token, now).map_err(
        |e| ApiError {
            status: match e {
                tidings_common::mail::LinkError::Expired => StatusCode::GONE,
                _ => StatusCode::BAD_REQUEST,
            },
            message: format!("token: {e}"),
            field: Some("token".into()),
        },
    )?;
    let stored = with_db(&state, move |conn| {
        let stored = found(conn, id)?;
        let person = crate::lookup::find_person(conn, person_id)?;
        if !person.active {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message: "the person this link is for is deactivated".into(),
                field: None,
            });
        }
        visible_message(conn, Me::of(&person), stored.message_id)?;
        Ok(stored)
    })
    .await?;
    let mut response = serve(state, stored, &headers);
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

fn found(conn: &mut diesel::PgConnection, id: i64) -> ApiResult<Stored> {
    crate::lookup::found(attachments::find(conn, id)?, "attachment", id)
}

/// The one range `bytes=a-b`, `bytes=a-` or `bytes=-n` of a file of `size` bytes, as
/// `start..end`; `None` without a `Range` header, `Err` for one that cannot be served.
fn range(headers: &HeaderMap, size: i64) -> Option<Result<(i64, i64), ()>> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        // Several ranges: the whole file is a correct answer.
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let parsed = match (a.trim(), b.trim()) {
        ("", n) => n.parse::<i64>().ok().map(|n| (size - n.min(size), size)),
        (a, "") => a.parse::<i64>().ok().map(|a| (a, size)),
        (a, b) => match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, (b + 1).min(size))),
            _ => None,
        },
    };
    Some(match parsed {
        Some((start, end)) if start < end && start >= 0 => Ok((start, end)),
        _ => Err(()),
    })
}

/// `filename*` as RFC 6266 and RFC 5987 write it (UTF-8, percent-encoded), with an ASCII
/// `filename` beside it for old clients.
fn disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

fn serve(state: AppState, stored: Stored, headers: &HeaderMap) -> Response {
    let size = stored.size;
    let (status, start, end) = match range(headers, size) {
        None => (StatusCode::OK, 0, size),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(Err(())) => {
            let mut refused = ApiError {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                message: format!("the range is outside the file ({size} bytes)"),
                field: None,
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                refused.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return refused;
        }
    };
    let inline = INLINE_SAFE.contains(&stored.content_type.as_str());
    let sha = stored.sha256.clone();
    let body = futures_util::stream::unfold(start, move |at| {
        let (state, sha) = (state.clone(), sha.clone());
        async move {
            if at >= end {
                return None;
            }
            let to = (at - at % CHUNK as i64 + CHUNK as i64).min(end);
            let read = state
                .db
                .run(move |conn| Ok(attachments::read_range(conn, &sha, at, to)?))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()));
            Some((read, to))
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, stored.content_type.clone());
    set(header::CONTENT_LENGTH, (end - start).to_string());
    set(
        header::CONTENT_DISPOSITION,
        disposition(if inline { "inline" } else { "attachment" }, &stored.name),
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    set(
        header::CONTENT_SECURITY_POLICY,
        "sandbox; default-src 'none'".into(),
    );
    set(header::ACCEPT_RANGES, "bytes".into());
    set(header::ETAG, format!("\"{}\"", stored.sha256));
    set(header::CACHE_CONTROL, "private, max-age=3600".into());
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    response
}
