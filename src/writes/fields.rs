//! The values of write requests, each a type that checks itself as it is read: text
//! ([`Key`], [`Name`], [`TransactionKey`], [`Email`], [`Currency`], [`IdempotencyKey`]),
//! [`Amount`], [`Timestamp`] and attributes ([`Meta`], [`Metadata`]).
//!
//! Each rule is written once, in its type: the `Deserialize` that refuses what breaks it
//! and the OpenAPI schema (`ToSchema`) that states it, side by side, so the description
//! cannot drift from the parser. The `/v1` request bodies and the requests stored in the
//! outbox ([`super::request`]) are made of these types, so a stored request reads back
//! only as something that was valid to accept.
//!
//! A broken rule is a serde error whose message speaks of "the value" ("the value is
//! empty"); [`field_message`] puts the field's name in its place ("customer_key is
//! empty").

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::schema::{
    AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// Longest key or text (PartnerStack's own limit for keys and emails).
pub const MAX_TEXT: usize = 255;
/// Longest customer name.
pub const MAX_NAME: usize = 100;
/// Shortest transaction key (PartnerStack's limit).
pub const MIN_TRANSACTION_KEY: usize = 4;
/// Shortest email address (PartnerStack's limit).
pub const MIN_EMAIL: usize = 4;
/// Most attributes in a transaction's `metadata` (PartnerStack's `POST /transactions`
/// reference; an older version of the page said 20).
pub const MAX_METADATA: usize = 25;
/// Longest name of a `metadata` attribute, in characters (the same reference).
pub const MAX_METADATA_NAME: usize = 30;
/// Longest value of a `metadata` attribute, in characters of its text (the same
/// reference).
pub const MAX_METADATA_VALUE: usize = 100;
/// Largest magnitude of an [`Amount`], in cents: PartnerStack's documented range for a
/// transaction's amount (about ±5e10 cents).
pub const MAX_AMOUNT: i64 = 50_000_000_000;
/// Latest [`Timestamp`] accepted as epoch milliseconds (the end of year 9999).
pub const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// Text with a character that is not white space, and no control character (Unicode
/// `Cc`, as [`char::is_control`]).
const NON_BLANK: &str =
    "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$";
/// [`NON_BLANK`], except `.` and `..` (with white space around them): text with a
/// character that is neither white space nor a dot, or three dots, or white space between
/// two dots. A key is a path segment of PartnerStack's URLs, where `.` and `..` are
/// resolved away.
const KEY: &str = "^(?:[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s.\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*\
    |[^\\x00-\\x1F\\x7F-\\x9F]*\\.[^\\x00-\\x1F\\x7F-\\x9F]*\\.[^\\x00-\\x1F\\x7F-\\x9F]*\\.[^\\x00-\\x1F\\x7F-\\x9F]*\
    |[^\\x00-\\x1F\\x7F-\\x9F]*\\.[^\\S\\x00-\\x1F\\x7F-\\x9F]+\\.[^\\x00-\\x1F\\x7F-\\x9F]*)$";
/// An `@`, no white space, no control character.
const EMAIL: &str = "^[^\\s\\x00-\\x1F\\x7F-\\x9F]*@[^\\s\\x00-\\x1F\\x7F-\\x9F]*$";
/// Three letters, either case.
const THREE_LETTERS: &str = "^[A-Za-z]{3}$";
/// Visible ASCII, no space.
const VISIBLE_ASCII: &str = "^[!-~]+$";
/// No NUL (Postgres cannot store it).
const NO_NUL: &str = "^[^\\x00]*$";

/// A rule a value breaks, said of the value: "is empty", "is not an email address".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(Cow<'static, str>);

impl Invalid {
    /// How serde's message for a broken rule begins ([`field_message`] replaces it with
    /// the field's name).
    const SUBJECT: &'static str = "the value ";

    fn new(rule: impl Into<Cow<'static, str>>) -> Invalid {
        Invalid(rule.into())
    }

    /// The rule as a sentence about `field`: "the path's key is empty".
    pub fn of(&self, field: &str) -> String {
        format!("{field} {}", self.0)
    }

    /// The rule as a serde error.
    fn into_serde<E: de::Error>(self) -> E {
        E::custom(self)
    }
}

/// serde's message: "the value is empty".
impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::SUBJECT, self.0)
    }
}

/// A deserialisation error at field `path` as a sentence naming the field: a broken
/// rule reads "customer_key is empty", any other error "invalid field customer_key:
/// <serde's message>".
pub fn field_message(path: &str, message: &str) -> String {
    match message.strip_prefix(Invalid::SUBJECT) {
        Some(rule) => format!("{path} {rule}"),
        None => format!("invalid field {path}: {message}"),
    }
}

/// What one kind of text accepts: its check (which also normalises the text) and the
/// JSON Schema that says the same.
pub trait TextRule {
    /// The schema's name in the OpenAPI document.
    const NAME: &'static str;
    /// The text as accepted (e.g. trimmed), or the rule it breaks.
    fn check(value: &str) -> Result<String, Invalid>;
    /// What [`TextRule::check`] accepts, as JSON Schema.
    fn schema() -> ObjectBuilder;
}

/// Text that passed `R`'s check, as the check normalised it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text<R>(String, PhantomData<R>);

impl<R: TextRule> Text<R> {
    /// Checks text that does not come through serde (a path segment, a header).
    pub fn parse(value: &str) -> Result<Text<R>, Invalid> {
        R::check(value).map(|v| Text(v, PhantomData))
    }
}

impl<R> Text<R> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<R> fmt::Display for Text<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de, R: TextRule> Deserialize<'de> for Text<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        Text::parse(&value).map_err(Invalid::into_serde)
    }
}

impl<R> Serialize for Text<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<R: TextRule> PartialSchema for Text<R> {
    fn schema() -> RefOr<Schema> {
        R::schema().into()
    }
}

impl<R: TextRule> ToSchema for Text<R> {
    fn name() -> Cow<'static, str> {
        R::NAME.into()
    }
}

/// The text rules ([`TextRule`]), one per kind of text.
pub mod rule {
    use super::*;

    /// See [`super::Key`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Key;
    /// See [`super::Name`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Name;
    /// See [`super::TransactionKey`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TransactionKey;
    /// See [`super::Email`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Email;
    /// See [`super::Currency`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Currency;
    /// See [`super::IdempotencyKey`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct IdempotencyKey;

    impl TextRule for Key {
        const NAME: &'static str = "Key";
        fn check(value: &str) -> Result<String, Invalid> {
            let key = non_blank(value, MAX_TEXT)?;
            if key == "." || key == ".." {
                return Err(Invalid::new(format!(
                    "cannot be {key:?} (a path segment that URLs resolve away)"
                )));
            }
            Ok(key)
        }
        fn schema() -> ObjectBuilder {
            key_schema("A key", 1)
        }
    }

    impl TextRule for Name {
        const NAME: &'static str = "Name";
        fn check(value: &str) -> Result<String, Invalid> {
            non_blank(value, MAX_NAME)
        }
        fn schema() -> ObjectBuilder {
            non_blank_schema("A name", 1, MAX_NAME)
        }
    }

    impl TextRule for TransactionKey {
        const NAME: &'static str = "TransactionKey";
        fn check(value: &str) -> Result<String, Invalid> {
            if value.chars().count() < MIN_TRANSACTION_KEY {
                return Err(Invalid::new(format!(
                    "must be {MIN_TRANSACTION_KEY} to {MAX_TEXT} characters"
                )));
            }
            Key::check(value)
        }
        fn schema() -> ObjectBuilder {
            key_schema("A transaction key", MIN_TRANSACTION_KEY)
        }
    }

    impl TextRule for Email {
        const NAME: &'static str = "Email";
        fn check(value: &str) -> Result<String, Invalid> {
            let not_an_email = || Invalid::new("is not an email address");
            if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(not_an_email());
            }
            let value = non_blank(value, MAX_TEXT)?;
            if value.chars().count() < MIN_EMAIL || !value.contains('@') {
                return Err(not_an_email());
            }
            Ok(value)
        }
        fn schema() -> ObjectBuilder {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(MIN_EMAIL))
                .max_length(Some(MAX_TEXT))
                .pattern(Some(EMAIL))
                .description(Some(format!(
                    "An email address as PartnerStack accepts it: {MIN_EMAIL} to {MAX_TEXT} \
                     characters with an `@`, without white space or control characters."
                )))
        }
    }

    impl TextRule for Currency {
        const NAME: &'static str = "Currency";
        fn check(value: &str) -> Result<String, Invalid> {
            let upper = value.to_ascii_uppercase();
            if upper.len() != 3 || !upper.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(Invalid::new(format!(
                    "must be three letters (ISO 4217), got {value:?}"
                )));
            }
            Ok(upper)
        }
        fn schema() -> ObjectBuilder {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(THREE_LETTERS))
                .description(Some(
                    "ISO 4217, three letters (either case; kept in upper case).",
                ))
        }
    }

    impl TextRule for IdempotencyKey {
        const NAME: &'static str = "IdempotencyKey";
        fn check(value: &str) -> Result<String, Invalid> {
            let value = value.trim();
            if value.is_empty()
                || value.len() > MAX_TEXT
                || !value.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Invalid::new(format!(
                    "must be 1 to {MAX_TEXT} visible ASCII characters"
                )));
            }
            Ok(value.to_string())
        }
        fn schema() -> ObjectBuilder {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_TEXT))
                .pattern(Some(VISIBLE_ASCII))
                .description(Some(format!(
                    "An idempotency key: 1 to {MAX_TEXT} visible ASCII characters."
                )))
        }
    }

    /// Text of at most `max` characters, not blank, without control characters; trimmed.
    fn non_blank(value: &str, max: usize) -> Result<String, Invalid> {
        if value.trim().is_empty() {
            return Err(Invalid::new("is empty"));
        }
        if value.chars().count() > max {
            return Err(Invalid::new(format!("is longer than {max} characters")));
        }
        if value.chars().any(char::is_control) {
            return Err(Invalid::new("contains a control character"));
        }
        Ok(value.trim().to_string())
    }

    /// What [`Key::check`] accepts, at least `min` characters (counted before trimming),
    /// described as `what`.
    fn key_schema(what: &str, min: usize) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(MAX_TEXT))
            .pattern(Some(KEY))
            .description(Some(format!(
                "{what}: {min} to {MAX_TEXT} characters, not blank, not `.` or `..`, without \
                 control characters (white space around it is removed). Sent to PartnerStack \
                 as one percent-encoded path segment where a path names it."
            )))
    }

    /// What [`non_blank`] accepts (counted before trimming, as it counts), described as
    /// `what`.
    fn non_blank_schema(what: &str, min: usize, max: usize) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .pattern(Some(NON_BLANK))
            .description(Some(format!(
                "{what}: {min} to {max} characters, not blank, without control characters \
                 (white space around it is removed)."
            )))
    }
}

/// A key: an object's key (yours or PartnerStack's), a partner's, a provider's, a
/// category's or a product's.
pub type Key = Text<rule::Key>;
/// A customer's name.
pub type Name = Text<rule::Name>;
/// A transaction key as a request gives it (4 characters at least); stored as a [`Key`].
pub type TransactionKey = Text<rule::TransactionKey>;
/// An email address.
pub type Email = Text<rule::Email>;
/// A currency code, in upper case.
pub type Currency = Text<rule::Currency>;
/// An `Idempotency-Key` header.
pub type IdempotencyKey = Text<rule::IdempotencyKey>;

impl From<TransactionKey> for Key {
    /// Every transaction key is a key (the same rule, with a lower bound).
    fn from(key: TransactionKey) -> Key {
        Text(key.0, PhantomData)
    }
}

impl Key {
    /// The key derived for a transaction sent without one: `psync-` and 32 hex digits of
    /// `digest` (a key by construction).
    pub fn derived(digest: &[u8]) -> Key {
        let hex = hex::encode(digest);
        Text(format!("psync-{}", &hex[..hex.len().min(32)]), PhantomData)
    }
}

/// An amount in integer cents (negative for a refund). A whole number written with a zero
/// fraction (`1999.0`) is accepted, as JSON Schema's `integer` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Amount(i64);

impl Amount {
    pub fn cents(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let cents = whole(&n)
            .ok_or_else(|| Invalid::new(format!("must be a whole number, got {n}")).into_serde())?;
        if cents.unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
            return Err(Invalid::new(format!(
                "must be within ±{MAX_AMOUNT} cents (PartnerStack's documented range), got {n}"
            ))
            .into_serde());
        }
        Ok(Amount(cents))
    }
}

impl PartialSchema for Amount {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(-MAX_AMOUNT))
            .maximum(Some(MAX_AMOUNT))
            .description(Some(format!(
                "An amount in integer cents, negative for a refund, within ±{MAX_AMOUNT} \
                 (PartnerStack's documented range)."
            )))
            .into()
    }
}

impl ToSchema for Amount {}

/// `n` as an `i64` when it is a whole number in range (`1999` or `1999.0`).
fn whole(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i64)
    })
}

/// A point in time, given as an RFC 3339 time or as whole epoch milliseconds from 0 to the
/// end of year 9999; kept to the millisecond, written as RFC 3339 in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn time(self) -> DateTime<Utc> {
        self.0
    }

    fn invalid() -> Invalid {
        Invalid::new(
            "must be an RFC 3339 time or epoch milliseconds \
             (a whole number from 0 to the end of year 9999)",
        )
    }

    fn from_millis(ms: i64) -> Result<Timestamp, Invalid> {
        Some(ms)
            .filter(|ms| (0..=MAX_EPOCH_MS).contains(ms))
            .and_then(DateTime::from_timestamp_millis)
            .map(Timestamp)
            .ok_or_else(Timestamp::invalid)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Time;
        impl Visitor<'_> for Time {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or epoch milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                // Any time RFC 3339 can write (years 0 to 9999), to the millisecond.
                let t = DateTime::parse_from_rfc3339(v)
                    .map_err(|_| Timestamp::invalid().into_serde())?
                    .with_timezone(&Utc);
                let ms = DateTime::from_timestamp_millis(t.timestamp_millis());
                Ok(Timestamp(ms.unwrap_or(t)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Timestamp::from_millis(v).map_err(Invalid::into_serde)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                let whole = serde_json::Number::from_f64(v).and_then(|n| whole(&n));
                Timestamp::from_millis(whole.unwrap_or(-1)).map_err(Invalid::into_serde)
            }
        }
        d.deserialize_any(Time)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .maximum(Some(MAX_EPOCH_MS)),
            )
            .description(Some(
                "A time: RFC 3339, or epoch milliseconds (to the end of year 9999).",
            ))
            .into()
    }
}

impl ToSchema for Timestamp {}

/// An attribute's value: a string without NUL, a number, a boolean or null.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

impl From<&MetaValue> for serde_json::Value {
    fn from(v: &MetaValue) -> serde_json::Value {
        match v {
            MetaValue::Text(s) => serde_json::Value::String(s.clone()),
            MetaValue::Number(n) => serde_json::Value::Number(n.clone()),
            MetaValue::Bool(b) => serde_json::Value::Bool(*b),
            MetaValue::Null => serde_json::Value::Null,
        }
    }
}

impl<'de> Deserialize<'de> for MetaValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl<'de> Visitor<'de> for Scalar {
            type Value = MetaValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MetaValue, E> {
                if v.contains('\0') {
                    return Err(Invalid::new("contains a NUL character").into_serde());
                }
                Ok(MetaValue::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MetaValue, E> {
                Ok(MetaValue::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MetaValue, E> {
                Ok(MetaValue::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MetaValue, E> {
                serde_json::Number::from_f64(v)
                    .map(MetaValue::Number)
                    .ok_or_else(|| Invalid::new("is not a finite number").into_serde())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<MetaValue, E> {
                Ok(MetaValue::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MetaValue, E> {
                Ok(MetaValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<MetaValue, E> {
                Ok(MetaValue::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<MetaValue, A::Error> {
                Err(not_scalar())
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<MetaValue, A::Error> {
                Err(not_scalar())
            }
        }
        fn not_scalar<E: de::Error>() -> E {
            Invalid::new("must be a string, number, boolean or null").into_serde()
        }
        d.deserialize_any(Scalar)
    }
}

impl PartialSchema for MetaValue {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(NO_NUL)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(
                "An attribute's value: a string (without NUL), a number, a boolean or null.",
            ))
            .into()
    }
}

impl ToSchema for MetaValue {}

/// A customer's `meta`: attributes whose names have no NUL, each a [`MetaValue`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Meta(BTreeMap<String, MetaValue>);

impl Meta {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As JSON, for the client.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(name, v)| (name.clone(), v.into()))
                .collect(),
        )
    }

    /// The object schema both [`Meta`] and [`Metadata`] describe.
    fn object() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(NO_NUL)),
            ))
            .additional_properties(Some(Ref::from_schema_name(MetaValue::name())))
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Attributes;
        impl<'de> Visitor<'de> for Attributes {
            type Value = Meta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of attributes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta, A::Error> {
                let mut attributes = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name.contains('\0') {
                        return Err(Invalid::new("contains a NUL character").into_serde());
                    }
                    let value: MetaValue = map.next_value()?;
                    attributes.insert(name, value);
                }
                Ok(Meta(attributes))
            }
        }
        d.deserialize_map(Attributes)
    }
}

impl PartialSchema for Meta {
    fn schema() -> RefOr<Schema> {
        Meta::object()
            .description(Some("Attributes: names without NUL, each a MetaValue."))
            .into()
    }
}

impl ToSchema for Meta {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((MetaValue::name().into(), MetaValue::schema()));
    }
}

/// A transaction's `metadata`: a [`Meta`] of at most [`MAX_METADATA`] attributes.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Metadata(Meta);

impl Metadata {
    /// As JSON, for the client.
    pub fn to_json(&self) -> serde_json::Value {
        self.0.to_json()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let meta = Meta::deserialize(d)?;
        Metadata::check(&meta).map_err(Invalid::into_serde)?;
        Ok(Metadata(meta))
    }
}

impl Metadata {
    /// PartnerStack's limits: [`MAX_METADATA`] attributes, names of [`MAX_METADATA_NAME`]
    /// characters, values of [`MAX_METADATA_VALUE`] characters as text (a number's digits).
    fn check(meta: &Meta) -> Result<(), Invalid> {
        if meta.len() > MAX_METADATA {
            return Err(Invalid::new(format!(
                "has more than {MAX_METADATA} attributes"
            )));
        }
        for (name, value) in &meta.0 {
            if name.chars().count() > MAX_METADATA_NAME {
                return Err(Invalid::new(format!(
                    "has an attribute name longer than {MAX_METADATA_NAME} characters ({:?})",
                    truncated(name)
                )));
            }
            let length = match value {
                MetaValue::Text(text) => text.chars().count(),
                MetaValue::Number(n) => n.to_string().chars().count(),
                MetaValue::Bool(_) | MetaValue::Null => 0,
            };
            if length > MAX_METADATA_VALUE {
                return Err(Invalid::new(format!(
                    "has a value longer than {MAX_METADATA_VALUE} characters (attribute {:?})",
                    truncated(name)
                )));
            }
        }
        Ok(())
    }
}

/// The first characters of a name quoted in an error.
fn truncated(name: &str) -> String {
    name.chars().take(MAX_METADATA_NAME + 10).collect()
}

/// The schema of a `metadata` attribute's value: a [`MetaValue`] within
/// [`MAX_METADATA_VALUE`] characters.
struct MetadataValue;

impl MetadataValue {
    const NAME: &'static str = "MetadataValue";

    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_METADATA_VALUE))
                    .pattern(Some(NO_NUL)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(format!(
                "A metadata value: a string of at most {MAX_METADATA_VALUE} characters (without \
                 NUL), a number of at most {MAX_METADATA_VALUE} characters written out, a \
                 boolean or null."
            )))
            .into()
    }
}

impl PartialSchema for Metadata {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_METADATA_NAME))
                    .pattern(Some(NO_NUL)),
            ))
            .additional_properties(Some(Ref::from_schema_name(MetadataValue::NAME)))
            .max_properties(Some(MAX_METADATA))
            .description(Some(format!(
                "At most {MAX_METADATA} attributes (PartnerStack's limit): names of at most \
                 {MAX_METADATA_NAME} characters without NUL, each a MetadataValue."
            )))
            .into()
    }
}

impl ToSchema for Metadata {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((MetadataValue::NAME.into(), MetadataValue::schema()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The message `value` is refused with as field `field` of a body.
    fn refused<T: for<'de> Deserialize<'de> + fmt::Debug>(
        field: &str,
        value: serde_json::Value,
    ) -> String {
        let e = serde_path_to_error::deserialize::<_, T>(value).unwrap_err();
        let path = e.path().to_string();
        let path = if path == "." {
            field.to_string()
        } else {
            format!("{field}.{path}")
        };
        field_message(&path, &e.inner().to_string())
    }

    #[test]
    fn broken_rules_name_the_field() {
        assert_eq!(
            refused::<Key>("customer_key", json!(" ")),
            "customer_key is empty"
        );
        assert_eq!(
            refused::<Name>("name", json!("x".repeat(101))),
            "name is longer than 100 characters"
        );
        assert_eq!(
            refused::<Key>("partner_key", json!("a\u{85}")),
            "partner_key contains a control character"
        );
        assert_eq!(
            refused::<Email>("email", json!("a b@c.d")),
            "email is not an email address"
        );
        assert_eq!(
            refused::<Currency>("currency", json!("usd ")),
            "currency must be three letters (ISO 4217), got \"usd \""
        );
        assert_eq!(
            refused::<Metadata>("metadata", json!({"a": {"b": 1}})),
            "metadata.a must be a string, number, boolean or null"
        );
        assert_eq!(
            refused::<Meta>("meta", json!({"a\u{0}": 1})),
            "meta contains a NUL character"
        );
        assert!(
            refused::<Key>("customer_key", json!(5))
                .starts_with("invalid field customer_key: invalid type")
        );
        assert_eq!(
            Key::parse("").unwrap_err().of("the path's key"),
            "the path's key is empty"
        );
    }

    #[test]
    fn documented_limits_hold_at_their_edges() {
        let attributes = |n: usize, name: usize, value: usize| {
            let mut m = serde_json::Map::new();
            for i in 0..n {
                let name = format!("{i:02}{}", "n".repeat(name - 2));
                m.insert(name, json!("v".repeat(value)));
            }
            serde_json::Value::Object(m)
        };
        let metadata = |v| serde_json::from_value::<Metadata>(v);
        assert!(
            metadata(attributes(
                MAX_METADATA,
                MAX_METADATA_NAME,
                MAX_METADATA_VALUE
            ))
            .is_ok()
        );
        assert_eq!(
            refused::<Metadata>("metadata", attributes(MAX_METADATA + 1, 3, 1)),
            "metadata has more than 25 attributes"
        );
        assert!(
            refused::<Metadata>("metadata", attributes(1, MAX_METADATA_NAME + 1, 1))
                .starts_with("metadata has an attribute name longer than 30 characters")
        );
        assert!(
            refused::<Metadata>("metadata", attributes(1, 3, MAX_METADATA_VALUE + 1))
                .starts_with("metadata has a value longer than 100 characters")
        );
        // A number's value is its digits (as written, never near 100).
        assert!(metadata(json!({"n": -1.2345678901234567e300, "m": u64::MAX})).is_ok());
        let amount = |v| serde_json::from_value::<Amount>(v).map(Amount::cents);
        assert_eq!(amount(json!(MAX_AMOUNT)).unwrap(), MAX_AMOUNT);
        assert_eq!(amount(json!(-MAX_AMOUNT)).unwrap(), -MAX_AMOUNT);
        assert!(
            refused::<Amount>("amount", json!(MAX_AMOUNT + 1)).starts_with("amount must be within")
        );
        assert!(refused::<Amount>("amount", json!(-MAX_AMOUNT - 1)).starts_with("amount must"));
        assert!(refused::<Amount>("amount", json!(i64::MAX)).starts_with("amount must"));
    }

    #[test]
    fn keys_that_urls_resolve_away_are_refused() {
        for key in [".", "..", " . ", "\u{a0}..\u{a0}"] {
            assert!(
                refused::<Key>("customer_key", json!(key)).starts_with("customer_key cannot be"),
                "{key:?}"
            );
        }
        // The transaction key's own rule (4 characters) keeps the key's.
        assert!(refused::<TransactionKey>("key", json!("  .. ")).starts_with("key cannot be"));
        for key in ["...", ". .", ".a", "a/..", "%2E", "/"] {
            let parsed: Key = serde_json::from_value(json!(key)).unwrap();
            assert_eq!(parsed.as_str(), key);
        }
    }

    #[test]
    fn values_are_kept_normalised() {
        let key: Key = serde_json::from_value(json!("  c1 ")).unwrap();
        assert_eq!(key.as_str(), "c1");
        let currency: Currency = serde_json::from_value(json!("eur")).unwrap();
        assert_eq!(serde_json::to_value(&currency).unwrap(), "EUR");
        let t: Timestamp = serde_json::from_value(json!("1900-01-01T00:00:00.1234+01:00")).unwrap();
        assert_eq!(serde_json::to_value(t).unwrap(), "1899-12-31T23:00:00.123Z");
        let t: Timestamp = serde_json::from_value(json!(1_700_000_000_000_i64)).unwrap();
        assert_eq!(serde_json::to_value(t).unwrap(), "2023-11-14T22:13:20.000Z");
        assert_eq!(serde_json::from_value::<Timestamp>(json!(t)).unwrap(), t);
        for refused in [
            json!(-1),
            json!(1.5),
            json!(MAX_EPOCH_MS + 1),
            json!("yesterday"),
        ] {
            assert!(
                serde_json::from_value::<Timestamp>(refused.clone()).is_err(),
                "{refused}"
            );
        }
    }
}
