//! The embedded default and database outages.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use partnerstack_sync::db::embedded::{SHARED_DATA_ROOT, shared_data_dir};
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

/// Root, and a `postgres` user for the embedded server to run as; otherwise the calling
/// test is skipped ([`crate::tools::skip`]).
fn root_with_a_postgres_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        crate::tools::skip("needs root (.ci/run runs as root)");
        return None;
    }
    let user = nix::unistd::User::from_name("postgres").unwrap();
    if user.is_none() {
        crate::tools::skip("needs a `postgres` user (.ci/run creates one)");
    }
    user
}

/// A directory like a clone in root's home: mode 0700, so `postgres` cannot enter it.
fn private_checkout() -> tempfile::TempDir {
    let checkout = tempfile::Builder::new()
        .prefix("psync-checkout-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(checkout.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    checkout
}

/// `serve` run from `checkout` with nothing set about the database, its log in `log`.
async fn serve_from_checkout(checkout: &Path, log: &Path) -> Process {
    let (mut cmd, port) = Process::command(&[
        ("DATABASE_URL", None),
        ("PSYNC_DATA_DIR", None),
        ("RUST_LOG", Some("info")),
    ]);
    cmd.current_dir(checkout)
        .stdout(std::fs::File::create(log).unwrap());
    let mut service = Process::start(cmd, port);
    service.wait_ready().await;
    service
}

/// The data directory under the shared root that the log names.
fn shared_data_dir_in(log: &str) -> Option<PathBuf> {
    let start = log.find(&format!("{SHARED_DATA_ROOT}/"))?;
    let path: String = log[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ')')
        .collect();
    Some(PathBuf::from(path))
}

/// Removes, when dropped, a data directory under the shared root, and the root itself
/// when the test created it and nothing else is in it.
struct RemoveShared {
    data_dir: PathBuf,
    root_existed: bool,
}

impl Drop for RemoveShared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if !self.root_existed {
            let _ = std::fs::remove_dir(SHARED_DATA_ROOT); // fails unless empty
        }
    }
}

#[tokio::test]
async fn as_root_the_default_data_dir_moves_out_of_a_checkout_postgres_cannot_reach() {
    let Some(postgres) = root_with_a_postgres_user() else {
        return;
    };
    let checkout = private_checkout();
    let path = checkout.path().canonicalize().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let expected = shared_data_dir(&path.join("data"));
    let cleanup = RemoveShared {
        data_dir: expected.clone(),
        root_existed: Path::new(SHARED_DATA_ROOT).exists(),
    };
    let http = partnerstack::http::builder().build().unwrap();
    let body = json!({"event": "customer.created", "key": "cust_first_run"}).to_string();

    let log_path = path.join("first.log");
    let service = serve_from_checkout(&path, &log_path).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(&format!(
            "cannot enter {} (mode 700) to reach the default data directory {}; keeping its \
             data in {} instead",
            path.display(),
            path.join("data").display(),
            expected.display()
        )),
        "the log does not say where the data went:\n{log}"
    );
    assert_eq!(shared_data_dir_in(&log).as_ref(), Some(&expected), "{log}");
    assert!(
        expected
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{name}-"))),
        "{} is not named after the checkout {name}",
        expected.display()
    );
    assert!(
        !path.join("data").exists(),
        "an unused ./data was left in the checkout"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let pgdata = expected.join("pg");
    assert!(
        pgdata.join("PG_VERSION").exists(),
        "no cluster in {}",
        pgdata.display()
    );
    assert_eq!(mode(&expected), 0o711);
    assert_eq!(mode(&pgdata), 0o700);
    assert_eq!(
        std::fs::metadata(&pgdata).unwrap().uid(),
        postgres.uid.as_raw()
    );
    assert_eq!(mode(&expected.join("password")), 0o600);
    assert_eq!(mode(Path::new(SHARED_DATA_ROOT)) & 0o001, 0o001);

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
        !pgdata.join("postmaster.pid").exists(),
        "the embedded Postgres was not stopped"
    );

    // Restarted from the same checkout, it finds the same data.
    let log_path = path.join("second.log");
    let service = serve_from_checkout(&path, &log_path).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(shared_data_dir_in(&log).as_ref(), Some(&expected), "{log}");
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
        "the delivery stored before the restart is gone: {again}"
    );
    assert_eq!(again["id"], first["id"]);
    service.terminate().await;

    drop(cleanup);
    assert!(!expected.exists(), "{} was not removed", expected.display());
}

#[tokio::test]
async fn an_explicit_data_dir_postgres_cannot_reach_is_refused_not_moved() {
    if root_with_a_postgres_user().is_none() {
        return;
    }
    let checkout = private_checkout();
    let path = checkout.path().canonicalize().unwrap();
    let data_dir = path.join("data");
    // Where the default would have moved; removed should a failure put data there.
    let _cleanup = RemoveShared {
        data_dir: shared_data_dir(&data_dir),
        root_existed: Path::new(SHARED_DATA_ROOT).exists(),
    };
    let config_file = path.join("psync.toml");
    std::fs::write(
        &config_file,
        format!("[database]\ndata_dir = {:?}\n", data_dir.to_str().unwrap()),
    )
    .unwrap();
    let by_env = [("PSYNC_DATA_DIR", Some(data_dir.to_str().unwrap()))];
    let by_file = [("PSYNC_DATA_DIR", None)];
    for (how, env, args) in [
        ("PSYNC_DATA_DIR", &by_env, vec![]),
        (
            "--config",
            &by_file,
            vec!["--config", config_file.to_str().unwrap()],
        ),
    ] {
        let (mut cmd, _) = Process::command(env);
        cmd.args(&args)
            .env_remove("DATABASE_URL")
            .current_dir(&path)
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // Bounded: start-up fails before initdb would run.
        let mut status = None;
        for _ in 0..300 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{how}: serve did not exit within 30 s");
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{how}: serve started: {stderr}");
        let expected = format!(
            "cannot enter {} (mode 700) to reach the data directory {}. Set PSYNC_DATA_DIR",
            path.display(),
            data_dir.display()
        );
        assert!(stderr.contains(&expected), "{how}: {stderr}");
        assert!(
            !shared_data_dir(&data_dir).exists(),
            "{how}: the explicit data directory was moved under {SHARED_DATA_ROOT}"
        );
    }
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
