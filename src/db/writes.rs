//! Queries on `writes`, the outbox of writes to PartnerStack (see
//! `migrations/0008_writes.sql` for the life of a row).
//!
//! A worker claims rows (raising `attempts`: the claim is its fencing token), marks a row
//! in doubt before each send, and records the outcome only while its claim still holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

crate::text_enum! {
    /// What a write asks of PartnerStack (`writes.kind`).
    pub enum WriteKind {
        /// `POST /customers`.
        CreateCustomer = "create_customer",
        /// `PATCH /customers/{customer_key}`.
        UpdateCustomer = "update_customer",
        /// `POST /transactions`.
        CreateTransaction = "create_transaction",
        /// `DELETE /transactions/{key}`.
        DeleteTransaction = "delete_transaction",
    }
}

crate::text_enum! {
    /// Where a write stands (`writes.status`).
    pub enum WriteStatus {
        /// Accepted, not finished: waiting for its turn, being sent, or retried later.
        Pending = "pending",
        /// PartnerStack has the effect the write asked for.
        Succeeded = "succeeded",
        /// PartnerStack refused it (its status and message are kept); `retry` sends it
        /// again.
        Failed = "failed",
    }
}

crate::text_enum! {
    /// How a finished write ended (`writes.resolution`).
    pub enum Resolution {
        /// PartnerStack created the object.
        Created = "created",
        /// PartnerStack changed the object.
        Updated = "updated",
        /// PartnerStack deleted the object.
        Deleted = "deleted",
        /// PartnerStack already had the object, with the fields asked for (a refused
        /// create that a look-up found as asked).
        Existed = "existed",
        /// An earlier attempt's answer was lost; a look-up found that it had landed (the
        /// object, with the fields asked for).
        Found = "found",
        /// A delete whose earlier answer was lost found nothing left to delete.
        Absent = "absent",
        /// PartnerStack refused the write.
        Refused = "refused",
    }
}

/// A duration in whole milliseconds, as the statements here take them (an `INTERVAL`
/// cannot hold nanoseconds).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A write to accept.
#[derive(Debug, Clone)]
pub struct NewWrite {
    pub kind: WriteKind,
    pub idempotency_key: Option<String>,
    pub request_digest: String,
    pub request: Value,
    pub object_key: String,
    pub customer_refs: Vec<String>,
}

/// What accepting a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored as a new write.
    New(i64),
    /// A write with the same idempotency key and the same request exists.
    Repeat(i64),
    /// A write with the same idempotency key and another request exists.
    Conflict(i64),
}

/// The statement accepting a write: `$1` kind, `$2` idempotency key, `$3` request
/// digest, `$4` request, `$5` object key, `$6` customer refs, `$7` the API client.
pub const ACCEPT_SQL: &str =
    "INSERT INTO writes (kind, idempotency_key, request_digest, request, object_key, customer_refs,
                         client)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (idempotency_key) DO NOTHING
     RETURNING id";

/// Stores `write` made by the API client `client` (committed on return), unless a write
/// with its idempotency key exists (a repeat keeps the first one's client).
pub async fn accept(
    pool: &PgPool,
    write: &NewWrite,
    client: Option<&str>,
) -> Result<Accepted, sqlx::Error> {
    let inserted: Option<i64> = crate::db::query_scalar(ACCEPT_SQL)
        .bind(write.kind)
        .bind(&write.idempotency_key)
        .bind(&write.request_digest)
        .bind(&write.request)
        .bind(&write.object_key)
        .bind(&write.customer_refs)
        .bind(client)
        .fetch_optional(crate::db::atomic(pool))
        .await?;
    if let Some(id) = inserted {
        return Ok(Accepted::New(id));
    }
    // The conflicting row committed, but perhaps after this statement's snapshot: read
    // it with a new one.
    let existing =
        crate::db::query("SELECT id, request_digest FROM writes WHERE idempotency_key = $1")
            .bind(&write.idempotency_key)
            .fetch_one(crate::db::atomic(pool))
            .await?;
    let id: i64 = existing.try_get("id")?;
    let digest: String = existing.try_get("request_digest")?;
    Ok(if digest == write.request_digest {
        Accepted::Repeat(id)
    } else {
        Accepted::Conflict(id)
    })
}

/// A write's status, if it exists.
pub async fn status(pool: &PgPool, id: i64) -> Result<Option<WriteStatus>, sqlx::Error> {
    crate::db::query_scalar("SELECT status FROM writes WHERE id = $1")
        .bind(id)
        .fetch_optional(crate::db::atomic(pool))
        .await
}

/// Makes a failed write pending again (`POST /v1/writes/{id}/retry`). `None` when there is
/// no such write; otherwise its status before (only a failed one changes).
pub async fn retry(pool: &PgPool, id: i64) -> Result<Option<WriteStatus>, sqlx::Error> {
    crate::db::query_scalar(
        "WITH before AS (SELECT id, status FROM writes WHERE id = $1 FOR UPDATE),
         changed AS (
             UPDATE writes w SET status = 'pending', resolution = NULL, result = NULL,
                 error_status = NULL, error_message = NULL, finished_at = NULL,
                 next_attempt_at = now(), leased_until = NULL, updated_at = now()
             FROM before WHERE w.id = before.id AND before.status = 'failed')
         SELECT status FROM before",
    )
    .bind(id)
    .fetch_optional(crate::db::atomic(pool))
    .await
}

/// A write claimed by a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: WriteKind,
    pub request: Value,
    pub object_key: String,
    /// The claim: outcomes are recorded only while the row's `attempts` equals it.
    pub attempts: i32,
    /// An earlier attempt may have landed.
    pub in_doubt: bool,
    /// The API client that made it.
    pub client: Option<String>,
    /// When it was last sent.
    pub last_sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` due writes for `lease`, oldest first, skipping writes another
/// worker holds and writes about a customer with an earlier write still pending. The
/// pending writes are walked in id order from the index and the walk stops after `limit`
/// claims ([`super::without_sorts`]): with sorting, every pending write was checked for
/// earlier writes of its customer before the oldest were picked, so each claim cost time
/// in proportion to the backlog (sending fell from about 280 to 94 writes/s with 26,000
/// pending).
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    super::without_sorts(&mut tx, true).await?;
    let rows = crate::db::query(
        "WITH next AS (
             SELECT w.id FROM writes w
             WHERE w.status = 'pending' AND w.next_attempt_at <= now()
               AND (w.leased_until IS NULL OR w.leased_until < now())
               AND NOT EXISTS (
                   SELECT 1 FROM writes e
                   WHERE e.status = 'pending' AND e.customer_refs && w.customer_refs
                     AND e.id < w.id)
             ORDER BY w.id
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         UPDATE writes w
         SET attempts = w.attempts + 1, leased_until = now() + $2 * interval '1 millisecond',
             updated_at = now()
         FROM next WHERE w.id = next.id
         RETURNING w.id, w.kind, w.request, w.object_key, w.attempts, w.in_doubt,
                   w.client, w.last_sent_at, w.created_at",
    )
    .bind(limit)
    .bind(millis(lease))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut claimed = rows
        .iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                request: r.try_get("request")?,
                object_key: r.try_get("object_key")?,
                attempts: r.try_get("attempts")?,
                in_doubt: r.try_get("in_doubt")?,
                client: r.try_get("client")?,
                last_sent_at: r.try_get("last_sent_at")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Extends a claim's lease. False when the claim no longer holds.
pub async fn renew(pool: &PgPool, claim: &Claimed, lease: Duration) -> Result<bool, sqlx::Error> {
    let done = crate::db::query(
        "UPDATE writes SET leased_until = now() + $3 * interval '1 millisecond'
         WHERE id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(claim.id)
    .bind(claim.attempts)
    .bind(millis(lease))
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a claimed write in doubt, and sent now, before it is sent (committed on return):
/// if the worker dies or its answer is lost, the next claim looks before sending again. False when the
/// claim no longer holds (nothing must be sent then).
pub async fn sending(pool: &PgPool, claim: &Claimed) -> Result<bool, sqlx::Error> {
    let done = crate::db::query(
        "UPDATE writes SET in_doubt = true, last_sent_at = now(), updated_at = now()
         WHERE id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(claim.id)
    .bind(claim.attempts)
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How an attempt ended, for [`finish`] and [`postpone`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: WriteStatus,
    pub resolution: Resolution,
    pub result: Option<Value>,
    pub error_status: Option<u16>,
    pub error_message: Option<String>,
    /// Requests this attempt sent.
    pub requests: u64,
}

/// Records a finished write in `conn`'s transaction (the caller applies the result in the
/// same one). False when the claim no longer holds.
pub async fn finish(
    conn: &mut PgConnection,
    claim: &Claimed,
    finished: &Finished,
) -> Result<bool, sqlx::Error> {
    let done = crate::db::query(
        "UPDATE writes SET status = $3, resolution = $4, result = $5, error_status = $6,
             error_message = $7, upstream_requests = upstream_requests + $8,
             in_doubt = false, leased_until = NULL, finished_at = now(), updated_at = now()
         WHERE id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(claim.id)
    .bind(claim.attempts)
    .bind(finished.status)
    .bind(finished.resolution)
    .bind(&finished.result)
    .bind(finished.error_status.map(i32::from))
    .bind(&finished.error_message)
    .bind(i64::try_from(finished.requests).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Leaves a claimed write pending, to be claimed again after `delay`. `in_doubt`: whether
/// an attempt so far may have landed. `error` says why (shown while it stays pending).
pub async fn postpone(
    pool: &PgPool,
    claim: &Claimed,
    delay: Duration,
    in_doubt: bool,
    error_status: Option<u16>,
    error: &str,
    requests: u64,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        "UPDATE writes SET next_attempt_at = now() + $3 * interval '1 millisecond',
             leased_until = NULL,
             in_doubt = $4,
             error_status = $5, error_message = $6,
             upstream_requests = upstream_requests + $7, updated_at = now()
         WHERE id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(claim.id)
    .bind(claim.attempts)
    .bind(millis(delay))
    .bind(in_doubt)
    .bind(error_status.map(i32::from))
    .bind(error)
    .bind(i64::try_from(requests).unwrap_or(i64::MAX))
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(())
}

/// When a write of this outbox last created the customer with `customer_key`, if that was
/// within `window` (PartnerStack may not know a new customer for minutes).
pub async fn customer_created_within(
    pool: &PgPool,
    customer_key: &str,
    window: Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    crate::db::query_scalar(
        "SELECT max(finished_at) FROM writes
         WHERE kind = 'create_customer' AND status = 'succeeded' AND object_key = $1
           AND finished_at > now() - $2 * interval '1 millisecond'",
    )
    .bind(customer_key)
    .bind(millis(window))
    .fetch_one(crate::db::atomic(pool))
    .await
}

/// The outbox at a glance (the status page): counts and times only.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub pending: i64,
    /// Pending writes an earlier attempt of which may have landed (being looked for).
    pub in_doubt: i64,
    pub failed: i64,
    /// Writes that succeeded within the last hour.
    pub succeeded_last_hour: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// Reads [`Summary`] in one statement (pending and failed rows by their indexes).
pub async fn summary(pool: &PgPool) -> Result<Summary, sqlx::Error> {
    let row = crate::db::query(
        "SELECT
             (SELECT count(*) FROM writes WHERE status = 'pending') AS pending,
             (SELECT count(*) FROM writes WHERE status = 'pending' AND in_doubt) AS in_doubt,
             (SELECT count(*) FROM writes WHERE status = 'failed') AS failed,
             (SELECT count(*) FROM writes WHERE status = 'succeeded'
                  AND finished_at > now() - interval '1 hour') AS succeeded_last_hour,
             (SELECT min(created_at) FROM writes WHERE status = 'pending') AS oldest_pending",
    )
    .fetch_one(crate::db::atomic(pool))
    .await?;
    Ok(Summary {
        pending: row.try_get("pending")?,
        in_doubt: row.try_get("in_doubt")?,
        failed: row.try_get("failed")?,
        succeeded_last_hour: row.try_get("succeeded_last_hour")?,
        oldest_pending: row.try_get("oldest_pending")?,
    })
}

/// Pending writes and the age of the oldest, in seconds.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let row = crate::db::query(
        "SELECT count(*) AS pending,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest
         FROM writes WHERE status = 'pending'",
    )
    .fetch_one(crate::db::atomic(pool))
    .await?;
    Ok((row.try_get("pending")?, row.try_get("oldest")?))
}

/// Deletes up to `batch` writes finished before `cutoff` (retention); how many.
pub async fn prune(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    let done = crate::db::query(
        "DELETE FROM writes WHERE id IN (
             SELECT id FROM writes
             WHERE status <> 'pending' AND finished_at < $1
             ORDER BY finished_at LIMIT $2)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(done.rows_affected())
}
