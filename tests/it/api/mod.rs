//! The internal query API: the contract of `/v1` and `/openapi.json`, by subject.

mod attribution;
mod errors;
mod fillable;
mod lists;
mod openapi;
mod summary;

use serde_json::{Value, json};

use crate::common::{API_TOKEN, TestApp};

pub(super) const T0: i64 = 1_700_000_000_000;

/// GET with the test token: status and JSON body.
pub(super) async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.api_get(path).await;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// GET that must answer 200.
pub(super) async fn ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = get(app, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GET that must answer `status` with the documented error body; returns the message.
pub(super) async fn refused(app: &TestApp, path: &str, status: u16, code: &str) -> String {
    let (got, body) = get(app, path).await;
    assert_eq!(got, status, "{path}: {body}");
    assert_error_body(&body, status, code);
    body["message"].as_str().unwrap().to_string()
}

pub(super) fn assert_error_body(body: &Value, status: u16, code: &str) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
}

/// The keys (or event ids) of one page, sorted.
pub(super) async fn keys(app: &TestApp, path: &str) -> Vec<String> {
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

pub(super) fn strings(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Inserts one row, filling the bookkeeping columns the test does not care about.
pub(super) async fn seed(app: &TestApp, table: &str, row: Value) {
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

pub(super) async fn deliver_all(app: &TestApp, bodies: &[Value]) -> Vec<i64> {
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

/// Pages through `path` with `limit`, calling `between` after every page.
pub(super) async fn walk(
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
