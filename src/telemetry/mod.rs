//! Logs and metrics.
//!
//! Logs go to stdout through `tracing` ([`logs`]). Metrics live in one [`Metrics`]
//! registry per running service (not a process global, so tests can run several services
//! side by side) and are served on `/metrics` in the Prometheus text format.
//!
//! **Every labelled series exists from the start, at zero.** A counter that appears only at
//! its first increment has no earlier sample, so `increase()` and `rate()` see nothing
//! when it first moves and alerts cannot fire. [`Metrics::new`] creates every label
//! combination that does not depend on the configuration; [`Metrics::declare`] the ones
//! that do (streams, relay endpoints, PartnerStack endpoints, routes and their documented
//! statuses).
//!
//! Gauges that describe the database (the pending backlog and its age, streams' staleness)
//! are refreshed when `/metrics` is scraped ([`Metrics::refresh`] and its callers in
//! `routes::ops`), so every replica reports the same figures.

pub mod logs;
pub mod process;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::{Answer, Exchange, Observer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use utoipa::openapi::OpenApi;

use crate::config::Config;
use crate::db::events::Outcome;
use crate::db::writes::WriteKind;
use crate::error::ErrorCode;

pub use logs::{DEFAULT_LOG_FILTER, init_logging};

/// A gauge of seconds (or any fraction).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// The service's version, as `psync_build_info{version}` and in every log line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    /// Every result the webhook route answers with.
    pub const ALL: [DeliveryResult; 6] = [
        DeliveryResult::Accepted,
        DeliveryResult::Duplicate,
        DeliveryResult::Refused(ErrorCode::BadRequest),
        DeliveryResult::Refused(ErrorCode::Unauthorized),
        DeliveryResult::Refused(ErrorCode::PayloadTooLarge),
        DeliveryResult::Refused(ErrorCode::Unavailable),
    ];

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

crate::text_enum! {
    /// What a verification fetch found.
    pub enum FetchResult {
        Found = "found",
        Missing = "missing",
        Failed = "failed",
    }
}

crate::text_enum! {
    /// How an applier transaction ended.
    pub enum ApplyResult {
        Committed = "committed",
        /// The database refused a batch's data; it is split to find the culprit.
        Refused = "refused",
    }
}

crate::text_enum! {
    /// How one attempt at relaying a change ended.
    pub enum RelayResult {
        /// Answered 2xx.
        Delivered = "delivered",
        Failed = "failed",
    }
}

crate::text_enum! {
    /// How one attempt at a write ended.
    pub enum WriteOutcome {
        Succeeded = "succeeded",
        Failed = "failed",
        Retried = "retried",
        /// An answer was lost and the object not found yet.
        Looking = "looking",
        /// The claim was lost to another replica.
        Abandoned = "abandoned",
    }
}

/// The tables retention prunes.
pub const PRUNED_TABLES: [&str; 3] = ["changes", "webhook_events", "writes"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabel {
    pub result: ApplyResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: DeliveryResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabel {
    pub result: FetchResult,
}

/// An HTTP route: its method and template (never the raw path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

/// An HTTP answer: its route and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub method: String,
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
    pub result: RelayResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

/// A write attempt: its kind, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: WriteKind,
    pub outcome: WriteOutcome,
}

/// A PartnerStack endpoint: the method and path template (`/customers/{key}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub method: String,
    pub endpoint: String,
}

/// A PartnerStack answer: its endpoint, and its status class ([`Answer::class`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamAnswerLabels {
    pub method: String,
    pub endpoint: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// `idle` or `in_use`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn http_duration() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn upstream_duration() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

fn pass_requests() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    ])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Webhook answers by result: accepted, duplicate, or the error code answered.
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Stored deliveries applied, by outcome.
    pub webhook_events_applied: Family<OutcomeLabel, Counter>,
    /// Objects fetched from PartnerStack to verify deliveries, by result.
    pub webhook_fetches: Family<FetchLabel, Counter>,
    /// Deliveries stored and not applied yet (refreshed when scraped).
    pub webhook_deliveries_pending: Gauge,
    /// Age of the oldest pending delivery, in seconds; 0 when none (refreshed when scraped).
    pub webhook_apply_lag_seconds: FloatGauge,
    /// Deliveries committed per writer statement.
    pub ingest_batch_size: Histogram,
    /// Deliveries waiting for the writer.
    pub ingest_queue_depth: Gauge,
    /// Bytes of deliveries being read or waiting for the writer.
    pub ingest_queue_bytes: Gauge,
    /// Transactions the applier ran, by result.
    pub apply_transactions: Family<ApplyLabel, Counter>,
    /// HTTP requests answered, by method, route template and status.
    pub http_requests: Family<AnswerLabels, Counter>,
    /// Time to answer HTTP requests, by method and route template.
    pub http_request_duration_seconds: HistogramFamily<RouteLabels>,
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
    /// Requests a finished pass sent, by stream.
    pub reconcile_pass_requests: HistogramFamily<StreamLabel>,
    /// When this process last finished a pass without error (unix seconds; 0: not yet).
    pub reconcile_last_success_timestamp_seconds: Family<StreamLabel, FloatGauge>,
    /// Worst-case staleness of each stream now (refreshed when scraped; +Inf before its
    /// first completed pass).
    pub reconcile_staleness_seconds: Family<StreamLabel, FloatGauge>,
    /// The staleness each stream should stay within: the configured bound for streams
    /// full scans keep fresh, else what the passes achieve at the configured interval.
    pub reconcile_staleness_bound_seconds: Family<StreamLabel, FloatGauge>,
    /// 1 while this replica is the reconciler.
    pub reconcile_leader: Gauge,
    /// HTTP requests sent to PartnerStack, by method, endpoint and status class.
    pub partnerstack_requests: Family<UpstreamAnswerLabels, Counter>,
    /// Time PartnerStack took to answer, by method and endpoint.
    pub partnerstack_request_duration_seconds: HistogramFamily<UpstreamLabels>,
    /// Requests to PartnerStack sent again after a failed attempt, by method and endpoint.
    pub partnerstack_retries: Family<UpstreamLabels, Counter>,
    /// Relay attempts per endpoint, by result.
    pub relay_attempts: Family<AttemptLabels, Counter>,
    /// Seconds since the oldest change an endpoint has still to receive was applied (0
    /// when caught up), as seen by the replica relaying it.
    pub relay_lag_seconds: Family<EndpointLabel, FloatGauge>,
    /// 1 while this replica relays to the endpoint.
    pub relay_leader: Family<EndpointLabel, Gauge>,
    /// Rows pruned past their retention, by table.
    pub retention_pruned: Family<TableLabel, Counter>,
    /// Write attempts, by kind and outcome.
    pub writes: Family<WriteLabels, Counter>,
    /// Writes accepted and not finished (refreshed every few seconds by each worker).
    pub writes_pending: Gauge,
    /// Age of the oldest pending write, in seconds (0 when none).
    pub writes_oldest_pending_seconds: FloatGauge,
    /// Requests sent to PartnerStack per finished write, look-ups and retries included
    /// (1 when nothing went wrong).
    pub write_upstream_requests: Histogram,
    /// Objects set aside now (refused by the copy, kept with their error while the rest
    /// went on), by stream (refreshed when scraped).
    pub set_aside_objects: Family<StreamLabel, Gauge>,
    /// Pooled database connections, by state (refreshed when scraped).
    pub db_pool_connections: Family<PoolLabel, Gauge>,
    /// The pool's configured size.
    pub db_pool_max_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry, with every series that does not depend on the configuration.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            webhook_deliveries: Family::default(),
            webhook_events_applied: Family::default(),
            webhook_fetches: Family::default(),
            webhook_deliveries_pending: Gauge::default(),
            webhook_apply_lag_seconds: FloatGauge::default(),
            ingest_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            ingest_queue_depth: Gauge::default(),
            ingest_queue_bytes: Gauge::default(),
            apply_transactions: Family::default(),
            http_requests: Family::default(),
            http_request_duration_seconds: Family::new_with_constructor(http_duration),
            reconcile_passes: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_objects_seen: Family::default(),
            reconcile_objects_changed: Family::default(),
            reconcile_repairs: Family::default(),
            reconcile_deletions: Family::default(),
            reconcile_requests: Family::default(),
            reconcile_pass_requests: Family::new_with_constructor(pass_requests),
            reconcile_last_success_timestamp_seconds: Family::default(),
            reconcile_staleness_seconds: Family::default(),
            reconcile_staleness_bound_seconds: Family::default(),
            reconcile_leader: Gauge::default(),
            partnerstack_requests: Family::default(),
            partnerstack_request_duration_seconds: Family::new_with_constructor(upstream_duration),
            partnerstack_retries: Family::default(),
            relay_attempts: Family::default(),
            relay_lag_seconds: Family::default(),
            relay_leader: Family::default(),
            retention_pruned: Family::default(),
            writes: Family::default(),
            writes_pending: Gauge::default(),
            writes_oldest_pending_seconds: FloatGauge::default(),
            write_upstream_requests: Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
            set_aside_objects: Family::default(),
            db_pool_connections: Family::default(),
            db_pool_max_connections: Gauge::default(),
        };
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        m.register(root.sub_registry_with_prefix("psync"));
        m.create_fixed_series();
        Metrics {
            registry: root,
            ..m
        }
    }

    fn register(&self, r: &mut Registry) {
        let s = Unit::Seconds;
        r.register(
            "build",
            "The running build, as a label (always 1)",
            Info::new(BuildLabels { version: VERSION }),
        );
        r.register(
            "webhook_deliveries",
            format!(
                "Webhook deliveries answered, by result: accepted, duplicate, or the error code ({})",
                ErrorCode::words()
            ),
            self.webhook_deliveries.clone(),
        );
        r.register(
            "webhook_events_applied",
            format!(
                "Stored webhook deliveries applied, by outcome ({})",
                Outcome::words()
            ),
            self.webhook_events_applied.clone(),
        );
        r.register(
            "webhook_fetches",
            "Objects fetched from PartnerStack to verify webhook deliveries, by result",
            self.webhook_fetches.clone(),
        );
        r.register(
            "webhook_deliveries_pending",
            "Webhook deliveries stored and not applied yet",
            self.webhook_deliveries_pending.clone(),
        );
        r.register_with_unit(
            "webhook_apply_lag",
            "Age of the oldest webhook delivery not applied yet (0 when none)",
            s.clone(),
            self.webhook_apply_lag_seconds.clone(),
        );
        r.register(
            "ingest_batch_size",
            "Deliveries committed per writer statement",
            self.ingest_batch_size.clone(),
        );
        r.register(
            "ingest_queue_depth",
            "Deliveries waiting for the writer",
            self.ingest_queue_depth.clone(),
        );
        r.register_with_unit(
            "ingest_queue",
            "Bytes of deliveries being read or waiting for the writer",
            Unit::Bytes,
            self.ingest_queue_bytes.clone(),
        );
        r.register(
            "apply_transactions",
            "Transactions the applier ran, by result (committed, refused)",
            self.apply_transactions.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer HTTP requests, by method and route template",
            s.clone(),
            self.http_request_duration_seconds.clone(),
        );
        r.register(
            "reconcile_passes",
            "Reconcile passes completed, by stream",
            self.reconcile_passes.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile passes failed, by stream",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_objects_seen",
            "Objects read by the reconciler, by stream",
            self.reconcile_objects_seen.clone(),
        );
        r.register(
            "reconcile_objects_changed",
            "Rows created or changed by the reconciler, by stream",
            self.reconcile_objects_changed.clone(),
        );
        r.register(
            "reconcile_repairs",
            "Rows the reconciler repaired that no webhook had delivered (webhook loss), by stream",
            self.reconcile_repairs.clone(),
        );
        r.register(
            "reconcile_deletions",
            "Rows marked deleted after a full scan no longer found them, by stream",
            self.reconcile_deletions.clone(),
        );
        r.register(
            "reconcile_requests",
            "Requests the reconciler sent to PartnerStack, retries included, by stream",
            self.reconcile_requests.clone(),
        );
        r.register(
            "reconcile_pass_requests",
            "Requests to PartnerStack per finished reconcile pass, by stream",
            self.reconcile_pass_requests.clone(),
        );
        r.register_with_unit(
            "reconcile_last_success_timestamp",
            "When this process last finished a reconcile pass without error, unix time (0: not yet), by stream",
            s.clone(),
            self.reconcile_last_success_timestamp_seconds.clone(),
        );
        r.register_with_unit(
            "reconcile_staleness",
            "Worst-case staleness of the copy now (+Inf before the first completed pass), by stream",
            s.clone(),
            self.reconcile_staleness_seconds.clone(),
        );
        r.register_with_unit(
            "reconcile_staleness_bound",
            "The staleness a stream should stay within (its configured bound, or what passes achieve at the configured interval), by stream",
            s.clone(),
            self.reconcile_staleness_bound_seconds.clone(),
        );
        r.register(
            "reconcile_leader",
            "1 while this replica is the reconciler",
            self.reconcile_leader.clone(),
        );
        r.register(
            "partnerstack_requests",
            "HTTP requests sent to PartnerStack (each attempt), by method, endpoint and status class (2xx, 3xx, 4xx, 429, 5xx, timeout, unreachable)",
            self.partnerstack_requests.clone(),
        );
        r.register_with_unit(
            "partnerstack_request_duration",
            "Time PartnerStack took to answer, by method and endpoint",
            s.clone(),
            self.partnerstack_request_duration_seconds.clone(),
        );
        r.register(
            "partnerstack_retries",
            "Requests to PartnerStack sent again after a failed attempt (429, 5xx, timeout), by method and endpoint",
            self.partnerstack_retries.clone(),
        );
        r.register(
            "relay_attempts",
            "Relay deliveries attempted, by endpoint and result (delivered: answered 2xx; failed)",
            self.relay_attempts.clone(),
        );
        r.register_with_unit(
            "relay_lag",
            "Age of the oldest change an endpoint has still to receive (0 when caught up), by endpoint",
            s.clone(),
            self.relay_lag_seconds.clone(),
        );
        r.register(
            "relay_leader",
            "1 while this replica relays to the endpoint",
            self.relay_leader.clone(),
        );
        r.register(
            "retention_pruned",
            "Rows deleted past their retention, by table",
            self.retention_pruned.clone(),
        );
        r.register(
            "writes",
            format!(
                "Write attempts, by kind and outcome ({})",
                WriteOutcome::words()
            ),
            self.writes.clone(),
        );
        r.register(
            "writes_pending",
            "Writes accepted and not finished",
            self.writes_pending.clone(),
        );
        r.register_with_unit(
            "writes_oldest_pending",
            "Age of the oldest pending write (0 when none)",
            s,
            self.writes_oldest_pending_seconds.clone(),
        );
        r.register(
            "write_upstream_requests",
            "Requests sent to PartnerStack per finished write, look-ups and retries included",
            self.write_upstream_requests.clone(),
        );
        r.register(
            "db_pool_connections",
            "Pooled database connections, by state (idle, in_use)",
            self.db_pool_connections.clone(),
        );
        r.register(
            "db_pool_max_connections",
            "The database pool's configured size",
            self.db_pool_max_connections.clone(),
        );
        r.register(
            "set_aside_objects",
            "Objects set aside now (refused by the copy, kept with their error), by stream",
            self.set_aside_objects.clone(),
        );
    }

    /// The series whose labels do not depend on the configuration, at zero.
    fn create_fixed_series(&self) {
        for result in DeliveryResult::ALL {
            let _ = self
                .webhook_deliveries
                .get_or_create(&ResultLabel { result });
        }
        for &outcome in Outcome::ALL {
            let _ = self
                .webhook_events_applied
                .get_or_create(&OutcomeLabel { outcome });
        }
        for &result in FetchResult::ALL {
            let _ = self.webhook_fetches.get_or_create(&FetchLabel { result });
        }
        for &result in ApplyResult::ALL {
            let _ = self
                .apply_transactions
                .get_or_create(&ApplyLabel { result });
        }
        for table in PRUNED_TABLES {
            let _ = self.retention_pruned.get_or_create(&TableLabel { table });
        }
        for &kind in WriteKind::ALL {
            for &outcome in WriteOutcome::ALL {
                let _ = self.writes.get_or_create(&WriteLabels { kind, outcome });
            }
        }
        for state in ["idle", "in_use"] {
            let _ = self.db_pool_connections.get_or_create(&PoolLabel { state });
        }
        // Objects can be set aside from webhooks and writes, reconciled or not.
        for entity in Entity::ALL {
            let _ = self.set_aside_objects.get_or_create(&StreamLabel {
                stream: entity.stream(),
            });
        }
    }

    /// Objects set aside now, per stream (streams not in `counts` have none).
    pub fn set_set_aside(&self, counts: &std::collections::HashMap<Entity, i64>) {
        for entity in Entity::ALL {
            self.set_aside_objects
                .get_or_create(&StreamLabel {
                    stream: entity.stream(),
                })
                .set(counts.get(&entity).copied().unwrap_or(0));
        }
    }

    /// Creates, at zero, the series that `config` and the served routes (`api`, the
    /// OpenAPI description: every operation and the statuses it documents) call for.
    /// `reconciling`: whether this service runs the reconciler (stream series exist only
    /// then, so a stream nobody syncs raises no staleness alert).
    pub fn declare(&self, config: &Config, api: &OpenApi, reconciling: bool) {
        for (path, item) in &api.paths.paths {
            let operations = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ];
            for (method, op) in operations {
                let Some(op) = op else { continue };
                let route = RouteLabels {
                    method: method.to_string(),
                    route: path.clone(),
                };
                let _ = self.http_request_duration_seconds.get_or_create(&route);
                for status in op.responses.responses.keys() {
                    if let Ok(status) = status.parse::<u16>() {
                        let _ = self.http_requests.get_or_create(&AnswerLabels {
                            method: route.method.clone(),
                            route: route.route.clone(),
                            status,
                        });
                    }
                }
            }
        }
        if reconciling {
            for entity in &config.reconcile.streams {
                self.declare_stream(*entity);
            }
        }
        if config.partnerstack.credentials().is_some() {
            for (method, endpoint) in config.partnerstack.endpoints() {
                let labels = UpstreamLabels {
                    method: method.to_string(),
                    endpoint,
                };
                let _ = self
                    .partnerstack_request_duration_seconds
                    .get_or_create(&labels);
                let _ = self.partnerstack_retries.get_or_create(&labels);
                for status in Answer::CLASSES {
                    let _ = self
                        .partnerstack_requests
                        .get_or_create(&UpstreamAnswerLabels {
                            method: labels.method.clone(),
                            endpoint: labels.endpoint.clone(),
                            status,
                        });
                }
            }
        }
        for endpoint in &config.relay {
            let label = EndpointLabel {
                endpoint: endpoint.name.clone(),
            };
            let _ = self.relay_lag_seconds.get_or_create(&label);
            let _ = self.relay_leader.get_or_create(&label);
            for &result in RelayResult::ALL {
                let _ = self.relay_attempts.get_or_create(&AttemptLabels {
                    endpoint: endpoint.name.clone(),
                    result,
                });
            }
        }
        self.db_pool_max_connections
            .set(i64::from(config.database.max_connections));
    }

    fn declare_stream(&self, entity: Entity) {
        let label = StreamLabel {
            stream: entity.stream(),
        };
        for family in [
            &self.reconcile_passes,
            &self.reconcile_errors,
            &self.reconcile_objects_seen,
            &self.reconcile_objects_changed,
            &self.reconcile_repairs,
            &self.reconcile_deletions,
            &self.reconcile_requests,
        ] {
            let _ = family.get_or_create(&label);
        }
        let _ = self.reconcile_pass_requests.get_or_create(&label);
        let _ = self
            .reconcile_last_success_timestamp_seconds
            .get_or_create(&label);
        self.reconcile_staleness_seconds
            .get_or_create(&label)
            .set(f64::INFINITY);
        let _ = self.reconcile_staleness_bound_seconds.get_or_create(&label);
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

    /// One HTTP request answered.
    pub fn http_answer(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&AnswerLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_request_duration_seconds
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A reconcile pass of `stream` completed, having sent `requests`; `clean`: without
    /// an error to report.
    pub fn pass_completed(&self, stream: &'static str, requests: u64, clean: bool) {
        let label = StreamLabel { stream };
        self.reconcile_pass_requests
            .get_or_create(&label)
            .observe(requests as f64);
        if clean {
            self.reconcile_last_success_timestamp_seconds
                .get_or_create(&label)
                .set(unix_now());
        }
    }

    /// The stored deliveries' backlog: how many are pending, and since when the oldest.
    pub fn set_backlog(&self, pending: i64, oldest_age: Duration) {
        self.webhook_deliveries_pending.set(pending);
        self.webhook_apply_lag_seconds.set(oldest_age.as_secs_f64());
    }

    /// A stream's freshness as the database tells it: `staleness` (`None` before the first
    /// completed pass), the `bound` it should stay within, and when its last pass ended
    /// without error (`None`: unknown).
    pub fn set_stream(
        &self,
        stream: &'static str,
        staleness: Option<Duration>,
        bound: Duration,
        last_success: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let label = StreamLabel { stream };
        self.reconcile_staleness_seconds
            .get_or_create(&label)
            .set(staleness.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        self.reconcile_staleness_bound_seconds
            .get_or_create(&label)
            .set(bound.as_secs_f64());
        if let Some(at) = last_success {
            let gauge = self
                .reconcile_last_success_timestamp_seconds
                .get_or_create(&label);
            let at = at.timestamp_millis() as f64 / 1000.0;
            if at > gauge.get() {
                gauge.set(at);
            }
        }
    }

    /// The pool's connections now.
    pub fn set_pool(&self, size: u32, idle: usize) {
        let idle = idle.min(size as usize) as i64;
        self.db_pool_connections
            .get_or_create(&PoolLabel { state: "idle" })
            .set(idle);
        self.db_pool_connections
            .get_or_create(&PoolLabel { state: "in_use" })
            .set(i64::from(size) - idle);
    }
}

/// Counts PartnerStack exchanges into a service's [`Metrics`] (the client's
/// [`Observer`]).
pub struct UpstreamObserver(pub Arc<Metrics>);

impl Observer for UpstreamObserver {
    fn exchange(&self, exchange: &Exchange<'_>) {
        let m = &self.0;
        let labels = UpstreamLabels {
            method: exchange.method.to_string(),
            endpoint: exchange.endpoint.to_string(),
        };
        m.partnerstack_requests
            .get_or_create(&UpstreamAnswerLabels {
                method: labels.method.clone(),
                endpoint: labels.endpoint.clone(),
                status: exchange.answer.class(),
            })
            .inc();
        m.partnerstack_request_duration_seconds
            .get_or_create(&labels)
            .observe(exchange.elapsed.as_secs_f64());
        if exchange.attempt > 1 {
            m.partnerstack_retries.get_or_create(&labels).inc();
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How often processes give freed memory back to the system ([`trim_memory`]).
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample lines (`name{labels}`, without values) of an exposition.
    fn series(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
            .collect()
    }

    #[test]
    fn fixed_series_exist_at_zero_and_names_follow_the_conventions() {
        let m = Metrics::new();
        let text = m.render();
        for line in [
            r#"psync_webhook_deliveries_total{result="unauthorized"} 0"#,
            r#"psync_webhook_events_applied_total{outcome="error"} 0"#,
            r#"psync_apply_transactions_total{result="refused"} 0"#,
            r#"psync_writes_total{kind="create_customer",outcome="failed"} 0"#,
            r#"psync_retention_pruned_total{table="writes"} 0"#,
            r#"psync_build_info{version=""#,
            "psync_webhook_apply_lag_seconds 0",
            "psync_ingest_queue_bytes 0",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        // Counters end in _total; units are in names; everything ours is psync_.
        for s in series(&text) {
            let name = s.split('{').next().unwrap();
            assert!(
                name.starts_with("psync_") || name.starts_with("process_"),
                "{name}"
            );
            assert!(!name.contains("_ms") && !name.contains("millis"), "{name}");
        }
        for l in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = l.split_whitespace().collect();
            if parts[3] == "counter" {
                assert!(parts[2].ends_with("_total"), "{l}");
            } else {
                assert!(!parts[2].ends_with("_total"), "{l}");
            }
        }
    }

    #[test]
    fn upstream_exchanges_count_by_endpoint_and_class() {
        let m = Arc::new(Metrics::new());
        let observer = UpstreamObserver(m.clone());
        let method = reqwest::Method::GET;
        for (answer, attempt) in [
            (Answer::Status(reqwest::StatusCode::SERVICE_UNAVAILABLE), 1),
            (Answer::Status(reqwest::StatusCode::OK), 2),
        ] {
            observer.exchange(&Exchange {
                method: &method,
                endpoint: "/customers/{key}",
                answer,
                elapsed: Duration::from_millis(120),
                attempt,
            });
        }
        let text = m.render();
        for line in [
            r#"psync_partnerstack_requests_total{method="GET",endpoint="/customers/{key}",status="5xx"} 1"#,
            r#"psync_partnerstack_requests_total{method="GET",endpoint="/customers/{key}",status="2xx"} 1"#,
            r#"psync_partnerstack_retries_total{method="GET",endpoint="/customers/{key}"} 1"#,
            r#"psync_partnerstack_request_duration_seconds_count{method="GET",endpoint="/customers/{key}"} 2"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }
}
