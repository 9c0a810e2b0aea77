//! Whether an object PartnerStack shows is the one a create asked for.
//!
//! A create succeeds only when the object is positively there: PartnerStack's 2xx answer
//! with the object, or a look-up (a customer by its `customer_key`, a transaction by its
//! `key`) that finds it, **with the fields the write asked for**. A refusal's wording is
//! never evidence. The fields compared, per kind:
//!
//! - **customer**: `customer_key` and `provider_key` exactly; `email`, `partner_key` and
//!   `name` without regard to case (PartnerStack may normalise them). `meta` is never
//!   compared: PartnerStack accepts it on write and reads it back as `{}`.
//! - **transaction**: `key`, `amount`, `category_key` and `product_key` exactly;
//!   `currency` without regard to case; the customer as the write named it (your key as
//!   `customer.external_key`, an email as `customer.email` without regard to case,
//!   PartnerStack's key as `customer_key` or `customer.key`). `metadata` and `created_at`
//!   are not compared: PartnerStack may read them back reformatted.
//!
//! A field the object does not show (absent or null) is not compared: what PartnerStack
//! leaves out is no evidence either way. Updates and deletes are not creates: they are
//! judged by the HTTP status alone.

use partnerstack::models::{self, Customer, Transaction};
use serde_json::Value;

use super::Request;
use super::fields::Text;
use super::request::{CustomerRef, NewCustomer, NewTransaction};

/// How the object PartnerStack shows differs from what `request` asked for: one line per
/// field (`amount: asked 1000, PartnerStack has 2000`). Empty when it is the object asked
/// for. An object that does not read is one difference. Writes other than creates have
/// nothing to compare.
pub fn differences(request: &Request, object: &Value) -> Vec<String> {
    let result = match request {
        Request::CreateCustomer(c) => models::read::<Customer>(object).map(|o| customer(c, &o)),
        Request::CreateTransaction(t) => {
            models::read::<Transaction>(object).map(|o| transaction(t, &o))
        }
        Request::UpdateCustomer(_) | Request::DeleteTransaction(_) => Ok(Vec::new()),
    };
    result.unwrap_or_else(|e| vec![format!("the object does not read: {e}")])
}

/// One field compared: a difference when the object shows a value that is not `asked`.
struct Fields(Vec<String>);

impl Fields {
    fn exact(&mut self, field: &str, asked: Option<&str>, shown: Option<&str>) {
        if let (Some(asked), Some(shown)) = (asked, shown)
            && asked.trim() != shown.trim()
        {
            self.differ(field, asked, shown);
        }
    }

    fn caseless(&mut self, field: &str, asked: Option<&str>, shown: Option<&str>) {
        if let (Some(asked), Some(shown)) = (asked, shown)
            && asked.trim().to_lowercase() != shown.trim().to_lowercase()
        {
            self.differ(field, asked, shown);
        }
    }

    fn differ(&mut self, field: &str, asked: &str, shown: &str) {
        self.0.push(format!(
            "{field}: asked '{asked}', PartnerStack has '{shown}'"
        ));
    }
}

/// An optional field of the request, as text.
fn text<R>(value: &Option<Text<R>>) -> Option<&str> {
    value.as_ref().map(Text::as_str)
}

fn customer(asked: &NewCustomer, shown: &Customer) -> Vec<String> {
    let mut f = Fields(Vec::new());
    f.exact(
        "customer_key",
        Some(asked.customer_key.as_str()),
        shown.customer_key.as_deref(),
    );
    f.caseless("email", Some(asked.email.as_str()), shown.email.as_deref());
    f.caseless(
        "partner_key",
        Some(asked.partner_key.as_str()),
        shown.partner_key.as_deref(),
    );
    f.caseless("name", text(&asked.name), shown.name.as_deref());
    f.exact(
        "provider_key",
        text(&asked.provider_key),
        shown.provider_key.as_deref(),
    );
    f.0
}

fn transaction(asked: &NewTransaction, shown: &Transaction) -> Vec<String> {
    let mut f = Fields(Vec::new());
    let fields = &asked.fields;
    f.exact("key", Some(asked.key.as_str()), shown.meta.key.as_deref());
    if let Some(amount) = shown.amount
        && amount != fields.amount.cents()
    {
        f.0.push(format!(
            "amount: asked {}, PartnerStack has {amount}",
            fields.amount.cents()
        ));
    }
    f.caseless(
        "currency",
        Some(fields.currency.as_str()),
        shown.currency.as_deref(),
    );
    let nested = shown.customer.as_ref();
    match &fields.customer {
        CustomerRef::Key(k) => f.exact(
            "customer_key",
            Some(k.as_str()),
            nested.and_then(|c| c.external_key.as_deref()),
        ),
        CustomerRef::Email(e) => f.caseless(
            "customer_email",
            Some(e.as_str()),
            nested.and_then(|c| c.email.as_deref()),
        ),
        CustomerRef::PartnerStack(k) => f.exact(
            "customer",
            Some(k.as_str()),
            shown
                .customer_key
                .as_deref()
                .or_else(|| nested.and_then(|c| c.key.as_deref())),
        ),
    }
    f.exact(
        "category_key",
        text(&fields.category_key),
        shown.category_key.as_deref(),
    );
    f.exact(
        "product_key",
        text(&fields.product_key),
        shown.product_key.as_deref(),
    );
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writes::request::TransactionFields;
    use serde_json::json;

    fn new_customer() -> Request {
        Request::CreateCustomer(
            serde_json::from_value(json!({
                "customer_key": "c-1", "email": "Ann@Example.com", "partner_key": "alice",
                "name": "Ann", "meta": {"plan": "pro"},
            }))
            .unwrap(),
        )
    }

    fn new_transaction(customer: Value) -> Request {
        let mut body = json!({"key": "t-1", "amount": 1000, "currency": "usd",
                              "product_key": "pro", "metadata": {"a": 1}});
        body.as_object_mut()
            .unwrap()
            .extend(customer.as_object().unwrap().clone());
        let fields: TransactionFields = serde_json::from_value(body.clone()).unwrap();
        Request::CreateTransaction(NewTransaction {
            key: serde_json::from_value(json!("t-1")).unwrap(),
            fields,
        })
    }

    #[test]
    fn a_customer_matches_without_case_and_without_meta() {
        let found = json!({"key": "cust_1", "customer_key": "c-1", "email": "ann@example.com",
                           "partner_key": "Alice", "name": "ANN", "meta": {}});
        assert!(differences(&new_customer(), &found).is_empty());
        // Fields it does not show are not compared.
        let sparse = json!({"key": "cust_1", "customer_key": "c-1", "email": null});
        assert!(differences(&new_customer(), &sparse).is_empty());
        let other = json!({"key": "cust_2", "customer_key": "c-1", "email": "bob@example.com",
                           "partner_key": "bob"});
        let d = differences(&new_customer(), &other);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("email: asked 'Ann@Example.com'"), "{d:?}");
        assert!(d[1].starts_with("partner_key"), "{d:?}");
    }

    #[test]
    fn a_transaction_matches_on_amount_currency_and_its_customer() {
        let by_key = new_transaction(json!({"customer_key": "c-1"}));
        let found = json!({"key": "t-1", "amount": 1000, "currency": "USD",
                           "customer_key": "cust_1", "product_key": {"key": "pro"},
                           "customer": {"key": "cust_1", "external_key": "c-1"},
                           "metadata": {}});
        assert!(differences(&by_key, &found).is_empty());
        let mut other = found.clone();
        other["amount"] = json!(999);
        other["customer"]["external_key"] = json!("c-2");
        let d = differences(&by_key, &other);
        assert_eq!(
            d,
            [
                "amount: asked 1000, PartnerStack has 999",
                "customer_key: asked 'c-1', PartnerStack has 'c-2'"
            ]
        );
        let by_email = new_transaction(json!({"customer_email": "Ann@Example.com"}));
        let mut shown = found.clone();
        shown["customer"]["email"] = json!("ann@example.com");
        assert!(differences(&by_email, &shown).is_empty());
        let by_ps = new_transaction(json!({"customer": "cust_9"}));
        assert_eq!(differences(&by_ps, &found).len(), 1);
        // An object that does not read is no confirmation.
        assert_eq!(
            differences(&by_key, &json!({"key": "t-1", "amount": "lots"})).len(),
            1
        );
    }
}
