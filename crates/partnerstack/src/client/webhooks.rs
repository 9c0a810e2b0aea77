//! Webhook registrations (`/v2/webhooks`): list, read, create, update and archive.
//!
//! PartnerStack documents the endpoints and little else: a registration is named by its
//! `key`, the list is newest first, `DELETE` archives (so an archived registration may
//! still be listed), and a create "delivers POST requests to the target URL when the
//! specified events are triggered". The create body's field names are not documented:
//! third-party clients send `target` (most) or `target_url` (one), so the caller chooses
//! ([`TargetField`]). Answers are read tolerantly ([`Webhook::read`]); whether a call took
//! effect is for the caller to check by reading the list back, never by an answer's
//! wording.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::pages::read_list;
use super::{Client, Error, Repeat};

/// The registrations' path under the API root.
pub const WEBHOOKS_PATH: &str = "/webhooks";
/// Most list pages read: a program holds a handful of registrations, so more means a
/// list that does not end.
const MAX_PAGES: usize = 40;

/// How a create body names the URL PartnerStack delivers to (undocumented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetField {
    /// `{"target": url, "events": [...]}`: what most third-party clients send, and the
    /// reference's own words ("the target URL").
    Target,
    /// `{"target_url": url, "events": [...]}`.
    TargetUrl,
}

impl TargetField {
    /// The field's name in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetField::Target => "target",
            TargetField::TargetUrl => "target_url",
        }
    }

    /// The other spelling.
    pub fn other(self) -> TargetField {
        match self {
            TargetField::Target => TargetField::TargetUrl,
            TargetField::TargetUrl => TargetField::Target,
        }
    }
}

/// One registration as PartnerStack holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub key: String,
    /// Where it delivers: `target`, `target_url` or `url`.
    pub url: Option<String>,
    /// What it is subscribed to: `events` or `event_types`, each a name or an object
    /// with a `name`, `event` or `type`.
    pub events: Vec<String>,
    /// `archived` / `is_archived`, or the negation of `active` / `is_active`; `None` when
    /// the registration says neither (an archived one may still be listed without a flag).
    pub archived: Option<bool>,
    /// The object as received.
    pub raw: Value,
}

impl Webhook {
    /// Reads one registration; it needs a `key` (a string, or a number as seen for ids).
    pub fn read(raw: Value) -> Result<Webhook, String> {
        let Value::Object(map) = &raw else {
            return Err("a webhook is not a JSON object".into());
        };
        let key = match map.get("key") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err("a webhook has no `key`".into()),
        };
        let url = ["target", "target_url", "url"]
            .iter()
            .find_map(|f| map.get(*f).and_then(Value::as_str))
            .map(str::to_string);
        let events = ["events", "event_types"]
            .iter()
            .find_map(|f| map.get(*f).and_then(Value::as_array))
            .map(|items| items.iter().filter_map(event_name).collect())
            .unwrap_or_default();
        let flag = |fields: [&str; 2]| {
            fields.iter().find_map(|f| {
                map.get(*f)
                    .and_then(|v| crate::wire::parse_bool(v).ok().flatten())
            })
        };
        let archived = flag(["archived", "is_archived"])
            .or_else(|| flag(["active", "is_active"]).map(|active| !active));
        Ok(Webhook {
            key,
            url,
            events,
            archived,
            raw,
        })
    }
}

/// An event of a registration: a name, or an object naming it.
fn event_name(item: &Value) -> Option<String> {
    match item {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => ["name", "event", "type"]
            .iter()
            .find_map(|f| map.get(*f).and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// The registration an answer carries (`data`, or the body itself), if it carries one
/// that reads as such; the HTTP status already said whether the call succeeded.
fn answered(body: Value) -> Option<Webhook> {
    let Value::Object(mut map) = body else {
        return None;
    };
    let object = match map.remove("data") {
        Some(data @ Value::Object(_)) => data,
        _ => Value::Object(map),
    };
    Webhook::read(object).ok()
}

impl Client {
    /// Every registration, newest first (archived ones too, if PartnerStack lists them).
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, Error> {
        let counter = std::sync::atomic::AtomicU64::new(0);
        let invalid = |detail: String| Error::InvalidResponse {
            path: WEBHOOKS_PATH.to_string(),
            detail,
        };
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut params = vec![("limit".to_string(), "250".to_string())];
            if let Some(c) = &cursor {
                params.push(("starting_after".to_string(), c.clone()));
            }
            let body = self.get_list(WEBHOOKS_PATH, &params, &counter).await?;
            let list = read_list(body).map_err(invalid)?;
            let count = list.items.len();
            for item in list.items {
                all.push(Webhook::read(item).map_err(invalid)?);
            }
            let next = list
                .ending_cursor
                .or_else(|| all.last().map(|w| w.key.clone()));
            if count == 0 || !list.has_more.unwrap_or(count >= 250) {
                return Ok(all);
            }
            if next.is_none() || next == cursor {
                return Err(invalid("the list's cursor did not advance".into()));
            }
            cursor = next;
        }
        Err(invalid(format!(
            "the list did not end within {MAX_PAGES} pages"
        )))
    }

    /// One registration by key; `None` when PartnerStack has none (404).
    pub async fn get_webhook(&self, key: &str) -> Result<Option<Webhook>, Error> {
        let target = self.target(WEBHOOKS_PATH, Some(key))?;
        match self
            .call(Method::GET, target, &[], None, Repeat::Safe)
            .await
        {
            Ok(body) => Ok(answered(body)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /webhooks`: deliveries of `events` to `url`, the URL under `field`. Never
    /// repeated after an answer that may hide a landed create (a repeat could register
    /// twice): the caller reads the list back. The answer's registration, when it names one.
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[String],
        field: TargetField,
    ) -> Result<Option<Webhook>, Error> {
        let target = self.target(WEBHOOKS_PATH, None)?;
        let mut body = Map::new();
        body.insert(field.as_str().to_string(), Value::from(url));
        body.insert("events".to_string(), Value::from(events.to_vec()));
        let answer = self
            .call(
                Method::POST,
                target,
                &[],
                Some(Value::Object(body)),
                Repeat::Unsafe,
            )
            .await?;
        Ok(answered(answer))
    }

    /// `PATCH /webhooks/{key}`: subscribes the registration to exactly `events`.
    pub async fn update_webhook_events(
        &self,
        key: &str,
        events: &[String],
    ) -> Result<Option<Webhook>, Error> {
        let target = self.target(WEBHOOKS_PATH, Some(key))?;
        let body = serde_json::json!({ "events": events });
        let answer = self
            .call(Method::PATCH, target, &[], Some(body), Repeat::Safe)
            .await?;
        Ok(answered(answer))
    }

    /// `DELETE /webhooks/{key}`, which archives the registration: `false` when PartnerStack
    /// has none by that key (404; also after a retried archive whose first answer was
    /// lost, so the caller reads the list back).
    pub async fn archive_webhook(&self, key: &str) -> Result<bool, Error> {
        let target = self.target(WEBHOOKS_PATH, Some(key))?;
        match self
            .call(Method::DELETE, target, &[], None, Repeat::Safe)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registrations_read_in_every_spelling_seen() {
        let a = Webhook::read(json!({"key": "whk_1", "target": "https://a/x",
            "events": ["customer.created"], "archived": false}))
        .unwrap();
        assert_eq!(a.url.as_deref(), Some("https://a/x"));
        assert_eq!(a.events, vec!["customer.created"]);
        assert_eq!(a.archived, Some(false));
        let b = Webhook::read(json!({"key": 7, "target_url": "https://b",
            "event_types": [{"name": "deal.created"}, "lead.updated", 3], "is_active": "false"}))
        .unwrap();
        assert_eq!(b.key, "7");
        assert_eq!(b.url.as_deref(), Some("https://b"));
        assert_eq!(b.events, vec!["deal.created", "lead.updated"]);
        assert_eq!(b.archived, Some(true));
        let c = Webhook::read(json!({"key": "k", "url": "https://c"})).unwrap();
        assert_eq!(c.url.as_deref(), Some("https://c"));
        assert!(c.events.is_empty());
        assert_eq!(c.archived, None);
        assert!(Webhook::read(json!({"target": "https://a"})).is_err());
        assert!(Webhook::read(json!({"key": " "})).is_err());
        assert!(Webhook::read(json!([])).is_err());
    }

    #[test]
    fn answers_carry_the_registration_in_data_or_at_the_top() {
        let wrapped = answered(json!({"data": {"key": "w1", "target": "u"}, "status": 200}));
        assert_eq!(wrapped.map(|w| w.key), Some("w1".to_string()));
        let bare = answered(json!({"key": "w2", "target": "u"}));
        assert_eq!(bare.map(|w| w.key), Some("w2".to_string()));
        assert_eq!(answered(json!({"message": "Created", "status": 200})), None);
        assert_eq!(TargetField::Target.other(), TargetField::TargetUrl);
        assert_eq!(TargetField::TargetUrl.as_str(), "target_url");
    }
}
