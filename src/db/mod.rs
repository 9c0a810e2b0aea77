//! Postgres: the pool, migrations, the embedded default and the queries per table.

pub mod attribution;
pub mod changes;
pub mod embedded;
pub mod events;
pub mod relay;
pub mod sync;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::DatabaseConfig;
use embedded::EmbeddedPostgres;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where the database lives: a server named by `DATABASE_URL`, or one this process runs.
pub enum Database {
    External(PgConnectOptions),
    Embedded(EmbeddedPostgres),
}

impl Database {
    /// Resolves the configured database, starting the embedded server when no URL is set.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Self> {
        match &config.url {
            Some(url) => {
                // The parse error text never includes the URL, so the password stays out of logs.
                let options = PgConnectOptions::from_str(url.expose_secret())
                    .map_err(|e| anyhow::anyhow!("DATABASE_URL does not parse: {e}"))?;
                Ok(Database::External(options))
            }
            None => {
                let pg = EmbeddedPostgres::start(&config.data_dir, &[])
                    .await
                    .context(
                        "starting the embedded Postgres (set DATABASE_URL to use another server)",
                    )?;
                Ok(Database::Embedded(pg))
            }
        }
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        match self {
            Database::External(o) => o.clone(),
            Database::Embedded(pg) => pg.connect_options(),
        }
    }

    /// Stops the embedded server, if this process runs one.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        match self {
            Database::External(_) => Ok(()),
            Database::Embedded(pg) => pg.stop().await,
        }
    }
}

/// Describes where a connection goes without its password, for logs.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// Session settings every connection of the service gets: its name, server-side timeouts
/// as a backstop against a transaction left open or a runaway statement, and no JIT
/// compilation (the service's statements are short; compiling a batch upsert's
/// expressions cost 20 ms per statement, several times the statement itself).
///
/// Also server-side TCP keepalives (idle 10 s, then a probe every 5 s, 3 unanswered end
/// it): when a client's host dies or is cut off, Postgres ends its session within about
/// 25 s instead of the system default of hours; and a 30 s limit on unacknowledged data
/// (`tcp_user_timeout`) for a host that dies while Postgres is sending to it. It matters
/// for the reconciler's leader, whose session holds the leadership lock (ignored on
/// Unix-domain sockets).
pub fn session_options(options: PgConnectOptions, config: &DatabaseConfig) -> PgConnectOptions {
    let ms = |d: Duration| d.as_millis().to_string();
    options.application_name("partnerstack-sync").options([
        (
            "idle_in_transaction_session_timeout",
            ms(config.idle_in_transaction_timeout),
        ),
        ("statement_timeout", ms(config.statement_timeout)),
        ("jit", "off".to_string()),
        ("tcp_keepalives_idle", "10".to_string()),
        ("tcp_keepalives_interval", "5".to_string()),
        ("tcp_keepalives_count", "3".to_string()),
        ("tcp_user_timeout", "30000".to_string()),
    ])
}

/// Builds the pool. Connections are opened lazily, so a database that is down at start-up
/// or later is retried on use.
pub fn pool(options: PgConnectOptions, config: &DatabaseConfig) -> PgPool {
    let options = session_options(options, config);
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        // No ping per checkout (a round trip per query): a connection broken by a database
        // restart fails its next statement, is discarded, and the caller answers 503.
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// Applies pending migrations, waiting up to `patience` for the database to answer.
/// Replicas starting together are serialised by the migrator's advisory lock.
pub async fn migrate(pool: &PgPool, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e)) if is_connection_error(&e) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(e).context("the database did not answer; migrations not applied");
                }
                tracing::warn!(error = %e, "database not reachable yet; retrying migrations");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("applying migrations"),
        }
    }
}

/// True when the database answers and every compiled-in migration has been applied.
pub async fn is_ready(pool: &PgPool) -> bool {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
    matches!(applied, Ok(Some(v)) if v >= latest)
}

/// Errors worth retrying as they are: the database could not be reached, or refused the
/// statement for a passing reason (deadlock, serialization failure, lock or statement
/// timeout), as opposed to refusing the data.
pub fn is_transient_error(e: &sqlx::Error) -> bool {
    is_connection_error(e)
        || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
            matches!(c.as_ref(), "40001" | "40P01" | "55P03" | "57014")
        }))
}

/// Errors that mean "the database could not be reached", as opposed to a rejected statement.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
        // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
        // class 08 connection exceptions.
        c.starts_with("57P") || c.starts_with("08")
    }))
}
