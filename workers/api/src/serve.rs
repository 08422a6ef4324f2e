//! The HTTP listener with bounds: at most `max_connections` open at once (more wait in the
//! listen backlog), headers within `header_timeout` (which also closes idle keep-alive
//! connections), each request done within `request_timeout`, and every error answered as JSON.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tidings_common::config::HttpLimits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::ApiError;

/// How long open connections get to finish once the process is stopping.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` fires, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: &CancellationToken,
) {
    let timeout = limits.request_timeout;
    let app = app.layer(axum::middleware::from_fn(move |req, next| {
        bounded(req, next, timeout)
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (service, stop) = (TowerToHyperService::new(app.clone()), shutdown.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(DRAIN, connection).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Runs one request within `timeout`, and answers any error that is not JSON yet (a path
/// parameter that does not parse, a method the route does not take) as the api's JSON error.
async fn bounded(req: Request<Body>, next: Next, timeout: Duration) -> Response {
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            return ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("the request took longer than {timeout:?}"),
                field: None,
            }
            .into_response();
        }
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    ApiError {
        status,
        message: if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_lowercase()
        } else {
            text
        },
        field: None,
    }
    .into_response()
}
