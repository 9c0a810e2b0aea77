//! Writes to PartnerStack through the service: validated here, committed to the outbox
//! (`writes`, see [`crate::db::writes`]) before the caller gets an answer, and sent by the
//! [`worker`] with exactly one upstream effect per write.
//!
//! A request becomes a [`Request`] (checked field by field; nothing is stored when a field
//! is wrong), then a [`NewWrite`]: its idempotency key (the `Idempotency-Key` header, else
//! the object's own key), a digest of the request (a repeat with another body is refused),
//! and the customers it concerns (writes about one customer are sent in the order they
//! were accepted).

pub mod worker;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use partnerstack::client::{CustomerUpdate, NewCustomer, NewTransaction, TransactionCustomer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::db::writes::{NewWrite, WriteKind};
use crate::error::ApiError;

/// Longest key or text field accepted (PartnerStack's own limit for keys and emails).
const MAX_TEXT: usize = 255;
/// Most attributes in a transaction's `metadata` (PartnerStack advises few).
const MAX_METADATA: usize = 20;
/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Latest `created_at` accepted as epoch milliseconds (the end of year 9999).
const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

// The request types' OpenAPI description says what the checks below accept: text fields
// are 1 to 255 characters (`name` 100), not blank, without control characters (the
// `pattern`s); emails 4 to 255 characters with an `@`, no space or control character;
// currencies three letters; `created_at` an RFC 3339 time or epoch milliseconds; `meta`
// and `metadata` without NUL anywhere ([`Meta`]); and [`body_rules`] what no one field
// can say.

/// What the API and the worker share: the worker is woken when a write is accepted, and
/// waiters when one finishes.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// A write was accepted on this replica.
    pub accepted: Arc<Notify>,
    /// A write finished on this replica.
    pub finished: Arc<Notify>,
}

/// `POST /v1/customers`: a customer referred by a partner.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    /// Your key for the customer (PartnerStack's `customer_key`); the write's default
    /// idempotency key.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub customer_key: String,
    #[schema(
        min_length = 4,
        max_length = 255,
        pattern = "^[^\\s\\x00-\\x1F\\x7F-\\x9F]*@[^\\s\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub email: String,
    /// The referring partner's `partner_key`.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub partner_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub name: Option<String>,
    /// E.g. the customer's id at your payment provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub provider_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<Meta>)]
    pub meta: Option<Map<String, Value>>,
}

/// `PATCH /v1/customers/{customer_key}`: the fields to change (at least one).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomer {
    /// A new key for the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub customer_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 4,
        max_length = 255,
        pattern = "^[^\\s\\x00-\\x1F\\x7F-\\x9F]*@[^\\s\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub provider_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<Meta>)]
    pub meta: Option<Map<String, Value>>,
    /// Not updatable: present only to say so.
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    partner_key: Option<Value>,
}

/// `POST /v1/transactions`: a billing event of a referred customer. Exactly one of
/// `customer_key` (yours), `customer_email` or `customer` (PartnerStack's customer key).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransaction {
    /// Your key for the transaction (4 to 255 characters); without one, a key is derived
    /// from the request (or from the `Idempotency-Key`) and stated in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 4,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub key: Option<String>,
    /// Your key for the customer (sent to PartnerStack as `customer_external_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub customer_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 4,
        max_length = 255,
        pattern = "^[^\\s\\x00-\\x1F\\x7F-\\x9F]*@[^\\s\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub customer_email: Option<String>,
    /// PartnerStack's own customer key (`cust_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub customer: Option<String>,
    /// Integer cents; negative for a refund.
    #[serde(deserialize_with = "whole_number")]
    pub amount: i64,
    /// ISO 4217, three letters (either case).
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub category_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub product_key: Option<String>,
    /// At most 20 attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<Metadata>)]
    pub metadata: Option<Map<String, Value>>,
    /// When the billing event happened: an RFC 3339 time, or epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, schema_with = created_at_schema)]
    pub created_at: Option<Value>,
}

/// A validated write request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    CreateCustomer(Value),
    UpdateCustomer { customer_key: String, update: Value },
    CreateTransaction(Value),
    DeleteTransaction { key: String },
}

/// Reads a JSON object body as `T`, naming the field that is wrong.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the body is empty; send a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::bad_request("invalid body: send a JSON object"));
    };
    // A field is given a value or left out: null is not a value here.
    if let Some((field, _)) = object.iter().find(|(_, v)| v.is_null()) {
        return Err(ApiError::bad_request(format!(
            "{field} is null; leave it out instead"
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("invalid field {path}: {}", e.inner()))
        }
    })
}

/// A text field: at most `max` characters, not blank, no control characters; trimmed.
fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field} contains a control character"
        )));
    }
    Ok(value.trim().to_string())
}

fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// An email as PartnerStack accepts it: 4 to 255 characters with an `@`, no space.
fn email(field: &str, value: &str) -> Result<String, ApiError> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "{field} is not an email address"
        )));
    }
    let value = text(field, value, MAX_TEXT)?;
    if value.chars().count() < 4 || !value.contains('@') {
        return Err(ApiError::bad_request(format!(
            "{field} is not an email address"
        )));
    }
    Ok(value)
}

/// A map without NUL anywhere (Postgres cannot store it).
/// `meta` or `metadata`: attributes whose values are strings, numbers, booleans or null,
/// without NUL in any name or string (Postgres cannot store it).
fn map(
    field: &str,
    value: Option<Map<String, Value>>,
) -> Result<Option<Map<String, Value>>, ApiError> {
    for (name, v) in value.iter().flatten() {
        if name.contains('\0') || v.as_str().is_some_and(|s| s.contains('\0')) {
            return Err(ApiError::bad_request(format!(
                "{field} contains a NUL character"
            )));
        }
        if v.is_array() || v.is_object() {
            return Err(ApiError::bad_request(format!(
                "{field}.{name} must be a string, number, boolean or null"
            )));
        }
    }
    Ok(value)
}

impl Request {
    /// `POST /v1/customers`.
    pub fn create_customer(bytes: &[u8]) -> Result<Request, ApiError> {
        let c: CreateCustomer = body(bytes)?;
        let c = CreateCustomer {
            customer_key: text("customer_key", &c.customer_key, MAX_TEXT)?,
            email: email("email", &c.email)?,
            partner_key: text("partner_key", &c.partner_key, MAX_TEXT)?,
            name: optional_text("name", c.name.as_deref(), 100)?,
            provider_key: optional_text("provider_key", c.provider_key.as_deref(), MAX_TEXT)?,
            meta: map("meta", c.meta)?,
        };
        Ok(Request::CreateCustomer(to_value(&c)?))
    }

    /// `PATCH /v1/customers/{customer_key}`.
    pub fn update_customer(customer_key: &str, bytes: &[u8]) -> Result<Request, ApiError> {
        let customer_key = text("the path's customer_key", customer_key, MAX_TEXT)?;
        let u: UpdateCustomer = body(bytes)?;
        if u.partner_key.is_some() {
            return Err(ApiError::bad_request(
                "partner_key cannot be updated: a customer keeps the partner that referred it",
            ));
        }
        let u = UpdateCustomer {
            customer_key: optional_text("customer_key", u.customer_key.as_deref(), MAX_TEXT)?,
            email: u.email.as_deref().map(|e| email("email", e)).transpose()?,
            name: optional_text("name", u.name.as_deref(), 100)?,
            provider_key: optional_text("provider_key", u.provider_key.as_deref(), MAX_TEXT)?,
            meta: map("meta", u.meta)?,
            partner_key: None,
        };
        let update = to_value(&u)?;
        if update.as_object().is_none_or(Map::is_empty) {
            return Err(ApiError::bad_request(
                "nothing to update: send at least one of customer_key, email, name, provider_key, meta",
            ));
        }
        Ok(Request::UpdateCustomer {
            customer_key,
            update,
        })
    }

    /// `POST /v1/transactions`. `idempotency_key` (the header) decides a derived key.
    pub fn create_transaction(
        bytes: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<Request, ApiError> {
        let t: CreateTransaction = body(bytes)?;
        let named = [&t.customer_key, &t.customer_email, &t.customer]
            .iter()
            .filter(|c| c.is_some())
            .count();
        if named != 1 {
            return Err(ApiError::bad_request(
                "name the customer with exactly one of customer_key (yours), customer_email or customer (PartnerStack's key)",
            ));
        }
        let currency = t.currency.to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ApiError::bad_request(format!(
                "currency must be three letters (ISO 4217), got {:?}",
                t.currency
            )));
        }
        if t.metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA) {
            return Err(ApiError::bad_request(format!(
                "metadata has more than {MAX_METADATA} attributes"
            )));
        }
        let created_at = match &t.created_at {
            None => None,
            Some(v) => Some(
                request_time(v)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "created_at must be an RFC 3339 time or epoch milliseconds \
                             (a whole number from 0 to the end of year 9999)",
                        )
                    })?
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        };
        let key = match t.key.as_deref() {
            Some(k) => {
                if k.chars().count() < 4 {
                    return Err(ApiError::bad_request("key must be 4 to 255 characters"));
                }
                Some(text("key", k, MAX_TEXT)?)
            }
            None => None,
        };
        let mut t = CreateTransaction {
            key,
            customer_key: optional_text("customer_key", t.customer_key.as_deref(), MAX_TEXT)?,
            customer_email: t
                .customer_email
                .as_deref()
                .map(|e| email("customer_email", e))
                .transpose()?,
            customer: optional_text("customer", t.customer.as_deref(), MAX_TEXT)?,
            amount: t.amount,
            currency,
            category_key: optional_text("category_key", t.category_key.as_deref(), MAX_TEXT)?,
            product_key: optional_text("product_key", t.product_key.as_deref(), MAX_TEXT)?,
            metadata: map("metadata", t.metadata)?,
            created_at: created_at.map(Value::String),
        };
        if t.key.is_none() {
            // A key PartnerStack de-duplicates by: from the Idempotency-Key when given, so
            // its repeats share it; else from the request itself.
            let source = match idempotency_key {
                Some(k) => format!("idempotency-key\n{k}"),
                None => format!("request\n{}", canonical(&to_value(&t)?)),
            };
            t.key = Some(format!(
                "psync-{}",
                &hex::encode(Sha256::digest(source))[..32]
            ));
        }
        Ok(Request::CreateTransaction(to_value(&t)?))
    }

    /// `DELETE /v1/transactions/{key}`.
    pub fn delete_transaction(key: &str, bytes: &[u8]) -> Result<Request, ApiError> {
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("a delete takes no body"));
        }
        Ok(Request::DeleteTransaction {
            key: text("the path's key", key, MAX_TEXT)?,
        })
    }

    pub fn kind(&self) -> WriteKind {
        match self {
            Request::CreateCustomer(_) => WriteKind::CreateCustomer,
            Request::UpdateCustomer { .. } => WriteKind::UpdateCustomer,
            Request::CreateTransaction(_) => WriteKind::CreateTransaction,
            Request::DeleteTransaction { .. } => WriteKind::DeleteTransaction,
        }
    }

    /// The request as stored (`writes.request`): the validated fields, normalised.
    pub fn stored(&self) -> Value {
        match self {
            Request::CreateCustomer(v) | Request::CreateTransaction(v) => v.clone(),
            Request::UpdateCustomer {
                customer_key,
                update,
            } => serde_json::json!({"customer_key": customer_key, "update": update}),
            Request::DeleteTransaction { key } => serde_json::json!({ "key": key }),
        }
    }

    /// Reads a stored request back (the worker).
    pub fn from_stored(kind: WriteKind, stored: &Value) -> Result<Request, String> {
        let field = |name: &str| {
            stored
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the stored {} has no {name}", kind.as_str()))
        };
        Ok(match kind {
            WriteKind::CreateCustomer => Request::CreateCustomer(stored.clone()),
            WriteKind::CreateTransaction => Request::CreateTransaction(stored.clone()),
            WriteKind::UpdateCustomer => Request::UpdateCustomer {
                customer_key: field("customer_key")?,
                update: stored.get("update").cloned().unwrap_or(Value::Null),
            },
            WriteKind::DeleteTransaction => Request::DeleteTransaction { key: field("key")? },
        })
    }

    /// The object's key as the caller knows it.
    pub fn object_key(&self) -> String {
        let of = |v: &Value, name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match self {
            Request::CreateCustomer(v) => of(v, "customer_key"),
            Request::CreateTransaction(v) => of(v, "key"),
            Request::UpdateCustomer { customer_key, .. } => customer_key.clone(),
            Request::DeleteTransaction { key } => key.clone(),
        }
    }

    /// The customers (and transactions) the write concerns: writes sharing one are sent
    /// in the order they were accepted.
    pub fn customer_refs(&self) -> Vec<String> {
        let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
        let mut refs = Vec::new();
        match self {
            Request::CreateCustomer(v) => {
                refs.extend(text(v, "customer_key").map(|k| format!("key:{k}")));
                refs.extend(text(v, "email").map(|e| format!("email:{}", e.to_lowercase())));
            }
            Request::UpdateCustomer {
                customer_key,
                update,
            } => {
                refs.push(format!("key:{customer_key}"));
                refs.extend(text(update, "customer_key").map(|k| format!("key:{k}")));
                refs.extend(text(update, "email").map(|e| format!("email:{}", e.to_lowercase())));
            }
            Request::CreateTransaction(v) => {
                refs.extend(text(v, "customer_key").map(|k| format!("key:{k}")));
                refs.extend(
                    text(v, "customer_email").map(|e| format!("email:{}", e.to_lowercase())),
                );
                refs.extend(text(v, "customer").map(|k| format!("ps:{k}")));
                refs.extend(text(v, "key").map(|k| format!("transaction:{k}")));
            }
            Request::DeleteTransaction { key } => refs.push(format!("transaction:{key}")),
        }
        refs.sort();
        refs.dedup();
        refs
    }

    /// The write to store. `idempotency_key`: the `Idempotency-Key` header, if sent.
    pub fn into_write(self, idempotency_key: Option<&str>) -> Result<NewWrite, ApiError> {
        let kind = self.kind();
        let object_key = self.object_key();
        let idempotency_key = match idempotency_key {
            Some(k) => Some(format!("header:{}", header_key(k)?)),
            None => match kind {
                WriteKind::CreateCustomer => Some(format!("customer:{object_key}")),
                WriteKind::CreateTransaction => Some(format!("transaction:{object_key}")),
                WriteKind::DeleteTransaction => Some(format!("delete_transaction:{object_key}")),
                WriteKind::UpdateCustomer => None,
            },
        };
        let request = self.stored();
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

    /// `POST /customers` as the client sends it.
    pub fn new_customer(v: &Value) -> Result<NewCustomer, String> {
        let c: CreateCustomer = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        Ok(NewCustomer {
            email: c.email,
            partner_key: c.partner_key,
            customer_key: Some(c.customer_key),
            name: c.name,
            provider_key: c.provider_key,
            member_key: None,
            meta: c.meta.map(Value::Object),
        })
    }

    /// `PATCH /customers/{customer_key}` as the client sends it.
    pub fn customer_update(v: &Value) -> Result<CustomerUpdate, String> {
        let u: UpdateCustomer = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        Ok(CustomerUpdate {
            customer_key: u.customer_key,
            email: u.email,
            name: u.name,
            provider_key: u.provider_key,
            member_key: None,
            meta: u.meta.map(Value::Object),
        })
    }

    /// `POST /transactions` as the client sends it (your customer key becomes
    /// `customer_external_key`).
    pub fn new_transaction(v: &Value) -> Result<NewTransaction, String> {
        let t: CreateTransaction = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let customer = match (t.customer_key, t.customer_email, t.customer) {
            (Some(k), _, _) => TransactionCustomer::ExternalKey(k),
            (_, Some(e), _) => TransactionCustomer::Email(e),
            (_, _, Some(k)) => TransactionCustomer::Key(k),
            (None, None, None) => return Err("the stored transaction names no customer".into()),
        };
        let created_at = t.created_at.as_ref().and_then(request_time);
        Ok(NewTransaction {
            customer,
            amount: t.amount,
            currency: t.currency,
            key: t.key,
            category_key: t.category_key,
            product_key: t.product_key,
            metadata: t.metadata.map(Value::Object),
            test: None,
            created_at,
        })
    }
}

/// A transaction's `created_at` as a request gives it (and as it is stored): an RFC 3339
/// time, or whole epoch milliseconds up to the end of year 9999.
pub fn request_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => whole(n)
            .filter(|ms| (0..=MAX_EPOCH_MS).contains(ms))
            .and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

/// An integer, also when written with a zero fraction (`1999.0`), as JSON Schema's
/// `integer` allows.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    whole(&n).ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, got {n}")))
}

/// `n` as an `i64` when it is a whole number in range (`1999` or `1999.0`).
fn whole(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i64)
    })
}

/// The OpenAPI schema of `created_at` ([`request_time`]).
fn created_at_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .maximum(Some(MAX_EPOCH_MS)),
        )
        .description(Some(
            "When the billing event happened: an RFC 3339 time, or epoch milliseconds.",
        ))
        .build()
        .into()
}

/// `meta` and `metadata` as OpenAPI describes them ([`map`]): `Meta`, whose values are
/// `MetaValue`s.
pub struct Meta;

impl Meta {
    /// An attribute's value: a string without NUL, a number, a boolean or null.
    fn value_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(NO_NUL)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(
                "An attribute's value: a string (without NUL), a number, a boolean or null.",
            ))
            .into()
    }

    fn object(values: utoipa::openapi::Ref) -> utoipa::openapi::schema::ObjectBuilder {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(NO_NUL)),
            ))
            .additional_properties(Some(values))
    }
}

/// No NUL (JSON Schema pattern).
const NO_NUL: &str = "^[^\\x00]*$";

impl utoipa::PartialSchema for Meta {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        Self::object(utoipa::openapi::Ref::from_schema_name("MetaValue"))
            .description(Some("Attributes: names without NUL, each a MetaValue."))
            .into()
    }
}

/// A transaction's `metadata`: a [`Meta`] of at most [`MAX_METADATA`] attributes.
pub struct Metadata;

impl utoipa::PartialSchema for Metadata {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        Meta::object(utoipa::openapi::Ref::from_schema_name("MetaValue"))
            .max_properties(Some(MAX_METADATA))
            .description(Some(
                "At most 20 attributes: names without NUL, each a MetaValue.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Metadata {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <Meta as utoipa::ToSchema>::schemas(schemas);
    }
}

impl utoipa::ToSchema for Meta {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push(("MetaValue".to_string(), Self::value_schema()));
    }
}

/// What no single field of a write body can say, as JSON Schema keywords to add to the
/// body's schema, by schema name: a transaction names exactly one customer (`not` none of
/// them; each excludes those after it), an update changes at least one field. Written
/// with keywords client generators pass over (they would turn `oneOf` alternatives into a
/// union of partial classes), which validators and fuzzers apply.
pub fn body_rules() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    use serde_json::json;
    let absent = || json!({"not": {}});
    vec![
        (
            "CreateTransaction",
            "not",
            json!({"properties": {
                "customer_key": absent(), "customer_email": absent(), "customer": absent()
            }}),
        ),
        (
            "CreateTransaction",
            "dependentSchemas",
            json!({
                "customer_key": {"properties": {"customer_email": absent(), "customer": absent()}},
                "customer_email": {"properties": {"customer": absent()}},
            }),
        ),
        ("UpdateCustomer", "minProperties", json!(1)),
    ]
}

/// An `Idempotency-Key` header value, checked.
fn header_key(value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty()
        || value.len() > MAX_IDEMPOTENCY_KEY
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(value.to_string())
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ApiError) -> String {
        format!("{e:?}")
    }

    #[test]
    fn a_customer_create_names_the_field_that_is_wrong() {
        let err = |body: &str| message(Request::create_customer(body.as_bytes()).unwrap_err());
        assert!(
            err(r#"{"customer_key":"c1","partner_key":"p"}"#).contains("missing field `email`")
        );
        assert!(
            err(r#"{"customer_key":"c1","email":"x","partner_key":"p"}"#)
                .contains("email is not an email")
        );
        assert!(
            err(r#"{"customer_key":"c1","email":"a@b.co","partner_key":"p","colour":1}"#)
                .contains("unknown field `colour`")
        );
        assert!(
            err(r#"{"customer_key":"","email":"a@b.co","partner_key":"p"}"#)
                .contains("customer_key is empty")
        );
        assert!(
            err(r#"{"customer_key":5,"email":"a@b.co","partner_key":"p"}"#)
                .contains("customer_key")
        );
        assert!(err("").contains("empty"));
        assert!(err("[1]").contains("invalid body"));
        assert!(
            err(r#"{"customer_key":"c","email":"a@b.co","partner_key":"p"} x"#)
                .contains("invalid body")
        );
        let ok = Request::create_customer(
            br#"{"customer_key":" c1 ","email":"a@b.co","partner_key":"p","meta":{"plan":"pro"}}"#,
        )
        .unwrap();
        assert_eq!(ok.object_key(), "c1");
        assert_eq!(ok.customer_refs(), ["email:a@b.co", "key:c1"]);
    }

    #[test]
    fn a_transaction_needs_integer_cents_three_letters_and_one_customer() {
        let err =
            |body: &str| message(Request::create_transaction(body.as_bytes(), None).unwrap_err());
        assert!(err(r#"{"customer_key":"c","amount":10.5,"currency":"usd"}"#).contains("amount"));
        assert!(err(r#"{"customer_key":"c","amount":"10","currency":"usd"}"#).contains("amount"));
        assert!(
            err(r#"{"customer_key":"c","amount":10,"currency":"dollars"}"#).contains("currency")
        );
        assert!(err(r#"{"amount":10,"currency":"usd"}"#).contains("exactly one"));
        assert!(
            err(r#"{"customer_key":"c","customer_email":"a@b.co","amount":1,"currency":"usd"}"#)
                .contains("exactly one")
        );
        assert!(
            err(r#"{"customer_key":"c","amount":1,"currency":"usd","key":"ab"}"#)
                .contains("key must be")
        );
        assert!(
            err(r#"{"customer_key":"c","amount":1,"currency":"usd","created_at":"yesterday"}"#)
                .contains("created_at")
        );
        // As the OpenAPI description says: no spaces around a currency, an email without
        // spaces, epoch milliseconds as a whole number; a zero fraction is still whole.
        for (body, field) in [
            (
                r#"{"customer_key":"c","amount":1,"currency":" usd"}"#,
                "currency",
            ),
            (
                r#"{"customer_email":" a@b.co","amount":1,"currency":"usd"}"#,
                "customer_email",
            ),
            (
                r#"{"customer_key":" ","amount":1,"currency":"usd"}"#,
                "customer_key",
            ),
            (
                r#"{"customer_key":"c\u0001","amount":1,"currency":"usd"}"#,
                "customer_key",
            ),
            (
                r#"{"customer_key":"c","amount":1,"currency":"usd","created_at":1.5}"#,
                "created_at",
            ),
            (
                r#"{"customer_key":"c","amount":1,"currency":"usd","created_at":-1}"#,
                "created_at",
            ),
            (
                r#"{"customer_key":"c","customer":null,"amount":1,"currency":"usd"}"#,
                "customer is null",
            ),
            (
                r#"{"customer_key":"c","amount":1,"currency":"usd","metadata":{"a":[1]}}"#,
                "metadata.a",
            ),
        ] {
            assert!(err(body).contains(field), "{body}: {}", err(body));
        }
        for body in [
            r#"{"customer_key":"c","amount":1999.0,"currency":"usd","created_at":10095.0}"#,
            r#"{"customer_key":" c ","amount":1,"currency":"usd","created_at":"1900-01-01T00:00:00+01:00"}"#,
            r#"{"customer_key":"c","amount":1,"currency":"usd","metadata":{"x":1.7976931348623157e308,"y":null}}"#,
        ] {
            assert!(
                Request::create_transaction(body.as_bytes(), None).is_ok(),
                "{body}"
            );
        }
        let t = Request::create_transaction(
            br#"{"customer_key":"c","amount":-250,"currency":"eur","created_at":1700000000000}"#,
            None,
        )
        .unwrap();
        let Request::CreateTransaction(v) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(v["currency"], "EUR");
        assert_eq!(v["amount"], -250);
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        let sent = Request::new_transaction(v).unwrap();
        let json = serde_json::to_value(&sent).unwrap();
        assert_eq!(json["customer_external_key"], "c");
        assert!(json.get("customer_key").is_none(), "{json}");
        assert_eq!(json["created_at"], 1_700_000_000_000_i64);
    }

    #[test]
    fn a_transaction_without_key_gets_a_stable_derived_one() {
        let body = br#"{"customer_key":"c","amount":100,"currency":"USD"}"#;
        let reordered = br#"{"currency":"USD","amount":100,"customer_key":"c"}"#;
        let a = Request::create_transaction(body, None).unwrap();
        let b = Request::create_transaction(reordered, None).unwrap();
        assert_eq!(a, b, "the same request, the same key");
        assert!(a.object_key().starts_with("psync-"));
        let other = Request::create_transaction(
            br#"{"customer_key":"c","amount":101,"currency":"USD"}"#,
            None,
        )
        .unwrap();
        assert_ne!(a.object_key(), other.object_key());
        // With an Idempotency-Key, the key follows the header: repeats with the same
        // header share it.
        let h1 = Request::create_transaction(body, Some("order-7")).unwrap();
        let h2 = Request::create_transaction(body, Some("order-8")).unwrap();
        assert_ne!(h1.object_key(), h2.object_key());
        assert_ne!(h1.object_key(), a.object_key());
    }

    #[test]
    fn idempotency_keys_and_digests() {
        let create = |body: &str| Request::create_customer(body.as_bytes()).unwrap();
        let a = create(r#"{"customer_key":"c1","email":"a@b.co","partner_key":"p"}"#)
            .into_write(None)
            .unwrap();
        assert_eq!(a.idempotency_key.as_deref(), Some("customer:c1"));
        let same = create(r#"{"partner_key":"p","email":"a@b.co","customer_key":"c1"}"#)
            .into_write(None)
            .unwrap();
        assert_eq!(a.request_digest, same.request_digest);
        let other = create(r#"{"customer_key":"c1","email":"z@b.co","partner_key":"p"}"#)
            .into_write(None)
            .unwrap();
        assert_ne!(a.request_digest, other.request_digest);
        let by_header = create(r#"{"customer_key":"c1","email":"a@b.co","partner_key":"p"}"#)
            .into_write(Some("signup-1"))
            .unwrap();
        assert_eq!(
            by_header.idempotency_key.as_deref(),
            Some("header:signup-1")
        );
        assert!(
            create(r#"{"customer_key":"c1","email":"a@b.co","partner_key":"p"}"#)
                .into_write(Some("bad key"))
                .is_err()
        );
        let update = Request::update_customer("c1", br#"{"name":"N"}"#)
            .unwrap()
            .into_write(None)
            .unwrap();
        assert_eq!(update.idempotency_key, None, "each update is its own write");
        assert!(Request::update_customer("c1", b"{}").is_err());
        assert!(
            message(Request::update_customer("c1", br#"{"partner_key":"q"}"#).unwrap_err())
                .contains("cannot be updated")
        );
        let delete = Request::delete_transaction("t-1", b"").unwrap();
        assert_eq!(delete.customer_refs(), ["transaction:t-1"]);
        assert!(Request::delete_transaction("t-1", b"{}").is_err());
    }

    #[test]
    fn stored_requests_read_back() {
        for r in [
            Request::create_customer(
                br#"{"customer_key":"c1","email":"a@b.co","partner_key":"p"}"#,
            )
            .unwrap(),
            Request::update_customer("c1", br#"{"email":"n@b.co"}"#).unwrap(),
            Request::create_transaction(
                br#"{"customer":"cust_1","amount":1,"currency":"USD"}"#,
                None,
            )
            .unwrap(),
            Request::delete_transaction("t-1", b"").unwrap(),
        ] {
            assert_eq!(Request::from_stored(r.kind(), &r.stored()).unwrap(), r);
        }
    }
}
