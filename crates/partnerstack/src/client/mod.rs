//! The PartnerStack v2 client: Basic auth, a shared request budget, retries with
//! backoff, paginated lists and the write calls.
//!
//! Reading is tolerant of both dialects seen (the real API's, and a legacy one with
//! `ending_cursor`, second timestamps and `/partners`): `status` as number or string (the
//! HTTP status is what counts), `ending_cursor` or the last item's `key`, seconds or
//! milliseconds. Errors keep PartnerStack's HTTP status and message. Credentials are used
//! only to sign requests; they never appear in errors, logs or `Debug` output.

mod budget;
mod pages;
mod retry;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

pub use budget::{
    Grant, Purpose, RequestBudget, Spent, TOKEN_TTL, Take, TokenSource, for_write, spend,
};
pub use pages::{Filter, ListQuery, Page, Pager, supported_filters};
pub use retry::{Attempt, RetryPolicy, retry, retry_after};
pub use webhooks::{TargetField, WEBHOOKS_PATH, Webhook};

use crate::entity::Entity;
use crate::models::{self, Customer, Object, Transaction};

/// The client's settings (a service embeds them in its configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The API root, e.g. `https://api.partnerstack.com/api/v2`.
    pub base_url: String,
    /// HTTP Basic credentials; blank or absent means none.
    #[serde(default)]
    pub public_key: Option<SecretString>,
    #[serde(default)]
    pub secret_key: Option<SecretString>,
    /// Items per list page, 1..=250.
    pub page_size: u32,
    /// The request budget, requests per second: shared by every client of one account in
    /// the process (the service shares it with every replica: see [`Client::with_budget`]).
    pub requests_per_second: f64,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The longest single back-off wait, `Retry-After` included.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub paths: StreamPaths,
}

impl Settings {
    /// Both API keys, when both are set (blank counts as unset).
    pub fn credentials(&self) -> Option<(&SecretString, &SecretString)> {
        Some((set(&self.public_key)?, set(&self.secret_key)?))
    }

    /// Every endpoint a client with these settings can call, as `(method, endpoint)` (see
    /// [`endpoint`]): each stream's list, the single reads, and the writes.
    pub fn endpoints(&self) -> Vec<(Method, String)> {
        let mut out: Vec<(Method, String)> = Entity::ALL
            .iter()
            .map(|e| (Method::GET, endpoint(self.paths.get(*e), false)))
            .collect();
        for entity in Entity::ALL
            .into_iter()
            .filter(|e| Client::has_single_get(*e))
        {
            out.push((Method::GET, endpoint(self.paths.get(entity), true)));
        }
        let customers = self.paths.get(Entity::Customer);
        let transactions = self.paths.get(Entity::Transaction);
        out.push((Method::POST, endpoint(customers, false)));
        out.push((Method::PATCH, endpoint(customers, true)));
        out.push((Method::POST, endpoint(transactions, false)));
        out.push((Method::DELETE, endpoint(transactions, true)));
        out
    }

    /// Checks the settings; an error names the setting (relative to this section) and
    /// says what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |setting: &str, why: &str| Err((setting.to_string(), why.to_string()));
        if !(1..=250).contains(&self.page_size) {
            return fail("page_size", "must be within 1..=250");
        }
        let rps = self.requests_per_second;
        if !(rps.is_finite() && rps > 0.0) {
            return fail("requests_per_second", "must be a positive number");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout", "must be longer than zero");
        }
        for entity in Entity::ALL {
            let path = self.paths.get(entity);
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err((
                    format!("paths.{}", entity.stream()),
                    format!("{path:?} must be a path starting with /"),
                ));
            }
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return fail("base_url", "must be an http:// or https:// URL");
        }
        match (set(&self.public_key), set(&self.secret_key)) {
            (Some(_), None) => {
                return fail(
                    "public_key",
                    "set both API keys (public and secret), or neither",
                );
            }
            (None, Some(_)) => {
                return fail(
                    "secret_key",
                    "set both API keys (public and secret), or neither",
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// A key that is set and not blank.
fn set(key: &Option<SecretString>) -> Option<&SecretString> {
    key.as_ref()
        .filter(|k| !k.expose_secret().trim().is_empty())
}

/// The list path of each stream under `base_url`. The real API serves partners at
/// `/partnerships`; the legacy dialect at `/partners`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPaths {
    pub partnerships: String,
    pub customers: String,
    pub transactions: String,
    pub rewards: String,
    pub groups: String,
    pub deals: String,
    pub leads: String,
}

impl StreamPaths {
    /// The list path of `entity`'s stream.
    pub fn get(&self, entity: Entity) -> &str {
        match entity {
            Entity::Partner => &self.partnerships,
            Entity::Customer => &self.customers,
            Entity::Transaction => &self.transactions,
            Entity::Reward => &self.rewards,
            Entity::Group => &self.groups,
            Entity::Deal => &self.deals,
            Entity::Lead => &self.leads,
        }
    }
}

impl Default for StreamPaths {
    /// The real API's paths.
    fn default() -> Self {
        let path = |e: Entity| format!("/{}", e.stream());
        StreamPaths {
            partnerships: path(Entity::Partner),
            customers: path(Entity::Customer),
            transactions: path(Entity::Transaction),
            rewards: path(Entity::Reward),
            groups: path(Entity::Group),
            deals: path(Entity::Deal),
            leads: path(Entity::Lead),
        }
    }
}

/// Most list pages a look-up for one object reads.
pub const FIND_PAGES: u64 = 4;

/// The first backoff ceiling (it doubles per attempt, up to `max_backoff`).
const BASE_BACKOFF: Duration = Duration::from_millis(250);

/// Longest excerpt of an unexpected body kept in an error message.
const BODY_EXCERPT: usize = 300;

/// What can go wrong talking to PartnerStack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PartnerStack credentials: set PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY")]
    NoCredentials,
    /// The call was malformed before anything was sent (a bug in the caller).
    #[error("invalid PartnerStack request: {0}")]
    InvalidRequest(String),
    /// PartnerStack answered with an error status; `message` is its own.
    #[error("PartnerStack answered {status}: {message}{hint}", hint = auth_hint(*status))]
    Http { status: StatusCode, message: String },
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("PartnerStack could not be reached: {detail}")]
    Transport { detail: String, timeout: bool },
    /// An answer that is not what the endpoint documents.
    #[error("PartnerStack sent an unexpected answer to {path}: {detail}")]
    InvalidResponse { path: String, detail: String },
    /// A page asked for with a cursor came back empty, or was refused (4xx), when the
    /// previous page said more would follow: the object the cursor names may have been
    /// deleted meanwhile (what PartnerStack does then is undocumented). Only a
    /// [strict](Pager::strict) pager reports it; a caller that must read everything starts
    /// again from the top.
    #[error(
        "the cursor {cursor:?} of {path} no longer works ({detail}); the list must be read again from the top"
    )]
    CursorLost {
        path: String,
        cursor: String,
        detail: String,
    },
    /// A list returned a cursor it had returned before: following it would loop.
    #[error(
        "the cursor of {path} did not advance ({cursor:?} came back after {pages} pages); stopped instead of looping"
    )]
    StalledCursor {
        path: String,
        cursor: String,
        pages: u64,
    },
    /// Every attempt failed with a retryable error; `last` is the final one.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<Error> },
}

fn auth_hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            " (check PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY)"
        }
        _ => "",
    }
}

impl Error {
    /// PartnerStack's HTTP status, when it answered (also through [`Error::GaveUp`]).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Http { status, .. } => Some(*status),
            Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The credentials were refused (401 or 403).
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self.status(),
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        )
    }

    fn transport(e: reqwest::Error) -> Error {
        // reqwest's own message is terse ("error sending request"); the cause is below it.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::Transport {
            detail,
            timeout: e.is_timeout(),
        }
    }
}

/// A typed object together with the raw JSON it was read from.
#[derive(Debug, Clone)]
pub struct Record<T> {
    pub typed: T,
    pub raw: Value,
}

impl<T: Object> Record<T> {
    /// Reads `raw` as `T`, keeping `raw`.
    pub fn parse(raw: Value) -> Result<Record<T>, Error> {
        let typed = models::read(&raw).map_err(|detail| Error::InvalidResponse {
            path: format!("/{}", T::ENTITY.stream()),
            detail,
        })?;
        Ok(Record { typed, raw })
    }
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion {
    /// PartnerStack answered 2xx. `object`: the answer's `data`, when it had one (the
    /// documented answer has none).
    Deleted { object: Option<Value> },
    /// PartnerStack has no object by that key (404).
    Absent,
}

/// `POST /customers`: a customer referred by a partner.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewCustomer {
    /// Required, 4..=255 characters.
    pub email: String,
    /// The referring partner; required.
    pub partner_key: String,
    /// Your own key for the customer. A repeat is refused, not upserted. Required by the
    /// API but nullable: sent as `null` when there is none.
    pub customer_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// `PATCH /customers/{customer_key}`: the fields to change (`partner_key` cannot change).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CustomerUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// Which customer a new transaction belongs to: exactly one of these is sent.
#[derive(Debug, Clone, Serialize)]
pub enum TransactionCustomer {
    /// PartnerStack's own customer `key`.
    #[serde(rename = "customer_key")]
    Key(String),
    /// Your `customer_key` (sent as `customer_external_key`).
    #[serde(rename = "customer_external_key")]
    ExternalKey(String),
    #[serde(rename = "customer_email")]
    Email(String),
}

/// `POST /transactions`: a billing event.
#[derive(Debug, Clone, Serialize)]
pub struct NewTransaction {
    #[serde(flatten)]
    pub customer: TransactionCustomer,
    /// Cents; negative for refunds.
    pub amount: i64,
    /// ISO 4217, three letters.
    pub currency: String,
    /// Your transaction key (4..=255). Set it: it makes a retried create idempotent, so the
    /// client only retries a create that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "epoch_ms")]
    pub created_at: Option<DateTime<Utc>>,
}

fn epoch_ms<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_i64(t.timestamp_millis()),
        None => s.serialize_none(),
    }
}

/// A request's URL, and the endpoint it is observed under.
struct Target {
    url: Url,
    endpoint: String,
}

/// The endpoint of a request to `path`: the path itself, or with `/{key}` when a key
/// follows it. Observers see this template, never a concrete key.
pub fn endpoint(path: &str, keyed: bool) -> String {
    if keyed {
        format!("{}/{{key}}", path.trim_end_matches('/'))
    } else {
        path.to_string()
    }
}

/// One answer as PartnerStack gave it, for a caller that must judge it itself
/// (`partnerstack-sync check`): the status, the rate-limit headers and the body.
#[derive(Debug, Clone)]
pub struct Probe {
    pub status: StatusCode,
    /// The names (lower case) of the answer's rate-limit headers: `x-ratelimit-*`,
    /// `ratelimit-*`, `retry-after`.
    pub rate_limit_headers: Vec<String>,
    /// The JSON body; `Value::Null` when it is empty or not JSON.
    pub body: Value,
}

impl Client {
    /// Sends one request to `path` (plus `key`) through the request budget and returns
    /// PartnerStack's answer whatever its status: no status is an error here. Only a 429
    /// is sent again (after its `Retry-After`); no answer at all is [`Error::Transport`]
    /// at once, so a caller learns quickly that PartnerStack cannot be reached.
    pub async fn probe(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Probe, Error> {
        let inner = &self.inner;
        let url = self.url(path, key)?;
        let what = format!("{method} {}", url.path());
        retry(&inner.policy, &inner.budget, &what, |_| {
            inner.count_spent();
            probe_once(inner.request(&method, &url, query, body))
        })
        .await
    }
}

async fn probe_once(request: reqwest::RequestBuilder) -> Attempt<Probe> {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::Done(Err(Error::transport(e))),
    };
    let status = response.status();
    let wait = retry_after(response.headers(), Utc::now());
    let rate_limit_headers = response
        .headers()
        .keys()
        .map(|name| name.as_str().to_ascii_lowercase())
        .filter(|name| {
            name.starts_with("x-ratelimit")
                || name.starts_with("ratelimit")
                || name == "retry-after"
        })
        .collect();
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => return Attempt::Done(Err(Error::transport(e))),
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Attempt::Retry {
            error: Error::Http {
                status,
                message: error_message(&text, status),
            },
            retry_after: wait,
        };
    }
    Attempt::Done(Ok(Probe {
        status,
        rate_limit_headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }))
}

/// How PartnerStack answered one HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status.
    Status(StatusCode),
    /// No answer within the request timeout.
    Timeout,
    /// No answer: the connection could not be made or broke.
    Unreachable,
}

impl Answer {
    /// Every [`Answer::class`].
    pub const CLASSES: [&'static str; 7] =
        ["2xx", "3xx", "4xx", "429", "5xx", "timeout", "unreachable"];

    /// A few words to count answers by: the status class (`2xx`, `3xx`, `4xx`, `5xx`; 429,
    /// the rate limit, apart), `timeout` or `unreachable`.
    pub fn class(self) -> &'static str {
        match self {
            Answer::Status(StatusCode::TOO_MANY_REQUESTS) => "429",
            Answer::Status(s) if s.is_success() => "2xx",
            Answer::Status(s) if s.is_redirection() => "3xx",
            Answer::Status(s) if s.is_client_error() => "4xx",
            Answer::Status(_) => "5xx",
            Answer::Timeout => "timeout",
            Answer::Unreachable => "unreachable",
        }
    }

    fn of_failure(e: &reqwest::Error) -> Answer {
        if e.is_timeout() {
            Answer::Timeout
        } else {
            Answer::Unreachable
        }
    }
}

/// One HTTP exchange with PartnerStack, as an [`Observer`] sees it.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub method: &'a Method,
    /// The path template under `base_url` (`/customers/{key}`), never a concrete key.
    pub endpoint: &'a str,
    pub answer: Answer,
    /// From sending the request to reading the whole answer.
    pub elapsed: Duration,
    /// 1 for the first attempt; more for retries.
    pub attempt: u32,
    /// What the request was spent on (see [`spend`]).
    pub purpose: Purpose,
}

/// Told about every HTTP exchange a [`Client`] has (retries included), so a service can
/// keep its own metrics: this crate records none.
pub trait Observer: Send + Sync {
    fn exchange(&self, exchange: &Exchange<'_>);
}

/// Whether a failed request may be sent again. Connection failures (nothing was sent)
/// and 429 (refused before processing) are always retried; 5xx and timeouts only when a
/// repeat cannot create a second object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Unsafe,
}

/// The PartnerStack v2 client. Cheap to clone; clones share the connection pool. Every
/// client of the same account in the process shares one request budget.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    public_key: SecretString,
    secret_key: SecretString,
    page_size: u32,
    policy: RetryPolicy,
    budget: Arc<RequestBudget>,
    /// A digest of the base URL and public key: names the account, holds no credential.
    account: String,
    paths: StreamPaths,
    /// Requests sent, retries included, by [`Purpose`].
    spent: [AtomicU64; 4],
    observer: Option<Arc<dyn Observer>>,
}

impl Inner {
    /// One request about to be sent: counted under the purpose it is spent on (returned),
    /// here and in the caller's [`spend`] scope.
    fn count_spent(&self) -> Purpose {
        let purpose = budget::current_purpose();
        self.spent[purpose.index()].fetch_add(1, Ordering::Relaxed);
        budget::count_spent();
        purpose
    }

    /// One attempt's request: signed with the API keys, asking for JSON, with `query`
    /// and the JSON `body` when there are any.
    fn request(
        &self,
        method: &Method,
        url: &Url,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .basic_auth(
                self.public_key.expose_secret(),
                Some(self.secret_key.expose_secret()),
            )
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url)
            .field("page_size", &self.inner.page_size)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the configured API. Fails without credentials.
    pub fn new(config: &Settings) -> Result<Client, Error> {
        let (public_key, secret_key) = config.credentials().ok_or(Error::NoCredentials)?;
        let base_url = config.base_url.trim_end_matches('/').to_string();
        Url::parse(&base_url).map_err(|e| {
            Error::InvalidRequest(format!("PARTNERSTACK_BASE_URL {base_url:?}: {e}"))
        })?;
        let http = crate::http::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(Error::transport)?;
        // Keyed by a digest, so the registry holds no credential.
        use sha2::Digest as _;
        let account = hex::encode(sha2::Sha256::digest(
            format!("{base_url}\n{}", public_key.expose_secret()).as_bytes(),
        ));
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url,
                public_key: public_key.clone(),
                secret_key: secret_key.clone(),
                page_size: config.page_size,
                policy: RetryPolicy {
                    max_attempts: config.max_attempts,
                    base: BASE_BACKOFF.min(config.max_backoff),
                    max_backoff: config.max_backoff,
                },
                budget: RequestBudget::shared(&account, config.requests_per_second),
                account,
                paths: config.paths.clone(),
                spent: Default::default(),
                observer: None,
            }),
        })
    }

    /// This client, telling `observer` about every exchange (its clones made from now on
    /// share it).
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Client {
        self.rebuilt(self.inner.budget.clone(), Some(observer))
    }

    /// This client, taking its tokens from `budget` instead of the process's budget of
    /// the account (e.g. one shared by every replica through a [`TokenSource`]).
    pub fn with_budget(self, budget: Arc<RequestBudget>) -> Client {
        self.rebuilt(budget, self.inner.observer.clone())
    }

    /// A copy of this client with another budget and observer; counts carried over.
    fn rebuilt(&self, budget: Arc<RequestBudget>, observer: Option<Arc<dyn Observer>>) -> Client {
        let inner = &self.inner;
        Client {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                base_url: inner.base_url.clone(),
                public_key: inner.public_key.clone(),
                secret_key: inner.secret_key.clone(),
                page_size: inner.page_size,
                policy: inner.policy,
                budget,
                account: inner.account.clone(),
                paths: inner.paths.clone(),
                spent: std::array::from_fn(|i| {
                    AtomicU64::new(inner.spent[i].load(Ordering::Relaxed))
                }),
                observer,
            }),
        }
    }

    /// Names the account this client speaks for (a digest of the API's base URL and the
    /// public key; no credential can be read from it).
    pub fn account(&self) -> &str {
        &self.inner.account
    }

    /// The request budget this client waits for.
    pub fn budget(&self) -> &Arc<RequestBudget> {
        &self.inner.budget
    }

    /// The request budget's rate (requests per second), shared by every client of the
    /// same account in the process.
    pub fn requests_per_second(&self) -> f64 {
        self.inner.budget.rate()
    }

    /// The API root requests go to (no credentials in it).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Items per list page unless a query says otherwise.
    pub fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    /// The configured list path of `entity`'s stream.
    pub fn path(&self, entity: Entity) -> &str {
        self.inner.paths.get(entity)
    }

    /// A pager over `entity`'s list at its configured path.
    pub fn pages(&self, entity: Entity, query: ListQuery) -> Pager {
        let path = self.path(entity).to_string();
        Pager::new(self.clone(), entity, path, query)
    }

    /// Whether PartnerStack documents a single-object read for `entity`: partnerships (by
    /// key or `partner_key`), customers (by your `customer_key`), deals and leads. Groups,
    /// transactions and rewards have none.
    pub fn has_single_get(entity: Entity) -> bool {
        matches!(
            entity,
            Entity::Partner | Entity::Customer | Entity::Deal | Entity::Lead
        )
    }

    /// One object by key, for the kinds the API can read singly (see
    /// [`Client::has_single_get`]). `None` on 404. The answer's `data` is the object, or a
    /// container naming it (`{"partnership": {...}}`): both are seen in production.
    pub async fn get(&self, entity: Entity, key: &str) -> Result<Option<Value>, Error> {
        if !Self::has_single_get(entity) {
            return Err(Error::InvalidRequest(format!(
                "PartnerStack has no single-object read for {}",
                entity.stream()
            )));
        }
        let target = self.target(self.path(entity), Some(key))?;
        match self
            .call(Method::GET, target, &[], None, Repeat::Safe)
            .await
        {
            Ok(body) => Ok(Some(contained(self.data(body, entity)?, entity))),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /customers/{customer_key}` by your own key; `None` when there is none.
    /// Newly created customers can take minutes to become readable on the real API.
    pub async fn get_customer(
        &self,
        customer_key: &str,
    ) -> Result<Option<Record<Customer>>, Error> {
        self.get(Entity::Customer, customer_key)
            .await?
            .map(Record::parse)
            .transpose()
    }

    /// `POST /customers`. Never repeated after an answer that may hide a landed create
    /// (5xx, timeout, lost connection): PartnerStack does not promise that `customer_key`
    /// is unique, so a blind repeat could make a second customer. A refusal is returned as
    /// it came ([`Error::Http`]): what PartnerStack answers for a `customer_key` it has
    /// already is undocumented, and no wording is evidence of anything. The caller looks
    /// the customer up ([`Client::get_customer`]) to learn whether it exists.
    pub async fn create_customer(&self, customer: &NewCustomer) -> Result<Record<Customer>, Error> {
        let target = self.target(self.path(Entity::Customer), None)?;
        let body = serde_json::to_value(customer)
            .map_err(|e| Error::InvalidRequest(format!("customer: {e}")))?;
        let body = self
            .call(Method::POST, target, &[], Some(body), Repeat::Unsafe)
            .await?;
        Record::parse(self.data(body, Entity::Customer)?)
    }

    /// `PATCH /customers/{customer_key}`: a partial update, by your own key.
    pub async fn update_customer(
        &self,
        customer_key: &str,
        update: &CustomerUpdate,
    ) -> Result<Record<Customer>, Error> {
        let target = self.target(self.path(Entity::Customer), Some(customer_key))?;
        let body = serde_json::to_value(update)
            .map_err(|e| Error::InvalidRequest(format!("customer update: {e}")))?;
        let body = self
            .call(Method::PATCH, target, &[], Some(body), Repeat::Safe)
            .await?;
        Record::parse(self.data(body, Entity::Customer)?)
    }

    /// `POST /transactions`. Retried after a 5xx or timeout only when it has a `key` (a
    /// repeated key is answered with the existing transaction or refused; either way no
    /// second transaction). A refusal is returned as it came ([`Error::Http`]); the caller
    /// looks the transaction up ([`Client::find_transaction`]) to learn whether it exists.
    /// A 2xx answer is the transaction PartnerStack has under the key, which for a repeated
    /// key may be an earlier one: the caller compares it with what it asked for.
    pub async fn create_transaction(
        &self,
        transaction: &NewTransaction,
    ) -> Result<Record<Transaction>, Error> {
        let target = self.target(self.path(Entity::Transaction), None)?;
        let body = serde_json::to_value(transaction)
            .map_err(|e| Error::InvalidRequest(format!("transaction: {e}")))?;
        let repeat = if transaction.key.is_some() {
            Repeat::Safe
        } else {
            Repeat::Unsafe
        };
        let body = self
            .call(Method::POST, target, &[], Some(body), repeat)
            .await?;
        Record::parse(self.data(body, Entity::Transaction)?)
    }

    /// `DELETE /transactions/{key}`, judged by the HTTP status alone: any 2xx answer
    /// means deleted, whatever its body (PartnerStack's API definition types delete
    /// answers as `{"message", "status"}` without `data`; an answer with `data`, or an
    /// empty one, is taken as well), and a 404 means there is none by that key. Not
    /// repeated after an answer that may hide a landed delete, so the caller can tell a 404
    /// after its own lost delete from one for a key that never existed.
    pub async fn delete_transaction(&self, key: &str) -> Result<Deletion, Error> {
        let target = self.target(self.path(Entity::Transaction), Some(key))?;
        match self
            .call(Method::DELETE, target, &[], None, Repeat::Unsafe)
            .await
        {
            Ok(body) => Ok(Deletion::Deleted {
                object: body.get("data").filter(|d| d.is_object()).cloned(),
            }),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(Deletion::Absent),
            Err(e) => Err(e),
        }
    }

    /// The transaction with `key`, if it exists. PartnerStack has no single-object read for
    /// transactions: around `created_at` when it is known (a narrow creation window), else
    /// among the newest (a repeated create is almost always a recent one), at most
    /// [`FIND_PAGES`] pages.
    pub async fn find_transaction(
        &self,
        key: &str,
        created_at: Option<DateTime<Utc>>,
    ) -> Result<Option<Record<Transaction>>, Error> {
        let margin = chrono::Duration::seconds(1);
        let query = ListQuery {
            min_created: created_at.and_then(|t| t.checked_sub_signed(margin)),
            max_created: created_at.and_then(|t| t.checked_add_signed(margin)),
            ..ListQuery::default()
        };
        let mut pager = self.pages(Entity::Transaction, query);
        while pager.pages() < FIND_PAGES {
            let Some(page) = pager.next_page().await? else {
                break;
            };
            if let Some(item) = page
                .items
                .into_iter()
                .find(|item| models::Meta::identity_of(item).as_deref() == Some(key))
            {
                return Record::parse(item).map(Some);
            }
        }
        Ok(None)
    }

    /// One list page's raw body (the pager reads it); every attempt is counted in
    /// `requests`.
    async fn get_list(
        &self,
        path: &str,
        params: &[(String, String)],
        requests: &AtomicU64,
    ) -> Result<Value, Error> {
        let target = self.target(path, None)?;
        self.call_counted(
            Method::GET,
            target,
            params,
            None,
            Repeat::Safe,
            Some(requests),
        )
        .await
    }

    /// HTTP requests this client (and its clones) sent, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.spent().total()
    }

    /// HTTP requests this client (and its clones) sent, retries included, by what they
    /// were for (see [`spend`]).
    pub fn spent(&self) -> Spent {
        Spent::from_counts(&self.inner.spent)
    }

    /// The request to `path` (plus `key`) and the endpoint it is observed under.
    fn target(&self, path: &str, key: Option<&str>) -> Result<Target, Error> {
        Ok(Target {
            url: self.url(path, key)?,
            endpoint: endpoint(path, key.is_some()),
        })
    }

    /// `base_url` + `path`, plus `key` as one percent-encoded segment (`/` and `%`
    /// encoded too). A key that no segment can carry (empty, `.` or `..`, which URLs
    /// resolve away) is refused: it would name another resource.
    fn url(&self, path: &str, key: Option<&str>) -> Result<Url, Error> {
        let mut url = Url::parse(&format!("{}{}", self.inner.base_url, path))
            .map_err(|e| Error::InvalidRequest(format!("path {path:?}: {e}")))?;
        if let Some(key) = key {
            if matches!(key, "" | "." | "..") {
                return Err(Error::InvalidRequest(format!(
                    "the key {key:?} cannot be sent as a path segment"
                )));
            }
            url.path_segments_mut()
                .map_err(|()| Error::InvalidRequest(format!("path {path:?} takes no key")))?
                .pop_if_empty()
                .push(key);
        }
        Ok(url)
    }

    /// The `data` object of a single-object answer.
    fn data(&self, body: Value, entity: Entity) -> Result<Value, Error> {
        match body {
            Value::Object(mut map) => match map.remove("data") {
                Some(data @ Value::Object(_)) => Ok(data),
                _ => Err(Error::InvalidResponse {
                    path: self.path(entity).to_string(),
                    detail: "the answer has no `data` object".into(),
                }),
            },
            _ => Err(Error::InvalidResponse {
                path: self.path(entity).to_string(),
                detail: "the body is not a JSON object".into(),
            }),
        }
    }

    /// Sends one request, with the budget, retries and backoff; returns the JSON body of
    /// a 2xx answer.
    async fn call(
        &self,
        method: Method,
        target: Target,
        query: &[(String, String)],
        body: Option<Value>,
        repeat: Repeat,
    ) -> Result<Value, Error> {
        self.call_counted(method, target, query, body, repeat, None)
            .await
    }

    /// [`Client::call`], also counting each attempt in `counter`. Each attempt is reported
    /// to the observer, if there is one.
    async fn call_counted(
        &self,
        method: Method,
        target: Target,
        query: &[(String, String)],
        body: Option<Value>,
        repeat: Repeat,
        counter: Option<&AtomicU64>,
    ) -> Result<Value, Error> {
        let inner = &self.inner;
        let Target { url, endpoint } = target;
        let what = format!("{method} {}", url.path());
        retry(&inner.policy, &inner.budget, &what, |n| {
            let purpose = inner.count_spent();
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let request = inner.request(&method, &url, query, body.as_ref());
            let exchange = attempt(request, url.path().to_string(), repeat);
            let (observer, method, endpoint) = (&inner.observer, &method, &endpoint);
            async move {
                let started = std::time::Instant::now();
                let (result, answer) = exchange.await;
                if let Some(observer) = observer {
                    observer.exchange(&Exchange {
                        method,
                        endpoint,
                        answer,
                        elapsed: started.elapsed(),
                        attempt: n,
                        purpose,
                    });
                }
                result
            }
        })
        .await
    }
}

/// A single read's object: `data` itself, or, when `data` has no `key` and names the
/// object by its kind (`{"partnership": {...}}`), the object inside.
fn contained(data: Value, entity: Entity) -> Value {
    let Value::Object(mut map) = data else {
        return data;
    };
    if !map.contains_key("key")
        && map.get(entity.name()).is_some_and(Value::is_object)
        && let Some(inner) = map.remove(entity.name())
    {
        return inner;
    }
    Value::Object(map)
}

/// One HTTP exchange, classified for the retry loop, and how PartnerStack answered.
async fn attempt(
    request: reqwest::RequestBuilder,
    path: String,
    repeat: Repeat,
) -> (Attempt<Value>, Answer) {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let answer = Answer::of_failure(&e);
            return (transport_failure(e, repeat), answer);
        }
    };
    let status = response.status();
    let answer = Answer::Status(status);
    log_rate_limits(response.headers());
    let wait = retry_after(response.headers(), Utc::now());
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => return (transport_failure(e, repeat), answer),
    };
    if status.is_success() {
        // An empty 2xx body (a 204, or a 200 without one) is an answer too: what it means
        // is the caller's to say (a delete judges by the status alone).
        if text.trim().is_empty() {
            return (Attempt::Done(Ok(Value::Null)), answer);
        }
        let body = serde_json::from_str(&text).map_err(|e| Error::InvalidResponse {
            path,
            detail: format!("the body is not JSON ({e}): {}", excerpt(&text)),
        });
        return (Attempt::Done(body), answer);
    }
    let error = Error::Http {
        status,
        message: error_message(&text, status),
    };
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && repeat == Repeat::Safe);
    let attempt = if retryable {
        Attempt::Retry {
            error,
            retry_after: wait,
        }
    } else {
        Attempt::Done(Err(error))
    };
    (attempt, answer)
}

fn transport_failure(e: reqwest::Error, repeat: Repeat) -> Attempt<Value> {
    let retryable = e.is_connect()
        || (repeat == Repeat::Safe && (e.is_timeout() || e.is_request() || e.is_body()));
    let error = Error::transport(e);
    if retryable {
        Attempt::Retry {
            error,
            retry_after: None,
        }
    } else {
        Attempt::Done(Err(error))
    }
}

/// PartnerStack's `message`, else an excerpt of the body, else the status's reason.
fn error_message(text: &str, status: StatusCode) -> String {
    if let Ok(Value::Object(body)) = serde_json::from_str::<Value>(text) {
        for field in ["message", "error", "errors", "detail"] {
            match body.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => return s.clone(),
                Some(v @ (Value::Array(_) | Value::Object(_))) => return excerpt(&v.to_string()),
                _ => {}
            }
        }
    }
    if text.trim().is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        excerpt(text)
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Rate-limit headers (names are undocumented) are logged so their numbers can be learned.
fn log_rate_limits(headers: &HeaderMap) {
    for (name, value) in headers {
        let name = name.as_str();
        if name.starts_with("x-ratelimit") || name.starts_with("ratelimit") {
            tracing::debug!(header = name, value = ?value, "PartnerStack rate limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_bodies_use_partnerstack_field_names() {
        let t = NewTransaction {
            customer: TransactionCustomer::ExternalKey("my-cust-1".into()),
            amount: 1999,
            currency: "USD".into(),
            key: Some("inv_1".into()),
            category_key: None,
            product_key: None,
            metadata: None,
            test: None,
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123),
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"customer_external_key": "my-cust-1", "amount": 1999, "currency": "USD",
                   "key": "inv_1", "created_at": 1_700_000_000_123_i64})
        );
        let c = NewCustomer {
            email: "a@b.co".into(),
            partner_key: "p1".into(),
            customer_key: Some("c1".into()),
            ..NewCustomer::default()
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"email": "a@b.co", "partner_key": "p1", "customer_key": "c1"})
        );
        // `customer_key` is required and nullable: sent as null, never left out.
        let keyless = NewCustomer {
            customer_key: None,
            ..c
        };
        assert_eq!(
            serde_json::to_value(&keyless).unwrap(),
            json!({"email": "a@b.co", "partner_key": "p1", "customer_key": null})
        );
    }

    #[test]
    fn error_messages_are_partnerstacks_own() {
        let status = StatusCode::BAD_REQUEST;
        assert_eq!(
            error_message(
                r#"{"message": "'email' is a required property", "status": 400}"#,
                status
            ),
            "'email' is a required property"
        );
        assert_eq!(error_message("", status), "Bad Request");
        assert_eq!(
            error_message("<html>oops</html>", status),
            "<html>oops</html>"
        );
        let long = "x".repeat(1000);
        assert_eq!(error_message(&long, status).len(), BODY_EXCERPT + 3);
    }

    fn settings() -> Settings {
        Settings {
            base_url: "https://api.partnerstack.com/api/v2".into(),
            public_key: None,
            secret_key: None,
            page_size: 250,
            requests_per_second: 5.0,
            request_timeout: Duration::from_secs(30),
            max_attempts: 8,
            max_backoff: Duration::from_secs(60),
            paths: StreamPaths::default(),
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut config = settings();
        config.public_key = Some(SecretString::from("pk_live_visible_nowhere".to_string()));
        config.secret_key = Some(SecretString::from("sk_live_visible_nowhere".to_string()));
        let client = Client::new(&config).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("visible_nowhere"), "{debug}");
        assert!(matches!(
            Client::new(&settings()),
            Err(Error::NoCredentials)
        ));
        let mut blank = settings();
        blank.public_key = Some(SecretString::from(" ".to_string()));
        blank.secret_key = Some(SecretString::from("sk".to_string()));
        assert!(blank.credentials().is_none());
        // The key that is set is the one named (its variable is the one to look at).
        assert_eq!(blank.validate().unwrap_err().0, "secret_key");
    }

    #[test]
    fn observers_see_endpoints_and_answer_classes_never_keys() {
        assert_eq!(endpoint("/customers", true), "/customers/{key}");
        assert_eq!(endpoint("/customers/", true), "/customers/{key}");
        assert_eq!(endpoint("/partnerships", false), "/partnerships");
        for (answer, class) in [
            (Answer::Status(StatusCode::OK), "2xx"),
            (Answer::Status(StatusCode::MOVED_PERMANENTLY), "3xx"),
            (Answer::Status(StatusCode::NOT_FOUND), "4xx"),
            (Answer::Status(StatusCode::TOO_MANY_REQUESTS), "429"),
            (Answer::Status(StatusCode::SERVICE_UNAVAILABLE), "5xx"),
            (Answer::Timeout, "timeout"),
            (Answer::Unreachable, "unreachable"),
        ] {
            assert_eq!(answer.class(), class);
            assert!(Answer::CLASSES.contains(&class));
        }
        let endpoints = settings().endpoints();
        for expected in [
            (Method::GET, "/partnerships"),
            (Method::GET, "/partnerships/{key}"),
            (Method::GET, "/customers/{key}"),
            (Method::PATCH, "/customers/{key}"),
            (Method::POST, "/transactions"),
            (Method::DELETE, "/transactions/{key}"),
            (Method::GET, "/rewards"),
        ] {
            assert!(
                endpoints.contains(&(expected.0.clone(), expected.1.to_string())),
                "{expected:?}"
            );
        }
        assert!(!endpoints.contains(&(Method::GET, "/rewards/{key}".to_string())));
    }

    #[test]
    fn a_single_read_is_the_object_or_a_container_of_it() {
        let object = json!({"key": "part_1", "partner_key": "JohnSmith"});
        assert_eq!(contained(object.clone(), Entity::Partner), object);
        assert_eq!(
            contained(json!({"partnership": object.clone()}), Entity::Partner),
            object
        );
        // An object that happens to have a field named like its kind stays as it is.
        let customer = json!({"key": "cust_1", "customer": {"key": "x"}});
        assert_eq!(contained(customer.clone(), Entity::Customer), customer);
    }

    #[test]
    fn keys_are_one_encoded_path_segment() {
        let mut config = settings();
        config.base_url = "http://127.0.0.1:1/api/v2/".into();
        config.public_key = Some(SecretString::from("pk".to_string()));
        config.secret_key = Some(SecretString::from("sk".to_string()));
        let client = Client::new(&config).unwrap();
        let url = client.url("/customers", Some("a/b c?")).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/api/v2/customers/a%2Fb%20c%3F"
        );
        // An encoded slash stays what it is, never a separator; dots are not resolved.
        let url = client.url("/transactions", Some("%2F")).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/api/v2/transactions/%252F");
        let url = client.url("/transactions", Some("...")).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/api/v2/transactions/...");
        // Keys a URL would resolve away, or leave empty, name another resource: refused.
        for key in ["", ".", ".."] {
            assert!(
                matches!(
                    client.url("/transactions", Some(key)),
                    Err(Error::InvalidRequest(_))
                ),
                "{key:?}"
            );
        }
    }
}
