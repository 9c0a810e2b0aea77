//! The relay endpoints' progress: one read model for `GET /v1/relay` and the status page.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::columns::{self, CollectionName};
use crate::config::RelayEndpoint;
use crate::db::relay::{self, EndpointState};
use crate::feed::cursor_of;

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

/// The progress of `endpoints` (the configured ones, in their order), read now.
pub async fn load(pool: &PgPool, endpoints: &[RelayEndpoint]) -> Result<RelayStatus, sqlx::Error> {
    let rows = relay::load_all(pool).await?;
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let row = rows.iter().find(|r| r.name == endpoint.name);
        out.push(endpoint_status(pool, endpoint, row).await?);
    }
    Ok(RelayStatus { endpoints: out })
}

/// One endpoint's progress, from its stored state (`None` before a replica started it).
async fn endpoint_status(
    pool: &PgPool,
    endpoint: &RelayEndpoint,
    row: Option<&EndpointState>,
) -> Result<EndpointStatus, sqlx::Error> {
    let tables: Option<Vec<&str>> = endpoint
        .entities
        .as_ref()
        .map(|list| list.iter().map(|e| columns::table(*e)).collect());
    let position = row.map(EndpointState::position).transpose()?.flatten();
    let (pending, oldest) = match row {
        Some(_) => relay::backlog(pool, position, tables.as_deref(), PENDING_CAP).await?,
        None => (0, None),
    };
    let lag_seconds = oldest.map_or(0.0, |at| {
        ((Utc::now() - at).num_milliseconds().max(0) as f64) / 1000.0
    });
    Ok(EndpointStatus {
        name: endpoint.name.clone(),
        url: endpoint.public_url(),
        entities: endpoint
            .entities
            .as_ref()
            .map(|list| list.iter().copied().map(CollectionName).collect()),
        started: row.is_some(),
        // `(0, 0)` is the start of an empty feed: no change delivered yet.
        position: position.filter(|p| p.id > 0).map(cursor_of),
        delivered: row.map_or(0, |r| r.delivered),
        pending,
        lag_seconds,
        failures: row.map_or(0, |r| r.failures),
        last_error: row.and_then(|r| r.last_error.clone()),
        last_error_at: row.and_then(|r| r.last_error_at),
        last_delivered_at: row.and_then(|r| r.last_delivered_at),
        runner: row.and_then(|r| r.runner.clone()),
        replay_requested_at: row.and_then(|r| r.replay_requested_at),
    })
}
