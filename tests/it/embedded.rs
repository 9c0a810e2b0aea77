//! The embedded default and database outages.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use partnerstack_sync::db::embedded::EmbeddedPostgres;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::common::{TestApp, TestDb, WEBHOOK_TOKEN, shared_temp_dir};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_binary(data_dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env("PSYNC_DATA_DIR", data_dir)
        .env("PSYNC_LISTEN", format!("127.0.0.1:{port}"))
        .env("PSYNC_WEBHOOK_TOKENS", WEBHOOK_TOKEN)
        .env("PSYNC_RECONCILE_INTERVAL", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start partnerstack-sync")
}

async fn wait_ready(http: &reqwest::Client, port: u16, child: &mut Child) {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("partnerstack-sync exited during start-up: {status}");
        }
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("partnerstack-sync did not become ready within 60 s");
}

async fn terminate(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status} after SIGTERM");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("serve did not stop within 30 s of SIGTERM");
}

#[tokio::test]
async fn serve_without_database_url_runs_its_own_postgres_and_keeps_data_across_restarts() {
    let data_dir = shared_temp_dir("embedded");
    let http = partnerstack_sync::http_client::builder().build().unwrap();
    let body = json!({"event": "customer.created", "key": "cust_embedded", "created_at": 1_700_000_000_000_i64})
        .to_string();

    let port = free_port();
    let mut child = start_binary(&data_dir, port);
    wait_ready(&http, port, &mut child).await;
    let url = format!("http://127.0.0.1:{port}/webhooks/partnerstack/{WEBHOOK_TOKEN}");
    let first: Value = http
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["duplicate"], false, "{first}");
    terminate(child).await;
    assert!(
        !data_dir.join("pg/postmaster.pid").exists(),
        "the embedded Postgres was not stopped on shutdown"
    );

    let port = free_port();
    let mut child = start_binary(&data_dir, port);
    wait_ready(&http, port, &mut child).await;
    let url = format!("http://127.0.0.1:{port}/webhooks/partnerstack/{WEBHOOK_TOKEN}");
    let again: Value = http
        .post(&url)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["duplicate"], true,
        "the delivery stored before the restart is still there: {again}"
    );
    assert_eq!(again["id"], first["id"]);
    terminate(child).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn a_database_outage_answers_503_and_ingest_resumes_by_itself() {
    let dir = shared_temp_dir("outage");
    let pg = EmbeddedPostgres::start(&dir, &[("fsync", "off")])
        .await
        .unwrap();
    let url = pg.url().expose_secret().to_string();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    partnerstack_sync::db::MIGRATOR.run(&pool).await.unwrap();
    let app = TestApp::spawn_on(TestDb { url, pool }, |c| {
        c.database.acquire_timeout = Duration::from_secs(1);
        c.server.request_timeout = Duration::from_secs(5);
    })
    .await;
    let delivery =
        |n: u32| json!({"event": "customer.created", "key": format!("cust_{n}")}).to_string();

    assert_eq!(app.deliver(delivery(0)).await.status(), 200);
    pg.stop().await.unwrap();

    let r = app.deliver(delivery(1)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unavailable");
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    pg.resume().await.unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = app.deliver(delivery(1)).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status, 200,
        "ingest did not resume after the database came back"
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.settle().await;
    assert_eq!(app.db.count("SELECT count(*) FROM customers").await, 2);
    app.stop().await;
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
