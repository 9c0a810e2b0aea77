//! Queries on `relay_endpoints`: each relay endpoint's position in the feed, counters,
//! last error and pending replay.
//!
//! The position and counters are written only by the replica relaying the endpoint,
//! through the session that holds the endpoint's advisory lock (see [`crate::relay`]);
//! anyone may ask for a replay, which that replica carries out before its next read.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use crate::db::changes::{self, FeedPosition};

/// One endpoint's row.
#[derive(Debug, Clone, FromRow)]
pub struct EndpointState {
    pub name: String,
    position_pos: Option<String>,
    position_id: Option<i64>,
    pub delivered: i64,
    pub failures: i32,
    pub last_delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub runner: Option<String>,
    pub replay_requested_at: Option<DateTime<Utc>>,
}

impl EndpointState {
    /// The last change delivered (or passed over as not of the endpoint's entities);
    /// `None` before the first change.
    pub fn position(&self) -> Result<Option<FeedPosition>, sqlx::Error> {
        changes::parse_position(self.position_pos.as_deref(), self.position_id)
    }
}

const COLUMNS: &str = "name, position_pos::text AS position_pos, position_id, delivered, failures, \
     last_delivered_at, last_error, last_error_at, runner, replay_requested_at";

/// Creates the endpoint's row if it has none, positioned at the feed's visible head: a
/// new endpoint receives the changes made from now on (a replay sends older ones). On an
/// empty feed the position is the start, `(0, 0)`, so that pruning can still tell when
/// the endpoint falls behind it.
pub async fn ensure(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    crate::db::query(
        "INSERT INTO relay_endpoints (name, position_pos, position_id)
         SELECT $1, COALESCE(h.pos, '0'::xid8), COALESCE(h.id, 0) FROM (SELECT 1) one
         LEFT JOIN LATERAL (SELECT pos, id FROM changes
                            WHERE pos < pg_snapshot_xmin(pg_current_snapshot())
                            ORDER BY pos DESC, id DESC LIMIT 1) h ON TRUE
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

/// The endpoint's row.
pub async fn load(conn: &mut PgConnection, name: &str) -> Result<EndpointState, sqlx::Error> {
    crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM relay_endpoints WHERE name = $1"
    )))
    .bind(name)
    .fetch_one(conn)
    .await
}

/// Every endpoint's row, by name.
pub async fn load_all(pool: &PgPool) -> Result<Vec<EndpointState>, sqlx::Error> {
    crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM relay_endpoints ORDER BY name"
    )))
    .fetch_all(crate::db::atomic(pool))
    .await
}

/// Carries out a requested replay: the position moves to the requested one. Returns the
/// new position (`Some(None)`: before the oldest change kept) when there was a request.
pub async fn take_replay(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Option<FeedPosition>>, sqlx::Error> {
    let row: Option<(Option<String>, Option<i64>)> = crate::db::query_as(
        "UPDATE relay_endpoints SET position_pos = replay_pos, position_id = replay_id,
                replay_requested_at = NULL, replay_pos = NULL, replay_id = NULL
         WHERE name = $1 AND replay_requested_at IS NOT NULL
         RETURNING position_pos::text, position_id",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(|(pos, id)| changes::parse_position(pos.as_deref(), id))
        .transpose()
}

/// Records a 2xx for the change at `at` (or, with `delivered` false, that the position
/// moved past changes not of the endpoint's entities). Returns true when a replay is
/// waiting to be carried out.
pub async fn advance(
    conn: &mut PgConnection,
    name: &str,
    at: FeedPosition,
    delivered: bool,
    runner: &str,
) -> Result<bool, sqlx::Error> {
    crate::db::query_scalar(
        "UPDATE relay_endpoints SET position_pos = $2::text::xid8, position_id = $3,
                delivered = delivered + $4, runner = $5,
                failures = CASE WHEN $4 > 0 THEN 0 ELSE failures END,
                last_delivered_at = CASE WHEN $4 > 0 THEN now() ELSE last_delivered_at END
         WHERE name = $1 RETURNING replay_requested_at IS NOT NULL",
    )
    .bind(name)
    .bind(at.pos.to_string())
    .bind(at.id)
    .bind(i64::from(delivered))
    .bind(runner)
    .fetch_one(conn)
    .await
}

/// Records a failed attempt. Returns true when a replay is waiting.
pub async fn failed(
    conn: &mut PgConnection,
    name: &str,
    error: &str,
    runner: &str,
) -> Result<bool, sqlx::Error> {
    crate::db::query_scalar(
        "UPDATE relay_endpoints SET failures = failures + 1, last_error = $2,
                last_error_at = now(), runner = $3
         WHERE name = $1 RETURNING replay_requested_at IS NOT NULL",
    )
    .bind(name)
    .bind(error)
    .bind(runner)
    .fetch_one(conn)
    .await
}

/// Asks the relaying replica to move the endpoint's position to `from` (`None`: before
/// the oldest change kept). False when the endpoint has no row yet.
pub async fn request_replay(
    pool: &PgPool,
    name: &str,
    from: Option<FeedPosition>,
) -> Result<bool, sqlx::Error> {
    let done = crate::db::query(
        "UPDATE relay_endpoints SET replay_requested_at = now(),
                replay_pos = $2::text::xid8, replay_id = $3
         WHERE name = $1",
    )
    .bind(name)
    .bind(from.map(|p| p.pos.to_string()))
    .bind(from.map(|p| p.id))
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How far behind the feed's visible head an endpoint at `after` is: the number of
/// changes of `tables` (all when `None`) it has still to receive, counted up to `cap`, and
/// when the oldest of them was applied.
pub async fn backlog(
    pool: &PgPool,
    after: Option<FeedPosition>,
    tables: Option<&[&str]>,
    cap: i64,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    let after = after.unwrap_or(FeedPosition { pos: 0, id: 0 });
    crate::db::query_as(
        "WITH pending AS (
             SELECT at FROM changes
             WHERE (pos, id) > ($1::text::xid8, $2)
               AND pos < pg_snapshot_xmin(pg_current_snapshot())
               AND ($3::text[] IS NULL OR entity = ANY($3))
             ORDER BY pos, id LIMIT $4)
         SELECT count(*), min(at) FROM pending",
    )
    .bind(after.pos.to_string())
    .bind(after.id)
    .bind(tables)
    .bind(cap)
    .fetch_one(crate::db::atomic(pool))
    .await
}
