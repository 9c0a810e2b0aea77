//! The stand-in's HTTP contract: auth, limits, ordering, filters, faults, writes, the
//! state dump, webhook deliveries into the real service, and the CLI.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use partnerstack::Entity;
use partnerstack_sim::{self as simulate, Behaviours, Dialect, Naming, Options, Running, Shape};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::client::{PUBLIC_KEY, SECRET_KEY, program, stand_in};
use crate::common::{TestApp, free_port};

fn http() -> reqwest::Client {
    partnerstack::http::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn api(running: &Running, path_and_query: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{}{path_and_query}", running.base_url()))
        .basic_auth(PUBLIC_KEY, Some(SECRET_KEY))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn admin(
    running: &Running,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut request = http().request(method, running.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

fn keys(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn basic_auth_is_required() {
    let running = stand_in(program()).await;
    let url = format!("{}/customers", running.base_url());
    let none = http().get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["status"], 401);
    assert!(body["message"].as_str().unwrap().contains("Unauthorized"));
    let wrong = http()
        .get(&url)
        .basic_auth(PUBLIC_KEY, Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let (status, body) = api(&running, "/customers").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], 200);
    assert_eq!(body["message"], "Success");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn limits_ordering_and_cursors() {
    let running = stand_in(program()).await;
    let (_, body) = api(&running, "/customers").await;
    assert_eq!(
        body["data"]["items"].as_array().unwrap().len(),
        10,
        "default limit"
    );
    assert_eq!(body["data"]["has_more"], true);
    assert!(
        body["data"].get("ending_cursor").is_none(),
        "the real API has none"
    );
    for bad in ["0", "251", "ten", "-1"] {
        let (status, body) = api(&running, &format!("/customers?limit={bad}")).await;
        assert_eq!(status, 400, "limit={bad}");
        assert_eq!(body["status"], 400);
    }
    let (status, all) = api(&running, "/transactions?limit=250").await;
    assert_eq!(status, 200);
    let items = all["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    assert_eq!(all["data"]["has_more"], false);
    let created: Vec<i64> = items
        .iter()
        .map(|i| i["created_at"].as_i64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert!(created.iter().all(|t| *t > 100_000_000_000), "milliseconds");
    let all = keys(&all["data"]["items"]);

    let (_, after) = api(
        &running,
        &format!("/transactions?limit=5&starting_after={}", all[9]),
    )
    .await;
    assert_eq!(keys(&after["data"]["items"]), all[10..15]);
    let (_, before) = api(
        &running,
        &format!("/transactions?limit=5&ending_before={}", all[9]),
    )
    .await;
    assert_eq!(keys(&before["data"]["items"]), all[4..9]);
    let (_, before) = api(
        &running,
        &format!("/transactions?limit=50&ending_before={}", all[2]),
    )
    .await;
    assert_eq!(keys(&before["data"]["items"]), all[0..2]);
    assert_eq!(before["data"]["has_more"], false);
    let (status, _) = api(
        &running,
        &format!(
            "/transactions?starting_after={}&ending_before={}",
            all[1], all[5]
        ),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = api(&running, "/transactions?starting_after=txn_nope").await;
    assert_eq!(status, 400);
    let (status, _) = api(&running, "/partners").await;
    assert_eq!(status, 404, "no /partners in the real API");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn time_filters_accept_milliseconds_and_seconds() {
    let running = stand_in(program()).await;
    let (_, all) = api(&running, "/transactions?limit=250").await;
    let items = all["data"]["items"].as_array().unwrap().clone();
    let pivot = items[20]["created_at"].as_i64().unwrap();
    let (_, ms) = api(
        &running,
        &format!("/transactions?limit=250&min_created={pivot}"),
    )
    .await;
    assert_eq!(
        keys(&ms["data"]["items"]),
        keys(&Value::Array(items[..21].to_vec()))
    );
    let seconds = pivot / 1000;
    let (_, s) = api(
        &running,
        &format!("/transactions?limit=250&max_created={seconds}"),
    )
    .await;
    let want: Vec<String> = items
        .iter()
        .filter(|i| i["created_at"].as_i64().unwrap() <= seconds * 1000)
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys(&s["data"]["items"]), want);
    let (status, _) = api(&running, "/transactions?min_created=yesterday").await;
    assert_eq!(status, 400);
    // Groups: the `group` filter on customers is the group's name without spaces.
    let state = running.simulator.state(None);
    let group = &state["streams"]["groups"][1];
    let name = group["name"].as_str().unwrap();
    let (_, by_group) = api(&running, &format!("/customers?limit=250&group={name}")).await;
    let partners: HashSet<&str> = state["streams"]["partnerships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["group"]["key"] == group["key"])
        .map(|p| p["partner_key"].as_str().unwrap())
        .collect();
    // Exactly the listed (not archived) customers of the group's partners.
    let want: HashSet<String> = state["streams"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["archived"] != true)
        .filter(|c| {
            c["partner_key"]
                .as_str()
                .is_some_and(|k| partners.contains(k))
        })
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    assert!(!want.is_empty(), "group {name} has customers");
    let got = keys(&by_group["data"]["items"]);
    assert_eq!(by_group["data"]["has_more"], false);
    assert_eq!(got.len(), want.len(), "no customer listed twice");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn single_gets_exist_where_the_real_api_has_them() {
    let running = stand_in(program()).await;
    let state = running.simulator.state(None);
    let customer = state["streams"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["customer_key"].is_string() && c["archived"] != true)
        .unwrap()
        .clone();
    let (status, body) = api(
        &running,
        &format!("/customers/{}", customer["customer_key"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    // Every field the stand-in keeps, and the fields real customers carry besides.
    for (field, value) in customer.as_object().unwrap() {
        assert_eq!(&body["data"][field], value, "{field}");
    }
    assert!(body["data"]["fields"].is_array() && body["data"]["field_data"].is_object());
    let partner = &state["streams"]["partnerships"][0];
    for id in [&partner["key"], &partner["partner_key"]] {
        let (status, body) =
            api(&running, &format!("/partnerships/{}", id.as_str().unwrap())).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["key"], partner["key"]);
    }
    let tx = state["streams"]["transactions"][0]["key"].as_str().unwrap();
    let (status, _) = api(&running, &format!("/transactions/{tx}")).await;
    assert_eq!(status, 404, "no single GET for transactions");
    let (status, body) = api(&running, "/customers/nobody").await;
    assert_eq!((status, body["status"].clone()), (404, json!(404)));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn writes_validate_refuse_duplicates_and_archive() {
    let running = stand_in(program()).await;
    let partner =
        running.simulator.state(Some(Entity::Partner))["streams"]["partnerships"][0]["partner_key"]
            .clone();
    let post = |path: &str, body: Value| {
        http()
            .post(format!("{}{path}", running.base_url()))
            .basic_auth(PUBLIC_KEY, Some(SECRET_KEY))
            .json(&body)
            .send()
    };
    let r = post("/customers", json!({"partner_key": partner}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "'email' is a required property");
    let customer =
        json!({"email": "x@example.com", "partner_key": partner, "customer_key": "c-dup"});
    assert_eq!(
        post("/customers", customer.clone()).await.unwrap().status(),
        200
    );
    let r = post("/customers", customer).await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "a repeated customer_key is an error, not an upsert"
    );
    let r = post("/transactions", json!({"customer_external_key": "c-dup", "customer_email": "x@example.com", "amount": 1, "currency": "USD"})).await.unwrap();
    assert_eq!(r.status(), 400, "exactly one customer identifier");
    let r = post(
        "/transactions",
        json!({"customer_external_key": "c-dup", "amount": 1.5, "currency": "USD"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400, "cents are integers");

    let r = http()
        .delete(format!("{}/customers/c-dup", running.base_url()))
        .basic_auth(PUBLIC_KEY, Some(SECRET_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = api(&running, "/customers/c-dup").await;
    assert_eq!(status, 404, "archived customers are gone from the API");
    let (_, list) = api(&running, "/customers?limit=250").await;
    assert!(!keys(&list["data"]["items"]).iter().any(|k| k == "c-dup"));
    let state = running.simulator.state(Some(Entity::Customer));
    let archived = state["streams"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["customer_key"] == "c-dup")
        .unwrap();
    assert_eq!(archived["archived"], true, "but the state dump keeps them");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn faults_are_injected_and_the_admin_routes_stay_reachable() {
    let running = stand_in(program()).await;
    admin(
        &running,
        reqwest::Method::POST,
        "/admin/faults",
        Some(json!({"throttle_next": 2, "retry_after": 7})),
    )
    .await;
    let r = http()
        .get(format!("{}/groups", running.base_url()))
        .basic_auth(PUBLIC_KEY, Some(SECRET_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(api(&running, "/groups").await.0, 429);
    assert_eq!(api(&running, "/groups").await.0, 200);

    admin(
        &running,
        reqwest::Method::POST,
        "/admin/faults",
        Some(json!({"error_rate": 1.0})),
    )
    .await;
    let (status, body) = api(&running, "/groups").await;
    assert!((500..=503).contains(&status), "{status}");
    assert_eq!(body["status"], status);
    let state = admin(
        &running,
        reqwest::Method::GET,
        "/admin/state?stream=groups",
        None,
    )
    .await;
    assert_eq!(state["streams"]["groups"].as_array().unwrap().len(), 3);

    admin(
        &running,
        reqwest::Method::POST,
        "/admin/faults",
        Some(json!({"error_rate": 0.0, "slow_ms": 150})),
    )
    .await;
    let started = Instant::now();
    assert_eq!(api(&running, "/groups").await.0, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "slow answers are slow"
    );

    let bad = http()
        .post(running.url("/admin/faults"))
        .json(&json!({"error_rate": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let stats = admin(&running, reqwest::Method::GET, "/admin/stats", None).await;
    assert_eq!(stats["answers"]["429"], 2);
    assert_eq!(stats["objects"]["customers"], 61);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_state_dump_is_reproducible_and_follows_changes() {
    let options = Options {
        now_ms: Some(1_750_000_000_000),
        ..program()
    };
    let a = stand_in(options.clone()).await;
    let b = stand_in(options).await;
    let state_a = admin(&a, reqwest::Method::GET, "/admin/state", None).await;
    let state_b = admin(&b, reqwest::Method::GET, "/admin/state", None).await;
    assert_eq!(
        state_a["streams"], state_b["streams"],
        "same seed, same program"
    );
    for (stream, n) in [
        ("partnerships", 23),
        ("customers", 61),
        ("transactions", 50),
        ("rewards", 40),
        ("deals", 9),
        ("leads", 12),
        ("groups", 3),
    ] {
        assert_eq!(
            state_a["streams"][stream].as_array().unwrap().len(),
            n,
            "{stream}"
        );
    }

    // Back-date a transaction by 60 days and approve it without a webhook: the dump shows
    // it, and the ledger knows no delivery carried it.
    let tx = state_a["streams"]["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["approved"] == false)
        .unwrap()
        .clone();
    let key = tx["key"].as_str().unwrap();
    let old = 1_750_000_000_000_i64 - 60 * 86_400_000;
    admin(
        &a,
        reqwest::Method::POST,
        &format!("/admin/objects/transactions/{key}?notify=none"),
        Some(json!({"created_at": old})),
    )
    .await;
    let patched = admin(
        &a,
        reqwest::Method::POST,
        &format!("/admin/objects/transactions/{key}?notify=drop"),
        Some(json!({"approved": true})),
    )
    .await;
    assert_eq!(patched["data"]["approved"], true);
    assert_eq!(patched["data"]["created_at"], old);
    assert!(patched["data"]["updated_at"].as_i64().unwrap() > tx["updated_at"].as_i64().unwrap());
    // (Only a bound on the start: a list bounded on both sides counts, in the ledger, as the
    // service looking the object up.)
    let (_, page) = api(
        &a,
        &format!("/transactions?limit=250&min_created={}", old - 1),
    )
    .await;
    assert!(keys(&page["data"]["items"]).contains(&key.to_string()));
    let undelivered = admin(&a, reqwest::Method::GET, "/admin/undelivered", None).await;
    assert_eq!(undelivered["count"], 1);
    assert_eq!(undelivered["objects"][0]["key"], key);

    let mutated = admin(
        &a,
        reqwest::Method::POST,
        "/admin/mutate?count=5&kind=archive_customer&notify=none",
        None,
    )
    .await;
    assert_eq!(mutated["count"], 5);
    let archived: Vec<&str> = mutated["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    let (_, list) = api(&a, "/customers?limit=250").await;
    assert_eq!(
        list["data"]["items"].as_array().unwrap().len(),
        61 - 5 - count_archived(&state_a)
    );
    assert!(
        keys(&list["data"]["items"])
            .iter()
            .all(|k| !archived.contains(&k.as_str()))
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

fn count_archived(state: &Value) -> usize {
    state["streams"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["archived"] == true)
        .count()
}

#[tokio::test]
async fn the_legacy_dialect() {
    let running = stand_in(Options {
        dialect: Dialect::Legacy,
        ..program()
    })
    .await;
    let (status, body) = api(&running, "/partners?limit=5").await;
    assert_eq!(status, 200);
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(body["data"]["ending_cursor"], items[4]["key"]);
    assert!(
        items[0]["created_at"].as_i64().unwrap() < 100_000_000_000,
        "seconds"
    );
    assert_eq!(
        api(&running, "/partners?limit=101").await.0,
        400,
        "the legacy dialect's max is 100"
    );
    running.stop().await.unwrap();
}

/// Lossy, repeated and reordered deliveries into the real service: what the delivery log
/// says arrived did arrive, and the ledger's "undelivered" objects are exactly those whose
/// latest change was never delivered.
#[tokio::test]
async fn webhooks_reach_the_service_with_loss_repeats_and_reordering() {
    const SIGNING: &str = "simulate-signing-secret-0123";
    let app = TestApp::spawn_with(|c| {
        c.webhooks.signing_secrets = vec![SecretString::from(SIGNING.to_string())];
    })
    .await;
    for (shape, naming) in [
        (Shape::Flat, Naming::Underscore),
        (Shape::Envelope, Naming::Dotted),
    ] {
        let running = stand_in(Options {
            webhook_url: Some(app.webhook_url()),
            drop: 0.3,
            duplicate: 0.3,
            reorder: 0.5,
            shape,
            naming,
            signing_secret: Some(SecretString::from(SIGNING.to_string())),
            // Every kind, each body the whole object: this is about the delivery machinery
            // (documented bodies are covered by `documented_webhooks_...`).
            behaviours: Behaviours::all_webhooks(),
            ..program()
        })
        .await;
        let before = app
            .db
            .count("SELECT coalesce(max(id), 0) FROM webhook_events")
            .await;
        admin(
            &running,
            reqwest::Method::POST,
            "/admin/mutate?count=40",
            None,
        )
        .await;
        let summary = admin(&running, reqwest::Method::POST, "/admin/flush", None).await;
        let log = admin(&running, reqwest::Method::GET, "/admin/deliveries", None).await;
        let log = log["deliveries"].as_array().unwrap();
        let outcome = |o: &str| log.iter().filter(|d| d["outcome"] == o).count();
        assert!(log.len() >= 40);
        assert_eq!(
            outcome("dropped") + outcome("delivered"),
            log.len(),
            "{summary}"
        );
        assert!(outcome("dropped") > 0 && outcome("delivered") > 0);
        assert!(summary["duplicated"].as_u64().unwrap() > 0);
        assert!(summary["reordered"].as_u64().unwrap() > 0);
        // Repeats are byte-identical, so the service stores each delivered event once.
        let stored = app
            .db
            .count(&format!(
                "SELECT count(*) FROM webhook_events WHERE id > {before}"
            ))
            .await;
        assert_eq!(stored, outcome("delivered") as i64);
        let style = match naming {
            Naming::Dotted => r"\.",
            Naming::Underscore => "_",
        };
        let styled = app
            .db
            .count(&format!(
                "SELECT count(*) FROM webhook_events WHERE id > {before} \
                 AND body ~ '\"event\": ?\"[a-z]+{style}(created|updated|deleted)\"'"
            ))
            .await;
        assert_eq!(styled, stored, "{naming:?} event names");
        // Every delivery is one the service understands.
        app.settle().await;
        let applied = app
            .db
            .count(&format!(
                "SELECT count(*) FROM webhook_events WHERE id > {before} AND outcome IN ('applied', 'stale')"
            ))
            .await;
        assert_eq!(applied, stored);

        // Undelivered = objects whose newest change no delivered event carried.
        let mut latest: HashMap<(String, String), (i64, bool)> = HashMap::new();
        for d in log {
            let id = (
                d["stream"].as_str().unwrap().to_string(),
                d["key"].as_str().unwrap().to_string(),
            );
            let t = d["updated_at"].as_i64().unwrap();
            let delivered = d["outcome"] == "delivered";
            let entry = latest.entry(id).or_insert((t, delivered));
            if t > entry.0 {
                *entry = (t, delivered);
            } else if t == entry.0 {
                entry.1 |= delivered;
            }
        }
        let mut want: Vec<(String, String)> = latest
            .into_iter()
            .filter(|(_, (_, delivered))| !delivered)
            .map(|(id, _)| id)
            .collect();
        want.sort();
        let got = admin(&running, reqwest::Method::GET, "/admin/undelivered", None).await;
        let got: Vec<(String, String)> = got["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["stream"].as_str().unwrap().to_string(),
                    o["key"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want);
        running.stop().await.unwrap();
    }
    app.stop().await;
}

/// On tokio's paused clock, so "the loop stopped" is decided by ticks, not by how fast the
/// machine is: the clock advances whenever every task waits.
#[tokio::test(start_paused = true)]
async fn the_mutation_loop_changes_data_at_its_rate_and_stops_by_itself() {
    let options = Options {
        webhook_rate: 500.0,
        max_mutations: Some(25),
        now_ms: Some(1_750_000_000_000),
        behaviours: Behaviours::all_webhooks(),
        ..program()
    };
    // The same seeded program, changed 25 times by hand: the events 25 changes make.
    let twin = simulate::Simulator::new(
        &options,
        &SecretString::from(PUBLIC_KEY),
        &SecretString::from(SECRET_KEY),
    )
    .unwrap();
    let expected = twin.mutate(25, None, simulate::Notify::None).len() as u64;
    assert!(expected >= 25, "{expected}");

    let running = stand_in(options).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.simulator.delivery_summary().events < expected {
        assert!(
            Instant::now() < deadline,
            "the loop made {} of {expected} events",
            running.simulator.delivery_summary().events
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ten seconds on (5,000 more changes at its rate), the loop has made no more.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let summary = running.simulator.delivery_summary();
    assert_eq!(
        summary.events, expected,
        "no change after the 25th ({expected} events)"
    );
    // Without a target every event is logged as such.
    assert_eq!(
        summary.outcomes.get("no_target").copied(),
        Some(summary.events)
    );
    running.stop().await.unwrap();
}

/// The README's command, as a process: it serves, then stops on SIGTERM.
#[tokio::test]
async fn the_simulate_command_serves_standalone() {
    let port = free_port();
    let binary = env!("CARGO_BIN_EXE_partnerstack-sync");
    let help = std::process::Command::new(binary)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("simulate"),
        "{binary} has no simulate command: another checkout sharing CARGO_TARGET_DIR replaced it"
    );
    let mut child = tokio::process::Command::new(binary)
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--seed",
            "42",
            "--customers",
            "300",
        ])
        .env("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY)
        .env("PARTNERSTACK_SECRET_KEY", SECRET_KEY)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v2/customers?limit=1");
    let mut served = None;
    for _ in 0..200 {
        if let Ok(r) = http()
            .get(&url)
            .basic_auth(PUBLIC_KEY, Some(SECRET_KEY))
            .send()
            .await
        {
            served = Some(r.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, Some(reqwest::StatusCode::OK));
    let state: Value = http()
        .get(format!("http://127.0.0.1:{port}/admin/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["objects"]["customers"], 300);
    let pid = child.id().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("simulate stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn simulate_refuses_to_start_without_credentials() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"))
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .env_remove("PARTNERSTACK_PUBLIC_KEY")
        .env_remove("PARTNERSTACK_SECRET_KEY")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PARTNERSTACK_PUBLIC_KEY"), "{stderr}");
}
