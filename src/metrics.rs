//! Prometheus metrics, served at `GET /metrics`.
//!
//! Each relay holds its own registry in a [`Metrics`] handle (in
//! [`crate::state::AppState`]), rather than the `metrics` crate's global
//! recorder: a test process starts many relays, and each must count only
//! its own traffic. So do not call the `metrics::counter!` macros directly
//! (they would go to the global recorder, which nothing renders); call the
//! named methods here, which is also what keeps every label bounded:
//!
//! | call | series |
//! |---|---|
//! | (the HTTP middleware, [`track_http`]) | `vault_relay_http_requests_total{route,method,status}`, `vault_relay_http_request_duration_seconds{route,method}` |
//! | [`Metrics::write`]`(WriteKind)` | `vault_relay_writes_total{kind}` |
//! | [`Metrics::stream_opened`]`(Transport)`, keep the guard while the stream lives | `vault_relay_streams_open{transport}` |
//! | [`Metrics::frames_sent`]`(n)` | `vault_relay_stream_frames_sent_total` |
//! | [`Metrics::stream_closed`]`(code)` | `vault_relay_stream_closes_total{code}` |
//! | [`Metrics::rate_limited`]`(limit)` | `vault_relay_rate_limited_total{limit}` |
//! | [`Metrics::long_poll_held`], keep the guard while the poll is held | `vault_relay_long_polls_held` |
//! | (sampled from [`Store::stats`] at each scrape) | `vault_relay_listener_reconnects_total`, `vault_relay_db_pool_connections{state}` |
//!
//! Labels never carry a concrete path, an id or a client's words: `route`
//! is the route template (`/api/vault/{vault_id}`), `method` one of the
//! standard methods or `other`, `code` a close code in the ranges the relay
//! uses or `other`, and the rest are fixed names chosen in code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::state::AppState;
use crate::store::Store;

/// The `route` label of requests no route matched (the viewer's files, and
/// any other path outside `/api`).
pub const UNMATCHED_ROUTE: &str = "(static)";

const HTTP_REQUESTS: &str = "vault_relay_http_requests_total";
const HTTP_DURATION: &str = "vault_relay_http_request_duration_seconds";
const WRITES: &str = "vault_relay_writes_total";
const STREAMS_OPEN: &str = "vault_relay_streams_open";
const FRAMES_SENT: &str = "vault_relay_stream_frames_sent_total";
const STREAM_CLOSES: &str = "vault_relay_stream_closes_total";
const RATE_LIMITED: &str = "vault_relay_rate_limited_total";
const LISTENER_RECONNECTS: &str = "vault_relay_listener_reconnects_total";
const DB_POOL: &str = "vault_relay_db_pool_connections";
const LONG_POLLS_HELD: &str = "vault_relay_long_polls_held";

/// Upper bounds (seconds) of the request duration histogram: from a cached
/// read to a long poll's 60 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets. Without it
/// a relay nobody scrapes would keep every sample.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What a content or summary write was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A new entry (version 1).
    Append,
    /// A new version of an existing entry.
    Edit,
    /// A summary change.
    Summary,
    /// A vault rewritten in place for an encryption mode change.
    Rewrite,
}

impl WriteKind {
    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Append => "append",
            WriteKind::Edit => "edit",
            WriteKind::Summary => "summary",
            WriteKind::Rewrite => "rewrite",
        }
    }
}

/// How a stream reaches its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `GET /api/vault/{vault_id}/stream`.
    WebSocket,
    /// `GET /api/vault/{vault_id}/events`.
    Sse,
}

impl Transport {
    /// The `transport` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// One relay's metrics registry. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// `vault_relay_stream_frames_sent_total`, looked up once: every burst
    /// of every stream counts into it, and a lookup by name hashes the key
    /// each time.
    frames: metrics::Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh, empty registry with every series described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(HTTP_DURATION.into()),
                &DURATION_BUCKETS,
            )
            // The bucket list is a non-empty constant: this cannot fail.
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let frames = metrics::with_local_recorder(&recorder, || counter!(FRAMES_SENT));
        let metrics = Self {
            recorder: Arc::new(recorder),
            handle,
            frames,
        };
        metrics.with(|| {
            describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template, method and status.");
            describe_histogram!(HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request (to the response head; streams count until the upgrade or the first byte).");
            describe_counter!(WRITES, "Committed writes, by kind (append, edit, summary, rewrite).");
            describe_gauge!(STREAMS_OPEN, "Streams open now, by transport (websocket, sse).");
            describe_counter!(FRAMES_SENT, "Frames sent on streams, all transports.");
            describe_counter!(STREAM_CLOSES, "Streams the relay closed, by close code.");
            describe_counter!(RATE_LIMITED, "Requests refused with 429, by limit.");
            describe_counter!(LISTENER_RECONNECTS, "Times the Postgres LISTEN connection was re-established after it dropped.");
            describe_gauge!(DB_POOL, "Postgres pool connections, by state (idle, busy).");
            describe_gauge!(LONG_POLLS_HELD, "Long polls (wait=) held now, waiting for a row (at most LONG_POLL_MAX).");
            gauge!(LONG_POLLS_HELD).set(0.0);
            // Present from the first scrape, so a rate() has a start.
            counter!(FRAMES_SENT).absolute(0);
            for k in [WriteKind::Append, WriteKind::Edit, WriteKind::Summary, WriteKind::Rewrite] {
                counter!(WRITES, "kind" => k.as_str()).absolute(0);
            }
            for t in [Transport::WebSocket, Transport::Sse] {
                gauge!(STREAMS_OPEN, "transport" => t.as_str()).set(0.0);
            }
        });
        metrics
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), f)
    }

    /// Counts one answered HTTP request. `route` is the matched route
    /// template, or [`UNMATCHED_ROUTE`].
    pub fn http_request(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.with(|| {
            counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method, "status" => status.to_string())
                .increment(1);
            histogram(route, method).record(elapsed.as_secs_f64());
        });
    }

    /// Counts one committed write.
    pub fn write(&self, kind: WriteKind) {
        self.with(|| counter!(WRITES, "kind" => kind.as_str()).increment(1));
    }

    /// Counts a stream as open until the returned guard is dropped.
    pub fn stream_opened(&self, transport: Transport) -> OpenStream {
        self.with(|| gauge!(STREAMS_OPEN, "transport" => transport.as_str()).increment(1.0));
        OpenStream {
            metrics: self.clone(),
            transport,
        }
    }

    /// Counts a long poll as held until the returned guard is dropped.
    pub fn long_poll_held(&self) -> HeldPoll {
        self.with(|| gauge!(LONG_POLLS_HELD).increment(1.0));
        HeldPoll {
            metrics: self.clone(),
        }
    }

    /// Counts `n` frames sent on a stream.
    pub fn frames_sent(&self, n: u64) {
        if n > 0 {
            self.frames.increment(n);
        }
    }

    /// Counts a stream the relay closed with `code` (a WebSocket close code;
    /// the SSE `close` event carries the same codes).
    pub fn stream_closed(&self, code: u16) {
        let label = close_code_label(code);
        self.with(|| counter!(STREAM_CLOSES, "code" => label).increment(1));
    }

    /// Counts one request refused by the rate limit named `limit` (a fixed
    /// name such as `auth_failures`, `pairings`, `writes`).
    pub fn rate_limited(&self, limit: &'static str) {
        self.with(|| counter!(RATE_LIMITED, "limit" => limit).increment(1));
    }

    /// Folds histogram samples into their buckets; run every
    /// [`UPKEEP_EVERY`] (see [`Metrics::spawn_upkeep`]).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs [`Metrics::upkeep`] every [`UPKEEP_EVERY`] until `shutdown`.
    pub fn spawn_upkeep(&self, shutdown: crate::shutdown::Shutdown) {
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            let stopping = shutdown.wait();
            tokio::pin!(stopping);
            loop {
                tokio::select! {
                    _ = tick.tick() => metrics.upkeep(),
                    _ = &mut stopping => return,
                }
            }
        });
    }

    /// The Prometheus text exposition, with the store's figures sampled now.
    pub fn render(&self, store: &dyn Store) -> String {
        let stats = store.stats();
        self.with(|| {
            counter!(LISTENER_RECONNECTS).absolute(stats.listener_reconnects);
            if let Some(pool) = stats.pool {
                gauge!(DB_POOL, "state" => "idle").set(pool.idle as f64);
                gauge!(DB_POOL, "state" => "busy").set(pool.busy as f64);
            }
        });
        self.handle.render()
    }
}

fn histogram(route: &str, method: &'static str) -> metrics::Histogram {
    metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method)
}

/// A stream counted in `vault_relay_streams_open`; dropping it uncounts it,
/// however the stream ends.
#[must_use = "the stream counts as open only while this guard lives"]
pub struct OpenStream {
    metrics: Metrics,
    transport: Transport,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let transport = self.transport.as_str();
        self.metrics
            .with(|| gauge!(STREAMS_OPEN, "transport" => transport).decrement(1.0));
    }
}

/// A long poll counted in `vault_relay_long_polls_held`; dropping it
/// uncounts it.
#[must_use = "the poll counts as held only while this guard lives"]
pub struct HeldPoll {
    metrics: Metrics,
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        self.metrics.with(|| gauge!(LONG_POLLS_HELD).decrement(1.0));
    }
}

/// The `method` label: the standard methods by name, anything else (a
/// client may invent methods) as `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The `code` label: the standard close codes and the application range
/// the relay uses (4000-4099) by number, anything else as `other`.
pub fn close_code_label(code: u16) -> std::borrow::Cow<'static, str> {
    if (1000..=1015).contains(&code) || (4000..=4099).contains(&code) {
        code.to_string().into()
    } else {
        "other".into()
    }
}

/// Middleware: counts and times every request under its route template.
pub async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.metrics.http_request(
        route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").expect("a method")),
            "other"
        );
        assert_eq!(close_code_label(1001), "1001");
        assert_eq!(close_code_label(4000), "4000");
        assert_eq!(close_code_label(4999), "other");
        assert_eq!(close_code_label(3000), "other");
    }

    #[test]
    fn a_registry_counts_only_its_own_calls() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.write(WriteKind::Append);
        a.write(WriteKind::Append);
        let open = a.stream_opened(Transport::Sse);
        let store = crate::store::memory::MemoryStore::new();
        let text = a.render(&store);
        assert!(
            text.contains("vault_relay_writes_total{kind=\"append\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("vault_relay_streams_open{transport=\"sse\"} 1"),
            "{text}"
        );
        drop(open);
        assert!(
            a.render(&store)
                .contains("vault_relay_streams_open{transport=\"sse\"} 0")
        );
        assert!(
            b.render(&store)
                .contains("vault_relay_writes_total{kind=\"append\"} 0")
        );
    }

    #[test]
    fn request_durations_are_a_histogram_by_template() {
        let m = Metrics::new();
        m.http_request(
            "/api/vault/{vault_id}",
            &Method::GET,
            200,
            Duration::from_millis(3),
        );
        let text = m.render(&crate::store::memory::MemoryStore::new());
        assert!(
            text.contains(
                "vault_relay_http_request_duration_seconds_bucket{route=\"/api/vault/{vault_id}\",method=\"GET\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "vault_relay_http_requests_total{route=\"/api/vault/{vault_id}\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
    }
}
