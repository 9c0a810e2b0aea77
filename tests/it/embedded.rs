//! The embedded default and database outages.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Process, TestApp, TestDb, WEBHOOK_TOKEN, shared_temp_dir};

async fn serve_embedded(data_dir: &std::path::Path) -> Process {
    let data_dir = data_dir.to_str().unwrap();
    Process::serve(&[("DATABASE_URL", None), ("PSYNC_DATA_DIR", Some(data_dir))]).await
}

#[tokio::test]
async fn serve_without_database_url_runs_its_own_postgres_and_keeps_data_across_restarts() {
    let data_dir = shared_temp_dir("embedded");
    let http = partnerstack::http::builder().build().unwrap();
    let body = json!({"event": "customer.created", "key": "cust_embedded", "created_at": 1_700_000_000_000_i64})
        .to_string();

    let service = serve_embedded(&data_dir).await;
    let url = service.url(&format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}"));
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
    service.terminate().await;
    assert!(
        !data_dir.join("pg/postmaster.pid").exists(),
        "the embedded Postgres was not stopped on shutdown"
    );

    let service = serve_embedded(&data_dir).await;
    let url = service.url(&format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}"));
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
    service.terminate().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn a_database_outage_answers_503_and_ingest_resumes_by_itself() {
    let (pg, db, dir) = TestDb::private("outage").await;
    let app = TestApp::spawn_on(db, |c| {
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
