//! The reconciler: makes the copy converge on PartnerStack's truth, whatever the webhooks
//! did.
//!
//! Passes read PartnerStack's list endpoints through the [client](crate::partnerstack::client)
//! and apply every object through the one door ([`crate::apply`]); see [`pass`] for one
//! pass. Here: leadership and scheduling.
//!
//! **One reconciler across replicas.** Leadership is a lease row ([`db::lease`]), so it
//! needs no server session of its own and holds through a pooler in transaction mode.
//! Every reconciler write runs in a transaction that renews the lease first
//! ([`Leader::begin`]); while a pass waits for PartnerStack the lease is renewed every few
//! seconds. A leader that stops renewing (dead, frozen, cut off) is replaced once its
//! lease expires ([`lease::TTL`]); one that stops cleanly gives it up, and a follower,
//! polling every few seconds, takes over at once. A replaced leader's next transaction is
//! refused, so it cannot move a checkpoint backwards (and each checkpoint write is also
//! conditioned on its pass id).
//!
//! **Scheduling.** Each stream is due `interval` (jittered) after its last pass began, at
//! once when a pass is unfinished or `POST /v1/sync/{stream}` asked for one, and later
//! when it has been failing (doubling back-off up to `max_retry_delay`, short by default
//! so streams sync again soon after an outage ends). A request is answered by the pass
//! that starts or resumes next, so a failing stream backs off again after it. The kind
//! of pass is chosen in [`pass::plan`].
//!
//! **Staleness bounds are settings.** Each stream's bound ([`staleness_bound`]) is a
//! figure of the configuration alone, never of how the last passes went: what compares
//! the staleness with it (the `PsyncStreamStale` alert) measures against the same line
//! throughout an outage.

pub mod pass;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use rand::RngExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use partnerstack::Entity;
use partnerstack::client::Client;

use crate::config::ReconcileConfig;
use crate::db::lease::{self, Leader};
use crate::db::sync::PassStatus;
use crate::db::{self, sync};
use crate::telemetry::{Metrics, StreamLabel};
use pass::{PassError, Progress, Report};

/// The lease that elects the leader.
const LEASE: &str = "reconciler";
/// How often followers try for leadership, and the leader looks for requests.
const POLL: Duration = Duration::from_secs(2);
/// First retry delay of a failing stream (doubles per failure).
const FIRST_RETRY: Duration = Duration::from_secs(15);
/// Passes start up to a tenth of their interval early or late (jitter), so streams and
/// replicas spread their requests.
const JITTER_PARTS: u32 = 10;

/// A name for this process, unique among replicas: host, process id and a random part
/// (the reconciler's `runner`; the request budget's holder).
pub fn this_process() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{}:{}:{}",
        host.trim(),
        std::process::id(),
        &uuid::Uuid::new_v4().to_string()[..8]
    )
}

/// A reconciler; cheap to share.
#[derive(Clone)]
pub struct Reconciler {
    client: Client,
    config: ReconcileConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    /// Who this process is, in `sync_streams.runner` and logs.
    runner: String,
    leader: Arc<AtomicBool>,
}

impl Reconciler {
    pub fn new(
        client: Client,
        config: ReconcileConfig,
        pool: PgPool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let runner = this_process();
        Reconciler {
            client,
            config,
            pool,
            metrics,
            runner,
            leader: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True while this process holds leadership.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn runner(&self) -> &str {
        &self.runner
    }

    pub fn config(&self) -> &ReconcileConfig {
        &self.config
    }

    /// The request budget's rate (requests per second).
    pub fn requests_per_second(&self) -> f64 {
        self.client.requests_per_second()
    }

    /// Requests sent to PartnerStack since start by this process's client (the
    /// reconciler's and webhook verification's, which share it), retries included.
    pub fn requests_sent(&self) -> u64 {
        self.client.requests_sent()
    }

    /// [`Reconciler::requests_sent`], by what they were spent on.
    pub fn requests_spent(&self) -> partnerstack::client::Spent {
        self.client.spent()
    }

    /// The background task of `serve`: competes for leadership and, while leader, runs
    /// due passes until `stop` is cancelled (a running pass stops after the page it is
    /// applying, or at once while it waits for one).
    pub async fn run(self, stop: CancellationToken) {
        let Some(interval) = self.config.interval else {
            return;
        };
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            match self.try_lead().await {
                Ok(Some(leader)) => {
                    failures = 0;
                    self.leader.store(true, Ordering::Relaxed);
                    self.metrics.reconcile_leader.set(1);
                    tracing::info!(runner = %self.runner, token = leader.token(), "this replica is now the reconciler");
                    let result = self.lead(&leader, interval, &stop).await;
                    self.leader.store(false, Ordering::Relaxed);
                    self.metrics.reconcile_leader.set(0);
                    match result {
                        Ok(()) => {
                            // A clean stop hands over at once.
                            if let Err(e) = leader.release().await {
                                tracing::warn!(error = %e, "could not give up the reconciler's lease; another replica takes over when it expires");
                            }
                            break;
                        }
                        Err(e) if lease::is_lost(&e) => {
                            tracing::warn!(
                                "another replica took over the reconciler; standing down"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the reconciler's database connection; standing down")
                        }
                    }
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, "cannot reach the database to elect a reconciler; retrying");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(jitter(POLL, 0.25)) => {}
            }
        }
    }

    /// Takes the leadership lease if it is free.
    async fn try_lead(&self) -> Result<Option<Leader>, sqlx::Error> {
        let Some(leader) = Leader::acquire(&self.pool, LEASE, &self.runner).await? else {
            return Ok(None);
        };
        let streams: Vec<&str> = self.config.streams.iter().map(|e| e.stream()).collect();
        let mut tx = leader.begin().await?;
        sync::ensure_streams(&mut tx, &streams).await?;
        tx.commit().await?;
        Ok(Some(leader))
    }

    /// Runs due passes until stopped. Errors only when the lease or the connection is
    /// lost.
    async fn lead(
        &self,
        leader: &Leader,
        interval: Duration,
        stop: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        while !stop.is_cancelled() {
            for &entity in &self.config.streams {
                if stop.is_cancelled() {
                    break;
                }
                // Read in a transaction of the lease's: it renews the lease as it goes.
                let state = pass::load(leader, entity.stream()).await?;
                let full_at = pass::next_full_at(
                    &state,
                    entity,
                    &self.config,
                    self.client.requests_per_second(),
                );
                let every = pass_interval(entity, &self.config, interval);
                if !is_due(&state, every, full_at) {
                    continue;
                }
                match self.pass(leader, entity, false, true, stop, &|_| {}).await {
                    Err(PassError::Database(e)) if db::is_connection_error(&e) => return Err(e),
                    _ => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        Ok(())
    }

    /// Runs one pass and records how it ended (metrics, logs, back-off on failure).
    async fn pass(
        &self,
        leader: &Leader,
        entity: Entity,
        force_full: bool,
        sliced: bool,
        stop: &CancellationToken,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Report, PassError> {
        let ctx = pass::Context {
            client: &self.client,
            config: &self.config,
            metrics: &self.metrics,
            runner: &self.runner,
            stop,
            sliced,
            leader,
        };
        let stream = entity.stream();
        let result = pass::run(&ctx, entity, force_full, progress).await;
        match &result {
            Ok(r) => tracing::info!(
                stream,
                kind = r.kind.as_str(),
                resumed = r.resumed,
                pages = r.counts.pages,
                seen = r.counts.seen,
                changed = r.counts.changed,
                repairs = r.counts.repairs,
                deleted = r.counts.deleted,
                took_ms = r.took.as_millis() as u64,
                "reconcile pass completed"
            ),
            Err(PassError::Interrupted) => {
                tracing::info!(stream, "reconcile pass paused for shutdown")
            }
            Err(PassError::Yielded) => {
                tracing::debug!(stream, "full scan paused to let other streams go")
            }
            Err(PassError::Superseded) => tracing::warn!(stream, "reconcile pass superseded"),
            Err(PassError::Database(e)) if db::is_connection_error(e) => {}
            Err(e) => {
                self.metrics
                    .reconcile_errors
                    .get_or_create(&StreamLabel { stream })
                    .inc();
                let mut tx = leader.begin().await?;
                let state = sync::load(&mut tx, stream).await?;
                let delay = retry_delay(state.failures, self.config.max_retry_delay);
                let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(stream, error = %e, retry_in_s = delay.as_secs(), "reconcile pass failed");
                sync::fail_pass(
                    &mut tx,
                    stream,
                    &e.to_string(),
                    e.abandons_checkpoint(),
                    retry_at,
                )
                .await?;
                tx.commit().await?;
            }
        }
        result
    }

    /// One pass over each of `entities`, in the foreground (the `reconcile` command).
    /// Waits up to `patience` for leadership, since a `serve` replica may hold it.
    pub async fn run_once(
        &self,
        entities: &[Entity],
        full: bool,
        patience: Duration,
        stop: &CancellationToken,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> anyhow::Result<Vec<Result<Report, PassError>>> {
        let deadline = tokio::time::Instant::now() + patience;
        let leader = loop {
            if let Some(leader) = self.try_lead().await? {
                break leader;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "another process holds the reconciler lock (a running `serve`?); waited {patience:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        };
        let streams: Vec<&str> = entities.iter().map(|e| e.stream()).collect();
        let mut tx = leader.begin().await?;
        sync::ensure_streams(&mut tx, &streams).await?;
        tx.commit().await?;
        let mut reports = Vec::new();
        for &entity in entities {
            if stop.is_cancelled() {
                break;
            }
            reports.push(
                self.pass(&leader, entity, full, false, stop, progress)
                    .await,
            );
        }
        if let Err(e) = leader.release().await {
            tracing::warn!(error = %e, "could not give up the reconciler's lease; it expires by itself");
        }
        Ok(reports)
    }
}

crate::text_enum! {
    /// How a stream is kept fresh.
    pub enum Coverage {
        /// PartnerStack sends webhooks for it; passes repair what they miss.
        Webhooks = "webhooks",
        /// Only passes keep it fresh.
        Poll = "poll",
    }
}

/// How fresh a stream's copy is, and can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub coverage: Coverage,
    /// Worst case now: a change PartnerStack made this long ago may not be in the copy
    /// yet (`None` before the first completed pass). Webhooks usually do far better; this
    /// is what passes alone guarantee.
    pub staleness: Option<Duration>,
    /// The staleness it should stay within ([`staleness_bound`]).
    pub bound: Duration,
    /// The staleness the passes can achieve with the request budget, as the last
    /// completed scan or pass went.
    pub achievable: Duration,
}

/// The staleness `entity`'s stream should stay within: fixed by the settings, whatever
/// the passes do. Poll-only streams: `staleness_bound` (the scheduler keeps them within
/// it). Webhook-covered ones: the time between the passes that keep them fresh at its
/// longest (`interval` and its jitter; `full_interval` for a stream without an "updated
/// since" filter), plus `pass_budget`.
pub fn staleness_bound(entity: Entity, config: &ReconcileConfig) -> Duration {
    if !config.webhook_covered(entity) {
        return config.staleness_bound;
    }
    let every = if pass::has_update_filter(entity) {
        config.interval.unwrap_or(config.full_interval)
    } else {
        config.full_interval
    };
    every
        .saturating_add(every / JITTER_PARTS)
        .saturating_add(config.pass_budget)
}

/// The time between the starts of `entity`'s passes, before jitter: `interval`, or less
/// for a poll-only stream that incremental passes keep fresh (groups) when its staleness
/// bound needs it, leaving room for the jitter and `pass_budget`.
pub fn pass_interval(entity: Entity, config: &ReconcileConfig, interval: Duration) -> Duration {
    if config.webhook_covered(entity) || !pass::has_update_filter(entity) {
        return interval;
    }
    let room = config.staleness_bound.saturating_sub(config.pass_budget);
    interval.min(room / (JITTER_PARTS + 1) * JITTER_PARTS)
}

/// How fresh `entity`'s copy is at `now`, given its state and the settings.
pub fn freshness(
    state: &sync::StreamState,
    entity: Entity,
    config: &ReconcileConfig,
    rps: f64,
    now: chrono::DateTime<Utc>,
) -> Freshness {
    let coverage = if config.webhook_covered(entity) {
        Coverage::Webhooks
    } else {
        Coverage::Poll
    };
    let bound_by_scans = pass::bound_by_full_scans(entity, config);
    // What a pass reads from: changes since the last completed pass began (incremental
    // streams), or since the last completed full scan began.
    let base = if pass::has_update_filter(entity) {
        state.watermark
    } else {
        state.last_full_at
    };
    let staleness = base.map(|at| (now - at).to_std().unwrap_or_default());
    let interval = pass_interval(
        entity,
        config,
        config.interval.unwrap_or(config.full_interval),
    );
    // A failed pass's time says nothing of what a pass takes (a retried one keeps its
    // start through an outage).
    let last_took = match (
        state.last_started_at,
        state.last_finished_at,
        state.last_status,
    ) {
        (Some(start), Some(end), Some(PassStatus::Ok)) => {
            (end - start).to_std().unwrap_or_default()
        }
        _ => Duration::ZERO,
    };
    let achievable = if bound_by_scans {
        pass::scan_estimate(state, config, rps).mul_f64(1.2) + Duration::from_secs(10) + POLL
    } else if pass::has_update_filter(entity) {
        interval + interval / JITTER_PARTS + last_took
    } else {
        config.full_interval + pass::scan_estimate(state, config, rps)
    };
    Freshness {
        coverage,
        staleness,
        bound: staleness_bound(entity, config),
        achievable,
    }
}

/// Whether a stream should run now: a pass to resume or asked for, its interval
/// ([`pass_interval`]) passed, or its next full scan due (`full_at`, see
/// [`pass::next_full_at`]).
fn is_due(
    state: &sync::StreamState,
    interval: Duration,
    full_at: Option<chrono::DateTime<Utc>>,
) -> bool {
    let now = Utc::now();
    if state.pass_id.is_some() && state.next_attempt_at.is_none_or(|at| at <= now) {
        return true; // an unfinished pass resumes
    }
    if state.requested_at.is_some() {
        return true;
    }
    if state.next_attempt_at.is_some_and(|at| at > now) {
        return false;
    }
    if full_at.is_none_or(|at| at <= now) {
        return true;
    }
    let spread = 1.0 / f64::from(JITTER_PARTS);
    let every =
        chrono::Duration::from_std(jitter(interval, spread)).unwrap_or(chrono::Duration::MAX);
    state.last_started_at.is_none_or(|at| now - at >= every)
}

fn retry_delay(failures: i32, max: Duration) -> Duration {
    let exp = failures.clamp(0, 16) as u32;
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(exp))
        .min(max)
}

/// `d` scaled by a random factor in `1 ± spread`.
fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + rand::rng().random_range(-spread..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn defaults() -> ReconcileConfig {
        Config::load_with_env(None, &Default::default())
            .unwrap()
            .reconcile
    }

    #[test]
    fn bounds_are_figures_of_the_settings() {
        let mut config = defaults();
        let minutes = |m: u64| Duration::from_secs(m * 60);
        // Webhook-covered: 5m, its jitter (30 s) and the pass budget (5m).
        assert_eq!(
            staleness_bound(Entity::Customer, &config),
            Duration::from_secs(630)
        );
        for poll_only in [Entity::Group, Entity::Transaction, Entity::Reward] {
            assert_eq!(staleness_bound(poll_only, &config), minutes(60));
        }
        // Webhook-covered without an "updated since" filter: full scans keep it fresh.
        config.webhook_streams.push(Entity::Transaction);
        assert_eq!(
            staleness_bound(Entity::Transaction, &config),
            minutes(24 * 60 + 144 + 5)
        );
        // Without a reconcile interval, full scans keep every stream.
        config.interval = None;
        assert_eq!(
            staleness_bound(Entity::Customer, &config),
            minutes(24 * 60 + 144 + 5)
        );
    }

    /// A poll-only stream that incremental passes keep fresh is passed often enough for
    /// its bound, whatever the interval; the others at the interval.
    #[test]
    fn groups_are_passed_often_enough_for_their_bound() {
        let config = defaults();
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(
            pass_interval(Entity::Group, &config, minutes(5)),
            minutes(5)
        );
        let slow = minutes(120);
        let every = pass_interval(Entity::Group, &config, slow);
        assert_eq!(every, minutes(50));
        assert!(every + every / JITTER_PARTS + config.pass_budget <= config.staleness_bound);
        for entity in [Entity::Customer, Entity::Transaction] {
            assert_eq!(pass_interval(entity, &config, slow), slow);
        }
    }
}
