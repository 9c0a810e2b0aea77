//! The real binary as operators meet it: exit codes, settings errors, a database that does
//! not answer, and JSON logs as a log pipeline reads them.

use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{API_TOKEN, Process, TestDb, WEBHOOK_TOKEN, free_port};

/// Runs the binary with `args` and `env` to its end (at most 60 s): exit code and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env(
            "PSYNC_DATA_DIR",
            std::env::temp_dir().join("psync-cli-never-used"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start partnerstack-sync");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn usage_and_settings_errors_exit_2_naming_what_is_wrong() {
    for (args, env, says) in [
        (vec!["reconcile", "--stream", "bogus"], vec![], "bogus"),
        (vec!["no-such-command"], vec![], "no-such-command"),
        (
            vec!["serve"],
            vec![("PSYNC_SERVER_LISTEN", "nowhere")],
            "server.listen (env PSYNC_SERVER_LISTEN)",
        ),
        (
            vec!["migrate"],
            vec![
                ("PSYNC_LISTEN", "127.0.0.1:1"),
                ("PSYNC_SERVER_LISTEN", "127.0.0.1:2"),
            ],
            "both set server.listen",
        ),
        (vec!["serve"], vec![("RUST_LOG", "info,[[[")], "RUST_LOG"),
    ] {
        let (code, stderr) = run(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
    }
}

/// `migrate` and `serve` against a database nobody answers for: they give up after
/// `database.connect_timeout`, saying where they tried and why.
#[test]
fn an_unreachable_database_is_given_up_on_after_the_connect_timeout() {
    let port = free_port();
    let url = format!("postgres://psync:secret@127.0.0.1:{port}/psync");
    for command in ["migrate", "serve"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let (code, stderr) = run(
            &[command],
            &[
                ("DATABASE_URL", &url),
                ("PSYNC_DATABASE_CONNECT_TIMEOUT", "2s"),
                ("PSYNC_SERVER_LISTEN", &listen),
                ("RUST_LOG", "error"),
            ],
        );
        assert_eq!(code, 1, "{command}: {stderr}");
        let expected = format!(
            "the database at 127.0.0.1:{port}/psync did not answer within 2s (database.connect_timeout)"
        );
        assert!(stderr.contains(&expected), "{command}: {stderr}");
        assert!(
            !stderr.contains("secret"),
            "{command} printed the password: {stderr}"
        );
    }
}

/// The JSON log of a real `serve`: every line one flat object with `service` and
/// `version`; each request's lines carry its `request_id`, and its access line a numeric
/// `latency_ms` and `http.status` (no bare `status`).
#[tokio::test]
async fn json_logs_are_flat_and_carry_request_ids_latency_and_status() {
    let db = TestDb::new().await;
    let (mut cmd, port) = Process::command(&[
        ("DATABASE_URL", Some(&db.url)),
        ("PSYNC_LOG_FORMAT", Some("json")),
        ("RUST_LOG", Some("info")),
    ]);
    cmd.stdout(Stdio::piped());
    let mut service = Process::start(cmd, port);
    let mut stdout = service.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    service.wait_ready().await;
    let http = partnerstack::http::builder().build().unwrap();
    let ok = http
        .get(service.url("/v1/customers"))
        .bearer_auth(API_TOKEN)
        .header("x-request-id", "req-from-the-caller")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let missing = http
        .get(service.url("/v1/customers/nobody"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let generated = missing.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let stored = http
        .post(service.url(&format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}")))
        .body(r#"{"event": "customer.created", "key": "cus_1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    service.terminate().await;
    let text = reader.join().unwrap();

    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{text}");
    for line in &lines {
        let object = line
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        assert_eq!(object["service"], "partnerstack-sync", "{line}");
        assert_eq!(object["version"], env!("CARGO_PKG_VERSION"), "{line}");
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        assert!(!object.contains_key("status"), "a bare status: {line}");
        assert!(
            !object.contains_key("spans") && !object.contains_key("span"),
            "{line}"
        );
        assert!(object.values().all(|v| !v.is_object()), "nested: {line}");
    }
    let access = |request_id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == request_id && l.get("http.status").is_some())
            .unwrap_or_else(|| panic!("no access line for {request_id}:\n{text}"))
            .clone()
    };
    let line = access("req-from-the-caller");
    assert_eq!(line["http.status"], 200);
    assert_eq!(line["route"], "/v1/customers");
    assert_eq!(line["method"], "GET");
    // The API client that called, by name (the token never).
    assert_eq!(line["client"], "test", "{line}");
    assert!(
        line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    let line = access(&generated);
    assert_eq!(line["http.status"], 404);
    assert_eq!(line["route"], "/v1/customers/{key}");
    // The webhook's line names its route template, never the token.
    assert!(
        lines
            .iter()
            .any(|l| l["route"] == "/webhooks/partnerstack/{token}")
    );
    assert!(
        !text.contains(WEBHOOK_TOKEN) && !text.contains(API_TOKEN),
        "a token was logged"
    );
    db.pool.close().await;
}
