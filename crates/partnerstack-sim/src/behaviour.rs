//! What the stand-in does where it matters, and where each behaviour comes from.
//!
//! Every behaviour is one of: **documented** by PartnerStack, **seen** in a production
//! integration that runs against real accounts, or **guessed**. A guessed behaviour has a
//! plausible alternative, selectable here, so tests that depend on it can run under each.
//! [`PROVENANCE`] is the table (`docs/partnerstack.md` repeats it with sources; a unit
//! test keeps the two in step), and [`FILTERS`] the list filters the stand-in honours,
//! each with its own evidence. Both are written here from the sources, never taken from
//! the client crate: a wrong table in the client must be caught by tests, not copied
//! (a unit test checks that nothing here reads the client's table).

use partnerstack::Entity;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::data::Filter;

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

impl Provenance {
    /// The word `docs/partnerstack.md` uses.
    pub fn word(self) -> &'static str {
        match self {
            Provenance::Documented => "documented",
            Provenance::Seen => "seen",
            Provenance::Guessed => "guessed",
        }
    }
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
        what: "list filters tagged guessed",
        provenance: Provenance::Guessed,
        source: "third-party OpenAPI files and clients list them; no PartnerStack page and no \
                 production integration shows them (the table FILTERS): honoured, or ignored \
                 as an API ignores unknown parameters",
        option: Some("--guessed-filters honoured|ignored"),
    },
    Entry {
        what: "time filters honoured",
        provenance: Provenance::Guessed,
        source: "the filters the table FILTERS lists for times (min/max_updated, \
                 min/max_created) are honoured as documented, or an account ignores them \
                 and lists everything: what `check` asks",
        option: Some("--time-filters honoured|ignored"),
    },
    Entry {
        what: "single GETs",
        provenance: Provenance::Documented,
        source: "vendor endpoint index: partnerships (key or partner_key), customers \
                 (customer_key), deals, leads; none for groups, transactions, rewards",
        option: None,
    },
    Entry {
        what: "partnership read by partner_key",
        provenance: Provenance::Seen,
        source: "gushwork-api reads GET /v2/partnerships/{partner_key} against a live \
                 account (verified 2026-09-04); Activepieces takes a key, partner_key or \
                 email; the reference names only a unique_identifier. Refused (a 404) is \
                 the alternative",
        option: Some("--partnership-by-partner-key answers|refused"),
    },
    Entry {
        what: "single GET data",
        provenance: Provenance::Seen,
        source: "gushwork-api reads a single partnership's data as the object or as a \
                 container (data.partnership); both are served",
        option: Some("--single-get-data object|wrapped"),
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
        provenance: Provenance::Documented,
        source: "the v1.0 webhook-payloads reference sample: numeric id, key, email, name, \
                 partner_key, created_at and updated_at in ms, archived as a boolean (no \
                 customer_key); the current guide's sample opens with the numeric id too. \
                 Alternatives: the whole object (full), or shaped like the partnership sample \
                 (keyless: numeric id and customer_key, no key or times)",
        option: Some("--customer-body sample|full|keyless"),
    },
    Entry {
        what: "deal and lead webhook bodies",
        provenance: Provenance::Guessed,
        source: "no sample documents them: the whole object, or shaped like the partnership \
                 sample (keyless: a numeric id, no key, no times)",
        option: Some("--deal-lead-body full|keyless"),
    },
    Entry {
        what: "deal account_name",
        provenance: Provenance::Seen,
        source: "a string in generated clients, an object in Airbyte's production schema",
        option: Some("--account-name string|object"),
    },
    Entry {
        what: "transaction product_key",
        provenance: Provenance::Seen,
        source: "a string (or null) in a live Vendor response (Airbyte PR 74086); Airbyte's \
                 schema types it as an object",
        option: Some("--product-key string|object"),
    },
    Entry {
        what: "transaction archived and company",
        provenance: Provenance::Seen,
        source: "absent from a live Vendor response (Airbyte PR 74086; the Partner API has \
                 them): transactions carry no archived flag here",
        option: None,
    },
    Entry {
        what: "fields real objects carry",
        provenance: Provenance::Seen,
        source: "Airbyte's stream schemas: partnerships manager, m_data, stats; customers \
                 field_data, fields; transactions extension; rewards action, invoice, offer, \
                 trigger; groups features; deals field_data, fields, meta, team, team_member; \
                 leads field_data, fields, meta. Inner shapes from the generated client, the \
                 agreement webhook sample and Dub",
        option: None,
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
        source: "undocumented; Airbyte's customer schema has no archived field: hidden from \
                 lists, listed with archived true (flagged), or listed without a flag",
        option: Some("--archived-customers hidden|flagged|unflagged"),
    },
    Entry {
        what: "archived customer read",
        provenance: Provenance::Seen,
        source: "gushwork-api: a customer deleted by hand reads as a 404 afterwards",
        option: None,
    },
    Entry {
        what: "archived partnerships",
        provenance: Provenance::Guessed,
        source: "the webhook sample carries archived, \"Archive a partnership\" exists; three \
                 third-party sources say lists hide them unless include_archived=true. Hidden \
                 (lists and reads), flagged (archived true), or unflagged",
        option: Some("--archived-partnerships hidden|flagged|unflagged"),
    },
    Entry {
        what: "new transaction listed",
        provenance: Provenance::Guessed,
        source: "undocumented: at once, or only after a lag",
        option: Some("--transaction-listed-after-ms N"),
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
        what: "webhook registration endpoints",
        provenance: Provenance::Documented,
        source: "API reference (llms.txt index): GET/POST /v2/webhooks, GET/PATCH/DELETE \
                 /v2/webhooks/{webhook_key}; registrations named by key, newest first; \
                 DELETE archives",
        option: None,
    },
    Entry {
        what: "webhook create body",
        provenance: Provenance::Guessed,
        source: "undocumented: the URL as `target` (most third-party clients; the \
                 reference says \"target URL\") or `target_url` (one client), with \
                 `events`; the other spelling gets a 400",
        option: Some("--webhook-target target|target-url"),
    },
    Entry {
        what: "archived webhooks in the list",
        provenance: Provenance::Guessed,
        source: "DELETE archives; whether the list keeps archived registrations is \
                 undocumented: listed with archived true, or hidden",
        option: Some("--archived-webhooks listed|hidden"),
    },
    Entry {
        what: "legacy dialect",
        provenance: Provenance::Guessed,
        source: "an older integration guide: /partners, ending_cursor, second timestamps, \
                 limit up to 100. It matches Partnero's API (another vendor) more than \
                 PartnerStack's",
        option: Some("--dialect real|legacy"),
    },
];

/// The evidence for one list filter the stand-in honours.
#[derive(Debug, Clone, Copy)]
pub struct FilterEvidence {
    pub entity: Entity,
    pub filter: Filter,
    pub provenance: Provenance,
    /// Where it comes from (for a guess: who claims it).
    pub source: &'static str,
}

const AIRBYTE_UPDATED: &str = "Airbyte's connector syncs this stream incrementally with it";
const AIRBYTE_CREATED: &str = "Airbyte's connector reads this stream from a start date with it";
const GENERATED_DEALS: &str = "the deals list request of the client generated from PartnerStack's API definition \
     (fern-partnerstack/partnerstack-node)";
const THIRD_PARTY: &str = "a third-party OpenAPI file and third-party clients only";

/// The list filters the stand-in honours, per stream, each with its evidence (see
/// `docs/partnerstack.md`, "List filters"). Filters tagged guessed are honoured or
/// ignored as `--guessed-filters` says; any other parameter is ignored, as an API ignores
/// unknown parameters. Written from the sources: PartnerStack's own reference pages for
/// Vendor lists hold no parameter list that anyone could read, so only the deals request
/// type of the generated client counts as documented.
pub const FILTERS: &[FilterEvidence] = &[
    FilterEvidence {
        entity: Entity::Partner,
        filter: Filter::MinUpdated,
        provenance: Provenance::Seen,
        source: AIRBYTE_UPDATED,
    },
    FilterEvidence {
        entity: Entity::Customer,
        filter: Filter::MinUpdated,
        provenance: Provenance::Seen,
        source: AIRBYTE_UPDATED,
    },
    FilterEvidence {
        entity: Entity::Customer,
        filter: Filter::MaxUpdated,
        provenance: Provenance::Guessed,
        source: THIRD_PARTY,
    },
    FilterEvidence {
        entity: Entity::Customer,
        filter: Filter::MinCreated,
        provenance: Provenance::Guessed,
        source: "third-party sources; PartnerStack documents it for the Partner API's \
                 customers, not the Vendor API's",
    },
    FilterEvidence {
        entity: Entity::Customer,
        filter: Filter::MaxCreated,
        provenance: Provenance::Guessed,
        source: "third-party sources; PartnerStack documents it for the Partner API's \
                 customers, not the Vendor API's",
    },
    FilterEvidence {
        entity: Entity::Customer,
        filter: Filter::PartnerKey,
        provenance: Provenance::Guessed,
        source: THIRD_PARTY,
    },
    FilterEvidence {
        entity: Entity::Customer,
        filter: Filter::Group,
        provenance: Provenance::Guessed,
        source: "a third-party client quoting older documentation (which describes it for \
                 partnerships)",
    },
    FilterEvidence {
        entity: Entity::Transaction,
        filter: Filter::MinCreated,
        provenance: Provenance::Seen,
        source: AIRBYTE_CREATED,
    },
    FilterEvidence {
        entity: Entity::Transaction,
        filter: Filter::MaxCreated,
        provenance: Provenance::Guessed,
        source: "third-party sources; PartnerStack documents it for the Partner API's \
                 transactions, not the Vendor API's",
    },
    FilterEvidence {
        entity: Entity::Reward,
        filter: Filter::MinCreated,
        provenance: Provenance::Seen,
        source: AIRBYTE_CREATED,
    },
    FilterEvidence {
        entity: Entity::Reward,
        filter: Filter::Status,
        provenance: Provenance::Seen,
        source: "Dub's importer lists rewards by status",
    },
    FilterEvidence {
        entity: Entity::Group,
        filter: Filter::MinUpdated,
        provenance: Provenance::Seen,
        source: AIRBYTE_UPDATED,
    },
    FilterEvidence {
        entity: Entity::Deal,
        filter: Filter::MinUpdated,
        provenance: Provenance::Documented,
        source: GENERATED_DEALS,
    },
    FilterEvidence {
        entity: Entity::Deal,
        filter: Filter::MaxUpdated,
        provenance: Provenance::Documented,
        source: GENERATED_DEALS,
    },
    FilterEvidence {
        entity: Entity::Deal,
        filter: Filter::MinCreated,
        provenance: Provenance::Documented,
        source: GENERATED_DEALS,
    },
    FilterEvidence {
        entity: Entity::Deal,
        filter: Filter::MaxCreated,
        provenance: Provenance::Documented,
        source: GENERATED_DEALS,
    },
    FilterEvidence {
        entity: Entity::Deal,
        filter: Filter::PartnerKey,
        provenance: Provenance::Documented,
        source: GENERATED_DEALS,
    },
    FilterEvidence {
        entity: Entity::Deal,
        filter: Filter::Group,
        provenance: Provenance::Documented,
        source: GENERATED_DEALS,
    },
    FilterEvidence {
        entity: Entity::Lead,
        filter: Filter::MinUpdated,
        provenance: Provenance::Seen,
        source: AIRBYTE_UPDATED,
    },
];

/// The filters `entity`'s list honours under `behaviours`.
pub fn honoured(behaviours: &Behaviours, entity: Entity) -> Vec<Filter> {
    FILTERS
        .iter()
        .filter(|f| f.entity == entity)
        .filter(|f| {
            f.provenance != Provenance::Guessed
                || behaviours.guessed_filters == GuessedFilters::Honoured
        })
        .map(|f| f.filter)
        .collect()
}

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
    /// The v1.0 reference sample: a numeric `id`, `key`, `email`, `name`, `partner_key`,
    /// times in ms and a boolean `archived`; no `customer_key`.
    Sample,
    /// The whole object, key and times included.
    Full,
    /// Like the partnership sample: a numeric `id` and `customer_key`, no key, no times.
    Keyless,
}

/// The shape of deal and lead webhook bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DealLeadBody {
    /// The whole object.
    Full,
    /// Like the partnership sample: a numeric `id` and the object's fields, no key, no
    /// times.
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

/// What lists (and, for partnerships, single reads) show of archived objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchivedInLists {
    /// Not listed (not found).
    Hidden,
    /// Listed, with `"archived": true`.
    #[value(alias = "listed")]
    Flagged,
    /// Listed like any other object: no `archived` field at all.
    Unflagged,
}

/// Whether a 429 carries `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryAfterHeader {
    Sent,
    Omitted,
}

/// Whether lists honour their time filters (`min_updated`, `max_updated`,
/// `min_created`, `max_created`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeFilters {
    Honoured,
    /// Every item is listed, whatever the time filters say.
    Ignored,
}

/// How deals carry `account_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountName {
    String,
    /// `{"name": ..., "id": ...}`.
    Object,
}

/// How transactions carry `product_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProductKey {
    String,
    /// `{"key": ..., "name": ...}`.
    Object,
}

/// What `GET /partnerships/{partner_key}` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartnershipByPartnerKey {
    /// The partnership, as by its key.
    Answers,
    /// 404: only the partnership key is taken.
    Refused,
}

/// What a single GET's `data` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SingleGetData {
    /// The object itself.
    Object,
    /// A container naming it: `{"partnership": {...}}`, `{"customer": {...}}`, ...
    Wrapped,
}

/// Whether filters tagged guessed in [`FILTERS`] are honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuessedFilters {
    Honoured,
    /// Ignored, as an API ignores parameters it does not know: the list is wider.
    Ignored,
}

/// The stand-in's switchable behaviours (see [`PROVENANCE`]).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Behaviours {
    /// Which kinds of object get webhooks.
    #[arg(long, value_enum, default_value = "documented")]
    pub webhook_events: WebhookEvents,
    /// The shape of customer webhook bodies (the documented sample, or the alternatives).
    #[arg(long, value_enum, default_value = "sample")]
    pub customer_body: CustomerBody,
    /// The shape of deal and lead webhook bodies (guessed).
    #[arg(long, value_enum, default_value = "full")]
    pub deal_lead_body: DealLeadBody,
    /// What a repeated customer_key gets (guessed).
    #[arg(long, value_enum, default_value = "reject")]
    pub duplicate_customer_key: DuplicateCustomerKey,
    /// What a repeated transaction `key` gets (guessed).
    #[arg(long, value_enum, default_value = "idempotent")]
    pub duplicate_transaction_key: DuplicateTransactionKey,
    /// What a cursor naming a deleted object gets (guessed).
    #[arg(long, value_enum, default_value = "bad-request")]
    pub lost_cursor: LostCursor,
    /// What lists show of archived customers (guessed).
    #[arg(long, value_enum, default_value = "hidden")]
    pub archived_customers: ArchivedInLists,
    /// What lists and reads show of archived partnerships (guessed).
    #[arg(long, value_enum, default_value = "hidden")]
    pub archived_partnerships: ArchivedInLists,
    /// Whether a 429 carries Retry-After (guessed).
    #[arg(long, value_enum, default_value = "sent")]
    pub retry_after_header: RetryAfterHeader,
    /// Whether lists honour their time filters (seen honoured; `check` asks).
    #[arg(long, value_enum, default_value = "honoured")]
    pub time_filters: TimeFilters,
    /// How deals carry account_name (both seen).
    #[arg(long, value_enum, default_value = "string")]
    pub account_name: AccountName,
    /// How transactions carry product_key (a string seen live; an object in a schema).
    #[arg(long, value_enum, default_value = "string")]
    pub product_key: ProductKey,
    /// What a partnership read by partner_key gets (answers: seen in production).
    #[arg(long, value_enum, default_value = "answers")]
    pub partnership_by_partner_key: PartnershipByPartnerKey,
    /// What a single GET's data is (both seen).
    #[arg(long, value_enum, default_value = "object")]
    pub single_get_data: SingleGetData,
    /// Whether list filters tagged guessed are honoured.
    #[arg(long, value_enum, default_value = "honoured")]
    pub guessed_filters: GuessedFilters,
    /// How long a new transaction stays out of lists (guessed; 0: listed at once).
    #[arg(long, default_value_t = 0)]
    pub transaction_listed_after_ms: u64,
    /// How long a new customer stays unknown to `GET /customers/{customer_key}`.
    #[arg(long, default_value_t = 0)]
    pub customer_readable_after_ms: u64,
    /// The field `POST /webhooks` takes the URL in (guessed).
    #[arg(long, value_enum, default_value = "target")]
    pub webhook_target: crate::registrations::WebhookTarget,
    /// Whether archived webhook registrations stay listed (guessed).
    #[arg(long, value_enum, default_value = "listed")]
    pub archived_webhooks: crate::registrations::ArchivedWebhooks,
    /// How refusals are worded (guessed).
    #[arg(long, value_enum, default_value = "plain")]
    pub refusal_wording: RefusalWording,
    /// What a delete answers (the documented shape, or the alternatives).
    #[arg(long, value_enum, default_value = "message")]
    pub delete_answer: DeleteAnswer,
}

impl Default for Behaviours {
    /// Every option's default: the alternative the strongest evidence supports (for a pure
    /// guess, the more common behaviour of APIs).
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

    /// What lists show of archived objects of `entity` (only customers and partnerships
    /// are archived here).
    pub fn archived(&self, entity: Entity) -> ArchivedInLists {
        match entity {
            Entity::Customer => self.archived_customers,
            Entity::Partner => self.archived_partnerships,
            _ => ArchivedInLists::Hidden,
        }
    }

    /// Whether lists of `entity` keep archived objects.
    pub fn lists_archived(&self, entity: Entity) -> bool {
        self.archived(entity) != ArchivedInLists::Hidden
    }
}

/// An object as PartnerStack renders it everywhere (API answers and webhook bodies):
/// deals' `account_name` and transactions' `product_key` as a string or an object, the
/// `archived` flag of archived customers and partnerships left out where lists carry none,
/// and the fields real objects carry that the stand-in does not keep ([`extras`]).
pub fn present(behaviours: &Behaviours, entity: Entity, mut object: Value) -> Value {
    let Value::Object(map) = &mut object else {
        return object;
    };
    let id = map.get("key").and_then(Value::as_str).map(numeric_id);
    match entity {
        Entity::Deal if behaviours.account_name == AccountName::Object => {
            if let Some(name) = map.get("account_name").cloned() {
                map.insert("account_name".into(), json!({"name": name, "id": id}));
            }
        }
        Entity::Transaction if behaviours.product_key == ProductKey::Object => {
            if let Some(Value::String(key)) = map.get("product_key").cloned() {
                let name = key.trim_start_matches("prod_").replace('_', " ");
                map.insert("product_key".into(), json!({"key": key, "name": name}));
            }
        }
        _ => {}
    }
    if behaviours.archived(entity) == ArchivedInLists::Unflagged {
        map.remove("archived");
    }
    if let Some(n) = id {
        extras(entity, n, map);
    }
    object
}

/// Fields real objects carry (Airbyte's stream schemas; inner shapes from the generated
/// client, the agreement webhook sample and Dub) that the stand-in does not keep: derived
/// from the object's numeric id `n`, so the same object always renders the same.
fn extras(entity: Entity, n: u64, map: &mut Map<String, Value>) {
    const MANAGERS: [(&str, &str); 3] = [
        ("Morgan Lee", "morgan.lee@vendor.example"),
        ("Sam Rivera", "sam.rivera@vendor.example"),
        ("Alex Kim", "alex.kim@vendor.example"),
    ];
    const COMPANIES: [&str; 4] = ["Acme", "Globex", "Initech", "Umbrella"];
    let pick = |len: usize| usize::try_from(n).unwrap_or_default() % len;
    let company = COMPANIES[pick(COMPANIES.len())];
    let custom_fields = |map: &mut Map<String, Value>| {
        map.insert("field_data".into(), json!({"company_name": company}));
        map.insert(
            "fields".into(),
            json!([{"api_name": "company_name", "name": "Company Name", "value": company,
                    "field_key": format!("fld_{n}"), "type": "text", "read_only": true,
                    "hidden": false, "required": false}]),
        );
    };
    match entity {
        Entity::Partner => {
            let (name, email) = MANAGERS[pick(MANAGERS.len())];
            map.insert(
                "manager".into(),
                json!({"manager_name": name, "manager_email": email}),
            );
            map.insert("m_data".into(), json!({"signup_source": "website"}));
            map.insert(
                "stats".into(),
                json!({"CUSTOMER_COUNT": n % 40, "LEAD_COUNT": n % 7, "DEAL_COUNT": n % 5}),
            );
        }
        Entity::Customer => custom_fields(map),
        Entity::Transaction => {
            map.insert("extension".into(), json!({"source": "api"}));
        }
        Entity::Reward => {
            let status = map.get("reward_status").and_then(Value::as_str);
            let invoice = match status {
                Some("paid") => "charge_succeeded",
                Some("approved") => "approved",
                Some("declined") => "flagged",
                _ => "pending",
            };
            let paid_at = (status == Some("paid"))
                .then(|| map.get("updated_at").cloned())
                .flatten();
            let purchase = map.get("transaction").is_some_and(|t| !t.is_null());
            map.insert(
                "action".into(),
                json!({"key": format!("act_{n}"),
                       "type": if purchase { "purchase" } else { "sign_up" }, "value": 1}),
            );
            map.insert(
                "invoice".into(),
                json!({"key": format!("inv_{n}"), "payment_date": paid_at, "status": invoice}),
            );
            map.insert(
                "offer".into(),
                json!({"key": format!("offr_{}", n % 3), "description": "20% recurring"}),
            );
            map.insert("trigger".into(), json!({"key": format!("trig_{}", n % 3)}));
        }
        Entity::Group => {
            map.insert(
                "features".into(),
                json!({"application_enabled": n.is_multiple_of(2), "deals_enabled": true,
                       "disable_link_create": false, "leads_enabled": !n.is_multiple_of(3)}),
            );
        }
        Entity::Deal => {
            custom_fields(map);
            map.insert("meta".into(), json!({}));
            let created = map.get("created_at").cloned().unwrap_or(Value::Null);
            map.insert(
                "team".into(),
                json!({"key": format!("stck_{n}"), "name": format!("{company} partners"),
                       "created_at": created, "updated_at": created}),
            );
            map.insert(
                "team_member".into(),
                json!({"key": format!("tmem_{n}"), "email": format!("rep{n}@partners.example"),
                       "first_name": "Jordan", "last_name": "Reyes",
                       "created_at": created, "updated_at": created}),
            );
        }
        Entity::Lead => {
            custom_fields(map);
            map.insert("meta".into(), json!({}));
        }
    }
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

    fn doc() -> String {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/partnerstack.md");
        std::fs::read_to_string(&path).expect("docs/partnerstack.md")
    }

    /// The table in `docs/partnerstack.md` lists every behaviour here, with the same
    /// provenance, and names the switch of each.
    #[test]
    fn the_documented_table_lists_every_behaviour() {
        let doc = doc();
        for entry in PROVENANCE {
            let provenance = entry.provenance.word();
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

    /// The filter table in `docs/partnerstack.md` ("List filters") has a row per filter
    /// here, with the same provenance, and no other.
    #[test]
    fn the_documented_filter_table_is_this_one() {
        let doc = doc();
        let section = doc
            .split("## List filters")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/partnerstack.md has a \"List filters\" section");
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| stream") && !l.starts_with("|-"))
            .collect();
        assert_eq!(rows.len(), FILTERS.len(), "one row per filter: {rows:#?}");
        for f in FILTERS {
            let head = format!(
                "| {} | {} | {} |",
                f.entity.stream(),
                f.filter.param(),
                f.provenance.word()
            );
            assert!(
                rows.iter().any(|r| r.starts_with(&head)),
                "docs/partnerstack.md has no row {head}"
            );
        }
    }

    /// Every entry says where it comes from: documented and seen ones name their source,
    /// every guess has a switch, and every switch is a real option whose first alternative
    /// is its default. Every behaviour option is in the table.
    #[test]
    fn every_entry_is_tagged_with_its_evidence() {
        use clap::CommandFactory as _;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            options: crate::Options,
        }
        let command = Args::command();
        let arg = |flag: &str| {
            command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.trim_start_matches("--")))
        };
        for entry in PROVENANCE {
            assert!(
                entry.source.split_whitespace().count() >= 3,
                "{:?}: no source",
                entry.what
            );
            if entry.provenance == Provenance::Guessed {
                assert!(
                    entry.option.is_some(),
                    "{:?}: a guess without a switch",
                    entry.what
                );
            }
            let Some(option) = entry.option else {
                continue;
            };
            let (flag, values) = option.split_once(' ').unwrap_or((option, ""));
            let arg = arg(flag).unwrap_or_else(|| panic!("{:?}: no option {flag}", entry.what));
            if values.contains('|') {
                let first = values.split('|').next().unwrap_or_default();
                let default: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                assert_eq!(
                    default,
                    [first],
                    "{:?}: the default is listed first",
                    entry.what
                );
            }
        }
        #[derive(clap::Parser)]
        struct OnlyBehaviours {
            #[command(flatten)]
            behaviours: Behaviours,
        }
        for arg in OnlyBehaviours::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            assert!(
                PROVENANCE
                    .iter()
                    .any(|e| e.option.is_some_and(|o| o.split(' ').next() == Some(&flag))),
                "{flag} is in no entry"
            );
        }
        for f in FILTERS {
            assert!(
                f.source.split_whitespace().count() >= 3,
                "{:?} {:?}: no source",
                f.entity,
                f.filter
            );
            let same = FILTERS
                .iter()
                .filter(|g| (g.entity, g.filter) == (f.entity, f.filter))
                .count();
            assert_eq!(same, 1, "{:?} {:?} twice", f.entity, f.filter);
        }
    }

    /// The stand-in's tables are its own: nothing in this crate reads the client's filter
    /// table (or any of the client module), so a mistake there cannot be copied here.
    #[test]
    fn nothing_here_is_derived_from_the_client() {
        let forbidden = [
            ["supported", "_filters"].concat(),
            ["client", "::Filter"].concat(),
            ["partnerstack::", "client"].concat(),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut read = 0;
        for file in std::fs::read_dir(&dir).expect("the crate's src") {
            let path = file.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                for word in &forbidden {
                    assert!(
                        !text.contains(word.as_str()),
                        "{} names {word}",
                        path.display()
                    );
                }
                read += 1;
            }
        }
        assert!(read >= 5, "read {read} source files");
    }

    #[test]
    fn guessed_filters_are_honoured_or_ignored_as_switched() {
        let honoured = honoured(&Behaviours::default(), Entity::Customer);
        assert!(honoured.contains(&Filter::MinUpdated) && honoured.contains(&Filter::MaxUpdated));
        let ignored = honoured_with(GuessedFilters::Ignored, Entity::Customer);
        assert_eq!(ignored, [Filter::MinUpdated]);
        // Documented filters stay.
        assert!(honoured_with(GuessedFilters::Ignored, Entity::Deal).contains(&Filter::MaxCreated));
    }

    fn honoured_with(guessed_filters: GuessedFilters, entity: Entity) -> Vec<Filter> {
        honoured(
            &Behaviours {
                guessed_filters,
                ..Behaviours::default()
            },
            entity,
        )
    }

    #[test]
    fn real_objects_fields_and_switched_shapes() {
        let b = Behaviours::default();
        let p = present(
            &b,
            Entity::Partner,
            json!({"key": "part_1", "archived": true}),
        );
        for field in ["manager", "m_data", "stats"] {
            assert!(p[field].is_object(), "{field}: {p}");
        }
        assert_eq!(p["archived"], true);
        let unflagged = Behaviours {
            archived_partnerships: ArchivedInLists::Unflagged,
            product_key: ProductKey::Object,
            ..Behaviours::default()
        };
        let p = present(
            &unflagged,
            Entity::Partner,
            json!({"key": "part_1", "archived": true}),
        );
        assert!(p.get("archived").is_none(), "{p}");
        let t = present(
            &unflagged,
            Entity::Transaction,
            json!({"key": "txn_1", "product_key": "prod_pro"}),
        );
        assert_eq!(t["product_key"]["key"], "prod_pro");
        assert!(t["extension"].is_object());
        let r = present(
            &b,
            Entity::Reward,
            json!({"key": "rew_1", "reward_status": "paid"}),
        );
        for field in ["action", "invoice", "offer", "trigger"] {
            assert!(r[field]["key"].is_string(), "{field}: {r}");
        }
        let d = present(&b, Entity::Deal, json!({"key": "deal_1"}));
        for field in ["field_data", "meta", "team", "team_member"] {
            assert!(d[field].is_object(), "{field}: {d}");
        }
        assert!(d["fields"][0]["api_name"].is_string());
        assert!(present(&b, Entity::Group, json!({"key": "grup_1"}))["features"].is_object());
        // The same object always renders the same.
        assert_eq!(
            present(&b, Entity::Lead, json!({"key": "lead_1"})),
            present(&b, Entity::Lead, json!({"key": "lead_1"}))
        );
    }

    #[test]
    fn numeric_ids_are_stable_and_never_keys() {
        assert_eq!(numeric_id("part_abc"), numeric_id("part_abc"));
        assert_ne!(numeric_id("part_abc"), numeric_id("part_abd"));
        assert!((1_000_000..10_000_000).contains(&numeric_id("")));
    }
}
