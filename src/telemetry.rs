//! Logs and metrics.
//!
//! Logs go to stdout through `tracing`, filtered by `RUST_LOG`, as text or JSON
//! (`PSYNC_LOG_FORMAT`). Metrics live in one [`Metrics`] registry per running service
//! (not a process global, so tests can run several services side by side) and are served
//! on `/metrics` in the Prometheus text format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::db::events::Outcome;
use crate::db::writes::WriteKind;
use crate::error::ErrorCode;

/// What is logged when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// Installs the global log subscriber, filtered by `RUST_LOG` or else `default_filter`.
/// Safe to call more than once (later calls no-op).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// How the webhook route answered a delivery.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Stored.
    Accepted,
    /// A byte-identical delivery was already stored.
    Duplicate,
    /// Refused, with the error code it was answered with.
    Refused(ErrorCode),
}

impl DeliveryResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Accepted => "accepted",
            DeliveryResult::Duplicate => "duplicate",
            DeliveryResult::Refused(code) => code.as_str(),
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for DeliveryResult {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The result of an applier transaction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: DeliveryResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

crate::text_enum! {
    /// What a verification fetch found.
    pub enum FetchResult {
        Found = "found",
        Missing = "missing",
        Failed = "failed",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabel {
    pub result: FetchResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub endpoint: String,
    /// `delivered` (2xx) or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

/// A write attempt: its kind, and how it ended (`succeeded`, `failed`, `retried`,
/// `looking`, `abandoned`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: WriteKind,
    pub outcome: &'static str,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Webhook answers by result: accepted, duplicate, or the error code answered.
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Stored deliveries applied, by outcome.
    pub webhook_events_applied: Family<OutcomeLabel, Counter>,
    /// Objects fetched from PartnerStack to verify deliveries, by result.
    pub webhook_fetches: Family<FetchLabel, Counter>,
    /// Deliveries committed per writer statement.
    pub ingest_batch_size: Histogram,
    /// Deliveries waiting for the writer.
    pub ingest_queue_depth: Gauge,
    /// Bytes of deliveries being read or waiting for the writer.
    pub ingest_queue_bytes: Gauge,
    /// Transactions the applier ran, by result: `committed`, or `refused` (the database
    /// refused a batch's data and it was split to find the culprit).
    pub apply_transactions: Family<ApplyLabel, Counter>,
    /// HTTP requests answered, by route template and status.
    pub http_requests: Family<RouteLabels, Counter>,
    /// Reconcile passes finished, by stream.
    pub reconcile_passes: Family<StreamLabel, Counter>,
    /// Reconcile passes that failed, by stream.
    pub reconcile_errors: Family<StreamLabel, Counter>,
    /// Objects read from PartnerStack by the reconciler, by stream.
    pub reconcile_objects_seen: Family<StreamLabel, Counter>,
    /// Rows the reconciler created or changed, by stream.
    pub reconcile_objects_changed: Family<StreamLabel, Counter>,
    /// Rows the reconciler had to repair because no webhook had delivered their state:
    /// the measured webhook loss.
    pub reconcile_repairs: Family<StreamLabel, Counter>,
    /// Rows marked deleted because a full scan no longer found them.
    pub reconcile_deletions: Family<StreamLabel, Counter>,
    /// Requests the reconciler sent to PartnerStack (retries included), by stream.
    pub reconcile_requests: Family<StreamLabel, Counter>,
    /// Relay attempts per endpoint, by result (`delivered`, `failed`).
    pub relay_attempts: Family<AttemptLabels, Counter>,
    /// Seconds since the oldest change an endpoint has still to receive was applied (0
    /// when caught up), as seen by the replica relaying it.
    pub relay_lag_seconds: Family<EndpointLabel, Gauge<f64, AtomicU64>>,
    /// 1 while this replica relays to the endpoint.
    pub relay_leader: Family<EndpointLabel, Gauge>,
    /// Rows pruned past their retention, by table (`changes`, `webhook_events`, `writes`).
    pub retention_pruned: Family<TableLabel, Counter>,
    /// Write attempts, by kind and outcome.
    pub writes: Family<WriteLabels, Counter>,
    /// Writes accepted and not finished (refreshed every few seconds by each worker).
    pub writes_pending: Gauge,
    /// Age of the oldest pending write, in seconds (0 when none).
    pub writes_oldest_pending_seconds: Gauge<f64, AtomicU64>,
    /// Requests sent to PartnerStack per finished write, look-ups and retries included
    /// (1 when nothing went wrong).
    pub write_upstream_requests: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("psync");
        let m = Metrics {
            webhook_deliveries: Family::default(),
            webhook_events_applied: Family::default(),
            webhook_fetches: Family::default(),
            ingest_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            ingest_queue_depth: Gauge::default(),
            ingest_queue_bytes: Gauge::default(),
            apply_transactions: Family::default(),
            http_requests: Family::default(),
            reconcile_passes: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_objects_seen: Family::default(),
            reconcile_objects_changed: Family::default(),
            reconcile_repairs: Family::default(),
            reconcile_deletions: Family::default(),
            reconcile_requests: Family::default(),
            relay_attempts: Family::default(),
            relay_lag_seconds: Family::default(),
            relay_leader: Family::default(),
            retention_pruned: Family::default(),
            writes: Family::default(),
            writes_pending: Gauge::default(),
            writes_oldest_pending_seconds: Gauge::default(),
            write_upstream_requests: Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
            registry: Registry::default(),
        };
        registry.register(
            "webhook_deliveries",
            format!(
                "Webhook deliveries answered, by result: accepted, duplicate, or the error code ({})",
                ErrorCode::words()
            ),
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_events_applied",
            format!(
                "Stored webhook deliveries applied, by outcome ({})",
                Outcome::words()
            ),
            m.webhook_events_applied.clone(),
        );
        registry.register(
            "webhook_fetches",
            "Objects fetched from PartnerStack to verify webhook deliveries, by result",
            m.webhook_fetches.clone(),
        );
        registry.register(
            "ingest_batch_size",
            "Deliveries committed per writer statement",
            m.ingest_batch_size.clone(),
        );
        registry.register(
            "ingest_queue_depth",
            "Deliveries waiting for the writer",
            m.ingest_queue_depth.clone(),
        );
        registry.register(
            "ingest_queue_bytes",
            "Bytes of deliveries being read or waiting for the writer",
            m.ingest_queue_bytes.clone(),
        );
        registry.register(
            "apply_transactions",
            "Transactions the applier ran, by result (committed, refused)",
            m.apply_transactions.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes completed, by stream",
            m.reconcile_passes.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile passes failed, by stream",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_objects_seen",
            "Objects read by the reconciler, by stream",
            m.reconcile_objects_seen.clone(),
        );
        registry.register(
            "reconcile_objects_changed",
            "Rows created or changed by the reconciler, by stream",
            m.reconcile_objects_changed.clone(),
        );
        registry.register(
            "reconcile_repairs",
            "Rows the reconciler repaired that no webhook had delivered (webhook loss), by stream",
            m.reconcile_repairs.clone(),
        );
        registry.register(
            "reconcile_deletions",
            "Rows marked deleted after a full scan no longer found them, by stream",
            m.reconcile_deletions.clone(),
        );
        registry.register(
            "reconcile_requests",
            "Requests the reconciler sent to PartnerStack, retries included, by stream",
            m.reconcile_requests.clone(),
        );
        registry.register(
            "relay_attempts",
            "Relay deliveries attempted, by endpoint and result (delivered: answered 2xx; failed)",
            m.relay_attempts.clone(),
        );
        registry.register(
            "relay_lag_seconds",
            "Age of the oldest change an endpoint has still to receive (0 when caught up), by endpoint",
            m.relay_lag_seconds.clone(),
        );
        registry.register(
            "relay_leader",
            "1 while this replica relays to the endpoint",
            m.relay_leader.clone(),
        );
        registry.register(
            "retention_pruned",
            "Rows deleted past their retention, by table",
            m.retention_pruned.clone(),
        );
        registry.register(
            "writes",
            "Write attempts, by kind and outcome (succeeded, failed, retried, looking: a lost answer not resolved yet, abandoned: the claim was lost)",
            m.writes.clone(),
        );
        registry.register(
            "writes_pending",
            "Writes accepted and not finished",
            m.writes_pending.clone(),
        );
        registry.register(
            "writes_oldest_pending_seconds",
            "Age of the oldest pending write (0 when none)",
            m.writes_oldest_pending_seconds.clone(),
        );
        registry.register(
            "write_upstream_requests",
            "Requests sent to PartnerStack per finished write, look-ups and retries included",
            m.write_upstream_requests.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    pub fn webhook_fetch(&self, result: FetchResult) {
        self.webhook_fetches
            .get_or_create(&FetchLabel { result })
            .inc();
    }

    pub fn delivery(&self, result: DeliveryResult) {
        self.webhook_deliveries
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// Gives freed memory back to the system every `every`, until `stop`. glibc's allocator
/// keeps freed memory in its arenas (a burst of large request bodies otherwise stays in
/// the process's footprint for good); `malloc_trim` returns the free pages of every arena.
pub async fn trim_memory(every: Duration, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own arenas.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
