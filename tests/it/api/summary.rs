//! The commission summary: exact sums per currency and status.

use serde_json::json;

use super::*;
use crate::common::TestApp;

#[tokio::test]
async fn commission_summary_has_exact_sums_per_currency_and_status() {
    let app = TestApp::spawn().await;
    let tx = |key: &str, amount: i64, currency: &str, approved: Option<bool>, extra: Value| {
        let mut body = json!({"event": "transaction.created", "key": key, "amount": amount,
                              "currency": currency, "created_at": T0, "updated_at": T0});
        if let Some(a) = approved {
            body["approved"] = json!(a);
        }
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let reward = |key: &str, amount: i64, currency: &str, status: &str, partner: Value| {
        let mut body = json!({"event": "reward.created", "key": key, "amount": amount,
                              "currency": currency, "reward_status": status, "created_at": T0});
        for (k, v) in partner.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    deliver_all(
        &app,
        &[
            json!({"event": "partnership.created", "key": "part_p", "partner_key": "pk_p", "created_at": T0}),
            json!({"event": "partnership.created", "key": "part_q", "partner_key": "pk_q", "created_at": T0}),
            // c1 names the partner by partner_key, c2 only by partnership key; c3 is
            // deleted (not counted, but its transactions still belong to the partner).
            json!({"event": "customer.created", "key": "c1", "customer_key": "yours-1", "partner_key": "pk_p", "created_at": T0}),
            json!({"event": "customer.created", "key": "c2", "customer_key": "yours-2", "partnership_key": "part_p", "created_at": T0}),
            json!({"event": "customer.deleted", "key": "c3", "customer_key": "yours-3", "partner_key": "pk_p", "created_at": T0}),
            json!({"event": "customer.created", "key": "c9", "customer_key": "yours-9", "partner_key": "pk_q", "created_at": T0}),
            tx("t1", 10_000, "usd", Some(true), json!({"customer_key": "c1"})),
            tx("t2", -2_500, "USD", Some(true), json!({"customer": {"key": "c1", "external_key": "yours-1"}})),
            tx("t3", 4_999, "USD", Some(false), json!({"customer": {"external_key": "yours-2"}})),
            tx("t4", 7_000, "EUR", Some(true), json!({"partner_key": "pk_p"})),
            tx("t5", 1_000, "EUR", None, json!({"customer_key": "c1"})),
            tx("t6", 9_999, "USD", Some(true), json!({"customer_key": "c1", "archived": true})),
            json!({"event": "transaction.deleted", "key": "t7", "amount": 8_888, "currency": "USD",
                   "approved": true, "customer_key": "c1", "created_at": T0}),
            tx("t8", 5_555, "USD", Some(true), json!({"customer_key": "c9"})),
            tx("t9", 3_333, "USD", Some(true), json!({"customer_key": "c1", "partner_key": "pk_q"})),
            tx("t10", 1_200, "USD", Some(true), json!({"customer_key": "c3"})),
            reward("r1", 1_000, "USD", "pending", json!({"partnership": {"key": "part_p"}})),
            reward("r2", 500, "USD", "pending", json!({"partner_key": "pk_p"})),
            reward("r3", 2_000, "USD", "paid", json!({"partnership": {"key": "part_p"}})),
            reward("r4", -300, "USD", "approved", json!({"partnership": {"key": "part_p"}})),
            reward("r5", 700, "EUR", "pending", json!({"partnership": {"key": "part_p"}})),
            json!({"event": "reward.deleted", "key": "r6", "amount": 50, "currency": "USD",
                   "reward_status": "pending", "partnership": {"key": "part_p"}, "created_at": T0}),
            reward("r7", 900, "USD", "pending", json!({"partnership": {"key": "part_q"}})),
        ],
    )
    .await;

    let summary = ok(&app, "/v1/partners/pk_p/summary").await;
    assert_eq!(
        summary,
        json!({"data": {
            "key": "part_p",
            "partner_key": "pk_p",
            "customers": {"count": 2},
            "transactions": {"count": 6, "by_currency": [
                {"currency": "EUR", "count": 2, "amount": 8_000,
                 "approved_count": 1, "approved_amount": 7_000,
                 "unapproved_count": 1, "unapproved_amount": 1_000},
                {"currency": "USD", "count": 4, "amount": 13_699,
                 "approved_count": 3, "approved_amount": 8_700,
                 "unapproved_count": 1, "unapproved_amount": 4_999},
            ]},
            "rewards": {"count": 5, "by_status": [
                {"reward_status": "approved", "currency": "USD", "count": 1, "amount": -300},
                {"reward_status": "paid", "currency": "USD", "count": 1, "amount": 2_000},
                {"reward_status": "pending", "currency": "EUR", "count": 1, "amount": 700},
                {"reward_status": "pending", "currency": "USD", "count": 2, "amount": 1_500},
            ]},
        }})
    );
    assert_eq!(ok(&app, "/v1/partners/part_p/summary").await, summary);

    // The lists agree with the summary's attribution (archived t6 is deleted, like t7:
    // listed only with include_deleted, never summed).
    for partner in ["pk_p", "part_p"] {
        assert_eq!(
            keys(&app, &format!("/v1/transactions?partner_key={partner}")).await,
            strings(&["t1", "t10", "t2", "t3", "t4", "t5"])
        );
        assert_eq!(
            keys(
                &app,
                &format!("/v1/transactions?partner_key={partner}&include_deleted=true")
            )
            .await,
            strings(&["t1", "t10", "t2", "t3", "t4", "t5", "t6", "t7"])
        );
        assert_eq!(
            keys(&app, &format!("/v1/rewards?partner_key={partner}")).await,
            strings(&["r1", "r2", "r3", "r4", "r5"])
        );
        assert_eq!(
            keys(&app, &format!("/v1/customers?partner_key={partner}")).await,
            strings(&["c1", "c2"])
        );
    }
    // Each transaction names the partner it is credited to.
    let t3 = ok(&app, "/v1/transactions/t3").await;
    assert_eq!(t3["data"]["partner_key"], "pk_p");
    assert_eq!(t3["data"]["amount"], 4_999);
    let t9 = ok(&app, "/v1/transactions/t9").await;
    assert_eq!(t9["data"]["partner_key"], "pk_q");
    let r1 = ok(&app, "/v1/rewards/r1").await;
    assert_eq!(r1["data"]["partner_key"], "pk_p");

    let q = ok(&app, "/v1/partners/pk_q/summary").await;
    assert_eq!(q["data"]["transactions"]["count"], 2); // t8 and t9
    assert_eq!(q["data"]["rewards"]["count"], 1);

    refused(&app, "/v1/partners/nobody/summary", 404, "not_found").await;
    refused(
        &app,
        "/v1/partners/pk_p/summary?limit=1",
        400,
        "bad_request",
    )
    .await;
    app.stop().await;
}
