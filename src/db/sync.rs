//! Queries on the reconciler's state: `sync_streams` (per-stream schedule, checkpoint and
//! results) and `sync_seen` (keys a full scan has read, for deletion detection).
//!
//! Every write that belongs to a pass is conditioned on its `pass_id`, so a writer whose
//! pass was superseded changes nothing.

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, FromRow, PgConnection, PgPool, Row};
use utoipa::ToSchema;

use crate::columns;
use crate::db::changes;

crate::text_enum! {
    /// The kinds of pass (see `config/default.toml`, `[reconcile]`).
    pub enum PassKind {
        /// Everything, no filter; afterwards, rows not seen are marked deleted.
        Full = "full",
        /// Objects updated since the watermark minus the overlap.
        Incremental = "incremental",
        /// Objects created within the window (streams without an update filter).
        Window = "window",
    }
}

crate::text_enum! {
    /// How a pass ended.
    pub enum PassStatus {
        Ok = "ok",
        Error = "error",
    }
}

/// What a pass did (or has done so far), in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct PassCounts {
    pub pages: i64,
    /// Objects read from PartnerStack.
    pub seen: i64,
    /// Rows created or changed (deletions included).
    pub changed: i64,
    /// Changed rows no webhook had delivered (zero during a stream's first, backfilling
    /// pass).
    pub repairs: i64,
    /// Rows marked deleted because a full scan no longer found them.
    pub deleted: i64,
    /// Objects PartnerStack sent that could not be read, or that the database refused:
    /// set aside (`set_aside`), the rest of their page applied.
    pub invalid: i64,
    /// HTTP requests sent to PartnerStack, retries included.
    pub requests: i64,
    /// Keys a full scan recorded in `sync_seen` (checked before marking deletions).
    #[serde(skip)]
    pub marked: i64,
    /// Objects (among `invalid`) whose key could not be read either.
    #[serde(skip)]
    pub unkeyed: i64,
}

impl PassCounts {
    /// Adds `other`'s numbers to these.
    pub fn add(&mut self, other: &PassCounts) {
        self.pages += other.pages;
        self.seen += other.seen;
        self.changed += other.changed;
        self.repairs += other.repairs;
        self.deleted += other.deleted;
        self.invalid += other.invalid;
        self.requests += other.requests;
        self.marked += other.marked;
        self.unkeyed += other.unkeyed;
    }
}

/// One stream's row.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub stream: String,
    pub watermark: Option<DateTime<Utc>>,
    pub last_full_at: Option<DateTime<Utc>>,
    /// When the last completed full scan finished, and its pages: they plan the next.
    pub last_full_finished_at: Option<DateTime<Utc>>,
    pub last_full_pages: i64,
    pub pass_id: Option<i64>,
    pub pass_kind: Option<PassKind>,
    pub pass_started_at: Option<DateTime<Utc>>,
    pub pass_min_updated: Option<DateTime<Utc>>,
    pub pass_min_created: Option<DateTime<Utc>>,
    pub pass_cursor: Option<String>,
    /// The pass under way, so far (`deleted` is known only when it ends).
    pub pass: PassCounts,
    pub last_kind: Option<PassKind>,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub last_status: Option<PassStatus>,
    pub last_error: Option<String>,
    /// The last pass that ended (`marked` and `unkeyed` are not kept).
    pub last: PassCounts,
    pub total_repairs: i64,
    pub failures: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub requested_at: Option<DateTime<Utc>>,
    pub requested_full: bool,
    pub runner: Option<String>,
}

impl<'r> FromRow<'r, PgRow> for StreamState {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let n = |name: &str| row.try_get::<i64, _>(name);
        Ok(StreamState {
            stream: row.try_get("stream")?,
            watermark: row.try_get("watermark")?,
            last_full_at: row.try_get("last_full_at")?,
            last_full_finished_at: row.try_get("last_full_finished_at")?,
            last_full_pages: n("last_full_pages")?,
            pass_id: row.try_get("pass_id")?,
            pass_kind: row.try_get("pass_kind")?,
            pass_started_at: row.try_get("pass_started_at")?,
            pass_min_updated: row.try_get("pass_min_updated")?,
            pass_min_created: row.try_get("pass_min_created")?,
            pass_cursor: row.try_get("pass_cursor")?,
            pass: PassCounts {
                pages: n("pass_pages")?,
                seen: n("pass_seen")?,
                changed: n("pass_changed")?,
                repairs: n("pass_repairs")?,
                deleted: 0,
                invalid: n("pass_invalid")?,
                requests: n("pass_requests")?,
                marked: n("pass_marked")?,
                unkeyed: n("pass_unkeyed")?,
            },
            last_kind: row.try_get("last_kind")?,
            last_started_at: row.try_get("last_started_at")?,
            last_finished_at: row.try_get("last_finished_at")?,
            last_status: row.try_get("last_status")?,
            last_error: row.try_get("last_error")?,
            last: PassCounts {
                pages: n("last_pages")?,
                seen: n("last_seen")?,
                changed: n("last_changed")?,
                repairs: n("last_repairs")?,
                deleted: n("last_deleted")?,
                invalid: n("last_invalid")?,
                requests: n("last_requests")?,
                marked: 0,
                unkeyed: 0,
            },
            total_repairs: row.try_get("total_repairs")?,
            failures: row.try_get("failures")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            requested_at: row.try_get("requested_at")?,
            requested_full: row.try_get("requested_full")?,
            runner: row.try_get("runner")?,
        })
    }
}

/// Creates the rows of streams that have none yet.
pub async fn ensure_streams(conn: &mut PgConnection, streams: &[&str]) -> Result<(), sqlx::Error> {
    crate::db::query(
        "INSERT INTO sync_streams (stream) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(streams)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn load(conn: &mut PgConnection, stream: &str) -> Result<StreamState, sqlx::Error> {
    crate::db::query_as("SELECT * FROM sync_streams WHERE stream = $1")
        .bind(stream)
        .fetch_one(conn)
        .await
}

/// Every stream's row, by name.
pub async fn load_all(pool: &PgPool) -> Result<Vec<StreamState>, sqlx::Error> {
    crate::db::query_as("SELECT * FROM sync_streams ORDER BY stream")
        .fetch_all(crate::db::atomic(pool))
        .await
}

/// The filter a new pass reads with.
#[derive(Debug, Clone, Copy)]
pub struct PassPlan {
    pub kind: PassKind,
    pub min_updated: Option<DateTime<Utc>>,
    pub min_created: Option<DateTime<Utc>>,
}

/// Starts a new pass (dropping any checkpoint and seen keys of an earlier one) and
/// returns its id.
pub async fn begin_pass(
    conn: &mut PgConnection,
    stream: &str,
    plan: PassPlan,
    runner: &str,
) -> Result<(i64, DateTime<Utc>), sqlx::Error> {
    crate::db::query("DELETE FROM sync_seen WHERE stream = $1")
        .bind(stream)
        .execute(&mut *conn)
        .await?;
    crate::db::query_as(
        "UPDATE sync_streams SET
             pass_id = nextval('sync_pass_ids'), pass_kind = $2, pass_started_at = now(),
             pass_min_updated = $3, pass_min_created = $4, pass_cursor = NULL,
             pass_pages = 0, pass_seen = 0, pass_changed = 0, pass_repairs = 0, pass_invalid = 0,
             pass_marked = 0, pass_unkeyed = 0, pass_requests = 0,
             requested_at = NULL, requested_full = false,
             runner = $5
         WHERE stream = $1
         RETURNING pass_id, pass_started_at",
    )
    .bind(stream)
    .bind(plan.kind)
    .bind(plan.min_updated)
    .bind(plan.min_created)
    .bind(runner)
    .fetch_one(conn)
    .await
}

/// Takes up an unfinished pass: it answers any pending request (a resumed full scan
/// answers a request for one; a request for a full scan never resumes another kind), and
/// `runner` now runs it. False when the pass is no longer current.
pub async fn resume_pass(
    conn: &mut PgConnection,
    stream: &str,
    pass_id: i64,
    runner: &str,
) -> Result<bool, sqlx::Error> {
    let updated = crate::db::query(
        "UPDATE sync_streams SET requested_at = NULL, requested_full = false, runner = $3
         WHERE stream = $1 AND pass_id = $2",
    )
    .bind(stream)
    .bind(pass_id)
    .bind(runner)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Moves a pass's checkpoint past the pages `page` counts (what they added to the pass).
/// False when the pass is no longer current. `next_cursor` is `None` only after the last
/// page, so a pass with pages and no cursor has read everything.
pub async fn record_page(
    conn: &mut PgConnection,
    stream: &str,
    pass_id: i64,
    next_cursor: Option<&str>,
    page: &PassCounts,
) -> Result<bool, sqlx::Error> {
    let updated = crate::db::query(
        "UPDATE sync_streams SET
             pass_cursor = $3, pass_pages = pass_pages + $8, pass_seen = pass_seen + $4,
             pass_changed = pass_changed + $5, pass_repairs = pass_repairs + $6,
             pass_invalid = pass_invalid + $7, pass_marked = pass_marked + $9,
             pass_unkeyed = pass_unkeyed + $10, pass_requests = pass_requests + $11
         WHERE stream = $1 AND pass_id = $2",
    )
    .bind(stream)
    .bind(pass_id)
    .bind(next_cursor)
    .bind(page.seen)
    .bind(page.changed)
    .bind(page.repairs)
    .bind(page.invalid)
    .bind(page.pages)
    .bind(page.marked)
    .bind(page.unkeyed)
    .bind(page.requests)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Remembers keys a full scan has read; returns how many were new to this pass.
pub async fn mark_seen(
    conn: &mut PgConnection,
    stream: &str,
    pass_id: i64,
    keys: &[&str],
) -> Result<i64, sqlx::Error> {
    let done = crate::db::query(
        "INSERT INTO sync_seen (stream, key, pass_id)
         SELECT $1, k, $2 FROM unnest($3::text[]) AS k
         ON CONFLICT (stream, key) DO NOTHING",
    )
    .bind(stream)
    .bind(pass_id)
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() as i64)
}

/// What deletion detection found after a full scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vanished {
    /// Live rows the scan did not see (and that nothing touched since it began).
    pub candidates: i64,
    /// Live rows in the table.
    pub live: i64,
    /// Whether they were marked deleted (false when over the guard, or when the record of
    /// seen keys is incomplete).
    pub marked: bool,
    /// The record of seen keys was lost (a database crash empties `sync_seen`).
    pub lost: bool,
}

/// Marks rows a completed full scan did not see as deleted, unless that would be more
/// than `max_fraction` of the live rows, or the record of what the scan saw is not whole.
/// Rows applied after the scan began are spared: they may have been created behind the
/// scan's cursor.
pub async fn mark_vanished(
    conn: &mut PgConnection,
    entity: Entity,
    pass_id: i64,
    scan_started_at: DateTime<Utc>,
    max_fraction: f64,
) -> Result<Vanished, sqlx::Error> {
    let (recorded, marked): (i64, i64) = crate::db::query_as(
        "SELECT (SELECT count(*) FROM sync_seen WHERE stream = $1 AND pass_id = $2),
                (SELECT pass_marked FROM sync_streams WHERE stream = $1)",
    )
    .bind(entity.stream())
    .bind(pass_id)
    .fetch_one(&mut *conn)
    .await?;
    if recorded != marked {
        return Ok(Vanished {
            candidates: 0,
            live: 0,
            marked: false,
            lost: true,
        });
    }
    let table = columns::table(entity);
    let unseen = format!(
        "FROM {table} t WHERE t.deleted_at IS NULL AND t.synced_at < $3
           AND NOT EXISTS (SELECT 1 FROM sync_seen s
                           WHERE s.stream = $1 AND s.pass_id = $2 AND s.key = t.key)"
    );
    let (candidates, live): (i64, i64) = crate::db::query_as(AssertSqlSafe(format!(
        "SELECT (SELECT count(*) {unseen}), (SELECT count(*) FROM {table} WHERE deleted_at IS NULL)"
    )))
    .bind(entity.stream())
    .bind(pass_id)
    .bind(scan_started_at)
    .fetch_one(&mut *conn)
    .await?;
    if candidates == 0 {
        return Ok(Vanished {
            candidates,
            live,
            marked: true,
            lost: false,
        });
    }
    if candidates as f64 > max_fraction * live as f64 {
        return Ok(Vanished {
            candidates,
            live,
            marked: false,
            lost: false,
        });
    }
    // The rows marked, with their states, for the change log (same transaction).
    let rows = crate::db::query(AssertSqlSafe(format!(
        "UPDATE {table} AS t SET deleted_at = now(), source = 'reconcile', synced_at = now()
         WHERE t.key IN (SELECT t.key {unseen}) RETURNING t.key, {}",
        changes::snapshot_sql(entity)
    )))
    .bind(entity.stream())
    .bind(pass_id)
    .bind(scan_started_at)
    .fetch_all(&mut *conn)
    .await?;
    let marked = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, changes::snapshot_of(row, entity, 1)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    changes::record_marked_deleted(conn, "reconcile", entity, &marked).await?;
    Ok(Vanished {
        candidates,
        live,
        marked: true,
        lost: false,
    })
}

/// How a completed pass ended.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub full: bool,
    /// Rows marked deleted at the end.
    pub deleted: i64,
    /// Repairs found at the end (those deletions, unless backfilling), added to the
    /// pass's own.
    pub extra_repairs: i64,
    /// Requests not recorded with a page (the empty answer that ends a stream), added to
    /// the pass's own.
    pub requests: i64,
    /// A completed pass can still carry a problem to report (e.g. the deletion guard).
    pub warning: Option<&'a str>,
}

/// Closes a completed pass: the watermark moves to the pass's start, results move to
/// `last_*`, the checkpoint is cleared. False when the pass is no longer current.
pub async fn finish_pass(
    conn: &mut PgConnection,
    stream: &str,
    pass_id: i64,
    finish: Finish<'_>,
) -> Result<bool, sqlx::Error> {
    crate::db::query("DELETE FROM sync_seen WHERE stream = $1")
        .bind(stream)
        .execute(&mut *conn)
        .await?;
    let updated = crate::db::query(
        "UPDATE sync_streams SET
             watermark = pass_started_at,
             last_full_at = CASE WHEN $3 THEN pass_started_at ELSE last_full_at END,
             last_full_finished_at = CASE WHEN $3 THEN now() ELSE last_full_finished_at END,
             last_full_pages = CASE WHEN $3 THEN pass_pages ELSE last_full_pages END,
             last_requests = pass_requests + $7,
             last_kind = pass_kind, last_started_at = pass_started_at, last_finished_at = now(),
             last_status = CASE WHEN $6::text IS NULL THEN 'ok' ELSE 'error' END,
             last_error = $6,
             last_pages = pass_pages, last_seen = pass_seen, last_changed = pass_changed + $4,
             last_repairs = pass_repairs + $5, last_deleted = $4, last_invalid = pass_invalid,
             total_repairs = total_repairs + pass_repairs + $5,
             failures = 0, next_attempt_at = NULL,
             pass_id = NULL, pass_kind = NULL, pass_started_at = NULL, pass_min_updated = NULL,
             pass_min_created = NULL, pass_cursor = NULL, pass_pages = 0, pass_seen = 0,
             pass_changed = 0, pass_repairs = 0, pass_invalid = 0, pass_marked = 0,
             pass_unkeyed = 0, pass_requests = 0
         WHERE stream = $1 AND pass_id = $2",
    )
    .bind(stream)
    .bind(pass_id)
    .bind(finish.full)
    .bind(finish.deleted)
    .bind(finish.extra_repairs)
    .bind(finish.warning)
    .bind(finish.requests)
    .execute(&mut *conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records a failed attempt and when to try again. With `abandon`, the pass's checkpoint
/// is dropped (the next attempt starts afresh); otherwise it is kept for a resume.
pub async fn fail_pass(
    conn: &mut PgConnection,
    stream: &str,
    error: &str,
    abandon: bool,
    retry_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        "UPDATE sync_streams SET
             last_kind = COALESCE(pass_kind, last_kind),
             last_started_at = COALESCE(pass_started_at, last_started_at),
             last_finished_at = now(), last_status = 'error', last_error = $2,
             last_pages = pass_pages, last_seen = pass_seen, last_changed = pass_changed,
             last_repairs = pass_repairs, last_deleted = 0, last_invalid = pass_invalid,
             last_requests = pass_requests,
             total_repairs = total_repairs + CASE WHEN $3 THEN pass_repairs ELSE 0 END,
             failures = failures + 1, next_attempt_at = $4,
             pass_id = CASE WHEN $3 THEN NULL ELSE pass_id END,
             pass_kind = CASE WHEN $3 THEN NULL ELSE pass_kind END,
             pass_started_at = CASE WHEN $3 THEN NULL ELSE pass_started_at END,
             pass_cursor = CASE WHEN $3 THEN NULL ELSE pass_cursor END,
             pass_pages = CASE WHEN $3 THEN 0 ELSE pass_pages END,
             pass_seen = CASE WHEN $3 THEN 0 ELSE pass_seen END,
             pass_changed = CASE WHEN $3 THEN 0 ELSE pass_changed END,
             pass_repairs = CASE WHEN $3 THEN 0 ELSE pass_repairs END,
             pass_invalid = CASE WHEN $3 THEN 0 ELSE pass_invalid END,
             pass_marked = CASE WHEN $3 THEN 0 ELSE pass_marked END,
             pass_unkeyed = CASE WHEN $3 THEN 0 ELSE pass_unkeyed END,
             pass_requests = CASE WHEN $3 THEN 0 ELSE pass_requests END
         WHERE stream = $1",
    )
    .bind(stream)
    .bind(error)
    .bind(abandon)
    .bind(retry_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Asks the leader to run a stream now. False when the stream has no row (not enabled).
pub async fn request(pool: &PgPool, stream: &str, full: bool) -> Result<bool, sqlx::Error> {
    let updated = crate::db::query(
        "UPDATE sync_streams SET requested_at = now(), requested_full = requested_full OR $2
         WHERE stream = $1",
    )
    .bind(stream)
    .bind(full)
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(updated.rows_affected() == 1)
}
