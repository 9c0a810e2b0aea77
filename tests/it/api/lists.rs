//! Lists: paging, filters, the event log, typed objects, and list items equal to single reads.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::openapi::conforms;
use super::*;
use crate::common::TestApp;

#[tokio::test]
async fn program_audit_pages_one_group_exactly_once_while_partners_arrive() {
    let app = TestApp::spawn().await;
    // 1,000 partners in 3 groups; ten share each minute, so created_at ties are common
    // and only the key breaks them.
    sqlx::query(
        "INSERT INTO partners (key, partner_key, email, group_key, created_at, raw, source, synced_at)
         SELECT format('part_%s', lpad(i::text, 4, '0')), format('pk%s', i), format('p%s@example.com', i),
                (ARRAY['grup_a', 'grup_b', 'grup_c'])[1 + i % 3],
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
async fn every_filter_narrows_the_list() {
    let app = TestApp::spawn().await;
    seed_filter_matrix(&app).await;
    // (the query, the keys it lists): every filter of every collection, alone and combined.
    let cases: &[(&str, &[&str])] = &[
        ("/v1/partners", &["part_1", "part_2", "part_3"]),
        (
            "/v1/partners?include_deleted=true",
            &["part_1", "part_2", "part_3", "part_4"],
        ),
        (
            "/v1/partners?include_deleted=false",
            &["part_1", "part_2", "part_3"],
        ),
        ("/v1/partners?group_key=grup_a", &["part_1", "part_2"]),
        ("/v1/partners?email=one@example.com", &["part_1"]),
        (
            "/v1/partners?updated_since=2024-03-01T00:02:00Z",
            &["part_2", "part_3"],
        ),
        // The same instant as epoch milliseconds, with a filter combined.
        (
            "/v1/partners?updated_since=1709251320000&group_key=grup_b&include_deleted=true",
            &["part_3", "part_4"],
        ),
        // Customers: c_b names partner 1 only by its partnership key.
        ("/v1/customers", &["c_a", "c_b", "c_c"]),
        ("/v1/customers?partner_key=pk1", &["c_a", "c_b"]),
        ("/v1/customers?partner_key=part_1", &["c_a", "c_b"]),
        ("/v1/customers?email=b@example.com", &["c_b"]),
        ("/v1/customers?customer_key=y-c", &["c_c"]),
        // Transactions: by either customer key, by partner (directly or via the
        // customer), approval (t_5 says nothing about it: not approved), status, currency.
        ("/v1/transactions", &["t_1", "t_2", "t_3", "t_4", "t_5"]),
        ("/v1/transactions?customer_key=c_a", &["t_1"]),
        ("/v1/transactions?customer_key=y-b", &["t_2"]),
        ("/v1/transactions?partner_key=pk1", &["t_1", "t_2"]),
        ("/v1/transactions?partner_key=part_2", &["t_3", "t_4"]),
        ("/v1/transactions?approved=true", &["t_1", "t_3"]),
        ("/v1/transactions?approved=false", &["t_2", "t_4", "t_5"]),
        ("/v1/transactions?status=Pending", &["t_2", "t_4"]),
        ("/v1/transactions?currency=eur", &["t_3", "t_4"]),
        ("/v1/rewards", &["r_1", "r_2", "r_3"]),
        ("/v1/rewards?partner_key=pk1", &["r_1"]),
        ("/v1/rewards?partner_key=pk2", &["r_2", "r_3"]),
        ("/v1/rewards?customer_key=y-c", &["r_2"]),
        ("/v1/rewards?customer_key=c_c", &["r_3"]),
        ("/v1/rewards?status=PENDING", &["r_1", "r_3"]),
        ("/v1/deals?partner_key=part_1", &["d_1"]),
        ("/v1/deals?group_key=grup_b", &["d_2"]),
        ("/v1/leads?partner_key=pk2", &["l_2", "l_3"]),
        ("/v1/leads?group_key=grup_a", &["l_1", "l_2"]),
        ("/v1/leads?status=closed%20won", &["l_2"]),
        // Groups have no filters of their own: updated_since and include_deleted.
        ("/v1/groups", &["g_new", "g_old"]),
        (
            "/v1/groups?updated_since=2024-03-01T00:05:00Z&include_deleted=true",
            &["g_gone", "g_new"],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(keys(&app, query).await, strings(expected), "{query}");
    }
    app.stop().await;
}

/// The rows [`every_filter_narrows_the_list`] filters.
async fn seed_filter_matrix(app: &TestApp) {
    let t = |minutes: i64| format!("2024-03-01T00:{minutes:02}:00Z");
    for (key, partner_key, group, email, updated, deleted) in [
        ("part_1", "pk1", "grup_a", "One@Example.com", t(1), None),
        ("part_2", "pk2", "grup_a", "two@example.com", t(2), None),
        ("part_3", "pk3", "grup_b", "three@example.com", t(3), None),
        (
            "part_4",
            "pk4",
            "grup_b",
            "four@example.com",
            t(4),
            Some(t(5)),
        ),
    ] {
        let row = json!({"key": key, "partner_key": partner_key, "group_key": group,
                         "email": email, "updated_at": updated, "deleted_at": deleted});
        seed(app, "partners", row).await;
    }
    for (key, yours, partner_key, partnership_key, email) in [
        ("c_a", "y-a", Some("pk1"), None, "a@example.com"),
        ("c_b", "y-b", None, Some("part_1"), "B@example.com"),
        ("c_c", "y-c", Some("pk2"), Some("part_2"), "c@example.com"),
    ] {
        let row = json!({"key": key, "customer_key": yours, "partner_key": partner_key,
                         "partnership_key": partnership_key, "email": email});
        seed(app, "customers", row).await;
    }
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
        let row = json!({"key": key, "customer_key": customer_key,
                         "customer_external_key": external, "partner_key": partner,
                         "approved": approved, "status": status, "currency": currency,
                         "amount": 100});
        seed(app, "transactions", row).await;
    }
    let unapproved = json!({"key": "t_5", "currency": "GBP", "amount": 100});
    seed(app, "transactions", unapproved).await;
    for (key, partnership, partner, customer, external, status) in [
        ("r_1", Some("part_1"), None, Some("c_a"), None, "pending"),
        ("r_2", None, Some("pk2"), None, Some("y-c"), "paid"),
        ("r_3", Some("part_2"), None, Some("c_c"), None, "pending"),
    ] {
        let row = json!({"key": key, "partnership_key": partnership, "partner_key": partner,
                         "customer_key": customer, "customer_external_key": external,
                         "reward_status": status, "amount": 10, "currency": "USD"});
        seed(app, "rewards", row).await;
    }
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
        seed(app, table, row).await;
    }
    for (key, updated, deleted) in [
        ("g_old", t(1), None),
        ("g_new", t(9), None),
        ("g_gone", t(9), Some(t(9))),
    ] {
        let row = json!({"key": key, "updated_at": updated, "deleted_at": deleted});
        seed(app, "groups", row).await;
    }
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
