//! `POST /webhooks/partnerstack/{token}`: receive a delivery, store it, answer.
//!
//! In order: the URL token (401), the body size (413, before the body is read in full),
//! the optional signature over the raw bytes (401), the body must be a JSON object (400);
//! then the raw delivery is handed to the [`writer`](crate::ingest::writer) and answered
//! 200 only once it is committed, or 503 with `Retry-After` if it could not be. Applying
//! it to the entity tables happens after the answer, in the
//! [`applier`](crate::ingest::applier).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use serde::Serialize;

use partnerstack::webhook;

use crate::auth::sha256;
use crate::db::events::NewEvent;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::telemetry::DeliveryResult;

/// The answer to an accepted delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub status: crate::api::Acceptance,
    /// The stored delivery's id (`GET /v1/events/{id}`).
    pub id: i64,
    /// True when a byte-identical delivery was already stored.
    pub duplicate: bool,
}

/// Receives a PartnerStack webhook delivery. It is answered 200 only once it is stored.
#[utoipa::path(
    post, path = "/webhooks/partnerstack/{token}", tag = "webhooks",
    description = "The body is stored exactly as received, then applied. Both payload shapes \
        (flat with `event`, or `{\"event\"|\"type\": ..., \"data\": {...}}`) and both event \
        naming styles are accepted; unknown event types are stored too.",
    params(("token" = String, Path, description = "One of the configured webhook tokens")),
    request_body(content = Object, content_type = "application/json", description = "A JSON object"),
    responses(
        (status = 200, description = "Stored (or a byte-identical repeat of a stored delivery)", body = Accepted),
        (status = 400, description = "The body is not a JSON object", body = ErrorBody),
        (status = 401, description = "Unknown token, or a missing or wrong signature when signing is on", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 503, description = "Not stored; retry later", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn receive(
    State(state): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    let result = match token {
        Ok(Path(token)) => accept(&state, &token, &headers, body).await,
        // A token that does not even decode (e.g. `%FF`) is not a configured one.
        Err(_) => Err(ApiError::unauthorized("unknown webhook token")),
    };
    state.metrics.delivery(match &result {
        Ok(a) if a.duplicate => DeliveryResult::Duplicate,
        Ok(_) => DeliveryResult::Accepted,
        Err(e) => DeliveryResult::Refused(e.code()),
    });
    result.map(Json)
}

/// A delivery to the webhook URL without its token.
#[utoipa::path(
    post, path = "/webhooks/partnerstack", tag = "webhooks",
    responses((status = 401, description = "The URL lacks its token", body = ErrorBody)),
)]
pub async fn missing_token(State(state): State<AppState>) -> ApiError {
    state.metrics.delivery(DeliveryResult::Refused(
        crate::error::ErrorCode::Unauthorized,
    ));
    ApiError::unauthorized("the webhook URL needs its token: /webhooks/partnerstack/{token}")
}

/// The same, with a trailing slash.
#[utoipa::path(
    post, path = "/webhooks/partnerstack/", tag = "webhooks",
    responses((status = 401, description = "The URL lacks its token", body = ErrorBody)),
)]
pub async fn missing_token_slash(state: State<AppState>) -> ApiError {
    missing_token(state).await
}

async fn accept(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    if !state.webhook_tokens.verify(token) {
        return Err(ApiError::unauthorized("unknown webhook token"));
    }

    let limit = state.config.webhooks.body_limit.get();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    // Room in the writer's queue first: a body is read only when there is room to hold
    // it, so deliveries piling up (a stalled database, senders hanging up) cannot grow
    // memory past the queue's byte bound.
    let wanted = declared.map_or(limit, |len| usize::try_from(len).unwrap_or(limit));
    let mut room = state
        .writer
        .reserve(wanted.min(limit))
        .ok_or_else(|| ApiError::unavailable("the delivery queue is full; retry later"))?;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;

    if state.signing_keys.is_enabled() {
        let header_name = &state.config.webhooks.signature_header;
        let signature = headers
            .get(header_name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(format!("missing {header_name} signature header"))
            })?;
        if !state.signing_keys.verify(&bytes, signature) {
            return Err(ApiError::unauthorized(
                "the signature does not match the body",
            ));
        }
    }

    room.shrink_to(bytes.len());
    let body = String::from_utf8(bytes.into())
        .map_err(|_| ApiError::bad_request("the body is not valid UTF-8 JSON"))?;
    let event_type = webhook::peek_event(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be one JSON object: {e}")))?;
    let event = NewEvent {
        idempotency_key: sha256(body.as_bytes()),
        event_type,
        body,
    };
    let stored = state.writer.store(event, room).await.map_err(|e| {
        ApiError::unavailable(format!("the delivery was not stored ({e}); retry later"))
    })?;
    Ok(Accepted {
        status: crate::api::Acceptance::Accepted,
        id: stored.id,
        duplicate: stored.duplicate,
    })
}
