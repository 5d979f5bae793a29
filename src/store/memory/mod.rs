//! The in-memory store: the same behaviour as Postgres, nothing durable.
//!
//! One mutex guards everything. Each write takes it once, so a write is
//! atomic and seq order equals commit order; the notice is sent after the
//! lock is released, i.e. after the "commit".

mod credentials;
mod encryption;
mod idempotency;
mod links;
mod presence;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::encryption::{FieldCounts, ModeChange, ModeState, Rewrite};

use super::{
    Astation, Committed, Entry, IdempotencyClaim, KIND_CONTENT, Keyed, NewEntry, NewVault, Notice,
    ReadLink, SessionRecord, SessionState, Store, StoreError, StoreResult, StreamTicket, Vault,
    VaultListItem, View, Watcher, WatcherRecord, WriteKey, WriteReceipt,
};

/// Capacity of the notice channel; a lagging receiver resyncs from the store.
const NOTICE_CAPACITY: usize = 4096;

#[derive(Default)]
struct State {
    next_seq: i64,
    vaults: HashMap<String, VaultState>,
    /// Vault ids in creation order, so lists are stable.
    vault_order: Vec<String>,
    astations: HashMap<String, (Astation, String)>,
    sessions: HashMap<String, SessionRecord>,
    tickets: HashMap<String, StreamTicket>,
    links: HashMap<String, ReadLink>,
    /// Open streams in the order they joined: (replica, conn) -> record.
    watchers: Vec<WatcherRecord>,
    /// Idempotency keys by (work session, client id, key).
    idempotency: HashMap<(String, String, String), idempotency::StoredKey>,
    /// Encryption modes by work session; absent means never set (off).
    modes: HashMap<String, ModeState>,
}

impl State {
    fn work_session_of(&self, vault_id: &str) -> StoreResult<String> {
        self.vaults
            .get(vault_id)
            .map(|v| v.vault.work_session.clone())
            .ok_or(StoreError::VaultNotFound)
    }

    fn insert_vault(&mut self, new: NewVault) -> StoreResult<Vault> {
        if self.vaults.contains_key(&new.id) {
            return Err(StoreError::Conflict(format!("vault {} exists", new.id)));
        }
        self.admit(&new.work_session, &new.summary)?;
        let vault = Vault {
            id: new.id.clone(),
            summary: new.summary,
            work_session: new.work_session,
            creator: new.creator,
            created_at: super::now(),
            writers: Vec::new(),
            head_seq: 0,
        };
        self.vault_order.push(new.id.clone());
        self.vaults.insert(
            new.id,
            VaultState {
                vault: vault.clone(),
                next_entry_no: 1,
                rows: Vec::new(),
            },
        );
        Ok(vault)
    }

    /// Appends or edits; the caller announces the row after unlocking.
    fn insert_entry(&mut self, new: NewEntry) -> StoreResult<WriteReceipt> {
        Ok(self.write(new)?.committed.receipt())
    }
}

struct VaultState {
    vault: Vault,
    next_entry_no: i64,
    /// Rows in seq order.
    rows: Vec<Entry>,
}

/// The in-memory [`Store`].
pub struct MemoryStore {
    state: Mutex<State>,
    epoch: String,
    notices: broadcast::Sender<Notice>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a fresh epoch.
    pub fn new() -> Self {
        let (notices, _) = broadcast::channel(NOTICE_CAPACITY);
        Self {
            state: Mutex::new(State::default()),
            epoch: uuid::Uuid::new_v4().to_string(),
            notices,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write
        // (every write mutates only after its checks), so poison is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn announce_entry(&self, written: &Written) {
        self.announce(Notice::Entry {
            vault_id: written.vault_id.clone(),
            seq: written.committed.entry.seq,
        });
    }

    fn announce(&self, notice: Notice) {
        // No receivers is fine: nobody is streaming.
        let _ = self.notices.send(notice);
    }
}

/// A row written under the lock, with what the notice needs.
struct Written {
    vault_id: String,
    committed: Committed,
}

impl State {
    /// Appends or edits (the caller holds the lock, so this is atomic).
    fn write(&mut self, new: NewEntry) -> StoreResult<Written> {
        let seq = self.next_seq + 1;
        // The encryption mode check, before anything changes.
        let work_session = self.work_session_of(&new.vault_id)?;
        self.admit(&work_session, &new.content)?;
        let vs = self
            .vaults
            .get_mut(&new.vault_id)
            .ok_or(StoreError::VaultNotFound)?;
        let (entry_no, version) = match new.entry_no {
            None => (vs.next_entry_no, 1),
            Some(n) => {
                let newest = vs
                    .rows
                    .iter()
                    .filter(|r| r.entry_no == n)
                    .map(|r| r.version)
                    .max()
                    .ok_or(StoreError::EntryNotFound(n))?;
                (n, newest + 1)
            }
        };
        if new.entry_no.is_none() {
            vs.next_entry_no += 1;
        }
        let prev_seq = vs.rows.last().map_or(0, |r| r.seq);
        let entry = Entry {
            seq,
            entry_no,
            version,
            kind: KIND_CONTENT.to_string(),
            writer_id: new.writer_id.clone(),
            content: new.content,
            created_at: super::now(),
        };
        vs.rows.push(entry.clone());
        vs.vault.head_seq = seq;
        if !vs.vault.writers.contains(&new.writer_id) {
            vs.vault.writers.push(new.writer_id);
        }
        self.next_seq = seq;
        Ok(Written {
            vault_id: new.vault_id,
            committed: Committed { entry, prev_seq },
        })
    }

    /// The checks of [`Store::write_as`], in its order, under the lock;
    /// returns the writer's work session.
    fn check_writer(&self, session_hash: &str, new: &NewEntry) -> StoreResult<String> {
        let work_session = match self.sessions.get(session_hash) {
            Some(s) if s.state == SessionState::Granted => s
                .astation_id
                .clone()
                .ok_or_else(|| StoreError::Fault("granted session without an astation".into()))?,
            _ => return Err(StoreError::SessionRefused),
        };
        let vault = &self
            .vaults
            .get(&new.vault_id)
            .ok_or(StoreError::VaultNotFound)?
            .vault;
        // The rule itself lives in crate::access.
        let caller = crate::auth::Caller {
            principal: crate::auth::Principal::Session {
                session_hash: session_hash.to_string(),
                work_session: work_session.clone(),
            },
            client_id: new.writer_id.clone(),
        };
        if crate::access::allows(&caller, vault, crate::access::Action::Write) {
            Ok(work_session)
        } else {
            Err(StoreError::WriteForbidden)
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn epoch(&self) -> String {
        self.epoch.clone()
    }

    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn create_vault(&self, new: NewVault) -> StoreResult<Vault> {
        self.lock().insert_vault(new)
    }

    async fn vault(&self, vault_id: &str) -> StoreResult<Option<Vault>> {
        Ok(self.lock().vaults.get(vault_id).map(|v| v.vault.clone()))
    }

    async fn list_vaults(
        &self,
        work_session: &str,
        client_id: &str,
    ) -> StoreResult<Vec<VaultListItem>> {
        let st = self.lock();
        Ok(st
            .vault_order
            .iter()
            .filter_map(|id| st.vaults.get(id))
            .map(|v| &v.vault)
            .filter(|v| v.work_session == work_session || v.writers.iter().any(|w| w == client_id))
            .map(|v| VaultListItem {
                vault_id: v.id.clone(),
                summary: v.summary.clone(),
            })
            .collect())
    }

    async fn write_entry(&self, new: NewEntry) -> StoreResult<WriteReceipt> {
        let written = {
            let mut st = self.lock();
            st.write(new)?
        };
        self.announce_entry(&written);
        Ok(written.committed.receipt())
    }

    async fn read_entries(
        &self,
        vault_id: &str,
        view: View,
        since: i64,
    ) -> StoreResult<Vec<Entry>> {
        let st = self.lock();
        let vs = st.vaults.get(vault_id).ok_or(StoreError::VaultNotFound)?;
        Ok(match view {
            View::History => vs.rows.iter().filter(|r| r.seq > since).cloned().collect(),
            View::Current => {
                // The newest version of each entry (after a rewrite it is not
                // always the entry's last row in seq order).
                let mut newest: HashMap<i64, &Entry> = HashMap::new();
                for row in &vs.rows {
                    let slot = newest.entry(row.entry_no).or_insert(row);
                    if row.version > slot.version {
                        *slot = row;
                    }
                }
                let mut current: Vec<Entry> = newest
                    .into_values()
                    .filter(|r| r.seq > since)
                    .cloned()
                    .collect();
                current.sort_by_key(|r| r.entry_no);
                current
            }
        })
    }

    async fn entries_after(
        &self,
        vault_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<Entry>> {
        let st = self.lock();
        let vs = st.vaults.get(vault_id).ok_or(StoreError::VaultNotFound)?;
        let start = vs.rows.partition_point(|r| r.seq <= after);
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        Ok(vs.rows[start..].iter().take(limit).cloned().collect())
    }

    async fn set_summary(&self, vault_id: &str, summary: &str) -> StoreResult<()> {
        {
            let mut st = self.lock();
            let work_session = st.work_session_of(vault_id)?;
            st.admit(&work_session, summary)?;
            let vs = st
                .vaults
                .get_mut(vault_id)
                .ok_or(StoreError::VaultNotFound)?;
            vs.vault.summary = summary.to_string();
        }
        self.announce(Notice::Summary {
            vault_id: vault_id.to_string(),
        });
        Ok(())
    }

    async fn create_astation(&self, astation: &Astation, token_hash: &str) -> StoreResult<()> {
        credentials::create_astation(self, astation, token_hash)
    }

    async fn list_astations(&self) -> StoreResult<Vec<Astation>> {
        credentials::list_astations(self)
    }

    async fn astation_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Astation>> {
        credentials::astation_by_token_hash(self, token_hash)
    }

    async fn delete_astation(&self, astation_id: &str) -> StoreResult<()> {
        credentials::delete_astation(self, astation_id)
    }

    async fn revoke_session(&self, id_hash: &str) -> StoreResult<bool> {
        credentials::revoke_session(self, id_hash)
    }

    async fn insert_session(&self, session: &SessionRecord) -> StoreResult<()> {
        credentials::insert_session(self, session)
    }

    async fn purge_unpaired_sessions(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        credentials::purge_unpaired_sessions(self, before)
    }

    async fn session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        credentials::session(self, id_hash)
    }

    async fn transition_session(
        &self,
        id_hash: &str,
        from: SessionState,
        to: SessionState,
        astation_id: Option<&str>,
    ) -> StoreResult<bool> {
        credentials::transition_session(self, id_hash, from, to, astation_id)
    }

    async fn record_failed_code(
        &self,
        id_hash: &str,
        limit: i32,
    ) -> StoreResult<Option<SessionRecord>> {
        credentials::record_failed_code(self, id_hash, limit)
    }

    async fn insert_ticket(&self, ticket: &StreamTicket) -> StoreResult<()> {
        credentials::insert_ticket(self, ticket)
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<StreamTicket>> {
        credentials::take_ticket(self, ticket_hash)
    }

    async fn update_watchers(
        &self,
        replica_id: &str,
        joined: &[WatcherRecord],
        left: &[i64],
    ) -> StoreResult<()> {
        presence::update_watchers(self, replica_id, joined, left)
    }

    async fn watchers(&self, vault_id: &str, limit: i64) -> StoreResult<(Vec<Watcher>, i64)> {
        presence::watchers(self, vault_id, limit)
    }

    async fn heartbeat(
        &self,
        _replica_id: &str,
        _stale_after: std::time::Duration,
    ) -> StoreResult<()> {
        // One process holds every watcher, so none can go stale.
        Ok(())
    }

    async fn forget_replica(&self, replica_id: &str) -> StoreResult<()> {
        presence::forget_replica(self, replica_id)
    }

    async fn insert_link(&self, link: &ReadLink) -> StoreResult<()> {
        links::insert_link(self, link)
    }

    async fn link_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<ReadLink>> {
        links::link_by_secret_hash(self, secret_hash)
    }

    async fn links_for_vault(&self, vault_id: &str) -> StoreResult<Vec<ReadLink>> {
        links::links_for_vault(self, vault_id)
    }

    async fn revoke_link(&self, vault_id: &str, link_id: &str) -> StoreResult<bool> {
        links::revoke_link(self, vault_id, link_id)
    }

    async fn create_vault_keyed(
        &self,
        new: NewVault,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Keyed<Vault>> {
        idempotency::create_vault_keyed(self, new, claim)
    }

    async fn write_entry_keyed(
        &self,
        new: NewEntry,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Keyed<WriteReceipt>> {
        idempotency::write_entry_keyed(self, new, claim)
    }

    async fn sweep_idempotency_keys(&self) -> StoreResult<u64> {
        Ok(idempotency::sweep(self))
    }

    async fn write_as(
        &self,
        session_hash: &str,
        new: NewEntry,
        key: Option<WriteKey>,
    ) -> StoreResult<Keyed<Committed>> {
        let written = {
            let mut st = self.lock();
            let work_session = st.check_writer(session_hash, &new)?;
            let claim = key.map(|k| k.claim(&work_session, &new.writer_id));
            if let Some(prior) = claim.as_ref().and_then(|c| st.prior(c)) {
                return Ok(Keyed::Prior(prior));
            }
            let written = st.write(new)?;
            if let Some(claim) = &claim {
                st.record(claim, super::receipt_response(&written.committed.receipt()));
            }
            written
        };
        self.announce_entry(&written);
        Ok(Keyed::Done(written.committed))
    }

    async fn encryption_mode(&self, work_session: &str) -> StoreResult<ModeState> {
        Ok(self.lock().mode(work_session))
    }

    async fn encryption_counts(
        &self,
        work_session: &str,
        kid: Option<&str>,
    ) -> StoreResult<FieldCounts> {
        Ok(self.lock().counts(work_session, kid))
    }

    async fn set_encryption_mode(
        &self,
        work_session: &str,
        change: &ModeChange,
    ) -> StoreResult<(ModeState, FieldCounts)> {
        encryption::set_mode(self, work_session, change)
    }

    async fn rewrite_vault(&self, rewrite: &Rewrite) -> StoreResult<i64> {
        encryption::rewrite_vault(self, rewrite)
    }
}
