//! The stand-in's `/admin` routes: its truth, and the levers a test pulls.
//!
//! Unauthenticated (the stand-in listens on loopback by default) and outside the fault
//! gate, so a test can always reach them.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /admin/state[?stream=S]` | every object as the API renders it, archived customers included |
//! | `GET /admin/stats` | API answers by status, requests by endpoint, object counts, delivery summary |
//! | `GET /admin/faults`, `POST /admin/faults` | read or change fault settings (a partial [`FaultUpdate`]) |
//! | `POST /admin/mutate?count=N[&kind=K][&notify=deliver\|drop\|none]` | make N changes now |
//! | `POST /admin/objects/{stream}/{key}[?notify=...]` | replace fields of one object (JSON body) |
//! | `GET /admin/deliveries[?since=SEQ]` | the delivery log |
//! | `POST /admin/flush[?timeout_ms=MS]` | wait until every queued webhook was sent |
//! | `GET /admin/undelivered` | changed objects whose latest state no delivered webhook carried |

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::faults::FaultUpdate;
use super::webhooks::Notify;
use super::world::MutationKind;
use super::{MAX_MUTATIONS_PER_CALL, Simulator};
use partnerstack::Entity;

/// Longest a flush may wait.
const MAX_FLUSH: Duration = Duration::from_secs(120);

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/admin/state", get(state))
        .route("/admin/stats", get(stats))
        .route("/admin/faults", get(faults).post(set_faults))
        .route("/admin/mutate", post(mutate))
        .route("/admin/objects/{stream}/{key}", post(patch))
        .route("/admin/deliveries", get(deliveries))
        .route("/admin/flush", post(flush))
        .route("/admin/undelivered", get(undelivered))
        .with_state(sim)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"status": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

fn stream(name: &str) -> Result<Entity, String> {
    Entity::from_stream(name).ok_or_else(|| format!("unknown stream {name:?}"))
}

#[derive(Debug, Deserialize)]
struct StateQuery {
    stream: Option<String>,
}

async fn state(State(sim): State<Simulator>, Query(q): Query<StateQuery>) -> Response {
    let only = match q.stream.as_deref().map(stream).transpose() {
        Ok(o) => o,
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    match sim.state_json(only) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("state dump: {e}"),
        ),
    }
}

async fn stats(State(sim): State<Simulator>) -> Response {
    let objects: Map<String, Value> = Entity::ALL
        .iter()
        .map(|e| (e.stream().to_string(), json!(sim.len(*e))))
        .collect();
    let answers: Map<String, Value> = sim
        .faults()
        .answers()
        .into_iter()
        .map(|(status, n)| (status.to_string(), json!(n)))
        .collect();
    Json(json!({
        "objects": objects,
        "answers": answers,
        "requests": answers.values().filter_map(Value::as_u64).sum::<u64>(),
        "writes": sim.faults().writes(),
        "endpoints": sim.faults().requests(),
        "changed": sim.changed(),
        "deliveries": sim.delivery_summary(),
    }))
    .into_response()
}

async fn faults(State(sim): State<Simulator>) -> Response {
    Json(sim.faults().settings()).into_response()
}

async fn set_faults(State(sim): State<Simulator>, body: Bytes) -> Response {
    let update: FaultUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("fault update: {e}")),
    };
    match sim.faults().update(update) {
        Ok(settings) => Json(settings).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

#[derive(Debug, Deserialize)]
struct MutateQuery {
    count: Option<usize>,
    kind: Option<String>,
    notify: Option<Notify>,
}

async fn mutate(State(sim): State<Simulator>, Query(q): Query<MutateQuery>) -> Response {
    let count = q.count.unwrap_or(1);
    if count > MAX_MUTATIONS_PER_CALL {
        return error(
            StatusCode::BAD_REQUEST,
            format!("count must be at most {MAX_MUTATIONS_PER_CALL}"),
        );
    }
    let kind = match q.kind.as_deref().map(|k| (k, MutationKind::parse(k))) {
        None => None,
        Some((_, Some(kind))) => Some(kind),
        Some((k, None)) => return error(StatusCode::BAD_REQUEST, format!("unknown kind {k:?}")),
    };
    let changes = sim.mutate(count, kind, q.notify.unwrap_or(Notify::Deliver));
    Json(json!({"count": changes.len(), "changes": changes})).into_response()
}

#[derive(Debug, Deserialize)]
struct NotifyQuery {
    notify: Option<Notify>,
}

async fn patch(
    State(sim): State<Simulator>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<NotifyQuery>,
    body: Bytes,
) -> Response {
    let entity = match stream(&name) {
        Ok(e) => e,
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let fields: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
    };
    match sim.patch(entity, &key, &fields, q.notify.unwrap_or(Notify::Deliver)) {
        Ok(change) => Json(json!({"data": change.object, "change": change})).into_response(),
        Err((status, message)) => error(status, message),
    }
}

#[derive(Debug, Deserialize)]
struct SinceQuery {
    since: Option<u64>,
}

async fn deliveries(State(sim): State<Simulator>, Query(q): Query<SinceQuery>) -> Response {
    Json(json!({
        "summary": sim.delivery_summary(),
        "deliveries": sim.deliveries(q.since.unwrap_or(0)),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct FlushQuery {
    timeout_ms: Option<u64>,
}

async fn flush(State(sim): State<Simulator>, Query(q): Query<FlushQuery>) -> Response {
    let timeout = q
        .timeout_ms
        .map_or(Duration::from_secs(30), Duration::from_millis)
        .min(MAX_FLUSH);
    if sim.flush(timeout).await {
        Json(sim.delivery_summary()).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "deliveries did not finish in time (or the sender is not running)",
        )
    }
}

async fn undelivered(State(sim): State<Simulator>) -> Response {
    let objects = sim.undelivered();
    Json(json!({"count": objects.len(), "objects": objects})).into_response()
}
