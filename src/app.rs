//! The running service: shared state, the router, background tasks and shutdown.
//!
//! [`run`] is what `serve` calls and what tests call on a port-0 listener. Shutdown, once
//! `shutdown` is cancelled, goes in dependency order: the server stops accepting and
//! finishes in-flight requests; the writer commits and answers everything queued; the
//! applier applies what was stored; the reconciler finishes its page; the pool closes;
//! the embedded Postgres (if any) stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::tag::Tag;
use utoipa::openapi::{Info, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api;
use crate::auth::{SigningKeys, TokenSet};
use crate::config::Config;
use crate::db::{self, Database};
use crate::error::ApiError;
use crate::ingest::{self, applier, writer::Writer};
use crate::partnerstack::client::Client;
use crate::reconcile::Reconciler;
use crate::telemetry::{Metrics, RouteLabels};

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub webhook_tokens: Arc<TokenSet>,
    pub signing_keys: Arc<SigningKeys>,
    pub api_tokens: Arc<TokenSet>,
    /// `None` when the reconciler is off (no credentials, or `PSYNC_RECONCILE_INTERVAL=off`).
    pub reconciler: Option<Reconciler>,
}

/// The HTTP surface. Routes see the matched route template, never the raw path, in logs
/// and metrics, so the webhook URL token is never written anywhere.
///
/// Every route is registered through an [`OpenApiRouter`] together with its OpenAPI
/// description, so `/openapi.json` ([`openapi`]) lists exactly the routes served.
pub fn router(state: AppState) -> Router {
    let (open, _) = open_routes().split_for_parts();
    let (v1, _) = api::routes()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::require_bearer,
        ))
        .split_for_parts();
    open.merge(v1)
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
                    tracing::info_span!("request", method = %req.method(), route, request_id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Bounds every request by the request timeout (503 with Retry-After past it) and counts
/// answers per route. Dropping a handler's future here is safe: no handler writes to the
/// database inside its own future.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response =
        match tokio::time::timeout(state.config.server.request_timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => {
                if route.starts_with("/webhooks/") {
                    state.metrics.delivery("unavailable");
                }
                ApiError::unavailable("the request timed out; retry later").into_response()
            }
        };
    state
        .metrics
        .http_requests
        .get_or_create(&RouteLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The routes without bearer auth: operations, the OpenAPI description, webhook ingest.
fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(ingest::receive))
        .routes(routes!(ingest::missing_token))
        .routes(routes!(ingest::missing_token_slash))
}

/// The OpenAPI 3.1 description of every route [`router`] serves.
pub fn openapi() -> OpenApi {
    let mut doc = open_routes().merge(api::routes()).into_openapi();
    doc.info = Info::new("partnerstack-sync", env!("CARGO_PKG_VERSION"));
    doc.info.description = Some(
        "A copy of a PartnerStack partner program, kept by webhooks and reconciliation. \
         `/v1` reads it in PartnerStack's list dialect (`limit` 1..250, default 25; \
         `starting_after` with the previous page's `ending_cursor`) and needs \
         `Authorization: Bearer <token>`. Errors are `{\"status\", \"code\", \"message\"}`. \
         Money is integer cents with its currency; times are RFC 3339."
            .to_string(),
    );
    doc.components.get_or_insert_default().add_security_scheme(
        api::BEARER,
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    let tag = |name: &str, description: &str| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.to_string());
        tag
    };
    doc.tags = Some(vec![
        tag(
            "partners",
            "Partners (partnerships) and their commission summary",
        ),
        tag("customers", "Customers referred by partners"),
        tag("transactions", "Billing events of referred customers"),
        tag("rewards", "Commissions earned by partners"),
        tag("groups", "Partner groups"),
        tag("deals", "Deals registered by partners"),
        tag("leads", "Leads submitted by partners"),
        tag("events", "The raw webhook log"),
        tag("sync", "The reconciler: status and passes on demand"),
        tag("webhooks", "PartnerStack's webhook deliveries"),
        tag(
            "operations",
            "Health, readiness, metrics and this description",
        ),
    ]);
    doc
}

/// The process is running.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = serde_json::Value)),
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and is migrated.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = serde_json::Value),
        (status = 503, description = "`{\"status\": \"not_ready\", \"reason\": ...}`", body = serde_json::Value),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let ready = tokio::time::timeout(Duration::from_secs(2), db::is_ready(&state.pool))
        .await
        .unwrap_or(false);
    if ready {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "the database is unreachable or not migrated"})),
        )
            .into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .ingest_queue_depth
        .set(state.writer.queued() as i64);
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
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        // Serialising plain data to a string does not fail; an empty object would be a bug.
        openapi()
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

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Opens the database (starting the embedded one if configured), migrates it, serves on
/// `listener` until `shutdown` is cancelled, then shuts everything down in order.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let database = Database::open(&config.database).await?;
    let result = serve(config, &database, listener, shutdown).await;
    if let Err(e) = database.shutdown().await {
        tracing::warn!(error = %e, "stopping the embedded Postgres failed");
    }
    result
}

async fn serve(
    config: Config,
    database: &Database,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = database.connect_options();
    tracing::info!(database = %db::describe(&options), "connecting to Postgres");
    let pool = db::pool(options, &config.database);
    db::migrate(&pool, Duration::from_secs(60)).await?;

    let config = Arc::new(config);
    warn_about_open_doors(&config);
    let metrics = Arc::new(Metrics::new());
    let stored = Arc::new(Notify::new());
    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = Writer::spawn(
        pool.clone(),
        config.webhooks.queue_capacity,
        config.webhooks.batch_size,
        stored.clone(),
        writer_stop.clone(),
        metrics.clone(),
    );
    let applier_stop = CancellationToken::new();
    let applier_task = tokio::spawn(applier::run(
        pool.clone(),
        stored,
        applier_stop.clone(),
        metrics.clone(),
    ));

    let reconciler = reconciler(&config, database, &metrics)?;
    let reconcile_stop = shutdown.child_token();
    let reconcile_task = reconciler
        .clone()
        .map(|r| tokio::spawn(r.run(reconcile_stop.clone())));

    let state = AppState {
        reconciler,
        webhook_tokens: Arc::new(TokenSet::new(&config.webhooks.tokens)),
        signing_keys: Arc::new(SigningKeys::new(&config.webhooks.signing_secrets)),
        api_tokens: Arc::new(TokenSet::new(&config.api.tokens)),
        config: config.clone(),
        pool: pool.clone(),
        writer,
        metrics,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, ready_in_ms = started.elapsed().as_millis() as u64, "partnerstack-sync is serving");

    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let grace = config.server.shutdown_timeout;
    let served = tokio::select! {
        r = server => r.map_err(anyhow::Error::from),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "in-flight requests did not finish in time; closing them");
            Ok(())
        }
    };
    tracing::info!("server stopped accepting; draining queued deliveries");
    writer_stop.cancel();
    let _ = writer_task.await;
    applier_stop.cancel();
    let _ = applier_task.await;
    // The reconciler was told to stop with the server; it finishes the page it is applying
    // (the pass resumes from its checkpoint). A statement stuck in the database must not
    // hold shutdown: past the grace period the task is dropped, and with it the leader's
    // own session (not a pooled connection), which Postgres rolls back.
    if let Some(mut task) = reconcile_task
        && tokio::time::timeout(grace, &mut task).await.is_err()
    {
        tracing::warn!(
            ?grace,
            "the reconciler did not stop in time; abandoning its current page"
        );
        task.abort();
        let _ = task.await;
    }
    pool.close().await;
    tracing::info!("shutdown complete");
    served
}

/// The reconciler, when it can and should run, and a log line saying why not otherwise.
fn reconciler(
    config: &Config,
    database: &Database,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Reconciler>> {
    if config.reconcile.interval.is_none() {
        tracing::info!("the reconciler is off (PSYNC_RECONCILE_INTERVAL=off)");
        return Ok(None);
    }
    if config.partnerstack.credentials().is_none() {
        tracing::warn!(
            "the reconciler is off: set PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY to \
             repair what webhooks miss"
        );
        return Ok(None);
    }
    let client = Client::new(&config.partnerstack)?;
    let connect = db::session_options(database.connect_options(), &config.database);
    Ok(Some(Reconciler::new(
        client,
        config.reconcile.clone(),
        connect,
        metrics.clone(),
    )))
}

fn warn_about_open_doors(config: &Config) {
    if config.webhooks.tokens.is_empty() {
        tracing::warn!(
            "PSYNC_WEBHOOK_TOKENS is empty: every webhook delivery will be refused with 401"
        );
    }
    if config.api.tokens.is_empty() {
        tracing::warn!("PSYNC_API_TOKENS is empty: every /v1 request will be refused with 401");
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
