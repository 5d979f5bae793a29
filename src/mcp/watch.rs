//! Resource subscriptions: each subscribed vault of an MCP session is one
//! task that listens on the stream hub (so a commit on any replica reaches
//! it, exactly as it reaches WebSocket streams) and sends
//! `notifications/resources/updated` for every committed row and every
//! summary change.
//!
//! A subscription ends when it is unsubscribed, when its MCP session ends
//! (the session's [`Watches`] is dropped with it, which aborts the tasks),
//! at shutdown, or when its credential is revoked; a revocation also closes
//! the whole MCP session, so its event stream ends too.
//!
//! The MCP library closes a session after five minutes without traffic,
//! and a subscriber waiting on a quiet vault sends none. So while a session
//! has subscriptions, the relay pings its client every `STREAM_PING_SECS`:
//! a client that answers keeps its session; one that does not answer within
//! the same period is gone, and its session is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{PingRequest, ResourceUpdatedNotificationParam, ServerRequest};
use rmcp::service::PeerRequestOptions;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{Peer, RoleServer};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::auth::{self, Principal};
use crate::state::AppState;
use crate::stream::Event;

/// What one subscription needs.
pub struct WatchRequest {
    pub vault_id: String,
    /// The vault's newest seq when access was checked.
    pub head_seq: i64,
    /// The resource URI the client subscribed to.
    pub uri: String,
    /// The credential that subscribed.
    pub principal: Principal,
    /// Where notifications go: the MCP session's client.
    pub peer: Peer<RoleServer>,
    /// The MCP session id, to close the session on revocation.
    pub session_id: Option<String>,
}

/// The subscriptions of one MCP session, by resource URI.
pub struct Watches {
    state: AppState,
    sessions: Arc<LocalSessionManager>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Pings the client while there are subscriptions (started with the
    /// first one).
    pinger: Mutex<Option<JoinHandle<()>>>,
}

impl Watches {
    /// No subscriptions yet.
    pub fn new(state: AppState, sessions: Arc<LocalSessionManager>) -> Self {
        Self {
            state,
            sessions,
            tasks: Mutex::new(HashMap::new()),
            pinger: Mutex::new(None),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        // Nothing panics while holding this lock; ignore poisoning.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts) the subscription to `req.uri`. The hub channel
    /// is joined before this returns, so every row that commits after the
    /// subscribe request is answered is announced.
    pub fn add(&self, req: WatchRequest) {
        {
            let mut pinger = self.pinger.lock().unwrap_or_else(|p| p.into_inner());
            if pinger.is_none() {
                *pinger = Some(tokio::spawn(keep_alive(
                    req.peer.clone(),
                    self.sessions.clone(),
                    req.session_id.clone(),
                    self.state.settings.stream_ping,
                )));
            }
        }
        let sub = self.state.hub.watch(&req.vault_id, req.head_seq);
        let uri = req.uri.clone();
        let task = tokio::spawn(run(self.state.clone(), self.sessions.clone(), sub, req));
        if let Some(old) = self.tasks().insert(uri, task) {
            old.abort();
        }
    }

    /// Ends the subscription to `uri`; whether there was one.
    pub fn remove(&self, uri: &str) -> bool {
        match self.tasks().remove(uri) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for (_, task) in self.tasks().drain() {
            task.abort();
        }
        if let Some(pinger) = self.pinger.lock().unwrap_or_else(|p| p.into_inner()).take() {
            pinger.abort();
        }
    }
}

/// Pings the session's client every `every`; closes the session when a
/// ping goes unanswered for as long.
async fn keep_alive(
    peer: Peer<RoleServer>,
    sessions: Arc<LocalSessionManager>,
    session_id: Option<String>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.reset();
    loop {
        tick.tick().await;
        let ping = ServerRequest::PingRequest(PingRequest::default());
        let answered = match peer
            .send_request_with_option(ping, PeerRequestOptions::with_timeout(every))
            .await
        {
            Ok(handle) => handle.await_response().await.is_ok(),
            Err(_) => false,
        };
        if !answered {
            tracing::debug!("closing an MCP session whose client stopped answering pings");
            if let Some(id) = session_id {
                close_session(sessions, id);
            }
            return;
        }
    }
}

/// Closes an MCP session from a task of its own: closing drops the
/// session's server, and with it the task that asked.
fn close_session(sessions: Arc<LocalSessionManager>, id: String) {
    tokio::spawn(async move {
        let _ = sessions.close_session(&id.into()).await;
    });
}

/// Whether a summary-or-presence frame is a summary change (presence is
/// not a change of the resource).
fn is_summary(frame: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Kind>(frame).is_ok_and(|k| k.kind == "summary")
}

/// Why a subscription task stopped.
enum Stop {
    /// The session, the hub or the relay is going away.
    Gone,
    /// The credential was revoked: close the MCP session too.
    Revoked,
}

async fn run(
    state: AppState,
    sessions: Arc<LocalSessionManager>,
    mut sub: crate::stream::Subscription,
    req: WatchRequest,
) {
    let stop = listen(&state, &mut sub, &req).await;
    drop(sub);
    if let (Stop::Revoked, Some(id)) = (stop, req.session_id) {
        tracing::debug!("closing an MCP session whose credential was revoked");
        close_session(sessions, id);
    }
}

async fn listen(
    state: &AppState,
    sub: &mut crate::stream::Subscription,
    req: &WatchRequest,
) -> Stop {
    let mut revocations = state.hub.revocations();
    // A revocation between the subscribe request's check and the line above
    // was announced to nobody: look once more, now that we are listening.
    if auth::still_valid(state.store.as_ref(), &req.principal)
        .await
        .is_err()
    {
        return Stop::Revoked;
    }
    let stopping = state.shutdown.wait();
    tokio::pin!(stopping);
    loop {
        let changed = tokio::select! {
            event = sub.recv() => match event {
                Ok(Event::Entry { .. }) => true,
                Ok(Event::Frame(frame)) => is_summary(frame.json()),
                // Presence is not a change of the resource.
                Ok(Event::Presence(_)) => false,
                Ok(Event::Revoked(r)) => {
                    if req.principal.revoked_by(&r) {
                        return Stop::Revoked;
                    }
                    false
                }
                // Fell off the ring: rows were missed, so something changed.
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return Stop::Gone,
            },
            r = revocations.recv() => match r {
                Ok(r) if req.principal.revoked_by(&r) => return Stop::Revoked,
                Ok(_) => false,
                Err(_) => {
                    if auth::still_valid(state.store.as_ref(), &req.principal).await.is_err() {
                        return Stop::Revoked;
                    }
                    false
                }
            },
            _ = &mut stopping => return Stop::Gone,
        };
        if changed
            && req
                .peer
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(req.uri.clone()))
                .await
                .is_err()
        {
            // The session's transport is closed.
            return Stop::Gone;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_summary_frames_change_the_resource() {
        let summary = crate::stream::frames::summary("new words");
        let presence = crate::stream::frames::presence(&[], 0);
        assert!(is_summary(summary.json()));
        assert!(!is_summary(presence.json()));
    }
}
