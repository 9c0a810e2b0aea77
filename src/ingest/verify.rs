//! Webhooks are notifications; PartnerStack's API is the truth.
//!
//! PartnerStack does not sign its deliveries, and its documented bodies can lack a key
//! and timestamps, so in verified mode (`webhooks.verification`) a delivery only says
//! *which* object changed: the [`Verifier`] asks PartnerStack for that object and the
//! applier applies the answer. Where PartnerStack has a single GET (partnerships by key or
//! `partner_key`, customers by `customer_key`, deals and leads by key) that is one request;
//! other kinds are looked up in a narrow list page around the object's times (the other
//! objects such a page returns are PartnerStack's current state too, and are applied with
//! it). Deliveries for the same object in one batch share one fetch, and every fetch waits
//! for the client's request budget. Many single reads of one stream are made as list
//! pages of its recent changes instead ([`Verifier::answer_each`]), and answers are
//! handed over as they arrive. A delivery's numeric `id` is never used to find anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use partnerstack::Entity;
use partnerstack::client::{self, Client, ListQuery};
use partnerstack::models::Meta;
use partnerstack::webhook::EventKind;
use partnerstack::wire;
use serde_json::Value;
use tokio::sync::mpsc;

use super::IngestMetrics;
use crate::telemetry::Labels;

/// Fetches for one batch run at most this many at once (the request budget paces them
/// anyway).
const CONCURRENT_FETCHES: usize = 4;
/// Most list pages a lookup reads before it gives up (a list lookup without a narrow
/// window, e.g. an old reward, may not find its object in a few pages).
const LOOKUP_PAGES: u64 = 4;
/// How long an object read is kept to answer deliveries that arrived before the read.
const RECENT_FOR: chrono::Duration = chrono::Duration::seconds(60);
/// A read answers a delivery only if sent this long after it arrived: arrivals are the
/// database's clock, reads this replica's.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::seconds(1);
/// Objects read kept at most (by each of their keys).
const RECENT_MAX: usize = 20_000;
/// Lookups of one stream are read by the page from this many on (a page of 250 answers
/// them in one request, or a few; fewer are cheaper read one by one).
const BY_PAGE_FROM: usize = 8;
/// How long before its delivery arrived an object may have changed and still be looked
/// for in the pages of recent changes (a later retry of an old delivery is read singly).
const PAGE_MARGIN: chrono::Duration = chrono::Duration::minutes(10);
/// How far past the start of its read the pages of recent changes reach: clocks differ.
const UNTIL_MARGIN: chrono::Duration = chrono::Duration::minutes(1);
/// The margin around an object's time in a list lookup: whether PartnerStack's time
/// bounds are inclusive is undocumented.
const WINDOW: chrono::Duration = chrono::Duration::seconds(1);

crate::text_enum! {
    /// What a verification fetch found.
    pub enum FetchResult {
        Found = "found",
        Missing = "missing",
        Failed = "failed",
    }
}

/// A verification fetch's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FetchLabel {
    pub result: FetchResult,
}

impl Labels for FetchLabel {
    fn fixed() -> Vec<Self> {
        FetchResult::ALL
            .iter()
            .map(|&result| FetchLabel { result })
            .collect()
    }
}

/// How to find the object a delivery names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// `GET /<stream>/{key}`: a key, `partner_key` or `customer_key`, as the API takes it.
    Get { entity: Entity, key: String },
    /// The object with `key` in a list page filtered around its times.
    List {
        entity: Entity,
        key: String,
        window: Window,
    },
}

/// The times a list lookup filters on (epoch ms, so the lookup can be a map key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    updated_ms: Option<i64>,
    created_ms: Option<i64>,
}

impl Lookup {
    /// How to find the object a delivery body names, if it can be found at all: by a
    /// single GET where PartnerStack has one and the body carries what it takes, else by
    /// its key in a list page.
    pub fn for_body(entity: Entity, object: &Value) -> Option<Lookup> {
        let text = |field: &str| {
            object
                .get(field)
                .and_then(|v| wire::parse_string(v).ok().flatten())
                .filter(|s| !s.trim().is_empty())
        };
        let time = |field: &str| {
            object
                .get(field)
                .and_then(|v| wire::parse_timestamp(v).ok().flatten())
                .map(|t| t.timestamp_millis())
        };
        let key = Meta::identity_of(object);
        let get = |key: String| Some(Lookup::Get { entity, key });
        match entity {
            Entity::Partner => key.or_else(|| text("partner_key")).and_then(get),
            Entity::Customer => match text("customer_key") {
                Some(customer_key) => get(customer_key),
                None => key.map(|key| Lookup::List {
                    entity,
                    key,
                    window: Window {
                        updated_ms: time("updated_at"),
                        created_ms: time("created_at"),
                    },
                }),
            },
            Entity::Deal | Entity::Lead => key.and_then(get),
            Entity::Transaction | Entity::Reward | Entity::Group => key.map(|key| Lookup::List {
                entity,
                key,
                window: Window {
                    updated_ms: time("updated_at"),
                    created_ms: time("created_at"),
                },
            }),
        }
    }

    pub fn entity(&self) -> Entity {
        match self {
            Lookup::Get { entity, .. } | Lookup::List { entity, .. } => *entity,
        }
    }

    /// The key, `partner_key` or `customer_key` it names the object by.
    pub fn key(&self) -> &str {
        match self {
            Lookup::Get { key, .. } | Lookup::List { key, .. } => key,
        }
    }
}

/// What PartnerStack answered for one lookup.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The object, as PartnerStack renders it.
    Found(Value),
    /// PartnerStack does not know it (404, or not in the list).
    Missing,
    /// No answer to act on (unreachable, 5xx or 429 after retries, 401, ...).
    Failed(String),
}

/// PartnerStack's answers for one batch of deliveries.
#[derive(Debug, Default)]
pub struct Answers {
    pub by_lookup: HashMap<Lookup, Fetched>,
    /// Every other object list lookups returned: PartnerStack's current state too.
    pub others: Vec<(Entity, Value)>,
}

/// Fetches the objects deliveries name.
#[derive(Clone)]
pub struct Verifier {
    client: Client,
    /// How long after a delivery arrived a missing object is looked for again.
    pub confirm_within: Duration,
    /// Objects read lately (by any applier of this replica).
    recent: Arc<Mutex<Recent>>,
    /// Held while a stream's pages are read, one task of the replica at a time.
    paging: Arc<HashMap<Entity, tokio::sync::Mutex<()>>>,
}

/// What a lookup's deliveries tell about the object they wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    /// When the latest of them arrived (the database's clock).
    pub arrived: DateTime<Utc>,
    /// The newest change they announce (the `updated_at` of their bodies), if every body
    /// carries one.
    pub announced: Option<DateTime<Utc>>,
}

impl Awaited {
    /// What deliveries tell (when each arrived, its event, the object its body carries);
    /// `None` for none. A deletion announces no time: PartnerStack may archive an object
    /// without changing its `updated_at`, so only a read sent after it arrived shows it.
    pub fn of<'a>(
        deliveries: impl IntoIterator<Item = (DateTime<Utc>, EventKind, &'a Value)>,
    ) -> Option<Awaited> {
        let mut out: Option<Awaited> = None;
        for (arrived, kind, body) in deliveries {
            let announced = body
                .get("updated_at")
                .and_then(|v| wire::parse_timestamp(v).ok().flatten())
                .filter(|_| !kind.deleted);
            out = Some(match out {
                None => Awaited { arrived, announced },
                Some(a) => Awaited {
                    arrived: a.arrived.max(arrived),
                    announced: a.announced.zip(announced).map(|(a, b)| a.max(b)),
                },
            });
        }
        out
    }
}

/// Objects read lately, by stream and every key a single read may name them by, with when
/// their request was sent. A read answers a delivery without a request of its own when it
/// shows PartnerStack's state at or after the change the delivery announces: its object is
/// as new as the change (by `updated_at`), or it was sent after the delivery arrived.
/// Kept [`RECENT_FOR`], at most [`RECENT_MAX`].
#[derive(Default)]
struct Recent {
    objects: HashMap<(Entity, String), (DateTime<Utc>, Value)>,
}

impl Recent {
    fn keep(&mut self, entity: Entity, object: &Value, read_at: DateTime<Utc>) {
        if self.objects.len() >= RECENT_MAX {
            let horizon = Utc::now() - RECENT_FOR;
            self.objects.retain(|_, (at, _)| *at > horizon);
            if self.objects.len() >= RECENT_MAX {
                self.objects.clear();
            }
        }
        for id in identities(entity, object) {
            self.objects.insert((entity, id), (read_at, object.clone()));
        }
    }

    /// The object `lookup` names, if a read kept shows it at or after the change its
    /// deliveries announce.
    fn answer(&self, lookup: &Lookup, awaited: Awaited) -> Option<Value> {
        let (read_at, object) = self
            .objects
            .get(&(lookup.entity(), lookup.key().to_string()))?;
        if *read_at <= Utc::now() - RECENT_FOR {
            return None;
        }
        let as_new = awaited.announced.is_some_and(|announced| {
            object
                .get("updated_at")
                .and_then(|v| wire::parse_timestamp(v).ok().flatten())
                .is_some_and(|updated| updated >= announced)
        });
        (as_new || *read_at >= awaited.arrived + CLOCK_MARGIN).then(|| object.clone())
    }
}

impl Verifier {
    pub fn new(client: Client, confirm_within: Duration) -> Verifier {
        Verifier {
            client,
            confirm_within,
            recent: Arc::default(),
            paging: Arc::new(
                Entity::ALL
                    .into_iter()
                    .map(|e| (e, tokio::sync::Mutex::new(())))
                    .collect(),
            ),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // A poisoned lock only means a panic elsewhere; the objects are still usable.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers from the objects read lately (see [`Recent`]); the lookups left.
    fn answered_lately(
        &self,
        lookups: impl IntoIterator<Item = (Lookup, Awaited)>,
        metrics: &IngestMetrics,
    ) -> (Answers, Vec<(Lookup, Awaited)>) {
        let mut known = Answers::default();
        let mut unknown = Vec::new();
        let recent = self.recent();
        for (lookup, awaited) in lookups {
            match recent.answer(&lookup, awaited) {
                Some(object) => {
                    let fetched = Fetched::Found(object);
                    count_fetch(metrics, &fetched);
                    known.by_lookup.insert(lookup, fetched);
                }
                None => unknown.push((lookup, awaited)),
            }
        }
        (known, unknown)
    }

    /// Answers every distinct lookup once, sending each answer on `answered` as soon as it
    /// is known (a page's worth at a time when read by the page), so its deliveries can be
    /// applied while the rest are still being read. Each lookup comes with what its
    /// deliveries tell ([`Awaited`]): an object this replica read lately that is at least
    /// as new as their change, or read after they arrived, answers it without a request.
    /// Lookups of one stream that has a `min_updated` filter are read as list pages
    /// instead when there are [`BY_PAGE_FROM`] or more of them: the pages of objects
    /// updated since the oldest arrival, less [`PAGE_MARGIN`], while a further page costs
    /// less than reading the objects still missing one by one; any object the pages did
    /// not bring is then read singly. One task of the replica reads a stream's pages at a
    /// time: another waits, then takes what those pages brought first. Stops early when
    /// `answered` is closed.
    pub async fn answer_each(
        &self,
        lookups: HashMap<Lookup, Awaited>,
        metrics: &IngestMetrics,
        answered: mpsc::Sender<Answers>,
    ) {
        let Some(since) = lookups.values().map(|a| a.arrived).min() else {
            return;
        };
        let mut by_entity: HashMap<Entity, Vec<(Lookup, Awaited)>> = HashMap::new();
        for (lookup, awaited) in lookups {
            by_entity
                .entry(lookup.entity())
                .or_default()
                .push((lookup, awaited));
        }
        let mut singles = Vec::new();
        for (entity, mut lookups) in by_entity {
            lookups.sort_by_key(|(l, _)| format!("{l:?}"));
            let by_page = client::supported_filters(entity).contains(&client::Filter::MinUpdated)
                && lookups.len() >= BY_PAGE_FROM;
            // Waiting for another task's pages: they may answer some of these.
            let _reading = match self.paging.get(&entity) {
                Some(lock) if by_page => Some(lock.lock().await),
                _ => None,
            };
            let (known, lookups) = self.answered_lately(lookups, metrics);
            if !known.by_lookup.is_empty() && answered.send(known).await.is_err() {
                return;
            }
            let lookups: Vec<Lookup> = lookups.into_iter().map(|(l, _)| l).collect();
            if !by_page || lookups.len() < BY_PAGE_FROM {
                singles.extend(lookups);
                continue;
            }
            let since = since - PAGE_MARGIN;
            let left = client::spend(
                client::Purpose::Verify,
                self.read_pages(entity, lookups, since, metrics, &answered),
            )
            .await
            .0;
            match left {
                Some(left) => singles.extend(left),
                None => return,
            }
        }
        let mut answers = futures_util::stream::iter(singles)
            .map(|lookup| async move {
                let (fetched, others) = self.fetch(&lookup).await;
                count_fetch(metrics, &fetched);
                let entity = lookup.entity();
                Answers {
                    by_lookup: HashMap::from([(lookup, fetched)]),
                    others: others.into_iter().map(|o| (entity, o)).collect(),
                }
            })
            .buffer_unordered(CONCURRENT_FETCHES);
        while let Some(answer) = answers.next().await {
            if answered.send(answer).await.is_err() {
                return;
            }
        }
    }

    /// Reads `entity`'s objects updated since `since` page by page, sending the answers
    /// each page brings; returns the lookups the pages did not answer (`None` when
    /// `answered` was closed).
    async fn read_pages(
        &self,
        entity: Entity,
        lookups: Vec<Lookup>,
        since: DateTime<Utc>,
        metrics: &IngestMetrics,
        answered: &mpsc::Sender<Answers>,
    ) -> Option<Vec<Lookup>> {
        let mut wanted: HashMap<String, Lookup> = lookups
            .into_iter()
            .map(|l| (l.key().to_string(), l))
            .collect();
        // Bounded at both ends where the stream takes it, as every list read to verify is
        // (its end a minute past now, for clocks): what changed before the deliveries
        // arrived.
        let until = client::supported_filters(entity)
            .contains(&client::Filter::MaxUpdated)
            .then(|| Utc::now() + UNTIL_MARGIN);
        let query = ListQuery {
            min_updated: Some(since),
            max_updated: until,
            ..ListQuery::default()
        };
        let mut pager = self.client.pages(entity, query);
        // Another page is read only while it costs less than reading the objects still
        // missing one by one.
        while !wanted.is_empty() && pager.pages() < wanted.len() as u64 {
            let read_at = Utc::now();
            let page = match pager.next_page().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, stream = entity.stream(), "reading deliveries' objects by the page failed; reading them singly");
                    break;
                }
            };
            let mut answers = Answers::default();
            {
                let mut recent = self.recent();
                for item in &page.items {
                    recent.keep(entity, item, read_at);
                }
            }
            // Every object the page returns is PartnerStack's current state: those no
            // delivery named (their webhook may be lost, or still on its way) are applied
            // with the rest.
            for item in page.items {
                let found = identities(entity, &item)
                    .into_iter()
                    .find_map(|id| wanted.remove(&id));
                match found {
                    Some(lookup) => {
                        let fetched = Fetched::Found(item);
                        count_fetch(metrics, &fetched);
                        answers.by_lookup.insert(lookup, fetched);
                    }
                    None => answers.others.push((entity, item)),
                }
            }
            if answered.send(answers).await.is_err() {
                return None;
            }
            if page.next_cursor.is_none() {
                break;
            }
        }
        Some(wanted.into_values().collect())
    }

    /// The answer to one lookup, and the other objects a list lookup read on the way;
    /// its requests are counted as verification's.
    async fn fetch(&self, lookup: &Lookup) -> (Fetched, Vec<Value>) {
        let read_at = Utc::now();
        let (fetched, others) = client::spend(client::Purpose::Verify, self.fetch_unscoped(lookup))
            .await
            .0;
        if let Fetched::Found(object) = &fetched {
            self.recent().keep(lookup.entity(), object, read_at);
        }
        (fetched, others)
    }

    async fn fetch_unscoped(&self, lookup: &Lookup) -> (Fetched, Vec<Value>) {
        match lookup {
            Lookup::Get { entity, key } => match self.client.get(*entity, key).await {
                Ok(Some(object)) => (Fetched::Found(object), Vec::new()),
                Ok(None) => (Fetched::Missing, Vec::new()),
                Err(e) => (Fetched::Failed(e.to_string()), Vec::new()),
            },
            Lookup::List {
                entity,
                key,
                window,
            } => match self.find_in_list(*entity, key, *window).await {
                Ok((Some(object), others)) => (Fetched::Found(object), others),
                Ok((None, others)) => (Fetched::Missing, others),
                Err(e) => (Fetched::Failed(e.to_string()), Vec::new()),
            },
        }
    }

    /// The object with `key` among the list pages around its times, and the other objects
    /// those pages held.
    async fn find_in_list(
        &self,
        entity: Entity,
        key: &str,
        window: Window,
    ) -> Result<(Option<Value>, Vec<Value>), client::Error> {
        let mut pager = self.client.pages(entity, list_query(entity, window));
        let mut others = Vec::new();
        while pager.pages() < LOOKUP_PAGES {
            let Some(page) = pager.next_page().await? else {
                break;
            };
            let mut found = None;
            for item in page.items {
                if found.is_none() && Meta::identity_of(&item).as_deref() == Some(key) {
                    found = Some(item);
                } else {
                    others.push(item);
                }
            }
            if found.is_some() {
                return Ok((found, others));
            }
        }
        Ok((None, others))
    }
}

/// Counts one verification answer in `psync_webhook_fetches_total`.
fn count_fetch(metrics: &IngestMetrics, fetched: &Fetched) {
    let result = match fetched {
        Fetched::Found(_) => FetchResult::Found,
        Fetched::Missing => FetchResult::Missing,
        Fetched::Failed(_) => FetchResult::Failed,
    };
    metrics
        .webhook_fetches
        .get_or_create(&FetchLabel { result })
        .inc();
}

/// The keys a single read of `entity` may name `item` by: its key, and (unless archived)
/// the customer's `customer_key` or the partnership's `partner_key`.
fn identities(entity: Entity, item: &Value) -> Vec<String> {
    let text = |field: &str| {
        item.get(field)
            .and_then(|v| wire::parse_string(v).ok().flatten())
            .filter(|s| !s.trim().is_empty())
    };
    // A single read by `customer_key` or `partner_key` finds a listed object only (an
    // archived one may share the identifier with a live one): so does this.
    let archived = item
        .get("archived")
        .and_then(|v| wire::parse_bool(v).ok().flatten())
        .unwrap_or(false);
    let own = match entity {
        _ if archived => None,
        Entity::Customer => text("customer_key"),
        Entity::Partner => text("partner_key"),
        _ => None,
    };
    Meta::identity_of(item).into_iter().chain(own).collect()
}

/// The narrowest list query the stream's filters allow around `window`.
fn list_query(entity: Entity, window: Window) -> ListQuery {
    let supported = client::supported_filters(entity);
    let has = |f: client::Filter| supported.contains(&f);
    let at = |ms: i64, shift: chrono::Duration| {
        DateTime::<Utc>::from_timestamp_millis(ms).and_then(|t| t.checked_add_signed(shift))
    };
    let mut query = ListQuery::default();
    if let Some(ms) = window
        .updated_ms
        .filter(|_| has(client::Filter::MinUpdated))
    {
        query.min_updated = at(ms, -WINDOW);
        if has(client::Filter::MaxUpdated) {
            query.max_updated = at(ms, WINDOW);
        }
    } else if let Some(ms) = window
        .created_ms
        .filter(|_| has(client::Filter::MinCreated))
    {
        query.min_created = at(ms, -WINDOW);
        if has(client::Filter::MaxCreated) {
            query.max_created = at(ms, WINDOW);
        }
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_use_single_gets_where_they_exist_and_never_a_numeric_id() {
        let get = |entity, key: &str| {
            Some(Lookup::Get {
                entity,
                key: key.to_string(),
            })
        };
        // The documented partnership sample: no key, a numeric id, a partner_key.
        let sample = json!({"id": 123, "partner_key": "JohnSmith", "archived": "false"});
        assert_eq!(
            Lookup::for_body(Entity::Partner, &sample),
            get(Entity::Partner, "JohnSmith")
        );
        assert_eq!(Lookup::for_body(Entity::Partner, &json!({"id": 123})), None);
        // Customers are read by your customer_key.
        assert_eq!(
            Lookup::for_body(
                Entity::Customer,
                &json!({"key": "cust_1", "customer_key": "c-1"})
            ),
            get(Entity::Customer, "c-1")
        );
        assert!(matches!(
            Lookup::for_body(
                Entity::Customer,
                &json!({"key": "cust_1", "updated_at": 1_700_000_000_000_i64})
            ),
            Some(Lookup::List { .. })
        ));
        assert_eq!(
            Lookup::for_body(Entity::Deal, &json!({"key": "deal_1"})),
            get(Entity::Deal, "deal_1")
        );
        assert_eq!(Lookup::for_body(Entity::Lead, &json!({"id": 9})), None);
        assert!(matches!(
            Lookup::for_body(
                Entity::Transaction,
                &json!({"key": "txn_1", "created_at": 1_700_000_000_000_i64})
            ),
            Some(Lookup::List {
                entity: Entity::Transaction,
                ..
            })
        ));
    }

    #[test]
    fn a_read_answers_a_delivery_as_new_as_its_object_or_arrived_before_it() {
        let read_at = Utc::now();
        let secs = chrono::Duration::seconds;
        let mut recent = Recent::default();
        let object = json!({"key": "cust_1", "customer_key": "c-1",
                            "updated_at": read_at.timestamp_millis()});
        recent.keep(Entity::Customer, &object, read_at);
        let lookup = Lookup::Get {
            entity: Entity::Customer,
            key: "c-1".to_string(),
        };
        let updated = EventKind {
            entity: Entity::Customer,
            deleted: false,
        };
        let deleted = EventKind {
            deleted: true,
            ..updated
        };
        let answers_as = |kind: EventKind, deliveries: &[(DateTime<Utc>, &Value)]| {
            let awaited =
                Awaited::of(deliveries.iter().map(|(at, body)| (*at, kind, *body))).unwrap();
            recent.answer(&lookup, awaited).is_some()
        };
        let answers = |deliveries: &[(DateTime<Utc>, &Value)]| answers_as(updated, deliveries);
        let change = json!({"updated_at": read_at.timestamp_millis()});
        let newer = json!({"updated_at": (read_at + secs(1)).timestamp_millis()});
        let bare = json!({});
        let later = read_at + secs(5);
        // Arrived after the read, about the change the read shows: answered.
        assert!(answers(&[(later, &change)]));
        // About a newer change than the read shows: not answered.
        assert!(!answers(&[(later, &newer)]));
        // Without a time, only a read sent after the delivery arrived answers it.
        assert!(answers(&[(read_at - secs(5), &bare)]));
        assert!(!answers(&[(read_at, &bare)]));
        // One body without a time among several: the change is not known.
        assert!(!answers(&[(later, &change), (later, &bare)]));
        // A deletion may leave `updated_at` as it was: only a later read shows it.
        assert!(!answers_as(deleted, &[(later, &change)]));
        assert!(answers_as(deleted, &[(read_at - secs(5), &change)]));
        // By the object's key too.
        let by_key = Lookup::Get {
            entity: Entity::Customer,
            key: "cust_1".to_string(),
        };
        let awaited = Awaited::of([(later, updated, &change)]).unwrap();
        assert!(recent.answer(&by_key, awaited).is_some());
    }

    #[test]
    fn list_lookups_filter_as_narrowly_as_the_stream_allows() {
        let t = 1_700_000_000_000_i64;
        let q = list_query(
            Entity::Transaction,
            Window {
                updated_ms: Some(t + 5),
                created_ms: Some(t),
            },
        );
        // Transactions have no update filter: the creation window, both bounds.
        assert_eq!(q.min_created.map(|d| d.timestamp_millis()), Some(t - 1000));
        assert_eq!(q.max_created.map(|d| d.timestamp_millis()), Some(t + 1000));
        assert!(q.min_updated.is_none());
        let q = list_query(
            Entity::Customer,
            Window {
                updated_ms: Some(t),
                created_ms: Some(t),
            },
        );
        assert_eq!(q.max_updated.map(|d| d.timestamp_millis()), Some(t + 1000));
        // Groups have only min_updated.
        let q = list_query(
            Entity::Group,
            Window {
                updated_ms: Some(t),
                created_ms: None,
            },
        );
        assert!(q.min_updated.is_some() && q.max_updated.is_none());
    }
}
