//! Query-string handling shared by every `/v1` route.
//!
//! Parameters are declared once, as `IntoParams` structs: the same declaration documents
//! them in the OpenAPI description and decides which names a route accepts. Every value
//! arrives as text and is checked here, so a bad value gets a message naming the
//! parameter instead of a generic deserialisation error. Unknown and repeated parameters
//! are refused, so a typo (`?grup_key=`) never silently widens a query. Every value must
//! be 1 to [`MAX_VALUE_CHARS`] characters without NUL; the OpenAPI description says so of
//! every text parameter (`routes::openapi`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa::openapi::path::ParameterIn;

use crate::error::ApiError;

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 25;
/// Largest page, as in PartnerStack's own API.
pub const MAX_LIMIT: i64 = 250;
/// Longest query parameter value, in characters.
pub const MAX_VALUE_CHARS: usize = 1024;
/// A value without NUL, as a JSON Schema (ECMA 262) pattern.
pub const NO_NUL_PATTERN: &str = "^[^\\x00]*$";

/// A route's query string, split into checked `name=value` pairs.
#[derive(Debug, Default)]
pub struct QueryParams(BTreeMap<String, String>);

impl QueryParams {
    /// Parses `raw` and refuses names outside `accepted`, repeated names, and values that
    /// are empty, longer than [`MAX_VALUE_CHARS`] or carry NUL (which Postgres text cannot
    /// hold).
    pub fn parse(raw: Option<&str>, accepted: &[String]) -> Result<QueryParams, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("the query string does not parse: {e}")))?;
        let mut unknown: Vec<String> = pairs
            .iter()
            .filter(|(name, _)| !accepted.contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            unknown.dedup();
            let accepted = if accepted.is_empty() {
                "none".to_string()
            } else {
                accepted.join(", ")
            };
            return Err(ApiError::bad_request(format!(
                "unknown query parameter{}: {}; this route accepts: {accepted}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            )));
        }
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if value.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name} is empty; leave it out instead"
                )));
            }
            if value.contains('\0') || value.chars().count() > MAX_VALUE_CHARS {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name} is not a valid value (at most {MAX_VALUE_CHARS} \
                     characters, no NUL)"
                )));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name} is given more than once"
                )));
            }
        }
        Ok(QueryParams(map))
    }

    /// The parameters as one of the declaring structs (whose fields are all text).
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let object: serde_json::Map<String, Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::from_value(Value::Object(object))
            .map_err(|e| ApiError::bad_request(format!("query parameters: {e}")))
    }
}

/// The query parameter names a parameter struct declares.
pub fn names<T: IntoParams>() -> Vec<String> {
    T::into_params(|| Some(ParameterIn::Query))
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Paging and the parameters every collection shares.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 250. Default 25.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 250, default = 25)]
    pub limit: Option<String>,
    /// The `ending_cursor` of the previous page. Cursors are opaque; one that was not
    /// issued by this collection is refused with 400.
    pub starting_after: Option<String>,
    /// Only objects updated at or after this time: RFC 3339 (`2024-05-01T00:00:00Z`) or
    /// epoch milliseconds (`1714521600000`). An object without `updated_at` counts as
    /// updated at its `created_at`; an event, when it was applied (else received).
    #[param(schema_with = time_schema)]
    pub updated_since: Option<String>,
}

/// Soft-deletion, for collections of PartnerStack objects.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Deleted {
    /// `true` also lists objects PartnerStack deleted or archived (their `deleted_at` is
    /// set). Default `false`.
    #[param(value_type = Option<bool>, default = false)]
    pub include_deleted: Option<String>,
}

/// `include`, as read: checked against the collection's one word by [`include`].
#[derive(Debug, Default, Deserialize)]
pub struct Include {
    pub include: Option<String>,
}

/// The `include` parameter of a collection whose items can carry a body: described as a
/// named enum of that one word (e.g. `IncludeRaw`: `raw`), so the description and the
/// check ([`include`]) cannot differ.
pub struct IncludeParam {
    pub word: &'static str,
    /// The enum's schema name.
    pub schema: &'static str,
    pub description: &'static str,
}

/// The entity collections' `include`.
pub const INCLUDE_RAW: IncludeParam = IncludeParam {
    word: "raw",
    schema: "IncludeRaw",
    description: "`raw` adds the PartnerStack body as last applied (`raw`).",
};
/// `/v1/events`' `include`.
pub const INCLUDE_PAYLOAD: IncludeParam = IncludeParam {
    word: "payload",
    schema: "IncludePayload",
    description: "`payload` adds each delivery's body (`/v1/events/{id}` always has it).",
};
/// `/v1/writes`' `include`.
pub const INCLUDE_RESULT: IncludeParam = IncludeParam {
    word: "result",
    schema: "IncludeResult",
    description: "`result` adds PartnerStack's answer (`result`) to each write in a list.",
};
/// Every `include` there is.
pub const INCLUDES: [IncludeParam; 3] = [INCLUDE_RAW, INCLUDE_PAYLOAD, INCLUDE_RESULT];

impl IncludeParam {
    pub const NAME: &'static str = "include";

    /// The OpenAPI parameter, referring to [`IncludeParam::component`].
    pub fn parameter(&self) -> utoipa::openapi::path::Parameter {
        use utoipa::openapi::path::ParameterBuilder;
        use utoipa::openapi::{Ref, Required};
        ParameterBuilder::new()
            .name(Self::NAME)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(self.description))
            .schema(Some(Ref::from_schema_name(self.schema)))
            .build()
    }

    /// The named enum schema of the word.
    pub fn component(
        &self,
    ) -> (
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    ) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "What `include` can add here: `{}`.",
                self.word
            )))
            .enum_values(Some([self.word]))
            .into();
        (self.schema.to_string(), schema)
    }
}

/// An enumerated parameter: exactly one of a fixed set of words (`parse` finds the value
/// for a word; `words` lists them for the message).
pub fn word<T>(
    name: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    words: &str,
) -> Result<Option<T>, ApiError> {
    value
        .map(|v| {
            parse(v).ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be one of {words}, got {v:?}"))
            })
        })
        .transpose()
}

/// Longest `wait` a request may ask for, in seconds: a long-poll of the change feed, or a
/// write waiting for its outcome. Such a request may last this much longer than the
/// request timeout.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `wait`, checked: whole seconds from 0 to [`MAX_WAIT`], default 0.
pub fn wait(value: Option<&str>) -> Result<std::time::Duration, ApiError> {
    let Some(value) = value else {
        return Ok(std::time::Duration::ZERO);
    };
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(std::time::Duration::from_secs)
        .filter(|d| *d <= MAX_WAIT)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "wait must be a whole number of seconds from 0 to {}, got {value:?}",
                MAX_WAIT.as_secs()
            ))
        })
}

/// `limit`, checked: 1..=250, default 25.
pub fn limit(value: Option<&str>) -> Result<i64, ApiError> {
    let Some(value) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    match value.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit must be an integer from 1 to {MAX_LIMIT}, got {value:?}"
        ))),
    }
}

/// A `true`/`false` parameter.
pub fn boolean(name: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, got {:?}",
            value.unwrap_or_default()
        ))),
    }
}

/// Epoch numbers below this are seconds, above it milliseconds (as PartnerStack's own
/// timestamps are read).
const SECONDS_BELOW: i64 = 100_000_000_000;

/// A time parameter: RFC 3339, or epoch seconds or milliseconds (see [`time_schema`]).
pub fn timestamp(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<i64>().ok().and_then(|n| {
            if n < SECONDS_BELOW {
                DateTime::from_timestamp(n, 0)
            } else {
                DateTime::from_timestamp_millis(n)
            }
        })
    } else {
        DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    parsed.map(Some).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{name} must be RFC 3339 (2024-05-01T00:00:00Z) or epoch seconds or milliseconds, \
             got {value:?}"
        ))
    })
}

/// The OpenAPI schema of a time parameter: an RFC 3339 date-time, or epoch seconds (below
/// 10^11) or milliseconds, as digits.
pub fn time_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,15}$")),
        )
        .build()
        .into()
}

/// Checks `include` against what a route offers; true when `what` was asked for.
pub fn include(value: Option<&str>, what: &str) -> Result<bool, ApiError> {
    let Some(value) = value else {
        return Ok(false);
    };
    let mut asked = false;
    for part in value.split(',').map(str::trim) {
        if part == what {
            asked = true;
        } else {
            return Err(ApiError::bad_request(format!(
                "include accepts only {what:?} here, got {part:?}"
            )));
        }
    }
    Ok(asked)
}

/// A text filter, trimmed (a value of spaces only matches nothing). [`QueryParams::parse`]
/// has refused empty, overlong and NUL-carrying values.
pub fn text(value: Option<&str>) -> Option<&str> {
    value.map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Vec<String> {
        let mut n = names::<Paging>();
        n.extend(names::<Deleted>());
        n
    }

    #[test]
    fn declared_names_are_what_routes_accept() {
        assert_eq!(
            accepted(),
            [
                "limit",
                "starting_after",
                "updated_since",
                "include_deleted"
            ]
        );
    }

    #[test]
    fn unknown_repeated_and_empty_parameters_are_refused() {
        let err = QueryParams::parse(Some("limit=5&grup_key=x&zzz=1&grup_key=y"), &accepted())
            .unwrap_err();
        assert_eq!(err.status(), 400);
        let err = QueryParams::parse(Some("limit=5&limit=6"), &accepted()).unwrap_err();
        assert_eq!(err.status(), 400);
        for bad in ["limit=", "limit=a%00b"] {
            let err = QueryParams::parse(Some(bad), &accepted()).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
        }
        let long = format!("starting_after={}", "é".repeat(MAX_VALUE_CHARS + 1));
        assert_eq!(
            QueryParams::parse(Some(&long), &accepted())
                .unwrap_err()
                .status(),
            400
        );
        // The limit counts characters, not bytes.
        let at_limit = format!("starting_after={}", "é".repeat(MAX_VALUE_CHARS));
        assert!(QueryParams::parse(Some(&at_limit), &accepted()).is_ok());
        let q = QueryParams::parse(Some("limit=5&starting_after=a%2Bb"), &accepted()).unwrap();
        let paging: Paging = q.read().unwrap();
        assert_eq!(paging.limit.as_deref(), Some("5"));
        assert_eq!(paging.starting_after.as_deref(), Some("a+b"));
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(limit(None).unwrap(), 25);
        assert_eq!(limit(Some("250")).unwrap(), 250);
        for bad in ["0", "251", "-1", "abc", "2.5"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(boolean("x", Some("TRUE")).unwrap(), Some(true));
        assert!(boolean("x", Some("yes")).is_err());
        let ms = timestamp("t", Some("1714521600000")).unwrap().unwrap();
        let rfc = timestamp("t", Some("2024-05-01T00:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(ms, rfc);
        assert!(timestamp("t", Some("yesterday")).is_err());
        assert!(timestamp("t", Some(" 1714521600000")).is_err());
        assert_eq!(timestamp("t", Some("1714521600")).unwrap().unwrap(), rfc);
        // A filter from before 1970 is a filter all the same.
        assert!(timestamp("t", Some("1900-01-01T00:00:00+01:00")).is_ok());
        assert!(include(Some("raw"), "raw").unwrap());
        assert!(include(Some("payload"), "raw").is_err());
        assert_eq!(text(Some(" a@b.co ")), Some("a@b.co"));
    }
}
