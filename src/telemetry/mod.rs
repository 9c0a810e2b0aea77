//! Logs and metrics.
//!
//! Logs go to stdout through `tracing` ([`logs`]). Metrics are declared once, in groups
//! ([`metrics!`](crate::metrics), [`group`]): the service-wide [`Metrics`] here, and a
//! group in each module whose own types label its metrics (`ingest`, `relay`,
//! `retention`, the write worker). They live per running service (not in a process
//! global, so tests can run several services side by side) and an [`Exposition`] serves
//! them on `/metrics` in the Prometheus text format.
//!
//! **Every labelled series exists from the start, at zero.** A counter that appears only at
//! its first increment has no earlier sample, so `increase()` and `rate()` see nothing
//! when it first moves and alerts cannot fire. Each family's label type lists its series
//! ([`Labels`]): the fixed ones are created with the group, those the configuration calls
//! for (streams, relay endpoints, PartnerStack endpoints, routes and their documented
//! statuses) by [`Exposition::declare`].
//!
//! Gauges that describe the database (the pending backlog and its age, streams' staleness)
//! are refreshed when `/metrics` is scraped ([`Metrics::set_backlog`],
//! [`Metrics::set_stream`] and their callers in `routes::ops`), so every replica reports
//! the same figures.

pub mod group;
pub mod labels;
pub mod logs;
pub mod process;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use partnerstack::Entity;
use partnerstack::client::{Answer, Exchange, Observer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::error::ErrorCode;

pub use group::{Deployment, Exposition, Group, Labels, Precreate, Registry, Unit, register};
pub use labels::{
    AnswerLabels, DeliveryResult, EntityLabel, PoolLabel, PurposeLabel, ResultLabel, RouteLabels,
    StreamLabel, UpstreamAnswerLabels, UpstreamLabels,
};
pub use logs::{DEFAULT_LOG_FILTER, init_logging};

/// A gauge of seconds (or any fraction).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A family of histograms, each made with the family's buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The service's version, as `psync_build_info{version}` and in every log line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// A stream's staleness before its first completed pass: unknown, so +Inf.
fn not_fresh_yet() -> FloatGauge {
    let gauge = FloatGauge::default();
    gauge.set(f64::INFINITY);
    gauge
}

crate::metrics! {
    /// The service-wide metrics: webhook answers and backlog, HTTP, the reconciler,
    /// PartnerStack's answers, the database pool.
    pub struct Metrics {
        /// Webhook deliveries answered, by result: accepted, duplicate, or the error code.
        #[values(ErrorCode::words())]
        pub webhook_deliveries: Family<ResultLabel, Counter>,
        /// Webhook deliveries stored and not applied yet.
        ///
        /// Refreshed when scraped.
        pub webhook_deliveries_pending: Gauge,
        /// Age of the oldest webhook delivery not applied yet (0 when none).
        ///
        /// Refreshed when scraped.
        #[unit(Seconds)]
        pub webhook_apply_lag_seconds: FloatGauge,
        /// Deliveries waiting for the writer.
        pub ingest_queue_depth: Gauge,
        /// Bytes of deliveries being read or waiting for the writer.
        #[unit(Bytes)]
        pub ingest_queue_bytes: Gauge,
        /// HTTP requests answered, by method, route template and status.
        pub http_requests: Family<AnswerLabels, Counter>,
        /// Time to answer HTTP requests, by method and route template.
        #[unit(Seconds)]
        pub http_request_duration_seconds: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(http_duration),
        /// Reconcile passes completed, by stream.
        pub reconcile_passes: Family<StreamLabel, Counter>,
        /// Reconcile passes failed, by stream.
        pub reconcile_errors: Family<StreamLabel, Counter>,
        /// Objects read by the reconciler, by stream.
        pub reconcile_objects_seen: Family<StreamLabel, Counter>,
        /// Rows created or changed by the reconciler, by stream.
        pub reconcile_objects_changed: Family<StreamLabel, Counter>,
        /// Rows the reconciler repaired that no webhook had delivered (webhook loss), by
        /// stream.
        pub reconcile_repairs: Family<StreamLabel, Counter>,
        /// Rows marked deleted after a full scan no longer found them, by stream.
        pub reconcile_deletions: Family<StreamLabel, Counter>,
        /// Requests the reconciler sent to PartnerStack, retries included, by stream.
        pub reconcile_requests: Family<StreamLabel, Counter>,
        /// Requests to PartnerStack per finished reconcile pass, by stream.
        pub reconcile_pass_requests: HistogramFamily<StreamLabel> =
            Family::new_with_constructor(pass_requests),
        /// When this process last finished a reconcile pass without error, unix time (0:
        /// not yet), by stream.
        #[unit(Seconds)]
        pub reconcile_last_success_timestamp_seconds: Family<StreamLabel, FloatGauge>,
        /// Worst-case staleness of the copy now (+Inf before the first completed pass), by
        /// stream.
        ///
        /// Refreshed when scraped.
        #[unit(Seconds)]
        pub reconcile_staleness_seconds: Family<StreamLabel, FloatGauge, fn() -> FloatGauge> =
            Family::new_with_constructor(not_fresh_yet),
        /// The staleness a stream should stay within, fixed by the settings (poll-only
        /// streams: reconcile.staleness_bound; webhook-covered: the interval with its jitter
        /// plus reconcile.pass_budget), by stream.
        #[unit(Seconds)]
        pub reconcile_staleness_bound_seconds: Family<StreamLabel, FloatGauge>,
        /// 1 while this replica is the reconciler.
        pub reconcile_leader: Gauge,
        /// HTTP requests sent to PartnerStack (each attempt), by method, endpoint and status
        /// class.
        #[values(Answer::CLASSES.join(", "))]
        pub partnerstack_requests: Family<UpstreamAnswerLabels, Counter>,
        /// Time PartnerStack took to answer, by method and endpoint.
        #[unit(Seconds)]
        pub partnerstack_request_duration_seconds: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(upstream_duration),
        /// Requests to PartnerStack sent again after a failed attempt (429, 5xx, timeout),
        /// by method and endpoint.
        pub partnerstack_retries: Family<UpstreamLabels, Counter>,
        /// HTTP requests sent to PartnerStack (each attempt), by what they were spent on:
        /// reconcile passes, webhook verification, writes (their look-ups included), other.
        #[values(partnerstack::client::Purpose::ALL.map(partnerstack::client::Purpose::as_str).join(", "))]
        pub partnerstack_requests_spent: Family<PurposeLabel, Counter>,
        /// Pooled database connections, by state.
        ///
        /// Refreshed when scraped.
        #[values(PoolLabel::STATES.join(", "))]
        pub db_pool_connections: Family<PoolLabel, Gauge>,
        /// The database pool's configured size.
        pub db_pool_max_connections: Gauge,
        /// Objects set aside now (refused by the copy, kept with their error while the
        /// rest went on), by stream.
        ///
        /// Refreshed when scraped.
        pub set_aside_objects: Family<EntityLabel, Gauge>,
    }
}

impl Metrics {
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

    /// Objects set aside now, per stream (streams not in `counts` have none).
    pub fn set_set_aside(&self, counts: &std::collections::HashMap<Entity, i64>) {
        for entity in Entity::ALL {
            self.set_aside_objects
                .get_or_create(&EntityLabel {
                    stream: entity.stream(),
                })
                .set(counts.get(&entity).copied().unwrap_or(0));
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
        m.partnerstack_requests_spent
            .get_or_create(&PurposeLabel {
                purpose: exchange.purpose.as_str(),
            })
            .inc();
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_exchanges_count_by_endpoint_and_class() {
        let mut exposition = Exposition::new();
        let m = exposition.add(Metrics::new());
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
                purpose: partnerstack::client::Purpose::Verify,
            });
        }
        let text = exposition.render();
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
