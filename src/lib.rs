//! partnerstack-sync keeps a faithful, queryable copy of a PartnerStack partner program
//! in Postgres.
//!
//! Webhooks arrive at [`ingest`], are committed raw to `webhook_events` by the ingest
//! writer, and are applied by the applier through [`apply`], the one door into the entity
//! tables. Other services read the copy through [`api`], the `/v1` query API.
//! [`partnerstack::client`] is the client for PartnerStack's v2 API; [`simulate`] is a
//! local PartnerStack stand-in for demos and tests. See
//! `ARCHITECTURE.md` for the map.

pub mod api;
pub mod app;
pub mod apply;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod http_client;
pub mod ingest;
pub mod partnerstack;
pub mod reconcile;
pub mod simulate;
pub mod telemetry;
