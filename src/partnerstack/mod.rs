//! PartnerStack's wire format (tolerant readers, object models, webhook deliveries) and
//! the v2 API client.

pub mod client;
pub mod models;
pub mod webhook;
pub mod wire;
