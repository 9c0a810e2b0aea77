//! partnerstack-sim: a local PartnerStack v2 stand-in for development, demos, tests and
//! benchmarks. It is a test double: nothing in the service's production build links it.
//!
//! It serves the v2 list, single-object and write endpoints under `/api/v2` with
//! PartnerStack's Basic auth, envelope, newest-first cursor pagination and limits, over a
//! seeded in-memory program ([`world`]). It can misbehave on purpose ([`faults`]), change
//! its data over time and deliver the matching webhooks with loss, repeats and reordering
//! ([`webhooks`]), and it has admin routes ([`admin`]) that dump its state and let a test
//! drive it deterministically.
//!
//! Use it in-process with [`Simulator::new`] and [`Simulator::spawn`] (or [`start`]) on a
//! port-0 listener; the `partnerstack-sim` binary (and `partnerstack-sync simulate`, in
//! builds with the `sim` feature) call [`run`].

pub mod admin;
pub mod api;
pub mod behaviour;
pub mod data;
pub mod faults;
pub mod webhooks;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::HeaderName;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use behaviour::{
    AccountName, ArchivedCustomers, Behaviours, CustomerBody, DeleteAnswer,
    DuplicateTransactionKey, LostCursor, RefusalWording, RetryAfterHeader, WebhookEvents,
};
pub use faults::{AfterCommit, FaultSettings, FaultUpdate, Faults, Verdict};
use partnerstack::Entity;
pub use webhooks::{DeliveryRecord, DeliverySummary, Naming, Notify, Outcome, Shape, Undelivered};
pub use world::{Action, Change, Counts, MutationKind, Refusal, World};

/// The most mutations one call may ask for (keeps an admin request bounded).
pub const MAX_MUTATIONS_PER_CALL: usize = 1_000_000;

/// Which dialect of the API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// The real API: millisecond timestamps, no `ending_cursor`, limit up to 250,
    /// `/partnerships`.
    Real,
    /// A legacy dialect some integration guides describe: second timestamps,
    /// `ending_cursor`, limit up to 100, and `/partners` as well as `/partnerships`.
    Legacy,
}

/// `partnerstack-sync simulate` options. Every one has a default, so
/// `Options::default()` is a small program with no faults and no webhooks.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Seed of the generated program, its mutations and its faults.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Partner groups.
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// Partnerships.
    #[arg(long, default_value_t = 100)]
    pub partners: usize,
    #[arg(long, default_value_t = 2_000)]
    pub customers: usize,
    #[arg(long, default_value_t = 5_000)]
    pub transactions: usize,
    /// Rewards: one per transaction while they last, then sign-up rewards.
    #[arg(long, default_value_t = 4_000)]
    pub rewards: usize,
    #[arg(long, default_value_t = 200)]
    pub deals: usize,
    #[arg(long, default_value_t = 300)]
    pub leads: usize,
    /// Days of history the seeded objects were created over.
    #[arg(long, default_value_t = 365)]
    pub history_days: u32,
    /// The time (epoch ms) the history ends at; default now. Pin it to get identical
    /// timestamps across runs.
    #[arg(long)]
    pub now_ms: Option<i64>,
    /// The API dialect.
    #[arg(long, value_enum, default_value = "real")]
    pub dialect: Dialect,

    /// Where to deliver webhooks: the full URL, token included
    /// (e.g. http://127.0.0.1:8080/webhooks/partnerstack/TOKEN).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Random changes per second, each delivered as a webhook (0: none).
    #[arg(long, alias = "mutation-rate", default_value_t = 0.0)]
    pub webhook_rate: f64,
    /// Stop changing after this many random changes.
    #[arg(long)]
    pub max_mutations: Option<u64>,
    /// Fraction of webhooks dropped (never sent).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub drop: f64,
    /// Fraction of webhooks sent twice (the copy a few events later).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub duplicate: f64,
    /// Fraction of webhooks held back and sent after one to three later ones.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub reorder: f64,
    /// Payload shape.
    #[arg(long, value_enum, default_value = "flat")]
    pub shape: Shape,
    /// Event-name style.
    #[arg(long, value_enum, default_value = "underscore")]
    pub naming: Naming,
    /// Sign deliveries with HMAC-SHA256 under this secret.
    #[arg(long, env = "PSYNC_SIMULATE_SIGNING_SECRET", hide_env_values = true, value_parser = secret)]
    pub signing_secret: Option<SecretString>,
    /// Header carrying the signature (default `x-psync-signature`, the service's default).
    #[arg(long)]
    pub signature_header: Option<String>,

    /// Requests per second the API accepts before answering 429.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Seconds sent in `Retry-After` with a 429.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Fraction of API requests answered 500/502/503.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub error_rate: f64,
    /// Delay before every API answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,

    /// Behaviours, each documented, seen in production, or guessed with its alternative
    /// (see `behaviour::PROVENANCE`).
    #[command(flatten)]
    pub behaviours: Behaviours,
}

fn probability(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a fraction within 0..=1")),
    }
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.trim().to_string()))
}

#[derive(clap::Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    options: Options,
}

impl Default for Options {
    fn default() -> Self {
        use clap::Parser as _;
        // Every option has a default, so parsing no arguments cannot fail (a unit test
        // checks it).
        DefaultsOnly::try_parse_from(["simulate"])
            .map(|d| d.options)
            .expect("every simulate option has a default")
    }
}

impl Options {
    /// A small program (for tests): `n` of each kind of object, groups aside.
    pub fn small(n: usize) -> Options {
        Options {
            groups: 3,
            partners: n,
            customers: n,
            transactions: n,
            rewards: n,
            deals: n,
            leads: n,
            ..Options::default()
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            groups: self.groups,
            partners: self.partners,
            customers: self.customers,
            transactions: self.transactions,
            rewards: self.rewards,
            deals: self.deals,
            leads: self.leads,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("error-rate", self.error_rate),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&p), "--{name} must be within 0..=1");
        }
        anyhow::ensure!(
            self.webhook_rate.is_finite() && self.webhook_rate >= 0.0,
            "--webhook-rate must be a positive number of changes per second, or 0"
        );
        if let Some(r) = self.rate_limit {
            anyhow::ensure!(r.is_finite() && r > 0.0, "--rate-limit must be positive");
        }
        if let Some(url) = &self.webhook_url {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--webhook-url must be an http:// or https:// URL"
            );
        }
        Ok(())
    }
}

/// The stand-in. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    world: RwLock<World>,
    faults: Faults,
    deliveries: webhooks::Deliveries,
    /// `public_key:secret_key`, as Basic auth carries it.
    credentials: SecretString,
    dialect: Dialect,
    options: Options,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("dialect", &self.inner.dialect)
            .field("seed", &self.inner.options.seed)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Generates the program and prepares the API for `public_key`/`secret_key`. The
    /// signature header defaults to `x-psync-signature`.
    pub fn new(
        options: &Options,
        public_key: &SecretString,
        secret_key: &SecretString,
    ) -> anyhow::Result<Simulator> {
        options.check()?;
        let header = options
            .signature_header
            .as_deref()
            .unwrap_or("x-psync-signature");
        let signature_header = HeaderName::try_from(header.trim())
            .with_context(|| format!("--signature-header {header:?}"))?;
        let anchor = options.now_ms.unwrap_or_else(world::wall_ms);
        let mut world = World::seed(
            options.seed,
            &options.counts(),
            anchor,
            options.history_days,
        );
        world.customer_readable_after_ms =
            i64::try_from(options.behaviours.customer_readable_after_ms).unwrap_or(i64::MAX);
        world.refusals = options.behaviours.refusal_wording;
        let pair = SecretString::from(format!(
            "{}:{}",
            public_key.expose_secret(),
            secret_key.expose_secret()
        ));
        Ok(Simulator {
            inner: Arc::new(Inner {
                world: RwLock::new(world),
                faults: Faults::new(
                    FaultSettings {
                        rate_limit: options.rate_limit,
                        retry_after: options.retry_after,
                        error_rate: options.error_rate,
                        slow_ms: options.slow_ms,
                        ..FaultSettings::default()
                    },
                    options.seed,
                ),
                deliveries: webhooks::Deliveries::new(webhooks::DeliveryOptions {
                    url: options.webhook_url.clone(),
                    drop: options.drop,
                    duplicate: options.duplicate,
                    reorder: options.reorder,
                    shape: options.shape,
                    naming: options.naming,
                    signing_secret: options.signing_secret.clone(),
                    signature_header,
                    seed: options.seed,
                    behaviours: options.behaviours.clone(),
                }),
                credentials: pair,
                dialect: options.dialect,
                options: options.clone(),
            }),
        })
    }

    /// The HTTP surface: `/api/v2/...` and `/admin/...`.
    pub fn router(&self) -> Router {
        api::router(self.clone()).merge(admin::router(self.clone()))
    }

    /// Serves on `listener`, runs the delivery task and the mutation loop, until
    /// `shutdown`; then stops everything and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let deliveries = {
            let sim = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { sim.inner.deliveries.run(stop).await })
        };
        let mutations = {
            let sim = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { sim.mutation_loop(stop).await })
        };
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        let _ = mutations.await;
        let _ = deliveries.await;
        served.context("the simulate server failed")
    }

    /// Starts [`Simulator::serve`] on `listener` in a task.
    pub fn spawn(&self, listener: TcpListener) -> anyhow::Result<Running> {
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let sim = self.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { sim.serve(listener, stop).await });
        Ok(Running {
            addr,
            simulator: self.clone(),
            shutdown,
            task,
        })
    }

    /// Random changes at `--webhook-rate` per second, until `--max-mutations` or shutdown.
    async fn mutation_loop(&self, shutdown: CancellationToken) {
        let rate = self.inner.options.webhook_rate;
        if rate <= 0.0 {
            return;
        }
        // Ticks no faster than every 10 ms; fast rates make several changes per tick.
        let period = Duration::from_secs_f64((1.0 / rate).max(0.01));
        let per_tick = rate * period.as_secs_f64();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = self.inner.options.max_mutations;
        let mut carry = 0.0;
        let mut done: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            carry += per_tick;
            let mut n = carry.floor() as u64;
            carry -= n as f64;
            if let Some(limit) = limit {
                n = n.min(limit.saturating_sub(done));
            }
            if n > 0 {
                self.mutate(n as usize, None, Notify::Deliver);
                done += n;
            }
            if limit.is_some_and(|l| done >= l) {
                tracing::info!(
                    changes = done,
                    "simulate: --max-mutations reached; no more changes"
                );
                return;
            }
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, World> {
        // A poisoned lock means a panic while changing data; serving what is there is the
        // most useful thing a test double can do.
        self.inner.world.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, World> {
        self.inner.world.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a Basic-auth `public_key:secret_key` pair is the one this stand-in accepts.
    pub(crate) fn accepts(&self, pair: &str) -> bool {
        self.inner.credentials.expose_secret() == pair
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// The behaviours in force.
    pub fn behaviours(&self) -> &Behaviours {
        &self.inner.options.behaviours
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Publishes changes while the world lock is still held, so the ledger and the
    /// delivery queue see them in the order they happened.
    pub(crate) fn publish(&self, _world: &World, changes: &[Change], notify: Notify) {
        for change in changes {
            self.inner.deliveries.publish(change, notify);
        }
    }

    /// Records in the ledger that `object`'s state reached the service outside a scan.
    pub(crate) fn reached_service(&self, entity: Entity, object: &Value) {
        if let (Some(key), Some(updated_at)) = (
            object.get("key").and_then(Value::as_str),
            object.get("updated_at").and_then(Value::as_i64),
        ) {
            self.inner
                .deliveries
                .reached_service(entity, key, updated_at);
        }
    }

    /// Makes `count` changes (random ones, or all of `kind`) and publishes them.
    pub fn mutate(&self, count: usize, kind: Option<MutationKind>, notify: Notify) -> Vec<Change> {
        let mut world = self.write();
        let mut all = Vec::new();
        for _ in 0..count.min(MAX_MUTATIONS_PER_CALL) {
            let changes = world.mutate(kind);
            self.publish(&world, &changes, notify);
            all.extend(changes);
        }
        all
    }

    /// Deletes a transaction, as `DELETE /transactions/{key}` does (no webhook: none is
    /// documented for transactions).
    pub fn delete_transaction(&self, key: &str) -> Result<Change, Refusal> {
        let mut world = self.write();
        let change = world.delete_transaction(key)?;
        self.publish(&world, std::slice::from_ref(&change), Notify::Deliver);
        Ok(change)
    }

    /// Replaces top-level fields of one object (e.g. `created_at` to back-date it,
    /// `approved` to approve it) and publishes the change.
    pub fn patch(
        &self,
        entity: Entity,
        key: &str,
        patch: &Map<String, Value>,
        notify: Notify,
    ) -> Result<Change, Refusal> {
        let mut world = self.write();
        let change = world.patch(entity, key, patch)?;
        self.publish(&world, std::slice::from_ref(&change), notify);
        Ok(change)
    }

    /// Every object, as the API renders it, per stream; archived customers included (with
    /// `"archived": true`).
    pub fn state(&self, only: Option<Entity>) -> Value {
        self.state_json(only)
            .and_then(|bytes| serde_json::from_slice(&bytes))
            .unwrap_or(Value::Null)
    }

    /// [`Simulator::state`] as JSON text, written without building a JSON tree (for large
    /// programs).
    pub fn state_json(&self, only: Option<Entity>) -> serde_json::Result<Vec<u8>> {
        let world = self.read();
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(format!("{{\"now\":{},\"streams\":{{", world.now_ms()).as_bytes());
        let mut first = true;
        for entity in Entity::ALL {
            if only.is_some_and(|o| o != entity) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(format!("\"{}\":", entity.stream()).as_bytes());
            world.write_dump(entity, &mut out)?;
        }
        out.extend_from_slice(b"}}");
        Ok(out)
    }

    /// Objects of `entity` (archived included).
    pub fn len(&self, entity: Entity) -> usize {
        self.read().len(entity)
    }

    /// The keys a full scan of `entity`'s list must return: listed objects only.
    pub fn listed_keys(&self, entity: Entity) -> Vec<String> {
        self.read().listed_keys(entity)
    }

    /// The current time as the stand-in sees it (epoch ms).
    pub fn now_ms(&self) -> i64 {
        self.read().now_ms()
    }

    /// Waits until every queued delivery was sent (at most `timeout`).
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.inner.deliveries.flush(timeout).await
    }

    /// The delivery log after `since`.
    pub fn deliveries(&self, since: u64) -> Vec<DeliveryRecord> {
        self.inner.deliveries.log(since)
    }

    pub fn delivery_summary(&self) -> DeliverySummary {
        self.inner.deliveries.summary()
    }

    /// Changed objects whose latest state no delivered webhook carried.
    pub fn undelivered(&self) -> Vec<Undelivered> {
        self.inner.deliveries.undelivered()
    }

    /// Objects changed since start.
    pub fn changed(&self) -> usize {
        self.inner.deliveries.changed()
    }
}

/// A stand-in serving in a task (see [`Simulator::spawn`]).
pub struct Running {
    pub addr: SocketAddr,
    pub simulator: Simulator,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The API's base URL: what `PARTNERSTACK_BASE_URL` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// `path` on the stand-in (e.g. `/admin/state`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops serving, the mutation loop and deliveries, and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("the simulate task panicked")?
    }
}

/// Starts a stand-in on `127.0.0.1:0` accepting `public_key`/`secret_key` (tests).
pub async fn start(
    options: &Options,
    public_key: &str,
    secret_key: &str,
) -> anyhow::Result<Running> {
    let sim = Simulator::new(
        options,
        &SecretString::from(public_key.to_string()),
        &SecretString::from(secret_key.to_string()),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    sim.spawn(listener)
}

/// Serves the stand-in on `listener`, accepting `public_key`/`secret_key`, until
/// `shutdown` (the `partnerstack-sim` binary and `partnerstack-sync simulate`).
pub async fn run(
    options: Options,
    public_key: &SecretString,
    secret_key: &SecretString,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let sim = Simulator::new(&options, public_key, secret_key)?;
    let addr = listener.local_addr()?;
    tracing::info!(
        base_url = %format!("http://{addr}/api/v2"),
        seed = options.seed,
        objects = Entity::ALL.iter().map(|e| sim.len(*e)).sum::<usize>(),
        generated_in_ms = started.elapsed().as_millis() as u64,
        webhook_url = options.webhook_url.is_some(),
        "simulate is serving a PartnerStack stand-in"
    );
    sim.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let o = Options::default();
        assert_eq!(o.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(o.seed, 42);
        assert!(o.check().is_ok());
        let bad = Options {
            drop: 2.0,
            ..Options::default()
        };
        assert!(bad.check().is_err());
        assert!(probability("0.3").is_ok());
        assert!(probability("1.1").is_err());
    }

    #[test]
    fn the_signing_secret_stays_out_of_debug_output() {
        let o = Options {
            signing_secret: Some(SecretString::from("do-not-print-me".to_string())),
            ..Options::default()
        };
        assert!(!format!("{o:?}").contains("do-not-print-me"));
    }
}
