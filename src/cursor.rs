//! Opaque page cursors: the position of a page's last item, bound to its collection.
//!
//! A cursor carries the sort position of the last item (`created_at` and `key`, an
//! event's or a change's `id`, or a feed position) and the collection it came from, followed by a short SHA-256 check over
//! both, all in unpadded base64url. It is tamper-evident, not secret: anything that does
//! not decode, fails the check, belongs to another collection or holds an impossible
//! position is refused before any SQL runs (the API answers 400, see
//! `api::cursor`). The check is keyless on purpose, so every replica and every restart
//! accepts every other's cursors.
//!
//! The format lives below the API because the change feed's items carry cursors wherever
//! they are served or sent ([`crate::feed`], the relay), not only in `/v1` answers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, Utc};
use sha2::{Digest, Sha256};

use crate::db::changes::FeedPosition;

/// Where a page ended, in the collection's sort order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Entity collections: newest `created_at` first, ties broken by `key` (descending).
    Created(DateTime<Utc>, String),
    /// The event log: highest `id` first; an object's history: newest change first.
    Id(i64),
    /// The change feed: after the change at `(pos, id)`, oldest first.
    Feed(FeedPosition),
}

const DOMAIN: &[u8] = b"partnerstack-sync cursor v1\0";
const TAG_LEN: usize = 8;
/// Longest cursor accepted; keys are short, so anything longer is not ours.
const MAX_LEN: usize = 2048;

/// The cursor for `position` in `collection`.
pub fn encode(collection: &str, position: &Position) -> String {
    let payload = match position {
        Position::Created(at, key) => format!("{collection}\nt\n{}\n{key}", at.timestamp_micros()),
        Position::Id(id) => format!("{collection}\ni\n{id}"),
        Position::Feed(at) => format!("{collection}\nf\n{}\n{}", at.pos, at.id),
    };
    let mut bytes = payload.into_bytes();
    let tag = tag(&bytes);
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Why a text is not a cursor of a collection: "it is too long", "its check does not
/// match", ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The position a cursor issued by `collection` stands for.
pub fn decode(collection: &str, cursor: &str) -> Result<Position, Invalid> {
    decode_inner(collection, cursor).map_err(Invalid)
}

fn decode_inner(collection: &str, cursor: &str) -> Result<Position, &'static str> {
    if cursor.len() > MAX_LEN {
        return Err("it is too long");
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| "it is not base64url")?;
    if bytes.len() <= TAG_LEN {
        return Err("it is too short");
    }
    let (payload, presented) = bytes.split_at(bytes.len() - TAG_LEN);
    if tag(payload)[..] != presented[..] {
        return Err("its check does not match");
    }
    let payload = std::str::from_utf8(payload).map_err(|_| "it is not text")?;
    let mut parts = payload.splitn(4, '\n');
    if parts.next() != Some(collection) {
        return Err("it belongs to another collection");
    }
    match (parts.next(), parts.next(), parts.next()) {
        (Some("t"), Some(micros), Some(key)) => {
            let at = micros
                .parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .filter(|at| (1..=9999).contains(&at.year()))
                .ok_or("its time is out of range")?;
            // Postgres text cannot hold NUL; such a key would be a database error.
            if key.is_empty() || key.contains('\0') {
                return Err("its key is invalid");
            }
            Ok(Position::Created(at, key.to_string()))
        }
        (Some("i"), Some(id), None) => id
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Position::Id)
            .ok_or("its id is invalid"),
        (Some("f"), Some(pos), Some(id)) => {
            let pos = pos.parse::<u64>().map_err(|_| "its position is invalid")?;
            let id = id
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or("its position is invalid")?;
            Ok(Position::Feed(FeedPosition { pos, id }))
        }
        _ => Err("it does not parse"),
    }
}

fn tag(payload: &[u8]) -> [u8; TAG_LEN] {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(payload)
        .finalize();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&digest[..TAG_LEN]);
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_bound_to_its_collection() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let pos = Position::Created(at, "part_a|b\nc".to_string());
        let cursor = encode("partners", &pos);
        assert_eq!(decode("partners", &cursor).unwrap(), pos);
        assert_eq!(
            decode("customers", &cursor),
            Err(Invalid("it belongs to another collection"))
        );

        let ev = encode("events", &Position::Id(42));
        assert_eq!(decode("events", &ev).unwrap(), Position::Id(42));

        let at = Position::Feed(FeedPosition {
            pos: 1 << 40,
            id: 7,
        });
        let feed = encode("changes", &at);
        assert_eq!(decode("changes", &feed).unwrap(), at);
        assert!(decode("changes", &ev).is_err());
    }

    #[test]
    fn tampered_or_garbage_cursors_are_rejected() {
        let cursor = encode("partners", &Position::Id(7));
        let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        bytes[0] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(&bytes);
        for bad in [
            "",
            "x",
            "!!!",
            "part_123",
            flipped.as_str(),
            &"A".repeat(5000),
        ] {
            assert!(decode("partners", bad).is_err(), "{bad}");
        }
        // A well-formed cursor with an impossible position still fails (its check is
        // recomputed here the way only this code does).
        for payload in [
            "partners\nt\n999999999999999999\nk",
            "partners\nt\n0\n",
            "partners\ni\n-3",
            "partners\nf\n-1\n3",
            "partners\nf\n5\n0",
            "partners\nq\n1",
        ] {
            let mut bytes = payload.as_bytes().to_vec();
            bytes.extend_from_slice(&tag(payload.as_bytes()));
            assert!(decode("partners", &URL_SAFE_NO_PAD.encode(bytes)).is_err());
        }
    }
}
