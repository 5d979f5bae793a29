//! One stream's socket: hello, replay, then live, until something ends it.
//!
//! Three layers: the HTTP handler checks everything before the upgrade
//! (`http::stream`); [`serve`] logs how the stream ended; [`run`] is the
//! loop that `select!`s over new rows, client frames, the ping timer,
//! revocations and shutdown.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use super::frames::{
    self, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_REVOKED, CLOSE_SLOW_CONSUMER, CLOSE_UNRESPONSIVE,
};
use super::hub::{Event, Hub};
use super::presence;
use super::upgrade::Socket;
use crate::auth::{self, Principal};
use crate::metrics::{Metrics, Transport};
use crate::shutdown::Shutdown;
use crate::store::{Revocation, Vault};

/// Rows per store read while replaying or catching up.
const REPLAY_PAGE: i64 = 1000;
/// Most live frames written before one flush.
const BATCH_FRAMES: usize = 16;
/// Frames larger than this go out in fragments of this size, so no socket's
/// write buffer grows past it (buffers never shrink while a socket lives).
const FRAGMENT_BYTES: usize = 8 * 1024;

/// Everything a stream needs, fixed before the upgrade.
pub struct StreamRequest {
    pub vault: Vault,
    pub principal: Principal,
    pub client_id: String,
    pub atem_id: String,
    /// `since` from the query; `None` starts at the head.
    pub since: Option<i64>,
    /// `epoch` from the query, if the client sent one.
    pub epoch: Option<String>,
    /// When the credential stops being valid by itself (links expire).
    pub expires_at: Option<DateTime<Utc>>,
    pub ping_every: Duration,
    /// A frame that cannot be written within this time marks a stuck client.
    pub send_timeout: Duration,
    /// The relay's metrics (open streams, frames sent, close codes).
    pub metrics: Metrics,
}

/// Why a stream ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    ClientGone,
    Shutdown,
    Revoked,
    Slow,
    Unresponsive,
    Fault(String),
}

impl End {
    fn close(&self) -> Option<(u16, &'static str)> {
        match self {
            End::ClientClosed | End::ClientGone => None,
            End::Shutdown => Some((
                CLOSE_GOING_AWAY,
                "server shutting down; reconnect with since",
            )),
            End::Revoked => Some((
                CLOSE_REVOKED,
                "credential revoked or expired; sign in again",
            )),
            End::Slow => Some((CLOSE_SLOW_CONSUMER, "too far behind; reconnect with since")),
            End::Unresponsive => Some((CLOSE_UNRESPONSIVE, "no answer to ping")),
            End::Fault(_) => Some((CLOSE_INTERNAL, "server error; reconnect with since")),
        }
    }
}

type Sink = SplitSink<Socket, Message>;
type Source = SplitStream<Socket>;

/// Runs a stream to its end and logs the outcome.
pub async fn serve(socket: Socket, hub: Hub, req: StreamRequest, shutdown: Shutdown) {
    let vault_id = req.vault.id.clone();
    let metrics = req.metrics.clone();
    let _open = metrics.stream_opened(Transport::WebSocket);
    let (mut sink, mut source) = socket.split();
    let end = match run(&mut sink, &mut source, &hub, req, &shutdown).await {
        Ok(end) | Err(end) => end,
    };
    match &end {
        End::Fault(detail) => tracing::error!(%vault_id, %detail, "stream failed"),
        other => tracing::debug!(%vault_id, end = ?other, "stream ended"),
    }
    if let Some((code, reason)) = end.close() {
        metrics.stream_closed(code);
        let close = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = timeout(Duration::from_secs(1), sink.send(close)).await;
    }
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
}

/// Runs one write step against the send timeout: a client that cannot take
/// it in time is stuck.
async fn timed<F>(limit: Duration, step: F) -> Result<(), End>
where
    F: std::future::Future<Output = Result<(), tokio_tungstenite::tungstenite::Error>>,
{
    match timeout(limit, step).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientGone),
        Err(_) => Err(End::Slow),
    }
}

/// Writes one frame and flushes it.
async fn send(sink: &mut Sink, limit: Duration, frame: Utf8Bytes) -> Result<(), End> {
    timed(limit, sink.send(Message::Text(frame))).await
}

/// Queues one frame in the socket's write buffer; [`flush`] sends the lot.
/// A large frame is queued as fragments (a text frame and continuation
/// frames), which the socket writes out one by one.
async fn feed(sink: &mut Sink, limit: Duration, frame: Utf8Bytes) -> Result<(), End> {
    if frame.len() <= FRAGMENT_BYTES {
        return timed(limit, sink.feed(Message::Text(frame))).await;
    }
    let bytes = Bytes::from(frame);
    let count = bytes.len().div_ceil(FRAGMENT_BYTES);
    for i in 0..count {
        let part = bytes.slice(i * FRAGMENT_BYTES..((i + 1) * FRAGMENT_BYTES).min(bytes.len()));
        let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
        let fragment = Frame::message(part, opcode, i + 1 == count);
        timed(limit, sink.feed(Message::Frame(fragment))).await?;
    }
    Ok(())
}

async fn flush(sink: &mut Sink, limit: Duration) -> Result<(), End> {
    timed(limit, sink.flush()).await
}

/// Sends every row of the vault above `cursor` from the store, in seq order;
/// returns the new cursor.
async fn catch_up(
    sink: &mut Sink,
    limit: Duration,
    metrics: &Metrics,
    hub: &Hub,
    vault_id: &str,
    mut cursor: i64,
) -> Result<i64, End> {
    loop {
        let rows = hub
            .store()
            .entries_after(vault_id, cursor, REPLAY_PAGE)
            .await
            .map_err(|e| End::Fault(e.to_string()))?;
        let full = rows.len() as i64 == REPLAY_PAGE;
        for row in &rows {
            feed(sink, limit, frames::entry(row)).await?;
            cursor = row.seq;
        }
        flush(sink, limit).await?;
        metrics.frames_sent(rows.len() as u64);
        if !full {
            return Ok(cursor);
        }
    }
}

/// Whether a revocation covers this principal.
pub(crate) fn revokes(r: &Revocation, principal: &Principal) -> bool {
    match (r, principal) {
        (Revocation::Session(h), Principal::Session { session_hash, .. }) => h == session_hash,
        (Revocation::Astation(a), Principal::Session { work_session, .. }) => a == work_session,
        (Revocation::Link(id), Principal::Link { link_id, .. }) => id == link_id,
        _ => false,
    }
}

async fn run(
    sink: &mut Sink,
    source: &mut Source,
    hub: &Hub,
    req: StreamRequest,
    shutdown: &Shutdown,
) -> Result<End, End> {
    let vault = &req.vault;
    let epoch = hub.store().epoch();
    // Subscribe first, then read: anything committed from here on is either
    // in the replay or arrives live, and duplicates are dropped by seq.
    let mut revocations = hub.revocations();
    // A revocation between the check before the upgrade and the line above
    // was announced to nobody: look once more, now that we are listening.
    if auth::still_valid(hub.store().as_ref(), &req.principal)
        .await
        .is_err()
    {
        return Ok(End::Revoked);
    }
    let mut sub = hub
        .subscribe(&vault.id, vault.head_seq, &req.atem_id, &req.client_id)
        .await;
    let fresh = hub
        .store()
        .vault(&vault.id)
        .await
        .map_err(|e| End::Fault(e.to_string()))?;
    let (summary, head_seq) = fresh
        .map(|v| (v.summary, v.head_seq))
        .unwrap_or((vault.summary.clone(), vault.head_seq));
    let metrics = &req.metrics;
    send(
        sink,
        req.send_timeout,
        frames::hello(&vault.id, &summary, head_seq, &epoch),
    )
    .await?;
    metrics.frames_sent(1);
    if let Ok(p) = presence::frame(hub, &vault.id).await {
        send(sink, req.send_timeout, p).await?;
        metrics.frames_sent(1);
    }
    // Read after subscribing: a change of mode from here on also arrives live.
    let mode = hub
        .store()
        .encryption_mode(&vault.work_session)
        .await
        .map_err(|e| End::Fault(e.to_string()))?;
    send(sink, req.send_timeout, frames::encryption(&mode)).await?;

    let since = match (&req.epoch, req.since) {
        (Some(e), _) if *e != epoch => {
            send(sink, req.send_timeout, frames::reset(&epoch)).await?;
            metrics.frames_sent(1);
            Some(0)
        }
        (_, since) => since,
    };
    let mut cursor = match since {
        Some(since) => {
            let cursor = catch_up(sink, req.send_timeout, metrics, hub, &vault.id, since).await?;
            send(sink, req.send_timeout, frames::caught_up(cursor)).await?;
            metrics.frames_sent(1);
            cursor
        }
        None => head_seq,
    };

    let mut ping = tokio::time::interval(req.ping_every);
    ping.reset();
    let mut last_heard = Instant::now();
    // Made once: the loop runs once per frame for every subscriber.
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    // A link's stream ends when the link expires, to the moment.
    let expiry = async {
        match req.expires_at {
            Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            event = sub.recv() => {
                // Whatever else is already queued goes out in the same
                // write: one system call for a burst instead of one a frame.
                let mut next = Some(event);
                let mut fed = 0;
                while let Some(event) = next.take() {
                    match event {
                        Ok(Event::Entry { seq, frame }) => {
                            if seq > cursor {
                                feed(sink, req.send_timeout, frame).await?;
                                cursor = seq;
                                fed += 1;
                            }
                        }
                        Ok(Event::Frame(frame)) => {
                            feed(sink, req.send_timeout, frame).await?;
                            fed += 1;
                        }
                        // Fell off the ring: the store has every row we missed.
                        Err(RecvError::Lagged(_)) => {
                            flush(sink, req.send_timeout).await?;
                            cursor = catch_up(sink, req.send_timeout, metrics, hub, &vault.id, cursor).await?;
                        }
                        Err(RecvError::Closed) => return Ok(End::Shutdown),
                    }
                    if fed < BATCH_FRAMES {
                        next = sub.try_recv();
                    }
                }
                flush(sink, req.send_timeout).await?;
                metrics.frames_sent(fed as u64);
            }
            msg = source.next() => match msg {
                Some(Ok(Message::Close(_))) => return Ok(End::ClientClosed),
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(_)) | None => return Ok(End::ClientGone),
            },
            r = revocations.recv() => match r {
                Ok(r) if revokes(&r, &req.principal) => return Ok(End::Revoked),
                Ok(_) => {}
                Err(_) => {
                    if auth::still_valid(hub.store().as_ref(), &req.principal).await.is_err() {
                        return Ok(End::Revoked);
                    }
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > req.ping_every * 2 {
                    return Ok(End::Unresponsive);
                }
                timed(req.send_timeout, sink.send(Message::Ping(Default::default()))).await?;
            }
            _ = &mut expiry => return Ok(End::Revoked),
            _ = &mut stopping => return Ok(End::Shutdown),
        }
    }
}
