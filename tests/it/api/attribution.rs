//! Attribution: which partner a customer or transaction belongs to, by either identifier.

use serde_json::json;

use super::*;
use crate::common::TestApp;

#[tokio::test]
async fn attribution_lookup_finds_a_webhook_customer_by_either_key() {
    let app = TestApp::spawn().await;
    deliver_all(
        &app,
        &[
            json!({"event": "partnership.created", "key": "part_js", "partner_key": "JohnSmith",
                   "email": "john@example.com", "group": {"key": "grup_gold", "name": "Gold"},
                   "created_at": T0, "updated_at": T0}),
            json!({"event": "customer.created", "key": "cust_ps_1", "customer_key": "acct-42",
                   "email": "buyer@example.com", "partner_key": "JohnSmith",
                   "partnership_key": "part_js", "created_at": T0 + 1000,
                   "updated_at": T0 + 1000, "m_data": {"plan": "pro"}}),
        ],
    )
    .await;

    let by_yours = ok(&app, "/v1/customers/acct-42").await;
    let by_theirs = ok(&app, "/v1/customers/cust_ps_1").await;
    assert_eq!(by_yours, by_theirs);
    let customer = &by_yours["data"];
    assert_eq!(customer["key"], "cust_ps_1");
    assert_eq!(customer["customer_key"], "acct-42");
    assert_eq!(customer["partner_key"], "JohnSmith");
    assert_eq!(customer["partnership_key"], "part_js");
    assert_eq!(customer["source"], "webhook");
    assert_eq!(customer["created_at"], "2023-11-14T22:13:21Z");
    assert!(chrono::DateTime::parse_from_rfc3339(customer["synced_at"].as_str().unwrap()).is_ok());
    assert!(customer.get("raw").is_none(), "raw only when asked for");

    let with_raw = ok(&app, "/v1/customers/acct-42?include=raw").await;
    assert_eq!(with_raw["data"]["raw"]["m_data"], json!({"plan": "pro"}));

    // The referring partner, by either of its keys.
    let partner = ok(&app, "/v1/partners/JohnSmith").await;
    assert_eq!(partner, ok(&app, "/v1/partners/part_js").await);
    assert_eq!(partner["data"]["key"], "part_js");
    assert_eq!(partner["data"]["group_key"], "grup_gold");

    let message = refused(&app, "/v1/customers/acct-43", 404, "not_found").await;
    assert!(message.contains("acct-43"), "{message}");
    refused(&app, "/v1/partners/nobody", 404, "not_found").await;
    app.stop().await;
}

/// A transaction is credited to its customer's partner even when the customer arrives
/// after it, and follows the customer when it moves to another partner.
#[tokio::test]
async fn transactions_are_credited_to_their_customers_partner_whatever_the_order() {
    let app = TestApp::spawn().await;
    let t0 = 1_700_000_000_000_i64;
    deliver_all(
        &app,
        &[
            json!({"event": "partnership.created", "key": "part_a", "partner_key": "alice", "created_at": t0}),
            json!({"event": "partnership.created", "key": "part_b", "partner_key": "bob", "created_at": t0}),
            // The transaction first, naming its customer by your key only.
            json!({"event": "transaction.created", "key": "txn_1", "amount": 1200, "currency": "USD",
                   "customer": {"external_key": "acct-9"}, "created_at": t0, "updated_at": t0}),
        ],
    )
    .await;
    assert_eq!(
        keys(&app, "/v1/transactions?partner_key=alice").await,
        strings(&[])
    );

    deliver_all(
        &app,
        &[json!({"event": "customer.created", "key": "cus_9", "customer_key": "acct-9",
                 "partner_key": "alice", "partnership_key": "part_a", "created_at": t0, "updated_at": t0})],
    )
    .await;
    assert_eq!(
        keys(&app, "/v1/transactions?partner_key=alice").await,
        strings(&["txn_1"])
    );
    assert_eq!(
        keys(&app, "/v1/transactions?partner_key=part_a").await,
        strings(&["txn_1"])
    );
    let summary = ok(&app, "/v1/partners/alice/summary").await;
    assert_eq!(summary["data"]["transactions"]["count"], 1);
    assert_eq!(
        summary["data"]["transactions"]["by_currency"][0]["amount"],
        1200
    );
    let item = ok(&app, "/v1/transactions/txn_1").await;
    assert_eq!(item["data"]["partner_key"], "alice");

    // The customer moves to bob: so does its transaction.
    deliver_all(
        &app,
        &[json!({"event": "customer.updated", "key": "cus_9", "customer_key": "acct-9",
                 "partner_key": "bob", "partnership_key": "part_b", "created_at": t0, "updated_at": t0 + 1})],
    )
    .await;
    assert_eq!(
        keys(&app, "/v1/transactions?partner_key=alice").await,
        strings(&[])
    );
    assert_eq!(
        keys(&app, "/v1/transactions?partner_key=bob").await,
        strings(&["txn_1"])
    );
    assert_eq!(
        ok(&app, "/v1/partners/part_a/summary").await["data"]["transactions"]["count"],
        0
    );
    assert_eq!(
        ok(&app, "/v1/partners/part_b/summary").await["data"]["transactions"]["count"],
        1
    );

    // The customer's own key changes: the transaction named the old key, so it is no
    // longer this customer's, and no partner is credited with it.
    deliver_all(
        &app,
        &[json!({"event": "customer.updated", "key": "cus_9", "customer_key": "acct-10",
                 "partner_key": "bob", "partnership_key": "part_b", "created_at": t0, "updated_at": t0 + 2})],
    )
    .await;
    assert_eq!(
        keys(&app, "/v1/transactions?partner_key=bob").await,
        strings(&[])
    );
    assert!(ok(&app, "/v1/transactions/txn_1").await["data"]["partner_key"].is_null());
    app.stop().await;
}

/// A partner's customers carry both of its identifiers; every page of the partner filter
/// lists each customer once, in order, across pages of any size.
#[tokio::test]
async fn a_partners_customers_page_exactly_once_by_either_identifier() {
    let app = TestApp::spawn().await;
    seed(
        &app,
        "partners",
        json!({"key": "part_a", "partner_key": "alice"}),
    )
    .await;
    for i in 0..60 {
        // Some name the partner both ways, some one way only; ties in created_at too.
        let (pk, pp) = match i % 3 {
            0 => (Some("alice"), Some("part_a")),
            1 => (Some("alice"), None),
            _ => (None, Some("part_a")),
        };
        seed(
            &app,
            "customers",
            json!({"key": format!("cus_{i:02}"), "partner_key": pk, "partnership_key": pp,
                   "created_at": format!("2024-01-01T00:00:{:02}Z", i / 2)}),
        )
        .await;
        seed(
            &app,
            "customers",
            json!({"key": format!("other_{i:02}"), "partner_key": "bob"}),
        )
        .await;
    }
    let mut expected: Vec<String> = (0..60).map(|i| format!("cus_{i:02}")).collect();
    expected.sort();
    for by in ["alice", "part_a"] {
        for limit in [1, 7, 250] {
            let items = walk(
                &app,
                &format!("/v1/customers?partner_key={by}"),
                limit,
                async |_| {},
            )
            .await;
            let got: Vec<String> = items
                .iter()
                .map(|i| i["key"].as_str().unwrap().to_string())
                .collect();
            // Newest first, created_at ties broken by key descending: here, keys descending.
            let mut newest_first = expected.clone();
            newest_first.reverse();
            assert_eq!(got, newest_first, "by {by}, limit {limit}");
        }
    }
    app.stop().await;
}
