//! Scenario: ingest through the deployment users run (nginx balancing over two replicas,
//! each on PgBouncer in transaction mode: `deploy/`, as `tests/it/deploy.rs` runs it)
//! against one replica straight on Postgres, as a ratio. Both on the same throwaway
//! server, each in a database of its own, alternating, at concurrency 32.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::deployment::{Nginx, PgBouncer, Tools};
use crate::service::{Service, WEBHOOK_TOKEN};
use crate::{Bench, Row, Spread, count, load};

pub async fn topology(bench: &mut Bench) -> anyhow::Result<()> {
    println!("bench: topology");
    let Some(tools) = Tools::find("bench topology") else {
        bench.notes.push(
            "Topology: not run, nginx and pgbouncer are not installed (`.ci/run` installs \
             them)."
                .into(),
        );
        return Ok(());
    };
    let d = &bench.durations;
    let (warmup, throughput, reps) = (d.warmup, d.throughput, d.repetitions);
    let direct_url = bench.database("bench_direct").await?;
    let pooled_url = bench.database("bench_topology").await?;
    let bouncer = PgBouncer::start(&tools, &pooled_url).await;
    let via_bouncer = bouncer.url_for(&pooled_url);
    // The replicas apply what they store (from the bodies: nothing to verify against).
    let env = [("PSYNC_WEBHOOKS_VERIFICATION", "body")];
    let direct = Service::start(&direct_url, &env).await?;
    let replicas = [
        Service::start(&via_bouncer, &env).await?,
        Service::start(&via_bouncer, &env).await?,
    ];
    let nginx = Nginx::start(&tools, &[replicas[0].addr, replicas[1].addr]).await;
    let lb: SocketAddr = ([127, 0, 0, 1], nginx.port).into();
    let path = format!("/webhooks/partnerstack/{WEBHOOK_TOKEN}");

    let (mut direct_rates, mut deployed_rates, mut ratios) = (vec![], vec![], vec![]);
    let (mut acknowledged, mut failed) = ([0u64; 2], 0u64);
    for rep in 0..reps {
        let mut rates = [0.0; 2];
        for (i, (addr, label)) in [(direct.addr, "direct"), (lb, "deployed")]
            .into_iter()
            .enumerate()
        {
            let workload = Arc::new(load::Deliveries {
                path: path.clone(),
                run: format!("{label}{rep}"),
            });
            let stats = load::closed(addr, workload, 32, warmup, throughput).await?;
            rates[i] = stats.rate();
            acknowledged[i] += stats.ok + stats.warmup_ok;
            failed += stats.failed;
        }
        println!(
            "  rep {rep}: direct {:.0}/s, nginx + PgBouncer + 2 replicas {:.0}/s",
            rates[0], rates[1]
        );
        direct_rates.push(rates[0]);
        deployed_rates.push(rates[1]);
        ratios.push(rates[1] / rates[0].max(1.0));
    }
    // Everything acknowledged must be stored, exactly, both ways.
    let stored = [
        count(&direct_url, "SELECT count(*) FROM webhook_events").await?,
        count(&pooled_url, "SELECT count(*) FROM webhook_events").await?,
    ];
    let exact = stored[0] == acknowledged[0] as i64 && stored[1] == acknowledged[1] as i64;
    drop(nginx);
    drop(replicas);
    drop(direct);
    drop(bouncer);

    bench.row(Row::new(
        "topology",
        "ingest via nginx + PgBouncer (2 replicas) vs one replica direct, deliveries/s (c=32)",
        Spread::of(&deployed_rates).show(0),
        Spread::of(&direct_rates).show(0),
        Some(Spread::of(&ratios)),
        "(reported)",
        None,
    ));
    bench.notes.push(format!(
        "Topology: {reps} runs of {:.0} s after a {:.0} s warm-up each way, alternating. \
         Deployed: Debian's nginx (`deploy/nginx/locations.conf`, keepalive 32) over two \
         replicas, each on Debian's PgBouncer in transaction mode (pool 20) in front of the \
         same server; direct: one replica on Postgres. {} and {} deliveries acknowledged, \
         {failed} non-2xx; the logs hold {} and {} rows: {}. Both ways share this machine's \
         two cores with the load generator, so the ratio measures what the two extra hops \
         and the second replica cost or gain here, not on separate hosts.",
        throughput.as_secs_f64(),
        warmup.as_secs_f64(),
        acknowledged[1],
        acknowledged[0],
        stored[1],
        stored[0],
        if exact { "exact" } else { "MISMATCH" },
    ));
    Ok(())
}
