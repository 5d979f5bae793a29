//! End-to-end encryption, on both stores where the behaviour is shared:
//! modes and their transitions, the mode rules on every write, envelopes
//! ([`modes`]), the rewrite route and a whole work session migrating there
//! and back ([`rewrite`]), the stream's encryption frames ([`streams`]),
//! Postgres lock ordering ([`postgres`]) and the CLI ([`cli`]).
//!
//! This module holds what the tests share: envelopes as the atem client
//! makes them and one helper per encryption route.

mod cli;
mod modes;
mod postgres;
mod rewrite;
mod streams;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

pub(crate) const KID: &str = "0a1b2c3d";

pub(crate) const NEW_KID: &str = "c0ffee00";

/// An envelope as the atem client makes one: a 24-byte nonce, the sealed
/// text and a 16-byte tag, in padded standard base64 (the "ciphertext" here
/// is the text itself: the relay cannot tell).
pub(crate) fn seal(kid: &str, text: &str) -> String {
    let mut bytes = vec![9u8; 24];
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&[7u8; 16]);
    format!("e1.{kid}.{}", STANDARD.encode(bytes))
}

pub(crate) fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

pub(crate) fn error(body: &Value) -> &str {
    body["error"].as_str().expect("an error message")
}

pub(crate) fn counts(body: &Value) -> (i64, i64, i64) {
    (
        body["plaintext_fields"].as_i64().expect("plaintext_fields"),
        body["ciphertext_fields"]
            .as_i64()
            .expect("ciphertext_fields"),
        body["obsolete_fields"].as_i64().expect("obsolete_fields"),
    )
}

pub(crate) async fn set_mode(
    app: &TestApp,
    token: &str,
    mode: &str,
    kid: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({ "mode": mode });
    if let Some(k) = kid {
        body["kid"] = json!(k);
    }
    app.call(
        Method::POST,
        "/api/encryption",
        Some(&format!("Bearer {token}")),
        Some(body),
    )
    .await
}

/// Sets a mode that must be accepted; returns the astation's view.
pub(crate) async fn move_to(app: &TestApp, token: &str, mode: &str, kid: Option<&str>) -> Value {
    let (status, body) = set_mode(app, token, mode, kid).await;
    assert_eq!(status, StatusCode::OK, "to {mode}: {body}");
    assert_eq!(body["mode"], mode);
    body
}

pub(crate) async fn astation_view(app: &TestApp, token: &str) -> Value {
    let (status, body) = app
        .call(
            Method::GET,
            "/api/encryption",
            Some(&format!("Bearer {token}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub(crate) async fn rewrite(
    app: &TestApp,
    vault: &str,
    session: &str,
    client: &str,
    body: Value,
) -> (StatusCode, Value) {
    app.vault_call(
        Method::POST,
        &format!("/api/vault/{vault}/encryption"),
        session,
        client,
        Some(body),
    )
    .await
}

/// What an atem does when the mode changes: read every row of the vault and
/// rewrite them all with `transform`.
pub(crate) async fn migrate_vault(
    app: &TestApp,
    vault: &str,
    session: &str,
    client: &str,
    transform: impl Fn(&str) -> String,
) -> Value {
    let (status, info) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{vault}/info"),
            session,
            client,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let history = app.read(vault, session, client, "history=true").await;
    let entries: Vec<Value> = history
        .iter()
        .map(|r| {
            json!({
                "entry_no": r["entry_no"],
                "version": r["version"],
                "content": transform(r["content"].as_str().unwrap()),
            })
        })
        .collect();
    let body = json!({
        "summary": transform(info["summary"].as_str().unwrap()),
        "entries": entries,
    });
    let (status, answer) = rewrite(app, vault, session, client, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// Opens an envelope made by [`seal`].
pub(crate) fn open(value: &str) -> String {
    let payload = value.splitn(3, '.').nth(2).expect("an envelope");
    let bytes = STANDARD.decode(payload).expect("base64");
    String::from_utf8(bytes[24..bytes.len() - 16].to_vec()).expect("utf-8")
}

/// The enabling rewrite: seal what is not sealed yet.
pub(crate) fn seal_all(kid: &'static str) -> impl Fn(&str) -> String {
    move |text| {
        if text.is_empty() || text.starts_with("e1.") {
            text.to_string()
        } else {
            seal(kid, text)
        }
    }
}

/// The disabling rewrite: open what is sealed.
pub(crate) fn open_all(text: &str) -> String {
    if text.starts_with("e1.") {
        open(text)
    } else {
        text.to_string()
    }
}

/// Every write route with `value`: (create, append, edit, summary) statuses.
pub(crate) async fn try_every_write(
    app: &TestApp,
    vault: &str,
    session: &str,
    value: &str,
) -> [(StatusCode, Value); 4] {
    let create = app
        .vault_call(
            Method::POST,
            "/api/vault",
            session,
            "c",
            Some(json!({ "summary": value })),
        )
        .await;
    let append = app
        .try_write(vault, session, "c", json!({ "text": value }))
        .await;
    let edit = app
        .try_write(vault, session, "c", json!({ "text": value, "entry_id": 1 }))
        .await;
    let summary = app.set_summary(vault, session, "c", value).await;
    [create, append, edit, summary]
}

pub(crate) async fn app_vaults(app: &TestApp, session: &str) -> Vec<String> {
    let (status, list) = app
        .vault_call(Method::GET, "/api/vault", session, "c", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["vault_id"].as_str().unwrap().to_string())
        .collect()
}
