//! The relay: signed deliveries of the change feed to HTTP endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use partnerstack::Entity;
use partnerstack_sync::auth::WebhookSecret;
use partnerstack_sync::config::{Config, RelayEndpoint};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::common::{API_TOKEN, Process, TestApp, TestDb};

/// The Standard Webhooks reference libraries' test secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const T0: i64 = 1_700_000_000_000;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    /// What it answered.
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn sequence(&self) -> i64 {
        self.json()["data"]["sequence"].as_i64().unwrap()
    }
}

/// A relay endpoint for tests: records every request, answers `status` after `delay`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

async fn record(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = s.status.load(Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    s.got.lock().await.push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    async fn start() -> Receiver {
        let state = ReceiverState {
            got: Arc::new(Mutex::new(Vec::new())),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(state.clone());
        let shutdown = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .unwrap();
        });
        Receiver {
            addr,
            got: state.got,
            status: state.status,
            delay_ms: state.delay_ms,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook?token=secret-in-query", self.addr)
    }

    /// The requests answered 2xx.
    async fn delivered(&self) -> Vec<Received> {
        let got = self.got.lock().await;
        got.iter().filter(|r| r.status < 300).cloned().collect()
    }

    /// Waits (at most 60 s) until the 2xx-answered sequences cover `expected`.
    async fn wait_for(&self, expected: &[i64]) -> Vec<Received> {
        for _ in 0..600 {
            let delivered = self.delivered().await;
            let seen: std::collections::HashSet<i64> =
                delivered.iter().map(Received::sequence).collect();
            if expected.iter().all(|s| seen.contains(s)) {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen: Vec<i64> = self
            .delivered()
            .await
            .iter()
            .map(Received::sequence)
            .collect();
        panic!("the endpoint did not get {expected:?} within 60 s; it got {seen:?}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn endpoint(name: &str, url: &str, entities: Option<Vec<Entity>>) -> RelayEndpoint {
    RelayEndpoint {
        name: name.into(),
        url: reqwest::Url::parse(url).unwrap(),
        secret: WebhookSecret::parse(SECRET).unwrap(),
        entities,
    }
}

fn fast_retries(config: &mut Config) {
    config.changes.relay_max_backoff = Duration::from_millis(500);
}

/// The feed's change ids (sequences), in feed order.
async fn feed_order(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM changes ORDER BY pos, id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn feed_order_of(db: &TestDb, entity: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM changes WHERE entity = $1 ORDER BY pos, id")
        .bind(entity)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn delivery(n: i64) -> String {
    match n % 3 {
        0 => json!({"event": "customer.created", "key": format!("cus_r{n}"), "name": "C",
            "created_at": T0 + n, "updated_at": T0 + n}),
        1 => json!({"event": "reward.created", "key": format!("rew_r{n}"), "amount": n,
            "reward_status": "pending", "created_at": T0 + n, "updated_at": T0 + n}),
        _ => json!({"event": "partnership.created", "key": format!("part_r{n}"),
            "partner_key": format!("p{n}"), "created_at": T0 + n, "updated_at": T0 + n}),
    }
    .to_string()
}

/// Checks a message by the Standard Webhooks rules, with nothing of the service's code:
/// HMAC-SHA256 keyed with the base64-decoded secret over `id.timestamp.body`.
fn verify_by_hand(r: &Received) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        r.signature.split(' ').any(|s| s == expected),
        "{} is not signed {expected}",
        r.signature
    );
    let at: i64 = r.timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - at).abs() < 300);
    assert_eq!(r.id, format!("chg_{}", r.sequence()));
}

/// A Python that imports `standardwebhooks`: `$PYTHON`, else the CI virtualenv's, else
/// `python3` on PATH.
fn python_with_standardwebhooks() -> Option<std::path::PathBuf> {
    [
        std::env::var_os("PYTHON").map(std::path::PathBuf::from),
        Some(crate::tools::venv_bin().join("python3")),
        Some("python3".into()),
    ]
    .into_iter()
    .flatten()
    .find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import standardwebhooks"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Verifies the messages with the `standardwebhooks` Python package.
fn verify_with_python(messages: &[Received]) {
    let Some(python) = python_with_standardwebhooks() else {
        return crate::tools::skip(format!(
            "the check with the standardwebhooks Python package: python3 or the package is \
             missing (.ci/run installs it into {}; or set PYTHON)",
            crate::tools::venv_bin().display()
        ));
    };
    let lines: Vec<String> = messages
        .iter()
        .map(|r| {
            json!({"id": r.id, "timestamp": r.timestamp, "signature": r.signature,
                   "body": String::from_utf8(r.body.clone()).unwrap()})
            .to_string()
        })
        .collect();
    let script = format!(
        r#"
import json, sys
from standardwebhooks.webhooks import Webhook
wh = Webhook("{SECRET}")
n = 0
for line in sys.stdin:
    m = json.loads(line)
    headers = {{"webhook-id": m["id"], "webhook-timestamp": m["timestamp"],
               "webhook-signature": m["signature"]}}
    wh.verify(m["body"], headers)
    n += 1
print(n)
"#
    );
    let mut child = std::process::Command::new(&python)
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(lines.join("\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks refused a message: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(verified, messages.len());
}

async fn relay_status(app: &TestApp) -> Value {
    let response = app.api_get("/v1/relay").await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["data"]["endpoints"].clone()
}

#[tokio::test]
async fn every_change_reaches_the_endpoint_signed_in_feed_order_and_can_be_replayed() {
    let all = Receiver::start().await;
    let rewards = Receiver::start().await;
    let (all_url, rewards_url) = (all.url(), rewards.url());
    let app = TestApp::spawn_with(move |c| {
        c.relay.push(endpoint("all", &all_url, None));
        c.relay.push(endpoint(
            "rewards-only",
            &rewards_url,
            Some(vec![Entity::Reward]),
        ));
    })
    .await;
    // The endpoints start at the head: wait until both are started, then make changes.
    for _ in 0..300 {
        if relay_status(&app)
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["started"] == true)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..30 {
        assert_eq!(app.deliver(delivery(n)).await.status(), 200);
    }
    app.settle().await;
    let order = feed_order(&app.db).await;
    assert_eq!(order.len(), 30);
    let got = all.wait_for(&order).await;
    let sequences: Vec<i64> = got.iter().map(Received::sequence).collect();
    assert_eq!(sequences, order, "every change once, in feed order");
    for r in &got {
        verify_by_hand(r);
        let body = r.json();
        assert_eq!(
            body["type"],
            format!(
                "{}.created",
                match body["data"]["entity"].as_str().unwrap() {
                    "customers" => "customer",
                    "rewards" => "reward",
                    _ => "partnership",
                }
            )
        );
        assert!(body["data"]["cursor"].is_string() && body["data"]["object"]["key"].is_string());
    }
    verify_with_python(&got);

    let reward_order = feed_order_of(&app.db, "rewards").await;
    let got_rewards = rewards.wait_for(&reward_order).await;
    let reward_sequences: Vec<i64> = got_rewards.iter().map(Received::sequence).collect();
    assert_eq!(reward_sequences, reward_order, "only rewards, in order");

    // Progress, and metrics per endpoint.
    let status = relay_status(&app).await;
    let all_status = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "all")
        .unwrap()
        .clone();
    assert_eq!(all_status["delivered"], 30);
    assert_eq!(all_status["pending"], 0);
    assert_eq!(
        all_status["url"],
        format!("http://{}/hook", all.addr),
        "no query string shown"
    );
    let last_cursor = got.last().unwrap().json()["data"]["cursor"].clone();
    assert_eq!(all_status["position"], last_cursor);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"psync_relay_attempts_total{endpoint="all",result="delivered"} 30"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"psync_relay_leader{endpoint="rewards-only"} 1"#));

    // A replay from the tenth change sends the twenty after it again, same ids.
    let tenth = got[9].json()["data"]["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let response = app
        .http
        .post(app.url(&format!("/v1/relay/all/replay?after={tenth}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    for _ in 0..600 {
        if all.delivered().await.len() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again: Vec<String> = all.delivered().await[30..]
        .iter()
        .map(|r| r.id.clone())
        .collect();
    let expected: Vec<String> = got[10..].iter().map(|r| r.id.clone()).collect();
    assert_eq!(again, expected);
    let unknown = app
        .http
        .post(app.url("/v1/relay/nope/replay"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_was_down_catches_up_in_order_and_others_are_not_delayed() {
    let up = Receiver::start().await;
    let down = Receiver::start().await;
    down.status.store(503, Ordering::SeqCst);
    let (up_url, down_url) = (up.url(), down.url());
    let app = TestApp::spawn_with(move |c| {
        fast_retries(c);
        c.relay.push(endpoint("up", &up_url, None));
        c.relay.push(endpoint("down", &down_url, None));
    })
    .await;
    for _ in 0..300 {
        if relay_status(&app)
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["started"] == true)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..20 {
        assert_eq!(app.deliver(delivery(n)).await.status(), 200);
    }
    app.settle().await;
    let order = feed_order(&app.db).await;
    // The healthy endpoint gets everything while the other is still failing.
    let got = up.wait_for(&order).await;
    assert_eq!(
        got.iter().map(Received::sequence).collect::<Vec<_>>(),
        order
    );
    assert!(down.delivered().await.is_empty());
    for _ in 0..300 {
        if down.got.lock().await.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every attempt while down was the first change: one in flight, in order.
    let attempts = down.got.lock().await.clone();
    assert!(attempts.len() >= 2);
    assert!(attempts.iter().all(|r| r.sequence() == order[0]));
    // The relay records an attempt's failure after the endpoint has seen it: wait for the
    // record of the second (bounded), then read it.
    let down_status = async || {
        relay_status(&app)
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "down")
            .unwrap()
            .clone()
    };
    for _ in 0..300 {
        if down_status().await["failures"].as_i64().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_status = down_status().await;
    assert_eq!(down_status["pending"], 20);
    assert!(down_status["failures"].as_i64().unwrap() >= 2);
    assert_eq!(down_status["last_error"], "answered HTTP 503");
    let failed = crate::metrics::samples(&app.metrics().await)[r#"psync_relay_attempts_total{endpoint="down",result="failed"}"#];
    assert!(failed >= 2.0, "{failed}");

    // Back up: it catches up, in order, nothing missing.
    down.status.store(200, Ordering::SeqCst);
    let caught_up = down.wait_for(&order).await;
    assert_eq!(
        caught_up.iter().map(Received::sequence).collect::<Vec<_>>(),
        order
    );
    app.stop().await;
}

/// The real binary, relaying to a slow endpoint, killed with SIGKILL half-way: after a
/// restart the endpoint has every change (some twice, none missing), in feed order.
#[tokio::test]
async fn a_kill_9_mid_relay_loses_no_change() {
    let sink = Receiver::start().await;
    sink.delay_ms.store(10, Ordering::SeqCst);
    let db = TestDb::new().await;
    let url = sink.url();
    let env = [
        ("DATABASE_URL", Some(db.url.as_str())),
        ("PSYNC_RELAY_SINK_URL", Some(url.as_str())),
        ("PSYNC_RELAY_SINK_SECRET", Some(SECRET)),
    ];
    let service = Process::serve(&env).await;
    let http = partnerstack::http::builder().build().unwrap();
    // Wait until the endpoint has started (its position is at the empty feed's start).
    for _ in 0..300 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM relay_endpoints")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..150 {
        let response = http
            .post(service.url(&format!(
                "/webhooks/partnerstack/{}",
                crate::common::WEBHOOK_TOKEN
            )))
            .header("content-type", "application/json")
            .body(delivery(n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for _ in 0..600 {
        if sink.delivered().await.len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = sink.delivered().await.len();
    assert!(
        (40..150).contains(&before),
        "killed mid-relay ({before} delivered)"
    );
    service.kill();

    let service = Process::serve(&env).await;
    let order = loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if pending == 0 {
            break feed_order(&db).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order.len(), 150);
    let got = sink.wait_for(&order).await;
    // First deliveries of each change, in the order received: the feed's order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<i64> = got
        .iter()
        .map(Received::sequence)
        .filter(|s| seen.insert(*s))
        .collect();
    assert_eq!(firsts, order);
    println!(
        "[relay] killed after {before} deliveries; {} requests for {} changes ({} repeated)",
        got.len(),
        order.len(),
        got.len() - order.len()
    );
    service.terminate().await;
}

/// Two replicas on one database: one relays the endpoint, so every change arrives once, in
/// order; when it stops, the other takes over from the position it left.
#[tokio::test]
async fn one_replica_relays_an_endpoint_and_another_takes_over() {
    let sink = Receiver::start().await;
    let url = sink.url();
    let first = TestApp::spawn_with({
        let url = url.clone();
        move |c| c.relay.push(endpoint("sink", &url, None))
    })
    .await;
    let db = TestDb {
        url: first.db.url.clone(),
        pool: first.db.pool.clone(),
    };
    let second = TestApp::spawn_on(db, move |c| c.relay.push(endpoint("sink", &url, None))).await;
    for _ in 0..300 {
        if relay_status(&first).await[0]["started"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..20 {
        let app = if n % 2 == 0 { &first } else { &second };
        assert_eq!(app.deliver(delivery(n)).await.status(), 200);
    }
    first.settle().await;
    let order = feed_order(&first.db).await;
    let got = sink.wait_for(&order).await;
    assert_eq!(
        got.iter().map(Received::sequence).collect::<Vec<_>>(),
        order
    );
    let leading = r#"psync_relay_leader{endpoint="sink"} 1"#;
    let a = first.metrics().await.contains(leading);
    let b = second.metrics().await.contains(leading);
    assert!(
        a ^ b,
        "exactly one replica relays (first: {a}, second: {b})"
    );

    // The relaying replica stops; the other takes over and goes on from the position.
    let (stopping, staying) = if a { (first, second) } else { (second, first) };
    stopping.stop().await;
    for n in 20..30 {
        assert_eq!(staying.deliver(delivery(n)).await.status(), 200);
    }
    staying.settle().await;
    let order = feed_order(&staying.db).await;
    let got = sink.wait_for(&order).await;
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<i64> = got
        .iter()
        .map(Received::sequence)
        .filter(|s| seen.insert(*s))
        .collect();
    assert_eq!(firsts, order);
    assert_eq!(got.len(), order.len(), "a graceful stop repeats nothing");
    staying.stop().await;
}
