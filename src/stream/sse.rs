//! The server-sent events transport of a stream (`GET .../events`): the
//! same frames as the WebSocket, each as one event, written into the
//! response body.
//!
//! The body is fed through a small bounded channel of shared, already
//! encoded events: a client that stops reading fills it, and is then
//! closed like a stuck WebSocket once the send timeout passes.

use std::time::Duration;

use axum::body::Body;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Bytes;

use super::flow::{End, Transport};
use super::frames::{self, Frame};
use crate::metrics;

/// Events queued for the response body at most.
const QUEUED_EVENTS: usize = 16;
/// The keepalive comment.
const KEEPALIVE: &[u8] = b": keepalive\n\n";
/// How long the closing event may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One stream's event stream.
pub struct EventStream {
    tx: mpsc::Sender<Bytes>,
    send_timeout: Duration,
}

/// A transport and the response body it writes into.
pub fn channel(send_timeout: Duration) -> (EventStream, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED_EVENTS);
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    (EventStream { tx, send_timeout }, Body::from_stream(events))
}

impl EventStream {
    async fn push(&self, chunk: Bytes) -> Result<(), End> {
        match timeout(self.send_timeout, self.tx.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            // The body was dropped: the connection is gone.
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => Err(End::Slow),
        }
    }
}

impl Transport for EventStream {
    const KIND: metrics::Transport = metrics::Transport::Sse;

    async fn feed(&mut self, frame: Frame) -> Result<(), End> {
        self.push(frame.sse().clone()).await
    }

    /// Every event is handed to the body as it is fed; the server writes
    /// each one out as soon as the connection takes it.
    async fn flush(&mut self) -> Result<(), End> {
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), End> {
        self.push(Bytes::from_static(KEEPALIVE)).await
    }

    async fn ended(&mut self) -> End {
        // An event stream's client sends nothing; it can only go away.
        self.tx.closed().await;
        End::ClientGone
    }

    async fn finish(self, end: &End) {
        if let Some((code, reason)) = end.close() {
            let _ = timeout(CLOSE_WAIT, self.tx.send(frames::close_event(code, reason))).await;
        }
        // Dropping the sender ends the body, and so the response.
    }
}
