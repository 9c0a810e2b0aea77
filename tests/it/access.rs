//! Least privilege: named API clients with scopes. Every mutating `/v1` route refuses a
//! client without its scope before doing anything; writes name the client that made
//! them; unnamed tokens only read; unknown tokens get 401.

use std::time::Duration;

use partnerstack_sim::{FaultUpdate, Running};
use partnerstack_sync::config::Verification;
use serde_json::{Value, json};

use crate::client::{client_config, program, stand_in};
use crate::common::{
    ADMIN_TOKEN, API_TOKEN, Process, READ_TOKEN, TestApp, TestDb, UNNAMED_TOKEN, WRITE_TOKEN,
    as_env, shared_temp_dir,
};
use crate::relay::endpoint;
use crate::writes::a_partner_key;

/// The service sending writes to `sim`, with a relay endpoint `probe` (nobody listens).
async fn service(sim: &Running) -> TestApp {
    let base_url = sim.base_url();
    TestApp::spawn_with(|c| {
        c.partnerstack = client_config(&base_url);
        c.writes.max_retry_delay = Duration::from_millis(300);
        c.relay = vec![endpoint("probe", "http://127.0.0.1:9/hook", None)];
        c.webhooks.verification = Verification::Body;
    })
    .await
}

/// A request under `/v1` with `token`; the status and the body.
async fn call(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Write requests the stand-in received, of every kind.
fn upstream_writes(sim: &Running) -> u64 {
    sim.simulator.faults().writes().values().sum()
}

/// Every mutating `/v1` operation the service describes, as (method, concrete path).
async fn mutating_routes(app: &TestApp) -> Vec<(reqwest::Method, String)> {
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            if method == "get" {
                continue;
            }
            let concrete = path
                .replace("{key}", "cust-1")
                .replace("{id}", "1")
                .replace("{stream}", "customers")
                .replace("{name}", "probe");
            routes.push((method.to_uppercase().parse().unwrap(), concrete));
        }
    }
    assert!(routes.len() >= 7, "{routes:?}");
    routes
}

/// A read client, an unnamed token, and clients of the other scopes are refused every
/// mutating route they lack the scope of, with 403 `forbidden` naming the scope, and
/// nothing is stored or sent upstream, whatever the body (a valid one here).
#[tokio::test]
async fn every_mutating_route_refuses_a_client_without_its_scope_and_does_nothing() {
    let sim = stand_in(program()).await;
    let app = service(&sim).await;
    let partner = a_partner_key(&sim);
    let body = json!({
        "customer_key": "cust-1",
        "email": "cust-1@example.com",
        "partner_key": partner,
        "amount": 1000,
        "currency": "USD",
        "key": "txn-1",
    });
    let routes = mutating_routes(&app).await;
    let mut refusals = 0;
    for (method, path) in &routes {
        let writes = path.starts_with("/v1/customers") || path.starts_with("/v1/transactions");
        let needed = if writes { "write" } else { "admin" };
        // The write client lacks `admin`, the admin client lacks `write`.
        let lacking = if writes { ADMIN_TOKEN } else { WRITE_TOKEN };
        for token in [READ_TOKEN, UNNAMED_TOKEN, lacking] {
            let (status, answer) = call(
                &app,
                token,
                method.clone(),
                &format!("{path}?wait=1"),
                Some(&body),
            )
            .await;
            assert_eq!(status, 403, "{method} {path}: {answer}");
            assert_eq!(answer["code"], "forbidden", "{answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{needed}` scope")), "{message}");
            refusals += 1;
        }
    }
    // Reads need `read`: the write and admin clients cannot read, even their own writes.
    for token in [WRITE_TOKEN, ADMIN_TOKEN] {
        for path in ["/v1/customers", "/v1/writes", "/v1/changes", "/v1/sync"] {
            let (status, answer) = call(&app, token, reqwest::Method::GET, path, None).await;
            assert_eq!(
                (status, &answer["code"]),
                (403, &json!("forbidden")),
                "{path}"
            );
            assert!(answer["message"].as_str().unwrap().contains("`read` scope"));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.db.count("SELECT count(*) FROM writes").await, 0);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM relay_endpoints WHERE replay_requested_at IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        upstream_writes(&sim),
        0,
        "a refused write reached PartnerStack"
    );
    println!(
        "[scopes] {refusals} refusals over {} mutating routes",
        routes.len()
    );
    app.stop().await;
    sim.stop().await.unwrap();
}

/// A write-only client's write is sent, and the write and every change its outcome
/// caused name the client; a client with every scope likewise. What PartnerStack
/// answered (`result`) is left out for the client that may not read.
#[tokio::test]
async fn a_write_client_writes_and_is_named_on_the_write_and_its_changes() {
    let sim = stand_in(program()).await;
    let app = service(&sim).await;
    let partner = a_partner_key(&sim);
    let customer = json!({
        "customer_key": "by-writer",
        "email": "by-writer@example.com",
        "partner_key": partner,
    });
    let (status, write) = call(
        &app,
        WRITE_TOKEN,
        reqwest::Method::POST,
        "/v1/customers?wait=10",
        Some(&customer),
    )
    .await;
    assert_eq!(status, 200, "{write}");
    assert_eq!(write["data"]["status"], "succeeded");
    assert_eq!(write["data"]["client"], "writer");
    assert_eq!(
        write["data"]["result"],
        Value::Null,
        "a read leaked to a write-only client"
    );
    let id = write["data"]["id"].as_i64().unwrap();
    // Who reported it, for those who may read.
    let (status, record) = call(
        &app,
        READ_TOKEN,
        reqwest::Method::GET,
        &format!("/v1/writes/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(record["data"]["client"], "writer");
    assert_eq!(record["data"]["result"]["customer_key"], "by-writer");
    let history = app.api_get("/v1/customers/by-writer/history").await;
    let history: Value = history.json().await.unwrap();
    let items = history["data"]["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{history}");
    for change in items {
        assert_eq!(
            (&change["source"], &change["client"]),
            (&json!("write"), &json!("writer"))
        );
    }
    // A commission reported by the client with every scope names it, in the feed too.
    let transaction = json!({
        "key": "txn-by-test",
        "customer_key": "by-writer",
        "amount": 4200,
        "currency": "USD",
    });
    let (status, write) = call(
        &app,
        API_TOKEN,
        reqwest::Method::POST,
        "/v1/transactions?wait=10",
        Some(&transaction),
    )
    .await;
    assert_eq!(status, 200, "{write}");
    assert_eq!(write["data"]["client"], "test");
    assert_eq!(write["data"]["result"]["key"], "txn-by-test");
    let feed: Value = app
        .api_get("/v1/changes?entity=transactions")
        .await
        .json()
        .await
        .unwrap();
    let changes = feed["data"]["items"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["key"] == "txn-by-test" && c["client"] == "test"),
        "{feed}"
    );
    let listed: Value = app.api_get("/v1/writes").await.json().await.unwrap();
    let clients: Vec<&Value> = listed["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| &w["client"])
        .collect();
    assert_eq!(clients, [&json!("test"), &json!("writer")]);
    // A webhook's change names no client.
    let delivered = app
        .deliver(r#"{"event": "customer.created", "key": "cus_hook", "customer_key": "hook-1", "email": "h@example.com"}"#)
        .await;
    assert_eq!(delivered.status(), 200);
    app.settle().await;
    let hooked: Value = app
        .api_get("/v1/changes?entity=customers")
        .await
        .json()
        .await
        .unwrap();
    let by_hook = hooked["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "webhook")
        .unwrap_or_else(|| panic!("{hooked}"))
        .clone();
    assert_eq!(by_hook["client"], Value::Null);
    app.stop().await;
    sim.stop().await.unwrap();
}

/// Retrying a failed write, replaying the relay and starting a sync are the admin
/// client's: the write and read clients are refused (and the failed write stays failed);
/// the admin client's retry is sent and its replay recorded.
#[tokio::test]
async fn only_an_admin_client_retries_and_replays() {
    let sim = stand_in(program()).await;
    let app = service(&sim).await;
    sim.simulator
        .faults()
        .update(FaultUpdate {
            fail_next: Some(1),
            fail_status: Some(422),
            ..FaultUpdate::default()
        })
        .unwrap();
    let customer = json!({
        "customer_key": "refused-once",
        "email": "refused-once@example.com",
        "partner_key": a_partner_key(&sim),
    });
    let (status, failed) = call(
        &app,
        API_TOKEN,
        reqwest::Method::POST,
        "/v1/customers?wait=10",
        Some(&customer),
    )
    .await;
    assert_eq!(
        (status, &failed["data"]["status"]),
        (200, &json!("failed")),
        "{failed}"
    );
    let id = failed["data"]["id"].as_i64().unwrap();
    let retry = format!("/v1/writes/{id}/retry?wait=10");
    for token in [WRITE_TOKEN, READ_TOKEN, UNNAMED_TOKEN] {
        let (status, _) = call(&app, token, reqwest::Method::POST, &retry, None).await;
        assert_eq!(status, 403);
    }
    let (_, still) = call(
        &app,
        READ_TOKEN,
        reqwest::Method::GET,
        &format!("/v1/writes/{id}"),
        None,
    )
    .await;
    assert_eq!(still["data"]["status"], "failed");
    let (status, retried) = call(&app, ADMIN_TOKEN, reqwest::Method::POST, &retry, None).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["data"]["status"], "succeeded");
    // The write stays the client's that made it.
    assert_eq!(retried["data"]["client"], "test");

    // The relay endpoint's row exists once its task has started.
    for _ in 0..100 {
        if app.db.count("SELECT count(*) FROM relay_endpoints").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replay = "/v1/relay/probe/replay";
    for token in [WRITE_TOKEN, READ_TOKEN] {
        let (status, _) = call(&app, token, reqwest::Method::POST, replay, None).await;
        assert_eq!(status, 403);
    }
    // The refused ones asked for nothing (the leader clears a request once it acts on it,
    // so only its absence can be checked).
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM relay_endpoints WHERE replay_requested_at IS NOT NULL")
            .await,
        0
    );
    let mut replayed = None;
    for _ in 0..100 {
        let (status, answer) = call(&app, ADMIN_TOKEN, reqwest::Method::POST, replay, None).await;
        if status != 503 {
            replayed = Some((status, answer));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 202 only once the request is stored for the endpoint's leader.
    let (status, answer) = replayed.expect("the relay endpoint started");
    assert_eq!(status, 202, "{answer}");
    // Starting a sync: past the scope check for the admin client only (the reconciler is
    // off here, so it is refused for that reason).
    let (status, _) = call(
        &app,
        READ_TOKEN,
        reqwest::Method::POST,
        "/v1/sync/customers",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, answer) = call(
        &app,
        ADMIN_TOKEN,
        reqwest::Method::POST,
        "/v1/sync/customers",
        None,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    app.stop().await;
    sim.stop().await.unwrap();
}

/// The real binary with a client from a file given only by its token's SHA-256 and a
/// client from the environment: both work as their scopes say; the unnamed token reads
/// and cannot write; an unknown token gets 401.
#[tokio::test]
async fn hashed_file_clients_environment_clients_and_unnamed_tokens() {
    let sim = stand_in(program()).await;
    let db = TestDb::new().await;
    let dir = shared_temp_dir("clients");
    let file = dir.join("clients.toml");
    let hashed_token = "billing-token-from-a-file-0123";
    std::fs::write(
        &file,
        format!(
            "[[api.clients]]\nname = \"billing\"\ntoken_sha256 = \"{}\"\nscopes = [\"read\", \"write\"]\n",
            hex::encode(partnerstack_sync::auth::sha256(hashed_token.as_bytes()))
        ),
    )
    .unwrap();
    let env_token = "dashboard-token-from-env-0123";
    let mut vars = crate::writes::writing(&db, &sim);
    vars.push(("PSYNC_API_CLIENT_DASHBOARD_TOKEN", Some(env_token.into())));
    vars.push(("PSYNC_API_CLIENT_DASHBOARD_SCOPES", Some("read".into())));
    let (mut cmd, port) = Process::command(&as_env(&vars));
    cmd.arg("--config").arg(&file);
    let mut service = Process::start(cmd, port);
    service.wait_ready().await;
    let http = partnerstack::http::builder().build().unwrap();
    let ask = |token: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http.request(method, service.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let www = response.headers().get("www-authenticate").cloned();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
                www,
            )
        }
    };
    let customer = json!({
        "customer_key": "from-billing",
        "email": "from-billing@example.com",
        "partner_key": a_partner_key(&sim),
    });
    let (status, write, _) = ask(
        hashed_token,
        reqwest::Method::POST,
        "/v1/customers?wait=10",
        Some(customer.clone()),
    )
    .await;
    assert_eq!(status, 200, "{write}");
    assert_eq!(write["data"]["client"], "billing");
    assert_eq!(write["data"]["result"]["customer_key"], "from-billing");
    for token in [hashed_token, env_token, UNNAMED_TOKEN] {
        let (status, page, _) = ask(token, reqwest::Method::GET, "/v1/customers", None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["data"]["items"][0]["customer_key"], "from-billing");
    }
    for token in [env_token, UNNAMED_TOKEN] {
        let (status, answer, _) = ask(
            token,
            reqwest::Method::POST,
            "/v1/customers",
            Some(customer.clone()),
        )
        .await;
        assert_eq!(
            (status, &answer["code"]),
            (403, &json!("forbidden")),
            "{answer}"
        );
    }
    // The hash is not a token.
    let digest = hex::encode(partnerstack_sync::auth::sha256(hashed_token.as_bytes()));
    for token in ["unknown-token-0123456789", digest.as_str()] {
        let (status, answer, www) = ask(token, reqwest::Method::GET, "/v1/customers", None).await;
        assert_eq!((status, &answer["code"]), (401, &json!("unauthorized")));
        assert_eq!(www.unwrap(), "Bearer");
    }
    service.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
    sim.stop().await.unwrap();
}
