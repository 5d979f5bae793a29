//! vault-relay: hosts shared, append-only, versioned vaults for teams of
//! coding agents (atems), grants access through astation-approved sessions,
//! and pushes new entries live over WebSockets.
//!
//! A request travels one way: HTTP edge ([`http`]) → operations ([`vaults`])
//! and rules ([`auth`], [`pairing`], [`access`]) → [`store`]. Live streams ([`stream`]) are fed by the store's
//! commit notices, never by the handlers.
//!
//! - [`config`]: every setting, from flags or the environment.
//! - [`startup`]: builds the application and runs it until shutdown.
//! - [`state`]: what every handler shares (store, settings, hub).
//! - [`shutdown`]: the one shutdown signal shared by server and sockets.
//! - [`error`]: the API error type and its JSON body.
//! - [`pairing`]: astations, pending sessions and the one-time codes that
//!   grant them.
//! - [`secrets`]: random identifiers, tokens and their hashes.
//! - [`identity`]: atem id sanitizing.
//! - [`limits`]: the rate limits (failed authentications, pairings, writes).
//! - [`server`]: the accept loop and the connection timeouts.
//! - [`vaults`]: the vault operations every transport shares (rules, access,
//!   store call).
//! - [`mcp`]: the Model Context Protocol server (`/mcp`) and the stdio
//!   bridge (`vault-relay mcp`).
//! - [`metrics`]: each relay's Prometheus registry and the calls that feed
//!   it (`GET /metrics`).
//! - [`idempotency`]: `Idempotency-Key` rules for creates and writes (the
//!   store keeps keys in the write's own transaction).
//! - [`polling`]: paged history, long polls and entity tags on reads.
//! - [`encryption`]: envelopes, encryption modes per work session, the
//!   rewrite route's operation.
//! - [`cli`]: the operator subcommands (`astation`, `session`, `watch`).

pub mod access;
pub mod auth;
pub mod cli;
pub mod config;
pub mod encryption;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod identity;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod pairing;
pub mod polling;
pub mod secrets;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod store;
pub mod stream;
pub mod vaults;
