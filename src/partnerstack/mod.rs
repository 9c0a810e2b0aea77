//! PartnerStack's wire format: tolerant readers, object models and webhook deliveries.

pub mod models;
pub mod webhook;
pub mod wire;
