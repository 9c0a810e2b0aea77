//! The stand-in's `/api/v2` routes, answering as PartnerStack does.
//!
//! Every request passes the gate first: the configured delay, then injected faults (429
//! with `Retry-After`, 5xx), then Basic auth (401). A write that took effect may then lose
//! its answer (a 500, a cut connection, a hang), as a real one can on the way back. Answers use PartnerStack's envelope:
//! `{"data": ..., "message": ..., "status": 200}`, errors `{"message": ..., "status": 4xx}`.

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::behaviour::{ArchivedCustomers, DeleteAnswer, LostCursor, RetryAfterHeader};
use super::data::ListParams;
use super::webhooks::Notify;
use super::{AfterCommit, Dialect, Simulator, Verdict};
use partnerstack::{Entity, wire};

/// The default page size of the real API.
const DEFAULT_LIMIT: usize = 10;

/// The `/api/v2` routes behind the gate.
pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/api/v2/{stream}", get(list).post(create))
        .route(
            "/api/v2/{stream}/{key}",
            get(get_one).patch(update).delete(delete),
        )
        .route_layer(middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
}

/// An answer in PartnerStack's envelope.
pub fn ok(data: Value, message: &str) -> Response {
    Json(json!({"data": data, "message": message, "status": 200})).into_response()
}

/// An error answer in PartnerStack's envelope.
#[derive(Debug)]
pub struct Fail(pub StatusCode, pub String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        fail(self.0, self.1)
    }
}

/// An error in PartnerStack's envelope.
pub fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"message": message.into(), "status": status.as_u16()})),
    )
        .into_response()
}

async fn gate(State(sim): State<Simulator>, request: Request, next: Next) -> Response {
    let write = request.method() != axum::http::Method::GET;
    let mut segments = request
        .uri()
        .path()
        .trim_start_matches("/api/v2/")
        .split('/');
    let stream = segments.next().unwrap_or_default().to_string();
    let keyed = if segments.next().is_some() {
        "/{key}"
    } else {
        ""
    };
    let method = request.method().as_str();
    sim.faults()
        .count_request(format!("{method} {stream}{keyed}"));
    if write {
        sim.faults().count_write(method, &stream);
    }
    let delay = sim.faults().delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match sim.faults().verdict() {
        Verdict::Throttle(retry_after) => {
            let mut r = fail(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
            let h = r.headers_mut();
            if sim.behaviours().retry_after_header == RetryAfterHeader::Sent {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            h.insert("x-ratelimit-remaining", HeaderValue::from(0));
            r
        }
        Verdict::Fail(status, message) => fail(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        ),
        Verdict::Serve if !authorized(&sim, request.headers()) => {
            let mut r = fail(StatusCode::UNAUTHORIZED, "Unauthorized: invalid API keys");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"PartnerStack\""),
            );
            r
        }
        Verdict::Serve => {
            let response = next.run(request).await;
            if write && response.status().is_success() {
                lose_answer(sim.faults().after_commit(), response).await
            } else {
                response
            }
        }
    };
    sim.faults().count(response.status().as_u16());
    response
}

/// The answer of a write that took effect, or what replaces it.
async fn lose_answer(fate: AfterCommit, response: Response) -> Response {
    match fate {
        AfterCommit::Answer => response,
        AfterCommit::Fail => fail(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        AfterCommit::Drop => {
            // A body that fails at once: the server cuts the connection mid-answer.
            let cut = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut"))
            });
            (StatusCode::OK, axum::body::Body::from_stream(cut)).into_response()
        }
        AfterCommit::Hang(for_how_long) => {
            tokio::time::sleep(for_how_long).await;
            response
        }
    }
}

fn authorized(sim: &Simulator, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|pair| sim.accepts(&pair))
}

fn entity(sim: &Simulator, stream: &str) -> Result<Entity, Fail> {
    let legacy_only = stream == "partners" && sim.dialect() != Dialect::Legacy;
    match Entity::from_stream(stream)
        .filter(|_| !legacy_only && stream == stream.to_ascii_lowercase())
    {
        Some(e) => Ok(e),
        None => Err(Fail(StatusCode::NOT_FOUND, format!("Not found: /{stream}"))),
    }
}

/// An object as the API serves it: timestamps in seconds in the legacy dialect.
fn dialect(sim: &Simulator, entity: Entity, object: Value) -> Value {
    let mut object = super::behaviour::present(sim.behaviours(), entity, object);
    if sim.dialect() == Dialect::Legacy
        && let Value::Object(map) = &mut object
    {
        for field in ["created_at", "updated_at", "joined_at"] {
            if let Some(ms) = map.get(field).and_then(Value::as_i64) {
                map.insert(field.into(), json!(ms / 1000));
            }
        }
    }
    object
}

fn list_params(
    sim: &Simulator,
    entity: Entity,
    query: &[(String, String)],
) -> Result<ListParams, String> {
    let max = match sim.dialect() {
        Dialect::Real => 250,
        Dialect::Legacy => 100,
    };
    let mut q = ListParams {
        limit: DEFAULT_LIMIT,
        ..ListParams::default()
    };
    for (name, value) in query {
        let time = || -> Result<Option<i64>, String> {
            wire::parse_timestamp(&Value::String(value.clone()))
                .map(|t| t.map(|t| t.timestamp_millis()))
                .map_err(|e| format!("'{name}': {e}"))
        };
        let text = || Some(value.clone()).filter(|v| !v.is_empty());
        match name.as_str() {
            "limit" => match value.trim().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => q.limit = n,
                _ => return Err(format!("'limit' must be an integer between 1 and {max}")),
            },
            "starting_after" => q.starting_after = text(),
            "ending_before" => q.ending_before = text(),
            "min_updated" => q.min_updated = time()?,
            "max_updated" => q.max_updated = time()?,
            "min_created" => q.min_created = time()?,
            "max_created" => q.max_created = time()?,
            "partner_key" => q.partner_key = text(),
            "customer_key" => q.customer_key = text(),
            "status" => q.status = text(),
            "group" => {
                if let Some(g) = text() {
                    q.group_partners = Some(sim.read().group_partners(&g));
                }
            }
            // Unknown parameters are ignored, as most APIs do.
            _ => {}
        }
    }
    q.ignore_cursor = sim.faults().stalled(entity);
    let behaviours = sim.behaviours();
    q.include_unlisted =
        entity == Entity::Customer && behaviours.archived_customers == ArchivedCustomers::Listed;
    q.lost_cursor_empty = behaviours.lost_cursor == LostCursor::EmptyPage;
    Ok(q)
}

async fn list(
    State(sim): State<Simulator>,
    Path(stream): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, Fail> {
    let entity = entity(&sim, &stream)?;
    let q = list_params(&sim, entity, &query).map_err(|m| Fail(StatusCode::BAD_REQUEST, m))?;
    // A list bounded in time on both sides is the service looking an object up to verify a
    // delivery (a scan never bounds its end): the ledger counts what it returns as
    // reaching the service. Recorded under the same read lock, so no change slips between.
    let lookup = q.max_updated.is_some() || q.max_created.is_some();
    let (items, has_more) = {
        let world = sim.read();
        let (items, has_more) = world
            .list(entity, &q)
            .map_err(|e| Fail(StatusCode::BAD_REQUEST, e.0))?;
        if lookup {
            for item in &items {
                sim.reached_service(entity, item);
            }
        }
        (items, has_more)
    };
    let items: Vec<Value> = items
        .into_iter()
        .map(|o| dialect(&sim, entity, o))
        .collect();
    let mut data = json!({"has_more": has_more});
    if sim.dialect() == Dialect::Legacy {
        data["ending_cursor"] = items.last().map_or(Value::Null, |o| o["key"].clone());
    }
    data["items"] = Value::Array(items);
    Ok(ok(data, "Success"))
}

async fn get_one(
    State(sim): State<Simulator>,
    Path((stream, key)): Path<(String, String)>,
) -> Result<Response, Fail> {
    let entity = entity(&sim, &stream)?;
    if matches!(entity, Entity::Transaction | Entity::Reward | Entity::Group) {
        // The real API documents no single GET for these.
        return Err(Fail(
            StatusCode::NOT_FOUND,
            format!("Not found: /{stream}/{key}"),
        ));
    }
    let object = {
        let world = sim.read();
        let object = world.get(entity, &key).ok_or_else(|| {
            Fail(
                StatusCode::NOT_FOUND,
                format!("{} '{key}' not found", capitalised(entity.name())),
            )
        })?;
        // A single GET is the service verifying a delivery: the state reached it.
        sim.reached_service(entity, &object);
        object
    };
    Ok(ok(dialect(&sim, entity, object), "Success"))
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn json_object(body: &Bytes) -> Result<Map<String, Value>, Fail> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Fail(
            StatusCode::BAD_REQUEST,
            "The body must be a JSON object".into(),
        )),
    }
}

fn not_allowed() -> Fail {
    Fail(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed".into())
}

async fn create(
    State(sim): State<Simulator>,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<Response, Fail> {
    let entity = entity(&sim, &stream)?;
    let body = json_object(&body)?;
    let mut world = sim.write();
    let (object, changes) = match entity {
        Entity::Customer => world
            .create_customer(&body, sim.behaviours().duplicate_customer_key)
            .map(|c| (c.object.clone(), vec![c])),
        Entity::Transaction => {
            world.create_transaction(&body, sim.behaviours().duplicate_transaction_key)
        }
        _ => return Err(not_allowed()),
    }
    .map_err(|(status, message)| Fail(status, message))?;
    sim.publish(&world, &changes, Notify::Deliver);
    drop(world);
    Ok(ok(dialect(&sim, entity, object), "Success"))
}

async fn update(
    State(sim): State<Simulator>,
    Path((stream, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Fail> {
    if entity(&sim, &stream)? != Entity::Customer {
        return Err(not_allowed());
    }
    let body = json_object(&body)?;
    let mut world = sim.write();
    let change = world
        .update_customer(&key, &body)
        .map_err(|(status, message)| Fail(status, message))?;
    sim.publish(&world, std::slice::from_ref(&change), Notify::Deliver);
    drop(world);
    Ok(ok(
        dialect(&sim, Entity::Customer, change.object),
        "Success",
    ))
}

async fn delete(
    State(sim): State<Simulator>,
    Path((stream, key)): Path<(String, String)>,
) -> Result<Response, Fail> {
    let entity = entity(&sim, &stream)?;
    let mut world = sim.write();
    let (change, message) = match entity {
        Entity::Customer => (world.archive_customer(&key), "Customer archived"),
        Entity::Transaction => (world.delete_transaction(&key), "Transaction deleted"),
        _ => return Err(not_allowed()),
    };
    let change = change.map_err(|(status, message)| Fail(status, message))?;
    sim.publish(&world, std::slice::from_ref(&change), Notify::Deliver);
    drop(world);
    Ok(match sim.behaviours().delete_answer {
        DeleteAnswer::Message => Json(json!({"message": message, "status": 200})).into_response(),
        DeleteAnswer::Data => ok(dialect(&sim, entity, change.object), message),
        DeleteAnswer::Empty => StatusCode::NO_CONTENT.into_response(),
    })
}
