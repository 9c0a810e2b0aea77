//! Queries on `webhook_events`, the raw delivery log.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

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
    let inserted: Vec<(i64, Vec<u8>)> = sqlx::query_as(INSERT_EVENTS_SQL)
        .bind(&keys)
        .bind(&types)
        .bind(&bodies)
        .fetch_all(pool)
        .await?;
    let mut ids: HashMap<Vec<u8>, (i64, bool)> = inserted
        .into_iter()
        .map(|(id, key)| (key, (id, false)))
        .collect();
    if ids.len() < keys.len() {
        let missing: Vec<Vec<u8>> = keys.into_iter().filter(|k| !ids.contains_key(k)).collect();
        let existing: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT id, idempotency_key FROM webhook_events WHERE idempotency_key = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(pool)
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
}

/// Locks up to `limit` pending deliveries (oldest first) for the caller's transaction,
/// skipping rows another replica is applying. With `only`, just that delivery.
pub async fn lock_pending(
    conn: &mut PgConnection,
    only: Option<i64>,
    limit: i64,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, body FROM webhook_events
         WHERE outcome = 'pending' AND ($1::bigint IS NULL OR id = $1)
         ORDER BY id
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(only)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Outcomes a stored delivery can be re-applied from (see `partnerstack-sync reapply`).
pub const REAPPLICABLE: [Outcome; 2] = [Outcome::Error, Outcome::UnknownType];

/// Marks the deliveries whose outcome is one of `outcomes` pending again, so the applier
/// applies them anew (after an upgrade taught the service a new event, or once the cause
/// of an error is gone). Returns their ids.
pub async fn requeue(pool: &PgPool, outcomes: &[Outcome]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE webhook_events SET outcome = 'pending'
         WHERE outcome = ANY($1) AND outcome <> 'pending'
         RETURNING id",
    )
    .bind(outcomes)
    .fetch_all(pool)
    .await
}

/// How many of the given deliveries ended with each outcome.
pub async fn count_outcomes(
    pool: &PgPool,
    ids: &[i64],
) -> Result<Vec<(Outcome, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outcome, count(*) FROM webhook_events WHERE id = ANY($1)
         GROUP BY outcome ORDER BY outcome",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// How applying one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRecord {
    pub id: i64,
    pub outcome: Outcome,
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
    let reasons: Vec<Option<String>> = outcomes.iter().map(|o| o.reason.clone()).collect();
    let entities: Vec<Option<&str>> = outcomes.iter().map(|o| o.entity).collect();
    let keys: Vec<Option<String>> = outcomes.iter().map(|o| o.entity_key.clone()).collect();
    sqlx::query(
        "UPDATE webhook_events e
         SET outcome = u.outcome, outcome_reason = u.reason, entity = u.entity,
             entity_key = u.entity_key, applied_at = now()
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
              AS u(id, outcome, reason, entity, entity_key)
         WHERE e.id = u.id",
    )
    .bind(ids)
    .bind(names)
    .bind(reasons)
    .bind(entities)
    .bind(keys)
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
    let done = sqlx::query(
        "WITH oldest AS (SELECT id, received_at, outcome FROM webhook_events ORDER BY id LIMIT $2),
              keep AS (SELECT min(id) AS id FROM oldest
                       WHERE received_at >= $1 OR outcome = 'pending')
         DELETE FROM webhook_events w USING oldest o, keep k
         WHERE w.id = o.id AND (k.id IS NULL OR o.id < k.id)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
