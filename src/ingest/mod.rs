//! The ingest pipeline behind `POST /webhooks/partnerstack/{token}`
//! ([`crate::routes::webhook`]): the [`writer`] commits deliveries raw, in shared
//! batches, in a task no client can cancel; the [`applier`] applies stored deliveries to
//! the entity tables through [`crate::apply`], after the [`verify`]er has fetched the
//! objects they name from PartnerStack (in verified mode).

pub mod applier;
pub mod verify;
pub mod writer;
