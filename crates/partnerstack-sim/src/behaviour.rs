//! What the stand-in does where it matters, and where each behaviour comes from.
//!
//! Every behaviour is one of: **documented** by PartnerStack, **seen** in a production
//! integration that runs against real accounts, or **guessed**. A guessed behaviour has a
//! plausible alternative, selectable here, so tests that depend on it can run under each.
//! [`PROVENANCE`] is the table (`docs/partnerstack.md` repeats it with sources; a unit
//! test keeps the two in step).

use serde::Serialize;
use serde_json::{Value, json};

/// Where a behaviour of the stand-in comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// PartnerStack's documentation says so.
    Documented,
    /// A production integration (a connector or importer running against real accounts)
    /// relies on it.
    Seen,
    /// Nothing public says; the stand-in offers the plausible alternatives.
    Guessed,
}

/// One row of the provenance table.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Entry {
    /// A short, stable name (also the heading of its row in `docs/partnerstack.md`).
    pub what: &'static str,
    pub provenance: Provenance,
    /// Where it comes from, or why it is a guess.
    pub source: &'static str,
    /// The option that switches a guessed behaviour, if any.
    pub option: Option<&'static str>,
}

/// Every behaviour of the stand-in that a client could come to rely on.
pub const PROVENANCE: &[Entry] = &[
    Entry {
        what: "list envelope and cursor pagination",
        provenance: Provenance::Documented,
        source: "API reference: data.items, has_more, starting_after/ending_before, newest first",
        option: None,
    },
    Entry {
        what: "page size limit 1..250, default 10",
        provenance: Provenance::Documented,
        source: "generated clients from PartnerStack's API definition",
        option: None,
    },
    Entry {
        what: "timestamps in epoch milliseconds",
        provenance: Provenance::Documented,
        source: "API reference examples (13-digit values)",
        option: None,
    },
    Entry {
        what: "list filters per stream",
        provenance: Provenance::Seen,
        source: "API reference and generated clients for customers, transactions, deals; \
                 Airbyte's connector for min_updated on partnerships, groups and leads and \
                 min_created on rewards; reward status filter seen in production",
        option: None,
    },
    Entry {
        what: "single GETs",
        provenance: Provenance::Documented,
        source: "vendor endpoint index: partnerships (key or partner_key), customers \
                 (customer_key), deals, leads; none for groups, transactions, rewards",
        option: None,
    },
    Entry {
        what: "webhook coverage",
        provenance: Provenance::Documented,
        source: "webhook guide and Workato connector: partnerships, customers, deals, leads \
                 (and applications, agreements, partner teams); no transaction, reward or \
                 group webhooks. `all` delivers every kind, for accounts that turn out to",
        option: Some("--webhook-events documented|all"),
    },
    Entry {
        what: "partnership webhook body",
        provenance: Provenance::Documented,
        source: "webhook guide sample: numeric id, partner_key, names, email, group with id, \
                 archived as the string \"false\"; no key, no timestamps",
        option: None,
    },
    Entry {
        what: "customer webhook body",
        provenance: Provenance::Guessed,
        source: "no sample documents it: the whole object (full), or a body shaped like the \
                 partnership sample (keyless: numeric id and customer_key, no key or times)",
        option: Some("--customer-body full|keyless"),
    },
    Entry {
        what: "deal and lead webhook bodies",
        provenance: Provenance::Guessed,
        source: "no sample documents them: the whole object",
        option: None,
    },
    Entry {
        what: "deal account_name",
        provenance: Provenance::Seen,
        source: "a string in generated clients, an object in Airbyte's production schema",
        option: Some("--account-name string|object"),
    },
    Entry {
        what: "duplicate customer_key on create",
        provenance: Provenance::Guessed,
        source: "undocumented, and customer_key uniqueness is not guaranteed: a 400 naming \
                 the key (reject), or a second customer with the same customer_key (accept)",
        option: Some("--duplicate-customer-key reject|accept"),
    },
    Entry {
        what: "duplicate transaction key on create",
        provenance: Provenance::Guessed,
        source: "undocumented: the existing transaction (idempotent 200) or a 400",
        option: Some("--duplicate-transaction-key idempotent|reject"),
    },
    Entry {
        what: "cursor of a deleted object",
        provenance: Provenance::Guessed,
        source: "undocumented: a 400, or an empty page",
        option: Some("--lost-cursor bad-request|empty-page"),
    },
    Entry {
        what: "archived customers in lists",
        provenance: Provenance::Guessed,
        source: "undocumented: hidden from lists, or still listed with archived true",
        option: Some("--archived-customers hidden|listed"),
    },
    Entry {
        what: "new customer readable by GET",
        provenance: Provenance::Seen,
        source: "a production integration measured 2 to 6 minutes before GET \
                 /customers/{key} finds a new customer, and waits 15 minutes before trusting \
                 a 404",
        option: Some("--customer-readable-after-ms N"),
    },
    Entry {
        what: "refusal texts",
        provenance: Provenance::Guessed,
        source: "no error catalogue is published; only JSON-Schema-style validation messages \
                 are seen. Three wordings: plain (\"No customer found with ...\", \"... already \
                 exists\"), exist (\"Customer x does not exist\", \"Partner key does not exist \
                 in this program\": a refusal containing \"exist\"), terse (400 \"Bad request\", \
                 duplicates 409 \"Conflict\")",
        option: Some("--refusal-wording plain|exist|terse"),
    },
    Entry {
        what: "delete answers",
        provenance: Provenance::Documented,
        source: "the client generated from PartnerStack's API definition types delete and \
                 archive answers as {message, status} without data; no real answer body is \
                 published, so an answer with data and an empty 204 are offered too",
        option: Some("--delete-answer message|data|empty"),
    },
    Entry {
        what: "transaction metadata limits",
        provenance: Provenance::Documented,
        source: "POST /transactions reference: metadata at most 25 attributes (an older \
                 version of the page said 20), names at most 30 characters, values at most 100; \
                 the stand-in refuses more with a 400",
        option: None,
    },
    Entry {
        what: "rate limiting",
        provenance: Provenance::Guessed,
        source: "a limit exists (429 documented on report export); its numbers and headers \
                 are undocumented: Retry-After sent or not",
        option: Some("--retry-after-header sent|omitted"),
    },
    Entry {
        what: "legacy dialect",
        provenance: Provenance::Guessed,
        source: "an older integration guide: /partners, ending_cursor, second timestamps, \
                 limit up to 100",
        option: Some("--dialect real|legacy"),
    },
];

/// Which kinds of object get webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvents {
    /// Partnerships, customers, deals and leads, partnerships in the documented shape.
    Documented,
    /// Every kind, each body the whole object with its key and times.
    All,
}

/// The shape of customer webhook bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomerBody {
    /// The whole object, key and times included.
    Full,
    /// Like the partnership sample: a numeric `id` and `customer_key`, no key, no times.
    Keyless,
}

/// What `POST /transactions` answers for a `key` it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateTransactionKey {
    /// 200 with the existing transaction; nothing changes.
    Idempotent,
    /// 400.
    Reject,
}

/// What `POST /customers` does with a `customer_key` it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateCustomerKey {
    /// 400: "A customer with customer_key '...' already exists".
    Reject,
    /// Creates a second customer with the same `customer_key` (`GET` finds the newest).
    Accept,
}

/// How refusals are worded (PartnerStack publishes no error catalogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalWording {
    /// "No customer found with customer_external_key 'x'", "A customer with customer_key
    /// 'x' already exists".
    Plain,
    /// Refusals that contain "exist" whatever they mean: "Customer x does not exist",
    /// "Partner key does not exist in this program", "Customer already exists".
    Exist,
    /// No detail: 400 "Bad request"; a repeated key 409 "Conflict"; 404 "Not found".
    Terse,
}

/// What `DELETE /transactions/{key}` (and `/customers/{key}`) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteAnswer {
    /// `{"message": ..., "status": 200}`, no `data` (as the API definition types it).
    Message,
    /// The envelope with the object as `data`.
    Data,
    /// 204 without a body.
    Empty,
}

/// What a list answers for a cursor naming an object that no longer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LostCursor {
    BadRequest,
    /// An empty page with `has_more: false`.
    EmptyPage,
}

/// Whether archived customers stay in lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchivedCustomers {
    Hidden,
    /// Listed, with `"archived": true`.
    Listed,
}

/// Whether a 429 carries `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryAfterHeader {
    Sent,
    Omitted,
}

/// How deals carry `account_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountName {
    String,
    /// `{"name": ..., "id": ...}`.
    Object,
}

/// The stand-in's switchable behaviours (see [`PROVENANCE`]).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Behaviours {
    /// Which kinds of object get webhooks.
    #[arg(long, value_enum, default_value = "documented")]
    pub webhook_events: WebhookEvents,
    /// The shape of customer webhook bodies (guessed).
    #[arg(long, value_enum, default_value = "full")]
    pub customer_body: CustomerBody,
    /// What a repeated customer_key gets (guessed).
    #[arg(long, value_enum, default_value = "reject")]
    pub duplicate_customer_key: DuplicateCustomerKey,
    /// What a repeated transaction `key` gets (guessed).
    #[arg(long, value_enum, default_value = "idempotent")]
    pub duplicate_transaction_key: DuplicateTransactionKey,
    /// What a cursor naming a deleted object gets (guessed).
    #[arg(long, value_enum, default_value = "bad-request")]
    pub lost_cursor: LostCursor,
    /// Whether archived customers stay in lists (guessed).
    #[arg(long, value_enum, default_value = "hidden")]
    pub archived_customers: ArchivedCustomers,
    /// Whether a 429 carries Retry-After (guessed).
    #[arg(long, value_enum, default_value = "sent")]
    pub retry_after_header: RetryAfterHeader,
    /// How deals carry account_name (both seen).
    #[arg(long, value_enum, default_value = "string")]
    pub account_name: AccountName,
    /// How long a new customer stays unknown to `GET /customers/{customer_key}`.
    #[arg(long, default_value_t = 0)]
    pub customer_readable_after_ms: u64,
    /// How refusals are worded (guessed).
    #[arg(long, value_enum, default_value = "plain")]
    pub refusal_wording: RefusalWording,
    /// What a delete answers (the documented shape, or the alternatives).
    #[arg(long, value_enum, default_value = "message")]
    pub delete_answer: DeleteAnswer,
}

impl Default for Behaviours {
    /// Every option's default: documented webhooks, and the first alternative of each
    /// guess.
    fn default() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            behaviours: Behaviours,
        }
        // Every option has a default, so parsing no arguments cannot fail (unit-tested).
        Args::try_parse_from(["partnerstack-sim"])
            .map(|a| a.behaviours)
            .expect("every behaviour option has a default")
    }
}

impl Behaviours {
    /// The defaults, with every kind of object getting webhooks.
    pub fn all_webhooks() -> Self {
        Behaviours {
            webhook_events: WebhookEvents::All,
            ..Behaviours::default()
        }
    }
}

/// An object as PartnerStack renders it everywhere (API answers and webhook bodies):
/// deals' `account_name` as a string or an object.
pub fn present(behaviours: &Behaviours, entity: partnerstack::Entity, mut object: Value) -> Value {
    if entity == partnerstack::Entity::Deal
        && behaviours.account_name == AccountName::Object
        && let Some(name) = object.get("account_name").cloned()
    {
        let id = object.get("key").and_then(Value::as_str).map(numeric_id);
        object["account_name"] = json!({"name": name, "id": id});
    }
    object
}

/// A numeric id derived from a key, for bodies that carry PartnerStack's internal numeric
/// ids (the documented partnership sample): stable, and never equal to the key.
pub fn numeric_id(key: &str) -> u64 {
    // FNV-1a, folded to seven digits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % 9_000_000 + 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in `docs/partnerstack.md` lists every behaviour here, with the same
    /// provenance.
    #[test]
    fn the_documented_table_lists_every_behaviour() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/partnerstack.md");
        let doc = std::fs::read_to_string(&path).expect("docs/partnerstack.md");
        for entry in PROVENANCE {
            let provenance = match entry.provenance {
                Provenance::Documented => "documented",
                Provenance::Seen => "seen",
                Provenance::Guessed => "guessed",
            };
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", entry.what)))
                .unwrap_or_else(|| panic!("docs/partnerstack.md has no row for {:?}", entry.what));
            assert!(
                row.contains(&format!("| {provenance} |")),
                "{:?} is {provenance} here: {row}",
                entry.what
            );
            if let Some(option) = entry.option {
                let flag = option.split(' ').next().unwrap_or(option);
                assert!(
                    row.contains(flag),
                    "{:?}: the row names no {flag}",
                    entry.what
                );
            }
        }
    }

    #[test]
    fn numeric_ids_are_stable_and_never_keys() {
        assert_eq!(numeric_id("part_abc"), numeric_id("part_abc"));
        assert_ne!(numeric_id("part_abc"), numeric_id("part_abd"));
        assert!((1_000_000..10_000_000).contains(&numeric_id("")));
    }
}
