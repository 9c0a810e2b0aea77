//! The change log (`changes`): what [`crate::apply`] appends, and how the feed, history
//! and retention read and prune it.
//!
//! **Appending.** apply() locks and reads the stored state of the objects it is given
//! ([`lock_states`]) before writing, and hands [`record`] each row it created, changed or
//! marked deleted, with the state it wrote, in the order it wrote them. `record` appends
//! one change per row whose state differs (an identical one appends nothing), in one
//! statement, in the caller's transaction. Old values come from the locked read, so they
//! are what was replaced even when writers race; a row another transaction created while
//! this one waited for it has no locked state, and its old values are that creator's
//! logged state.
//!
//! **Feed order.** See `migrations/0007_changes.sql`: the feed is ordered by `(pos, id)`
//! and a reader returns only rows with `pos` below its snapshot's xmin, so no change can
//! commit later behind a position already returned; `pos` is raised to the object's
//! previous `pos` when that is higher, which keeps one object's changes in apply order.
//! [`read`] returns a page and, in the same snapshot, the visible head, so a reader that
//! filters by entity can move past changes it does not want.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, FromRow, PgConnection, PgPool, Row};

use crate::columns::{self, Col, SqlType};

crate::text_enum! {
    /// What a change did to its object (`changes.operation`).
    pub enum Operation {
        /// The object was stored for the first time.
        Created = "created",
        /// Its fields changed (a deleted object that reappears is `updated` too).
        Updated = "updated",
        /// It was marked deleted (its `deleted_at` is set).
        Deleted = "deleted",
    }
}

/// A place in the feed: after the change `(pos, id)`. Ordered as the feed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition {
    /// The change's `pos` (an xid8).
    pub pos: u64,
    /// The change's `id`.
    pub id: i64,
}

/// An object's typed state as stored: what a change's `state` and `fields` are made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<'a> {
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The entity's typed columns, in [`columns::of`] order.
    pub columns: Cow<'a, [Col]>,
}

impl Snapshot<'_> {
    /// The state as JSON: `key`, the typed columns as `/v1` names them, and
    /// `created_at`, `updated_at`, `deleted_at` (written as `/v1` writes them).
    pub fn to_json(&self, entity: Entity, key: &str) -> Value {
        let mut map = Map::new();
        map.insert("key".into(), Value::String(key.to_string()));
        for (column, value) in columns::of(entity).iter().zip(self.columns.iter()) {
            map.insert(
                columns::served_name(column.name).to_string(),
                col_json(value),
            );
        }
        for (name, at) in [
            ("created_at", self.created_at),
            ("updated_at", self.updated_at),
            ("deleted_at", self.deleted_at),
        ] {
            map.insert(name.into(), json_of(&at));
        }
        Value::Object(map)
    }
}

fn col_json(col: &Col) -> Value {
    match col {
        Col::Text(v) => json_of(v),
        Col::Int(v) => json_of(v),
        Col::Bool(v) => json_of(v),
        Col::Ts(v) => json_of(v),
        Col::Date(v) => json_of(v),
        Col::Json(v) => v.clone().unwrap_or(Value::Null),
    }
}

/// Serialises as the `/v1` rows do (serde), so both show a value the same way.
fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The select list of a [`Snapshot`] for a row aliased `t`: `created_at`, `updated_at`,
/// `deleted_at`, then the typed columns (see [`snapshot_of`]).
pub fn snapshot_sql(entity: Entity) -> &'static str {
    static SQL: LazyLock<HashMap<Entity, String>> = LazyLock::new(|| {
        Entity::ALL
            .into_iter()
            .map(|e| {
                let mut list = vec!["t.created_at", "t.updated_at", "t.deleted_at"];
                list.extend(columns::of(e).iter().map(|c| c.name));
                let list: Vec<String> = list
                    .iter()
                    .map(|c| {
                        if c.starts_with("t.") {
                            c.to_string()
                        } else {
                            format!("t.{c}")
                        }
                    })
                    .collect();
                (e, list.join(", "))
            })
            .collect()
    });
    SQL.get(&entity).map_or("", String::as_str)
}

/// Reads the [`snapshot_sql`] columns of `entity` starting at column `at` of `row`.
pub fn snapshot_of(
    row: &PgRow,
    entity: Entity,
    at: usize,
) -> Result<Snapshot<'static>, sqlx::Error> {
    let mut cols = Vec::with_capacity(columns::of(entity).len());
    for (i, column) in columns::of(entity).iter().enumerate() {
        let i = at + 3 + i;
        cols.push(match column.ty {
            SqlType::Text => Col::Text(row.try_get(i)?),
            SqlType::Int => Col::Int(row.try_get(i)?),
            SqlType::Bool => Col::Bool(row.try_get(i)?),
            SqlType::Ts => Col::Ts(row.try_get(i)?),
            SqlType::Date => Col::Date(row.try_get(i)?),
            SqlType::Json => Col::Json(row.try_get(i)?),
        });
    }
    Ok(Snapshot {
        created_at: row.try_get(at)?,
        updated_at: row.try_get(at + 1)?,
        deleted_at: row.try_get(at + 2)?,
        columns: Cow::Owned(cols),
    })
}

/// The stored states of objects, by entity and key, as [`lock_states`] found them.
#[derive(Debug, Default)]
pub struct States(HashMap<Entity, HashMap<String, Snapshot<'static>>>);

impl States {
    /// The state of `entity`'s object `key`, if it had a row.
    pub fn get(&self, entity: Entity, key: &str) -> Option<&Snapshot<'static>> {
        self.0.get(&entity)?.get(key)
    }

    fn insert(&mut self, entity: Entity, key: String, state: Snapshot<'static>) {
        self.0.entry(entity).or_default().insert(key, state);
    }
}

/// Locks the stored rows of `keys` (entity and key pairs; `FOR UPDATE`, in key order per
/// entity, entities in a fixed order) and returns their states, so the old values a
/// change records are what this transaction replaces. Keys without a row are absent. One
/// statement per entity present.
pub async fn lock_states<'a>(
    conn: &mut PgConnection,
    keys: impl Iterator<Item = (Entity, &'a str)>,
) -> Result<States, sqlx::Error> {
    let mut by_entity: HashMap<Entity, Vec<&str>> = HashMap::new();
    for (entity, key) in keys {
        by_entity.entry(entity).or_default().push(key);
    }
    let mut states = States::default();
    for entity in Entity::ALL {
        let Some(keys) = by_entity.get(&entity) else {
            continue;
        };
        let rows = crate::db::query(AssertSqlSafe(lock_sql(entity)))
            .bind(keys)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let key: String = row.try_get(0)?;
            states.insert(entity, key, snapshot_of(&row, entity, 1)?);
        }
    }
    Ok(states)
}

/// The statement [`lock_states`] runs for `entity` (`$1` the keys), built once (benchmarks
/// replay it with pgbench).
pub fn lock_sql(entity: Entity) -> &'static str {
    static SQL: LazyLock<HashMap<Entity, String>> = LazyLock::new(|| {
        Entity::ALL
            .into_iter()
            .map(|e| {
                let sql = format!(
                    "SELECT t.key, {} FROM {} t WHERE t.key = ANY($1) ORDER BY t.key FOR UPDATE",
                    snapshot_sql(e),
                    columns::table(e)
                );
                (e, sql)
            })
            .collect()
    });
    SQL.get(&entity).map_or("", String::as_str)
}

/// One row apply() wrote: its entity and key, whether it was inserted, and its state
/// after the write.
#[derive(Debug, Clone)]
pub struct Written<'a> {
    pub entity: Entity,
    pub key: &'a str,
    pub inserted: bool,
    pub state: Snapshot<'a>,
}

/// Appends one change per row in `written` (in that order) whose state differs from
/// the one before; `before` holds the states [`lock_states`] read. `source` is the
/// stored word of the observations' source; `client` the API client whose write they
/// answer, if any. Returns how many were appended.
pub async fn record(
    conn: &mut PgConnection,
    source: &str,
    client: Option<&str>,
    written: Vec<Written<'_>>,
    before: &States,
) -> Result<usize, sqlx::Error> {
    if written.is_empty() {
        return Ok(0);
    }
    // Rows created by another transaction while this one waited for them: their old
    // state is what that transaction logged.
    let mut seen = std::collections::HashSet::new();
    let raced: Vec<(Entity, &str)> = written
        .iter()
        .filter(|w| seen.insert((w.entity, w.key)))
        .filter(|w| !w.inserted && before.get(w.entity, w.key).is_none())
        .map(|w| (w.entity, w.key))
        .collect();
    let logged = if raced.is_empty() {
        HashMap::new()
    } else {
        latest_states(conn, &raced).await?
    };
    // How many more times each object is written in this batch: its state is kept for the
    // next write's old values only while one follows.
    let mut later: HashMap<(Entity, &str), usize> = HashMap::new();
    for w in &written {
        *later.entry((w.entity, w.key)).or_default() += 1;
    }
    let mut current: HashMap<(Entity, &str), Value> = HashMap::new();
    let mut rows = Rows::default();
    for w in written {
        let id = (w.entity, w.key);
        let new = w.state.to_json(w.entity, w.key);
        let old = match current.remove(&id) {
            Some(previous) => Some(previous),
            None if w.inserted => None,
            None => match before.get(w.entity, w.key) {
                Some(snapshot) => Some(snapshot.to_json(w.entity, w.key)),
                None => logged.get(&(w.entity, w.key.to_string())).cloned(),
            },
        };
        let more = later.get_mut(&id).map_or(0, |n| {
            *n -= 1;
            *n
        });
        // A creation's fields are its state (see `Rows::push`): nothing to compare.
        let change = match &old {
            None => Some((Operation::Created, Value::Object(Map::new()))),
            Some(old) => describe(Some(old), &new),
        };
        match (change, more) {
            (Some(change), 0) => rows.push(w.entity, w.key, change, new),
            (Some(change), _) => {
                rows.push(w.entity, w.key, change, new.clone());
                current.insert(id, new);
            }
            (None, 0) => {}
            (None, _) => {
                current.insert(id, new);
            }
        }
    }
    rows.insert(conn, source, client).await
}

/// Appends a deletion for each row a statement just marked deleted without changing its
/// content (`marked`: key and state after the mark).
pub async fn record_marked_deleted(
    conn: &mut PgConnection,
    source: &str,
    entity: Entity,
    marked: &[(String, Snapshot<'_>)],
) -> Result<usize, sqlx::Error> {
    let mut rows = Rows::default();
    for (key, state) in marked {
        let old = Snapshot {
            deleted_at: None,
            ..state.clone()
        };
        let new = state.to_json(entity, key);
        if let Some(change) = describe(Some(&old.to_json(entity, key)), &new) {
            rows.push(entity, key, change, new);
        }
    }
    rows.insert(conn, source, None).await
}

/// The operation and changed fields going from `old` (none: created) to `new`; `None`
/// when nothing differs.
pub fn describe(old: Option<&Value>, new: &Value) -> Option<(Operation, Value)> {
    let empty = Map::new();
    let new_map = new.as_object().unwrap_or(&empty);
    let old_map = old.and_then(Value::as_object).unwrap_or(&empty);
    let mut fields = Map::new();
    for (name, value) in new_map {
        if name == "key" {
            continue;
        }
        let was = old_map.get(name).unwrap_or(&Value::Null);
        if was != value {
            fields.insert(name.clone(), serde_json::json!({"old": was, "new": value}));
        }
    }
    let deleted = |m: &Map<String, Value>| m.get("deleted_at").is_some_and(|v| !v.is_null());
    let operation = match old {
        None => Operation::Created,
        Some(_) if deleted(new_map) && !deleted(old_map) => Operation::Deleted,
        Some(_) => Operation::Updated,
    };
    if old.is_some() && fields.is_empty() {
        return None;
    }
    Some((operation, Value::Object(fields)))
}

/// Changes gathered for one insert.
#[derive(Default)]
struct Rows<'a> {
    entities: Vec<&'static str>,
    keys: Vec<&'a str>,
    operations: Vec<Operation>,
    fields: Vec<Value>,
    states: Vec<Value>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, entity: Entity, key: &'a str, change: (Operation, Value), state: Value) {
        let (operation, fields) = change;
        self.entities.push(columns::table(entity));
        self.keys.push(key);
        self.operations.push(operation);
        // A creation's fields are every field of its state: stored once, in the state
        // (see `Change::fields`).
        self.fields.push(match operation {
            Operation::Created => Value::Object(Map::new()),
            _ => fields,
        });
        self.states.push(state);
    }

    async fn insert(
        self,
        conn: &mut PgConnection,
        source: &str,
        client: Option<&str>,
    ) -> Result<usize, sqlx::Error> {
        let n = self.keys.len();
        if n == 0 {
            return Ok(0);
        }
        crate::db::query(APPEND_SQL)
            .bind(source)
            .bind(client)
            .bind(self.entities)
            .bind(self.keys)
            .bind(self.operations)
            .bind(self.fields)
            .bind(self.states)
            .execute(&mut *conn)
            .await?;
        Ok(n)
    }
}

/// The append statement: `$1` source, `$2` the API client whose write it is (or NULL),
/// then arrays of entity, key, operation, fields and state, appended in array order. `pos` is this transaction's id, or the object's
/// previous `pos` if higher (the object's row is locked by this transaction, so its
/// previous change is committed and visible to this statement).
pub const APPEND_SQL: &str =
    "INSERT INTO changes (pos, entity, key, operation, source, client, fields, state)
     SELECT GREATEST(pg_current_xact_id(),
                     (SELECT c.pos FROM changes c WHERE c.entity = i.entity AND c.key = i.key
                      ORDER BY c.id DESC LIMIT 1)),
            i.entity, i.key, i.operation, $1, $2, i.fields, i.state
     FROM UNNEST($3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
          WITH ORDINALITY AS i(entity, key, operation, fields, state, n)
     ORDER BY i.n";

/// The last logged state of each object.
async fn latest_states(
    conn: &mut PgConnection,
    objects: &[(Entity, &str)],
) -> Result<HashMap<(Entity, String), Value>, sqlx::Error> {
    let entities: Vec<&str> = objects.iter().map(|(e, _)| columns::table(*e)).collect();
    let keys: Vec<&str> = objects.iter().map(|(_, k)| *k).collect();
    let rows: Vec<(String, String, Value)> = crate::db::query_as(
        "SELECT i.entity, i.key, c.state
         FROM UNNEST($1::text[], $2::text[]) AS i(entity, key)
         JOIN LATERAL (SELECT state FROM changes c WHERE c.entity = i.entity AND c.key = i.key
                       ORDER BY c.id DESC LIMIT 1) c ON TRUE",
    )
    .bind(entities)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(entity, key, state)| {
            Some(((columns::CollectionName::parse(&entity)?.0, key), state))
        })
        .collect())
}

/// One change as stored.
#[derive(Debug, Clone, FromRow)]
pub struct Change {
    pub id: i64,
    /// `pos` as text (xid8 has no binary decoding here).
    pub pos: String,
    pub at: DateTime<Utc>,
    pub entity: String,
    pub key: String,
    pub operation: Operation,
    /// The stored word (see `crate::apply::Source`).
    pub source: String,
    /// The API client whose write caused the change (source `write`).
    pub client: Option<String>,
    pub fields: Value,
    pub state: Value,
}

impl Change {
    /// The fields that changed, each `{"old", "new"}`: as stored, or for a creation (whose
    /// fields are not stored apart from its state) every field of the state with a value.
    pub fn fields(&self) -> Value {
        if self.operation != Operation::Created {
            return self.fields.clone();
        }
        describe(None, &self.state).map_or_else(|| Value::Object(Map::new()), |(_, f)| f)
    }

    /// The feed position right after this change.
    pub fn position(&self) -> Result<FeedPosition, sqlx::Error> {
        let pos = self
            .pos
            .parse()
            .map_err(|e| sqlx::Error::Decode(format!("changes.pos {:?}: {e}", self.pos).into()))?;
        Ok(FeedPosition { pos, id: self.id })
    }
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub struct Page {
    /// Up to `limit + 1` changes after the position, oldest first.
    pub changes: Vec<Change>,
    /// The last change visible to the read (whatever its entity), if any.
    pub head: Option<FeedPosition>,
    /// The pruning horizon as the read saw it: changes at or below it are gone.
    pub horizon: Option<FeedPosition>,
}

/// Changes after `after` (from the oldest kept when `None`), oldest first, at most
/// `limit + 1` (one more than asked, to tell whether more follow), of `entities` only
/// when given; and, in the same snapshot, the visible head.
pub async fn read(
    pool: &PgPool,
    after: Option<FeedPosition>,
    entities: Option<&[Entity]>,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    let after = after.unwrap_or(FeedPosition { pos: 0, id: 0 });
    let tables: Option<Vec<&str>> =
        entities.map(|list| list.iter().map(|e| columns::table(*e)).collect());
    let rows: Vec<PageRow> = crate::db::query_as(READ_SQL)
        .bind(after.pos.to_string())
        .bind(after.id)
        .bind(tables)
        .bind(limit + 1)
        .fetch_all(crate::db::atomic(pool))
        .await?;
    let mut head = None;
    let mut horizon = None;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        head = parse_position(row.head_pos.as_deref(), row.head_id)?;
        horizon = parse_position(row.horizon_pos.as_deref(), row.horizon_id)?;
        if let Some(change) = row.change() {
            changes.push(change);
        }
    }
    Ok(Page {
        changes,
        head,
        horizon,
    })
}

/// `$1` pos and `$2` id of the position, `$3` tables (NULL: all), `$4` how many. One row
/// even when no change follows (the head alone). Orders name `c.pos` (the xid8): a bare
/// `pos` would be the text of the select list, which sorts "900" after "1000".
const READ_SQL: &str = "SELECT h.pos::text AS head_pos, h.id AS head_id,
            hz.pos::text AS horizon_pos, hz.id AS horizon_id,
            c.id, c.pos::text AS pos, c.at, c.entity, c.key, c.operation, c.source, c.client,
            c.fields, c.state
     FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) s
     LEFT JOIN change_horizon hz ON TRUE
     LEFT JOIN LATERAL (SELECT pos, id FROM changes WHERE pos < s.xmin
                        ORDER BY pos DESC, id DESC LIMIT 1) h ON TRUE
     LEFT JOIN LATERAL (SELECT * FROM changes c
                        WHERE (c.pos, c.id) > ($1::text::xid8, $2) AND c.pos < s.xmin
                          AND ($3::text[] IS NULL OR c.entity = ANY($3))
                        ORDER BY c.pos, c.id LIMIT $4) c ON TRUE
     ORDER BY c.pos, c.id";

#[derive(FromRow)]
struct PageRow {
    head_pos: Option<String>,
    head_id: Option<i64>,
    horizon_pos: Option<String>,
    horizon_id: Option<i64>,
    id: Option<i64>,
    pos: Option<String>,
    at: Option<DateTime<Utc>>,
    entity: Option<String>,
    key: Option<String>,
    operation: Option<Operation>,
    source: Option<String>,
    client: Option<String>,
    fields: Option<Value>,
    state: Option<Value>,
}

impl PageRow {
    fn change(self) -> Option<Change> {
        Some(Change {
            id: self.id?,
            pos: self.pos?,
            at: self.at?,
            entity: self.entity?,
            key: self.key?,
            operation: self.operation?,
            source: self.source?,
            client: self.client,
            fields: self.fields?,
            state: self.state?,
        })
    }
}

/// A position from its stored parts (`pos` as text); `None` when either is NULL.
pub fn parse_position(
    pos: Option<&str>,
    id: Option<i64>,
) -> Result<Option<FeedPosition>, sqlx::Error> {
    match (pos, id) {
        (Some(pos), Some(id)) => pos
            .parse()
            .map(|pos| Some(FeedPosition { pos, id }))
            .map_err(|e| sqlx::Error::Decode(format!("feed position {pos:?}: {e}").into())),
        _ => Ok(None),
    }
}

/// The last change visible to a reader now (see [`read`]).
pub async fn head(pool: &PgPool) -> Result<Option<FeedPosition>, sqlx::Error> {
    let row: Option<(String, i64)> = crate::db::query_as(
        "SELECT c.pos::text, c.id FROM changes c
         WHERE c.pos < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY c.pos DESC, c.id DESC LIMIT 1",
    )
    .fetch_optional(crate::db::atomic(pool))
    .await?;
    match row {
        Some((pos, id)) => parse_position(Some(&pos), Some(id)),
        None => Ok(None),
    }
}

/// One object's changes, newest first: at most `limit + 1`, below `before` (a change id)
/// when given.
pub async fn history(
    pool: &PgPool,
    entity: Entity,
    key: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Change>, sqlx::Error> {
    crate::db::query_as(
        "SELECT id, pos::text AS pos, at, entity, key, operation, source, client, fields, state
         FROM changes WHERE entity = $1 AND key = $2 AND id < $3
         ORDER BY id DESC LIMIT $4",
    )
    .bind(columns::table(entity))
    .bind(key)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit + 1)
    .fetch_all(crate::db::atomic(pool))
    .await
}

/// Deletes up to `batch` of the oldest changes applied before `cutoff`, in feed order
/// (only a prefix of the feed, so the horizon stays exact), and moves the horizon past
/// them, in one transaction. Returns how many were deleted.
pub async fn prune(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    // One pruner at a time (replicas each run one); the others skip this round.
    let locked: Option<bool> =
        crate::db::query_scalar("SELECT true FROM change_horizon FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await?;
    if locked.is_none() {
        tx.rollback().await?;
        return Ok(0);
    }
    // The oldest visible changes in feed order; the prefix applied before the cutoff.
    let oldest: Vec<(String, i64, DateTime<Utc>)> = crate::db::query_as(
        "SELECT c.pos::text, c.id, c.at FROM changes c
         WHERE c.pos < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY c.pos, c.id LIMIT $1",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let Some((pos, id, _)) = oldest.iter().take_while(|(_, _, at)| *at < cutoff).last() else {
        tx.rollback().await?;
        return Ok(0);
    };
    let deleted = crate::db::query("DELETE FROM changes WHERE (pos, id) <= ($1::text::xid8, $2)")
        .bind(pos)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    crate::db::query("UPDATE change_horizon SET pos = $1::text::xid8, id = $2, pruned_at = now()")
        .bind(pos)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn describe_lists_changed_fields_with_old_and_new_values() {
        let old =
            json!({"key": "r", "reward_status": "pending", "amount": 100, "deleted_at": null});
        let new =
            json!({"key": "r", "reward_status": "approved", "amount": 100, "deleted_at": null});
        let (op, fields) = describe(Some(&old), &new).unwrap();
        assert_eq!(op, Operation::Updated);
        assert_eq!(
            fields,
            json!({"reward_status": {"old": "pending", "new": "approved"}})
        );
        assert!(describe(Some(&new), &new).is_none(), "identical: no change");

        let (op, fields) = describe(None, &new).unwrap();
        assert_eq!(op, Operation::Created);
        assert_eq!(
            fields,
            json!({"reward_status": {"old": null, "new": "approved"}, "amount": {"old": null, "new": 100}})
        );

        let gone = json!({"key": "r", "reward_status": "approved", "amount": 100, "deleted_at": "2024-01-01T00:00:00Z"});
        assert_eq!(describe(Some(&new), &gone).unwrap().0, Operation::Deleted);
        assert_eq!(describe(Some(&gone), &new).unwrap().0, Operation::Updated);
    }

    #[test]
    fn state_names_columns_as_the_api_serves_them() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_000).unwrap();
        let group = Snapshot {
            created_at: Some(at),
            updated_at: None,
            deleted_at: None,
            columns: Cow::Owned(
                crate::columns::GroupColumns {
                    name: Some("Gold".into()),
                    is_default: Some(true),
                    ..Default::default()
                }
                .into_values(),
            ),
        };
        let json = group.to_json(Entity::Group, "grp_1");
        assert_eq!(json["key"], "grp_1");
        assert_eq!(json["default"], true);
        assert!(json.get("is_default").is_none());
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["updated_at"], Value::Null);
        assert!(
            snapshot_sql(Entity::Group)
                .starts_with("t.created_at, t.updated_at, t.deleted_at, t.name")
        );
    }
}
