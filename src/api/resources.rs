//! The `/v1` resources: each one's JSON shape, filters, sort position and item lookup.
//!
//! Objects keep PartnerStack's field names. Two exceptions, both forced by a clash:
//! a group's `default` is stored as `is_default` (and served as `default` again), and a
//! deal's own `source` (partner or vendor) is served as `deal_source`, because `source` on
//! every object is its provenance here (`webhook` or `reconcile`).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use partnerstack::Entity;
use partnerstack::webhook::normalise_event;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::{FromRow, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::collection::{Collection, Order};
use super::cursor::Position;
use super::params::{IncludeParam, boolean, text, word};
use crate::columns;
pub use crate::columns::{Customer, Deal, Group, Lead, Partner, Record, Reward, Transaction};
use crate::db::events::{AppliedFrom, Outcome};
use crate::error::ApiError;

/// The bookkeeping columns served with every object, in [`Record`]'s order (`raw` is
/// chosen by the caller).
const RECORD_COLUMNS: &str = "t.created_at, t.updated_at, t.deleted_at, t.source, t.synced_at";

/// The select list of an entity collection: `t.key`, the entity's declared columns (each
/// `t.<name>`, unless `computed` gives an expression for it) and the record's columns.
fn entity_select(entity: Entity, computed: &[(&str, &str)]) -> String {
    let mut list = vec!["t.key".to_string()];
    for column in columns::of(entity) {
        list.push(
            match computed.iter().find(|(name, _)| *name == column.name) {
                Some((name, expr)) => format!("{expr} AS {name}"),
                None => format!("t.{}", column.name),
            },
        );
    }
    list.push(RECORD_COLUMNS.to_string());
    list.join(", ")
}

/// Implements [`Collection::columns`] with [`entity_select`], built once, and marks the
/// collection as an entity table's ([`Collection::ENTITY`]).
macro_rules! entity_columns {
    ($entity:expr $(, $name:literal => $expr:expr)* $(,)?) => {
        const ENTITY: Option<Entity> = Some($entity);

        fn columns() -> &'static str {
            static SELECT: LazyLock<String> =
                LazyLock::new(|| entity_select($entity, &[$(($name, $expr)),*]));
            SELECT.as_str()
        }

        fn body_bytes(item: &Self::Item) -> usize {
            item.record.body_bytes()
        }
    };
}

/// Collections without filters of their own.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NoFilters {}

fn created_position(key: &str, record: &Record) -> Position {
    Position::Created(record.created_at, key.to_string())
}

/// `WHERE t.key = $key OR t.{alt} = $key`, the exact key first, live objects before
/// deleted ones, then newest.
fn by_key_or(alt: &str, key: &str, q: &mut QueryBuilder<Postgres>) {
    q.push(" WHERE t.key = ")
        .push_bind(key.to_string())
        .push(format!(" OR t.{alt} = "))
        .push_bind(key.to_string())
        .push(" ORDER BY (t.key = ")
        .push_bind(key.to_string())
        .push(") DESC, (t.deleted_at IS NULL) DESC, t.created_at DESC, t.key DESC");
}

fn eq(q: &mut QueryBuilder<Postgres>, column: &str, value: &str) {
    q.push(format!(" AND {column} = "))
        .push_bind(value.to_string());
}

fn eq_lower(q: &mut QueryBuilder<Postgres>, column: &str, value: &str) {
    q.push(format!(" AND lower({column}) = lower("))
        .push_bind(value.to_string())
        .push(")");
}

// ---------------------------------------------------------------------------------------
// Partners

/// Filters of `GET /v1/partners`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartnerFilters {
    /// Only partners in this group (the group's key).
    pub group_key: Option<String>,
    /// Only partners with this email (any case).
    pub email: Option<String>,
}

/// `/v1/partners`.
pub struct Partners;

impl Collection for Partners {
    const NAME: &'static str = "partners";
    const NOUN: &'static str = "partner";
    const FROM: &'static str = "partners t";
    type Item = Partner;
    type Filters = PartnerFilters;

    entity_columns!(Entity::Partner);

    fn filter(f: &PartnerFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.group_key.as_deref()) {
            eq(q, "t.group_key", v);
        }
        if let Some(v) = text(f.email.as_deref()) {
            eq_lower(q, "t.email", v);
        }
        Ok(())
    }

    fn position(item: &Partner) -> Position {
        created_position(&item.key, &item.record)
    }

    fn lookup(key: &str, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        by_key_or("partner_key", key, q);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Customers

/// Filters of `GET /v1/customers`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomerFilters {
    /// Only customers referred by this partner (its `partner_key` or partnership key).
    pub partner_key: Option<String>,
    /// Only customers with this email (any case).
    pub email: Option<String>,
    /// Only customers with this key of yours.
    pub customer_key: Option<String>,
}

/// `/v1/customers`.
pub struct Customers;

impl Collection for Customers {
    const NAME: &'static str = "customers";
    const NOUN: &'static str = "customer";
    const FROM: &'static str = "customers t";
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key", "t.partnership_key"];
    type Item = Customer;
    type Filters = CustomerFilters;

    entity_columns!(Entity::Customer);

    fn partner(f: &CustomerFilters) -> Result<Option<&str>, ApiError> {
        Ok(text(f.partner_key.as_deref()))
    }

    fn filter(f: &CustomerFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.email.as_deref()) {
            eq_lower(q, "t.email", v);
        }
        if let Some(v) = text(f.customer_key.as_deref()) {
            eq(q, "t.customer_key", v);
        }
        Ok(())
    }

    fn position(item: &Customer) -> Position {
        created_position(&item.key, &item.record)
    }

    fn lookup(key: &str, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        by_key_or("customer_key", key, q);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Transactions

/// Filters of `GET /v1/transactions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionFilters {
    /// Only transactions of this customer: PartnerStack's customer key or yours.
    pub customer_key: Option<String>,
    /// Only transactions credited to this partner (its `partner_key` or partnership key),
    /// directly or through their customer.
    pub partner_key: Option<String>,
    /// Only approved (`true`) or unapproved (`false`, which includes transactions
    /// PartnerStack did not say were approved) transactions.
    #[param(value_type = Option<bool>)]
    pub approved: Option<String>,
    /// Only transactions with this status (`approved`, `pending`).
    pub status: Option<String>,
    /// Only transactions in this currency (ISO 4217, any case).
    pub currency: Option<String>,
}

/// `/v1/transactions`.
pub struct Transactions;

impl Collection for Transactions {
    const NAME: &'static str = "transactions";
    const NOUN: &'static str = "transaction";
    const FROM: &'static str = "transactions t";
    const PARTNER_COLUMNS: &'static [&'static str] =
        &["t.credited_partner_key", "t.credited_partnership_key"];
    type Item = Transaction;
    type Filters = TransactionFilters;

    entity_columns!(
        Entity::Transaction,
        "partner_key" => "COALESCE(t.credited_partner_key, \
            (SELECT p.partner_key FROM partners p WHERE p.key = t.credited_partnership_key))",
    );

    fn partner(f: &TransactionFilters) -> Result<Option<&str>, ApiError> {
        Ok(text(f.partner_key.as_deref()))
    }

    fn filter(f: &TransactionFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.customer_key.as_deref()) {
            q.push(" AND (t.customer_key = ")
                .push_bind(v.to_string())
                .push(" OR t.customer_external_key = ")
                .push_bind(v.to_string())
                .push(")");
        }
        if let Some(v) = boolean("approved", f.approved.as_deref())? {
            // Not approved includes "not said", as in the partner summary.
            q.push(if v {
                " AND t.approved IS TRUE"
            } else {
                " AND t.approved IS NOT TRUE"
            });
        }
        if let Some(v) = text(f.status.as_deref()) {
            eq(q, "t.status", &v.to_ascii_lowercase());
        }
        if let Some(v) = text(f.currency.as_deref()) {
            eq(q, "t.currency", &v.to_ascii_uppercase());
        }
        Ok(())
    }

    fn position(item: &Transaction) -> Position {
        created_position(&item.key, &item.record)
    }
}

// ---------------------------------------------------------------------------------------
// Rewards

/// Filters of `GET /v1/rewards`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RewardFilters {
    /// Only rewards of this partner (its `partner_key` or partnership key).
    pub partner_key: Option<String>,
    /// Only rewards for this customer: PartnerStack's customer key or yours.
    pub customer_key: Option<String>,
    /// Only rewards with this `reward_status` (any case), e.g. `pending`.
    pub status: Option<String>,
}

/// `/v1/rewards`.
pub struct Rewards;

impl Collection for Rewards {
    const NAME: &'static str = "rewards";
    const NOUN: &'static str = "reward";
    const FROM: &'static str = "rewards t";
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key", "t.partnership_key"];
    type Item = Reward;
    type Filters = RewardFilters;

    entity_columns!(
        Entity::Reward,
        "partner_key" => "COALESCE(t.partner_key, \
            (SELECT p.partner_key FROM partners p WHERE p.key = t.partnership_key))",
    );

    fn partner(f: &RewardFilters) -> Result<Option<&str>, ApiError> {
        Ok(text(f.partner_key.as_deref()))
    }

    fn filter(f: &RewardFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.customer_key.as_deref()) {
            q.push(" AND (t.customer_key = ")
                .push_bind(v.to_string())
                .push(" OR t.customer_external_key = ")
                .push_bind(v.to_string())
                .push(")");
        }
        if let Some(v) = text(f.status.as_deref()) {
            eq(q, "t.reward_status", &v.to_ascii_lowercase());
        }
        Ok(())
    }

    fn position(item: &Reward) -> Position {
        created_position(&item.key, &item.record)
    }
}

// ---------------------------------------------------------------------------------------
// Groups

/// `/v1/groups`.
pub struct Groups;

impl Collection for Groups {
    const NAME: &'static str = "groups";
    const NOUN: &'static str = "group";
    const FROM: &'static str = "groups t";
    type Item = Group;
    type Filters = NoFilters;

    entity_columns!(Entity::Group);

    fn position(item: &Group) -> Position {
        created_position(&item.key, &item.record)
    }
}

// ---------------------------------------------------------------------------------------
// Deals

/// Filters of `GET /v1/deals`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DealFilters {
    /// Only deals of this partner (its `partner_key` or partnership key).
    pub partner_key: Option<String>,
    /// Only deals in this group.
    pub group_key: Option<String>,
}

/// `/v1/deals`.
pub struct Deals;

impl Collection for Deals {
    const NAME: &'static str = "deals";
    const NOUN: &'static str = "deal";
    const FROM: &'static str = "deals t";
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key"];
    type Item = Deal;
    type Filters = DealFilters;

    entity_columns!(Entity::Deal);

    fn partner(f: &DealFilters) -> Result<Option<&str>, ApiError> {
        Ok(text(f.partner_key.as_deref()))
    }

    fn filter(f: &DealFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.group_key.as_deref()) {
            eq(q, "t.group_key", v);
        }
        Ok(())
    }

    fn position(item: &Deal) -> Position {
        created_position(&item.key, &item.record)
    }
}

// ---------------------------------------------------------------------------------------
// Leads

/// Filters of `GET /v1/leads`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeadFilters {
    /// Only leads of this partner (its `partner_key` or partnership key).
    pub partner_key: Option<String>,
    /// Only leads in this group.
    pub group_key: Option<String>,
    /// Only leads with this status (any case).
    pub status: Option<String>,
}

/// `/v1/leads`.
pub struct Leads;

impl Collection for Leads {
    const NAME: &'static str = "leads";
    const NOUN: &'static str = "lead";
    const FROM: &'static str = "leads t";
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key"];
    type Item = Lead;
    type Filters = LeadFilters;

    entity_columns!(Entity::Lead);

    fn partner(f: &LeadFilters) -> Result<Option<&str>, ApiError> {
        Ok(text(f.partner_key.as_deref()))
    }

    fn filter(f: &LeadFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.group_key.as_deref()) {
            eq(q, "t.group_key", v);
        }
        if let Some(v) = text(f.status.as_deref()) {
            eq_lower(q, "t.status", v);
        }
        Ok(())
    }

    fn position(item: &Lead) -> Position {
        created_position(&item.key, &item.record)
    }
}

// ---------------------------------------------------------------------------------------
// Events

/// One webhook delivery as stored, with what applying it did.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Event {
    /// The delivery's id (the webhook answer's `id`).
    pub id: i64,
    /// The event name, normalised: lower case, `_` separated, `partner_*` as
    /// `partnership_*` (e.g. `customer_created`).
    pub event_type: Option<String>,
    /// What became of it: `applied`, `stale` (the copy was as new or newer), `pending`
    /// (not applied yet, or waiting for PartnerStack), `unknown_type`, `error`,
    /// `unresolved` (no key, and nothing stored its natural key finds) or `unconfirmed`
    /// (verified mode: PartnerStack does not know the object).
    pub outcome: Outcome,
    /// Where the applied state came from: `body` (the delivery itself) or `fetch`
    /// (PartnerStack's answer when the service looked the object up).
    pub applied_from: Option<AppliedFrom>,
    /// Why the outcome is what it is (stale, unknown_type, error, unresolved,
    /// unconfirmed, or what a pending delivery waits for).
    pub reason: Option<String>,
    pub received_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    /// The collection the delivery was applied to.
    #[schema(value_type = Option<crate::columns::CollectionName>)]
    pub entity: Option<String>,
    /// The key of the object it carried.
    pub entity_key: Option<String>,
    /// The body as received: always on `/v1/events/{id}`, in lists with
    /// `include=payload`. A body that is not JSON to this reader is given as a string.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub payload: Option<Box<RawValue>>,
    #[serde(skip)]
    pub body: Option<String>,
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilters {
    /// Only events of this type, in either naming style (`customer.created` or
    /// `customer_created`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Only events with this outcome.
    #[param(value_type = Option<Outcome>)]
    pub outcome: Option<String>,
    /// Only events that carried the object with this key.
    pub entity_key: Option<String>,
}

/// `/v1/events`: the raw webhook log.
pub struct Events;

impl Collection for Events {
    const NAME: &'static str = "events";
    const NOUN: &'static str = "event";
    const FROM: &'static str = "webhook_events t";
    const BODY: &'static str = "t.body AS body";
    const NO_BODY: &'static str = "NULL::text AS body";
    const INCLUDE: IncludeParam = super::params::INCLUDE_PAYLOAD;
    const UPDATED: &'static str = "COALESCE(t.applied_at, t.received_at)";
    const SOFT_DELETE: bool = false;
    const ORDER: Order = Order::Id;
    const ITEM_HAS_BODY: bool = true;
    type Item = Event;
    type Filters = EventFilters;

    fn columns() -> &'static str {
        "t.id, t.event_type, t.outcome, t.applied_from, t.outcome_reason AS reason, \
         t.received_at, t.applied_at, t.entity, t.entity_key"
    }

    fn filter(f: &EventFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text(f.event_type.as_deref()) {
            eq(q, "t.event_type", &normalise_event(v));
        }
        if let Some(outcome) = word(
            "outcome",
            f.outcome.as_deref(),
            Outcome::parse,
            &Outcome::words(),
        )? {
            q.push(" AND t.outcome = ").push_bind(outcome);
        }
        if let Some(v) = text(f.entity_key.as_deref()) {
            eq(q, "t.entity_key", v);
        }
        Ok(())
    }

    fn position(item: &Event) -> Position {
        Position::Id(item.id)
    }

    fn lookup(key: &str, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        let id: i64 = key
            .parse()
            .map_err(|_| ApiError::bad_request(format!("event ids are integers, got {key:?}")))?;
        q.push(" WHERE t.id = ").push_bind(id);
        Ok(())
    }

    fn finish(item: &mut Event) {
        // Served as stored (validated, never parsed into a tree).
        if let Some(body) = item.body.take() {
            let is_json = serde_json::from_str::<&RawValue>(&body).is_ok();
            item.payload = if is_json {
                RawValue::from_string(body).ok()
            } else {
                // Not JSON to this reader: as a JSON string.
                serde_json::value::to_raw_value(&body).ok()
            };
        }
    }

    fn body_bytes(item: &Event) -> usize {
        item.body.as_ref().map_or(0, String::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::collection::accepted;

    #[test]
    fn every_collection_accepts_its_documented_parameters() {
        let common = [
            "limit",
            "starting_after",
            "updated_since",
            "include",
            "include_deleted",
        ];
        let with = |extra: &[&str]| -> Vec<String> {
            common.iter().chain(extra).map(|s| s.to_string()).collect()
        };
        assert_eq!(accepted::<Partners>(), with(&["group_key", "email"]));
        assert_eq!(
            accepted::<Customers>(),
            with(&["partner_key", "email", "customer_key"])
        );
        assert_eq!(
            accepted::<Transactions>(),
            with(&[
                "customer_key",
                "partner_key",
                "approved",
                "status",
                "currency"
            ])
        );
        assert_eq!(
            accepted::<Rewards>(),
            with(&["partner_key", "customer_key", "status"])
        );
        assert_eq!(accepted::<Groups>(), with(&[]));
        assert_eq!(accepted::<Deals>(), with(&["partner_key", "group_key"]));
        assert_eq!(
            accepted::<Leads>(),
            with(&["partner_key", "group_key", "status"])
        );
        assert_eq!(
            accepted::<Events>(),
            [
                "limit",
                "starting_after",
                "updated_since",
                "include",
                "type",
                "outcome",
                "entity_key"
            ]
        );
    }
}
