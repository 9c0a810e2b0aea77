//! Webhook deliveries from the stand-in, with loss, repeats and reordering on purpose.
//!
//! Every change becomes an event in a queue. One sender task takes them in order and,
//! with seeded randomness, drops some (logged, never sent), sends some twice (the second
//! copy a few events later) and holds some back until one to three later events were
//! sent. Held events go out when the queue falls idle, on a flush, or never if the
//! stand-in stops first.
//!
//! A ledger records, per changed object, the newest `updated_at` of its changes and the
//! newest state that reached the service other than through a reconcile scan: a delivered
//! (2xx) webhook whose body carries the object's state (its key and time, and every field
//! of a new object: see `carries_state`), or the service reading the object
//! itself to verify a delivery (a single GET, or a list bounded in time on both sides,
//! which a scan never is). A documented partnership body carries no state (no key, no
//! times), only the news. Objects where the two differ are those "whose latest state no
//! webhook delivered", which a reconciler must repair.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderName;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt as _, SeedableRng as _};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::behaviour::{self, Behaviours, CustomerBody, DealLeadBody, WebhookEvents, numeric_id};
use super::world::{Action, Change};
use partnerstack::Entity;

/// Most log entries kept; older ones are forgotten first (the ledger is not affected).
const LOG_CAPACITY: usize = 1_000_000;
/// Idle time after which held-back events are released.
const IDLE: Duration = Duration::from_millis(200);
/// Attempts per copy when the target answers 5xx or cannot be reached.
const SEND_ATTEMPTS: u32 = 3;

/// The payload shape of deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The object's fields at the top level plus `"event"` (PartnerStack's samples).
    Flat,
    /// `{"event": ..., "data": {...}}`.
    Envelope,
}

/// The event-name style of deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// Dotted, legacy style: `customer.created`, `partner.updated`.
    Dotted,
    /// The real docs': `customer_created`, `partnership_updated`.
    Underscore,
}

/// Whether a change is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notify {
    /// Through the lossy queue (drop/duplicate/reorder rates apply).
    Deliver,
    /// Logged as dropped, never sent.
    Drop,
    /// No event at all (a change PartnerStack sends no webhook for).
    None,
}

/// How deliveries are sent.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub url: Option<String>,
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub shape: Shape,
    pub naming: Naming,
    pub signing_secret: Option<SecretString>,
    pub signature_header: HeaderName,
    pub seed: u64,
    /// Which kinds get webhooks, and the shapes of their bodies.
    pub behaviours: Behaviours,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Queued,
    /// Dropped on purpose: never sent.
    Dropped,
    /// At least one copy was answered 2xx.
    Delivered,
    /// Sent, but no copy was answered 2xx.
    Failed,
    /// No `--webhook-url`.
    NoTarget,
}

/// One event in the delivery log.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub seq: u64,
    /// The event name as sent.
    pub event: String,
    pub stream: &'static str,
    pub key: String,
    /// The `updated_at` of the object state the event carries.
    pub updated_at: i64,
    pub outcome: Outcome,
    pub duplicated: bool,
    pub reordered: bool,
    /// HTTP requests made for it (copies and retries).
    pub requests: u32,
    /// The last HTTP status the target answered.
    pub status: Option<u16>,
}

/// Counts per outcome, plus totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliverySummary {
    pub events: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub duplicated: u64,
    pub reordered: u64,
    pub requests: u64,
}

/// An object whose latest state no delivered webhook carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Undelivered {
    pub stream: &'static str,
    pub key: String,
    pub updated_at: i64,
    /// The newest state a delivery carried, if any did.
    pub delivered_updated_at: Option<i64>,
}

#[derive(Debug)]
struct Event {
    seq: u64,
    entity: Entity,
    key: String,
    updated_at: i64,
    name: String,
    body: Vec<u8>,
    /// The body carries the whole object (key and times), not just the news.
    carries_state: bool,
}

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Log {
    /// The seq of `entries[0]`.
    first: u64,
    entries: VecDeque<DeliveryRecord>,
}

impl Log {
    fn get_mut(&mut self, seq: u64) -> Option<&mut DeliveryRecord> {
        let i = seq.checked_sub(self.first)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }
}

#[derive(Debug, Default)]
struct Ledger {
    latest: HashMap<(Entity, String), i64>,
    delivered: HashMap<(Entity, String), i64>,
}

/// The delivery queue, its log and the ledger. The sender task is started by
/// [`Deliveries::run`].
#[derive(Debug)]
pub struct Deliveries {
    options: DeliveryOptions,
    queue: mpsc::UnboundedSender<Msg>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Msg>>>,
    log: Mutex<Log>,
    ledger: Mutex<Ledger>,
    next_seq: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still consistent enough
    // for a test double.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Deliveries {
    pub fn new(options: DeliveryOptions) -> Deliveries {
        let (queue, receiver) = mpsc::unbounded_channel();
        Deliveries {
            options,
            queue,
            receiver: Mutex::new(Some(receiver)),
            log: Mutex::new(Log::default()),
            ledger: Mutex::new(Ledger::default()),
            next_seq: Mutex::new(1),
        }
    }

    pub fn options(&self) -> &DeliveryOptions {
        &self.options
    }

    /// Records `change` in the ledger and, unless `notify` is `None`, queues its webhook.
    /// Returns the event's seq when one was logged. Call in the order changes happened.
    pub fn publish(&self, change: &Change, notify: Notify) -> Option<u64> {
        {
            let mut ledger = lock(&self.ledger);
            let latest = ledger
                .latest
                .entry((change.entity, change.key.clone()))
                .or_insert(change.updated_at);
            *latest = (*latest).max(change.updated_at);
        }
        if notify == Notify::None || !covered(&self.options.behaviours, change.entity) {
            return None;
        }
        let seq = {
            let mut next = lock(&self.next_seq);
            let seq = *next;
            *next += 1;
            seq
        };
        let events = self.options.behaviours.webhook_events;
        let name = event_name(change.entity, change.action, self.options.naming, events);
        let outcome = match (notify, &self.options.url) {
            (Notify::Drop, _) => Outcome::Dropped,
            (_, None) => Outcome::NoTarget,
            _ => Outcome::Queued,
        };
        {
            let mut log = lock(&self.log);
            if log.entries.is_empty() {
                log.first = seq;
            }
            log.entries.push_back(DeliveryRecord {
                seq,
                event: name.clone(),
                stream: change.entity.stream(),
                key: change.key.clone(),
                updated_at: change.updated_at,
                outcome,
                duplicated: false,
                reordered: false,
                requests: 0,
                status: None,
            });
            while log.entries.len() > LOG_CAPACITY {
                log.entries.pop_front();
                log.first += 1;
            }
        }
        if outcome == Outcome::Queued {
            let object = body_object(&self.options.behaviours, change);
            let carries_state = carries_state(&self.options.behaviours, change, &object);
            let body = payload(&name, &object, self.options.shape);
            let event = Event {
                seq,
                entity: change.entity,
                key: change.key.clone(),
                updated_at: change.updated_at,
                name,
                body,
                carries_state,
            };
            // Fails only once the sender task is gone (shutting down): nothing to deliver to.
            if self.queue.send(Msg::Event(event)).is_err()
                && let Some(r) = lock(&self.log).get_mut(seq)
            {
                r.outcome = Outcome::Failed;
            }
        }
        Some(seq)
    }

    /// Waits until every event queued so far was sent (held-back ones included), at most
    /// `timeout`. False when the sender task is not running or did not finish in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (reply, done) = oneshot::channel();
        if self.queue.send(Msg::Flush(reply)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(())))
    }

    /// Log entries with `seq > since`, oldest first.
    pub fn log(&self, since: u64) -> Vec<DeliveryRecord> {
        lock(&self.log)
            .entries
            .iter()
            .filter(|r| r.seq > since)
            .cloned()
            .collect()
    }

    pub fn summary(&self) -> DeliverySummary {
        let log = lock(&self.log);
        let mut s = DeliverySummary::default();
        for r in &log.entries {
            s.events += 1;
            let outcome = serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *s.outcomes.entry(outcome).or_default() += 1;
            s.duplicated += u64::from(r.duplicated);
            s.reordered += u64::from(r.reordered);
            s.requests += u64::from(r.requests);
        }
        s
    }

    /// Changed objects whose latest state no delivered webhook carried, by stream and key.
    pub fn undelivered(&self) -> Vec<Undelivered> {
        let ledger = lock(&self.ledger);
        let mut out: Vec<Undelivered> = ledger
            .latest
            .iter()
            .filter_map(|((entity, key), &latest)| {
                let delivered = ledger.delivered.get(&(*entity, key.clone())).copied();
                (delivered.is_none_or(|d| d < latest)).then(|| Undelivered {
                    stream: entity.stream(),
                    key: key.clone(),
                    updated_at: latest,
                    delivered_updated_at: delivered,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.stream, &a.key).cmp(&(b.stream, &b.key)));
        out
    }

    /// Objects changed since start (by any mutation, write or patch).
    pub fn changed(&self) -> usize {
        lock(&self.ledger).latest.len()
    }

    /// The sender task: runs until `shutdown`. Only the first call does anything.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(mut queue) = lock(&self.receiver).take() else {
            return;
        };
        let http = match partnerstack::http::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; deliveries are off");
                return;
            }
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.options.seed ^ 0xde11_7e55);
        // Events sent later than their turn: (events to wait, event).
        let mut held: Vec<(u32, Event)> = Vec::new();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(IDLE, queue.recv()) => m,
            };
            match msg {
                Err(_idle) => self.release(&http, &mut held, u32::MAX, &shutdown).await,
                Ok(None) => break,
                Ok(Some(Msg::Flush(reply))) => {
                    self.release(&http, &mut held, u32::MAX, &shutdown).await;
                    let _ = reply.send(());
                }
                Ok(Some(Msg::Event(event))) => {
                    let o = &self.options;
                    if rng.random_bool(o.drop) {
                        if let Some(r) = lock(&self.log).get_mut(event.seq) {
                            r.outcome = Outcome::Dropped;
                        }
                        continue;
                    }
                    let duplicate = rng.random_bool(o.duplicate);
                    let reorder = rng.random_bool(o.reorder);
                    if let Some(r) = lock(&self.log).get_mut(event.seq) {
                        r.duplicated = duplicate;
                        r.reordered = reorder;
                    }
                    let copy = duplicate.then(|| Event {
                        seq: event.seq,
                        entity: event.entity,
                        key: event.key.clone(),
                        updated_at: event.updated_at,
                        name: event.name.clone(),
                        body: event.body.clone(),
                        carries_state: event.carries_state,
                    });
                    let mut later = Vec::new();
                    if reorder {
                        later.push((rng.random_range(1..=3), event));
                    } else {
                        self.send(&http, &event, &shutdown).await;
                    }
                    if let Some(copy) = copy {
                        later.push((rng.random_range(1..=3), copy));
                    }
                    self.release(&http, &mut held, 1, &shutdown).await;
                    held.extend(later);
                }
            }
        }
    }

    /// Ages held events by `steps` events and sends those whose turn has come.
    async fn release(
        &self,
        http: &reqwest::Client,
        held: &mut Vec<(u32, Event)>,
        steps: u32,
        shutdown: &CancellationToken,
    ) {
        let mut due = Vec::new();
        let mut keep = Vec::new();
        for (wait, event) in held.drain(..) {
            if wait <= steps {
                due.push(event);
            } else {
                keep.push((wait - steps, event));
            }
        }
        *held = keep;
        for event in due {
            self.send(http, &event, shutdown).await;
        }
    }

    /// Sends one copy, retrying 5xx and connection failures a little.
    async fn send(&self, http: &reqwest::Client, event: &Event, shutdown: &CancellationToken) {
        let Some(url) = &self.options.url else {
            return;
        };
        let mut status = None;
        let mut requests = 0;
        for attempt in 1..=SEND_ATTEMPTS {
            if shutdown.is_cancelled() {
                break;
            }
            let mut request = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(event.body.clone());
            if let Some(secret) = &self.options.signing_secret {
                request = request.header(
                    self.options.signature_header.clone(),
                    sign(secret, &event.body),
                );
            }
            requests += 1;
            match request.send().await {
                Ok(response) => {
                    let code = response.status();
                    status = Some(code.as_u16());
                    if !code.is_server_error() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, seq = event.seq, "webhook delivery failed");
                }
            }
            if attempt < SEND_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if let Some(r) = lock(&self.log).get_mut(event.seq) {
            r.requests += requests;
            r.status = status.or(r.status);
            if ok {
                r.outcome = Outcome::Delivered;
            } else if r.outcome != Outcome::Delivered {
                r.outcome = Outcome::Failed;
            }
        }
        if ok && event.carries_state {
            self.reached_service(event.entity, &event.key, event.updated_at);
        }
    }

    /// Records that the object's state as of `updated_at` reached the service outside a
    /// reconcile scan (a webhook body, or a read to verify one).
    pub fn reached_service(&self, entity: Entity, key: &str, updated_at: i64) {
        let mut ledger = lock(&self.ledger);
        let d = ledger
            .delivered
            .entry((entity, key.to_string()))
            .or_insert(updated_at);
        *d = (*d).max(updated_at);
    }
}

/// Whether changes of `entity` get webhooks: in documented mode, only the kinds
/// PartnerStack documents webhooks for.
pub fn covered(behaviours: &Behaviours, entity: Entity) -> bool {
    match behaviours.webhook_events {
        WebhookEvents::All => true,
        WebhookEvents::Documented => matches!(
            entity,
            Entity::Partner | Entity::Customer | Entity::Deal | Entity::Lead
        ),
    }
}

/// Whether a webhook `body` about `change` brings the service the object's state: it
/// names the object by its key, carries its time and, for a new object, every field (a
/// sample's few fields bring a new object only partly; an update's sample carries the
/// fields the stand-in's changes touch, laid over what the service holds).
fn carries_state(behaviours: &Behaviours, change: &Change, body: &Value) -> bool {
    let whole = behaviour::present(behaviours, change.entity, change.object.clone())
        .as_object()
        .is_some_and(|full| full.keys().all(|k| body.get(k).is_some()));
    body.get("key").is_some()
        && body.get("updated_at").is_some()
        && (whole || change.action != Action::Created)
}

/// `customer_created` or `customer.created`. In the legacy (`all`) mode's dotted style,
/// partnerships are `partner.*`; the documentation's dotted names are `partnership.*`.
pub fn event_name(entity: Entity, action: Action, naming: Naming, events: WebhookEvents) -> String {
    match naming {
        Naming::Underscore => format!("{}_{}", entity.name(), action.as_str()),
        Naming::Dotted => {
            let prefix = if entity == Entity::Partner && events == WebhookEvents::All {
                "partner"
            } else {
                entity.name()
            };
            format!("{prefix}.{}", action.as_str())
        }
    }
}

/// The object a webhook body carries for `change`: in documented mode a partnership as
/// the webhook guide's sample has it (a numeric `id`, `partner_key`, names, email, the
/// group with its numeric `id`, `"archived": "false"`; no key, no timestamps), a customer
/// in the shape `--customer-body` chooses (by default the v1.0 reference sample), deals
/// and leads as `--deal-lead-body` says; otherwise the object as the API renders it.
pub fn body_object(behaviours: &Behaviours, change: &Change) -> Value {
    let object = behaviour::present(behaviours, change.entity, change.object.clone());
    if behaviours.webhook_events == WebhookEvents::All {
        return object;
    }
    let field = |name: &str| object.get(name).cloned().unwrap_or(Value::Null);
    let archived =
        change.action == Action::Deleted || change.object.get("archived") == Some(&json!(true));
    let archived_text = if archived { "true" } else { "false" };
    let id = numeric_id(&change.key);
    match (
        change.entity,
        behaviours.customer_body,
        behaviours.deal_lead_body,
    ) {
        (Entity::Partner, ..) => {
            let group = match object.get("group") {
                Some(Value::Object(g)) => json!({
                    "id": g.get("key").and_then(Value::as_str).map(numeric_id),
                    "name": g.get("name").cloned().unwrap_or(Value::Null),
                    "slug": g.get("slug").cloned().unwrap_or(Value::Null),
                }),
                _ => Value::Null,
            };
            json!({
                "id": id,
                "partner_key": field("partner_key"),
                "first_name": field("first_name"),
                "last_name": field("last_name"),
                "email": field("email"),
                "group": group,
                "archived": archived_text,
            })
        }
        (Entity::Customer, CustomerBody::Sample, _) => json!({
            "id": id,
            "key": change.key,
            "email": field("email"),
            "name": field("name"),
            "partner_key": field("partner_key"),
            "created_at": field("created_at"),
            "updated_at": field("updated_at"),
            "archived": archived,
        }),
        (Entity::Customer, CustomerBody::Keyless, _) => json!({
            "id": id,
            "customer_key": field("customer_key"),
            "email": field("email"),
            "name": field("name"),
            "partner_key": field("partner_key"),
            "archived": archived_text,
        }),
        (Entity::Deal | Entity::Lead, _, DealLeadBody::Keyless) => {
            let mut keyless = object;
            if let Value::Object(map) = &mut keyless {
                for gone in ["key", "created_at", "updated_at"] {
                    map.remove(gone);
                }
                map.insert("id".into(), json!(id));
            }
            keyless
        }
        _ => object,
    }
}

/// The signature header value for `body` under `secret`: `sha256=` and the hex of
/// HMAC-SHA256(body), the form the service verifies.
pub fn sign(secret: &SecretString, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac as _};
    use secrecy::ExposeSecret as _;
    // HMAC takes keys of any length.
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delivery body in `shape`.
pub fn payload(event: &str, object: &Value, shape: Shape) -> Vec<u8> {
    let body = match (shape, object) {
        (Shape::Flat, Value::Object(map)) => {
            let mut map = map.clone();
            map.insert("event".into(), Value::String(event.to_string()));
            Value::Object(map)
        }
        _ => json!({"event": event, "data": object}),
    };
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaviours(webhook_events: WebhookEvents, customer_body: CustomerBody) -> Behaviours {
        Behaviours {
            webhook_events,
            customer_body,
            ..Behaviours::default()
        }
    }

    #[test]
    fn documented_bodies_have_the_documented_shape() {
        let partnership = Change {
            entity: Entity::Partner,
            key: "part_1".into(),
            action: Action::Created,
            updated_at: 5,
            object: json!({"key": "part_1", "partner_key": "JohnSmith", "first_name": "John",
                "last_name": "Smith", "email": "j@example.com", "tags": [],
                "group": {"key": "grup_1", "name": "Gold", "slug": "gold"},
                "created_at": 1, "updated_at": 5}),
        };
        let documented = behaviours(WebhookEvents::Documented, CustomerBody::Full);
        let body = body_object(&documented, &partnership);
        let mut fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "archived",
                "email",
                "first_name",
                "group",
                "id",
                "last_name",
                "partner_key"
            ]
        );
        assert_eq!(body["archived"], "false");
        assert!(body["id"].is_u64());
        assert_eq!(body["group"]["name"], "Gold");
        assert!(body["group"]["id"].is_u64() && body["group"].get("key").is_none());
        let all = behaviours(WebhookEvents::All, CustomerBody::Full);
        let rendered = behaviour::present(&all, Entity::Partner, partnership.object.clone());
        assert_eq!(body_object(&all, &partnership), rendered);

        let customer = Change {
            entity: Entity::Customer,
            key: "cust_1".into(),
            action: Action::Deleted,
            updated_at: 5,
            object: json!({"key": "cust_1", "customer_key": "c-1", "email": "b@example.com",
                "partner_key": "JohnSmith", "created_at": 1, "updated_at": 5}),
        };
        let full = body_object(&documented, &customer);
        assert_eq!(full["customer_key"], "c-1");
        assert!(
            full["fields"].is_array(),
            "rendered as the API renders it: {full}"
        );
        // The v1.0 reference sample: id, key, times, a boolean archived; no customer_key.
        let sample = body_object(
            &behaviours(WebhookEvents::Documented, CustomerBody::Sample),
            &customer,
        );
        let mut fields: Vec<&str> = sample
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "archived",
                "created_at",
                "email",
                "id",
                "key",
                "name",
                "partner_key",
                "updated_at"
            ]
        );
        assert_eq!(
            (&sample["archived"], &sample["key"]),
            (&json!(true), &json!("cust_1"))
        );
        let keyless = body_object(
            &behaviours(WebhookEvents::Documented, CustomerBody::Keyless),
            &customer,
        );
        assert!(keyless.get("key").is_none() && keyless.get("updated_at").is_none());
        assert_eq!(
            (&keyless["customer_key"], &keyless["archived"]),
            (&json!("c-1"), &json!("true"))
        );
        let deal = Change {
            entity: Entity::Deal,
            key: "deal_1".into(),
            action: Action::Updated,
            updated_at: 5,
            object: json!({"key": "deal_1", "stage": "won", "created_at": 1, "updated_at": 5}),
        };
        let keyless_deal = body_object(
            &Behaviours {
                deal_lead_body: DealLeadBody::Keyless,
                ..Behaviours::default()
            },
            &deal,
        );
        assert!(keyless_deal.get("key").is_none() && keyless_deal.get("updated_at").is_none());
        assert!(keyless_deal["id"].is_u64() && keyless_deal["stage"] == "won");
        assert_eq!(body_object(&documented, &deal)["key"], "deal_1");
        assert!(covered(&documented, Entity::Deal));
        assert!(!covered(&documented, Entity::Transaction));
        assert!(!covered(&documented, Entity::Group));
        assert!(covered(&all, Entity::Reward));
    }

    #[test]
    fn names_and_shapes() {
        assert_eq!(
            event_name(
                Entity::Partner,
                Action::Created,
                Naming::Dotted,
                WebhookEvents::All
            ),
            "partner.created"
        );
        assert_eq!(
            event_name(
                Entity::Partner,
                Action::Created,
                Naming::Dotted,
                WebhookEvents::Documented
            ),
            "partnership.created"
        );
        assert_eq!(
            event_name(
                Entity::Customer,
                Action::Deleted,
                Naming::Underscore,
                WebhookEvents::Documented
            ),
            "customer_deleted"
        );
        let object = json!({"key": "cust_1"});
        let flat: Value =
            serde_json::from_slice(&payload("customer_created", &object, Shape::Flat)).unwrap();
        assert_eq!(flat, json!({"key": "cust_1", "event": "customer_created"}));
        let env: Value =
            serde_json::from_slice(&payload("customer.created", &object, Shape::Envelope)).unwrap();
        assert_eq!(
            env,
            json!({"event": "customer.created", "data": {"key": "cust_1"}})
        );
    }
}
