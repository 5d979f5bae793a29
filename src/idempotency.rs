//! Idempotency keys: a client that may retry a create or a content write
//! sends `Idempotency-Key: <key>`; a repeat of the same request with the same
//! key gets the first response again and writes nothing, and the same key
//! with another request is refused (422).
//!
//! Keys belong to the caller's work session and client id and live
//! `IDEMPOTENCY_TTL_SECS`. The store keeps each key in the write's own
//! transaction ([`crate::store::Store::write_entry_keyed`]), so a key holds
//! across restarts and replicas and concurrent repeats make one row. Only
//! successful writes are recorded: a request that failed wrote nothing and
//! may be sent again with the same key.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::shutdown::Shutdown;
use crate::store::{IdempotencyClaim, PriorResponse, Store, WriteKey};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 128;

/// Checks a key: 1 to 128 printable ASCII characters.
pub fn parse_key(raw: &[u8]) -> Result<String, ApiError> {
    if raw.is_empty() || raw.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} characters, not {}",
            raw.len()
        )));
    }
    if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ApiError::bad_request(
            "the Idempotency-Key header may hold only printable ASCII characters",
        ));
    }
    // All printable ASCII, so valid UTF-8.
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// The optional, checked `Idempotency-Key` of a request.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(first) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "send one Idempotency-Key header, not several",
            ));
        }
        Ok(IdempotencyKey(Some(parse_key(first.as_bytes())?)))
    }
}

/// A hash of what a request asks for: the operation, the vault and the
/// body's meaning (not its spelling, so re-serialized JSON still matches).
/// `request` is the operation's name and arguments, e.g.
/// `json!(["write", vault_id, entry_id, text])`.
pub fn fingerprint(request: &Value) -> String {
    crate::secrets::hash(&request.to_string())
}

/// The claim a keyed write makes for `key`.
pub fn claim(
    work_session: &str,
    client_id: &str,
    key: String,
    request: &Value,
    ttl: Duration,
) -> IdempotencyClaim {
    IdempotencyClaim {
        work_session: work_session.to_string(),
        client_id: client_id.to_string(),
        key,
        fingerprint: fingerprint(request),
        ttl,
    }
}

/// The response to replay for a prior use of the key, or 422 when that use
/// was another request.
pub fn replay<T: DeserializeOwned>(
    claim: &IdempotencyClaim,
    prior: &PriorResponse,
) -> Result<T, ApiError> {
    replay_for(&claim.fingerprint, prior)
}

/// The key of a session's content write, whose owner (the work session)
/// the store finds in the write itself ([`Store::write_as`]).
pub fn write_key(key: String, request: &Value, ttl: Duration) -> WriteKey {
    WriteKey {
        key,
        fingerprint: fingerprint(request),
        ttl,
    }
}

/// [`replay`] for a request with this fingerprint.
pub fn replay_for<T: DeserializeOwned>(
    fingerprint: &str,
    prior: &PriorResponse,
) -> Result<T, ApiError> {
    if prior.fingerprint != fingerprint {
        return Err(ApiError::Unprocessable(
            "this Idempotency-Key was already used for a different request (another route, \
             vault or body); use a new key for a new request"
                .into(),
        ));
    }
    serde_json::from_str(&prior.response)
        .map_err(|e| ApiError::Internal(format!("stored idempotent response unreadable: {e}")))
}

/// How often expired keys are swept: at most a minute, sooner for short
/// lifetimes (expired keys are ignored on lookup either way; the sweep only
/// keeps the table small).
pub fn sweep_interval(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Sweeps expired keys until shutdown.
pub async fn run_sweeper(store: std::sync::Arc<dyn Store>, ttl: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(sweep_interval(ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        match store.sweep_idempotency_keys().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(swept = n, "expired idempotency keys removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping idempotency keys failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_128_printable_ascii_characters() {
        assert_eq!(parse_key(b"k").ok().as_deref(), Some("k"));
        assert!(parse_key(&[b'a'; 128]).is_ok());
        assert!(parse_key(b"with space ~!").is_ok());
        assert!(parse_key(b"").is_err());
        assert!(parse_key(&[b'a'; 129]).is_err());
        assert!(parse_key(b"tab\there").is_err());
        assert!(parse_key("caf\u{e9}".as_bytes()).is_err());
    }

    #[test]
    fn fingerprints_follow_the_meaning_of_the_request() {
        let a = fingerprint(&serde_json::json!(["write", "v-1", null, "hi"]));
        assert_eq!(
            a,
            fingerprint(&serde_json::json!(["write", "v-1", null, "hi"]))
        );
        assert_ne!(
            a,
            fingerprint(&serde_json::json!(["write", "v-2", null, "hi"]))
        );
        assert_ne!(
            a,
            fingerprint(&serde_json::json!(["write", "v-1", 1, "hi"]))
        );
    }
}
