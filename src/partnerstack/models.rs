//! PartnerStack's objects, read tolerantly.
//!
//! Every field is optional and accepts every encoding seen in real data (see
//! [`super::wire`]); unknown fields are ignored here and kept in the raw JSON stored next
//! to the typed columns. Each object knows the typed columns it fills in its table
//! ([`Object::columns`]); the names match `migrations/`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::wire::{self, de};
use crate::apply::Col;

/// The kinds of object the service keeps, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Partner,
    Customer,
    Transaction,
    Reward,
    Group,
    Deal,
    Lead,
}

impl Entity {
    pub const ALL: [Entity; 7] = [
        Entity::Partner,
        Entity::Customer,
        Entity::Transaction,
        Entity::Reward,
        Entity::Group,
        Entity::Deal,
        Entity::Lead,
    ];

    /// The table holding this kind of object.
    pub fn table(self) -> &'static str {
        match self {
            Entity::Partner => "partners",
            Entity::Customer => "customers",
            Entity::Transaction => "transactions",
            Entity::Reward => "rewards",
            Entity::Group => "groups",
            Entity::Deal => "deals",
            Entity::Lead => "leads",
        }
    }

    /// The singular name used in event names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Partner => "partnership",
            Entity::Customer => "customer",
            Entity::Transaction => "transaction",
            Entity::Reward => "reward",
            Entity::Group => "group",
            Entity::Deal => "deal",
            Entity::Lead => "lead",
        }
    }

    /// The name of this kind's v2 list stream (`/partnerships`, `/customers`, ...), as
    /// used in settings and on the command line.
    pub fn stream(self) -> &'static str {
        match self {
            Entity::Partner => "partnerships",
            Entity::Customer => "customers",
            Entity::Transaction => "transactions",
            Entity::Reward => "rewards",
            Entity::Group => "groups",
            Entity::Deal => "deals",
            Entity::Lead => "leads",
        }
    }

    /// The entity of a stream name; the brief's `partners` is `partnerships`.
    pub fn from_stream(name: &str) -> Option<Entity> {
        match name.trim().to_ascii_lowercase().as_str() {
            "partners" => Some(Entity::Partner),
            other => Entity::ALL.into_iter().find(|e| e.stream() == other),
        }
    }

    /// [`Entity::from_stream`], or the error naming the valid streams.
    pub fn parse_stream(name: &str) -> Result<Entity, String> {
        Entity::from_stream(name).ok_or_else(|| {
            let valid: Vec<&str> = Entity::ALL.iter().map(|e| e.stream()).collect();
            format!(
                "unknown stream {name:?}; valid streams: {}",
                valid.join(", ")
            )
        })
    }

    /// The entity an event-name prefix refers to (`partner` and `partnership` are one).
    pub fn from_event_prefix(prefix: &str) -> Option<Entity> {
        Some(match prefix {
            "partner" | "partnership" => Entity::Partner,
            "customer" => Entity::Customer,
            "transaction" => Entity::Transaction,
            "reward" => Entity::Reward,
            "group" => Entity::Group,
            "deal" => Entity::Deal,
            "lead" => Entity::Lead,
            _ => return None,
        })
    }
}

/// Identity and times every object carries.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Meta {
    #[serde(default, deserialize_with = "de::string")]
    pub key: Option<String>,
    /// Some webhook samples carry a numeric `id` instead of `key`.
    #[serde(default, deserialize_with = "de::string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "de::timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "de::timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl Meta {
    /// The object's key: `key`, else `id`.
    pub fn identity(&self) -> Option<&str> {
        self.key
            .as_deref()
            .or(self.id.as_deref())
            .filter(|k| !k.trim().is_empty())
    }

    /// The key of a raw object, read as [`Meta::identity`] reads it, even when the rest
    /// of the object does not read. `None` when there is none or it cannot be read.
    pub fn identity_of(object: &Value) -> Option<String> {
        let read = |field: &str| object.get(field).map_or(Ok(None), wire::parse_string);
        let meta = Meta {
            key: read("key").ok()?,
            id: read("id").ok()?,
            ..Meta::default()
        };
        meta.identity().map(str::to_string)
    }
}

/// A reference to another object, nested in this one: `{"key": ..., "name": ...}`, or
/// just its key as a string.
#[derive(Debug, Clone, Default)]
pub struct Ref {
    pub key: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub external_key: Option<String>,
    pub partner_key: Option<String>,
}

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(d)?;
        let field = |name: &str| match &value {
            Value::Object(map) => map
                .get(name)
                .map_or(Ok(None), wire::parse_string)
                .map_err(|e| D::Error::custom(format!("{name}: {e}"))),
            _ => Ok(None),
        };
        match &value {
            Value::Null => Ok(Ref::default()),
            Value::Object(_) => Ok(Ref {
                key: field("key")?,
                name: field("name")?,
                email: field("email")?,
                external_key: field("external_key")?,
                partner_key: field("partner_key")?,
            }),
            other => Ok(Ref {
                key: wire::parse_string(other).map_err(D::Error::custom)?,
                ..Ref::default()
            }),
        }
    }
}

fn ref_key(r: &Option<Ref>) -> Option<String> {
    r.as_ref().and_then(|r| r.key.clone())
}

/// What every object type provides to the one door ([`crate::apply`]).
pub trait Object: DeserializeOwned {
    const ENTITY: Entity;
    fn meta(&self) -> &Meta;
    /// Typed columns, named as in the entity's table, always in the same order.
    fn columns(&self) -> Vec<(&'static str, Col)>;
}

/// A partner's membership of the program (`/partnerships`; the brief's "partner").
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Partnership {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "de::string")]
    pub partner_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub last_name: Option<String>,
    /// The brief's partner name.
    #[serde(default, deserialize_with = "de::string")]
    pub name: Option<String>,
    /// The brief's `status` (active/inactive); the real API's `approved_status` otherwise.
    #[serde(default, deserialize_with = "de::string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub approved_status: Option<String>,
    #[serde(default)]
    pub group: Option<Ref>,
    /// The brief's flat group key.
    #[serde(default, deserialize_with = "de::string")]
    pub group_key: Option<String>,
    #[serde(default)]
    pub team: Option<Ref>,
    #[serde(default)]
    pub tags: Option<Value>,
    #[serde(default, deserialize_with = "de::timestamp")]
    pub joined_at: Option<DateTime<Utc>>,
}

impl Object for Partnership {
    const ENTITY: Entity = Entity::Partner;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        vec![
            ("partner_key", Col::Text(self.partner_key.clone())),
            ("email", Col::Text(self.email.clone())),
            ("first_name", Col::Text(self.first_name.clone())),
            ("last_name", Col::Text(self.last_name.clone())),
            ("name", Col::Text(self.name.clone())),
            (
                "status",
                Col::Text(self.status.clone().or_else(|| self.approved_status.clone())),
            ),
            (
                "group_key",
                Col::Text(ref_key(&self.group).or_else(|| self.group_key.clone())),
            ),
            (
                "group_name",
                Col::Text(self.group.as_ref().and_then(|g| g.name.clone())),
            ),
            ("team_key", Col::Text(ref_key(&self.team))),
            (
                "tags",
                Col::Json(self.tags.clone().filter(|t| !t.is_null())),
            ),
            ("joined_at", Col::Ts(self.joined_at)),
        ]
    }
}

/// A customer referred by a partner.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Customer {
    #[serde(flatten)]
    pub meta: Meta,
    /// Your own key for the customer.
    #[serde(default, deserialize_with = "de::string")]
    pub customer_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub partner_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub partnership_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub provider_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub source_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub source_type: Option<String>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub test: Option<bool>,
}

impl Object for Customer {
    const ENTITY: Entity = Entity::Customer;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        vec![
            ("customer_key", Col::Text(self.customer_key.clone())),
            ("email", Col::Text(self.email.clone())),
            ("name", Col::Text(self.name.clone())),
            ("partner_key", Col::Text(self.partner_key.clone())),
            ("partnership_key", Col::Text(self.partnership_key.clone())),
            ("provider_key", Col::Text(self.provider_key.clone())),
            ("source_key", Col::Text(self.source_key.clone())),
            ("source_type", Col::Text(self.source_type.clone())),
            ("test", Col::Bool(self.test)),
        ]
    }
}

/// A billing event that can earn a partner a reward.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Transaction {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "de::cents")]
    pub amount: Option<i64>,
    #[serde(default, deserialize_with = "de::cents")]
    pub amount_usd: Option<i64>,
    #[serde(default, deserialize_with = "de::string")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub approved: Option<bool>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub archived: Option<bool>,
    /// The brief's status ("pending", "approved").
    #[serde(default, deserialize_with = "de::string")]
    pub status: Option<String>,
    /// PartnerStack's customer key (the brief uses it for your key).
    #[serde(default, deserialize_with = "de::string")]
    pub customer_key: Option<String>,
    #[serde(default)]
    pub customer: Option<Ref>,
    #[serde(default, deserialize_with = "de::string")]
    pub partner_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub category_key: Option<String>,
    #[serde(default, deserialize_with = "de::key_or_object")]
    pub product_key: Option<String>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub test: Option<bool>,
}

impl Transaction {
    /// `approved`, else derived from the brief's status.
    pub fn is_approved(&self) -> Option<bool> {
        self.approved.or_else(|| {
            self.status
                .as_deref()
                .map(|s| s.eq_ignore_ascii_case("approved"))
        })
    }
}

impl Object for Transaction {
    const ENTITY: Entity = Entity::Transaction;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        let approved = self.is_approved();
        let status = self
            .status
            .clone()
            .map(|s| s.to_ascii_lowercase())
            .or_else(|| approved.map(|a| if a { "approved" } else { "pending" }.to_string()));
        vec![
            ("amount", Col::Int(self.amount)),
            ("amount_usd", Col::Int(self.amount_usd)),
            (
                "currency",
                Col::Text(self.currency.as_ref().map(|c| c.to_ascii_uppercase())),
            ),
            ("approved", Col::Bool(approved)),
            ("archived", Col::Bool(self.archived)),
            ("status", Col::Text(status)),
            (
                "customer_key",
                Col::Text(
                    self.customer_key
                        .clone()
                        .or_else(|| ref_key(&self.customer)),
                ),
            ),
            (
                "customer_external_key",
                Col::Text(self.customer.as_ref().and_then(|c| c.external_key.clone())),
            ),
            ("partner_key", Col::Text(self.partner_key.clone())),
            ("category_key", Col::Text(self.category_key.clone())),
            ("product_key", Col::Text(self.product_key.clone())),
            ("test", Col::Bool(self.test)),
        ]
    }
}

/// A commission earned by a partner.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Reward {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "de::cents")]
    pub amount: Option<i64>,
    #[serde(default, deserialize_with = "de::string")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub description: Option<String>,
    /// hold, pending, approved, declined, paid, scheduled, or a future value.
    #[serde(default, deserialize_with = "de::string")]
    pub reward_status: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub status: Option<String>,
    #[serde(default)]
    pub partnership: Option<Ref>,
    #[serde(default, deserialize_with = "de::string")]
    pub partnership_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub partner_key: Option<String>,
    #[serde(default)]
    pub customer: Option<Ref>,
    #[serde(default)]
    pub transaction: Option<Ref>,
}

impl Object for Reward {
    const ENTITY: Entity = Entity::Reward;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        let status = self.reward_status.clone().or_else(|| self.status.clone());
        vec![
            ("amount", Col::Int(self.amount)),
            (
                "currency",
                Col::Text(self.currency.as_ref().map(|c| c.to_ascii_uppercase())),
            ),
            ("description", Col::Text(self.description.clone())),
            (
                "reward_status",
                Col::Text(status.map(|s| s.to_ascii_lowercase())),
            ),
            (
                "partnership_key",
                Col::Text(ref_key(&self.partnership).or_else(|| self.partnership_key.clone())),
            ),
            (
                "partner_key",
                Col::Text(self.partner_key.clone().or_else(|| {
                    self.partnership
                        .as_ref()
                        .and_then(|p| p.partner_key.clone())
                })),
            ),
            ("customer_key", Col::Text(ref_key(&self.customer))),
            (
                "customer_external_key",
                Col::Text(self.customer.as_ref().and_then(|c| c.external_key.clone())),
            ),
            ("transaction_key", Col::Text(ref_key(&self.transaction))),
        ]
    }
}

/// A partner group (commission plan).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Group {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "de::string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub slug: Option<String>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub default: Option<bool>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub archived: Option<bool>,
}

impl Object for Group {
    const ENTITY: Entity = Entity::Group;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        vec![
            ("name", Col::Text(self.name.clone())),
            ("slug", Col::Text(self.slug.clone())),
            ("is_default", Col::Bool(self.default)),
            ("archived", Col::Bool(self.archived)),
        ]
    }
}

/// A deal registered by a partner.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Deal {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "de::string")]
    pub account_name: Option<String>,
    #[serde(default, deserialize_with = "de::cents")]
    pub amount: Option<i64>,
    #[serde(default, deserialize_with = "de::date")]
    pub close_date: Option<NaiveDate>,
    #[serde(default, deserialize_with = "de::string")]
    pub external_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub group_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub partner_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub customer_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub stage: Option<String>,
    /// "partner" or "vendor".
    #[serde(default, deserialize_with = "de::string")]
    pub source: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub lost_reason: Option<String>,
}

impl Object for Deal {
    const ENTITY: Entity = Entity::Deal;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        vec![
            ("account_name", Col::Text(self.account_name.clone())),
            ("amount", Col::Int(self.amount)),
            ("close_date", Col::Date(self.close_date)),
            ("external_key", Col::Text(self.external_key.clone())),
            ("group_key", Col::Text(self.group_key.clone())),
            ("partner_key", Col::Text(self.partner_key.clone())),
            ("customer_key", Col::Text(self.customer_key.clone())),
            ("stage", Col::Text(self.stage.clone())),
            ("deal_source", Col::Text(self.source.clone())),
            ("lost_reason", Col::Text(self.lost_reason.clone())),
        ]
    }
}

/// A lead submitted by a partner.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Lead {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "de::cents")]
    pub amount: Option<i64>,
    #[serde(default, deserialize_with = "de::boolean")]
    pub approved: Option<bool>,
    #[serde(default, deserialize_with = "de::string")]
    pub external_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub group_key: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub partner_key: Option<String>,
    /// open, closed, dead, closed won, closed lost, or a future value.
    #[serde(default, deserialize_with = "de::string")]
    pub status: Option<String>,
}

impl Object for Lead {
    const ENTITY: Entity = Entity::Lead;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        vec![
            ("amount", Col::Int(self.amount)),
            ("approved", Col::Bool(self.approved)),
            ("external_key", Col::Text(self.external_key.clone())),
            ("group_key", Col::Text(self.group_key.clone())),
            ("partner_key", Col::Text(self.partner_key.clone())),
            ("status", Col::Text(self.status.clone())),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_key_of_an_object_that_does_not_read() {
        let key = |v: Value| Meta::identity_of(&v);
        // The rest of the object is unreadable; the key is not.
        assert_eq!(
            key(json!({"key": "cus_1", "created_at": "yesterday"})),
            Some("cus_1".into())
        );
        assert_eq!(
            key(json!({"id": 1234, "amount": "lots"})),
            Some("1234".into())
        );
        assert_eq!(key(json!({"key": " ", "id": "c"})), None);
        assert_eq!(key(json!({"key": ["cus_1"]})), None);
        assert_eq!(key(json!({"name": "no key"})), None);
        assert_eq!(key(json!("cus_1")), None);
    }
}
