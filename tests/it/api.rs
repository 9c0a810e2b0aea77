//! The internal query API: the contract of `/v1` and `/openapi.json`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::common::{API_TOKEN, TestApp};

const T0: i64 = 1_700_000_000_000;

/// GET with the test token: status and JSON body.
async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.api_get(path).await;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// GET that must answer 200.
async fn ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = get(app, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GET that must answer `status` with the documented error body; returns the message.
async fn refused(app: &TestApp, path: &str, status: u16, code: &str) -> String {
    let (got, body) = get(app, path).await;
    assert_eq!(got, status, "{path}: {body}");
    assert_error_body(&body, status, code);
    body["message"].as_str().unwrap().to_string()
}

fn assert_error_body(body: &Value, status: u16, code: &str) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
}

/// The keys (or event ids) of one page, sorted.
async fn keys(app: &TestApp, path: &str) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let body = ok(app, &format!("{path}{sep}limit=250")).await;
    assert_eq!(
        body["data"]["has_more"], false,
        "{path}: more than one page"
    );
    let mut keys: Vec<String> = body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| match &item["key"] {
            Value::String(k) => k.clone(),
            _ => item["id"].to_string(),
        })
        .collect();
    keys.sort();
    keys
}

fn strings(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Inserts one row, filling the bookkeeping columns the test does not care about.
async fn seed(app: &TestApp, table: &str, row: Value) {
    let mut row = row.as_object().unwrap().clone();
    row.entry("created_at")
        .or_insert(json!("2024-01-01T00:00:00Z"));
    row.entry("raw").or_insert(json!({}));
    row.entry("source").or_insert(json!("reconcile"));
    row.entry("synced_at")
        .or_insert(json!("2024-06-01T00:00:00Z"));
    let key = row["key"].as_str().unwrap().to_string();
    let customer_key = row
        .get("customer_key")
        .and_then(Value::as_str)
        .map(String::from);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1)"
    )))
    .bind(Value::Object(row))
    .execute(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("seed {table}: {e}"));
    // What apply() does after writing these rows: keep partner attribution current.
    let mut conn = app.db.pool.acquire().await.unwrap();
    let (transactions, customers, customer_keys): (Vec<&str>, Vec<&str>, Vec<&str>) = match table {
        "transactions" => (vec![&key], vec![], vec![]),
        "customers" => (
            vec![],
            vec![&key],
            customer_key.as_deref().into_iter().collect(),
        ),
        _ => (vec![], vec![], vec![]),
    };
    partnerstack_sync::db::attribution::credit(
        &mut conn,
        &transactions,
        &customers,
        &customer_keys,
    )
    .await
    .unwrap();
}

async fn deliver_all(app: &TestApp, bodies: &[Value]) -> Vec<i64> {
    let mut ids = Vec::new();
    for body in bodies {
        let response = app.deliver(body.to_string()).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        ids.push(answer["id"].as_i64().unwrap());
    }
    app.settle().await;
    ids
}

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

/// Pages through `path` with `limit`, calling `between` after every page.
async fn walk(
    app: &TestApp,
    path: &str,
    limit: usize,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let url = match &cursor {
            Some(c) => format!("{path}&limit={limit}&starting_after={c}"),
            None => format!("{path}&limit={limit}"),
        };
        let body = ok(app, &url).await;
        let data = &body["data"];
        let got = data["items"].as_array().unwrap();
        assert!(got.len() <= limit);
        items.extend(got.iter().cloned());
        if data["has_more"] == false {
            assert!(data["ending_cursor"].is_null());
            break;
        }
        assert_eq!(got.len(), limit, "a page before the last is full");
        cursor = Some(data["ending_cursor"].as_str().unwrap().to_string());
        between(page).await;
    }
    items
}

#[tokio::test]
async fn program_audit_pages_one_group_exactly_once_while_partners_arrive() {
    let app = TestApp::spawn().await;
    // 1,000 partners in 3 groups; ten share each minute, so created_at ties are common
    // and only the key breaks them.
    sqlx::query(
        "INSERT INTO partners (key, partner_key, email, group_key, status, created_at, raw, source, synced_at)
         SELECT format('part_%s', lpad(i::text, 4, '0')), format('pk%s', i), format('p%s@example.com', i),
                (ARRAY['grup_a', 'grup_b', 'grup_c'])[1 + i % 3], 'active',
                timestamptz '2024-01-01' + (i / 10) * interval '1 minute', '{}', 'reconcile', now()
         FROM generate_series(1, 1000) i",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM partners WHERE group_key = 'grup_b'")
            .await,
        334
    );

    let default_page = ok(&app, "/v1/partners?group_key=grup_b").await;
    assert_eq!(default_page["data"]["items"].as_array().unwrap().len(), 25);

    let mut inserted = 0;
    for limit in [1, 7, 250] {
        // The group as the walk starts (earlier walks added partners to it).
        let expected: BTreeSet<String> =
            sqlx::query_scalar("SELECT key FROM partners WHERE group_key = 'grup_b'")
                .fetch_all(&app.db.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let pool = app.db.pool.clone();
        let items = walk(&app, "/v1/partners?group_key=grup_b", limit, async |page| {
            // New partners of the group (newer than anything listed), partners of other
            // groups in the middle of the order, and an update of a listed partner.
            inserted += 1;
            sqlx::query(
                "INSERT INTO partners (key, group_key, created_at, raw, source, synced_at)
                 VALUES ($1, 'grup_b', now(), '{}', 'webhook', now()),
                        ($2, 'grup_a', timestamptz '2024-01-01 04:00', '{}', 'webhook', now())",
            )
            .bind(format!("part_new_{inserted}"))
            .bind(format!("part_other_{inserted}"))
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "UPDATE partners SET email = 'changed@example.com', updated_at = now()
                 WHERE key = (SELECT key FROM partners WHERE group_key = 'grup_b'
                              ORDER BY created_at DESC, key DESC OFFSET $1 LIMIT 1)",
            )
            .bind(page as i64)
            .execute(&pool)
            .await
            .unwrap();
        })
        .await;

        let listed: Vec<String> = items
            .iter()
            .map(|p| p["key"].as_str().unwrap().to_string())
            .collect();
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "limit {limit}: a partner was repeated"
        );
        assert_eq!(unique, expected, "limit {limit}: not exactly the group");
        assert!(items.iter().all(|p| p["group_key"] == "grup_b"));
        // Newest first, ties broken by key, descending. (Compared as times: RFC 3339 text
        // leaves out a zero fraction, so it does not sort as text.)
        let order: Vec<(chrono::DateTime<chrono::FixedOffset>, String)> = items
            .iter()
            .map(|p| {
                (
                    chrono::DateTime::parse_from_rfc3339(p["created_at"].as_str().unwrap())
                        .unwrap(),
                    p["key"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] > w[1]),
            "limit {limit}: not newest first"
        );
    }
    app.stop().await;
}

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

    // The lists agree with the summary's attribution (archived t6 is listed, not summed).
    for partner in ["pk_p", "part_p"] {
        assert_eq!(
            keys(&app, &format!("/v1/transactions?partner_key={partner}")).await,
            strings(&["t1", "t10", "t2", "t3", "t4", "t5", "t6"])
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

#[tokio::test]
async fn every_filter_narrows_the_list() {
    let app = TestApp::spawn().await;
    let t = |minutes: i64| format!("2024-03-01T00:{minutes:02}:00Z");
    for (key, partner_key, group, status, email, updated, deleted) in [
        (
            "part_1",
            "pk1",
            "grup_a",
            "active",
            "One@Example.com",
            t(1),
            None,
        ),
        (
            "part_2",
            "pk2",
            "grup_a",
            "inactive",
            "two@example.com",
            t(2),
            None,
        ),
        (
            "part_3",
            "pk3",
            "grup_b",
            "ACTIVE",
            "three@example.com",
            t(3),
            None,
        ),
        (
            "part_4",
            "pk4",
            "grup_b",
            "active",
            "four@example.com",
            t(4),
            Some(t(5)),
        ),
    ] {
        seed(
            &app,
            "partners",
            json!({"key": key, "partner_key": partner_key, "group_key": group, "status": status,
                   "email": email, "updated_at": updated, "deleted_at": deleted}),
        )
        .await;
    }
    let p = "/v1/partners";
    assert_eq!(
        keys(&app, p).await,
        strings(&["part_1", "part_2", "part_3"])
    );
    assert_eq!(
        keys(&app, &format!("{p}?include_deleted=true")).await,
        strings(&["part_1", "part_2", "part_3", "part_4"])
    );
    assert_eq!(
        keys(&app, &format!("{p}?include_deleted=false")).await,
        strings(&["part_1", "part_2", "part_3"])
    );
    assert_eq!(
        keys(&app, &format!("{p}?group_key=grup_a")).await,
        strings(&["part_1", "part_2"])
    );
    assert_eq!(
        keys(&app, &format!("{p}?status=Active")).await,
        strings(&["part_1", "part_3"])
    );
    assert_eq!(
        keys(&app, &format!("{p}?email=one@example.com")).await,
        strings(&["part_1"])
    );
    assert_eq!(
        keys(&app, &format!("{p}?updated_since=2024-03-01T00:02:00Z")).await,
        strings(&["part_2", "part_3"])
    );
    // The same instant as epoch milliseconds, with a filter combined.
    assert_eq!(
        keys(
            &app,
            &format!("{p}?updated_since=1709251320000&group_key=grup_b&include_deleted=true")
        )
        .await,
        strings(&["part_3", "part_4"])
    );

    // Customers: c_b names partner 1 only by its partnership key.
    for (key, yours, partner_key, partnership_key, email) in [
        ("c_a", "y-a", Some("pk1"), None, "a@example.com"),
        ("c_b", "y-b", None, Some("part_1"), "B@example.com"),
        ("c_c", "y-c", Some("pk2"), Some("part_2"), "c@example.com"),
    ] {
        seed(
            &app,
            "customers",
            json!({"key": key, "customer_key": yours, "partner_key": partner_key,
                   "partnership_key": partnership_key, "email": email}),
        )
        .await;
    }
    let c = "/v1/customers";
    assert_eq!(keys(&app, c).await, strings(&["c_a", "c_b", "c_c"]));
    assert_eq!(
        keys(&app, &format!("{c}?partner_key=pk1")).await,
        strings(&["c_a", "c_b"])
    );
    assert_eq!(
        keys(&app, &format!("{c}?partner_key=part_1")).await,
        strings(&["c_a", "c_b"])
    );
    assert_eq!(
        keys(&app, &format!("{c}?email=b@example.com")).await,
        strings(&["c_b"])
    );
    assert_eq!(
        keys(&app, &format!("{c}?customer_key=y-c")).await,
        strings(&["c_c"])
    );

    // Transactions: by either customer key, by partner (directly or via the customer),
    // approval, status and currency.
    for (key, customer_key, external, partner, approved, status, currency) in [
        (
            "t_1",
            Some("c_a"),
            Some("y-a"),
            None,
            true,
            "approved",
            "USD",
        ),
        ("t_2", None, Some("y-b"), None, false, "pending", "USD"),
        ("t_3", Some("c_c"), None, None, true, "approved", "EUR"),
        ("t_4", None, None, Some("pk2"), false, "pending", "EUR"),
    ] {
        seed(
            &app,
            "transactions",
            json!({"key": key, "customer_key": customer_key, "customer_external_key": external,
                   "partner_key": partner, "approved": approved, "status": status,
                   "currency": currency, "amount": 100}),
        )
        .await;
    }
    // PartnerStack said nothing about its approval: it counts as not approved.
    seed(
        &app,
        "transactions",
        json!({"key": "t_5", "currency": "GBP", "amount": 100}),
    )
    .await;
    let tx = "/v1/transactions";
    assert_eq!(
        keys(&app, tx).await,
        strings(&["t_1", "t_2", "t_3", "t_4", "t_5"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?customer_key=c_a")).await,
        strings(&["t_1"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?customer_key=y-b")).await,
        strings(&["t_2"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?partner_key=pk1")).await,
        strings(&["t_1", "t_2"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?partner_key=part_2")).await,
        strings(&["t_3", "t_4"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?approved=true")).await,
        strings(&["t_1", "t_3"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?approved=false")).await,
        strings(&["t_2", "t_4", "t_5"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?status=Pending")).await,
        strings(&["t_2", "t_4"])
    );
    assert_eq!(
        keys(&app, &format!("{tx}?currency=eur")).await,
        strings(&["t_3", "t_4"])
    );

    // Rewards.
    for (key, partnership, partner, customer, external, status) in [
        ("r_1", Some("part_1"), None, Some("c_a"), None, "pending"),
        ("r_2", None, Some("pk2"), None, Some("y-c"), "paid"),
        ("r_3", Some("part_2"), None, Some("c_c"), None, "pending"),
    ] {
        seed(
            &app,
            "rewards",
            json!({"key": key, "partnership_key": partnership, "partner_key": partner,
                   "customer_key": customer, "customer_external_key": external,
                   "reward_status": status, "amount": 10, "currency": "USD"}),
        )
        .await;
    }
    let r = "/v1/rewards";
    assert_eq!(keys(&app, r).await, strings(&["r_1", "r_2", "r_3"]));
    assert_eq!(
        keys(&app, &format!("{r}?partner_key=pk1")).await,
        strings(&["r_1"])
    );
    assert_eq!(
        keys(&app, &format!("{r}?partner_key=pk2")).await,
        strings(&["r_2", "r_3"])
    );
    assert_eq!(
        keys(&app, &format!("{r}?customer_key=y-c")).await,
        strings(&["r_2"])
    );
    assert_eq!(
        keys(&app, &format!("{r}?customer_key=c_c")).await,
        strings(&["r_3"])
    );
    assert_eq!(
        keys(&app, &format!("{r}?status=PENDING")).await,
        strings(&["r_1", "r_3"])
    );

    // Deals and leads.
    for (table, key, partner, group, status) in [
        ("deals", "d_1", "pk1", "grup_a", None),
        ("deals", "d_2", "pk2", "grup_b", None),
        ("leads", "l_1", "pk1", "grup_a", Some("open")),
        ("leads", "l_2", "pk2", "grup_a", Some("Closed Won")),
        ("leads", "l_3", "pk2", "grup_b", Some("open")),
    ] {
        let mut row = json!({"key": key, "partner_key": partner, "group_key": group});
        if let Some(s) = status {
            row["status"] = json!(s);
        }
        seed(&app, table, row).await;
    }
    assert_eq!(
        keys(&app, "/v1/deals?partner_key=part_1").await,
        strings(&["d_1"])
    );
    assert_eq!(
        keys(&app, "/v1/deals?group_key=grup_b").await,
        strings(&["d_2"])
    );
    assert_eq!(
        keys(&app, "/v1/leads?partner_key=pk2").await,
        strings(&["l_2", "l_3"])
    );
    assert_eq!(
        keys(&app, "/v1/leads?group_key=grup_a").await,
        strings(&["l_1", "l_2"])
    );
    assert_eq!(
        keys(&app, "/v1/leads?status=closed%20won").await,
        strings(&["l_2"])
    );

    // Groups: updated_since and include_deleted (they have no filters of their own).
    seed(&app, "groups", json!({"key": "g_old", "updated_at": t(1)})).await;
    seed(&app, "groups", json!({"key": "g_new", "updated_at": t(9)})).await;
    seed(
        &app,
        "groups",
        json!({"key": "g_gone", "updated_at": t(9), "deleted_at": t(9)}),
    )
    .await;
    assert_eq!(keys(&app, "/v1/groups").await, strings(&["g_new", "g_old"]));
    assert_eq!(
        keys(
            &app,
            "/v1/groups?updated_since=2024-03-01T00:05:00Z&include_deleted=true"
        )
        .await,
        strings(&["g_gone", "g_new"])
    );
    app.stop().await;
}

#[tokio::test]
async fn the_event_log_lists_filters_and_shows_payloads() {
    let app = TestApp::spawn().await;
    let ids = deliver_all(
        &app,
        &[
            json!({"event": "customer.created", "key": "cus_1", "created_at": T0}),
            json!({"event": "customer_created", "key": "cus_2", "created_at": T0}),
            json!({"event": "agreement.accepted", "key": "agr_1"}),
            json!({"event": "transaction.created", "key": "tx_1", "amount": "lots"}),
            json!({"event": "customer.updated", "key": "cus_1", "created_at": T0, "updated_at": T0 + 5}),
        ],
    )
    .await;
    let id = |i: usize| ids[i].to_string();
    let mut all: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    all.sort();
    assert_eq!(keys(&app, "/v1/events").await, all);
    assert_eq!(keys(&app, "/v1/events?type=customer.created").await, {
        let mut v = vec![id(0), id(1)];
        v.sort();
        v
    });
    assert_eq!(
        keys(&app, "/v1/events?outcome=unknown_type").await,
        vec![id(2)]
    );
    assert_eq!(keys(&app, "/v1/events?outcome=error").await, vec![id(3)]);
    assert_eq!(keys(&app, "/v1/events?entity_key=cus_1").await, {
        let mut v = vec![id(0), id(4)];
        v.sort();
        v
    });
    assert_eq!(
        keys(&app, "/v1/events?updated_since=2999-01-01T00:00:00Z").await,
        Vec::<String>::new()
    );
    refused(&app, "/v1/events?outcome=great", 400, "bad_request").await;

    // Newest (highest id) first, one per page, and the payload only when asked for.
    let items = walk(&app, "/v1/events?type=customer_created", 1, async |_| {}).await;
    let listed: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(listed, vec![ids[1], ids[0]]);
    assert!(items.iter().all(|e| e.get("payload").is_none()));
    let with = ok(&app, "/v1/events?type=customer_created&include=payload").await;
    assert_eq!(with["data"]["items"][0]["payload"]["key"], "cus_2");

    let event = ok(&app, &format!("/v1/events/{}", ids[3])).await;
    assert_eq!(event["data"]["outcome"], "error");
    assert!(event["data"]["reason"].as_str().unwrap().contains("amount"));
    assert_eq!(event["data"]["payload"]["amount"], "lots");
    assert_eq!(event["data"]["event_type"], "transaction_created");
    let event = ok(&app, &format!("/v1/events/{}", ids[0])).await;
    assert_eq!(event["data"]["entity"], "customers");
    assert_eq!(event["data"]["entity_key"], "cus_1");
    refused(&app, "/v1/events/999999", 404, "not_found").await;
    refused(&app, "/v1/events/abc", 400, "bad_request").await;
    app.stop().await;
}

#[tokio::test]
async fn every_collection_serves_typed_objects_with_provenance() {
    let app = TestApp::spawn().await;
    deliver_all(
        &app,
        &[
            json!({"event": "partnership.created", "key": "part_a", "partner_key": "pa", "created_at": T0}),
            json!({"event": "customer.created", "key": "cus_a", "partner_key": "pa", "created_at": T0}),
            json!({"event": "transaction.created", "key": "tx_a", "amount": 4999, "amount_usd": 5400,
                   "currency": "eur", "approved": "true", "customer_key": "cus_a", "created_at": T0}),
            json!({"event": "reward.created", "key": "rew_a", "amount": 500, "currency": "EUR",
                   "reward_status": "Pending", "partnership": {"key": "part_a"}, "created_at": T0}),
            json!({"event": "group.created", "key": "grup_a", "name": "Gold", "default": "true", "created_at": T0}),
            json!({"event": "deal.created", "key": "deal_a", "amount": 100000, "close_date": "2024-06-30",
                   "source": "partner", "partner_key": "pa", "created_at": T0}),
            json!({"event": "lead.created", "key": "lead_a", "amount": 2500, "status": "open",
                   "partner_key": "pa", "created_at": T0}),
        ],
    )
    .await;
    let cases = [
        ("partners", "part_a", json!({"partner_key": "pa"})),
        ("customers", "cus_a", json!({"partner_key": "pa"})),
        (
            "transactions",
            "tx_a",
            json!({"amount": 4999, "amount_usd": 5400, "currency": "EUR", "approved": true,
                   "status": "approved", "partner_key": "pa"}),
        ),
        (
            "rewards",
            "rew_a",
            json!({"amount": 500, "currency": "EUR", "reward_status": "pending",
                   "partnership_key": "part_a", "partner_key": "pa"}),
        ),
        ("groups", "grup_a", json!({"name": "Gold", "default": true})),
        (
            "deals",
            "deal_a",
            json!({"amount": 100000, "close_date": "2024-06-30", "deal_source": "partner"}),
        ),
        ("leads", "lead_a", json!({"amount": 2500, "status": "open"})),
    ];
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (collection, key, fields) in cases {
        let list = ok(&app, &format!("/v1/{collection}")).await;
        assert_eq!(list["data"]["has_more"], false);
        assert!(list["data"]["ending_cursor"].is_null());
        let items = list["data"]["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{collection}");
        let item = ok(&app, &format!("/v1/{collection}/{key}")).await;
        assert_eq!(items[0], item["data"], "{collection}: list and item agree");
        let object = &item["data"];
        assert_eq!(object["key"], key);
        for (field, value) in fields.as_object().unwrap() {
            assert_eq!(&object[field], value, "{collection}.{field}: {object}");
        }
        assert_eq!(object["source"], "webhook", "{collection}");
        assert_eq!(object["created_at"], "2023-11-14T22:13:20Z", "{collection}");
        assert!(object["deleted_at"].is_null());
        let synced = object["synced_at"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(synced).is_ok(),
            "{collection}.synced_at"
        );
        assert!(object.get("raw").is_none());
        let raw = ok(&app, &format!("/v1/{collection}/{key}?include=raw")).await;
        assert_eq!(raw["data"]["raw"]["key"], key, "{collection}");
        let raw_list = ok(&app, &format!("/v1/{collection}?include=raw")).await;
        assert_eq!(raw_list["data"]["items"][0]["raw"]["key"], key);
        refused(&app, &format!("/v1/{collection}/nope"), 404, "not_found").await;
        // The answers are what the description says, required fields included.
        let name = schema_of(collection);
        conforms(
            &doc,
            &json!({"$ref": format!("#/components/schemas/List_{name}")}),
            &list,
            collection,
        );
        conforms(
            &doc,
            &json!({"$ref": format!("#/components/schemas/Item_{name}")}),
            &raw,
            collection,
        );
    }
    app.stop().await;
}

/// The schema name of a collection's objects.
fn schema_of(collection: &str) -> String {
    let singular = collection.trim_end_matches('s');
    let mut name = singular[..1].to_uppercase();
    name.push_str(&singular[1..]);
    name
}

#[tokio::test]
async fn auth_cursor_limit_and_parameter_errors_are_documented_4xx() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        seed(&app, "partners", json!({"key": format!("part_{i}")})).await;
        seed(&app, "customers", json!({"key": format!("cus_{i}")})).await;
    }

    // No token, a wrong token, another scheme: 401 with the error body.
    let url = app.url("/v1/partners");
    for request in [
        app.http.get(&url),
        app.http.get(&url).bearer_auth("wrong-token-0123456789"),
        app.http.get(&url).basic_auth(API_TOKEN, None::<&str>),
        app.http.get(&url).header("authorization", API_TOKEN),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_error_body(&response.json().await.unwrap(), 401, "unauthorized");
    }
    // The scheme is case-insensitive.
    let response = app
        .http
        .get(&url)
        .header("authorization", format!("bearer {API_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Operations stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/openapi.json",
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    // Cursors: garbage, tampered, and one from another collection.
    let page = ok(&app, "/v1/partners?limit=1").await;
    let cursor = page["data"]["ending_cursor"].as_str().unwrap().to_string();
    assert_eq!(page["data"]["has_more"], true);
    let customers_cursor = ok(&app, "/v1/customers?limit=1").await["data"]["ending_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tampered = cursor.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        "garbage",
        "part_1",
        "%00",
        "////",
        tampered.as_str(),
        customers_cursor.as_str(),
        &"A".repeat(3000),
    ] {
        let message = refused(
            &app,
            &format!("/v1/partners?starting_after={bad}"),
            400,
            "bad_request",
        )
        .await;
        assert!(message.contains("starting_after"), "{message}");
    }
    assert_eq!(
        ok(
            &app,
            &format!("/v1/partners?limit=1&starting_after={cursor}")
        )
        .await["data"]["items"][0]["key"],
        "part_1"
    );

    for limit in ["0", "251", "-1", "ten", "1.5"] {
        let message = refused(
            &app,
            &format!("/v1/partners?limit={limit}"),
            400,
            "bad_request",
        )
        .await;
        assert!(message.contains("limit"), "{message}");
    }
    assert_eq!(
        ok(&app, "/v1/partners?limit=250").await["data"]["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let message = refused(&app, "/v1/partners?grup_key=x&limit=5", 400, "bad_request").await;
    assert!(message.contains("grup_key"), "{message}");
    let message = refused(&app, "/v1/partners?b=1&a=2", 400, "bad_request").await;
    assert!(message.contains("a, b"), "{message}");
    // A filter of another collection is unknown here too.
    let message = refused(&app, "/v1/partners?customer_key=x", 400, "bad_request").await;
    assert!(message.contains("customer_key"), "{message}");
    let message = refused(&app, "/v1/events?include_deleted=true", 400, "bad_request").await;
    assert!(message.contains("include_deleted"), "{message}");
    let message = refused(&app, "/v1/partners/part_1?limit=1", 400, "bad_request").await;
    assert!(message.contains("limit"), "{message}");

    for (path, name) in [
        ("/v1/partners?limit=1&limit=2", "limit"),
        ("/v1/partners?group_key=", "group_key"),
        ("/v1/partners?include=everything", "include"),
        ("/v1/partners?include_deleted=maybe", "include_deleted"),
        ("/v1/partners?updated_since=yesterday", "updated_since"),
        ("/v1/transactions?approved=yes", "approved"),
        ("/v1/customers?email=a%00b", "email"),
    ] {
        let message = refused(&app, path, 400, "bad_request").await;
        assert!(message.contains(name), "{path}: {message}");
    }
    refused(&app, "/v1/nothing", 404, "not_found").await;
    let response = app
        .http
        .delete(app.url("/v1/partners/part_1"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_error_body(&response.json().await.unwrap(), 405, "method_not_allowed");
    app.stop().await;
}

/// Every route the service serves, as `METHOD path`.
const ROUTES: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /status",
    "GET /openapi.json",
    "POST /webhooks/partnerstack/{token}",
    "POST /webhooks/partnerstack",
    "POST /webhooks/partnerstack/",
    "GET /v1/partners",
    "GET /v1/partners/{key}",
    "GET /v1/partners/{key}/summary",
    "GET /v1/customers",
    "POST /v1/customers",
    "GET /v1/customers/{key}",
    "PATCH /v1/customers/{key}",
    "GET /v1/transactions",
    "POST /v1/transactions",
    "GET /v1/transactions/{key}",
    "DELETE /v1/transactions/{key}",
    "GET /v1/writes",
    "GET /v1/writes/{id}",
    "POST /v1/writes/{id}/retry",
    "GET /v1/rewards",
    "GET /v1/rewards/{key}",
    "GET /v1/groups",
    "GET /v1/groups/{key}",
    "GET /v1/deals",
    "GET /v1/deals/{key}",
    "GET /v1/leads",
    "GET /v1/leads/{key}",
    "GET /v1/events",
    "GET /v1/events/{id}",
    "GET /v1/sync",
    "POST /v1/sync/{stream}",
    "GET /v1/changes",
    "GET /v1/partners/{key}/history",
    "GET /v1/customers/{key}/history",
    "GET /v1/transactions/{key}/history",
    "GET /v1/rewards/{key}/history",
    "GET /v1/groups/{key}/history",
    "GET /v1/deals/{key}/history",
    "GET /v1/leads/{key}/history",
    "GET /v1/relay",
    "POST /v1/relay/{name}/replay",
];

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_is_valid_and_lists_every_route() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();

    // It parses as an OpenAPI 3.1 document.
    let spec = oas3::from_json(&text).expect("an OpenAPI 3.1 document");
    spec.validate_version()
        .expect("a supported OpenAPI version");
    assert!(spec.openapi.starts_with("3."));
    let doc: Value = serde_json::from_str(&text).unwrap();

    // It describes exactly the routes the router serves (the router and the description
    // are built from the same registrations; this pins both to the contract).
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.insert(
                format!("{} {path}", method.to_uppercase()),
                operation.clone(),
            );
        }
    }
    let described: BTreeSet<&str> = operations.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(described, expected);

    // Every $ref resolves.
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema ref");
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} does not resolve"
        );
    }

    let ids: BTreeSet<&str> = operations
        .values()
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), operations.len(), "operationIds are unique");

    for (route, op) in &operations {
        let (method, path) = route.split_once(' ').unwrap();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        // Every path template variable is a declared, required path parameter.
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                "{route}: path parameter {name} undeclared"
            );
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{route}");

        // The service really serves it: a request with test values is not the fallback.
        let concrete = path
            .replace("{key}", "probe")
            .replace("{id}", "1")
            .replace("{token}", "probe")
            .replace("{stream}", "customers")
            .replace("{name}", "probe");
        let request = match method {
            "GET" => app.http.get(app.url(&concrete)),
            "POST" => app.http.post(app.url(&concrete)).body("{}"),
            "PATCH" => app.http.patch(app.url(&concrete)).body("{}"),
            "DELETE" => app.http.delete(app.url(&concrete)),
            other => panic!("unexpected method {other}"),
        };
        let response = request.bearer_auth(API_TOKEN).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(!body.contains("no such route"), "{route} is not routed");
        assert!(
            responses.contains_key(&status.to_string()),
            "{route} answered {status}, which it does not document"
        );

        if path.starts_with("/v1/") {
            let success = if method == "GET" { "200" } else { "202" };
            for code in [success, "400", "401", "500", "503"] {
                assert!(responses.contains_key(code), "{route} lacks {code}");
            }
            // A write names an object PartnerStack may have (its answer is the write's
            // outcome); every other route with a key can miss.
            if path.contains('{') && !matches!(method, "PATCH" | "DELETE") {
                assert!(responses.contains_key("404"), "{route} lacks 404");
            }
            assert_eq!(op["security"], json!([{"bearer": []}]), "{route}");
            // And it is refused without a token.
            let unauthenticated = match method {
                "POST" => app.http.post(app.url(&concrete)),
                "PATCH" => app.http.patch(app.url(&concrete)),
                "DELETE" => app.http.delete(app.url(&concrete)),
                _ => app.http.get(app.url(&concrete)),
            };
            let response = unauthenticated.send().await.unwrap();
            assert_eq!(response.status(), 401, "{route} is open");
        }
        let accepted_query: BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        // Collections (not the reconciler's status, the feed or the relay) speak the list
        // dialect.
        let not_collections = ["/v1/sync", "/v1/changes", "/v1/relay"];
        if method == "GET"
            && path.starts_with("/v1/")
            && !path.contains('{')
            && !not_collections.contains(&path)
        {
            for name in ["limit", "starting_after", "updated_since", "include"] {
                assert!(accepted_query.contains(name), "{route} lacks {name}");
            }
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    app.stop().await;
}

/// `name`'s schema in `doc`.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    schema
}

/// The schema a `$ref` names, or `schema` itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => schema_named(doc, r),
        None => schema,
    }
}

fn schema_named<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    schema(
        doc,
        reference.strip_prefix("#/components/schemas/").unwrap(),
    )
}

/// Checks `value` against `schema` as far as this contract needs: required properties
/// present, enum values listed, null only where allowed. Panics naming the path.
fn conforms(doc: &Value, schema: &Value, value: &Value, path: &str) {
    let schema = resolve(doc, schema);
    if let Some(parts) = schema["allOf"].as_array() {
        parts.iter().for_each(|p| conforms(doc, p, value, path));
    }
    if let Some(options) = schema["oneOf"].as_array() {
        if value.is_null() {
            assert!(options.iter().any(|o| o["type"] == "null"), "{path}: null");
        } else {
            let typed: Vec<&Value> = options.iter().filter(|o| o["type"] != "null").collect();
            assert_eq!(typed.len(), 1, "{path}: one non-null option");
            conforms(doc, typed[0], value, path);
        }
    }
    if let Some(words) = schema["enum"].as_array() {
        assert!(
            words.contains(value),
            "{path}: {value} is not one of {words:?}"
        );
    }
    let nullable = schema["type"]
        .as_array()
        .is_some_and(|t| t.contains(&json!("null")));
    if value.is_null() && !schema["type"].is_null() {
        assert!(nullable, "{path} is null, which its schema does not allow");
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            assert!(
                object.contains_key(name),
                "{path}.{name} is required but absent"
            );
        }
        for (name, property) in properties {
            if let Some(v) = object.get(name) {
                conforms(doc, property, v, &format!("{path}.{name}"));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            conforms(doc, items, item, &format!("{path}[{i}]"));
        }
    }
}

/// Every schema name `value` refers to, and those they refer to.
fn closure(doc: &Value, roots: &[&Value]) -> BTreeSet<String> {
    let mut todo = Vec::new();
    roots.iter().for_each(|r| refs(r, &mut todo));
    let mut seen = BTreeSet::new();
    while let Some(r) = todo.pop() {
        let name = r.strip_prefix("#/components/schemas/").unwrap().to_string();
        if seen.insert(name.clone()) {
            refs(schema(doc, &name), &mut todo);
        }
    }
    seen
}

/// The object schemas inside `schema` (itself, its `allOf` parts).
fn object_parts(schema: &Value) -> Vec<&Value> {
    let mut parts: Vec<&Value> = schema["allOf"].as_array().into_iter().flatten().collect();
    parts.push(schema);
    parts.retain(|p| p["properties"].is_object());
    parts
}

/// What a client generator (openapi-python-client, openapi-typescript) reads: one named
/// schema per object, referenced; closed sets as enums; fields always answered marked
/// required; text parameters that refuse empty values saying so.
#[tokio::test]
async fn openapi_is_typed_for_client_generators() {
    use partnerstack_sync::columns::Source;
    use partnerstack_sync::db::{changes::Operation, events, sync, writes};
    use partnerstack_sync::error::ErrorCode;

    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Named objects are referenced, never copied: each object schema's text appears once.
    let text = doc.to_string();
    let objects = [
        "Partner",
        "Customer",
        "Transaction",
        "Reward",
        "Group",
        "Deal",
        "Lead",
        "Event",
        "Write",
        "ChangeItem",
        "StreamStatus",
        "EndpointStatus",
        "PartnerSummary",
    ];
    for name in objects {
        let own = schema(&doc, name).to_string();
        assert_eq!(text.matches(&own).count(), 1, "{name} is copied inline");
    }
    for name in [
        "Partner",
        "Customer",
        "Transaction",
        "Reward",
        "Group",
        "Deal",
        "Lead",
        "Event",
        "Write",
    ] {
        assert_eq!(
            schema(&doc, &format!("Page_{name}"))["properties"]["items"]["items"]["$ref"],
            format!("#/components/schemas/{name}")
        );
        assert_eq!(
            schema(&doc, &format!("Item_{name}"))["properties"]["data"]["$ref"],
            format!("#/components/schemas/{name}")
        );
    }

    // Closed sets are enums of the words served.
    let words = |list: Vec<&str>| json!(list);
    let enums = [
        (
            "Outcome",
            words(events::Outcome::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "AppliedFrom",
            words(
                events::AppliedFrom::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect(),
            ),
        ),
        (
            "WriteKind",
            words(writes::WriteKind::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "WriteStatus",
            words(
                writes::WriteStatus::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect(),
            ),
        ),
        (
            "Resolution",
            words(writes::Resolution::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "PassKind",
            words(sync::PassKind::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "PassStatus",
            words(sync::PassStatus::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "Operation",
            words(Operation::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "Source",
            words(Source::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "ErrorCode",
            words(ErrorCode::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            "Collection",
            json!([
                "partners",
                "customers",
                "transactions",
                "rewards",
                "groups",
                "deals",
                "leads"
            ]),
        ),
        (
            "Stream",
            json!([
                "partnerships",
                "customers",
                "transactions",
                "rewards",
                "groups",
                "deals",
                "leads"
            ]),
        ),
        ("Acceptance", json!(["accepted"])),
    ];
    for (name, expected) in enums {
        assert_eq!(schema(&doc, name)["enum"], expected, "{name}");
    }
    let property = |object: &str, field: &str| {
        object_parts(schema(&doc, object))
            .into_iter()
            .find_map(|p| p["properties"].get(field).cloned())
            .unwrap_or_else(|| panic!("{object}.{field}"))
    };
    for (object, field, named) in [
        ("Record", "source", "Source"),
        ("ChangeItem", "entity", "Collection"),
        ("ChangeItem", "source", "Source"),
        ("StreamStatus", "stream", "Stream"),
        ("SyncRequested", "status", "Acceptance"),
        ("Accepted", "status", "Acceptance"),
        ("Event", "outcome", "Outcome"),
        ("Write", "kind", "WriteKind"),
    ] {
        let p = property(object, field);
        assert_eq!(
            p["$ref"],
            format!("#/components/schemas/{named}"),
            "{object}.{field}: {p}"
        );
    }
    assert_eq!(
        property("EndpointStatus", "entities")["items"]["$ref"],
        "#/components/schemas/Collection"
    );
    let parameter = |route: &str, method: &str, name: &str| {
        doc["paths"][route][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{method} {route} ?{name}"))
    };
    for (route, name, named) in [
        ("/v1/events", "outcome", "Outcome"),
        ("/v1/writes", "status", "WriteStatus"),
        ("/v1/writes", "kind", "WriteKind"),
    ] {
        assert_eq!(
            parameter(route, "get", name)["schema"]["$ref"],
            format!("#/components/schemas/{named}")
        );
    }
    assert_eq!(
        parameter("/v1/sync/{stream}", "post", "stream")["schema"]["$ref"],
        "#/components/schemas/Stream"
    );
    let entity = parameter("/v1/changes", "get", "entity");
    assert_eq!(
        entity["schema"]["items"]["$ref"],
        "#/components/schemas/Collection"
    );
    assert_eq!(
        (entity["style"].clone(), entity["explode"].clone()),
        (json!("form"), json!(false))
    );
    for (route, name, word) in [
        ("/v1/customers", "IncludeRaw", "raw"),
        ("/v1/customers/{key}", "IncludeRaw", "raw"),
        ("/v1/events", "IncludePayload", "payload"),
        ("/v1/writes", "IncludeResult", "result"),
    ] {
        let reference = parameter(route, "get", "include")["schema"]["$ref"].clone();
        assert_eq!(reference, format!("#/components/schemas/{name}"), "{route}");
        assert_eq!(schema(&doc, name)["enum"], json!([word]), "{route}");
    }

    // Answers' fields are required (nullable, but present), but the few left out when empty.
    let mut answers = Vec::new();
    let mut requests = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            answers.push(&op["responses"]);
            requests.push(&op["requestBody"]);
            requests.push(&op["parameters"]);
        }
    }
    let requests = closure(&doc, &requests);
    let sometimes_absent = [("Record", "raw"), ("Event", "payload")];
    let mut checked = 0;
    for name in closure(&doc, &answers).difference(&requests) {
        for part in object_parts(schema(&doc, name)) {
            let required: BTreeSet<&str> = part["required"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r.as_str().unwrap())
                .collect();
            for field in part["properties"].as_object().unwrap().keys() {
                let field = field.as_str();
                if !sometimes_absent.contains(&(name.as_str(), field)) {
                    assert!(required.contains(field), "{name}.{field} is not required");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} answer fields checked");

    // Text parameters refuse empty values, and say so; the server agrees.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let s = &p["schema"];
                if p["in"] == "query" && s["type"] == "string" && s["enum"].is_null() {
                    assert_eq!(s["minLength"], 1, "{method} {path} ?{}", p["name"]);
                }
                if s["type"] == "array" {
                    assert_eq!(s["minItems"], 1, "{method} {path} ?{}", p["name"]);
                }
            }
        }
    }
    for query in ["starting_after=", "include=", "email=", "updated_since="] {
        refused(&app, &format!("/v1/customers?{query}"), 400, "bad_request").await;
    }
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

/// List pages are written straight from Postgres' rows, single objects through the typed
/// rows and serde: for every entity, with awkward values (escapes, control characters,
/// non-ASCII, NULLs, fractions of a second of every length, negative numbers, JSON, dates),
/// both give the same bytes, with and without `include=raw`.
#[tokio::test]
async fn list_items_are_byte_for_byte_the_objects_single_reads_serve() {
    use partnerstack::Entity;
    use partnerstack_sync::columns::{self, SqlType};
    let app = TestApp::spawn().await;
    let awkward = "q\"uote \\ back\tslash\n\u{1}ctl é ✓ 🎉 \u{2028}";
    for entity in Entity::ALL {
        let table = columns::table(entity);
        for (n, created) in [
            (0, "2024-01-02T03:04:05Z"),
            (1, "2024-01-02T03:04:05.120Z"),
            (2, "2024-01-02T03:04:05.123456Z"),
        ] {
            let mut names = vec![
                "key".to_string(),
                "created_at".into(),
                "updated_at".into(),
                "deleted_at".into(),
                "raw".into(),
                "source".into(),
                "synced_at".into(),
            ];
            let mut values = vec![
                format!("'{}_{n}'", &table[..3]),
                format!("'{created}'"),
                if n == 0 {
                    "NULL".into()
                } else {
                    format!("'{created}'::timestamptz + interval '1.5 s'")
                },
                if n == 2 {
                    "'2024-06-01T00:00:00.000001Z'".into()
                } else {
                    "NULL".into()
                },
                "'{\"k\": [1, \"two\", {\"é\": null}], \"s\": \"a\\\"b\"}'".into(),
                "'webhook'".into(),
                "'2024-05-05T05:05:05.5Z'".into(),
            ];
            for column in columns::of(entity) {
                names.push(column.name.to_string());
                // The first row is all NULLs; the others carry awkward values.
                values.push(if n == 0 {
                    "NULL".into()
                } else {
                    match column.ty {
                        SqlType::Text => format!(
                            "E'{}'",
                            awkward
                                .replace('\\', "\\\\")
                                .replace('\'', "\\'")
                                .replace('\n', "\\n")
                                .replace('\t', "\\t")
                                .replace('\u{1}', "\\x01")
                        ),
                        SqlType::Int => "-9007199254740993".into(),
                        SqlType::Bool => (n == 1).to_string(),
                        SqlType::Ts => "'1999-12-31T23:59:59.999999Z'".into(),
                        SqlType::Date => "'2024-02-29'".into(),
                        SqlType::Json => "'[\"tag\", {\"nested\": \"é\\\\\"}]'".into(),
                    }
                });
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                values.join(", ")
            )))
            .execute(&app.db.pool)
            .await
            .unwrap();
        }
        for include in ["", "&include=raw"] {
            let list = app
                .api_get(&format!(
                    "/v1/{table}?limit=10&include_deleted=true{include}"
                ))
                .await
                .text()
                .await
                .unwrap();
            let mut items = Vec::new();
            for n in 0..3 {
                let key = format!("{}_{n}", &table[..3]);
                let one = app
                    .api_get(&format!(
                        "/v1/{table}/{key}?{}",
                        include.trim_start_matches('&')
                    ))
                    .await
                    .text()
                    .await
                    .unwrap();
                let object = one
                    .strip_prefix("{\"data\":")
                    .and_then(|o| o.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("{one}"))
                    .to_string();
                items.push(object);
            }
            // Newest first: 2, 1, 0.
            items.reverse();
            let expected = format!(
                "{{\"data\":{{\"items\":[{}],\"has_more\":false,\"ending_cursor\":null}}}}",
                items.join(",")
            );
            assert_eq!(list, expected, "{table} {include}");
        }
    }
    app.stop().await;
}
