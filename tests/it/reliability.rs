//! Reliability: every delivery answered 2xx is committed, whatever fails, and stored data
//! is never corrupted. Each scenario prints its figures (run with `--nocapture`).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Process, TestApp, TestDb, WEBHOOK_TOKEN};
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
        c.webhooks.queue_capacity = capacity;
        c.webhooks.batch_size = 8;
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
    let app = TestApp::spawn_with(|c| c.webhooks.body_limit = 64 * 1024).await;
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
    let mut service = Process {
        child: cmd.spawn().unwrap(),
        port,
    };
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
