//! JSON errors, and the body extractor that names the offending field.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tracing::error;

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error answered to the client as `{"error": ..., "field": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    /// 409: the request conflicts with the state of the resource.
    pub fn conflict(message: impl Into<String>, field: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            message: message.into(),
            field: field.map(str::to_string),
        }
    }

    /// 403: the caller may not do this (`message` says who may).
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            field: None,
        }
    }

    /// 500: the work itself failed (a task that panicked); logged with the reason.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        error!(%message, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            field: None,
        }
    }

    pub fn not_found(what: &str, id: i64) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("{what} {id} not found"),
            field: None,
        }
    }
}

/// Every error answer's body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
    /// The request field that was wrong, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<tidings_common::Error> for ApiError {
    fn from(e: tidings_common::Error) -> Self {
        error!(error = %e, "request failed");
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError {
            status,
            message: if e.is_transient() {
                "service temporarily unavailable; try again".into()
            } else {
                "internal error".into()
            },
            field: None,
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        tidings_common::Error::from(e).into()
    }
}

/// A JSON request body whose errors name the field that was wrong. A body sent as any type
/// but `application/json` (or a `+json` type) is refused with 415: a browser sends such a
/// type cross-origin only after a CORS preflight, which this service never grants, while
/// `text/plain` and form types can be sent by any page.
pub struct Body<T>(pub T);

/// Whether `content_type` is JSON: `application/json` or `application/<x>+json`, parameters
/// (`; charset=utf-8`) allowed.
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let given = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !given.as_deref().is_some_and(is_json) {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: match given {
                    Some(t) => format!(
                        "the body must be JSON with Content-Type: application/json (got {:?})",
                        t.chars().take(100).collect::<String>()
                    ),
                    None => "the body must be JSON with Content-Type: application/json \
                             (no Content-Type was sent)"
                        .into(),
                },
                field: None,
            });
        }
        let _ = state;
        let bytes = axum::body::to_bytes(req.into_body(), JSON_MAX)
            .await
            .map_err(|e| ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "cannot read the request body (a JSON body is at most {JSON_MAX} bytes): {e}"
                ),
                field: None,
            })?;
        parse_json(&bytes).map(Body)
    }
}

/// Most bytes of a JSON body (files travel in `multipart/form-data`, under their own limits).
pub const JSON_MAX: usize = 2 * 1024 * 1024;

/// Parses a JSON body, naming the field that was wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    {
        if let Some(field) = field_with_nul(bytes) {
            return Err(ApiError::bad_field(
                &field,
                format!("{field}: must not contain NUL characters (\\u0000)"),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            // A missing field's path is the parent; the field is named in the message.
            let field = match message.split('`').nth(1) {
                Some(name) if message.starts_with("missing field") => name.to_string(),
                _ if path == "." => String::new(),
                _ => path,
            };
            ApiError {
                status: StatusCode::BAD_REQUEST,
                message: if field.is_empty() {
                    format!("invalid JSON body: {message}")
                } else {
                    format!("{field}: {message}")
                },
                field: (!field.is_empty()).then_some(field),
            }
        })
    }
}

/// The path of the first string (or key) in a JSON body holding a NUL character, which no text
/// column can store. JSON can only carry one as the escape `\u0000`, so bodies without it are
/// not parsed twice.
fn field_with_nul(bytes: &[u8]) -> Option<String> {
    fn walk(value: &serde_json::Value, path: &str) -> Option<String> {
        let here = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            serde_json::Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
                ".".into()
            } else {
                path.into()
            }),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, &format!("{path}[{i}]"))),
            serde_json::Value::Object(fields) => fields.iter().find_map(|(k, v)| {
                if k.contains('\0') {
                    Some(here(&k.replace('\0', "\\u0000")))
                } else {
                    walk(v, &here(k))
                }
            }),
            _ => None,
        }
    }
    if !bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return None;
    }
    walk(&serde_json::from_slice(bytes).ok()?, "")
}

/// A query string whose errors answer 400 as JSON, naming the parameter that was wrong.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                let field = detail
                    .split_once(": ")
                    .map(|(name, _)| name)
                    .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: format!("query string: {detail}"),
                    field: field.map(str::to_string),
                })
            }
        }
    }
}

/// The answer to a path no route matches.
pub async fn no_such_endpoint() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint".into(),
        field: None,
    }
}
