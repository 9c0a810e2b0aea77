//! Integration tests: the real service against a real Postgres (see `common`).

// Test helpers panic on what the test did not expect; that is their job.
#![allow(clippy::unwrap_used)]

mod access;
mod alerting;
mod api;
mod archives;
mod budget;
mod changes;
mod check;
mod cli;
mod client;
mod common;
mod conformance;
mod crowds;
mod demo;
mod deploy;
mod embedded;
mod fidelity;
mod ingest;
mod legacy_dialect;
mod load;
mod metrics;
mod monitoring;
mod netns;
mod onboard;
mod reconcile;
mod relay;
mod reliability;
mod schema;
mod simulate;
mod status;
mod tools;
mod topology;
mod totals;
mod truth;
mod writes;
