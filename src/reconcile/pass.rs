//! One pass over one stream: plan (or resume) it, page through PartnerStack, apply each
//! page through the one door with its checkpoint in the same transaction, and close it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Observation, Source};
use crate::config::ReconcileConfig;
use crate::db::sync::{self, Finish, PageTotals, PassPlan, StreamState};
use crate::partnerstack::client::{self, Client, ListQuery, Page};
use crate::partnerstack::models::{Entity, Meta};
use crate::telemetry::{Metrics, StreamLabel};

/// Pages applied together, when they are already fetched: fewer commits and statements,
/// the same checkpoint rule (the checkpoint moves past the last page of the commit).
const PAGES_PER_COMMIT: usize = 4;

/// The kinds of pass (see `config/default.toml`, `[reconcile]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Everything, no filter; afterwards, rows not seen are marked deleted.
    Full,
    /// Objects updated since the watermark minus the overlap.
    Incremental,
    /// Objects created within the window (streams without an update filter).
    Window,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
            Kind::Window => "window",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "incremental" => Kind::Incremental,
            "window" => Kind::Window,
            _ => Kind::Full,
        }
    }
}

/// Streams whose list has an "updated since" filter.
fn has_update_filter(entity: Entity) -> bool {
    client::supported_filters(entity).contains(&client::Filter::MinUpdated)
}

/// The kind of pass a stream is due for.
pub fn plan(
    state: &StreamState,
    entity: Entity,
    config: &ReconcileConfig,
    force_full: bool,
    now: DateTime<Utc>,
) -> Kind {
    let full_due = state.last_full_at.is_none_or(|at| {
        now - at
            >= chrono::Duration::from_std(config.full_interval).unwrap_or(chrono::Duration::MAX)
    });
    if force_full || state.requested_full || state.watermark.is_none() || full_due {
        Kind::Full
    } else if has_update_filter(entity) {
        Kind::Incremental
    } else {
        Kind::Window
    }
}

/// The filter of a new pass of `kind`: `(min_updated, min_created)`. A bound that cannot
/// be represented is left out, which reads more, never less.
fn bounds(
    kind: Kind,
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
        Kind::Full => (None, None),
        Kind::Incremental => (watermark.and_then(|w| before(w, config.overlap)), None),
        Kind::Window => (None, before(now, config.window)),
    }
}

/// What a pass did.
#[derive(Debug, Clone)]
pub struct Report {
    pub entity: Entity,
    pub kind: Kind,
    pub resumed: bool,
    pub pages: i64,
    pub seen: i64,
    pub changed: i64,
    pub repairs: i64,
    pub deleted: i64,
    pub invalid: i64,
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
}

impl PassError {
    /// The next attempt should start afresh rather than resume (its cursor cannot work).
    pub fn abandons_checkpoint(&self) -> bool {
        matches!(self, PassError::Fetch(client::Error::StalledCursor { .. }))
    }
}

/// Progress of a running pass, for the command line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub entity: Entity,
    pub kind: Kind,
    pub pages: i64,
    pub seen: i64,
    pub changed: i64,
}

/// Everything a pass needs besides the leader's connection.
pub struct Context<'a> {
    pub client: &'a Client,
    pub config: &'a ReconcileConfig,
    pub metrics: &'a Metrics,
    pub runner: &'a str,
    pub stop: &'a CancellationToken,
}

/// Runs (or resumes) one pass of `entity`'s stream on the leader's connection.
pub async fn run(
    ctx: &Context<'_>,
    conn: &mut PgConnection,
    entity: Entity,
    force_full: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Report, PassError> {
    let started = Instant::now();
    let stream = entity.stream();
    let state = sync::load(conn, stream).await?;
    // A backfill (no pass ever completed) is an import, not a repair of lost webhooks.
    let backfill = state.watermark.is_none();
    let resumable = state.pass_id.is_some()
        && !(force_full && state.pass_kind.as_deref() != Some("full"))
        && !(state.requested_full && state.pass_kind.as_deref() != Some("full"));

    let (pass_id, kind, query, pass_started, mut totals) = if resumable {
        let pass_id = state.pass_id.unwrap_or_default();
        // Taking the pass up answers any request for one (so a failure backs off as usual).
        if !sync::resume_pass(conn, stream, pass_id, ctx.runner).await? {
            return Err(PassError::Superseded);
        }
        let kind = Kind::parse(state.pass_kind.as_deref().unwrap_or("full"));
        let query = ListQuery {
            min_updated: state.pass_min_updated,
            min_created: state.pass_min_created,
            starting_after: state.pass_cursor.clone(),
            ..ListQuery::default()
        };
        let totals = PageTotals {
            seen: state.pass_seen,
            changed: state.pass_changed,
            repairs: state.pass_repairs,
            invalid: state.pass_invalid,
            marked: state.pass_marked,
            unkeyed: state.pass_unkeyed,
        };
        let pages = state.pass_pages;
        tracing::info!(
            stream,
            kind = kind.as_str(),
            pages,
            "resuming a reconcile pass from its checkpoint"
        );
        (
            pass_id,
            kind,
            query,
            state.pass_started_at.unwrap_or_else(Utc::now),
            (pages, totals),
        )
    } else {
        let now = Utc::now();
        let kind = plan(&state, entity, ctx.config, force_full, now);
        let (min_updated, min_created) = bounds(kind, state.watermark, ctx.config, now);
        let plan = PassPlan {
            kind: kind.as_str(),
            min_updated,
            min_created,
        };
        let (pass_id, pass_started) = sync::begin_pass(conn, stream, plan, ctx.runner).await?;
        let query = ListQuery {
            min_updated,
            min_created,
            ..ListQuery::default()
        };
        (
            pass_id,
            kind,
            query,
            pass_started,
            (0, PageTotals::default()),
        )
    };
    let resumed = resumable;
    // Only the last page leaves no cursor: a pass that failed after it has read everything
    // and only needs closing.
    let read_all = resumed && state.pass_pages > 0 && state.pass_cursor.is_none();

    if !read_all {
        // Fetch ahead while earlier pages are applied; the channel holds a few pages, so
        // memory stays bounded whatever the stream's size.
        let (pages_tx, mut pages_rx) =
            mpsc::channel::<Result<Page, client::Error>>(PAGES_PER_COMMIT);
        let mut pager = ctx.client.pages(entity, query);
        let fetcher = tokio::spawn(async move {
            loop {
                match pager.next_page().await {
                    Ok(Some(page)) => {
                        if pages_tx.send(Ok(page)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = pages_tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        let result = apply_pages(
            ctx,
            conn,
            entity,
            kind,
            pass_id,
            backfill,
            &mut pages_rx,
            &mut totals,
            progress,
        )
        .await;
        drop(pages_rx);
        fetcher.abort();
        result?;
    }

    // The scan completed: close the pass, and after a full scan mark what vanished.
    let mut tx = conn.begin().await?;
    let (mut deleted, mut warning) = (0, None);
    if kind == Kind::Full && totals.1.unkeyed > 0 {
        warning = Some(format!(
            "the full scan read {} {stream} objects whose key could not be read, so none were \
             marked deleted (any stored row could be one of them)",
            totals.1.unkeyed
        ));
    } else if kind == Kind::Full {
        let vanished = sync::mark_vanished(
            &mut tx,
            entity,
            pass_id,
            pass_started,
            ctx.config.max_delete_fraction,
        )
        .await?;
        if vanished.marked {
            deleted = vanished.candidates;
        } else if vanished.lost {
            warning = Some(format!(
                "the record of the {stream} keys this full scan saw was lost (a database \
                 crash empties it), so none were marked deleted; the next full scan will"
            ));
        } else {
            warning = Some(format!(
                "the full scan did not see {} of {} live {}; above the max_delete_fraction guard \
                 ({}), so none were marked deleted",
                vanished.candidates, vanished.live, stream, ctx.config.max_delete_fraction
            ));
        }
    }
    let extra_repairs = if backfill { 0 } else { deleted };
    let finish = Finish {
        full: kind == Kind::Full,
        deleted,
        extra_repairs,
        warning: warning.as_deref(),
    };
    if !sync::finish_pass(&mut tx, stream, pass_id, finish).await? {
        tx.rollback().await?;
        return Err(PassError::Superseded);
    }
    tx.commit().await?;

    let label = StreamLabel { stream };
    ctx.metrics.reconcile_passes.get_or_create(&label).inc();
    ctx.metrics
        .reconcile_deletions
        .get_or_create(&label)
        .inc_by(deleted as u64);
    ctx.metrics
        .reconcile_repairs
        .get_or_create(&label)
        .inc_by(extra_repairs as u64);
    if let Some(w) = &warning {
        tracing::warn!(stream, "{w}");
    }
    let (pages, t) = totals;
    Ok(Report {
        entity,
        kind,
        resumed,
        pages,
        seen: t.seen,
        changed: t.changed + deleted,
        repairs: t.repairs + extra_repairs,
        deleted,
        invalid: t.invalid,
        warning,
        took: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn apply_pages(
    ctx: &Context<'_>,
    conn: &mut PgConnection,
    entity: Entity,
    kind: Kind,
    pass_id: i64,
    backfill: bool,
    pages: &mut mpsc::Receiver<Result<Page, client::Error>>,
    totals: &mut (i64, PageTotals),
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), PassError> {
    let stream = entity.stream();
    let label = StreamLabel { stream };
    loop {
        // Shutdown does not wait for a slow page; the pass resumes from its checkpoint.
        let first = tokio::select! {
            biased;
            () = ctx.stop.cancelled() => return Err(PassError::Interrupted),
            page = pages.recv() => match page {
                Some(page) => page,
                None => return Ok(()),
            },
        };
        // This page, and any others already fetched (up to PAGES_PER_COMMIT).
        let mut batch = vec![first?];
        while batch.len() < PAGES_PER_COMMIT {
            match pages.try_recv() {
                Ok(page) => batch.push(page?),
                Err(_) => break,
            }
        }
        let page_count = batch.len() as i64;
        let next_cursor = batch.last().and_then(|p| p.next_cursor.clone());
        let mut observations = Vec::with_capacity(batch.iter().map(|p| p.items.len()).sum());
        // Keys of objects that do not read: still seen, so a full scan does not take their
        // rows for vanished.
        let mut unread_keys = Vec::new();
        let (mut invalid, mut unkeyed) = (0, 0);
        for item in batch.into_iter().flat_map(|p| p.items) {
            let key = Meta::identity_of(&item);
            match Observation::parse(entity, item, false) {
                Ok(o) => observations.push(o),
                Err(reason) => {
                    invalid += 1;
                    // Postgres text cannot hold U+0000: such a key is not recordable.
                    match key.filter(|k| !k.contains('\0')) {
                        Some(key) => unread_keys.push(key),
                        None => unkeyed += 1,
                    }
                    tracing::warn!(stream, %reason, "PartnerStack sent an object the service cannot read; skipped");
                }
            }
        }
        let mut tx = conn.begin().await?;
        let results = apply::apply(&mut tx, Source::Reconcile, &observations).await?;
        let mut marked = 0;
        if kind == Kind::Full {
            let keys: Vec<&str> = observations
                .iter()
                .map(|o| o.key.as_str())
                .chain(unread_keys.iter().map(String::as_str))
                .collect();
            marked = sync::mark_seen(&mut tx, stream, pass_id, &keys).await?;
        }
        let changed = results.iter().filter(|r| r.changed()).count() as i64;
        let page_totals = PageTotals {
            seen: observations.len() as i64 + invalid,
            changed,
            repairs: if backfill { 0 } else { changed },
            invalid,
            marked,
            unkeyed,
        };
        if !sync::record_page(
            &mut tx,
            stream,
            pass_id,
            next_cursor.as_deref(),
            page_count,
            page_totals,
        )
        .await?
        {
            tx.rollback().await?;
            return Err(PassError::Superseded);
        }
        tx.commit().await?;

        ctx.metrics
            .reconcile_objects_seen
            .get_or_create(&label)
            .inc_by(page_totals.seen as u64);
        ctx.metrics
            .reconcile_objects_changed
            .get_or_create(&label)
            .inc_by(changed as u64);
        ctx.metrics
            .reconcile_repairs
            .get_or_create(&label)
            .inc_by(page_totals.repairs as u64);
        totals.0 += page_count;
        totals.1.seen += page_totals.seen;
        totals.1.changed += page_totals.changed;
        totals.1.repairs += page_totals.repairs;
        totals.1.invalid += page_totals.invalid;
        totals.1.unkeyed += page_totals.unkeyed;
        progress(Progress {
            entity,
            kind,
            pages: totals.0,
            seen: totals.1.seen,
            changed: totals.1.changed,
        });
        if next_cursor.is_none() {
            return Ok(()); // the last page
        }
        if ctx.stop.is_cancelled() {
            return Err(PassError::Interrupted);
        }
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
            bounds(Kind::Incremental, Some(watermark), &config, now),
            (minutes(70), None)
        );
        assert_eq!(
            bounds(Kind::Window, Some(watermark), &config, now),
            (None, minutes(30))
        );
        assert_eq!(
            bounds(Kind::Full, Some(watermark), &config, now),
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
                bounds(Kind::Incremental, Some(watermark), &config, now),
                (None, None)
            );
            assert_eq!(bounds(Kind::Window, None, &config, now), (None, None));
        }
    }
}
