//! `/metrics` as Prometheus reads it: every series from the start (so `increase()` sees a
//! counter's first failures), PartnerStack's answers by endpoint and status, the
//! database's backlog and each stream's staleness, and the process itself.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::client::{program, wired};
use crate::common::{API_TOKEN, TestApp};

/// Every sample of an exposition: `name{labels}` → value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some((series.to_string(), value))
        })
        .collect()
}

/// The value of `series` in `samples`, or a panic naming it.
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    samples(&app.metrics().await)
}

/// Polls `/metrics` (at most 30 s) until `ok` holds.
async fn wait_for_metrics(
    app: &TestApp,
    what: &str,
    ok: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let mut last = BTreeMap::new();
    for _ in 0..300 {
        last = scrape(app).await;
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} not reached within 30 s; last scrape: {last:#?}");
}

const ERRORS: &str = r#"psync_reconcile_errors_total{stream="customers"}"#;
const CUSTOMERS_5XX: &str =
    r#"psync_partnerstack_requests_total{method="GET",endpoint="/customers",status="5xx"}"#;
const CUSTOMERS_OK: &str =
    r#"psync_partnerstack_requests_total{method="GET",endpoint="/customers",status="2xx"}"#;
const CUSTOMERS_RETRIES: &str =
    r#"psync_partnerstack_retries_total{method="GET",endpoint="/customers"}"#;

/// The stand-in's API stops answering; a pass fails. The error counter and PartnerStack's
/// 5xx counter were there at zero before (so `increase()` sees the failure), and rise.
/// Nothing the service did in between created a series that was not there at the start.
#[tokio::test]
async fn errors_count_up_from_a_zero_that_was_there_before_the_first_failure() {
    let (app, sim) = wired(program(), |c| {
        c.reconcile.interval = Some(Duration::from_secs(3600));
    })
    .await;
    let at_start = scrape(&app).await;

    // The first passes (at start) succeed. The staleness gauge is refreshed from the
    // database at scrape time, within a deadline (a scrape on a loaded machine can miss it
    // and show the last value): wait for a scrape that has both.
    let synced = wait_for_metrics(&app, "the first customers pass", |s| {
        s.get(r#"psync_reconcile_passes_total{stream="customers"}"#)
            .is_some_and(|v| *v >= 1.0)
            && s.get(r#"psync_reconcile_staleness_seconds{stream="customers"}"#)
                .is_some_and(|v| v.is_finite())
    })
    .await;
    assert_eq!(value(&at_start, ERRORS), 0.0);
    assert_eq!(value(&synced, ERRORS), 0.0);
    assert_eq!(value(&synced, CUSTOMERS_5XX), 0.0);
    assert_eq!(value(&synced, CUSTOMERS_RETRIES), 0.0);
    assert!(value(&synced, CUSTOMERS_OK) >= 1.0);
    let staleness = value(
        &synced,
        r#"psync_reconcile_staleness_seconds{stream="customers"}"#,
    );
    let bound = value(
        &synced,
        r#"psync_reconcile_staleness_bound_seconds{stream="customers"}"#,
    );
    assert!(
        staleness.is_finite() && staleness < bound,
        "{staleness} < {bound}"
    );
    let last = value(
        &synced,
        r#"psync_reconcile_last_success_timestamp_seconds{stream="customers"}"#,
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(last > now - 120.0 && last <= now + 1.0, "{last} vs {now}");
    assert!(
        value(
            &synced,
            r#"psync_reconcile_pass_requests_count{stream="customers"}"#
        ) >= 1.0
    );
    assert_eq!(value(&synced, "psync_reconcile_leader"), 1.0);

    // PartnerStack stops answering (every request 503); a pass is asked for and fails.
    crate::client::partnerstack_down(&sim, true);
    let asked = app
        .http
        .post(app.url("/v1/sync/customers"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    // A webhook for a customer cannot be verified meanwhile: it waits, pending.
    let delivered = app
        .deliver(json!({"event": "customer.updated", "key": "cust_whoever"}).to_string())
        .await;
    assert_eq!(delivered.status(), 200);
    let failed = wait_for_metrics(&app, "the failed pass", |s| {
        s.get(ERRORS).is_some_and(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(value(&failed, ERRORS), 1.0);
    assert!(value(&failed, CUSTOMERS_5XX) >= 1.0);
    assert!(value(&failed, CUSTOMERS_RETRIES) >= 1.0);
    assert!(
        value(
            &failed,
            r#"psync_webhook_deliveries_total{result="accepted"}"#
        ) >= 1.0
    );
    let backlog = wait_for_metrics(&app, "a pending delivery", |s| {
        s.get("psync_webhook_deliveries_pending")
            .is_some_and(|v| *v >= 1.0)
            && s.get("psync_webhook_apply_lag_seconds")
                .is_some_and(|v| *v > 0.0)
    })
    .await;
    // The last success is still the first pass's.
    assert_eq!(
        value(
            &backlog,
            r#"psync_reconcile_last_success_timestamp_seconds{stream="customers"}"#
        ),
        last
    );

    // The API's own answers, by route template (never a raw path) and status.
    let missing = app.api_get("/v1/customers/cust_nobody").await;
    assert_eq!(missing.status(), 404);
    let after = scrape(&app).await;
    assert!(
        value(
            &after,
            r#"psync_http_requests_total{method="GET",route="/v1/customers/{key}",status="404"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            r#"psync_http_request_duration_seconds_count{method="GET",route="/v1/customers/{key}"}"#
        ) >= 1.0
    );

    // Every series now was there at the start.
    let new: Vec<&String> = after
        .keys()
        .filter(|s| !s.starts_with("process_") && !at_start.contains_key(*s))
        .collect();
    assert!(new.is_empty(), "series that appeared later: {new:#?}");
    app.stop().await;
    sim.stop().await.unwrap();
}

/// The pool, the build and the process are described too.
#[tokio::test]
async fn the_pool_the_build_and_the_process_are_exported() {
    let app = TestApp::spawn().await;
    let s = scrape(&app).await;
    let version = format!(
        r#"psync_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&s, &version), 1.0);
    let max = value(&s, "psync_db_pool_max_connections");
    let idle = value(&s, r#"psync_db_pool_connections{state="idle"}"#);
    let busy = value(&s, r#"psync_db_pool_connections{state="in_use"}"#);
    assert!(
        max >= 2.0 && idle + busy >= 1.0 && idle + busy <= max,
        "{idle} {busy} {max}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&s, name) > 0.0, "{name}");
    }
    // Without credentials there is no reconciler and no PartnerStack client: no series
    // for them, so no alert about a stream nobody syncs.
    assert!(!s.keys().any(|k| k.starts_with("psync_reconcile_staleness")));
    assert!(
        !s.keys()
            .any(|k| k.starts_with("psync_partnerstack_requests"))
    );
    app.stop().await;
}
