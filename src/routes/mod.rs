//! The HTTP surface: every route, registered with its OpenAPI description, behind the
//! shared layers (request ids, access logs, the request timeout, per-route metrics).
//!
//! [`router`] is what `serve` serves and what handler tests call `oneshot` on;
//! [`openapi::openapi`] describes exactly the routes it serves.

pub mod openapi;
pub mod ops;
pub mod status;
pub mod webhook;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::telemetry::DeliveryResult;

/// The HTTP surface. Routes see the matched route template, never the raw path, in logs
/// and metrics, so the webhook URL token is never written anywhere.
///
/// Every route is registered through an [`OpenApiRouter`] together with its OpenAPI
/// description, so `/openapi.json` ([`openapi::openapi`]) lists exactly the routes served.
pub fn router(state: AppState) -> Router {
    // With an admin address, the operations routes it serves are not served here.
    let admin_elsewhere = state.config.server.admin_listen.is_some();
    let (open, _) = open_routes(!admin_elsewhere).split_for_parts();
    let (v1, _) = api::routes()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::require_bearer,
        ))
        .split_for_parts();
    layered(open.merge(v1), state)
}

/// The routes of the admin address (`server.admin_listen`): `/metrics` and `/status`.
pub fn admin_router(state: AppState) -> Router {
    let (admin, _) = admin_routes().split_for_parts();
    layered(admin, state)
}

/// The shared layers: fallbacks, the request timeout and metrics, access logs and
/// request ids.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", |p| p.as_str());
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // `client`: the `/v1` caller's name, recorded once it is known.
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        route,
                        request_id,
                        client = tracing::field::Empty
                    )
                })
                .on_request(())
                .on_response(
                    |response: &Response, latency: std::time::Duration, _: &tracing::Span| {
                        tracing::info!(
                            latency_ms = latency.as_secs_f64() * 1000.0,
                            http.status = response.status().as_u16(),
                            "finished processing request"
                        );
                    },
                )
                // No line per failed answer: a 500's cause is logged where it arises
                // (ApiError::internal), and an outage's 503s once per burst; a line per
                // request would flood the log exactly when it is read.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Bounds every request by the request timeout (503 with Retry-After past it) and counts
/// answers per route. Dropping a handler's future here is safe: no handler writes to the
/// database inside its own future.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // A long-poll of the change feed, or a write waiting for its outcome, may take that
    // much longer.
    let limit = state.config.server.request_timeout
        + if api::may_wait(req.method(), &route) {
            api::params::MAX_WAIT
        } else {
            std::time::Duration::ZERO
        };
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            if route.starts_with("/webhooks/") {
                state
                    .metrics
                    .delivery(DeliveryResult::Refused(ErrorCode::Unavailable));
            }
            ApiError::unavailable("the request timed out; retry later").into_response()
        }
    };
    state.metrics.http_answer(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The routes without bearer auth: operations, the OpenAPI description, webhook ingest.
pub(crate) fn open_routes(with_admin: bool) -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(webhook::receive))
        .routes(routes!(webhook::missing_token))
        .routes(routes!(webhook::missing_token_slash));
    if with_admin {
        routes.merge(admin_routes())
    } else {
        routes
    }
}

/// The operations routes an admin address can take over: open, read-only views of the
/// service's health.
fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ops::metrics))
        .routes(routes!(status::status_page))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}
