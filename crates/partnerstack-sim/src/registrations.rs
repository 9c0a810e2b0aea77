//! Webhook registrations: `GET`/`POST /api/v2/webhooks`, `GET`/`PATCH`/`DELETE
//! /api/v2/webhooks/{key}`, behind the same gate (delay, faults, Basic auth) as the rest
//! of the API.
//!
//! Documented: the endpoints, a registration's `key`, newest first, `DELETE` archives.
//! Guessed, each switchable ([`Behaviours`](crate::Behaviours)): the create body's URL
//! field (`--webhook-target`: `target`, or `target_url`; the other spelling is refused
//! with a 400 in PartnerStack's JSON-Schema wording), and whether archived registrations
//! stay in the list (`--archived-webhooks`). A second registration of the same URL is
//! accepted (nothing says PartnerStack refuses it), so a client must not create blindly.
//! Registrations only record; deliveries still go to `--webhook-url`.

use std::sync::Mutex;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Simulator;
use super::api::{Fail, ok};

/// The create body's URL field (`--webhook-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookTarget {
    /// `{"target": url, "events": [...]}`.
    Target,
    /// `{"target_url": url, "events": [...]}`.
    TargetUrl,
}

impl WebhookTarget {
    /// The field's name in bodies, asked and answered.
    pub fn field(self) -> &'static str {
        match self {
            WebhookTarget::Target => "target",
            WebhookTarget::TargetUrl => "target_url",
        }
    }
}

/// Whether archived registrations stay in `GET /webhooks` (`--archived-webhooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchivedWebhooks {
    /// Listed, with `"archived": true`.
    Listed,
    Hidden,
}

/// One registration.
#[derive(Debug, Clone)]
struct Registration {
    key: String,
    url: String,
    events: Vec<String>,
    archived: bool,
    created_at: i64,
    updated_at: i64,
}

/// Every registration ever made, oldest first.
#[derive(Debug, Default)]
pub struct Registry {
    items: Mutex<Vec<Registration>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registration>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The routes, for [`crate::api::router`] to put behind its gate.
pub fn routes() -> Router<Simulator> {
    Router::new()
        .route("/api/v2/webhooks", get(list).post(create))
        .route(
            "/api/v2/webhooks/{key}",
            get(get_one).patch(update).delete(archive),
        )
}

impl Simulator {
    /// Every registration as the API renders it, archived ones included, newest first.
    pub fn webhook_registrations(&self) -> Vec<Value> {
        let field = self.behaviours().webhook_target.field();
        let items = self.inner.registrations.lock();
        items.iter().rev().map(|r| render(r, field)).collect()
    }
}

fn render(r: &Registration, field: &str) -> Value {
    let mut object = json!({
        "key": r.key, "events": r.events, "archived": r.archived,
        "created_at": r.created_at, "updated_at": r.updated_at,
    });
    object[field] = Value::from(r.url.clone());
    object
}

fn bad_request(message: String) -> Fail {
    Fail(StatusCode::BAD_REQUEST, message)
}

fn not_found(key: &str) -> Fail {
    Fail(StatusCode::NOT_FOUND, format!("Webhook '{key}' not found"))
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, Fail> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_request("The body must be a JSON object".into())),
    }
}

/// The URL under `field`, if the body has one: an http(s) URL.
fn url_of(body: &Map<String, Value>, field: &str) -> Result<Option<String>, Fail> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::String(url)) if url.starts_with("https://") || url.starts_with("http://") => {
            Ok(Some(url.clone()))
        }
        Some(other) => Err(bad_request(format!("{other} is not a 'uri'"))),
    }
}

/// The events, if the body has them: a non-empty array of non-empty names.
fn events_of(body: &Map<String, Value>) -> Result<Option<Vec<String>>, Fail> {
    let Some(value) = body.get("events") else {
        return Ok(None);
    };
    let names: Option<Vec<String>> = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|e| e.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect()
    });
    match names {
        Some(names) if !names.is_empty() => Ok(Some(names)),
        _ => Err(bad_request(format!(
            "{value} is not a non-empty array of event names"
        ))),
    }
}

async fn list(
    State(sim): State<Simulator>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, Fail> {
    let mut limit = 10;
    let mut after = None;
    for (name, value) in query {
        match name.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=250).contains(&n) => limit = n,
                _ => {
                    return Err(bad_request(
                        "'limit' must be an integer between 1 and 250".into(),
                    ));
                }
            },
            "starting_after" => after = Some(value),
            _ => {}
        }
    }
    let shown = sim.behaviours().archived_webhooks == ArchivedWebhooks::Listed;
    let all: Vec<Value> = sim
        .webhook_registrations()
        .into_iter()
        .filter(|r| shown || r["archived"] != true)
        .collect();
    let start = match &after {
        Some(key) => {
            all.iter()
                .position(|r| r["key"] == key.as_str())
                .ok_or_else(|| bad_request(format!("'starting_after': no webhook '{key}'")))?
                + 1
        }
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < all.len();
    Ok(ok(json!({"items": page, "has_more": has_more}), "Success"))
}

async fn create(State(sim): State<Simulator>, body: Bytes) -> Result<Response, Fail> {
    let body = body_object(&body)?;
    let field = sim.behaviours().webhook_target.field();
    let url = url_of(&body, field)?
        .ok_or_else(|| bad_request(format!("'{field}' is a required property")))?;
    let events =
        events_of(&body)?.ok_or_else(|| bad_request("'events' is a required property".into()))?;
    let now = crate::world::wall_ms();
    let registration = {
        let mut items = sim.inner.registrations.lock();
        let registration = Registration {
            key: format!("whk_{:06}", items.len() + 1),
            url,
            events,
            archived: false,
            created_at: now,
            updated_at: now,
        };
        items.push(registration.clone());
        registration
    };
    Ok(ok(render(&registration, field), "Webhook created"))
}

async fn get_one(State(sim): State<Simulator>, Path(key): Path<String>) -> Result<Response, Fail> {
    let field = sim.behaviours().webhook_target.field();
    let items = sim.inner.registrations.lock();
    let found = items
        .iter()
        .find(|r| r.key == key)
        .ok_or_else(|| not_found(&key))?;
    Ok(ok(render(found, field), "Success"))
}

async fn update(
    State(sim): State<Simulator>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, Fail> {
    let body = body_object(&body)?;
    let field = sim.behaviours().webhook_target.field();
    let url = url_of(&body, field)?;
    let events = events_of(&body)?;
    let mut items = sim.inner.registrations.lock();
    let found = items
        .iter_mut()
        .find(|r| r.key == key)
        .ok_or_else(|| not_found(&key))?;
    if let Some(url) = url {
        found.url = url;
    }
    if let Some(events) = events {
        found.events = events;
    }
    found.updated_at = crate::world::wall_ms();
    Ok(ok(render(found, field), "Webhook updated"))
}

/// Archives; answered as the API definition types archive answers: a message, no `data`.
async fn archive(State(sim): State<Simulator>, Path(key): Path<String>) -> Result<Response, Fail> {
    let mut items = sim.inner.registrations.lock();
    let found = items
        .iter_mut()
        .find(|r| r.key == key)
        .ok_or_else(|| not_found(&key))?;
    found.archived = true;
    found.updated_at = crate::world::wall_ms();
    Ok(axum::Json(json!({"message": "Webhook archived", "status": 200})).into_response())
}
