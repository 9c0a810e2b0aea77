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
//! for the client's request budget. A delivery's numeric `id` is never used to find
//! anything.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use partnerstack::Entity;
use partnerstack::client::{self, Client, ListQuery};
use partnerstack::models::Meta;
use partnerstack::wire;
use serde_json::Value;

use super::IngestMetrics;
use crate::telemetry::Labels;

/// Fetches for one batch run at most this many at once (the request budget paces them
/// anyway).
const CONCURRENT_FETCHES: usize = 4;
/// Most list pages a lookup reads before it gives up (a list lookup without a narrow
/// window, e.g. an old reward, may not find its object in a few pages).
const LOOKUP_PAGES: u64 = 4;
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
}

impl Verifier {
    pub fn new(client: Client, confirm_within: Duration) -> Verifier {
        Verifier {
            client,
            confirm_within,
        }
    }

    /// Answers every distinct lookup once.
    pub async fn fetch_all(
        &self,
        lookups: impl IntoIterator<Item = Lookup>,
        metrics: &IngestMetrics,
    ) -> Answers {
        let mut distinct: Vec<Lookup> = lookups.into_iter().collect();
        distinct.sort_by_key(|l| format!("{l:?}"));
        distinct.dedup();
        let fetched: Vec<(Lookup, Fetched, Vec<Value>)> = futures_util::stream::iter(distinct)
            .map(|lookup| async move {
                let (fetched, others) = self.fetch(&lookup).await;
                let result = match &fetched {
                    Fetched::Found(_) => FetchResult::Found,
                    Fetched::Missing => FetchResult::Missing,
                    Fetched::Failed(_) => FetchResult::Failed,
                };
                metrics
                    .webhook_fetches
                    .get_or_create(&FetchLabel { result })
                    .inc();
                (lookup, fetched, others)
            })
            .buffer_unordered(CONCURRENT_FETCHES)
            .collect()
            .await;
        let mut answers = Answers::default();
        for (lookup, fetched, others) in fetched {
            let entity = lookup.entity();
            answers
                .others
                .extend(others.into_iter().map(|o| (entity, o)));
            answers.by_lookup.insert(lookup, fetched);
        }
        answers
    }

    /// The answer to one lookup, and the other objects a list lookup read on the way;
    /// its requests are counted as verification's.
    async fn fetch(&self, lookup: &Lookup) -> (Fetched, Vec<Value>) {
        client::spend(client::Purpose::Verify, self.fetch_unscoped(lookup))
            .await
            .0
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
