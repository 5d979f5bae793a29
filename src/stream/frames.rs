//! The stream's frames, as JSON text. Their `type` names are part of the
//! protocol (docs/stream.md).

use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::store::{Entry, Watcher};

/// Close code: the server is shutting down; reconnect (elsewhere).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the server hit an internal error; reconnect with `since`.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: the client fell too far behind; reconnect with `since`.
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// Close code: the credential was revoked or expired; sign in again.
pub const CLOSE_REVOKED: u16 = 4001;
/// Close code: the peer stopped answering pings.
pub const CLOSE_UNRESPONSIVE: u16 = 4002;

#[derive(Serialize)]
struct EntryFrame<'a> {
    #[serde(rename = "type")]
    frame_type: &'static str,
    #[serde(flatten)]
    entry: &'a Entry,
}

fn text(value: impl Serialize) -> Utf8Bytes {
    // Serializing our own plain structs cannot fail.
    Utf8Bytes::from(serde_json::to_string(&value).unwrap_or_default())
}

/// `{"type": "entry", ...VaultEntry}`
pub fn entry(e: &Entry) -> Utf8Bytes {
    text(EntryFrame {
        frame_type: "entry",
        entry: e,
    })
}

/// `{"type": "hello", "vault_id", "summary", "head_seq", "epoch"}`
pub fn hello(vault_id: &str, summary: &str, head_seq: i64, epoch: &str) -> Utf8Bytes {
    text(json!({
        "type": "hello",
        "vault_id": vault_id,
        "summary": summary,
        "head_seq": head_seq,
        "epoch": epoch,
    }))
}

/// `{"type": "caught_up", "seq"}`
pub fn caught_up(seq: i64) -> Utf8Bytes {
    text(json!({ "type": "caught_up", "seq": seq }))
}

/// `{"type": "summary", "summary"}`
pub fn summary(summary: &str) -> Utf8Bytes {
    text(json!({ "type": "summary", "summary": summary }))
}

/// `{"type": "reset", "epoch"}`
pub fn reset(epoch: &str) -> Utf8Bytes {
    text(json!({ "type": "reset", "epoch": epoch }))
}

/// `{"type": "encryption", "mode", "kid"}`: the vault's work session's
/// encryption mode, after hello and whenever it changes.
pub fn encryption(mode: &crate::encryption::ModeState) -> Utf8Bytes {
    text(json!({ "type": "encryption", "mode": mode.mode, "kid": mode.kid }))
}

/// Most watchers listed in one presence frame; `count` is always the total.
pub const MAX_LISTED_WATCHERS: usize = 100;

/// `{"type": "presence", "watchers": [...first 100], "count"}`
pub fn presence(watchers: &[Watcher], count: i64) -> Utf8Bytes {
    let listed = &watchers[..watchers.len().min(MAX_LISTED_WATCHERS)];
    text(json!({ "type": "presence", "watchers": listed, "count": count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_lists_at_most_100_but_counts_everyone() {
        let watchers: Vec<Watcher> = (0..150)
            .map(|i| Watcher {
                atem_id: format!("a{i}"),
                client_id: format!("c{i}"),
            })
            .collect();
        let frame: serde_json::Value = serde_json::from_str(&presence(&watchers, 150)).unwrap();
        assert_eq!(frame["type"], "presence");
        assert_eq!(frame["count"], 150);
        assert_eq!(
            frame["watchers"].as_array().unwrap().len(),
            MAX_LISTED_WATCHERS
        );
        assert_eq!(
            frame["watchers"][0],
            json!({"atem_id": "a0", "client_id": "c0"})
        );
    }

    #[test]
    fn entry_frames_are_the_row_plus_type() {
        let row = Entry {
            seq: 7,
            entry_no: 2,
            version: 3,
            kind: "content".into(),
            writer_id: "w".into(),
            content: "<b>x</b>".into(),
            created_at: chrono::Utc::now(),
        };
        let mut frame: serde_json::Value = serde_json::from_str(&entry(&row)).unwrap();
        assert_eq!(frame["type"], "entry");
        frame.as_object_mut().unwrap().remove("type");
        assert_eq!(frame, serde_json::to_value(&row).unwrap());
    }
}
