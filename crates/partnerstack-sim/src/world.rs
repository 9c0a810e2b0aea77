//! The stand-in's whole program: seeded data, its clock, mutations and the write calls.
//!
//! Everything random comes from one seeded generator (`xoshiro256++`, portable across
//! platforms and versions), so the same seed and counts give the same keys and content.
//! Times are anchored at start-up (or `--now-ms`), so timestamps repeat only when pinned.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::behaviour::{DuplicateCustomerKey, DuplicateTransactionKey, RefusalWording};
use super::data::*;
use partnerstack::Entity;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// How many objects of each kind the seeded program starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub groups: usize,
    pub partners: usize,
    pub customers: usize,
    pub transactions: usize,
    pub rewards: usize,
    pub deals: usize,
    pub leads: usize,
}

/// A change to one object, as a webhook would carry it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    #[serde(serialize_with = "stream_name")]
    pub entity: Entity,
    pub key: String,
    pub action: Action,
    pub updated_at: i64,
    /// The object as the API renders it after the change.
    #[serde(skip)]
    pub object: Value,
}

fn stream_name<S: serde::Serializer>(e: &Entity, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(e.stream())
}

/// What happened to the object: the second half of the event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    /// Archived customers (`customer_deleted`).
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }
}

/// The changes the mutation engine makes, each with its webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationKind {
    /// A new customer under a partner (`customer_created`).
    NewCustomer,
    /// A new, unapproved transaction and its pending reward.
    NewTransaction,
    /// An unapproved transaction becomes approved (`transaction_updated`).
    ApproveTransaction,
    /// A reward moves on: hold → pending → approved → paid (`reward_updated`).
    RewardStatus,
    /// A customer's name or email changes.
    UpdateCustomer,
    /// A customer is archived: it leaves the list (`customer_deleted`).
    ArchiveCustomer,
    /// A partnership's tags change.
    UpdatePartnership,
}

impl MutationKind {
    pub const ALL: [MutationKind; 7] = [
        MutationKind::NewCustomer,
        MutationKind::NewTransaction,
        MutationKind::ApproveTransaction,
        MutationKind::RewardStatus,
        MutationKind::UpdateCustomer,
        MutationKind::ArchiveCustomer,
        MutationKind::UpdatePartnership,
    ];

    /// Relative frequency in random mutation.
    fn weight(self) -> u32 {
        match self {
            MutationKind::NewCustomer => 20,
            MutationKind::NewTransaction => 20,
            MutationKind::ApproveTransaction => 20,
            MutationKind::RewardStatus => 20,
            MutationKind::UpdateCustomer => 10,
            MutationKind::ArchiveCustomer => 5,
            MutationKind::UpdatePartnership => 5,
        }
    }

    /// The kind named `name` (`approve_transaction`, ...).
    pub fn parse(name: &str) -> Option<MutationKind> {
        serde_json::from_value(Value::String(name.trim().to_string())).ok()
    }
}

/// A refused write: the HTTP status and PartnerStack-style message.
pub type Refusal = (StatusCode, String);

fn bad(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, message.into())
}

/// A transaction's `metadata` within PartnerStack's documented limits: an object of at
/// most [`METADATA_ATTRIBUTES`] attributes, names of at most [`METADATA_NAME`] characters,
/// values of at most [`METADATA_VALUE`] (as text).
fn check_metadata(metadata: Option<&Value>) -> Result<(), Refusal> {
    let attributes = match metadata {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("'metadata' must be an object")),
    };
    if attributes.len() > METADATA_ATTRIBUTES {
        return Err(bad(format!(
            "'metadata' has more than {METADATA_ATTRIBUTES} properties"
        )));
    }
    for (name, value) in attributes {
        if name.chars().count() > METADATA_NAME {
            return Err(bad(format!(
                "'metadata' property names must be at most {METADATA_NAME} characters long"
            )));
        }
        let length = match value {
            Value::String(text) => text.chars().count(),
            other => other.to_string().chars().count(),
        };
        if length > METADATA_VALUE {
            return Err(bad(format!(
                "'metadata' values must be at most {METADATA_VALUE} characters long"
            )));
        }
    }
    Ok(())
}

const FIRST: [&str; 12] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Dennis", "Margaret", "Linus", "Radia",
    "Donald", "Frances",
];
const LAST: [&str; 12] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Ritchie", "Hamilton",
    "Torvalds", "Perlman", "Knuth", "Allen",
];
const GROUPS: [&str; 6] = ["Default", "Gold", "Silver", "Bronze", "Agency", "Affiliate"];
const CURRENCIES: [(&str, f64); 10] = [
    ("USD", 1.0),
    ("USD", 1.0),
    ("USD", 1.0),
    ("USD", 1.0),
    ("USD", 1.0),
    ("USD", 1.0),
    ("USD", 1.0),
    ("EUR", 1.08),
    ("GBP", 1.27),
    ("CAD", 0.73),
];
const REWARD_FLOW: [&str; 4] = ["hold", "pending", "approved", "paid"];

/// The seeded program and everything that changes it.
#[derive(Debug)]
pub struct World {
    pub groups: Table<SimGroup>,
    pub partnerships: Table<SimPartnership>,
    pub customers: Table<SimCustomer>,
    pub transactions: Table<SimTransaction>,
    pub rewards: Table<SimReward>,
    pub deals: Table<SimDeal>,
    pub leads: Table<SimLead>,
    rng: Xoshiro256PlusPlus,
    /// The last timestamp handed out: the clock never repeats or runs backwards, so every
    /// change is strictly newer than the one before.
    last_ms: i64,
    serial: u64,
    /// How long a new customer stays unknown to single GETs (PartnerStack can take
    /// minutes to make one readable).
    pub customer_readable_after_ms: i64,
    /// When each customer created since start becomes readable by a single GET (wall ms).
    readable_at: HashMap<String, i64>,
    /// How refusals are worded.
    pub refusals: RefusalWording,
}

/// Most attributes in a transaction's `metadata`, and the longest name and value
/// (PartnerStack's `POST /transactions` reference).
pub const METADATA_ATTRIBUTES: usize = 25;
pub const METADATA_NAME: usize = 30;
pub const METADATA_VALUE: usize = 100;

/// What a write can be refused for, worded by [`World::refusal`].
enum Refused<'a> {
    /// The referring partner does not exist.
    UnknownPartner(&'a str),
    /// The transaction's customer does not exist (`field` named it `value`).
    UnknownCustomer { field: &'a str, value: &'a str },
    /// A customer with this `customer_key` exists.
    DuplicateCustomer(&'a str),
    /// A transaction with this key exists.
    DuplicateTransaction(&'a str),
    /// No such customer (404).
    NoCustomer(&'a str),
    /// No such transaction (404).
    NoTransaction(&'a str),
}

/// Runs `$body` with `$t` bound to `$world`'s table of `$entity`.
macro_rules! with_table {
    ($world:expr, $entity:expr, |$t:ident| $body:expr) => {
        match $entity {
            Entity::Group => {
                let $t = &$world.groups;
                $body
            }
            Entity::Partner => {
                let $t = &$world.partnerships;
                $body
            }
            Entity::Customer => {
                let $t = &$world.customers;
                $body
            }
            Entity::Transaction => {
                let $t = &$world.transactions;
                $body
            }
            Entity::Reward => {
                let $t = &$world.rewards;
                $body
            }
            Entity::Deal => {
                let $t = &$world.deals;
                $body
            }
            Entity::Lead => {
                let $t = &$world.leads;
                $body
            }
        }
    };
}

macro_rules! with_table_mut {
    ($world:expr, $entity:expr, |$t:ident| $body:expr) => {
        match $entity {
            Entity::Group => {
                let $t = &mut $world.groups;
                $body
            }
            Entity::Partner => {
                let $t = &mut $world.partnerships;
                $body
            }
            Entity::Customer => {
                let $t = &mut $world.customers;
                $body
            }
            Entity::Transaction => {
                let $t = &mut $world.transactions;
                $body
            }
            Entity::Reward => {
                let $t = &mut $world.rewards;
                $body
            }
            Entity::Deal => {
                let $t = &mut $world.deals;
                $body
            }
            Entity::Lead => {
                let $t = &mut $world.leads;
                $body
            }
        }
    };
}

fn render<T: SimRecord>(item: &T) -> Value {
    // The records are plain structs of strings, numbers and maps: serialising cannot fail.
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// Wall-clock milliseconds.
pub fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl World {
    /// A program of `counts` objects created over the `history_days` before `anchor_ms`.
    pub fn seed(seed: u64, counts: &Counts, anchor_ms: i64, history_days: u32) -> World {
        let mut w = World {
            groups: Table::default(),
            partnerships: Table::default(),
            customers: Table::default(),
            transactions: Table::default(),
            rewards: Table::default(),
            deals: Table::default(),
            leads: Table::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            last_ms: anchor_ms,
            serial: 0,
            customer_readable_after_ms: 0,
            readable_at: HashMap::new(),
            refusals: RefusalWording::Plain,
        };
        let start = anchor_ms - i64::from(history_days.max(1)) * DAY_MS;

        let mut groups = Vec::with_capacity(counts.groups);
        for i in 0..counts.groups {
            let name = match GROUPS.get(i) {
                Some(n) => n.to_string(),
                None => format!("Tier {i}"),
            };
            let created = start - 30 * DAY_MS + i as i64 * HOUR_MS;
            groups.push(SimGroup {
                key: w.fresh_key("grup_", &HashSet::new()),
                slug: name.to_ascii_lowercase().replace(' ', "-"),
                name,
                default: i == 0,
                archived: false,
                created_at: created,
                updated_at: created,
            });
        }
        w.groups = Table::from_items(groups);

        let times = w.times(counts.partners, start, anchor_ms);
        let mut keys = HashSet::new();
        let mut partners = Vec::with_capacity(times.len());
        for created in times {
            let p = w.new_partnership(created, anchor_ms, &mut keys);
            partners.push(p);
        }
        w.partnerships = Table::from_items(partners);

        let from = w
            .partnerships
            .items()
            .first()
            .map_or(start, |p| p.created_at);
        let times = w.times(counts.customers, from, anchor_ms);
        let mut customers = Vec::with_capacity(times.len());
        let mut keys = HashSet::new();
        for created in times {
            let Some(p) = w.parent(&w.partnerships, created) else {
                break;
            };
            let partner = w.partnerships.at(p).clone();
            let mut c = w.new_customer(&partner, created, &mut keys);
            c.updated_at = w.later(created, anchor_ms, 0.3);
            c.archived = w.rng.random_bool(0.02);
            customers.push(c);
        }
        w.customers = Table::from_items(customers);

        let from = w.customers.items().first().map_or(start, |c| c.created_at);
        let times = w.times(counts.transactions, from, anchor_ms);
        let mut transactions = Vec::with_capacity(times.len());
        let mut keys = HashSet::new();
        for created in times {
            let Some(c) = w.parent(&w.customers, created) else {
                break;
            };
            let customer = w.customers.at(c).clone();
            let mut t = w.new_transaction(&customer, created, &mut keys);
            // Older transactions have mostly been approved by now.
            let age_days = (anchor_ms - created) / DAY_MS;
            if w.rng.random_bool(if age_days > 30 { 0.85 } else { 0.4 }) {
                t.approved = true;
                t.updated_at = w.later(created, anchor_ms.min(created + 45 * DAY_MS), 1.0);
            }
            t.archived = w.rng.random_bool(0.01);
            transactions.push(t);
        }
        w.transactions = Table::from_items(transactions);

        let mut rewards = Vec::with_capacity(counts.rewards);
        let mut keys = HashSet::new();
        let mut used = HashSet::new();
        for _ in 0..counts.rewards {
            let n = w.transactions.len();
            // One reward per transaction while they last, then rewards without one
            // (PartnerStack also rewards actions such as sign-ups).
            let tx = (used.len() < n).then(|| {
                loop {
                    let i = w.rng.random_range(0..n);
                    if used.insert(i) {
                        break w.transactions.at(i).clone();
                    }
                }
            });
            let r = match tx {
                Some(t) => {
                    let customer = w.customers.get(&t.customer_key).cloned();
                    let partner = w.partnerships.find(&t.partner_key).cloned();
                    let (Some(customer), Some(partner)) = (customer, partner) else {
                        continue;
                    };
                    let created = (t.created_at + w.rng.random_range(0..HOUR_MS)).min(anchor_ms);
                    let mut r =
                        w.new_reward(&partner, Some(&customer), Some(&t), created, &mut keys);
                    r.reward_status = w.seed_reward_status(anchor_ms - created, t.approved);
                    r.updated_at = if r.reward_status == "pending" {
                        created
                    } else {
                        w.later(created, anchor_ms, 1.0)
                    };
                    r
                }
                None => {
                    if w.partnerships.is_empty() {
                        break;
                    }
                    let p = w.rng.random_range(0..w.partnerships.len());
                    let partner = w.partnerships.at(p).clone();
                    let created = w.rng.random_range(partner.created_at..=anchor_ms);
                    let mut r = w.new_reward(&partner, None, None, created, &mut keys);
                    r.description = "Sign-up bonus".into();
                    r.reward_status = w.seed_reward_status(anchor_ms - created, true);
                    r
                }
            };
            rewards.push(r);
        }
        w.rewards = Table::from_items(rewards);

        let from = w
            .partnerships
            .items()
            .first()
            .map_or(start, |p| p.created_at);
        let times = w.times(counts.deals, from, anchor_ms);
        let mut deals = Vec::with_capacity(times.len());
        let mut keys = HashSet::new();
        for created in times {
            let Some(p) = w.parent(&w.partnerships, created) else {
                break;
            };
            let partner = w.partnerships.at(p).clone();
            let d = w.new_deal(&partner, created, anchor_ms, &mut keys);
            deals.push(d);
        }
        w.deals = Table::from_items(deals);

        let times = w.times(counts.leads, from, anchor_ms);
        let mut leads = Vec::with_capacity(times.len());
        let mut keys = HashSet::new();
        for created in times {
            let Some(p) = w.parent(&w.partnerships, created) else {
                break;
            };
            let partner = w.partnerships.at(p).clone();
            let l = w.new_lead(&partner, created, anchor_ms, &mut keys);
            leads.push(l);
        }
        w.leads = Table::from_items(leads);
        w
    }

    /// `n` sorted creation times in `from..=to`.
    fn times(&mut self, n: usize, from: i64, to: i64) -> Vec<i64> {
        let to = to.max(from);
        let mut times: Vec<i64> = (0..n).map(|_| self.rng.random_range(from..=to)).collect();
        times.sort_unstable();
        times
    }

    /// A random time after `created` (up to `until`) with probability `p`, else `created`.
    fn later(&mut self, created: i64, until: i64, p: f64) -> i64 {
        if until > created && self.rng.random_bool(p) {
            self.rng.random_range(created..=until)
        } else {
            created
        }
    }

    /// A random parent created no later than `at` (the oldest when none is).
    fn parent<T: SimRecord>(&self, table: &Table<T>, at: i64) -> Option<usize> {
        if table.is_empty() {
            return None;
        }
        let before = table
            .items()
            .partition_point(|x| x.created_at() <= at)
            .max(1);
        // Deterministic but spread: derived from the time, not drawn, so parents do not
        // depend on how many draws came before.
        Some((at.unsigned_abs() as usize).wrapping_mul(2_654_435_761) % before)
    }

    fn seed_reward_status(&mut self, age_ms: i64, approved: bool) -> String {
        let status = if !approved {
            if self.rng.random_bool(0.2) {
                "hold"
            } else {
                "pending"
            }
        } else if age_ms > 45 * DAY_MS {
            if self.rng.random_bool(0.9) {
                "paid"
            } else {
                "declined"
            }
        } else {
            REWARD_FLOW[self.rng.random_range(1..4)]
        };
        status.to_string()
    }

    /// A key with `prefix` and 16 random characters, unique in `taken`.
    fn fresh_key(&mut self, prefix: &str, taken: &HashSet<String>) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        loop {
            let mut key = String::with_capacity(prefix.len() + 16);
            key.push_str(prefix);
            for _ in 0..16 {
                key.push(ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char);
            }
            if !taken.contains(&key) {
                return key;
            }
        }
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn new_partnership(
        &mut self,
        created: i64,
        anchor: i64,
        keys: &mut HashSet<String>,
    ) -> SimPartnership {
        let n = self.next_serial();
        let first = FIRST[self.rng.random_range(0..FIRST.len())];
        let last = LAST[self.rng.random_range(0..LAST.len())];
        let group = (!self.groups.is_empty()).then(|| {
            let g = self.groups.at(self.rng.random_range(0..self.groups.len()));
            GroupRef {
                key: g.key.clone(),
                name: g.name.clone(),
                slug: g.slug.clone(),
            }
        });
        let key = self.fresh_key("part_", keys);
        keys.insert(key.clone());
        let tags = if self.rng.random_bool(0.3) {
            vec!["newsletter".to_string()]
        } else {
            Vec::new()
        };
        SimPartnership {
            key,
            partner_key: format!("{first}{last}{n}"),
            email: format!(
                "{}.{}{n}@partners.example",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase()
            ),
            first_name: first.into(),
            last_name: last.into(),
            group,
            team: None,
            tags,
            joined_at: created,
            created_at: created,
            updated_at: self.later(created, anchor, 0.5),
        }
    }

    fn new_customer(
        &mut self,
        partner: &SimPartnership,
        created: i64,
        keys: &mut HashSet<String>,
    ) -> SimCustomer {
        let n = self.next_serial();
        let key = self.fresh_key("cust_", keys);
        keys.insert(key.clone());
        SimCustomer {
            key,
            // Real data has customers without your key.
            customer_key: (!self.rng.random_bool(0.03)).then(|| format!("cus-{n:07}")),
            email: format!("customer{n}@example.org"),
            name: Some(format!("Customer {n}")),
            partner_key: partner.partner_key.clone(),
            partnership_key: partner.key.clone(),
            provider_key: self
                .rng
                .random_bool(0.7)
                .then(|| format!("cus_stripe{n:08}")),
            source_key: None,
            source_type: "API".into(),
            test: false,
            archived: false,
            meta: Map::new(),
            created_at: created,
            updated_at: created,
        }
    }

    fn new_transaction(
        &mut self,
        customer: &SimCustomer,
        created: i64,
        keys: &mut HashSet<String>,
    ) -> SimTransaction {
        let key = self.fresh_key("txn_", keys);
        keys.insert(key.clone());
        let (currency, rate) = CURRENCIES[self.rng.random_range(0..CURRENCIES.len())];
        let amount = self.rng.random_range(5..=500) * 100 - 1;
        SimTransaction {
            key,
            amount,
            amount_usd: (amount as f64 * rate).round() as i64,
            currency: currency.into(),
            approved: false,
            archived: false,
            category_key: Some("subscription".into()),
            product_key: Some(
                if amount > 10_000 {
                    "prod_pro"
                } else {
                    "prod_basic"
                }
                .into(),
            ),
            customer_key: customer.key.clone(),
            customer: CustomerRef {
                key: customer.key.clone(),
                email: Some(customer.email.clone()),
                name: None,
                external_key: customer.customer_key.clone(),
            },
            partner_key: customer.partner_key.clone(),
            test: false,
            created_at: created,
            updated_at: created,
        }
    }

    fn new_reward(
        &mut self,
        partner: &SimPartnership,
        customer: Option<&SimCustomer>,
        transaction: Option<&SimTransaction>,
        created: i64,
        keys: &mut HashSet<String>,
    ) -> SimReward {
        let key = self.fresh_key("rew_", keys);
        keys.insert(key.clone());
        let (amount, currency) = match transaction {
            Some(t) => (t.amount / 5, t.currency.clone()),
            None => (2_000, "USD".to_string()),
        };
        SimReward {
            key,
            amount,
            currency,
            description: "20% of subscription".into(),
            reward_status: "pending".into(),
            customer: customer.map(|c| CustomerRef {
                key: c.key.clone(),
                email: Some(c.email.clone()),
                name: c.name.clone(),
                external_key: c.customer_key.clone(),
            }),
            partnership: PartnershipRef {
                key: partner.key.clone(),
                partner_key: partner.partner_key.clone(),
                email: partner.email.clone(),
                name: format!("{} {}", partner.first_name, partner.last_name),
                group: partner.group.clone(),
            },
            transaction: transaction.map(|t| TransactionRef {
                key: t.key.clone(),
                amount: t.amount,
                currency: t.currency.clone(),
            }),
            created_at: created,
            updated_at: created,
        }
    }

    fn new_deal(
        &mut self,
        partner: &SimPartnership,
        created: i64,
        anchor: i64,
        keys: &mut HashSet<String>,
    ) -> SimDeal {
        let n = self.next_serial();
        let key = self.fresh_key("deal_", keys);
        keys.insert(key.clone());
        let stage = ["prospect", "qualified", "won", "lost"][self.rng.random_range(0..4)];
        let close = chrono::DateTime::from_timestamp_millis(created + 30 * DAY_MS)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        SimDeal {
            key,
            account_name: format!("Account {n}"),
            amount: self.rng.random_range(10..=1000) * 1000,
            close_date: close,
            contact_first_name: FIRST[self.rng.random_range(0..FIRST.len())].into(),
            contact_last_name: LAST[self.rng.random_range(0..LAST.len())].into(),
            external_key: format!("deal-{n:07}"),
            group_key: partner.group.as_ref().map(|g| g.key.clone()),
            partner_key: partner.partner_key.clone(),
            customer_key: None,
            mold_key: "mold_default".into(),
            stage: stage.into(),
            source: if self.rng.random_bool(0.8) {
                "partner"
            } else {
                "vendor"
            }
            .into(),
            lost_reason: (stage == "lost").then(|| "budget".to_string()),
            created_at: created,
            updated_at: self.later(created, anchor, 0.5),
        }
    }

    fn new_lead(
        &mut self,
        partner: &SimPartnership,
        created: i64,
        anchor: i64,
        keys: &mut HashSet<String>,
    ) -> SimLead {
        let n = self.next_serial();
        let key = self.fresh_key("lead_", keys);
        keys.insert(key.clone());
        let status =
            ["open", "closed", "dead", "closed won", "closed lost"][self.rng.random_range(0..5)];
        SimLead {
            key,
            amount: self.rng.random_range(1..=200) * 1000,
            approved: status == "closed won",
            external_key: format!("lead-{n:07}"),
            group_key: partner.group.as_ref().map(|g| g.key.clone()),
            partner_key: partner.partner_key.clone(),
            mold_key: "mold_default".into(),
            status: status.into(),
            created_at: created,
            updated_at: self.later(created, anchor, 0.5),
        }
    }

    /// The next timestamp: wall-clock milliseconds, but always after the previous one.
    pub fn tick(&mut self) -> i64 {
        self.last_ms = wall_ms().max(self.last_ms + 1);
        self.last_ms
    }

    /// The current time as the stand-in sees it (never before its last change).
    pub fn now_ms(&self) -> i64 {
        wall_ms().max(self.last_ms)
    }

    pub fn len(&self, entity: Entity) -> usize {
        with_table!(self, entity, |t| t.len())
    }

    /// A list page, rendered, newest first, and whether more follow.
    pub fn list(&self, entity: Entity, q: &ListParams) -> Result<(Vec<Value>, bool), BadRequest> {
        with_table!(self, entity, |t| {
            let (page, more) = t.list(q)?;
            Ok((page.into_iter().map(render).collect(), more))
        })
    }

    /// A single GET: by key, or by `customer_key` / `partner_key`. Archived customers are
    /// not found, nor new ones before they become readable.
    pub fn get(&self, entity: Entity, key: &str) -> Option<Value> {
        if entity == Entity::Customer {
            let customer = self.customers.find(key).filter(|c| c.listed())?;
            let readable = self
                .readable_at
                .get(&customer.key)
                .is_none_or(|&at| wall_ms() >= at);
            return readable.then(|| render(customer));
        }
        with_table!(self, entity, |t| t
            .find(key)
            .filter(|x| x.listed())
            .map(render))
    }

    /// Remembers when a customer created now becomes readable.
    fn created_customer(&mut self, key: &str) {
        if self.customer_readable_after_ms > 0 {
            self.readable_at
                .insert(key.to_string(), wall_ms() + self.customer_readable_after_ms);
        }
    }

    /// Any object by key, listed or not.
    pub fn render(&self, entity: Entity, key: &str) -> Option<Value> {
        with_table!(self, entity, |t| t.get(key).map(render))
    }

    /// Every object of `entity`, archived ones included, oldest first.
    pub fn dump(&self, entity: Entity) -> Vec<Value> {
        with_table!(self, entity, |t| t.items().iter().map(render).collect())
    }

    /// The keys of the objects of `entity` its list returns (archived customers are not).
    pub fn listed_keys(&self, entity: Entity) -> Vec<String> {
        with_table!(self, entity, |t| t
            .items()
            .iter()
            .filter(|x| x.listed())
            .map(|x| x.key().to_owned())
            .collect())
    }

    /// Appends every object of `entity` (archived included, oldest first) to `out` as a
    /// JSON array, straight from the records: no JSON tree, so a dump of a million
    /// objects costs its text and no more.
    pub fn write_dump(&self, entity: Entity, out: &mut Vec<u8>) -> serde_json::Result<()> {
        with_table!(self, entity, |t| serde_json::to_writer(out, t.items()))
    }

    /// The partner keys of the group whose name (spaces removed) or slug is `group`.
    pub fn group_partners(&self, group: &str) -> HashSet<String> {
        let wanted = group.replace(' ', "").to_ascii_lowercase();
        self.partnerships
            .items()
            .iter()
            .filter(|p| {
                p.group.as_ref().is_some_and(|g| {
                    g.name.replace(' ', "").to_ascii_lowercase() == wanted || g.slug == group
                })
            })
            .map(|p| p.partner_key.clone())
            .collect()
    }

    /// Replaces top-level fields of one object. Unless the patch sets `updated_at`, the
    /// object is touched (its `updated_at` becomes now), as a real change would be.
    pub fn patch(
        &mut self,
        entity: Entity,
        key: &str,
        patch: &Map<String, Value>,
    ) -> Result<Change, Refusal> {
        let now = self.tick();
        let object = with_table_mut!(self, entity, |t| {
            let current = t.get(key).ok_or_else(|| {
                (
                    StatusCode::NOT_FOUND,
                    format!("no {} with key {key:?}", entity.name()),
                )
            })?;
            let mut merged = merge(current, patch).map_err(bad)?;
            if !patch.contains_key("updated_at") {
                merged.set_updated_at(now);
            }
            if let Some(alt) = merged.alt_key()
                && current.alt_key() != Some(alt)
                && t.alt_taken(alt)
            {
                return Err(bad(format!(
                    "another {} already has the key {alt:?}",
                    entity.name()
                )));
            }
            t.update(key, |x| *x = merged.clone());
            render(&merged)
        });
        let deleted = entity == Entity::Customer && object["archived"] == Value::Bool(true);
        Ok(self.change(
            entity,
            key,
            if deleted {
                Action::Deleted
            } else {
                Action::Updated
            },
            object,
        ))
    }

    fn change(&self, entity: Entity, key: &str, action: Action, object: Value) -> Change {
        Change {
            entity,
            key: key.to_string(),
            action,
            updated_at: object["updated_at"].as_i64().unwrap_or(self.last_ms),
            object,
        }
    }

    /// One random change (or one of `kind`), with the changes it made. Falls back to a new
    /// customer or transaction when nothing of the asked kind is left to change.
    pub fn mutate(&mut self, kind: Option<MutationKind>) -> Vec<Change> {
        let kind = kind.unwrap_or_else(|| {
            let total: u32 = MutationKind::ALL.iter().map(|k| k.weight()).sum();
            let mut pick = self.rng.random_range(0..total);
            MutationKind::ALL
                .into_iter()
                .find(|k| {
                    if pick < k.weight() {
                        true
                    } else {
                        pick -= k.weight();
                        false
                    }
                })
                .unwrap_or(MutationKind::NewCustomer)
        });
        let changes = match kind {
            MutationKind::NewCustomer => self.mutate_new_customer(),
            MutationKind::NewTransaction => self.mutate_new_transaction(),
            MutationKind::ApproveTransaction => self.mutate_approve(),
            MutationKind::RewardStatus => self.mutate_reward(),
            MutationKind::UpdateCustomer => self.mutate_customer(false),
            MutationKind::ArchiveCustomer => self.mutate_customer(true),
            MutationKind::UpdatePartnership => self.mutate_partnership(),
        };
        match changes {
            Some(c) => c,
            None if kind == MutationKind::NewCustomer => Vec::new(),
            None if kind == MutationKind::NewTransaction => {
                self.mutate_new_customer().unwrap_or_default()
            }
            None => self.mutate_new_transaction().unwrap_or_default(),
        }
    }

    /// 32 random positions below `len` (none when `len` is 0). Searching these for an
    /// object to change is cheap at any size and gives up when such objects are rare.
    fn draws(&mut self, len: usize) -> Vec<usize> {
        if len == 0 {
            return Vec::new();
        }
        (0..32).map(|_| self.rng.random_range(0..len)).collect()
    }

    fn mutate_new_customer(&mut self) -> Option<Vec<Change>> {
        let p = self.rng.random_range(0..self.partnerships.len().max(1));
        let partner = self.partnerships.items().get(p)?.clone();
        let now = self.tick();
        let mut customer = self.new_customer(&partner, now, &mut HashSet::new());
        while self.customers.contains(&customer.key)
            || customer
                .customer_key
                .as_deref()
                .is_some_and(|k| self.customers.alt_taken(k))
        {
            customer = self.new_customer(&partner, now, &mut HashSet::new());
        }
        let object = render(&customer);
        let key = customer.key.clone();
        self.customers.insert(customer);
        self.created_customer(&key);
        Some(vec![self.change(
            Entity::Customer,
            &key,
            Action::Created,
            object,
        )])
    }

    fn mutate_new_transaction(&mut self) -> Option<Vec<Change>> {
        let draws = self.draws(self.customers.len());
        let i = draws.into_iter().find(|&i| self.customers.at(i).listed())?;
        let customer = self.customers.at(i).clone();
        Some(self.add_transaction(&customer, None))
    }

    /// A new transaction for `customer` and its pending reward.
    fn add_transaction(&mut self, customer: &SimCustomer, key: Option<String>) -> Vec<Change> {
        let now = self.tick();
        let mut t = self.new_transaction(customer, now, &mut HashSet::new());
        while self.transactions.contains(&t.key) {
            t = self.new_transaction(customer, now, &mut HashSet::new());
        }
        if let Some(key) = key {
            t.key = key;
        }
        let mut changes =
            vec![self.change(Entity::Transaction, &t.key, Action::Created, render(&t))];
        if let Some(partner) = self.partnerships.find(&customer.partner_key).cloned() {
            let mut r =
                self.new_reward(&partner, Some(customer), Some(&t), now, &mut HashSet::new());
            while self.rewards.contains(&r.key) {
                r = self.new_reward(&partner, Some(customer), Some(&t), now, &mut HashSet::new());
            }
            changes.push(self.change(Entity::Reward, &r.key, Action::Created, render(&r)));
            self.rewards.insert(r);
        }
        self.transactions.insert(t);
        changes
    }

    fn mutate_approve(&mut self) -> Option<Vec<Change>> {
        let draws = self.draws(self.transactions.len());
        let i = draws.into_iter().find(|&i| {
            let t = self.transactions.at(i);
            !t.approved && !t.archived
        })?;
        let key = self.transactions.at(i).key.clone();
        let now = self.tick();
        let object = self.transactions.update(&key, |t| {
            t.approved = true;
            t.updated_at = now;
            render(t)
        })?;
        Some(vec![self.change(
            Entity::Transaction,
            &key,
            Action::Updated,
            object,
        )])
    }

    fn mutate_reward(&mut self) -> Option<Vec<Change>> {
        let draws = self.draws(self.rewards.len());
        let i = draws
            .into_iter()
            .find(|&i| REWARD_FLOW[..3].contains(&self.rewards.at(i).reward_status.as_str()))?;
        let key = self.rewards.at(i).key.clone();
        let now = self.tick();
        let object = self.rewards.update(&key, |r| {
            let at = REWARD_FLOW
                .iter()
                .position(|s| *s == r.reward_status)
                .unwrap_or(0);
            r.reward_status = REWARD_FLOW[(at + 1).min(REWARD_FLOW.len() - 1)].to_string();
            r.updated_at = now;
            render(r)
        })?;
        Some(vec![self.change(
            Entity::Reward,
            &key,
            Action::Updated,
            object,
        )])
    }

    fn mutate_customer(&mut self, archive: bool) -> Option<Vec<Change>> {
        let draws = self.draws(self.customers.len());
        let i = draws.into_iter().find(|&i| self.customers.at(i).listed())?;
        let key = self.customers.at(i).key.clone();
        let now = self.tick();
        let n = self.next_serial();
        let object = self.customers.update(&key, |c| {
            if archive {
                c.archived = true;
            } else {
                c.name = Some(format!("Customer {n} (renamed)"));
            }
            c.updated_at = now;
            render(c)
        })?;
        let action = if archive {
            Action::Deleted
        } else {
            Action::Updated
        };
        Some(vec![self.change(Entity::Customer, &key, action, object)])
    }

    fn mutate_partnership(&mut self) -> Option<Vec<Change>> {
        let len = self.partnerships.len();
        if len == 0 {
            return None;
        }
        let key = self
            .partnerships
            .at(self.rng.random_range(0..len))
            .key
            .clone();
        let now = self.tick();
        let n = self.next_serial();
        let object = self.partnerships.update(&key, |p| {
            p.tags = vec![format!("campaign-{n}")];
            p.updated_at = now;
            render(p)
        })?;
        Some(vec![self.change(
            Entity::Partner,
            &key,
            Action::Updated,
            object,
        )])
    }

    /// A refusal, worded as [`World::refusals`] says.
    fn refusal(&self, why: Refused<'_>) -> Refusal {
        use RefusalWording::{Exist, Plain, Terse};
        let not_found = StatusCode::NOT_FOUND;
        let conflict = StatusCode::CONFLICT;
        match (self.refusals, why) {
            (Plain, Refused::UnknownPartner(p)) => {
                bad(format!("No partner found with partner_key '{p}'"))
            }
            (Exist, Refused::UnknownPartner(_)) => {
                bad("Partner key does not exist in this program")
            }
            (Plain, Refused::UnknownCustomer { field, value }) => {
                bad(format!("No customer found with {field} '{value}'"))
            }
            (Exist, Refused::UnknownCustomer { value, .. }) => {
                bad(format!("Customer {value} does not exist"))
            }
            (Plain, Refused::DuplicateCustomer(k)) => {
                bad(format!("A customer with customer_key '{k}' already exists"))
            }
            (Exist, Refused::DuplicateCustomer(_)) => bad("Customer already exists"),
            (Plain, Refused::DuplicateTransaction(k)) => {
                bad(format!("A transaction with key '{k}' already exists"))
            }
            (Exist, Refused::DuplicateTransaction(_)) => bad("Transaction already exists"),
            (Plain, Refused::NoCustomer(k)) => (not_found, format!("Customer '{k}' not found")),
            (Exist, Refused::NoCustomer(k)) => {
                (not_found, format!("Customer {k} no longer exists"))
            }
            (Plain, Refused::NoTransaction(k)) => {
                (not_found, format!("Transaction '{k}' not found"))
            }
            (Exist, Refused::NoTransaction(k)) => {
                (not_found, format!("Transaction {k} does not exist"))
            }
            (Terse, Refused::DuplicateCustomer(_) | Refused::DuplicateTransaction(_)) => {
                (conflict, "Conflict".into())
            }
            (Terse, Refused::NoCustomer(_) | Refused::NoTransaction(_)) => {
                (not_found, "Not found".into())
            }
            (Terse, Refused::UnknownPartner(_) | Refused::UnknownCustomer { .. }) => {
                bad("Bad request")
            }
        }
    }

    /// `POST /customers`.
    pub fn create_customer(
        &mut self,
        body: &Map<String, Value>,
        duplicate: DuplicateCustomerKey,
    ) -> Result<Change, Refusal> {
        let text = |name: &str| -> Result<Option<String>, Refusal> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("'{name}' must be a string"))),
            }
        };
        let email = text("email")?.ok_or_else(|| bad("'email' is a required property"))?;
        if !(4..=255).contains(&email.chars().count()) {
            return Err(bad("'email' must be 4 to 255 characters long"));
        }
        let partner_key =
            text("partner_key")?.ok_or_else(|| bad("'partner_key' is a required property"))?;
        let name = text("name")?;
        if name.as_ref().is_some_and(|n| n.chars().count() > 100) {
            return Err(bad("'name' must be at most 100 characters long"));
        }
        let customer_key = text("customer_key")?;
        if let Some(k) = &customer_key
            && duplicate == DuplicateCustomerKey::Reject
            && self.customers.alt_taken(k)
        {
            return Err(self.refusal(Refused::DuplicateCustomer(k)));
        }
        let partner = self
            .partnerships
            .find(&partner_key)
            .cloned()
            .ok_or_else(|| self.refusal(Refused::UnknownPartner(&partner_key)))?;
        let now = self.tick();
        let mut c = self.new_customer(&partner, now, &mut HashSet::new());
        while self.customers.contains(&c.key) {
            c = self.new_customer(&partner, now, &mut HashSet::new());
        }
        c.email = email;
        c.name = name;
        c.customer_key = customer_key;
        c.provider_key = text("provider_key")?;
        let object = render(&c);
        let key = c.key.clone();
        self.customers.insert(c);
        self.created_customer(&key);
        Ok(self.change(Entity::Customer, &key, Action::Created, object))
    }

    /// The key of the listed (not archived) customer with this `customer_key`, or 404.
    fn listed_customer(&self, customer_key: &str) -> Result<String, Refusal> {
        self.customers
            .find(customer_key)
            .filter(|c| c.listed())
            .map(|c| c.key.clone())
            .ok_or_else(|| self.refusal(Refused::NoCustomer(customer_key)))
    }

    /// `PATCH /customers/{customer_key}`.
    pub fn update_customer(
        &mut self,
        customer_key: &str,
        body: &Map<String, Value>,
    ) -> Result<Change, Refusal> {
        let key = self.listed_customer(customer_key)?;
        if body.contains_key("partner_key") {
            return Err(bad("'partner_key' cannot be updated"));
        }
        let mut patch = Map::new();
        for (field, value) in body {
            match field.as_str() {
                "customer_key" | "email" | "name" | "provider_key" => match value {
                    Value::String(_) | Value::Null => {
                        patch.insert(field.clone(), value.clone());
                    }
                    _ => return Err(bad(format!("'{field}' must be a string"))),
                },
                // Accepted, but read back as {} (as the real API does) / not stored.
                "meta" | "member_key" => {}
                other => return Err(bad(format!("Additional property '{other}' is not allowed"))),
            }
        }
        if let Some(Value::String(email)) = patch.get("email")
            && !(4..=255).contains(&email.chars().count())
        {
            return Err(bad("'email' must be 4 to 255 characters long"));
        }
        self.patch(Entity::Customer, &key, &patch)
    }

    /// `DELETE /transactions/{key}`: removes the transaction.
    pub fn delete_transaction(&mut self, key: &str) -> Result<Change, Refusal> {
        let object = self
            .render(Entity::Transaction, key)
            .ok_or_else(|| self.refusal(Refused::NoTransaction(key)))?;
        self.transactions.remove(key);
        let now = self.tick();
        Ok(Change {
            entity: Entity::Transaction,
            key: key.to_string(),
            action: Action::Deleted,
            updated_at: now,
            object,
        })
    }

    /// `DELETE /customers/{customer_key}`: archives.
    pub fn archive_customer(&mut self, customer_key: &str) -> Result<Change, Refusal> {
        let key = self.listed_customer(customer_key)?;
        let mut patch = Map::new();
        patch.insert("archived".into(), Value::Bool(true));
        self.patch(Entity::Customer, &key, &patch)
    }

    /// `POST /transactions`. A repeated `key` gets what `duplicate` says (undocumented):
    /// the existing transaction, changing nothing, or a 400.
    pub fn create_transaction(
        &mut self,
        body: &Map<String, Value>,
        duplicate: DuplicateTransactionKey,
    ) -> Result<(Value, Vec<Change>), Refusal> {
        let given: Vec<&str> = ["customer_key", "customer_external_key", "customer_email"]
            .into_iter()
            .filter(|f| body.get(*f).is_some_and(|v| !v.is_null()))
            .collect();
        if given.len() != 1 {
            return Err(bad(
                "exactly one of 'customer_key', 'customer_external_key' and 'customer_email' is required",
            ));
        }
        let field = given[0];
        let Some(wanted) = body.get(field).and_then(Value::as_str) else {
            return Err(bad(format!("'{field}' must be a string")));
        };
        let customer = match field {
            "customer_key" => self.customers.get(wanted),
            "customer_external_key" => self
                .customers
                .find(wanted)
                .filter(|c| c.customer_key.as_deref() == Some(wanted)),
            _ => self
                .customers
                .items()
                .iter()
                .rev()
                .find(|c| c.email == wanted),
        }
        .filter(|c| c.listed())
        .cloned()
        .ok_or_else(|| {
            self.refusal(Refused::UnknownCustomer {
                field,
                value: wanted,
            })
        })?;
        let amount = match body.get("amount") {
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| bad("'amount' must be an integer"))?,
            None | Some(Value::Null) => return Err(bad("'amount' is a required property")),
            Some(_) => return Err(bad("'amount' must be an integer")),
        };
        let currency = match body.get("currency") {
            Some(Value::String(c))
                if c.len() == 3 && c.chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                c.to_ascii_uppercase()
            }
            None | Some(Value::Null) => return Err(bad("'currency' is a required property")),
            Some(_) => return Err(bad("'currency' must be a 3-letter ISO 4217 code")),
        };
        let key = match body.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) if (4..=255).contains(&k.chars().count()) => Some(k.clone()),
            Some(_) => return Err(bad("'key' must be a string of 4 to 255 characters")),
        };
        check_metadata(body.get("metadata"))?;
        if let Some(k) = &key
            && let Some(existing) = self.transactions.get(k)
        {
            return match duplicate {
                DuplicateTransactionKey::Idempotent => Ok((render(existing), Vec::new())),
                DuplicateTransactionKey::Reject => {
                    Err(self.refusal(Refused::DuplicateTransaction(k)))
                }
            };
        }
        let mut changes = self.add_transaction(&customer, key);
        let tx_key = changes[0].key.clone();
        let object = self
            .transactions
            .update(&tx_key, |t| {
                t.amount = amount;
                t.amount_usd = amount;
                t.currency = currency.clone();
                for (field, target) in [
                    ("category_key", &mut t.category_key),
                    ("product_key", &mut t.product_key),
                ] {
                    if let Some(v) = body.get(field) {
                        *target = v.as_str().map(String::from);
                    }
                }
                render(t)
            })
            .unwrap_or(Value::Null);
        changes[0].object = object.clone();
        if let Some(reward) = changes.get(1).map(|c| c.key.clone())
            && let Some(o) = self.rewards.update(&reward, |r| {
                r.amount = amount / 5;
                r.currency = currency.clone();
                if let Some(t) = &mut r.transaction {
                    t.amount = amount;
                    t.currency = currency.clone();
                }
                render(r)
            })
        {
            changes[1].object = o;
        }
        Ok((object, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Counts {
        Counts {
            groups: 3,
            partners: 20,
            customers: 100,
            transactions: 200,
            rewards: 150,
            deals: 10,
            leads: 10,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_program() {
        let a = World::seed(42, &counts(), 1_700_000_000_000, 365);
        let b = World::seed(42, &counts(), 1_700_000_000_000, 365);
        let c = World::seed(43, &counts(), 1_700_000_000_000, 365);
        for e in Entity::ALL {
            assert_eq!(a.dump(e), b.dump(e), "{e:?}");
        }
        assert_ne!(a.dump(Entity::Customer), c.dump(Entity::Customer));
        assert_eq!(a.len(Entity::Reward), 150);
        assert_eq!(a.len(Entity::Customer), 100);
    }

    #[test]
    fn relationships_hold() {
        let w = World::seed(7, &counts(), 1_700_000_000_000, 365);
        for t in w.transactions.items() {
            let c = w.customers.get(&t.customer_key).expect("customer exists");
            assert_eq!(c.partner_key, t.partner_key);
            assert!(c.created_at <= t.created_at);
            assert!(t.updated_at >= t.created_at);
        }
        for r in w.rewards.items() {
            if let Some(t) = &r.transaction {
                assert!(w.transactions.contains(&t.key));
            }
            assert!(w.partnerships.contains(&r.partnership.key));
        }
        for c in w.customers.items() {
            let p = w.partnerships.find(&c.partner_key).expect("partner exists");
            assert_eq!(p.key, c.partnership_key);
        }
    }

    #[test]
    fn mutations_are_newer_than_everything_before() {
        let mut w = World::seed(1, &counts(), wall_ms(), 30);
        let mut last = 0;
        for _ in 0..200 {
            let changes = w.mutate(None);
            // One mutation's changes (a transaction and its reward) share a timestamp.
            let first = changes.first().map_or(last + 1, |c| c.updated_at);
            assert!(first > last);
            last = first;
            for change in changes {
                assert_eq!(change.updated_at, first, "{change:?}");
                assert_eq!(change.object["updated_at"], change.updated_at);
            }
        }
        for kind in MutationKind::ALL {
            assert!(!w.mutate(Some(kind)).is_empty(), "{kind:?}");
        }
        assert_eq!(
            MutationKind::parse("archive_customer"),
            Some(MutationKind::ArchiveCustomer)
        );
    }
}
