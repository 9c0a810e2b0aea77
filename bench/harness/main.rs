//! partnerstack-sync's benchmark harness: `bench/run.sh` (or `cargo bench --bench harness`;
//! add `-- --quick` for a short smoke run).
//!
//! It starts a throwaway Postgres (the service's own embedded supervisor, default
//! durability), the release build of the service, and the load; measures the hot paths;
//! and runs, in the same run, pgbench doing the service's own SQL on the same server, so
//! each result is a ratio that holds on a noisy machine. It prints one table and writes it
//! to `bench/RESULTS.md`. Every loop is bounded in time and count, and everything it
//! started is stopped at the end.

mod feed;
mod load;
mod pgbench;
mod scenarios;
mod service;
mod writes;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use partnerstack_sync::db::embedded::EmbeddedPostgres;
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection};

use service::{Service, WEBHOOK_TOKEN};

/// How long each measurement runs.
struct Durations {
    warmup: Duration,
    throughput: Duration,
    latency: Duration,
}

/// One line of the results table.
struct Row {
    scenario: &'static str,
    metric: String,
    service: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(
        scenario: &'static str,
        metric: impl Into<String>,
        service: String,
        baseline: String,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Row {
        Row {
            scenario,
            metric: metric.into(),
            service,
            baseline,
            ratio,
            target: target.into(),
            met,
        }
    }
}

struct Bench {
    work: PathBuf,
    pg: EmbeddedPostgres,
    durations: Durations,
    rows: Vec<Row>,
    notes: Vec<String>,
}

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(quick)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(quick: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let durations = if quick {
        Durations {
            warmup: Duration::from_secs(1),
            throughput: Duration::from_secs(5),
            latency: Duration::from_secs(4),
        }
    } else {
        Durations {
            warmup: Duration::from_secs(5),
            throughput: Duration::from_secs(30),
            latency: Duration::from_secs(15),
        }
    };
    let work = std::env::temp_dir().join(format!("psync-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    }
    println!("bench: starting a throwaway Postgres in {}", work.display());
    let pg = EmbeddedPostgres::start(&work.join("pg"), &[]).await?;
    let mut bench = Bench {
        work: work.clone(),
        pg,
        durations,
        rows: Vec::new(),
        notes: Vec::new(),
    };

    let result = async {
        ingest(&mut bench).await.context("ingest scenario")?;
        feed::latency(&mut bench)
            .await
            .context("feed latency scenario")?;
        writes::writes(&mut bench)
            .await
            .context("writes scenario")?;
        scenarios::reconcile(&mut bench, quick)
            .await
            .context("reconcile scenario")?;
        scenarios::query(&mut bench, quick)
            .await
            .context("query scenario")?;
        footprint(&mut bench).await.context("footprint scenario")?;
        anyhow::Ok(())
    }
    .await;

    bench.pg.stop().await?;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    let report = render(&bench, quick, started.elapsed());
    println!("\n{report}");
    if !quick {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
        std::fs::write(&path, &report)?;
        println!("bench: wrote {}", path.display());
    }
    Ok(())
}

impl Bench {
    /// A fresh database on the throwaway server, migrated; returns its URL.
    async fn database(&self, name: &str) -> anyhow::Result<String> {
        let url = self.pg.url().expose_secret().to_string();
        let mut admin = PgConnection::connect(&url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let url = url.replace("/partnerstack_sync", &format!("/{name}"));
        let pool = sqlx::PgPool::connect(&url).await?;
        partnerstack_sync::db::MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok(url)
    }

    fn row(&mut self, row: Row) {
        println!(
            "  {:<10} {:<44} service {:>12}  baseline {:>12}  ratio {:>6}  target {:<18} {}",
            row.scenario,
            row.metric,
            row.service,
            row.baseline,
            row.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            row.target,
            verdict(row.met)
        );
        self.rows.push(row);
    }
}

async fn count(url: &str, sql: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(url).await?;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(n)
}

/// Scenario 1: webhook ingest, throughput at concurrency 32 and latency at fixed rates.
async fn ingest(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: ingest");
    let d = &bench.durations;
    let (warmup, throughput, latency) = (d.warmup, d.throughput, d.latency);

    // Baseline first, on a database of its own.
    let base_url = bench.database("bench_pgbench").await?;
    let script = pgbench::per_delivery_script();
    let base = pgbench::run(
        &base_url,
        &script,
        32,
        throughput,
        None,
        &bench.work,
        "per-delivery",
    )?;
    println!("  pgbench per-delivery baseline: {:.0} tps", base.tps);

    let url = bench.database("bench_ingest").await?;
    let svc = Service::start(&url, &[]).await?;
    let workload = Arc::new(load::Deliveries {
        path: format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}"),
        run: "tp".into(),
    });
    let (sampler, stop_sampler) = service::sample_peak_rss(svc.pid());
    let stats = load::closed(svc.addr, workload.clone(), 32, warmup, throughput).await?;
    let _ = stop_sampler.send(());
    let peak_rss = sampler.await?;
    // Everything acknowledged must be stored, exactly: nothing more, nothing less.
    let stored = count(&url, "SELECT count(*) FROM webhook_events").await?;
    let drained = Instant::now();
    while count(
        &url,
        "SELECT count(*) FROM webhook_events WHERE outcome = 'pending'",
    )
    .await?
        > 0
        && drained.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let apply_lag = drained.elapsed();
    let acknowledged = (stats.ok + stats.warmup_ok) as i64;
    let exact = stored == acknowledged && stats.failed == 0;
    bench.notes.push(format!(
        "Ingest throughput run: {} deliveries acknowledged in the measured {:.0} s, {} non-2xx; \
         the log holds {stored} rows for {acknowledged} acknowledgements (warm-up included): {}. \
         The applier finished applying {:.1} s after the load stopped.",
        stats.ok,
        throughput.as_secs_f64(),
        stats.failed,
        if exact { "exact" } else { "MISMATCH" },
        apply_lag.as_secs_f64()
    ));
    let ratio = stats.rate() / base.tps;
    bench.row(Row::new(
        "ingest",
        "throughput, deliveries/s (c=32)",
        format!("{:.0}", stats.rate()),
        format!("{:.0}", base.tps),
        Some(ratio),
        ">= 1.0x baseline",
        Some(ratio >= 1.0 && exact),
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

    for rate in [500.0, 2000.0] {
        let workload = Arc::new(load::Deliveries {
            path: format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}"),
            run: format!("lat{rate}"),
        });
        let stats = load::open(svc.addr, workload, rate, 64, latency).await?;
        let base = pgbench::run(
            &base_url,
            &script,
            32,
            latency,
            Some(rate),
            &bench.work,
            "per-delivery-rate",
        )?;
        let (p50, p99, p999) = (
            stats.quantile_ms(0.5),
            stats.quantile_ms(0.99),
            stats.quantile_ms(0.999),
        );
        let ratio = p99 / base.quantile_ms(0.99);
        bench.row(Row::new(
            "ingest",
            format!("latency at {rate:.0}/s, p50/p99/p99.9 ms"),
            format!("{p50:.1}/{p99:.1}/{p999:.1}"),
            format!(
                "{:.1}/{:.1}/{:.1}",
                base.quantile_ms(0.5),
                base.quantile_ms(0.99),
                base.quantile_ms(0.999)
            ),
            Some(ratio),
            if rate >= 2000.0 {
                "p99 <= 1.5x baseline"
            } else {
                "(reported)"
            },
            (rate >= 2000.0).then_some(ratio <= 1.5 && stats.failed == 0),
        ));
    }
    svc.stop().await?;
    Ok(())
}

/// Scenario 4: footprint: idle RSS, binary size, cold start.
async fn footprint(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: footprint");
    let url = bench.database("bench_footprint").await?;
    let mut starts = Vec::new();
    let mut idle = 0.0;
    for i in 0..5 {
        let svc = Service::start(&url, &[]).await?;
        starts.push(svc.ready_in);
        if i == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            idle = svc.rss_mib();
        }
        svc.stop().await?;
    }
    starts.sort();
    let cold = starts[starts.len() / 2];
    let size = std::fs::metadata(service::binary())?.len() as f64 / (1024.0 * 1024.0);
    bench.row(Row::new(
        "footprint",
        "idle RSS of serve, MiB",
        format!("{idle:.1}"),
        "-".into(),
        None,
        "< 30 MiB",
        Some(idle < 30.0),
    ));
    bench.row(Row::new(
        "footprint",
        "cold start to ready (median of 5), ms",
        format!("{}", cold.as_millis()),
        "-".into(),
        None,
        "< 1000 ms",
        Some(cold < Duration::from_secs(1)),
    ));
    bench.row(Row::new(
        "footprint",
        "release binary size, MiB",
        format!("{size:.1}"),
        "-".into(),
        None,
        "(reported)",
        None,
    ));
    Ok(())
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let postgres = partnerstack_sync::db::embedded::find_bin_dir()
        .map(|d| command_line(&d.join("postgres").to_string_lossy(), &["--version"]))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "- CPU: {cpu}, {cores} cores available\n- Memory: {mem_gib:.1} GiB\n- Kernel: {}\n- {postgres}\n- {}\n- partnerstack-sync {}",
        command_line("uname", &["-sr"]),
        command_line("rustc", &["--version"]),
        env!("CARGO_PKG_VERSION"),
    )
}

fn render(bench: &Bench, quick: bool, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark results\n");
    let _ = writeln!(
        out,
        "Produced by `bench/run.sh`{} in {:.0} s. Service and baseline ran in the same run, on the \
         same throwaway Postgres (default durability: fsync and synchronous_commit on), on one \
         machine shared by the service, Postgres and the load generator.\n",
        if quick { " --quick" } else { "" },
        took.as_secs_f64()
    );
    let _ = writeln!(out, "## Machine\n\n{}\n", machine());
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "| scenario | metric | service | baseline | service/baseline | target | |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in &bench.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            r.service,
            r.baseline,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            r.target,
            verdict(r.met)
        );
    }
    let _ = writeln!(out, "\n## Notes\n");
    for n in &bench.notes {
        let _ = writeln!(out, "- {n}");
    }
    let _ = writeln!(
        out,
        "- Baselines: pgbench (`--protocol=prepared`) runs the service's own statements, taken \
         from the library (`db::events::INSERT_EVENTS_SQL`, `apply::upsert_sql_for`), with array \
         parameters built in SQL. The per-delivery baseline is one event insert plus one customer \
         upsert per transaction, the cost the service would pay without shared commits. Latency \
         baselines include pgbench's schedule lag, as the service's are measured from each \
         request's scheduled time."
    );
    // The analysis of missed targets comes from profiling sessions, kept beside the harness.
    let analysis = include_str!("../analysis.md");
    let _ = writeln!(out, "\n{analysis}");
    out
}
