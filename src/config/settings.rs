//! The settings, one struct per section of `config/default.toml` (which documents each
//! with its default and variable). A rule about one value is carried by its type
//! (`NonZeroUsize`, `Vec<Entity>`, ...) or named by its reader (`fields::*`), so a
//! loaded `Config` holds no value its own field forbids.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;
use partnerstack::Entity;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::fields;
use crate::auth::{Callers, Scope, WebhookSecret};

/// Every setting of the service. See `config/default.toml` for meaning and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub webhooks: WebhookConfig,
    pub api: ApiConfig,
    pub partnerstack: PartnerStackConfig,
    pub reconcile: ReconcileConfig,
    pub log: LogConfig,
    pub changes: ChangesConfig,
    pub retention: RetentionConfig,
    pub writes: WritesConfig,
    /// Endpoints the change feed is relayed to (`[[relay]]` tables, or the environment).
    #[serde(default)]
    pub relay: Vec<RelayEndpoint>,
    /// What loading noticed but did not refuse (a variable that sets nothing), for the log.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The HTTP server (`[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address the service listens on.
    pub listen: SocketAddr,
    /// A second address serving only the operations routes (`/metrics`, `/status`); when
    /// set, the main listener no longer serves them.
    #[serde(deserialize_with = "fields::optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// Longest time any request may take.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight work.
    #[serde(deserialize_with = "fields::duration")]
    pub shutdown_timeout: Duration,
    /// How long the service keeps serving after SIGTERM, with `/readyz` answering 503 and
    /// connections closing after their response, before it stops accepting: long enough
    /// for a load balancer's health checks to take the replica out.
    #[serde(deserialize_with = "fields::duration")]
    pub shutdown_delay: Duration,
    /// How long a connection may take to deliver a request head, counted from when it
    /// opened or answered its last request: bounds slow senders and idle keep-alives.
    /// How long a new connection may take to deliver its first complete request head:
    /// short, so a crowd of silent connections cannot hold the slots.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub first_request_timeout: Duration,
    /// How long a connection may stay idle after an answer, until the next request head
    /// is complete (kept above the balancers' own idle timeout).
    #[serde(deserialize_with = "fields::positive_duration")]
    pub keepalive_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    #[serde(deserialize_with = "fields::connection_cap")]
    pub max_connections: ConnectionCap,
    /// Whether `GET /status` (the HTML status page) is served; 404 when false.
    pub status_page: bool,
}

/// How many connections the server serves at once (`server.max_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionCap {
    /// Sized from the process's file-descriptor limit (see `crate::server::connection_cap`).
    Auto,
    /// This many.
    At(NonZeroUsize),
}

/// Postgres (`[database]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `None` means "run the embedded Postgres".
    #[serde(deserialize_with = "fields::postgres_url")]
    pub url: Option<SecretString>,
    /// Where the embedded Postgres keeps its data.
    pub data_dir: PathBuf,
    /// True when `data_dir` is the compiled-in default (neither a `--config` file nor
    /// `PSYNC_DATA_DIR` set it). Only then may the embedded Postgres keep its data
    /// elsewhere when the default is out of its reach (see `db::embedded::choose_data_dir`).
    #[serde(skip)]
    pub data_dir_is_default: bool,
    /// Connections in the pool; at least 2, and more than `webhooks.appliers`.
    #[serde(deserialize_with = "fields::at_least::<2, _, _>")]
    pub max_connections: u32,
    /// Longest wait for a pooled connection.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub acquire_timeout: Duration,
    /// How long start-up (`serve`, `migrate`, ...) waits for the database to answer
    /// before giving up.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub connect_timeout: Duration,
    /// Postgres ends a session idle inside a transaction this long (0: never).
    #[serde(deserialize_with = "fields::duration")]
    pub idle_in_transaction_timeout: Duration,
    /// Postgres' cap on any single statement (0: none).
    #[serde(deserialize_with = "fields::duration")]
    pub statement_timeout: Duration,
}

/// Webhook ingest (`[webhooks]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// URL tokens accepted by `POST /webhooks/partnerstack/{token}`, each at least 16
    /// characters.
    #[serde(deserialize_with = "fields::secrets")]
    pub tokens: Vec<SecretString>,
    /// HMAC-SHA256 secrets a signed body must verify against (none: no signature needed).
    #[serde(deserialize_with = "fields::secrets")]
    pub signing_secrets: Vec<SecretString>,
    /// The header carrying that signature.
    #[serde(deserialize_with = "fields::header_name")]
    pub signature_header: HeaderName,
    /// Largest accepted body, in bytes.
    #[serde(deserialize_with = "fields::positive")]
    pub body_limit: NonZeroUsize,
    /// Deliveries waiting for the writer at most.
    #[serde(deserialize_with = "fields::positive")]
    pub queue_capacity: NonZeroUsize,
    /// Bytes of deliveries being read or queued at most; at least `body_limit`.
    pub queue_bytes: usize,
    /// Deliveries committed together in one statement at most (up to 1,000).
    #[serde(deserialize_with = "fields::count::<1, 1000, _, _>")]
    pub batch_size: NonZeroUsize,
    /// Applier tasks per replica, each applying its own batches (`SKIP LOCKED`); up to
    /// 16, and fewer than `database.max_connections`.
    #[serde(deserialize_with = "fields::count::<1, 16, _, _>")]
    pub appliers: NonZeroUsize,
    /// Whether deliveries are verified against PartnerStack before they are applied.
    pub verification: Verification,
    /// How long a verified delivery whose object PartnerStack does not know yet is
    /// retried before it is recorded `unconfirmed`.
    #[serde(deserialize_with = "fields::duration")]
    pub confirm_within: Duration,
}

/// How webhook deliveries are applied (`webhooks.verification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// `fetch` when PartnerStack API keys are set, else `body`.
    Auto,
    /// A delivery is a notification: the object it names is fetched from PartnerStack
    /// (where a single GET exists, else looked up in a narrow list page) and PartnerStack's
    /// answer is applied. Needs API keys.
    Fetch,
    /// The body is applied as it is (a body without a key updates the stored row its
    /// `partner_key` or `customer_key` finds, and never creates one).
    Body,
}

impl WebhookConfig {
    /// Whether deliveries are fetched to be verified, given whether API keys are set.
    pub fn verifies(&self, have_keys: bool) -> bool {
        match self.verification {
            Verification::Auto => have_keys,
            Verification::Fetch => true,
            Verification::Body => false,
        }
    }
}

/// The internal `/v1` API (`[api]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unnamed bearer tokens accepted by `/v1`, each at least 16 characters; they may
    /// only read (scope `read`).
    #[serde(deserialize_with = "fields::secrets")]
    pub tokens: Vec<SecretString>,
    /// Named clients with their own tokens and scopes (`[[api.clients]]` tables, or
    /// `PSYNC_API_CLIENT_<NAME>_*`).
    #[serde(default)]
    pub clients: Vec<ApiClient>,
    /// Requests that wait (a long-poll of `/v1/changes`, a write with `wait`) held at once
    /// by this replica, all clients together; at most half the connection cap is used.
    #[serde(deserialize_with = "fields::positive")]
    pub long_polls: NonZeroUsize,
    /// Of those, held at once by one client (one token).
    #[serde(deserialize_with = "fields::positive")]
    pub long_polls_per_client: NonZeroUsize,
    /// A list page that carries bodies (`include=payload`, `include=raw`) ends early, with
    /// `has_more` and a cursor, once its bodies pass this many bytes.
    #[serde(deserialize_with = "fields::positive")]
    pub page_bytes: NonZeroUsize,
}

impl ApiConfig {
    /// Every caller the settings name: the clients with their scopes, then the unnamed
    /// tokens, which may only read.
    pub fn callers(&self) -> Callers {
        let mut callers = Callers::default();
        for client in &self.clients {
            // A loaded configuration gives every client a digest (validate.rs).
            if let Some(digest) = client.digest() {
                callers.add(Some(client.name.clone()), digest, client.scopes.clone());
            }
        }
        for token in &self.tokens {
            let digest = crate::auth::sha256(token.expose_secret().as_bytes());
            callers.add(None, digest, vec![Scope::Read]);
        }
        callers
    }
}

/// A named API client (`[[api.clients]]`, or `PSYNC_API_CLIENT_<NAME>_*`): its token, or
/// only the token's SHA-256, and what it may do.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClient {
    /// Names the client in writes, the change log and the access log: lower-case letters,
    /// digits, `_` and `-`; unique.
    #[serde(deserialize_with = "fields::endpoint_name")]
    pub name: String,
    /// The bearer token itself (at least 16 characters)...
    #[serde(default, deserialize_with = "fields::optional_secret")]
    pub token: Option<SecretString>,
    /// ...or the hex SHA-256 of it, so the configuration holds no secret. Exactly one of
    /// the two.
    #[serde(default, deserialize_with = "fields::sha256_hex")]
    pub token_sha256: Option<[u8; 32]>,
    /// What it may do: `read`, `write`, `admin` (each listed; none implies another).
    #[serde(deserialize_with = "fields::scopes")]
    pub scopes: Vec<Scope>,
}

impl ApiClient {
    /// The SHA-256 of the client's token, however it was given (`None`: neither was).
    pub fn digest(&self) -> Option<[u8; 32]> {
        match (&self.token, self.token_sha256) {
            (Some(token), _) => Some(crate::auth::sha256(token.expose_secret().as_bytes())),
            (None, digest) => digest,
        }
    }
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("name", &self.name)
            .field("token", &self.token)
            .field("token_sha256", &self.token_sha256.map(|_| "[digest]"))
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The PartnerStack client's settings (`[partnerstack]`); the client's crate checks them.
pub type PartnerStackConfig = partnerstack::client::Settings;

/// The reconciler (`[reconcile]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Time between passes; `None` when set to "off".
    #[serde(deserialize_with = "fields::interval_or_off")]
    pub interval: Option<Duration>,
    /// The streams to reconcile, in order (named as [`Entity::stream`]; an unknown name
    /// is refused when the settings load).
    pub streams: Vec<Entity>,
    /// Margin an incremental pass re-reads before the last completed pass began.
    #[serde(deserialize_with = "fields::duration")]
    pub overlap: Duration,
    /// How far back every pass re-reads streams without an "updated since" filter.
    #[serde(deserialize_with = "fields::duration")]
    pub window: Duration,
    /// How often every stream is scanned in full.
    #[serde(deserialize_with = "fields::duration")]
    pub full_interval: Duration,
    /// The largest share of a stream's rows one full scan may mark deleted (0 to 1).
    #[serde(deserialize_with = "fields::fraction")]
    pub max_delete_fraction: f64,
    /// Longest back-off of a failing stream: after an outage, streams sync again at most
    /// this long after PartnerStack answers.
    #[serde(deserialize_with = "fields::duration")]
    pub max_retry_delay: Duration,
    /// How long a webhook-covered stream's pass may take, from when it is due (waiting
    /// for other streams' passes included): with `interval`, it makes the stream's
    /// staleness bound.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub pass_budget: Duration,
    /// The streams PartnerStack sends webhooks for (webhook-covered); the others are
    /// poll-only. Repairs are counted only for webhook-covered streams.
    pub webhook_streams: Vec<Entity>,
    /// The longest a change to any object of a poll-only stream may take to reach the
    /// copy: such streams are scanned in full often enough to meet it. At least 1m.
    #[serde(deserialize_with = "fields::duration_from::<60, _>")]
    pub staleness_bound: Duration,
    /// The share of the request budget full scans of poll-only streams may use, so
    /// incremental passes and fetches keep the rest (0 < share <= 1).
    #[serde(deserialize_with = "fields::share")]
    pub scan_share: f64,
}

impl ReconcileConfig {
    /// Whether PartnerStack sends webhooks for `entity`'s stream.
    pub fn webhook_covered(&self, entity: Entity) -> bool {
        self.webhook_streams.contains(&entity)
    }
}

/// Logging (`[log]`; the filter is `RUST_LOG`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Pretty,
    /// One flat JSON object per line, for log pipelines.
    Json,
}

/// The change feed and its relay (`[changes]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// How often a replica looks for newly visible changes while a reader waits or an
    /// endpoint is relayed to.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub poll_interval: Duration,
    /// Longest wait for a relay endpoint's answer.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub relay_timeout: Duration,
    /// Longest pause between attempts at a failing endpoint (the back-off doubles up to it).
    #[serde(deserialize_with = "fields::positive_duration")]
    pub relay_max_backoff: Duration,
}

/// How long stored history is kept (`[retention]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw webhook deliveries (and with them, their de-duplication); at least 1h.
    #[serde(deserialize_with = "fields::duration_from::<3600, _>")]
    pub deliveries: Duration,
    /// Changes in the feed and in history; at least 1h.
    #[serde(deserialize_with = "fields::duration_from::<3600, _>")]
    pub changes: Duration,
    /// Finished writes (and with them, their idempotency keys); at least 24h.
    #[serde(deserialize_with = "fields::write_retention")]
    pub writes: Duration,
    /// Time between pruning rounds.
    #[serde(deserialize_with = "fields::positive_duration")]
    pub interval: Duration,
    /// Rows deleted per statement (each in its own short transaction), up to 100,000.
    #[serde(deserialize_with = "fields::count::<1, 100_000, _, _>")]
    pub batch_size: NonZeroU32,
}

/// The write outbox and its worker (`[writes]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesConfig {
    /// Writes each replica sends at once (up to 256).
    #[serde(deserialize_with = "fields::count::<1, 256, _, _>")]
    pub concurrency: NonZeroUsize,
    /// How long a worker holds a write it is sending (renewed while it works); at least 3s.
    #[serde(deserialize_with = "fields::duration_from::<3, _>")]
    pub lease: Duration,
    /// After a customer create's answer was lost, how long to keep looking for the
    /// customer (ever less often) before sending the create again; also how long a write
    /// about a customer this outbox created is tried again while PartnerStack does not know
    /// the customer yet.
    #[serde(deserialize_with = "fields::duration")]
    pub lookup_window: Duration,
    /// Longest pause between attempts of a failing write (doubling from 1 s).
    #[serde(deserialize_with = "fields::duration")]
    pub max_retry_delay: Duration,
    /// A write still not sent this long after it was accepted is failed.
    #[serde(deserialize_with = "fields::duration")]
    pub give_up_after: Duration,
}

/// One relay endpoint (`[[relay]]`, or `PSYNC_RELAY_<NAME>_*`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEndpoint {
    /// Identifies the endpoint's position in the feed across restarts and replicas, and
    /// labels its metrics: lower-case letters, digits, `_` and `-`; unique.
    #[serde(deserialize_with = "fields::endpoint_name")]
    pub name: String,
    /// Where changes are POSTed (http or https).
    #[serde(deserialize_with = "fields::http_url")]
    pub url: reqwest::Url,
    /// `whsec_...` (Standard Webhooks).
    #[serde(deserialize_with = "fields::webhook_secret")]
    pub secret: WebhookSecret,
    /// Only changes of these collections; all when absent (never empty).
    #[serde(default, deserialize_with = "fields::some_entities")]
    pub entities: Option<Vec<Entity>>,
}

impl RelayEndpoint {
    /// The URL without query string or credentials (which may carry secrets), for
    /// logs and `GET /v1/relay`.
    pub fn public_url(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.to_string()
    }
}

impl std::fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("name", &self.name)
            .field("url", &self.public_url())
            .field("secret", &self.secret)
            .field("entities", &self.entities)
            .finish()
    }
}
