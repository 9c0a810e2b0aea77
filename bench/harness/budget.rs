//! Scenario: PartnerStack's request budget. At 5 requests/s, the few a second a real
//! account has: how long until a burst of 1,000 `customer_updated` webhooks is fresh in
//! the copy and how many requests verifying them took; requests per hour when nothing
//! changes, against the fewest the reconciler's configured bounds need; and the look-ups
//! one write costs when its answer is lost. Requests are counted by the stand-in, as
//! PartnerStack would see them, and compared with what the service reports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use partnerstack::Entity;
use partnerstack_sim::{Behaviours, FaultUpdate, MutationKind, Notify, Options, Running};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::service::{API_TOKEN, Service, WEBHOOK_TOKEN};
use crate::{Bench, Row};

const PUBLIC_KEY: &str = "pk_bench_budget_0123";
const SECRET_KEY: &str = "sk_bench_budget_0123";
/// The account's budget, requests per second.
const RATE: &str = "5";
/// Items per list page.
const PAGE: u64 = 250;
/// `reconcile.staleness_bound` (the default), seconds: how often the streams without an
/// "updated since" filter are scanned in full.
const STALENESS_BOUND: u64 = 3600;

pub async fn budget(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: budget");
    burst(bench).await.context("a burst of webhooks")?;
    steady(bench).await.context("steady state")?;
    uncertain(bench).await.context("an uncertain write")?;
    Ok(())
}

/// Every request the stand-in has answered.
fn requests(sim: &Running) -> u64 {
    sim.simulator.faults().requests().values().sum()
}

fn env<'a>(base_url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("PARTNERSTACK_BASE_URL", base_url),
        ("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY),
        ("PARTNERSTACK_SECRET_KEY", SECRET_KEY),
        ("PARTNERSTACK_REQUESTS_PER_SECOND", RATE),
    ];
    env.extend_from_slice(extra);
    env
}

/// 1,000 `customer.updated` deliveries sent at once to a service verifying every delivery
/// with PartnerStack: seconds until the copy holds every one of those customers as
/// PartnerStack has it now, and the requests spent.
async fn burst(bench: &mut Bench) -> anyhow::Result<()> {
    let sim = partnerstack_sim::start(
        &Options {
            customers: 2000,
            ..Options::small(50)
        },
        PUBLIC_KEY,
        SECRET_KEY,
    )
    .await?;
    let changes = sim
        .simulator
        .mutate(1500, Some(MutationKind::UpdateCustomer), Notify::None);
    let mut named = std::collections::HashSet::new();
    let updated: Vec<Value> = changes
        .iter()
        .rev()
        .filter(|c| named.insert(c.key.clone()))
        .map(|c| c.object.clone())
        .filter(|c| c["archived"] != true)
        .take(1000)
        .collect();
    if updated.len() < 1000 {
        bail!("only {} customers updated", updated.len());
    }
    let url = bench.database("bench_budget_burst").await?;
    let base_url = sim.base_url();
    let svc = Service::start(
        &url,
        &env(&base_url, &[("PSYNC_WEBHOOKS_VERIFICATION", "fetch")]),
    )
    .await?;
    let http = partnerstack::http::builder().build()?;
    let hook = format!("http://{}/webhooks/partnerstack/{WEBHOOK_TOKEN}", svc.addr);
    let before = requests(&sim);
    let started = Instant::now();
    let sent = futures_util::future::join_all(updated.iter().map(|c| {
        let body = json!({"event": "customer.updated", "data": {
            "key": c["key"], "customer_key": c["customer_key"],
            "updated_at": c["updated_at"], "created_at": c["created_at"]}});
        http.post(&hook).json(&body).send()
    }))
    .await;
    let acknowledged = sent
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    if acknowledged != updated.len() {
        bail!(
            "{acknowledged} of {} deliveries acknowledged",
            updated.len()
        );
    }
    let acknowledged_in = started.elapsed();
    let wanted: HashMap<String, Option<String>> = updated
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap_or_default().to_string(),
                c["email"].as_str().map(String::from),
            )
        })
        .collect();
    let mut db = PgConnection::connect(&url).await?;
    let fresh_in = loop {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT key, email FROM customers WHERE deleted_at IS NULL")
                .fetch_all(&mut db)
                .await?;
        let fresh = rows
            .iter()
            .filter(|(key, email)| wanted.get(key) == Some(email))
            .count();
        if fresh == wanted.len() {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{fresh} of {} fresh after 300 s", wanted.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    db.close().await?;
    let spent = requests(&sim) - before;
    svc.stop().await?;
    sim.stop().await?;
    bench.notes.push(format!(
        "Budget, a burst: 1,000 `customer.updated` deliveries (each naming a customer \
         PartnerStack changed, of 2,000) sent at once and acknowledged in {:.1} s, to a \
         service verifying every delivery at a budget of {RATE} requests/s with no \
         reconciler; fresh means the copy holds each of the 1,000 as the stand-in has it. \
         {spent} requests (the fewest possible: {}). Before this round the same burst left \
         none fresh after 90 s, with 454 requests spent.",
        acknowledged_in.as_secs_f64(),
        1000u64.div_ceil(PAGE),
    ));
    bench.row(Row::new(
        "budget",
        "a burst of 1,000 webhooks at 5 requests/s: seconds until fresh",
        format!("{:.1}", fresh_in.as_secs_f64()),
        "-".into(),
        None,
        "(reported)",
        None,
    ));
    bench.row(Row::new(
        "budget",
        "requests to verify 1,000 webhooks (webhooks per request)",
        format!("{spent} ({:.0})", 1000.0 / spent.max(1) as f64),
        "-".into(),
        None,
        "<= 30",
        Some(spent <= 30),
    ));
    Ok(())
}

/// The reconciler alone, nothing changing upstream: requests per hour against the fewest
/// its bounds need (per stream, ceil(N/250) per full scan and one request per incremental
/// pass, or ceil(W/250) for a stream read by its creation window of W objects).
async fn steady(bench: &mut Bench) -> anyhow::Result<()> {
    let (interval, full_interval) = (20u64, 120u64);
    let measured = if bench.quick { 120u64 } else { 360 };
    let sim = partnerstack_sim::start(&Options::default(), PUBLIC_KEY, SECRET_KEY).await?;
    let url = bench.database("bench_budget_steady").await?;
    let base_url = sim.base_url();
    let (interval_s, full_s, bound_s) = (
        format!("{interval}s"),
        format!("{full_interval}s"),
        format!("{STALENESS_BOUND}s"),
    );
    let svc = Service::start(
        &url,
        &env(
            &base_url,
            &[
                ("PSYNC_RECONCILE_INTERVAL", interval_s.as_str()),
                ("PSYNC_RECONCILE_FULL_INTERVAL", full_s.as_str()),
                ("PSYNC_RECONCILE_STALENESS_BOUND", bound_s.as_str()),
            ],
        ),
    )
    .await?;
    // The first passes are the backfill: wait for every stream to have synced once.
    let started = Instant::now();
    while crate::count(
        &url,
        "SELECT count(*) FROM sync_streams WHERE last_status = 'ok'",
    )
    .await?
        < Entity::ALL.len() as i64
    {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the backfill did not finish within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = requests(&sim);
    let reported_before = reported(&svc).await?;
    tokio::time::sleep(Duration::from_secs(measured)).await;
    let spent = requests(&sim) - before;
    let reported = reported(&svc).await? - reported_before;
    svc.stop().await?;
    // The fewest requests per hour the bounds need.
    // The fewest requests per hour the bounds need, stream by stream, as the settings
    // schedule them: a pass every `interval`; a full scan every `full_interval`, except
    // for the streams without an "updated since" filter (transactions, rewards), whose
    // full scans keep `staleness_bound` (1 h by default) and whose other passes read
    // their 30-day creation window.
    let hour = 3600.0;
    let passes = hour / interval as f64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut minimum = 0.0;
    for entity in Entity::ALL {
        let pages = (sim.simulator.listed_keys(entity).len() as u64)
            .div_ceil(PAGE)
            .max(1) as f64;
        let (fulls, per_pass) = match entity {
            Entity::Transaction | Entity::Reward => {
                let since = now_ms - 30 * 24 * 3600 * 1000;
                let recent = sim.simulator.state(Some(entity))["streams"][entity.stream()]
                    .as_array()
                    .map_or(0, |items| {
                        items
                            .iter()
                            .filter(|o| o["created_at"].as_i64().is_some_and(|t| t >= since))
                            .count() as u64
                    });
                (hour / STALENESS_BOUND as f64, recent.div_ceil(PAGE).max(1))
            }
            _ => (hour / full_interval as f64, 1),
        };
        minimum += fulls * pages + (passes - fulls) * per_pass as f64;
    }
    sim.stop().await?;
    let per_hour = spent as f64 * hour / measured as f64;
    bench.notes.push(format!(
        "Budget, steady state: the stand-in's default program (2,000 customers, 5,000 \
         transactions, ...), nothing changing, the reconciler alone with a pass every \
         {interval} s and a full scan every {full_interval} s (jittered by up to 10%), \
         measured for {measured} s after the backfill: {spent} requests, {reported} as the \
         service counts them (`psync_partnerstack_requests_spent_total`). The minimum \
         counts, per hour, a pass of every stream every {interval} s and a full scan at \
         ceil(N/250) requests every {full_interval} s (transactions and rewards: every \
         {STALENESS_BOUND} s, their staleness bound, and ceil(W/250) per other pass for \
         the W created within their 30-day window); one request per other pass."
    ));
    bench.row(Row::new(
        "budget",
        format!(
            "requests per hour at steady state (pass every {interval} s, full scan every {full_interval} s), vs the minimum"
        ),
        format!("{per_hour:.0}"),
        format!("{minimum:.0}"),
        Some(crate::Spread::one(per_hour / minimum.max(1.0))),
        "(reported)",
        None,
    ));
    Ok(())
}

/// The requests the service reports having spent (every purpose), from `/metrics`.
async fn reported(svc: &Service) -> anyhow::Result<u64> {
    let text = partnerstack::http::builder()
        .build()?
        .get(format!("http://{}/metrics", svc.addr))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("psync_partnerstack_requests_spent_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// A customer create whose answer is lost, for a customer PartnerStack shows only after
/// 50 s of a 60 s look-up window: the look-ups it costs.
async fn uncertain(bench: &mut Bench) -> anyhow::Result<()> {
    let sim = partnerstack_sim::start(
        &Options {
            behaviours: Behaviours {
                customer_readable_after_ms: 50_000,
                ..Behaviours::default()
            },
            ..Options::small(20)
        },
        PUBLIC_KEY,
        SECRET_KEY,
    )
    .await?;
    let partner_key =
        sim.simulator.state(Some(Entity::Partner))["streams"]["partnerships"][0]["partner_key"]
            .as_str()
            .unwrap_or("partner")
            .to_string();
    let url = bench.database("bench_budget_uncertain").await?;
    let base_url = sim.base_url();
    let svc = Service::start(
        &url,
        &env(&base_url, &[("PSYNC_WRITES_LOOKUP_WINDOW", "60s")]),
    )
    .await?;
    sim.simulator
        .faults()
        .update(FaultUpdate {
            lose_next: Some(1),
            ..FaultUpdate::default()
        })
        .map_err(anyhow::Error::msg)?;
    let before = sim.simulator.faults().requests();
    let http = partnerstack::http::builder().build()?;
    let answer = http
        .post(format!("http://{}/v1/customers", svc.addr))
        .bearer_auth(API_TOKEN)
        .json(
            &json!({"customer_key": "bench-uncertain", "email": "u@example.com",
                      "partner_key": partner_key}),
        )
        .send()
        .await?;
    let status = answer.status();
    let accepted: Value = answer.json().await?;
    let Some(id) = accepted["data"]["id"].as_i64() else {
        bail!("the write was not accepted: {status} {accepted}");
    };
    let started = Instant::now();
    let write = loop {
        let w: Value = http
            .get(format!("http://{}/v1/writes/{id}", svc.addr))
            .bearer_auth(API_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        match w["data"]["status"].as_str() {
            Some("pending") => {}
            Some(_) => break w["data"].clone(),
            None => bail!("GET /v1/writes/{id} answered {w}"),
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the write was still pending after 120 s: {w}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = sim.simulator.faults().requests();
    let delta = |endpoint: &str| {
        after.get(endpoint).copied().unwrap_or(0) - before.get(endpoint).copied().unwrap_or(0)
    };
    let looks = delta("GET customers/{key}");
    svc.stop().await?;
    sim.stop().await?;
    bench.notes.push(format!(
        "Budget, an uncertain write: a customer create whose answer the stand-in loses, the \
         customer readable only 50 s later, a look-up window of 60 s: the write ended {} \
         ({}) after {:.0} s, with {looks} look-ups and {} requests in all. Before this round \
         a look-up ran every 5 s for 10 minutes (about 120).",
        write["status"].as_str().unwrap_or("?"),
        write["resolution"].as_str().unwrap_or("-"),
        started.elapsed().as_secs_f64(),
        write["upstream_requests"],
    ));
    bench.row(Row::new(
        "budget",
        "look-ups for one uncertain customer write (about 8 per window)",
        format!("{looks}"),
        "-".into(),
        None,
        "<= 10",
        Some(looks <= 10 && write["status"] == "succeeded"),
    ));
    Ok(())
}
