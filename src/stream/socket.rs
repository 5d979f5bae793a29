//! The WebSocket transport of a stream (`GET .../stream`).
//!
//! Bounded whatever the client does: the socket holds at most
//! [`MAX_OUTGOING_BYTES`] of unsent data (our frames are fragmented to a
//! small write buffer, and the pongs the library queues on its own stop
//! there too); a client that sends while it does not read is closed with
//! 4000 once a pong cannot go out within the send timeout; a message over
//! 64 KiB closes with 1009; more client frames per second than allowed
//! close with 1008.

use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use super::flow::{End, Transport};
use super::frames::Frame;
use super::upgrade::Socket;
use crate::metrics;

/// Frames larger than this go out in fragments of this size, so no socket's
/// write buffer grows much past it (buffers never shrink while a socket
/// lives, and ten thousand idle streams each keep theirs). A presence frame
/// that lists a hundred watchers (about 4 KiB) goes out in pieces; a burst
/// of entry frames still goes out in a few writes.
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
    // idle subscriber cheap; the write buffer holds one burst of frames,
    // flushed together (large frames are fragmented to fit it).
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

/// One stream's WebSocket.
pub struct WebSocket {
    sink: SplitSink<Socket, Message>,
    source: SplitStream<Socket>,
    limits: SocketLimits,
    last_heard: Instant,
    budget: FrameBudget,
}

impl WebSocket {
    /// Wraps an upgraded socket.
    pub fn new(socket: Socket, limits: SocketLimits) -> Self {
        let (sink, source) = socket.split();
        WebSocket {
            sink,
            source,
            limits,
            last_heard: Instant::now(),
            budget: FrameBudget::new(limits.max_client_frames_per_sec),
        }
    }
}

impl Transport for WebSocket {
    const KIND: metrics::Transport = metrics::Transport::WebSocket;

    /// A large frame is queued as fragments (a text frame and continuation
    /// frames), which the socket writes out one by one.
    async fn feed(&mut self, frame: &Frame) -> Result<(), End> {
        let text = frame.json();
        if text.len() <= FRAGMENT_BYTES {
            let step = self.sink.feed(Message::Text(text.clone()));
            return timed(self.limits.send_timeout, step).await;
        }
        let bytes = Bytes::from(text.clone());
        let count = bytes.len().div_ceil(FRAGMENT_BYTES);
        for i in 0..count {
            let part = bytes.slice(i * FRAGMENT_BYTES..((i + 1) * FRAGMENT_BYTES).min(bytes.len()));
            let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
            let fragment = WireFrame::message(part, opcode, i + 1 == count);
            let step = self.sink.feed(Message::Frame(fragment));
            timed(self.limits.send_timeout, step).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        let step = self.sink.flush();
        timed(self.limits.send_timeout, step).await
    }

    async fn keepalive(&mut self) -> Result<(), End> {
        if self.last_heard.elapsed() > self.limits.ping_every * 2 {
            return Err(End::Unresponsive);
        }
        let step = self.sink.send(Message::Ping(Bytes::new()));
        timed(self.limits.send_timeout, step).await
    }

    async fn ended(&mut self) -> End {
        loop {
            let msg = match self.source.next().await {
                Some(Ok(Message::Close(_))) => return End::ClientClosed,
                Some(Ok(msg)) => msg,
                Some(Err(WsError::Capacity(_))) => return End::TooBig,
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
                let step = self.sink.flush();
                if let Err(end) = timed(self.limits.send_timeout, step).await {
                    return end;
                }
            }
        }
    }

    async fn finish(self, end: &End) {
        let WebSocket {
            mut sink,
            mut source,
            ..
        } = self;
        let Some((code, reason)) = end.close() else {
            let _ = timeout(CLOSE_WAIT, sink.close()).await;
            return;
        };
        let close = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        }));
        if !matches!(timeout(CLOSE_WAIT, sink.send(close)).await, Ok(Ok(()))) {
            // It cannot even take the close frame: nothing more to say.
            return;
        }
        // Wait briefly for the client's reply, so the close frame is not
        // lost to a reset caused by data we never read.
        let deadline = Instant::now() + CLOSE_WAIT;
        if matches!(end, End::TooBig) {
            // The oversized message is still arriving and cannot be parsed
            // as frames: read and drop raw bytes until the client stops.
            let Ok(mut socket) = sink.reunite(source) else {
                return;
            };
            let io = socket.get_mut();
            let mut scratch = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut scratch)).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, source.next()).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
        let _ = sink.reunite(source).map(drop);
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
