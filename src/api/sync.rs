//! `GET /v1/sync` and `POST /v1/sync/{stream}`: the reconciler's state, and a pass on
//! demand.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use partnerstack::Entity;

use super::collection::Item;
use super::params::{QueryParams, boolean, names};
use super::{CommonErrors, KeyPath, NotFound};
use crate::db::sync::{self, PassCounts, PassKind, StreamState};
use crate::error::ApiError;
use crate::reconcile::{Coverage, Freshness, freshness};
use crate::state::AppState;

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
    pub streams: Vec<StreamStatus>,
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
    /// Streams kept fresh by full scans (poll-only, no "updated since" filter): the
    /// configured staleness bound, in seconds.
    pub staleness_bound_seconds: Option<u64>,
    /// The staleness the passes can achieve with the request budget, as the last scan
    /// went, in seconds. Above `staleness_bound_seconds`, the bound is not met.
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

fn status(state: StreamState, entity: Entity, enabled: bool, freshness: Freshness) -> StreamStatus {
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
        staleness_bound_seconds: freshness.bound.map(seconds),
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
    }
}

#[utoipa::path(
    get, path = "/v1/sync", tag = "sync",
    summary = "Reconciler status",
    description = "Per stream: the schedule (watermark, last full scan, back-off), the pass \
        under way and the last one (pages, objects seen, rows changed, repairs, deletions), \
        and the total of repairs, i.e. objects whose state no webhook had delivered.",
    responses(
        (status = 200, description = "The reconciler's state", body = Item<SyncStatus>),
        CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn sync_status(
    State(state): State<AppState>,
) -> Result<Json<Item<SyncStatus>>, ApiError> {
    Ok(Json(Item {
        data: load(&state).await?,
    }))
}

/// The reconciler's state as `GET /v1/sync` serves it (also read by the status page).
pub async fn load(state: &AppState) -> Result<SyncStatus, ApiError> {
    let enabled_streams: &[Entity] = match &state.reconciler {
        Some(r) => &r.config().streams,
        None => &[],
    };
    let rows = sync::load_all(&state.pool).await?;
    let now = Utc::now();
    let rps = state.config.partnerstack.requests_per_second;
    // A row of a stream this version does not know (left by another) is not shown.
    let streams = rows
        .into_iter()
        .filter_map(|row| {
            let entity = Entity::from_stream(&row.stream)?;
            let enabled = enabled_streams.contains(&entity);
            let freshness = freshness(&row, entity, &state.config.reconcile, rps, now);
            Some(status(row, entity, enabled, freshness))
        })
        .collect();
    Ok(SyncStatus {
        enabled: state.reconciler.is_some(),
        leader: state.reconciler.as_ref().is_some_and(|r| r.is_leader()),
        runner: state.reconciler.as_ref().map(|r| r.runner().to_string()),
        streams,
    })
}

/// The answer to `POST /v1/sync/{stream}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncRequested {
    /// The leader starts the pass within seconds.
    pub status: super::Acceptance,
    pub stream: StreamName,
    /// A full scan was asked for.
    pub full: bool,
}

/// Query parameters of `POST /v1/sync/{stream}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncParams {
    /// Scan everything and mark vanished objects deleted: `true` or `false` (default).
    #[param(value_type = Option<bool>)]
    pub full: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/sync/{stream}", tag = "sync",
    summary = "Start a reconcile pass now",
    description = "Asks the reconciler (whichever replica leads) to run a pass of this \
        stream as soon as it can, usually within seconds. With `full=true` the pass scans \
        everything and marks vanished objects deleted.",
    params(
        ("stream" = StreamName, Path, description = "The stream to reconcile"),
        SyncParams,
    ),
    responses(
        (status = 202, description = "The pass is requested", body = SyncRequested),
        (status = 409, description = "The reconciler is off on this deployment", body = crate::error::ErrorBody),
        NotFound,
        CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn request_sync(
    State(state): State<AppState>,
    KeyPath(stream): KeyPath,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<(StatusCode, Json<SyncRequested>), ApiError> {
    let params = QueryParams::parse(query.as_deref(), &names::<SyncParams>())?;
    let full = boolean("full", params.read::<SyncParams>()?.full.as_deref())?.unwrap_or(false);
    let Some(reconciler) = &state.reconciler else {
        return Err(ApiError::conflict(
            "the reconciler is off here (no PartnerStack credentials, or PSYNC_RECONCILE_INTERVAL=off)",
        ));
    };
    let entity = Entity::from_stream(&stream)
        .filter(|e| reconciler.config().streams.contains(e))
        .ok_or_else(|| ApiError::not_found(format!("no enabled stream named {stream:?}")))?;
    // A write: run it off the request future, so a client hanging up cannot cancel it
    // halfway (ARCHITECTURE.md, rule 2).
    let pool = state.pool.clone();
    let write = tokio::spawn(async move { sync::request(&pool, entity.stream(), full).await });
    if !write.await.map_err(ApiError::internal)?? {
        // The leader creates stream rows when it starts; until then, nothing to flag.
        return Err(ApiError::unavailable(
            "the reconciler has not started yet; retry later",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncRequested {
            status: super::Acceptance::Accepted,
            stream: StreamName(entity),
            full,
        }),
    ))
}
