//! Retention: raw deliveries and changes older than their retention period are deleted
//! in the background, oldest first, in small batches (each its own short transaction), so
//! pruning never holds locks or a snapshot for long.
//!
//! Every replica runs the loop; changes are pruned by one replica at a time (the pruning
//! horizon's row is locked while it moves). A feed reader whose cursor falls behind the
//! horizon is answered 410 (see [`crate::api::changes`]).

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::db::{changes, events};
use crate::telemetry::{Metrics, TableLabel};

/// Pause between batches, so pruning a large backlog leaves room for everything else.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

/// Prunes every `config.interval` until `stop` is cancelled.
pub async fn run(
    pool: PgPool,
    config: RetentionConfig,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        if let Err(e) = prune(&pool, &config, &metrics, &stop).await {
            tracing::warn!(error = %e, "pruning past retention failed; will retry");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// One round: changes, then deliveries, batch after batch until nothing is past its
/// retention (or `stop`). Returns how many of each were deleted.
pub async fn prune(
    pool: &PgPool,
    config: &RetentionConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<(u64, u64), sqlx::Error> {
    let before = |d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
    };
    let mut pruned = (0, 0);
    let cutoff = before(config.changes);
    while !stop.is_cancelled() {
        let n = changes::prune(pool, cutoff, config.batch_size).await?;
        count(metrics, "changes", n);
        pruned.0 += n;
        if n < config.batch_size as u64 {
            break;
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
    let cutoff = before(config.deliveries);
    while !stop.is_cancelled() {
        let n = events::prune(pool, cutoff, config.batch_size).await?;
        count(metrics, "webhook_events", n);
        pruned.1 += n;
        if n < config.batch_size as u64 {
            break;
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
    if pruned != (0, 0) {
        tracing::info!(
            changes = pruned.0,
            deliveries = pruned.1,
            "pruned past retention"
        );
    }
    Ok(pruned)
}

fn count(metrics: &Metrics, table: &'static str, n: u64) {
    metrics
        .retention_pruned
        .get_or_create(&TableLabel { table })
        .inc_by(n);
}
