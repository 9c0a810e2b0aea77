//! Scenario: crowds. How long a webhook delivery and a readiness probe take, each on a
//! new connection, while a crowd holds the service's connections: 1,100 silent
//! connections kept open (reconnecting as the service cuts them), then 1,500 long-polls
//! of the feed by one client (re-sent as they end); and how long `/readyz` takes while
//! Postgres is stopped or frozen. The integration tests (`crowds::`) assert that these
//! are answered; the figures are measured here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::service::{self, API_TOKEN, Service, WEBHOOK_TOKEN};
use crate::{Bench, Row};

/// An event type the service stores and applies to nothing: no change wakes the polls.
const PING: &str = r#"{"event": "crowd.ping", "key": "ping"}"#;
/// Longest wait for one answer before it counts as unanswered.
const GIVE_UP: Duration = Duration::from_secs(20);

/// Latencies (ms, sorted) of webhook deliveries and readiness probes, each on a new
/// connection, and how many were not answered (200) within [`GIVE_UP`].
struct Probes {
    webhook_ms: Vec<f64>,
    readyz_ms: Vec<f64>,
    unanswered: usize,
}

impl Probes {
    fn quantile(sorted: &[f64], q: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn show(sorted: &[f64]) -> String {
        format!(
            "{:.1} / {:.1}",
            Self::quantile(sorted, 0.5),
            Self::quantile(sorted, 1.0)
        )
    }
}

/// `n` webhook deliveries and `n` readiness probes in turn, each on a new connection.
async fn probe(addr: SocketAddr, n: usize) -> anyhow::Result<Probes> {
    let http = partnerstack::http::builder()
        .timeout(GIVE_UP)
        .pool_max_idle_per_host(0)
        .build()?;
    let mut probes = Probes {
        webhook_ms: Vec::new(),
        readyz_ms: Vec::new(),
        unanswered: 0,
    };
    for _ in 0..n {
        let started = Instant::now();
        let delivered = http
            .post(format!(
                "http://{addr}/webhooks/partnerstack/{WEBHOOK_TOKEN}"
            ))
            .body(PING)
            .send()
            .await;
        match delivered {
            Ok(r) if r.status() == 200 => probes
                .webhook_ms
                .push(started.elapsed().as_secs_f64() * 1000.0),
            _ => probes.unanswered += 1,
        }
        let started = Instant::now();
        match http.get(format!("http://{addr}/readyz")).send().await {
            Ok(r) if r.status() == 200 => probes
                .readyz_ms
                .push(started.elapsed().as_secs_f64() * 1000.0),
            _ => probes.unanswered += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probes.webhook_ms.sort_by(f64::total_cmp);
    probes.readyz_ms.sort_by(f64::total_cmp);
    Ok(probes)
}

/// Keeps `n` connections open that send `request` (nothing, when empty) and wait for
/// whatever comes; each one the service ends is opened again (after `pause`, when its
/// answer started with `counted`), until `stop`. Counts the answers that start with
/// `counted`.
fn crowd(
    addr: SocketAddr,
    n: usize,
    request: String,
    counted: &'static str,
    pause: Duration,
    stop: CancellationToken,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let tasks = (0..n)
        .map(|_| {
            let (request, stop, count) = (request.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(mut stream) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if !request.is_empty() && stream.write_all(request.as_bytes()).await.is_err() {
                        continue;
                    }
                    let mut answer = Vec::new();
                    tokio::select! {
                        _ = stream.read_to_end(&mut answer) => {}
                        () = stop.cancelled() => return,
                    }
                    if !counted.is_empty() && answer.starts_with(counted.as_bytes()) {
                        count.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            })
        })
        .collect();
    (tasks, count)
}

pub async fn crowds(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: crowds");
    let fds = partnerstack_sync::server::raise_fd_limit()?;
    anyhow::ensure!(
        fds.soft >= 4096,
        "the open-file limit ({}) is too low",
        fds.soft
    );
    let url = bench.database("bench_crowds").await?;
    let svc = Service::start(&url, &[]).await?;
    let samples = if bench.quick { 20 } else { 100 };
    let quiet = probe(svc.addr, samples).await?;

    let (peak_task, peak_stop) = service::sample_peak_rss(svc.pid());
    let stop = CancellationToken::new();
    let (silent, _) = crowd(
        svc.addr,
        1100,
        String::new(),
        "",
        Duration::ZERO,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_silent = probe(svc.addr, samples).await?;
    stop.cancel();
    for task in silent {
        let _ = task.await;
    }

    let poll = format!(
        "GET /v1/changes?wait=30&entity=rewards HTTP/1.1\r\nhost: bench\r\n\
         authorization: Bearer {API_TOKEN}\r\n\r\n"
    );
    // Refused polls sent again as Retry-After asks (5 s), then at once (a flood of 429s).
    let mut polled = Vec::new();
    for pause in [Duration::from_secs(5), Duration::ZERO] {
        let stop = CancellationToken::new();
        let (polls, refused) = crowd(
            svc.addr,
            1500,
            poll.clone(),
            "HTTP/1.1 429",
            pause,
            stop.clone(),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let probes = probe(svc.addr, samples).await?;
        let refused = refused.load(Ordering::Relaxed);
        stop.cancel();
        for task in polls {
            let _ = task.await;
        }
        polled.push((pause, probes, refused));
    }
    let _ = peak_stop.send(());
    let peak = peak_task.await?;
    svc.stop().await?;

    // /readyz while Postgres is stopped, then frozen (every process of it stopped).
    let svc = Service::start(&url, &[]).await?;
    let readyz = |n: usize| async move {
        let http = partnerstack::http::builder()
            .timeout(GIVE_UP)
            .pool_max_idle_per_host(0)
            .build()?;
        let mut ms = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            let status = http
                .get(format!("http://{}/readyz", svc.addr))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            ms.push((status, started.elapsed().as_secs_f64() * 1000.0));
        }
        anyhow::Ok(ms)
    };
    bench.pg.stop().await?;
    let stopped = readyz(5).await;
    bench.pg.resume().await?;
    let frozen_pids = postgres_processes(bench.pg.pid().context("Postgres runs")?);
    for pid in &frozen_pids {
        let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGSTOP);
    }
    let frozen = readyz(5).await;
    for pid in &frozen_pids {
        let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT);
    }
    let (stopped, frozen) = (stopped?, frozen?);
    svc.stop().await?;

    let reported = |bench: &mut Bench, metric: String, service: String, baseline: String| {
        bench.row(Row::new(
            "crowds",
            metric,
            service,
            baseline,
            None,
            "(reported)",
            None,
        ));
    };
    let mut crowds = vec![("1,100 silent connections".to_string(), &with_silent, None)];
    for (pause, probes, refused) in &polled {
        let label = if pause.is_zero() {
            "1,500 long-polls of one client, refusals re-sent at once".to_string()
        } else {
            "1,500 long-polls of one client, re-sent after Retry-After".to_string()
        };
        crowds.push((label, probes, Some(*refused)));
    }
    for (label, probes, refused) in crowds {
        reported(
            bench,
            format!("webhook, new connection, {label}: p50 / max ms"),
            Probes::show(&probes.webhook_ms),
            Probes::show(&quiet.webhook_ms),
        );
        reported(
            bench,
            format!("/readyz, new connection, {label}: p50 / max ms"),
            Probes::show(&probes.readyz_ms),
            Probes::show(&quiet.readyz_ms),
        );
        reported(
            bench,
            format!("unanswered within 20 s of {}, {label}", 2 * samples),
            probes.unanswered.to_string(),
            quiet.unanswered.to_string(),
        );
        if let Some(refused) = refused {
            reported(
                bench,
                format!("long-polls refused 429 while probing, {label}"),
                refused.to_string(),
                "-".into(),
            );
        }
    }
    reported(
        bench,
        "peak RSS under the crowds, MiB".into(),
        format!("{peak:.0}"),
        "-".into(),
    );
    for (label, answers) in [("stopped", &stopped), ("frozen", &frozen)] {
        let worst = answers.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
        let statuses: Vec<String> = answers.iter().map(|(s, _)| s.to_string()).collect();
        bench.row(Row::new(
            "crowds",
            format!(
                "/readyz, Postgres {label}: slowest of 5, ms ({})",
                statuses.join(",")
            ),
            format!("{worst:.0}"),
            "-".into(),
            None,
            "< 1000 ms, 503",
            Some(worst < 1000.0 && answers.iter().all(|(s, _)| *s == 503)),
        ));
    }
    Ok(())
}

/// The processes of the Postgres server whose postmaster is `pid`: it and its children.
fn postgres_processes(pid: u32) -> Vec<nix::unistd::Pid> {
    let mut found = vec![nix::unistd::Pid::from_raw(pid as i32)];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
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
