//! PartnerStack's vocabulary and wire format: the kinds of object ([`Entity`]), tolerant
//! readers for the encodings seen in real data ([`wire`]), the objects as pure serde types
//! ([`models`]), webhook deliveries ([`webhook`]) and the v2 API client ([`client`]).
//!
//! Nothing here knows about storage or serving: no SQL, no HTTP server. What is known of
//! PartnerStack's behaviour, and from where, is in `docs/partnerstack.md`.

pub mod client;
mod entity;
pub mod http;
pub mod models;
pub mod webhook;
pub mod wire;

pub use entity::Entity;
