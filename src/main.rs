//! The `partnerstack-sync` command line: parse, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use partnerstack::Entity;
use partnerstack_sync::db::events::{self, Outcome};
use partnerstack_sync::ingest::IngestMetrics;
use partnerstack_sync::ingest::applier::Applier;
use partnerstack_sync::ingest::verify::Verifier;
use partnerstack_sync::{app, config::Config, db, memory, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps a faithful copy of a PartnerStack partner program in Postgres"
)]
struct Cli {
    /// A TOML file overriding config/default.toml (environment variables override both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server and background tasks (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Exit 0 when the local server answers /readyz (for container health checks).
    Healthcheck,
    /// One reconcile pass in the foreground, with progress, then exit.
    Reconcile {
        /// Only this stream (partnerships, customers, transactions, rewards, groups, deals,
        /// leads); repeat for several. Default: every configured stream.
        #[arg(long = "stream", value_name = "NAME", value_parser = Entity::parse_stream)]
        streams: Vec<Entity>,
        /// Scan everything (no time filter) and mark rows that vanished upstream as deleted.
        #[arg(long)]
        full: bool,
    },
    /// Apply stored deliveries again: those that failed (`error`) or named an event the
    /// service did not apply (`unknown_type`), e.g. after an upgrade. Then exit.
    Reapply {
        /// Which outcomes to re-apply: error, unknown_type; repeat for both.
        #[arg(long = "outcome", value_name = "OUTCOME", default_value = "error", value_parser = reapplicable)]
        outcomes: Vec<Outcome>,
    },
    /// Serve a local PartnerStack v2 stand-in (seeded data, faults, webhooks) under /api/v2.
    #[cfg(feature = "sim")]
    Simulate(Box<partnerstack_sim::Options>),
    /// See it work: the service, its own Postgres and a PartnerStack stand-in (a trickle of
    /// changes, some webhooks lost), wired together with generated tokens, until Ctrl-C.
    #[cfg(feature = "sim")]
    Demo(partnerstack_sync::demo::DemoOptions),
}

/// An outcome `reapply` can re-apply from.
fn reapplicable(word: &str) -> Result<Outcome, String> {
    Outcome::parse(word)
        .filter(|o| events::REAPPLICABLE.contains(o))
        .ok_or_else(|| {
            let valid: Vec<&str> = events::REAPPLICABLE.iter().map(|o| o.as_str()).collect();
            format!(
                "cannot re-apply outcome {word:?} (valid: {})",
                valid.join(", ")
            )
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("partnerstack-sync: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo's banner stays readable: only warnings unless RUST_LOG asks for more.
    #[cfg(feature = "sim")]
    let default_filter = match cli.command {
        Some(Command::Demo(_)) => "warn",
        _ => telemetry::DEFAULT_LOG_FILTER,
    };
    #[cfg(not(feature = "sim"))]
    let default_filter = telemetry::DEFAULT_LOG_FILTER;
    if let Err(e) = telemetry::init_logging(config.log.format, default_filter) {
        eprintln!("partnerstack-sync: {e}");
        return ExitCode::from(2);
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("partnerstack-sync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Healthcheck => healthcheck(config).await,
            #[cfg(feature = "sim")]
            Command::Simulate(options) => run_simulate(*options, config).await,
            #[cfg(feature = "sim")]
            Command::Demo(options) => {
                let shutdown = cancel_on_signal("stopping the demo");
                partnerstack_sync::demo::run(options, cli.config.as_deref(), shutdown).await
            }
            Command::Reconcile { streams, full } => reconcile(config, streams, full).await,
            Command::Reapply { outcomes } => reapply(config, outcomes).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("partnerstack-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = partnerstack_sync::server::bind(config.server.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (PSYNC_LISTEN): {e}",
            config.server.listen
        )
    })?;
    let shutdown = cancel_on_signal("shutdown requested");
    app::run(config, listener, shutdown).await
}

/// `simulate`: the stand-in, accepting the configured API keys, signing (when asked) in
/// the header the service checks.
#[cfg(feature = "sim")]
async fn run_simulate(
    mut options: partnerstack_sim::Options,
    config: Config,
) -> anyhow::Result<()> {
    let (public_key, secret_key) = config.partnerstack.credentials().ok_or_else(|| {
        anyhow::anyhow!(
            "simulate needs PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY: the credentials it will accept"
        )
    })?;
    if options.signature_header.is_none() {
        options.signature_header = Some(config.webhooks.signature_header.as_str().to_string());
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", options.listen))?;
    let shutdown = cancel_on_signal("shutdown requested");
    partnerstack_sim::run(options, public_key, secret_key, listener, shutdown).await
}

/// For the one-shot commands: opens the database (starting the embedded one when
/// configured), applies migrations, runs `work`, and, whatever happened, closes the pool
/// and stops the embedded server.
async fn with_database<T>(
    config: &Config,
    work: impl AsyncFnOnce(&db::Database, &sqlx::PgPool) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let database = db::Database::open(&config.database).await?;
    let patience = config.database.connect_timeout;
    let pool = db::pool(database.connect_options(), &config.database);
    let result = match db::wait_for(&database.connect_options(), patience).await {
        Ok(()) => match db::migrate(&database.connect_options(), patience).await {
            Ok(()) => work(&database, &pool).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    pool.close().await;
    database.shutdown().await?;
    result
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    with_database(&config, async |_, _| Ok(())).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn reapply(config: Config, outcomes: Vec<Outcome>) -> anyhow::Result<()> {
    let (requeued, counts) = with_database(&config, async |_, pool| {
        let ids = events::requeue(pool, &outcomes).await?;
        // Re-applied from their bodies, or verified as `serve` would.
        let metrics = std::sync::Arc::new(IngestMetrics::new());
        let verifier = match config.partnerstack.credentials() {
            Some(_) if config.webhooks.verifies(true) => Some(Verifier::new(
                partnerstack::client::Client::new(&config.partnerstack)?,
                config.webhooks.confirm_within,
            )),
            _ => None,
        };
        Applier::new(pool.clone(), metrics, verifier)
            .drain()
            .await?;
        let counts = events::count_outcomes(pool, &ids).await?;
        Ok((ids.len(), counts))
    })
    .await?;
    let counts: Vec<String> = counts.iter().map(|(o, n)| format!("{n} {o}")).collect();
    eprintln!(
        "re-applied {requeued} stored deliveries{}",
        if counts.is_empty() {
            String::new()
        } else {
            format!(": {}", counts.join(", "))
        }
    );
    Ok(())
}

async fn healthcheck(config: Config) -> anyhow::Result<()> {
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = partnerstack::http::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    let status = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await?
        .status();
    anyhow::ensure!(status.is_success(), "/readyz answered {status}");
    Ok(())
}

async fn reconcile(config: Config, streams: Vec<Entity>, full: bool) -> anyhow::Result<()> {
    use partnerstack_sync::reconcile::{Reconciler, pass::Progress};

    let entities = if streams.is_empty() {
        config.reconcile.streams.clone()
    } else {
        streams
    };
    let client = partnerstack::client::Client::new(&config.partnerstack)?;
    let stop =
        cancel_on_signal("stopping after the current page (the pass resumes from its checkpoint)");
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |p: Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= std::time::Duration::from_secs(1) {
            *last = std::time::Instant::now();
            eprintln!(
                "{:<12} {:<11} page {:>6}  {:>9} seen  {:>8} changed",
                p.entity.stream(),
                p.kind.as_str(),
                p.counts.pages,
                p.counts.seen,
                p.counts.changed
            );
        }
    };
    let patience = std::time::Duration::from_secs(60);
    // Freed page buffers go back to the system as they do in `serve`, so a long scan's
    // footprint does not creep up with the allocator's fragmentation.
    let trim_stop = tokio_util::sync::CancellationToken::new();
    let trim = tokio::spawn(memory::trim_memory(memory::TRIM_EVERY, trim_stop.clone()));
    let reports = with_database(&config, async |_, pool| {
        let metrics = std::sync::Arc::new(telemetry::Metrics::new());
        let reconciler = Reconciler::new(client, config.reconcile.clone(), pool.clone(), metrics);
        reconciler
            .run_once(&entities, full, patience, &stop, &progress)
            .await
    })
    .await;
    trim_stop.cancel();
    let _ = trim.await;
    let reports = reports?;
    let mut failed = 0;
    for report in reports {
        match report {
            Ok(r) => {
                let c = r.counts;
                let rate = c.seen as f64 / r.took.as_secs_f64().max(0.001);
                eprintln!(
                    "{:<12} {:<11} done: {} pages, {} seen, {} changed, {} repaired, {} deleted, \
                     {} unreadable in {:.1}s ({rate:.0} objects/s){}{}",
                    r.entity.stream(),
                    r.kind.as_str(),
                    c.pages,
                    c.seen,
                    c.changed,
                    c.repairs,
                    c.deleted,
                    c.invalid,
                    r.took.as_secs_f64(),
                    if r.resumed { ", resumed" } else { "" },
                    r.warning
                        .map(|w| format!("; warning: {w}"))
                        .unwrap_or_default(),
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("a stream failed: {e}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} stream(s) failed; see above");
    Ok(())
}

/// A token cancelled, with `message` logged, when the process is asked to stop.
fn cancel_on_signal(message: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        app::shutdown_signal().await;
        tracing::info!("{message}");
        trigger.cancel();
    });
    token
}
