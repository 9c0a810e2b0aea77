//! Reliability: every delivery answered 2xx is committed, whatever fails, and stored data
//! is never corrupted. Each scenario prints its figures (run with `--nocapture`).

use std::net::SocketAddr;
use std::num::NonZero;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Process, TestApp, TestDb, WEBHOOK_TOKEN, as_env};
use crate::load::{self, Answer, Client, Tally};

fn report(scenario: &str, tally: &Tally, committed: i64, lost: usize) {
    println!(
        "[{scenario}] sent={} 2xx={} 503={} other={} hung_up={} no_answer={} committed={committed} lost={lost}",
        tally.sent, tally.ok, tally.unavailable, tally.other_status, tally.hung_up, tally.no_answer
    );
}

async fn idle_in_transaction(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn clients_hanging_up_mid_request_lose_nothing_acknowledged() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = (0..3000).map(|n| load::delivery("hangup", n)).collect();
    let answers = load::run(app.addr, bodies, 64, 1.0 / 3.0, 7, Duration::from_secs(30)).await;
    let tally = Tally::of(&answers);

    load::assert_acknowledged_are_stored(&app.db.pool, &answers).await;
    app.settle().await;
    let committed = app.db.count("SELECT count(*) FROM webhook_events").await;
    report("hang-ups", &tally, committed, 0);

    assert_eq!(tally.no_answer, 0, "patient clients always get an answer");
    assert_eq!(
        tally.other_status + tally.unavailable,
        0,
        "no errors without a fault"
    );
    assert!(
        tally.hung_up > 500,
        "the load includes hang-ups ({})",
        tally.hung_up
    );
    assert!(committed >= tally.ok as i64);
    assert!(committed <= tally.sent as i64);
    assert_eq!(
        idle_in_transaction(&app.db.pool).await,
        0,
        "a connection was left idle in transaction"
    );
    assert_eq!(
        app.db.count("SELECT count(*) FROM customers").await,
        committed,
        "every stored delivery was applied exactly once"
    );
    // The service still answers.
    assert_eq!(
        app.deliver(load::delivery("hangup", 999_999))
            .await
            .status(),
        200
    );
    app.stop().await;
}

/// Patient senders posting unique deliveries until `stop`, at most `limit` in all.
async fn sustained(
    addr: std::net::SocketAddr,
    run: &'static str,
    senders: usize,
    limit: usize,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> Vec<Answer> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (next, stop) = (next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                let body = load::delivery(run, n);
                answers
                    .push(load::send(addr, body, Client::Patient, Duration::ZERO, deadline).await);
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test]
async fn killing_the_process_mid_burst_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let db = TestDb::new().await;
    let service = Process::serve(&[("DATABASE_URL", Some(&db.url))]).await;
    let addr = service.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let burst = tokio::spawn(sustained(
        addr,
        "kill",
        32,
        50_000,
        stop.clone(),
        Duration::from_secs(10),
    ));
    // Let a few hundred deliveries through, then kill -9 while the burst goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.count("SELECT count(*) FROM webhook_events").await <= 300 {
        assert!(
            Instant::now() < deadline,
            "fewer than 300 deliveries stored within 30 s of the burst's start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.kill();
    stop.store(true, Ordering::Relaxed);
    let answers = burst.await.unwrap();
    let tally = Tally::of(&answers);
    assert!(tally.ok > 0);
    load::assert_acknowledged_are_stored(&db.pool, &answers).await;

    // What had been applied before the kill must not be applied again after the restart.
    let before: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, applied_at FROM webhook_events WHERE outcome <> 'pending'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let pending_before = db
        .count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
        .await;

    let service = Process::serve(&[("DATABASE_URL", Some(&db.url))]).await;
    for _ in 0..300 {
        if db
            .count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
            .await
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.terminate().await;

    let committed = db.count("SELECT count(*) FROM webhook_events").await;
    report("kill -9", &tally, committed, 0);
    println!(
        "[kill -9] applied before kill={} pending at restart={pending_before}",
        before.len()
    );
    assert_eq!(
        db.count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
            .await,
        0
    );
    let after: std::collections::HashMap<i64, chrono::DateTime<chrono::Utc>> =
        sqlx::query_as("SELECT id, applied_at FROM webhook_events WHERE id = ANY($1)")
            .bind(before.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (id, applied_at) in &before {
        assert_eq!(
            after.get(id),
            Some(applied_at),
            "delivery {id} was applied twice"
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM customers").await, committed);
    assert_eq!(
        db.count("SELECT count(*) FROM webhook_events WHERE outcome <> 'applied'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_postgres_restart_mid_burst_answers_503_never_a_false_200_and_recovers() {
    let (pg, db, dir) = TestDb::private("pg-restart").await;
    let timeout = Duration::from_secs(4);
    let app = TestApp::spawn_on(db, |c| {
        c.server.request_timeout = timeout;
        c.database.acquire_timeout = Duration::from_secs(1);
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let burst = tokio::spawn(sustained(
        app.addr,
        "pgrestart",
        16,
        100_000,
        stop.clone(),
        Duration::from_secs(30),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.stop().await.unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready_while_down = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.resume().await.unwrap();
    let outage = down.elapsed();
    // Keep the burst going until deliveries succeed again, then stop it.
    let resumed_at = app.db.count("SELECT count(*) FROM webhook_events").await;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if app.db.count("SELECT count(*) FROM webhook_events").await > resumed_at + 50 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let answers = burst.await.unwrap();
    let tally = Tally::of(&answers);
    load::assert_acknowledged_are_stored(&app.db.pool, &answers).await;
    app.settle().await;
    let committed = app.db.count("SELECT count(*) FROM webhook_events").await;
    report("postgres restart", &tally, committed, 0);
    println!("[postgres restart] outage={outage:?}");

    assert_eq!(ready_while_down, 503, "/readyz follows the database");
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(tally.unavailable > 0, "the outage was visible as 503s");
    assert_eq!(
        tally.other_status + tally.no_answer,
        0,
        "every answer was 200 or 503"
    );
    for a in answers.iter().filter(|a| a.status == Some(503)) {
        assert!(a.retry_after, "503 without Retry-After");
    }
    // Every answer is bounded by the request timeout (4 s), never by the outage: a
    // request does not hang past it. The bound checked is only a hang guard, generous for
    // a loaded machine and well under the senders' own 30 s deadline.
    let slowest = answers.iter().map(|a| a.elapsed).max().unwrap();
    assert!(
        slowest < Duration::from_secs(15),
        "a request hung for {slowest:?} (request timeout {timeout:?})"
    );
    assert!(
        answers.iter().rev().take(5).all(|a| a.status == Some(200)),
        "ingest resumed by itself"
    );
    app.stop().await;
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_stalled_database_gets_503s_and_a_bounded_queue() {
    let capacity = 32;
    let app = TestApp::spawn_with(|c| {
        c.server.request_timeout = Duration::from_secs(2);
        c.webhooks.queue_capacity = NonZero::new(capacity).unwrap();
        c.webhooks.batch_size = NonZero::new(8).unwrap();
    })
    .await;
    // Another session holds a lock that blocks every insert into the delivery log.
    let mut locker = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();

    let bodies: Vec<String> = (0..300).map(|n| load::delivery("stall", n)).collect();
    let addr = app.addr;
    let load = tokio::spawn(load::run(
        addr,
        bodies,
        150,
        0.0,
        3,
        Duration::from_secs(20),
    ));
    let mut deepest = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let depth = app.metric("psync_ingest_queue_depth").await as i64;
        deepest = deepest.max(depth);
    }
    let answers = load.await.unwrap();
    locker.rollback().await.unwrap();
    let tally = Tally::of(&answers);
    report(
        "stalled database",
        &tally,
        app.db.count("SELECT count(*) FROM webhook_events").await,
        0,
    );
    println!("[stalled database] deepest queue={deepest} capacity={capacity}");

    assert_eq!(
        tally.ok, 0,
        "nothing can be acknowledged while the log is locked"
    );
    assert_eq!(
        tally.unavailable, tally.sent,
        "every request timed out with 503"
    );
    assert!(answers.iter().all(|a| a.retry_after));
    assert!(
        deepest as usize <= capacity,
        "the queue grew past its bound: {deepest}"
    );
    assert!(
        deepest > 0,
        "the queue filled up while the database stalled"
    );

    // Once the lock is gone, ingest works again.
    let mut status = 0;
    for _ in 0..50 {
        status = app
            .deliver(load::delivery("stall", 100_000))
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    app.settle().await;
    assert_eq!(idle_in_transaction(&app.db.pool).await, 0);
    app.stop().await;
}

/// One malformed input class per row: the answer, and whether a delivery is stored.
#[tokio::test]
async fn malformed_input_gets_the_documented_answer_and_never_corrupts_data() {
    let app =
        TestApp::spawn_with(|c| c.webhooks.body_limit = NonZero::new(64 * 1024).unwrap()).await;
    let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
    let long_key = format!(
        r#"{{"event":"customer.created","key":"{}"}}"#,
        "k".repeat(10_000)
    );
    // Passes every check in Rust but is too large for Postgres' index on customer_key:
    // the database refuses it, and only this delivery may be marked.
    let unindexable = format!(
        r#"{{"event":"customer.created","key":"c_big","customer_key":"{}"}}"#,
        (0..2_000)
            .map(|i: u64| format!("{:x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40))
            .collect::<String>()
    );
    let long_event = format!(r#"{{"event":"{}","key":"c"}}"#, "e".repeat(5_000));
    let wrong_types = [
        r#"{"event":"customer.created","key":"c1","email":{"a":1}}"#,
        r#"{"event":"customer.created","key":"c2","test":"perhaps"}"#,
        r#"{"event":"transaction.created","key":"t1","amount":12.5}"#,
        r#"{"event":"transaction.created","key":"t2","approved":[true]}"#,
        r#"{"event":"reward.created","key":"r1","partnership":[1,2]}"#,
        r#"{"event":"deal.created","key":"d1","close_date":"tomorrow"}"#,
        r#"{"event":"partnership.created","key":"p1","joined_at":"never"}"#,
        r#"{"event":"group.created","key":["g"]}"#,
    ];
    // (body bytes, content type, expected status, stored?, expected outcome when stored)
    let mut cases: Vec<(Vec<u8>, &str, u16, Option<&str>)> = vec![
        (br#"{"event":"customer.created","key":"c"#.to_vec(), "application/json", 400, None),
        (b"".to_vec(), "application/json", 400, None),
        (b"\xff\xfe{}".to_vec(), "application/json", 400, None),
        (b"{\"event\":\"customer.created\",\"name\":\"caf\xe9\"}".to_vec(), "application/json", 400, None),
        (deep.into_bytes(), "application/json", 400, None),
        (vec![b' '; 70 * 1024], "application/json", 413, None),
        (br#"{"event":"customer.created","key":"ct","created_at":1700000000}"#.to_vec(), "text/plain", 200, Some("applied")),
        (br#"{"event":"customer.created","key":"big","amount":1e400}"#.to_vec(), "application/json", 200, Some("error")),
        (br#"{"event":"transaction.created","key":"huge","amount":123456789012345678901234567890}"#.to_vec(), "application/json", 200, Some("error")),
        (br#"{"event":"customer.created","key":"neg","created_at":-1700000000000}"#.to_vec(), "application/json", 200, Some("error")),
        (br#"{"event":"customer.created","key":"far","updated_at":99999999999999999}"#.to_vec(), "application/json", 200, Some("error")),
        (long_key.into_bytes(), "application/json", 200, Some("error")),
        (long_event.into_bytes(), "application/json", 200, Some("unknown_type")),
        (unindexable.into_bytes(), "application/json", 200, Some("error")),
    ];
    for body in wrong_types {
        cases.push((
            body.as_bytes().to_vec(),
            "application/json",
            200,
            Some("error"),
        ));
    }

    let mut expected_stored = 0;
    for (body, content_type, status, outcome) in &cases {
        let r = app
            .http
            .post(app.webhook_url())
            .header("content-type", *content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let label = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        assert_eq!(r.status().as_u16(), *status, "{label}");
        let answer: Value = r.json().await.unwrap();
        if let Some(outcome) = outcome {
            expected_stored += 1;
            app.settle().await;
            let (stored_body, got): (String, String) =
                sqlx::query_as("SELECT body, outcome FROM webhook_events WHERE id = $1")
                    .bind(answer["id"].as_i64().unwrap())
                    .fetch_one(&app.db.pool)
                    .await
                    .unwrap();
            assert_eq!(
                stored_body.as_bytes(),
                body.as_slice(),
                "raw body kept: {label}"
            );
            assert_eq!(&got, outcome, "{label}");
        } else {
            assert!(
                answer["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{label}: {answer}"
            );
        }
    }
    assert_eq!(
        app.db.count("SELECT count(*) FROM webhook_events").await,
        expected_stored
    );
    // Only the well-formed customer reached the entity tables.
    assert_eq!(app.db.count("SELECT count(*) FROM customers").await, 1);
    assert_eq!(app.db.count("SELECT count(*) FROM transactions").await, 0);
    assert_eq!(app.db.count("SELECT count(*) FROM partners").await, 0);
    app.stop().await;
}

/// Runs the binary with every secret in use and the most verbose logs, and fails if any
/// secret (or its Basic-auth encoding) shows up in what it printed.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    use base64::Engine as _;
    let db = TestDb::new().await;
    let signing = "signing-secret-for-log-test-0123";
    let api = "api-token-for-log-test-0123456789";
    let (public, secret) = ("pk_live_logtest_0123456789", "sk_live_logtest_0123456789");
    let db_password = db
        .url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .and_then(|creds| creds.split(':').nth(1))
        .expect("the test database URL has a password")
        .to_string();
    // A stand-in that accepts these keys: the reconciler authenticates and runs passes.
    let sim = partnerstack_sim::start(&partnerstack_sim::Options::small(5), public, secret)
        .await
        .unwrap();
    let base_url = sim.base_url();
    let (mut cmd, port) = Process::command(&[
        ("DATABASE_URL", Some(&db.url)),
        ("PSYNC_WEBHOOK_SIGNING_SECRETS", Some(signing)),
        ("PSYNC_API_TOKENS", Some(api)),
        ("PARTNERSTACK_PUBLIC_KEY", Some(public)),
        ("PARTNERSTACK_SECRET_KEY", Some(secret)),
        ("PARTNERSTACK_BASE_URL", Some(&base_url)),
        ("PSYNC_RECONCILE_INTERVAL", Some("1s")),
        ("PSYNC_LOG_FORMAT", Some("json")),
        ("RUST_LOG", Some("debug")),
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut service = Process::start(cmd, port);
    // Drain both pipes while the service runs, so verbose logs never block it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(service.child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(service.child.stderr.take().map(|p| Box::new(p) as _));
    service.wait_ready().await;

    let http = partnerstack::http::builder().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let body = r#"{"event":"customer.created","key":"cust_log"}"#;
    let signature =
        partnerstack_sim::webhooks::sign(&secrecy::SecretString::from(signing), body.as_bytes());
    let hook = format!("{base}/webhooks/partnerstack/{WEBHOOK_TOKEN}");
    for (url, sig) in [
        (hook.clone(), Some(signature)),
        (hook.clone(), Some("sha256=00".into())),
        (hook, None),
    ] {
        let mut req = http.post(url).body(body);
        if let Some(sig) = sig {
            req = req.header("x-psync-signature", sig);
        }
        req.send().await.unwrap();
    }
    for token in [api, "wrong-api-token-0123456789"] {
        http.get(format!("{base}/v1/partners"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    // The reconciler uses the PartnerStack keys: wait until the stand-in has served it.
    let served = || {
        sim.simulator
            .faults()
            .answers()
            .get(&200)
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while served() == 0 {
        assert!(
            Instant::now() < deadline,
            "the reconciler did not use the PartnerStack keys within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.terminate().await;
    sim.stop().await.unwrap();
    let logs = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(
        logs.lines().count() > 10,
        "expected verbose logs, got:\n{logs}"
    );

    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{public}:{secret}"));
    for (what, value) in [
        ("webhook token", WEBHOOK_TOKEN),
        ("signing secret", signing),
        ("API token", api),
        ("PartnerStack public key", public),
        ("PartnerStack secret key", secret),
        ("PartnerStack Basic credentials", basic.as_str()),
        ("database password", db_password.as_str()),
    ] {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
    assert!(
        logs.contains("/webhooks/partnerstack/{token}"),
        "access logs name the route template"
    );
    println!(
        "[secrets] {} log lines checked for 7 secrets",
        logs.lines().count()
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_deliveries_then_applies_them() {
    use sqlx::Connection as _;
    let app = TestApp::spawn().await;
    // Hold back the writer so deliveries are in flight when shutdown begins.
    let mut locker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let bodies: Vec<String> = (0..50).map(|n| load::delivery("drain", n)).collect();
    let load = tokio::spawn(load::run(
        app.addr,
        bodies,
        50,
        0.0,
        5,
        Duration::from_secs(20),
    ));
    // Wait until all 50 are in flight: each has reached the writer, queued or in the batch
    // it is trying to commit (observed before that commit, which the lock holds up).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queued = app.metric("psync_ingest_queue_depth").await;
        let in_batch = app.metric("psync_ingest_batch_size_sum").await;
        if queued + in_batch == 50.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "50 deliveries not in flight within 30 s: {queued} queued, {in_batch} in the writer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    // Shutdown closes the listener at once, while in-flight deliveries are still held up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener still accepted connections 30 s after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = load::send(
        addr,
        load::delivery("drain", 999),
        Client::Patient,
        Duration::ZERO,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        late.status, None,
        "a server that is shutting down accepts no new requests"
    );

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let answers = load.await.unwrap();
    let db = stopping.await.unwrap();
    let tally = Tally::of(&answers);
    let committed = db.count("SELECT count(*) FROM webhook_events").await;
    report("graceful shutdown", &tally, committed, 0);
    assert_eq!(
        tally.ok, 50,
        "every in-flight delivery was committed and answered"
    );
    load::assert_acknowledged_are_stored(&db.pool, &answers).await;
    assert_eq!(
        db.count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM customers").await,
        50,
        "applied before exit"
    );
}

// ---------------------------------------------------------------------------------------
// Second round: recovering from every fault, bounded memory, a frozen leader.

/// Resident memory of a process, in MiB (`VmRSS` in `/proc/<pid>/status`).
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Samples a process's resident memory every 20 ms until stopped; the peak, in MiB.
pub(crate) struct RssWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl RssWatch {
    pub(crate) fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak.max(rss_mib(pid))
        });
        RssWatch { stop, task }
    }

    pub(crate) async fn peak(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Waits (at most 90 s) for the process's memory to fall below `mib`; what it settled at.
pub(crate) async fn settled_rss(pid: u32, mib: f64) -> f64 {
    let mut rss = rss_mib(pid);
    for _ in 0..900 {
        if rss < mib {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = rss_mib(pid);
    }
    rss
}

/// The memory a service may use under attack, and the most it may keep a minute after.
pub(crate) const RSS_PEAK_MIB: f64 = 256.0;
pub(crate) const RSS_SETTLED_MIB: f64 = 64.0;

/// A failover that demotes the primary, then promotes it back: sessions opened while the
/// database was read-only stay read-only. /readyz says so while it lasts, and once writes
/// are possible the service recovers by itself: it drops sessions that refused to write
/// and applies what it had acknowledged.
#[tokio::test]
async fn a_read_only_database_is_recovered_from() {
    let app = TestApp::spawn_with(|c| {
        c.server.request_timeout = Duration::from_secs(3);
    })
    .await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let admin = |sql: String| {
        let url = app.db.url.clone();
        async move {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::query("SET default_transaction_read_only = off")
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    };
    assert_eq!(app.deliver(load::delivery("ro", 0)).await.status(), 200);
    app.settle().await;

    // The database turns read-only; every session the service opens from now on is.
    admin(format!(
        "ALTER DATABASE {name} SET default_transaction_read_only = on"
    ))
    .await;
    admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
           WHERE datname = current_database() AND pid <> pg_backend_pid()"
            .to_string(),
    )
    .await;
    let mut refused = 0;
    for n in 1..=20 {
        let status = app.deliver(load::delivery("ro", n)).await.status();
        assert!(status == 503 || status == 200, "{status}");
        refused += usize::from(status == 503);
    }
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    let ready_status = ready.status();
    let reason: Value = ready.json().await.unwrap();
    // Deliveries acknowledged before the demotion wait, pending, meanwhile.
    admin(
        "INSERT INTO webhook_events (idempotency_key, event_type, body) \
           SELECT sha256(convert_to(b, 'UTF8')), 'customer_created', b FROM (SELECT \
           '{\"event\":\"customer.created\",\"key\":\"cus_ro_pending_' || n || '\"}' AS b \
           FROM generate_series(1, 16) n) s"
            .to_string(),
    )
    .await;

    // Writes are possible again; the sessions opened meanwhile are still read-only.
    admin(format!(
        "ALTER DATABASE {name} RESET default_transaction_read_only"
    ))
    .await;
    let writable = Instant::now();
    let mut recovered = None;
    let mut n = 100;
    while writable.elapsed() < Duration::from_secs(30) {
        n += 1;
        let delivered = app.deliver(load::delivery("ro", n)).await.status() == 200;
        let ready = app
            .http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200;
        if delivered && ready {
            recovered = Some(writable.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.settle().await;
    let pending_applied = app
        .db
        .count("SELECT count(*) FROM customers WHERE key LIKE 'cus_ro_pending_%'")
        .await;
    println!(
        "[read-only] refused while read-only: {refused}/20; /readyz then: {ready_status} {reason}; \
         recovered {recovered:?} after writes were possible; acknowledged-then-pending applied: \
         {pending_applied}/16"
    );
    assert_eq!(refused, 20, "a read-only database stores nothing");
    assert_eq!(
        ready_status, 503,
        "/readyz: not ready while it cannot write"
    );
    assert!(
        reason["reason"].as_str().unwrap().contains("read-only"),
        "{reason}"
    );
    assert!(
        recovered.is_some(),
        "still failing 30 s after the database could write again"
    );
    assert_eq!(pending_applied, 16);
    app.stop().await;
}

/// A full disk under the entity tables (SQLSTATE 53100, raised here by a trigger) is a
/// passing failure: accepted deliveries stay pending, none is marked `error`, and all are
/// applied once space is back.
#[tokio::test]
async fn a_full_disk_leaves_deliveries_pending_not_in_error() {
    let app = TestApp::spawn().await;
    for sql in [
        "CREATE TABLE disk_full (on_ boolean)",
        "INSERT INTO disk_full VALUES (true)",
        "CREATE FUNCTION disk_full_check() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM disk_full) THEN
                 RAISE EXCEPTION 'could not extend file: No space left on device'
                     USING ERRCODE = 'disk_full';
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON customers
         FOR EACH ROW EXECUTE FUNCTION disk_full_check()",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
    let bodies: Vec<String> = (0..300).map(|n| load::delivery("disk", n)).collect();
    let answers = load::run(app.addr, bodies, 16, 0.0, 11, Duration::from_secs(30)).await;
    let tally = Tally::of(&answers);
    // While the disk is full, the applier keeps failing; nothing may be taken for bad data.
    let mut errors = 0;
    for _ in 0..30 {
        errors = app
            .db
            .count("SELECT count(*) FROM webhook_events WHERE outcome = 'error'")
            .await;
        if errors > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = app
        .db
        .count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
        .await;
    sqlx::query("DELETE FROM disk_full")
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.settle().await;
    let applied = app.db.count("SELECT count(*) FROM customers").await;
    report("full disk", &tally, pending, 0);
    println!(
        "[full disk] error while full={errors} pending while full={pending} applied after={applied}"
    );
    assert_eq!(tally.ok, 300);
    assert_eq!(errors, 0, "a full disk is not bad data");
    assert_eq!(pending, 300);
    assert_eq!(applied, 300);
    app.stop().await;
}

/// Memory is bounded by bytes: pages of large stored deliveries, and large deliveries
/// piling up behind a blocked database from senders that hang up. Under both, the
/// service stays below 256 MiB, and gives the memory back afterwards.
#[tokio::test]
async fn memory_stays_bounded_under_large_bodies() {
    let db = TestDb::new().await;
    // 150 stored deliveries of about 900 KB each.
    sqlx::query(
        "INSERT INTO webhook_events (idempotency_key, event_type, body, outcome)
         SELECT sha256(convert_to(b, 'UTF8')), 'big_event', b, 'unknown_type' FROM (
             SELECT '{\"event\":\"big.event\",\"n\":' || n || ',\"pad\":\"' || repeat('x', 900000) || '\"}' AS b
             FROM generate_series(1, 150) n) s",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let service = Process::serve(&[("DATABASE_URL", Some(&db.url))]).await;
    let pid = service.child.id();
    let http = partnerstack::http::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let baseline = rss_mib(pid);

    // Three clients page through every payload at once.
    let pages = RssWatch::start(pid);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let http = http.clone();
        let base = service.url("/v1/events?include=payload&limit=250");
        readers.push(tokio::spawn(async move {
            let (mut cursor, mut seen, mut requests) = (None::<String>, 0, 0);
            loop {
                let url = match &cursor {
                    Some(c) => format!("{base}&starting_after={c}"),
                    None => base.clone(),
                };
                let response = http
                    .get(url)
                    .bearer_auth(crate::common::API_TOKEN)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let text = response.text().await.unwrap();
                let page: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{status}: {e}: {}", &text[..text.len().min(300)]));
                requests += 1;
                seen += page["data"]["items"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{status}: {}", &text[..text.len().min(300)]))
                    .len();
                match page["data"]["ending_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break (seen, requests),
                }
            }
        }));
    }
    let mut read = Vec::new();
    for r in readers {
        read.push(r.await.unwrap());
    }
    let pages_peak = pages.peak().await;

    // Inserts blocked; 300 deliveries of 1 MB whose senders hang up once sent.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let queue = RssWatch::start(pid);
    let big: Vec<String> = (0..300)
        .map(|n| {
            format!(
                "{{\"event\":\"big.event\",\"n\":{n},\"pad\":\"{}\"}}",
                "y".repeat(1_000_000)
            )
        })
        .collect();
    let answers = load::run(service.addr(), big, 100, 1.0, 5, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queue_peak = queue.peak().await;
    locker.rollback().await.unwrap();
    let settled = settled_rss(pid, RSS_SETTLED_MIB).await;
    println!(
        "[memory] baseline={baseline:.0} MiB; three readers of 150 x 900 KB payloads (items, requests) \
         {read:?}: peak={pages_peak:.0} MiB; 300 x 1 MB hung-up senders behind a lock: \
         peak={queue_peak:.0} MiB ({} sent); settled={settled:.0} MiB",
        answers.len()
    );
    for (seen, requests) in &read {
        assert_eq!(*seen, 150, "every payload was served");
        assert!(*requests > 1, "pages end early when their bodies are large");
    }
    assert!(
        pages_peak < RSS_PEAK_MIB,
        "{pages_peak:.0} MiB paging payloads"
    );
    assert!(
        queue_peak < RSS_PEAK_MIB,
        "{queue_peak:.0} MiB queueing bodies"
    );
    assert!(
        settled < RSS_SETTLED_MIB,
        "{settled:.0} MiB after the attack"
    );
    service.terminate().await;
}

/// Slow and idle connections are closed (hyper's header timeout, shortened here to 2 s)
/// and capped (at 100 here): 400 attacking connections neither stay open nor lock out a
/// real request, and memory stays bounded.
#[tokio::test]
async fn slow_and_idle_connections_are_timed_out_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let service = Process::serve(&[
        ("DATABASE_URL", Some(&db.url)),
        ("PSYNC_KEEPALIVE_TIMEOUT", Some("2s")),
        ("PSYNC_MAX_CONNECTIONS", Some("100")),
    ])
    .await;
    let pid = service.child.id();
    let addr = service.addr();
    let watch = RssWatch::start(pid);
    let started = Instant::now();
    let mut attackers = Vec::new();
    for n in 0..400 {
        attackers.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                // Refused at the door: not held either.
                return Some(Duration::ZERO);
            };
            let opened = Instant::now();
            if n % 2 == 0 {
                // Slowloris: a request head, one byte every 500 ms, never finished.
                let head = b"POST /webhooks/partnerstack/x HTTP/1.1\r\nhost: a\r\nx-slow: ";
                for byte in head.iter().cycle().take(200) {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return Some(opened.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None
            } else {
                // Idle: connected, silent.
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await {
                    Ok(_) => Some(opened.elapsed()),
                    Err(_) => None,
                }
            }
        }));
    }
    // A real request gets through while the attack goes on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = partnerstack::http::builder().build().unwrap();
    let mut served_in = None;
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(30) {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(5),
            http.get(service.url("/healthz")).send(),
        )
        .await
            && r.status() == 200
        {
            served_in = Some(asked.elapsed());
            break;
        }
    }
    let mut closed = 0;
    let mut longest = Duration::ZERO;
    let mut open = Vec::new();
    for (n, a) in attackers.into_iter().enumerate() {
        match a.await.unwrap() {
            Some(held) => {
                closed += 1;
                longest = longest.max(held);
            }
            None => open.push(n),
        }
    }
    let peak = watch.peak().await;
    let settled = settled_rss(pid, RSS_SETTLED_MIB).await;
    println!(
        "[connections] 400 slow or idle connections: {closed} closed by the service (longest held \
         {longest:?}, attack took {:?}); a real request served in {served_in:?}; \
         peak={peak:.0} MiB settled={settled:.0} MiB",
        started.elapsed()
    );
    assert_eq!(
        closed, 400,
        "connections still open (even: slow, odd: idle): {open:?}"
    );
    assert!(served_in.is_some(), "a real request was locked out");
    assert!(peak < RSS_PEAK_MIB, "{peak:.0} MiB");
    assert!(settled < RSS_SETTLED_MIB, "{settled:.0} MiB");
    service.terminate().await;
}

/// One object Postgres refuses per 256 deliveries: the refused batches are split in
/// halves, so each culprit costs a few transactions, not a batch of single ones.
#[tokio::test]
async fn a_poison_object_costs_a_few_transactions_not_a_batch_of_single_ones() {
    const DELIVERIES: i64 = 4096;
    let app = TestApp::spawn().await;
    sqlx::query(
        "ALTER TABLE customers ADD CONSTRAINT poison CHECK (email IS DISTINCT FROM 'poison@example.com')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let started = Instant::now();
    // One statement: the applier sees them all at once, in batches of 256.
    sqlx::query(
        "INSERT INTO webhook_events (idempotency_key, event_type, body)
         SELECT sha256(convert_to(b, 'UTF8')), 'customer_created', b FROM (
             SELECT '{\"event\":\"customer_created\",\"key\":\"cus_p' || n || '\",\"email\":\"'
                    || CASE WHEN n % 256 = 100 THEN 'poison' ELSE 'c' || n END
                    || '@example.com\",\"updated_at\":1700000000000}' AS b
             FROM generate_series(0, $1 - 1) n) s",
    )
    .bind(DELIVERIES)
    .execute(&app.db.pool)
    .await
    .unwrap();
    app.settle().await;
    let drained = started.elapsed();
    let committed = app
        .metric("psync_apply_transactions_total{result=\"committed\"}")
        .await;
    let refused = app
        .metric("psync_apply_transactions_total{result=\"refused\"}")
        .await;
    let errors = app
        .db
        .count("SELECT count(*) FROM webhook_events WHERE outcome = 'error'")
        .await;
    let applied = app.db.count("SELECT count(*) FROM customers").await;
    println!(
        "[poison] {DELIVERIES} deliveries, {errors} refused objects: {committed} transactions \
         committed, {refused} refused, drained in {drained:?}"
    );
    assert_eq!(errors, DELIVERIES / 256);
    assert_eq!(applied, DELIVERIES - DELIVERIES / 256);
    // One at a time would take a transaction per delivery of every poisoned batch.
    assert!(
        committed + refused < (DELIVERIES / 4) as f64,
        "{committed} + {refused} transactions"
    );
    app.stop().await;
}

/// With `PSYNC_ADMIN_LISTEN`, `/metrics` is served on the admin address only, so a load
/// balancer forwarding every path cannot expose it.
#[tokio::test]
async fn metrics_move_to_the_admin_address() {
    let db = TestDb::new().await;
    let admin_port = crate::common::free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let service = Process::serve(&[
        ("DATABASE_URL", Some(&db.url)),
        ("PSYNC_ADMIN_LISTEN", Some(&admin)),
    ])
    .await;
    let http = partnerstack::http::builder().build().unwrap();
    let main = http.get(service.url("/metrics")).send().await.unwrap();
    let moved = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404);
    assert_eq!(moved.status(), 200);
    assert!(
        moved
            .text()
            .await
            .unwrap()
            .contains("psync_ingest_queue_depth")
    );
    assert_eq!(
        http.get(service.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    service.terminate().await;
}

/// An outage is one warning per burst, not one per request: inserts fail fast (a lock
/// they cannot get within 500 ms) or hang (past the request timeout), and every delivery
/// is answered 503; the log gets a handful of warning or error lines, not one per answer.
#[tokio::test]
async fn an_outage_logs_one_warning_per_burst() {
    let db = TestDb::new().await;
    let log = std::env::temp_dir().join(format!("psync-burst-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}options=-c%20lock_timeout%3D500", db.url);
    let (mut cmd, port) = Process::command(&[
        ("DATABASE_URL", Some(&url)),
        ("RUST_LOG", Some("info")),
        ("PSYNC_REQUEST_TIMEOUT", Some("2s")),
    ]);
    cmd.stdout(file);
    let mut service = Process::start(cmd, port);
    service.wait_ready().await;
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let bodies: Vec<String> = (0..400).map(|n| load::delivery("burst", n)).collect();
    let answers = load::run(service.addr(), bodies, 50, 0.0, 3, Duration::from_secs(20)).await;
    locker.rollback().await.unwrap();
    let tally = Tally::of(&answers);
    service.terminate().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let loud = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    println!(
        "[burst] {} answers of 503, {loud} warning or error lines",
        tally.unavailable
    );
    assert!(tally.unavailable > 100, "the outage refused deliveries");
    assert!(
        text.contains("could not store deliveries"),
        "the outage was logged:\n{text}"
    );
    assert!(loud <= 10, "{loud} warning or error lines:\n{text}");
}

/// The settings of a `serve` replica that reconciles against `base_url`.
pub(crate) fn reconciling(db_url: &str, base_url: &str) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("DATABASE_URL", Some(db_url.to_string())),
        ("PARTNERSTACK_BASE_URL", Some(base_url.to_string())),
        (
            "PARTNERSTACK_PUBLIC_KEY",
            Some(crate::client::PUBLIC_KEY.into()),
        ),
        (
            "PARTNERSTACK_SECRET_KEY",
            Some(crate::client::SECRET_KEY.into()),
        ),
        ("PARTNERSTACK_REQUESTS_PER_SECOND", Some("1000".into())),
        ("PSYNC_RECONCILE_INTERVAL", Some("1s".into())),
    ]
}

/// Waits (at most 60 s) until exactly one replica says it leads and every stream has had
/// a pass by it; its index and its runner id.
async fn leader_among(replicas: &[&Process]) -> (usize, String) {
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen.clear();
        for r in replicas {
            seen.push(r.sync_status().await.unwrap_or(Value::Null));
        }
        let leaders: Vec<usize> = (0..seen.len())
            .filter(|&i| seen[i]["leader"] == true)
            .collect();
        if let [i] = leaders[..] {
            let runner = seen[i]["runner"].as_str().unwrap_or_default().to_string();
            let streams = seen[i]["streams"].as_array().cloned().unwrap_or_default();
            if streams.len() == 7 && streams.iter().all(|s| s["runner"] == runner.as_str()) {
                return (i, runner);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no single leader ran every stream within 60 s: {seen:?}");
}

/// Waits (at most 60 s) until `replica` leads and has run a pass of every stream; how
/// long that took.
async fn takes_over(replica: &Process, runner: &str, since: Instant) -> Duration {
    let mut took_over = None;
    while since.elapsed() < Duration::from_secs(60) {
        let status = replica.sync_status().await.unwrap_or(Value::Null);
        if status["leader"] == true {
            took_over.get_or_insert(since.elapsed());
            let streams = status["streams"].as_array().cloned().unwrap_or_default();
            if streams.iter().all(|s| s["runner"] == runner) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took_over.expect("no takeover within 60 s")
}

/// Fencing: for `watch`, while the superseded leader runs again, the leadership lease is
/// the new leader's, no session holds an advisory lock (leadership needs none), and no
/// reconciler write is but the new leader's.
async fn only_the_new_leader_writes(db: &TestDb, new_runner: &str, watch: Duration) {
    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < watch {
        let holder: String =
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'reconciler'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            holder, new_runner,
            "the leadership lease is the new leader's"
        );
        let locks = db
            .count(
                // The leader's lock is the one taken with a single bigint key
                // (objsubid 1); writers of customers take two-key transaction locks
                // (objsubid 2) that come and go.
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await;
        assert_eq!(locks, 0, "no session holds an advisory lock");
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sync_streams WHERE runner IS DISTINCT FROM $1",
        )
        .bind(new_runner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(others, 0, "a stream was written by another runner");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 10, "the database was watched");
}

/// Waits (at most 90 s) for a superseded leader to say it no longer leads.
async fn stands_down(replica: &Process, since: Instant) -> Duration {
    while since.elapsed() < Duration::from_secs(90) {
        if replica
            .sync_status()
            .await
            .is_some_and(|s| s["leader"] == false)
        {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the superseded leader still claims to lead 90 s later");
}

/// A leader frozen by SIGSTOP (or a paused VM, or a swap storm) stops renewing its lease,
/// which expires after 15 s: the other replica takes over. When the old leader wakes, its
/// next transaction is refused: it writes nothing and stands down.
#[tokio::test]
async fn a_frozen_leader_is_replaced_and_fenced_off() {
    frozen_leader(false).await;
}

/// The same through PgBouncer in transaction mode.
#[tokio::test]
async fn a_frozen_leader_is_replaced_and_fenced_off_through_pgbouncer() {
    frozen_leader(true).await;
}

/// A database URL for replicas: `db`'s own, or through a PgBouncer in transaction mode
/// (returned too, to keep it running); `None` when PgBouncer is wanted but missing.
async fn database_for(
    db: &TestDb,
    via_pooler: bool,
    test: &str,
) -> Option<(String, Option<crate::topology::PgBouncer>)> {
    if !via_pooler {
        return Some((db.url.clone(), None));
    }
    let tools = crate::topology::Tools::find(test)?;
    let bouncer = crate::topology::PgBouncer::start(&tools, &db.url).await;
    Some((bouncer.url_for(&db.url), Some(bouncer)))
}

async fn frozen_leader(via_pooler: bool) {
    use nix::sys::signal::Signal;
    let db = TestDb::new().await;
    let Some((url, _bouncer)) = database_for(&db, via_pooler, "frozen leader").await else {
        return;
    };
    let sim = crate::client::stand_in(crate::client::program()).await;
    let vars = reconciling(&url, &sim.base_url());
    let a = Process::serve(&as_env(&vars)).await;
    let b = Process::serve(&as_env(&vars)).await;
    let (i, old_runner) = leader_among(&[&a, &b]).await;
    let (leader, follower) = if i == 0 { (&a, &b) } else { (&b, &a) };
    let new_runner = sync_status_runner(follower).await;

    leader.signal(Signal::SIGSTOP);
    let frozen = Instant::now();
    let took_over = takes_over(follower, &new_runner, frozen).await;
    println!(
        "[frozen leader{}] took over {:.1} s after SIGSTOP",
        if via_pooler { ", PgBouncer" } else { "" },
        took_over.as_secs_f64()
    );
    assert!(
        took_over < Duration::from_secs(30),
        "takeover took {took_over:?}"
    );

    leader.signal(Signal::SIGCONT);
    let woken = Instant::now();
    only_the_new_leader_writes(&db, &new_runner, Duration::from_secs(5)).await;
    let stood_down = stands_down(leader, woken).await;
    only_the_new_leader_writes(&db, &new_runner, Duration::from_secs(2)).await;
    println!(
        "[frozen leader] old leader ({old_runner}) had stood down {:.1} s after SIGCONT, and wrote nothing",
        stood_down.as_secs_f64()
    );
    a.terminate().await;
    b.terminate().await;
    sim.stop().await.unwrap();
}

async fn sync_status_runner(replica: &Process) -> String {
    let status = replica.sync_status().await.expect("the replica answers");
    status["runner"].as_str().unwrap().to_string()
}

/// Two replicas in network namespaces of their own reach Postgres and the stand-in here;
/// the leader's link is cut (packets dropped both ways, no one told). It cannot renew its
/// lease, which expires after 15 s: the other replica takes over. When the link comes
/// back, the old leader's next transaction is refused: it writes nothing and stands down.
/// Needs root and iproute2; skips ([`crate::tools::skip`]) without them. By hand:
/// `sudo cargo test --test it -- reliability::a_cut_off_leader --nocapture`.
#[tokio::test]
async fn a_cut_off_leader_is_replaced_and_fenced_off() {
    cut_off_leader(false).await;
}

/// The same through PgBouncer in transaction mode (on this side of the cut).
#[tokio::test]
async fn a_cut_off_leader_is_replaced_and_fenced_off_through_pgbouncer() {
    cut_off_leader(true).await;
}

async fn cut_off_leader(via_pooler: bool) {
    // Namespaces of their own, as the two variants run at once.
    let first = if via_pooler { 2 } else { 0 };
    let (ns_a, ns_b) = match (
        crate::netns::Namespace::create(first),
        crate::netns::Namespace::create(first + 1),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return crate::tools::skip(format!(
                "needs network namespaces (root and iproute2's `ip`, which .ci/run installs): {e}"
            ));
        }
    };
    let db = TestDb::new().await;
    let Some((url, _bouncer)) = database_for(&db, via_pooler, "cut-off leader").await else {
        return;
    };
    let sim = crate::client::stand_in(crate::client::program()).await;
    let pg_port = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .get_port();
    let sim_port = sim.addr.port();
    let mut forwards = Vec::new();
    let mut replicas = Vec::new();
    for ns in [&ns_a, &ns_b] {
        let pg = SocketAddr::new(ns.host.into(), crate::common::free_port());
        let api = SocketAddr::new(ns.host.into(), crate::common::free_port());
        forwards.push(crate::netns::forward(pg, ([127, 0, 0, 1], pg_port).into()).await);
        forwards.push(crate::netns::forward(api, sim.addr).await);
        let db_url = url.replace(&format!("127.0.0.1:{pg_port}"), &pg.to_string());
        assert_ne!(db_url, url, "the database URL names 127.0.0.1:{pg_port}");
        let base_url = sim
            .base_url()
            .replace(&format!("127.0.0.1:{sim_port}"), &api.to_string());
        let mut vars = reconciling(&db_url, &base_url);
        let port = crate::common::free_port();
        vars.push(("PSYNC_LISTEN", Some(format!("{}:{port}", ns.inside))));
        let (cmd, _) = Process::command(&as_env(&vars));
        let mut cmd = ns.wrap(&cmd);
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut replica = Process::start(cmd, port);
        replica.host = ns.inside.into();
        replica.wait_ready().await;
        replicas.push(replica);
    }
    let (i, old_runner) = leader_among(&[&replicas[0], &replicas[1]]).await;
    let (leader, follower) = (&replicas[i], &replicas[1 - i]);
    let cut_ns = if i == 0 { &ns_a } else { &ns_b };
    let new_runner = sync_status_runner(follower).await;

    cut_ns.cut().unwrap();
    let cut = Instant::now();
    let took_over = takes_over(follower, &new_runner, cut).await;
    println!(
        "[cut-off leader{}] took over {:.1} s after the cut",
        if via_pooler { ", PgBouncer" } else { "" },
        took_over.as_secs_f64()
    );
    assert!(
        took_over < Duration::from_secs(30),
        "takeover took {took_over:?}"
    );

    cut_ns.mend().unwrap();
    let mended = Instant::now();
    only_the_new_leader_writes(&db, &new_runner, Duration::from_secs(5)).await;
    let stood_down = stands_down(leader, mended).await;
    only_the_new_leader_writes(&db, &new_runner, Duration::from_secs(2)).await;
    println!(
        "[cut-off leader] old leader ({old_runner}) had stood down {:.1} s after the link came back, and wrote nothing",
        stood_down.as_secs_f64()
    );
    for replica in replicas {
        replica.terminate().await;
    }
    for f in forwards {
        f.abort();
    }
    sim.stop().await.unwrap();
}
