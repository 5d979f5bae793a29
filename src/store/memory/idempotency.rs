//! Idempotency keys in memory: each keyed write checks, writes and records
//! its key under one lock, so concurrent repeats of a key serialize and only
//! the first one writes.

use super::{MemoryStore, State};
use crate::store::{
    IdempotencyClaim, Keyed, NewEntry, NewVault, Notice, PriorResponse, StoreResult, Vault,
    WriteReceipt,
};

pub(super) struct StoredKey {
    fingerprint: String,
    response: String,
    expires_at: std::time::Instant,
}

fn key_id(claim: &IdempotencyClaim) -> (String, String, String) {
    (
        claim.work_session.clone(),
        claim.client_id.clone(),
        claim.key.clone(),
    )
}

impl State {
    /// The live record of a claim's key, if any.
    pub(super) fn prior(&self, claim: &IdempotencyClaim) -> Option<PriorResponse> {
        let id = key_id(claim);
        self.idempotency
            .get(&id)
            .filter(|k| k.expires_at > std::time::Instant::now())
            .map(|k| PriorResponse {
                fingerprint: k.fingerprint.clone(),
                response: k.response.clone(),
            })
    }

    /// Stores a claim's key with the response its write produced.
    pub(super) fn record(&mut self, claim: &IdempotencyClaim, response: String) {
        self.idempotency.insert(
            key_id(claim),
            StoredKey {
                fingerprint: claim.fingerprint.clone(),
                response,
                expires_at: std::time::Instant::now() + claim.ttl,
            },
        );
    }
}

/// Creates a vault under an idempotency key: a live key answers with its
/// first response and creates nothing.
pub(super) fn create_vault_keyed(
    store: &MemoryStore,
    new: NewVault,
    claim: &IdempotencyClaim,
) -> StoreResult<Keyed<Vault>> {
    // One lock for the check, the write and the record: concurrent
    // repeats of a key serialize here and only the first one writes.
    let mut st = store.lock();
    if let Some(prior) = st.prior(claim) {
        return Ok(Keyed::Prior(prior));
    }
    let vault = st.insert_vault(new)?;
    st.record(claim, crate::store::created_response(&vault));
    Ok(Keyed::Done(vault))
}

/// Writes an entry under an idempotency key, as [`create_vault_keyed`].
pub(super) fn write_entry_keyed(
    store: &MemoryStore,
    new: NewEntry,
    claim: &IdempotencyClaim,
) -> StoreResult<Keyed<WriteReceipt>> {
    let vault_id = new.vault_id.clone();
    let receipt = {
        let mut st = store.lock();
        if let Some(prior) = st.prior(claim) {
            return Ok(Keyed::Prior(prior));
        }
        let receipt = st.insert_entry(new)?;
        st.record(claim, crate::store::receipt_response(&receipt));
        receipt
    };
    store.announce(Notice::Entry {
        vault_id,
        seq: receipt.seq,
    });
    Ok(Keyed::Done(receipt))
}

/// Forgets expired keys; returns how many.
pub(super) fn sweep(store: &MemoryStore) -> u64 {
    let now = std::time::Instant::now();
    let mut st = store.lock();
    let before = st.idempotency.len();
    st.idempotency.retain(|_, k| k.expires_at > now);
    (before - st.idempotency.len()) as u64
}
