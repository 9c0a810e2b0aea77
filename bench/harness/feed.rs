//! Scenario: the change feed's end-to-end latency. Webhooks arrive at a fixed rate; a
//! reader long-polls `GET /v1/changes`; each change's latency is from the moment its
//! webhook was acknowledged (the load generator read the 200) to the moment the reader
//! holds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::service::{API_TOKEN, Service, WEBHOOK_TOKEN};
use crate::{Bench, Row, load};

/// Deliveries per second.
const RATE: f64 = 500.0;

/// The feed latency at [`RATE`], p50 and p99.
pub async fn latency(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: feed latency");
    let url = bench.database("bench_feed").await?;
    let svc = Service::start(&url, &[]).await?;
    let run = "feed".to_string();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = CancellationToken::new();
    let reader = tokio::spawn(read(svc.addr.to_string(), received.clone(), stop.clone()));
    let workload = Arc::new(load::Deliveries {
        path: format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}"),
        run: run.clone(),
    });
    let stats = load::open(svc.addr, workload, RATE, 64, bench.durations.latency, None).await?;
    // Let the reader catch up (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && received.lock().await.len() < stats.answered.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let reads = reader.await??;
    let received = received.lock().await;
    let mut latencies: Vec<u64> = Vec::with_capacity(stats.answered.len());
    let mut missing = 0;
    for (n, acked) in &stats.answered {
        match received.get(&format!("cus_{run}_{n}")) {
            Some(at) => latencies.push(at.saturating_duration_since(*acked).as_micros() as u64),
            None => missing += 1,
        }
    }
    latencies.sort_unstable();
    let (p50, p99) = (
        load::quantile_ms(&latencies, 0.5),
        load::quantile_ms(&latencies, 0.99),
    );
    bench.notes.push(format!(
        "Feed latency: {} deliveries acknowledged at {RATE:.0}/s, {} changes read by one \
         long-polling reader in {reads} requests, {missing} not read within 30 s of the end. \
         The feed adds up to `changes.poll_interval` (50 ms) to apply time by design.",
        stats.answered.len(),
        latencies.len(),
    ));
    bench.row(Row::new(
        "feed",
        format!("webhook ack to reader at {RATE:.0}/s, p50/p99 ms"),
        format!("{p50:.1}/{p99:.1}"),
        "-".into(),
        None,
        "(reported)",
        Some(missing == 0 && stats.failed == 0).filter(|ok| !ok),
    ));
    svc.stop().await?;
    Ok(())
}

/// Follows the feed with `wait` until stopped, recording when each key's change arrived.
/// Returns how many requests it made.
async fn read(
    addr: String,
    received: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let http = partnerstack::http::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut after: Option<String> = None;
    let mut requests = 0;
    while !stop.is_cancelled() {
        let mut url = format!("http://{addr}/v1/changes?limit=1000&wait=1");
        if let Some(c) = &after {
            url.push_str(&format!("&after={c}"));
        }
        let page: Value = http
            .get(&url)
            .bearer_auth(API_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        requests += 1;
        let now = Instant::now();
        let data = &page["data"];
        if let Some(c) = data["ending_cursor"].as_str() {
            after = Some(c.to_string());
        }
        let mut received = received.lock().await;
        for item in data["items"].as_array().into_iter().flatten() {
            if let Some(key) = item["key"].as_str() {
                received.entry(key.to_string()).or_insert(now);
            }
        }
    }
    Ok(requests)
}
