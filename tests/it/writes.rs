//! The write path: `/v1` writes go through the outbox to the stand-in, once each, whatever
//! answers are lost on the way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use partnerstack::Entity;
use partnerstack_sim::behaviour::{Behaviours, DuplicateCustomerKey, DuplicateTransactionKey};
use partnerstack_sim::{FaultUpdate, Options, Running};
use partnerstack_sync::config::Config;
use serde_json::{Value, json};

use crate::client::{client_config, program, stand_in};
use crate::common::{API_TOKEN, Process, TestApp, TestDb, as_env};

/// The service with writes sent to `sim`: short back-off, `lookup_window` as given.
pub(crate) async fn service(sim: &Running, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let base_url = sim.base_url();
    TestApp::spawn_with(|c| {
        c.partnerstack = client_config(&base_url);
        c.writes.max_retry_delay = Duration::from_millis(300);
        c.writes.lookup_window = Duration::from_secs(3);
        tweak(c);
    })
    .await
}

pub(crate) async fn stand_in_with(behaviours: Behaviours) -> Running {
    stand_in(Options {
        behaviours,
        ..program()
    })
    .await
}

/// A POST, PATCH or DELETE under `/v1` with the API token; the status and the body.
pub(crate) async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(API_TOKEN);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    send(app, reqwest::Method::POST, path, Some(body), None).await
}

/// Some partner of the stand-in's program.
pub(crate) fn a_partner_key(sim: &Running) -> String {
    let state = sim.simulator.state(Some(Entity::Partner));
    state["streams"]["partnerships"][0]["partner_key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits (at most `limit`) until no write is pending; how long that took.
pub(crate) async fn drained(db: &TestDb, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if db
            .count("SELECT count(*) FROM writes WHERE status = 'pending'")
            .await
            == 0
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending: Vec<(i64, String, Option<String>, i32, bool, String)> = sqlx::query_as(
        "SELECT id, kind, error_message, attempts, in_doubt,
                format('next %s, leased until %s, now %s', next_attempt_at, leased_until, now())
         FROM writes WHERE status = 'pending' ORDER BY id LIMIT 5",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    panic!("writes still pending after {limit:?}, e.g. {pending:?}");
}

/// The stand-in's objects of `entity`, as JSON objects.
pub(crate) fn objects(sim: &Running, entity: Entity) -> Vec<Value> {
    sim.simulator.state(Some(entity))["streams"][entity.stream()]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// How often each value of `field` occurs among `entity`'s objects whose `field` starts
/// with `prefix`.
pub(crate) fn occurrences(
    sim: &Running,
    entity: Entity,
    field: &str,
    prefix: &str,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for o in objects(sim, entity) {
        if let Some(v) = o[field].as_str().filter(|v| v.starts_with(prefix)) {
            *seen.entry(v.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

/// Write requests the stand-in received (`POST customers`, ...).
pub(crate) fn upstream_writes(sim: &Running, what: &str) -> u64 {
    sim.simulator
        .faults()
        .writes()
        .get(what)
        .copied()
        .unwrap_or(0)
}

/// 200 customers and 500 of their transactions while the stand-in loses answers after
/// committing (20% answered 500, 10% cut off), throttles, and fails some requests before
/// committing: it ends with each customer and each transaction exactly once, and every
/// write succeeded. Run under both guesses of each duplicate behaviour; in the second run
/// a new customer is not readable for 2 s, so a look-up after a lost answer finds nothing
/// at first, and sending again then would make a second customer (duplicates are
/// accepted there).
#[tokio::test]
async fn lost_answers_throttling_and_errors_make_no_duplicates() {
    for (customers, transactions, readable_after_ms) in [
        (
            DuplicateCustomerKey::Reject,
            DuplicateTransactionKey::Idempotent,
            0,
        ),
        (
            DuplicateCustomerKey::Accept,
            DuplicateTransactionKey::Reject,
            2_000,
        ),
    ] {
        let sim = stand_in_with(Behaviours {
            duplicate_customer_key: customers,
            duplicate_transaction_key: transactions,
            customer_readable_after_ms: readable_after_ms,
            ..Behaviours::default()
        })
        .await;
        let app = service(&sim, |c| {
            c.writes.lookup_window = Duration::from_secs(8);
        })
        .await;
        sim.simulator
            .faults()
            .update(FaultUpdate {
                after_commit_fail: Some(0.2),
                after_commit_drop: Some(0.1),
                error_rate: Some(0.05),
                rate_limit: Some(300.0),
                ..FaultUpdate::default()
            })
            .unwrap();
        let partner = a_partner_key(&sim);
        let started = Instant::now();
        // Eight customers at a time, each one's create accepted before its transactions
        // (2 or 3), as a signup and its billing would be.
        let mut accepted = 0;
        for chunk in (0..200).collect::<Vec<usize>>().chunks(8) {
            let answers = futures_util::future::join_all(chunk.iter().map(|&n| {
                let app = &app;
                let partner = &partner;
                async move {
                    let mut answers = vec![
                        post(
                            app,
                            "/v1/customers",
                            &json!({
                                "customer_key": format!("w-cust-{n}"),
                                "email": format!("w{n}@example.com"),
                                "partner_key": partner,
                            }),
                        )
                        .await,
                    ];
                    for t in 0..(if n % 2 == 0 { 3 } else { 2 }) {
                        answers.push(
                            post(
                                app,
                                "/v1/transactions",
                                &json!({
                                    "key": format!("w-txn-{n}-{t}"),
                                    "customer_key": format!("w-cust-{n}"),
                                    "amount": 1000 + t,
                                    "currency": "usd",
                                }),
                            )
                            .await,
                        );
                    }
                    answers
                }
            }))
            .await;
            for (status, body) in answers.into_iter().flatten() {
                assert!(status == 202 || status == 200, "{status} {body}");
                accepted += 1;
            }
        }
        assert_eq!(accepted, 700);
        let took = drained(&app.db, Duration::from_secs(240)).await;
        let customers_seen = occurrences(&sim, Entity::Customer, "customer_key", "w-cust-");
        let transactions_seen = occurrences(&sim, Entity::Transaction, "key", "w-txn-");
        let twice: Vec<_> = customers_seen
            .iter()
            .chain(transactions_seen.iter())
            .filter(|(_, n)| **n > 1)
            .collect();
        let stats: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT status || '/' || COALESCE(resolution, '-'), count(*), sum(upstream_requests)::bigint
             FROM writes GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        let refusals: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT kind, error_message, count(*) FROM writes WHERE status = 'failed'
             GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5",
        )
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        println!("refusals: {refusals:?}");
        println!(
            "[writes {customers:?}/{transactions:?}/readable after {readable_after_ms} ms] {accepted} accepted, drained in {:.1} s \
             after the last was accepted ({:.1} s in all); upstream POST customers={} POST transactions={}; \
             by outcome (status/resolution, writes, requests): {stats:?}",
            took.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            upstream_writes(&sim, "POST customers"),
            upstream_writes(&sim, "POST transactions"),
        );
        assert!(twice.is_empty(), "created twice: {twice:?}");
        assert_eq!(customers_seen.len(), 200, "every customer exists");
        assert_eq!(transactions_seen.len(), 500, "every transaction exists");
        assert_eq!(
            app.db
                .count("SELECT count(*) FROM writes WHERE status <> 'succeeded'")
                .await,
            0,
            "every write succeeded"
        );
        // The faults were real: some answers were lost and resolved by a look-up.
        assert!(
            app.db
                .count("SELECT count(*) FROM writes WHERE resolution IN ('found', 'existed')")
                .await
                > 0
        );
        // And the copy has every object a write brought back (its own answer, or what a
        // look-up found).
        assert_eq!(
            app.db
                .count(
                    "SELECT count(*) FROM writes w WHERE w.result IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM customers c WHERE w.kind = 'create_customer'
                             AND c.customer_key = w.object_key
                         UNION ALL
                         SELECT 1 FROM transactions t WHERE w.kind = 'create_transaction'
                             AND t.key = w.object_key)"
                )
                .await,
            0
        );
        app.stop().await;
        sim.stop().await.unwrap();
    }
}

/// The same `Idempotency-Key` and body, sent 20 times at once: one write, one upstream
/// call. The same key with another body is a 409.
#[tokio::test]
async fn one_idempotency_key_sent_twenty_times_makes_one_upstream_call() {
    let sim = stand_in(program()).await;
    let app = service(&sim, |_| {}).await;
    let body = json!({
        "customer_key": "idem-1",
        "email": "idem@example.com",
        "partner_key": a_partner_key(&sim),
    });
    let answers = futures_util::future::join_all((0..20).map(|_| {
        send(
            &app,
            reqwest::Method::POST,
            "/v1/customers?wait=10",
            Some(&body),
            Some("signup-idem-1"),
        )
    }))
    .await;
    let ids: std::collections::HashSet<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert!(*status == 200 || *status == 202, "{status} {body}");
            body["data"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one write: {ids:?}");
    drained(&app.db, Duration::from_secs(30)).await;
    assert_eq!(upstream_writes(&sim, "POST customers"), 1);
    assert_eq!(
        occurrences(&sim, Entity::Customer, "customer_key", "idem-1").len(),
        1
    );
    // A repeat after it finished: the same write, finished.
    let (status, again) = send(
        &app,
        reqwest::Method::POST,
        "/v1/customers",
        Some(&body),
        Some("signup-idem-1"),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["status"], "succeeded");
    assert_eq!(upstream_writes(&sim, "POST customers"), 1);
    // The same key, another body.
    let mut other = body.clone();
    other["email"] = json!("someone-else@example.com");
    let (status, refused) = send(
        &app,
        reqwest::Method::POST,
        "/v1/customers",
        Some(&other),
        Some("signup-idem-1"),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "idempotency_conflict");
    // Without the header, the customer_key is the key: a repeat is the same write too.
    let (_, first) = post(&app, "/v1/customers?wait=10", &json!({
        "customer_key": "idem-2", "email": "idem2@example.com", "partner_key": a_partner_key(&sim),
    }))
    .await;
    let (_, second) = post(&app, "/v1/customers", &json!({
        "email": "idem2@example.com", "partner_key": a_partner_key(&sim), "customer_key": "idem-2",
    }))
    .await;
    assert_eq!(first["data"]["id"], second["data"]["id"]);
    assert_eq!(upstream_writes(&sim, "POST customers"), 2);
    app.stop().await;
    sim.stop().await.unwrap();
}

/// Bad input is a 400 naming the field, and nothing is stored or sent.
#[tokio::test]
async fn invalid_writes_are_refused_and_nothing_is_stored() {
    let sim = stand_in(program()).await;
    let app = service(&sim, |_| {}).await;
    let partner = a_partner_key(&sim);
    for (path, body, named) in [
        (
            "/v1/customers",
            json!({"customer_key": "c", "partner_key": partner}),
            "email",
        ),
        (
            "/v1/customers",
            json!({"customer_key": "c", "email": "nope", "partner_key": partner}),
            "email",
        ),
        (
            "/v1/customers",
            json!({"customer_key": "c", "email": "a@b.co", "partner_key": partner, "plan": "x"}),
            "plan",
        ),
        (
            "/v1/transactions",
            json!({"customer_key": "c", "amount": 10.5, "currency": "USD"}),
            "amount",
        ),
        (
            "/v1/transactions",
            json!({"customer_key": "c", "amount": 10, "currency": "US"}),
            "currency",
        ),
        (
            "/v1/transactions",
            json!({"amount": 10, "currency": "USD"}),
            "customer",
        ),
        (
            "/v1/transactions",
            json!({"customer_key": "c", "amount": 10, "currency": "USD", "extra": 1}),
            "extra",
        ),
    ] {
        let (status, answer) = post(&app, path, &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(named),
            "{body}: {message:?} does not name {named}"
        );
    }
    let (status, answer) = send(
        &app,
        reqwest::Method::PATCH,
        "/v1/customers/c",
        Some(&json!({"partner_key": "p"})),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = send(
        &app,
        reqwest::Method::POST,
        "/v1/customers?wait=99",
        Some(&json!({})),
        None,
    )
    .await;
    assert_eq!(status, 400);
    // Not JSON at all.
    let response = app
        .http
        .post(app.url("/v1/customers"))
        .bearer_auth(API_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Too large.
    let huge = json!({"customer_key": "c", "email": "a@b.co", "partner_key": partner, "name": "x".repeat(70_000)});
    let (status, _) = post(&app, "/v1/customers", &huge).await;
    assert_eq!(status, 413);
    // Without a token.
    let response = app
        .http
        .post(app.url("/v1/customers"))
        .json(&json!({"customer_key": "c", "email": "a@b.co", "partner_key": partner}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.db.count("SELECT count(*) FROM writes").await, 0);
    assert!(
        sim.simulator.faults().writes().is_empty(),
        "nothing was sent"
    );
    app.stop().await;
    sim.stop().await.unwrap();
}

/// A write PartnerStack refuses fails with its status and message; once the cause is gone,
/// `retry` sends it again. Its success is in the copy at once.
#[tokio::test]
async fn a_refused_write_fails_with_partnerstacks_message_and_can_be_retried() {
    let sim = stand_in(program()).await;
    let app = service(&sim, |_| {}).await;
    sim.simulator
        .faults()
        .update(FaultUpdate {
            fail_next: Some(1),
            fail_status: Some(422),
            ..FaultUpdate::default()
        })
        .unwrap();
    let body = json!({
        "customer_key": "refused-1",
        "email": "refused@example.com",
        "partner_key": a_partner_key(&sim),
        "name": "Refused Once",
    });
    let (status, failed) = post(&app, "/v1/customers?wait=10", &body).await;
    assert_eq!(status, 200, "{failed}");
    let write = &failed["data"];
    assert_eq!(write["status"], "failed");
    assert_eq!(write["error_status"], 422);
    assert!(
        write["error_message"]
            .as_str()
            .unwrap()
            .contains("Internal server error")
    );
    let id = write["id"].as_i64().unwrap();
    // Retrying a write that did not fail is refused.
    let (status, retried) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/writes/{id}/retry?wait=10"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["data"]["status"], "succeeded");
    assert_eq!(retried["data"]["resolution"], "created");
    assert_eq!(retried["data"]["result"]["customer_key"], "refused-1");
    let (status, again) = send(
        &app,
        reqwest::Method::POST,
        &format!("/v1/writes/{id}/retry"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 409, "{again}");
    // In the copy at once, from the write's own answer.
    let customer: Value = app
        .api_get("/v1/customers/refused-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(customer["data"]["email"], "refused@example.com");
    assert_eq!(customer["data"]["source"], "write");
    // And listed with its outcome.
    let failed_list: Value = app
        .api_get("/v1/writes?status=failed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed_list["data"]["items"].as_array().unwrap().len(), 0);
    let all: Value = app
        .api_get("/v1/writes?kind=create_customer&key=refused-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"]["items"][0]["id"], id);
    assert_eq!(app.api_get("/v1/writes?status=done").await.status(), 400);
    assert_eq!(app.api_get("/v1/writes/999999").await.status(), 404);
    app.stop().await;
    sim.stop().await.unwrap();
}

/// Updates, transactions named three ways, refunds and deletes reach the stand-in and the
/// copy; a delete whose answer was lost and that finds nothing left succeeds.
#[tokio::test]
async fn updates_transactions_and_deletes() {
    let sim = stand_in(program()).await;
    let app = service(&sim, |_| {}).await;
    let partner = a_partner_key(&sim);
    let (status, created) = post(
        &app,
        "/v1/customers?wait=10",
        &json!({
            "customer_key": "u-1", "email": "u1@example.com", "partner_key": partner,
        }),
    )
    .await;
    assert_eq!(
        (status, &created["data"]["status"]),
        (200, &json!("succeeded"))
    );
    let ps_key = created["data"]["result"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, updated) = send(
        &app,
        reqwest::Method::PATCH,
        "/v1/customers/u-1?wait=10",
        Some(&json!({"name": "Ursula"})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["data"]["resolution"], "updated");
    let customer: Value = app.api_get("/v1/customers/u-1").await.json().await.unwrap();
    assert_eq!(customer["data"]["name"], "Ursula");
    for (n, named) in [
        json!({"customer_key": "u-1"}),
        json!({"customer_email": "u1@example.com"}),
        json!({"customer": ps_key}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = json!({"key": format!("u-txn-{n}"), "amount": -500, "currency": "EUR"});
        body.as_object_mut()
            .unwrap()
            .extend(named.as_object().unwrap().clone());
        let (status, t) = post(&app, "/v1/transactions?wait=10", &body).await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["data"]["status"], "succeeded", "{t}");
        assert_eq!(t["data"]["result"]["amount"], -500);
    }
    // Without a key: a derived one, stated in the answer, and a repeat is the same write.
    let unkeyed = json!({"customer_key": "u-1", "amount": 700, "currency": "usd"});
    let (_, first) = post(&app, "/v1/transactions?wait=10", &unkeyed).await;
    let key = first["data"]["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("psync-"), "{first}");
    let (_, repeat) = post(&app, "/v1/transactions", &unkeyed).await;
    assert_eq!(repeat["data"]["id"], first["data"]["id"]);
    let transaction: Value = app
        .api_get(&format!("/v1/transactions/{key}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(transaction["data"]["amount"], 700);
    // Delete it; the copy marks it deleted.
    let (status, deleted) = send(
        &app,
        reqwest::Method::DELETE,
        &format!("/v1/transactions/{key}?wait=10"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["data"]["resolution"], "deleted");
    let gone: Value = app
        .api_get(&format!("/v1/transactions/{key}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(gone["data"]["deleted_at"].is_string(), "{gone}");
    // A delete whose answer is lost after it took effect: the next attempt finds nothing
    // left to delete, and that is success.
    sim.simulator
        .faults()
        .update(FaultUpdate {
            after_commit_fail: Some(1.0),
            ..FaultUpdate::default()
        })
        .unwrap();
    let (status, lost) = send(
        &app,
        reqwest::Method::DELETE,
        "/v1/transactions/u-txn-0",
        None,
        None,
    )
    .await;
    assert_eq!(status, 202, "{lost}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.simulator
        .faults()
        .update(FaultUpdate {
            after_commit_fail: Some(0.0),
            ..FaultUpdate::default()
        })
        .unwrap();
    drained(&app.db, Duration::from_secs(30)).await;
    let write: Value = app
        .api_get(&format!("/v1/writes/{}", lost["data"]["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(write["data"]["status"], "succeeded", "{write}");
    assert_eq!(write["data"]["resolution"], "absent", "{write}");
    assert_eq!(upstream_writes(&sim, "DELETE transactions"), 3);
    app.stop().await;
    sim.stop().await.unwrap();
}

/// Without PartnerStack API keys, writes cannot be sent, and say so.
#[tokio::test]
async fn without_api_keys_writes_are_refused() {
    let app = TestApp::spawn().await;
    let (status, answer) = post(
        &app,
        "/v1/customers",
        &json!({
            "customer_key": "c", "email": "a@b.co", "partner_key": "p",
        }),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("PARTNERSTACK_PUBLIC_KEY")
    );
    assert_eq!(app.db.count("SELECT count(*) FROM writes").await, 0);
    app.stop().await;
}

/// `serve` settings sending writes to `sim`.
pub(crate) fn writing(db: &TestDb, sim: &Running) -> Vec<(&'static str, Option<String>)> {
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
        ("PARTNERSTACK_REQUESTS_PER_SECOND", Some("1000".into())),
        ("PSYNC_WRITES_LOOKUP_WINDOW", Some("3s".into())),
    ]
}

/// Accepts `n` customer creates through `replica` (`prefix`-numbered), 8 at a time.
async fn create_customers(replica: &Process, prefix: &str, partner: &str, n: usize) {
    let http = partnerstack::http::builder().build().unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let answers = futures_util::future::join_all(chunk.iter().map(|i| {
            http.post(replica.url("/v1/customers"))
                .bearer_auth(API_TOKEN)
                .json(&json!({
                    "customer_key": format!("{prefix}-{i}"),
                    "email": format!("{prefix}-{i}@example.com"),
                    "partner_key": partner,
                }))
                .send()
        }))
        .await;
        for a in answers {
            // 202, or 200 when the write finished before the answer was made.
            let status = a.unwrap().status();
            assert!(status == 202 || status == 200, "{status}");
        }
    }
}

/// `kill -9` while writes are in flight (the stand-in answers slowly): after a restart
/// every accepted write completes, none twice.
#[tokio::test]
async fn a_killed_service_finishes_every_accepted_write_once_after_restart() {
    let db = TestDb::new().await;
    let sim = stand_in(program()).await;
    let partner = a_partner_key(&sim);
    let vars = writing(&db, &sim);
    let service = Process::serve(&as_env(&vars)).await;
    // Slow answers: writes are in flight when the process dies.
    sim.simulator
        .faults()
        .update(FaultUpdate {
            slow_ms: Some(300),
            ..FaultUpdate::default()
        })
        .unwrap();
    create_customers(&service, "kill", &partner, 120).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = db
        .count("SELECT count(*) FROM writes WHERE status = 'succeeded'")
        .await;
    service.kill();
    let in_doubt = db
        .count("SELECT count(*) FROM writes WHERE status = 'pending' AND in_doubt")
        .await;
    sim.simulator
        .faults()
        .update(FaultUpdate {
            slow_ms: Some(0),
            ..FaultUpdate::default()
        })
        .unwrap();
    let restarted = Process::serve(&as_env(&vars)).await;
    drained(&db, Duration::from_secs(90)).await;
    let seen = occurrences(&sim, Entity::Customer, "customer_key", "kill-");
    println!(
        "[writes kill -9] {before_kill} of 120 finished before the kill, {in_doubt} in doubt (sent, answer not recorded); \
         after restart: {} customers at the stand-in, {} POST customers sent",
        seen.len(),
        upstream_writes(&sim, "POST customers")
    );
    assert!(in_doubt > 0, "the kill caught writes in flight");
    assert_eq!(seen.len(), 120);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM writes WHERE status <> 'succeeded'")
            .await,
        0
    );
    restarted.terminate().await;
    sim.stop().await.unwrap();
}

/// Two replicas drain one outbox: with no faults, every write is sent exactly once
/// (upstream requests equal writes).
#[tokio::test]
async fn two_replicas_send_each_write_once() {
    let db = TestDb::new().await;
    let sim = stand_in(program()).await;
    let partner = a_partner_key(&sim);
    let vars = writing(&db, &sim);
    let a = Process::serve(&as_env(&vars)).await;
    let b = Process::serve(&as_env(&vars)).await;
    let (first, second) = tokio::join!(
        create_customers(&a, "two-a", &partner, 150),
        create_customers(&b, "two-b", &partner, 150),
    );
    let ((), ()) = (first, second);
    drained(&db, Duration::from_secs(60)).await;
    let seen_a = occurrences(&sim, Entity::Customer, "customer_key", "two-a-");
    let seen_b = occurrences(&sim, Entity::Customer, "customer_key", "two-b-");
    let posts = upstream_writes(&sim, "POST customers");
    println!("[writes two replicas] 300 writes, {posts} POST customers sent");
    assert_eq!((seen_a.len(), seen_b.len()), (150, 150));
    assert_eq!(posts, 300, "each write sent once");
    assert_eq!(
        db.count("SELECT sum(upstream_requests) FROM writes").await,
        300
    );
    a.terminate().await;
    b.terminate().await;
    sim.stop().await.unwrap();
}
