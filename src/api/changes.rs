//! `GET /v1/changes`, the change feed, and `GET /v1/{collection}/{key}/history`.
//!
//! **The feed's guarantee.** A reader that starts without `after` (or with `after=now`)
//! and passes each page's `ending_cursor` as the next `after` sees every committed change
//! exactly once, and one object's changes in the order they were applied: the log is
//! ordered so that no change can commit behind a cursor already handed out (see
//! [`crate::db::changes`]). `wait` long-polls without holding a database connection: the
//! request sleeps on [`crate::feed::Feed`] and reads again when the head moves.
//!
//! Changes older than the retention period are pruned; a cursor from before the pruning
//! horizon is answered 410, so a reader that fell that far behind knows it (rather than
//! silently missing changes) and resynchronises.

use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::collection::{self, Collection};
use super::cursor::{self, Position};
use super::params::{self, QueryParams};
use crate::apply::Source;
use crate::columns::CollectionName;
use crate::db::changes::{self, Change, FeedPosition, Operation};
use crate::error::ApiError;
use crate::feed::Feed;
use crate::state::AppState;

/// Changes per page when `limit` is absent, and the most.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// The cursor scope of the feed.
const FEED: &str = "changes";

/// One change to one object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChangeItem {
    /// This change's place in the feed: pass it as `after` to read what follows it (or to
    /// replay a relay endpoint from here).
    pub cursor: String,
    /// The change's number: unique, and increasing across one object's changes. The
    /// feed's order across objects is the order of cursors, not of these numbers.
    pub sequence: i64,
    /// The object's collection, as under `/v1`.
    pub entity: CollectionName,
    /// The object's key.
    pub key: String,
    pub operation: Operation,
    /// Where the observation that made the change came from.
    pub source: Source,
    /// The API client whose write caused the change (source `write`); null otherwise.
    pub client: Option<String>,
    /// When the change was applied here.
    pub at: DateTime<Utc>,
    /// The fields that changed, each as `{"old": ..., "new": ...}`; on creation, every
    /// field that has a value (`old` null).
    #[schema(value_type = Object)]
    pub fields: Value,
    /// The object after the change: `key`, its own fields as `/v1` names them (a
    /// transaction's `partner_key` is its own, not the credited partner), `created_at`,
    /// `updated_at` and `deleted_at`.
    #[schema(value_type = Object)]
    pub object: Value,
}

/// A stored change as the API serves it.
pub fn item(change: Change) -> Result<ChangeItem, ApiError> {
    let position = change.position().map_err(ApiError::internal)?;
    let source = Source::parse(&change.source).ok_or_else(|| {
        ApiError::internal(format!(
            "change {} has source {:?}",
            change.id, change.source
        ))
    })?;
    let entity = CollectionName::parse(&change.entity).ok_or_else(|| {
        ApiError::internal(format!(
            "change {} has entity {:?}",
            change.id, change.entity
        ))
    })?;
    let fields = change.fields();
    Ok(ChangeItem {
        cursor: feed_cursor(position),
        sequence: change.id,
        entity,
        key: change.key,
        operation: change.operation,
        source,
        client: change.client,
        at: change.at,
        fields,
        object: change.state,
    })
}

/// The cursor of a feed position.
pub fn feed_cursor(at: FeedPosition) -> String {
    cursor::encode(FEED, &Position::Feed(at))
}

/// The feed position a cursor stands for (400 when it is not a feed cursor; `param`
/// names the parameter it came in).
pub fn feed_position(param: &str, value: &str) -> Result<FeedPosition, ApiError> {
    match cursor::decode_param(param, FEED, value)? {
        Position::Feed(at) => Ok(at),
        _ => Err(ApiError::bad_request(format!(
            "{param} is not a cursor of /v1/changes"
        ))),
    }
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    /// Changes after `after`, oldest first.
    pub items: Vec<ChangeItem>,
    /// True when more changes follow at once; read again with `ending_cursor`.
    pub has_more: bool,
    /// Pass as `after` next time. Always given once the feed has a change (also on an
    /// empty page: it may move past changes the `entity` filter left out).
    pub ending_cursor: Option<String>,
}

/// `{"data": {"items": [...], "has_more": ..., "ending_cursor": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedAnswer {
    pub data: FeedPage,
}

/// Query parameters of `GET /v1/changes`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// The `ending_cursor` of a previous page, or an item's `cursor`. Absent: from the
    /// oldest change kept. `now`: from the current head (an empty page whose
    /// `ending_cursor` marks the present).
    pub after: Option<String>,
    /// Changes per page, 1 to 1000. Default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<String>,
    /// Only changes of these collections, comma-separated (`customers,partners`).
    #[param(value_type = Option<Vec<CollectionName>>, style = Form, explode = false)]
    pub entity: Option<String>,
    /// Seconds to wait for a change when none follows `after`, 0 to 30 (default 0): the
    /// answer comes as soon as one is visible, or empty when the time is up.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 30, default = 0)]
    pub wait: Option<String>,
}

/// A checked `GET /v1/changes` request.
struct FeedRequest {
    after: Option<FeedPosition>,
    now: bool,
    limit: i64,
    entities: Option<Vec<Entity>>,
    wait: Duration,
}

impl FeedRequest {
    fn parse(query: Option<&str>) -> Result<FeedRequest, ApiError> {
        let query = QueryParams::parse(query, &params::names::<FeedParams>())?;
        let p: FeedParams = query.read()?;
        let now = p.after.as_deref().map(str::trim) == Some("now");
        let after = match p.after.as_deref() {
            Some(value) if !now => Some(feed_position("after", value)?),
            _ => None,
        };
        let limit = match p.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit must be an integer from 1 to {MAX_LIMIT}, got {v:?}"
                    ))
                })?,
        };
        let wait = params::wait(p.wait.as_deref())?;
        let entities = p.entity.as_deref().map(parse_entities).transpose()?;
        Ok(FeedRequest {
            after,
            now,
            limit,
            entities,
            wait,
        })
    }
}

/// `partners,rewards` as entities; a 400 naming an unknown one.
fn parse_entities(value: &str) -> Result<Vec<Entity>, ApiError> {
    let mut list = Vec::new();
    for name in value.split(',') {
        let entity = CollectionName::parse(name).map(|c| c.0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "entity {name:?} is not a collection; use partners, customers, transactions, \
                 rewards, groups, deals or leads"
            ))
        })?;
        if !list.contains(&entity) {
            list.push(entity);
        }
    }
    Ok(list)
}

/// The 410 for a cursor from before the pruning horizon.
fn behind_retention() -> ApiError {
    ApiError::gone(
        "after is older than the change log keeps (see retention.changes): changes after it \
         were pruned. Read again with after=now to mark the present, re-read the objects you \
         need from their collections, then follow the feed from that cursor",
    )
}

#[utoipa::path(
    get, path = "/v1/changes", tag = "changes",
    summary = "Read the change feed",
    description = "Every change made to the copy (created, updated, deleted), oldest first, \
        each with the fields that changed and the object's new state. A reader that follows \
        `ending_cursor` from the start sees every committed change exactly once, and one \
        object's changes in the order they were applied. With `wait`, the answer comes as \
        soon as a change is there (long-poll). A cursor older than the retention period is \
        answered 410: re-read what you need and continue from `after=now`.",
    params(FeedParams),
    responses(
        (status = 200, description = "Changes after the cursor, oldest first", body = FeedAnswer),
        (status = 410, description = "The cursor is older than the changes kept", body = crate::error::ErrorBody),
        super::CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list_changes(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<FeedAnswer>, ApiError> {
    let request = FeedRequest::parse(query.as_deref())?;
    let data = read_feed(&state.pool, &state.feed, request).await?;
    Ok(Json(FeedAnswer { data }))
}

async fn read_feed(
    pool: &sqlx::PgPool,
    feed: &Feed,
    request: FeedRequest,
) -> Result<FeedPage, ApiError> {
    if request.now {
        let head = changes::head(pool).await?;
        return Ok(FeedPage {
            items: Vec::new(),
            has_more: false,
            ending_cursor: head.map(feed_cursor),
        });
    }
    let deadline = tokio::time::Instant::now() + request.wait;
    // Subscribed before the first read, so a move in between is not missed.
    let mut moved = feed.subscribe();
    loop {
        moved.borrow_and_update();
        let page = changes::read(
            pool,
            request.after,
            request.entities.as_deref(),
            request.limit,
        )
        .await?;
        if let Some(after) = request.after
            && page.horizon.is_some_and(|h| after < h)
        {
            return Err(behind_retention());
        }
        if !page.changes.is_empty() || tokio::time::Instant::now() >= deadline {
            return page_of(page, request.after, request.limit);
        }
        let woken = tokio::select! {
            r = tokio::time::timeout_at(deadline, moved.changed()) => matches!(r, Ok(Ok(()))),
            _ = feed.stopping() => false,
        };
        if !woken {
            // The time is up, or the service is stopping: answer what there is.
            return page_of(page, request.after, request.limit);
        }
    }
}

fn page_of(
    page: changes::Page,
    after: Option<FeedPosition>,
    limit: i64,
) -> Result<FeedPage, ApiError> {
    let mut list = page.changes;
    let has_more = list.len() as i64 > limit;
    list.truncate(limit as usize);
    let last = match list.last() {
        Some(c) => Some(c.position().map_err(ApiError::internal)?),
        None => None,
    };
    // With no more to read, everything up to the visible head was considered: the
    // cursor may move there, past changes a filter left out.
    let ending = if has_more {
        last
    } else {
        [after, last, page.head].into_iter().flatten().max()
    };
    let items = list.into_iter().map(item).collect::<Result<Vec<_>, _>>()?;
    Ok(FeedPage {
        items,
        has_more,
        ending_cursor: ending.map(feed_cursor),
    })
}

/// A page of one object's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// The object's changes, newest first.
    pub items: Vec<ChangeItem>,
    /// True when older changes follow.
    pub has_more: bool,
    /// Pass as `starting_after` for the next (older) page; null on the last page.
    pub ending_cursor: Option<String>,
}

/// `{"data": {...}}` around a history page.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryAnswer {
    pub data: HistoryPage,
}

/// Query parameters of the history routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Changes per page, 1 to 250. Default 25.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 250, default = 25)]
    pub limit: Option<String>,
    /// The `ending_cursor` of the previous page.
    pub starting_after: Option<String>,
}

/// `GET /v1/{collection}/{key}/history` for collection `C` of `entity`.
pub async fn history<C: Collection>(
    pool: &sqlx::PgPool,
    entity: Entity,
    key: &str,
    query: Option<&str>,
) -> Result<HistoryAnswer, ApiError> {
    let query = QueryParams::parse(query, &params::names::<HistoryParams>())?;
    let p: HistoryParams = query.read()?;
    let limit = params::limit(p.limit.as_deref())?;
    let scope = format!("{}/history", C::NAME);
    let before = match p.starting_after.as_deref() {
        None => None,
        Some(c) => match cursor::decode(&scope, c)? {
            Position::Id(id) => Some(id),
            _ => {
                return Err(ApiError::bad_request(
                    "starting_after is not a history cursor",
                ));
            }
        },
    };
    let stored = collection::resolve_key::<C>(pool, key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {} {key:?}", C::NOUN)))?;
    let mut list = changes::history(pool, entity, &stored, before, limit).await?;
    let has_more = list.len() as i64 > limit;
    list.truncate(limit as usize);
    let ending_cursor = match list.last() {
        Some(last) if has_more => Some(cursor::encode(&scope, &Position::Id(last.id))),
        _ => None,
    };
    let items = list.into_iter().map(item).collect::<Result<Vec<_>, _>>()?;
    Ok(HistoryAnswer {
        data: HistoryPage {
            items,
            has_more,
            ending_cursor,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_parameters_are_checked() {
        let ok = FeedRequest::parse(Some("limit=1000&wait=30&entity=partners,rewards")).unwrap();
        assert_eq!((ok.limit, ok.wait), (1000, params::MAX_WAIT));
        assert_eq!(ok.entities.unwrap(), [Entity::Partner, Entity::Reward]);
        assert!(FeedRequest::parse(Some("after=now")).unwrap().now);
        for (bad, named) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("wait=31", "wait"),
            ("wait=1.5", "wait"),
            ("entity=rewardz", "rewardz"),
            ("after=abc", "after"),
            ("starting_after=x", "starting_after"),
        ] {
            let err = FeedRequest::parse(Some(bad)).err().unwrap();
            assert_eq!(err.status(), 400, "{bad}");
            let body = format!("{err:?}");
            assert!(body.contains(named), "{bad}: {body}");
        }
    }
}
