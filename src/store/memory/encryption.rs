//! End-to-end encryption in memory: the work sessions' modes, the write-side
//! check every write makes under the lock, the counts a mode change reports,
//! and the whole-vault rewrite.

use std::collections::HashMap;

use super::{MemoryStore, State};
use crate::encryption::{self, FieldCounts, ModeChange, ModeState, Rewrite, mode::Plan};
use crate::store::{Entry, Notice, StoreError, StoreResult};

impl State {
    pub(super) fn mode(&self, work_session: &str) -> ModeState {
        self.modes.get(work_session).cloned().unwrap_or_default()
    }

    /// The write-side mode check: every write calls it under the lock,
    /// before it changes anything.
    pub(super) fn admit(&self, work_session: &str, value: &str) -> StoreResult<()> {
        let mode = self.mode(work_session);
        if encryption::mode::accepts_write(&mode, value) {
            Ok(())
        } else {
            Err(StoreError::ModeMismatch(mode))
        }
    }

    pub(super) fn counts(&self, work_session: &str, kid: Option<&str>) -> FieldCounts {
        let vaults = self
            .vaults
            .values()
            .filter(|v| v.vault.work_session == work_session);
        FieldCounts::of(
            vaults.flat_map(|v| {
                std::iter::once(v.vault.summary.as_str())
                    .chain(v.rows.iter().map(|r| r.content.as_str()))
            }),
            kid,
        )
    }

    /// The rewrite under the lock: checks everything, then moves the rows;
    /// returns the first new seq and how many rows moved.
    fn rewrite(&mut self, rewrite: &Rewrite) -> StoreResult<(i64, i64)> {
        let work_session = self.work_session_of(&rewrite.vault_id)?;
        let mode = self.mode(&work_session);
        let fits = encryption::mode::rewrite_runs_in(mode.mode)
            && encryption::mode::accepts_rewrite(&mode, &rewrite.summary)
            && rewrite
                .entries
                .iter()
                .all(|r| encryption::mode::accepts_rewrite(&mode, &r.content));
        if !fits {
            return Err(StoreError::ModeMismatch(mode));
        }
        let next_seq = self.next_seq;
        let vs = self
            .vaults
            .get_mut(&rewrite.vault_id)
            .ok_or(StoreError::VaultNotFound)?;
        let index: HashMap<(i64, i64), usize> = vs
            .rows
            .iter()
            .enumerate()
            .map(|(at, row)| ((row.entry_no, row.version), at))
            .collect();
        let mut positions = Vec::with_capacity(rewrite.entries.len());
        for r in &rewrite.entries {
            let at =
                index
                    .get(&(r.entry_no, r.version))
                    .copied()
                    .ok_or(StoreError::RowNotFound {
                        entry_no: r.entry_no,
                        version: r.version,
                    })?;
            positions.push(at);
        }
        // Checks are done; from here on nothing fails. Rewritten rows
        // leave their place and join the end of the log with fresh
        // seqs, in the order listed, so rows stay in seq order.
        let mut moved: Vec<Entry> = positions.iter().map(|&at| vs.rows[at].clone()).collect();
        let mut leaving = vec![false; vs.rows.len()];
        for at in positions {
            leaving[at] = true;
        }
        let mut at = 0;
        vs.rows.retain(|_| {
            at += 1;
            !leaving[at - 1]
        });
        let mut seq = next_seq;
        for (row, r) in moved.iter_mut().zip(&rewrite.entries) {
            seq += 1;
            row.seq = seq;
            row.content = r.content.clone();
        }
        vs.rows.extend(moved);
        vs.vault.summary = rewrite.summary.clone();
        let count = rewrite.entries.len() as i64;
        if count > 0 {
            vs.vault.head_seq = seq;
        }
        self.next_seq = seq;
        Ok((next_seq + 1, count))
    }
}

/// Moves a work session's mode as `change` asks, when the plan allows; the
/// counts are those under the mode it ends in.
pub(super) fn set_mode(
    store: &MemoryStore,
    work_session: &str,
    change: &ModeChange,
) -> StoreResult<(ModeState, FieldCounts)> {
    let (after, counts, moved) = {
        let mut st = store.lock();
        let current = st.mode(work_session);
        let plan = encryption::mode::plan(&current, change, || {
            st.counts(work_session, current.kid.as_deref())
        })?;
        let (after, moved) = match plan {
            Plan::Keep => (current, false),
            Plan::Move { mode, kid } => {
                let after = ModeState {
                    mode,
                    kid,
                    updated_at: Some(crate::store::now()),
                };
                st.modes.insert(work_session.to_string(), after.clone());
                (after, true)
            }
        };
        let counts = st.counts(work_session, after.kid.as_deref());
        (after, counts, moved)
    };
    if moved {
        store.announce(Notice::Encryption {
            work_session: work_session.to_string(),
        });
    }
    Ok((after, counts))
}

/// Replaces the listed rows' content (and the summary) in one step under
/// the lock: the rows move to the end of the log with fresh seqs.
pub(super) fn rewrite_vault(store: &MemoryStore, rewrite: &Rewrite) -> StoreResult<i64> {
    let (first_seq, count) = store.lock().rewrite(rewrite)?;
    for seq in first_seq..first_seq + count {
        store.announce(Notice::Entry {
            vault_id: rewrite.vault_id.clone(),
            seq,
        });
    }
    store.announce(Notice::Summary {
        vault_id: rewrite.vault_id.clone(),
    });
    Ok(count)
}
