//! Integration tests: the real service against a real Postgres (see `common`).

mod common;
mod embedded;
mod ingest;
mod load;
mod reliability;
