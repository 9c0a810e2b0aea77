//! Scenarios 2 and 3: reconcile and query, each against its pgbench baseline.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use partnerstack::Entity;
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection};

use crate::service::{self, API_TOKEN, Service};
use crate::{Bench, Row, Spread, count, load, pgbench};

const PUBLIC_KEY: &str = "pk_bench_0123456789";
const SECRET_KEY: &str = "sk_bench_0123456789";

/// A `simulate` process with `scale` times (5k partners, 30k customers, 40k transactions,
/// 15k rewards, 5k deals, 5k leads) objects.
struct Simulator {
    child: std::process::Child,
    base_url: String,
}

impl Simulator {
    async fn start(scale: usize) -> anyhow::Result<Simulator> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let n = |base: usize| (base * scale / 100_000).max(1).to_string();
        let child = std::process::Command::new(service::binary())
            .args([
                "simulate",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--seed",
                "42",
            ])
            .args([
                "--groups",
                "10",
                "--partners",
                &n(5_000),
                "--customers",
                &n(30_000),
            ])
            .args(["--transactions", &n(40_000), "--rewards", &n(15_000)])
            .args(["--deals", &n(5_000), "--leads", &n(5_000)])
            .env("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY)
            .env("PARTNERSTACK_SECRET_KEY", SECRET_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut sim = Simulator {
            child,
            base_url: format!("http://127.0.0.1:{port}/api/v2"),
        };
        let http = partnerstack::http::builder().build()?;
        let started = Instant::now();
        loop {
            if let Some(status) = sim.child.try_wait()? {
                anyhow::bail!("simulate exited: {status}");
            }
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/admin/stats"))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(sim);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "simulate did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `reconcile --full` run.
struct ReconcileRun {
    objects: i64,
    rate: f64,
    peak_rss: f64,
    /// The process's own CPU time, seconds.
    cpu: f64,
    /// CPU time, seconds, of Postgres and of the stand-in serving the pages, in the same
    /// interval (all three share the machine's cores).
    postgres_cpu: f64,
    stand_in_cpu: f64,
}

/// `reconcile --full` of a fresh database against a stand-in of `scale` objects: objects
/// per second, the process's peak RSS and its CPU time.
async fn reconcile_run(bench: &Bench, scale: usize) -> anyhow::Result<ReconcileRun> {
    use nix::sys::resource::{UsageWho, getrusage};
    let sim = Simulator::start(scale).await?;
    let url = bench.database("bench_reconcile").await?;
    // The reconcile process is the only child that ends while it runs, so the change in
    // the children's CPU time is its own.
    let children = || {
        getrusage(UsageWho::RUSAGE_CHILDREN).map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
    };
    let cpu = children()?;
    let (pg_pid, sim_pid) = (bench.pg.pid().unwrap_or(0), sim.child.id());
    let (postgres_cpu, stand_in_cpu) = (
        service::postgres_cpu_seconds(pg_pid),
        service::cpu_seconds(sim_pid),
    );
    let started = Instant::now();
    let child = tokio::process::Command::new(service::binary())
        .args(["reconcile", "--full"])
        .env("DATABASE_URL", &url)
        .env("PARTNERSTACK_BASE_URL", &sim.base_url)
        .env("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY)
        .env("PARTNERSTACK_SECRET_KEY", SECRET_KEY)
        .env("PARTNERSTACK_REQUESTS_PER_SECOND", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let (sampler, stop) = service::sample_peak_rss(pid);
    let output = child.wait_with_output().await?;
    let took = started.elapsed();
    let cpu = children()? - cpu;
    let postgres_cpu = service::postgres_cpu_seconds(pg_pid) - postgres_cpu;
    let stand_in_cpu = service::cpu_seconds(sim_pid) - stand_in_cpu;
    let _ = stop.send(());
    let peak_rss = sampler.await?;
    anyhow::ensure!(output.status.success(), "reconcile --full failed");
    bench.statements(&url, "reconcile").await?;
    let mut objects = 0;
    for entity in Entity::ALL {
        objects += count(
            &url,
            &format!(
                "SELECT count(*) FROM {}",
                partnerstack_sync::columns::table(entity)
            ),
        )
        .await?;
    }
    Ok(ReconcileRun {
        objects,
        rate: objects as f64 / took.as_secs_f64(),
        peak_rss,
        cpu,
        postgres_cpu,
        stand_in_cpu,
    })
}

/// Rows per page in the baseline: the default page size (`partnerstack.page_size`).
const PAGE_ROWS: usize = 250;

/// Scenario 2: reconcile from empty against `simulate`.
pub async fn reconcile(bench: &mut Bench, quick: bool) -> anyhow::Result<()> {
    println!("bench: reconcile");
    let base_url = bench.database("bench_pages").await?;
    let duration = if quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(15)
    };
    // Pages of every stream, in the proportions of the stand-in's program.
    let scripts: Vec<(String, u32)> = [
        (Entity::Partner, 5),
        (Entity::Customer, 30),
        (Entity::Transaction, 40),
        (Entity::Reward, 15),
        (Entity::Deal, 5),
        (Entity::Lead, 5),
    ]
    .into_iter()
    .map(|(entity, weight)| (pgbench::page_apply_script(entity, PAGE_ROWS), weight))
    .collect();
    let (small, large) = if quick {
        (20_000, 50_000)
    } else {
        (100_000, 1_000_000)
    };
    let mut runs = Vec::new();
    let mut base_rows = Vec::new();
    for _ in 0..bench.durations.repetitions {
        let base = pgbench::run_weighted(
            &base_url,
            &scripts,
            1,
            duration,
            None,
            &bench.work,
            "page-apply",
        )?;
        base_rows.push(base.tps * PAGE_ROWS as f64);
        runs.push(reconcile_run(bench, small).await?);
    }
    let objects = runs[0].objects;
    let ratio = Spread::of(
        &runs
            .iter()
            .zip(&base_rows)
            .map(|(r, b)| r.rate / b)
            .collect::<Vec<_>>(),
    );
    bench.row(Row::new(
        "reconcile",
        format!("reconcile --full of {objects} objects, objects/s"),
        Spread::of(&runs.iter().map(|r| r.rate).collect::<Vec<_>>()).show(0),
        Spread::of(&base_rows).show(0),
        Some(ratio),
        ">= 0.8x baseline",
        Some(ratio.median >= 0.8),
    ));
    let large_run = reconcile_run(bench, large).await?;
    let peak_small = Spread::of(&runs.iter().map(|r| r.peak_rss).collect::<Vec<_>>()).median;
    let growth = large_run.peak_rss / peak_small;
    bench.row(Row::new(
        "reconcile",
        format!("peak RSS, {objects} vs {} objects, MiB", large_run.objects),
        format!("{peak_small:.1} / {:.1}", large_run.peak_rss),
        "-".into(),
        Some(Spread::one(growth)),
        "within 10% (ratio <= 1.10)",
        Some(growth <= 1.10),
    ));
    let all: Vec<&ReconcileRun> = runs.iter().chain([&large_run]).collect();
    let per_object = |f: &dyn Fn(&ReconcileRun) -> f64| {
        Spread::of(
            &all.iter()
                .map(|r| f(r) / r.objects.max(1) as f64 * 1e6)
                .collect::<Vec<_>>(),
        )
    };
    let stand_in = per_object(&|r| r.stand_in_cpu);
    bench.cpu(
        "per reconciled object",
        per_object(&|r| r.cpu),
        Some(per_object(&|r| r.postgres_cpu).median),
    );
    bench.notes.push(format!(
        "Reconcile CPU: the stand-in serving the pages used {} µs per object (median, range) \
         on the same cores as the reconciler and Postgres; the baseline has no pages to serve.",
        stand_in.show(0)
    ));
    bench.notes.push(format!(
        "Reconcile: one `reconcile --full` process, page size 250 (the default), pages \
         fetched ahead while earlier ones are applied (up to four per commit); {} objects ran \
         at {:.0}/s. Baseline: pgbench, 1 client (the reconciler applies one page at a time), \
         {PAGE_ROWS}-row pages of new objects of every stream, in the stand-in's proportions \
         (partners 5, customers 30, transactions 40, rewards 15, deals 5, leads 5), each \
         object about 400 bytes of JSON (the stand-in's are 350-600) with text values of its \
         own (so a page spreads over partners, as the stand-in's do), written \
         with the statements apply() runs per page, taken from the library: the change log's \
         locking read of the page's keys, the upsert (which credits transactions), and the \
         change log's append ({}); the partner totals' triggers fire as they do for the \
         service. It leaves out what only a full scan adds per page: fetching and reading the \
         page, the record of seen keys and the checkpoint, so the ratio is the service's \
         overhead over the SQL its pages cost.",
        large_run.objects,
        large_run.rate,
        Spread::of(
            &base_rows
                .iter()
                .map(|r| r / PAGE_ROWS as f64)
                .collect::<Vec<_>>()
        )
        .show(0)
            + " pages/s",
    ));
    Ok(())
}

/// Loads 1,000 partners, 1,000,000 customers, 1,000,000 transactions and 200,000
/// rewards into `url` with SQL (the query scenario is about reading).
async fn load_program(url: &str, customers: i64) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let statements = [
        "INSERT INTO partners (key, partner_key, email, group_key, created_at, updated_at, observed_at, raw, source, synced_at)
         SELECT 'part_' || i, 'partner_' || i, 'p' || i || '@example.com', 'grup_' || (i % 3),
                timestamptz '2024-01-01' + i * interval '1 minute', now(), now(), '{}', 'reconcile', now()
         FROM generate_series(0, 999) i",
        "INSERT INTO customers (key, customer_key, email, name, partner_key, partnership_key, test, created_at, updated_at, observed_at, raw, source, synced_at)
         SELECT 'cus_' || i, 'acct_' || i, 'c' || i || '@example.com', 'Customer ' || i,
                'partner_' || (i % 1000), 'part_' || (i % 1000), false,
                timestamptz '2024-01-01' + i * interval '1 second', now(), now(),
                jsonb_build_object('key', 'cus_' || i, 'email', 'c' || i || '@example.com'), 'webhook', now()
         FROM generate_series(1, $1) i",
        // Credited as apply() would: to the partner of their customer cus_i (checked below).
        "INSERT INTO transactions (key, amount, amount_usd, currency, approved, archived, status, customer_key, customer_external_key, credited_partner_key, credited_partnership_key, created_at, updated_at, observed_at, raw, source, synced_at)
         SELECT 'txn_' || i, CASE WHEN i % 50 = 0 THEN -1500 ELSE 4999 END, 4999,
                CASE WHEN i % 4 = 0 THEN 'EUR' ELSE 'USD' END, i % 3 = 0, false,
                CASE WHEN i % 3 = 0 THEN 'approved' ELSE 'pending' END,
                'cus_' || i, 'acct_' || i, 'partner_' || (i % 1000), 'part_' || (i % 1000),
                timestamptz '2024-01-01' + i * interval '1 second', now(), now(),
                jsonb_build_object('key', 'txn_' || i), 'webhook', now()
         FROM generate_series(1, $1) i",
        "INSERT INTO rewards (key, amount, currency, reward_status, partnership_key, customer_key, transaction_key, created_at, updated_at, observed_at, raw, source, synced_at)
         SELECT 'rew_' || i, 500, 'USD', (ARRAY['pending','approved','paid'])[1 + i % 3],
                'part_' || (i % 1000), 'cus_' || i, 'txn_' || i,
                timestamptz '2024-01-01' + i * interval '1 second', now(), now(),
                jsonb_build_object('key', 'rew_' || i), 'webhook', now()
         FROM generate_series(1, $1 / 5) i",
        // What autovacuum does on a live database: statistics, and the visibility map
        // index-only scans rely on.
        "VACUUM ANALYZE",
    ];
    for sql in statements {
        let mut q = sqlx::query(sql);
        if sql.contains("$1") {
            q = q.bind(customers);
        }
        q.execute(&mut conn).await?;
    }
    // The loaded credits are the ones the service's own rule gives: re-crediting a sample
    // through the library changes nothing.
    let sample: Vec<String> = (1..=customers)
        .step_by(997)
        .map(|i| format!("txn_{i}"))
        .collect();
    let sample: Vec<&str> = sample.iter().map(String::as_str).collect();
    let changed = partnerstack_sync::db::attribution::credit(&mut conn, &sample, &[], &[]).await?;
    anyhow::ensure!(
        changed == 0,
        "{changed} loaded transactions were credited differently from the service's rule"
    );
    conn.close().await?;
    Ok(())
}

/// One run of a query workload and its baseline.
struct QueryRun {
    rate: f64,
    p99: f64,
    failed: u64,
    base_tps: f64,
    base_p99: f64,
    /// CPU per request (warm-up included), µs: the service's, and Postgres'.
    cpu_us: f64,
    pg_cpu_us: f64,
}

/// One statement as Postgres logged it, with its parameters substituted.
#[derive(Debug)]
struct Logged {
    pid: String,
    sql: String,
}

/// Reads the statements Postgres logged (with `log_min_duration_statement = 0`) from
/// `text`, parameters substituted as the literals Postgres printed.
fn logged_statements(text: &str) -> Vec<Logged> {
    let mut out: Vec<Logged> = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some((pid, sql)) = line
            .split_once("] LOG:  duration: ")
            .and_then(|(head, rest)| Some((head.rsplit_once('[')?.1, rest.split_once(": ")?.1)))
            .filter(|(_, _)| line.contains(" execute "))
        {
            let mut sql = sql.to_string();
            while let Some(next) = lines.peek() {
                if let Some(cont) = next.strip_prefix('\t') {
                    sql.push(' ');
                    sql.push_str(cont);
                    lines.next();
                } else {
                    break;
                }
            }
            if let Some((pid, sql)) = current.take() {
                out.push(Logged { pid, sql });
            }
            current = Some((pid.to_string(), sql));
        } else if let Some(params) = line.split_once("DETAIL:  parameters: ").map(|(_, p)| p)
            && let Some((pid, sql)) = current.take()
        {
            let values = parse_parameters(params);
            let sql = substitute(&sql, values.len(), |n| values[n - 1].clone());
            out.push(Logged { pid, sql });
        }
    }
    if let Some((pid, sql)) = current {
        out.push(Logged { pid, sql });
    }
    out
}

/// `$1 = 'a', $2 = NULL, $3 = 'it''s'` as SQL literals, in order.
fn parse_parameters(text: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find(" = ") {
        rest = &rest[eq + 3..];
        if let Some(after) = rest.strip_prefix("NULL") {
            values.push("NULL".to_string());
            rest = after;
            continue;
        }
        // A quoted literal: '' inside is an escaped quote.
        let bytes = rest.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            if bytes[i] == b'\'' {
                if bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                break;
            }
            i += 1;
        }
        values.push(rest[..(i + 1).min(rest.len())].to_string());
        rest = &rest[(i + 1).min(rest.len())..];
    }
    values
}

/// Replaces every `$n` of `sql` by `value(n)`, highest first, and puts it on one line.
fn substitute(sql: &str, binds: usize, value: impl Fn(usize) -> String) -> String {
    let mut out = sql.to_string();
    for n in (1..=binds).rev() {
        let placeholder = format!("${n}");
        let mut from = 0;
        while let Some(at) = out[from..].find(&placeholder).map(|i| i + from) {
            let end = at + placeholder.len();
            if out[end..].starts_with(|c: char| c.is_ascii_digit()) {
                from = end;
                continue;
            }
            let v = value(n);
            out.replace_range(at..end, &v);
            from = at + v.len();
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs `requests` (one after another, one connection) while Postgres logs every
/// statement, and returns the statements each request ran, as literal SQL.
async fn capture(bench: &Bench, url: &str, paths: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    // Generous bounds on waiting for Postgres; neither decides anything but a hang.
    const PATIENCE: Duration = Duration::from_secs(30);
    let log_path = bench.work.join("pg/postgres.log");
    let admin_url = bench.pg.url().expose_secret().to_string();
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query("ALTER SYSTEM SET log_min_duration_statement = 0")
        .execute(&mut admin)
        .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await?;
    // The reload is asynchronous. The postmaster signals every backend at once, so when
    // this one has the new setting, the service's have it too (applied before their next
    // statement).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let setting: String = sqlx::query_scalar("SHOW log_min_duration_statement")
            .fetch_one(&mut admin)
            .await?;
        if setting == "0" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "log_min_duration_statement still {setting} {PATIENCE:?} after the reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from = std::fs::metadata(&log_path)?.len();
    let http = partnerstack::http::builder().build()?;
    for path in paths {
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    }
    // Read the log until every request's statements are in it.
    let deadline = Instant::now() + PATIENCE;
    let requests = loop {
        let text = std::fs::read(&log_path)?;
        let requests = logged_requests(&String::from_utf8_lossy(&text[from as usize..]));
        if requests.len() >= paths.len() || Instant::now() >= deadline {
            break requests;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sqlx::query("ALTER SYSTEM RESET log_min_duration_statement")
        .execute(&mut admin)
        .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    anyhow::ensure!(
        requests.len() == paths.len(),
        "captured {} requests of {}",
        requests.len(),
        paths.len()
    );
    Ok(requests)
}

/// The statements of each request in a stretch of the statement log: the partner
/// look-up, then the read it serves.
fn logged_requests(text: &str) -> Vec<Vec<String>> {
    let reads: Vec<Logged> = logged_statements(text)
        .into_iter()
        .filter(|l| {
            ["FROM partners", "FROM customers", "FROM partner_totals"]
                .iter()
                .any(|from| l.sql.contains(from))
        })
        .collect();
    let mut requests: Vec<Vec<String>> = Vec::new();
    let mut open: std::collections::HashMap<String, Vec<String>> = Default::default();
    for l in reads {
        let entry = open.entry(l.pid.clone()).or_default();
        let lookup = l.sql.starts_with("SELECT key, partner_key FROM partners");
        entry.push(l.sql);
        if !lookup {
            requests.push(std::mem::take(entry));
        }
    }
    requests
}

/// pgbench over captured requests: one script per request, chosen at random.
fn replay(
    bench: &Bench,
    url: &str,
    requests: &[Vec<String>],
    label: &str,
    duration: Duration,
) -> anyhow::Result<pgbench::Run> {
    let scripts: Vec<String> = requests
        .iter()
        .take(100)
        .map(|statements| statements.iter().map(|s| format!("{s};\n")).collect())
        .collect();
    pgbench::run_scripts(url, &scripts, 8, duration, None, &bench.work, label)
}

/// Scenario 3: reads on a large program: a partner's customers, 100 per page, and the
/// partner summary, at concurrency 8.
pub async fn query(bench: &mut Bench, quick: bool) -> anyhow::Result<()> {
    println!("bench: query");
    let customers: i64 = if quick { 100_000 } else { 1_000_000 };
    let url = bench.database("bench_query").await?;
    let loading = Instant::now();
    load_program(&url, customers).await?;
    println!(
        "  loaded {customers} customers and transactions in {:.0} s",
        loading.elapsed().as_secs_f64()
    );
    let d = &bench.durations;
    let (warmup, duration) = (d.warmup, d.latency.max(Duration::from_secs(4)) * 2);

    let list_paths: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "/v1/customers?partner_key=partner_{}&limit=100",
                (i * 7919) % 1000
            )
        })
        .collect();
    let summary_paths: Vec<String> = (0..1000)
        .map(|i| format!("/v1/partners/part_{}/summary", (i * 7919) % 1000))
        .collect();

    let svc = Service::start(&url, &[]).await?;
    // What the service sends to Postgres for these requests, for pgbench to replay.
    let base = format!("http://{}", svc.addr);
    let list_sql = capture(bench, &base, &list_paths[..100]).await?;
    let summary_sql = capture(bench, &base, &summary_paths[..100]).await?;
    let lists = Arc::new(load::Gets {
        paths: list_paths,
        token: API_TOKEN.into(),
    });
    let summaries = Arc::new(load::Gets {
        paths: summary_paths,
        token: API_TOKEN.into(),
    });
    // Service and baseline in turns; the service idles while pgbench runs.
    let reps = bench.durations.repetitions;
    let pg_pid = bench.pg.pid().unwrap_or(0);
    let mut runs: [Vec<QueryRun>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..reps {
        for (i, (workload, captured, label)) in [
            (lists.clone(), &list_sql, "query-list"),
            (summaries.clone(), &summary_sql, "query-summary"),
        ]
        .into_iter()
        .enumerate()
        {
            let (cpu, pg_cpu) = (svc.cpu_seconds(), service::postgres_cpu_seconds(pg_pid));
            let stats = load::closed(svc.addr, workload, 8, warmup, duration).await?;
            let cpu = svc.cpu_seconds() - cpu;
            let pg_cpu = service::postgres_cpu_seconds(pg_pid) - pg_cpu;
            let base = replay(bench, &url, captured, label, duration)?;
            let requests = (stats.ok + stats.warmup_ok).max(1) as f64;
            runs[i].push(QueryRun {
                rate: stats.rate(),
                p99: stats.quantile_ms(0.99),
                failed: stats.failed,
                base_tps: base.tps,
                base_p99: base.quantile_ms(0.99),
                cpu_us: cpu / requests * 1e6,
                pg_cpu_us: pg_cpu / requests * 1e6,
            });
        }
    }
    svc.stop().await?;

    for (what, runs, rate_target) in [
        ("a partner's customers, 100 per page", &runs[0], true),
        ("partner summary", &runs[1], false),
    ] {
        let spread =
            |f: &dyn Fn(&QueryRun) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        let ratio = spread(&|r| r.rate / r.base_tps);
        bench.row(Row::new(
            "query",
            format!("{what}: req/s (c=8)"),
            spread(&|r| r.rate).show(0),
            spread(&|r| r.base_tps).show(0),
            Some(ratio),
            if rate_target {
                ">= 0.5x baseline"
            } else {
                "(reported)"
            },
            rate_target.then_some(ratio.median >= 0.5 && failed == 0),
        ));
        let p99 = spread(&|r| r.p99);
        bench.row(Row::new(
            "query",
            format!("{what}: p99 ms"),
            p99.show(2),
            spread(&|r| r.base_p99).show(2),
            Some(spread(&|r| r.p99 / r.base_p99)),
            "< 10 ms",
            Some(p99.median < 10.0 && failed == 0),
        ));
        bench.cpu(
            &format!("per query, {what}"),
            spread(&|r| r.cpu_us),
            Some(spread(&|r| r.pg_cpu_us).median),
        );
    }
    bench.notes.push(format!(
        "Query: {customers} customers and transactions and {} rewards across 1,000 partners \
         (about {} customers each), loaded with SQL; each request picks one of 1,000 partners. \
         The list is the first 100-item keyset page of the partner's customers. Baselines: \
         pgbench replaying, with 8 clients, the statements the service sent to Postgres for \
         100 of these requests (captured from Postgres' statement log, parameters included): \
         the partner look-up and the read, per request.",
        customers / 5,
        customers / 1000
    ));
    Ok(())
}
