//! Test support: one Postgres per test binary, a fresh database per test, and the real
//! service on a port-0 listener.
//!
//! With `DATABASE_URL` set, tests create their databases on that server; otherwise the
//! binary starts an embedded Postgres (the same code `serve` uses) in a temporary
//! directory, so `cargo test` needs nothing running beforehand.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use partnerstack_sync::config::Config;
use partnerstack_sync::db::embedded::EmbeddedPostgres;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_TOKEN: &str = "test-webhook-token-0123456789";
/// The token of the test client `test`, which has every scope (read, write, admin).
pub const API_TOKEN: &str = "test-api-token-0123456789";
/// Clients with one scope each: `reader` (read), `writer` (write), `operator` (admin).
pub const READ_TOKEN: &str = "test-read-token-0123456789";
pub const WRITE_TOKEN: &str = "test-write-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// An unnamed token (`api.tokens`): it may only read.
pub const UNNAMED_TOKEN: &str = "test-unnamed-token-0123456789";

/// The test service's API clients as variables: `test` with every scope, one client per
/// scope, and an unnamed token.
pub const API_CLIENTS: &[(&str, &str)] = &[
    ("PSYNC_API_CLIENT_TEST_TOKEN", API_TOKEN),
    ("PSYNC_API_CLIENT_TEST_SCOPES", "read,write,admin"),
    ("PSYNC_API_CLIENT_READER_TOKEN", READ_TOKEN),
    ("PSYNC_API_CLIENT_READER_SCOPES", "read"),
    ("PSYNC_API_CLIENT_WRITER_TOKEN", WRITE_TOKEN),
    ("PSYNC_API_CLIENT_WRITER_SCOPES", "write"),
    ("PSYNC_API_CLIENT_OPERATOR_TOKEN", ADMIN_TOKEN),
    ("PSYNC_API_CLIENT_OPERATOR_SCOPES", "admin"),
    ("PSYNC_API_TOKENS", UNNAMED_TOKEN),
];

struct Server {
    /// A URL for the server's `postgres` database; other databases swap the name in.
    admin_url: String,
    _embedded: Option<EmbeddedPostgres>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn server() -> &'static Server {
    SERVER
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return Server {
                    admin_url: with_database(&url, "postgres"),
                    _embedded: None,
                };
            }
            remove_stale_clusters();
            let dir = cluster_dir(std::process::id());
            let _ = std::fs::remove_dir_all(&dir);
            let pg = EmbeddedPostgres::start(&dir, &[("fsync", "off")])
                .await
                .expect("start the embedded Postgres for tests");
            let url = pg.url().expose_secret().to_string();
            Server {
                admin_url: with_database(&url, "postgres"),
                _embedded: Some(pg),
            }
        })
        .await
}

fn cluster_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("psync-test-pg-{pid}"))
}

/// Clusters of test processes that are gone (their server died with them).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("psync-test-pg-")
            .and_then(|p| p.parse::<u32>().ok())
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let server = server().await;
        let name = format!(
            "psync_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .expect("connect to test server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = with_database(&server.admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(PgConnectOptions::from_str(&url).unwrap())
            .await
            .expect("connect to test database");
        partnerstack_sync::db::MIGRATOR
            .run(&pool)
            .await
            .expect("migrate test database");
        TestDb { url, pool }
    }

    /// A database on a Postgres server of its own, for tests that stop and start the
    /// server; returns the server and its directory (to remove afterwards).
    pub async fn private(label: &str) -> (EmbeddedPostgres, TestDb, PathBuf) {
        let dir = shared_temp_dir(label);
        let pg = EmbeddedPostgres::start(&dir, &[("fsync", "off")])
            .await
            .expect("start a private Postgres");
        let url = pg.url().expose_secret().to_string();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        partnerstack_sync::db::MIGRATOR.run(&pool).await.unwrap();
        (pg, TestDb { url, pool }, dir)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Settings for a test service on `db`: test tokens and clients ([`API_CLIENTS`]), no
/// reconciler, quiet logs.
pub fn test_config(db_url: &str) -> Config {
    let env: HashMap<String, String> = [
        ("DATABASE_URL", db_url),
        ("PSYNC_LISTEN", "127.0.0.1:0"),
        ("PSYNC_WEBHOOK_TOKENS", WEBHOOK_TOKEN),
        ("PSYNC_RECONCILE_INTERVAL", "off"),
        // No load balancer to wait for; tests of the drain set their own.
        ("PSYNC_SERVER_SHUTDOWN_DELAY", "0s"),
    ]
    .into_iter()
    .chain(API_CLIENTS.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Config::load_with_env(None, &env).expect("test config")
}

/// The real service, running in this process on a port-0 listener.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDb,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let db = TestDb::new().await;
        Self::spawn_on(db, tweak).await
    }

    /// Starts the service on an existing database (e.g. to restart on the same data).
    pub async fn spawn_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(&db.url);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(partnerstack_sync::app::run(
            config,
            listener,
            shutdown.clone(),
        ));
        let app = TestApp {
            addr,
            db,
            http: partnerstack::http::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            shutdown,
            task: Some(task),
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service did not become ready within 30 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn webhook_url(&self) -> String {
        self.url(&format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}"))
    }

    /// POSTs a webhook delivery with the valid token.
    pub async fn deliver(&self, body: impl Into<String>) -> reqwest::Response {
        self.http
            .post(self.webhook_url())
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("webhook request")
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The value of one unlabelled sample of `/metrics` (e.g. `psync_ingest_queue_depth`,
    /// `psync_ingest_batch_size_sum`); panics if the service does not export it.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
    }

    /// GET with the test API token.
    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("api request")
    }

    /// Waits until every stored delivery has been applied.
    pub async fn settle(&self) {
        for _ in 0..600 {
            if self
                .db
                .count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
                .await
                == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deliveries still pending after 30 s");
    }

    /// Graceful shutdown; returns the database for a restart or inspection.
    pub async fn stop(mut self) -> TestDb {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("service task")
                .expect("service shut down cleanly");
        }
        self.db
    }
}

/// A directory under the system temp dir that the `postgres` user can enter (tempfile's
/// directories are 0700, which an embedded server running as `postgres` cannot reach).
pub fn shared_temp_dir(label: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "psync-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Owned settings as `Process::command` takes them.
pub fn as_env<'a>(
    vars: &'a [(&'static str, Option<String>)],
) -> Vec<(&'static str, Option<&'a str>)> {
    vars.iter().map(|(k, v)| (*k, v.as_deref())).collect()
}

/// The real `partnerstack-sync serve` binary in a child process.
pub struct Process {
    pub child: std::process::Child,
    /// Where it listens: 127.0.0.1 unless it runs in a network namespace of its own.
    pub host: std::net::IpAddr,
    pub port: u16,
}

impl Process {
    /// A `serve` command on a free port with the test tokens and clients
    /// ([`API_CLIENTS`]), the reconciler off and quiet logs. `env` adds or overrides
    /// variables (`None` removes one, e.g. `DATABASE_URL`).
    pub fn command(env: &[(&str, Option<&str>)]) -> (std::process::Command, u16) {
        let port = free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"));
        cmd.arg("serve")
            .env("PSYNC_LISTEN", format!("127.0.0.1:{port}"))
            .env("PSYNC_WEBHOOK_TOKENS", WEBHOOK_TOKEN)
            .envs(API_CLIENTS.iter().copied())
            .env("PSYNC_RECONCILE_INTERVAL", "off")
            .env("PSYNC_SERVER_SHUTDOWN_DELAY", "0s")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        (cmd, port)
    }

    /// Starts `serve` (see [`Process::command`]) and waits until it is ready.
    pub async fn serve(env: &[(&str, Option<&str>)]) -> Process {
        let (cmd, port) = Self::command(env);
        let mut process = Process::start(cmd, port);
        process.wait_ready().await;
        process
    }

    /// Starts `cmd` (from [`Process::command`], perhaps adjusted) without waiting.
    pub fn start(mut cmd: std::process::Command, port: u16) -> Process {
        let child = cmd.spawn().expect("start partnerstack-sync");
        Process {
            child,
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port,
        }
    }

    /// Waits (at most 60 s) for `/readyz`; fails if the process exits meanwhile.
    pub async fn wait_ready(&mut self) {
        let http = partnerstack::http::builder().build().unwrap();
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("partnerstack-sync exited during start-up: {status}");
            }
            if let Ok(r) = http.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("partnerstack-sync did not become ready within 60 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The `data` of `GET /v1/sync`, or `None` when the process does not answer within
    /// 5 s (it may be stopped, or cut off).
    pub async fn sync_status(&self) -> Option<serde_json::Value> {
        let http = partnerstack::http::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = http
            .get(self.url("/v1/sync"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        Some(body["data"].clone())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    /// SIGTERM, then waits (at most 30 s) for a clean exit.
    pub async fn terminate(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status} after SIGTERM");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        panic!("serve did not stop within 30 s of SIGTERM");
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
