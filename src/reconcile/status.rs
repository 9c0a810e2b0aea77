//! The reconciler's state: one read model for `GET /v1/sync`, the status page and the
//! staleness figures of `/metrics`, so none of them can disagree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::{Coverage, Freshness, Reconciler, freshness};
use crate::check::settled::{self, AnswerStatus};
use crate::config::Config;
use crate::db::set_aside::{self, SetAsideObject};
use crate::db::sync::{self, PassCounts, PassKind, StreamState};

/// The reconciler as this replica sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncStatus {
    /// False when the reconciler is off (no PartnerStack credentials, or
    /// `PSYNC_RECONCILE_INTERVAL=off`).
    pub enabled: bool,
    /// True when this replica is the one reconciling (one replica at a time is).
    pub leader: bool,
    /// This replica's reconciler identity (host:pid:id), when enabled.
    pub runner: Option<String>,
    /// PartnerStack requests this replica sent since it started (each attempt), by what
    /// they were spent on; when the reconciler is enabled.
    pub requests: Option<RequestsSpent>,
    pub streams: Vec<StreamStatus>,
    /// Objects the copy refused (they do not read, or the database refused them), newest
    /// first, at most 50: each set aside with its error while the rest of its page, batch
    /// or write went on, and tried again whenever it is seen again.
    pub set_aside: Vec<SetAsideObject>,
    /// Each question `partnerstack-sync check` asks the account: settled (with its answer
    /// and when) or still a guess, and what the service does either way.
    pub answers: Vec<AnswerStatus>,
}

/// Requests sent to PartnerStack, by what they were spent on.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct RequestsSpent {
    /// Reconcile passes' list pages (each pass's own are in its `requests`).
    pub reconcile: u64,
    /// Reads verifying webhook deliveries.
    pub verify: u64,
    /// Writes, their look-ups included (each write's own are in `/v1/writes`).
    pub write: u64,
    /// Anything else.
    pub other: u64,
    /// All of them.
    pub total: u64,
}

impl From<partnerstack::client::Spent> for RequestsSpent {
    fn from(spent: partnerstack::client::Spent) -> RequestsSpent {
        RequestsSpent {
            reconcile: spent.reconcile,
            verify: spent.verify,
            write: spent.write,
            other: spent.other,
            total: spent.total(),
        }
    }
}

/// A reconcile stream's name (`partnerships`, `customers`, ...): served as that word,
/// described in OpenAPI as the enum `Stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamName(pub Entity);

impl Serialize for StreamName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.stream())
    }
}

impl utoipa::PartialSchema for StreamName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::columns::word_enum(
            "A reconcile stream: PartnerStack's list of one kind of object.",
            Entity::ALL.into_iter().map(Entity::stream),
        )
    }
}

impl ToSchema for StreamName {
    fn name() -> std::borrow::Cow<'static, str> {
        "Stream".into()
    }
}

/// One stream's schedule, progress and results.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamStatus {
    pub stream: StreamName,
    /// Whether this replica's configuration reconciles it.
    pub enabled: bool,
    /// `webhooks`: PartnerStack sends webhooks for it and passes repair what they miss;
    /// `poll`: only passes keep it fresh.
    pub coverage: Coverage,
    /// Worst-case staleness now, in seconds: a change PartnerStack made this long ago may
    /// not be in the copy yet (passes alone guarantee this much; webhooks usually do far
    /// better). Null before the first completed pass.
    pub staleness_seconds: Option<u64>,
    /// The staleness the stream should stay within, in seconds: a figure of the settings
    /// (`poll` streams: `reconcile.staleness_bound`; `webhooks` streams: the interval, its
    /// 10% jitter and `reconcile.pass_budget`), the same in `/metrics`
    /// (`psync_reconcile_staleness_bound_seconds`) and on `/status`.
    pub staleness_bound_seconds: u64,
    /// The staleness the passes can achieve with the request budget, as the last
    /// completed scan or pass went, in seconds. Above `staleness_bound_seconds`, the bound
    /// is not met.
    pub achievable_staleness_seconds: u64,
    /// Incremental passes read what changed since this (minus the overlap margin).
    pub watermark: Option<DateTime<Utc>>,
    /// When the last completed full scan began.
    pub last_full_at: Option<DateTime<Utc>>,
    /// The pass under way (or paused, to be resumed from its checkpoint).
    pub in_progress: Option<PassFigures>,
    /// The last pass that ended.
    pub last: Option<PassFigures>,
    /// Rows repaired since the first completed pass: objects whose state no webhook had
    /// delivered (the measured webhook loss).
    pub total_repairs: i64,
    /// Consecutive failed attempts.
    pub failures: i32,
    /// When a failing stream is tried again.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// A pass asked for with `POST /v1/sync/{stream}` and not started yet.
    pub requested_at: Option<DateTime<Utc>>,
    /// The replica that ran the current or last pass.
    pub runner: Option<String>,
    /// Objects of this stream set aside now (see `set_aside` above).
    pub set_aside: i64,
}

/// A pass's figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct PassFigures {
    pub kind: Option<PassKind>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Ended passes only.
    pub status: Option<sync::PassStatus>,
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: PassCounts,
}

/// One stream's figures from its stored state.
fn stream_status(
    state: StreamState,
    entity: Entity,
    enabled: bool,
    freshness: Freshness,
) -> StreamStatus {
    let in_progress = state.pass_id.map(|_| PassFigures {
        kind: state.pass_kind,
        started_at: state.pass_started_at,
        finished_at: None,
        status: None,
        error: None,
        counts: state.pass,
    });
    let last = state.last_finished_at.map(|finished| PassFigures {
        kind: state.last_kind,
        started_at: state.last_started_at,
        finished_at: Some(finished),
        status: state.last_status,
        error: state.last_error.clone(),
        counts: state.last,
    });
    let seconds = |d: Duration| d.as_secs();
    StreamStatus {
        stream: StreamName(entity),
        enabled,
        coverage: freshness.coverage,
        staleness_seconds: freshness.staleness.map(seconds),
        staleness_bound_seconds: seconds(freshness.bound),
        achievable_staleness_seconds: seconds(freshness.achievable),
        watermark: state.watermark,
        last_full_at: state.last_full_at,
        in_progress,
        last,
        total_repairs: state.total_repairs,
        failures: state.failures,
        next_attempt_at: state.next_attempt_at,
        requested_at: state.requested_at,
        runner: state.runner,
        set_aside: 0,
    }
}

/// Objects set aside listed by [`load`].
const SET_ASIDE_LISTED: i64 = 50;

/// The reconciler's state now: every stream row this version knows, with its freshness
/// under `config`'s settings; `reconciler` is this replica's, `None` when it is off.
pub async fn load(
    pool: &PgPool,
    config: &Config,
    reconciler: Option<&Reconciler>,
) -> Result<SyncStatus, sqlx::Error> {
    let enabled_streams: &[Entity] = match reconciler {
        Some(r) => &r.config().streams,
        None => &[],
    };
    let rows = sync::load_all(pool).await?;
    let set_aside_counts = set_aside::counts(pool).await?;
    let now = Utc::now();
    let rps = config.partnerstack.requests_per_second;
    // A row of a stream this version does not know (left by another) is not shown.
    let streams = rows
        .into_iter()
        .filter_map(|row| {
            let entity = Entity::from_stream(&row.stream)?;
            let enabled = enabled_streams.contains(&entity);
            let freshness = freshness(&row, entity, &config.reconcile, rps, now);
            let mut status = stream_status(row, entity, enabled, freshness);
            status.set_aside = set_aside_counts.get(&entity).copied().unwrap_or(0);
            Some(status)
        })
        .collect();
    Ok(SyncStatus {
        enabled: reconciler.is_some(),
        leader: reconciler.is_some_and(Reconciler::is_leader),
        runner: reconciler.map(|r| r.runner().to_string()),
        requests: reconciler.map(|r| r.requests_spent().into()),
        streams,
        set_aside: set_aside::recent(pool, SET_ASIDE_LISTED).await?,
        answers: settled::statuses(pool, config).await?,
    })
}
