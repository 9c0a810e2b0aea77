//! Applies stored deliveries to the entity tables, through the one door.
//!
//! Works from the database, not from memory: it takes `pending` deliveries (oldest first,
//! `FOR UPDATE SKIP LOCKED`, so replicas share the work), applies them and records each
//! outcome in the same transaction. Deliveries stored just before a crash are therefore
//! applied after the restart, and re-applying is harmless (the newer-wins rule makes it
//! `stale`). A delivery that cannot be applied (unknown event, unexpected shape) keeps
//! its raw body and gets an outcome with the reason.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use partnerstack::webhook;

use crate::apply::{self, Applied, Observation, Source};
use crate::columns;
use crate::db::events::{self, Outcome, OutcomeRecord, PendingEvent};
use crate::db::is_transient_error;
use crate::telemetry::{Metrics, OutcomeLabel};

/// Deliveries applied per transaction.
const BATCH: i64 = 256;
/// How often pending deliveries are looked for without a nudge (deliveries stored by
/// another replica that died, or left by an earlier error).
const POLL: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled, then applies what is left and returns.
pub async fn run(
    pool: PgPool,
    stored: Arc<Notify>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut failures = 0u32;
    loop {
        match drain(&pool, &metrics).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "applying stored deliveries failed; will retry");
            }
        }
        // Back off while the database is failing, up to 30 s.
        let wait = POLL * 2u32.saturating_pow(failures.min(5)).min(30);
        tokio::select! {
            _ = stored.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
    }
    if let Err(e) = drain(&pool, &metrics).await {
        tracing::warn!(error = %e, "stored deliveries left pending at shutdown; they are applied at the next start");
    }
}

/// Applies pending deliveries until none are left.
pub async fn drain(pool: &PgPool, metrics: &Metrics) -> Result<(), sqlx::Error> {
    while apply_pending(pool, metrics).await? > 0 {}
    Ok(())
}

/// Applies one batch of pending deliveries; returns how many were handled.
pub async fn apply_pending(pool: &PgPool, metrics: &Metrics) -> Result<usize, sqlx::Error> {
    match apply_events(pool, None, BATCH, metrics).await? {
        Step::Done(n) => Ok(n),
        // One bad object made the database reject the batch: apply the deliveries one by
        // one, so only the culprit is marked.
        Step::Rejected { ids, .. } => {
            for &id in &ids {
                if let Step::Rejected { error, .. } =
                    apply_events(pool, Some(id), 1, metrics).await?
                {
                    mark_error(pool, id, &error, metrics).await?;
                }
            }
            Ok(ids.len())
        }
    }
}

enum Step {
    Done(usize),
    /// The database refused the data (not a connection problem); nothing was committed.
    Rejected {
        ids: Vec<i64>,
        error: sqlx::Error,
    },
}

#[tracing::instrument(name = "apply_batch", skip_all, fields(limit = limit, only = ?only))]
async fn apply_events(
    pool: &PgPool,
    only: Option<i64>,
    limit: i64,
    metrics: &Metrics,
) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let pending = events::lock_pending(&mut tx, only, limit).await?;
    if pending.is_empty() {
        tx.commit().await?;
        return Ok(Step::Done(0));
    }
    let mut outcomes = Vec::with_capacity(pending.len());
    let mut observations = Vec::with_capacity(pending.len());
    let mut observed_at = Vec::with_capacity(pending.len());
    for event in &pending {
        match interpret(event) {
            Ok(o) => {
                observed_at.push(outcomes.len());
                outcomes.push(OutcomeRecord {
                    id: event.id,
                    outcome: Outcome::Applied,
                    reason: None,
                    entity: Some(columns::table(o.entity)),
                    entity_key: Some(o.key.clone()),
                });
                observations.push(o);
            }
            Err(outcome) => outcomes.push(outcome),
        }
    }
    let results = match apply::apply(&mut tx, Source::Webhook, &observations).await {
        Ok(r) => r,
        Err(e) if is_transient_error(&e) => return Err(e),
        Err(error) => {
            tx.rollback().await?;
            let ids = pending.iter().map(|e| e.id).collect();
            return Ok(Step::Rejected { ids, error });
        }
    };
    for (&slot, result) in observed_at.iter().zip(results) {
        if result == Applied::Stale {
            outcomes[slot].outcome = Outcome::Stale;
            outcomes[slot].reason = Some("the stored row is as new or newer".into());
        }
    }
    events::record_outcomes(&mut tx, &outcomes).await?;
    tx.commit().await?;
    for o in &outcomes {
        metrics
            .webhook_events_applied
            .get_or_create(&OutcomeLabel { outcome: o.outcome })
            .inc();
    }
    Ok(Step::Done(pending.len()))
}

/// Reads a stored delivery as an observation, or says why it cannot be applied.
fn interpret(event: &PendingEvent) -> Result<Observation, OutcomeRecord> {
    let (outcome, entity, reason) = match webhook::read(&event.body) {
        webhook::Reading::Object { kind, object } => {
            match Observation::parse(kind.entity, object, kind.deleted) {
                Ok(o) => return Ok(o),
                Err(reason) => (Outcome::Error, Some(kind.entity), reason),
            }
        }
        webhook::Reading::UnknownType(reason) => (Outcome::UnknownType, None, reason),
        webhook::Reading::Invalid(reason) => (Outcome::Error, None, reason),
    };
    Err(OutcomeRecord {
        id: event.id,
        outcome,
        reason: Some(reason),
        entity: entity.map(columns::table),
        entity_key: None,
    })
}

async fn mark_error(
    pool: &PgPool,
    id: i64,
    error: &sqlx::Error,
    metrics: &Metrics,
) -> Result<(), sqlx::Error> {
    tracing::warn!(event_id = id, error = %error, "the database rejected a delivery's object");
    let mut conn = pool.acquire().await?;
    let outcome = OutcomeRecord {
        id,
        outcome: Outcome::Error,
        reason: Some(format!("the database rejected the object: {error}")),
        entity: None,
        entity_key: None,
    };
    events::record_outcomes(&mut conn, std::slice::from_ref(&outcome)).await?;
    metrics
        .webhook_events_applied
        .get_or_create(&OutcomeLabel {
            outcome: Outcome::Error,
        })
        .inc();
    Ok(())
}
