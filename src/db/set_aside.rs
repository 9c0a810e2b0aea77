//! Objects set aside (`set_aside`, `migrations/0011_set_aside.sql`): what the copy could
//! not take, kept with its error so that the rest of its page, batch or write goes on.
//!
//! The one door's callers (reconcile pages, the webhook applier, the write worker) set an
//! object aside when it does not read or when the database refuses it
//! ([`crate::apply::apply_or_set_aside`]). It is tried again whenever it is seen again,
//! and its row is deleted once a version of it applies. `/v1/sync`, the status page and
//! `psync_set_aside_objects` show what is set aside.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

use crate::columns::Source;

/// One object the copy refused.
#[derive(Debug, Clone)]
pub struct Refused<'a> {
    pub entity: Entity,
    /// PartnerStack's key of the object.
    pub key: &'a str,
    pub error: String,
    /// The object as received.
    pub raw: &'a Value,
}

/// Records refused objects (seen from `source`), in `conn`'s transaction: a new row, or
/// the existing one with the new error, object and time, counted once more. An object
/// whose key holds a NUL cannot be recorded (Postgres text cannot hold it) and is left
/// out; the caller has logged it.
pub async fn record(
    conn: &mut PgConnection,
    source: Source,
    refused: &[Refused<'_>],
) -> Result<(), sqlx::Error> {
    // One row per object (a statement cannot upsert one row twice): the last wins.
    let mut rows: HashMap<(&str, &str), (String, String)> = HashMap::new();
    for r in refused.iter().filter(|r| !r.key.contains('\0')) {
        // JSON text escapes a NUL, so any object can be kept; an error text cannot hold one.
        let raw = serde_json::to_string(r.raw).unwrap_or_default();
        rows.insert(
            (r.entity.stream(), r.key),
            (r.error.replace('\0', "\\u0000"), raw),
        );
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut streams = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    let mut errors = Vec::with_capacity(rows.len());
    let mut raws = Vec::with_capacity(rows.len());
    for ((stream, key), (error, raw)) in rows {
        streams.push(stream);
        keys.push(key);
        errors.push(error);
        raws.push(raw);
    }
    crate::db::query(
        "INSERT INTO set_aside AS s (stream, key, source, error, raw)
         SELECT stream, key, $1, error, raw
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) AS i(stream, key, error, raw)
         ON CONFLICT (stream, key) DO UPDATE SET
             source = EXCLUDED.source, error = EXCLUDED.error, raw = EXCLUDED.raw,
             last_seen = now(), times = s.times + 1",
    )
    .bind(source.as_str())
    .bind(streams)
    .bind(keys)
    .bind(errors)
    .bind(raws)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets the objects `(entity, key)` (a version of each applied), in `conn`'s
/// transaction.
pub async fn forget<'a>(
    conn: &mut PgConnection,
    applied: impl IntoIterator<Item = (Entity, &'a str)>,
) -> Result<(), sqlx::Error> {
    let (streams, keys): (Vec<&str>, Vec<&str>) = applied
        .into_iter()
        .map(|(entity, key)| (entity.stream(), key))
        .unzip();
    if keys.is_empty() {
        return Ok(());
    }
    crate::db::query(
        "DELETE FROM set_aside s USING UNNEST($1::text[], $2::text[]) AS a(stream, key)
         WHERE s.stream = a.stream AND s.key = a.key",
    )
    .bind(streams)
    .bind(keys)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Objects set aside per stream (streams with none are left out).
pub async fn counts(pool: &PgPool) -> Result<HashMap<Entity, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        crate::db::query_as("SELECT stream, count(*) FROM set_aside GROUP BY stream")
            .fetch_all(crate::db::atomic(pool))
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(stream, n)| Some((Entity::from_stream(&stream)?, n)))
        .collect())
}

/// An object set aside, as `/v1/sync` lists it (without the object itself: it is in the
/// `set_aside` table).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct SetAsideObject {
    /// Its stream (`transactions`, `customers`, ...).
    pub stream: String,
    /// PartnerStack's key of the object.
    pub key: String,
    /// Where it was last seen: a list page (`reconcile`), a delivery (`webhook`) or
    /// PartnerStack's answer to a write (`write`).
    pub source: Source,
    /// Why the copy refused it, the last time.
    pub error: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Times it was refused.
    pub times: i64,
}

/// The `limit` objects set aside most recently, newest first.
pub async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<SetAsideObject>, sqlx::Error> {
    crate::db::query_as(
        "SELECT stream, key, source, error, first_seen AS first_seen_at,
                last_seen AS last_seen_at, times
         FROM set_aside ORDER BY last_seen DESC, stream, key LIMIT $1",
    )
    .bind(limit)
    .fetch_all(crate::db::atomic(pool))
    .await
}
