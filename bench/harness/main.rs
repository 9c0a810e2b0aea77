//! partnerstack-sync's benchmark harness: `bench/run.sh` (or `cargo bench --bench harness`;
//! add `-- --quick` for a short smoke run).
//!
//! It starts a throwaway Postgres (the service's own embedded supervisor, default
//! durability), the release build of the service, and the load; measures the hot paths;
//! and runs, in the same run, pgbench doing the service's own SQL on the same server, so
//! each result is a ratio that holds on a noisy machine. It prints one table and writes it
//! to `bench/RESULTS.md`. Every loop is bounded in time and count, and everything it
//! started is stopped at the end.

mod budget;
mod common;
mod crowds;
/// nginx and PgBouncer from their own configuration, as the deployment tests run them
/// (test support: it fails by panicking, as the harness does on a broken setup).
#[allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
#[path = "../../tests/it/topology.rs"]
mod deployment;
mod feed;
mod ingest;
mod load;
mod pgbench;
mod scenarios;
mod service;
mod topology;
mod writes;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use partnerstack_sync::db::embedded::EmbeddedPostgres;
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection};

use service::Service;

/// How long each measurement runs.
struct Durations {
    warmup: Duration,
    throughput: Duration,
    latency: Duration,
    /// Runs of each measurement a ratio is taken from (median and range reported).
    repetitions: usize,
}

/// Repeated measurements of one quantity: their median and range.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    /// The median (the mean of the middle two for an even count) and range of `values`.
    fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread::one(f64::NAN);
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }

    fn one(value: f64) -> Spread {
        Spread {
            median: value,
            min: value,
            max: value,
            n: 1,
        }
    }

    /// `median (min-max)` with `decimals` decimals; the median alone for one value.
    fn show(&self, decimals: usize) -> String {
        if self.n > 1 {
            format!(
                "{:.d$} ({:.d$}-{:.d$})",
                self.median,
                self.min,
                self.max,
                d = decimals
            )
        } else {
            format!("{:.d$}", self.median, d = decimals)
        }
    }
}

/// One line of the results table.
struct Row {
    scenario: &'static str,
    metric: String,
    service: String,
    baseline: String,
    ratio: Option<Spread>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(
        scenario: &'static str,
        metric: impl Into<String>,
        service: String,
        baseline: String,
        ratio: Option<Spread>,
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
    quick: bool,
    /// `--profile`: Postgres runs with `pg_stat_statements`, and each scenario prints the
    /// statements that took the most time (for profiling sessions; off in recorded runs).
    profile: bool,
}

/// The command line: `--quick`, `--only a,b` (scenarios by name), `--profile`.
struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    profile: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut options = Options {
            quick: false,
            only: None,
            profile: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--profile" => options.profile = true,
                "--only" => {
                    let list = args.next().context("--only needs a list of scenarios")?;
                    let names: Vec<String> = list.split(',').map(str::to_string).collect();
                    if let Some(unknown) = names.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
                        anyhow::bail!("unknown scenario {unknown:?}; known: {SCENARIOS:?}");
                    }
                    options.only = Some(names);
                }
                // cargo bench passes --bench to harness-less benches.
                "--bench" => {}
                other => anyhow::bail!("unknown argument {other:?}"),
            }
        }
        Ok(options)
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == scenario))
    }
}

/// The scenarios, in the order they run.
const SCENARIOS: &[&str] = &[
    "ingest",
    "feed",
    "writes",
    "reconcile",
    "query",
    "topology",
    "footprint",
    "budget",
    "crowds",
];

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let quick = options.quick;
    let started = Instant::now();
    let durations = if quick {
        Durations {
            warmup: Duration::from_secs(1),
            throughput: Duration::from_secs(5),
            latency: Duration::from_secs(4),
            repetitions: 1,
        }
    } else {
        Durations {
            warmup: Duration::from_secs(3),
            throughput: Duration::from_secs(20),
            latency: Duration::from_secs(10),
            repetitions: 3,
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
    let settings: &[(&str, &str)] = if options.profile {
        &[
            ("shared_preload_libraries", "pg_stat_statements"),
            ("pg_stat_statements.track", "all"),
        ]
    } else {
        &[]
    };
    let pg = EmbeddedPostgres::start(&work.join("pg"), settings).await?;
    let mut bench = Bench {
        work: work.clone(),
        pg,
        durations,
        rows: Vec::new(),
        notes: Vec::new(),
        quick,
        profile: options.profile,
    };

    let result = async {
        if options.runs("ingest") {
            ingest::ingest(&mut bench)
                .await
                .context("ingest scenario")?;
        }
        if options.runs("feed") {
            feed::latency(&mut bench)
                .await
                .context("feed latency scenario")?;
        }
        if options.runs("writes") {
            writes::writes(&mut bench)
                .await
                .context("writes scenario")?;
        }
        if options.runs("reconcile") {
            scenarios::reconcile(&mut bench, quick)
                .await
                .context("reconcile scenario")?;
        }
        if options.runs("query") {
            scenarios::query(&mut bench, quick)
                .await
                .context("query scenario")?;
        }
        if options.runs("topology") {
            topology::topology(&mut bench)
                .await
                .context("topology scenario")?;
        }
        if options.runs("footprint") {
            footprint(&mut bench).await.context("footprint scenario")?;
        }
        if options.runs("budget") {
            budget::budget(&mut bench)
                .await
                .context("budget scenario")?;
        }
        // Last: it stops and freezes the Postgres every scenario shares.
        if options.runs("crowds") {
            crowds::crowds(&mut bench)
                .await
                .context("crowds scenario")?;
        }
        anyhow::Ok(())
    }
    .await;

    bench.pg.stop().await?;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    let report = render(&bench, quick, started.elapsed());
    println!("\n{report}");
    if !quick && options.only.is_none() && !options.profile {
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

    /// With `--profile`: prints the statements that took the most time in `url`'s
    /// database since the last report, then resets the counters.
    async fn statements(&self, url: &str, label: &str) -> anyhow::Result<()> {
        if !self.profile {
            return Ok(());
        }
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await?;
        let rows: Vec<(f64, i64, i64, f64, String)> = sqlx::query_as(
            "SELECT total_exec_time, calls, rows, shared_blks_dirtied::float8 / greatest(calls, 1),
                    regexp_replace(query, '\\s+', ' ', 'g')
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15",
        )
        .fetch_all(&mut conn)
        .await?;
        println!("  [profile] {label}: statements by total time");
        for (total, calls, n, dirtied, query) in rows {
            let short: String = query.chars().take(160).collect();
            println!(
                "  [profile] {total:>9.0} ms {calls:>8} calls {:>8.3} ms/call {n:>9} rows {dirtied:>6.1} dirtied/call  {short}",
                total / calls.max(1) as f64
            );
        }
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    /// A row of the service's own CPU time per unit of work (µs, from `/proc/<pid>/stat`),
    /// with Postgres' when it was measured too.
    fn cpu(&mut self, what: &str, service_us: Spread, postgres_us: Option<f64>) {
        let metric = match postgres_us {
            Some(pg) => format!("service CPU {what}, µs (Postgres: {pg:.0} µs)"),
            None => format!("service CPU {what}, µs"),
        };
        self.row(Row::new(
            "cpu",
            metric,
            service_us.show(0),
            "-".into(),
            None,
            "(reported)",
            None,
        ));
    }

    fn row(&mut self, row: Row) {
        println!(
            "  {:<10} {:<44} service {:>12}  baseline {:>12}  ratio {:>6}  target {:<18} {}",
            row.scenario,
            row.metric,
            row.service,
            row.baseline,
            row.ratio.map_or("-".into(), |r| r.show(2)),
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
            r.ratio.map_or("-".into(), |x| x.show(2)),
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
