//! One implementation of a collection and its items, shared by every resource.
//!
//! A resource describes itself once ([`Collection`]: its table, columns, filters, sort
//! position and item lookup); [`list`] and [`get`] do the rest. Lists use keyset
//! pagination on the collection's index order (`created_at DESC, key DESC`, or `id DESC`
//! for events): a page starts strictly after the previous page's last item, so rows
//! inserted between requests never shift later pages, and no `OFFSET` scan grows with
//! depth. Queries are plain `SELECT`s in the request future: reads hold no transaction,
//! so a client hanging up cannot leave a connection in a bad state.

use std::num::NonZeroUsize;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use partnerstack::Entity;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::attribution::partner_ids;
use super::cursor::{self, Position};
use super::params::{self, Deleted, Include, IncludeParam, Paging, QueryParams};
use super::rows;
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
    // The defaults describe the entity tables (raw JSON body, soft deletes, newest first).

    /// The optional body column with its alias, selected when asked for with `include`.
    const BODY: &'static str = "t.raw AS raw";
    /// What is selected in its place otherwise (a typed NULL with the same alias).
    const NO_BODY: &'static str = "NULL::jsonb AS raw";
    /// The `include` value that asks for the body, and its description.
    const INCLUDE: IncludeParam = params::INCLUDE_RAW;
    /// The time `updated_since` compares with.
    const UPDATED: &'static str = "COALESCE(t.updated_at, t.created_at)";
    /// Whether the table has `deleted_at` (and so `include_deleted`).
    const SOFT_DELETE: bool = true;
    /// The list order, which is also what a cursor records.
    const ORDER: Order = Order::CreatedKey;
    /// Columns holding a partner identifier (`partner_key=` matches any of them against
    /// every identifier of the partner); each has a `(column, created_at, key)` index.
    const PARTNER_COLUMNS: &'static [&'static str] = &[];
    /// Whether single-object reads always carry the body (events: the payload is the point).
    const ITEM_HAS_BODY: bool = false;
    /// The entity whose table this is, for collections selecting [`crate::columns`]'s rows
    /// (`key`, the declared columns, the record's): their list pages are written straight
    /// from Postgres' rows ([`super::rows`]) rather than through [`Collection::Item`].
    const ENTITY: Option<Entity> = None;

    /// The JSON shape of one object, read from the select list.
    type Item: for<'r> FromRow<'r, PgRow> + Serialize + Send + Unpin;
    /// The resource's own query parameters (all text; checked in [`Collection::filter`]).
    type Filters: DeserializeOwned + IntoParams;

    /// The select list, without the optional body column.
    fn columns() -> &'static str;

    /// The value of the resource's `partner_key` filter, if it has one and it is set.
    fn partner(_filters: &Self::Filters) -> Result<Option<&str>, ApiError> {
        Ok(None)
    }

    /// Adds the resource's filters, each as `AND (...)` (the partner filter aside).
    fn filter(_filters: &Self::Filters, _q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        Ok(())
    }

    /// The item's place in the sort order.
    fn position(item: &Self::Item) -> Position;

    /// Adds `WHERE ... ORDER BY ...` selecting the item a path key names, best match first
    /// (by default, the row whose `key` it is).
    fn lookup(key: &str, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        q.push(" WHERE t.key = ").push_bind(key.to_string());
        Ok(())
    }

    /// Last touches on a fetched item (e.g. wrapping a stored body).
    fn finish(_item: &mut Self::Item) {}

    /// The bytes of the body an item carries (bounded per page by `api.page_bytes`).
    fn body_bytes(item: &Self::Item) -> usize;
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

/// The `include` parameter of `C`'s routes, for their OpenAPI description.
pub struct IncludeBody<C>(std::marker::PhantomData<C>);

impl<C: Collection> IntoParams for IncludeBody<C> {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![C::INCLUDE.parameter()]
    }
}

/// Every query parameter name a collection's list route accepts.
pub fn accepted<C: Collection>() -> Vec<String> {
    let mut names = params::names::<Paging>();
    names.push(IncludeParam::NAME.to_string());
    if C::SOFT_DELETE {
        names.extend(params::names::<Deleted>());
    }
    names.extend(params::names::<C::Filters>());
    names
}

/// A checked list request's statement.
struct Planned {
    q: QueryBuilder<Postgres>,
    /// The most items the page holds.
    limit: usize,
}

impl Planned {
    async fn of<C: Collection>(pool: &PgPool, query: Option<&str>) -> Result<Planned, ApiError> {
        let request = ListRequest::<C>::parse(query)?;
        let partner = match C::partner(&request.filters)? {
            Some(value) => Some(partner_ids(pool, value).await?.ids),
            None => None,
        };
        Ok(Planned {
            q: list_query(&request, partner.as_deref())?,
            limit: usize::try_from(request.limit).unwrap_or(0),
        })
    }
}

/// `GET /v1/{collection}`. A page carrying bodies ends early, with `has_more` and a cursor,
/// once its bodies pass `page_bytes` (it always holds at least one item); rows are read
/// one at a time, so a request holds at most a page's worth of bodies.
pub async fn list<C: Collection>(
    pool: &PgPool,
    query: Option<&str>,
    page_bytes: NonZeroUsize,
) -> Result<List<C::Item>, ApiError> {
    let Planned { mut q, limit } = Planned::of::<C>(pool, query).await?;
    // Rows are streamed, in a transaction of their own (see `db::pooler`), so that a
    // page ending early never reads the rest.
    let mut tx = crate::db::begin(pool).await?;
    let mut rows = q
        .build_query_as::<C::Item>()
        .persistent(false)
        .fetch(&mut *tx);
    let mut items: Vec<C::Item> = Vec::with_capacity(limit.min(64));
    let (mut bytes, mut has_more) = (0usize, false);
    while let Some(item) = rows.try_next().await? {
        let size = C::body_bytes(&item);
        if items.len() == limit
            || (!items.is_empty() && bytes.saturating_add(size) > page_bytes.get())
        {
            has_more = true;
            break;
        }
        bytes = bytes.saturating_add(size);
        items.push(item);
    }
    drop(rows);
    tx.commit().await?;
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

/// A list page as a response: typed items serialized by serde, or (entity collections)
/// the page already written as JSON.
pub enum ListPage<T> {
    Typed(List<T>),
    Written(Vec<u8>),
}

impl<T: Serialize> IntoResponse for ListPage<T> {
    fn into_response(self) -> Response {
        match self {
            ListPage::Typed(list) => axum::Json(list).into_response(),
            ListPage::Written(body) => (
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from(body),
            )
                .into_response(),
        }
    }
}

/// `GET /v1/{collection}` as a response: [`list`], except that entity collections write
/// their page straight from Postgres' rows (same JSON, a fraction of the CPU).
pub async fn list_page<C: Collection>(
    pool: &PgPool,
    query: Option<&str>,
    page_bytes: NonZeroUsize,
) -> Result<ListPage<C::Item>, ApiError> {
    let Some(entity) = C::ENTITY else {
        return list::<C>(pool, query, page_bytes)
            .await
            .map(ListPage::Typed);
    };
    let Planned { mut q, limit } = Planned::of::<C>(pool, query).await?;
    // Streamed in a transaction of their own, as in `list`.
    let mut tx = crate::db::begin(pool).await?;
    let mut rows = q.build().persistent(false).fetch(&mut *tx);
    // About 400 bytes per item without bodies.
    let mut items: Vec<u8> = Vec::with_capacity(limit.min(250) * 400);
    let (mut count, mut bytes, mut has_more) = (0usize, 0usize, false);
    let mut last: Option<Position> = None;
    while let Some(row) = rows.try_next().await? {
        let start = items.len();
        if count > 0 {
            items.push(b',');
        }
        let written = rows::write_entity(entity, &row, &mut items)?;
        if count == limit
            || (count > 0 && bytes.saturating_add(written.body_bytes) > page_bytes.get())
        {
            items.truncate(start);
            has_more = true;
            break;
        }
        bytes = bytes.saturating_add(written.body_bytes);
        count += 1;
        last = Some(written.position);
    }
    drop(rows);
    tx.commit().await?;
    let ending_cursor = match last {
        Some(last) if has_more => Some(cursor::encode(C::NAME, &last)),
        _ => None,
    };
    Ok(ListPage::Written(rows::page(
        &items,
        has_more,
        ending_cursor.as_deref(),
    )))
}

/// A checked `GET /v1/{collection}` request.
struct ListRequest<C: Collection> {
    limit: i64,
    after: Option<Position>,
    updated_since: Option<chrono::DateTime<chrono::Utc>>,
    with_body: bool,
    include_deleted: bool,
    filters: C::Filters,
}

impl<C: Collection> ListRequest<C> {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let query = QueryParams::parse(query, &accepted::<C>())?;
        let paging: Paging = query.read()?;
        let include: Include = query.read()?;
        let deleted: Deleted = query.read()?;
        let filters: C::Filters = query.read()?;
        let request = ListRequest {
            limit: params::limit(paging.limit.as_deref())?,
            after: paging
                .starting_after
                .as_deref()
                .map(|c| cursor::decode(C::NAME, c))
                .transpose()?,
            updated_since: params::timestamp("updated_since", paging.updated_since.as_deref())?,
            with_body: params::include(include.include.as_deref(), C::INCLUDE.word)?,
            include_deleted: C::SOFT_DELETE
                && params::boolean("include_deleted", deleted.include_deleted.as_deref())?
                    .unwrap_or(false),
            filters,
        };
        // Check the resource's filters once here, so building the query cannot fail on them.
        C::filter(&request.filters, &mut QueryBuilder::new(""))?;
        Ok(request)
    }
}

/// The statement of a list request: one more row than the page, to tell whether another
/// follows.
///
/// With a partner filter (`partner`: the partner's identifiers), it is a `UNION ALL` of
/// one branch per partner column and identifier, each an ordered range scan of that
/// column's `(column, created_at, key)` index stopping after a page, merged and
/// de-duplicated: a page costs the same whatever the partner's or the table's size.
fn list_query<C: Collection>(
    request: &ListRequest<C>,
    partner: Option<&[String]>,
) -> Result<QueryBuilder<Postgres>, ApiError> {
    let order = match C::ORDER {
        Order::CreatedKey => " ORDER BY t.created_at DESC, t.key DESC",
        Order::Id => " ORDER BY t.id DESC",
    };
    let Some(ids) = partner.filter(|_| !C::PARTNER_COLUMNS.is_empty()) else {
        let mut q = select::<C>(request.with_body);
        push_conditions(request, &mut q)?;
        q.push(order).push(" LIMIT ").push_bind(request.limit + 1);
        return Ok(q);
    };
    let mut q = QueryBuilder::new("SELECT DISTINCT ON (b.created_at, b.key) b.* FROM (");
    let mut first = true;
    for column in C::PARTNER_COLUMNS {
        for id in ids {
            if !first {
                q.push(" UNION ALL ");
            }
            first = false;
            q.push("(");
            push_select::<C>(&mut q, request.with_body);
            push_conditions(request, &mut q)?;
            q.push(format!(" AND {column} = ")).push_bind(id.clone());
            q.push(order)
                .push(" LIMIT ")
                .push_bind(request.limit + 1)
                .push(")");
        }
    }
    q.push(") b ORDER BY b.created_at DESC, b.key DESC LIMIT ")
        .push_bind(request.limit + 1);
    Ok(q)
}

/// `WHERE` and the request's conditions (not the partner's).
fn push_conditions<C: Collection>(
    request: &ListRequest<C>,
    q: &mut QueryBuilder<Postgres>,
) -> Result<(), ApiError> {
    q.push(" WHERE TRUE");
    if C::SOFT_DELETE && !request.include_deleted {
        q.push(" AND t.deleted_at IS NULL");
    }
    if let Some(since) = request.updated_since {
        q.push(" AND ")
            .push(C::UPDATED)
            .push(" >= ")
            .push_bind(since);
    }
    C::filter(&request.filters, q)?;
    match (C::ORDER, &request.after) {
        (_, None) => {}
        (Order::CreatedKey, Some(Position::Created(at, key))) => {
            // A row comparison, so the (created_at, key) index serves it as a range.
            q.push(" AND (t.created_at, t.key) < (")
                .push_bind(*at)
                .push(", ")
                .push_bind(key.clone())
                .push(")");
        }
        (Order::Id, Some(Position::Id(id))) => {
            q.push(" AND t.id < ").push_bind(*id);
        }
        // decode() checks the collection, and each collection has one kind of position.
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "starting_after is not a cursor of this collection",
            ));
        }
    }
    Ok(())
}

/// `GET /v1/{collection}/{key}`: soft-deleted objects are found too (their `deleted_at`
/// says so).
pub async fn get<C: Collection>(
    pool: &PgPool,
    key: &str,
    query: Option<&str>,
) -> Result<Item<C::Item>, ApiError> {
    let query = QueryParams::parse(query, &[IncludeParam::NAME.to_string()])?;
    let include: Include = query.read()?;
    let with_body =
        params::include(include.include.as_deref(), C::INCLUDE.word)? || C::ITEM_HAS_BODY;
    let not_found = || ApiError::not_found(format!("no {} {key:?}", C::NOUN));
    if key.is_empty() || key.contains('\0') {
        return Err(not_found());
    }
    let mut q = select::<C>(with_body);
    C::lookup(key, &mut q)?;
    q.push(" LIMIT 1");
    let mut item: C::Item = q
        .build_query_as()
        .fetch_optional(crate::db::atomic(pool))
        .await?
        .ok_or_else(not_found)?;
    C::finish(&mut item);
    Ok(Item { data: item })
}

/// The stored `key` of the object a path key names, found as [`get`] finds it.
pub async fn resolve_key<C: Collection>(
    pool: &PgPool,
    key: &str,
) -> Result<Option<String>, ApiError> {
    if key.is_empty() || key.contains('\0') {
        return Ok(None);
    }
    let mut q = QueryBuilder::new("SELECT t.key FROM ");
    q.push(C::FROM);
    C::lookup(key, &mut q)?;
    q.push(" LIMIT 1");
    Ok(q.build_query_scalar()
        .fetch_optional(crate::db::atomic(pool))
        .await?)
}

fn select<C: Collection>(with_body: bool) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new("");
    push_select::<C>(&mut q, with_body);
    q
}

fn push_select<C: Collection>(q: &mut QueryBuilder<Postgres>, with_body: bool) {
    q.push("SELECT ")
        .push(C::columns())
        .push(", ")
        .push(if with_body { C::BODY } else { C::NO_BODY })
        .push(" FROM ")
        .push(C::FROM);
}
