//! The one door into the entity tables.
//!
//! Webhook payloads and reconciler pages both become [`Observation`]s (one object as seen
//! at one source time) and reach the tables only through [`apply`]. A row is replaced only
//! by a newer observation: newer `updated_at` (else `created_at`), or the same source time
//! with different typed content. Deletions stick:
//! - an object that says it is archived (any kind, any source) is a deletion;
//! - a deletion made on evidence (a delete event, an archived flag, PartnerStack answering
//!   that the object is gone) is undone only by a sighting of the live object whose source
//!   time is after the deletion's (`undeleted_after`: the deletion's own source time, or,
//!   for one without any, when it was learned): lists can keep archived objects without a
//!   flag, so an unflagged sighting that is not newer is not news. A sighting newer than
//!   the stored state but not than the deletion still brings its content; the row stays
//!   deleted;
//! - a deletion a full scan inferred from not listing the object (`undeleted_after`
//!   NULL) is undone by a newer observation, or by a reconcile page at the same source
//!   time (the scan may have missed the object);
//! - a deletion without any source time marks the stored row deleted and keeps its
//!   content.
//!
//! Repeats and reorderings therefore cannot regress data, and the same call serves a
//! single delivery or a 250-object page: one statement per table, rows bound as arrays
//! and expanded with `UNNEST`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use partnerstack::models::{
    self, Customer, Deal, Group, Lead, Meta, Object, Partnership, Ref, Reward, Transaction,
};
use partnerstack::{Entity, wire};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use crate::columns::{
    self, Col, Column, CustomerColumns, DealColumns, GroupColumns, LeadColumns, PartnerColumns,
    RewardColumns, SqlType, TransactionColumns,
};
use crate::db::changes::{self, Snapshot};
use crate::db::{attribution, set_aside};

pub use crate::columns::Source;

/// One object as seen at one source time.
#[derive(Debug, Clone)]
pub struct Observation {
    pub entity: Entity,
    pub key: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The observation carries a deletion (a `*_deleted` event).
    pub deleted: bool,
    /// The entity's typed columns, in [`columns::of`] order.
    pub columns: Vec<Col>,
    pub raw: Value,
}

impl Observation {
    /// Reads `object` as an `entity`. Errors say which field was wrong and why.
    /// An object that says it is archived is a deletion, whatever its kind and wherever
    /// it was seen: PartnerStack archives what it "deletes" (`customer_deleted` means
    /// archived), and a list or a fetch may still show it.
    pub fn parse(entity: Entity, object: Value, deleted: bool) -> Result<Observation, String> {
        let deleted = deleted || archived(&object) == Some(true);
        match entity {
            Entity::Partner => build::<Partnership>(object, deleted, partner_columns),
            Entity::Customer => build::<Customer>(object, deleted, customer_columns),
            Entity::Transaction => build::<Transaction>(object, deleted, transaction_columns),
            Entity::Reward => build::<Reward>(object, deleted, reward_columns),
            Entity::Group => build::<Group>(object, deleted, group_columns),
            Entity::Deal => build::<Deal>(object, deleted, deal_columns),
            Entity::Lead => build::<Lead>(object, deleted, lead_columns),
        }
    }

    /// A typed column's value, by name.
    pub fn column(&self, name: &str) -> Option<&Col> {
        let at = columns::of(self.entity)
            .iter()
            .position(|c| c.name == name)?;
        self.columns.get(at)
    }

    /// The source time that orders observations of one object.
    pub fn observed_at(&self) -> Option<DateTime<Utc>> {
        self.updated_at.or(self.created_at)
    }
}

/// What an object's `archived` flag says: `None` when it carries none (or one that does
/// not read), which says nothing either way.
pub fn archived(object: &Value) -> Option<bool> {
    object
        .get("archived")
        .and_then(|a| wire::parse_bool(a).ok().flatten())
}

/// PartnerStack keys are short; a longer one is not a key.
const MAX_KEY_LEN: usize = 255;

/// The largest magnitude an integer column (amounts in cents) is stored with: 2^53 - 1,
/// the largest integer every JSON reader keeps exactly (JavaScript's `Number`). The copy
/// serves what it stores as JSON, so a larger value would reach some readers changed; no
/// real amount comes near it (PartnerStack documents about ±5e10 cents).
pub const MAX_EXACT_INTEGER: i64 = (1 << 53) - 1;

fn build<T: Object>(
    object: Value,
    deleted: bool,
    columns: fn(&T) -> Vec<Col>,
) -> Result<Observation, String> {
    if contains_nul(&object) {
        // Postgres text and jsonb cannot hold U+0000.
        return Err("the object contains a NUL (\\u0000) character".into());
    }
    let typed: T = models::read(&object)?;
    let meta: &Meta = typed.meta();
    let key = meta
        .identity()
        .ok_or_else(|| format!("the {} has no `key`", T::ENTITY.name()))?
        .to_string();
    if key.len() > MAX_KEY_LEN {
        return Err(format!("the key is longer than {MAX_KEY_LEN} bytes"));
    }
    let columns = columns(&typed);
    for (value, column) in columns.iter().zip(columns::of(T::ENTITY)) {
        if let Col::Int(Some(n)) = value
            && n.unsigned_abs() > MAX_EXACT_INTEGER.unsigned_abs()
        {
            return Err(format!(
                "field `{}`: {n} is out of range (the copy keeps integers within \
                 ±{MAX_EXACT_INTEGER}, which every JSON reader reads exactly)",
                column.name
            ));
        }
    }
    Ok(Observation {
        entity: T::ENTITY,
        key,
        created_at: meta.created_at,
        updated_at: meta.updated_at,
        deleted,
        columns,
        raw: object,
    })
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

// How each wire model fills its table's columns. Struct literals: a column declared in
// `columns` but not filled here does not compile.

fn partner_columns(p: &Partnership) -> Vec<Col> {
    PartnerColumns {
        partner_key: p.partner_key.clone(),
        email: p.email.clone(),
        first_name: p.first_name.clone(),
        last_name: p.last_name.clone(),
        name: p.name.clone(),
        group_key: Ref::key_of(&p.group).or_else(|| p.group_key.clone()),
        group_name: p.group.as_ref().and_then(|g| g.name.clone()),
        team_key: Ref::key_of(&p.team),
        tags: p.tags.clone().filter(|t| !t.is_null()),
        joined_at: p.joined_at,
    }
    .into_values()
}

fn customer_columns(c: &Customer) -> Vec<Col> {
    CustomerColumns {
        customer_key: c.customer_key.clone(),
        email: c.email.clone(),
        name: c.name.clone(),
        partner_key: c.partner_key.clone(),
        partnership_key: c.partnership_key.clone(),
        provider_key: c.provider_key.clone(),
        source_key: c.source_key.clone(),
        source_type: c.source_type.clone(),
        test: c.test,
    }
    .into_values()
}

fn transaction_columns(t: &Transaction) -> Vec<Col> {
    let approved = t.is_approved();
    let status = t
        .status
        .clone()
        .map(|s| s.to_ascii_lowercase())
        .or_else(|| approved.map(|a| if a { "approved" } else { "pending" }.to_string()));
    TransactionColumns {
        amount: t.amount,
        amount_usd: t.amount_usd,
        currency: t.currency.as_ref().map(|c| c.to_ascii_uppercase()),
        approved,
        archived: t.archived,
        status,
        customer_key: t.customer_key.clone().or_else(|| Ref::key_of(&t.customer)),
        customer_external_key: t.customer.as_ref().and_then(|c| c.external_key.clone()),
        partner_key: t.partner_key.clone(),
        category_key: t.category_key.clone(),
        product_key: t.product_key.clone(),
        test: t.test,
    }
    .into_values()
}

fn reward_columns(r: &Reward) -> Vec<Col> {
    let status = r.reward_status.clone().or_else(|| r.status.clone());
    RewardColumns {
        amount: r.amount,
        currency: r.currency.as_ref().map(|c| c.to_ascii_uppercase()),
        description: r.description.clone(),
        reward_status: status.map(|s| s.to_ascii_lowercase()),
        partnership_key: Ref::key_of(&r.partnership).or_else(|| r.partnership_key.clone()),
        partner_key: r
            .partner_key
            .clone()
            .or_else(|| r.partnership.as_ref().and_then(|p| p.partner_key.clone())),
        customer_key: Ref::key_of(&r.customer),
        customer_external_key: r.customer.as_ref().and_then(|c| c.external_key.clone()),
        transaction_key: Ref::key_of(&r.transaction),
    }
    .into_values()
}

fn group_columns(g: &Group) -> Vec<Col> {
    GroupColumns {
        name: g.name.clone(),
        slug: g.slug.clone(),
        is_default: g.default,
        archived: g.archived,
    }
    .into_values()
}

fn deal_columns(d: &Deal) -> Vec<Col> {
    DealColumns {
        account_name: d.account_name.clone(),
        amount: d.amount,
        close_date: d.close_date,
        external_key: d.external_key.clone(),
        group_key: d.group_key.clone(),
        partner_key: d.partner_key.clone(),
        customer_key: d.customer_key.clone(),
        stage: d.stage.clone(),
        deal_source: d.source.clone(),
        lost_reason: d.lost_reason.clone(),
    }
    .into_values()
}

fn lead_columns(l: &Lead) -> Vec<Col> {
    LeadColumns {
        amount: l.amount,
        approved: l.approved,
        external_key: l.external_key.clone(),
        group_key: l.group_key.clone(),
        partner_key: l.partner_key.clone(),
        status: l.status.clone(),
    }
    .into_values()
}

/// What [`apply`] did with one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The row did not exist and was created.
    Inserted,
    /// The row existed and was replaced.
    Updated,
    /// The stored row was as new or newer, with the same content: nothing changed.
    Stale,
}

impl Applied {
    pub fn changed(self) -> bool {
        self != Applied::Stale
    }
}

/// Applies observations, returning what happened to each, in input order.
///
/// Runs one statement per table (more only when one batch holds several observations of
/// the same object, which are then applied in source-time order). The caller owns the
/// transaction, so a page and its checkpoint, or deliveries and their outcomes, commit
/// together.
pub async fn apply(
    conn: &mut PgConnection,
    source: Source,
    observations: &[Observation],
) -> Result<Vec<Applied>, sqlx::Error> {
    apply_by(conn, source, None, observations).await
}

async fn apply_by(
    conn: &mut PgConnection,
    source: Source,
    client: Option<&str>,
    observations: &[Observation],
) -> Result<Vec<Applied>, sqlx::Error> {
    // Writers of a customer and of its transactions take turns (see db::attribution).
    attribution::lock_identities(conn, &customer_identities(observations)).await?;
    // A customer whose own key changes takes its credit away from the transactions that
    // named the old key: remember the stored keys before they are overwritten.
    let previous_keys = stored_customer_keys(conn, observations).await?;
    // The change log: lock the stored rows and keep their states (the old values).
    let before = changes::lock_states(
        conn,
        observations.iter().map(|o| (o.entity, o.key.as_str())),
    )
    .await?;
    let mut written = Vec::new();
    let mut results = vec![Applied::Stale; observations.len()];
    for round in rounds(observations) {
        let entity = observations[round[0]].entity;
        let batch: Vec<&Observation> = round.iter().map(|&i| &observations[i]).collect();
        let mut changed = upsert(conn, entity, source, &batch).await?;
        for i in round {
            let key = observations[i].key.as_str();
            if let Some((inserted, state)) = changed.remove(key) {
                results[i] = if inserted {
                    Applied::Inserted
                } else {
                    Applied::Updated
                };
                written.push(changes::Written {
                    entity,
                    key,
                    inserted,
                    state,
                });
            }
        }
    }
    // One change per row written, in the order written, in this transaction.
    changes::record(conn, source.as_str(), client, written, &before).await?;
    // Keep partner attribution current: transactions are credited as they are written
    // (see upsert_sql); the transactions of changed customers are credited again here, in
    // the same transaction.
    let changed_customers = || {
        observations
            .iter()
            .zip(&results)
            .filter(|(o, r)| o.entity == Entity::Customer && r.changed())
            .map(|(o, _)| o)
    };
    let customers: Vec<&str> = changed_customers().map(|o| o.key.as_str()).collect();
    let mut customer_keys: Vec<&str> = changed_customers()
        .filter_map(|o| match o.column("customer_key") {
            Some(Col::Text(Some(k))) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    customer_keys.extend(
        changed_customers()
            .filter_map(|o| previous_keys.get(o.key.as_str()))
            .map(String::as_str),
    );
    attribution::credit(conn, &[], &customers, &customer_keys).await?;
    Ok(results)
}

/// What [`apply_or_set_aside`] did with one observation: applied (how), or set aside
/// because the database refused it (why).
pub type Taken = Result<Applied, String>;

/// [`apply`], except that an observation the database refuses is set aside
/// ([`set_aside`]) with its error while the others apply: one object cannot stop its page,
/// its batch or its write. Every caller of the one door goes through here. `client`: the
/// API client whose write PartnerStack answered (source `write`), whom the change log
/// names on the changes it causes.
///
/// The observations are applied in a savepoint; when the database refuses them for their
/// data (not for a passing reason: that is returned as an error), the savepoint is rolled
/// back and they are tried again in halves, until each refused one stands alone. One
/// refused object costs a few statements; none costs one savepoint. The objects that
/// applied are removed from the set-aside list, in the same transaction.
pub async fn apply_or_set_aside(
    conn: &mut PgConnection,
    source: Source,
    client: Option<&str>,
    observations: &[Observation],
) -> Result<Vec<Taken>, sqlx::Error> {
    let mut taken: Vec<Taken> = vec![Ok(Applied::Stale); observations.len()];
    let mut refused = Vec::new();
    // Ranges of observations to try, each in a savepoint: the whole, then halves.
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    parts.push(0..observations.len());
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        let mut savepoint = conn.begin().await?;
        match apply_by(&mut savepoint, source, client, &observations[part.clone()]).await {
            Ok(results) => {
                savepoint.commit().await?;
                for (slot, result) in taken[part].iter_mut().zip(results) {
                    *slot = Ok(result);
                }
            }
            Err(e) if crate::db::is_transient_error(&e) => return Err(e),
            Err(e) => {
                savepoint.rollback().await?;
                if part.len() == 1 {
                    refused.push((part.start, e.to_string()));
                } else {
                    let middle = part.start + part.len() / 2;
                    parts.push(middle..part.end);
                    parts.push(part.start..middle);
                }
            }
        }
    }
    let applied = observations
        .iter()
        .zip(&taken)
        .filter(|(_, t)| t.is_ok())
        .map(|(o, _)| (o.entity, o.key.as_str()));
    set_aside::forget(conn, applied).await?;
    if !refused.is_empty() {
        let records: Vec<set_aside::Refused> = refused
            .iter()
            .map(|(i, error)| {
                let o = &observations[*i];
                tracing::warn!(
                    stream = o.entity.stream(),
                    %error,
                    "the database refused an object; set aside, the rest goes on"
                );
                set_aside::Refused {
                    entity: o.entity,
                    key: &o.key,
                    error: format!("the database refused it: {error}"),
                    raw: &o.raw,
                }
            })
            .collect();
        set_aside::record(conn, source, &records).await?;
        for (i, error) in refused {
            taken[i] = Err(error);
        }
    }
    Ok(taken)
}

/// The customer identities whose credits `observations` can change: each customer's
/// PartnerStack key and company key, and the customer each transaction names.
fn customer_identities(observations: &[Observation]) -> Vec<&str> {
    fn text<'a>(o: &'a Observation, name: &str) -> Option<&'a str> {
        match o.column(name) {
            Some(Col::Text(Some(v))) => Some(v.as_str()),
            _ => None,
        }
    }
    let mut identities = Vec::new();
    for o in observations {
        match o.entity {
            Entity::Customer => {
                identities.push(o.key.as_str());
                identities.extend(text(o, "customer_key"));
            }
            Entity::Transaction => {
                identities.extend(text(o, "customer_key"));
                identities.extend(text(o, "customer_external_key"));
            }
            _ => {}
        }
    }
    identities
}

/// The company keys (`customer_key`) stored for the customers among `observations`, by
/// PartnerStack key; one index probe per customer, none when there are no customers.
async fn stored_customer_keys(
    conn: &mut PgConnection,
    observations: &[Observation],
) -> Result<HashMap<String, String>, sqlx::Error> {
    let keys: Vec<&str> = observations
        .iter()
        .filter(|o| o.entity == Entity::Customer)
        .map(|o| o.key.as_str())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> = crate::db::query_as(
        "SELECT key, customer_key FROM customers WHERE key = ANY($1) AND customer_key IS NOT NULL",
    )
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Groups observation indices into statements: one entity each, each key at most once
/// (Postgres refuses to upsert one row twice in a statement), oldest observations first.
fn rounds(observations: &[Observation]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..observations.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&observations[a], &observations[b]);
        (x.entity, &x.key, x.observed_at(), a).cmp(&(y.entity, &y.key, y.observed_at(), b))
    });
    // Position of each observation among those of the same object: round number.
    let mut rounds: Vec<(Entity, usize, Vec<usize>)> = Vec::new();
    let mut previous: Option<(Entity, &str)> = None;
    let mut depth = 0;
    for i in order {
        let o = &observations[i];
        depth = if previous == Some((o.entity, o.key.as_str())) {
            depth + 1
        } else {
            0
        };
        previous = Some((o.entity, o.key.as_str()));
        match rounds
            .iter_mut()
            .find(|(e, d, _)| *e == o.entity && *d == depth)
        {
            Some((_, _, members)) => members.push(i),
            None => rounds.push((o.entity, depth, vec![i])),
        }
    }
    rounds.sort_by_key(|(e, d, _)| (*d, *e));
    rounds.into_iter().map(|(_, _, members)| members).collect()
}

/// Column values gathered across a batch, ready to bind as one array each (borrowed
/// from the observations: nothing is copied before encoding).
enum Array<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Ts(Vec<Option<DateTime<Utc>>>),
    Date(Vec<Option<NaiveDate>>),
    Json(Vec<Option<&'a Value>>),
}

impl<'a> Array<'a> {
    fn for_type(ty: SqlType, capacity: usize) -> Array<'a> {
        match ty {
            SqlType::Text => Array::Text(Vec::with_capacity(capacity)),
            SqlType::Int => Array::Int(Vec::with_capacity(capacity)),
            SqlType::Bool => Array::Bool(Vec::with_capacity(capacity)),
            SqlType::Ts => Array::Ts(Vec::with_capacity(capacity)),
            SqlType::Date => Array::Date(Vec::with_capacity(capacity)),
            SqlType::Json => Array::Json(Vec::with_capacity(capacity)),
        }
    }

    fn push(&mut self, col: &'a Col) {
        match (self, col) {
            (Array::Text(v), Col::Text(x)) => v.push(x.as_deref()),
            (Array::Int(v), Col::Int(x)) => v.push(*x),
            (Array::Bool(v), Col::Bool(x)) => v.push(*x),
            (Array::Ts(v), Col::Ts(x)) => v.push(*x),
            (Array::Date(v), Col::Date(x)) => v.push(*x),
            (Array::Json(v), Col::Json(x)) => v.push(x.as_ref()),
            // Values are generated from the same declaration as the column types.
            _ => unreachable!("a column's value does not have its declared type"),
        }
    }
}

/// Upserts one batch of one entity (distinct keys). Returns the keys whose rows changed,
/// each with whether it was inserted and the row's state after the write.
async fn upsert<'a>(
    conn: &mut PgConnection,
    entity: Entity,
    source: Source,
    batch: &[&'a Observation],
) -> Result<HashMap<String, (bool, Snapshot<'a>)>, sqlx::Error> {
    // A deletion without a source time cannot be ordered against other observations:
    // it marks a live stored row deleted and leaves its content alone (the upsert below
    // only inserts such an object when no row exists).
    let mut changed = HashMap::new();
    let bare: Vec<&str> = batch
        .iter()
        .filter(|o| o.deleted && o.observed_at().is_none())
        .map(|o| o.key.as_str())
        .collect();
    if !bare.is_empty() {
        mark_deleted_now(conn, entity, source, &bare, &mut changed).await?;
    }

    let n = batch.len();
    let mut keys = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut observed = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    let mut arrays: Vec<Array> = columns::of(entity)
        .iter()
        .map(|c| Array::for_type(c.ty, n))
        .collect();
    for o in batch {
        keys.push(o.key.as_str());
        created.push(o.created_at);
        updated.push(o.updated_at);
        observed.push(o.observed_at());
        deleted.push(o.deleted);
        raw.push(&o.raw);
        for (array, col) in arrays.iter_mut().zip(&o.columns) {
            array.push(col);
        }
    }

    type Returned = (String, bool, DateTime<Utc>, Option<DateTime<Utc>>);
    let mut query = crate::db::query_as::<Returned>(AssertSqlSafe(upsert_sql_for(entity)))
        .bind(source.as_str())
        .bind(keys)
        .bind(created)
        .bind(updated)
        .bind(observed)
        .bind(deleted)
        .bind(raw);
    for array in arrays {
        query = match array {
            Array::Text(v) => query.bind(v),
            Array::Int(v) => query.bind(v),
            Array::Bool(v) => query.bind(v),
            Array::Ts(v) => query.bind(v),
            Array::Date(v) => query.bind(v),
            Array::Json(v) => query.bind(v),
        };
    }
    let rows = query.fetch_all(&mut *conn).await?;
    if !bare.is_empty() {
        // Deletions without a source time of their own are evidence as of now: only a
        // sighting made later undoes them. (A row a scan had marked is now known deleted;
        // its mark does not change, so the change log shows nothing.)
        crate::db::query(AssertSqlSafe(format!(
            "UPDATE {} SET undeleted_after = GREATEST(undeleted_after, now())
             WHERE key = ANY($1) AND deleted_at IS NOT NULL",
            columns::table(entity)
        )))
        .bind(&bare)
        .execute(&mut *conn)
        .await?;
    }
    // The row now holds the observation's columns, with the times the statement chose.
    let by_key: HashMap<&str, &'a Observation> =
        batch.iter().map(|o| (o.key.as_str(), *o)).collect();
    for (key, inserted, created_at, deleted_at) in rows {
        if let Some(o) = by_key.get(key.as_str()) {
            let state = Snapshot {
                created_at: Some(created_at),
                updated_at: o.updated_at,
                deleted_at,
                columns: Cow::Borrowed(&o.columns),
            };
            changed.insert(key, (inserted, state));
        }
    }
    Ok(changed)
}

/// Marks the live stored rows of `keys` deleted now (deletions without a source time),
/// leaving their content alone; each row marked goes into `changed`, not inserted.
async fn mark_deleted_now<'a>(
    conn: &mut PgConnection,
    entity: Entity,
    source: Source,
    keys: &[&str],
    changed: &mut HashMap<String, (bool, Snapshot<'a>)>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "UPDATE {} AS t SET deleted_at = now(), source = $1, synced_at = now()
         WHERE key = ANY($2) AND deleted_at IS NULL RETURNING t.key, {}",
        columns::table(entity),
        changes::snapshot_sql(entity)
    );
    let marked = crate::db::query(AssertSqlSafe(sql))
        .bind(source.as_str())
        .bind(keys)
        .fetch_all(&mut *conn)
        .await?;
    for row in marked {
        let state = changes::snapshot_of(&row, entity, 1)?;
        changed.insert(row.try_get(0)?, (false, state));
    }
    Ok(())
}

/// The upsert statement [`apply`] runs for `entity`, built once (benchmarks replay it with
/// pgbench).
pub fn upsert_sql_for(entity: Entity) -> &'static str {
    static SQL: LazyLock<HashMap<Entity, String>> = LazyLock::new(|| {
        Entity::ALL
            .into_iter()
            .map(|entity| {
                let sql = upsert_sql(columns::table(entity), columns::of(entity));
                (entity, sql)
            })
            .collect()
    });
    SQL.get(&entity).map_or("", String::as_str)
}

/// The upsert statement for a table with the given typed columns. `$1` is the source,
/// `$2..$7` the bookkeeping arrays (key, created_at, updated_at, observed_at, deleted,
/// raw), then one array per typed column in order. It returns each changed row's key,
/// whether it was inserted, and the `created_at` and `deleted_at` it chose (the change
/// log records them).
fn upsert_sql(table: &str, columns: &[Column]) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let mut params = vec![
        "$2::text[]".to_string(),
        "$3::timestamptz[]".to_string(),
        "$4::timestamptz[]".to_string(),
        "$5::timestamptz[]".to_string(),
        "$6::boolean[]".to_string(),
        "$7::jsonb[]".to_string(),
    ];
    for (i, column) in columns.iter().enumerate() {
        params.push(format!("${}::{}[]", i + 8, column.ty.cast()));
    }
    let list = names.join(", ");
    // Columns the service derives while writing (partner attribution of transactions).
    let derived = attribution::derived_columns(table, "i");
    let join = derived.as_ref().map_or(String::new(), |d| d.join.clone());
    let derived_select: String = derived
        .iter()
        .flat_map(|d| &d.columns)
        .map(|(name, expr)| format!(", {expr} AS {name}"))
        .collect();
    let derived_names: String = derived
        .iter()
        .flat_map(|d| &d.columns)
        .map(|(name, _)| format!(", {name}"))
        .collect();
    let derived_sets: String = derived
        .iter()
        .flat_map(|d| &d.columns)
        .map(|(name, _)| format!(", {name} = EXCLUDED.{name}"))
        .collect();
    let excluded = |prefix: &str| {
        names
            .iter()
            .map(|n| format!("{prefix}.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sets: String = names
        .iter()
        .map(|n| format!(", {n} = EXCLUDED.{n}"))
        .collect();
    format!(
        "WITH input AS (
            SELECT * FROM UNNEST({params})
                AS i(key, created_at, updated_at, observed_at, deleted, raw, {list})
        ), rows AS (
            SELECT i.*, COALESCE(i.created_at, t.created_at, now()) AS created_final{derived_select}
            FROM input i LEFT JOIN {table} t ON t.key = i.key {join}
        )
        INSERT INTO {table} AS t
            (key, created_at, updated_at, observed_at, deleted_at, undeleted_after, raw, source,
             synced_at, {list}{derived_names})
        SELECT key, created_final, updated_at, observed_at,
               CASE WHEN deleted THEN now() END, CASE WHEN deleted THEN COALESCE(observed_at, now()) END,
               raw, $1, now(), {list}{derived_names}
        FROM rows
        ON CONFLICT (key) DO UPDATE SET
            created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at,
            observed_at = EXCLUDED.observed_at,
            deleted_at = CASE
                WHEN EXCLUDED.deleted_at IS NOT NULL THEN COALESCE(t.deleted_at, EXCLUDED.deleted_at)
                WHEN {stays_deleted} THEN t.deleted_at
                END,
            undeleted_after = CASE
                WHEN EXCLUDED.deleted_at IS NOT NULL
                    THEN GREATEST(t.undeleted_after, EXCLUDED.undeleted_after)
                WHEN {stays_deleted} THEN t.undeleted_after
                END,
            raw = EXCLUDED.raw,
            source = EXCLUDED.source,
            synced_at = EXCLUDED.synced_at{sets}{derived_sets}
        WHERE (EXCLUDED.observed_at > t.observed_at
           OR (t.observed_at IS NULL AND EXCLUDED.observed_at IS NOT NULL)
           OR (EXCLUDED.observed_at IS NOT DISTINCT FROM t.observed_at
               AND ROW({excl}, EXCLUDED.deleted_at IS NULL)
                   IS DISTINCT FROM ROW({cur}, t.deleted_at IS NULL)
               AND NOT (t.deleted_at IS NOT NULL AND EXCLUDED.deleted_at IS NULL
                        AND NOT ($1::text = 'reconcile' AND t.undeleted_after IS NULL))))
          AND NOT (EXCLUDED.observed_at IS NULL AND EXCLUDED.deleted_at IS NOT NULL)
        RETURNING t.key, (t.xmax = 0) AS inserted, t.created_at, t.deleted_at",
        params = params.join(", "),
        excl = excluded("EXCLUDED"),
        cur = excluded("t"),
        // A live sighting that is not after a deletion made on evidence leaves it standing.
        stays_deleted = "t.deleted_at IS NOT NULL AND t.undeleted_after IS NOT NULL
                     AND NOT COALESCE(EXCLUDED.observed_at > t.undeleted_after, false)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs(entity: Entity, key: &str, updated_ms: i64) -> Observation {
        Observation::parse(entity, json!({"key": key, "updated_at": updated_ms}), false).unwrap()
    }

    #[test]
    fn repeated_keys_are_split_into_rounds_in_source_time_order() {
        let batch = vec![
            obs(Entity::Customer, "a", 3_000_000_000_000),
            obs(Entity::Customer, "b", 1_000_000_000_000),
            obs(Entity::Customer, "a", 1_000_000_000_000),
            obs(Entity::Partner, "a", 2_000_000_000_000),
            obs(Entity::Customer, "a", 2_000_000_000_000),
        ];
        let r = rounds(&batch);
        // Round 0 holds the oldest "a" customer, "b", and the partner; then the others.
        assert_eq!(r, vec![vec![3], vec![2, 1], vec![4], vec![0]]);
        for round in &r {
            let mut keys: Vec<_> = round
                .iter()
                .map(|&i| (batch[i].entity, &batch[i].key))
                .collect();
            let len = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), len, "a key appears twice in one statement");
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = Observation::parse(
            Entity::Transaction,
            json!({"key": "t", "amount": "lots"}),
            false,
        )
        .unwrap_err();
        assert!(err.contains("amount"), "{err}");
        let err =
            Observation::parse(Entity::Customer, json!({"email": "x@y.z"}), false).unwrap_err();
        assert!(err.contains("no `key`"), "{err}");
        let err = Observation::parse(
            Entity::Customer,
            json!({"key": "c", "name": "a\u{0}b"}),
            false,
        )
        .unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn amounts_beyond_what_json_readers_keep_exactly_are_refused() {
        let parse = |entity, amount: i64| {
            Observation::parse(entity, json!({"key": "k", "amount": amount}), false)
        };
        for entity in [
            Entity::Transaction,
            Entity::Reward,
            Entity::Deal,
            Entity::Lead,
        ] {
            assert!(parse(entity, MAX_EXACT_INTEGER).is_ok());
            assert!(parse(entity, -MAX_EXACT_INTEGER).is_ok());
            let err = parse(entity, MAX_EXACT_INTEGER + 1).unwrap_err();
            assert!(
                err.starts_with("field `amount`: 9007199254740992 is out of range"),
                "{err}"
            );
            assert!(parse(entity, i64::MIN).is_err());
        }
        let err = Observation::parse(
            Entity::Transaction,
            json!({"key": "k", "amount_usd": i64::MAX}),
            false,
        )
        .unwrap_err();
        assert!(err.contains("amount_usd"), "{err}");
    }

    #[test]
    fn a_numeric_id_is_never_a_key_and_archived_objects_are_deletions() {
        let err = Observation::parse(
            Entity::Customer,
            json!({"id": 1234, "archived": "false"}),
            false,
        )
        .unwrap_err();
        assert!(err.contains("no `key`"), "{err}");
        for entity in Entity::ALL {
            let deleted = |v: Value| {
                Observation::parse(entity, json!({"key": "k", "archived": v}), false)
                    .unwrap()
                    .deleted
            };
            assert!(deleted(json!(true)) && deleted(json!("true")), "{entity:?}");
            assert!(
                !deleted(json!(false)) && !deleted(json!("false")) && !deleted(Value::Null),
                "{entity:?}"
            );
        }
        // No flag says nothing: a delete event stays a deletion.
        let o = Observation::parse(Entity::Partner, json!({"key": "p"}), true).unwrap();
        assert!(o.deleted);
        assert_eq!(archived(&json!({"key": "p"})), None);
        assert_eq!(archived(&json!({"archived": "no"})), Some(false));
    }

    #[test]
    fn every_observation_fills_its_declared_columns_with_their_types() {
        for entity in Entity::ALL {
            let o = Observation::parse(entity, json!({"key": "k"}), false).unwrap();
            let declared = columns::of(entity);
            assert_eq!(o.columns.len(), declared.len(), "{entity:?}");
            for (value, column) in o.columns.iter().zip(declared) {
                let ty = match value {
                    Col::Text(_) => SqlType::Text,
                    Col::Int(_) => SqlType::Int,
                    Col::Bool(_) => SqlType::Bool,
                    Col::Ts(_) => SqlType::Ts,
                    Col::Date(_) => SqlType::Date,
                    Col::Json(_) => SqlType::Json,
                };
                assert_eq!(ty, column.ty, "{entity:?}.{}", column.name);
            }
            let table = columns::table(entity);
            assert!(upsert_sql_for(entity).contains(&format!("INSERT INTO {table} AS t")));
        }
    }
}
