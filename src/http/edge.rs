//! The first and last thing every request meets, whatever its route:
//!
//! - a request target over [`MAX_TARGET_BYTES`] is 414, headers over
//!   [`MAX_HEADER_BYTES`] in total are 431, both with the JSON body;
//! - the body must arrive within `HTTP_BODY_TIMEOUT_SECS` of the headers,
//!   else reading it fails and the route answers 408;
//! - whenever the answer goes out before the whole body was read (a 401 on
//!   a POST, a 413, a 415, a 408 ...), it says `Connection: close` and the
//!   connection is closed after it, so a keep-alive client never writes its
//!   next request into a connection the relay has stopped reading.
//!
//! Body size limits are per route: [`with_body_limit`] refuses a declared
//! `Content-Length` above the route's limit at once (413, before any of the
//! body is read) and caps bodies sent without one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::time::Sleep;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// The longest request target (path and query) the relay reads.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// The most request header bytes (names, values and separators) the relay
/// reads.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The error a request body gives when it did not arrive in time.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether `err`, or anything it was caused by, is a [`BodyTimedOut`].
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        // "name: value\r\n"
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

fn target_bytes(req: &Request) -> usize {
    let uri = req.uri();
    uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
}

/// The edge middleware (see the module documentation). Layer it outside
/// every route.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let has_body = !req.body().is_end_stream();
    let refused = if target_bytes(&req) > MAX_TARGET_BYTES {
        Some(ApiError::UriTooLong(format!(
            "the request target (path and query) is longer than {MAX_TARGET_BYTES} bytes"
        )))
    } else if header_bytes(req.headers()) > MAX_HEADER_BYTES {
        Some(ApiError::HeadersTooLarge(format!(
            "the request headers are larger than {MAX_HEADER_BYTES} bytes in total"
        )))
    } else {
        None
    };
    if let Some(e) = refused {
        return closing_if(has_body, e.into_response());
    }
    if !has_body {
        return next.run(req).await;
    }
    let read_all = Arc::new(AtomicBool::new(false));
    let timeout = state.settings.http_body_timeout;
    let req = req.map(|body| {
        Body::new(GuardedBody {
            inner: body,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            read_all: read_all.clone(),
        })
    });
    let response = next.run(req).await;
    closing_if(!read_all.load(Ordering::Acquire), response)
}

/// Adds `Connection: close` when `close`; hyper then closes the connection
/// once the response is written.
fn closing_if(close: bool, mut response: Response) -> Response {
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that fails with [`BodyTimedOut`] past its deadline and
/// notes when it has been read to the end.
struct GuardedBody {
    inner: Body,
    deadline: Option<Pin<Box<Sleep>>>,
    read_all: Arc<AtomicBool>,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.read_all.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                if this.inner.is_end_stream() {
                    this.read_all.store(true, Ordering::Release);
                }
                Poll::Ready(Some(frame))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The declared body length, when there is exactly one readable
/// `Content-Length` (hyper has already refused conflicting ones).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn refuse_oversized(State(max): State<usize>, req: Request, next: Next) -> Response {
    match content_length(req.headers()) {
        Some(declared) if declared > max as u64 => ApiError::TooLarge(format!(
            "the request body is larger than this route accepts: {declared} bytes declared, at most {max} allowed"
        ))
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Gives every route of `router` a body limit of `max` bytes: a declared
/// `Content-Length` above it is 413 before anything is read, and a body
/// without one is cut off (413) once it passes `max`. Routes that need a
/// larger limit than the default live in a router of their own, merged
/// after the default was applied, with this called on it.
pub fn with_body_limit<S>(router: OpenApiRouter<S>, max: usize) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(middleware::from_fn_with_state(max, refuse_oversized))
        .layer(DefaultBodyLimit::max(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_found_through_wrapping_errors() {
        let wrapped = axum::Error::new(axum::Error::new(BodyTimedOut));
        assert!(is_body_timeout(&wrapped));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!is_body_timeout(&other));
    }

    #[test]
    fn header_bytes_count_names_values_and_separators() {
        let mut h = HeaderMap::new();
        h.insert("ab", HeaderValue::from_static("cde"));
        assert_eq!(header_bytes(&h), 2 + 3 + 4);
    }
}
