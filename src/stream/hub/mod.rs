//! The per-process subscriber registry: each watched vault's channel, who
//! joins and leaves it, and what a newcomer is greeted with. What feeds
//! the channels is in `pump.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::oneshot;

use super::frames::{self, Frame};
use super::presence;

mod pump;
use crate::shutdown::Shutdown;
use crate::store::{Revocation, Store, StoreError, Vault, Watcher, WatcherRecord};

/// What a vault's subscribers receive.
#[derive(Clone, Debug)]
pub enum Event {
    /// A committed row, already serialized as an `entry` frame.
    Entry { seq: i64, frame: Frame },
    /// Who watches the vault, already serialized. A stream skips one equal
    /// to the last it sent: a newcomer's own join is announced to everyone
    /// a moment after its greeting showed the same watchers.
    Presence(Frame),
    /// Any other frame (summary, encryption), already serialized.
    Frame(Frame),
    /// Credentials were revoked: every subscriber checks whether its own
    /// were. It travels with the rows, so a live stream listens to one
    /// channel only.
    Revoked(Revocation),
}

struct VaultChannel {
    tx: broadcast::Sender<Event>,
    /// The cursor: every committed row of the vault up to this seq has been
    /// broadcast (or was committed before the channel opened). The pump and
    /// the local fast path ([`Hub::publish_committed`]) both advance it, each
    /// sending under this lock, so no row is sent twice or skipped; and a
    /// subscriber that reads it after joining has either received a row or
    /// finds it at or below the cursor.
    pumped: Mutex<i64>,
    /// The vault's work session, learned the first time a change of
    /// encryption mode needs it (it never changes).
    work_session: std::sync::OnceLock<String>,
    /// What the hub last learnt of the vault, so a newcomer is greeted
    /// without reading the store: opening a stream costs the same however
    /// many others watch the vault.
    known: Mutex<Known>,
}

impl VaultChannel {
    fn cursor(&self) -> MutexGuard<'_, i64> {
        lock(&self.pumped)
    }
}

#[derive(Default)]
struct Known {
    summary: Option<String>,
    /// The watchers as last read from the store, kept current with this
    /// process's own joins and leaves; `None` until read, and again when
    /// another replica's change makes it stale.
    presence: Option<KnownPresence>,
}

/// The watchers of a vault: the first [`frames::MAX_LISTED_WATCHERS`], oldest
/// first, and how many there are.
#[derive(Clone, Debug)]
pub(crate) struct KnownPresence {
    pub listed: Vec<Watcher>,
    pub count: i64,
}

impl KnownPresence {
    fn join(&mut self, w: Watcher) {
        if self.listed.len() < frames::MAX_LISTED_WATCHERS {
            self.listed.push(w);
        }
        self.count += 1;
    }

    fn leave(&mut self, w: &Watcher) {
        if let Some(i) = self.listed.iter().position(|l| l == w) {
            self.listed.remove(i);
        }
        self.count = (self.count - 1).max(0);
    }
}

/// A newcomer's membership of a vault and what its greeting says.
pub struct Joined {
    pub sub: Subscription,
    /// The summary to show in `hello`.
    pub summary: String,
    /// The head to show in `hello`: every row above it is broadcast after
    /// the subscription was made.
    pub head_seq: i64,
    /// The `presence` frame for the newcomer (itself included).
    pub presence: Frame,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; ignore poisoning.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    store: Arc<dyn Store>,
    replica_id: String,
    capacity: usize,
    channels: Mutex<HashMap<String, Arc<VaultChannel>>>,
    revocations: broadcast::Sender<Revocation>,
    next_conn: AtomicI64,
    /// To the presence writer ([`presence::record`]).
    presence: tokio::sync::mpsc::UnboundedSender<presence::Change>,
    modes: Mutex<ModeFrames>,
}

/// The `encryption` frame of each work session whose streams opened here
/// lately, so a storm of opens reads each mode once. An entry goes when its
/// mode's change is announced; `generation` moves with every change, so a
/// read that raced a change is not remembered.
#[derive(Default)]
struct ModeFrames {
    generation: u64,
    by_session: HashMap<String, Frame>,
}

/// Work sessions whose `encryption` frame is kept at most; past it the
/// cache starts over.
const MAX_MODE_FRAMES: usize = 4096;

/// The process's fan-out. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// One subscriber's membership of a vault channel; leaving is dropping it.
pub struct Subscription {
    hub: Hub,
    vault_id: String,
    /// The presence record's connection id; `None` for a subscriber that
    /// does not count as a watcher.
    conn_id: Option<i64>,
    /// Always `Some` until drop.
    rx: Option<broadcast::Receiver<Event>>,
    /// Who presence shows for it, when it counts as a watcher.
    watcher: Option<Watcher>,
}

impl Hub {
    /// Starts the hub's tasks: the notice pump, the presence coalescer and
    /// the replica heartbeat. They stop at shutdown.
    pub async fn start(store: Arc<dyn Store>, capacity: usize, shutdown: Shutdown) -> Hub {
        let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
        let hub = Hub {
            inner: Arc::new(Inner {
                store,
                replica_id: uuid::Uuid::new_v4().to_string(),
                capacity: capacity.max(16),
                channels: Mutex::new(HashMap::new()),
                revocations: broadcast::channel(256).0,
                next_conn: AtomicI64::new(1),
                presence: presence_tx,
                modes: Mutex::new(ModeFrames::default()),
            }),
        };
        // Subscribe before returning so no notice after start-up is missed.
        let notices = hub.inner.store.notices();
        if let Err(e) = presence::beat(&hub).await {
            tracing::warn!(error = %e, "first presence heartbeat failed");
        }
        let (dirty_tx, dirty_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(
            hub.clone()
                .pump_notices(notices, dirty_tx, shutdown.clone()),
        );
        tokio::spawn(presence::record(hub.clone(), presence_rx, shutdown.clone()));
        tokio::spawn(presence::run(hub.clone(), dirty_rx, shutdown));
        hub
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<String, Arc<VaultChannel>>> {
        lock(&self.inner.channels)
    }

    /// Remembers a vault's watchers, as the presence coalescer just read
    /// them, for the newcomers that follow.
    pub(crate) fn remember_presence(&self, vault_id: &str, presence: KnownPresence) {
        if let Some(ch) = self.channel(vault_id) {
            lock(&ch.known).presence = Some(presence);
        }
    }

    /// The `encryption` frame of a work session's current mode, for a
    /// newcomer that has joined its vault's channel (a later change reaches
    /// it live).
    pub(crate) async fn encryption_frame(&self, work_session: &str) -> Result<Frame, StoreError> {
        let generation = {
            let modes = lock(&self.inner.modes);
            if let Some(frame) = modes.by_session.get(work_session) {
                return Ok(frame.clone());
            }
            modes.generation
        };
        let frame = frames::encryption(&self.inner.store.encryption_mode(work_session).await?);
        let mut modes = lock(&self.inner.modes);
        if modes.generation == generation {
            if modes.by_session.len() >= MAX_MODE_FRAMES {
                modes.by_session.clear();
            }
            modes
                .by_session
                .insert(work_session.to_string(), frame.clone());
        }
        Ok(frame)
    }

    /// Forgets the cached mode of a work session (`None`: of all).
    fn forget_modes(&self, work_session: Option<&str>) {
        let mut modes = lock(&self.inner.modes);
        modes.generation += 1;
        match work_session {
            Some(ws) => {
                modes.by_session.remove(ws);
            }
            None => modes.by_session.clear(),
        }
    }

    /// Forgets what the hub knew of a vault's watchers: the next newcomer
    /// reads them from the store.
    pub(crate) fn forget_presence(&self, vault_id: &str) {
        if let Some(ch) = self.channel(vault_id) {
            lock(&ch.known).presence = None;
        }
    }

    fn channel(&self, vault_id: &str) -> Option<Arc<VaultChannel>> {
        self.channels().get(vault_id).cloned()
    }

    /// Revocations announced anywhere in the service, from now on. A stream
    /// listens here from before its credential check until it has joined;
    /// from then on revocations reach it through its vault's channel.
    pub fn revocations(&self) -> broadcast::Receiver<Revocation> {
        self.inner.revocations.subscribe()
    }

    /// Whether the vault has local subscribers.
    pub(crate) fn is_watched(&self, vault_id: &str) -> bool {
        self.channels().contains_key(vault_id)
    }

    /// Vaults with local subscribers.
    pub(crate) fn watched_vaults(&self) -> Vec<String> {
        self.channels().keys().cloned().collect()
    }

    /// Sends a frame to every local subscriber of a vault.
    pub(crate) fn broadcast(&self, vault_id: &str, event: Event) {
        if let Some(ch) = self.channel(vault_id) {
            let _ = ch.tx.send(event);
        }
    }

    /// Joins a vault's channel and says how to greet the newcomer.
    /// `vault` must have been read from the store before this call: rows
    /// above the greeting's head that commit later are announced and
    /// pumped; rows committed in between are found by the caller's replay,
    /// which reads the store after joining, or lie at or below the head.
    pub async fn join(
        &self,
        vault: &Vault,
        atem_id: &str,
        client_id: &str,
    ) -> Result<Joined, StoreError> {
        let mut sub = self.watch(&vault.id, vault.head_seq);
        // Our receiver keeps the channel in the map.
        let ch = self
            .channel(&vault.id)
            .ok_or_else(|| StoreError::Fault("a joined vault has no channel".into()))?;
        // The vault's work session is known here: encryption changes need it.
        let _ = ch.work_session.set(vault.work_session.clone());
        let conn_id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let me = Watcher {
            atem_id: atem_id.to_string(),
            client_id: client_id.to_string(),
        };
        sub.conn_id = Some(conn_id);
        sub.watcher = Some(me.clone());
        let record = WatcherRecord {
            replica_id: self.inner.replica_id.clone(),
            conn_id,
            vault_id: vault.id.clone(),
            atem_id: atem_id.to_string(),
            client_id: client_id.to_string(),
        };
        // The hub's picture of the watchers takes the newcomer at once; the
        // row follows in the presence writer's next burst. Only a newcomer
        // that must read the watchers from the store waits for its own row,
        // so that it finds itself there.
        let stored = {
            let mut known = lock(&ch.known);
            match known.presence.as_mut() {
                Some(p) => {
                    p.join(me.clone());
                    None
                }
                None => Some(oneshot::channel()),
            }
        };
        let (written, stored) = match stored {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let _ = self
            .inner
            .presence
            .send(presence::Change::Joined { record, written });
        if let Some(stored) = stored {
            let _ = stored.await;
        }
        // Read after subscribing: rows the hub broadcast before we joined
        // are at or below it.
        let mut head_seq = vault.head_seq.max(*ch.cursor());
        let (summary, presence) = {
            let known = lock(&ch.known);
            (known.summary.clone(), known.presence.clone())
        };
        // Only the first streams of a vault on this process read the store;
        // the hub keeps both facts fresh from then on.
        let summary = match summary {
            Some(summary) => summary,
            None => {
                let fresh = self.inner.store.vault(&vault.id).await?;
                let (summary, head) = fresh
                    .map(|v| (v.summary, v.head_seq))
                    .unwrap_or_else(|| (vault.summary.clone(), vault.head_seq));
                head_seq = head_seq.max(head);
                lock(&ch.known)
                    .summary
                    .get_or_insert_with(|| summary.clone())
                    .clone()
            }
        };
        let presence = match presence {
            Some(p) => frames::presence(&p.listed, p.count),
            None => match presence::read(self, &vault.id).await {
                Ok(p) => {
                    let frame = frames::presence(&p.listed, p.count);
                    lock(&ch.known).presence.get_or_insert(p);
                    frame
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading presence failed");
                    frames::presence(std::slice::from_ref(&me), 1)
                }
            },
        };
        Ok(Joined {
            sub,
            summary,
            head_seq,
            presence,
        })
    }

    /// Joins a vault's channel without showing in presence, for listeners
    /// that only need to know that the vault changed (MCP resource
    /// subscriptions). `head_seq` as for [`Hub::join`]'s vault.
    pub fn watch(&self, vault_id: &str, head_seq: i64) -> Subscription {
        let rx = {
            let mut channels = self.channels();
            let ch = channels.entry(vault_id.to_string()).or_insert_with(|| {
                Arc::new(VaultChannel {
                    tx: broadcast::channel(self.inner.capacity).0,
                    pumped: Mutex::new(head_seq),
                    work_session: std::sync::OnceLock::new(),
                    known: Mutex::new(Known::default()),
                })
            });
            ch.tx.subscribe()
        };
        Subscription {
            hub: self.clone(),
            vault_id: vault_id.to_string(),
            conn_id: None,
            rx: Some(rx),
            watcher: None,
        }
    }
}

impl Subscription {
    /// The next event, or why there is none (lagged: catch up from the store).
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(RecvError::Closed),
        }
    }

    /// The next event if one is already queued (`None` when none is).
    pub fn try_recv(&mut self) -> Option<Result<Event, RecvError>> {
        use broadcast::error::TryRecvError;
        match self.rx.as_mut()?.try_recv() {
            Ok(event) => Some(Ok(event)),
            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut channels = self.hub.channels();
            // Drop the receiver under the lock so a concurrent subscribe
            // cannot join a channel we are about to remove.
            self.rx.take();
            match channels.get(&self.vault_id) {
                Some(ch) if ch.tx.receiver_count() == 0 => {
                    channels.remove(&self.vault_id);
                }
                Some(ch) => {
                    if let Some(watcher) = &self.watcher
                        && let Some(p) = lock(&ch.known).presence.as_mut()
                    {
                        p.leave(watcher);
                    }
                }
                None => {}
            }
        }
        // A listener that never showed in presence has nothing to remove.
        if let Some(conn_id) = self.conn_id {
            let _ = self.hub.inner.presence.send(presence::Change::Left {
                conn_id,
                vault_id: std::mem::take(&mut self.vault_id),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{Committed, Entry};

    fn committed(seq: i64, prev_seq: i64) -> Committed {
        Committed {
            entry: Entry {
                seq,
                entry_no: 1,
                version: 1,
                kind: "content".into(),
                writer_id: "w".into(),
                content: format!("row {seq}"),
                created_at: crate::store::now(),
            },
            prev_seq,
        }
    }

    fn delivered(sub: &mut Subscription) -> Vec<i64> {
        let mut seqs = Vec::new();
        while let Some(Ok(event)) = sub.try_recv() {
            if let Event::Entry { seq, .. } = event {
                seqs.push(seq);
            }
        }
        seqs
    }

    #[tokio::test]
    async fn a_committed_row_goes_out_at_once_only_right_after_the_cursor() {
        // The store holds none of these rows and announces nothing, so
        // whatever arrives came by the fast path alone.
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let shutdown = Shutdown::new();
        let hub = Hub::start(store, 64, shutdown.clone()).await;
        let mut sub = hub.watch("v-1", 4);

        assert!(hub.publish_committed("v-1", &committed(5, 4)));
        assert!(hub.publish_committed("v-1", &committed(6, 5)));
        assert_eq!(delivered(&mut sub), vec![5, 6]);
        // Row 7 (another replica's, say) has not been delivered here: row 8
        // must wait for the pump, which reads both in order.
        assert!(!hub.publish_committed("v-1", &committed(8, 7)));
        // Nor is a row delivered twice.
        assert!(!hub.publish_committed("v-1", &committed(6, 5)));
        assert_eq!(delivered(&mut sub), Vec::<i64>::new());
        // Nobody here watches v-2.
        assert!(!hub.publish_committed("v-2", &committed(9, 0)));
        shutdown.trigger();
    }
}
