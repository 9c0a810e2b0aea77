//! `partnerstack-sync demo`, the real binary: within a minute or so every stream is synced
//! and webhooks are applied (lost ones repaired); SIGTERM stops everything, Postgres
//! included.

use std::io::BufRead as _;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use partnerstack::Entity;
use serde_json::Value;

use crate::common::{free_port, shared_temp_dir};

/// The banner's value after `label` (e.g. "API token").
fn banner_value(lines: &[String], label: &str) -> Option<String> {
    lines.iter().find_map(|l| {
        l.trim_start()
            .strip_prefix(label)
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
    })
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn the_demo_syncs_every_stream_and_stops_without_leaving_postgres() {
    let port = free_port();
    let data_dir = shared_temp_dir("demo");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_partnerstack-sync"))
        .args(["demo", "--stand-in", "127.0.0.1:0", "--webhook-rate", "5"])
        .args(["--progress-every", "1s"])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("PSYNC_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the demo");
    // Its output, line by line, read on a thread until it closes.
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut demo = Killer(child);

    // The banner, once everything runs.
    let mut lines = Vec::new();
    let started = Instant::now();
    while !lines
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no banner within 120 s; so far: {lines:#?}"
        );
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the demo exited before its banner: {lines:#?}")
            }
        }
    }
    let token = banner_value(&lines, "API token").expect("the API token in the banner");
    let postgres: u32 = lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("Postgres "))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|pid| pid.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("the Postgres pid in the banner: {lines:#?}"));
    assert!(alive(postgres), "Postgres (pid {postgres}) runs");
    let service = format!("http://127.0.0.1:{port}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{service}/status"))),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("/admin/stats")),
        "{lines:#?}"
    );
    let commands: Vec<&String> = lines.iter().filter(|l| l.contains("curl -s")).collect();
    assert_eq!(commands.len(), 4, "{lines:#?}");
    // The partner the commands name (its summary is the first).
    let partner = commands[0]
        .split("/v1/partners/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("a partner in {}", commands[0]))
        .to_string();

    // Within a bounded wait: every stream synced, webhooks applied, lost ones repaired.
    let http = partnerstack::http::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |path: &str| {
        http.get(format!("{service}{path}"))
            .bearer_auth(&token)
            .send()
    };
    let mut last = Value::Null;
    let mut applied = 0;
    let waiting = Instant::now();
    let deadline = waiting + Duration::from_secs(120);
    loop {
        if let Ok(r) = get("/v1/sync").await
            && let Ok(body) = r.json::<Value>().await
        {
            last = body["data"].clone();
        }
        if let Ok(r) = get("/v1/events?outcome=applied&limit=250").await
            && let Ok(body) = r.json::<Value>().await
        {
            applied = body["data"]["items"].as_array().map_or(0, Vec::len);
        }
        let streams = last["streams"].as_array().cloned().unwrap_or_default();
        let synced = Entity::ALL.iter().all(|e| {
            streams
                .iter()
                .any(|s| s["stream"] == e.stream() && s["last"]["status"] == "ok")
        });
        let repairs: i64 = streams
            .iter()
            .map(|s| s["total_repairs"].as_i64().unwrap_or(0))
            .sum();
        if synced && applied > 0 && repairs > 0 {
            eprintln!(
                "demo: all 7 streams synced, {applied}+ webhooks applied, {repairs} repairs, \
                 {:.1} s after the banner",
                waiting.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not synced, applied and repaired within 120 s: {applied} applied; {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The banner's last command: a signup through the write outbox, sent to the stand-in.
    let written: Value = http
        .post(format!("{service}/v1/customers?wait=5"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "customer_key": "demo-1", "email": "demo@example.com", "partner_key": partner,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(written["data"]["status"], "succeeded", "{written:#}");
    let status = http.get(format!("{service}/status")).send().await.unwrap();
    assert_eq!(status.status(), 200);
    let page = status.text().await.unwrap();
    for entity in Entity::ALL {
        assert!(page.contains(&format!("<tr id=\"stream-{}\">", entity.stream())));
    }

    // SIGTERM: a clean exit, and no Postgres left behind; only the data directory stays.
    let child = &mut demo.0;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(60),
            "the demo did not stop within 60 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "the demo exited with {exit}");
    let _ = reader.join();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("demo stopped")), "{rest:#?}");
    // The progress lines printed meanwhile, one a second.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Every 1s a line below sums up the progress")),
        "{lines:#?}"
    );
    assert!(
        rest.iter().any(|l| l.starts_with('[')
            && l.contains("webhooks delivered")
            && l.contains("streams synced")),
        "{rest:#?}"
    );
    assert!(
        !alive(postgres),
        "Postgres (pid {postgres}) outlived the demo"
    );
    let left = processes_mentioning(&data_dir.to_string_lossy());
    assert!(
        left.is_empty(),
        "processes still using {}: {left:?}",
        data_dir.display()
    );
    assert!(Path::new(&data_dir).join("pg/PG_VERSION").is_file());
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Kills the demo if the test fails before it stops it.
struct Killer(std::process::Child);

impl Drop for Killer {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
