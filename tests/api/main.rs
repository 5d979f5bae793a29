//! The relay's integration tests: one binary, the real app on 127.0.0.1:0.
//! Postgres tests take their server from TEST_DATABASE_URL (./scripts/test
//! sets it up) and create one database each.

mod helpers;
mod raw;

mod admin;
mod binary;
mod browser;
mod cli;
mod edge;
mod encryption;
mod errors;
mod events;
mod hostile;
mod idempotency;
mod limits;
mod links;
mod logs;
mod mcp;
mod metrics;
mod openapi;
mod pg_only;
mod polling;
mod sessions;
mod shutdown;
mod store;
mod stream;
mod stream_limits;
mod strict;
mod vaults;
mod writes;
