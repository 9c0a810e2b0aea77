//! One implementation of a collection and its items, shared by every resource.
//!
//! A resource describes itself once ([`Collection`]: its table, columns, filters, sort
//! position and item lookup); [`list`] and [`get`] do the rest. Lists use keyset
//! pagination on the collection's index order (`created_at DESC, key DESC`, or `id DESC`
//! for events): a page starts strictly after the previous page's last item, so rows
//! inserted between requests never shift later pages, and no `OFFSET` scan grows with
//! depth. Queries are plain `SELECT`s in the request future: reads hold no transaction,
//! so a client hanging up cannot leave a connection in a bad state.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::cursor::{self, Position};
use super::params::{self, Deleted, Include, Paging, QueryParams};
use crate::error::ApiError;

/// The order a collection is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `created_at DESC, key DESC` (the table's `t.created_at`, `t.key`).
    CreatedKey,
    /// `id DESC` (the event log).
    Id,
}

/// What a resource tells the shared implementation about itself.
pub trait Collection {
    /// The path segment under `/v1`; also scopes cursors.
    const NAME: &'static str;
    /// The object's name in messages ("partner").
    const NOUN: &'static str;
    /// `FROM` clause: the table aliased `t`, plus any joins the columns need.
    const FROM: &'static str;
    /// The select list, without the optional body column.
    const COLUMNS: &'static str;
    /// The optional body column with its alias, selected when asked for with `include`.
    const BODY: &'static str;
    /// What is selected in its place otherwise (a typed NULL with the same alias).
    const NO_BODY: &'static str;
    /// The `include` value that asks for the body.
    const INCLUDE: &'static str;
    /// The time `updated_since` compares with.
    const UPDATED: &'static str;
    /// Whether the table has `deleted_at` (and so `include_deleted`).
    const SOFT_DELETE: bool;
    /// The list order, which is also what a cursor records.
    const ORDER: Order;
    /// Whether single-object reads always carry the body (events: the payload is the point).
    const ITEM_HAS_BODY: bool = false;

    /// The JSON shape of one object, read from the select list.
    type Item: for<'r> FromRow<'r, PgRow> + Serialize + Send + Unpin;
    /// The resource's own query parameters (all text; checked in [`Collection::filter`]).
    type Filters: DeserializeOwned + IntoParams;

    /// Adds the resource's filters, each as `AND (...)`.
    fn filter(filters: &Self::Filters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError>;

    /// The item's place in the sort order.
    fn position(item: &Self::Item) -> Position;

    /// Adds `WHERE ... ORDER BY ...` selecting the item a path key names, best match first.
    fn lookup(key: &str, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError>;

    /// Last touches on a fetched item (e.g. parsing a stored body).
    fn finish(_item: &mut Self::Item) {}
}

/// A page of a collection, in PartnerStack's list shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// The objects, newest first.
    pub items: Vec<T>,
    /// True when another page follows.
    pub has_more: bool,
    /// Pass as `starting_after` to get the next page; null on the last page.
    pub ending_cursor: Option<String>,
}

/// `{"data": {"items": [...], "has_more": ..., "ending_cursor": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    /// The page.
    pub data: Page<T>,
}

/// `{"data": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Item<T> {
    /// The object.
    pub data: T,
}

/// Every query parameter name a collection's list route accepts.
pub fn accepted<C: Collection>() -> Vec<String> {
    let mut names = params::names::<Paging>();
    if C::SOFT_DELETE {
        names.extend(params::names::<Deleted>());
    }
    names.extend(params::names::<C::Filters>());
    names
}

/// `GET /v1/{collection}`.
pub async fn list<C: Collection>(
    pool: &PgPool,
    query: Option<&str>,
) -> Result<List<C::Item>, ApiError> {
    let (mut q, limit) = list_query::<C>(query)?;
    let mut items: Vec<C::Item> = q.build_query_as().fetch_all(pool).await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    items.iter_mut().for_each(C::finish);
    let ending_cursor = match items.last() {
        Some(last) if has_more => Some(cursor::encode(C::NAME, &C::position(last))),
        _ => None,
    };
    Ok(List {
        data: Page {
            items,
            has_more,
            ending_cursor,
        },
    })
}

/// The statement `GET /v1/{collection}?{query}` runs (it fetches one row more than the
/// page, to tell whether another follows), and the page size. Benchmarks replay it.
pub fn list_query<C: Collection>(
    query: Option<&str>,
) -> Result<(QueryBuilder<Postgres>, i64), ApiError> {
    let query = QueryParams::parse(query, &accepted::<C>())?;
    let paging: Paging = query.read()?;
    let deleted: Deleted = query.read()?;
    let filters: C::Filters = query.read()?;

    let limit = params::limit(paging.limit.as_deref())?;
    let after = paging
        .starting_after
        .as_deref()
        .map(|c| cursor::decode(C::NAME, c))
        .transpose()?;
    let updated_since = params::timestamp("updated_since", paging.updated_since.as_deref())?;
    let with_body = params::include(paging.include.as_deref(), C::INCLUDE)?;
    let include_deleted = C::SOFT_DELETE
        && params::boolean("include_deleted", deleted.include_deleted.as_deref())?.unwrap_or(false);

    let mut q = select::<C>(with_body);
    q.push(" WHERE TRUE");
    if C::SOFT_DELETE && !include_deleted {
        q.push(" AND t.deleted_at IS NULL");
    }
    if let Some(since) = updated_since {
        q.push(" AND ")
            .push(C::UPDATED)
            .push(" >= ")
            .push_bind(since);
    }
    C::filter(&filters, &mut q)?;
    match (C::ORDER, after) {
        (_, None) => {}
        (Order::CreatedKey, Some(Position::Created(at, key))) => {
            // A row comparison, so the (created_at, key) index serves it as a range.
            q.push(" AND (t.created_at, t.key) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(key)
                .push(")");
        }
        (Order::Id, Some(Position::Id(id))) => {
            q.push(" AND t.id < ").push_bind(id);
        }
        // decode() checks the collection, and each collection has one kind of position.
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "starting_after is not a cursor of this collection",
            ));
        }
    }
    q.push(match C::ORDER {
        Order::CreatedKey => " ORDER BY t.created_at DESC, t.key DESC",
        Order::Id => " ORDER BY t.id DESC",
    });
    // One extra row says whether another page follows.
    q.push(" LIMIT ").push_bind(limit + 1);
    Ok((q, limit))
}

/// `GET /v1/{collection}/{key}`: soft-deleted objects are found too (their `deleted_at`
/// says so).
pub async fn get<C: Collection>(
    pool: &PgPool,
    key: &str,
    query: Option<&str>,
) -> Result<Item<C::Item>, ApiError> {
    let query = QueryParams::parse(query, &params::names::<Include>())?;
    let include: Include = query.read()?;
    let with_body = params::include(include.include.as_deref(), C::INCLUDE)? || C::ITEM_HAS_BODY;
    let not_found = || ApiError::not_found(format!("no {} {key:?}", C::NOUN));
    if key.is_empty() || key.contains('\0') {
        return Err(not_found());
    }
    let mut q = select::<C>(with_body);
    C::lookup(key, &mut q)?;
    q.push(" LIMIT 1");
    let mut item: C::Item = q
        .build_query_as()
        .fetch_optional(pool)
        .await?
        .ok_or_else(not_found)?;
    C::finish(&mut item);
    Ok(Item { data: item })
}

fn select<C: Collection>(with_body: bool) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new("SELECT ");
    q.push(C::COLUMNS)
        .push(", ")
        .push(if with_body { C::BODY } else { C::NO_BODY })
        .push(" FROM ")
        .push(C::FROM);
    q
}
