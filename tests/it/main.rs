//! Integration tests: the real service against a real Postgres (see `common`).

mod api;
mod common;
mod embedded;
mod ingest;
