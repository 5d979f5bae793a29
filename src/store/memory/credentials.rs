//! Astations, sessions and stream tickets in memory (the Postgres side is
//! store/postgres/credentials.rs). A revocation is announced after the
//! state changed, as the Postgres store's notice goes out at commit.

use super::MemoryStore;
use crate::store::{
    Astation, Notice, Revocation, SessionRecord, SessionState, StoreError, StoreResult,
    StreamTicket,
};

pub(super) fn create_astation(
    store: &MemoryStore,
    astation: &Astation,
    token_hash: &str,
) -> StoreResult<()> {
    let mut st = store.lock();
    if st.astations.contains_key(&astation.astation_id) {
        return Err(StoreError::Conflict("astation exists".into()));
    }
    st.astations.insert(
        astation.astation_id.clone(),
        (astation.clone(), token_hash.to_string()),
    );
    Ok(())
}

pub(super) fn list_astations(store: &MemoryStore) -> StoreResult<Vec<Astation>> {
    let mut all: Vec<Astation> = store
        .lock()
        .astations
        .values()
        .map(|(a, _)| a.clone())
        .collect();
    all.sort_by(|a, b| (a.created_at, &a.astation_id).cmp(&(b.created_at, &b.astation_id)));
    Ok(all)
}

pub(super) fn astation_by_token_hash(
    store: &MemoryStore,
    token_hash: &str,
) -> StoreResult<Option<Astation>> {
    Ok(store
        .lock()
        .astations
        .values()
        .find(|(_, h)| h == token_hash)
        .map(|(a, _)| a.clone()))
}

pub(super) fn delete_astation(store: &MemoryStore, astation_id: &str) -> StoreResult<()> {
    {
        let mut st = store.lock();
        if st.astations.remove(astation_id).is_none() {
            return Err(StoreError::AstationNotFound);
        }
        for s in st.sessions.values_mut() {
            if s.astation_id.as_deref() == Some(astation_id) {
                s.state = SessionState::Revoked;
            }
        }
    }
    store.announce(Notice::Revoked(Revocation::Astation(
        astation_id.to_string(),
    )));
    Ok(())
}

pub(super) fn revoke_session(store: &MemoryStore, id_hash: &str) -> StoreResult<bool> {
    let changed = {
        let mut st = store.lock();
        match st.sessions.get_mut(id_hash) {
            Some(s) if s.state != SessionState::Revoked => {
                s.state = SessionState::Revoked;
                true
            }
            _ => false,
        }
    };
    if changed {
        store.announce(Notice::Revoked(Revocation::Session(id_hash.to_string())));
    }
    Ok(changed)
}

pub(super) fn insert_session(store: &MemoryStore, session: &SessionRecord) -> StoreResult<()> {
    store
        .lock()
        .sessions
        .insert(session.id_hash.clone(), session.clone());
    Ok(())
}

pub(super) fn purge_unpaired_sessions(
    store: &MemoryStore,
    before: chrono::DateTime<chrono::Utc>,
) -> StoreResult<()> {
    store.lock().sessions.retain(|_, s| {
        let unpaired = matches!(s.state, SessionState::Pending | SessionState::Denied);
        !(unpaired && s.expires_at < before)
    });
    Ok(())
}

pub(super) fn session(store: &MemoryStore, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
    Ok(store.lock().sessions.get(id_hash).cloned())
}

pub(super) fn transition_session(
    store: &MemoryStore,
    id_hash: &str,
    from: SessionState,
    to: SessionState,
    astation_id: Option<&str>,
) -> StoreResult<bool> {
    let mut st = store.lock();
    match st.sessions.get_mut(id_hash) {
        Some(s) if s.state == from => {
            s.state = to;
            if let Some(a) = astation_id {
                s.astation_id = Some(a.to_string());
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(super) fn record_failed_code(
    store: &MemoryStore,
    id_hash: &str,
    limit: i32,
) -> StoreResult<Option<SessionRecord>> {
    let mut st = store.lock();
    let Some(s) = st.sessions.get_mut(id_hash) else {
        return Ok(None);
    };
    if s.state != SessionState::Pending || s.expires_at <= crate::store::now() {
        return Ok(None);
    }
    s.failed_attempts += 1;
    if s.failed_attempts >= limit {
        s.state = SessionState::Denied;
    }
    Ok(Some(s.clone()))
}

pub(super) fn insert_ticket(store: &MemoryStore, ticket: &StreamTicket) -> StoreResult<()> {
    let mut st = store.lock();
    let now = crate::store::now();
    // Expired tickets are dropped here so the map stays small.
    st.tickets.retain(|_, t| t.expires_at > now);
    st.tickets
        .insert(ticket.ticket_hash.clone(), ticket.clone());
    Ok(())
}

pub(super) fn take_ticket(
    store: &MemoryStore,
    ticket_hash: &str,
) -> StoreResult<Option<StreamTicket>> {
    Ok(store
        .lock()
        .tickets
        .remove(ticket_hash)
        .filter(|t| t.expires_at > crate::store::now()))
}
