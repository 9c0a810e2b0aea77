//! Postgres: the pool, migrations, the embedded default and the queries per table.

pub mod answers;
pub mod attribution;
pub mod budget;
pub mod changes;
pub mod embedded;
pub mod events;
pub mod lease;
pub mod pooler;
pub mod relay;
pub mod set_aside;
pub mod sync;
pub mod tokens;
pub mod totals;
pub mod writes;

use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::config::DatabaseConfig;
use embedded::EmbeddedPostgres;
pub use pooler::{atomic, begin, begin_on, query, query_as, query_scalar};

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
                let data_dir =
                    embedded::choose_data_dir(&config.data_dir, !config.data_dir_is_default)?;
                let pg = EmbeddedPostgres::start(&data_dir, &[]).await.context(
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

    /// The embedded server, if this process runs one.
    pub fn embedded(&self) -> Option<&EmbeddedPostgres> {
        match self {
            Database::External(_) => None,
            Database::Embedded(pg) => Some(pg),
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

/// How the service's connections present themselves: by name, and with nothing a
/// connection pooler in transaction mode refuses or would hand to another client. No
/// `options` startup parameter (PgBouncer refuses it; the session limits are `SET LOCAL` in
/// every transaction instead, see [`pooler`]), no `extra_float_digits` (refused too; since
/// Postgres 12 the default already prints floats exactly, and sqlx reads them in binary),
/// and no cache of named prepared statements (see [`pooler`]).
pub fn connect_options(options: PgConnectOptions) -> PgConnectOptions {
    options
        .application_name("partnerstack-sync")
        .extra_float_digits(None)
        .statement_cache_capacity(0)
}

/// Longest a pooled connection lives: a backstop that also ends sessions whose state a
/// failover or a setting change left behind.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A pooled connection idle this long is pinged before it is handed out: the database
/// may have restarted meanwhile, and a connection it broke must not fail a request. A
/// connection released while the database was down failed its release ping and is gone,
/// so a broken one has been idle at least as long as the restart took, which is always
/// longer than this (starting Postgres alone takes longer). Connections in steady use
/// are not pinged (a ping is a round trip).
const PING_IDLE: Duration = Duration::from_millis(100);

/// Builds the pool. Connections are opened lazily, so a database that is down at start-up
/// or later is retried on use. A connection is not handed out when it is broken (pinged
/// after [`PING_IDLE`] of rest), or when it was opened before the database last refused
/// a write for the session's sake ([`Failure::Session`]: a session left read-only by a
/// failover never comes back) or was last seen to go away (its other sessions went with
/// it; see [`classify`]).
pub fn pool(options: PgConnectOptions, config: &DatabaseConfig) -> PgPool {
    pooler::set_session_limits(config.idle_in_transaction_timeout, config.statement_timeout);
    let options = connect_options(options);
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(MAX_LIFETIME)
        // No ping per checkout (a round trip per query), only after a rest.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if stale_session(meta.age) {
                    return Ok(false);
                }
                // A broken connection is closed and another taken (or opened).
                Ok(meta.idle_for < PING_IDLE || conn.ping().await.is_ok())
            })
        })
        .after_release(|_, meta| Box::pin(async move { Ok(!stale_session(meta.age)) }))
        .connect_lazy_with(options)
}

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database could not be reached, or ended the session: retry on a new one.
    Connection,
    /// The session cannot write (read-only transaction, a server in recovery): the
    /// connection is not reused; retry on a new one.
    Session,
    /// The database refused for a passing reason: out of disk, memory or connections, a
    /// deadlock or serialization failure, a lock or statement timeout. Retry later.
    Passing,
    /// The database refused the data itself.
    Data,
}

impl Failure {
    /// Worth retrying as it is (the delivery stays pending; the request gets 503).
    pub fn is_transient(self) -> bool {
        self != Failure::Data
    }
}

/// Sorts a database error by what it means (see [`Failure`]). A session-level refusal is
/// remembered: every connection opened before it is closed instead of reused.
pub fn classify(e: &sqlx::Error) -> Failure {
    let failure = match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Connection,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // read_only_sql_transaction (also a standby's answer to a write)
            Some("25006") => Failure::Session,
            // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now
            // (starting up, in recovery), 57P05 idle session timeout, 25P03 idle in
            // transaction timeout, class 08 connection exceptions
            Some(c) if c.starts_with("57P") || c.starts_with("08") => Failure::Connection,
            Some("25P03") => Failure::Connection,
            // A statement's session was mixed up, which only a pooler sharing server
            // sessions does (26000 prepared statement does not exist, 42P05 already
            // exists), or this process's lease was taken over (see `lease`): nothing
            // about the data, retry on a new session.
            Some("26000" | "42P05" | lease::LOST) => Failure::Connection,
            // class 53 insufficient resources (disk full, out of memory, too many
            // connections), serialization failure, deadlock, lock not available, query
            // canceled (statement timeout)
            Some(c) if c.starts_with("53") => Failure::Passing,
            Some("40001" | "40P01" | "55P03" | "57014") => Failure::Passing,
            _ => Failure::Data,
        },
        _ => Failure::Data,
    };
    if failure == Failure::Session || server_went_away(e) {
        note_session_refusal();
    }
    failure
}

/// Whether `e` says the server itself went away or restarted (not just this session),
/// so every older connection is likely broken too: the connection was cut, or the
/// server shut down, crashed or is starting. Not a pool timeout (the pool was busy).
fn server_went_away(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some(c) if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
        ),
        _ => false,
    }
}

/// Milliseconds since this process's first look at the clock when a session last refused
/// a write for the session's sake, or the server was last seen to go away (0: never):
/// connections opened before it are not reused.
static SESSION_REFUSED_AT: AtomicU64 = AtomicU64::new(0);
static CLOCK_BASE: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

fn clock_ms() -> u64 {
    u64::try_from(CLOCK_BASE.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Remembers that a session refused a write for the session's sake (also when readiness
/// finds a pooled session that cannot write), or that the server went away.
pub fn note_session_refusal() {
    SESSION_REFUSED_AT.store(clock_ms(), Ordering::Relaxed);
}

/// Whether a connection of this age was opened before the last session refusal.
fn stale_session(age: Duration) -> bool {
    let refused = SESSION_REFUSED_AT.load(Ordering::Relaxed);
    let opened = clock_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    refused > 0 && opened <= refused
}

/// Waits until the database accepts a connection, at most `timeout` (the setting
/// `database.connect_timeout`): an unreachable or starting database is tried again every
/// second; one that refuses the connection for good (wrong password, no such database)
/// fails at once. The error names the database, the setting and the last reason.
pub async fn wait_for(options: &PgConnectOptions, timeout: Duration) -> anyhow::Result<()> {
    // As every connection of the service presents itself (a pooler refuses the rest).
    let options = &connect_options(options.clone());
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut warned = false;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(left, PgConnection::connect_with(options)).await;
        let reason = match attempt {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(e)) if refused_setting(&e) => {
                return Err(e).with_context(|| {
                    format!(
                        "the server at {} refused a connection setting; a connection pooler \
                         accepts only some startup parameters (remove `options` and the like \
                         from DATABASE_URL; see the README on poolers)",
                        describe(options)
                    )
                });
            }
            Ok(Err(e)) if classify(&e) == Failure::Data => {
                return Err(e).with_context(|| {
                    format!("connecting to the database at {}", describe(options))
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the database at {} did not answer within {} (database.connect_timeout): {reason}",
                describe(options),
                humantime::format_duration(timeout)
            );
        }
        if !warned {
            warned = true;
            tracing::warn!(
                database = %describe(options),
                error = %reason,
                wait_s = timeout.as_secs(),
                "the database does not answer yet; waiting for it"
            );
        }
        tokio::time::sleep(Duration::from_secs(1).min(left)).await;
    }
}

/// Whether a connection attempt was refused for a startup parameter (PgBouncer:
/// "unsupported startup parameter"), which no retry mends. A protocol violation at
/// connection time also comes from a pooler that cannot reach its server yet, so the
/// wording tells the two apart; it decides only how soon start-up gives up.
fn refused_setting(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("08P01")
            && db.message().starts_with("unsupported startup parameter"))
}

/// Applies pending migrations, waiting up to `patience` for the database to answer.
///
/// All of them run in one transaction on a connection of their own, after a
/// transaction-level advisory lock that serialises replicas starting together: the
/// migrator's own session lock and its statements outside a transaction would go astray
/// through a pooler in transaction mode (see [`pooler`]). Its named statements are
/// deallocated before the commit and the connection closed, so none outlives it.
pub async fn migrate(options: &PgConnectOptions, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match migrate_once(options).await {
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

/// The advisory lock that serialises migrations ("psmg").
const MIGRATION_LOCK: i64 = 0x7073_6d67;

async fn migrate_once(options: &PgConnectOptions) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = PgConnection::connect_with(&connect_options(options.clone())).await?;
    let mut tx = begin_on(&mut conn).await?;
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // The lock above stands in for the migrator's own (its fields are public for
    // `migrate!`; the version is pinned by Cargo.lock).
    let migrator = sqlx::migrate::Migrator {
        migrations: MIGRATOR.migrations.clone(),
        locking: false,
        ..sqlx::migrate::Migrator::DEFAULT
    };
    // `run` on a borrowed connection trips the compiler's Send check across an await
    // ("Acquire is not general enough"); `run_direct` is what `run` calls.
    migrator.run_direct(None, &mut *tx, false).await?;
    sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *tx).await?;
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(())
}

/// Whether the database can do the service's job: why not, or `Ok`.
pub async fn readiness(pool: &PgPool) -> Result<(), String> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let row: Result<(bool, bool, Option<i64>), _> = query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on',
                (SELECT max(version) FROM _sqlx_migrations WHERE success)",
    )
    .fetch_one(atomic(pool))
    .await;
    match row {
        Err(e) => Err(format!("the database does not answer ({})", kind(&e))),
        Ok((true, _, _)) => Err("the database is a standby in recovery: it cannot write".into()),
        Ok((_, true, _)) => {
            // This pooled session cannot write; newer ones may (after a failover).
            note_session_refusal();
            Err("the database session is read-only: it cannot write".into())
        }
        Ok((_, _, applied)) if applied.unwrap_or(0) < latest => {
            Err("the database is not migrated".into())
        }
        Ok(_) => Ok(()),
    }
}

/// A short description of a database error, without its detail (for health answers).
fn kind(e: &sqlx::Error) -> &'static str {
    match classify(e) {
        Failure::Connection => "unreachable",
        Failure::Session => "read-only session",
        Failure::Passing => "busy or out of resources",
        Failure::Data => "error",
    }
}

/// Turns sorting off (`off`), or back to the default, for the rest of the caller's
/// transaction.
///
/// Taking the oldest pending rows of a queue (deliveries, writes) must walk an index in id
/// order and stop after `limit` rows. With statistics that do not know the backlog (a
/// table never analyzed, or analyzed when nothing was pending, which autovacuum does not
/// correct for a minute or more), the planner instead collected every pending row and
/// sorted them all: `FOR UPDATE` sits between the `LIMIT` and the sort, so the sort is
/// never bounded, and every filter runs on every pending row. Each batch then cost time in
/// proportion to the backlog (deliveries: 145 ms with 60,000 pending, an 87 MB sort on
/// disk), and the queue fell further behind with every batch. Without sorts, the index
/// order is the only plan, whatever the statistics say.
pub async fn without_sorts(conn: &mut PgConnection, off: bool) -> Result<(), sqlx::Error> {
    let sql = if off {
        "SET LOCAL enable_sort = off"
    } else {
        "SET LOCAL enable_sort TO DEFAULT"
    };
    query(sql).execute(conn).await?;
    Ok(())
}

/// Errors worth retrying as they are: the database could not be reached, the session
/// cannot write, or the database refused for a passing reason (see [`Failure`]), as
/// opposed to refusing the data.
pub fn is_transient_error(e: &sqlx::Error) -> bool {
    classify(e).is_transient()
}

/// Errors after which a session is not to be used again: the database could not be
/// reached or ended it, or it cannot write.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(classify(e), Failure::Connection | Failure::Session)
}
