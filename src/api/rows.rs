//! Entity rows written as JSON straight from Postgres' answer, for list pages.
//!
//! Decoding a page of 100 customers into the typed rows of [`crate::columns`] and having
//! serde write them cost the service as much CPU as Postgres spent running the query:
//! about ten strings allocated per row, every column found by its name, every timestamp
//! formatted through `core::fmt`. A list page instead writes each row's JSON from the row
//! itself: columns by position (the select list is generated from the same declaration,
//! [`crate::api::resources`]), text borrowed from the row, escaping only where a string
//! needs it, timestamps formatted by hand.
//!
//! The bytes are exactly those serde writes for the typed row (same fields, order,
//! escaping, number and time formats): the integration test
//! `api::list_items_are_byte_for_byte_the_objects_single_reads_serve` compares both on
//! every entity with awkward values, so a list item and the single-object read of the
//! same row cannot differ.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use partnerstack::Entity;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use super::cursor::Position;
use crate::columns::{self, SqlType};

/// What a list needs to know about a row it wrote.
#[derive(Debug)]
pub struct Written {
    /// The row's place in the list order (for the next page's cursor).
    pub position: Position,
    /// Bytes of the raw body it carried (`include=raw`), 0 without.
    pub body_bytes: usize,
}

/// The bookkeeping columns after the entity's own, in the select list's order (see
/// `resources::entity_select`, then the body column).
const RECORD: [(&str, SqlType); 5] = [
    ("created_at", SqlType::Ts),
    ("updated_at", SqlType::Ts),
    ("deleted_at", SqlType::Ts),
    ("source", SqlType::Text),
    ("synced_at", SqlType::Ts),
];

/// Appends `row` (selected by the entity's list query: `key`, the declared columns, the
/// record's columns, then `raw`) to `out` as the typed row's JSON object.
pub fn write_entity(
    entity: Entity,
    row: &PgRow,
    out: &mut Vec<u8>,
) -> Result<Written, sqlx::Error> {
    let declared = columns::of(entity);
    let key: &str = row.try_get(0)?;
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key);
    let fields = declared
        .iter()
        .map(|c| (columns::served_name(c.name), c.ty))
        .chain(RECORD);
    for (i, (name, ty)) in fields.enumerate() {
        out.push(b',');
        write_str(out, name);
        out.push(b':');
        write_value(row, i + 1, ty, out)?;
    }
    let raw_at = declared.len() + RECORD.len() + 1;
    let raw: Option<Json<Box<RawValue>>> = row.try_get(raw_at)?;
    let body_bytes = match &raw {
        Some(raw) => {
            out.extend_from_slice(b",\"raw\":");
            out.extend_from_slice(raw.0.get().as_bytes());
            raw.0.get().len()
        }
        None => 0,
    };
    out.push(b'}');
    let created_at: DateTime<Utc> = row.try_get(declared.len() + 1)?;
    Ok(Written {
        position: Position::Created(created_at, key.to_string()),
        body_bytes,
    })
}

/// Appends the value at `at` as JSON (`null` for NULL), as serde writes the typed field.
fn write_value(row: &PgRow, at: usize, ty: SqlType, out: &mut Vec<u8>) -> Result<(), sqlx::Error> {
    match ty {
        SqlType::Text => match row.try_get::<Option<&str>, _>(at)? {
            Some(s) => write_str(out, s),
            None => out.extend_from_slice(b"null"),
        },
        SqlType::Int => match row.try_get::<Option<i64>, _>(at)? {
            Some(n) => serde(out, &n)?,
            None => out.extend_from_slice(b"null"),
        },
        SqlType::Bool => out.extend_from_slice(match row.try_get::<Option<bool>, _>(at)? {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        }),
        SqlType::Ts => match row.try_get::<Option<DateTime<Utc>>, _>(at)? {
            Some(t) => write_time(out, t)?,
            None => out.extend_from_slice(b"null"),
        },
        SqlType::Date => serde(out, &row.try_get::<Option<NaiveDate>, _>(at)?)?,
        SqlType::Json => serde(out, &row.try_get::<Option<Value>, _>(at)?)?,
    }
    Ok(())
}

/// Appends a value as serde_json writes it.
fn serde<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), sqlx::Error> {
    serde_json::to_writer(&mut *out, value).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Appends `s` as a JSON string: as is when nothing in it needs escaping (one pass the
/// compiler can vectorise), else through serde_json's escaping.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends a time as chrono's serde writes it (RFC 3339 in UTC with `Z`, fractional
/// seconds only when there are any, in 3, 6 or 9 digits), by hand for years 0 to 9999 and
/// through chrono for the rest.
fn write_time(out: &mut Vec<u8>, t: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return serde(out, &t);
    }
    let (mut sec, mut nano) = (t.second(), t.nanosecond());
    // A leap second is stored as nanoseconds past 1e9.
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    let mut buf = [0u8; 32];
    let two = |buf: &mut [u8], at: usize, v: u32| {
        buf[at] = b'0' + (v / 10 % 10) as u8;
        buf[at + 1] = b'0' + (v % 10) as u8;
    };
    buf[0] = b'"';
    two(&mut buf, 1, year as u32 / 100);
    two(&mut buf, 3, year as u32 % 100);
    buf[5] = b'-';
    two(&mut buf, 6, t.month());
    buf[8] = b'-';
    two(&mut buf, 9, t.day());
    buf[11] = b'T';
    two(&mut buf, 12, t.hour());
    buf[14] = b':';
    two(&mut buf, 15, t.minute());
    buf[17] = b':';
    two(&mut buf, 18, sec);
    let mut len = 20;
    let (digits, fraction) = if nano == 0 {
        (0, 0)
    } else if nano % 1_000_000 == 0 {
        (3, nano / 1_000_000)
    } else if nano % 1_000 == 0 {
        (6, nano / 1_000)
    } else {
        (9, nano)
    };
    if digits > 0 {
        buf[len] = b'.';
        let mut f = fraction;
        for i in (0..digits).rev() {
            buf[len + 1 + i] = b'0' + (f % 10) as u8;
            f /= 10;
        }
        len += 1 + digits;
    }
    buf[len] = b'Z';
    buf[len + 1] = b'"';
    out.extend_from_slice(&buf[..len + 2]);
    Ok(())
}

/// The JSON of a list page whose items are already written: `{"data": {"items": [...],
/// "has_more": ..., "ending_cursor": ...}}`, as serde writes [`super::collection::List`].
pub fn page(items: &[u8], has_more: bool, ending_cursor: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() + 96);
    out.extend_from_slice(b"{\"data\":{\"items\":[");
    out.extend_from_slice(items);
    out.extend_from_slice(b"],\"has_more\":");
    out.extend_from_slice(if has_more { b"true" } else { b"false" });
    out.extend_from_slice(b",\"ending_cursor\":");
    match ending_cursor {
        Some(c) => write_str(&mut out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_chrono_serde_writes_them() {
        let mut checked = 0;
        // Whole seconds, millis, micros, nanos, a leap second, the year's edges.
        let mut samples: Vec<DateTime<Utc>> = [
            "2024-01-01T00:00:00Z",
            "2024-02-29T23:59:59.5Z",
            "1999-12-31T23:59:59.123456Z",
            "0001-01-01T00:00:00.000001Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60.25Z",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        samples.push(DateTime::from_timestamp(-62_200_000_000, 0).unwrap()); // year -2
        samples.push(DateTime::from_timestamp(253_402_300_800, 7).unwrap()); // year 10000
        // A spread of instants with every fraction length.
        let mut x: i64 = 0x1234_5678;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let secs = (x >> 16).rem_euclid(4_000_000_000);
            let nanos = match x & 3 {
                0 => 0,
                1 => (x as u32 >> 8) % 1000 * 1_000_000,
                2 => (x as u32 >> 8) % 1_000_000 * 1000,
                _ => (x as u32 >> 8) % 1_000_000_000,
            };
            samples.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        for t in samples {
            let mut ours = Vec::new();
            write_time(&mut ours, t).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&t).unwrap(),
                "{t:?}"
            );
            checked += 1;
        }
        assert!(checked > 5000);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "tab\tnewline\ncr\r\u{1}\u{1f}\u{7f}",
            "émoji 🎉 and ✓",
            "\u{2028}\u{2029}",
        ] {
            let mut ours = Vec::new();
            write_str(&mut ours, s);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
