//! `GET /v1/relay` and `POST /v1/relay/{name}/replay`: the relay endpoints' progress, and
//! sending changes again from a chosen cursor.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::changes::{feed_cursor, feed_position};
use super::collection::Item;
use super::params::{QueryParams, names};
use super::{CommonErrors, KeyPath, NotFound};
use crate::columns::{self, CollectionName};
use crate::db::relay::{self, EndpointState};
use crate::error::ApiError;
use crate::state::AppState;

/// Most pending changes counted per endpoint.
const PENDING_CAP: i64 = 10_000;

/// The relay endpoints configured on this replica.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayStatus {
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint's progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointStatus {
    pub name: String,
    /// The endpoint's URL without query string or credentials.
    pub url: String,
    /// The collections relayed; null for all.
    pub entities: Option<Vec<CollectionName>>,
    /// False until a replica has started relaying to it (it then starts at the feed's
    /// head: changes from then on).
    pub started: bool,
    /// The feed cursor after the last change delivered (or passed over as not of its
    /// entities); null before the first change.
    pub position: Option<String>,
    /// Changes delivered (answered 2xx) so far.
    pub delivered: i64,
    /// Changes it has still to receive, counted up to 10000.
    pub pending: i64,
    /// Seconds since the oldest change it has still to receive was applied; 0 when it
    /// is caught up.
    pub lag_seconds: f64,
    /// Failed attempts since the last delivery.
    pub failures: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_delivered_at: Option<DateTime<Utc>>,
    /// The replica that relays (or last relayed) to it: host:pid:id.
    pub runner: Option<String>,
    /// A replay asked for and not carried out yet.
    pub replay_requested_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get, path = "/v1/relay", tag = "relay",
    summary = "Relay endpoints' progress",
    description = "For each configured relay endpoint: its position in the change feed, \
        how many changes it has still to receive and how old the oldest is (lag), its \
        counters, and the last error.",
    responses(
        (status = 200, description = "The endpoints", body = Item<RelayStatus>),
        CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn relay_status(
    State(state): State<AppState>,
) -> Result<Json<Item<RelayStatus>>, ApiError> {
    Ok(Json(Item {
        data: load(&state).await?,
    }))
}

/// The relay endpoints' progress as `GET /v1/relay` serves it (also read by the status
/// page).
pub async fn load(state: &AppState) -> Result<RelayStatus, ApiError> {
    let rows = relay::load_all(&state.pool).await?;
    let mut endpoints = Vec::with_capacity(state.config.relay.len());
    for endpoint in &state.config.relay {
        let tables: Option<Vec<&str>> = endpoint
            .entities
            .as_ref()
            .map(|list| list.iter().map(|e| columns::table(*e)).collect());
        let row = rows.iter().find(|r| r.name == endpoint.name);
        let position = row
            .map(EndpointState::position)
            .transpose()
            .map_err(ApiError::internal)?
            .flatten();
        // `(0, 0)` is the start of an empty feed: no change delivered yet.
        let shown = position.filter(|p| p.id > 0);
        let (pending, oldest) = match row {
            Some(_) => {
                relay::backlog(&state.pool, position, tables.as_deref(), PENDING_CAP).await?
            }
            None => (0, None),
        };
        let lag_seconds = oldest.map_or(0.0, |at| {
            ((Utc::now() - at).num_milliseconds().max(0) as f64) / 1000.0
        });
        endpoints.push(EndpointStatus {
            name: endpoint.name.clone(),
            url: endpoint.public_url(),
            entities: endpoint
                .entities
                .as_ref()
                .map(|list| list.iter().copied().map(CollectionName).collect()),
            started: row.is_some(),
            position: shown.map(feed_cursor),
            delivered: row.map_or(0, |r| r.delivered),
            pending,
            lag_seconds,
            failures: row.map_or(0, |r| r.failures),
            last_error: row.and_then(|r| r.last_error.clone()),
            last_error_at: row.and_then(|r| r.last_error_at),
            last_delivered_at: row.and_then(|r| r.last_delivered_at),
            runner: row.and_then(|r| r.runner.clone()),
            replay_requested_at: row.and_then(|r| r.replay_requested_at),
        });
    }
    Ok(RelayStatus { endpoints })
}

/// Query parameters of `POST /v1/relay/{name}/replay`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayParams {
    /// A feed cursor (a change's `cursor`, or an `ending_cursor`): the endpoint receives
    /// every change after it again. Absent: from the oldest change kept.
    pub after: Option<String>,
}

/// The answer to a replay request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayRequested {
    /// The relaying replica moves the endpoint's position before its next read.
    pub status: super::Acceptance,
    pub name: String,
    /// The cursor the endpoint resumes after (null: the oldest change kept).
    pub after: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/relay/{name}/replay", tag = "relay",
    summary = "Send changes to an endpoint again",
    description = "Moves the endpoint's position back (or forward) to `after`: it receives \
        every change after that cursor again, in order. Messages keep their `webhook-id`, \
        so a receiver that de-duplicates by it ignores those it already processed.",
    params(
        ("name" = String, Path, description = "The endpoint's configured name"),
        ReplayParams,
    ),
    responses(
        (status = 202, description = "The replay is requested", body = ReplayRequested),
        NotFound,
        CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn replay(
    State(state): State<AppState>,
    KeyPath(name): KeyPath,
    RawQuery(query): RawQuery,
) -> Result<(StatusCode, Json<ReplayRequested>), ApiError> {
    let params = QueryParams::parse(query.as_deref(), &names::<ReplayParams>())?;
    let after = params
        .read::<ReplayParams>()?
        .after
        .as_deref()
        .map(|c| feed_position("after", c))
        .transpose()?;
    if !state.config.relay.iter().any(|e| e.name == name) {
        return Err(ApiError::not_found(format!(
            "no relay endpoint named {name:?}"
        )));
    }
    // A write: run it off the request future, so a client hanging up cannot cancel it
    // halfway (ARCHITECTURE.md, rule 2).
    let pool = state.pool.clone();
    let endpoint = name.clone();
    let write = tokio::spawn(async move { relay::request_replay(&pool, &endpoint, after).await });
    if !write.await.map_err(ApiError::internal)?? {
        return Err(ApiError::unavailable(
            "no replica has started relaying to this endpoint yet; retry later",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayRequested {
            status: super::Acceptance::Accepted,
            name,
            after: after.map(feed_cursor),
        }),
    ))
}
