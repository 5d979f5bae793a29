//! The accept loop: HTTP/1.1 connections served by hyper with the relay's
//! connection limits, WebSocket upgrades, and a graceful stop.
//!
//! Limits enforced here, below the routes:
//! - headers: a request's headers must arrive within the header timeout of
//!   the connection opening or of the previous response on it (hyper's
//!   header read timeout); otherwise the connection is closed.
//! - idle: a connection on which nothing has been read or written for the
//!   idle timeout, while no request is being answered, is closed; so is one
//!   whose response the client has not taken for that long (a client that
//!   stops reading cannot pin a response in memory).
//! - request heads larger than [`MAX_HEAD_BYTES`] or with more than
//!   [`MAX_HEADER_LINES`] header lines are refused by hyper itself (431,
//!   empty body); smaller ones reach the routes, which apply the relay's own
//!   (lower) limits with a JSON answer.
//!
//! - closing: a connection the relay closes keeps reading (and dropping)
//!   what the client still sends for a moment, so the last response is not
//!   destroyed by a reset (see [`linger`]).
//!
//! Body timeouts and early refusals live in [`crate::http::edge`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use crate::shutdown::Shutdown;

/// The largest request head (request line and headers) hyper reads before
/// it answers 431 by itself. Above the relay's own limits (8 KiB target,
/// 64 KiB of headers), so that an oversized head usually gets the relay's
/// JSON answer instead of hyper's empty one.
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// The most header lines hyper parses before it answers 431 by itself:
/// hyper's own default. hyper sets aside room for this many headers for
/// every request it parses, on the stack up to its default and on the heap
/// (written out in full) above it: at 1,024 that was about 56 KB written
/// per request, a few percent of the relay's CPU per write. Clients send
/// a few dozen at most; the relay's own JSON 431 still covers 64 KiB of
/// headers within these lines.
pub const MAX_HEADER_LINES: usize = 100;

/// The connection limits (`None`: no limit).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// How long open connections get to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` fires; then stops
/// accepting, lets requests in flight finish (idle connections close at
/// once) and drops whatever is left after the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Both: the buffer bound stops reading an endless head, the size
        // bound refuses a complete one that arrived in a single large read.
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADER_LINES);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(connection(
                        tcp,
                        peer,
                        builder.clone(),
                        router.clone(),
                        shutdown.clone(),
                        limits.idle_timeout,
                    ));
                }
                Err(e) => accept_failed(e).await,
            },
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace period over; dropping remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// An accept error: a connection that died in the backlog is nothing; out
/// of file descriptors (or similar) waits a moment instead of spinning.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing before the next accept");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection until it ends, is idle too long, or the relay
/// stops.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    builder: http1::Builder,
    router: Router,
    shutdown: Shutdown,
    idle_timeout: Option<Duration>,
) {
    // Frames are small and latency matters more than packet count; the
    // stream batches its own writes.
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        inner: Some(tcp),
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let answering = Answering::start(activity.clone());
            let mut router = router.clone();
            async move {
                let response = router.call(req.map(Body::new)).await?;
                // The request counts as being answered until hyper has
                // written (and dropped) the whole response body.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(AnsweredBody {
                        inner: body,
                        _answering: answering,
                    })
                }))
            }
        }
    });
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_check = async {
            match idle_timeout {
                Some(idle) => tokio::time::sleep_until(activity.idle_deadline(idle)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Client mistakes and disconnects: not the relay's fault.
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                // An upgraded connection lives on as a stream, which has
                // timeouts of its own: nothing reads its activity now.
                activity.watched.store(false, Ordering::Relaxed);
                return;
            }
            _ = shutdown.wait(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle_check => {
                if let Some(idle) = idle_timeout
                    && activity.idle_deadline(idle) <= Instant::now()
                {
                    tracing::debug!("closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// What moves on a connection, for the idle timeout. Times are
/// milliseconds since the connection opened.
struct Activity {
    opened: Instant,
    /// When a byte was last read or written.
    last: AtomicU64,
    /// Since when a write has been waiting for the client, plus one (0: no
    /// write waiting).
    write_blocked: AtomicU64,
    /// Requests being answered.
    answering: AtomicUsize,
    /// Whether the idle check still runs: a stream writes to its socket
    /// a thousand times a second at fan-out, and need not read the clock
    /// each time once nobody looks.
    watched: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            answering: AtomicUsize::new(0),
            watched: AtomicBool::new(true),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn moved(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.last.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// When the connection counts as idle if nothing moves until then. A
    /// request being answered (a long poll, a slow query) is not idle, but a
    /// response the client does not take is.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        let since = if blocked > 0 {
            blocked - 1
        } else if self.answering.load(Ordering::Relaxed) > 0 {
            self.now_ms()
        } else {
            self.last.load(Ordering::Relaxed)
        };
        self.opened + Duration::from_millis(since) + idle
    }
}

/// Marks a request as being answered while it lives.
struct Answering(Arc<Activity>);

impl Answering {
    fn start(activity: Arc<Activity>) -> Self {
        activity.answering.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
        self.0.moved();
    }
}

/// A response body that keeps its request counted as being answered.
struct AnsweredBody {
    inner: Body,
    _answering: Answering,
}

impl hyper::body::Body for AnsweredBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a closed connection keeps reading (and discarding) what the
/// client still sends, and how much of it at most.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The TCP stream, noting when bytes move and when writes wait. Dropped, it
/// closes gracefully (see [`linger`]).
struct WatchedIo {
    /// Always `Some` until dropped.
    inner: Option<TcpStream>,
    activity: Arc<Activity>,
}

impl Drop for WatchedIo {
    fn drop(&mut self) {
        if let Some(tcp) = self.inner.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(linger(tcp));
        }
    }
}

/// Closes a connection without losing the last response: closing a socket
/// that still has unread bytes (a body the relay refused without reading)
/// makes the kernel send a reset, and a reset can destroy the response
/// before the client reads it. So: send FIN, read and drop whatever still
/// arrives until the client closes, for a bounded time and size, then close.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 8 * 1024];
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl WatchedIo {
    fn wrote<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if !self.activity.watched.load(Ordering::Relaxed) {
            return result;
        }
        match &result {
            Poll::Pending => {
                let since = self.activity.now_ms() + 1;
                let _ = self.activity.write_blocked.compare_exchange(
                    0,
                    since,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => {
                self.activity.write_blocked.store(0, Ordering::Relaxed);
                self.activity.moved();
            }
        }
        result
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let Some(tcp) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let result = Pin::new(tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved();
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(tcp) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let result = Pin::new(tcp).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(tcp) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let result = Pin::new(tcp).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|t| t.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}
