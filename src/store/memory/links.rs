//! Read-only links in memory.

use super::MemoryStore;
use crate::store::{Notice, ReadLink, Revocation, StoreResult};

pub(super) fn insert_link(store: &MemoryStore, link: &ReadLink) -> StoreResult<()> {
    store
        .lock()
        .links
        .insert(link.link_id.clone(), link.clone());
    Ok(())
}

pub(super) fn link_by_secret_hash(
    store: &MemoryStore,
    secret_hash: &str,
) -> StoreResult<Option<ReadLink>> {
    Ok(store
        .lock()
        .links
        .values()
        .find(|l| l.secret_hash == secret_hash)
        .cloned())
}

pub(super) fn links_for_vault(store: &MemoryStore, vault_id: &str) -> StoreResult<Vec<ReadLink>> {
    let mut links: Vec<ReadLink> = store
        .lock()
        .links
        .values()
        .filter(|l| l.vault_id == vault_id)
        .cloned()
        .collect();
    links.sort_by_key(|l| l.created_at);
    Ok(links)
}

pub(super) fn revoke_link(store: &MemoryStore, vault_id: &str, link_id: &str) -> StoreResult<bool> {
    let changed = {
        let mut st = store.lock();
        match st.links.get_mut(link_id) {
            Some(l) if l.vault_id == vault_id && !l.revoked => {
                l.revoked = true;
                true
            }
            _ => false,
        }
    };
    if changed {
        store.announce(Notice::Revoked(Revocation::Link(link_id.to_string())));
    }
    Ok(changed)
}
