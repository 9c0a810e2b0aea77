//! `partnerstack-sync demo`: the whole thing working, in one process and one command.
//!
//! It runs an embedded Postgres in a data directory of its own, the PartnerStack stand-in
//! (`partnerstack_sim`: documented webhooks, a steady trickle of changes, some of their
//! webhooks lost) and the service wired to it both ways: the stand-in's webhooks go to the
//! service's webhook URL, the service reads the stand-in's API. Tokens and keys are
//! generated and printed, with the URLs and commands to try; the API token is the one
//! client's, with every scope. It runs until Ctrl-C or
//! SIGTERM; then the service stops as `serve` does ([`app::run_on`]: server, writer,
//! applier, reconciler, pool, Postgres), then the stand-in. Only the data directory stays.
//!
//! The demo's database is emptied at every start, so the copy always matches the freshly
//! seeded stand-in; a marker file guards against emptying anything that is not a demo's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use partnerstack::Entity;
use partnerstack_sim::{Options, Simulator};
use secrecy::SecretString;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Scope, random_hex};
use crate::config::{self, ApiClient, Config};
use crate::db::{Database, embedded};
use crate::{app, server};

/// The demo's data directory unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./data-demo";
/// The file that marks a data directory as the demo's (whose database it may empty).
const MARKER: &str = "DEMO";
/// Time between reconcile passes in the demo, unless `PSYNC_RECONCILE_INTERVAL` is set:
/// short, so repairs show within a minute.
const RECONCILE_INTERVAL: &str = "10s";
/// The request budget in the demo, unless `PARTNERSTACK_REQUESTS_PER_SECOND` is set (the
/// stand-in has no rate limit).
const REQUESTS_PER_SECOND: &str = "20";
/// The name of the demo's API client, which has every scope (the banner's last command
/// writes through the outbox).
const DEMO_CLIENT: &str = "demo";
/// What every API client's variable starts with (`PSYNC_API_CLIENT_<NAME>_*`).
const CLIENT_VARS: &str = "PSYNC_API_CLIENT_";
/// The longest the service may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// `partnerstack-sync demo` options. The service listens on `PSYNC_LISTEN` (default
/// 127.0.0.1:8080), as `serve` does.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Where the demo's embedded Postgres keeps its data (default ./data-demo; as root,
    /// under /var/lib/partnerstack-sync when `postgres` cannot reach that). Its database
    /// is emptied at every start; a directory holding another cluster is refused.
    #[arg(long, env = "PSYNC_DEMO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the stand-in serves its API and admin routes.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub stand_in: SocketAddr,
    /// Changes per second at the stand-in, each announced by a webhook.
    #[arg(long, default_value_t = 2.0)]
    pub webhook_rate: f64,
    /// The share of webhooks the stand-in loses (never sends).
    #[arg(long, default_value_t = 0.2)]
    pub drop: f64,
    /// Seed of the stand-in's program, its changes and their losses.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Time between the one-line progress summaries (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub progress_every: Duration,
}

/// Runs the demo until `shutdown` is cancelled. `config_file` is `--config`, if given:
/// the demo's wiring (database, tokens, PartnerStack URL and keys) overrides it and the
/// environment; relay endpoints are left out.
pub async fn run(
    options: DemoOptions,
    config_file: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let webhook_token = random_hex(24);
    let api_token = random_hex(24);
    let public_key = format!("pk_demo_{}", random_hex(12));
    let secret_key = format!("sk_demo_{}", random_hex(20));

    let stand_in_listener = tokio::net::TcpListener::bind(options.stand_in)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--stand-in): {e}", options.stand_in))?;
    let stand_in = stand_in_listener.local_addr()?;
    let data_dir = claimed_data_dir(&options)?;

    let wiring = Wiring {
        data_dir: &data_dir,
        webhook_token: &webhook_token,
        api_token: &api_token,
        stand_in,
        public_key: &public_key,
        secret_key: &secret_key,
    };
    let config = demo_config(config_file, &wiring)?;

    let listen = config.server.listen;
    let listener = server::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    let service = listener.local_addr()?;
    // Where the status page is, if anywhere (it moves with /metrics to an admin address).
    let status_page =
        (config.server.status_page).then(|| config.server.admin_listen.unwrap_or(service));
    let database = Database::open(&config.database).await?;
    if let Err(e) = empty(&database).await {
        let _ = database.shutdown().await;
        return Err(e);
    }
    let postgres_pid = database.embedded().and_then(|pg| pg.pid());

    let simulator = simulator(
        &options,
        stand_in,
        service,
        &webhook_token,
        &public_key,
        &secret_key,
    )?;
    let partner = busiest_partner(&simulator);

    let service_task = tokio::spawn(app::run_on(config, database, listener, shutdown.clone()));
    let Some(service_task) = started(service, service_task, &shutdown).await? else {
        // Asked to stop while starting: not an error.
        return Ok(());
    };
    let stand_in_stop = CancellationToken::new();
    let stand_in_task = {
        let simulator = simulator.clone();
        let stop = stand_in_stop.clone();
        tokio::spawn(async move { simulator.serve(stand_in_listener, stop).await })
    };

    print!(
        "{}",
        banner(&Banner {
            service,
            status_page,
            stand_in,
            data_dir: &data_dir,
            postgres_pid,
            api_token: &api_token,
            webhook_token: &webhook_token,
            public_key: &public_key,
            secret_key: &secret_key,
            partner: partner.as_deref(),
            options: &options,
        })
    );
    let progress = tokio::spawn(report_progress(
        options.progress_every,
        simulator.clone(),
        service,
        api_token.clone(),
        shutdown.clone(),
    ));
    let served = service_task.await.context("the service panicked")?;
    progress.abort();
    let _ = progress.await;
    stand_in_stop.cancel();
    let stood_in = stand_in_task.await.context("the stand-in panicked")?;
    served?;
    stood_in?;
    println!(
        "partnerstack-sync demo stopped; its data stays in {}",
        data_dir.display()
    );
    Ok(())
}

/// The demo's data directory (`--data-dir`, or the default: a fresh one beside it when
/// it holds something else), claimed for this run.
fn claimed_data_dir(options: &DemoOptions) -> anyhow::Result<PathBuf> {
    let (configured, explicit) = match &options.data_dir {
        Some(dir) => (dir.clone(), true),
        None => (PathBuf::from(DEFAULT_DATA_DIR), false),
    };
    let data_dir = embedded::choose_data_dir(&configured, explicit)?;
    claim(&data_dir)?;
    Ok(data_dir)
}

/// The stand-in: its seeded program, sending webhooks to the service (lossy as set by
/// the options, with a few repeats and reorderings), answering to the generated keys.
fn simulator(
    options: &DemoOptions,
    listen: SocketAddr,
    service: SocketAddr,
    webhook_token: &str,
    public_key: &str,
    secret_key: &str,
) -> anyhow::Result<Simulator> {
    let sim_options = Options {
        listen,
        seed: options.seed,
        webhook_url: Some(format!(
            "http://{service}/webhooks/partnerstack/{webhook_token}"
        )),
        webhook_rate: options.webhook_rate,
        drop: options.drop,
        duplicate: 0.05,
        reorder: 0.1,
        ..Options::default()
    };
    Simulator::new(
        &sim_options,
        &SecretString::from(public_key.to_string()),
        &SecretString::from(secret_key.to_string()),
    )
}

/// What the demo wires together, whatever the environment says.
struct Wiring<'a> {
    data_dir: &'a Path,
    webhook_token: &'a str,
    api_token: &'a str,
    stand_in: SocketAddr,
    public_key: &'a str,
    secret_key: &'a str,
}

/// The service's configuration for the demo: the file and environment, with the demo's
/// pace where they set none, and its wiring whatever they set (by any variable name).
fn demo_config(config_file: Option<&Path>, wiring: &Wiring) -> anyhow::Result<Config> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    for (setting, default) in [
        ("reconcile.interval", RECONCILE_INTERVAL),
        ("partnerstack.requests_per_second", REQUESTS_PER_SECOND),
    ] {
        if !config::variables_of(setting)
            .iter()
            .any(|v| env.contains_key(v))
        {
            env.insert(config::env_var(setting), default.to_string());
        }
    }
    for (setting, value) in [
        ("database.url", String::new()),
        (
            "database.data_dir",
            wiring.data_dir.to_string_lossy().to_string(),
        ),
        ("webhooks.tokens", wiring.webhook_token.to_string()),
        ("webhooks.signing_secrets", String::new()),
        ("api.tokens", String::new()),
        (
            "partnerstack.base_url",
            format!("http://{}/api/v2", wiring.stand_in),
        ),
        ("partnerstack.public_key", wiring.public_key.to_string()),
        ("partnerstack.secret_key", wiring.secret_key.to_string()),
    ] {
        for var in config::variables_of(setting) {
            env.remove(&var);
        }
        env.insert(config::env_var(setting), value);
    }
    // The demo's one API client, whatever the file or the environment names.
    env.retain(|var, _| !var.starts_with(CLIENT_VARS));
    let mut config = Config::load_with_env(config_file, &env)?;
    config.api.clients = vec![ApiClient {
        name: DEMO_CLIENT.to_string(),
        token: Some(SecretString::from(wiring.api_token.to_string())),
        token_sha256: None,
        scopes: Scope::ALL.to_vec(),
    }];
    // The demo's made-up data goes nowhere but its own database.
    config.database.url = None;
    config.relay.clear();
    Ok(config)
}

/// Waits until the service at `address` is ready. `None` when it stopped first because
/// `shutdown` asked it to; an error when it failed or stopped on its own.
async fn started(
    address: SocketAddr,
    mut service: JoinHandle<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<JoinHandle<anyhow::Result<()>>>> {
    tokio::select! {
        ready = wait_ready(address) => match ready {
            Ok(()) => Ok(Some(service)),
            Err(e) => {
                shutdown.cancel();
                let _ = service.await;
                Err(e)
            }
        },
        ended = &mut service => {
            ended.context("the service panicked")??;
            if shutdown.is_cancelled() {
                Ok(None)
            } else {
                anyhow::bail!("the service stopped before it was ready")
            }
        }
    }
}

/// Makes `dir` the demo's: refuses a directory that holds a cluster without the demo's
/// marker (whatever it is, the demo will not empty it), else writes the marker.
fn claim(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(MARKER);
    if dir.join("pg/PG_VERSION").exists() && !marker.exists() {
        anyhow::bail!(
            "{} holds a Postgres cluster that is not the demo's; the demo empties its database \
             at every start, so it will not use it. Choose another directory with --data-dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the demo's data directory {}", dir.display()))?;
    std::fs::write(
        &marker,
        "This directory belongs to `partnerstack-sync demo`, which empties its database at \
         every start.\n",
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// Empties the demo's database (its schema), so the copy starts from nothing, like the
/// freshly seeded stand-in.
async fn empty(database: &Database) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect_with(&database.connect_options())
        .await
        .context("connecting to the demo's database")?;
    crate::db::query("DROP SCHEMA IF EXISTS public CASCADE")
        .execute(&mut conn)
        .await?;
    crate::db::query("CREATE SCHEMA public")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Waits until the service at `addr` answers `/readyz` with 200.
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let http = partnerstack::http::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{addr}/readyz");
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the service did not become ready within {}s",
        READY_WITHIN.as_secs()
    )
}

/// The `partner_key` most of the stand-in's customers were referred by (the most
/// interesting summary to look at).
fn busiest_partner(simulator: &Simulator) -> Option<String> {
    let state = simulator.state(Some(Entity::Customer));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for customer in state["streams"][Entity::Customer.stream()]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(key) = customer.get("partner_key").and_then(Value::as_str) {
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(key, _)| key.to_string())
}

/// Prints a progress line `every` so often until `stop`: what the stand-in changed and
/// delivered, and how the copy keeps up (as `GET /v1/sync` says).
async fn report_progress(
    every: Duration,
    simulator: Simulator,
    service: SocketAddr,
    api_token: String,
    stop: CancellationToken,
) {
    let Ok(http) = partnerstack::http::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return;
    };
    let started = tokio::time::Instant::now();
    let url = format!("http://{service}/v1/sync");
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let sync = match http.get(&url).bearer_auth(&api_token).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["data"].take(),
            Err(_) => Value::Null,
        };
        println!(
            "{}",
            progress_line(started.elapsed(), &simulator.delivery_summary(), &sync)
        );
    }
}

/// One progress line: time since start, the stand-in's webhooks, the streams within
/// their staleness bound and the objects the reconciler repaired.
fn progress_line(
    elapsed: Duration,
    deliveries: &partnerstack_sim::DeliverySummary,
    sync: &Value,
) -> String {
    let outcome = |name: &str| deliveries.outcomes.get(name).copied().unwrap_or(0);
    let streams = sync["streams"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let synced = streams
        .iter()
        .filter(|s| {
            matches!(
                (s["staleness_seconds"].as_u64(), s["staleness_bound_seconds"].as_u64()),
                (Some(staleness), Some(bound)) if staleness <= bound
            )
        })
        .count();
    let repaired: i64 = streams
        .iter()
        .filter_map(|s| s["total_repairs"].as_i64())
        .sum();
    let copy = if streams.is_empty() {
        "copy: sync status unavailable".to_string()
    } else {
        format!(
            "copy: {synced} of {} streams synced, {repaired} objects repaired by the reconciler",
            streams.len()
        )
    };
    let seconds = elapsed.as_secs();
    format!(
        "[{}m {:02}s] stand-in: {} changes, {} webhooks delivered, {} lost | {copy}",
        seconds / 60,
        seconds % 60,
        deliveries.events,
        outcome("delivered"),
        outcome("dropped"),
    )
}

/// What the banner shows.
struct Banner<'a> {
    service: SocketAddr,
    status_page: Option<SocketAddr>,
    stand_in: SocketAddr,
    data_dir: &'a Path,
    postgres_pid: Option<u32>,
    api_token: &'a str,
    webhook_token: &'a str,
    public_key: &'a str,
    secret_key: &'a str,
    partner: Option<&'a str>,
    options: &'a DemoOptions,
}

/// What the demo prints once everything runs: where to look, the secrets it made up,
/// and commands to paste.
fn banner(b: &Banner<'_>) -> String {
    let service = format!("http://{}", b.service);
    let stand_in = format!("http://{}", b.stand_in);
    let postgres = match b.postgres_pid {
        Some(pid) => format!("pid {pid}, "),
        None => String::new(),
    };
    let auth = format!("-H 'Authorization: Bearer {}'", b.api_token);
    let partner = b.partner.unwrap_or("JohnSmith1");
    let status_page = match b.status_page {
        Some(addr) => {
            format!("http://{addr}/status            (open it in a browser; it reloads every 10 s)")
        }
        None => "off (PSYNC_STATUS_PAGE=false)".to_string(),
    };
    format!(
        "\n\
         partnerstack-sync demo: the service, its own Postgres and a PartnerStack stand-in, wired together.\n\
         \n\
         \x20 status page    {status_page}\n\
         \x20 service        {service}\n\
         \x20 stand-in       {stand_in}/admin/stats       (also /admin/undelivered: changes no webhook delivered)\n\
         \x20 Postgres       {postgres}data in {data_dir} (emptied at every start)\n\
         \n\
         \x20 API token      {api_token}   (client {DEMO_CLIENT}: read, write, admin)\n\
         \x20 webhook token  {webhook_token}\n\
         \x20 stand-in keys  {public_key} {secret_key}\n\
         \n\
         The stand-in changes {rate} objects a second and loses {drop:.0}% of their webhooks; the\n\
         reconciler repairs what they missed. Within a minute every stream is synced. Try (the\n\
         last one records a signup at the stand-in through the write outbox):\n\
         \n\
         \x20 curl -s {auth} {service}/v1/partners/{partner}/summary\n\
         \x20 curl -s {auth} {service}/v1/sync\n\
         \x20 curl -s {auth} '{service}/v1/events?outcome=applied&limit=3'\n\
         \x20 curl -s {auth} -X POST '{service}/v1/customers?wait=5' \\\n\
         \x20     -d '{{\"customer_key\": \"demo-1\", \"email\": \"demo@example.com\", \"partner_key\": \"{partner}\"}}'\n\
         \n\
         Every {every} a line below sums up the progress.\n\
         Ctrl-C stops everything.\n\
         \n",
        data_dir = b.data_dir.display(),
        api_token = b.api_token,
        webhook_token = b.webhook_token,
        public_key = b.public_key,
        secret_key = b.secret_key,
        rate = b.options.webhook_rate,
        drop = b.options.drop * 100.0,
        every = humantime::format_duration(b.options.progress_every),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_sums_up_webhooks_and_streams() {
        let mut deliveries = partnerstack_sim::DeliverySummary {
            events: 60,
            ..Default::default()
        };
        deliveries.outcomes.insert("delivered".into(), 48);
        deliveries.outcomes.insert("dropped".into(), 12);
        let sync = serde_json::json!({"streams": [
            {"staleness_seconds": 20, "staleness_bound_seconds": 3600, "total_repairs": 7},
            {"staleness_seconds": 4000, "staleness_bound_seconds": 3600, "total_repairs": 2},
            {"staleness_seconds": null, "staleness_bound_seconds": 630, "total_repairs": 0},
        ]});
        assert_eq!(
            progress_line(Duration::from_secs(95), &deliveries, &sync),
            "[1m 35s] stand-in: 60 changes, 48 webhooks delivered, 12 lost | copy: 1 of 3 \
             streams synced, 9 objects repaired by the reconciler"
        );
        assert!(
            progress_line(Duration::ZERO, &deliveries, &Value::Null)
                .ends_with("copy: sync status unavailable")
        );
    }

    #[test]
    fn a_cluster_without_the_marker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pg")).unwrap();
        std::fs::write(dir.path().join("pg/PG_VERSION"), "16\n").unwrap();
        let err = claim(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not the demo's"), "{err}");
        assert!(!dir.path().join(MARKER).exists());
        // A marked one, or a new one, is the demo's.
        std::fs::write(dir.path().join(MARKER), "").unwrap();
        claim(dir.path()).unwrap();
        let fresh = dir.path().join("fresh");
        claim(&fresh).unwrap();
        assert!(fresh.join(MARKER).is_file());
    }
}
