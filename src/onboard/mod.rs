//! From API keys to a registered sync: the operator's one-shot commands.
//!
//! - [`init`]: writes a configuration file with freshly generated secrets.
//! - [`webhooks`]: registers, lists, rotates and removes the service's webhook at
//!   PartnerStack (`/v2/webhooks`), and keeps the accepted tokens in step
//!   ([`crate::webhook_tokens`]).
//!
//! `main.rs` parses their arguments and opens what they need (the database, the client);
//! the work and what it prints are here, so tests call them as the binary does.

pub mod init;
pub mod webhooks;
