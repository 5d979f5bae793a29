//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::stream::Hub;

/// Settings the handlers read, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// SHA-256 of the admin token.
    pub admin_token_hash: String,
    pub max_entry_bytes: usize,
    pub max_body_bytes: usize,
    pub pairing_ttl: Duration,
    pub link_ttl: Duration,
    pub public_base_url: Option<String>,
    pub stream_ping: Duration,
    pub stream_buffer_frames: usize,
    pub stream_send_timeout: Duration,
    /// `/metrics` answers without the admin token.
    pub metrics_public: bool,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_ttl: Duration,
    /// Body limit of the rewrite route (`MAX_REWRITE_BODY_BYTES`).
    pub max_rewrite_body_bytes: usize,
    pub stream_max_client_frames_per_sec: u32,
    /// How long a request body may take to arrive; `None` is no limit.
    pub http_body_timeout: Option<Duration>,
}

impl Settings {
    /// Settings from the configuration and the (given or generated) admin
    /// token.
    pub fn new(config: &Config, admin_token: &str) -> Self {
        Self {
            admin_token_hash: crate::secrets::hash(admin_token),
            max_entry_bytes: config.max_entry_bytes,
            max_body_bytes: config.max_body_bytes,
            pairing_ttl: Duration::from_secs(config.pairing_ttl_secs),
            link_ttl: Duration::from_secs(config.link_ttl_secs),
            public_base_url: config
                .public_base_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            stream_ping: Duration::from_secs(config.stream_ping_secs.max(1)),
            stream_buffer_frames: config.stream_buffer_frames.max(16),
            stream_send_timeout: Duration::from_millis(config.stream_send_timeout_ms.max(100)),
            metrics_public: config.metrics_public,
            idempotency_ttl: Duration::from_secs(config.idempotency_ttl_secs.max(1)),
            max_rewrite_body_bytes: config.max_rewrite_body_bytes,
            stream_max_client_frames_per_sec: config.stream_max_client_frames_per_sec,
            http_body_timeout: secs_or_off(config.http_body_timeout_secs),
        }
    }
}

/// A duration in seconds, or `None` for 0 (no limit).
pub fn secs_or_off(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The state behind every route: one shared [`Shared`], so that the clones
/// axum makes of it for every request (each middleware layer and handler
/// takes its own) cost one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub settings: Arc<Settings>,
    pub hub: Hub,
    pub shutdown: Shutdown,
    /// This relay's metrics registry.
    pub metrics: Metrics,
    /// The bound on held long polls.
    pub long_polls: crate::polling::LongPolls,
    /// The rate limits ([`crate::limits`]).
    pub limits: Arc<Limits>,
    /// Stream opens that may be checking their request at once, within
    /// their turn (see [`check_slots`]).
    pub stream_checks: Arc<tokio::sync::Semaphore>,
    /// Stream opens in progress at once, checks and greeting (see
    /// [`opening_slots`]).
    pub stream_openings: Arc<tokio::sync::Semaphore>,
}

/// Stream opens in progress at once, per worker thread, by default.
pub const OPENING_PER_WORKER: usize = 16;

/// How many stream opens may be in progress at once, from their checks to
/// the end of their greeting. A reconnect storm is ten thousand opens at
/// once, and the runtime runs tasks in the order they became ready: with
/// every open in progress together, thousands of their tasks queue ahead
/// of each REST request that arrives meanwhile (REST reads of 30 to 140 ms
/// at p99 during a storm, while each took 15 µs in its route). Opens beyond
/// this number wait for a turn without being scheduled, and each turn
/// lasts at least `stream::flow::TURN_AT_LEAST`, which leaves the relay
/// time for everything else (docs/benchmarks.md). The replay is not part
/// of the turn: a subscriber far behind must not hold up the opens after
/// it. The greeting cannot hold a turn for long, even for a client that
/// does not read: its frames (a few KiB at most) fit in the socket's send
/// buffer.
pub fn opening_slots(config: &Config, workers: usize) -> usize {
    match config.stream_max_opening {
        0 => OPENING_PER_WORKER * workers.max(1),
        n => n,
    }
}

/// Stream opens running their checks at once, per worker thread, by
/// default on Postgres.
pub const CHECKING_PER_WORKER: usize = 2;

/// How many stream opens may run their checks (credential, vault: one store
/// round trip) at once. A reconnect storm is ten thousand opens at once:
/// unbounded, they queue for every database connection ahead of the REST
/// requests and writes that arrive meanwhile; and even with connections to
/// spare, each query running beside them shares Postgres's CPU with theirs.
/// With the 13 that the pool allowed, REST reads during a storm waited
/// p50 8.5 to 10.3 ms and p99 29 to 110 ms on a 2-core machine shared with
/// Postgres; with 4 (2 per worker thread), p50 3.0 to 4.3 ms and p99 23 to
/// 46 ms, the 10,000 streams opening in 2.8 to 4.2 s instead of 2.7 to
/// 3.5 s (docs/benchmarks.md). With Postgres they never hold more than all
/// of the pool but three connections (the LISTEN connection, which the
/// pool counts; the one the writer keeps between batches, see
/// `store::postgres::batch`; and one more), and at least one, so REST
/// requests never wait for the pool behind them. The memory store has no pool and
/// no database to share a CPU with: no bound unless one is set.
pub fn check_slots(config: &Config, workers: usize) -> usize {
    let set = config.stream_max_checking;
    if config.database_url.is_none() {
        return if set == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            set
        };
    }
    let wanted = if set == 0 {
        CHECKING_PER_WORKER * workers.max(1)
    } else {
        set
    };
    let pool_but_three = (config.database_max_connections as usize)
        .saturating_sub(3)
        .max(1);
    wanted.min(pool_but_three)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn opening_slots_default_to_16_per_worker_and_follow_the_setting() {
        let mut config = crate::config::Cli::parse_from(["vault-relay"]).config;
        assert_eq!(opening_slots(&config, 2), 32);
        assert_eq!(opening_slots(&config, 0), OPENING_PER_WORKER);
        config.stream_max_opening = 5;
        assert_eq!(opening_slots(&config, 8), 5);
    }

    #[test]
    fn check_slots_default_to_2_per_worker_on_postgres_within_the_pool() {
        let mut config = crate::config::Cli::parse_from(["vault-relay"]).config;
        // The memory store: no bound unless one is set.
        assert_eq!(check_slots(&config, 2), tokio::sync::Semaphore::MAX_PERMITS);
        config.stream_max_checking = 3;
        assert_eq!(check_slots(&config, 2), 3);
        config.database_url = Some("postgres://relay@db/relay".into());
        config.stream_max_checking = 0;
        assert_eq!(check_slots(&config, 2), 4);
        assert_eq!(check_slots(&config, 0), CHECKING_PER_WORKER);
        // Never more than the pool but three, set or not.
        config.database_max_connections = 5;
        assert_eq!(check_slots(&config, 2), 2);
        config.stream_max_checking = 50;
        assert_eq!(check_slots(&config, 2), 2);
        config.database_max_connections = 2;
        assert_eq!(check_slots(&config, 2), 1);
    }
}
