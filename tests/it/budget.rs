//! One request budget per PartnerStack account: `partnerstack.requests_per_second` is the
//! total of every replica, shared through Postgres, and writes still go first.

use std::time::{Duration, Instant};

use partnerstack::Entity;
use partnerstack_sim::{Options, Running};
use serde_json::{Value, json};

use crate::client::{program, stand_in};
use crate::common::{API_TOKEN, Process, TestDb, WEBHOOK_TOKEN, as_env};

/// The budget of the account in these tests (requests per second, all replicas together).
const RATE: f64 = 5.0;

/// Settings of a replica verifying webhooks and reconciling against `sim`, with the
/// account's budget at [`RATE`] and full scans allowed the whole of it.
fn replica_env(db: &TestDb, sim: &Running) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("DATABASE_URL", Some(db.url.clone())),
        ("PARTNERSTACK_BASE_URL", Some(sim.base_url())),
        (
            "PARTNERSTACK_PUBLIC_KEY",
            Some(crate::client::PUBLIC_KEY.into()),
        ),
        (
            "PARTNERSTACK_SECRET_KEY",
            Some(crate::client::SECRET_KEY.into()),
        ),
        ("PARTNERSTACK_REQUESTS_PER_SECOND", Some(RATE.to_string())),
        ("PARTNERSTACK_PAGE_SIZE", Some("50".into())),
        ("PSYNC_WEBHOOKS_VERIFICATION", Some("fetch".into())),
        ("PSYNC_RECONCILE_INTERVAL", Some("1h".into())),
        ("PSYNC_RECONCILE_SCAN_SHARE", Some("1".into())),
    ]
}

/// The most requests among those sent at `times` within any `window`.
fn busiest(times: &[Instant], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// `customer.updated` deliveries naming `customers` (by `customer_key`, so each is
/// verified by one GET).
fn deliveries(customers: &[Value]) -> Vec<String> {
    customers
        .iter()
        .map(|c| {
            json!({"event": "customer.updated", "data": {
                "key": c["key"], "customer_key": c["customer_key"],
                "updated_at": c["updated_at"], "created_at": c["created_at"]}})
            .to_string()
        })
        .collect()
}

/// Three replicas, one account at 5 requests/s: while the leader runs its full scans (the
/// first passes) and every replica verifies webhooks, the stand-in sees at most the budget
/// (plus its burst of 5 and a second's slack) in any 30 s window, although the replicas
/// together want far more; and a write accepted meanwhile is sent within seconds, ahead of
/// the verification reads its replica had queued before it.
#[tokio::test]
async fn three_replicas_share_one_budget_and_writes_go_first() {
    let db = TestDb::new().await;
    let sim = stand_in(Options {
        customers: 1500,
        partners: 200,
        transactions: 200,
        ..program()
    })
    .await;
    let customers: Vec<Value> = sim.simulator.state(Some(Entity::Customer))["streams"]
        ["customers"]
        .as_array()
        .unwrap()
        .clone();
    let partner = crate::writes::a_partner_key(&sim);
    let vars = replica_env(&db, &sim);
    let started = Instant::now();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Process::serve(&as_env(&vars)).await);
    }
    let http = partnerstack::http::builder().build().unwrap();
    // 60 deliveries to each replica: 180 verification reads, queued at once.
    let bodies = deliveries(&customers[..180]);
    for (i, chunk) in bodies.chunks(60).enumerate() {
        for body in chunk {
            let r = http
                .post(replicas[i].url(&format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}")))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A write through a replica whose verification reads are queued.
    let accepted = Instant::now();
    let answer: Value = http
        .post(replicas[2].url("/v1/customers?wait=30"))
        .bearer_auth(API_TOKEN)
        .json(&json!({
            "customer_key": "budget-write-1",
            "email": "budget-write-1@example.com",
            "partner_key": partner,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let write_took = accepted.elapsed();
    assert_eq!(answer["data"]["status"], "succeeded", "{answer}");

    // Until every delivery is applied (each verified by a read) and every stream scanned.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let pending = db
            .count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
            .await;
        let scanned = db
            .count("SELECT count(*) FROM sync_streams WHERE last_full_at IS NOT NULL")
            .await;
        if pending == 0 && scanned == 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} deliveries pending, {scanned} streams scanned after 150 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    let times: Vec<Instant> = sim
        .simulator
        .faults()
        .request_times()
        .into_iter()
        .filter(|t| *t >= started)
        .collect();
    let window = Duration::from_secs(30);
    let most = busiest(&times, window);
    let holders = db
        .count("SELECT count(*) FROM request_budget_holders")
        .await;
    println!(
        "[budget three replicas] {} requests in {:.1} s ({:.2}/s), at most {most} in 30 s; \
         {holders} replicas leased; the write took {:.1} s",
        times.len(),
        took.as_secs_f64(),
        times.len() as f64 / took.as_secs_f64(),
        write_took.as_secs_f64()
    );
    assert!(
        took > Duration::from_secs(35),
        "the replicas wanted more than 30 s of the budget"
    );
    assert!(
        most as f64 <= RATE * 31.0 + RATE,
        "{most} requests within 30 s at a budget of {RATE}/s"
    );
    // The budget was used, not starved: at least half its rate on average.
    assert!(
        times.len() as f64 >= RATE * 0.5 * took.as_secs_f64(),
        "{} requests in {took:?}",
        times.len()
    );
    assert_eq!(holders, 3, "every replica took its tokens from the database");
    // Its replica had 60 reads queued (12 s of the whole budget); the write went first.
    assert!(
        write_took < Duration::from_secs(6),
        "the write waited {write_took:?}"
    );
    for replica in replicas {
        replica.terminate().await;
    }
    sim.stop().await.unwrap();
}
