//! The stream's frames, as JSON text. Their `type` names are part of the
//! protocol (docs/stream.md). Each frame is serialized once and shared by
//! every subscriber that sends it, on every transport.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

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
/// Close code: the client sent more frames per second than allowed.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: the client sent a message larger than the relay accepts.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the client broke the WebSocket protocol (an unmasked or
/// malformed frame, a bad close code).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: the client sent a text message that is not UTF-8.
pub const CLOSE_NOT_UTF8: u16 = 1007;

/// One frame, serialized once: the JSON text and, each built on first use
/// and then shared by every subscriber that sends it, the frame as a
/// WebSocket writes it and as a server-sent event. Cloning is a reference
/// count.
#[derive(Clone, Debug)]
pub struct Frame(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    json: Utf8Bytes,
    wire: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

/// The two fields the event encoding needs from a frame's JSON.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    frame_type: std::borrow::Cow<'a, str>,
    seq: Option<i64>,
}

impl Frame {
    /// A frame from its JSON text (an object with a `type`).
    pub fn from_json(json: Utf8Bytes) -> Frame {
        Frame(Arc::new(Encoded {
            json,
            wire: OnceLock::new(),
            sse: OnceLock::new(),
        }))
    }

    /// The JSON text.
    pub fn json(&self) -> &Utf8Bytes {
        &self.0.json
    }

    /// The bytes a WebSocket writes for it: one text message, in fragments
    /// when it is large (see [`super::socket::encode`]). A server's frames
    /// are not masked, so these bytes are the same on every socket.
    pub fn wire(&self) -> &Bytes {
        self.0
            .wire
            .get_or_init(|| super::socket::encode(&self.0.json))
    }

    /// The server-sent event: `event: <type>`, `id: <seq>` for entries,
    /// `data: <the JSON>` and a blank line. JSON text has no raw line
    /// breaks, so the data is one line.
    pub fn sse(&self) -> &Bytes {
        self.0.sse.get_or_init(|| {
            let json = self.0.json.as_str();
            let head: Option<Head> = serde_json::from_str(json).ok();
            let frame_type = head.as_ref().map_or("message", |h| h.frame_type.as_ref());
            let mut out = String::with_capacity(json.len() + 48);
            out.push_str("event: ");
            out.push_str(frame_type);
            out.push('\n');
            if frame_type == "entry"
                && let Some(seq) = head.as_ref().and_then(|h| h.seq)
            {
                out.push_str(&format!("id: {seq}\n"));
            }
            out.push_str("data: ");
            out.push_str(json);
            out.push_str("\n\n");
            Bytes::from(out)
        })
    }
}

#[derive(Serialize)]
struct EntryFrame<'a> {
    #[serde(rename = "type")]
    frame_type: &'static str,
    #[serde(flatten)]
    entry: &'a Entry,
}

fn text(value: impl Serialize) -> Frame {
    // Serializing our own plain structs cannot fail.
    Frame::from_json(Utf8Bytes::from(
        serde_json::to_string(&value).unwrap_or_default(),
    ))
}

/// `{"type": "entry", ...VaultEntry}`
pub fn entry(e: &Entry) -> Frame {
    text(EntryFrame {
        frame_type: "entry",
        entry: e,
    })
}

/// Fields in the order `json!` would write them (its maps sort their keys),
/// so a frame reads the same whichever builds it. The frames every stream
/// open sends are built from structs like this one: a `json!` value
/// allocates a map per object, and in a storm of opens each newcomer's
/// hello and presence frames were a measurable share of the relay's work.
#[derive(Serialize)]
struct HelloFrame<'a> {
    epoch: &'a str,
    head_seq: i64,
    summary: &'a str,
    #[serde(rename = "type")]
    frame_type: &'static str,
    vault_id: &'a str,
}

/// `{"type": "hello", "vault_id", "summary", "head_seq", "epoch"}`
pub fn hello(vault_id: &str, summary: &str, head_seq: i64, epoch: &str) -> Frame {
    text(HelloFrame {
        epoch,
        head_seq,
        summary,
        frame_type: "hello",
        vault_id,
    })
}

/// `{"type": "caught_up", "seq"}`
pub fn caught_up(seq: i64) -> Frame {
    text(json!({ "type": "caught_up", "seq": seq }))
}

/// `{"type": "summary", "summary"}`
pub fn summary(summary: &str) -> Frame {
    text(json!({ "type": "summary", "summary": summary }))
}

/// `{"type": "reset", "epoch"}`
pub fn reset(epoch: &str) -> Frame {
    text(json!({ "type": "reset", "epoch": epoch }))
}

/// `{"type": "encryption", "mode", "kid"}`: the vault's work session's
/// encryption mode, after hello and whenever it changes.
pub fn encryption(mode: &crate::encryption::ModeState) -> Frame {
    text(json!({ "type": "encryption", "mode": mode.mode, "kid": mode.kid }))
}

/// Most watchers listed in one presence frame; `count` is always the total.
pub const MAX_LISTED_WATCHERS: usize = 100;

/// Fields in `json!`'s order, as [`HelloFrame`]'s.
#[derive(Serialize)]
struct PresenceFrame<'a> {
    count: i64,
    #[serde(rename = "type")]
    frame_type: &'static str,
    watchers: &'a [Watcher],
}

/// `{"type": "presence", "watchers": [...first 100], "count"}`
pub fn presence(watchers: &[Watcher], count: i64) -> Frame {
    text(PresenceFrame {
        count,
        frame_type: "presence",
        watchers: &watchers[..watchers.len().min(MAX_LISTED_WATCHERS)],
    })
}

/// `event: close` with `data: {"code", "reason"}`: where a WebSocket would
/// close with a code, an event stream sends this and ends.
pub fn close_event(code: u16, reason: &str) -> Bytes {
    let data = json!({ "code": code, "reason": reason });
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
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
        let frame: serde_json::Value =
            serde_json::from_str(presence(&watchers, 150).json()).unwrap();
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
    fn hello_and_presence_are_written_as_json_would_write_them() {
        let hello = hello("v-1", "a \"summary\"", 9, "e-1");
        let expected = json!({
            "type": "hello",
            "vault_id": "v-1",
            "summary": "a \"summary\"",
            "head_seq": 9,
            "epoch": "e-1",
        });
        assert_eq!(hello.json().as_str(), expected.to_string());
        let watchers = [Watcher {
            atem_id: "a".into(),
            client_id: "c".into(),
        }];
        let expected = json!({"type": "presence", "watchers": watchers, "count": 3});
        assert_eq!(presence(&watchers, 3).json().as_str(), expected.to_string());
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
        let mut frame: serde_json::Value = serde_json::from_str(entry(&row).json()).unwrap();
        assert_eq!(frame["type"], "entry");
        frame.as_object_mut().unwrap().remove("type");
        assert_eq!(frame, serde_json::to_value(&row).unwrap());
    }

    #[test]
    fn events_carry_the_type_the_json_and_an_id_for_entries() {
        let row = Entry {
            seq: 42,
            entry_no: 1,
            version: 1,
            kind: "content".into(),
            writer_id: "w".into(),
            content: "two\nlines".into(),
            created_at: chrono::Utc::now(),
        };
        let frame = entry(&row);
        let event = std::str::from_utf8(frame.sse()).unwrap();
        assert_eq!(
            event,
            format!("event: entry\nid: 42\ndata: {}\n\n", frame.json().as_str())
        );
        assert_eq!(
            event.trim_end().lines().count(),
            3,
            "the data is one line: {event}"
        );
        let caught = caught_up(42);
        assert_eq!(
            std::str::from_utf8(caught.sse()).unwrap(),
            format!("event: caught_up\ndata: {}\n\n", caught.json().as_str()),
            "only entries carry an id"
        );
    }
}
