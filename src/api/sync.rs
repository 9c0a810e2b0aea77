//! `GET /v1/sync` and `POST /v1/sync/{stream}`: the reconciler's state (read by
//! [`crate::reconcile::status`]), and a pass on demand.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use partnerstack::Entity;

use super::collection::Item;
use super::params::{QueryParams, boolean, names};
use super::{CommonErrors, KeyPath, NotFound};
use crate::db::sync;
use crate::error::ApiError;
use crate::reconcile::status::{self, StreamName, SyncStatus};
use crate::state::AppState;

#[utoipa::path(
    get, path = "/v1/sync", tag = "sync",
    summary = "Reconciler status",
    description = "Per stream: the schedule (watermark, last full scan, back-off), the pass \
        under way and the last one (pages, objects seen, rows changed, repairs, deletions), \
        the total of repairs, i.e. objects whose state no webhook had delivered, and the \
        objects set aside (refused by the copy, with their error) per stream and newest \
        first.",
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
        data: status::load(&state.pool, &state.config, state.reconciler.as_ref()).await?,
    }))
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
