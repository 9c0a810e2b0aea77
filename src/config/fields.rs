//! How one setting's value is read, and what it may be: the rules that concern a single
//! value, applied while the settings are read (each field names its reader), so a value
//! that breaks one is reported like one of the wrong type, with the variable or the file
//! and line that set it. Rules that relate settings to each other are in `validate.rs`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use axum::http::HeaderName;
use partnerstack::Entity;
use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::settings::ConnectionCap;
use crate::auth::{Scope, WebhookSecret};

/// Longest duration any setting accepts (10 years): longer is a mistake, and time
/// arithmetic on it could overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Shortest token or secret accepted: a URL token is the only thing that authenticates a
/// webhook delivery, so it must not be guessable.
const MIN_SECRET_LEN: usize = 16;

/// Shortest retention of finished writes: their idempotency keys must outlive a day of
/// client retries.
const MIN_WRITE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A duration (humantime text: "500ms", "5m", "30days") of at most 10 years.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    if value > MAX_DURATION {
        return Err(D::Error::custom("must be at most 10 years"));
    }
    Ok(value)
}

/// A [`duration`] longer than zero.
pub(super) fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    if value.is_zero() || value > MAX_DURATION {
        return Err(D::Error::custom(
            "must be longer than zero and at most 10 years",
        ));
    }
    Ok(value)
}

/// A [`duration`] of at least `SECS` seconds.
pub(super) fn duration_from<'de, const SECS: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    let min = Duration::from_secs(SECS);
    let value = duration(d)?;
    if value < min {
        return Err(D::Error::custom(format!("must be at least {}", short(min))));
    }
    Ok(value)
}

/// How long finished writes are kept: a [`duration`] of at least a day.
pub(super) fn write_retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = duration(d)?;
    if value < MIN_WRITE_RETENTION {
        return Err(D::Error::custom(format!(
            "must be at least {} (idempotency keys are kept that long)",
            short(MIN_WRITE_RETENTION)
        )));
    }
    Ok(value)
}

/// A whole number of seconds as the settings' documentation writes it: "24h", "1m", "3s".
fn short(d: Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A duration of at least a second, or "off" (also "disabled" or blank): `None`.
pub(super) fn interval_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    let value = match s.trim() {
        "off" | "disabled" | "" => return Ok(None),
        other => humantime::parse_duration(other)
            .map_err(|e| D::Error::custom(format!("{e} (use e.g. \"5m\", or \"off\")")))?,
    };
    if value < Duration::from_secs(1) {
        return Err(D::Error::custom("must be at least 1s, or \"off\""));
    }
    if value > MAX_DURATION {
        return Err(D::Error::custom("must be at most 10 years"));
    }
    Ok(Some(value))
}

/// A count's type: one that cannot hold a number it must not be (zero, for the
/// `NonZero*` ones).
pub(super) trait Count: Sized {
    fn from_count(n: u64) -> Option<Self>;
}

impl Count for NonZeroUsize {
    fn from_count(n: u64) -> Option<Self> {
        usize::try_from(n).ok().and_then(NonZeroUsize::new)
    }
}

impl Count for NonZeroU32 {
    fn from_count(n: u64) -> Option<Self> {
        u32::try_from(n).ok().and_then(NonZeroU32::new)
    }
}

impl Count for u32 {
    fn from_count(n: u64) -> Option<Self> {
        u32::try_from(n).ok()
    }
}

/// A whole number from `MIN` to `MAX`, as the field's type.
pub(super) fn count<'de, const MIN: u64, const MAX: u64, T: Count, D: Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .ok()
        .filter(|n| (MIN..=MAX).contains(n))
        .and_then(T::from_count)
        .ok_or_else(|| match MAX {
            u64::MAX => D::Error::custom(format!("must be at least {MIN}")),
            _ => D::Error::custom(format!("must be within {MIN}..={MAX}")),
        })
}

/// A whole number of at least `MIN`, as the field's type.
pub(super) fn at_least<'de, const MIN: u64, T: Count, D: Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    count::<MIN, { u64::MAX }, T, D>(d)
}

/// A whole number of at least 1 (a `NonZero*` field).
pub(super) fn positive<'de, T: Count, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    at_least::<1, T, D>(d)
}

/// A number from 0 to 1.
pub(super) fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let x = f64::deserialize(d)?;
    if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
        return Err(D::Error::custom("must be a number from 0 to 1"));
    }
    Ok(x)
}

/// A number above 0 and at most 1.
pub(super) fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let x = f64::deserialize(d)?;
    if !(x.is_finite() && x > 0.0 && x <= 1.0) {
        return Err(D::Error::custom("must be a number above 0 and at most 1"));
    }
    Ok(x)
}

/// Tokens or secrets, blank entries dropped, each at least 16 characters.
pub(super) fn secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    let list: Vec<SecretString> = Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(SecretString::from)
        .collect();
    if let Some(short) = list
        .iter()
        .position(|s| s.expose_secret().len() < MIN_SECRET_LEN)
    {
        return Err(D::Error::custom(format!(
            "entry {} is shorter than {MIN_SECRET_LEN} characters",
            short + 1
        )));
    }
    Ok(list)
}

/// One token or secret, at least 16 characters; absent or blank: `None`.
pub(super) fn optional_secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    let s = String::deserialize(d)?;
    let token = s.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() < MIN_SECRET_LEN {
        return Err(D::Error::custom(format!(
            "token is shorter than {MIN_SECRET_LEN} characters"
        )));
    }
    Ok(Some(SecretString::from(token.to_string())))
}

/// A SHA-256 digest as 64 hex digits (either case); absent or blank: `None`.
pub(super) fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
    let s = String::deserialize(d)?;
    let text = s.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).map_err(|_| {
        D::Error::custom("token_sha256 must be 64 hex digits (e.g. `sha256sum` of the token)")
    })?;
    Ok(Some(digest))
}

/// A client's scopes: at least one of `read`, `write`, `admin`, each at most once.
pub(super) fn scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Scope>, D::Error> {
    let mut scopes = Vec::<Scope>::deserialize(d)?;
    if scopes.is_empty() {
        return Err(D::Error::custom(format!(
            "scopes is empty; name at least one of {}",
            Scope::words()
        )));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// `server.max_connections`: a whole number of at least 1, or "auto".
pub(super) fn connection_cap<'de, D: Deserializer<'de>>(d: D) -> Result<ConnectionCap, D::Error> {
    let refuse = || D::Error::custom("must be a whole number of at least 1, or \"auto\"");
    let n = match toml::Value::deserialize(d)? {
        toml::Value::String(s) if s.trim() == "auto" => return Ok(ConnectionCap::Auto),
        toml::Value::String(s) => s.trim().parse::<u64>().map_err(|_| refuse())?,
        toml::Value::Integer(n) => u64::try_from(n).map_err(|_| refuse())?,
        _ => return Err(refuse()),
    };
    NonZeroUsize::from_count(n)
        .map(ConnectionCap::At)
        .ok_or_else(refuse)
}

/// A Postgres URL, or blank (`None`: run the embedded Postgres).
pub(super) fn postgres_url<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    let s = String::deserialize(d)?;
    let url = s.trim();
    if url.is_empty() {
        return Ok(None);
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(D::Error::custom(
            "must start with postgres:// or postgresql://",
        ));
    }
    Ok(Some(SecretString::from(url.to_string())))
}

/// A socket address, or blank (`None`).
pub(super) fn optional_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "" => Ok(None),
        addr => addr.parse().map(Some).map_err(D::Error::custom),
    }
}

/// An HTTP header name.
pub(super) fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    HeaderName::try_from(s.trim()).map_err(D::Error::custom)
}

/// A relay endpoint's name: 1 to 64 lower-case letters, digits, `_` or `-` (it keys the
/// endpoint's position and labels its metrics).
pub(super) fn endpoint_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let fits = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(fits) {
        return Err(D::Error::custom(format!(
            "name {name:?} must be 1 to 64 lower-case letters, digits, _ or -"
        )));
    }
    Ok(name)
}

/// An http:// or https:// URL.
pub(super) fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<reqwest::Url, D::Error> {
    let s = String::deserialize(d)?;
    let url = reqwest::Url::parse(s.trim())
        .map_err(|e| D::Error::custom(format!("url is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(D::Error::custom("url must be http:// or https://"));
    }
    Ok(url)
}

/// A Standard Webhooks signing secret (`whsec_...`).
pub(super) fn webhook_secret<'de, D: Deserializer<'de>>(d: D) -> Result<WebhookSecret, D::Error> {
    let s = String::deserialize(d)?;
    WebhookSecret::parse(&s).map_err(|why| D::Error::custom(format!("secret {why}")))
}

/// Collections to keep to, when given: not an empty list (leave it out for all).
pub(super) fn some_entities<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Entity>>, D::Error> {
    let entities = Vec::<Entity>::deserialize(d)?;
    if entities.is_empty() {
        return Err(D::Error::custom(
            "entities is empty; leave it out to relay every collection",
        ));
    }
    Ok(Some(entities))
}
