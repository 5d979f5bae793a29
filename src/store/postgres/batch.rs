//! Content writes on behalf of sessions, committed many per transaction.
//!
//! [`commit`] sends a batch to `vault_write_batch` (migrations/0006) as
//! parallel arrays: one statement, so one transaction and one round trip,
//! with one NOTIFY, and each write keeps its own result.

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::encryption;
use crate::store::{Committed, Entry, KIND_CONTENT, NewEntry, StoreError, StoreResult};

/// One content write of a batch.
pub struct Item {
    pub session_hash: String,
    pub entry: NewEntry,
}

/// Commits a batch; one result per item, in order. An error for the whole
/// batch (the database is unreachable, say) is given to every item.
pub async fn commit(pool: &PgPool, items: Vec<Item>) -> Vec<StoreResult<Committed>> {
    let n = items.len();
    let mut sessions = Vec::with_capacity(n);
    let mut vaults = Vec::with_capacity(n);
    let mut entries = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    for item in items {
        sessions.push(item.session_hash);
        vaults.push(item.entry.vault_id);
        entries.push(item.entry.entry_no);
        writers.push(item.entry.writer_id);
        contents.push(item.entry.content);
    }
    let rows = sqlx::query(
        "select out_error, out_entry_no, out_version, out_seq, out_prev_seq, out_created_at
         from vault_write_batch($1, $2, $3, $4, $5)",
    )
    .bind(&sessions)
    .bind(&vaults)
    .bind(&entries)
    .bind(&writers)
    .bind(&contents)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) if rows.len() == n => rows,
        Ok(rows) => {
            let e = format!(
                "vault_write_batch answered {} rows for {n} writes",
                rows.len()
            );
            return (0..n).map(|_| Err(StoreError::Fault(e.clone()))).collect();
        }
        Err(e) => {
            let e = StoreError::from(e);
            return (0..n).map(|_| Err(same_error(&e))).collect();
        }
    };
    rows.iter()
        .zip(
            vaults
                .into_iter()
                .zip(entries)
                .zip(writers.into_iter().zip(contents)),
        )
        .map(|(row, ((_vault, entry_no), (writer_id, content)))| {
            let refused: Option<String> = row.try_get("out_error")?;
            match refused.as_deref() {
                None => {}
                Some("session") => return Err(StoreError::SessionRefused),
                Some("vault") => return Err(StoreError::VaultNotFound),
                Some("forbidden") => return Err(StoreError::WriteForbidden),
                Some("entry") => {
                    return Err(StoreError::EntryNotFound(entry_no.unwrap_or_default()));
                }
                // 'mode <mode> <kid>': the encryption mode refused it.
                Some(mode) if mode.starts_with("mode ") => {
                    return Err(encryption::refusal_from(&mode["mode ".len()..]));
                }
                Some(other) => {
                    return Err(StoreError::Fault(format!(
                        "vault_write_batch refused a write for an unknown reason `{other}`"
                    )));
                }
            }
            Ok(Committed {
                entry: Entry {
                    seq: row.try_get("out_seq")?,
                    entry_no: row.try_get("out_entry_no")?,
                    version: row.try_get("out_version")?,
                    kind: KIND_CONTENT.to_string(),
                    writer_id,
                    content,
                    created_at: row.try_get("out_created_at")?,
                },
                prev_seq: row.try_get("out_prev_seq")?,
            })
        })
        .collect()
}

/// A copy of a whole-batch error for each of its writes.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Fault(other.to_string()),
    }
}
