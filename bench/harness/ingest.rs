//! Scenario 1: webhook ingest, and how fast what it stores is applied.
//!
//! - Throughput at concurrency 32 against pgbench's one-commit-per-delivery baseline, with,
//!   in the same run, the applier's rate (deliveries applied while the load ran, from
//!   `applied_at`) and how long after the load's end the backlog was gone.
//! - The applier alone: a database holding stored, pending deliveries, and the service
//!   started on it: deliveries applied per second and the service's CPU per delivery
//!   applied.
//! - Latency at 500/s and 2,000/s (open loop) against pgbench at the same rates, and, at
//!   2,000/s, freshness: a reader polls `GET /v1/customers/{key}` for a sample of the
//!   deliveries, from the moment each one's 200 was read until its row answers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use tokio::sync::{Mutex, mpsc};

use crate::service::{self, API_TOKEN, Service, WEBHOOK_TOKEN};
use crate::{Bench, Row, Spread, count, load, pgbench};

/// One delivery in this many is followed by the freshness reader.
const FRESHNESS_SAMPLE: u64 = 20;
/// The freshness reader's connections (each follows one delivery at a time).
const FRESHNESS_READERS: usize = 32;
/// How often the reader asks again while a row is not there yet.
const FRESHNESS_POLL: Duration = Duration::from_millis(2);
/// Longest the reader waits for one row (a row not there by then counts as missing).
const FRESHNESS_CAP: Duration = Duration::from_secs(20);
/// Longest wait for the applier to finish a backlog.
const DRAIN_CAP: Duration = Duration::from_secs(300);

/// One throughput repetition.
struct Throughput {
    rate: f64,
    baseline: f64,
    /// Deliveries stored and applied within the measured window (by Postgres' times).
    received: i64,
    applied: i64,
    /// From the load's end to no delivery pending.
    drain: Duration,
    /// Successes including the warm-up, and failures.
    acknowledged: u64,
    failed: u64,
    /// The service's CPU from the load's start to the end of the drain, seconds.
    cpu: f64,
}

pub async fn ingest(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: ingest");
    let d = &bench.durations;
    let (warmup, throughput, latency, reps) = (d.warmup, d.throughput, d.latency, d.repetitions);
    let base_url = bench.database("bench_pgbench").await?;
    let script = pgbench::per_delivery_script();
    let url = bench.database("bench_ingest").await?;
    let svc = Service::start(&url, &[]).await?;
    let path = format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}");

    // Throughput, then the drain, alternating with the baseline.
    let (sampler, stop_sampler) = service::sample_peak_rss(svc.pid());
    let mut runs = Vec::new();
    for rep in 0..reps {
        let base = pgbench::run(
            &base_url,
            &script,
            32,
            throughput,
            None,
            &bench.work,
            "per-delivery",
        )?;
        let cpu = svc.cpu_seconds();
        let pg_pid = bench.pg.pid().unwrap_or(0);
        let (pg_cpu, own_cpu) = (
            service::postgres_cpu_seconds(pg_pid),
            service::cpu_seconds(std::process::id()),
        );
        let workload = Arc::new(load::Deliveries {
            path: path.clone(),
            run: format!("tp{rep}"),
        });
        let stats = load::closed(svc.addr, workload, 32, warmup, throughput).await?;
        let drain = drained(&url).await?;
        let cpu = svc.cpu_seconds() - cpu;
        let pg_cpu = service::postgres_cpu_seconds(pg_pid) - pg_cpu;
        let own_cpu = service::cpu_seconds(std::process::id()) - own_cpu;
        let (received, applied) = match stats.window {
            Some((from, to)) => window_counts(&url, from, to).await?,
            None => (0, 0),
        };
        println!(
            "  rep {rep}: {:.0}/s stored (baseline {:.0}/s); applied {:.0}/s while the load ran; \
             drained {:.2} s after it; CPU per delivery: service {:.0} µs, Postgres {:.0} µs, \
             load generator {:.0} µs",
            stats.rate(),
            base.tps,
            applied as f64 / throughput.as_secs_f64(),
            drain.as_secs_f64(),
            cpu / (stats.ok + stats.warmup_ok).max(1) as f64 * 1e6,
            pg_cpu / (stats.ok + stats.warmup_ok).max(1) as f64 * 1e6,
            own_cpu / (stats.ok + stats.warmup_ok).max(1) as f64 * 1e6,
        );
        runs.push(Throughput {
            rate: stats.rate(),
            baseline: base.tps,
            received,
            applied,
            drain,
            acknowledged: stats.ok + stats.warmup_ok,
            failed: stats.failed,
            cpu,
        });
    }
    let _ = stop_sampler.send(());
    let peak_rss = sampler.await?;
    bench.statements(&url, "ingest throughput").await?;
    // Everything acknowledged must be stored, exactly: nothing more, nothing less.
    let stored = count(&url, "SELECT count(*) FROM webhook_events").await?;
    let acknowledged: u64 = runs.iter().map(|r| r.acknowledged).sum();
    let failed: u64 = runs.iter().map(|r| r.failed).sum();
    let exact = stored == acknowledged as i64 && failed == 0;

    let spread =
        |f: &dyn Fn(&Throughput) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let ratio = spread(&|r| r.rate / r.baseline);
    bench.row(Row::new(
        "ingest",
        "throughput, deliveries/s (c=32)",
        spread(&|r| r.rate).show(0),
        spread(&|r| r.baseline).show(0),
        Some(ratio),
        ">= 1.5x baseline",
        Some(ratio.median >= 1.5 && exact),
    ));
    let keeps_up = spread(&|r| r.applied as f64 / r.received.max(1) as f64);
    let drain = spread(&|r| r.drain.as_secs_f64());
    bench.row(Row::new(
        "ingest",
        "applied while ingesting, deliveries/s (vs stored/s)",
        spread(&|r| r.applied as f64 / throughput.as_secs_f64()).show(0),
        spread(&|r| r.received as f64 / throughput.as_secs_f64()).show(0),
        Some(keeps_up),
        ">= 1.0x, drained < 1 s",
        Some(keeps_up.min >= 0.98 && drain.max < 1.0),
    ));
    bench.notes.push(format!(
        "Ingest throughput: {reps} runs of {:.0} s after a {:.0} s warm-up, each after its \
         baseline; {acknowledged} deliveries acknowledged in all, {failed} non-2xx; the log \
         holds {stored} rows: {}. Applied while ingesting counts the deliveries whose \
         `applied_at` falls in the measured window, against those whose `received_at` does; \
         after each run the backlog was gone {} s after the load stopped (median, range).",
        throughput.as_secs_f64(),
        warmup.as_secs_f64(),
        if exact { "exact" } else { "MISMATCH" },
        drain.show(2),
    ));
    bench.row(Row::new(
        "ingest",
        "RSS under ingest load, MiB",
        format!("{peak_rss:.1}"),
        "-".into(),
        None,
        "< 150 MiB",
        Some(peak_rss < 150.0),
    ));

    // Latency at fixed rates; freshness at the higher one.
    let mut freshness: Vec<Freshness> = Vec::new();
    for rate in [500.0, 2000.0] {
        let (mut p50, mut p99, mut p999, mut ratios) = (vec![], vec![], vec![], vec![]);
        let (mut b50, mut b99, mut b999) = (vec![], vec![], vec![]);
        let mut failed = 0;
        for rep in 0..reps {
            let run = format!("lat{rate}-{rep}");
            let workload = Arc::new(load::Deliveries {
                path: path.clone(),
                run: run.clone(),
            });
            let follow = rate >= 2000.0;
            let (answers, reader) = if follow {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(tokio::spawn(follow_rows(svc.addr, run, rx))))
            } else {
                (None, None)
            };
            let stats = load::open(svc.addr, workload, rate, 64, latency, answers).await?;
            if let Some(reader) = reader {
                freshness.push(reader.await?);
            }
            let base = pgbench::run(
                &base_url,
                &script,
                32,
                latency,
                Some(rate),
                &bench.work,
                "per-delivery-rate",
            )?;
            failed += stats.failed;
            p50.push(stats.quantile_ms(0.5));
            p99.push(stats.quantile_ms(0.99));
            p999.push(stats.quantile_ms(0.999));
            b50.push(base.quantile_ms(0.5));
            b99.push(base.quantile_ms(0.99));
            b999.push(base.quantile_ms(0.999));
            ratios.push(stats.quantile_ms(0.99) / base.quantile_ms(0.99));
        }
        let med = |v: &[f64]| Spread::of(v).median;
        let ratio = Spread::of(&ratios);
        bench.row(Row::new(
            "ingest",
            format!("latency at {rate:.0}/s, p50/p99/p99.9 ms"),
            format!("{:.1}/{:.1}/{:.1}", med(&p50), med(&p99), med(&p999)),
            format!("{:.1}/{:.1}/{:.1}", med(&b50), med(&b99), med(&b999)),
            Some(ratio),
            if rate >= 2000.0 {
                "p99 <= 1.5x baseline"
            } else {
                "(reported)"
            },
            (rate >= 2000.0).then_some(ratio.median <= 1.5 && failed == 0),
        ));
    }
    let p50 = Spread::of(
        &freshness
            .iter()
            .map(|f| f.quantile_ms(0.5))
            .collect::<Vec<_>>(),
    );
    let p99 = Spread::of(
        &freshness
            .iter()
            .map(|f| f.quantile_ms(0.99))
            .collect::<Vec<_>>(),
    );
    let sampled: usize = freshness.iter().map(|f| f.latencies_us.len()).sum();
    let missing: usize = freshness.iter().map(|f| f.missing).sum();
    bench.row(Row::new(
        "ingest",
        "freshness at 2000/s: 200 to row on /v1, p50/p99 ms",
        format!("{:.1}/{}", p50.median, p99.show(1)),
        "-".into(),
        None,
        "p99 < 100 ms",
        Some(p99.median < 100.0 && missing == 0),
    ));
    bench.notes.push(format!(
        "Freshness: during each 2,000/s latency run, one delivery in {FRESHNESS_SAMPLE} was \
         followed: from the moment the load generator read its 200, a reader asked \
         `GET /v1/customers/{{key}}` every {} ms until it answered 200 ({sampled} deliveries \
         followed in {} runs, {missing} not found within {} s). The reader's requests are part \
         of the load the latency row measures.",
        FRESHNESS_POLL.as_millis(),
        freshness.len(),
        FRESHNESS_CAP.as_secs(),
    ));
    svc.stop().await?;

    apply_alone(bench, &runs).await
}

/// The applier alone: `n` deliveries stored before the service starts, then applied by
/// it. Reports deliveries applied per second and the service's CPU per delivery applied,
/// and from those and the throughput runs, its CPU per delivery stored.
async fn apply_alone(bench: &mut Bench, runs: &[Throughput]) -> anyhow::Result<()> {
    let n: u64 = if bench.quick { 20_000 } else { 60_000 };
    let url = bench.database("bench_apply").await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let body = load::delivery("alone", i);
                partnerstack_sync::db::events::NewEvent {
                    idempotency_key: sha256(&body),
                    event_type: Some("customer_created".into()),
                    body,
                }
            })
            .collect();
        partnerstack_sync::db::events::insert_batch(&pool, &events).await?;
    }
    pool.close().await;
    let pg_pid = bench.pg.pid().unwrap_or(0);
    let svc = Service::start(&url, &[]).await?;
    let (cpu, pg_cpu, started) = (
        svc.cpu_seconds(),
        service::postgres_cpu_seconds(pg_pid),
        Instant::now(),
    );
    let pending = count(
        &url,
        "SELECT count(*) FROM webhook_events WHERE outcome = 'pending'",
    )
    .await?;
    drained(&url).await?;
    let took = started.elapsed();
    let cpu = svc.cpu_seconds() - cpu;
    let pg_cpu = service::postgres_cpu_seconds(pg_pid) - pg_cpu;
    bench.statements(&url, "apply alone").await?;
    svc.stop().await?;
    let rate = pending as f64 / took.as_secs_f64();
    let per_applied = cpu / pending.max(1) as f64 * 1e6;
    bench.row(Row::new(
        "ingest",
        format!("applier alone, {pending} stored deliveries: deliveries/s"),
        format!("{rate:.0}"),
        "-".into(),
        None,
        "(reported)",
        None,
    ));
    // A throughput run's CPU covers storing and applying its deliveries (it ends when
    // every one is applied): what is left after applying is the cost of storing.
    let per_stored = Spread::of(
        &runs
            .iter()
            .map(|r| r.cpu / r.acknowledged.max(1) as f64 * 1e6 - per_applied)
            .collect::<Vec<_>>(),
    );
    bench.cpu(
        "per delivery stored (ingest run minus applying)",
        per_stored,
        None,
    );
    bench.cpu(
        "per delivery applied (applier alone)",
        Spread::one(per_applied),
        Some(pg_cpu / pending.max(1) as f64 * 1e6),
    );
    Ok(())
}

fn sha256(body: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(body.as_bytes()).into()
}

/// Waits until no delivery is pending (at most [`DRAIN_CAP`]); returns how long that took.
async fn drained(url: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = PgConnection::connect(url).await?;
    loop {
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM webhook_events WHERE outcome = 'pending')",
        )
        .fetch_one(&mut conn)
        .await?;
        if !pending {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_CAP,
            "deliveries still pending {DRAIN_CAP:?} after the load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close().await?;
    Ok(started.elapsed())
}

/// Deliveries received, and deliveries applied, between `from` and `to`.
async fn window_counts(url: &str, from: SystemTime, to: SystemTime) -> anyhow::Result<(i64, i64)> {
    let mut conn = PgConnection::connect(url).await?;
    let (from, to): (DateTime<Utc>, DateTime<Utc>) = (from.into(), to.into());
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE received_at >= $1 AND received_at < $2),
                count(*) FILTER (WHERE applied_at >= $1 AND applied_at < $2)
         FROM webhook_events",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(counts)
}

/// Freshness of the followed deliveries.
struct Freshness {
    /// From the 200 to the row answering, µs, sorted.
    latencies_us: Vec<u64>,
    /// Followed deliveries whose row did not answer within [`FRESHNESS_CAP`].
    missing: usize,
}

impl Freshness {
    fn quantile_ms(&self, q: f64) -> f64 {
        load::quantile_ms(&self.latencies_us, q)
    }
}

/// Follows one delivery in [`FRESHNESS_SAMPLE`] of those answered (`answers`, until the
/// load ends): asks for its row until it answers.
async fn follow_rows(
    addr: std::net::SocketAddr,
    run: String,
    mut answers: mpsc::UnboundedReceiver<(u64, Instant)>,
) -> Freshness {
    let (jobs, queue) = mpsc::unbounded_channel::<(u64, Instant)>();
    let queue = Arc::new(Mutex::new(queue));
    let mut readers = Vec::new();
    for _ in 0..FRESHNESS_READERS {
        let (queue, run) = (queue.clone(), run.clone());
        readers.push(tokio::spawn(async move {
            let mut sender = None;
            let (mut found, mut missing) = (Vec::new(), 0);
            loop {
                let job = queue.lock().await.recv().await;
                let Some((n, acked)) = job else { break };
                let path = format!("/v1/customers/cus_{run}_{n}");
                match load::poll_until_found(
                    &mut sender,
                    addr,
                    &path,
                    API_TOKEN,
                    FRESHNESS_POLL,
                    acked + FRESHNESS_CAP,
                )
                .await
                {
                    Some(at) => found.push(at.saturating_duration_since(acked).as_micros() as u64),
                    None => missing += 1,
                }
            }
            (found, missing)
        }));
    }
    while let Some((n, at)) = answers.recv().await {
        if n % FRESHNESS_SAMPLE == 0 {
            let _ = jobs.send((n, at));
        }
    }
    drop(jobs);
    let mut result = Freshness {
        latencies_us: Vec::new(),
        missing: 0,
    };
    for reader in readers {
        if let Ok((found, missing)) = reader.await {
            result.latencies_us.extend(found);
            result.missing += missing;
        }
    }
    result.latencies_us.sort_unstable();
    result
}
