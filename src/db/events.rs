//! Queries on `webhook_events`, the raw delivery log.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

crate::text_enum! {
    /// What became of a stored delivery (`webhook_events.outcome`, whose `CHECK` lists
    /// the same words).
    pub enum Outcome {
        /// Stored, not applied yet (or to be applied again).
        Pending = "pending",
        /// Applied: the row was created or changed.
        Applied = "applied",
        /// The stored row was as new or newer.
        Stale = "stale",
        /// An event the service does not apply; kept as is.
        UnknownType = "unknown_type",
        /// The object could not be applied; the reason says why.
        Error = "error",
        /// The body names no key, and no stored row matches its natural key
        /// (`partner_key`, `customer_key`): nothing was applied; the reconciler brings
        /// the object.
        Unresolved = "unresolved",
        /// Verified mode: PartnerStack does not know the object the delivery names (a
        /// forgery, or an object gone since), so nothing was applied.
        Unconfirmed = "unconfirmed",
    }
}

crate::text_enum! {
    /// Where an applied delivery's state came from.
    pub enum AppliedFrom {
        /// The delivery's own body.
        Body = "body",
        /// PartnerStack's answer to a fetch of the object the delivery named.
        Fetch = "fetch",
    }
}

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// SHA-256 of the raw body.
    pub idempotency_key: [u8; 32],
    /// Normalised event name, when the body names one.
    pub event_type: Option<String>,
    /// The body exactly as received (valid UTF-8: it parsed as JSON).
    pub body: String,
}

/// Where a delivery was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    /// A byte-identical delivery was already stored (or came earlier in the same batch).
    pub duplicate: bool,
}

/// The writer's statement: `$1` keys, `$2` event types, `$3` bodies, as arrays.
pub const INSERT_EVENTS_SQL: &str = "INSERT INTO webhook_events (idempotency_key, event_type, body)
     SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[])
     ON CONFLICT (idempotency_key) DO NOTHING
     RETURNING id, idempotency_key";

/// Stores a batch of deliveries in one statement (committed on return) and says where
/// each went. Byte-identical deliveries are stored once.
pub async fn insert_batch(pool: &PgPool, events: &[NewEvent]) -> Result<Vec<Stored>, sqlx::Error> {
    // Distinct keys, first occurrence wins; later ones in the batch are duplicates.
    let mut first: HashMap<[u8; 32], usize> = HashMap::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if first.insert(e.idempotency_key, i).is_none() {
            keys.push(e.idempotency_key.to_vec());
            types.push(e.event_type.as_deref());
            bodies.push(e.body.as_str());
        }
    }
    let inserted: Vec<(i64, Vec<u8>)> = crate::db::query_as(INSERT_EVENTS_SQL)
        .bind(&keys)
        .bind(&types)
        .bind(&bodies)
        .fetch_all(crate::db::atomic(pool))
        .await?;
    let mut ids: HashMap<Vec<u8>, (i64, bool)> = inserted
        .into_iter()
        .map(|(id, key)| (key, (id, false)))
        .collect();
    if ids.len() < keys.len() {
        let missing: Vec<Vec<u8>> = keys.into_iter().filter(|k| !ids.contains_key(k)).collect();
        let existing: Vec<(i64, Vec<u8>)> = crate::db::query_as(
            "SELECT id, idempotency_key FROM webhook_events WHERE idempotency_key = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(crate::db::atomic(pool))
        .await?;
        ids.extend(existing.into_iter().map(|(id, key)| (key, (id, true))));
    }
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (id, was_stored) = *ids
                .get(e.idempotency_key.as_slice())
                .ok_or_else(|| sqlx::Error::RowNotFound)?;
            let repeat_in_batch = first.get(&e.idempotency_key) != Some(&i);
            Ok(Stored {
                id,
                duplicate: was_stored || repeat_in_batch,
            })
        })
        .collect()
}

/// A stored delivery waiting to be applied.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub body: String,
    pub received_at: DateTime<Utc>,
    /// Earlier attempts to apply it that were put off (waiting for PartnerStack).
    pub attempts: i32,
}

/// The pending deliveries due now: not waiting for a later attempt, not leased by a
/// replica fetching for them. Oldest first, skipping rows another transaction holds.
const DUE: &str = "outcome = 'pending'
    AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    AND (leased_until IS NULL OR leased_until < now())";

/// The statement [`lock_pending`] runs: `$1` the ids it may take (NULL: any), `$2` how
/// many. Run it after [`super::without_sorts`].
pub static LOCK_PENDING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, body, received_at, attempts FROM webhook_events
         WHERE {DUE} AND ($1::bigint[] IS NULL OR id = ANY($1))
         ORDER BY id
         LIMIT $2
         FOR UPDATE SKIP LOCKED"
    )
});

/// Locks up to `limit` due deliveries (see [`DUE`]) for the caller's transaction, or,
/// with `only`, those of them among `only`. Must run inside a transaction (see
/// [`super::without_sorts`]).
pub async fn lock_pending(
    conn: &mut PgConnection,
    only: Option<&[i64]>,
    limit: i64,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    super::without_sorts(conn, true).await?;
    let pending = crate::db::query_as(AssertSqlSafe(LOCK_PENDING_SQL.as_str()))
        .bind(only)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    super::without_sorts(conn, false).await?;
    Ok(pending)
}

/// Leases up to `limit` due deliveries for `lease` (one transaction, committed on return):
/// the caller fetches from PartnerStack for them outside any transaction, and no other
/// replica takes them up meanwhile. A lease that runs out (its holder died) frees them.
pub async fn lease_pending(
    pool: &PgPool,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    // In id order from the index, whatever the statistics say (see [`super::without_sorts`]).
    super::without_sorts(&mut tx, true).await?;
    let leased = crate::db::query_as(AssertSqlSafe(format!(
        "UPDATE webhook_events SET leased_until = now() + $2 * interval '1 millisecond'
         WHERE id IN (SELECT id FROM webhook_events WHERE {DUE}
                      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, body, received_at, attempts"
    )))
    .bind(limit)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(leased)
}

/// Puts deliveries off until `at`, with the reason (they stay pending; the lease ends).
pub async fn defer(
    conn: &mut PgConnection,
    ids: &[i64],
    at: DateTime<Utc>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    crate::db::query(
        "UPDATE webhook_events
         SET next_attempt_at = $2, outcome_reason = $3, attempts = attempts + 1,
             leased_until = NULL
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(at)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Outcomes a stored delivery can be re-applied from (see `partnerstack-sync reapply`).
pub const REAPPLICABLE: [Outcome; 4] = [
    Outcome::Error,
    Outcome::UnknownType,
    Outcome::Unresolved,
    Outcome::Unconfirmed,
];

/// Marks the deliveries whose outcome is one of `outcomes` pending again, so the applier
/// applies them anew (after an upgrade taught the service a new event, or once the cause
/// of an error is gone). Returns their ids.
pub async fn requeue(pool: &PgPool, outcomes: &[Outcome]) -> Result<Vec<i64>, sqlx::Error> {
    crate::db::query_scalar(
        "UPDATE webhook_events
         SET outcome = 'pending', next_attempt_at = NULL, leased_until = NULL, attempts = 0
         WHERE outcome = ANY($1) AND outcome <> 'pending'
         RETURNING id",
    )
    .bind(outcomes)
    .fetch_all(crate::db::atomic(pool))
    .await
}

/// How many of the given deliveries ended with each outcome.
pub async fn count_outcomes(
    pool: &PgPool,
    ids: &[i64],
) -> Result<Vec<(Outcome, i64)>, sqlx::Error> {
    crate::db::query_as(
        "SELECT outcome, count(*) FROM webhook_events WHERE id = ANY($1)
         GROUP BY outcome ORDER BY outcome",
    )
    .bind(ids)
    .fetch_all(crate::db::atomic(pool))
    .await
}

/// How applying one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRecord {
    pub id: i64,
    pub outcome: Outcome,
    /// Where the applied state came from (applied and stale deliveries).
    pub applied_from: Option<AppliedFrom>,
    pub reason: Option<String>,
    /// The table the delivery's object belongs to.
    pub entity: Option<&'static str>,
    pub entity_key: Option<String>,
}

/// Records outcomes (one statement).
pub async fn record_outcomes(
    conn: &mut PgConnection,
    outcomes: &[OutcomeRecord],
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = outcomes.iter().map(|o| o.id).collect();
    let names: Vec<Outcome> = outcomes.iter().map(|o| o.outcome).collect();
    let from: Vec<Option<AppliedFrom>> = outcomes.iter().map(|o| o.applied_from).collect();
    let reasons: Vec<Option<String>> = outcomes.iter().map(|o| o.reason.clone()).collect();
    let entities: Vec<Option<&str>> = outcomes.iter().map(|o| o.entity).collect();
    let keys: Vec<Option<String>> = outcomes.iter().map(|o| o.entity_key.clone()).collect();
    crate::db::query(
        "UPDATE webhook_events e
         SET outcome = u.outcome, outcome_reason = u.reason, entity = u.entity,
             entity_key = u.entity_key, applied_from = u.applied_from, applied_at = now(),
             next_attempt_at = NULL, leased_until = NULL
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[])
              AS u(id, outcome, reason, entity, entity_key, applied_from)
         WHERE e.id = u.id",
    )
    .bind(ids)
    .bind(names)
    .bind(reasons)
    .bind(entities)
    .bind(keys)
    .bind(from)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes up to `batch` of the oldest deliveries received before `cutoff` (oldest first,
/// by id: a prefix of the log, so each round reads only what it deletes). Pending ones
/// are never deleted, nor anything after them. Returns how many were deleted.
pub async fn prune(
    pool: &PgPool,
    cutoff: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let done = crate::db::query(
        "WITH oldest AS (SELECT id, received_at, outcome FROM webhook_events ORDER BY id LIMIT $2),
              keep AS (SELECT min(id) AS id FROM oldest
                       WHERE received_at >= $1 OR outcome = 'pending')
         DELETE FROM webhook_events w USING oldest o, keep k
         WHERE w.id = o.id AND (k.id IS NULL OR o.id < k.id)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(crate::db::atomic(pool))
    .await?;
    Ok(done.rows_affected())
}

/// Deliveries received in one minute with one outcome and event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub outcome: Outcome,
    /// The normalised event name; `None` when the body named none.
    pub event_type: Option<String>,
    pub count: i64,
}

/// Deliveries received since `since`, counted per minute, outcome and event type, from at
/// most the `cap` most recently received or applied of them (so the cost is bounded
/// whatever the rate; the bool is true when the cap was reached and the earliest minutes
/// are incomplete). Reads the `COALESCE(applied_at, received_at)` index: a delivery is
/// applied after it is received, so every delivery received since `since` is in that
/// index's range from `since`.
pub async fn recent_activity(
    pool: &PgPool,
    since: DateTime<Utc>,
    cap: i64,
) -> Result<(Vec<MinuteCount>, bool), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        minute: DateTime<Utc>,
        outcome: Outcome,
        event_type: Option<String>,
        count: i64,
        /// Deliveries read (at most `cap`).
        read: i64,
    }
    let rows: Vec<Row> = crate::db::query_as(
        "WITH recent AS (
             SELECT received_at, outcome, event_type FROM webhook_events
             WHERE COALESCE(applied_at, received_at) >= $1
             ORDER BY COALESCE(applied_at, received_at) DESC
             LIMIT $2)
         SELECT date_trunc('minute', received_at) AS minute, outcome, event_type, count(*) AS count,
                (SELECT count(*) FROM recent) AS read
         FROM recent WHERE received_at >= $1
         GROUP BY 1, 2, 3 ORDER BY 1 DESC, 2, 3",
    )
    .bind(since)
    .bind(cap)
    .fetch_all(crate::db::atomic(pool))
    .await?;
    let capped = rows.first().is_some_and(|r| r.read >= cap);
    let counts = rows
        .into_iter()
        .map(|r| MinuteCount {
            minute: r.minute,
            outcome: r.outcome,
            event_type: r.event_type,
            count: r.count,
        })
        .collect();
    Ok((counts, capped))
}

/// How many stored deliveries have `outcome`, counted up to `cap` (an index range
/// read of at most `cap` entries).
pub async fn count_outcome(pool: &PgPool, outcome: Outcome, cap: i64) -> Result<i64, sqlx::Error> {
    crate::db::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE outcome = $1 LIMIT $2) s",
    )
    .bind(outcome)
    .bind(cap)
    .fetch_one(crate::db::atomic(pool))
    .await
}

/// When the oldest delivery still pending was received (`None`: nothing pending).
pub async fn oldest_pending(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    crate::db::query_scalar(
        "SELECT received_at FROM webhook_events WHERE outcome = 'pending' ORDER BY id LIMIT 1",
    )
    .fetch_optional(crate::db::atomic(pool))
    .await
}
