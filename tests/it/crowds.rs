//! Availability under crowds: silent connections, long-polls held by one token holder,
//! and a database that stops, freezes or restarts. Webhooks and `/readyz` keep being
//! answered, memory stays bounded, and an idle replica's first requests after a Postgres
//! restart succeed. These tests assert answers, not latencies: the benchmark
//! (`cargo bench --bench harness -- crowds`) measures those.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{API_TOKEN, Process, TestApp, TestDb, WEBHOOK_TOKEN};
use crate::reliability::{RSS_PEAK_MIB, RssWatch};

/// Longest any answer below may take before the test calls it hung: far above what a
/// healthy answer takes, far below the 75 s a connection could wait behind a silent crowd.
const HANG: Duration = Duration::from_secs(30);

/// A delivery of an event type the service stores but applies to nothing, so it changes
/// nothing in the feed (long-polls stay held).
const PING: &str = r#"{"event": "crowd.ping", "key": "ping"}"#;

/// This test process opens a crowd of sockets: its open-file limit goes up as the
/// service's does.
fn raise_fd_limit() {
    let limit = partnerstack_sync::server::raise_fd_limit().unwrap();
    assert!(
        limit.soft >= 4096,
        "the open-file limit is {limit:?}: too low for crowds"
    );
}

/// Opens `n` connections to `addr` (100 at a time) that send nothing.
async fn silent_crowd(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut crowd = Vec::with_capacity(n);
    while crowd.len() < n {
        let batch = (n - crowd.len()).min(100);
        for stream in join_all((0..batch).map(|_| TcpStream::connect(addr))).await {
            crowd.push(stream.unwrap());
        }
    }
    crowd
}

/// A webhook delivery and a readiness probe, each on a new connection: both answered
/// (within [`HANG`]) 200; how long each took.
async fn webhook_and_readyz(service: &Process) -> (Duration, Duration) {
    let http = partnerstack::http::builder()
        .timeout(HANG)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let delivered = http
        .post(service.url(&format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}")))
        .body(PING)
        .send()
        .await
        .expect("the webhook was answered");
    let webhook = started.elapsed();
    assert_eq!(delivered.status(), 200);
    let started = Instant::now();
    let ready = http
        .get(service.url("/readyz"))
        .send()
        .await
        .expect("/readyz was answered");
    let readyz = started.elapsed();
    assert_eq!(ready.status(), 200);
    (webhook, readyz)
}

/// Whether the service closed `stream` (end of stream or a reset) within [`HANG`].
async fn closed_by_service(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(HANG, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// 1,100 connections that open and say nothing: a webhook and `/readyz` on new
/// connections are answered while they are open, with the default settings (the cap,
/// sized from the open-file limit, is above the crowd) and with a cap below the crowd
/// (the silent ones are cut at the first-request timeout, not held for the keep-alive
/// timeout). Every silent connection is closed by the service; memory stays bounded.
#[tokio::test]
async fn eleven_hundred_silent_connections_leave_webhooks_and_readyz_answered() {
    raise_fd_limit();
    for (label, cap) in [("default cap", None), ("cap of 1,000", Some("1000"))] {
        let db = TestDb::new().await;
        let service = Process::serve(&[
            ("DATABASE_URL", Some(&db.url)),
            ("PSYNC_SERVER_FIRST_REQUEST_TIMEOUT", Some("3s")),
            ("PSYNC_MAX_CONNECTIONS", cap),
        ])
        .await;
        let watch = RssWatch::start(service.child.id());
        let crowd = silent_crowd(service.addr(), 1100).await;
        let (webhook, readyz) = webhook_and_readyz(&service).await;
        let closed = join_all(crowd.into_iter().map(closed_by_service)).await;
        let peak = watch.peak().await;
        println!(
            "[silent crowd, {label}] 1,100 silent connections: webhook answered in {webhook:?}, \
             /readyz in {readyz:?}; peak RSS {peak:.0} MiB"
        );
        assert_eq!(closed.iter().filter(|c| **c).count(), 1100, "{label}");
        assert!(peak < RSS_PEAK_MIB, "{label}: {peak:.0} MiB");
        service.terminate().await;
        db.pool.close().await;
    }
}

/// One token holder opens 1,500 long-polls of the feed: the replica holds as many as its
/// bound (`api.long_polls`, 1,000) and answers the rest 429 at once, with `Retry-After`,
/// closing their connections; meanwhile a webhook and `/readyz` are answered. Memory
/// stays bounded.
#[tokio::test]
async fn fifteen_hundred_long_polls_are_bounded_and_webhooks_and_readyz_are_answered() {
    raise_fd_limit();
    let db = TestDb::new().await;
    let service = Process::serve(&[
        ("DATABASE_URL", Some(&db.url)),
        ("PSYNC_MAX_CONNECTIONS", Some("4000")),
        // The total bound, not the per-client one, is what this crowd meets.
        ("PSYNC_API_LONG_POLLS_PER_CLIENT", Some("5000")),
    ])
    .await;
    let watch = RssWatch::start(service.child.id());
    let addr = service.addr();
    let refused = Arc::new(AtomicUsize::new(0));
    let answered_otherwise = Arc::new(AtomicUsize::new(0));
    let request = format!(
        "GET /v1/changes?wait=30&entity=rewards HTTP/1.1\r\nhost: crowd\r\n\
         authorization: Bearer {API_TOKEN}\r\n\r\n"
    );
    let mut polls = Vec::new();
    for _ in 0..1500 {
        let request = request.clone();
        let refused = refused.clone();
        let otherwise = answered_otherwise.clone();
        polls.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            // A refusal closes the connection; a held poll answers only when it ends.
            let _ = tokio::time::timeout(HANG, stream.read_to_end(&mut answer)).await;
            let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            if text.starts_with("http/1.1 429")
                && text.contains("retry-after: 5")
                && text.contains("connection: close")
                && text.contains("\"code\":\"too_many_requests\"")
            {
                refused.fetch_add(1, Ordering::Relaxed);
            } else if !text.is_empty() {
                otherwise.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    while refused.load(Ordering::Relaxed) < 500 && started.elapsed() < HANG {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (webhook, readyz) = webhook_and_readyz(&service).await;
    // The held ones are still held: nothing more was refused, nothing else answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused_now = refused.load(Ordering::Relaxed);
    let otherwise = answered_otherwise.load(Ordering::Relaxed);
    let peak = watch.peak().await;
    println!(
        "[long-polls] 1,500 long-polls of one client: {refused_now} refused 429 in {:?}, the \
         rest held; webhook answered in {webhook:?}, /readyz in {readyz:?}; peak RSS {peak:.0} MiB",
        started.elapsed()
    );
    assert_eq!(refused_now, 500, "beyond the bound of 1,000");
    assert_eq!(
        otherwise, 0,
        "a held long-poll answered early, or a refusal was malformed"
    );
    assert!(peak < RSS_PEAK_MIB, "{peak:.0} MiB");
    for poll in polls {
        poll.abort();
    }
    service.terminate().await;
    db.pool.close().await;
}

/// The bounds in small (3 per client, 5 in total), asserted by counts that hold in
/// whatever order the requests arrive: four long-polls of one client, one refused
/// (per client); then three of each of two clients, one refused (in total), while a
/// request that does not wait is answered and a write that would wait is refused before
/// it is stored. Places are given back when their requests end.
#[tokio::test]
async fn long_polls_are_bounded_per_client_and_in_total() {
    let app = TestApp::spawn_with(|c| {
        c.api.long_polls = std::num::NonZeroUsize::new(5).unwrap();
        c.api.long_polls_per_client = std::num::NonZeroUsize::new(3).unwrap();
    })
    .await;
    let poll = |token: &'static str, wait: u64| {
        let request = app
            .http
            .get(app.url(&format!("/v1/changes?wait={wait}&entity=rewards")))
            .bearer_auth(token)
            .send();
        tokio::spawn(async move {
            let response = request.await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        })
    };
    // Refusals come at once, held polls after their wait: the first answer is the refusal.
    async fn outcomes(
        polls: Vec<
            tokio::task::JoinHandle<(u16, Option<reqwest::header::HeaderValue>, serde_json::Value)>,
        >,
    ) -> Vec<(u16, Option<reqwest::header::HeaderValue>, serde_json::Value)> {
        join_all(polls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }
    let refused_with =
        |answers: &[(u16, Option<reqwest::header::HeaderValue>, serde_json::Value)],
         bound: &str| {
            let refused: Vec<_> = answers.iter().filter(|(s, ..)| *s == 429).collect();
            assert_eq!(refused.len(), 1, "{answers:?}");
            let (_, retry_after, body) = refused[0];
            assert_eq!(retry_after.as_ref().unwrap(), "5");
            assert_eq!(body["code"], "too_many_requests");
            assert!(body["message"].as_str().unwrap().contains(bound), "{body}");
            assert_eq!(
                answers.iter().filter(|(s, ..)| *s == 200).count(),
                answers.len() - 1
            );
        };
    let one_client = (0..4).map(|_| poll(API_TOKEN, 2)).collect();
    refused_with(&outcomes(one_client).await, "(api.long_polls_per_client)");

    let mut two_clients: Vec<_> = (0..3).map(|_| poll(API_TOKEN, 10)).collect();
    two_clients.extend((0..3).map(|_| poll(crate::common::READ_TOKEN, 10)));
    // Once one is refused, the other five are held.
    let started = Instant::now();
    while !two_clients.iter().any(|p| p.is_finished()) && started.elapsed() < HANG {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unbounded = app.api_get("/v1/changes?entity=rewards").await;
    assert_eq!(
        unbounded.status(),
        200,
        "a request without wait is never refused"
    );
    let write = app
        .http
        .post(app.url("/v1/customers?wait=5"))
        .bearer_auth(API_TOKEN)
        .json(
            &serde_json::json!({"customer_key": "c", "email": "c@example.com", "partner_key": "p"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 429);
    assert_eq!(app.db.count("SELECT count(*) FROM writes").await, 0);
    refused_with(&outcomes(two_clients).await, "(api.long_polls)");
    app.stop().await;
}

/// The processes of the Postgres server whose postmaster is `pid`: it and its children.
fn postgres_processes(pid: u32) -> Vec<nix::unistd::Pid> {
    let mut found = vec![nix::unistd::Pid::from_raw(pid as i32)];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent is the second field after the command, which is in parentheses.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            found.push(nix::unistd::Pid::from_raw(child));
        }
    }
    found
}

/// `/readyz` as a load balancer probes it: with a 2 s timeout; `None` when it timed out.
async fn probe(app: &TestApp) -> Option<u16> {
    let http = partnerstack::http::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let status = http
        .get(app.url("/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    println!("[readyz] {status:?} in {:?}", started.elapsed());
    status
}

/// Waits (at most 60 s) until Postgres at `url` takes connections again.
async fn accepts_connections(url: &str) {
    use sqlx::Connection as _;
    for _ in 0..600 {
        if let Ok(conn) = sqlx::PgConnection::connect(url).await {
            let _ = conn.close().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Postgres did not come back within 60 s");
}

/// An idle replica whose pool holds connections from before a Postgres restart answers
/// its first requests after the restart (reads, a webhook, `/readyz`) with success, not
/// with the dead connections' errors. While Postgres is stopped, and while it is frozen
/// (every process stopped: connections hang rather than fail), a balancer's `/readyz`
/// probe with a 2 s timeout gets its 503.
#[tokio::test]
async fn readyz_answers_through_outages_and_a_restart_leaves_no_dead_connections() {
    let (pg, db, dir) = TestDb::private("pg-ready").await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    let reads = || {
        join_all(
            (0..12).map(|_| async { app.api_get("/v1/partners?limit=1").await.status().as_u16() }),
        )
    };
    // Fill the pool with connections, then let the replica idle through a restart.
    assert!(reads().await.iter().all(|s| *s == 200));
    pg.stop().await.unwrap();
    pg.resume().await.unwrap();
    accepts_connections(&app.db.url).await;
    let (first_reads, delivered, ready) = tokio::join!(
        reads(),
        app.deliver(PING),
        app.http.get(app.url("/readyz")).send()
    );
    assert!(first_reads.iter().all(|s| *s == 200), "{first_reads:?}");
    assert_eq!(delivered.status(), 200);
    assert_eq!(ready.unwrap().status(), 200);

    // Stopped: connections are refused.
    pg.stop().await.unwrap();
    assert_eq!(
        probe(&app).await,
        Some(503),
        "/readyz while Postgres is stopped"
    );
    pg.resume().await.unwrap();
    accepts_connections(&app.db.url).await;
    assert_eq!(probe(&app).await, Some(200));

    // Frozen: nothing answers, nothing fails.
    let frozen = postgres_processes(pg.pid().unwrap());
    for pid in &frozen {
        nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
    let while_frozen = probe(&app).await;
    for pid in &frozen {
        nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    assert_eq!(while_frozen, Some(503), "/readyz while Postgres is frozen");
    let mut ready_again = false;
    for _ in 0..100 {
        if probe(&app).await == Some(200) {
            ready_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready_again, "ready again once Postgres runs");
    app.stop().await;
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
