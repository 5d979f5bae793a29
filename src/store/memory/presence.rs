//! Who watches which vault, in memory: one process, so every watcher is
//! this replica's and a heartbeat has nothing to sweep.

use super::MemoryStore;
use crate::store::{Notice, StoreResult, Watcher, WatcherRecord};

pub(super) fn update_watchers(
    store: &MemoryStore,
    replica_id: &str,
    joined: &[WatcherRecord],
    left: &[i64],
) -> StoreResult<()> {
    let mut touched: Vec<String> = Vec::new();
    let mut touch = |vault_id: &str| {
        if !touched.iter().any(|v| v == vault_id) {
            touched.push(vault_id.to_string());
        }
    };
    {
        let mut st = store.lock();
        if !left.is_empty() {
            st.watchers.retain(|w| {
                let gone = w.replica_id == replica_id && left.contains(&w.conn_id);
                if gone {
                    touch(&w.vault_id);
                }
                !gone
            });
        }
        for w in joined {
            touch(&w.vault_id);
            st.watchers.push(w.clone());
        }
    }
    for vault_id in touched {
        store.announce(Notice::Presence {
            vault_id,
            by: Some(replica_id.to_string()),
        });
    }
    Ok(())
}

pub(super) fn watchers(
    store: &MemoryStore,
    vault_id: &str,
    limit: i64,
) -> StoreResult<(Vec<Watcher>, i64)> {
    let st = store.lock();
    let all = st.watchers.iter().filter(|w| w.vault_id == vault_id);
    let count = all.clone().count();
    let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
    let listed = all
        .take(limit)
        .map(|w| Watcher {
            atem_id: w.atem_id.clone(),
            client_id: w.client_id.clone(),
        })
        .collect();
    Ok((listed, i64::try_from(count).unwrap_or(i64::MAX)))
}

pub(super) fn forget_replica(store: &MemoryStore, replica_id: &str) -> StoreResult<()> {
    let mut vaults: Vec<String> = Vec::new();
    store.lock().watchers.retain(|w| {
        let gone = w.replica_id == replica_id;
        if gone && !vaults.contains(&w.vault_id) {
            vaults.push(w.vault_id.clone());
        }
        !gone
    });
    for vault_id in vaults {
        store.announce(Notice::Presence { vault_id, by: None });
    }
    Ok(())
}
