//! Which credential opened each MCP session of this process.
//!
//! An MCP session is named by its `Mcp-Session-Id` header alone; the
//! library that serves it would let any caller who knows the id post to it,
//! read its event stream or end it. So `/mcp` records the principal whose
//! `initialize` opened a session, and every later request that names the
//! session must come from that principal (403 otherwise), for every method.
//! A session the library no longer holds (ended, or idle past its
//! keep-alive) is forgotten here the next time it is named, and the whole
//! record is swept of such sessions as it grows. A revocation ends every
//! MCP session of the credentials it covers, as it closes their streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use tokio::sync::broadcast::error::RecvError;

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// Sessions recorded before the first sweep of ended ones.
const FIRST_SWEEP_AT: usize = 64;

/// The owner of each live MCP session.
#[derive(Clone)]
pub struct Owners {
    sessions: Arc<LocalSessionManager>,
    record: Arc<Mutex<Record>>,
}

struct Record {
    owners: HashMap<Arc<str>, Principal>,
    /// The size at which the record is next swept.
    sweep_at: usize,
}

/// Whether a request may use the MCP session it names.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Opened by another credential.
    Forbidden,
    /// No such session in this process (ended, timed out, never opened
    /// here).
    Unknown,
}

impl Owners {
    pub fn new(sessions: Arc<LocalSessionManager>) -> Self {
        Owners {
            sessions,
            record: Arc::new(Mutex::new(Record {
                owners: HashMap::new(),
                sweep_at: FIRST_SWEEP_AT,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // The record holds no invariant a panic could break half way.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `principal` may use session `id`.
    pub async fn check(&self, id: &str, principal: &Principal) -> Access {
        let owner = self.lock().owners.get(id).cloned();
        let Some(owner) = owner else {
            return Access::Unknown;
        };
        if !self.is_live(id).await {
            self.lock().owners.remove(id);
            return Access::Unknown;
        }
        if owner == *principal {
            Access::Allowed
        } else {
            Access::Forbidden
        }
    }

    /// Records the principal that opened session `id`.
    pub async fn opened(&self, id: &str, principal: Principal) {
        let due = {
            let mut record = self.lock();
            record.owners.insert(id.into(), principal);
            record.owners.len() >= record.sweep_at
        };
        if due {
            self.sweep().await;
        }
    }

    /// Forgets a session that was ended.
    pub fn ended(&self, id: &str) {
        self.lock().owners.remove(id);
    }

    /// Ends every MCP session opened by a credential that a revocation
    /// covers, once it is announced (by this replica or another): without
    /// this, the library would keep a session's event stream open after its
    /// credential was revoked.
    pub fn end_on_revocation(&self, state: &AppState) {
        let (owners, state) = (self.clone(), state.clone());
        let mut revocations = state.hub.revocations();
        tokio::spawn(async move {
            loop {
                let ended = tokio::select! {
                    r = revocations.recv() => match r {
                        Ok(r) => owners.opened_by(|p| p.revoked_by(&r)),
                        // Some were missed: ask the store about every owner.
                        Err(RecvError::Lagged(_)) => owners.no_longer_valid(&state).await,
                        Err(RecvError::Closed) => return,
                    },
                    _ = state.shutdown.wait() => return,
                };
                for id in ended {
                    owners.ended(&id);
                    tracing::debug!("closing an MCP session whose credential was revoked");
                    // The local manager's close cannot fail in a way we
                    // could act on: a session already gone is the goal.
                    let _ = owners.sessions.close_session(&id).await;
                }
            }
        });
    }

    /// The sessions whose owner matches `covered`.
    fn opened_by(&self, covered: impl Fn(&Principal) -> bool) -> Vec<Arc<str>> {
        let record = self.lock();
        record
            .owners
            .iter()
            .filter(|(_, owner)| covered(owner))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The sessions whose owner the store no longer accepts.
    async fn no_longer_valid(&self, state: &AppState) -> Vec<Arc<str>> {
        let owned: Vec<(Arc<str>, Principal)> = self
            .lock()
            .owners
            .iter()
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        let mut ended = Vec::new();
        for (id, owner) in owned {
            // Refused, not merely unanswered: a store that is down for a
            // moment ends nobody's session.
            if matches!(
                auth::still_valid(state.store.as_ref(), &owner).await,
                Err(ApiError::Unauthorized(_) | ApiError::WrongSecret(_))
            ) {
                ended.push(id);
            }
        }
        ended
    }

    /// Forgets every session the library no longer holds; the next sweep
    /// comes when the record has doubled, so sweeping costs a constant per
    /// session opened.
    async fn sweep(&self) {
        let ids: Vec<Arc<str>> = self.lock().owners.keys().cloned().collect();
        let mut gone = Vec::new();
        for id in ids {
            if !self.is_live(&id).await {
                gone.push(id);
            }
        }
        let mut record = self.lock();
        for id in gone {
            record.owners.remove(&id);
        }
        record.sweep_at = (record.owners.len() * 2).max(FIRST_SWEEP_AT);
    }

    async fn is_live(&self, id: &str) -> bool {
        // The local manager's lookup cannot fail.
        self.sessions
            .has_session(&Arc::from(id))
            .await
            .unwrap_or(false)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(hash: &str) -> Principal {
        Principal::Session {
            session_hash: hash.into(),
            work_session: "a-1".into(),
        }
    }

    #[tokio::test]
    async fn a_session_the_library_does_not_hold_is_unknown_and_forgotten() {
        let owners = Owners::new(Arc::new(LocalSessionManager::default()));
        owners.opened("m-1", session("h-1")).await;
        assert_eq!(owners.len(), 1);
        // Never created in the library (or ended there): unknown, and
        // dropped from the record.
        assert_eq!(owners.check("m-1", &session("h-1")).await, Access::Unknown);
        assert_eq!(owners.len(), 0);
        assert_eq!(owners.check("m-2", &session("h-1")).await, Access::Unknown);
    }

    #[tokio::test]
    async fn the_record_is_swept_of_ended_sessions_as_it_grows() {
        let owners = Owners::new(Arc::new(LocalSessionManager::default()));
        for i in 0..FIRST_SWEEP_AT - 1 {
            owners.opened(&format!("m-{i}"), session("h")).await;
        }
        assert_eq!(owners.len(), FIRST_SWEEP_AT - 1);
        // The 64th opening sweeps: none of them is live in the library.
        owners.opened("m-last", session("h")).await;
        assert_eq!(owners.len(), 0);
    }
}
