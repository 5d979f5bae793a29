//! Presence: who watches a vault, across replicas, coalesced.
//!
//! Joins and leaves are written to the store (so every replica sees them)
//! and announced as presence notices. Announced vaults are marked dirty;
//! once a second each dirty vault with local subscribers gets one presence
//! frame, so a thousand watchers joining cost one frame per second, not a
//! million.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;

use super::frames;
use super::hub::{Event, Hub, KnownPresence};
use crate::shutdown::Shutdown;
use crate::store::StoreError;

/// Most one presence frame per vault per this period.
pub const PRESENCE_PERIOD: Duration = Duration::from_secs(1);
/// How often a replica says it is alive.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);
/// A replica silent this long is taken for dead and its watchers dropped.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

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
                            hub.broadcast(&vault_id, Event::Frame(frame));
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
