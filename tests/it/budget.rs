//! One request budget per PartnerStack account: `partnerstack.requests_per_second` is the
//! total of every replica, shared through Postgres, and writes still go first.

use std::time::{Duration, Instant};

use partnerstack::Entity;
use partnerstack_sim::{Behaviours, GuessedFilters, Options, Running, TimeFilters};
use partnerstack_sync::config::Verification;
use serde_json::{Value, json};

use crate::client::{program, stand_in};
use crate::common::{API_TOKEN, Process, TestApp, TestDb, WEBHOOK_TOKEN, as_env};

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

/// `customer.updated` deliveries naming the first `n` of `customers` that PartnerStack
/// still lists (by key and `customer_key`: one GET finds it, or a list lookup when it has
/// no `customer_key`).
fn deliveries(customers: &[Value], n: usize) -> Vec<String> {
    customers
        .iter()
        .filter(|c| c["archived"] != true)
        .take(n)
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
    let customers: Vec<Value> = sim.simulator.state(Some(Entity::Customer))["streams"]["customers"]
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
    let bodies = deliveries(&customers, 180);
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
        .map(|t| t.into_std())
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
    // Every replica's applier and write worker claim from the shared tables, so which
    // replicas end up sending is up to scheduling (one may find nothing left to verify);
    // the leader's scans and another replica's reads at least shared the bucket.
    assert!(
        holders >= 2,
        "{holders} replica(s) took tokens from the database"
    );
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

/// The `data` of `GET /v1/sync`.
async fn sync_status(app: &TestApp) -> Value {
    let r = app.api_get("/v1/sync").await;
    r.json::<Value>().await.unwrap()["data"].clone()
}

/// The sum of every sample of `/metrics` whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    crate::metrics::samples(text)
        .into_iter()
        .filter(|(series, _)| series.starts_with(prefix))
        .map(|(_, value)| value)
        .sum()
}

/// Every request the stand-in saw is counted once, where it was spent: the passes'
/// (an incremental pass that finds nothing reports its one request), the verifications'
/// and the writes' add up to the stand-in's count, in `/v1/sync`, in `/metrics` and in
/// `/v1/writes`.
#[tokio::test]
async fn requests_are_counted_where_they_are_spent() {
    let sim = stand_in(program()).await;
    let base_url = sim.base_url();
    let app = TestApp::spawn_with(|c| {
        c.partnerstack = crate::client::client_config(&base_url);
        c.webhooks.verification = Verification::Fetch;
        c.reconcile.interval = Some(Duration::from_secs(3600));
    })
    .await;
    let seen = || -> u64 { sim.simulator.faults().requests().values().sum() };
    // The first passes: every stream scanned in full once.
    let mut status = Value::Null;
    for _ in 0..300 {
        status = sync_status(&app).await;
        let done = status["streams"]
            .as_array()
            .is_some_and(|s| s.len() == 7 && s.iter().all(|s| s["last"]["status"] == "ok"));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let per_pass = |status: &Value| -> u64 {
        status["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["last"]["requests"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        status["requests"]["reconcile"],
        per_pass(&status),
        "{status}"
    );
    assert_eq!(status["requests"]["total"], seen(), "{status}");

    // An incremental pass that finds nothing: one request, and it says so.
    let before = status["requests"]["reconcile"].as_u64().unwrap();
    let customers_before = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "customers")
        .unwrap()["last"]["finished_at"]
        .clone();
    let asked = app
        .http
        .post(app.url("/v1/sync/customers"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let customers = loop {
        let status = sync_status(&app).await;
        let customers = status["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == "customers")
            .unwrap()
            .clone();
        if customers["last"]["finished_at"] != customers_before {
            break customers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(customers["last"]["kind"], "incremental", "{customers}");
    assert_eq!(customers["last"]["seen"], 0, "{customers}");
    assert_eq!(customers["last"]["requests"], 1, "{customers}");

    // Five deliveries verified by a read each (too few to read by the page), two writes.
    let objects: Vec<Value> = sim.simulator.state(Some(Entity::Customer))["streams"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["customer_key"].is_string())
        .cloned()
        .collect();
    for body in deliveries(&objects, 5) {
        assert_eq!(app.deliver(body).await.status(), 200);
    }
    app.settle().await;
    let partner = crate::writes::a_partner_key(&sim);
    for i in 0..2 {
        let r = app
            .http
            .post(app.url("/v1/customers?wait=10"))
            .bearer_auth(API_TOKEN)
            .json(&json!({"customer_key": format!("spent-{i}"), "email": format!("spent-{i}@example.com"),
                          "partner_key": partner}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let status = sync_status(&app).await;
    let requests = &status["requests"];
    let metrics = app.metrics().await;
    let written = app
        .db
        .count("SELECT coalesce(sum(upstream_requests), 0)::bigint FROM writes")
        .await;
    println!("[budget counted] stand-in {}, /v1/sync {requests}", seen());
    assert_eq!(requests["total"], seen(), "{requests}");
    assert_eq!(requests["reconcile"], before + 1);
    assert_eq!(requests["verify"], 5);
    assert_eq!(requests["write"], written);
    assert_eq!(requests["other"], 0);
    for purpose in ["reconcile", "verify", "write", "other"] {
        let metric = metric_sum(
            &metrics,
            &format!("psync_partnerstack_requests_spent_total{{purpose=\"{purpose}\"}}"),
        );
        assert_eq!(Some(metric as u64), requests[purpose].as_u64(), "{purpose}");
    }
    assert_eq!(
        metric_sum(&metrics, "psync_reconcile_requests_total{") as u64,
        before + 1,
        "the passes' requests in /metrics"
    );
    // And on the status page, for a person.
    let page = app
        .http
        .get(app.url("/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = |field: &str| -> u64 {
        crate::status::cell(&page, field)
            .replace(',', "")
            .parse()
            .unwrap()
    };
    for purpose in ["reconcile", "verify", "write", "other"] {
        assert_eq!(
            Some(shown(&format!("requests_{purpose}"))),
            requests[purpose].as_u64(),
            "{purpose} on /status"
        );
    }
    assert_eq!(Some(shown("requests_sent")), requests["total"].as_u64());
    app.stop().await;
    sim.stop().await.unwrap();
}

/// Requests the stand-in saw for `endpoint` (`GET customers/{key}`, `GET customers`).
fn seen(sim: &Running, endpoint: &str) -> u64 {
    sim.simulator
        .faults()
        .requests()
        .get(endpoint)
        .copied()
        .unwrap_or(0)
}

/// 1,000 `customer.updated` deliveries sent at once, at a budget of 5 requests/s: they are
/// verified by the page (the customers updated lately, 250 a page), each applied with
/// PartnerStack's current object, in about as many requests as pages (at most 30, not
/// 1,000); deliveries are applied while others are still being read; and a handful of
/// deliveries later are still read one by one. Under each answer to what the customers'
/// list does with its time filters: `min_updated` (seen) and `max_updated` (guessed)
/// honoured; the guessed `max_updated` ignored; every time filter ignored (the pages are
/// then the whole list, newest created first, and the unchanged customers among them cost
/// pages).
#[tokio::test]
async fn a_burst_of_deliveries_is_verified_by_the_page_and_applied_as_it_is_read() {
    for behaviours in [
        Behaviours::default(),
        Behaviours {
            guessed_filters: GuessedFilters::Ignored,
            ..Behaviours::default()
        },
        Behaviours {
            time_filters: TimeFilters::Ignored,
            ..Behaviours::default()
        },
    ] {
        println!(
            "[budget burst] guessed filters {:?}, time filters {:?}",
            behaviours.guessed_filters, behaviours.time_filters
        );
        burst(behaviours).await;
    }
}

async fn burst(behaviours: Behaviours) {
    let sim = stand_in(Options {
        customers: 2000,
        behaviours,
        ..program()
    })
    .await;
    // PartnerStack changes customers (its webhooks are the deliveries below).
    let changes = sim.simulator.mutate(
        1500,
        Some(partnerstack_sim::MutationKind::UpdateCustomer),
        partnerstack_sim::Notify::None,
    );
    let mut named = std::collections::HashSet::new();
    let updated: Vec<Value> = changes
        .iter()
        .rev()
        .filter(|c| named.insert(c.key.clone()))
        .map(|c| c.object.clone())
        .filter(|c| c["archived"] != true)
        .collect();
    assert!(updated.len() >= 1003, "{} customers updated", updated.len());
    let base_url = sim.base_url();
    let app = TestApp::spawn_with(|c| {
        c.partnerstack = crate::client::client_config(&base_url);
        c.partnerstack.requests_per_second = RATE;
        c.webhooks.verification = Verification::Fetch;
    })
    .await;
    // PartnerStack answering in half a second, so that reading takes a while: each
    // page's deliveries are to be applied before the next page is in.
    sim.simulator
        .faults()
        .update(partnerstack_sim::FaultUpdate {
            slow_ms: Some(500),
            ..partnerstack_sim::FaultUpdate::default()
        })
        .unwrap();
    let started = Instant::now();
    let bodies = deliveries(&updated, 1000);
    let answers = futures_util::future::join_all(bodies.into_iter().map(|b| app.deliver(b))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    // Watch: deliveries applied while the stand-in is still asked for objects.
    let mut applied_while_reading = false;
    let mut last = (0, 0);
    loop {
        let applied = app
            .db
            .count("SELECT count(*) FROM webhook_events WHERE outcome <> 'pending'")
            .await;
        let reads = seen(&sim, "GET customers") + seen(&sim, "GET customers/{key}");
        if last.0 > 0 && last.0 < 1000 && reads > last.1 {
            applied_while_reading = true;
        }
        last = (applied, reads);
        if applied == 1000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{applied} of 1000 applied after 120 s, {reads} reads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let pages = seen(&sim, "GET customers");
    let singles = seen(&sim, "GET customers/{key}");
    println!(
        "[budget burst] 1000 deliveries applied in {:.1} s with {pages} pages and {singles} \
         single reads at {RATE}/s ({:?})",
        took.as_secs_f64(),
        sim.simulator.faults().requests()
    );
    assert!(
        pages + singles <= 30,
        "{pages} pages, {singles} single reads"
    );
    assert!(
        applied_while_reading,
        "deliveries were applied only at the end"
    );
    // Applied, or stale: its object came already with another delivery's page.
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM webhook_events WHERE outcome IN ('applied', 'stale')")
            .await,
        1000
    );
    // Each with PartnerStack's current object.
    let current: std::collections::HashMap<String, Value> =
        sim.simulator.state(Some(Entity::Customer))["streams"]["customers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["key"].as_str().unwrap().to_string(), c.clone()))
            .collect();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as("SELECT key, email FROM customers")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert!(rows.len() >= 1000, "{} rows", rows.len());
    for (key, email) in rows {
        assert_eq!(
            email.as_deref(),
            current[&key]["email"].as_str(),
            "customer {key}"
        );
    }

    // A handful later, about changes made after the pages were read: read one by one.
    let later: Vec<Value> = updated[1000..]
        .iter()
        .filter(|c| c["customer_key"].is_string())
        .take(3)
        .enumerate()
        .map(|(i, c)| {
            let email = json!(format!("later-{i}@example.com"));
            let patch = serde_json::Map::from_iter([("email".to_string(), email)]);
            sim.simulator
                .patch(
                    Entity::Customer,
                    c["key"].as_str().unwrap(),
                    &patch,
                    partnerstack_sim::Notify::None,
                )
                .unwrap()
                .object
        })
        .collect();
    for body in deliveries(&later, 3) {
        assert_eq!(app.deliver(body).await.status(), 200);
    }
    app.settle().await;
    for customer in &later {
        let email: Option<String> =
            sqlx::query_scalar("SELECT email FROM customers WHERE key = $1")
                .bind(customer["key"].as_str().unwrap())
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(email.as_deref(), customer["email"].as_str());
    }
    assert_eq!(seen(&sim, "GET customers/{key}"), singles + 3);
    assert_eq!(seen(&sim, "GET customers"), pages);
    app.stop().await;
    sim.stop().await.unwrap();
}
