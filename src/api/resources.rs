//! The `/v1` resources: each one's JSON shape, filters, sort position and item lookup.
//!
//! Objects keep PartnerStack's field names. Two exceptions, both forced by a clash:
//! a group's `default` is stored as `is_default` (and served as `default` again), and a
//! deal's own `source` (partner or vendor) is served as `deal_source`, because `source` on
//! every object is its provenance here (`webhook` or `reconcile`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::collection::{Collection, Order};
use super::cursor::Position;
use super::params::{boolean, text};
use crate::error::ApiError;
use crate::partnerstack::webhook::normalise_event;

/// What every stored PartnerStack object carries besides its own fields.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Record {
    /// When PartnerStack created the object (when it was first stored here, if it had no
    /// `created_at`).
    pub created_at: DateTime<Utc>,
    /// PartnerStack's `updated_at`, when the object carries one.
    pub updated_at: Option<DateTime<Utc>>,
    /// Set when PartnerStack deleted or archived the object; such objects are listed only
    /// with `include_deleted=true`.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Where the stored version came from: `webhook` or `reconcile`.
    #[schema(example = "webhook")]
    pub source: String,
    /// When the stored version was applied here.
    pub synced_at: DateTime<Utc>,
    /// The object as PartnerStack last sent it, unknown fields included; only with
    /// `include=raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub raw: Option<Value>,
}

/// The bookkeeping columns, in [`Record`]'s order (`raw` is chosen by the caller).
macro_rules! record_columns {
    () => {
        "t.created_at, t.updated_at, t.deleted_at, t.source, t.synced_at"
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

/// A partner's membership of the program (PartnerStack's partnership).
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Partner {
    /// The partnership key (`part_...`).
    pub key: String,
    /// The partner's readable key, unique in the program.
    pub partner_key: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    /// e.g. `active`, `inactive`, `approved`.
    pub status: Option<String>,
    pub group_key: Option<String>,
    pub group_name: Option<String>,
    pub team_key: Option<String>,
    #[schema(value_type = Option<Vec<String>>)]
    pub tags: Option<Value>,
    pub joined_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

/// Filters of `GET /v1/partners`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartnerFilters {
    /// Only partners in this group (the group's key).
    pub group_key: Option<String>,
    /// Only partners with this status (any case), e.g. `active`.
    pub status: Option<String>,
    /// Only partners with this email (any case).
    pub email: Option<String>,
}

/// `/v1/partners`.
pub struct Partners;

impl Collection for Partners {
    const NAME: &'static str = "partners";
    const NOUN: &'static str = "partner";
    const FROM: &'static str = "partners t";
    const COLUMNS: &'static str = concat!(
        "t.key, t.partner_key, t.email, t.first_name, t.last_name, t.name, t.status, ",
        "t.group_key, t.group_name, t.team_key, t.tags, t.joined_at, ",
        record_columns!()
    );
    type Item = Partner;
    type Filters = PartnerFilters;

    fn filter(f: &PartnerFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("group_key", f.group_key.as_deref())? {
            eq(q, "t.group_key", v);
        }
        if let Some(v) = text("status", f.status.as_deref())? {
            eq_lower(q, "t.status", v);
        }
        if let Some(v) = text("email", f.email.as_deref())? {
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

/// A customer referred by a partner.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Customer {
    /// PartnerStack's key for the customer.
    pub key: String,
    /// Your own key for the customer (not guaranteed unique).
    pub customer_key: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The referring partner's readable key.
    pub partner_key: Option<String>,
    /// The referring partnership's key.
    pub partnership_key: Option<String>,
    /// e.g. the Stripe customer id.
    pub provider_key: Option<String>,
    pub source_key: Option<String>,
    pub source_type: Option<String>,
    pub test: Option<bool>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

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
    const COLUMNS: &'static str = concat!(
        "t.key, t.customer_key, t.email, t.name, t.partner_key, t.partnership_key, ",
        "t.provider_key, t.source_key, t.source_type, t.test, ",
        record_columns!()
    );
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key", "t.partnership_key"];
    type Item = Customer;
    type Filters = CustomerFilters;

    fn partner(f: &CustomerFilters) -> Result<Option<&str>, ApiError> {
        text("partner_key", f.partner_key.as_deref())
    }

    fn filter(f: &CustomerFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("email", f.email.as_deref())? {
            eq_lower(q, "t.email", v);
        }
        if let Some(v) = text("customer_key", f.customer_key.as_deref())? {
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

/// A billing event that can earn a partner a reward. Money is in integer cents.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Transaction {
    /// The transaction's key (yours, when you gave one).
    pub key: String,
    /// Cents in `currency`; negative for refunds.
    pub amount: Option<i64>,
    /// The amount in US cents, as PartnerStack converted it.
    pub amount_usd: Option<i64>,
    /// ISO 4217, upper case.
    pub currency: Option<String>,
    pub approved: Option<bool>,
    pub archived: Option<bool>,
    /// `approved` or `pending` (derived from `approved` when PartnerStack sent no status).
    pub status: Option<String>,
    /// PartnerStack's key for the customer.
    pub customer_key: Option<String>,
    /// Your key for the customer (`customer.external_key`).
    pub customer_external_key: Option<String>,
    /// The partner credited: the transaction's own `partner_key`, else its customer's.
    pub partner_key: Option<String>,
    pub category_key: Option<String>,
    pub product_key: Option<String>,
    pub test: Option<bool>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

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
    const COLUMNS: &'static str = concat!(
        "t.key, t.amount, t.amount_usd, t.currency, t.approved, t.archived, t.status, ",
        "t.customer_key, t.customer_external_key, ",
        "COALESCE(t.credited_partner_key, ",
        "(SELECT p.partner_key FROM partners p WHERE p.key = t.credited_partnership_key)) AS partner_key, ",
        "t.category_key, t.product_key, t.test, ",
        record_columns!()
    );
    const PARTNER_COLUMNS: &'static [&'static str] =
        &["t.credited_partner_key", "t.credited_partnership_key"];
    type Item = Transaction;
    type Filters = TransactionFilters;

    fn partner(f: &TransactionFilters) -> Result<Option<&str>, ApiError> {
        text("partner_key", f.partner_key.as_deref())
    }

    fn filter(f: &TransactionFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("customer_key", f.customer_key.as_deref())? {
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
        if let Some(v) = text("status", f.status.as_deref())? {
            eq(q, "t.status", &v.to_ascii_lowercase());
        }
        if let Some(v) = text("currency", f.currency.as_deref())? {
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

/// A commission earned by a partner. Money is in integer cents.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Reward {
    pub key: String,
    /// Cents in `currency`; negative for clawbacks.
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub description: Option<String>,
    /// hold, pending, approved, declined, paid, scheduled, or a value PartnerStack adds
    /// later.
    pub reward_status: Option<String>,
    pub partnership_key: Option<String>,
    /// The partner's readable key (from the partnership when the reward has none).
    pub partner_key: Option<String>,
    /// PartnerStack's key for the customer.
    pub customer_key: Option<String>,
    /// Your key for the customer.
    pub customer_external_key: Option<String>,
    pub transaction_key: Option<String>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

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
    const COLUMNS: &'static str = concat!(
        "t.key, t.amount, t.currency, t.description, t.reward_status, t.partnership_key, ",
        "COALESCE(t.partner_key, ",
        "(SELECT p.partner_key FROM partners p WHERE p.key = t.partnership_key)) AS partner_key, ",
        "t.customer_key, t.customer_external_key, t.transaction_key, ",
        record_columns!()
    );
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key", "t.partnership_key"];
    type Item = Reward;
    type Filters = RewardFilters;

    fn partner(f: &RewardFilters) -> Result<Option<&str>, ApiError> {
        text("partner_key", f.partner_key.as_deref())
    }

    fn filter(f: &RewardFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("customer_key", f.customer_key.as_deref())? {
            q.push(" AND (t.customer_key = ")
                .push_bind(v.to_string())
                .push(" OR t.customer_external_key = ")
                .push_bind(v.to_string())
                .push(")");
        }
        if let Some(v) = text("status", f.status.as_deref())? {
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

/// A partner group (commission plan).
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Group {
    pub key: String,
    pub name: Option<String>,
    pub slug: Option<String>,
    /// Whether new partners join this group by default.
    #[serde(rename = "default")]
    pub is_default: Option<bool>,
    pub archived: Option<bool>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

/// `/v1/groups`.
pub struct Groups;

impl Collection for Groups {
    const NAME: &'static str = "groups";
    const NOUN: &'static str = "group";
    const FROM: &'static str = "groups t";
    const COLUMNS: &'static str = concat!(
        "t.key, t.name, t.slug, t.is_default, t.archived, ",
        record_columns!()
    );
    type Item = Group;
    type Filters = NoFilters;

    fn position(item: &Group) -> Position {
        created_position(&item.key, &item.record)
    }
}

// ---------------------------------------------------------------------------------------
// Deals

/// A deal registered by a partner. Money is in integer cents.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Deal {
    pub key: String,
    pub account_name: Option<String>,
    pub amount: Option<i64>,
    /// `YYYY-MM-DD`.
    pub close_date: Option<NaiveDate>,
    pub external_key: Option<String>,
    pub group_key: Option<String>,
    pub partner_key: Option<String>,
    pub customer_key: Option<String>,
    pub stage: Option<String>,
    /// PartnerStack's deal `source`: `partner` or `vendor`.
    pub deal_source: Option<String>,
    pub lost_reason: Option<String>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

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
    const COLUMNS: &'static str = concat!(
        "t.key, t.account_name, t.amount, t.close_date, t.external_key, t.group_key, ",
        "t.partner_key, t.customer_key, t.stage, t.deal_source, t.lost_reason, ",
        record_columns!()
    );
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key"];
    type Item = Deal;
    type Filters = DealFilters;

    fn partner(f: &DealFilters) -> Result<Option<&str>, ApiError> {
        text("partner_key", f.partner_key.as_deref())
    }

    fn filter(f: &DealFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("group_key", f.group_key.as_deref())? {
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

/// A lead submitted by a partner. Money is in integer cents.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct Lead {
    pub key: String,
    pub amount: Option<i64>,
    pub approved: Option<bool>,
    pub external_key: Option<String>,
    pub group_key: Option<String>,
    pub partner_key: Option<String>,
    /// open, closed, dead, closed won, closed lost, or a value PartnerStack adds later.
    pub status: Option<String>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub record: Record,
}

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
    const COLUMNS: &'static str = concat!(
        "t.key, t.amount, t.approved, t.external_key, t.group_key, t.partner_key, t.status, ",
        record_columns!()
    );
    const PARTNER_COLUMNS: &'static [&'static str] = &["t.partner_key"];
    type Item = Lead;
    type Filters = LeadFilters;

    fn partner(f: &LeadFilters) -> Result<Option<&str>, ApiError> {
        text("partner_key", f.partner_key.as_deref())
    }

    fn filter(f: &LeadFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("group_key", f.group_key.as_deref())? {
            eq(q, "t.group_key", v);
        }
        if let Some(v) = text("status", f.status.as_deref())? {
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
    /// pending, applied, stale, unknown_type or error.
    pub outcome: String,
    /// Why the outcome is what it is (stale, unknown_type, error).
    pub reason: Option<String>,
    pub received_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    /// The table the delivery was applied to (e.g. `customers`).
    pub entity: Option<String>,
    /// The key of the object it carried.
    pub entity_key: Option<String>,
    /// The body as received: always on `/v1/events/{id}`, in lists with
    /// `include=payload`. A body that is not JSON to this reader is given as a string.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub payload: Option<Value>,
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
    /// Only events with this outcome: pending, applied, stale, unknown_type or error.
    pub outcome: Option<String>,
    /// Only events that carried the object with this key.
    pub entity_key: Option<String>,
}

const OUTCOMES: [&str; 5] = ["pending", "applied", "stale", "unknown_type", "error"];

/// `/v1/events`: the raw webhook log.
pub struct Events;

impl Collection for Events {
    const NAME: &'static str = "events";
    const NOUN: &'static str = "event";
    const FROM: &'static str = "webhook_events t";
    const COLUMNS: &'static str = "t.id, t.event_type, t.outcome, t.outcome_reason AS reason, \
        t.received_at, t.applied_at, t.entity, t.entity_key";
    const BODY: &'static str = "t.body AS body";
    const NO_BODY: &'static str = "NULL::text AS body";
    const INCLUDE: &'static str = "payload";
    const UPDATED: &'static str = "COALESCE(t.applied_at, t.received_at)";
    const SOFT_DELETE: bool = false;
    const ORDER: Order = Order::Id;
    const ITEM_HAS_BODY: bool = true;
    type Item = Event;
    type Filters = EventFilters;

    fn filter(f: &EventFilters, q: &mut QueryBuilder<Postgres>) -> Result<(), ApiError> {
        if let Some(v) = text("type", f.event_type.as_deref())? {
            eq(q, "t.event_type", &normalise_event(v));
        }
        if let Some(v) = text("outcome", f.outcome.as_deref())? {
            let v = v.to_ascii_lowercase();
            if !OUTCOMES.contains(&v.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "outcome must be one of {}, got {v:?}",
                    OUTCOMES.join(", ")
                )));
            }
            eq(q, "t.outcome", &v);
        }
        if let Some(v) = text("entity_key", f.entity_key.as_deref())? {
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
        if let Some(body) = item.body.take() {
            item.payload = Some(serde_json::from_str(&body).unwrap_or(Value::String(body)));
        }
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
        assert_eq!(
            accepted::<Partners>(),
            with(&["group_key", "status", "email"])
        );
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
