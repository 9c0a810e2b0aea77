//! The bodies of the `/v1` write routes, beside their handlers ([`super`]): what a client
//! may send, read field by field into a [`Request`] (nothing is stored when a field is
//! wrong).
//!
//! Each field is a type that checks itself ([`crate::writes::fields`]), so a field's
//! OpenAPI description and the check are one declaration. What no single field can say is
//! checked here, and stated to the OpenAPI document by [`body_rules`]: a transaction names
//! exactly one customer, an update changes something, `partner_key` cannot change.

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::error::ApiError;
use crate::writes::Request;
use crate::writes::fields::{
    self, Amount, Currency, Email, IdempotencyKey, Key, Meta, Metadata, Name, Timestamp,
    TransactionKey,
};
use crate::writes::request::{
    CustomerChanges, CustomerRef, CustomerUpdate, NewCustomer, NewTransaction, TransactionDelete,
    TransactionFields,
};

/// `POST /v1/customers`: a customer referred by a partner.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    /// Your key for the customer (PartnerStack's `customer_key`); the write's default
    /// idempotency key.
    pub customer_key: Key,
    pub email: Email,
    /// The referring partner's `partner_key`.
    pub partner_key: Key,
    #[schema(nullable = false)]
    pub name: Option<Name>,
    /// E.g. the customer's id at your payment provider.
    #[schema(nullable = false)]
    pub provider_key: Option<Key>,
    #[schema(nullable = false)]
    pub meta: Option<Meta>,
}

/// `PATCH /v1/customers/{customer_key}`: the fields to change (at least one).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomer {
    /// A new key for the customer.
    #[schema(nullable = false)]
    pub customer_key: Option<Key>,
    #[schema(nullable = false)]
    pub email: Option<Email>,
    #[schema(nullable = false)]
    pub name: Option<Name>,
    #[schema(nullable = false)]
    pub provider_key: Option<Key>,
    #[schema(nullable = false)]
    pub meta: Option<Meta>,
    /// Not updatable: present only to say so.
    #[schema(ignore)]
    partner_key: Option<IgnoredAny>,
}

/// `POST /v1/transactions`: a billing event of a referred customer. Exactly one of
/// `customer_key` (yours), `customer_email` or `customer` (PartnerStack's customer key).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransaction {
    /// Your key for the transaction; without one, a key is derived from the request (or
    /// from the `Idempotency-Key`) and stated in the answer.
    #[schema(nullable = false)]
    pub key: Option<TransactionKey>,
    /// Your key for the customer (sent to PartnerStack as `customer_external_key`).
    #[schema(nullable = false)]
    pub customer_key: Option<Key>,
    #[schema(nullable = false)]
    pub customer_email: Option<Email>,
    /// PartnerStack's own customer key (`cust_...`).
    #[schema(nullable = false)]
    pub customer: Option<Key>,
    pub amount: Amount,
    pub currency: Currency,
    #[schema(nullable = false)]
    pub category_key: Option<Key>,
    #[schema(nullable = false)]
    pub product_key: Option<Key>,
    #[schema(nullable = false)]
    pub metadata: Option<Metadata>,
    /// When the billing event happened.
    #[schema(nullable = false)]
    pub created_at: Option<Timestamp>,
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
            ApiError::bad_request(fields::field_message(&path, &e.inner().to_string()))
        }
    })
}

/// A key in the path, checked as a body's key is.
fn path_key(field: &str, value: &str) -> Result<Key, ApiError> {
    Key::parse(value).map_err(|e| ApiError::bad_request(e.of(field)))
}

/// An `Idempotency-Key` header value, checked.
pub fn idempotency_key(value: &str) -> Result<IdempotencyKey, ApiError> {
    IdempotencyKey::parse(value).map_err(|e| ApiError::bad_request(e.of("Idempotency-Key")))
}

/// `POST /v1/customers`.
pub fn create_customer(bytes: &[u8]) -> Result<Request, ApiError> {
    let c: CreateCustomer = body(bytes)?;
    Ok(Request::CreateCustomer(NewCustomer {
        customer_key: c.customer_key,
        email: c.email,
        partner_key: c.partner_key,
        name: c.name,
        provider_key: c.provider_key,
        meta: c.meta,
    }))
}

/// `PATCH /v1/customers/{customer_key}`.
pub fn update_customer(customer_key: &str, bytes: &[u8]) -> Result<Request, ApiError> {
    let customer_key = path_key("the path's customer_key", customer_key)?;
    let u: UpdateCustomer = body(bytes)?;
    if u.partner_key.is_some() {
        return Err(ApiError::bad_request(
            "partner_key cannot be updated: a customer keeps the partner that referred it",
        ));
    }
    let update = CustomerChanges {
        customer_key: u.customer_key,
        email: u.email,
        name: u.name,
        provider_key: u.provider_key,
        meta: u.meta,
    };
    if update.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to update: send at least one of customer_key, email, name, provider_key, meta",
        ));
    }
    Ok(Request::UpdateCustomer(CustomerUpdate {
        customer_key,
        update,
    }))
}

/// `POST /v1/transactions`. `idempotency_key` (the header) decides a derived key.
pub fn create_transaction(
    bytes: &[u8],
    idempotency_key: Option<&IdempotencyKey>,
) -> Result<Request, ApiError> {
    let t: CreateTransaction = body(bytes)?;
    let customer = match (t.customer_key, t.customer_email, t.customer) {
        (Some(k), None, None) => CustomerRef::Key(k),
        (None, Some(e), None) => CustomerRef::Email(e),
        (None, None, Some(k)) => CustomerRef::PartnerStack(k),
        _ => {
            return Err(ApiError::bad_request(
                "name the customer with exactly one of customer_key (yours), customer_email or customer (PartnerStack's key)",
            ));
        }
    };
    let fields = TransactionFields {
        customer,
        amount: t.amount,
        currency: t.currency,
        category_key: t.category_key,
        product_key: t.product_key,
        metadata: t.metadata,
        created_at: t.created_at,
    };
    let key = match t.key {
        Some(k) => k.into(),
        None => fields
            .derived_key(idempotency_key)
            .map_err(ApiError::internal)?,
    };
    Ok(Request::CreateTransaction(NewTransaction { key, fields }))
}

/// `DELETE /v1/transactions/{key}`.
pub fn delete_transaction(key: &str, bytes: &[u8]) -> Result<Request, ApiError> {
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a delete takes no body"));
    }
    Ok(Request::DeleteTransaction(TransactionDelete {
        key: path_key("the path's key", key)?,
    }))
}

/// What no single field of a write body can say, as JSON Schema keywords to add to the
/// body's schema, by schema name: a transaction names exactly one customer (`not` none of
/// them; each excludes those after it), an update changes at least one field. Written
/// with keywords client generators pass over (they would turn `oneOf` alternatives into a
/// union of partial classes), which validators and fuzzers apply.
pub fn body_rules() -> Vec<(&'static str, &'static str, Value)> {
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

#[cfg(test)]
mod tests {
    use partnerstack::client;

    use super::*;
    use crate::db::writes::WriteKind;

    fn message(e: ApiError) -> String {
        format!("{e:?}")
    }

    fn header(key: &str) -> IdempotencyKey {
        idempotency_key(key).unwrap()
    }

    #[test]
    fn a_customer_create_names_the_field_that_is_wrong() {
        let err = |body: &str| message(create_customer(body.as_bytes()).unwrap_err());
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
        let ok = create_customer(
            br#"{"customer_key":" c1 ","email":"a@b.co","partner_key":"p","meta":{"plan":"pro"}}"#,
        )
        .unwrap();
        assert_eq!(ok.object_key().as_str(), "c1");
        assert_eq!(ok.customer_refs(), ["email:a@b.co", "key:c1"]);
    }

    #[test]
    fn a_transaction_needs_integer_cents_three_letters_and_one_customer() {
        let err = |body: &str| message(create_transaction(body.as_bytes(), None).unwrap_err());
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
            assert!(create_transaction(body.as_bytes(), None).is_ok(), "{body}");
        }
        let t = create_transaction(
            br#"{"customer_key":"c","amount":-250,"currency":"eur","created_at":1700000000000}"#,
            None,
        )
        .unwrap();
        let v = t.stored().unwrap();
        assert_eq!(v["currency"], "EUR");
        assert_eq!(v["amount"], -250);
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        let Request::CreateTransaction(typed) = &t else {
            panic!("{t:?}")
        };
        let sent = client::NewTransaction::from(typed);
        let json = serde_json::to_value(&sent).unwrap();
        assert_eq!(json["customer_external_key"], "c");
        assert!(json.get("customer_key").is_none(), "{json}");
        assert_eq!(json["created_at"], 1_700_000_000_000_i64);
    }

    #[test]
    fn a_transaction_without_key_gets_a_stable_derived_one() {
        let body = br#"{"customer_key":"c","amount":100,"currency":"USD"}"#;
        let reordered = br#"{"currency":"USD","amount":100,"customer_key":"c"}"#;
        let a = create_transaction(body, None).unwrap();
        let b = create_transaction(reordered, None).unwrap();
        assert_eq!(a, b, "the same request, the same key");
        assert!(a.object_key().as_str().starts_with("psync-"));
        let other = create_transaction(
            br#"{"customer_key":"c","amount":101,"currency":"USD"}"#,
            None,
        )
        .unwrap();
        assert_ne!(a.object_key(), other.object_key());
        // With an Idempotency-Key, the key follows the header: repeats with the same
        // header share it.
        let h1 = create_transaction(body, Some(&header("order-7"))).unwrap();
        let h2 = create_transaction(body, Some(&header("order-8"))).unwrap();
        assert_ne!(h1.object_key(), h2.object_key());
        assert_ne!(h1.object_key(), a.object_key());
    }

    /// Keys derived and digests taken before requests were typed (pinned from the earlier
    /// code's algorithm) are derived and taken the same: a repeat sent across an upgrade
    /// is the same write, not a second transaction.
    #[test]
    fn derived_keys_and_digests_are_those_of_earlier_versions() {
        let t = create_transaction(
            br#"{"customer_key":"c","amount":100,"currency":"usd","created_at":1700000000000,
                 "metadata":{"plan":"pro","seats":3,"trial":false,"x":null}}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            t.object_key().as_str(),
            "psync-4376ff7d55bb69b801b0692c730926a3"
        );
        let write = t.into_write(None).unwrap();
        assert_eq!(
            write.request_digest,
            "a578674461792d6eebf8bc4ed0ecaa09f612f69cbd1e2cb88aa67a670f241edc"
        );
        let by_header = create_transaction(
            br#"{"customer_key":"c","amount":100,"currency":"USD"}"#,
            Some(&header("order-7")),
        )
        .unwrap();
        assert_eq!(
            by_header.object_key().as_str(),
            "psync-457319ee93a6ba8c05d62773a880a414"
        );
        let update = update_customer("c1", br#"{"email":"n@b.co","meta":{"a":1}}"#)
            .unwrap()
            .into_write(None)
            .unwrap();
        assert_eq!(
            update.request_digest,
            "18f31c446a8d63f8a4c8df9d65c8b7224af523d4d6a8c18c47923069cc2d5e37"
        );
    }

    #[test]
    fn idempotency_keys_and_digests() {
        let create = |body: &str| create_customer(body.as_bytes()).unwrap();
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
            .into_write(Some(&header("signup-1")))
            .unwrap();
        assert_eq!(
            by_header.idempotency_key.as_deref(),
            Some("header:signup-1")
        );
        assert!(idempotency_key("bad key").is_err());
        let update = update_customer("c1", br#"{"name":"N"}"#)
            .unwrap()
            .into_write(None)
            .unwrap();
        assert_eq!(update.idempotency_key, None, "each update is its own write");
        assert!(update_customer("c1", b"{}").is_err());
        assert!(
            message(update_customer("c1", br#"{"partner_key":"q"}"#).unwrap_err())
                .contains("cannot be updated")
        );
        let delete = delete_transaction("t-1", b"").unwrap();
        assert_eq!(delete.customer_refs(), ["transaction:t-1"]);
        assert!(delete_transaction("t-1", b"{}").is_err());
    }

    #[test]
    fn stored_requests_read_back() {
        for r in [
            create_customer(br#"{"customer_key":"c1","email":"a@b.co","partner_key":"p"}"#)
                .unwrap(),
            update_customer("c1", br#"{"email":"n@b.co"}"#).unwrap(),
            create_transaction(
                br#"{"customer":"cust_1","amount":1,"currency":"USD"}"#,
                None,
            )
            .unwrap(),
            delete_transaction("t-1", b"").unwrap(),
        ] {
            assert_eq!(
                Request::from_stored(r.kind(), &r.stored().unwrap()).unwrap(),
                r
            );
        }
    }

    /// Rows the outbox wrote before requests were typed read back as the same requests
    /// (writes pending at an upgrade are sent).
    #[test]
    fn earlier_stored_forms_read_back() {
        let rows = [
            (
                WriteKind::CreateCustomer,
                serde_json::json!({"customer_key": "c1", "email": "a@b.co", "partner_key": "p",
                    "name": "Ann", "meta": {"plan": "pro", "n": 1.5}}),
            ),
            (
                WriteKind::UpdateCustomer,
                serde_json::json!({"customer_key": "c1", "update": {"email": "n@b.co"}}),
            ),
            (
                WriteKind::CreateTransaction,
                serde_json::json!({"key": "psync-4376ff7d55bb69b801b0692c730926a3",
                    "customer_email": "a@b.co", "amount": -250, "currency": "EUR",
                    "created_at": "2023-11-14T22:13:20.000Z", "metadata": {"x": null}}),
            ),
            (
                WriteKind::DeleteTransaction,
                serde_json::json!({"key": "t-1"}),
            ),
        ];
        for (kind, stored) in rows {
            let r = Request::from_stored(kind, &stored).unwrap();
            assert_eq!(r.kind(), kind);
            assert_eq!(r.stored().unwrap(), stored, "{kind}");
        }
        assert!(
            Request::from_stored(WriteKind::DeleteTransaction, &serde_json::json!({})).is_err()
        );
    }
}
