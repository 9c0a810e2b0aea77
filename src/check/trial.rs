//! The write questions (`check --writes`), asked through a throwaway customer and
//! transaction that are removed again: what a repeated `customer_key` and a repeated
//! transaction `key` get, what a delete answers, how long a new customer stays unknown to
//! `GET /customers/{customer_key}`, and whether an archived customer stays listed. Each
//! answer is classified by HTTP status and by the objects read back, never by wording.

use std::time::{Duration, Instant};

use partnerstack::client::{Client, Probe};
use partnerstack::{Entity, wire};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{CheckError, Finding, sent};

/// How the write questions are asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest wait for a new customer to become readable.
    pub visible_within: Duration,
    /// Time between reads while waiting.
    pub poll_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            visible_within: Duration::from_secs(20 * 60),
            poll_every: Duration::from_millis(500),
        }
    }
}

/// The throwaway objects' names.
struct Names {
    customer_key: String,
    transaction_key: String,
    email: String,
}

impl Names {
    fn new() -> Names {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        Names {
            customer_key: format!("psync-check-{tag}"),
            transaction_key: format!("psync-check-{tag}-t"),
            email: format!("psync-check-{tag}@example.com"),
        }
    }
}

async fn send(
    client: &Client,
    method: Method,
    entity: Entity,
    key: Option<&str>,
    body: Option<&Value>,
) -> Result<Probe, CheckError> {
    let base = client.path(entity).to_string();
    sent(
        client.probe(method, &base, key, &[], body).await,
        client.base_url(),
    )
    .await
}

/// The `key` of an answer's `data` object.
fn data_key(probe: &Probe) -> Option<String> {
    probe
        .body
        .get("data")
        .and_then(|d| d.get("key"))
        .and_then(|k| wire::parse_string(k).ok().flatten())
}

/// The partner the throwaway customer is referred by: the program's test partner
/// `gstest` when it exists, else the first listed partnership.
async fn partner(client: &Client) -> Result<Option<String>, CheckError> {
    let probe = send(client, Method::GET, Entity::Partner, Some("gstest"), None).await?;
    if probe.status.is_success() {
        return Ok(Some("gstest".into()));
    }
    let base = client.path(Entity::Partner).to_string();
    let query = [("limit".to_string(), "1".to_string())];
    let listed = sent(
        client.probe(Method::GET, &base, None, &query, None).await,
        client.base_url(),
    )
    .await?;
    Ok(listed
        .body
        .pointer("/data/items/0/partner_key")
        .and_then(|k| wire::parse_string(k).ok().flatten()))
}

/// Every write question. The objects made are removed before it returns, whatever the
/// answers; a question whose step failed stays open, saying why.
pub async fn ask(client: &Client, options: &Options) -> Result<Vec<Finding>, CheckError> {
    let Some(partner_key) = partner(client).await? else {
        return Ok(vec![Finding::open(
            "duplicate_customer_key",
            "no partnership to refer a test customer: the write questions were not asked",
        )]);
    };
    let names = Names::new();
    let customer = json!({
        "email": names.email,
        "partner_key": partner_key,
        "customer_key": names.customer_key,
        "name": "partnerstack-sync check (throwaway)",
    });
    let first = send(
        client,
        Method::POST,
        Entity::Customer,
        None,
        Some(&customer),
    )
    .await?;
    let Some(customer_id) = data_key(&first).filter(|_| first.status.is_success()) else {
        return Ok(vec![Finding::open(
            "duplicate_customer_key",
            format!(
                "creating a test customer answered {}: the write questions were not asked",
                first.status
            ),
        )]);
    };
    let started = Instant::now();
    let asked = async {
        let second = send(
            client,
            Method::POST,
            Entity::Customer,
            None,
            Some(&customer),
        )
        .await?;
        let mut findings = vec![duplicate(&second, &customer_id, "customer", "customer_key")];
        findings.push(visibility(client, &names.customer_key, started, options).await?);
        findings.extend(transaction(client, &customer_id, &names.transaction_key).await?);
        Ok::<_, CheckError>(findings)
    }
    .await;
    // Whatever happened above, the throwaway objects go.
    let archived = archive(client, &names.customer_key, &customer_id).await;
    let mut findings = match asked {
        Ok(findings) => findings,
        Err(e) => {
            let _ = remove_transactions(client, &names.transaction_key).await;
            return Err(e);
        }
    };
    findings.push(archived?);
    Ok(findings)
}

/// Deletes transactions under `key` until none is left (a second one, when the account
/// made one for a repeated key), at most three.
async fn remove_transactions(client: &Client, key: &str) -> Result<(), CheckError> {
    for _ in 0..3 {
        let probe = send(client, Method::DELETE, Entity::Transaction, Some(key), None).await?;
        if !probe.status.is_success() {
            break;
        }
    }
    Ok(())
}

/// What a second create with the same key (`key_name`) got: refused, the first object
/// (`existing`), or another `object` (`second_<object>`); by status and the answer's key.
fn duplicate(second: &Probe, first_key: &str, object: &str, key_name: &str) -> Finding {
    let q = format!("duplicate_{object}_key");
    let status = second.status;
    match data_key(second) {
        _ if status.is_client_error() => Finding::settled(
            &q,
            "refused",
            format!("a second create with the same {key_name} answered {status}"),
        ),
        Some(k) if status.is_success() && k == first_key => Finding::settled(
            &q,
            "existing",
            format!("a second create answered {status} with the first {object}"),
        ),
        Some(_) if status.is_success() => Finding::settled(
            &q,
            &format!("second_{object}"),
            format!(
                "a second create answered {status} with another {object} under the same {key_name}"
            ),
        ),
        _ => Finding::open(
            &q,
            format!("a second create answered {status} without an object"),
        ),
    }
}

/// How long after its create `GET /customers/{customer_key}` first finds the customer.
async fn visibility(
    client: &Client,
    customer_key: &str,
    created: Instant,
    options: &Options,
) -> Result<Finding, CheckError> {
    let q = "new_customer_invisible";
    loop {
        let probe = send(
            client,
            Method::GET,
            Entity::Customer,
            Some(customer_key),
            None,
        )
        .await?;
        let waited = created.elapsed();
        if probe.status.is_success() && data_key(&probe).is_some() {
            return Ok(Finding::settled(
                q,
                &waited.as_millis().to_string(),
                format!(
                    "GET /customers/{{customer_key}} first found the new customer after {:.1} s",
                    waited.as_secs_f64()
                ),
            ));
        }
        if probe.status != StatusCode::NOT_FOUND {
            return Ok(Finding::open(
                q,
                format!("reading the new customer answered {}", probe.status),
            ));
        }
        if waited >= options.visible_within {
            return Ok(Finding::settled(
                q,
                &waited.as_millis().to_string(),
                format!(
                    "the new customer was still unknown after {} s (404): at least that long",
                    waited.as_secs()
                ),
            ));
        }
        tokio::time::sleep(options.poll_every).await;
    }
}

/// A transaction of the throwaway customer, created twice, then deleted.
async fn transaction(
    client: &Client,
    customer_id: &str,
    key: &str,
) -> Result<Vec<Finding>, CheckError> {
    let body = json!({"customer_key": customer_id, "amount": 0, "currency": "USD", "key": key});
    let first = send(client, Method::POST, Entity::Transaction, None, Some(&body)).await?;
    let Some(first_key) = data_key(&first).filter(|_| first.status.is_success()) else {
        let why = format!("creating a test transaction answered {}", first.status);
        return Ok(vec![
            Finding::open("duplicate_transaction_key", why.clone()),
            Finding::open("delete_answer", why),
        ]);
    };
    let second = send(client, Method::POST, Entity::Transaction, None, Some(&body)).await?;
    let repeated = duplicate(&second, &first_key, "transaction", "key");
    let deleted = send(
        client,
        Method::DELETE,
        Entity::Transaction,
        Some(&first_key),
        None,
    )
    .await?;
    remove_transactions(client, &first_key).await?;
    Ok(vec![repeated, delete_answer(&deleted)])
}

fn delete_answer(probe: &Probe) -> Finding {
    let q = "delete_answer";
    let status = probe.status;
    if !status.is_success() {
        return Finding::open(
            q,
            format!("deleting the test transaction answered {status}"),
        );
    }
    match &probe.body {
        Value::Null => Finding::settled(q, "empty", format!("{status} without a body")),
        body if body.get("data").is_some_and(Value::is_object) => {
            Finding::settled(q, "data", format!("{status} with the object as data"))
        }
        _ => Finding::settled(q, "message", format!("{status} with a body without data")),
    }
}

/// Archives (deletes) the throwaway customer, every one under its `customer_key`, then
/// looks for it in the customers list.
async fn archive(
    client: &Client,
    customer_key: &str,
    customer_id: &str,
) -> Result<Finding, CheckError> {
    let q = "archived.customers";
    let mut archived = None;
    // A second customer under the same key (an account that accepts repeats) goes too.
    for _ in 0..3 {
        let probe = send(
            client,
            Method::DELETE,
            Entity::Customer,
            Some(customer_key),
            None,
        )
        .await?;
        if !probe.status.is_success() {
            break;
        }
        archived = Some(probe.status);
    }
    let Some(status) = archived else {
        return Ok(Finding::open(q, "deleting the test customer was refused"));
    };
    let base = client.path(Entity::Customer).to_string();
    let query = [("limit".to_string(), "50".to_string())];
    let listed = sent(
        client.probe(Method::GET, &base, None, &query, None).await,
        client.base_url(),
    )
    .await?;
    // The customer as listed again, if it is: with the archived flag, or looking live.
    let again = listed
        .body
        .pointer("/data/items")
        .and_then(Value::as_array)
        .and_then(|items| {
            items.iter().find(|i| {
                i.get("key")
                    .and_then(|k| wire::parse_string(k).ok().flatten())
                    .as_deref()
                    == Some(customer_id)
            })
        });
    let flagged = |i: &Value| {
        i.get("archived")
            .and_then(|v| wire::parse_bool(v).ok().flatten())
            .unwrap_or(false)
    };
    Ok(match again {
        Some(item) if flagged(item) => Finding::settled(
            q,
            "flagged",
            format!(
                "after DELETE answered {status}, the list still shows the customer, with \"archived\": true"
            ),
        ),
        Some(_) => Finding::settled(
            q,
            "unflagged",
            format!(
                "after DELETE answered {status}, the list still shows the customer, with no archived flag"
            ),
        ),
        None => Finding::settled(
            q,
            "hidden",
            format!("after DELETE answered {status}, the list no longer shows the customer"),
        ),
    })
}
