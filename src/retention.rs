//! Retention: raw deliveries, changes and finished writes older than their retention
//! period are deleted in the background, oldest first, in small batches (each its own
//! short transaction), so pruning never holds locks or a snapshot for long.
//!
//! Every replica runs the loop; changes are pruned by one replica at a time (the pruning
//! horizon's row is locked while it moves). A feed reader whose cursor falls behind the
//! horizon is answered 410 (see [`crate::api::changes`]).

use std::time::Duration;

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::db::{changes, events, writes};
use crate::telemetry::Labels;

/// Pause between batches, so pruning a large backlog leaves room for everything else.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

/// A pruned table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

impl Labels for TableLabel {
    fn fixed() -> Vec<Self> {
        Table::ALL
            .into_iter()
            .map(|table| TableLabel {
                table: table.name(),
            })
            .collect()
    }
}

crate::metrics! {
    /// Retention's metrics.
    pub struct RetentionMetrics {
        /// Rows deleted past their retention, by table.
        pub retention_pruned: Family<TableLabel, Counter>,
    }
}

/// Prunes every `config.interval` until `stop` is cancelled.
pub async fn run(
    pool: PgPool,
    config: RetentionConfig,
    metrics: std::sync::Arc<RetentionMetrics>,
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

/// The tables pruned, each by its own statement (deleting up to a batch of rows older
/// than a cutoff, returning how many).
#[derive(Debug, Clone, Copy)]
enum Table {
    Changes,
    Deliveries,
    Writes,
}

impl Table {
    const ALL: [Table; 3] = [Table::Changes, Table::Deliveries, Table::Writes];

    fn name(self) -> &'static str {
        match self {
            Table::Changes => "changes",
            Table::Deliveries => "webhook_events",
            Table::Writes => "writes",
        }
    }

    fn keep(self, config: &RetentionConfig) -> Duration {
        match self {
            Table::Changes => config.changes,
            Table::Deliveries => config.deliveries,
            Table::Writes => config.writes,
        }
    }

    async fn prune(
        self,
        pool: &PgPool,
        cutoff: chrono::DateTime<Utc>,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        match self {
            Table::Changes => changes::prune(pool, cutoff, batch).await,
            Table::Deliveries => events::prune(pool, cutoff, batch).await,
            Table::Writes => writes::prune(pool, cutoff, batch).await,
        }
    }
}

/// One round: changes, then deliveries, then finished writes, batch after batch until
/// nothing is past its retention (or `stop`). Returns how many rows were deleted.
pub async fn prune(
    pool: &PgPool,
    config: &RetentionConfig,
    metrics: &RetentionMetrics,
    stop: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let before = |d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
    };
    let mut total = 0;
    for table in Table::ALL {
        let cutoff = before(table.keep(config));
        let mut pruned = 0;
        while !stop.is_cancelled() {
            let n = table
                .prune(pool, cutoff, i64::from(config.batch_size.get()))
                .await?;
            count(metrics, table.name(), n);
            pruned += n;
            if n < u64::from(config.batch_size.get()) {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        if pruned > 0 {
            tracing::info!(table = table.name(), rows = pruned, "pruned past retention");
        }
        total += pruned;
    }
    Ok(total)
}

fn count(metrics: &RetentionMetrics, table: &'static str, n: u64) {
    metrics
        .retention_pruned
        .get_or_create(&TableLabel { table })
        .inc_by(n);
}
