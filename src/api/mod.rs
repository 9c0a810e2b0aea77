//! The internal query API under `/v1`: other services read the program from here instead
//! of calling PartnerStack.
//!
//! It speaks PartnerStack's own list dialect (`?limit=1..250&starting_after=<cursor>`,
//! `{"data": {"items", "has_more", "ending_cursor"}}`, items as `{"data": {...}}`) and
//! answers errors with [`ErrorBody`]. Every route needs `Authorization: Bearer <token>`
//! of a caller with the route's [`scope`] ([`require_bearer`], applied by
//! [`crate::routes::router`] to all of [`routes`]).
//!
//! Each handler here is a thin, documented shell: the `#[utoipa::path]` attribute is the
//! OpenAPI description, and [`routes`] registers the handler and its description together,
//! so a route cannot exist without being described. The work is done once, generically,
//! in [`collection`] for the seven PartnerStack object types and the event log, in
//! [`summary`] for the partner summary, in [`changes`] for the change feed and each
//! object's history, and in [`relay`] for the relay endpoints.

mod attribution;
pub mod changes;
pub mod collection;
pub mod cursor;
pub mod params;
pub mod relay;
pub mod resources;
mod rows;
pub mod summary;
pub mod sync;
pub mod writes;

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use partnerstack::Entity;
use utoipa::IntoResponses;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Scope;
use crate::error::{ApiError, ErrorBody};
use crate::long_poll::Full;
use crate::state::AppState;
use collection::IncludeBody;
use collection::{Item, List, ListPage};
use params::{Deleted, Paging};
use resources::{
    Customer, CustomerFilters, Customers, Deal, DealFilters, Deals, Event, EventFilters, Events,
    Group, Groups, Lead, LeadFilters, Leads, NoFilters, Partner, PartnerFilters, Partners, Reward,
    RewardFilters, Rewards, Transaction, TransactionFilters, Transactions,
};
use summary::PartnerSummary;

/// The OpenAPI security scheme name of the bearer token (the `security(...)` attributes
/// below spell it out: they take only literals).
pub const BEARER: &str = "bearer";

/// Lets a `/v1` request through when its bearer token names a caller ([`crate::auth`])
/// whose scopes allow the route ([`scope`]), and, for a request that waits, when the
/// long-poll bounds leave a place for it ([`crate::long_poll`]). Otherwise 401 (no or
/// an unknown token, with `WWW-Authenticate`), 403 `forbidden` naming the scope, or 429
/// with `Retry-After`; all before the handler runs, so a refused request reads, stores
/// and sends nothing. The caller goes into the request's extensions (handlers that record
/// who wrote take it from there) and its name into the access log's span.
pub async fn require_bearer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let caller = match presented.map(|token| state.api_callers.verify(token)) {
        Some(Some(caller)) => caller.clone(),
        refused => {
            let why = match refused {
                Some(_) => "the bearer token is not valid",
                None => "this route needs an Authorization: Bearer <token> header",
            };
            let mut response = ApiError::unauthorized(why).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    tracing::Span::current().record("client", caller.name.as_deref().unwrap_or("unnamed"));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |p| p.as_str());
    let needed = scope(req.method(), route);
    if !caller.may(needed) {
        let held: Vec<&str> = caller.scopes.iter().map(|s| s.as_str()).collect();
        return ApiError::forbidden(format!(
            "this route needs the `{needed}` scope; {} has {}",
            caller.describe(),
            held.join(", ")
        ))
        .into_response();
    }
    let _place = if may_wait(req.method(), route) && waits(req.uri().query()) {
        match state.long_polls.take(caller.slot) {
            Ok(place) => Some(place),
            Err(full) => return too_many_waiting(full),
        }
    } else {
        None
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The scope a `/v1` route needs: `read` for every `GET`; `write` for customer and
/// transaction writes; `admin` for everything else that changes state (retrying a write,
/// replaying the relay, starting a sync). The OpenAPI description shows it per operation
/// (`routes::openapi`).
pub fn scope(method: &Method, route: &str) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    match route {
        "/v1/customers" | "/v1/customers/{key}" | "/v1/transactions" | "/v1/transactions/{key}" => {
            Scope::Write
        }
        _ => Scope::Admin,
    }
}

/// Whether the query asks to wait (`wait` above 0). An unreadable `wait` does not count:
/// the handler answers it 400.
fn waits(query: Option<&str>) -> bool {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    pairs
        .iter()
        .filter(|(name, _)| name == "wait")
        .any(|(_, value)| params::wait(Some(value)).is_ok_and(|d| !d.is_zero()))
}

/// The 429 for a request that would wait past a long-poll bound. It closes the
/// connection, so a refused crowd does not stay on as idle keep-alive connections.
fn too_many_waiting(full: Full) -> Response {
    let why = match full {
        Full::Caller(n) => format!(
            "this client already holds {n} waiting requests (api.long_polls_per_client); \
             retry after the Retry-After seconds, or without wait"
        ),
        Full::Total(n) => format!(
            "this replica already holds {n} waiting requests (api.long_polls); retry after \
             the Retry-After seconds, or without wait"
        ),
    };
    let mut response = ApiError::too_many_requests(why).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A key from the path; a path that does not decode is a 400 in the API's error shape
/// rather than axum's plain-text rejection.
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(key)| KeyPath(key))
            .map_err(|e| ApiError::bad_request(format!("the path does not decode: {e}")))
    }
}

/// The errors every `/v1` route can answer, besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)] // Exists for its OpenAPI description only.
pub enum CommonErrors {
    /// A query parameter is unknown, repeated, empty or invalid (the message names it),
    /// or the cursor was not issued by this collection.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No bearer token, or not a valid one.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody),
    /// The token's client lacks the scope this route needs (code `forbidden`; the message
    /// names the scope). Nothing was read, stored or sent.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// An unexpected failure; the cause is logged, not answered.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The database is unreachable or the request timed out; retry later.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))]
    Unavailable(ErrorBody),
}

/// The state of a request the service took on and will carry out: always `accepted`.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Acceptance {
    Accepted,
}

/// Absent objects.
#[derive(IntoResponses)]
#[allow(dead_code)] // Exists for its OpenAPI description only.
pub enum NotFound {
    /// No such object.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// Defines the list and item handlers of one collection.
macro_rules! collection_routes {
    (
        $collection:ident, item: $item:ident, tag: $tag:tt,
        list: $list:ident, $path:tt, params($($param:ident),*), $list_summary:tt, $list_doc:tt;
        get: $get:ident, $item_path:tt, $key_name:tt: $key_ty:ty, $key_doc:tt,
            $get_summary:tt, $get_doc:tt;
    ) => {
        #[utoipa::path(
            get, path = $path, tag = $tag,
            summary = $list_summary, description = $list_doc,
            params(Paging, IncludeBody<$collection>, $($param),*),
            responses(
                (status = 200, description = "A page, newest first", body = List<$item>),
                CommonErrors,
            ),
            security(("bearer" = [])),
        )]
        pub async fn $list(
            State(state): State<AppState>,
            RawQuery(query): RawQuery,
        ) -> Result<ListPage<$item>, ApiError> {
            collection::list_page::<$collection>(&state.pool, query.as_deref(), state.config.api.page_bytes).await
        }

        #[utoipa::path(
            get, path = $item_path, tag = $tag,
            summary = $get_summary, description = $get_doc,
            params(($key_name = $key_ty, Path, description = $key_doc), IncludeBody<$collection>),
            responses(
                (status = 200, description = "The object", body = Item<$item>),
                NotFound,
                CommonErrors,
            ),
            security(("bearer" = [])),
        )]
        pub async fn $get(
            State(state): State<AppState>,
            KeyPath(key): KeyPath,
            RawQuery(query): RawQuery,
        ) -> Result<Json<Item<$item>>, ApiError> {
            collection::get::<$collection>(&state.pool, &key, query.as_deref())
                .await
                .map(Json)
        }
    };
}

collection_routes! {
    Partners, item: Partner, tag: "partners",
    list: list_partners, "/v1/partners", params(Deleted, PartnerFilters),
        "List partners",
        "Partners (PartnerStack's partnerships), newest first.";
    get: get_partner, "/v1/partners/{key}", "key": String, "The partnership key (`part_...`) or the `partner_key`",
        "Get a partner",
        "A partner by its partnership key or its `partner_key`. Deleted partners are found \
         too; their `deleted_at` is set.";
}

collection_routes! {
    Customers, item: Customer, tag: "customers",
    list: list_customers, "/v1/customers", params(Deleted, CustomerFilters),
        "List customers",
        "Customers referred by partners, newest first.";
    get: get_customer, "/v1/customers/{key}", "key": String, "PartnerStack's customer key or your `customer_key`",
        "Get a customer (attribution lookup)",
        "A customer by PartnerStack's key or by your own `customer_key`, with the partner \
         that referred it (`partner_key`, `partnership_key`). When several customers share \
         your key, the live, newest one is given.";
}

collection_routes! {
    Transactions, item: Transaction, tag: "transactions",
    list: list_transactions, "/v1/transactions", params(Deleted, TransactionFilters),
        "List transactions",
        "Transactions, newest first. `partner_key` on each is the partner credited: the \
         transaction's own, else its customer's.";
    get: get_transaction, "/v1/transactions/{key}", "key": String, "The transaction key",
        "Get a transaction",
        "A transaction by its key.";
}

collection_routes! {
    Rewards, item: Reward, tag: "rewards",
    list: list_rewards, "/v1/rewards", params(Deleted, RewardFilters),
        "List rewards",
        "Rewards (commissions), newest first.";
    get: get_reward, "/v1/rewards/{key}", "key": String, "The reward key",
        "Get a reward",
        "A reward by its key.";
}

collection_routes! {
    Groups, item: Group, tag: "groups",
    list: list_groups, "/v1/groups", params(Deleted, NoFilters),
        "List groups",
        "Partner groups, newest first.";
    get: get_group, "/v1/groups/{key}", "key": String, "The group key",
        "Get a group",
        "A group by its key.";
}

collection_routes! {
    Deals, item: Deal, tag: "deals",
    list: list_deals, "/v1/deals", params(Deleted, DealFilters),
        "List deals",
        "Deals registered by partners, newest first.";
    get: get_deal, "/v1/deals/{key}", "key": String, "The deal key",
        "Get a deal",
        "A deal by its key.";
}

collection_routes! {
    Leads, item: Lead, tag: "leads",
    list: list_leads, "/v1/leads", params(Deleted, LeadFilters),
        "List leads",
        "Leads submitted by partners, newest first.";
    get: get_lead, "/v1/leads/{key}", "key": String, "The lead key",
        "Get a lead",
        "A lead by its key.";
}

collection_routes! {
    Events, item: Event, tag: "events",
    list: list_events, "/v1/events", params(EventFilters),
        "List webhook deliveries",
        "The raw webhook log, newest first (highest id first): every delivery stored, with \
         its outcome. Bodies only with `include=payload`.";
    get: get_event, "/v1/events/{id}", "id": i64, "The delivery id (the webhook answer's `id`)",
        "Get a webhook delivery",
        "One stored delivery with its body (`payload`) and outcome.";
}

/// Defines `GET /v1/{collection}/{key}/history` for one collection.
macro_rules! history_route {
    ($name:ident, $collection:ident, $entity:expr, $path:tt, $tag:tt, $key_doc:tt, $summary:tt) => {
        #[utoipa::path(
            get, path = $path, tag = $tag,
            summary = $summary,
            description = "The object's changes, newest first: what changed (old and new \
                values), when, and from where (`source`), each with the object's state \
                after it. Changes older than the retention period are not kept.",
            params(("key" = String, Path, description = $key_doc), changes::HistoryParams),
            responses(
                (status = 200, description = "The object's changes, newest first", body = changes::HistoryAnswer),
                NotFound,
                CommonErrors,
            ),
            security(("bearer" = [])),
        )]
        pub async fn $name(
            State(state): State<AppState>,
            KeyPath(key): KeyPath,
            RawQuery(query): RawQuery,
        ) -> Result<Json<changes::HistoryAnswer>, ApiError> {
            changes::history::<$collection>(&state.pool, $entity, &key, query.as_deref())
                .await
                .map(Json)
        }
    };
}

history_route!(
    partner_history,
    Partners,
    Entity::Partner,
    "/v1/partners/{key}/history",
    "partners",
    "The partnership key (`part_...`) or the `partner_key`",
    "A partner's changes"
);
history_route!(
    customer_history,
    Customers,
    Entity::Customer,
    "/v1/customers/{key}/history",
    "customers",
    "PartnerStack's customer key or your `customer_key`",
    "A customer's changes"
);
history_route!(
    transaction_history,
    Transactions,
    Entity::Transaction,
    "/v1/transactions/{key}/history",
    "transactions",
    "The transaction key",
    "A transaction's changes"
);
history_route!(
    reward_history,
    Rewards,
    Entity::Reward,
    "/v1/rewards/{key}/history",
    "rewards",
    "The reward key",
    "A reward's changes"
);
history_route!(
    group_history,
    Groups,
    Entity::Group,
    "/v1/groups/{key}/history",
    "groups",
    "The group key",
    "A group's changes"
);
history_route!(
    deal_history,
    Deals,
    Entity::Deal,
    "/v1/deals/{key}/history",
    "deals",
    "The deal key",
    "A deal's changes"
);
history_route!(
    lead_history,
    Leads,
    Entity::Lead,
    "/v1/leads/{key}/history",
    "leads",
    "The lead key",
    "A lead's changes"
);

/// `GET /v1/partners/{key}/summary`.
#[utoipa::path(
    get, path = "/v1/partners/{key}/summary", tag = "partners",
    summary = "Summarise a partner's commission",
    description = "Counts and sums for one partner, in one consistent read: customers \
        (not deleted), transactions per currency split into approved and not (deleted and \
        archived ones left out; refunds count with their negative amounts), and rewards \
        per status and currency (deleted ones left out). Money is integer cents.",
    params(("key" = String, Path, description = "The partnership key (`part_...`) or the `partner_key`")),
    responses(
        (status = 200, description = "The partner's totals", body = Item<PartnerSummary>),
        NotFound,
        CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn partner_summary(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(query): RawQuery,
) -> Result<Json<Item<PartnerSummary>>, ApiError> {
    summary::partner_summary(&state.pool, &key, query.as_deref())
        .await
        .map(|data| Json(Item { data }))
}

/// Whether a request may wait up to [`params::MAX_WAIT`] longer than the request timeout:
/// a long-poll of the change feed, or a write waiting for its outcome.
pub fn may_wait(method: &axum::http::Method, route: &str) -> bool {
    match route {
        "/v1/changes" => true,
        "/v1/customers"
        | "/v1/customers/{key}"
        | "/v1/transactions"
        | "/v1/transactions/{key}"
        | "/v1/writes/{id}/retry" => method != axum::http::Method::GET,
        _ => false,
    }
}

/// Every `/v1` route with its OpenAPI description (without the bearer layer).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_partners))
        .routes(routes!(get_partner))
        .routes(routes!(partner_summary))
        .routes(routes!(list_customers, writes::create_customer))
        .routes(routes!(get_customer, writes::update_customer))
        .routes(routes!(list_transactions, writes::create_transaction))
        .routes(routes!(get_transaction, writes::delete_transaction))
        .routes(routes!(writes::list_writes))
        .routes(routes!(writes::get_write))
        .routes(routes!(writes::retry_write))
        .routes(routes!(list_rewards))
        .routes(routes!(get_reward))
        .routes(routes!(list_groups))
        .routes(routes!(get_group))
        .routes(routes!(list_deals))
        .routes(routes!(get_deal))
        .routes(routes!(list_leads))
        .routes(routes!(get_lead))
        .routes(routes!(list_events))
        .routes(routes!(get_event))
        .routes(routes!(sync::sync_status))
        .routes(routes!(sync::request_sync))
        .routes(routes!(changes::list_changes))
        .routes(routes!(partner_history))
        .routes(routes!(customer_history))
        .routes(routes!(transaction_history))
        .routes(routes!(reward_history))
        .routes(routes!(group_history))
        .routes(routes!(deal_history))
        .routes(routes!(lead_history))
        .routes(routes!(relay::relay_status))
        .routes(routes!(relay::replay))
}
