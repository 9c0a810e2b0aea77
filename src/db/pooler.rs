//! Statements that mean the same on a direct connection and through a connection pooler
//! in transaction mode (PgBouncer's `pool_mode = transaction`), where consecutive
//! transactions of one client connection may run on different server sessions.
//!
//! Measured through Debian's PgBouncer 1.18 with 32 clients on 4 server connections:
//! sqlx prepares a statement (`Parse`, `Describe`, `Sync`), waits for the answer, then
//! binds and runs it (`Bind`, `Execute`, `Sync`). Outside a transaction the pooler hands the
//! server back at the first `Sync`, so the `Bind` lands on whatever session comes next:
//! two thirds of the statements failed ("bind message supplies 3 parameters, but prepared
//! statement \"\" requires 1", "insufficient data left in message"), and where the
//! parameters happen to fit, the other session's statement runs with them. Named
//! statements (sqlx's cache) collide as well ("sqlx_s_1 already exists"). Turning the
//! cache off does not help: a `persistent` query is then prepared under a fresh name each
//! time, and never closed. Inside a transaction the server session stays the client's,
//! and every one of 9,600 statements answered right.
//!
//! Hence the service's rules, which hold on any connection:
//! - every statement runs inside a transaction: [`begin`] for the service's own, and
//!   [`atomic`] for a single statement on the pool (`BEGIN`, the statement, `COMMIT`,
//!   the rows handed over only after the commit);
//! - every statement is unnamed ([`query`], [`query_as`], [`query_scalar`], and
//!   `persistent(false)` on built queries); a test holds `src/` to it;
//! - no session state: settings are `SET LOCAL` in the `BEGIN` that opens each
//!   transaction ([`set_session_limits`]), no startup `options`, no session advisory
//!   locks (leadership is a lease row, [`super::lease`]), no `LISTEN`, no temporary
//!   tables.

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{
    AssertSqlSafe, Connection, Either, Error, Execute, Executor, PgConnection, PgPool, Postgres,
    SqlSafeStr, Transaction,
};

/// The `BEGIN` of every transaction, with its `SET LOCAL`s; see [`set_session_limits`].
static BEGIN: OnceLock<String> = OnceLock::new();

/// The settings every transaction of this process opens with: server-side backstops
/// against a transaction left open (`idle_in_transaction_session_timeout`) or a runaway
/// statement (`statement_timeout`), and no JIT compilation (the service's statements are
/// short; compiling a batch upsert's expressions cost 20 ms per statement, several times
/// the statement itself). `SET LOCAL` ends with the transaction, so nothing is left on a
/// server session that a pooler hands to another client. Set once, when the pool is made;
/// a zero duration leaves that limit to the server's default.
pub fn set_session_limits(idle_in_transaction: Duration, statement: Duration) {
    let _ = BEGIN.set(begin_statement(idle_in_transaction, statement));
}

fn begin_statement(idle_in_transaction: Duration, statement: Duration) -> String {
    let mut sql = "BEGIN; SET LOCAL jit = off".to_string();
    for (name, limit) in [
        ("idle_in_transaction_session_timeout", idle_in_transaction),
        ("statement_timeout", statement),
    ] {
        if !limit.is_zero() {
            sql.push_str(&format!("; SET LOCAL {name} = {}", limit.as_millis()));
        }
    }
    sql
}

fn begin_sql() -> String {
    BEGIN
        .get()
        .cloned()
        .unwrap_or_else(|| begin_statement(Duration::ZERO, Duration::ZERO))
}

/// Begins a transaction on a pooled connection with the process's session limits.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, Error> {
    pool.begin_with(AssertSqlSafe(begin_sql())).await
}

/// [`begin`] on a connection of the caller's own.
pub async fn begin_on(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, Error> {
    conn.begin_with(AssertSqlSafe(begin_sql())).await
}

/// `sqlx::query`, unnamed.
pub fn query<'a>(sql: impl SqlSafeStr) -> Query<'a, Postgres, PgArguments> {
    sqlx::query(sql).persistent(false)
}

/// `sqlx::query_as`, unnamed.
pub fn query_as<'a, O>(sql: impl SqlSafeStr) -> QueryAs<'a, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(false)
}

/// `sqlx::query_scalar`, unnamed.
pub fn query_scalar<'a, O>(sql: impl SqlSafeStr) -> QueryScalar<'a, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

/// The pool as an executor that runs each statement in a transaction of its own (see the
/// module's notes): use it wherever a single statement would run on the pool.
pub fn atomic(pool: &PgPool) -> Atomic<'_> {
    Atomic(pool)
}

/// See [`atomic`].
#[derive(Debug, Clone, Copy)]
pub struct Atomic<'p>(&'p PgPool);

/// A statement as given, but never prepared under a name.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> sqlx::SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

impl<'p> Executor<'p> for Atomic<'p> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.0.clone();
        // Rows are collected and handed over only after the commit: a caller never acts
        // on a write that was not committed.
        let all = async move {
            let mut conn = pool.acquire().await?;
            let mut tx = begin_on(&mut conn).await?;
            let items: Vec<_> = tx.fetch_many(Unnamed(query)).try_collect().await?;
            tx.commit().await?;
            Ok::<_, Error>(items)
        };
        Box::pin(
            futures_util::stream::once(all)
                .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
                .try_flatten()
                .boxed(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.0.clone();
        Box::pin(async move {
            let mut conn = pool.acquire().await?;
            let mut tx = begin_on(&mut conn).await?;
            let row = tx.fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, Error>>
    where
        'p: 'e,
    {
        self.0.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, Error>>
    where
        'p: 'e,
    {
        self.0.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.rs` file under `dir`.
    fn sources(dir: &std::path::Path, into: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                into.push(path);
            }
        }
    }

    /// The rules of this module, held over the service's code: no named statement, no
    /// statement on the pool outside a transaction, no session-level state.
    #[test]
    fn the_service_runs_no_statement_a_pooler_would_mix_up() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut forbidden: Vec<String> = [
            "sqlx::query(",
            "sqlx::query_as(",
            "sqlx::query_as::<",
            "sqlx::query_scalar(",
            "sqlx::query_scalar::<",
            "pool.begin()",
            "pool.acquire()",
            "pg_advisory_lock",
            "pg_try_advisory_lock",
            ", false)\")",
            "\"LISTEN ",
            "TEMPORARY TABLE",
            "TEMP TABLE",
        ]
        .map(String::from)
        .to_vec();
        for method in [
            "fetch",
            "fetch_one",
            "fetch_all",
            "fetch_optional",
            "execute",
        ] {
            for pool in ["pool", "&pool", "self.pool", "&self.pool", "&state.pool"] {
                forbidden.push(format!(".{method}({pool})"));
            }
        }
        let mut found = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("db/pooler.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if forbidden
                    .iter()
                    .any(|needle| code.contains(needle.as_str()))
                {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(found.is_empty(), "see db::pooler:\n{}", found.join("\n"));
    }

    #[test]
    fn every_transaction_begins_with_its_limits_set_locally() {
        assert_eq!(
            begin_statement(Duration::from_secs(60), Duration::from_millis(30_500)),
            "BEGIN; SET LOCAL jit = off; SET LOCAL idle_in_transaction_session_timeout = 60000; \
             SET LOCAL statement_timeout = 30500"
        );
        assert_eq!(
            begin_statement(Duration::ZERO, Duration::ZERO),
            "BEGIN; SET LOCAL jit = off"
        );
    }
}
