//! `partnerstack-sync webhooks register --url BASE | list | remove [KEY] | rotate`.
//!
//! PartnerStack delivers webhooks to the registrations made through its API
//! (`/v2/webhooks`; no dashboard page is documented). This service's address is
//! `BASE/webhooks/partnerstack/<token>`; a registration whose URL has that shape is
//! *ours*, and its token stands as [`Standing`] says (configured, rotated, revoked).
//!
//! - `register` subscribes `BASE`'s address to [`EVENTS`] once: a registration of ours
//!   for `BASE` whose token is accepted is kept (its events completed if some are
//!   missing), otherwise one is created with the first configured token not revoked, or
//!   with a generated one stored in the database (`webhook_tokens`).
//! - `rotate` registers a new generated token's address beside the current one; both are
//!   accepted until `remove`.
//! - `remove KEY` archives that registration and revokes its token (unless another live
//!   registration uses it); `remove` alone removes the registrations a rotation
//!   superseded (every live one of ours but the newest per `BASE`).
//!
//! Every command ends by reading `GET /v2/webhooks` back and reports what PartnerStack
//! holds: a call's outcome is what the read-back shows, never an answer's wording. The
//! create body's field names are undocumented: the URL is sent as `target` (or as
//! `--target-field` says) and, when that is refused with a 400 or 422 and the read-back
//! shows nothing, once more under the other spelling.

use std::fmt::Write as _;

use anyhow::{Context as _, anyhow, bail};
use partnerstack::client::{Client, Error as ClientError, TargetField, Webhook};
use partnerstack::webhook::normalise_event;
use reqwest::StatusCode;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::auth::{random_hex, sha256};
use crate::db::tokens;
use crate::webhook_tokens::{Standing, digests, standing};

/// The service's webhook route, between `BASE` and the token.
pub const INGEST_PATH: &str = "/webhooks/partnerstack/";

/// The events registered: every event of partnerships, customers, deals and leads the
/// service applies, in the dotted naming PartnerStack's current webhook guide subscribes
/// with (`partnership.created`, ...). The guide names the partnership events; customers,
/// deals and leads follow the same pattern (their sample bodies say `customer_created`,
/// `customer_deleted`, ...). `--event` replaces the list.
pub const EVENTS: &[&str] = &[
    "partnership.created",
    "partnership.updated",
    "partnership.deleted",
    "partnership.group_updated",
    "partnership.tags_updated",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "deal.created",
    "deal.updated",
    "deal.deleted",
    "lead.created",
    "lead.updated",
    "lead.deleted",
];

/// Random bytes in a generated token (hex: twice as many characters).
const TOKEN_BYTES: usize = 24;

/// The `webhooks` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Registers BASE/webhooks/partnerstack/<token> for every event the service applies,
    /// once (running it again changes nothing), and shows what PartnerStack holds.
    Register {
        /// Where PartnerStack reaches this service: an https:// URL (scheme, host,
        /// optional path), e.g. https://psync.example.com.
        #[arg(long, value_name = "BASE")]
        url: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Shows the webhooks PartnerStack holds, and which are this service's.
    List,
    /// Registers a new token's address beside the current one; both are accepted until
    /// `remove`.
    Rotate {
        /// The BASE to register at (default: that of the newest registration of ours).
        #[arg(long, value_name = "BASE")]
        url: Option<String>,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Archives the registration KEY and refuses its token from then on; without KEY,
    /// those a rotation superseded (every live one of ours but the newest per BASE).
    Remove {
        /// A registration's key, as `webhooks list` shows it.
        key: Option<String>,
    },
}

impl Action {
    /// Checks what can be checked before anything is opened: a given `BASE`.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            Action::Register { url, .. } => base_url(url).map(drop),
            Action::Rotate { url: Some(url), .. } => base_url(url).map(drop),
            _ => Ok(()),
        }
    }
}

/// How a create is asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct BodyArgs {
    /// The body field carrying the URL, tried first (PartnerStack does not document it;
    /// the other is tried when this one is refused).
    #[arg(long, value_enum, default_value = "target")]
    pub target_field: Field,
    /// An event to subscribe to; repeat for several (default: every event the service
    /// applies).
    #[arg(long = "event", value_name = "NAME")]
    pub events: Vec<String>,
}

/// `--target-field`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Field {
    Target,
    TargetUrl,
}

impl From<Field> for TargetField {
    fn from(f: Field) -> TargetField {
        match f {
            Field::Target => TargetField::Target,
            Field::TargetUrl => TargetField::TargetUrl,
        }
    }
}

/// An address of this service: `BASE/webhooks/partnerstack/<token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub base: String,
    pub token: String,
}

impl Address {
    /// The address a registration's URL names, if it has the shape of ours.
    pub fn parse(url: &str) -> Option<Address> {
        let (base, token) = url.rsplit_once(INGEST_PATH)?;
        let token = token.trim_end_matches('/');
        let plain = !token.is_empty() && !token.contains(['/', '?', '#']);
        (plain && !base.is_empty()).then(|| Address {
            base: base.to_string(),
            token: token.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}{INGEST_PATH}{}", self.base, self.token)
    }

    /// The URL with the token cut to its first four characters (the token is a secret).
    pub fn masked(&self) -> String {
        let shown: String = self.token.chars().take(4).collect();
        format!("{}{INGEST_PATH}{shown}…", self.base)
    }
}

/// `BASE` checked: an https URL with a host and neither query nor fragment, without its
/// trailing `/`.
pub fn base_url(raw: &str) -> anyhow::Result<String> {
    let url =
        reqwest::Url::parse(raw.trim()).map_err(|e| anyhow!("--url {raw:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        bail!(
            "--url {raw:?}: PartnerStack needs an https:// address (put the service behind a \
             TLS-terminating load balancer or proxy; see the README)"
        );
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some()
    {
        bail!("--url {raw:?}: give the scheme, host and optional path only");
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// One registration PartnerStack holds, as this service sees it.
#[derive(Debug, Clone)]
pub struct Held {
    pub webhook: Webhook,
    /// Its address, when it is one of ours.
    pub ours: Option<Address>,
    /// Its token's standing, when it is ours.
    pub standing: Option<Standing>,
}

impl Held {
    /// Not archived (as far as PartnerStack says).
    pub fn live(&self) -> bool {
        self.webhook.archived != Some(true)
    }

    /// Live, ours, its token accepted.
    fn serving(&self) -> bool {
        self.live() && self.standing.is_some_and(Standing::accepted)
    }
}

/// What a command did and what PartnerStack holds afterwards.
#[derive(Debug)]
pub struct Report {
    /// One line per thing done (or found already done).
    pub done: Vec<String>,
    /// Every registration, newest first, as read back.
    pub held: Vec<Held>,
    /// The registration the command registered or kept (register, rotate).
    pub registration: Option<String>,
}

impl Report {
    /// What the command prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.done {
            let _ = writeln!(out, "{line}");
        }
        if !self.done.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "PartnerStack holds {} webhook(s):", self.held.len());
        for h in &self.held {
            let _ = writeln!(out, "  {}", describe(h));
        }
        out
    }
}

/// One line about a registration: key, live or archived, whose, events, address.
fn describe(h: &Held) -> String {
    let state = match h.webhook.archived {
        Some(true) => "archived",
        Some(false) => "live",
        None => "live?",
    };
    let whose = match h.standing {
        Some(Standing::Configured) => "ours, token configured".to_string(),
        Some(Standing::Rotated(at)) => format!(
            "ours, token from a rotation on {}",
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        Some(Standing::Revoked) => "ours, token revoked".to_string(),
        Some(Standing::Unknown) => "ours in shape, token unknown here (refused)".to_string(),
        None => "not this service's".to_string(),
    };
    let address = match (&h.ours, &h.webhook.url) {
        (Some(a), _) => a.masked(),
        (None, Some(url)) => url.clone(),
        (None, None) => "(no URL given)".to_string(),
    };
    format!(
        "{:<14} {:<8} {:<40} {:>2} events  {address}",
        h.webhook.key,
        state,
        whose,
        h.webhook.events.len()
    )
}

/// What the `webhooks` commands work with.
pub struct Webhooks<'a> {
    pub client: &'a Client,
    pub pool: &'a PgPool,
    /// `webhooks.tokens`.
    pub configured: &'a [SecretString],
}

impl Webhooks<'_> {
    /// Runs `action`; its report.
    pub async fn run(&self, action: &Action) -> anyhow::Result<Report> {
        match action {
            Action::Register { url, body } => self.register(&base_url(url)?, body).await,
            Action::List => self.list().await,
            Action::Rotate { url, body } => {
                let base = url.as_deref().map(base_url).transpose()?;
                self.rotate(base, body).await
            }
            Action::Remove { key } => self.remove(key.as_deref()).await,
        }
    }

    /// Every registration PartnerStack lists, with whose it is.
    pub async fn held(&self) -> anyhow::Result<Vec<Held>> {
        let listed = self
            .client
            .list_webhooks()
            .await
            .context("reading PartnerStack's webhooks (GET /v2/webhooks)")?;
        let stored = tokens::load(self.pool).await?;
        let configured = digests(self.configured);
        Ok(listed
            .into_iter()
            .map(|webhook| {
                let ours = webhook.url.as_deref().and_then(Address::parse);
                let standing = ours
                    .as_ref()
                    .map(|a| standing(&sha256(a.token.as_bytes()), &configured, &stored));
                Held {
                    webhook,
                    ours,
                    standing,
                }
            })
            .collect())
    }

    pub async fn list(&self) -> anyhow::Result<Report> {
        Ok(Report {
            done: Vec::new(),
            held: self.held().await?,
            registration: None,
        })
    }

    pub async fn register(&self, base: &str, body: &BodyArgs) -> anyhow::Result<Report> {
        let events = events(body);
        let held = self.held().await?;
        let kept = held
            .iter()
            .find(|h| h.serving() && h.ours.as_ref().is_some_and(|a| a.base == base));
        let mut done = Vec::new();
        let key = match kept {
            Some(h) => {
                let missing = missing(&h.webhook, &events);
                if missing.is_empty() {
                    done.push(format!(
                        "already registered: {} ({})",
                        h.webhook.key,
                        h.ours.as_ref().map(Address::masked).unwrap_or_default()
                    ));
                } else {
                    self.client
                        .update_webhook_events(&h.webhook.key, &events)
                        .await
                        .context("subscribing the registration to the missing events")?;
                    done.push(format!(
                        "{} was missing {}; subscribed it to every event",
                        h.webhook.key,
                        missing.join(", ")
                    ));
                }
                h.webhook.key.clone()
            }
            None => {
                let token = self.token_to_register().await?;
                let address = Address {
                    base: base.to_string(),
                    token,
                };
                let (webhook, field) = self
                    .create(&address, &events, body.target_field.into())
                    .await?;
                done.push(format!(
                    "registered {} as {} (the URL sent as `{}`)",
                    address.masked(),
                    webhook.key,
                    field.as_str()
                ));
                webhook.key
            }
        };
        self.verified(done, key, &events).await
    }

    pub async fn rotate(&self, base: Option<String>, body: &BodyArgs) -> anyhow::Result<Report> {
        let events = events(body);
        let base = match base {
            Some(base) => base,
            None => self
                .held()
                .await?
                .into_iter()
                .find(Held::serving)
                .and_then(|h| h.ours)
                .map(|a| a.base)
                .ok_or_else(|| {
                    anyhow!(
                        "nothing to rotate: PartnerStack holds no live registration of this \
                         service; run `webhooks register --url BASE` first (or give --url)"
                    )
                })?,
        };
        let address = Address {
            base,
            token: self.new_token().await?,
        };
        let (webhook, field) = self
            .create(&address, &events, body.target_field.into())
            .await?;
        let done = vec![
            format!(
                "registered the new token's address {} as {} (the URL sent as `{}`)",
                address.masked(),
                webhook.key,
                field.as_str()
            ),
            "the older registrations and their tokens stay accepted until `webhooks remove`"
                .to_string(),
        ];
        self.verified(done, webhook.key, &events).await
    }

    pub async fn remove(&self, key: Option<&str>) -> anyhow::Result<Report> {
        let held = self.held().await?;
        let targets: Vec<&Held> = match key {
            Some(key) => vec![held.iter().find(|h| h.webhook.key == key).ok_or_else(|| {
                anyhow!("PartnerStack holds no webhook {key:?} (see `webhooks list`)")
            })?],
            None => superseded(&held),
        };
        let mut done = Vec::new();
        if targets.is_empty() {
            done.push(
                "nothing to remove: no registration of this service was superseded by a rotation"
                    .to_string(),
            );
        }
        for h in &targets {
            if h.live() {
                self.client
                    .archive_webhook(&h.webhook.key)
                    .await
                    .with_context(|| {
                        format!("archiving {} (DELETE /v2/webhooks/{{key}})", h.webhook.key)
                    })?;
            }
            done.push(format!("removed {}", h.webhook.key));
            if let Some(address) = &h.ours {
                let shared = held.iter().any(|other| {
                    other.live()
                        && other
                            .ours
                            .as_ref()
                            .is_some_and(|a| a.token == address.token)
                        && !targets.iter().any(|t| t.webhook.key == other.webhook.key)
                });
                if shared {
                    done.push(format!(
                        "its token stays accepted: another live registration uses it ({})",
                        address.masked()
                    ));
                } else {
                    tokens::revoke(self.pool, &sha256(address.token.as_bytes())).await?;
                    done.push(format!(
                        "its token is refused from now on ({}; every replica within webhooks.token_refresh)",
                        address.masked()
                    ));
                }
            }
        }
        let after = self.held().await?;
        for h in &targets {
            if let Some(still) = after.iter().find(|a| a.webhook.key == h.webhook.key) {
                match still.webhook.archived {
                    Some(true) => {}
                    Some(false) => bail!(
                        "PartnerStack still lists {} as live after archiving it",
                        h.webhook.key
                    ),
                    None => done.push(format!(
                        "PartnerStack still lists {} and does not say whether it is archived",
                        h.webhook.key
                    )),
                }
            }
        }
        Ok(Report {
            done,
            held: after,
            registration: None,
        })
    }

    /// The token `register` puts in a new address: the first configured one not
    /// revoked, else a new one.
    async fn token_to_register(&self) -> anyhow::Result<String> {
        use secrecy::ExposeSecret as _;
        let stored = tokens::load(self.pool).await?;
        let configured = digests(self.configured);
        for token in self.configured {
            let token = token.expose_secret();
            if standing(&sha256(token.as_bytes()), &configured, &stored).accepted() {
                return Ok(token.to_string());
            }
        }
        self.new_token().await
    }

    /// A generated token, stored as accepted before any registration names it.
    async fn new_token(&self) -> anyhow::Result<String> {
        let token = random_hex(TOKEN_BYTES);
        let state = tokens::add(self.pool, &sha256(token.as_bytes())).await?;
        anyhow::ensure!(
            state == tokens::TokenState::Active,
            "a freshly generated token was already revoked; try again"
        );
        Ok(token)
    }

    /// Creates a registration for `address` and finds it in the list: with `first`'s
    /// spelling, then, if that was refused (400 or 422) and nothing was registered, with
    /// the other. The registration and the spelling that made it.
    async fn create(
        &self,
        address: &Address,
        events: &[String],
        first: TargetField,
    ) -> anyhow::Result<(Webhook, TargetField)> {
        let url = address.url();
        let mut refusals = Vec::new();
        for field in [first, first.other()] {
            let sent = self.client.create_webhook(&url, events, field).await;
            if let Some(found) = self.find(&url).await? {
                return Ok((found, field));
            }
            match sent {
                Ok(_) => bail!(
                    "PartnerStack accepted the registration of {} (the URL as `{}`) but does \
                     not list it (GET /v2/webhooks); run `webhooks list` to see what it holds",
                    address.masked(),
                    field.as_str()
                ),
                Err(e) if refused(&e) => refusals.push(format!("as `{}`: {e}", field.as_str())),
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "registering {} (POST /v2/webhooks); nothing is listed for it",
                        address.masked()
                    )));
                }
            }
        }
        bail!(
            "PartnerStack refused to register {} under both undocumented spellings of the URL \
             field ({}); nothing was registered. The account may not allow webhook \
             registration through the API: ask PartnerStack's support which body \
             POST /v2/webhooks takes",
            address.masked(),
            refusals.join("; ")
        )
    }

    /// The live registration whose URL is `url`, newest first.
    async fn find(&self, url: &str) -> anyhow::Result<Option<Webhook>> {
        let listed = self
            .client
            .list_webhooks()
            .await
            .context("reading the registration back (GET /v2/webhooks)")?;
        Ok(listed
            .into_iter()
            .find(|w| w.archived != Some(true) && w.url.as_deref() == Some(url)))
    }

    /// The report of `register` or `rotate`, after checking that `key` is listed, live,
    /// with every one of `events`.
    async fn verified(
        &self,
        mut done: Vec<String>,
        key: String,
        events: &[String],
    ) -> anyhow::Result<Report> {
        let held = self.held().await?;
        let Some(h) = held.iter().find(|h| h.webhook.key == key && h.live()) else {
            bail!("PartnerStack does not list {key} as a live webhook after registering it");
        };
        let missing = missing(&h.webhook, events);
        if missing.is_empty() {
            done.push(format!(
                "verified: PartnerStack lists {key}, live, with all {} events",
                events.len()
            ));
        } else {
            done.push(format!(
                "warning: PartnerStack lists {key} without {}",
                missing.join(", ")
            ));
        }
        Ok(Report {
            done,
            held,
            registration: Some(key),
        })
    }
}

/// The events asked for (`--event`), or [`EVENTS`].
fn events(body: &BodyArgs) -> Vec<String> {
    if body.events.is_empty() {
        EVENTS.iter().map(|e| e.to_string()).collect()
    } else {
        body.events.clone()
    }
}

/// Which of `events` the registration lacks (either naming style counts).
fn missing(webhook: &Webhook, events: &[String]) -> Vec<String> {
    let has: Vec<String> = webhook.events.iter().map(|e| normalise_event(e)).collect();
    events
        .iter()
        .filter(|e| !has.contains(&normalise_event(e)))
        .cloned()
        .collect()
}

/// A create PartnerStack refused as a request (a 400 or 422), which another spelling may
/// fix; wrong keys, missing endpoints and outages are not.
fn refused(e: &ClientError) -> bool {
    matches!(
        e.status(),
        Some(StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY)
    )
}

/// Live registrations of ours with accepted tokens that a newer one for the same BASE
/// superseded (the list is newest first).
fn superseded(held: &[Held]) -> Vec<&Held> {
    let mut seen: Vec<&str> = Vec::new();
    let mut old = Vec::new();
    for h in held.iter().filter(|h| h.serving()) {
        let Some(address) = &h.ours else { continue };
        if seen.contains(&address.base.as_str()) {
            old.push(h);
        } else {
            seen.push(&address.base);
        }
    }
    old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_must_be_https_and_plain() {
        assert_eq!(
            base_url("https://psync.example.com/").unwrap(),
            "https://psync.example.com"
        );
        assert_eq!(
            base_url("https://example.com/sync/").unwrap(),
            "https://example.com/sync"
        );
        let http = base_url("http://psync.example.com")
            .unwrap_err()
            .to_string();
        assert!(http.contains("https://"), "{http}");
        assert!(base_url("https://example.com/?a=1").is_err());
        assert!(base_url("psync.example.com").is_err());
    }

    #[test]
    fn addresses_read_back_from_urls() {
        let a = Address::parse("https://x.test/sync/webhooks/partnerstack/abcdef123456").unwrap();
        assert_eq!(a.base, "https://x.test/sync");
        assert_eq!(a.token, "abcdef123456");
        assert_eq!(
            a.url(),
            "https://x.test/sync/webhooks/partnerstack/abcdef123456"
        );
        assert_eq!(
            a.masked(),
            "https://x.test/sync/webhooks/partnerstack/abcd…"
        );
        assert_eq!(Address::parse("https://x.test/hooks/other"), None);
        assert_eq!(
            Address::parse("https://x.test/webhooks/partnerstack/"),
            None
        );
        assert_eq!(
            Address::parse("https://x.test/webhooks/partnerstack/a/b"),
            None
        );
    }

    #[test]
    fn missing_events_compare_either_naming() {
        let w = Webhook::read(serde_json::json!({
            "key": "k", "events": ["customer_created", "deal.updated"]
        }))
        .unwrap();
        let asked: Vec<String> = ["customer.created", "deal.updated", "lead.created"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(missing(&w, &asked), vec!["lead.created"]);
    }
}
