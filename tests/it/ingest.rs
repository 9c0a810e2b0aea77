//! Webhook ingest: the contract of POST /webhooks/partnerstack/{token}.

use std::time::Duration;

use partnerstack_sim::webhooks::sign;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestApp, WEBHOOK_TOKEN};

const T0: i64 = 1_700_000_000_000;

/// The stored row for `key`, as JSON, without `raw`.
async fn row(app: &TestApp, table: &str, key: &str) -> Value {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb(t) - 'raw' FROM {table} t WHERE key = $1"
    )))
    .bind(key)
    .fetch_optional(&app.db.pool)
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("no row {key} in {table}"))
}

async fn outcome(app: &TestApp, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT outcome, outcome_reason FROM webhook_events WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn accepted(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    body
}

/// The four ways a delivery can arrive: flat or enveloped, dotted or underscored
/// (real) event name. Each variant gets its own key suffix.
fn variants(dotted: &str, underscored: &str, object: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (event, envelope)) in [
        (dotted, false),
        (underscored, false),
        (dotted, true),
        (underscored, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut object = object.clone();
        let key = format!("{}_{i}", object["key"].as_str().unwrap());
        object["key"] = json!(key);
        let body = if envelope {
            json!({"event": event, "data": object})
        } else {
            let mut flat = object.clone();
            flat["event"] = json!(event);
            flat
        };
        out.push((key, body.to_string()));
    }
    out
}

#[tokio::test]
async fn every_event_kind_lands_in_both_shapes_and_naming_styles() {
    let app = TestApp::spawn().await;
    let cases: Vec<(&str, &str, &str, Value, Value)> = vec![
        (
            "partner.created",
            "partnership_created",
            "partners",
            json!({"key": "part_a", "partner_key": "JohnSmith", "email": "john@example.com",
                   "first_name": "John", "last_name": "Smith",
                   "group": {"key": "grup_gold", "name": "Gold", "slug": "gold"},
                   "team": {"key": "team_1", "name": "T"}, "tags": ["vip"],
                   "joined_at": T0, "created_at": T0, "updated_at": T0, "m_data": {"x": 1}}),
            json!({"partner_key": "JohnSmith", "email": "john@example.com", "first_name": "John",
                   "group_key": "grup_gold", "group_name": "Gold", "team_key": "team_1",
                   "tags": ["vip"], "deleted_at": null, "source": "webhook"}),
        ),
        (
            "customer.created",
            "customer_created",
            "customers",
            json!({"key": "cust_a", "customer_key": "your-42", "email": "c@example.com", "name": "C",
                   "partner_key": "JohnSmith", "partnership_key": "part_a", "provider_key": "cus_stripe",
                   "test": "false", "created_at": T0 / 1000, "updated_at": T0 / 1000}),
            json!({"customer_key": "your-42", "email": "c@example.com", "partner_key": "JohnSmith",
                   "partnership_key": "part_a", "provider_key": "cus_stripe", "test": false,
                   "deleted_at": null}),
        ),
        (
            "customer.updated",
            "customer_updated",
            "customers",
            json!({"key": "cust_b", "customer_key": "your-43", "email": "new@example.com",
                   "partner_key": "JohnSmith", "created_at": T0, "updated_at": T0 + 5}),
            json!({"customer_key": "your-43", "email": "new@example.com", "deleted_at": null}),
        ),
        (
            "customer.deleted",
            "customer_deleted",
            "customers",
            json!({"key": "cust_c", "customer_key": "your-44", "email": "gone@example.com",
                   "created_at": T0, "updated_at": T0 + 9}),
            json!({"customer_key": "your-44", "email": "gone@example.com"}),
        ),
        (
            "transaction.created",
            "transaction_created",
            "transactions",
            json!({"key": "tx_a", "amount": 4999, "amount_usd": 4999, "currency": "usd",
                   "approved": false, "customer_key": "cust_a",
                   "customer": {"key": "cust_a", "email": "c@example.com", "external_key": "your-42"},
                   "product_key": {"key": "prod_1", "name": "Pro"}, "category_key": "cat_1",
                   "created_at": T0, "updated_at": T0}),
            json!({"amount": 4999, "amount_usd": 4999, "currency": "USD", "approved": false,
                   "status": "pending", "customer_key": "cust_a", "customer_external_key": "your-42",
                   "product_key": "prod_1", "category_key": "cat_1"}),
        ),
        (
            "transaction.updated",
            "transaction_updated",
            "transactions",
            json!({"key": "tx_b", "amount": -1500, "currency": "EUR", "approved": "true",
                   "archived": "false", "created_at": T0, "updated_at": T0 + 1}),
            json!({"amount": -1500, "currency": "EUR", "approved": true, "archived": false,
                   "status": "approved"}),
        ),
        (
            "reward.created",
            "reward_created",
            "rewards",
            json!({"key": "rew_a", "amount": 500, "currency": "USD", "description": "10%",
                   "reward_status": "pending",
                   "partnership": {"key": "part_a", "email": "john@example.com"},
                   "customer": {"key": "cust_a", "external_key": "your-42"},
                   "transaction": {"key": "tx_a", "amount": 4999}, "created_at": T0}),
            json!({"amount": 500, "currency": "USD", "reward_status": "pending",
                   "partnership_key": "part_a", "customer_key": "cust_a",
                   "customer_external_key": "your-42", "transaction_key": "tx_a"}),
        ),
        (
            "group.created",
            "group_created",
            "groups",
            json!({"key": "grup_a", "name": "Gold", "slug": "gold", "default": true,
                   "archived": "false", "created_at": T0}),
            json!({"name": "Gold", "slug": "gold", "is_default": true, "archived": false}),
        ),
        (
            "deal.created",
            "deal_created",
            "deals",
            json!({"key": "deal_a", "account_name": "Acme", "amount": 1000000,
                   "close_date": "2024-06-30", "partner_key": "JohnSmith", "stage": "open",
                   "source": "partner", "created_at": T0}),
            json!({"account_name": "Acme", "amount": 1000000, "close_date": "2024-06-30",
                   "partner_key": "JohnSmith", "stage": "open", "deal_source": "partner"}),
        ),
        (
            "lead.created",
            "lead_created",
            "leads",
            json!({"key": "lead_a", "amount": 2500, "approved": false, "external_key": "crm-1",
                   "partner_key": "JohnSmith", "status": "open", "created_at": T0}),
            json!({"amount": 2500, "approved": false, "external_key": "crm-1",
                   "partner_key": "JohnSmith", "status": "open"}),
        ),
    ];

    let mut expectations = Vec::new();
    for (dotted, underscored, table, object, expected) in &cases {
        for (key, body) in variants(dotted, underscored, object) {
            let answer = accepted(app.deliver(body).await).await;
            assert_eq!(answer["duplicate"], false);
            expectations.push((
                answer["id"].as_i64().unwrap(),
                *table,
                key,
                expected.clone(),
                *dotted,
            ));
        }
    }
    app.settle().await;

    for (id, table, key, expected, event) in expectations {
        assert_eq!(
            outcome(&app, id).await,
            ("applied".to_string(), None),
            "{event} {key}"
        );
        let stored = row(&app, table, &key).await;
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(&stored[field], value, "{event} {key}: {field} in {stored}");
        }
        assert_eq!(stored["source"], "webhook");
        if event.ends_with("deleted") {
            assert!(
                !stored["deleted_at"].is_null(),
                "{key} should be marked deleted"
            );
        }
    }
    let raw: Value = sqlx::query_scalar("SELECT raw FROM partners WHERE key = 'part_a_0'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        raw["m_data"],
        json!({"x": 1}),
        "unknown fields are kept in raw"
    );
    let created: String =
        sqlx::query_scalar("SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM customers WHERE key = 'cust_a_0'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        created, "2023-11-14 22:13:20",
        "second timestamps read as seconds"
    );
    app.stop().await;
}

#[tokio::test]
async fn raw_body_is_stored_byte_for_byte() {
    let app = TestApp::spawn().await;
    let body = "{ \"event\" : \"Customer.Created\",\n  \"key\":\"cust_raw\", \"name\": \"Zoë\" }";
    let answer = accepted(app.deliver(body).await).await;
    let (stored, event_type): (String, String) =
        sqlx::query_as("SELECT body, event_type FROM webhook_events WHERE id = $1")
            .bind(answer["id"].as_i64().unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, body);
    assert_eq!(event_type, "customer_created");
    app.stop().await;
}

#[tokio::test]
async fn unknown_events_and_unreadable_objects_are_stored_with_their_reason() {
    let app = TestApp::spawn().await;
    let unknown = accepted(
        app.deliver(r#"{"event":"agreement.accepted","key":"agr_1"}"#)
            .await,
    )
    .await;
    let nameless = accepted(app.deliver(r#"{"key":"cust_1"}"#).await).await;
    let bad_amount = accepted(
        app.deliver(r#"{"event":"transaction.created","key":"tx_1","amount":"lots"}"#)
            .await,
    )
    .await;
    let keyless = accepted(
        app.deliver(r#"{"event":"customer.created","email":"x@example.com"}"#)
            .await,
    )
    .await;
    let absurd = accepted(
        app.deliver(r#"{"event":"customer.created","key":"c","created_at":-5}"#)
            .await,
    )
    .await;
    app.settle().await;

    let (o, reason) = outcome(&app, unknown["id"].as_i64().unwrap()).await;
    assert_eq!(o, "unknown_type");
    assert!(reason.unwrap().contains("agreement_accepted"));
    assert_eq!(
        outcome(&app, nameless["id"].as_i64().unwrap()).await.0,
        "unknown_type"
    );
    let (o, reason) = outcome(&app, bad_amount["id"].as_i64().unwrap()).await;
    assert_eq!(o, "error");
    assert!(reason.unwrap().contains("amount"));
    // No key and nothing else to find it by: not an error, just not applicable here.
    assert_eq!(
        outcome(&app, keyless["id"].as_i64().unwrap()).await.0,
        "unresolved"
    );
    assert_eq!(
        outcome(&app, absurd["id"].as_i64().unwrap()).await.0,
        "error"
    );
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 5);
    assert_eq!(app.db.count("SELECT count(*) FROM transactions").await, 0);
    assert_eq!(app.db.count("SELECT count(*) FROM customers").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let body = r#"{"event":"customer.created","key":"cust_1"}"#;
    for path in [
        "/webhooks/partnerstack/not-the-token-0123456789".to_string(),
        format!(
            "/webhooks/partnerstack/{}",
            &WEBHOOK_TOKEN[..WEBHOOK_TOKEN.len() - 1]
        ),
        "/webhooks/partnerstack".to_string(),
        "/webhooks/partnerstack/".to_string(),
    ] {
        let r = app
            .http
            .post(app.url(&path))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["code"], "unauthorized");
        assert_eq!(err["status"], 401);
    }
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn signatures_are_checked_over_the_raw_body_when_secrets_are_set() {
    let secret = "relay-signing-secret-0123456789";
    let app = TestApp::spawn_with(|c| {
        c.webhooks.signing_secrets = vec![
            SecretString::from("older-signing-secret-0123456789"),
            SecretString::from(secret),
        ];
    })
    .await;
    let body = r#"{"event":"customer.created","key":"cust_1"}"#;
    let good = sign(&SecretString::from(secret), body.as_bytes());
    let send = |sig: Option<String>, body: &'static str| {
        let mut req = app.http.post(app.webhook_url()).body(body);
        if let Some(sig) = sig {
            req = req.header("x-psync-signature", sig);
        }
        req.send()
    };

    assert_eq!(
        send(None, body).await.unwrap().status(),
        401,
        "missing signature"
    );
    let wrong = sign(
        &SecretString::from("not-the-secret-0123456789"),
        body.as_bytes(),
    );
    assert_eq!(
        send(Some(wrong), body).await.unwrap().status(),
        401,
        "wrong secret"
    );
    let tampered = r#"{"event":"customer.created","key":"cust_2"}"#;
    assert_eq!(
        send(Some(good.clone()), tampered).await.unwrap().status(),
        401,
        "tampered body"
    );
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 0);

    accepted(send(Some(good), body).await.unwrap()).await;
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused_and_leave_the_database_unchanged() {
    let app =
        TestApp::spawn_with(|c| c.webhooks.body_limit = std::num::NonZero::new(1024).unwrap())
            .await;
    let big = format!(
        r#"{{"event":"customer.created","key":"c","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let r = app.deliver(big.clone()).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );

    // Without a Content-Length the limit still holds while the body streams in.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut request = format!(
        "POST /webhooks/partnerstack/{WEBHOOK_TOKEN} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for chunk in big.as_bytes().chunks(500) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    for body in [
        "",
        "not json",
        "[1,2,3]",
        "\"a string\"",
        "42",
        "null",
        "{\"event\":",
        "{\"a\":1}}",
    ] {
        let r = app.deliver(body).await;
        assert_eq!(r.status(), 400, "{body:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "bad_request");
    }
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn one_delivery_a_hundred_times_concurrently_is_stored_once() {
    let app = TestApp::spawn().await;
    let body = json!({"event": "customer.created", "key": "cust_dup", "email": "d@example.com",
                      "created_at": T0, "updated_at": T0})
    .to_string();
    let answers = futures_util::future::join_all((0..100).map(|_| app.deliver(body.clone()))).await;
    let mut ids = Vec::new();
    let mut fresh = 0;
    for r in answers {
        let a = accepted(r).await;
        ids.push(a["id"].as_i64().unwrap());
        if a["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one answer says it was new");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the same stored delivery");
    app.settle().await;
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 1);
    assert_eq!(app.db.count("SELECT count(*) FROM customers").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_older_update_never_overwrites_a_newer_one() {
    let app = TestApp::spawn().await;
    let at = |updated: i64, email: &str| {
        json!({"event": "customer_updated", "key": "cust_order", "email": email,
               "created_at": T0, "updated_at": updated})
        .to_string()
    };
    let newer = accepted(app.deliver(at(T0 + 2000, "newer@example.com")).await).await;
    app.settle().await;
    let older = accepted(app.deliver(at(T0 + 1000, "older@example.com")).await).await;
    // Same source time, same content: nothing to change either.
    let repeat = accepted(
        app.deliver(at(T0 + 2000, "newer@example.com").replace("updated\"", "updated\" "))
            .await,
    )
    .await;
    app.settle().await;

    assert_eq!(
        outcome(&app, newer["id"].as_i64().unwrap()).await.0,
        "applied"
    );
    assert_eq!(
        outcome(&app, older["id"].as_i64().unwrap()).await.0,
        "stale"
    );
    assert_eq!(
        outcome(&app, repeat["id"].as_i64().unwrap()).await.0,
        "stale"
    );
    let stored = row(&app, "customers", "cust_order").await;
    assert_eq!(stored["email"], "newer@example.com");
    assert_eq!(
        app.db.count("SELECT count(*) FROM webhook_events").await,
        3,
        "every delivery is logged"
    );

    // A deletion carries its own, later, source time and wins.
    let deleted =
        json!({"event": "customer.deleted", "key": "cust_order", "email": "newer@example.com",
                         "created_at": T0, "updated_at": T0 + 3000})
        .to_string();
    accepted(app.deliver(deleted).await).await;
    app.settle().await;
    assert!(!row(&app, "customers", "cust_order").await["deleted_at"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn reordered_deliveries_in_one_batch_converge_on_the_newest() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = (0..50)
        .rev()
        .map(|i| {
            json!({"event": "transaction.updated", "key": "tx_burst", "amount": i * 100,
                   "currency": "USD", "created_at": T0, "updated_at": T0 + i})
            .to_string()
        })
        .collect();
    let answers = futures_util::future::join_all(bodies.into_iter().map(|b| app.deliver(b))).await;
    for r in answers {
        accepted(r).await;
    }
    app.settle().await;
    assert_eq!(row(&app, "transactions", "tx_burst").await["amount"], 4900);
    assert!(
        app.db
            .count("SELECT count(*) FROM webhook_events WHERE outcome = 'applied'")
            .await
            >= 1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_late_update_at_the_deletions_source_time_does_not_undo_it() {
    let app = TestApp::spawn().await;
    let at = |event: &str| {
        json!({"event": event, "key": "cust_tie", "email": "a@example.com",
               "created_at": T0, "updated_at": T0 + 1000})
        .to_string()
    };
    accepted(app.deliver(at("customer.created")).await).await;
    app.settle().await;
    accepted(app.deliver(at("customer.deleted")).await).await;
    app.settle().await;
    // PartnerStack promises no order: the update that preceded the deletion, late.
    let late = accepted(app.deliver(at("customer.updated")).await).await;
    app.settle().await;
    assert!(!row(&app, "customers", "cust_tie").await["deleted_at"].is_null());
    assert_eq!(outcome(&app, late["id"].as_i64().unwrap()).await.0, "stale");
    app.stop().await;
}

#[tokio::test]
async fn a_deletion_without_a_source_time_marks_the_row_and_keeps_its_content() {
    let app = TestApp::spawn().await;
    let created = json!({"event": "partnership_created", "key": "part_bare",
        "email": "p@example.com", "partner_key": "pk_bare", "created_at": T0, "updated_at": T0});
    accepted(app.deliver(created.to_string()).await).await;
    app.settle().await;
    let deletion = accepted(
        app.deliver(r#"{"event":"partnership_deleted","key":"part_bare"}"#)
            .await,
    )
    .await;
    app.settle().await;
    let stored = row(&app, "partners", "part_bare").await;
    assert!(!stored["deleted_at"].is_null(), "{stored}");
    assert_eq!(stored["email"], "p@example.com");
    assert_eq!(stored["partner_key"], "pk_bare");
    assert_eq!(
        outcome(&app, deletion["id"].as_i64().unwrap()).await.0,
        "applied"
    );

    // Of an object never seen, it leaves a deleted row (the delivery is the only record).
    accepted(
        app.deliver(r#"{"event":"partnership_deleted","key":"part_unseen"}"#)
            .await,
    )
    .await;
    app.settle().await;
    assert!(!row(&app, "partners", "part_unseen").await["deleted_at"].is_null());
    app.stop().await;
}

/// Body mode: a sparse body (PartnerStack's samples carry a few fields) changes what it
/// carries and leaves every other column as it was, whether it names the object by its
/// key or, keyless like the partnership sample, by `customer_key` or `partner_key`.
#[tokio::test]
async fn a_sparse_body_leaves_the_columns_it_does_not_carry() {
    let app = TestApp::spawn().await;
    let customer = json!({"event": "customer_created", "key": "cust_sparse",
        "customer_key": "ck_sparse", "email": "full@example.com", "name": "Full Name",
        "partner_key": "pk_sparse", "partnership_key": "part_sparse",
        "provider_key": "cus_stripe", "source_type": "api", "test": false,
        "created_at": T0, "updated_at": T0});
    let partner = json!({"event": "partnership_created", "key": "part_sparse",
        "partner_key": "pk_sparse", "email": "p@example.com", "first_name": "Pat",
        "last_name": "Lee", "group": {"key": "grup_gold", "name": "Gold"},
        "team": {"key": "team_1"}, "tags": ["vip"], "joined_at": T0,
        "created_at": T0, "updated_at": T0});
    for body in [customer, partner] {
        accepted(app.deliver(body.to_string()).await).await;
    }
    app.settle().await;
    let before_customer = row(&app, "customers", "cust_sparse").await;
    let before_partner = row(&app, "partners", "part_sparse").await;

    // The v1.0 customer sample's shape: the key, a new name, a later time.
    let keyed = json!({"event": "customer_updated", "id": 4242, "key": "cust_sparse",
        "name": "New Name", "updated_at": T0 + 1000});
    // Keyless, like the partnership sample: found by customer_key.
    let keyless = json!({"event": "customer_updated", "id": 4242,
        "customer_key": "ck_sparse", "email": "new@example.com"});
    // The partnership sample itself: a numeric id, partner_key, names, a group without
    // its key, archived as a string.
    let sample = json!({"id": 123, "partner_key": "pk_sparse", "first_name": "Patricia",
        "last_name": "Lee", "email": "p@example.com", "group": {"id": 22, "name": "Gold",
        "slug": "gold"}, "event": "partnership_updated", "archived": "false"});
    let mut ids = Vec::new();
    for body in [keyed, keyless, sample] {
        ids.push(
            accepted(app.deliver(body.to_string()).await).await["id"]
                .as_i64()
                .unwrap(),
        );
        app.settle().await;
    }
    for id in ids {
        assert_eq!(outcome(&app, id).await.0, "applied", "delivery {id}");
    }

    let after = row(&app, "customers", "cust_sparse").await;
    assert_eq!(after["name"], "New Name");
    assert_eq!(after["email"], "new@example.com");
    for column in [
        "customer_key",
        "partner_key",
        "partnership_key",
        "provider_key",
        "source_type",
        "test",
        "created_at",
    ] {
        assert_eq!(after[column], before_customer[column], "customers.{column}");
    }
    assert!(after["deleted_at"].is_null());
    let after = row(&app, "partners", "part_sparse").await;
    assert_eq!(after["first_name"], "Patricia");
    for column in [
        "partner_key",
        "email",
        "last_name",
        "group_key",
        "group_name",
        "team_key",
        "tags",
        "joined_at",
        "created_at",
    ] {
        assert_eq!(after[column], before_partner[column], "partners.{column}");
    }
    assert!(after["deleted_at"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn a_relays_envelope_with_its_own_event_id_is_unwrapped() {
    let app = TestApp::spawn().await;
    let body = json!({"id": "evt_1", "type": "customer.updated",
        "data": {"key": "cust_relay", "email": "r@example.com", "updated_at": T0}});
    accepted(app.deliver(body.to_string()).await).await;
    app.settle().await;
    assert_eq!(
        row(&app, "customers", "cust_relay").await["email"],
        "r@example.com"
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM customers WHERE key = 'evt_1'")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_token_that_does_not_decode_gets_the_401_error_body() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .post(app.url("/webhooks/partnerstack/%FF%FE"))
        .body(r#"{"event":"customer.created","key":"c"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["code"], "unauthorized");
    assert_eq!(app.db.count("SELECT count(*) FROM webhook_events").await, 0);
    app.stop().await;
}

/// `partnerstack-sync reapply`: stored deliveries that failed are applied again.
#[tokio::test]
async fn reapply_applies_failed_deliveries_again() {
    let app = TestApp::spawn().await;
    let body = json!({"event": "customer.created", "key": "cust_again",
                      "email": "again@example.com", "created_at": T0});
    accepted(app.deliver(body.to_string()).await).await;
    accepted(
        app.deliver(r#"{"event":"agreement.accepted","key":"x"}"#)
            .await,
    )
    .await;
    app.settle().await;
    let db = app.stop().await;
    // As if applying had failed: the delivery is marked `error` and its row is missing.
    sqlx::query(
        "UPDATE webhook_events SET outcome = 'error', outcome_reason = 'test'
         WHERE body LIKE '%cust_again%'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM customers")
        .execute(&db.pool)
        .await
        .unwrap();

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"))
            .arg("reapply")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let refused = run(&["--outcome", "applied"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--outcome"));
    assert_eq!(
        db.count("SELECT count(*) FROM webhook_events WHERE outcome = 'error'")
            .await,
        1,
        "a refused command changes nothing"
    );

    let done = run(&[]);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("re-applied 1 stored deliveries: 1 applied"),
        "{stderr}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM customers WHERE key = 'cust_again' AND email = 'again@example.com'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM webhook_events WHERE outcome = 'unknown_type'")
            .await,
        1,
        "only the chosen outcomes are re-applied"
    );
}

/// A statement refused for a passing reason is retried (the delivery stays pending);
/// one refused for its data is not.
#[tokio::test]
async fn passing_database_refusals_are_told_apart_from_refused_data() {
    use partnerstack_sync::db::is_transient_error;
    let db = crate::common::TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL statement_timeout = '10ms'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let timeout = sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_transient_error(&timeout), "{timeout}");
    drop(tx);
    let refused = sqlx::query("SELECT 1 / 0")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(!is_transient_error(&refused), "{refused}");
}

/// Taking a batch from a backlog walks the pending index in id order and stops after the
/// batch, even when the table's statistics know nothing of the backlog (never analyzed):
/// no plan that sorts every pending delivery, whose cost would grow with the backlog.
#[tokio::test]
async fn a_batch_is_taken_from_the_pending_index_whatever_the_statistics_say() {
    use partnerstack_sync::db::events::{self, LOCK_PENDING_SQL};
    let db = crate::common::TestDb::new().await;
    sqlx::query(
        "INSERT INTO webhook_events (idempotency_key, event_type, body)
         SELECT sha256(convert_to('delivery ' || g, 'UTF8')), 'customer_created',
                '{\"pad\": \"' || repeat('x', 1500) || '\"}'
         FROM generate_series(1, 5000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let explain = format!("EXPLAIN (FORMAT JSON) {}", *LOCK_PENDING_SQL);
    let plan = |sorts_off: bool| {
        let (pool, explain) = (db.pool.clone(), explain.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            if sorts_off {
                partnerstack_sync::db::without_sorts(&mut tx, true)
                    .await
                    .unwrap();
            }
            let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                .bind(None::<Vec<i64>>)
                .bind(256_i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            plan.to_string()
        }
    };
    let chosen = plan(true).await;
    assert!(
        chosen.contains("webhook_events_pending") && !chosen.contains("\"Sort\""),
        "{chosen}"
    );
    // What the planner picks on its own here (it sorted the whole backlog on Postgres 15).
    let unguarded = plan(false).await;
    println!(
        "[lock plan] without the guard the plan {} the backlog",
        if unguarded.contains("\"Sort\"") {
            "sorts"
        } else {
            "does not sort"
        }
    );

    // The guard is the locking read's alone: the rest of the transaction sorts as usual.
    let mut tx = db.pool.begin().await.unwrap();
    let taken = events::lock_pending(&mut tx, None, 256).await.unwrap();
    assert_eq!(taken.len(), 256);
    assert!(taken.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    let sort: String = sqlx::query_scalar("SHOW enable_sort")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(sort, "on");
    tx.rollback().await.unwrap();
}
