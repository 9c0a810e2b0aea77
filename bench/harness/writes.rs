//! Scenario: writes through the outbox. Customer creates and their transactions are
//! posted to `/v1` at concurrency 16 against the stand-in (in this process, no faults);
//! measured: writes accepted per second (against pgbench doing the outbox insert), how
//! long the worker takes to send them all, and upstream requests per write (the target is
//! exactly 1: a look-up or a retry costs more).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::Full;
use hyper::Request;
use partnerstack_sim::Options;

use crate::load::{self, Workload};
use crate::service::{API_TOKEN, Service};
use crate::{Bench, Row, Spread, count, pgbench};

const PUBLIC_KEY: &str = "pk_bench_writes_0123";
const SECRET_KEY: &str = "sk_bench_writes_0123";

/// Customer creates, or transactions of customers created before.
enum Writes {
    Customers {
        partner_key: String,
    },
    /// Transactions spread over the first `customers` customers.
    Transactions {
        customers: u64,
    },
}

impl Workload for Writes {
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let (path, body) = match self {
            Writes::Customers { partner_key } => (
                "/v1/customers",
                format!(
                    r#"{{"customer_key":"bench-{n}","email":"bench{n}@example.com","partner_key":"{partner_key}"}}"#
                ),
            ),
            Writes::Transactions { customers } => (
                "/v1/transactions",
                format!(
                    r#"{{"key":"bench-txn-{n}","customer_key":"bench-{}","amount":{},"currency":"USD"}}"#,
                    n % customers.max(&1),
                    1000 + n % 97
                ),
            ),
        };
        Request::post(path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {API_TOKEN}"))
            .body(Full::new(Bytes::from(body)))
            .expect("static request parts are valid")
    }
}

/// Waits (at most 5 minutes) until no write is pending.
async fn drained(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(url, "SELECT count(*) FROM writes WHERE status = 'pending'").await? > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Writes accepted per second, time to send them, upstream requests per write.
pub async fn writes(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: writes");
    let throughput = bench.durations.throughput;
    let base_url = bench.database("bench_writes_pgbench").await?;
    let base = pgbench::run(
        &base_url,
        &pgbench::write_accept_script(),
        16,
        throughput,
        None,
        &bench.work,
        "write-accept",
    )?;
    println!("  pgbench outbox-insert baseline: {:.0} tps", base.tps);

    let sim = partnerstack_sim::start(
        &Options {
            partners: 20,
            customers: 50,
            transactions: 50,
            ..Options::small(10)
        },
        PUBLIC_KEY,
        SECRET_KEY,
    )
    .await?;
    let partner_key = sim.simulator.state(Some(partnerstack::Entity::Partner))["streams"]
        ["partnerships"][0]["partner_key"]
        .as_str()
        .unwrap_or("partner")
        .to_string();
    let url = bench.database("bench_writes").await?;
    let base_api = sim.base_url();
    let svc = Service::start(
        &url,
        &[
            ("PARTNERSTACK_BASE_URL", base_api.as_str()),
            ("PARTNERSTACK_PUBLIC_KEY", PUBLIC_KEY),
            ("PARTNERSTACK_SECRET_KEY", SECRET_KEY),
            ("PARTNERSTACK_REQUESTS_PER_SECOND", "100000"),
            ("PSYNC_WRITES_CONCURRENCY", "16"),
        ],
    )
    .await?;
    // Customers first, then transactions of those customers: half the time each.
    let half = throughput / 2;
    let accepted_at = Instant::now();
    let customers = load::closed(
        svc.addr,
        Arc::new(Writes::Customers { partner_key }),
        16,
        Duration::ZERO,
        half,
    )
    .await?;
    drained(&url).await?;
    let customers_sent = accepted_at.elapsed();
    bench.statements(&url, "writes: customer creates").await?;
    let transactions_at = Instant::now();
    let transactions = load::closed(
        svc.addr,
        Arc::new(Writes::Transactions {
            customers: customers.ok,
        }),
        16,
        Duration::ZERO,
        half,
    )
    .await?;
    let accepting = accepted_at.elapsed();
    drained(&url).await?;
    let drained = accepted_at.elapsed();
    let transactions_sent = transactions_at.elapsed();
    bench
        .statements(&url, "writes: transaction creates")
        .await?;
    // Counted with the service stopped, so the figures below are of one moment (a write
    // still being sent would otherwise finish between two counts).
    svc.stop().await?;
    let writes = count(&url, "SELECT count(*) FROM writes").await?;
    let succeeded = count(
        &url,
        "SELECT count(*) FROM writes WHERE status = 'succeeded'",
    )
    .await?;
    // Requests per write over the writes that finished: one still pending when the drain's
    // cap ran out may have made none yet, which says nothing about repeats.
    let requests = count(
        &url,
        "SELECT COALESCE(sum(upstream_requests), 0)::bigint FROM writes WHERE status <> 'pending'",
    )
    .await?;
    let finished = count(
        &url,
        "SELECT count(*) FROM writes WHERE status <> 'pending'",
    )
    .await?;
    // Why writes failed (none should, with no faults), for the notes.
    let failures: Vec<(String, i64, Option<String>)> = {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
        let rows = sqlx::query_as(
            "SELECT kind, upstream_requests::bigint, error_message FROM writes
             WHERE status = 'failed' ORDER BY id LIMIT 3",
        )
        .fetch_all(&mut conn)
        .await?;
        sqlx::Connection::close(conn).await?;
        rows
    };
    for (kind, requests, message) in &failures {
        println!("  failed write: {kind}, {requests} requests: {message:?}");
    }
    sim.stop().await?;

    let accepted = customers.ok + transactions.ok;
    let failed = customers.failed + transactions.failed;
    let accept_rate = accepted as f64 / (customers.elapsed + transactions.elapsed).as_secs_f64();
    let per_write = requests as f64 / finished.max(1) as f64;
    let sent_rate = succeeded as f64 / drained.as_secs_f64();
    let succeeded_of = async |kind: &str| {
        let sql =
            format!("SELECT count(*) FROM writes WHERE status = 'succeeded' AND kind = '{kind}'");
        count(&url, &sql).await
    };
    let (customers_ok, transactions_ok) = (
        succeeded_of("create_customer").await?,
        succeeded_of("create_transaction").await?,
    );
    bench.notes.push(format!(
        "Writes: {} customer creates, then {} transactions of those customers, accepted in \
         {:.0} s ({failed} non-2xx); {succeeded} of {writes} succeeded, the drain ended {:.1} s after \
         the first was accepted (the drain waits at most 5 minutes per phase; {} still \
         pending at the end), with {requests} requests to the stand-in for the {finished} that \
         finished. The worker sends 16 \
         at a time per replica (`PSYNC_WRITES_CONCURRENCY`); the stand-in answers in well under \
         a millisecond, so this is the outbox's own cost, not PartnerStack's.",
        customers.ok,
        transactions.ok,
        accepting.as_secs_f64(),
        drained.as_secs_f64(),
        writes - finished,
    ));
    let ratio = accept_rate / base.tps;
    bench.row(Row::new(
        "writes",
        "accepted writes/s (c=16)",
        format!("{accept_rate:.0}"),
        format!("{:.0}", base.tps),
        Some(Spread::one(ratio)),
        "(reported)",
        None,
    ));
    bench.row(Row::new(
        "writes",
        "writes sent/s, accept to last sent",
        format!("{sent_rate:.0}"),
        "-".into(),
        None,
        "(reported)",
        None,
    ));
    bench.row(Row::new(
        "writes",
        "sent/s by kind: customer creates / transaction creates (accept to last sent)",
        format!(
            "{:.0} / {:.0}",
            customers_ok as f64 / customers_sent.as_secs_f64(),
            transactions_ok as f64 / transactions_sent.as_secs_f64()
        ),
        "-".into(),
        None,
        "(reported)",
        None,
    ));
    bench.row(Row::new(
        "writes",
        "upstream requests per finished write, no faults",
        format!("{per_write:.2}"),
        "-".into(),
        None,
        "1.00",
        Some((per_write - 1.0).abs() < 0.005 && succeeded == finished && failed == 0),
    ));
    Ok(())
}
