//! PartnerStack's objects, read tolerantly.
//!
//! Every field is optional and accepts every encoding seen in real data (see
//! [`crate::wire`]); unknown fields are ignored here (a consumer keeps the raw JSON if it
//! needs them). These are pure wire types: what to store, and how, is the consumer's.

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::entity::Entity;
use crate::wire::{self, de};

/// Identity and times every object carries.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Meta {
    /// PartnerStack's key (`part_...`, `cust_...`): the object's identity.
    #[serde(default, deserialize_with = "de::string")]
    pub key: Option<String>,
    /// A numeric internal id some webhook bodies carry instead of `key` (the documented
    /// partnership sample does). It is not a key: nothing is ever identified by it.
    #[serde(default, deserialize_with = "de::string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "de::timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "de::timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl Meta {
    /// The object's key, when it carries a non-blank one.
    pub fn identity(&self) -> Option<&str> {
        self.key.as_deref().filter(|k| !k.trim().is_empty())
    }

    /// The key of a raw object, read as [`Meta::identity`] reads it, even when the rest
    /// of the object does not read. `None` when there is none or it cannot be read.
    pub fn identity_of(object: &Value) -> Option<String> {
        let key = object
            .get("key")
            .map_or(Ok(None), wire::parse_string)
            .ok()?;
        Meta {
            key,
            ..Meta::default()
        }
        .identity()
        .map(str::to_string)
    }
}

/// A reference to another object, nested in this one: `{"key": ..., "name": ...}`, or
/// just its key as a string.
#[derive(Debug, Clone, Default)]
pub struct Ref {
    pub key: Option<String>,
    /// A numeric internal id (webhook samples nest groups with `id` and no `key`).
    pub id: Option<String>,
    pub name: Option<String>,
    pub slug: Option<String>,
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
                id: field("id")?,
                name: field("name")?,
                slug: field("slug")?,
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

impl Ref {
    /// The key of an optional reference.
    pub fn key_of(r: &Option<Ref>) -> Option<String> {
        r.as_ref().and_then(|r| r.key.clone())
    }
}

/// What every object type has: its kind, its identity and its times.
pub trait Object: DeserializeOwned {
    const ENTITY: Entity;
    fn meta(&self) -> &Meta;
}

/// Reads `object` as `T`; a failure names the field and says why.
pub fn read<T: Object>(object: &Value) -> Result<T, String> {
    if !object.is_object() {
        return Err("the object is not a JSON object".into());
    }
    // The plain read first; only a failure pays for tracking where in the object it was.
    match T::deserialize(object) {
        Ok(typed) => Ok(typed),
        Err(_) => serde_path_to_error::deserialize(object)
            .map_err(|e| format!("field `{}`: {}", e.path(), e.inner())),
    }
}

/// Whether `object` reads as an object of `entity` ([`read`] with the entity's type).
pub fn check(entity: Entity, object: &Value) -> Result<(), String> {
    match entity {
        Entity::Partner => read::<Partnership>(object).map(drop),
        Entity::Customer => read::<Customer>(object).map(drop),
        Entity::Transaction => read::<Transaction>(object).map(drop),
        Entity::Reward => read::<Reward>(object).map(drop),
        Entity::Group => read::<Group>(object).map(drop),
        Entity::Deal => read::<Deal>(object).map(drop),
        Entity::Lead => read::<Lead>(object).map(drop),
    }
}

/// A partner's membership of the program (`/partnerships`; `/partners` in the legacy dialect).
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
    /// The legacy dialect's partner name.
    #[serde(default, deserialize_with = "de::string")]
    pub name: Option<String>,
    /// The legacy dialect's `status` (active/inactive), else `approved_status` when sent.
    #[serde(default, deserialize_with = "de::string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "de::string")]
    pub approved_status: Option<String>,
    #[serde(default)]
    pub group: Option<Ref>,
    /// The legacy dialect's flat group key.
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
    /// The legacy dialect's status ("pending", "approved").
    #[serde(default, deserialize_with = "de::string")]
    pub status: Option<String>,
    /// PartnerStack's customer key (the legacy dialect puts your key here).
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
    /// `approved`, else derived from the legacy dialect's status.
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
}

/// A deal registered by a partner.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Deal {
    #[serde(flatten)]
    pub meta: Meta,
    /// A string in generated clients, an object in a production connector's schema: both
    /// are read (an object's `name`).
    #[serde(default, deserialize_with = "de::name_or_object")]
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
        // A numeric `id` is never a key.
        assert_eq!(key(json!({"id": 1234, "amount": "lots"})), None);
        assert_eq!(key(json!({"key": " ", "id": "c"})), None);
        assert_eq!(key(json!({"key": ["cus_1"]})), None);
        assert_eq!(key(json!({"name": "no key"})), None);
        assert_eq!(key(json!("cus_1")), None);
    }
}
