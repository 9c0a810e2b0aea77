//! Integration tests: the real service against a real Postgres (see `common`).

mod api;
mod brief;
mod client;
mod common;
mod embedded;
mod ingest;
mod load;
mod reconcile;
mod reliability;
mod simulate;
