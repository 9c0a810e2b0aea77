//! Operations routes: liveness, readiness, metrics and the OpenAPI description.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db;
use crate::reconcile;
use crate::state::AppState;

/// The process is running.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = serde_json::Value)),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Longest `/readyz` waits for the database: the answer comes within a second whatever
/// the database does (a balancer's probe times out after a few), 503 when it did not
/// answer in time.
pub const READY_WAIT: Duration = Duration::from_millis(800);

/// The service can do its job: the database answers and can write (not a standby in
/// recovery, not a read-only session), it is migrated, the ingest writer is not stalled,
/// and it is not shutting down. A load balancer stops sending traffic to a replica
/// answering 503.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = serde_json::Value),
        (status = 503, description = "`{\"status\": \"not_ready\", \"reason\": ...}`", body = serde_json::Value),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // A replica shutting down leaves the balancer first, while it still serves.
    if state.draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "shutting down"})),
        )
            .into_response();
    }
    // Dropping the probe at the deadline is safe: it writes nothing.
    let verdict = match tokio::time::timeout(READY_WAIT, db::readiness(&state.pool)).await {
        Err(_) => Err(format!(
            "the database did not answer within {} ms",
            READY_WAIT.as_millis()
        )),
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

/// Longest a scrape waits for the database's figures (and at most half the request
/// timeout); past it, the previous ones are served: a scrape must answer while the
/// database is slow or away.
const REFRESH_WAIT: Duration = Duration::from_secs(2);
/// Pending deliveries are counted up to this many (an index range read).
const BACKLOG_CAP: i64 = 10_000_000;

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.ingest_queue_depth.set(state.writer.queued() as i64);
    m.ingest_queue_bytes.set(state.writer.queued_bytes() as i64);
    m.set_pool(state.pool.size(), state.pool.num_idle());
    let wait = REFRESH_WAIT.min(state.config.server.request_timeout / 2);
    match tokio::time::timeout(wait, refresh(&state)).await {
        // A database error was logged where it arose (once per burst).
        Ok(_) => {}
        Err(_) => tracing::debug!("metrics: the database did not answer in time"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.exposition.render(),
    )
        .into_response()
}

/// The figures only the database knows: the deliveries' backlog, the objects set aside,
/// and each reconciled stream's staleness.
async fn refresh(state: &AppState) -> Result<(), crate::error::ApiError> {
    let pending =
        db::events::count_outcome(&state.pool, db::events::Outcome::Pending, BACKLOG_CAP).await?;
    let oldest = db::events::oldest_pending(&state.pool).await?;
    let lag = oldest.map_or(Duration::ZERO, |at| {
        (chrono::Utc::now() - at).to_std().unwrap_or_default()
    });
    state.metrics.set_backlog(pending, lag);
    state
        .metrics
        .set_set_aside(&db::set_aside::counts(&state.pool).await?);
    let Some(reconciler) = &state.reconciler else {
        return Ok(());
    };
    let status = reconcile::status::load(&state.pool, &state.config, Some(reconciler)).await?;
    for stream in status.streams {
        if !stream.enabled {
            continue;
        }
        let seconds = |s: u64| Duration::from_secs(s);
        let bound = seconds(stream.staleness_bound_seconds);
        let last_success = stream
            .last
            .as_ref()
            .filter(|p| p.status == Some(db::sync::PassStatus::Ok))
            .and_then(|p| p.finished_at);
        state.metrics.set_stream(
            stream.stream.0.stream(),
            stream.staleness_seconds.map(seconds),
            bound,
            last_success,
        );
    }
    Ok(())
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
