//! The stand-in's objects and their tables.
//!
//! Each object is a compact struct that serialises to PartnerStack's JSON (timestamps in
//! epoch milliseconds), so 100,000s of objects fit in memory without holding JSON trees.
//! A [`Table`] keeps its objects sorted oldest-first by `(created_at, key)` with an index
//! from key to position: lists walk it backwards (newest first) from a cursor's position,
//! and creation-time bounds are binary searches.

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use partnerstack::Entity;

/// What every stand-in object provides to its table.
pub trait SimRecord: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const ENTITY: Entity;
    fn key(&self) -> &str;
    fn created_at(&self) -> i64;
    fn updated_at(&self) -> i64;
    fn set_updated_at(&mut self, ms: i64);
    /// A second identifier single GETs accept (`customer_key`, `partner_key`).
    fn alt_key(&self) -> Option<&str> {
        None
    }
    /// False for archived objects (customers, partnerships): whether lists still show them
    /// is a behaviour of its own ([`ListParams::include_unlisted`]).
    fn listed(&self) -> bool {
        true
    }
    fn partner_key(&self) -> Option<&str> {
        None
    }
    fn customer_key(&self) -> Option<&str> {
        None
    }
    fn status(&self) -> Option<&str> {
        None
    }
}

/// A group as nested in a partnership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRef {
    pub key: String,
    pub name: String,
    pub slug: String,
}

/// A customer as nested in a transaction or reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerRef {
    pub key: String,
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub external_key: Option<String>,
}

/// A partnership as nested in a reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartnershipRef {
    pub key: String,
    pub partner_key: String,
    pub email: String,
    pub name: String,
    pub group: Option<GroupRef>,
}

/// A transaction as nested in a reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransactionRef {
    pub key: String,
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimGroup {
    pub key: String,
    pub name: String,
    pub slug: String,
    pub default: bool,
    pub archived: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimPartnership {
    pub key: String,
    pub partner_key: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub group: Option<GroupRef>,
    pub team: Option<Value>,
    pub tags: Vec<String>,
    /// Archived (`partnership_deleted`); rendered only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub archived: bool,
    pub joined_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimCustomer {
    pub key: String,
    /// Your own key; null for some customers, as in real data.
    pub customer_key: Option<String>,
    pub email: String,
    pub name: Option<String>,
    pub partner_key: String,
    pub partnership_key: String,
    pub provider_key: Option<String>,
    pub source_key: Option<String>,
    pub source_type: String,
    pub test: bool,
    /// Archived (deleted) customers are not found by single GETs; lists hide them, flag
    /// them or show them unflagged (`--archived-customers`). Rendered only when true (the
    /// production connector's customer schema has no such field); the state dump keeps
    /// archived ones, flagged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub archived: bool,
    pub meta: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimTransaction {
    pub key: String,
    pub amount: i64,
    pub amount_usd: i64,
    pub currency: String,
    pub approved: bool,
    pub category_key: Option<String>,
    pub product_key: Option<String>,
    /// PartnerStack's customer key.
    pub customer_key: String,
    pub customer: CustomerRef,
    pub partner_key: String,
    pub test: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimReward {
    pub key: String,
    pub amount: i64,
    pub currency: String,
    pub description: String,
    pub reward_status: String,
    pub customer: Option<CustomerRef>,
    pub partnership: PartnershipRef,
    pub transaction: Option<TransactionRef>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimDeal {
    pub key: String,
    pub account_name: String,
    pub amount: i64,
    pub close_date: String,
    pub contact_first_name: String,
    pub contact_last_name: String,
    pub external_key: String,
    pub group_key: Option<String>,
    pub partner_key: String,
    pub customer_key: Option<String>,
    pub mold_key: String,
    pub stage: String,
    pub source: String,
    pub lost_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimLead {
    pub key: String,
    pub amount: i64,
    pub approved: bool,
    pub external_key: String,
    pub group_key: Option<String>,
    pub partner_key: String,
    pub mold_key: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

macro_rules! record {
    ($entity:expr) => {
        const ENTITY: Entity = $entity;
        fn key(&self) -> &str {
            &self.key
        }
        fn created_at(&self) -> i64 {
            self.created_at
        }
        fn updated_at(&self) -> i64 {
            self.updated_at
        }
        fn set_updated_at(&mut self, ms: i64) {
            self.updated_at = ms;
        }
    };
}

impl SimRecord for SimGroup {
    record!(Entity::Group);
}

impl SimRecord for SimPartnership {
    record!(Entity::Partner);
    fn alt_key(&self) -> Option<&str> {
        Some(&self.partner_key)
    }
    fn listed(&self) -> bool {
        !self.archived
    }
    fn partner_key(&self) -> Option<&str> {
        Some(&self.partner_key)
    }
}

impl SimRecord for SimCustomer {
    record!(Entity::Customer);
    fn alt_key(&self) -> Option<&str> {
        self.customer_key.as_deref()
    }
    fn listed(&self) -> bool {
        !self.archived
    }
    fn partner_key(&self) -> Option<&str> {
        Some(&self.partner_key)
    }
}

impl SimRecord for SimTransaction {
    record!(Entity::Transaction);
    fn partner_key(&self) -> Option<&str> {
        Some(&self.partner_key)
    }
    fn customer_key(&self) -> Option<&str> {
        Some(&self.customer_key)
    }
}

impl SimRecord for SimReward {
    record!(Entity::Reward);
    fn partner_key(&self) -> Option<&str> {
        Some(&self.partnership.partner_key)
    }
    fn status(&self) -> Option<&str> {
        Some(&self.reward_status)
    }
}

impl SimRecord for SimDeal {
    record!(Entity::Deal);
    fn partner_key(&self) -> Option<&str> {
        Some(&self.partner_key)
    }
    fn customer_key(&self) -> Option<&str> {
        self.customer_key.as_deref()
    }
}

impl SimRecord for SimLead {
    record!(Entity::Lead);
    fn partner_key(&self) -> Option<&str> {
        Some(&self.partner_key)
    }
    fn status(&self) -> Option<&str> {
        Some(&self.status)
    }
}

/// A list filter the stand-in can apply (which stream honours which: `behaviour::FILTERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    MinUpdated,
    MaxUpdated,
    MinCreated,
    MaxCreated,
    PartnerKey,
    CustomerKey,
    Group,
    Status,
}

impl Filter {
    /// The query parameter's name.
    pub fn param(self) -> &'static str {
        match self {
            Filter::MinUpdated => "min_updated",
            Filter::MaxUpdated => "max_updated",
            Filter::MinCreated => "min_created",
            Filter::MaxCreated => "max_created",
            Filter::PartnerKey => "partner_key",
            Filter::CustomerKey => "customer_key",
            Filter::Group => "group",
            Filter::Status => "status",
        }
    }
}

/// A list request, parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub limit: usize,
    pub starting_after: Option<String>,
    pub ending_before: Option<String>,
    pub min_updated: Option<i64>,
    pub max_updated: Option<i64>,
    pub min_created: Option<i64>,
    pub max_created: Option<i64>,
    pub partner_key: Option<String>,
    pub customer_key: Option<String>,
    pub status: Option<String>,
    /// The `group` filter (customers, deals), resolved to the partner keys of that group.
    pub group_partners: Option<HashSet<String>>,
    /// The filters this list honours (`behaviour::honoured`); others are ignored.
    pub filters: Vec<Filter>,
    /// Fault injection: serve the first page whatever the cursor says.
    pub ignore_cursor: bool,
    /// List archived objects too (when lists keep them).
    pub include_unlisted: bool,
    /// Objects created too recently to be listed yet (by key).
    pub not_yet_listed: HashSet<String>,
    /// A cursor naming no object gets an empty last page instead of a 400.
    pub lost_cursor_empty: bool,
}

/// Why a list request was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Objects of one kind, oldest first, indexed by key and by alternative key.
#[derive(Debug)]
pub struct Table<T> {
    items: Vec<T>,
    index: HashMap<String, usize>,
    alt: HashMap<String, usize>,
}

impl<T: SimRecord> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: Vec::new(),
            index: HashMap::new(),
            alt: HashMap::new(),
        }
    }
}

fn order<T: SimRecord>(a: &T, b: &T) -> std::cmp::Ordering {
    (a.created_at(), a.key()).cmp(&(b.created_at(), b.key()))
}

impl<T: SimRecord> Table<T> {
    /// A table of `items` in any order.
    pub fn from_items(mut items: Vec<T>) -> Self {
        items.sort_by(order);
        let mut table = Table {
            items,
            ..Table::default()
        };
        table.reindex();
        table
    }

    fn reindex(&mut self) {
        self.index.clear();
        self.alt.clear();
        self.index.reserve(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            self.index.insert(item.key().to_string(), i);
            if let Some(alt) = item.alt_key() {
                self.alt.insert(alt.to_string(), i);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.index.get(key).map(|&i| &self.items[i])
    }

    /// By alternative key first (your `customer_key`, a `partner_key`), then by key.
    pub fn find(&self, key_or_alt: &str) -> Option<&T> {
        self.alt
            .get(key_or_alt)
            .or_else(|| self.index.get(key_or_alt))
            .map(|&i| &self.items[i])
    }

    pub fn alt_taken(&self, alt: &str) -> bool {
        self.alt.contains_key(alt)
    }

    pub fn at(&self, i: usize) -> &T {
        &self.items[i]
    }

    /// Adds an object. New objects are normally the newest (an append); an older one is
    /// inserted in order, which re-indexes.
    pub fn insert(&mut self, item: T) {
        let newest = self
            .items
            .last()
            .is_none_or(|last| order(last, &item).is_lt());
        if newest {
            self.index.insert(item.key().to_string(), self.items.len());
            if let Some(alt) = item.alt_key() {
                self.alt.insert(alt.to_string(), self.items.len());
            }
            self.items.push(item);
        } else {
            let at = self.items.partition_point(|x| order(x, &item).is_lt());
            self.items.insert(at, item);
            self.reindex();
        }
    }

    /// Removes an object (a hard delete, as `DELETE /transactions/{key}` does); false when
    /// there is none.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(i) = self.index.get(key).copied() else {
            return false;
        };
        self.items.remove(i);
        self.reindex();
        true
    }

    /// Changes one object in place. The key cannot change; a changed `created_at` or
    /// alternative key re-sorts and re-indexes.
    pub fn update<R>(&mut self, key: &str, change: impl FnOnce(&mut T) -> R) -> Option<R> {
        let i = *self.index.get(key)?;
        let before = (
            self.items[i].created_at(),
            self.items[i].alt_key().map(str::to_string),
        );
        let result = change(&mut self.items[i]);
        let item = &self.items[i];
        if (item.created_at(), item.alt_key().map(str::to_string)) != before {
            self.items.sort_by(order);
            self.reindex();
        }
        Some(result)
    }

    /// The page of a list request, newest first, and whether more follow.
    pub fn list(&self, q: &ListParams) -> Result<(Vec<&T>, bool), BadRequest> {
        let has = |f: Filter| q.filters.contains(&f);
        let mut lo = 0;
        let mut hi = self.items.len();
        if has(Filter::MinCreated)
            && let Some(min) = q.min_created
        {
            lo = self.items.partition_point(|x| x.created_at() < min);
        }
        if has(Filter::MaxCreated)
            && let Some(max) = q.max_created
        {
            hi = self.items.partition_point(|x| x.created_at() <= max);
        }
        let position = |cursor: &str, name: &str| {
            self.index
                .get(cursor)
                .copied()
                .ok_or_else(|| BadRequest(format!("{name}: no object with key {cursor:?}")))
        };
        let lost = |cursor: &Option<String>| {
            q.lost_cursor_empty
                && !q.ignore_cursor
                && cursor
                    .as_deref()
                    .is_some_and(|c| !self.index.contains_key(c))
        };
        if lost(&q.starting_after) || lost(&q.ending_before) {
            return Ok((Vec::new(), false));
        }
        let matches = |x: &T| {
            (x.listed() || q.include_unlisted)
                && !q.not_yet_listed.contains(x.key())
                && (!has(Filter::MinUpdated) || q.min_updated.is_none_or(|m| x.updated_at() >= m))
                && (!has(Filter::MaxUpdated) || q.max_updated.is_none_or(|m| x.updated_at() <= m))
                && (!has(Filter::PartnerKey)
                    || q.partner_key
                        .as_deref()
                        .is_none_or(|p| x.partner_key() == Some(p)))
                && (!has(Filter::CustomerKey)
                    || q.customer_key
                        .as_deref()
                        .is_none_or(|c| x.customer_key() == Some(c)))
                && (!has(Filter::Status)
                    || q.status.as_deref().is_none_or(|s| x.status() == Some(s)))
                && (!has(Filter::Group)
                    || q.group_partners
                        .as_ref()
                        .is_none_or(|g| x.partner_key().is_some_and(|p| g.contains(p))))
        };
        let want = q.limit + 1;
        let mut page: Vec<&T> = Vec::with_capacity(want.min(251));
        match (&q.starting_after, &q.ending_before) {
            (Some(_), Some(_)) => {
                return Err(BadRequest(
                    "starting_after and ending_before cannot be combined".into(),
                ));
            }
            (None, Some(before)) if !q.ignore_cursor => {
                // The items just newer than the cursor: walk up from it, then flip.
                let from = (position(before, "ending_before")? + 1).max(lo);
                for x in self.items[from.min(hi)..hi].iter() {
                    if matches(x) {
                        page.push(x);
                        if page.len() == want {
                            break;
                        }
                    }
                }
                let more = page.len() > q.limit;
                page.truncate(q.limit);
                page.reverse();
                return Ok((page, more));
            }
            (Some(after), None) if !q.ignore_cursor => {
                hi = hi.min(position(after, "starting_after")?);
            }
            _ => {}
        }
        for x in self.items[lo.min(hi)..hi].iter().rev() {
            if matches(x) {
                page.push(x);
                if page.len() == want {
                    break;
                }
            }
        }
        let more = page.len() > q.limit;
        page.truncate(q.limit);
        Ok((page, more))
    }
}

/// Replaces top-level fields of `item` with those of `patch` (a JSON merge at the top
/// level). The key cannot change.
pub fn merge<T: SimRecord>(item: &T, patch: &Map<String, Value>) -> Result<T, String> {
    if let Some(key) = patch.get("key")
        && key.as_str() != Some(item.key())
    {
        return Err("the key cannot change".into());
    }
    let mut value = serde_json::to_value(item).map_err(|e| e.to_string())?;
    if let Value::Object(map) = &mut value {
        for (k, v) in patch {
            map.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(value).map_err(|e| format!("the patched object is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(key: &str, created: i64, updated: i64) -> SimLead {
        SimLead {
            key: key.into(),
            amount: 100,
            approved: false,
            external_key: key.into(),
            group_key: None,
            partner_key: if created % 2 == 0 { "even" } else { "odd" }.into(),
            mold_key: "mold_x".into(),
            status: "open".into(),
            created_at: created,
            updated_at: updated,
        }
    }

    fn keys(page: &[&SimLead]) -> Vec<String> {
        page.iter().map(|l| l.key.clone()).collect()
    }

    fn table() -> Table<SimLead> {
        Table::from_items(
            (1..=10)
                .rev()
                .map(|i| lead(&format!("l{i:02}"), i, 100 + i))
                .collect(),
        )
    }

    #[test]
    fn newest_first_with_cursors_both_ways() {
        let t = table();
        let q = |after: Option<&str>, before: Option<&str>| ListParams {
            limit: 3,
            starting_after: after.map(String::from),
            ending_before: before.map(String::from),
            ..ListParams::default()
        };
        let (page, more) = t.list(&q(None, None)).unwrap();
        assert_eq!(keys(&page), ["l10", "l09", "l08"]);
        assert!(more);
        let (page, more) = t.list(&q(Some("l02"), None)).unwrap();
        assert_eq!(keys(&page), ["l01"]);
        assert!(!more);
        let (page, more) = t.list(&q(None, Some("l05"))).unwrap();
        assert_eq!(keys(&page), ["l08", "l07", "l06"]);
        assert!(more);
        assert!(t.list(&q(Some("nope"), None)).is_err());
        assert!(t.list(&q(Some("l01"), Some("l02"))).is_err());
    }

    #[test]
    fn filters_apply_only_where_the_stream_has_them() {
        let t = table();
        let (page, _) = t
            .list(&ListParams {
                limit: 100,
                min_updated: Some(108),
                // Leads have no created filter: ignored, like the real API would.
                min_created: Some(10),
                filters: crate::behaviour::honoured(
                    &crate::behaviour::Behaviours::default(),
                    Entity::Lead,
                ),
                ..ListParams::default()
            })
            .unwrap();
        assert_eq!(keys(&page), ["l10", "l09", "l08"]);
    }

    #[test]
    fn updates_that_move_an_object_keep_the_index_true() {
        let mut t = table();
        t.update("l10", |l| l.created_at = 0).unwrap();
        let (page, _) = t
            .list(&ListParams {
                limit: 2,
                starting_after: Some("l02".into()),
                ..ListParams::default()
            })
            .unwrap();
        assert_eq!(keys(&page), ["l01", "l10"]);
        t.insert(lead("l11", 11, 11));
        t.insert(lead("l00", -1, 11));
        assert_eq!(t.items().first().unwrap().key, "l00");
        assert_eq!(t.get("l11").unwrap().created_at, 11);
    }

    #[test]
    fn merge_replaces_fields_but_not_the_key() {
        let l = lead("l01", 1, 1);
        let patch: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"status": "dead", "amount": 7})).unwrap();
        let merged = merge(&l, &patch).unwrap();
        assert_eq!((merged.status.as_str(), merged.amount), ("dead", 7));
        let bad: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"key": "other"})).unwrap();
        assert!(merge(&l, &bad).is_err());
        let bad: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"amount": "lots"})).unwrap();
        assert!(merge(&l, &bad).is_err());
    }
}
