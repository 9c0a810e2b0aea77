//! Writes to PartnerStack through `/v1`: `POST /v1/customers`, `PATCH
//! /v1/customers/{customer_key}`, `POST /v1/transactions`, `DELETE /v1/transactions/{key}`,
//! and the outbox they go through (`/v1/writes`).
//!
//! A write's body is read into a [`crate::writes::Request`] by its type in [`bodies`],
//! committed to the outbox in a spawned task (a client hanging up cannot cancel it
//! half-way: ARCHITECTURE.md, rule 2), and answered `202` with its record and
//! `Location: /v1/writes/{id}`; `?wait=N` waits up to N seconds for the outcome (`200`
//! once finished). The worker ([`crate::writes::worker`]) sends it.

pub mod bodies;

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::collection::{self, Collection, Item, Order};
use super::cursor::Position;
use super::params::{self, IncludeParam, QueryParams, text, word};
use crate::auth::{Caller, Scope};
use crate::db::writes::{self, Accepted, Resolution, WriteKind, WriteStatus};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::writes::fields::{IdempotencyKey, Key};
use crate::writes::{Outbox, Request};

/// Largest write body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How often a waiting request looks at its write (besides being woken when this
/// replica's worker finishes one).
const WAIT_POLL: Duration = Duration::from_millis(100);

/// One write in the outbox.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Write {
    /// The write's id (`/v1/writes/{id}`).
    pub id: i64,
    pub kind: WriteKind,
    /// `pending` until PartnerStack has the effect (`succeeded`) or refused it (`failed`).
    pub status: WriteStatus,
    /// The object's key as you know it: your `customer_key`, or the transaction `key`
    /// (derived when the request had none).
    #[sqlx(rename = "object_key")]
    pub key: String,
    /// What repeats are recognised by: `header:<Idempotency-Key>`, else
    /// `customer:<customer_key>`, `transaction:<key>` or `delete_transaction:<key>`;
    /// null for an update sent without the header.
    pub idempotency_key: Option<String>,
    /// The request as accepted (validated and normalised).
    #[schema(value_type = Object)]
    pub request: Json<Value>,
    /// The API client that made the write (null for writes from before clients had
    /// names). The changes its outcome causes name it too.
    pub client: Option<String>,
    /// Attempts so far (each a claim by a worker).
    pub attempts: i32,
    /// HTTP requests sent to PartnerStack for it, look-ups and retries included.
    pub upstream_requests: i32,
    /// An attempt's answer was lost: the next attempt looks for the object first.
    pub in_doubt: bool,
    /// How it ended: `created`, `updated`, `deleted`, `existed` (PartnerStack had it
    /// already), `found` (an earlier attempt had landed), `absent` (a delete found nothing
    /// left), `refused`.
    pub resolution: Option<Resolution>,
    /// True when PartnerStack already had the object the write creates, with the fields
    /// it asked for (a refused create that a look-up found as asked).
    #[sqlx(skip)]
    pub existed: bool,
    /// The object as PartnerStack answered it, or as a look-up found it (succeeded
    /// writes: always for a create; for a delete only when the answer carried it). In
    /// lists, with `include=result`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Json<Box<RawValue>>>,
    /// PartnerStack's HTTP status: of the refusal (failed), or of the last passing failure
    /// (pending).
    pub error_status: Option<i32>,
    /// PartnerStack's message, or what the write waits for.
    pub error_message: Option<String>,
    /// When a pending write is next tried.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Filters of `GET /v1/writes`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteFilters {
    /// Only writes in this state.
    #[param(value_type = Option<WriteStatus>)]
    pub status: Option<String>,
    /// Only writes of this kind.
    #[param(value_type = Option<WriteKind>)]
    pub kind: Option<String>,
    /// Writes about the object with this key (your `customer_key`, or a transaction key).
    pub key: Option<String>,
}

/// `/v1/writes`: the outbox, newest first.
pub struct Writes;

impl Collection for Writes {
    const NAME: &'static str = "writes";
    const NOUN: &'static str = "write";
    const FROM: &'static str = "writes t";
    const BODY: &'static str = "t.result AS result";
    const NO_BODY: &'static str = "NULL::jsonb AS result";
    const INCLUDE: IncludeParam = params::INCLUDE_RESULT;
    const UPDATED: &'static str = "t.updated_at";
    const SOFT_DELETE: bool = false;
    const ORDER: Order = Order::Id;
    const ITEM_HAS_BODY: bool = true;
    type Item = Write;
    type Filters = WriteFilters;

    fn columns() -> &'static str {
        "t.id, t.kind, t.status, t.object_key, t.idempotency_key, t.request, t.client, t.attempts, \
         t.upstream_requests, t.in_doubt, t.resolution, t.error_status, t.error_message, \
         CASE WHEN t.status = 'pending' THEN t.next_attempt_at END AS next_attempt_at, \
         t.created_at, t.updated_at, t.finished_at"
    }

    fn filter(f: &WriteFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(status) = word(
            "status",
            f.status.as_deref(),
            WriteStatus::parse,
            &WriteStatus::words(),
        )? {
            q.push(" AND t.status = ").push_bind(status);
        }
        if let Some(kind) = word(
            "kind",
            f.kind.as_deref(),
            WriteKind::parse,
            &WriteKind::words(),
        )? {
            q.push(" AND t.kind = ").push_bind(kind);
        }
        if let Some(v) = text(f.key.as_deref()) {
            q.push(" AND t.object_key = ").push_bind(v.to_string());
        }
        Ok(())
    }

    fn position(item: &Write) -> Position {
        Position::Id(item.id)
    }

    fn lookup(key: &str, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        let id: i64 = key
            .parse()
            .map_err(|_| ApiError::bad_request(format!("write ids are integers, got {key:?}")))?;
        q.push(" WHERE t.id = ").push_bind(id);
        Ok(())
    }

    fn finish(item: &mut Write) {
        item.existed = item.resolution == Some(Resolution::Existed);
    }

    fn body_bytes(item: &Write) -> usize {
        item.result.as_ref().map_or(0, |r| r.0.get().len())
    }
}

/// The query parameters of a write route.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Seconds (0 to 30) to wait for the outcome before answering: `200` once finished,
    /// else `202` with the pending record.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 30, default = 0)]
    pub wait: Option<String>,
}

/// The write's body, read within [`BODY_LIMIT`].
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::payload_too_large(BODY_LIMIT)
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })
}

/// The `Idempotency-Key` header, if sent, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))
                .and_then(bodies::idempotency_key)
        })
        .transpose()
}

/// The `Idempotency-Key` header of a write route.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Exists for its OpenAPI description only.
pub struct IdempotencyHeader {
    /// Makes repeats of this request one write, for as long as the write is kept
    /// (`retention.writes`, 30 days by default).
    #[param(rename = "Idempotency-Key", inline, nullable = false)]
    key: Option<IdempotencyKey>,
}

/// The outbox, or a 409 when this deployment cannot send writes.
fn outbox(state: &AppState) -> Result<&Outbox, ApiError> {
    state.outbox.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "writes need PartnerStack API keys: set PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY",
        )
    })
}

/// Accepts a validated write by `caller` (or finds the one its idempotency key names),
/// waits for it as asked, and answers with its record.
async fn submit(
    state: &AppState,
    caller: &Caller,
    request: Request,
    key: Option<&IdempotencyKey>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let outbox = outbox(state)?;
    let wait = wait(query)?;
    let write = request.into_write(key).map_err(ApiError::internal)?;
    // A write: off the request future (ARCHITECTURE.md, rule 2).
    let pool = state.pool.clone();
    let client = caller.name.clone();
    let accepted =
        tokio::spawn(async move { writes::accept(&pool, &write, client.as_deref()).await })
            .await
            .map_err(ApiError::internal)??;
    let id = match accepted {
        Accepted::New(id) => {
            outbox.accepted.notify_one();
            id
        }
        Accepted::Repeat(id) => id,
        Accepted::Conflict(id) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyConflict,
                format!(
                    "write {id} has this idempotency key with another request; send a new key for a new write"
                ),
            ));
        }
    };
    answer(&state.pool, outbox, id, wait, caller).await
}

/// `wait` from the query (the only parameter of a write route).
fn wait(query: Option<&str>) -> Result<Duration, ApiError> {
    let query = QueryParams::parse(query, &params::names::<WaitParams>())?;
    let p: WaitParams = query.read()?;
    params::wait(p.wait.as_deref())
}

/// Waits up to `wait` for write `id` to finish, then answers with its record: `200` when
/// finished, `202` with `Location` while pending. PartnerStack's answer (`result`) is
/// left out for a caller without the `read` scope: it may show what only a read shows.
async fn answer(
    pool: &PgPool,
    outbox: &Outbox,
    id: i64,
    wait: Duration,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if writes::status(pool, id).await? != Some(WriteStatus::Pending) {
            break;
        }
        tokio::select! {
            _ = outbox.finished.notified() => {}
            _ = tokio::time::sleep(WAIT_POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let mut item = collection::get::<Writes>(pool, &id.to_string(), None).await?;
    if !caller.may(Scope::Read) {
        item.data.result = None;
    }
    let status = if item.data.status == WriteStatus::Pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut response = (status, axum::Json(item)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/writes/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The answers of a write route.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Exists for its OpenAPI description only.
pub enum WriteAnswers {
    /// Finished (within `wait`): `succeeded` with the object as PartnerStack answered
    /// it, or `failed` with its status and message. Also a repeat of a finished write.
    #[response(status = 200)]
    Finished(Item<Write>),
    /// Accepted and committed to the outbox, not finished yet.
    #[response(status = 202, headers(("Location" = String, description = "`/v1/writes/{id}`")))]
    Pending(Item<Write>),
    /// The idempotency key names another request (code `idempotency_conflict`), or this
    /// deployment has no PartnerStack API keys (code `conflict`).
    #[response(status = 409)]
    Conflict(crate::error::ErrorBody),
    /// The body is larger than 64 KiB.
    #[response(status = 413)]
    TooLarge(crate::error::ErrorBody),
}

/// `POST /v1/customers`.
#[utoipa::path(
    post, path = "/v1/customers", tag = "writes",
    summary = "Create a customer at PartnerStack (attribution)",
    description = "Records a referred signup: `POST /customers` at PartnerStack with your \
        `customer_key`, the email and the referring `partner_key`, sent once through the \
        outbox. A repeat (same `Idempotency-Key`, else same `customer_key`) returns the same \
        write. Success is PartnerStack's object, never a message's wording: a refused \
        create is looked up, and a customer found with the fields asked for counts as \
        success (`existed: true`), one with other fields fails with the differences. On \
        success `GET /v1/customers/{customer_key}` finds it at once.",
    params(WaitParams, IdempotencyHeader),
    request_body = bodies::CreateCustomer,
    responses(WriteAnswers, super::CommonErrors),
    security(("bearer" = [])),
)]
pub async fn create_customer(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = bodies::create_customer(&read_body(body).await?)?;
    submit(&state, &caller, request, key.as_ref(), query.as_deref()).await
}

/// `PATCH /v1/customers/{customer_key}`.
#[utoipa::path(
    patch, path = "/v1/customers/{key}", tag = "writes",
    summary = "Update a customer at PartnerStack",
    description = "`PATCH /customers/{customer_key}` at PartnerStack: any of `customer_key` \
        (a new key), `email`, `name`, `provider_key`, `meta`. `partner_key` cannot change. \
        Each update is its own write unless an `Idempotency-Key` is sent.",
    params(
        ("key" = Key, Path, description = "Your customer_key"),
        WaitParams,
        IdempotencyHeader,
    ),
    request_body = bodies::UpdateCustomer,
    responses(WriteAnswers, super::CommonErrors),
    security(("bearer" = [])),
)]
pub async fn update_customer(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    super::KeyPath(customer_key): super::KeyPath,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = bodies::update_customer(&customer_key, &read_body(body).await?)?;
    submit(&state, &caller, request, key.as_ref(), query.as_deref()).await
}

/// `POST /v1/transactions`.
#[utoipa::path(
    post, path = "/v1/transactions", tag = "writes",
    summary = "Create a transaction at PartnerStack (commission)",
    description = "Reports a billing event: `POST /transactions` at PartnerStack with the \
        amount in integer cents (negative for a refund) and a three-letter currency, for the \
        customer named by exactly one of `customer_key` (yours; sent as \
        `customer_external_key`), `customer_email` or `customer` (PartnerStack's key). \
        Without a `key`, one is derived from the request (or from the `Idempotency-Key`), \
        so a repeat is the same transaction; send your own key to record two equal ones.",
    params(WaitParams, IdempotencyHeader),
    request_body = bodies::CreateTransaction,
    responses(WriteAnswers, super::CommonErrors),
    security(("bearer" = [])),
)]
pub async fn create_transaction(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = bodies::create_transaction(&read_body(body).await?, key.as_ref())?;
    submit(&state, &caller, request, key.as_ref(), query.as_deref()).await
}

/// `DELETE /v1/transactions/{key}`.
#[utoipa::path(
    delete, path = "/v1/transactions/{key}", tag = "writes",
    summary = "Delete a transaction at PartnerStack",
    description = "`DELETE /transactions/{key}` at PartnerStack (the key as one encoded path \
        segment). Any 2xx answer is the delete done, whatever its body; the copy marks the \
        transaction deleted at once. A repeat is the same write.",
    params(
        ("key" = Key, Path, description = "The transaction key"),
        WaitParams,
        IdempotencyHeader,
    ),
    responses(WriteAnswers, super::CommonErrors),
    security(("bearer" = [])),
)]
pub async fn delete_transaction(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    super::KeyPath(key): super::KeyPath,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(&headers)?;
    let request = bodies::delete_transaction(&key, &read_body(body).await?)?;
    submit(
        &state,
        &caller,
        request,
        idempotency.as_ref(),
        query.as_deref(),
    )
    .await
}

/// `GET /v1/writes`.
#[utoipa::path(
    get, path = "/v1/writes", tag = "writes",
    summary = "List writes",
    description = "The outbox, newest first (highest id first). PartnerStack's answers \
        only with `include=result`.",
    params(params::Paging, collection::IncludeBody<Writes>, WriteFilters),
    responses(
        (status = 200, description = "A page, newest first", body = collection::List<Write>),
        super::CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list_writes(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<axum::Json<collection::List<Write>>, ApiError> {
    collection::list::<Writes>(&state.pool, query.as_deref(), state.config.api.page_bytes)
        .await
        .map(axum::Json)
}

/// `GET /v1/writes/{id}`.
#[utoipa::path(
    get, path = "/v1/writes/{id}", tag = "writes",
    summary = "Get a write",
    description = "One write with its outcome and PartnerStack's answer.",
    params(("id" = i64, Path, description = "The write's id"), collection::IncludeBody<Writes>),
    responses(
        (status = 200, description = "The write", body = Item<Write>),
        super::NotFound,
        super::CommonErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn get_write(
    axum::extract::State(state): axum::extract::State<AppState>,
    super::KeyPath(id): super::KeyPath,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<axum::Json<Item<Write>>, ApiError> {
    collection::get::<Writes>(&state.pool, &id, query.as_deref())
        .await
        .map(axum::Json)
}

/// `POST /v1/writes/{id}/retry`.
#[utoipa::path(
    post, path = "/v1/writes/{id}/retry", tag = "writes",
    summary = "Send a failed write again",
    description = "Makes a failed write pending again; the worker sends it as it would a \
        new one. Only a failed write can be retried (409 otherwise).",
    params(("id" = i64, Path, description = "The write's id"), WaitParams),
    responses(WriteAnswers, super::NotFound, super::CommonErrors),
    security(("bearer" = [])),
)]
pub async fn retry_write(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    super::KeyPath(id): super::KeyPath,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let outbox = outbox(&state)?;
    let wait = wait(query.as_deref())?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("write ids are integers, got {id:?}")))?;
    let pool = state.pool.clone();
    let before = tokio::spawn(async move { writes::retry(&pool, id).await })
        .await
        .map_err(ApiError::internal)??;
    match before {
        None => Err(ApiError::not_found(format!("no write {id}"))),
        Some(WriteStatus::Failed) => {
            outbox.accepted.notify_one();
            answer(&state.pool, outbox, id, wait, &caller).await
        }
        Some(status) => Err(ApiError::conflict(format!(
            "write {id} is {status}; only a failed write can be retried"
        ))),
    }
}
