//! Operations routes: liveness, readiness, metrics and the OpenAPI description.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db;
use crate::state::AppState;

/// The process is running.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = serde_json::Value)),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The service can do its job: the database answers and can write (not a standby in
/// recovery, not a read-only session), it is migrated, and the ingest writer is not
/// stalled. A load balancer stops sending traffic to a replica answering 503.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = serde_json::Value),
        (status = 503, description = "`{\"status\": \"not_ready\", \"reason\": ...}`", body = serde_json::Value),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let verdict = match tokio::time::timeout(Duration::from_secs(2), db::readiness(&state.pool))
        .await
    {
        Err(_) => Err("the database did not answer within 2 s".to_string()),
        Ok(Err(reason)) => Err(reason),
        Ok(Ok(())) if state.writer.stalled(state.config.server.request_timeout) => Err(
            "the ingest writer has stored nothing for longer than the request timeout".to_string(),
        ),
        Ok(Ok(())) => Ok(()),
    };
    match verdict {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .ingest_queue_depth
        .set(state.writer.queued() as i64);
    state
        .metrics
        .ingest_queue_bytes
        .set(state.writer.queued_bytes() as i64);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This description.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this service", body = serde_json::Value)),
)]
pub async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        // Serialising plain data to a string does not fail; an empty object would be a bug.
        super::openapi::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_string())
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.clone(),
    )
        .into_response()
}
