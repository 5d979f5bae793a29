//! One stream's flow, whatever carries it: hello, presence, an optional
//! reset, the replay and `caught_up`, then live rows (caught up from the
//! store when the stream falls off the hub's ring), until the client
//! leaves or breaks a rule, its credential is revoked or expires, or the
//! relay shuts down.
//!
//! The WebSocket ([`super::socket`]) and server-sent events
//! ([`super::sse`]) are two [`Transport`]s over this one flow, fed by the
//! same hub subscription.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio::time::Instant;

use super::frames::{
    self, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NOT_UTF8, CLOSE_POLICY, CLOSE_PROTOCOL,
    CLOSE_REVOKED, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, CLOSE_UNRESPONSIVE, Frame,
};
use super::hub::{Event, Hub, Joined};
use crate::auth::{self, Principal};
use crate::metrics::{self, Metrics};
use crate::shutdown::Shutdown;
use crate::store::{Revocation, Vault};

/// Rows per store read while replaying or catching up.
const REPLAY_PAGE: i64 = 1000;
/// Most live frames written before one flush.
const BATCH_FRAMES: usize = 16;

/// Everything a stream needs, fixed before the response.
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
    /// Revocations, listened to from before the credential was checked
    /// until the stream has joined its vault's channel (which carries them
    /// from then on), so none can fall between the check and the stream.
    pub revocations: broadcast::Receiver<Revocation>,
    pub ping_every: Duration,
    /// The relay's metrics (open streams, frames sent, close codes).
    pub metrics: Metrics,
    /// This open's turn, given back once the greeting is sent.
    pub opening: Opening,
}

/// A stream open's turn (`state::opening_slots`): taken before its checks,
/// given back after its greeting, and lasting at least [`TURN_AT_LEAST`].
pub struct Opening {
    permit: OwnedSemaphorePermit,
    taken: Instant,
}

/// The shortest an open's turn lasts. Given back the moment its greeting
/// was sent, the turns of a reconnect storm went round as fast as two
/// cores could open streams, and everything else the relay answered then
/// queued behind the storm's tasks (REST reads of 36.5 to 48.2 ms at p99;
/// with turns of at least 1 ms, 9.4 to 10.9 ms, the storm of 10,000
/// streams taking 1.16 to 1.26 s instead of 0.95 to 0.98 s:
/// docs/benchmarks.md). A stream never waits for this: only the next open
/// does.
pub const TURN_AT_LEAST: Duration = Duration::from_millis(1);

impl Opening {
    pub fn new(permit: OwnedSemaphorePermit) -> Opening {
        Opening {
            permit,
            taken: Instant::now(),
        }
    }

    /// Gives the turn back: now if it has lasted [`TURN_AT_LEAST`], else
    /// when it has, without holding up the stream. (Waiting in the
    /// stream's own task instead of a task of this turn's left more memory
    /// resident after a storm, and the storm slower.)
    fn give_back(self) {
        let until = self.taken + TURN_AT_LEAST;
        if Instant::now() < until {
            tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                drop(self.permit);
            });
        }
    }
}

/// Why a stream ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    ClientGone,
    Shutdown,
    Revoked,
    Slow,
    Unresponsive,
    TooBig,
    TooManyFrames,
    /// The client broke the WebSocket protocol.
    BadFrame,
    /// The client sent text that is not UTF-8.
    NotUtf8,
    Fault(String),
}

impl End {
    /// The close code and reason the client is told, if it can be told.
    pub fn close(&self) -> Option<(u16, &'static str)> {
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
            End::TooBig => Some((CLOSE_TOO_BIG, "client message over 64 KiB")),
            End::TooManyFrames => Some((CLOSE_POLICY, "too many client frames per second")),
            End::BadFrame => Some((CLOSE_PROTOCOL, "WebSocket protocol error")),
            End::NotUtf8 => Some((CLOSE_NOT_UTF8, "text message is not UTF-8")),
            End::Fault(_) => Some((CLOSE_INTERNAL, "server error; reconnect with since")),
        }
    }
}

/// What the flow needs from whatever carries the frames.
pub trait Transport: Send {
    /// The `transport` label of this kind of stream.
    const KIND: metrics::Transport;
    /// Queues one frame; it goes out at the next [`Transport::flush`] at the
    /// latest.
    fn feed(&mut self, frame: Frame) -> impl Future<Output = Result<(), End>> + Send;
    /// Writes out everything queued.
    fn flush(&mut self) -> impl Future<Output = Result<(), End>> + Send;
    /// Called every ping period: keeps the connection alive and notices a
    /// peer that has gone quiet.
    fn keepalive(&mut self) -> impl Future<Output = Result<(), End>> + Send;
    /// Handles what the client sends and resolves when the client ends the
    /// stream or breaks a rule. Cancel-safe: it is raced against new rows.
    fn ended(&mut self) -> impl Future<Output = End> + Send;
    /// Tells the client how the stream ended (when it can be told) and
    /// closes.
    fn finish(self, end: &End) -> impl Future<Output = ()> + Send;
}

/// Runs a stream to its end over `transport`, then closes it and logs how
/// it ended.
pub async fn serve<T: Transport>(
    mut transport: T,
    hub: Hub,
    req: Box<StreamRequest>,
    shutdown: Shutdown,
) {
    let vault_id = req.vault.id.clone();
    let metrics = req.metrics.clone();
    let _open = metrics.stream_opened(T::KIND);
    let end = tokio::select! {
        end = run(&mut transport, &hub, req) => end.unwrap_or_else(|end| end),
        // Whatever the stream is doing (greeting, replaying, live), shutdown
        // ends it with 1001.
        _ = shutdown.wait() => End::Shutdown,
    };
    match &end {
        End::Fault(detail) => tracing::error!(%vault_id, %detail, "stream failed"),
        other => tracing::debug!(%vault_id, end = ?other, "stream ended"),
    }
    if let Some((code, _)) = end.close() {
        metrics.stream_closed(code);
    }
    // Boxed: the goodbye's buffers are not part of every idle stream.
    Box::pin(transport.finish(&end)).await;
}

async fn send<T: Transport>(t: &mut T, metrics: &Metrics, frame: Frame) -> Result<(), End> {
    t.feed(frame).await?;
    t.flush().await?;
    metrics.frames_sent(1);
    Ok(())
}

/// Sends every row of the vault above `cursor` from the store, in seq order;
/// returns the new cursor.
async fn catch_up<T: Transport>(
    t: &mut T,
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
            t.feed(frames::entry(row)).await?;
            cursor = row.seq;
        }
        t.flush().await?;
        metrics.frames_sent(rows.len() as u64);
        if !full {
            return Ok(cursor);
        }
    }
}

/// A stream past its greeting: what the live loop needs, and nothing more.
struct Live {
    sub: super::hub::Subscription,
    vault_id: String,
    principal: Principal,
    cursor: i64,
    /// The last presence frame sent.
    presence: Frame,
    expires_at: Option<DateTime<Utc>>,
    ping_every: Duration,
    metrics: Metrics,
}

async fn run<T: Transport>(t: &mut T, hub: &Hub, req: Box<StreamRequest>) -> Result<End, End> {
    // The greeting (join, hello, replay) runs on the heap and is freed when
    // it is done: a task's size is that of its largest state, and an idle
    // stream should pay only for the live loop's.
    let live = match Box::pin(greet(t, hub, req)).await? {
        Ok(live) => live,
        Err(end) => return Ok(end),
    };
    live_loop(t, hub, live).await
}

/// Joins the vault and greets the client: hello, presence, the encryption
/// mode, an optional reset, the replay and `caught_up`. `Ok(Err(end))` when
/// the stream ends before it goes live.
async fn greet<T: Transport>(
    t: &mut T,
    hub: &Hub,
    req: Box<StreamRequest>,
) -> Result<Result<Live, End>, End> {
    let StreamRequest {
        vault,
        principal,
        client_id,
        atem_id,
        since,
        epoch: client_epoch,
        expires_at,
        mut revocations,
        ping_every,
        metrics,
        opening,
    } = *req;
    let epoch = hub.store().epoch();
    // Join first, then read: anything committed from here on is either in
    // the replay or arrives live, and duplicates are dropped by seq.
    let joined = hub
        .join(&vault, &atem_id, &client_id)
        .await
        .map_err(|e| End::Fault(e.to_string()))?;
    let Joined {
        sub,
        summary,
        head_seq,
        presence,
    } = joined;
    // From here on only the vault's id is needed: an idle stream keeps
    // neither the vault's summary and writer list nor its own names.
    // (`{ vault }` moves the whole value, so the rest is dropped here.)
    let Vault {
        id: vault_id,
        work_session,
        ..
    } = { vault };
    drop((atem_id, client_id));
    // Revocations announced between the credential check and the join.
    loop {
        match revocations.try_recv() {
            Ok(r) if principal.revoked_by(&r) => return Ok(Err(End::Revoked)),
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                if auth::still_valid(hub.store().as_ref(), &principal)
                    .await
                    .is_err()
                {
                    return Ok(Err(End::Revoked));
                }
            }
            Err(_) => break,
        }
    }
    drop(revocations);
    send(
        t,
        &metrics,
        frames::hello(&vault_id, &summary, head_seq, &epoch),
    )
    .await?;
    drop(summary);
    send(t, &metrics, presence.clone()).await?;
    // Read after joining: a change of mode from here on also arrives live.
    let mode = hub
        .encryption_frame(&work_session)
        .await
        .map_err(|e| End::Fault(e.to_string()))?;
    drop(work_session);
    send(t, &metrics, mode).await?;

    let since = match (&client_epoch, since) {
        (Some(e), _) if *e != epoch => {
            send(t, &metrics, frames::reset(&epoch)).await?;
            Some(0)
        }
        (_, since) => since,
    };
    // The greeting is sent: the next open may go (the replay is not part
    // of the turn).
    opening.give_back();
    let cursor = match since {
        Some(since) => {
            let cursor = catch_up(t, &metrics, hub, &vault_id, since).await?;
            send(t, &metrics, frames::caught_up(cursor)).await?;
            cursor
        }
        None => head_seq,
    };

    Ok(Ok(Live {
        sub,
        vault_id,
        principal,
        cursor,
        presence,
        expires_at,
        ping_every,
        metrics,
    }))
}

/// Sends live rows until the stream ends.
async fn live_loop<T: Transport>(t: &mut T, hub: &Hub, live: Live) -> Result<End, End> {
    let Live {
        mut sub,
        vault_id,
        principal,
        mut cursor,
        mut presence,
        expires_at,
        ping_every,
        metrics,
    } = live;
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    // A link's stream ends when the link expires, to the moment.
    let expiry = async {
        match expires_at {
            Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        // Polled in this order, and only as far as the first that is ready:
        // every new row wakes every stream of its vault, and such a wake-up
        // then polls nothing else. The expiry comes first so that no flow of
        // rows keeps a link's stream open past it; the client's frames are
        // read before the ping checks that some came.
        tokio::select! {
            biased;
            _ = &mut expiry => return Ok(End::Revoked),
            event = sub.recv() => {
                // Whatever else is already queued goes out in the same
                // write: one system call for a burst instead of one a frame.
                let mut next = Some(event);
                let mut fed = 0;
                while let Some(event) = next.take() {
                    match event {
                        Ok(Event::Entry { seq, frame }) => {
                            if seq > cursor {
                                t.feed(frame).await?;
                                cursor = seq;
                                fed += 1;
                            }
                        }
                        Ok(Event::Presence(frame)) => {
                            if frame.json() != presence.json() {
                                t.feed(frame.clone()).await?;
                                presence = frame;
                                fed += 1;
                            }
                        }
                        Ok(Event::Frame(frame)) => {
                            t.feed(frame).await?;
                            fed += 1;
                        }
                        Ok(Event::Revoked(r)) => {
                            if principal.revoked_by(&r) {
                                return Ok(End::Revoked);
                            }
                        }
                        // Fell off the ring: the store has every row we
                        // missed, and says whether a revocation was missed.
                        Err(RecvError::Lagged(_)) => {
                            t.flush().await?;
                            if auth::still_valid(hub.store().as_ref(), &principal).await.is_err() {
                                return Ok(End::Revoked);
                            }
                            cursor = Box::pin(catch_up(t, &metrics, hub, &vault_id, cursor)).await?;
                        }
                        Err(RecvError::Closed) => return Ok(End::Shutdown),
                    }
                    if fed < BATCH_FRAMES {
                        next = sub.try_recv();
                    }
                }
                t.flush().await?;
                metrics.frames_sent(fed as u64);
            }
            end = t.ended() => return Ok(end),
            _ = ping.tick() => t.keepalive().await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    /// Lets the runtime run what the clock's advance woke.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_lasts_at_least_its_minimum_and_no_longer() {
        let turns = Arc::new(Semaphore::new(1));
        let take = || Opening::new(turns.clone().try_acquire_owned().expect("a free turn"));

        // Given back at once: held until the minimum has passed.
        take().give_back();
        settle().await;
        assert_eq!(turns.available_permits(), 0, "given back too early");
        tokio::time::advance(TURN_AT_LEAST - Duration::from_micros(100)).await;
        settle().await;
        assert_eq!(
            turns.available_permits(),
            0,
            "given back before the minimum"
        );
        tokio::time::advance(Duration::from_micros(200)).await;
        settle().await;
        assert_eq!(turns.available_permits(), 1, "held past the minimum");

        // Given back after the minimum: free the moment it is.
        let opening = take();
        tokio::time::advance(TURN_AT_LEAST * 3).await;
        opening.give_back();
        assert_eq!(
            turns.available_permits(),
            1,
            "a long turn is not held longer"
        );
    }
}
