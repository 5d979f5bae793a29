//! The WebSocket transport of a stream (`GET .../stream`).
//!
//! Bounded whatever the client does: the stream's frames are written from
//! bytes shared by every socket, a few at a time, so a socket copies none
//! of them and holds at most [`WRITE_SLICES`] unwritten; the control frames
//! the library writes (pongs included) stop at [`MAX_OUTGOING_BYTES`]; a
//! client that does not take a write within the send timeout is closed
//! with 4000, and so is one that sends while it does not read, once a pong
//! cannot go out in time; a message over 64 KiB closes with 1009; more
//! client frames per second than allowed close with 1008.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use super::flow::{End, Transport};
use super::frames::Frame;
use super::upgrade::Socket;
use crate::metrics;

/// Frames larger than this go out as one fragmented message of pieces this
/// size, as docs/stream.md describes (a presence frame that lists a
/// hundred watchers, about 4 KiB, in four).
const FRAGMENT_BYTES: usize = 1024;
/// Most unsent bytes a socket holds, pongs included.
pub const MAX_OUTGOING_BYTES: usize = 256 * 1024;
/// Largest message a client may send.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// How long the goodbye may take: the close frame, then the client's reply.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The socket settings of every stream.
pub fn config() -> WebSocketConfig {
    // Clients only send pongs and closes, so a small read buffer keeps an
    // idle subscriber cheap; the library writes only control frames, so a
    // small write buffer is enough.
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(FRAGMENT_BYTES)
        .max_write_buffer_size(MAX_OUTGOING_BYTES)
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES))
}

/// How a socket treats its client.
#[derive(Clone, Copy, Debug)]
pub struct SocketLimits {
    pub ping_every: Duration,
    /// A write that cannot complete within this time marks a stuck client.
    pub send_timeout: Duration,
    /// Client frames allowed per second (a burst of one second's worth);
    /// 0 allows any number.
    pub max_client_frames_per_sec: u32,
}

/// A token bucket over the frames a client sends.
struct FrameBudget {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl FrameBudget {
    fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec);
        FrameBudget {
            per_sec,
            tokens: per_sec,
            at: Instant::now(),
        }
    }

    /// Spends one frame; false when the client is over its allowance.
    fn take(&mut self) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.per_sec);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Frames written with one system call at most.
const WRITE_SLICES: usize = 16;

/// Writes a frame's text as a server sends it: one text frame, or when it
/// is larger than [`FRAGMENT_BYTES`], a text frame and continuation frames
/// of that size. Built once per frame ([`Frame::wire`]) and shared by every
/// socket that sends it.
pub fn encode(text: &Utf8Bytes) -> Bytes {
    let bytes = Bytes::from(text.clone());
    let count = bytes.len().div_ceil(FRAGMENT_BYTES).max(1);
    let mut out = Vec::with_capacity(bytes.len() + count * 4);
    for i in 0..count {
        let part = bytes.slice(i * FRAGMENT_BYTES..((i + 1) * FRAGMENT_BYTES).min(bytes.len()));
        let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
        // Formatting into a Vec cannot fail.
        let _ = WireFrame::message(part, opcode, i + 1 == count).format(&mut out);
    }
    Bytes::from(out)
}

/// One stream's WebSocket. The stream's own frames are written by the
/// relay straight to the connection, from bytes encoded once for every
/// socket ([`Frame::wire`]); the library reads the client's frames and
/// writes the control frames (pings, pongs, the close). The two never
/// interleave: our frames are written out whole before the library writes
/// again, and whatever the library holds is flushed before ours.
pub struct WebSocket {
    socket: Socket,
    /// Frames fed and not yet written, oldest first; `written` bytes of
    /// the first are out.
    queued: VecDeque<Frame>,
    written: usize,
    limits: SocketLimits,
    last_heard: Instant,
    budget: FrameBudget,
}

impl WebSocket {
    /// Wraps an upgraded socket.
    pub fn new(socket: Socket, limits: SocketLimits) -> Self {
        WebSocket {
            socket,
            queued: VecDeque::new(),
            written: 0,
            limits,
            last_heard: Instant::now(),
            budget: FrameBudget::new(limits.max_client_frames_per_sec),
        }
    }

    /// Writes out the queued frames, several per system call.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.queued.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // The library may still hold part of a control frame: a pong it
        // queued while reading a ping and could not finish writing before
        // a new row ended the wait. It goes out first, or our frame would
        // land inside it.
        match self.socket.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        while !self.queued.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = self.queued.len().min(WRITE_SLICES);
            for (i, frame) in self.queued.iter().take(count).enumerate() {
                let skip = if i == 0 { self.written } else { 0 };
                slices[i] = IoSlice::new(&frame.wire()[skip..]);
            }
            let io = std::pin::Pin::new(self.socket.get_mut());
            let mut wrote = match io.poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(WsError::Io(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
                Poll::Pending => return Poll::Pending,
            };
            while wrote > 0 {
                let Some(first) = self.queued.front() else {
                    break;
                };
                let left = first.wire().len() - self.written;
                if wrote >= left {
                    wrote -= left;
                    self.queued.pop_front();
                    self.written = 0;
                } else {
                    self.written += wrote;
                    wrote = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out the queued frames within the send timeout.
    async fn drain(&mut self) -> Result<(), End> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let limit = self.limits.send_timeout;
        timed(limit, std::future::poll_fn(|cx| self.poll_drain(cx))).await
    }
}

impl Transport for WebSocket {
    const KIND: metrics::Transport = metrics::Transport::WebSocket;

    async fn feed(&mut self, frame: Frame) -> Result<(), End> {
        self.queued.push_back(frame);
        if self.queued.len() >= WRITE_SLICES {
            self.drain().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.drain().await
    }

    async fn keepalive(&mut self) -> Result<(), End> {
        if self.last_heard.elapsed() > self.limits.ping_every * 2 {
            return Err(End::Unresponsive);
        }
        self.drain().await?;
        let step = self.socket.send(Message::Ping(Bytes::new()));
        timed(self.limits.send_timeout, step).await
    }

    /// Only ever raced against new rows between writes, so none of our
    /// frames is half written while the library reads (and may answer a
    /// ping).
    async fn ended(&mut self) -> End {
        debug_assert!(self.queued.is_empty(), "frames left unwritten");
        loop {
            let msg = match self.socket.next().await {
                Some(Ok(Message::Close(_))) => return End::ClientClosed,
                Some(Ok(msg)) => msg,
                Some(Err(WsError::Capacity(_))) => return End::TooBig,
                Some(Err(WsError::Protocol(_))) => return End::BadFrame,
                Some(Err(WsError::Utf8(_))) => return End::NotUtf8,
                Some(Err(_)) | None => return End::ClientGone,
            };
            self.last_heard = Instant::now();
            if !self.budget.take() {
                return End::TooManyFrames;
            }
            if matches!(msg, Message::Ping(_)) {
                // The library queued a pong; it must go out like any frame.
                // A client that pings but does not read stops here, and is
                // closed once the send timeout passes.
                let step = self.socket.flush();
                if let Err(end) = timed(self.limits.send_timeout, step).await {
                    return end;
                }
            }
        }
    }

    async fn finish(mut self, end: &End) {
        // A frame cut short must be completed before the close frame, or
        // the client would read the close as part of it.
        let pending = std::future::poll_fn(|cx| self.poll_drain(cx));
        if !matches!(timeout(CLOSE_WAIT, pending).await, Ok(Ok(()))) {
            return;
        }
        let mut socket = self.socket;
        let Some((code, reason)) = end.close() else {
            // A client that closed has its close frame answered: the library
            // queued the reply when it read the close, and a flush sends it
            // (a close of our own would be refused as a send after closing).
            let _ = timeout(CLOSE_WAIT, SinkExt::flush(&mut socket)).await;
            return;
        };
        let close = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        }));
        if !matches!(timeout(CLOSE_WAIT, socket.send(close)).await, Ok(Ok(()))) {
            // It cannot even take the close frame: nothing more to say.
            return;
        }
        // Wait briefly for the client's reply, so the close frame is not
        // lost to a reset caused by data we never read.
        let deadline = Instant::now() + CLOSE_WAIT;
        if matches!(end, End::TooBig) {
            // The oversized message is still arriving and cannot be parsed
            // as frames: read and drop raw bytes until the client stops.
            let io = socket.get_mut();
            let mut scratch = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut scratch)).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, socket.next()).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    }
}

/// Runs one write step against the send timeout: a client that cannot take
/// it in time is stuck. Nearly every step completes at its first poll (the
/// socket takes the bytes), and only one that does not starts the timer:
/// a timeout costs a clock read and a runtime handle, which at a thousand
/// subscribers is a measurable share of each frame.
async fn timed<F>(limit: Duration, step: F) -> Result<(), End>
where
    F: Future<Output = Result<(), WsError>>,
{
    let mut step = std::pin::pin!(step);
    let first = std::future::poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => timeout(limit, step).await,
    };
    match result {
        Ok(Ok(())) => Ok(()),
        // The output is at its bound: the client is not reading.
        Ok(Err(WsError::WriteBufferFull(_))) => Err(End::Slow),
        Ok(Err(_)) => Err(End::ClientGone),
        Err(_) => Err(End::Slow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_budget_allows_a_second_of_frames_then_refills_evenly() {
        let mut budget = FrameBudget::new(50);
        assert!((0..50).all(|_| budget.take()), "a burst of 50");
        assert!(!budget.take(), "the 51st in the same instant");
        // As if 100 ms had passed.
        budget.at -= Duration::from_millis(100);
        assert!((0..5).all(|_| budget.take()), "5 more after 100 ms");
        assert!(!budget.take());
        let mut off = FrameBudget::new(0);
        assert!((0..10_000).all(|_| off.take()), "0 turns it off");
    }
}
