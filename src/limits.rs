//! Rate limits: token buckets refilled evenly over their period, one keyed
//! limiter per limit, all held by this process (replicas do not share them).
//!
//! - failed authentications, per client address: a request refused for an
//!   unknown or wrong secret takes a token; once an address has none left,
//!   every request from it that carries a credential gets 429 until one
//!   token is back, right credential or not (so guessing cannot go on by
//!   volume). Requests without a credential are not affected.
//! - unauthenticated pairing requests, per client address.
//! - content writes, summary changes and rewrites, per session (or link).
//!
//! A limit of 0 is off. The client address is the TCP peer, or the first
//! `X-Forwarded-For` entry when the relay is told to trust it; IPv6
//! addresses count per /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::auth::{Caller, Principal};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// How often stale buckets are dropped (see [`Limits::housekeeping`]).
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed token bucket and the time one token takes to come back.
struct Bucket<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    refill: Duration,
}

/// What [`Bucket::take`] found.
enum Taken {
    /// A token was taken; `last` says it was the last one.
    Ok { last: bool },
    /// No token left; one is back after this long.
    Empty(Duration),
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    /// `per` tokens per `period`, all available at once; `None` when `per`
    /// is 0 (the limit is off).
    fn new(per: u32, period: Duration) -> Option<Self> {
        let per = NonZeroU32::new(per)?;
        let refill = period / per.get();
        let quota = Quota::with_period(refill)?.allow_burst(per);
        Some(Self {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            refill,
        })
    }

    fn take(&self, key: &K) -> Taken {
        match self.limiter.check_key(key) {
            Ok(state) => Taken::Ok {
                last: state.remaining_burst_capacity() == 0,
            },
            Err(not_until) => Taken::Empty(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The client address a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The address of a request: the first `X-Forwarded-For` entry when
    /// `trust_forwarded_for` (and it parses), else the TCP peer.
    pub fn from_request(
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        trust_forwarded_for: bool,
    ) -> Self {
        let forwarded = trust_forwarded_for
            .then(|| headers.get("x-forwarded-for")?.to_str().ok())
            .flatten()
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        let ip = forwarded
            .or(peer.map(|p| p.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        ClientAddr(ip.to_canonical())
    }

    /// The key its buckets are kept under: the address itself for IPv4, its
    /// /64 for IPv6.
    fn key(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }
    }

    /// The address of the request `parts` belong to (the accept loop puts
    /// the TCP peer in its extensions).
    pub fn of(parts: &Parts, limits: &Limits) -> Self {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        ClientAddr::from_request(&parts.headers, peer, limits.trust_forwarded_for)
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(parts, &state.limits))
    }
}

/// Whole seconds to wait, never 0 (a client told 0 would retry at once).
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn too_many(message: String, wait: Duration) -> ApiError {
    ApiError::TooManyRequests {
        message,
        retry_after_secs: retry_after_secs(wait),
    }
}

/// Every rate limit of the relay.
pub struct Limits {
    auth_failures: Option<Bucket<IpAddr>>,
    /// Addresses that used up their failed-authentication allowance, and
    /// when a token is back. Kept apart from the bucket so a request can be
    /// refused without taking a token.
    auth_blocked: Mutex<HashMap<IpAddr, Instant>>,
    pairings: Option<Bucket<IpAddr>>,
    writes: Option<Bucket<String>>,
    /// Whether `X-Forwarded-For` names the client (behind a proxy).
    pub trust_forwarded_for: bool,
    /// Where refusals are counted (`vault_relay_rate_limited_total`).
    metrics: Metrics,
}

impl Limits {
    /// The limits the configuration asks for.
    pub fn new(config: &Config) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            auth_failures: Bucket::new(config.rate_limit_auth_failures_per_min, minute),
            auth_blocked: Mutex::new(HashMap::new()),
            pairings: Bucket::new(config.rate_limit_pairings_per_min, minute),
            writes: Bucket::new(config.rate_limit_writes_per_sec, Duration::from_secs(1)),
            trust_forwarded_for: config.trust_forwarded_for,
            metrics: Metrics::new(),
        }
    }

    /// Counts refusals in the relay's own metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // The map holds plain values; a panic elsewhere cannot leave it
        // half-updated.
        self.auth_blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// 429 when `addr` has used up its failed-authentication allowance.
    /// Call before checking a credential the client presented.
    pub fn check_credential(&self, addr: ClientAddr) -> Result<(), ApiError> {
        if self.auth_failures.is_none() {
            return Ok(());
        }
        let key = addr.key();
        let mut blocked = self.blocked();
        let Some(until) = blocked.get(&key).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            blocked.remove(&key);
            return Ok(());
        }
        self.metrics.rate_limited("auth_failures");
        Err(too_many(
            "too many requests with a wrong or unknown credential from your address; \
             wait before trying again"
                .into(),
            until - now,
        ))
    }

    /// Counts a request refused for an unknown or wrong secret.
    pub fn record_auth_failure(&self, addr: ClientAddr) {
        let Some(bucket) = &self.auth_failures else {
            return;
        };
        let key = addr.key();
        let wait = match bucket.take(&key) {
            Taken::Ok { last: false } => return,
            Taken::Ok { last: true } => bucket.refill,
            Taken::Empty(wait) => wait,
        };
        self.blocked().insert(key, Instant::now() + wait);
    }

    /// Runs `check`, the resolution of a credential the client presented,
    /// under the failed-authentication limit: refused at once when the
    /// address is over it, and counted when the secret is unknown or wrong
    /// ([`ApiError::WrongSecret`]).
    pub async fn guard_credential<T>(
        &self,
        addr: ClientAddr,
        check: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        self.check_credential(addr)?;
        let result = check.await;
        if let Err(ApiError::WrongSecret(_)) = &result {
            self.record_auth_failure(addr);
        }
        result
    }

    /// Takes a token for an unauthenticated pairing request from `addr`.
    pub fn check_pairing(&self, addr: ClientAddr) -> Result<(), ApiError> {
        let Some(bucket) = &self.pairings else {
            return Ok(());
        };
        match bucket.take(&addr.key()) {
            Taken::Ok { .. } => Ok(()),
            Taken::Empty(wait) => Err(self.refused(
                "pairings",
                "too many pairing requests from your address; wait before starting another",
                wait,
            )),
        }
    }

    /// Takes a token for a write by `caller`: a content write, a summary
    /// change or a rewrite. Counted per session (per link for links), so
    /// every client of one session shares the allowance. Every operation
    /// that changes a vault calls this before it touches the store.
    pub fn check_write(&self, caller: &Caller) -> Result<(), ApiError> {
        match &caller.principal {
            Principal::Session { session_hash, .. } => self.check_write_for(session_hash),
            Principal::Link { link_id, .. } => self.check_write_for(link_id),
        }
    }

    /// [`Limits::check_write`] by the session's hash (or the link's id), for
    /// a write whose session is checked inside the write itself.
    pub fn check_write_for(&self, key: &str) -> Result<(), ApiError> {
        let Some(bucket) = &self.writes else {
            return Ok(());
        };
        match bucket.take(&key.to_string()) {
            Taken::Ok { .. } => Ok(()),
            Taken::Empty(wait) => Err(self.refused(
                "writes",
                "this session writes faster than the relay accepts; slow down",
                wait,
            )),
        }
    }

    /// A 429 from the limit named `limit`, counted.
    fn refused(&self, limit: &'static str, message: &str, wait: Duration) -> ApiError {
        self.metrics.rate_limited(limit);
        too_many(message.to_string(), wait)
    }

    /// Drops buckets that are full again and addresses no longer blocked,
    /// so the memory held follows recent traffic, not all traffic ever.
    pub fn housekeeping(&self) {
        for bucket in [&self.auth_failures, &self.pairings].into_iter().flatten() {
            bucket.housekeeping();
        }
        if let Some(bucket) = &self.writes {
            bucket.housekeeping();
        }
        let now = Instant::now();
        let mut blocked = self.blocked();
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(auth: u32, pairings: u32, writes: u32) -> Config {
        let mut c = Config::for_tests();
        c.rate_limit_auth_failures_per_min = auth;
        c.rate_limit_pairings_per_min = pairings;
        c.rate_limit_writes_per_sec = writes;
        c
    }

    fn addr(s: &str) -> ClientAddr {
        ClientAddr(s.parse().unwrap())
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn failures_block_every_credential_once_used_up() {
        let limits = Limits::new(&config(3, 0, 0));
        let a = addr("192.0.2.1");
        for _ in 0..3 {
            assert!(limits.check_credential(a).is_ok());
            limits.record_auth_failure(a);
        }
        match limits.check_credential(a) {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert!((1..=20).contains(&retry_after_secs)),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another address is not affected.
        assert!(limits.check_credential(addr("192.0.2.2")).is_ok());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Limits::new(&config(0, 0, 0));
        let a = addr("192.0.2.1");
        for _ in 0..1000 {
            limits.record_auth_failure(a);
            assert!(limits.check_pairing(a).is_ok());
        }
        assert!(limits.check_credential(a).is_ok());
    }

    #[test]
    fn pairings_are_counted_per_address() {
        let limits = Limits::new(&config(0, 2, 0));
        let a = addr("192.0.2.1");
        assert!(limits.check_pairing(a).is_ok());
        assert!(limits.check_pairing(a).is_ok());
        assert!(matches!(
            limits.check_pairing(a),
            Err(ApiError::TooManyRequests { .. })
        ));
        assert!(limits.check_pairing(addr("192.0.2.9")).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            addr("2001:db8:1:2:aaaa::1").key(),
            addr("2001:db8:1:2:bbbb::2").key()
        );
        assert_ne!(addr("2001:db8:1:2::1").key(), addr("2001:db8:1:3::1").key());
        let mapped = ClientAddr::from_request(
            &HeaderMap::new(),
            Some("[::ffff:192.0.2.7]:5000".parse().unwrap()),
            false,
        );
        assert_eq!(mapped, addr("192.0.2.7"));
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.5, 10.0.0.1".parse().unwrap());
        let peer = Some("10.0.0.1:4000".parse().unwrap());
        assert_eq!(
            ClientAddr::from_request(&headers, peer, true),
            addr("203.0.113.5")
        );
        assert_eq!(
            ClientAddr::from_request(&headers, peer, false),
            addr("10.0.0.1")
        );
        headers.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(
            ClientAddr::from_request(&headers, peer, true),
            addr("10.0.0.1")
        );
    }
}
