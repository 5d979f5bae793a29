//! Cheap reads: paged history (`limit`), long polls (`wait`) and entity
//! tags (`ETag` / `If-None-Match`) on `GET /api/vault/<id>`.
//!
//! - A long poll is held on a hub subscription ([`crate::stream::Hub::watch`]),
//!   the same fan-out that feeds the streams, so a commit on any replica wakes
//!   it. A process holds at most `LONG_POLL_MAX` of them; one more is refused
//!   with 503 and `Retry-After`. Shutdown answers held polls at once; a
//!   revocation (or a link's expiry) answers its credential's polls with
//!   401, as the streams close.
//! - A tag names the store's epoch, the vault, its head seq (read before the
//!   rows) and the query. Rows are never changed in place and every write
//!   moves the head, so the tag changes whenever the answer would. A tag
//!   computed from an older head than the rows it went with only costs the
//!   client one full answer later; the reverse cannot happen.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::View;
use crate::stream::Event;

/// The most rows one page of history holds.
pub const MAX_LIMIT: i64 = 1000;
/// The longest a long poll may ask to be held, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// What a refused long poll is told to wait before trying again.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// What a read asks for, beyond the vault.
#[derive(Clone, Debug, Default)]
pub struct ReadRequest {
    pub view: View,
    /// Only rows with `seq > since`; `None` is "from the start".
    pub since: Option<i64>,
    /// Paged history: at most this many rows.
    pub limit: Option<i64>,
    /// Long poll: hold this long for a row when none qualifies.
    pub wait: Option<Duration>,
    /// The tags the client already holds (`If-None-Match`).
    pub if_none_match: Option<String>,
}

/// Parses `limit`: an integer from 1 to [`MAX_LIMIT`].
pub fn parse_limit(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(n))
        }
        _ => Err(ApiError::bad_request(format!(
            "`limit` must be an integer from 1 to {MAX_LIMIT}, not `{raw}`"
        ))),
    }
}

/// Parses `wait`: whole seconds from 1 to [`MAX_WAIT_SECS`].
pub fn parse_wait(raw: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.parse::<u64>() {
        Ok(n) if (1..=MAX_WAIT_SECS).contains(&n) && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(Duration::from_secs(n)))
        }
        _ => Err(ApiError::bad_request(format!(
            "`wait` must be whole seconds from 1 to {MAX_WAIT_SECS}, not `{raw}`"
        ))),
    }
}

/// Checks how the parameters combine: `limit` pages history only, and a
/// long poll needs the cursor it waits beyond.
pub fn check(req: &ReadRequest) -> Result<(), ApiError> {
    if req.limit.is_some() && req.view != View::History {
        return Err(ApiError::bad_request(
            "`limit` pages the history: use it with `history=true`",
        ));
    }
    if req.wait.is_some() && req.since.is_none() {
        return Err(ApiError::bad_request(
            "`wait` needs `since`: the long poll waits for rows after that seq",
        ));
    }
    Ok(())
}

/// The tag of the answer to `req` while the vault's head is `head_seq`.
pub fn etag(epoch: &str, vault_id: &str, head_seq: i64, req: &ReadRequest) -> String {
    let view = match req.view {
        View::Current => "current",
        View::History => "history",
    };
    let since = req.since.unwrap_or(0);
    let limit = req.limit.unwrap_or(0);
    let hash = crate::secrets::hash(&format!(
        "{epoch}\n{vault_id}\n{head_seq}\n{view}\n{since}\n{limit}"
    ));
    format!("\"{}\"", &hash[..32])
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as
/// RFC 9110 asks for this header; `*` names any).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = etag.trim_start_matches("W/");
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

/// The next page's URL: the same request with `since` set to `next_since`.
/// `raw_query` is the request's query string as sent; its other parameters
/// keep their order and spelling.
pub fn next_link(base: &str, path: &str, raw_query: &str, next_since: i64) -> String {
    let mut params: Vec<String> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            // Named as the route decodes it: `%73ince` is `since` too.
            if crate::http::query::name_of(p) == "since" {
                format!("since={next_since}")
            } else {
                p.to_string()
            }
        })
        .collect();
    if !params
        .iter()
        .any(|p| crate::http::query::name_of(p) == "since")
    {
        params.push(format!("since={next_since}"));
    }
    format!("<{base}{path}?{}>; rel=\"next\"", params.join("&"))
}

/// The process's bound on held long polls.
#[derive(Clone, Debug)]
pub struct LongPolls {
    permits: Arc<Semaphore>,
    max: usize,
}

impl LongPolls {
    /// Room for `max` held polls (0: none are held; every wait is refused).
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// How many polls are held right now.
    pub fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    fn hold(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy {
                message: format!(
                    "this relay already holds {} long polls (LONG_POLL_MAX); retry shortly or \
                     use the stream",
                    self.max
                ),
                retry_after_secs: BUSY_RETRY_AFTER_SECS,
            })
    }
}

/// Holds a long poll until a row with `seq > since` commits in the vault,
/// `wait` passes or the relay shuts down. `head_seq` is the vault's head as
/// read before the call (at most `since`). Returns the head to answer from:
/// above `since` when a row arrived, else `head_seq`. A poll whose
/// credential is revoked (or, for a link, expires) while it is held is
/// answered at once with the 401 its next request would get, so that it
/// never returns rows committed after its access ended.
pub async fn wait_for_row(
    state: &AppState,
    principal: &Principal,
    vault_id: &str,
    head_seq: i64,
    since: i64,
    wait: Duration,
) -> Result<i64, ApiError> {
    let _held = (state.long_polls.hold()?, state.metrics.long_poll_held());
    let mut sub = state.hub.watch(vault_id, head_seq);
    // A row may have committed, or the credential been revoked, between the
    // caller's checks and subscribing; from here on both reach the
    // subscription. Whenever rows are found, the credential is checked
    // after they were seen: a row committed after a revocation is only
    // seen after the revocation, so it is never the answer.
    let head = current_head(state, vault_id).await?;
    auth::still_valid(state.store.as_ref(), principal).await?;
    if head > since {
        return Ok(head);
    }
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let expiry = async {
        match principal {
            Principal::Link { expires_at, .. } => {
                let left = (*expires_at - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(left).await
            }
            Principal::Session { .. } => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            biased;
            _ = &mut expiry => {
                return Err(ApiError::Unauthorized("this link has expired".into()));
            }
            event = sub.recv() => match event {
                Ok(Event::Entry { seq, .. }) if seq > since => {
                    // The hub may carry a row before a revocation committed
                    // earlier (a row committed here goes out at once, the
                    // revocation comes as a notice): ask the store.
                    auth::still_valid(state.store.as_ref(), principal).await?;
                    return Ok(seq);
                }
                Ok(Event::Revoked(r)) if principal.revoked_by(&r) => {
                    return Err(access_ended(state, principal).await);
                }
                Ok(_) => {}
                // Missed events: ask the store what is committed, and
                // whether a revocation was among them.
                Err(RecvError::Lagged(_)) => {
                    let head = current_head(state, vault_id).await?;
                    auth::still_valid(state.store.as_ref(), principal).await?;
                    if head > since {
                        return Ok(head);
                    }
                }
                Err(RecvError::Closed) => return Ok(head_seq),
            },
            _ = &mut deadline => return Ok(head_seq),
            _ = state.shutdown.wait() => return Ok(head_seq),
        }
    }
}

/// The refusal for a principal whose revocation was announced: what its
/// next request is told (the store records a revocation before announcing
/// it).
async fn access_ended(state: &AppState, principal: &Principal) -> ApiError {
    match auth::still_valid(state.store.as_ref(), principal).await {
        Err(refusal) => refusal,
        Ok(()) => ApiError::Unauthorized("this credential was revoked".into()),
    }
}

async fn current_head(state: &AppState, vault_id: &str) -> Result<i64, ApiError> {
    Ok(state
        .store
        .vault(vault_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such vault".into()))?
        .head_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_waits_have_ranges() {
        assert_eq!(parse_limit(None).ok(), Some(None));
        assert_eq!(parse_limit(Some("1000")).ok(), Some(Some(1000)));
        for bad in ["0", "1001", "-1", "+5", "a", "", "1.5"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            parse_wait(Some("60")).ok(),
            Some(Some(Duration::from_secs(60)))
        );
        for bad in ["0", "61", "-1", "1.5", "", "x"] {
            assert!(parse_wait(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_follow_head_and_query() {
        let req = ReadRequest::default();
        let t = etag("e", "v", 3, &req);
        assert_eq!(t, etag("e", "v", 3, &req));
        assert_ne!(t, etag("e", "v", 4, &req));
        assert_ne!(t, etag("f", "v", 3, &req));
        let history = ReadRequest {
            view: View::History,
            ..ReadRequest::default()
        };
        assert_ne!(t, etag("e", "v", 3, &history));
        assert!(etag_matches(&t, &t));
        assert!(etag_matches(&format!("\"x\", W/{t}"), &t));
        assert!(etag_matches("*", &t));
        assert!(!etag_matches("\"x\"", &t));
    }

    #[test]
    fn the_next_link_replaces_since_and_keeps_the_rest() {
        assert_eq!(
            next_link(
                "http://h",
                "/api/vault/v",
                "id=c&history=true&since=4&limit=2",
                9
            ),
            "<http://h/api/vault/v?id=c&history=true&since=9&limit=2>; rel=\"next\""
        );
        assert_eq!(
            next_link(
                "http://h",
                "/api/vault/v",
                "id=c%20d&history=true&limit=2",
                9
            ),
            "<http://h/api/vault/v?id=c%20d&history=true&limit=2&since=9>; rel=\"next\""
        );
        // However the client spelled the name.
        assert_eq!(
            next_link("http://h", "/v", "%73ince=4&limit=2&history=true", 9),
            "<http://h/v?since=9&limit=2&history=true>; rel=\"next\""
        );
    }
}
