//! How rows and changes reach a vault's channel: the notice pump, which
//! turns the store's commit notices (this replica's and every other's)
//! into frames, reading each touched vault's new rows once per burst; and
//! the local fast path, which sends a row this process just committed
//! without waiting for its notice. Both advance the channel's cursor under
//! its lock, so no row goes out twice or is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{Event, Hub, VaultChannel, lock};
use crate::shutdown::Shutdown;
use crate::store::{Committed, Notice, StoreError};
use crate::stream::frames::{self, Frame};

/// Rows fetched per query when the hub pumps a vault.
const PUMP_PAGE: i64 = 500;
/// Notices folded into one burst at most.
const MAX_BURST: usize = 4096;

impl Hub {
    /// The notice pump: folds bursts of notices, then reads each touched
    /// vault's new rows once and broadcasts them.
    pub(super) async fn pump_notices(
        self,
        mut notices: broadcast::Receiver<Notice>,
        dirty: tokio::sync::mpsc::UnboundedSender<String>,
        shutdown: Shutdown,
    ) {
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        let mut failed: HashSet<String> = HashSet::new();
        loop {
            // A retry tick brings no notice: only the vaults whose read
            // failed are read again, from their cursors (no notice was
            // missed, so nothing else needs a look).
            let first = tokio::select! {
                n = notices.recv() => Some(n),
                _ = retry.tick(), if !failed.is_empty() => None,
                _ = shutdown.wait() => return,
            };
            // Vault -> the highest seq announced (i64::MAX: re-read anyway).
            let mut entries: HashMap<String, i64> = failed.drain().map(|v| (v, i64::MAX)).collect();
            let mut summaries: HashSet<String> = HashSet::new();
            let mut modes: HashSet<String> = HashSet::new();
            let mut resync = false;
            let mut next = first;
            let mut folded = 0;
            while let Some(n) = next.take() {
                match n {
                    Ok(Notice::Entry { vault_id, seq }) => {
                        let top = entries.entry(vault_id).or_insert(seq);
                        *top = (*top).max(seq);
                    }
                    Ok(Notice::Summary { vault_id }) => {
                        summaries.insert(vault_id);
                    }
                    Ok(Notice::Presence { vault_id, by }) => {
                        if by.as_deref() != Some(self.replica_id()) {
                            // Another replica's watcher came or went: the
                            // next newcomer reads the store.
                            self.forget_presence(&vault_id);
                        }
                        let _ = dirty.send(vault_id);
                    }
                    Ok(Notice::Revoked(r)) => {
                        // First to those still opening (they listen from
                        // before their credential check until they have
                        // joined), then into every vault's channel.
                        let _ = self.inner.revocations.send(r.clone());
                        let channels: Vec<_> = self.channels().values().cloned().collect();
                        for ch in channels {
                            let _ = ch.tx.send(Event::Revoked(r.clone()));
                        }
                    }
                    Ok(Notice::Encryption { work_session }) => {
                        self.forget_modes(Some(&work_session));
                        modes.insert(work_session);
                    }
                    Ok(Notice::Resync) => resync = true,
                    // Lagged: we may have missed notices, so every watched
                    // vault re-reads from its cursor.
                    Err(RecvError::Lagged(_)) => resync = true,
                    Err(RecvError::Closed) => return,
                }
                folded += 1;
                if folded < MAX_BURST {
                    next = match notices.try_recv() {
                        Ok(n) => Some(Ok(n)),
                        Err(broadcast::error::TryRecvError::Lagged(k)) => {
                            Some(Err(RecvError::Lagged(k)))
                        }
                        Err(_) => None,
                    };
                }
            }
            if resync {
                // A missed notice may have been a change of mode.
                self.forget_modes(None);
                for v in self.watched_vaults() {
                    let _ = dirty.send(v.clone());
                    summaries.insert(v.clone());
                    entries.insert(v, i64::MAX);
                }
            }
            for (vault_id, announced) in entries {
                if let Err(e) = self.pump(&vault_id, announced).await {
                    tracing::warn!(error = %e, "reading new rows failed; will retry");
                    failed.insert(vault_id);
                }
            }
            for vault_id in summaries {
                self.push_summary(&vault_id).await;
            }
            if resync || !modes.is_empty() {
                self.push_encryption(if resync { None } else { Some(&modes) })
                    .await;
            }
        }
    }

    /// Sends an `encryption` frame to the local subscribers of every vault
    /// of the given work sessions (`None`: of every watched vault).
    async fn push_encryption(&self, work_sessions: Option<&HashSet<String>>) {
        let watched: Vec<(String, Arc<VaultChannel>)> = self
            .channels()
            .iter()
            .map(|(id, ch)| (id.clone(), ch.clone()))
            .collect();
        let mut frames_by_session: std::collections::HashMap<String, Frame> =
            std::collections::HashMap::new();
        for (vault_id, ch) in watched {
            let work_session = match ch.work_session.get() {
                Some(ws) => ws.clone(),
                None => match self.inner.store.vault(&vault_id).await {
                    Ok(Some(v)) => ch.work_session.get_or_init(|| v.work_session).clone(),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a vault's work session failed");
                        continue;
                    }
                },
            };
            if work_sessions.is_some_and(|set| !set.contains(&work_session)) {
                continue;
            }
            let frame = match frames_by_session.get(&work_session) {
                Some(f) => f.clone(),
                None => match self.inner.store.encryption_mode(&work_session).await {
                    Ok(mode) => {
                        let f = frames::encryption(&mode);
                        frames_by_session.insert(work_session, f.clone());
                        f
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading an encryption mode failed");
                        continue;
                    }
                },
            };
            let _ = ch.tx.send(Event::Frame(frame));
        }
    }

    /// Reads a vault's rows above its channel's cursor and broadcasts them.
    /// `announced` is the highest seq a notice named: when the cursor is
    /// already there (the fast path delivered it), there is nothing to read.
    async fn pump(&self, vault_id: &str, announced: i64) -> Result<(), StoreError> {
        let Some(ch) = self.channel(vault_id) else {
            return Ok(());
        };
        loop {
            let after = *ch.cursor();
            if after >= announced {
                return Ok(());
            }
            let rows = self
                .inner
                .store
                .entries_after(vault_id, after, PUMP_PAGE)
                .await?;
            let full = rows.len() as i64 == PUMP_PAGE;
            {
                // The fast path may have moved the cursor during the read:
                // rows at or below it were sent already.
                let mut cursor = ch.cursor();
                for row in &rows {
                    if row.seq > *cursor {
                        let _ = ch.tx.send(Event::Entry {
                            seq: row.seq,
                            frame: frames::entry(row),
                        });
                        *cursor = row.seq;
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The local fast path: delivers a row this process just committed to
    /// its own subscribers at once, without waiting for the notice and a
    /// re-read. Only when the vault's channel has delivered exactly up to
    /// `prev_seq`, the vault's newest seq just before the row (read under
    /// the vault's write lock): then no committed row lies between the
    /// cursor and this one, and sending it keeps every stream gapless.
    /// Otherwise (another replica's row is still on its way, say) it does
    /// nothing and the row comes the usual way, by notice and pump. Returns
    /// whether it delivered.
    pub fn publish_committed(&self, vault_id: &str, committed: &Committed) -> bool {
        let Some(ch) = self.channel(vault_id) else {
            return false;
        };
        let mut cursor = ch.cursor();
        if *cursor != committed.prev_seq {
            return false;
        }
        let _ = ch.tx.send(Event::Entry {
            seq: committed.entry.seq,
            frame: frames::entry(&committed.entry),
        });
        *cursor = committed.entry.seq;
        true
    }

    async fn push_summary(&self, vault_id: &str) {
        let Some(ch) = self.channel(vault_id) else {
            return;
        };
        match self.inner.store.vault(vault_id).await {
            Ok(Some(v)) => {
                // Remembered before the broadcast, as the cursor is.
                lock(&ch.known).summary = Some(v.summary.clone());
                let _ = ch.tx.send(Event::Frame(frames::summary(&v.summary)));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading a summary failed"),
        }
    }
}
