//! The running service: start-up, background tasks and shutdown.
//!
//! [`run`] is what `serve` calls and what tests call on a port-0 listener. Start-up opens
//! the database, waits for it and migrates it; a shutdown asked for meanwhile (SIGTERM)
//! ends it at once, at whichever of these stages it is.
//!
//! Shutdown, once `shutdown` is cancelled, goes in this order, so that a load balancer
//! loses no request (see the README's deployment section):
//! 1. `/readyz` answers 503 and every response carries `Connection: close`, while the
//!    service keeps serving for `server.shutdown_delay`: the balancer's health checks see
//!    the replica leave, and its pooled connections close politely, after a response;
//!    the reconciler, relay, outbox worker and retention stop and hand their leases over;
//! 2. the server stops accepting and finishes in-flight requests (idle connections close
//!    at once), for up to `server.shutdown_timeout`;
//! 3. the writer commits and answers everything queued; the appliers apply what was
//!    stored; the reconciler finishes its page; the pool closes; the embedded Postgres
//!    (if any) stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use partnerstack::client::{Client, RequestBudget};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::SigningKeys;
use crate::config::Config;
use crate::db::{self, Database};
use crate::feed::Feed;
use crate::ingest::IngestMetrics;
use crate::ingest::applier::Applier;
use crate::ingest::verify::Verifier;
use crate::ingest::writer::{Limits, Writer};
use crate::long_poll::LongPolls;
use crate::reconcile::Reconciler;
use crate::relay::RelayMetrics;
use crate::retention::RetentionMetrics;
use crate::state::AppState;
use crate::telemetry::{Deployment, Exposition, Metrics, UpstreamObserver};
use crate::webhook_tokens::WebhookTokens;
use crate::writes::Outbox;
use crate::writes::worker::{Worker, WriteMetrics};
use crate::{memory, relay, retention, routes, server};

/// Opens the database (starting the embedded one if configured), migrates it, serves on
/// `listener` until `shutdown` is cancelled, then shuts everything down in order.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(database) = until_stopped(&shutdown, Database::open(&config.database)).await? else {
        return Ok(());
    };
    run_on(config, database, listener, shutdown).await
}

/// [`run`] on a database already opened (the `demo` command prepares its own first);
/// stops its embedded server, if any, at the end.
pub async fn run_on(
    config: Config,
    database: Database,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let result = serve(config, &database, listener, shutdown).await;
    if let Err(e) = database.shutdown().await {
        tracing::warn!(error = %e, "stopping the embedded Postgres failed");
    }
    result
}

/// `work`'s result, or `None` when `shutdown` came first (a start-up stage stops at once).
async fn until_stopped<T>(
    shutdown: &CancellationToken,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested during start-up; stopping");
            Ok(None)
        }
        result = work => result.map(Some),
    }
}

async fn serve(
    config: Config,
    database: &Database,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(pool) = until_stopped(&shutdown, open_pool(&config, database)).await? else {
        return Ok(());
    };
    // What `partnerstack-sync check` settled about the account replaces the defaults.
    let mut config = config;
    crate::check::settled::load_and_apply(&pool, &mut config).await?;
    let config = Arc::new(config);
    let webhook_tokens = webhook_tokens(&config, &pool).await;
    warn_about_open_doors(&config, &webhook_tokens);
    let reconciling =
        config.reconcile.interval.is_some() && config.partnerstack.credentials().is_some();
    let telemetry = Telemetry::new(&config, reconciling);
    let tasks = Tasks::spawn(&config, &pool, &telemetry, &webhook_tokens, &shutdown)?;
    let limits = serving_limits(&config);
    // Waiting requests never hold more than half the connection slots.
    let long_polls = LongPolls::new(
        config
            .api
            .long_polls
            .get()
            .min(limits.max_connections.get() / 2)
            .max(1),
        config.api.long_polls_per_client.get(),
    );
    let state = AppState {
        reconciler: tasks.reconciler.clone(),
        outbox: tasks.outbox.clone(),
        webhook_tokens,
        signing_keys: Arc::new(SigningKeys::new(&config.webhooks.signing_secrets)),
        api_callers: Arc::new(config.api.callers()),
        long_polls,
        config: config.clone(),
        pool: pool.clone(),
        writer: tasks.writer.clone(),
        metrics: telemetry.metrics.clone(),
        exposition: telemetry.exposition.clone(),
        feed: tasks.feed.clone(),
        draining: CancellationToken::new(),
    };
    let served = serve_http(listener, state, limits, &shutdown, started).await;
    tracing::info!("server stopped accepting; draining queued deliveries");
    tasks.stop(config.server.shutdown_timeout).await;
    pool.close().await;
    tracing::info!("shutdown complete");
    served
}

/// The webhook URL tokens accepted: the configured ones with those the `webhooks` commands
/// stored. Should the stored ones not be readable yet, the configured ones serve until
/// the refresh task reads them.
async fn webhook_tokens(config: &Config, pool: &PgPool) -> Arc<WebhookTokens> {
    let tokens = Arc::new(WebhookTokens::new(&config.webhooks.tokens));
    if let Err(e) = tokens.load(pool).await {
        tracing::warn!(error = %e, "cannot read the stored webhook tokens yet; the configured ones are accepted meanwhile");
    }
    tokens
}

/// A service's metric groups, served together by `exposition`.
struct Telemetry {
    exposition: Arc<Exposition>,
    metrics: Arc<Metrics>,
    ingest: Arc<IngestMetrics>,
    relay: Arc<RelayMetrics>,
    retention: Arc<RetentionMetrics>,
    writes: Arc<WriteMetrics>,
}

impl Telemetry {
    /// Every group, with the series `config` and the served routes call for at zero
    /// (`reconciling`: whether this service runs the reconciler).
    fn new(config: &Config, reconciling: bool) -> Telemetry {
        let mut exposition = Exposition::new();
        let metrics = exposition.add(Metrics::new());
        let ingest = exposition.add(IngestMetrics::new());
        let relay = exposition.add(RelayMetrics::new());
        let retention = exposition.add(RetentionMetrics::new());
        let writes = exposition.add(WriteMetrics::new());
        exposition.declare(&Deployment {
            config,
            api: &routes::openapi::openapi(),
            reconciling,
        });
        metrics
            .db_pool_max_connections
            .set(i64::from(config.database.max_connections));
        Telemetry {
            exposition: Arc::new(exposition),
            metrics,
            ingest,
            relay,
            retention,
            writes,
        }
    }
}

/// Waits for the database, opens the pool and applies migrations.
async fn open_pool(config: &Config, database: &Database) -> anyhow::Result<PgPool> {
    let options = database.connect_options();
    tracing::info!(database = %db::describe(&options), "connecting to Postgres");
    db::wait_for(&options, config.database.connect_timeout).await?;
    db::migrate(&options, config.database.connect_timeout).await?;
    Ok(db::pool(options, &config.database))
}

/// Serves until `shutdown`, then drains (see the module's notes): returns once in-flight
/// requests have finished.
async fn serve_http(
    listener: TcpListener,
    state: AppState,
    limits: server::Limits,
    shutdown: &CancellationToken,
    started: Instant,
) -> anyhow::Result<()> {
    let config = state.config.clone();
    let addr = listener.local_addr()?;
    let draining = state.draining.clone();
    let stop_accepting = CancellationToken::new();
    let drain = tokio::spawn(drain_delay(
        shutdown.clone(),
        draining.clone(),
        stop_accepting.clone(),
        config.server.shutdown_delay,
    ));
    // Operations routes on their own address, when one is set.
    let admin = match config.server.admin_listen {
        Some(admin_addr) => {
            let admin_listener = server::bind(admin_addr).map_err(|e| {
                anyhow::anyhow!("cannot listen on {admin_addr} (PSYNC_ADMIN_LISTEN): {e}")
            })?;
            tracing::info!(addr = %admin_addr, "serving /metrics and /status on the admin address only");
            Some(tokio::spawn(server::serve(
                admin_listener,
                routes::admin_router(state.clone()),
                limits,
                stop_accepting.clone(),
                draining.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(%addr, ready_in_ms = started.elapsed().as_millis() as u64, "partnerstack-sync is serving");
    let router = routes::router(state);
    server::serve(listener, router, limits, stop_accepting, draining).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let _ = drain.await;
    Ok(())
}

/// Step 1 of shutdown: once `shutdown` is cancelled, says so (`/readyz` 503, `Connection:
/// close`), keeps serving for `delay`, then lets the server stop accepting.
async fn drain_delay(
    shutdown: CancellationToken,
    draining: CancellationToken,
    stop_accepting: CancellationToken,
    delay: Duration,
) {
    shutdown.cancelled().await;
    draining.cancel();
    if !delay.is_zero() {
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "draining: /readyz answers 503 and connections close after their response; \
             still serving meanwhile (server.shutdown_delay)"
        );
        tokio::time::sleep(delay).await;
    }
    stop_accepting.cancel();
}

/// The background tasks of a running service, and how each is stopped.
struct Tasks {
    writer: Writer,
    writer_task: JoinHandle<()>,
    writer_stop: CancellationToken,
    applier_tasks: Vec<JoinHandle<()>>,
    applier_stop: CancellationToken,
    feed: Feed,
    feed_task: JoinHandle<()>,
    relay_tasks: Vec<JoinHandle<()>>,
    retention_task: JoinHandle<()>,
    outbox: Option<Outbox>,
    writes_task: Option<JoinHandle<()>>,
    reconciler: Option<Reconciler>,
    reconcile_task: Option<JoinHandle<()>>,
    trim_stop: CancellationToken,
    trim_task: JoinHandle<()>,
    tokens_task: JoinHandle<()>,
}

impl Tasks {
    /// Starts them. The writer and the appliers stop only when told (after the server);
    /// the others with `shutdown`.
    fn spawn(
        config: &Arc<Config>,
        pool: &PgPool,
        telemetry: &Telemetry,
        webhook_tokens: &Arc<WebhookTokens>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Tasks> {
        let stored = Arc::new(Notify::new());
        let writer_stop = CancellationToken::new();
        let limits = Limits {
            capacity: config.webhooks.queue_capacity,
            capacity_bytes: config.webhooks.queue_bytes,
            batch_size: config.webhooks.batch_size,
        };
        let (writer, writer_task) = Writer::spawn(
            pool.clone(),
            limits,
            stored.clone(),
            writer_stop.clone(),
            telemetry.ingest.clone(),
        );
        let client = client(config, pool, &telemetry.metrics)?;
        let applier = Applier::new(
            pool.clone(),
            telemetry.ingest.clone(),
            verifier(config, &client),
        );
        // Freed request bodies go back to the system, not just to the allocator.
        let trim_stop = shutdown.child_token();
        let trim_task = tokio::spawn(memory::trim_memory(memory::TRIM_EVERY, trim_stop.clone()));
        let applier_stop = CancellationToken::new();
        let applier_tasks = (0..config.webhooks.appliers.get())
            .map(|_| tokio::spawn(applier.clone().run(stored.clone(), applier_stop.clone())))
            .collect();
        let feed = Feed::new(shutdown.child_token());
        let feed_task = tokio::spawn(feed.clone().run(pool.clone(), config.changes.poll_interval));
        let relay_tasks = relay::spawn(
            config,
            pool.clone(),
            feed.clone(),
            telemetry.relay.clone(),
            shutdown.child_token(),
        )?;
        let retention_task = tokio::spawn(retention::run(
            pool.clone(),
            config.retention.clone(),
            telemetry.retention.clone(),
            shutdown.child_token(),
        ));
        let (outbox, writes_task) =
            writes_worker(config, pool, &telemetry.writes, &client, shutdown);
        let reconciler = reconciler(config, client, pool, &telemetry.metrics);
        let reconcile_task = reconciler
            .clone()
            .map(|r| tokio::spawn(r.run(shutdown.child_token())));
        let tokens_task = tokio::spawn(webhook_tokens.clone().refresh(
            pool.clone(),
            config.webhooks.token_refresh,
            shutdown.child_token(),
        ));
        Ok(Tasks {
            writer,
            writer_task,
            writer_stop,
            applier_tasks,
            applier_stop,
            feed,
            feed_task,
            relay_tasks,
            retention_task,
            outbox,
            writes_task,
            reconciler,
            reconcile_task,
            trim_stop,
            trim_task,
            tokens_task,
        })
    }

    /// Stops them in dependency order, once the server has stopped; `grace` bounds the
    /// tasks that may hang on a statement stuck in the database.
    async fn stop(self, grace: Duration) {
        self.writer_stop.cancel();
        let _ = self.writer_task.await;
        self.applier_stop.cancel();
        for task in self.applier_tasks {
            let _ = task.await;
        }
        // The reconciler was told to stop with the server; it finishes the page it is
        // applying (the pass resumes from its checkpoint). A statement stuck in the
        // database must not hold shutdown: past the grace period the task is dropped,
        // and with it its transaction, which Postgres rolls back.
        if let Some(mut task) = self.reconcile_task
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            tracing::warn!(
                ?grace,
                "the reconciler did not stop in time; abandoning its current page"
            );
            task.abort();
            let _ = task.await;
        }
        // The relay was told to stop with the server: a change in flight is sent again by
        // the next holder (its position moves only after a 2xx). Position writes are short.
        for mut task in self.relay_tasks {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        // The write worker was told to stop with the server; it lets the writes in flight
        // finish within the grace period (one cut short stays in doubt and is looked for
        // at the next start).
        if let Some(task) = self.writes_task {
            let _ = task.await;
        }
        let _ = self.retention_task.await;
        let _ = self.tokens_task.await;
        let _ = self.feed_task.await;
        self.trim_stop.cancel();
        let _ = self.trim_task.await;
    }
}

/// The write outbox and its worker, when writes can be sent.
fn writes_worker(
    config: &Arc<Config>,
    pool: &PgPool,
    metrics: &Arc<WriteMetrics>,
    client: &Option<Client>,
    shutdown: &CancellationToken,
) -> (Option<Outbox>, Option<JoinHandle<()>>) {
    let Some(client) = client else {
        tracing::info!(
            "writes to PartnerStack are off (POST/PATCH/DELETE under /v1 answer 409): set \
             PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY to send them"
        );
        return (None, None);
    };
    let outbox = Outbox::default();
    let worker = Worker::new(
        pool.clone(),
        client.clone(),
        config.writes.clone(),
        metrics.clone(),
        outbox.clone(),
    );
    let grace = config.server.shutdown_timeout;
    let task = tokio::spawn(worker.run(shutdown.child_token(), grace));
    (Some(outbox), Some(task))
}

/// PartnerStack's client, when there are credentials: one client for the reconciler,
/// webhook verification and writes, its exchanges counted in `metrics`. Its request
/// budget is the account's, shared with every replica through the database.
fn client(
    config: &Config,
    pool: &PgPool,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Client>> {
    if config.partnerstack.credentials().is_none() {
        return Ok(None);
    }
    let client = Client::new(&config.partnerstack)?;
    let tokens = db::budget::SharedTokens::new(
        pool.clone(),
        client.account(),
        &crate::reconcile::this_process(),
    );
    let budget =
        RequestBudget::from_source(config.partnerstack.requests_per_second, Arc::new(tokens), 1);
    Ok(Some(client.with_budget(Arc::new(budget)).with_observer(
        Arc::new(UpstreamObserver(metrics.clone())),
    )))
}

/// How the listeners serve: the connection cap resolved against the open-file limit,
/// which is raised first.
fn serving_limits(config: &Config) -> server::Limits {
    let fds = server::raise_fd_limit().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
        server::FdLimit {
            before: 1024,
            soft: 1024,
            hard: 1024,
        }
    });
    let max_connections = server::connection_cap(config.server.max_connections, &fds);
    tracing::info!(
        max_connections = max_connections.get(),
        first_request_timeout = ?config.server.first_request_timeout,
        keepalive_timeout = ?config.server.keepalive_timeout,
        "connections served at once, and their deadlines"
    );
    server::Limits {
        first_request_timeout: config.server.first_request_timeout,
        keepalive_timeout: config.server.keepalive_timeout,
        max_connections,
        drain: config.server.shutdown_timeout,
    }
}

/// The webhook verifier in fetch mode (`webhooks.verification`), with a log line saying
/// how deliveries are applied.
fn verifier(config: &Config, client: &Option<Client>) -> Option<Verifier> {
    match client {
        Some(client) if config.webhooks.verifies(true) => {
            tracing::info!(
                "webhook deliveries are verified: the objects they name are fetched from \
                 PartnerStack and its answers applied"
            );
            Some(Verifier::new(
                client.clone(),
                config.webhooks.confirm_within,
            ))
        }
        _ => {
            tracing::info!(
                "webhook deliveries are applied from their bodies (no verification against \
                 PartnerStack)"
            );
            None
        }
    }
}

/// The reconciler, when it can and should run, and a log line saying why not otherwise.
fn reconciler(
    config: &Config,
    client: Option<Client>,
    pool: &PgPool,
    metrics: &Arc<Metrics>,
) -> Option<Reconciler> {
    if config.reconcile.interval.is_none() {
        tracing::info!("the reconciler is off (PSYNC_RECONCILE_INTERVAL=off)");
        return None;
    }
    let Some(client) = client else {
        tracing::warn!(
            "the reconciler is off: set PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY to \
             repair what webhooks miss"
        );
        return None;
    };
    Some(Reconciler::new(
        client,
        config.reconcile.clone(),
        pool.clone(),
        metrics.clone(),
    ))
}

fn warn_about_open_doors(config: &Config, webhook_tokens: &WebhookTokens) {
    if webhook_tokens.count() == 0 {
        tracing::warn!(
            "no webhook token: PSYNC_WEBHOOK_TOKENS is empty and `webhooks register` stored \
             none, so every webhook delivery will be refused with 401"
        );
    }
    if config.api.tokens.is_empty() && config.api.clients.is_empty() {
        tracing::warn!(
            "no API clients and PSYNC_API_TOKENS is empty: every /v1 request will be refused \
             with 401"
        );
    }
    if !config.api.tokens.is_empty() {
        tracing::warn!(
            tokens = config.api.tokens.len(),
            "api.tokens (PSYNC_API_TOKENS) are unnamed and may only read (scope `read`): \
             writes, retries, replays and syncs need a named client with its scope \
             ([[api.clients]] or PSYNC_API_CLIENT_<NAME>_TOKEN and _SCOPES)"
        );
    }
    for client in &config.api.clients {
        let scopes: Vec<&str> = client.scopes.iter().map(|s| s.as_str()).collect();
        tracing::info!(client = %client.name, scopes = %scopes.join(","), "API client");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample lines (`name{labels}`, without values) of an exposition.
    fn series(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
            .collect()
    }

    fn defaults() -> Config {
        Config::load_with_env(None, &Default::default()).unwrap()
    }

    #[test]
    fn fixed_series_exist_at_zero_and_names_follow_the_conventions() {
        let text = Telemetry::new(&defaults(), false).exposition.render();
        for line in [
            r#"psync_webhook_deliveries_total{result="unauthorized"} 0"#,
            r#"psync_webhook_events_applied_total{outcome="error"} 0"#,
            r#"psync_webhook_fetches_total{result="missing"} 0"#,
            r#"psync_apply_transactions_total{result="refused"} 0"#,
            r#"psync_writes_total{kind="create_customer",outcome="failed"} 0"#,
            r#"psync_retention_pruned_total{table="writes"} 0"#,
            r#"psync_db_pool_connections{state="in_use"} 0"#,
            r#"psync_build_info{version=""#,
            "psync_webhook_apply_lag_seconds 0",
            "psync_ingest_queue_bytes 0",
            "psync_writes_oldest_pending_seconds 0",
            "# HELP psync_writes_pending Writes accepted and not finished.\n",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        // Counters end in _total; units are in names; everything ours is psync_.
        for s in series(&text) {
            let name = s.split('{').next().unwrap();
            assert!(
                name.starts_with("psync_") || name.starts_with("process_"),
                "{name}"
            );
            assert!(!name.contains("_ms") && !name.contains("millis"), "{name}");
        }
        for l in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = l.split_whitespace().collect();
            if parts[3] == "counter" {
                assert!(parts[2].ends_with("_total"), "{l}");
            } else {
                assert!(!parts[2].ends_with("_total"), "{l}");
            }
        }
    }

    /// Without streams, endpoints or credentials the deployment calls for no such series;
    /// with them, each exists from the start (staleness unknown: +Inf).
    #[test]
    fn the_deployment_declares_its_streams_endpoints_and_routes() {
        let bare = Telemetry::new(&defaults(), false).exposition.render();
        let mut config = defaults();
        config.relay = vec![crate::config::RelayEndpoint {
            name: "probe".into(),
            url: reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
            secret: crate::auth::WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap(),
            entities: None,
        }];
        let declared = Telemetry::new(&config, true).exposition.render();
        for line in [
            r#"psync_relay_attempts_total{endpoint="probe",result="failed"} 0"#,
            r#"psync_relay_leader{endpoint="probe"} 0"#,
            r#"psync_reconcile_staleness_seconds{stream="customers"} +Inf"#,
            r#"psync_reconcile_passes_total{stream="customers"} 0"#,
            r#"psync_http_requests_total{method="GET",route="/v1/customers/{key}",status="404"} 0"#,
        ] {
            assert!(declared.contains(line), "no {line} in\n{declared}");
        }
        for prefix in [
            "psync_relay_attempts_total{",
            "psync_reconcile_passes_total{",
        ] {
            assert!(!bare.contains(prefix), "{prefix} in\n{bare}");
        }
    }
}
