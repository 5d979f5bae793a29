//! Presence: who watches a vault, across replicas, coalesced.
//!
//! Joins and leaves are written to the store (so every replica sees them)
//! and announced as presence notices. Announced vaults are marked dirty;
//! once a second each dirty vault with local subscribers gets one presence
//! frame, so a thousand watchers joining cost one frame per second, not a
//! million.
//!
//! The writes go through one task per process ([`record`]): whatever joins
//! and leaves are queued when it wakes are written with one statement, so a
//! storm of ten thousand opens costs a few dozen round trips, not ten
//! thousand, and a stream open does not wait for its presence row (the hub
//! keeps its own picture current at once).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::frames;
use super::hub::{Event, Hub, KnownPresence};
use crate::shutdown::Shutdown;
use crate::store::{StoreError, WatcherRecord};

/// Most one presence frame per vault per this period.
pub const PRESENCE_PERIOD: Duration = Duration::from_secs(1);
/// How often a replica says it is alive.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);
/// A replica silent this long is taken for dead and its watchers dropped.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Changes of presence recorded at most in one statement.
const MAX_CHANGES: usize = 1024;

/// A stream that opened or closed, for the presence writer.
pub(crate) enum Change {
    /// A stream opened; `written` (if any) hears once its row is stored.
    Joined {
        record: WatcherRecord,
        written: Option<oneshot::Sender<()>>,
    },
    /// The stream with this connection id closed.
    Left { conn_id: i64, vault_id: String },
}

/// The presence writer: records queued joins and leaves in bursts, until
/// shutdown. A stream that opens and closes within one burst costs nothing.
pub(crate) async fn record(
    hub: Hub,
    mut changes: mpsc::UnboundedReceiver<Change>,
    shutdown: Shutdown,
) {
    let mut burst = Vec::with_capacity(64);
    loop {
        let got = tokio::select! {
            n = changes.recv_many(&mut burst, MAX_CHANGES) => n,
            _ = shutdown.wait() => return,
        };
        if got == 0 {
            return;
        }
        let left: HashSet<i64> = burst
            .iter()
            .filter_map(|c| match c {
                Change::Left { conn_id, .. } => Some(*conn_id),
                Change::Joined { .. } => None,
            })
            .collect();
        let mut touched: HashSet<String> = HashSet::new();
        let mut joined = Vec::new();
        let mut acks = Vec::new();
        let mut cancelled = HashSet::new();
        for change in burst.drain(..) {
            match change {
                Change::Joined { record, written } => {
                    acks.extend(written);
                    if left.contains(&record.conn_id) {
                        cancelled.insert(record.conn_id);
                    } else {
                        touched.insert(record.vault_id.clone());
                        joined.push(record);
                    }
                }
                Change::Left { vault_id, .. } => {
                    touched.insert(vault_id);
                }
            }
        }
        let left: Vec<i64> = left.difference(&cancelled).copied().collect();
        if !joined.is_empty() || !left.is_empty() {
            let written = hub
                .store()
                .update_watchers(hub.replica_id(), &joined, &left)
                .await;
            if let Err(e) = written {
                // Presence is advisory: the streams work without it.
                tracing::warn!(error = %e, "could not record stream opens and closes");
                for vault_id in &touched {
                    hub.forget_presence(vault_id);
                }
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Reads a vault's watchers from the store (across replicas).
pub(crate) async fn read(hub: &Hub, vault_id: &str) -> Result<KnownPresence, StoreError> {
    let (listed, count) = hub
        .store()
        .watchers(vault_id, frames::MAX_LISTED_WATCHERS as i64)
        .await?;
    Ok(KnownPresence { listed, count })
}

/// Records that this replica is alive.
pub async fn beat(hub: &Hub) -> Result<(), StoreError> {
    hub.store().heartbeat(hub.replica_id(), STALE_AFTER).await
}

/// The coalescer and heartbeat loop.
pub async fn run(hub: Hub, mut dirty_rx: mpsc::UnboundedReceiver<String>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(PRESENCE_PERIOD);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_PERIOD);
    let mut dirty: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            Some(v) = dirty_rx.recv() => { dirty.insert(v); }
            _ = tick.tick() => {
                for vault_id in dirty.drain() {
                    if !hub.is_watched(&vault_id) {
                        continue;
                    }
                    match read(&hub, &vault_id).await {
                        Ok(p) => {
                            let frame = frames::presence(&p.listed, p.count);
                            hub.remember_presence(&vault_id, p);
                            hub.broadcast(&vault_id, Event::Presence(frame));
                        }
                        Err(e) => tracing::warn!(error = %e, "reading presence failed"),
                    }
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = beat(&hub).await {
                    tracing::warn!(error = %e, "presence heartbeat failed");
                }
            }
            _ = shutdown.wait() => {
                // Tell the other replicas our watchers are gone now rather
                // than when our heartbeat goes stale.
                if let Err(e) = hub.store().forget_replica(hub.replica_id()).await {
                    tracing::warn!(error = %e, "could not withdraw this replica's watchers");
                }
                return;
            }
        }
    }
}
