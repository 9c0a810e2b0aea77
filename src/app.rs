//! The running service: start-up, background tasks and shutdown.
//!
//! [`run`] is what `serve` calls and what tests call on a port-0 listener. Shutdown, once
//! `shutdown` is cancelled, goes in dependency order: the server stops accepting and
//! finishes in-flight requests; the writer commits and answers everything queued; the
//! applier applies what was stored; the reconciler finishes its page; the pool closes;
//! the embedded Postgres (if any) stops.

use std::sync::Arc;
use std::time::Instant;

use partnerstack::client::Client;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{SigningKeys, TokenSet};
use crate::config::Config;
use crate::db::{self, Database};
use crate::feed::Feed;
use crate::ingest::applier::Applier;
use crate::ingest::verify::Verifier;
use crate::ingest::writer::{Limits, Writer};
use crate::long_poll::LongPolls;
use crate::reconcile::Reconciler;
use crate::state::AppState;
use crate::telemetry::{Metrics, UpstreamObserver};
use crate::writes::Outbox;
use crate::writes::worker::Worker;
use crate::{relay, retention, routes, server};

/// Opens the database (starting the embedded one if configured), migrates it, serves on
/// `listener` until `shutdown` is cancelled, then shuts everything down in order.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let database = Database::open(&config.database).await?;
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

async fn serve(
    config: Config,
    database: &Database,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = database.connect_options();
    tracing::info!(database = %db::describe(&options), "connecting to Postgres");
    db::wait_for(&options, config.database.connect_timeout).await?;
    let pool = db::pool(options, &config.database);
    db::migrate(&pool, config.database.connect_timeout).await?;

    let config = Arc::new(config);
    warn_about_open_doors(&config);
    let metrics = Arc::new(Metrics::new());
    let reconciling =
        config.reconcile.interval.is_some() && config.partnerstack.credentials().is_some();
    metrics.declare(&config, &routes::openapi::openapi(), reconciling);
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
        metrics.clone(),
    );
    // One client (one request budget) for the reconciler, webhook verification and
    // writes, its exchanges counted in the metrics.
    let client = match config.partnerstack.credentials() {
        Some(_) => Some(
            Client::new(&config.partnerstack)?
                .with_observer(Arc::new(UpstreamObserver(metrics.clone()))),
        ),
        None => None,
    };
    let applier = Applier::new(pool.clone(), metrics.clone(), verifier(&config, &client));
    // Freed request bodies go back to the system, not just to the allocator.
    let trim_stop = shutdown.child_token();
    let trim_task = tokio::spawn(crate::telemetry::trim_memory(
        crate::telemetry::TRIM_EVERY,
        trim_stop.clone(),
    ));
    let applier_stop = CancellationToken::new();
    let applier_tasks: Vec<_> = (0..config.webhooks.appliers.get())
        .map(|_| tokio::spawn(applier.clone().run(stored.clone(), applier_stop.clone())))
        .collect();

    let feed_stop = shutdown.child_token();
    let feed = Feed::new(feed_stop.clone());
    let feed_task = tokio::spawn(feed.clone().run(pool.clone(), config.changes.poll_interval));
    let relay_stop = shutdown.child_token();
    let relay_tasks = relay::spawn(
        &config,
        pool.clone(),
        db::session_options(database.connect_options(), &config.database),
        feed.clone(),
        metrics.clone(),
        relay_stop.clone(),
    )?;
    let retention_task = tokio::spawn(retention::run(
        pool.clone(),
        config.retention.clone(),
        metrics.clone(),
        shutdown.child_token(),
    ));

    // The write outbox's worker, when writes can be sent.
    let writes_stop = shutdown.child_token();
    let (outbox, writes_task) = match &client {
        Some(client) => {
            let outbox = Outbox::default();
            let worker = Worker::new(
                pool.clone(),
                client.clone(),
                config.writes.clone(),
                metrics.clone(),
                outbox.clone(),
            );
            let grace = config.server.shutdown_timeout;
            let task = tokio::spawn(worker.run(writes_stop.clone(), grace));
            (Some(outbox), Some(task))
        }
        None => {
            tracing::info!(
                "writes to PartnerStack are off (POST/PATCH/DELETE under /v1 answer 409): set \
                 PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY to send them"
            );
            (None, None)
        }
    };

    let reconciler = reconciler(&config, client, database, &metrics);
    let reconcile_stop = shutdown.child_token();
    let reconcile_task = reconciler
        .clone()
        .map(|r| tokio::spawn(r.run(reconcile_stop.clone())));

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
        reconciler,
        outbox,
        webhook_tokens: Arc::new(TokenSet::new(&config.webhooks.tokens)),
        signing_keys: Arc::new(SigningKeys::new(&config.webhooks.signing_secrets)),
        api_callers: Arc::new(config.api.callers()),
        long_polls,
        config: config.clone(),
        pool: pool.clone(),
        writer,
        metrics,
        feed,
    };
    let addr = listener.local_addr()?;
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
                shutdown.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(%addr, ready_in_ms = started.elapsed().as_millis() as u64, "partnerstack-sync is serving");
    server::serve(listener, routes::router(state), limits, shutdown.clone()).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    tracing::info!("server stopped accepting; draining queued deliveries");
    let grace = config.server.shutdown_timeout;
    writer_stop.cancel();
    let _ = writer_task.await;
    applier_stop.cancel();
    for task in applier_tasks {
        let _ = task.await;
    }
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
    // The relay was told to stop with the server: a change in flight is sent again by
    // the next holder (its position moves only after a 2xx). Position writes are short.
    for mut task in relay_tasks {
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
    // The write worker was told to stop with the server; it lets the writes in flight
    // finish within the grace period (one cut short stays in doubt and is looked for
    // at the next start).
    if let Some(task) = writes_task {
        let _ = task.await;
    }
    let _ = retention_task.await;
    let _ = feed_task.await;
    trim_stop.cancel();
    let _ = trim_task.await;
    pool.close().await;
    tracing::info!("shutdown complete");
    Ok(())
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
    database: &Database,
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
    let connect = db::session_options(database.connect_options(), &config.database);
    Some(Reconciler::new(
        client,
        config.reconcile.clone(),
        connect,
        metrics.clone(),
    ))
}

fn warn_about_open_doors(config: &Config) {
    if config.webhooks.tokens.is_empty() {
        tracing::warn!(
            "PSYNC_WEBHOOK_TOKENS is empty: every webhook delivery will be refused with 401"
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
