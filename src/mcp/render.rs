//! Text renderings for MCP results: what a model reads. The structured
//! content beside them carries the same data in the REST shapes.

use crate::store::{Entry, VaultListItem, WriteReceipt};

/// One line per entry, `e3 v2 [writer] text`, as `vault-relay watch`
/// prints them.
pub fn entries(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no entries".to_string();
    }
    entries
        .iter()
        .map(|e| crate::cli::format_entry(&serde_json::to_value(e).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line per vault: `v-... summary`.
pub fn vault_list(vaults: &[VaultListItem]) -> String {
    if vaults.is_empty() {
        return "no vaults".to_string();
    }
    vaults
        .iter()
        .map(|v| format!("{} {}", v.vault_id, v.summary))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a write landed.
pub fn receipt(r: &WriteReceipt) -> String {
    format!("wrote e{} v{} (seq {})", r.entry_no, r.version, r.seq)
}

/// A vault as a resource: its summary, then its current view.
pub fn vault_view(vault_id: &str, summary: &str, current: &[Entry]) -> String {
    format!("vault {vault_id}: {summary}\n{}", entries(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_like_the_watch_command() {
        let row = Entry {
            seq: 9,
            entry_no: 3,
            version: 2,
            kind: "content".into(),
            writer_id: "atem-1".into(),
            content: "ship it".into(),
            created_at: chrono::Utc::now(),
        };
        assert_eq!(entries(&[row]), "e3 v2 [atem-1] ship it");
        assert_eq!(entries(&[]), "no entries");
    }
}
