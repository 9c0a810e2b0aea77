//! Tolerant readers for PartnerStack's field encodings.
//!
//! Real payloads disagree with the documentation and with each other: timestamps in seconds
//! or milliseconds, booleans as strings (`"archived": "false"`), numeric ids where keys are
//! expected, `product_key` as a string or an object, `null` anywhere. Each reader here
//! accepts every encoding seen and rejects the rest with a message naming what it got.

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Below this, a numeric timestamp is in seconds; at or above it, milliseconds.
/// (100,000,000,000 s is the year 5138; as milliseconds it is 1973.)
const SECONDS_LIMIT: i64 = 100_000_000_000;

/// Parses a timestamp in any encoding seen: epoch seconds or milliseconds (number or
/// numeric string), or RFC 3339. Years outside 1970..=9999 are rejected as absurd.
pub fn parse_timestamp(value: &Value) -> Result<Option<DateTime<Utc>>, String> {
    let ts = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                from_epoch(i)?
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                // Fractional epoch seconds (or milliseconds): keep millisecond precision.
                let ms = if f.abs() < SECONDS_LIMIT as f64 {
                    f * 1000.0
                } else {
                    f
                };
                from_epoch_ms(ms.round() as i64)?
            } else {
                return Err(format!("timestamp {n} is out of range"));
            }
        }
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => from_epoch(i)?,
            Err(_) => DateTime::parse_from_rfc3339(s.trim())
                .map_err(|_| format!("{s:?} is not a timestamp (epoch s/ms or RFC 3339)"))?
                .with_timezone(&Utc),
        },
        other => return Err(format!("expected a timestamp, got {}", kind(other))),
    };
    let year = ts.date_naive().year_ce().1;
    if !(1970..=9999).contains(&year) || ts.timestamp() < 0 {
        return Err(format!("timestamp {ts} is outside 1970..=9999"));
    }
    Ok(Some(ts))
}

use chrono::Datelike as _;

fn from_epoch(i: i64) -> Result<DateTime<Utc>, String> {
    if i < 0 {
        return Err(format!("negative timestamp {i}"));
    }
    if i < SECONDS_LIMIT {
        DateTime::from_timestamp(i, 0).ok_or_else(|| format!("timestamp {i} is out of range"))
    } else {
        from_epoch_ms(i)
    }
}

fn from_epoch_ms(ms: i64) -> Result<DateTime<Utc>, String> {
    if ms < 0 {
        return Err(format!("negative timestamp {ms}"));
    }
    DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("timestamp {ms} is out of range"))
}

/// A string, a number or a boolean, as text. Objects and arrays are errors.
pub fn parse_string(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!("expected a string, got {}", kind(other))),
    }
}

/// `true`/`false`, their string forms, `0`/`1`; empty string and null are absent.
pub fn parse_bool(value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(format!("expected a boolean, got {n}")),
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            "" => Ok(None),
            _ => Err(format!("expected a boolean, got {s:?}")),
        },
        other => Err(format!("expected a boolean, got {}", kind(other))),
    }
}

/// An amount in integer cents: an integer, an integral float, or a numeric string.
pub fn parse_cents(value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                Ok(Some(f as i64))
            } else {
                Err(format!(
                    "amount {n} is not a whole number of cents within range"
                ))
            }
        }
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("amount {s:?} is not a whole number of cents")),
        other => Err(format!("expected an amount in cents, got {}", kind(other))),
    }
}

/// A calendar date: `YYYY-MM-DD`, or any timestamp encoding.
pub fn parse_date(value: &Value) -> Result<Option<NaiveDate>, String> {
    if let Value::String(s) = value
        && let Ok(d) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
    {
        return Ok(Some(d));
    }
    parse_timestamp(value).map(|ts| ts.map(|t| t.date_naive()))
}

/// A key that may come as a string, a number, or an object carrying a `key`.
pub fn parse_key_or_object(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Object(map) => map.get("key").map_or(Ok(None), parse_string),
        other => parse_string(other),
    }
}

/// A name that may come as a string or as an object: the object's `name` (else its
/// `account_name` or `key`), else the object as compact JSON text, so nothing is lost.
pub fn parse_name_or_object(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Object(map) => {
            for field in ["name", "account_name", "key"] {
                if let Some(name) = map.get(field).map(parse_string).transpose()?.flatten() {
                    return Ok(Some(name));
                }
            }
            Ok(Some(value.to_string()))
        }
        other => parse_string(other),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Adapts a `parse_*` function into a serde `deserialize_with` function.
macro_rules! serde_reader {
    ($name:ident, $parse:path, $ty:ty) => {
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let value = Value::deserialize(d)?;
            $parse(&value).map_err(D::Error::custom)
        }
    };
}

/// serde adapters for `#[serde(deserialize_with = "...")]`.
pub mod de {
    use super::*;
    serde_reader!(timestamp, parse_timestamp, Option<DateTime<Utc>>);
    serde_reader!(string, parse_string, Option<String>);
    serde_reader!(boolean, parse_bool, Option<bool>);
    serde_reader!(cents, parse_cents, Option<i64>);
    serde_reader!(date, parse_date, Option<NaiveDate>);
    serde_reader!(key_or_object, parse_key_or_object, Option<String>);
    serde_reader!(name_or_object, parse_name_or_object, Option<String>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_in_seconds_milliseconds_and_rfc3339_agree() {
        let expected = DateTime::parse_from_rfc3339("2023-04-04T13:36:22Z").unwrap();
        for v in [
            json!(1680615382),
            json!(1680615382000_i64),
            json!("1680615382000"),
            json!("1680615382"),
            json!("2023-04-04T13:36:22Z"),
            json!(1680615382.0),
        ] {
            assert_eq!(parse_timestamp(&v).unwrap().unwrap(), expected, "{v}");
        }
        assert_eq!(
            parse_timestamp(&json!(1680615382836_i64))
                .unwrap()
                .unwrap()
                .timestamp_subsec_millis(),
            836
        );
        assert_eq!(parse_timestamp(&json!(null)).unwrap(), None);
    }

    #[test]
    fn absurd_timestamps_are_rejected() {
        for v in [
            json!(-1),
            json!(i64::MAX),
            json!(1e300),
            json!("yesterday"),
            json!([1]),
            json!({}),
        ] {
            assert!(parse_timestamp(&v).is_err(), "{v} accepted");
        }
    }

    #[test]
    fn booleans_as_strings() {
        assert_eq!(parse_bool(&json!("false")).unwrap(), Some(false));
        assert_eq!(parse_bool(&json!("TRUE")).unwrap(), Some(true));
        assert_eq!(parse_bool(&json!(1)).unwrap(), Some(true));
        assert_eq!(parse_bool(&json!(null)).unwrap(), None);
        assert!(parse_bool(&json!("maybe")).is_err());
        assert!(parse_bool(&json!(2)).is_err());
    }

    #[test]
    fn cents_accept_integers_and_reject_fractions_and_overflow() {
        assert_eq!(parse_cents(&json!(-2500)).unwrap(), Some(-2500));
        assert_eq!(parse_cents(&json!("1999")).unwrap(), Some(1999));
        assert_eq!(parse_cents(&json!(1000.0)).unwrap(), Some(1000));
        assert!(parse_cents(&json!(10.5)).is_err());
        assert!(parse_cents(&json!(1e30)).is_err());
        assert!(parse_cents(&json!(u64::MAX)).is_err());
        assert!(parse_cents(&json!("ten")).is_err());
    }

    #[test]
    fn keys_as_strings_numbers_or_objects() {
        assert_eq!(
            parse_key_or_object(&json!("prod_1")).unwrap().as_deref(),
            Some("prod_1")
        );
        assert_eq!(
            parse_key_or_object(&json!({"key": "prod_2", "name": "x"}))
                .unwrap()
                .as_deref(),
            Some("prod_2")
        );
        assert_eq!(
            parse_key_or_object(&json!(42)).unwrap().as_deref(),
            Some("42")
        );
        assert!(parse_string(&json!({"a": 1})).is_err());
    }

    #[test]
    fn names_as_strings_or_objects() {
        assert_eq!(
            parse_name_or_object(&json!("Acme")).unwrap().as_deref(),
            Some("Acme")
        );
        assert_eq!(
            parse_name_or_object(&json!({"name": "Acme", "id": 7}))
                .unwrap()
                .as_deref(),
            Some("Acme")
        );
        assert_eq!(
            parse_name_or_object(&json!({"domain": "acme.io"}))
                .unwrap()
                .as_deref(),
            Some(r#"{"domain":"acme.io"}"#)
        );
        assert_eq!(parse_name_or_object(&json!(null)).unwrap(), None);
        assert!(parse_name_or_object(&json!({"name": ["x"]})).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_date(&json!("2024-02-29")).unwrap(),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        assert_eq!(
            parse_date(&json!(1709164800000_i64)).unwrap(),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        assert!(parse_date(&json!("2024-02-30")).is_err());
    }
}
