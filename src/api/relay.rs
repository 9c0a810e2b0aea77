//! `GET /v1/relay` and `POST /v1/relay/{name}/replay`: the relay endpoints' progress, and
//! sending changes again from a chosen cursor.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::changes::feed_position;
use super::collection::Item;
use super::params::{QueryParams, names};
use super::{CommonErrors, KeyPath, NotFound};
use crate::db::relay;
use crate::error::ApiError;
use crate::feed::cursor_of;
use crate::relay::status::{self, RelayStatus};
use crate::state::AppState;

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
        data: status::load(&state.pool, &state.config.relay).await?,
    }))
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
            after: after.map(cursor_of),
        }),
    ))
}
