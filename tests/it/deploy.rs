//! The deployment as users run it: nginx in front of three replicas, PgBouncer in
//! transaction mode in front of Postgres, and a rolling restart under load.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::common::{Process, TestDb, WEBHOOK_TOKEN, as_env, free_port};
use crate::topology::{Nginx, PgBouncer, Tools};

/// Clients posting at once.
const CLIENTS: usize = 16;
/// Most deliveries the test sends (it stops earlier once every replica has restarted).
const MAX_DELIVERIES: usize = 20_000;

/// A replica's settings: through PgBouncer, reconciling against the stand-in, draining
/// for a second on SIGTERM (nginx checks health passively, so the delay only lets
/// connections close after a response).
fn replica_env(db_url: &str, base_url: &str, port: u16) -> Vec<(&'static str, Option<String>)> {
    let mut vars = crate::reliability::reconciling(db_url, base_url);
    vars.push(("PSYNC_LISTEN", Some(format!("127.0.0.1:{port}"))));
    vars.push(("PSYNC_SERVER_SHUTDOWN_DELAY", Some("1s".into())));
    // The deliveries are made up, so they are applied from their bodies (the stand-in
    // would not confirm them).
    vars.push(("PSYNC_WEBHOOKS_VERIFICATION", Some("body".into())));
    vars
}

fn start_replica(vars: &[(&'static str, Option<String>)], port: u16) -> Process {
    let (cmd, _) = Process::command(&as_env(vars));
    Process::start(cmd, port)
}

/// Each client's answers, by status (`0`: no answer at all).
#[derive(Default)]
struct Answers {
    acked: Vec<String>,
    by_status: BTreeMap<u16, usize>,
}

/// Posts unique deliveries through `lb` until `stop` (or [`MAX_DELIVERIES`]).
async fn client(
    lb: SocketAddr,
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Answers>>,
) {
    let http = partnerstack::http::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("http://{lb}/webhooks/partnerstack/{WEBHOOK_TOKEN}");
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_DELIVERIES {
            break;
        }
        let key = format!("cus_deploy_{n}");
        let body = crate::load::delivery("deploy", n);
        let status = match http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        let mut a = answers.lock().await;
        *a.by_status.entry(status).or_default() += 1;
        if status == 200 {
            a.acked.push(key);
        }
    }
}

/// Three replicas behind nginx, on PgBouncer in transaction mode; 16 clients post unique
/// deliveries while each replica in turn gets SIGTERM, exits, starts again and becomes
/// ready. Every delivery answered 200 is stored and applied, one replica leads the
/// reconciler afterwards, and the answers other than 200 are counted and printed.
#[tokio::test]
async fn a_rolling_restart_behind_nginx_on_pgbouncer_loses_nothing() {
    let Some(tools) = Tools::find("deployment") else {
        return;
    };
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start(&tools, &db.url).await;
    let via_bouncer = bouncer.url_for(&db.url);
    let sim = crate::client::stand_in(crate::client::program()).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let vars: Vec<_> = ports
        .iter()
        .map(|&p| replica_env(&via_bouncer, &sim.base_url(), p))
        .collect();
    let mut replicas = Vec::new();
    for (v, &port) in vars.iter().zip(&ports) {
        let mut replica = start_replica(v, port);
        replica.wait_ready().await;
        replicas.push(replica);
    }
    let upstreams: Vec<SocketAddr> = replicas.iter().map(Process::addr).collect();
    let nginx = Nginx::start(&tools, &upstreams).await;
    let lb: SocketAddr = ([127, 0, 0, 1], nginx.port).into();

    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(lb, next.clone(), stop.clone(), answers.clone())))
        .collect();
    // Load first, then each replica in turn.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut timings = Vec::new();
    for i in 0..replicas.len() {
        let sent = next.load(Ordering::Relaxed);
        let began = Instant::now();
        let old = std::mem::replace(&mut replicas[i], start_placeholder());
        old.terminate().await;
        let exited = began.elapsed();
        let mut replica = start_replica(&vars[i], ports[i]);
        replica.wait_ready().await;
        timings.push((i, exited, began.elapsed(), sent));
        replicas[i] = replica;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let answers = answers.lock().await;
    let requests: usize = answers.by_status.values().sum();
    settle(&db).await;
    let stored: HashSet<String> = sqlx::query_scalar(
        "SELECT body::jsonb->>'key' FROM webhook_events WHERE body LIKE '%cus_deploy_%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let applied: HashSet<String> =
        sqlx::query_scalar("SELECT key FROM customers WHERE key LIKE 'cus_deploy_%'")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let errors = db
        .count("SELECT count(*) FROM webhook_events WHERE outcome = 'error'")
        .await;
    let non_2xx: BTreeMap<u16, usize> = answers
        .by_status
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(s, n)| (*s, *n))
        .collect();
    println!(
        "[deployment] {requests} requests through nginx, {} acked (200), {} stored, {} applied; \
         non-2xx by status (0: no answer): {non_2xx:?}; {errors} deliveries in error",
        answers.acked.len(),
        stored.len(),
        applied.len()
    );
    for (i, exited, ready, sent) in &timings {
        println!(
            "[deployment] replica {i}: SIGTERM after {sent} deliveries, exited in {:.2} s, \
             ready again {:.2} s after SIGTERM",
            exited.as_secs_f64(),
            ready.as_secs_f64()
        );
    }
    let lost: Vec<&String> = answers
        .acked
        .iter()
        .filter(|k| !stored.contains(*k) || !applied.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "acked but not stored and applied: {lost:?}"
    );
    assert_eq!(
        errors, 0,
        "no delivery ends in error for a reason not its own"
    );
    assert!(
        answers.acked.len() > 500,
        "the load ran: {} acked\nnginx: {}\npgbouncer: {}",
        answers.acked.len(),
        nginx.log(),
        bouncer.log()
    );
    // The balancer retries a delivery a replica did not answer (deploy/nginx's rules),
    // so clients see no error from a restart.
    assert!(
        non_2xx.is_empty(),
        "answers other than 2xx through nginx: {non_2xx:?}\nnginx: {}",
        nginx.log()
    );
    let leaders = one_leader(&replicas).await;
    println!("[deployment] reconciler leaders afterwards: {leaders}");
    assert_eq!(leaders, 1, "exactly one replica leads the reconciler");

    drop(nginx);
    for r in replicas {
        r.terminate().await;
    }
    sim.stop().await.unwrap();
}

/// A stand-in for a replica slot while its process restarts (an exited `true`).
fn start_placeholder() -> Process {
    let child = std::process::Command::new("true").spawn().unwrap();
    Process {
        child,
        host: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 0,
    }
}

/// Waits (at most 60 s) until nothing is pending.
async fn settle(db: &TestDb) {
    for _ in 0..600 {
        if db
            .count("SELECT count(*) FROM webhook_events WHERE outcome = 'pending'")
            .await
            == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reasons: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT outcome, outcome_reason, count(*) FROM webhook_events GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    panic!("deliveries still pending after 60 s: {reasons:?}");
}

/// How many replicas say they lead, once one does (at most 60 s).
async fn one_leader(replicas: &[Process]) -> usize {
    let mut leaders = 0;
    for _ in 0..120 {
        leaders = 0;
        for r in replicas {
            if r.sync_status().await.unwrap_or(Value::Null)["leader"] == true {
                leaders += 1;
            }
        }
        if leaders == 1 {
            return leaders;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    leaders
}

/// Through PgBouncer, a connection setting it refuses (here `options` in the URL) stops
/// start-up at once with an error that says so, instead of waiting for the database.
#[tokio::test]
async fn a_refused_connection_setting_is_reported_at_once() {
    let Some(tools) = Tools::find("refused setting") else {
        return;
    };
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start(&tools, &db.url).await;
    let url = format!(
        "{}?options=-c%20statement_timeout%3D5000",
        bouncer.url_for(&db.url)
    );
    let (mut cmd, _) = Process::command(&[
        ("DATABASE_URL", Some(url.as_str())),
        ("PSYNC_DATABASE_CONNECT_TIMEOUT", Some("60s")),
    ]);
    cmd.stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refused a connection setting"),
        "the error says what was refused: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it gave up at once, not after database.connect_timeout"
    );
}

/// SIGTERM while start-up waits for a database that does not answer ends the process
/// at once, cleanly.
#[tokio::test]
async fn sigterm_during_start_up_is_honoured() {
    let closed = free_port();
    let url = format!("postgres://postgres:x@127.0.0.1:{closed}/nothing");
    let (cmd, port) = Process::command(&[
        ("DATABASE_URL", Some(url.as_str())),
        ("PSYNC_DATABASE_CONNECT_TIMEOUT", Some("120s")),
    ]);
    let process = Process::start(cmd, port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    // Waits at most 30 s for a clean exit, and asserts it was one.
    process.terminate().await;
    println!(
        "[start-up] stopped {:.2} s after SIGTERM while waiting for the database",
        asked.elapsed().as_secs_f64()
    );
}
