//! One pass over one stream: plan (or resume) it, page through PartnerStack, apply each
//! page through the one door with its checkpoint in the same transaction, and close it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use partnerstack::client::{self, Client, ListQuery, Page};
use partnerstack::models::Meta;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::apply::{self, Observation, Source};
use crate::config::ReconcileConfig;
use crate::db::lease::{self, Leader};
use crate::db::set_aside;
use crate::db::sync::{self, Finish, PassCounts, PassKind, PassPlan, StreamState};
use crate::telemetry::{Metrics, StreamLabel};

/// Pages applied together, when they are already fetched: fewer commits and statements,
/// the same checkpoint rule (the checkpoint moves past the last page of the commit).
const PAGES_PER_COMMIT: usize = 4;

/// How long a full scan runs before it lets other streams' passes go (it resumes from its
/// checkpoint in the next round).
const SLICE: Duration = Duration::from_secs(30);
/// Restarts from the top a pass allows itself when a cursor stops working.
const MAX_RESTARTS: u32 = 3;
/// While a pass waits for PartnerStack, the leader renews its lease this often.
pub const HEARTBEAT: Duration = lease::RENEW_EVERY;

/// Streams whose list has an "updated since" filter.
pub fn has_update_filter(entity: Entity) -> bool {
    client::supported_filters(entity).contains(&client::Filter::MinUpdated)
}

/// Streams that only full scans keep fresh: no webhooks, no "updated since" filter
/// (transactions and rewards). They are scanned often enough to meet the staleness bound.
pub fn bound_by_full_scans(entity: Entity, config: &ReconcileConfig) -> bool {
    !config.webhook_covered(entity) && !has_update_filter(entity)
}

/// How long the stream's next full scan is expected to take: its last one, or the time its
/// pages take at the scans' share of the request budget (`rps`), whichever is longer.
pub fn scan_estimate(state: &StreamState, config: &ReconcileConfig, rps: f64) -> Duration {
    let took = match (state.last_full_at, state.last_full_finished_at) {
        (Some(start), Some(end)) => (end - start).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let paced = Duration::from_secs_f64(
        (state.last_full_pages as f64 / (config.scan_share * rps).max(f64::MIN_POSITIVE)).min(1e9),
    );
    took.max(paced)
}

/// When the stream's next full scan is due; `None` when it is due now (never scanned).
/// Streams bound by full scans start the next one early enough to finish within the
/// staleness bound of the last one's start; others every `full_interval`.
pub fn next_full_at(
    state: &StreamState,
    entity: Entity,
    config: &ReconcileConfig,
    rps: f64,
) -> Option<DateTime<Utc>> {
    let last = state.last_full_at?;
    let every = if bound_by_full_scans(entity, config) {
        // A margin for the scheduler's poll and a slower scan than the last.
        let estimate = scan_estimate(state, config, rps).mul_f64(1.2) + Duration::from_secs(10);
        config.staleness_bound.saturating_sub(estimate)
    } else {
        config.full_interval
    };
    last.checked_add_signed(chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX))
}

/// The kind of pass a stream is due for.
pub fn plan(
    state: &StreamState,
    entity: Entity,
    config: &ReconcileConfig,
    force_full: bool,
    now: DateTime<Utc>,
    rps: f64,
) -> PassKind {
    let full_due = next_full_at(state, entity, config, rps).is_none_or(|at| now >= at);
    // A stream whose list does not honour its time filter reads everything in any pass:
    // a full scan at least finds what was deleted (`check`'s `time_filter.*` answers).
    let unfiltered = config.unfiltered.contains(&entity);
    if force_full || state.requested_full || state.watermark.is_none() || full_due || unfiltered {
        PassKind::Full
    } else if has_update_filter(entity) {
        PassKind::Incremental
    } else {
        PassKind::Window
    }
}

/// The filter of a new pass of `kind`: `(min_updated, min_created)`. A bound that cannot
/// be represented is left out, which reads more, never less.
fn bounds(
    kind: PassKind,
    watermark: Option<DateTime<Utc>>,
    config: &ReconcileConfig,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let before = |t: DateTime<Utc>, d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| t.checked_sub_signed(d))
    };
    match kind {
        PassKind::Full => (None, None),
        PassKind::Incremental => (watermark.and_then(|w| before(w, config.overlap)), None),
        PassKind::Window => (None, before(now, config.window)),
    }
}

/// What a pass did.
#[derive(Debug, Clone)]
pub struct Report {
    pub entity: Entity,
    pub kind: PassKind,
    pub resumed: bool,
    pub counts: PassCounts,
    /// A problem the completed pass still reports (e.g. the deletion guard held).
    pub warning: Option<String>,
    pub took: Duration,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("PartnerStack: {0}")]
    Fetch(#[from] client::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the pass was superseded by another one")]
    Superseded,
    #[error("interrupted by shutdown (resumes from its checkpoint)")]
    Interrupted,
    /// A full scan used its slice and lets other streams go; it resumes from its
    /// checkpoint in the next round. Not a failure.
    #[error("paused after its slice; resumes from its checkpoint")]
    Yielded,
}

impl PassError {
    /// The next attempt should start afresh rather than resume (its cursor cannot work).
    pub fn abandons_checkpoint(&self) -> bool {
        matches!(
            self,
            PassError::Fetch(
                client::Error::StalledCursor { .. } | client::Error::CursorLost { .. }
            )
        )
    }
}

/// Progress of a running pass, for the command line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub entity: Entity,
    pub kind: PassKind,
    pub counts: PassCounts,
}

/// Everything a pass needs.
pub struct Context<'a> {
    pub client: &'a Client,
    pub config: &'a ReconcileConfig,
    pub metrics: &'a Metrics,
    pub runner: &'a str,
    pub stop: &'a CancellationToken,
    /// Whether a full scan may pause after [`SLICE`] to let other streams go (the
    /// background reconciler; not the one-shot command).
    pub sliced: bool,
    /// The lease every write of the pass is fenced by.
    pub leader: &'a Leader,
}

/// A stream's state, read in a transaction of the lease's (which renews it).
pub async fn load(leader: &Leader, stream: &str) -> Result<StreamState, sqlx::Error> {
    let mut tx = leader.begin().await?;
    let state = sync::load(&mut tx, stream).await?;
    tx.commit().await?;
    Ok(state)
}

/// Runs (or resumes) one pass of `entity`'s stream, every write fenced by the lease.
pub async fn run(
    ctx: &Context<'_>,
    entity: Entity,
    force_full: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Report, PassError> {
    let span = tracing::info_span!(
        "reconcile_pass",
        stream = entity.stream(),
        kind = tracing::field::Empty,
        pass_id = tracing::field::Empty,
    );
    async {
        let started = Instant::now();
        let mut pass = Pass::open(ctx, entity, force_full).await?;
        let span = tracing::Span::current();
        span.record("kind", pass.kind.as_str());
        span.record("pass_id", pass.id);
        if !pass.read_all {
            let mut restarts = 0;
            loop {
                match pass.read(ctx, progress).await {
                    Err(PassError::Fetch(e @ client::Error::CursorLost { .. }))
                        if restarts < MAX_RESTARTS =>
                    {
                        restarts += 1;
                        tracing::warn!(error = %e, restarts, "restarting the pass from the top");
                        pass.restart(ctx).await?;
                    }
                    result => break result?,
                }
            }
        }
        pass.close(ctx, started).await
    }
    .instrument(span)
    .await
}

/// A fetched page read into observations.
struct ReadPage {
    observations: Vec<Observation>,
    /// Keys of objects that do not read: still seen, so a full scan does not take their
    /// rows for vanished.
    unread_keys: Vec<String>,
    /// Those objects, each with why it does not read: set aside.
    unread: Vec<(String, String, serde_json::Value)>,
    /// Objects that do not read, and those of them whose key does not read either.
    invalid: i64,
    unkeyed: i64,
    next_cursor: Option<String>,
}

impl ReadPage {
    fn read(entity: Entity, page: Page) -> ReadPage {
        let mut read = ReadPage {
            observations: Vec::with_capacity(page.items.len()),
            unread_keys: Vec::new(),
            unread: Vec::new(),
            invalid: 0,
            unkeyed: 0,
            next_cursor: page.next_cursor,
        };
        for item in page.items {
            let key = Meta::identity_of(&item);
            match Observation::parse(entity, item.clone(), false) {
                Ok(o) => read.observations.push(o),
                Err(reason) => {
                    read.invalid += 1;
                    tracing::warn!(%reason, "PartnerStack sent an object the service cannot read; set aside");
                    // Postgres text cannot hold U+0000: such a key is not recordable.
                    match key.filter(|k| !k.contains('\0')) {
                        Some(key) => {
                            read.unread_keys.push(key.clone());
                            read.unread.push((key, reason, item));
                        }
                        None => read.unkeyed += 1,
                    }
                }
            }
        }
        read
    }
}

/// One pass of one stream, as its checkpoint records it.
struct Pass {
    entity: Entity,
    id: i64,
    kind: PassKind,
    /// When the pass began (rows applied after it are spared by deletion detection).
    started_at: DateTime<Utc>,
    query: ListQuery,
    resumed: bool,
    /// No pass of this stream ever completed: this one is an import, not a repair of
    /// lost webhooks.
    backfill: bool,
    /// Every page was read already (a resumed pass that failed after its last page).
    read_all: bool,
    counts: PassCounts,
    /// Requests sent after the last recorded page (the empty answer that ends a stream
    /// brings no page): recorded when the pass closes.
    unrecorded_requests: i64,
}

impl Pass {
    /// Resumes the stream's unfinished pass when it can, or begins a new one.
    async fn open(ctx: &Context<'_>, entity: Entity, force_full: bool) -> Result<Pass, PassError> {
        let stream = entity.stream();
        let mut tx = ctx.leader.begin().await?;
        let state = sync::load(&mut tx, stream).await?;
        let backfill = state.watermark.is_none();
        // A request for a full scan never resumes another kind of pass.
        let wants_full = force_full || state.requested_full;
        if let (Some(id), Some(kind)) = (state.pass_id, state.pass_kind)
            && !(wants_full && kind != PassKind::Full)
        {
            // Taking the pass up answers any request for one (so a failure backs off as
            // usual).
            if !sync::resume_pass(&mut tx, stream, id, ctx.runner).await? {
                return Err(PassError::Superseded);
            }
            tx.commit().await?;
            tracing::info!(
                pages = state.pass.pages,
                "resuming a reconcile pass from its checkpoint"
            );
            return Ok(Pass {
                entity,
                id,
                kind,
                started_at: state.pass_started_at.unwrap_or_else(Utc::now),
                query: ListQuery {
                    min_updated: state.pass_min_updated,
                    min_created: state.pass_min_created,
                    starting_after: state.pass_cursor.clone(),
                    ..ListQuery::default()
                },
                resumed: true,
                backfill,
                // Only the last page leaves no cursor.
                read_all: state.pass.pages > 0 && state.pass_cursor.is_none(),
                counts: state.pass,
                unrecorded_requests: 0,
            });
        }
        let now = Utc::now();
        let rps = ctx.client.requests_per_second();
        let kind = plan(&state, entity, ctx.config, force_full, now, rps);
        let (min_updated, min_created) = bounds(kind, state.watermark, ctx.config, now);
        let plan = PassPlan {
            kind,
            min_updated,
            min_created,
        };
        let (id, started_at) = sync::begin_pass(&mut tx, stream, plan, ctx.runner).await?;
        tx.commit().await?;
        Ok(Pass {
            entity,
            id,
            kind,
            started_at,
            query: ListQuery {
                min_updated,
                min_created,
                ..ListQuery::default()
            },
            resumed: false,
            backfill,
            read_all: false,
            counts: PassCounts::default(),
            unrecorded_requests: 0,
        })
    }

    /// Begins the pass again from the top (a cursor stopped working): a new pass of the
    /// same kind and filter, its checkpoint and seen keys reset.
    async fn restart(&mut self, ctx: &Context<'_>) -> Result<(), PassError> {
        let plan = PassPlan {
            kind: self.kind,
            min_updated: self.query.min_updated,
            min_created: self.query.min_created,
        };
        let mut tx = ctx.leader.begin().await?;
        let (id, started_at) =
            sync::begin_pass(&mut tx, self.entity.stream(), plan, ctx.runner).await?;
        tx.commit().await?;
        self.id = id;
        self.started_at = started_at;
        self.query.starting_after = None;
        self.counts = PassCounts::default();
        Ok(())
    }

    /// Reads the stream from the checkpoint to its end, applying pages as they come.
    async fn read(
        &mut self,
        ctx: &Context<'_>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), PassError> {
        // Fetch ahead while earlier pages are applied; the channel holds a few pages, so
        // memory stays bounded whatever the stream's size. Strict: a cursor that stops
        // working is an error (the pass restarts from the top), never a quiet end.
        // Pages are read into observations here too, so reading a page overlaps the
        // previous commit's statements rather than delaying the next one.
        let (pages_tx, mut pages) =
            mpsc::channel::<Result<ReadPage, client::Error>>(PAGES_PER_COMMIT);
        let entity = self.entity;
        let mut pager = ctx.client.pages(self.entity, self.query.clone()).strict();
        let requests = pager.request_counter();
        // Full scans use only their share of the request budget.
        let pace = (self.kind == PassKind::Full).then(|| {
            client::RequestBudget::new(ctx.config.scan_share * ctx.client.requests_per_second())
        });
        let fetcher = tokio::spawn(
            client::spend(client::Purpose::Reconcile, async move {
                loop {
                    if let Some(pace) = &pace {
                        pace.acquire().await;
                    }
                    let next = pager
                        .next_page()
                        .await
                        .transpose()
                        .map(|page| page.map(|page| ReadPage::read(entity, page)));
                    let last = !matches!(next, Some(Ok(_)));
                    if let Some(page) = next
                        && pages_tx.send(page).await.is_err()
                    {
                        break;
                    }
                    if last {
                        break;
                    }
                }
            })
            .in_current_span(),
        );
        let result = self.apply_pages(ctx, &mut pages, &requests, progress).await;
        drop(pages);
        fetcher.abort();
        self.unrecorded_requests += requests.swap(0, Ordering::Relaxed) as i64;
        result
    }

    async fn apply_pages(
        &mut self,
        ctx: &Context<'_>,
        pages: &mut mpsc::Receiver<Result<ReadPage, client::Error>>,
        requests: &AtomicU64,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), PassError> {
        let slice_ends = Instant::now() + SLICE;
        loop {
            // Shutdown does not wait for a slow page; the pass resumes from its checkpoint.
            // While waiting, the leader renews its lease.
            let first = loop {
                tokio::select! {
                    biased;
                    () = ctx.stop.cancelled() => return Err(PassError::Interrupted),
                    page = pages.recv() => match page {
                        Some(page) => break page,
                        None => return Ok(()),
                    },
                    () = tokio::time::sleep(HEARTBEAT) => {
                        ctx.leader.renew().await?;
                    }
                }
            };
            // This page, and any others already fetched (up to PAGES_PER_COMMIT).
            let mut batch = vec![first?];
            while batch.len() < PAGES_PER_COMMIT {
                match pages.try_recv() {
                    Ok(page) => batch.push(page?),
                    Err(_) => break,
                }
            }
            // The requests behind these pages (counted as they are sent, so a page still
            // being fetched may already count: it is then counted with its own commit).
            let sent = requests.swap(0, Ordering::Relaxed) as i64;
            let last = self.apply_batch(ctx, batch, sent).await?;
            progress(Progress {
                entity: self.entity,
                kind: self.kind,
                counts: self.counts,
            });
            if last {
                return Ok(());
            }
            if ctx.stop.is_cancelled() {
                return Err(PassError::Interrupted);
            }
            if ctx.sliced && self.kind == PassKind::Full && Instant::now() >= slice_ends {
                return Err(PassError::Yielded);
            }
        }
    }

    /// Applies fetched pages and moves the checkpoint past them, in one transaction.
    /// Returns whether the last of them was the stream's last page.
    async fn apply_batch(
        &mut self,
        ctx: &Context<'_>,
        batch: Vec<ReadPage>,
        requests: i64,
    ) -> Result<bool, PassError> {
        let stream = self.entity.stream();
        let mut page = PassCounts {
            pages: batch.len() as i64,
            requests,
            ..PassCounts::default()
        };
        let next_cursor = batch.last().and_then(|p| p.next_cursor.clone());
        let mut observations = Vec::with_capacity(batch.iter().map(|p| p.observations.len()).sum());
        let mut unread_keys = Vec::new();
        let mut unread = Vec::new();
        for read in batch {
            observations.extend(read.observations);
            unread_keys.extend(read.unread_keys);
            unread.extend(read.unread);
            page.invalid += read.invalid;
            page.unkeyed += read.unkeyed;
        }
        let mut tx = ctx.leader.begin().await?;
        // An object the database refuses is set aside; the rest of the page goes on.
        let results =
            apply::apply_or_set_aside(&mut tx, Source::Reconcile, None, &observations).await?;
        let refused: Vec<set_aside::Refused> = unread
            .iter()
            .map(|(key, reason, raw)| set_aside::Refused {
                entity: self.entity,
                key,
                error: reason.clone(),
                raw,
            })
            .collect();
        set_aside::record(&mut tx, Source::Reconcile, &refused).await?;
        let changed = |r: &apply::Taken| r.as_ref().is_ok_and(|a| a.changed());
        if self.kind == PassKind::Full {
            // A row this commit wrote has a `synced_at` after the pass began, which spares it
            // from deletion detection already (sync::mark_vanished); only the objects that
            // changed nothing, and those set aside, need a record of being seen.
            let keys: Vec<&str> = observations
                .iter()
                .zip(&results)
                .filter(|(_, r)| !changed(r))
                .map(|(o, _)| o.key.as_str())
                .chain(unread_keys.iter().map(String::as_str))
                .collect();
            if !keys.is_empty() {
                page.marked = sync::mark_seen(&mut tx, stream, self.id, &keys).await?;
            }
        }
        page.seen = observations.len() as i64 + page.invalid;
        page.invalid += results.iter().filter(|r| r.is_err()).count() as i64;
        page.changed = results.iter().filter(|r| changed(r)).count() as i64;
        page.repairs = if self.counts_repairs(ctx) {
            page.changed
        } else {
            0
        };
        if !sync::record_page(&mut tx, stream, self.id, next_cursor.as_deref(), &page).await? {
            tx.rollback().await?;
            return Err(PassError::Superseded);
        }
        tx.commit().await?;

        let label = StreamLabel { stream };
        let metrics = ctx.metrics;
        metrics
            .reconcile_objects_seen
            .get_or_create(&label)
            .inc_by(page.seen as u64);
        metrics
            .reconcile_objects_changed
            .get_or_create(&label)
            .inc_by(page.changed as u64);
        metrics
            .reconcile_repairs
            .get_or_create(&label)
            .inc_by(page.repairs as u64);
        metrics
            .reconcile_requests
            .get_or_create(&label)
            .inc_by(page.requests as u64);
        self.counts.add(&page);
        Ok(next_cursor.is_none())
    }

    /// The scan completed: after a full scan mark what vanished, then close the pass.
    async fn close(self, ctx: &Context<'_>, started: Instant) -> Result<Report, PassError> {
        let stream = self.entity.stream();
        let mut tx = ctx.leader.begin().await?;
        let (deleted, warning) = if self.kind == PassKind::Full {
            self.mark_vanished(ctx, &mut tx).await?
        } else {
            (0, None)
        };
        let extra_repairs = if self.counts_repairs(ctx) { deleted } else { 0 };
        let finish = Finish {
            full: self.kind == PassKind::Full,
            deleted,
            extra_repairs,
            requests: self.unrecorded_requests,
            warning: warning.as_deref(),
        };
        if !sync::finish_pass(&mut tx, stream, self.id, finish).await? {
            tx.rollback().await?;
            return Err(PassError::Superseded);
        }
        tx.commit().await?;

        let label = StreamLabel { stream };
        ctx.metrics.reconcile_passes.get_or_create(&label).inc();
        ctx.metrics
            .reconcile_requests
            .get_or_create(&label)
            .inc_by(self.unrecorded_requests as u64);
        ctx.metrics
            .reconcile_deletions
            .get_or_create(&label)
            .inc_by(deleted as u64);
        ctx.metrics
            .reconcile_repairs
            .get_or_create(&label)
            .inc_by(extra_repairs as u64);
        if let Some(w) = &warning {
            tracing::warn!("{w}");
        }
        if self.kind == PassKind::Full && bound_by_full_scans(self.entity, ctx.config) {
            let took = (Utc::now() - self.started_at).to_std().unwrap_or_default();
            let rps = ctx.config.scan_share * ctx.client.requests_per_second();
            let paced =
                Duration::from_secs_f64(self.counts.pages as f64 / rps.max(f64::MIN_POSITIVE));
            let achievable = took.max(paced).mul_f64(1.2) + Duration::from_secs(12);
            if achievable > ctx.config.staleness_bound {
                tracing::warn!(
                    achievable_s = achievable.as_secs(),
                    bound_s = ctx.config.staleness_bound.as_secs(),
                    pages = self.counts.pages,
                    "the request budget cannot meet the staleness bound for this stream's size; \
                     raise PARTNERSTACK_REQUESTS_PER_SECOND or reconcile.scan_share, or accept \
                     the achievable bound"
                );
            }
        }
        ctx.metrics.pass_completed(
            stream,
            (self.counts.requests + self.unrecorded_requests) as u64,
            warning.is_none(),
        );
        let mut counts = self.counts;
        counts.requests += self.unrecorded_requests;
        counts.changed += deleted;
        counts.repairs += extra_repairs;
        counts.deleted = deleted;
        Ok(Report {
            entity: self.entity,
            kind: self.kind,
            resumed: self.resumed,
            counts,
            warning,
            took: started.elapsed(),
        })
    }

    /// Whether rows this pass changes are repairs (webhook loss): not while backfilling,
    /// and only for streams PartnerStack sends webhooks for.
    fn counts_repairs(&self, ctx: &Context<'_>) -> bool {
        !self.backfill && ctx.config.webhook_covered(self.entity)
    }

    /// Marks the rows a completed full scan did not see as deleted, unless a guard holds;
    /// returns how many were marked, and the warning when none could be.
    async fn mark_vanished(
        &self,
        ctx: &Context<'_>,
        tx: &mut PgConnection,
    ) -> Result<(i64, Option<String>), PassError> {
        let stream = self.entity.stream();
        if self.counts.unkeyed > 0 {
            return Ok((
                0,
                Some(format!(
                    "the full scan read {} {stream} objects whose key could not be read, so none \
                     were marked deleted (any stored row could be one of them)",
                    self.counts.unkeyed
                )),
            ));
        }
        let fraction = ctx.config.max_delete_fraction;
        let vanished =
            sync::mark_vanished(tx, self.entity, self.id, self.started_at, fraction).await?;
        Ok(if vanished.marked {
            (vanished.candidates, None)
        } else if vanished.lost {
            (
                0,
                Some(format!(
                    "the record of the {stream} keys this full scan saw was lost (a database \
                     crash empties it), so none were marked deleted; the next full scan will"
                )),
            )
        } else {
            (
                0,
                Some(format!(
                    "the full scan did not see {} of {} live {stream}; above the \
                     max_delete_fraction guard ({fraction}), so none were marked deleted",
                    vanished.candidates, vanished.live
                )),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn pass_bounds_never_overflow() {
        let mut config = Config::load_with_env(None, &Default::default())
            .unwrap()
            .reconcile;
        let now = Utc::now();
        let watermark = now - chrono::Duration::hours(1);
        let minutes = |m| Some(now - chrono::Duration::minutes(m));
        config.overlap = Duration::from_secs(600);
        config.window = Duration::from_secs(1800);
        assert_eq!(
            bounds(PassKind::Incremental, Some(watermark), &config, now),
            (minutes(70), None)
        );
        assert_eq!(
            bounds(PassKind::Window, Some(watermark), &config, now),
            (None, minutes(30))
        );
        assert_eq!(
            bounds(PassKind::Full, Some(watermark), &config, now),
            (None, None)
        );
        // Durations no clock can subtract read everything instead of panicking.
        for huge in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(i64::MAX as u64 / 1000),
        ] {
            config.overlap = huge;
            config.window = huge;
            assert_eq!(
                bounds(PassKind::Incremental, Some(watermark), &config, now),
                (None, None)
            );
            assert_eq!(bounds(PassKind::Window, None, &config, now), (None, None));
        }
    }
}
