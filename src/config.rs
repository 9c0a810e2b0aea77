//! Typed settings, loaded once at start-up.
//!
//! Three layers, later ones winning: `config/default.toml` (compiled in, documents every
//! setting), an optional file given with `--config`, then environment variables. Every
//! setting has a variable named after it ([`env_var`]: `server.listen` is
//! `PSYNC_SERVER_LISTEN`), and the names documented before that rule existed
//! ([`LEGACY_ENV`], e.g. `PSYNC_LISTEN`, `DATABASE_URL`) keep working. Each setting's
//! origin is recorded, so an error names the layer that was wrong: the variable, or the
//! file and line. Secrets are [`SecretString`]s, so `Debug` output and logs show
//! `[REDACTED]`.
//!
//! Layering is written here rather than taken from a crate (figment): a variable is typed
//! like the default it replaces (a token of digits stays text, a list is comma-separated),
//! which a generic provider cannot know, and the origins cost a map.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderName;
use partnerstack::Entity;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::WebhookSecret;
use serde::{Deserialize, Deserializer};

/// The compiled-in defaults; `config/default.toml` in the repository.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The prefix of every setting's variable ([`env_var`]).
const ENV_PREFIX: &str = "PSYNC_";

/// Variables documented before the derived names, and the setting each sets. They keep
/// working; with the derived name also set, both must agree.
pub const LEGACY_ENV: &[(&str, &str)] = &[
    ("PSYNC_LISTEN", "server.listen"),
    ("PSYNC_REQUEST_TIMEOUT", "server.request_timeout"),
    ("PSYNC_ADMIN_LISTEN", "server.admin_listen"),
    ("PSYNC_KEEPALIVE_TIMEOUT", "server.keepalive_timeout"),
    ("PSYNC_MAX_CONNECTIONS", "server.max_connections"),
    ("PSYNC_STATUS_PAGE", "server.status_page"),
    ("DATABASE_URL", "database.url"),
    ("PSYNC_DATA_DIR", "database.data_dir"),
    ("PSYNC_WEBHOOK_TOKENS", "webhooks.tokens"),
    ("PSYNC_WEBHOOK_SIGNING_SECRETS", "webhooks.signing_secrets"),
    (
        "PSYNC_WEBHOOK_SIGNATURE_HEADER",
        "webhooks.signature_header",
    ),
    ("PSYNC_WEBHOOK_BODY_LIMIT", "webhooks.body_limit"),
    ("PSYNC_WEBHOOK_VERIFICATION", "webhooks.verification"),
    ("PARTNERSTACK_BASE_URL", "partnerstack.base_url"),
    ("PARTNERSTACK_PUBLIC_KEY", "partnerstack.public_key"),
    ("PARTNERSTACK_SECRET_KEY", "partnerstack.secret_key"),
    ("PARTNERSTACK_PAGE_SIZE", "partnerstack.page_size"),
    (
        "PARTNERSTACK_REQUESTS_PER_SECOND",
        "partnerstack.requests_per_second",
    ),
    ("PSYNC_WEBHOOK_STREAMS", "reconcile.webhook_streams"),
    ("PSYNC_STALENESS_BOUND", "reconcile.staleness_bound"),
];

/// Variables with the settings prefix that are not settings (read elsewhere).
const OTHER_PSYNC_VARS: &[&str] = &["PSYNC_DEMO_DATA_DIR"];

/// The variable that sets `setting` (`server.listen` → `PSYNC_SERVER_LISTEN`).
pub fn env_var(setting: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        setting.replace('.', "_").to_ascii_uppercase()
    )
}

/// Every setting `config/default.toml` declares, as dotted paths (`server.listen`,
/// `partnerstack.paths.customers`), in file order.
pub fn settings() -> Vec<String> {
    let table: toml::Table = DEFAULT_TOML.parse().unwrap_or_default();
    let mut out = Vec::new();
    leaves(&table, "", &mut out);
    out
}

/// The dotted paths of the values in `table` (tables of tables walked; `[[relay]]`
/// entries as `relay[0].url`).
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(t) => leaves(t, &format!("{path}."), out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        leaves(t, &format!("{path}[{i}]."), out);
                    }
                }
            }
            _ => out.push(path),
        }
    }
}

/// The variables that set `setting`: its derived name, and its older one if it has one.
pub fn variables_of(setting: &str) -> Vec<String> {
    let derived = env_var(setting);
    let older = LEGACY_ENV
        .iter()
        .filter(|(var, s)| *s == setting && **var != derived)
        .map(|(var, _)| var.to_string());
    std::iter::once(derived.clone()).chain(older).collect()
}

/// Every variable that sets a setting, with the setting: the derived names, then the
/// legacy ones.
pub fn environment_variables() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> =
        settings().into_iter().map(|s| (env_var(&s), s)).collect();
    for (var, setting) in LEGACY_ENV {
        if !vars.iter().any(|(v, _)| v == var) {
            vars.push((var.to_string(), setting.to_string()));
        }
    }
    vars
}

/// Environment variables that define relay endpoints:
/// `PSYNC_RELAY_<NAME>_URL`, `_SECRET` and `_ENTITIES` (`<NAME>` lower-cased is the
/// endpoint's name; they add to or override a `[[relay]]` table of that name).
const RELAY_ENV_PREFIX: &str = "PSYNC_RELAY_";
const RELAY_ENV_FIELDS: &[(&str, &str)] = &[
    ("_URL", "url"),
    ("_SECRET", "secret"),
    ("_ENTITIES", "entities"),
];

/// Shortest retention of finished writes: their idempotency keys must outlive a day of
/// client retries.
const MIN_WRITE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Shortest retention accepted: readers and PartnerStack's retries need some hours.
const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// Shortest token or secret accepted: a URL token is the only thing that authenticates a
/// webhook delivery, so it must not be guessable.
const MIN_SECRET_LEN: usize = 16;

/// Longest reconciler duration accepted (10 years): anything longer is a mistake, and
/// time arithmetic on it could overflow.
const MAX_RECONCILE_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// A configuration problem, worded for the person starting the service.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

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

/// The change feed and its relay (`[changes]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// How often a replica looks for newly visible changes while a reader waits or an
    /// endpoint is relayed to.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait for a relay endpoint's answer.
    #[serde(with = "humantime_serde")]
    pub relay_timeout: Duration,
    /// Longest pause between attempts at a failing endpoint (the back-off doubles up to it).
    #[serde(with = "humantime_serde")]
    pub relay_max_backoff: Duration,
}

/// The write outbox and its worker (`[writes]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesConfig {
    /// Writes each replica sends at once.
    pub concurrency: usize,
    /// How long a worker holds a write it is sending (renewed while it works).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// After a customer create's answer was lost, how long to keep looking for the
    /// customer before sending the create again.
    #[serde(with = "humantime_serde")]
    pub lookup_window: Duration,
    /// Longest pause between attempts of a failing write (doubling from 1 s).
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// A write still not sent this long after it was accepted is failed.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
}

/// How long stored history is kept (`[retention]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw webhook deliveries (and with them, their de-duplication).
    #[serde(with = "humantime_serde")]
    pub deliveries: Duration,
    /// Changes in the feed and in history.
    #[serde(with = "humantime_serde")]
    pub changes: Duration,
    /// Finished writes (and with them, their idempotency keys).
    #[serde(with = "humantime_serde")]
    pub writes: Duration,
    /// Time between pruning rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per statement (each in its own short transaction).
    pub batch_size: i64,
}

/// One relay endpoint (`[[relay]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEndpoint {
    /// Identifies the endpoint's position in the feed across restarts and replicas, and
    /// labels its metrics: lower-case letters, digits, `_` and `-`.
    pub name: String,
    #[serde(deserialize_with = "relay_url")]
    pub url: reqwest::Url,
    /// `whsec_...` (Standard Webhooks).
    #[serde(deserialize_with = "webhook_secret")]
    pub secret: WebhookSecret,
    /// Only changes of these collections; all when absent.
    #[serde(default)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A second address serving only the operations routes (`/metrics`); when set, the
    /// main listener no longer serves them.
    #[serde(deserialize_with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a connection may take to deliver a request head, counted from when it
    /// opened or answered its last request: bounds slow senders and idle keep-alives.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Whether `GET /status` (the HTML status page) is served; 404 when false.
    pub status_page: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `None` means "run the embedded Postgres".
    #[serde(deserialize_with = "optional_secret")]
    pub url: Option<SecretString>,
    pub data_dir: PathBuf,
    /// True when `data_dir` is the compiled-in default (neither a `--config` file nor
    /// `PSYNC_DATA_DIR` set it). Only then may the embedded Postgres keep its data
    /// elsewhere when the default is out of its reach (see `db::embedded::choose_data_dir`).
    #[serde(skip)]
    pub data_dir_is_default: bool,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long start-up (`serve`, `migrate`, ...) waits for the database to answer
    /// before giving up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(deserialize_with = "secret_list")]
    pub tokens: Vec<SecretString>,
    #[serde(deserialize_with = "secret_list")]
    pub signing_secrets: Vec<SecretString>,
    #[serde(deserialize_with = "header_name")]
    pub signature_header: HeaderName,
    pub body_limit: usize,
    pub queue_capacity: usize,
    /// Bytes of deliveries being read or queued at most.
    pub queue_bytes: usize,
    pub batch_size: usize,
    /// Applier tasks per replica, each applying its own batches (`SKIP LOCKED`).
    pub appliers: usize,
    /// Whether deliveries are verified against PartnerStack before they are applied.
    pub verification: Verification,
    /// How long a verified delivery whose object PartnerStack does not know yet is
    /// retried before it is recorded `unconfirmed`.
    #[serde(with = "humantime_serde")]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(deserialize_with = "secret_list")]
    pub tokens: Vec<SecretString>,
    /// A list page that carries bodies (`include=payload`, `include=raw`) ends early, with
    /// `has_more` and a cursor, once its bodies pass this many bytes.
    pub page_bytes: usize,
}

/// The PartnerStack client's settings (`[partnerstack]`).
pub type PartnerStackConfig = partnerstack::client::Settings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// `None` when set to "off".
    #[serde(deserialize_with = "interval_or_off")]
    pub interval: Option<Duration>,
    /// The streams to reconcile, in order (named as [`Entity::stream`]; an unknown name
    /// is refused when the settings load).
    pub streams: Vec<Entity>,
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub full_interval: Duration,
    pub max_delete_fraction: f64,
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// The streams PartnerStack sends webhooks for (webhook-covered); the others are
    /// poll-only. Repairs are counted only for webhook-covered streams.
    pub webhook_streams: Vec<Entity>,
    /// The longest a change to any object of a poll-only stream may take to reach the
    /// copy: such streams are scanned in full often enough to meet it.
    #[serde(with = "humantime_serde")]
    pub staleness_bound: Duration,
    /// The share of the request budget full scans of poll-only streams may use, so
    /// incremental passes and fetches keep the rest (0 < share <= 1).
    pub scan_share: f64,
}

impl ReconcileConfig {
    /// Whether PartnerStack sends webhooks for `entity`'s stream.
    pub fn webhook_covered(&self, entity: Entity) -> bool {
        self.webhook_streams.contains(&entity)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Config {
    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(file, &env)
    }

    /// Like [`Config::load`] with an explicit environment (tests use this).
    pub fn load_with_env(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError(format!("built-in defaults do not parse: {e}")))?;
        let mut origins = Origins::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            let overlay: toml::Table = text
                .parse()
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let lines = key_lines(&text);
            let mut set = Vec::new();
            leaves(&overlay, "", &mut set);
            for setting in set {
                let line = lines.get(&setting).copied();
                origins.set(&setting, Origin::File(path.to_path_buf(), line));
            }
            merge(&mut table, overlay);
        }
        let mut by_setting: BTreeMap<String, (String, &String)> = BTreeMap::new();
        for (var, setting) in environment_variables() {
            let Some(value) = env.get(&var) else { continue };
            if let Some((other, earlier)) = by_setting.get(&setting)
                && earlier.trim() != value.trim()
            {
                return Err(ConfigError(format!(
                    "{other} and {var} both set {setting}, differently; set one of them"
                )));
            }
            set_from_env(&mut table, &setting, &var, value)?;
            origins.set(&setting, Origin::Env(var.clone()));
            by_setting.insert(setting, (var, value));
        }
        relay_from_env(&mut table, env, &mut origins)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let setting = e.path().to_string();
                // toml's message repeats the path on a line of its own.
                let why = e.inner().to_string();
                let why = why.lines().next().unwrap_or_default().to_string();
                ConfigError(format!("{}: {why}", origins.describe(&setting)))
            })?;
        config.database.data_dir_is_default = origins.get("database.data_dir").is_none();
        config.warnings = unknown_variables(env);
        config.validate().map_err(|Invalid(setting, why)| {
            ConfigError(format!("{}: {why}", origins.describe(&setting)))
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
        let fail = |setting: &str, why: String| Err(Invalid(setting.to_string(), why));
        for (setting, list) in [
            ("webhooks.tokens", &self.webhooks.tokens),
            ("webhooks.signing_secrets", &self.webhooks.signing_secrets),
            ("api.tokens", &self.api.tokens),
        ] {
            if let Some(short) = list
                .iter()
                .position(|s| s.expose_secret().len() < MIN_SECRET_LEN)
            {
                return fail(
                    setting,
                    format!(
                        "entry {} is shorter than {MIN_SECRET_LEN} characters",
                        short + 1
                    ),
                );
            }
        }
        if self.webhooks.body_limit == 0 {
            return fail("webhooks.body_limit", "must be at least 1 byte".into());
        }
        if self.webhooks.queue_capacity == 0 {
            return fail("webhooks.queue_capacity", "must be at least 1".into());
        }
        if self.webhooks.queue_bytes < self.webhooks.body_limit {
            return fail(
                "webhooks.queue_bytes",
                "must hold at least one delivery of webhooks.body_limit bytes".into(),
            );
        }
        if self.server.max_connections == 0 {
            return fail("server.max_connections", "must be at least 1".into());
        }
        if self.api.page_bytes == 0 {
            return fail("api.page_bytes", "must be at least 1".into());
        }
        if !(1..=1000).contains(&self.webhooks.batch_size) {
            return fail("webhooks.batch_size", "must be within 1..=1000".into());
        }
        if !(1..=16).contains(&self.webhooks.appliers) {
            return fail("webhooks.appliers", "must be within 1..=16".into());
        }
        if self.webhooks.appliers >= self.database.max_connections as usize {
            return fail(
                "webhooks.appliers",
                "must be less than database.max_connections (each holds a connection while it applies a batch)".into(),
            );
        }
        if self.database.max_connections < 2 {
            return fail("database.max_connections", "must be at least 2".into());
        }
        if let Some(url) = &self.database.url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return fail(
                    "database.url",
                    "must start with postgres:// or postgresql://".into(),
                );
            }
        }
        if let Err((setting, why)) = self.partnerstack.validate() {
            return fail(&format!("partnerstack.{setting}"), why);
        }
        for (setting, d) in [
            ("server.request_timeout", self.server.request_timeout),
            ("server.keepalive_timeout", self.server.keepalive_timeout),
            ("database.acquire_timeout", self.database.acquire_timeout),
            ("database.connect_timeout", self.database.connect_timeout),
        ] {
            if d.is_zero() || d > MAX_RECONCILE_DURATION {
                return fail(
                    setting,
                    "must be longer than zero and at most 10 years".into(),
                );
            }
        }
        let reconcile = &self.reconcile;
        if reconcile
            .interval
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return fail(
                "reconcile.interval",
                "must be at least 1s, or \"off\"".into(),
            );
        }
        if !(reconcile.scan_share.is_finite()
            && reconcile.scan_share > 0.0
            && reconcile.scan_share <= 1.0)
        {
            return fail(
                "reconcile.scan_share",
                "must be a number above 0 and at most 1".into(),
            );
        }
        if reconcile.staleness_bound < Duration::from_secs(60) {
            return fail("reconcile.staleness_bound", "must be at least 1m".into());
        }
        if self.webhooks.verification == Verification::Fetch
            && self.partnerstack.credentials().is_none()
        {
            return fail(
                "webhooks.verification",
                "\"fetch\" needs PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY".into(),
            );
        }
        if self.webhooks.confirm_within > MAX_RECONCILE_DURATION {
            return fail("webhooks.confirm_within", "must be at most 10 years".into());
        }
        let fraction = reconcile.max_delete_fraction;
        if !(fraction.is_finite() && (0.0..=1.0).contains(&fraction)) {
            return fail(
                "reconcile.max_delete_fraction",
                "must be a number from 0 to 1".into(),
            );
        }
        for (setting, d) in [
            ("reconcile.interval", reconcile.interval.unwrap_or_default()),
            ("reconcile.overlap", reconcile.overlap),
            ("reconcile.window", reconcile.window),
            ("reconcile.full_interval", reconcile.full_interval),
            ("reconcile.max_retry_delay", reconcile.max_retry_delay),
            ("reconcile.staleness_bound", reconcile.staleness_bound),
        ] {
            if d > MAX_RECONCILE_DURATION {
                return fail(setting, "must be at most 10 years".into());
            }
        }
        self.validate_changes()
    }

    fn validate_changes(&self) -> Result<(), Invalid> {
        let fail = |setting: &str, why: String| Err(Invalid(setting.to_string(), why));
        for (setting, d) in [
            ("retention.deliveries", self.retention.deliveries),
            ("retention.changes", self.retention.changes),
        ] {
            if d < MIN_RETENTION {
                return fail(setting, "must be at least 1h".into());
            }
            if d > MAX_RECONCILE_DURATION {
                return fail(setting, "must be at most 10 years".into());
            }
        }
        if self.retention.writes < MIN_WRITE_RETENTION {
            return fail(
                "retention.writes",
                "must be at least 24h (idempotency keys are kept that long)".into(),
            );
        }
        if self.retention.writes > MAX_RECONCILE_DURATION {
            return fail("retention.writes", "must be at most 10 years".into());
        }
        if !(1..=256).contains(&self.writes.concurrency) {
            return fail("writes.concurrency", "must be within 1..=256".into());
        }
        if self.writes.lease < Duration::from_secs(3) {
            return fail("writes.lease", "must be at least 3s".into());
        }
        for (setting, d) in [
            ("writes.lease", self.writes.lease),
            ("writes.lookup_window", self.writes.lookup_window),
            ("writes.max_retry_delay", self.writes.max_retry_delay),
            ("writes.give_up_after", self.writes.give_up_after),
        ] {
            if d > MAX_RECONCILE_DURATION {
                return fail(setting, "must be at most 10 years".into());
            }
        }
        if !(1..=100_000).contains(&self.retention.batch_size) {
            return fail("retention.batch_size", "must be within 1..=100000".into());
        }
        for (setting, d) in [
            ("retention.interval", self.retention.interval),
            ("changes.poll_interval", self.changes.poll_interval),
            ("changes.relay_timeout", self.changes.relay_timeout),
            ("changes.relay_max_backoff", self.changes.relay_max_backoff),
        ] {
            if d.is_zero() || d > MAX_RECONCILE_DURATION {
                return fail(
                    setting,
                    "must be longer than zero and at most 10 years".into(),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, endpoint) in self.relay.iter().enumerate() {
            let setting = format!("relay[{i}]");
            let name = &endpoint.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return fail(
                    &setting,
                    format!("name {name:?} must be 1 to 64 lower-case letters, digits, _ or -"),
                );
            }
            if !names.insert(name.as_str()) {
                return fail(&setting, format!("name {name:?} is used twice"));
            }
            if endpoint.entities.as_ref().is_some_and(Vec::is_empty) {
                return fail(
                    &setting,
                    "entities is empty; leave it out to relay every collection".into(),
                );
            }
        }
        Ok(())
    }
}

/// Adds the relay endpoints given as `PSYNC_RELAY_<NAME>_{URL,SECRET,ENTITIES}` to the
/// `relay` tables (overriding the fields of a table with the same name). A variable with
/// that prefix and another ending is an error, so a typo is not silently ignored.
fn relay_from_env(
    table: &mut toml::Table,
    env: &HashMap<String, String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(RELAY_ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, value) in vars {
        let rest = &var[RELAY_ENV_PREFIX.len()..];
        let Some((name, field)) = RELAY_ENV_FIELDS.iter().find_map(|(suffix, field)| {
            rest.strip_suffix(suffix)
                .filter(|n| !n.is_empty())
                .map(|n| (n.to_ascii_lowercase(), *field))
        }) else {
            return Err(ConfigError(format!(
                "{var}: not a relay setting; use {RELAY_ENV_PREFIX}<NAME>_URL, _SECRET or _ENTITIES"
            )));
        };
        let list = table
            .entry("relay")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(list) = list else {
            return Err(ConfigError(
                "relay: must be a list of [[relay]] tables".into(),
            ));
        };
        let existing = list
            .iter()
            .position(|t| t.get("name").and_then(toml::Value::as_str) == Some(name.as_str()));
        let index = match existing {
            Some(i) => i,
            None => {
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String(name.clone()));
                list.push(toml::Value::Table(t));
                origins.set(
                    &format!("relay[{}]", list.len() - 1),
                    Origin::Env(var.clone()),
                );
                list.len() - 1
            }
        };
        origins.set(&format!("relay[{index}].{field}"), Origin::Env(var.clone()));
        let endpoint = &mut list[index];
        let toml::Value::Table(endpoint) = endpoint else {
            return Err(ConfigError(format!("relay {name:?}: must be a table")));
        };
        let value = if field == "entities" {
            toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            )
        } else {
            toml::Value::String(value.trim().to_string())
        };
        endpoint.insert(field.to_string(), value);
    }
    Ok(())
}

fn relay_url<'de, D: Deserializer<'de>>(d: D) -> Result<reqwest::Url, D::Error> {
    let s = String::deserialize(d)?;
    let url = reqwest::Url::parse(s.trim())
        .map_err(|e| serde::de::Error::custom(format!("url is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(serde::de::Error::custom("url must be http:// or https://"));
    }
    Ok(url)
}

fn webhook_secret<'de, D: Deserializer<'de>>(d: D) -> Result<WebhookSecret, D::Error> {
    let s = String::deserialize(d)?;
    WebhookSecret::parse(&s).map_err(|why| serde::de::Error::custom(format!("secret {why}")))
}

/// A setting found wrong after the layers were merged, and why.
struct Invalid(String, String);

/// Where a setting's value came from (the defaults, when none is recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// A `--config` file, and the line of its key when known.
    File(PathBuf, Option<usize>),
    Env(String),
}

/// The origin of each setting a file or the environment set, by dotted path
/// (`server.listen`, `relay[0].url`).
#[derive(Debug, Default)]
struct Origins(HashMap<String, Origin>);

impl Origins {
    fn set(&mut self, setting: &str, origin: Origin) {
        self.0.insert(setting.to_string(), origin);
    }

    fn get(&self, setting: &str) -> Option<&Origin> {
        self.0.get(setting)
    }

    /// "webhooks.tokens (env PSYNC_WEBHOOKS_TOKENS)", "server.listen (/etc/psync.toml,
    /// line 3)", or just the setting when it is the default. A list element's path
    /// (`reconcile.streams[1]`) is named as "entry 2" of the list.
    fn describe(&self, setting: &str) -> String {
        let (base, entry) = match setting.rsplit_once('[') {
            Some((base, rest)) if rest.ends_with(']') && !base.is_empty() => (
                base,
                rest.trim_end_matches(']')
                    .parse::<usize>()
                    .ok()
                    .map(|i| format!(", entry {}", i + 1)),
            ),
            _ => (setting, None),
        };
        // The nearest recorded origin: the setting's own, else its list's or table's.
        let origin = [setting, base]
            .into_iter()
            .chain(ancestors(base))
            .find_map(|s| self.get(s));
        let entry = entry.unwrap_or_default();
        match origin {
            Some(Origin::Env(var)) => format!("{base} (env {var}){entry}"),
            Some(Origin::File(path, Some(line))) => {
                format!("{base} ({}, line {line}){entry}", path.display())
            }
            Some(Origin::File(path, None)) => format!("{base} ({}){entry}", path.display()),
            None => format!("{base}{entry}"),
        }
    }
}

/// `relay[0].url` → `relay[0]`, `relay`.
fn ancestors(setting: &str) -> impl Iterator<Item = &str> {
    let mut rest = setting;
    std::iter::from_fn(move || {
        let cut = rest.rfind(['.', '['])?;
        rest = &rest[..cut];
        Some(rest)
    })
}

/// The line (1-based) of each key a TOML text sets, by dotted path; `[[relay]]` entries
/// as `relay[0].url`.
fn key_lines(text: &str) -> HashMap<String, usize> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &str,
        text: &str,
        out: &mut HashMap<String, usize>,
    ) {
        let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
        for (key, value) in table {
            let path = format!("{prefix}{}", key.get_ref());
            match value.get_ref() {
                toml::de::DeValue::Table(t) => walk(t, &format!("{path}."), text, out),
                toml::de::DeValue::Array(items) => {
                    out.insert(path.clone(), line(key.span().start));
                    for (i, item) in items.iter().enumerate() {
                        if let toml::de::DeValue::Table(t) = item.get_ref() {
                            walk(t, &format!("{path}[{i}]."), text, out);
                        }
                    }
                }
                _ => {
                    out.insert(path, line(key.span().start));
                }
            }
        }
    }
    let mut out = HashMap::new();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        walk(table.get_ref(), "", text, &mut out);
    }
    out
}

/// Variables that look like settings (`PSYNC_...`) but set none: most likely a typo, so
/// the service says so at start-up.
fn unknown_variables(env: &HashMap<String, String>) -> Vec<String> {
    let known = environment_variables();
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|var| var.starts_with(ENV_PREFIX) && !var.starts_with(RELAY_ENV_PREFIX))
        .filter(|var| !OTHER_PSYNC_VARS.contains(&var.as_str()))
        .filter(|var| !known.iter().any(|(k, _)| k == *var))
        .map(|var| format!("{var} is not a setting; it is ignored"))
        .collect();
    unknown.sort();
    unknown
}

/// Deep-merges `overlay` into `base`: tables merge key by key, everything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Writes an environment value into the table, typed like the default it replaces (not
/// like a file's value, which may be the wrong one), so an ill-typed variable is reported
/// with its own name.
fn set_from_env(
    table: &mut toml::Table,
    setting: &str,
    var: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let defaults: toml::Table = DEFAULT_TOML.parse().unwrap_or_default();
    let (tables, field) = setting.rsplit_once('.').unwrap_or(("", setting));
    let mut section = table;
    let mut default = &defaults;
    for name in tables.split('.').filter(|n| !n.is_empty()) {
        let missing = || ConfigError(format!("{var}: no section for {setting}"));
        section = section
            .get_mut(name)
            .and_then(|v| v.as_table_mut())
            .ok_or_else(missing)?;
        default = default
            .get(name)
            .and_then(|v| v.as_table())
            .ok_or_else(missing)?;
    }
    let bad = |expected: &str| ConfigError(format!("{var}: expected {expected}, got {raw:?}"));
    let value = match default.get(field) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("a whole number"))?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(bad("true or false")),
            })
        }
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.trim().to_string()),
    };
    section.insert(field.to_string(), value);
    Ok(())
}

fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "" => Ok(None),
        addr => addr.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then(|| SecretString::from(s.trim().to_string())))
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(SecretString::from)
        .collect())
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    HeaderName::try_from(s.trim()).map_err(serde::de::Error::custom)
}

fn interval_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "off" | "disabled" | "" => Ok(None),
        other => humantime::parse_duration(other)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e} (use e.g. \"5m\", or \"off\")"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_match_the_documentation() {
        let c = Config::load_with_env(None, &env(&[])).expect("defaults are valid");
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.database.url.is_none());
        assert_eq!(c.database.data_dir, PathBuf::from("./data"));
        assert_eq!(c.webhooks.body_limit, 1024 * 1024);
        assert_eq!(c.partnerstack.page_size, 250);
        assert_eq!(c.webhooks.verification, Verification::Auto);
        assert!(!c.webhooks.verifies(false) && c.webhooks.verifies(true));
        assert_eq!(c.reconcile.staleness_bound, Duration::from_secs(3600));
        assert_eq!(
            c.reconcile.webhook_streams,
            [
                Entity::Partner,
                Entity::Customer,
                Entity::Deal,
                Entity::Lead
            ]
        );
        assert_eq!(c.reconcile.interval, Some(Duration::from_secs(300)));
        assert!(c.partnerstack.credentials().is_none());
        assert_eq!(c.log.format, LogFormat::Pretty);
        assert!(c.server.status_page);
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[partnerstack]\npage_size = 50\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            &env(&[
                ("PARTNERSTACK_PAGE_SIZE", "250"),
                (
                    "PSYNC_WEBHOOK_TOKENS",
                    "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb,",
                ),
                ("PSYNC_RECONCILE_INTERVAL", "off"),
                ("PSYNC_LOG_FORMAT", "json"),
                ("PSYNC_STATUS_PAGE", "False"),
            ]),
        )
        .unwrap();
        assert!(!c.server.status_page);
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.partnerstack.page_size, 250);
        assert_eq!(c.webhooks.tokens.len(), 2);
        assert_eq!(c.reconcile.interval, None);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_setting_and_variable() {
        let cases = [
            (
                ("PSYNC_LISTEN", "nonsense"),
                "server.listen (env PSYNC_LISTEN)",
            ),
            (
                ("PARTNERSTACK_PAGE_SIZE", "251"),
                "partnerstack.page_size (env PARTNERSTACK_PAGE_SIZE)",
            ),
            (
                ("PARTNERSTACK_PAGE_SIZE", "ten"),
                "PARTNERSTACK_PAGE_SIZE: expected a whole number",
            ),
            (
                ("PSYNC_WEBHOOK_TOKENS", "short"),
                "webhooks.tokens (env PSYNC_WEBHOOK_TOKENS)",
            ),
            (
                ("PSYNC_RECONCILE_INTERVAL", "soon"),
                "reconcile.interval (env PSYNC_RECONCILE_INTERVAL)",
            ),
            (
                ("PSYNC_STATUS_PAGE", "yes"),
                "PSYNC_STATUS_PAGE: expected true or false",
            ),
            (
                ("PSYNC_LOG_FORMAT", "xml"),
                "log.format (env PSYNC_LOG_FORMAT)",
            ),
            (
                ("DATABASE_URL", "mysql://x"),
                "database.url (env DATABASE_URL)",
            ),
            (
                ("PARTNERSTACK_PUBLIC_KEY", "pk_only"),
                "partnerstack.public_key (env PARTNERSTACK_PUBLIC_KEY): set both API keys",
            ),
        ];
        for ((var, value), expected) in cases {
            let err = Config::load_with_env(None, &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{var}={value}: {err}");
        }
    }

    #[test]
    fn reconcile_settings_are_checked() {
        let err = Config::load_with_env(
            None,
            &env(&[("PSYNC_RECONCILE_STREAMS", "customers, custommers")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("reconcile.streams (env PSYNC_RECONCILE_STREAMS)")
                && err.contains("\"custommers\"")
                && err.contains(
                    "partnerships, customers, transactions, rewards, groups, deals, leads"
                ),
            "{err}"
        );
        let c = Config::load_with_env(
            None,
            &env(&[("PSYNC_RECONCILE_STREAMS", "Customers,partners")]),
        )
        .unwrap();
        assert_eq!(c.reconcile.streams, [Entity::Customer, Entity::Partner]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for (line, setting) in [
            ("max_delete_fraction = nan", "reconcile.max_delete_fraction"),
            ("max_delete_fraction = inf", "reconcile.max_delete_fraction"),
            ("max_delete_fraction = 1.5", "reconcile.max_delete_fraction"),
            (
                "max_delete_fraction = -0.1",
                "reconcile.max_delete_fraction",
            ),
            ("overlap = \"11years\"", "reconcile.overlap"),
            ("window = \"500000000years\"", "reconcile.window"),
            ("full_interval = \"20years\"", "reconcile.full_interval"),
            ("max_retry_delay = \"11years\"", "reconcile.max_retry_delay"),
            ("interval = \"11years\"", "reconcile.interval"),
        ] {
            std::fs::write(&path, format!("[reconcile]\n{line}\n")).unwrap();
            let err = Config::load_with_env(Some(&path), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(setting), "{line}: {err}");
        }
        for line in [
            "max_delete_fraction = 0.0",
            "max_delete_fraction = 1.0",
            "window = \"10years\"",
        ] {
            std::fs::write(&path, format!("[reconcile]\n{line}\n")).unwrap();
            assert!(
                Config::load_with_env(Some(&path), &env(&[])).is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn the_data_dir_is_explicit_when_a_file_or_the_environment_sets_it() {
        let default = Config::load_with_env(None, &env(&[])).unwrap();
        assert!(default.database.data_dir_is_default);

        // Set to the default's own value, it is still an explicit choice.
        let by_env = Config::load_with_env(None, &env(&[("PSYNC_DATA_DIR", "./data")])).unwrap();
        assert!(!by_env.database.data_dir_is_default);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[database]\ndata_dir = \"/srv/psync\"\n").unwrap();
        let by_file = Config::load_with_env(Some(&path), &env(&[])).unwrap();
        assert!(!by_file.database.data_dir_is_default);
        assert_eq!(by_file.database.data_dir, PathBuf::from("/srv/psync"));

        std::fs::write(&path, "[database]\nmax_connections = 4\n").unwrap();
        let other = Config::load_with_env(Some(&path), &env(&[])).unwrap();
        assert!(other.database.data_dir_is_default);
    }

    /// The comment block above `key`'s line in `section` of the defaults' text (the lines
    /// after the previous key's).
    fn documentation(setting: &str) -> String {
        let (section, key) = setting.rsplit_once('.').unwrap();
        let header = format!("[{section}]");
        let text = DEFAULT_TOML;
        let start = text
            .find(&format!("\n{header}\n"))
            .unwrap_or_else(|| panic!("{header}"));
        let lines: Vec<&str> = text[start..].lines().skip(2).collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} under {header}"));
        let mut block = Vec::new();
        for line in lines[..at].iter().rev() {
            if !line.starts_with('#') {
                break;
            }
            block.push(*line);
        }
        block.reverse();
        block.join("\n")
    }

    /// Every setting of `config/default.toml` (walked, so a new one cannot be missed) is
    /// set by its variable, which its documentation names; so are the older names.
    #[test]
    fn every_setting_is_set_by_its_documented_variable() {
        let settings = settings();
        assert!(settings.len() >= 60, "{} settings", settings.len());
        let marker = "psync-marker";
        for (var, setting) in environment_variables() {
            // The marker is invalid for almost every setting, so the error must name the
            // variable; where text of any kind is accepted, it must show in the settings.
            match Config::load_with_env(None, &env(&[(&var, marker)])) {
                Err(e) => assert!(e.to_string().contains(&var), "{var}: {e}"),
                Ok(c) => assert!(
                    format!("{c:?}").contains(marker),
                    "{var} did not set {setting}"
                ),
            }
            let doc = documentation(&setting);
            assert!(
                doc.contains(&format!("Env: {}", env_var(&setting))),
                "{setting}'s documentation does not name {}:\n{doc}",
                env_var(&setting)
            );
            if var != env_var(&setting) {
                assert!(
                    doc.contains(&format!("or {var}.")),
                    "{setting}: {var}\n{doc}"
                );
            }
        }
        // A valid value takes effect, at every depth.
        let c = Config::load_with_env(
            None,
            &env(&[
                ("PSYNC_PARTNERSTACK_PATHS_PARTNERSHIPS", "/partners"),
                ("PSYNC_DATABASE_CONNECT_TIMEOUT", "5s"),
                ("PSYNC_WEBHOOKS_QUEUE_CAPACITY", "7"),
                ("PSYNC_RECONCILE_SCAN_SHARE", "0.25"),
                ("PSYNC_SERVER_STATUS_PAGE", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(c.partnerstack.paths.partnerships, "/partners");
        assert_eq!(c.database.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.webhooks.queue_capacity, 7);
        assert_eq!(c.reconcile.scan_share, 0.25);
        assert!(!c.server.status_page);
    }

    #[test]
    fn errors_name_the_source_that_was_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nrequest_timeout = \"5s\"\nlisten = 5\n").unwrap();
        let file = path.display().to_string();
        let err = Config::load_with_env(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("server.listen ({file}, line 3)")),
            "{err}"
        );
        assert!(
            !err.contains("PSYNC_"),
            "the file was wrong, not a variable: {err}"
        );
        // A variable set over the file is what is named when it is wrong.
        let err = Config::load_with_env(Some(&path), &env(&[("PSYNC_SERVER_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.listen (env PSYNC_SERVER_LISTEN)"),
            "{err}"
        );
        // A checked setting names its file line too.
        std::fs::write(&path, "[partnerstack]\n\npage_size = 999\n").unwrap();
        let err = Config::load_with_env(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("partnerstack.page_size ({file}, line 3)")),
            "{err}"
        );
        // toml's own message stays on one line.
        assert!(!err.contains('\n'), "{err}");
        // The secret key alone is named as the one set.
        let err = Config::load_with_env(None, &env(&[("PARTNERSTACK_SECRET_KEY", "sk_x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partnerstack.secret_key (env PARTNERSTACK_SECRET_KEY)"),
            "{err}"
        );
    }

    #[test]
    fn both_names_of_a_setting_must_agree() {
        let both = |a: &str, b: &str| {
            Config::load_with_env(
                None,
                &env(&[("PSYNC_LISTEN", a), ("PSYNC_SERVER_LISTEN", b)]),
            )
        };
        let c = both("127.0.0.1:9001", "127.0.0.1:9001").unwrap();
        assert_eq!(c.server.listen.port(), 9001);
        let err = both("127.0.0.1:9001", "127.0.0.1:9002")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PSYNC_SERVER_LISTEN") && err.contains("PSYNC_LISTEN"),
            "{err}"
        );
    }

    #[test]
    fn appliers_are_bounded_by_the_pool() {
        let with = |appliers: &str, connections: &str| {
            Config::load_with_env(
                None,
                &env(&[
                    ("PSYNC_WEBHOOKS_APPLIERS", appliers),
                    ("PSYNC_DATABASE_MAX_CONNECTIONS", connections),
                ]),
            )
        };
        assert_eq!(with("3", "16").unwrap().webhooks.appliers, 3);
        for (appliers, connections) in [("0", "16"), ("17", "32"), ("4", "4")] {
            let err = with(appliers, connections).unwrap_err().to_string();
            assert!(err.contains("PSYNC_WEBHOOKS_APPLIERS"), "{err}");
        }
    }

    #[test]
    fn variables_that_set_nothing_are_warned_about() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("PSYNC_SERVR_LISTEN", "x"),
                ("PSYNC_SERVER_LISTEN", "127.0.0.1:9000"),
                ("PSYNC_DEMO_DATA_DIR", "/tmp/x"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.warnings,
            ["PSYNC_SERVR_LISTEN is not a setting; it is ignored"]
        );
    }

    #[test]
    fn unknown_keys_in_a_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten_addr = \"x\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("PSYNC_WEBHOOK_TOKENS", "webhook-token-0123456789"),
                ("PSYNC_WEBHOOK_SIGNING_SECRETS", "signing-secret-0123456789"),
                ("PSYNC_API_TOKENS", "api-token-0123456789"),
                ("PARTNERSTACK_PUBLIC_KEY", "pk_live_0123456789"),
                ("PARTNERSTACK_SECRET_KEY", "sk_live_0123456789"),
                ("DATABASE_URL", "postgres://u:db-password-0123@localhost/x"),
            ]),
        )
        .unwrap();
        let debug = format!("{c:?}");
        for secret in [
            "webhook-token-0123456789",
            "signing-secret-0123456789",
            "api-token-0123456789",
            "pk_live_0123456789",
            "sk_live_0123456789",
            "db-password-0123",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked into Debug output");
        }
    }

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn relay_endpoints_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[[relay]]\nname = \"billing\"\nurl = \"https://billing.internal/h?token=t0p\"\n\
                 secret = \"{WHSEC}\"\nentities = [\"transactions\", \"rewards\"]\n"
            ),
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            &env(&[
                ("PSYNC_RELAY_BILLING_ENTITIES", "rewards"),
                ("PSYNC_RELAY_CRM_URL", "http://crm.internal/hook"),
                ("PSYNC_RELAY_CRM_SECRET", WHSEC),
            ]),
        )
        .unwrap();
        assert_eq!(c.relay.len(), 2);
        let billing = &c.relay[0];
        assert_eq!(billing.name, "billing");
        assert_eq!(billing.entities.as_deref(), Some(&[Entity::Reward][..]));
        assert_eq!(billing.public_url(), "https://billing.internal/h");
        let crm = &c.relay[1];
        assert_eq!((crm.name.as_str(), crm.entities.as_ref()), ("crm", None));
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("t0p") && !debug.contains("MfKQ9r8"),
            "{debug}"
        );
        assert_eq!(c.retention.changes, Duration::from_secs(30 * 86_400));
        assert_eq!(c.retention.deliveries, Duration::from_secs(90 * 86_400));
        assert!(
            Config::load_with_env(None, &env(&[]))
                .unwrap()
                .relay
                .is_empty()
        );
    }

    #[test]
    fn relay_and_retention_settings_are_checked() {
        let cases = [
            (vec![("PSYNC_RELAY_X_URL", "http://x.internal/")], "secret"),
            (
                vec![
                    ("PSYNC_RELAY_X_URL", "ftp://x/"),
                    ("PSYNC_RELAY_X_SECRET", WHSEC),
                ],
                "http",
            ),
            (
                vec![
                    ("PSYNC_RELAY_X_URL", "http://x/"),
                    ("PSYNC_RELAY_X_SECRET", "hunter2"),
                ],
                "whsec_",
            ),
            (
                vec![("PSYNC_RELAY_X_SECERT", WHSEC)],
                "PSYNC_RELAY_X_SECERT: not a relay setting",
            ),
            (
                vec![
                    ("PSYNC_RELAY_X_URL", "http://x/"),
                    ("PSYNC_RELAY_X_SECRET", WHSEC),
                    ("PSYNC_RELAY_X_ENTITIES", "rewards,refunds"),
                ],
                "refunds",
            ),
            (
                vec![
                    ("PSYNC_RELAY_X!_URL", "http://x/"),
                    ("PSYNC_RELAY_X!_SECRET", WHSEC),
                ],
                "lower-case",
            ),
            (
                vec![("PSYNC_RETENTION_CHANGES", "10m")],
                "retention.changes",
            ),
            (
                vec![("PSYNC_RETENTION_DELIVERIES", "soon")],
                "retention.deliveries",
            ),
        ];
        for (vars, expected) in cases {
            let err = Config::load_with_env(None, &env(&vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
