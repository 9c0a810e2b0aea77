//! A write request as the outbox keeps it: validated, normalised and typed, stored in
//! `writes.request` as its own serialised form (the kind is `writes.kind`), and sent by
//! the worker as the `partnerstack` client's types, a mapping that cannot fail.
//!
//! The stored forms are those the outbox has always written, so writes pending at an
//! upgrade are read back and sent: a customer create as its fields; an update as
//! `{"customer_key", "update": {...}}`; a transaction create as its fields with its `key`
//! (derived when the request had none) and `created_at` as RFC 3339 to the millisecond; a
//! delete as `{"key"}`.

use partnerstack::client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::fields::{
    Amount, Currency, Email, IdempotencyKey, Key, Meta, Metadata, Name, Timestamp,
};
use crate::db::writes::{NewWrite, WriteKind};

/// A validated write request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Request {
    CreateCustomer(NewCustomer),
    UpdateCustomer(CustomerUpdate),
    CreateTransaction(NewTransaction),
    DeleteTransaction(TransactionDelete),
}

/// `POST /customers`: a customer referred by a partner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCustomer {
    pub customer_key: Key,
    pub email: Email,
    pub partner_key: Key,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

/// `PATCH /customers/{customer_key}`: the customer, and what to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerUpdate {
    pub customer_key: Key,
    pub update: CustomerChanges,
}

/// The fields of a customer to change (the API refuses an update with none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerChanges {
    /// A new key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

impl CustomerChanges {
    pub fn is_empty(&self) -> bool {
        *self == CustomerChanges::default()
    }
}

/// `POST /transactions`: a billing event, under its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTransaction {
    /// Yours, or derived from the request ([`TransactionFields::derived_key`]).
    pub key: Key,
    #[serde(flatten)]
    pub fields: TransactionFields,
}

/// A billing event's fields but its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionFields {
    #[serde(flatten)]
    pub customer: CustomerRef,
    pub amount: Amount,
    pub currency: Currency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_key: Option<Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_key: Option<Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

/// The customer a transaction is for, one way of naming it (stored as the one field the
/// request named it with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerRef {
    /// Your `customer_key` (PartnerStack's `customer_external_key`).
    #[serde(rename = "customer_key")]
    Key(Key),
    #[serde(rename = "customer_email")]
    Email(Email),
    /// PartnerStack's own customer key.
    #[serde(rename = "customer")]
    PartnerStack(Key),
}

/// `DELETE /transactions/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionDelete {
    pub key: Key,
}

impl TransactionFields {
    /// The key of a transaction sent without one, which PartnerStack de-duplicates by:
    /// from the `Idempotency-Key` when there is one, so its repeats share it; else from
    /// the request itself, so a repeat of the request is the same transaction.
    pub fn derived_key(
        &self,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Key, serde_json::Error> {
        let source = match idempotency_key {
            Some(k) => format!("idempotency-key\n{k}"),
            None => format!("request\n{}", canonical(&serde_json::to_value(self)?)),
        };
        Ok(Key::derived(&Sha256::digest(source)))
    }
}

impl Request {
    pub fn kind(&self) -> WriteKind {
        match self {
            Request::CreateCustomer(_) => WriteKind::CreateCustomer,
            Request::UpdateCustomer(_) => WriteKind::UpdateCustomer,
            Request::CreateTransaction(_) => WriteKind::CreateTransaction,
            Request::DeleteTransaction(_) => WriteKind::DeleteTransaction,
        }
    }

    /// The request as stored (`writes.request`).
    pub fn stored(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    /// Reads a stored request back (the worker). Fails only on a row this code did not
    /// write.
    pub fn from_stored(kind: WriteKind, stored: &Value) -> Result<Request, serde_json::Error> {
        Ok(match kind {
            WriteKind::CreateCustomer => Request::CreateCustomer(Deserialize::deserialize(stored)?),
            WriteKind::UpdateCustomer => Request::UpdateCustomer(Deserialize::deserialize(stored)?),
            WriteKind::CreateTransaction => {
                Request::CreateTransaction(Deserialize::deserialize(stored)?)
            }
            WriteKind::DeleteTransaction => {
                Request::DeleteTransaction(Deserialize::deserialize(stored)?)
            }
        })
    }

    /// The object's key as the caller knows it.
    pub fn object_key(&self) -> &Key {
        match self {
            Request::CreateCustomer(c) => &c.customer_key,
            Request::UpdateCustomer(u) => &u.customer_key,
            Request::CreateTransaction(t) => &t.key,
            Request::DeleteTransaction(d) => &d.key,
        }
    }

    /// The customers (and transactions) the write concerns: writes sharing one are sent
    /// in the order they were accepted.
    pub fn customer_refs(&self) -> Vec<String> {
        let key = |k: &Key| format!("key:{k}");
        let email = |e: &Email| format!("email:{}", e.as_str().to_lowercase());
        let mut refs = Vec::new();
        match self {
            Request::CreateCustomer(c) => {
                refs.push(key(&c.customer_key));
                refs.push(email(&c.email));
            }
            Request::UpdateCustomer(u) => {
                refs.push(key(&u.customer_key));
                refs.extend(u.update.customer_key.as_ref().map(key));
                refs.extend(u.update.email.as_ref().map(email));
            }
            Request::CreateTransaction(t) => {
                refs.push(match &t.fields.customer {
                    CustomerRef::Key(k) => key(k),
                    CustomerRef::Email(e) => email(e),
                    CustomerRef::PartnerStack(k) => format!("ps:{k}"),
                });
                refs.push(format!("transaction:{}", t.key));
            }
            Request::DeleteTransaction(d) => refs.push(format!("transaction:{}", d.key)),
        }
        refs.sort();
        refs.dedup();
        refs
    }

    /// The write to store. `idempotency_key`: the `Idempotency-Key` header, if sent.
    pub fn into_write(
        self,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<NewWrite, serde_json::Error> {
        let kind = self.kind();
        let object_key = self.object_key().to_string();
        let idempotency_key = match idempotency_key {
            Some(k) => Some(format!("header:{k}")),
            None => match kind {
                WriteKind::CreateCustomer => Some(format!("customer:{object_key}")),
                WriteKind::CreateTransaction => Some(format!("transaction:{object_key}")),
                WriteKind::DeleteTransaction => Some(format!("delete_transaction:{object_key}")),
                WriteKind::UpdateCustomer => None,
            },
        };
        let request = self.stored()?;
        let digest = hex::encode(Sha256::digest(format!(
            "{}\n{}",
            kind.as_str(),
            canonical(&request)
        )));
        Ok(NewWrite {
            kind,
            idempotency_key,
            request_digest: digest,
            customer_refs: self.customer_refs(),
            object_key,
            request,
        })
    }
}

impl From<&NewCustomer> for client::NewCustomer {
    fn from(c: &NewCustomer) -> client::NewCustomer {
        client::NewCustomer {
            email: c.email.to_string(),
            partner_key: c.partner_key.to_string(),
            customer_key: Some(c.customer_key.to_string()),
            name: c.name.as_ref().map(ToString::to_string),
            provider_key: c.provider_key.as_ref().map(ToString::to_string),
            member_key: None,
            meta: c.meta.as_ref().map(Meta::to_json),
        }
    }
}

impl From<&CustomerChanges> for client::CustomerUpdate {
    fn from(u: &CustomerChanges) -> client::CustomerUpdate {
        client::CustomerUpdate {
            customer_key: u.customer_key.as_ref().map(ToString::to_string),
            email: u.email.as_ref().map(ToString::to_string),
            name: u.name.as_ref().map(ToString::to_string),
            provider_key: u.provider_key.as_ref().map(ToString::to_string),
            member_key: None,
            meta: u.meta.as_ref().map(Meta::to_json),
        }
    }
}

impl From<&NewTransaction> for client::NewTransaction {
    /// Your customer key becomes `customer_external_key`.
    fn from(t: &NewTransaction) -> client::NewTransaction {
        let f = &t.fields;
        client::NewTransaction {
            customer: match &f.customer {
                CustomerRef::Key(k) => client::TransactionCustomer::ExternalKey(k.to_string()),
                CustomerRef::Email(e) => client::TransactionCustomer::Email(e.to_string()),
                CustomerRef::PartnerStack(k) => client::TransactionCustomer::Key(k.to_string()),
            },
            amount: f.amount.cents(),
            currency: f.currency.to_string(),
            key: Some(t.key.to_string()),
            category_key: f.category_key.as_ref().map(ToString::to_string),
            product_key: f.product_key.as_ref().map(ToString::to_string),
            metadata: f.metadata.as_ref().map(Metadata::to_json),
            test: None,
            created_at: f.created_at.map(Timestamp::time),
        }
    }
}

/// JSON with object keys sorted at every level, so equal requests digest equally whatever
/// the order their fields came in.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&map[k]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // A serde_json map without `preserve_order` is sorted already; with it, the rebuild
    // above inserts in sorted order.
    sorted(value).to_string()
}
