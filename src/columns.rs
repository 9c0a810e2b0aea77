//! The entity tables' columns, each declared once.
//!
//! One [`entity_table!`] per PartnerStack object kind declares its typed columns (name,
//! SQL type, documentation) and generates from that one list:
//! - `<Kind>Columns`, the values `apply()` writes (built from the wire model with a
//!   struct literal, so a declared column cannot be left out), with `COLUMNS` (names and
//!   SQL types, which the upsert statement is generated from) and `into_values`;
//! - `<Kind>`, the row the `/v1` API selects and serves (its select list is generated from
//!   the same `COLUMNS`).
//!
//! The integration test `schema` checks every declaration against the migrated tables
//! (names and types), so a migration that drifts from this file fails a test naming the
//! column. Every table also has the bookkeeping columns in [`BOOKKEEPING`].

use chrono::{DateTime, NaiveDate, Utc};
use partnerstack::Entity;
use serde::Serialize;
use serde_json::Value;
use sqlx::FromRow;
use utoipa::ToSchema;

/// A column's SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    Int,
    Bool,
    Ts,
    Date,
    Json,
}

impl SqlType {
    /// The type's name in SQL casts (`$1::bigint[]`).
    pub fn cast(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::Int => "bigint",
            SqlType::Bool => "boolean",
            SqlType::Ts => "timestamptz",
            SqlType::Date => "date",
            SqlType::Json => "jsonb",
        }
    }

    /// The type's name as `information_schema.columns.data_type` reports it.
    pub fn reported(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::Int => "bigint",
            SqlType::Bool => "boolean",
            SqlType::Ts => "timestamp with time zone",
            SqlType::Date => "date",
            SqlType::Json => "jsonb",
        }
    }
}

/// One declared column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: SqlType,
}

/// One typed value of a column (`None` is SQL NULL).
#[derive(Debug, Clone, PartialEq)]
pub enum Col {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Ts(Option<DateTime<Utc>>),
    Date(Option<NaiveDate>),
    Json(Option<Value>),
}

/// The columns every entity table has besides its own, in table order (`apply()` keeps
/// them; see `migrations/0001_init.sql` and `0016_deletions_that_stick.sql`).
pub const BOOKKEEPING: &[Column] = &[
    Column {
        name: "key",
        ty: SqlType::Text,
    },
    Column {
        name: "created_at",
        ty: SqlType::Ts,
    },
    Column {
        name: "updated_at",
        ty: SqlType::Ts,
    },
    Column {
        name: "observed_at",
        ty: SqlType::Ts,
    },
    Column {
        name: "deleted_at",
        ty: SqlType::Ts,
    },
    Column {
        name: "raw",
        ty: SqlType::Json,
    },
    Column {
        name: "source",
        ty: SqlType::Text,
    },
    Column {
        name: "synced_at",
        ty: SqlType::Ts,
    },
    Column {
        name: "undeleted_after",
        ty: SqlType::Ts,
    },
];

/// The table holding `entity`'s objects.
pub fn table(entity: Entity) -> &'static str {
    match entity {
        Entity::Partner => "partners",
        Entity::Customer => "customers",
        Entity::Transaction => "transactions",
        Entity::Reward => "rewards",
        Entity::Group => "groups",
        Entity::Deal => "deals",
        Entity::Lead => "leads",
    }
}

/// A collection's name under `/v1` (`partners`, `customers`, ...), which is also its
/// table's: served as that word, described in OpenAPI as the enum `Collection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionName(pub Entity);

impl CollectionName {
    /// The collection whose table is `name`.
    pub fn parse(name: &str) -> Option<CollectionName> {
        Entity::ALL
            .into_iter()
            .find(|e| table(*e) == name)
            .map(CollectionName)
    }

    pub fn as_str(self) -> &'static str {
        table(self.0)
    }
}

impl Serialize for CollectionName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for CollectionName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        word_enum(
            "A collection under `/v1`.",
            Entity::ALL.into_iter().map(table),
        )
    }
}

impl ToSchema for CollectionName {
    fn name() -> std::borrow::Cow<'static, str> {
        "Collection".into()
    }
}

/// A string schema of `words`, described by `description`.
pub fn word_enum(
    description: &str,
    words: impl IntoIterator<Item = &'static str>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(words))
        .into()
}

/// The name a column is served under on `/v1` (and in the change log): its own, except a
/// group's `is_default`, served as PartnerStack's `default` (a reserved word in SQL).
pub fn served_name(column: &str) -> &str {
    match column {
        "is_default" => "default",
        other => other,
    }
}

/// `entity`'s own typed columns, in declaration order.
pub fn of(entity: Entity) -> &'static [Column] {
    match entity {
        Entity::Partner => PartnerColumns::COLUMNS,
        Entity::Customer => CustomerColumns::COLUMNS,
        Entity::Transaction => TransactionColumns::COLUMNS,
        Entity::Reward => RewardColumns::COLUMNS,
        Entity::Group => GroupColumns::COLUMNS,
        Entity::Deal => DealColumns::COLUMNS,
        Entity::Lead => LeadColumns::COLUMNS,
    }
}

crate::text_enum! {
    /// Where an observation came from; stored as the row's provenance (`source`).
    pub enum Source {
        Webhook = "webhook",
        Reconcile = "reconcile",
        /// This service's own writes to PartnerStack (reserved; stored and logged as such).
        Write = "write",
    }
}

// The served part of `BOOKKEEPING`.
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
    /// Where the stored version came from.
    pub source: Source,
    /// When the stored version was applied here.
    pub synced_at: DateTime<Utc>,
    /// The object as PartnerStack last sent it, unknown fields included; only with
    /// `include=raw`. Served as stored, never parsed into a tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub raw: Option<sqlx::types::Json<Box<serde_json::value::RawValue>>>,
}

impl Record {
    /// The bytes of the raw body it carries, if any.
    pub fn body_bytes(&self) -> usize {
        self.raw.as_ref().map_or(0, |raw| raw.0.get().len())
    }
}

/// The Rust types a column can have, each with its SQL type.
pub trait ColumnType {
    const SQL: SqlType;
    fn into_col(self) -> Col;
}

macro_rules! column_type {
    ($rust:ty, $sql:ident) => {
        impl ColumnType for Option<$rust> {
            const SQL: SqlType = SqlType::$sql;
            fn into_col(self) -> Col {
                Col::$sql(self)
            }
        }
    };
}

column_type!(String, Text);
column_type!(i64, Int);
column_type!(bool, Bool);
column_type!(DateTime<Utc>, Ts);
column_type!(NaiveDate, Date);
column_type!(Value, Json);

/// Declares one entity table's typed columns (see the module documentation).
macro_rules! entity_table {
    (
        $(#[$row_meta:meta])*
        $row:ident, $values:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty ),+ $(,)?
        }
    ) => {
        /// The typed columns `apply()` writes (see [`crate::columns`]).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $values {
            $( pub $field: $ty, )+
        }

        impl $values {
            /// The columns, in declaration order.
            pub const COLUMNS: &'static [Column] = &[
                $( Column { name: stringify!($field), ty: <$ty as ColumnType>::SQL }, )+
            ];

            /// The values, in [`Self::COLUMNS`] order.
            pub fn into_values(self) -> Vec<Col> {
                vec![ $( ColumnType::into_col(self.$field), )+ ]
            }
        }

        $(#[$row_meta])*
        #[derive(Debug, Serialize, FromRow, ToSchema)]
        pub struct $row {
            pub key: String,
            $( $(#[$field_meta])* pub $field: $ty, )+
            #[serde(flatten)]
            #[sqlx(flatten)]
            pub record: Record,
        }
    };
}

entity_table! {
    /// A partner's membership of the program (PartnerStack's partnership). `key` is the
    /// partnership key (`part_...`).
    Partner, PartnerColumns {
        /// The partner's readable key, unique in the program.
        partner_key: Option<String>,
        email: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        name: Option<String>,
        group_key: Option<String>,
        group_name: Option<String>,
        team_key: Option<String>,
        #[schema(value_type = Option<Vec<String>>)]
        tags: Option<Value>,
        joined_at: Option<DateTime<Utc>>,
    }
}

entity_table! {
    /// A customer referred by a partner. `key` is PartnerStack's key for the customer.
    Customer, CustomerColumns {
        /// Your own key for the customer (not guaranteed unique).
        customer_key: Option<String>,
        email: Option<String>,
        name: Option<String>,
        /// The referring partner's readable key.
        partner_key: Option<String>,
        /// The referring partnership's key.
        partnership_key: Option<String>,
        /// e.g. the Stripe customer id.
        provider_key: Option<String>,
        source_key: Option<String>,
        source_type: Option<String>,
        test: Option<bool>,
    }
}

entity_table! {
    /// A billing event that can earn a partner a reward. Money is in integer cents. `key`
    /// is the transaction's key (yours, when you gave one).
    Transaction, TransactionColumns {
        /// Cents in `currency`; negative for refunds.
        amount: Option<i64>,
        /// The amount in US cents, as PartnerStack converted it.
        amount_usd: Option<i64>,
        /// ISO 4217, upper case.
        currency: Option<String>,
        approved: Option<bool>,
        /// PartnerStack's flag, when an answer carries one (Vendor answers reportedly do
        /// not); an archived transaction is also marked deleted.
        archived: Option<bool>,
        /// `approved` or `pending` (derived from `approved` when PartnerStack sent no status).
        status: Option<String>,
        /// PartnerStack's key for the customer.
        customer_key: Option<String>,
        /// Your key for the customer (`customer.external_key`).
        customer_external_key: Option<String>,
        /// The partner credited: the transaction's own `partner_key`, else its customer's.
        partner_key: Option<String>,
        category_key: Option<String>,
        product_key: Option<String>,
        test: Option<bool>,
    }
}

entity_table! {
    /// A commission earned by a partner. Money is in integer cents.
    Reward, RewardColumns {
        /// Cents in `currency`; negative for clawbacks.
        amount: Option<i64>,
        currency: Option<String>,
        description: Option<String>,
        /// hold, pending, approved, declined, paid, scheduled, or a value PartnerStack adds
        /// later.
        reward_status: Option<String>,
        partnership_key: Option<String>,
        /// The partner's readable key (from the partnership when the reward has none).
        partner_key: Option<String>,
        /// PartnerStack's key for the customer.
        customer_key: Option<String>,
        /// Your key for the customer.
        customer_external_key: Option<String>,
        transaction_key: Option<String>,
    }
}

entity_table! {
    /// A partner group (commission plan).
    Group, GroupColumns {
        name: Option<String>,
        slug: Option<String>,
        /// Whether new partners join this group by default (PartnerStack's `default`).
        #[serde(rename = "default")]
        is_default: Option<bool>,
        archived: Option<bool>,
    }
}

entity_table! {
    /// A deal registered by a partner. Money is in integer cents.
    Deal, DealColumns {
        account_name: Option<String>,
        amount: Option<i64>,
        /// `YYYY-MM-DD`.
        close_date: Option<NaiveDate>,
        external_key: Option<String>,
        group_key: Option<String>,
        partner_key: Option<String>,
        customer_key: Option<String>,
        stage: Option<String>,
        /// PartnerStack's deal `source`: `partner` or `vendor` (`source` is this
        /// service's provenance field).
        deal_source: Option<String>,
        lost_reason: Option<String>,
    }
}

entity_table! {
    /// A lead submitted by a partner. Money is in integer cents.
    Lead, LeadColumns {
        amount: Option<i64>,
        approved: Option<bool>,
        external_key: Option<String>,
        group_key: Option<String>,
        partner_key: Option<String>,
        /// open, closed, dead, closed won, closed lost, or a value PartnerStack adds later.
        status: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_out_in_declaration_order_with_their_declared_types() {
        let values = CustomerColumns {
            customer_key: Some("c-1".into()),
            test: Some(true),
            ..CustomerColumns::default()
        }
        .into_values();
        assert_eq!(values.len(), CustomerColumns::COLUMNS.len());
        assert_eq!(values[0], Col::Text(Some("c-1".into())));
        assert_eq!(values.last(), Some(&Col::Bool(Some(true))));
        for entity in Entity::ALL {
            let names: Vec<&str> = of(entity).iter().map(|c| c.name).collect();
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                names.len(),
                "{entity:?} declares a column twice"
            );
            assert!(
                names
                    .iter()
                    .all(|n| BOOKKEEPING.iter().all(|b| b.name != *n)),
                "{entity:?} redeclares a bookkeeping column"
            );
        }
    }
}
