//! Writes to PartnerStack through the service: accepted by `/v1` ([`crate::api::writes`]),
//! committed to the outbox (`writes`, see [`crate::db::writes`]) before the caller gets an
//! answer, and sent by the [`worker`] with exactly one upstream effect per write.
//!
//! A write is a [`Request`] ([`request`]), made of values that check themselves
//! ([`fields`]), then a [`crate::db::writes::NewWrite`]: its idempotency key (the
//! `Idempotency-Key` header, else the object's own key), a digest of the request (a repeat
//! with another body is refused), and the customers it concerns (writes about one customer
//! are sent in the order they were accepted).

pub mod confirm;
pub mod fields;
pub mod request;
pub mod worker;

use std::sync::Arc;

use tokio::sync::Notify;

pub use request::Request;

/// What the API and the worker share: the worker is woken when a write is accepted, and
/// waiters when one finishes.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// A write was accepted on this replica.
    pub accepted: Arc<Notify>,
    /// A write finished on this replica.
    pub finished: Arc<Notify>,
}
