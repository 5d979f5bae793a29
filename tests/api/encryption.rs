//! End-to-end encryption on both stores: modes and their transitions, the
//! mode rules on every write, envelopes, the rewrite route, the stream's
//! encryption frames, and a whole work session migrating there and back.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    every_transition_and_every_refusal_follows_the_contract,
    gates_count_every_summary_and_every_row_version,
    writes_follow_the_mode_and_refusals_write_nothing,
    malformed_envelopes_are_refused_in_every_mode,
    envelopes_may_be_as_long_as_the_sealed_limit,
    sessions_see_their_work_sessions_mode,
    bad_mode_requests_are_400_or_401,
    the_rewrite_replaces_rows_with_fresh_seqs_in_the_order_listed,
    a_rewrite_naming_a_missing_row_changes_nothing,
    a_rewrite_outside_enabling_or_disabling_is_409,
    a_rewrite_whose_values_do_not_fit_the_mode_is_409,
    past_writers_are_skipped_and_strangers_refused,
    a_stream_open_across_a_rewrite_sees_each_row_once_more,
    streams_announce_the_mode_after_hello_and_on_every_change,
    a_work_session_migrates_to_encryption_and_back,
    writes_racing_a_transition_to_on_never_leave_plaintext_behind,
);

pub(crate) const KID: &str = "0a1b2c3d";
const NEW_KID: &str = "c0ffee00";

/// An envelope as the atem client makes one: a 24-byte nonce, the sealed
/// text and a 16-byte tag, in padded standard base64 (the "ciphertext" here
/// is the text itself: the relay cannot tell).
pub(crate) fn seal(kid: &str, text: &str) -> String {
    let mut bytes = vec![9u8; 24];
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&[7u8; 16]);
    format!("e1.{kid}.{}", STANDARD.encode(bytes))
}

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

fn error(body: &Value) -> &str {
    body["error"].as_str().expect("an error message")
}

fn counts(body: &Value) -> (i64, i64, i64) {
    (
        body["plaintext_fields"].as_i64().expect("plaintext_fields"),
        body["ciphertext_fields"]
            .as_i64()
            .expect("ciphertext_fields"),
        body["obsolete_fields"].as_i64().expect("obsolete_fields"),
    )
}

async fn set_mode(
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
async fn move_to(app: &TestApp, token: &str, mode: &str, kid: Option<&str>) -> Value {
    let (status, body) = set_mode(app, token, mode, kid).await;
    assert_eq!(status, StatusCode::OK, "to {mode}: {body}");
    assert_eq!(body["mode"], mode);
    body
}

async fn astation_view(app: &TestApp, token: &str) -> Value {
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

async fn rewrite(
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
async fn migrate_vault(
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
fn open(value: &str) -> String {
    let payload = value.splitn(3, '.').nth(2).expect("an envelope");
    let bytes = STANDARD.decode(payload).expect("base64");
    String::from_utf8(bytes[24..bytes.len() - 16].to_vec()).expect("utf-8")
}

/// The enabling rewrite: seal what is not sealed yet.
fn seal_all(kid: &'static str) -> impl Fn(&str) -> String {
    move |text| {
        if text.is_empty() || text.starts_with("e1.") {
            text.to_string()
        } else {
            seal(kid, text)
        }
    }
}

/// The disabling rewrite: open what is sealed.
fn open_all(text: &str) -> String {
    if text.starts_with("e1.") {
        open(text)
    } else {
        text.to_string()
    }
}

async fn every_transition_and_every_refusal_follows_the_contract(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, _) = app.work_session("home").await;

    let never = astation_view(&app, &token).await;
    assert_eq!(
        never,
        json!({"mode": "off", "kid": null, "updated_at": null,
               "plaintext_fields": 0, "ciphertext_fields": 0, "obsolete_fields": 0})
    );
    // off -> on, off -> disabling, off -> enabling without a kid.
    for (mode, kid) in [("on", Some(KID)), ("disabling", None), ("enabling", None)] {
        let (status, body) = set_mode(&app, &token, mode, kid).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            error(&body).starts_with(&format!("invalid encryption transition off -> {mode}: ")),
            "{body}"
        );
    }
    // The current mode again is a no-op.
    let off = move_to(&app, &token, "off", None).await;
    assert_eq!(off["updated_at"], Value::Null);

    let enabling = move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(enabling["kid"], KID);
    chrono::DateTime::parse_from_rfc3339(enabling["updated_at"].as_str().unwrap())
        .expect("updated_at is RFC 3339");
    let again = move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(
        again["updated_at"], enabling["updated_at"],
        "a no-op changes nothing"
    );
    move_to(&app, &token, "enabling", None).await;
    let (status, body) = set_mode(&app, &token, "enabling", Some(NEW_KID)).await;
    assert_eq!(status, StatusCode::CONFLICT, "same mode, other kid: {body}");
    for (mode, kid) in [("off", None), ("on", Some(NEW_KID))] {
        let (status, body) = set_mode(&app, &token, mode, kid).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            error(&body).starts_with(&format!(
                "invalid encryption transition enabling -> {mode}: "
            )),
            "{body}"
        );
    }
    // enabling -> disabling (abandon) -> enabling (abandon, same kid).
    let disabling = move_to(&app, &token, "disabling", None).await;
    assert_eq!(disabling["kid"], KID, "the kid stays while disabling");
    let (status, body) = set_mode(&app, &token, "on", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error(&body).starts_with("invalid encryption transition disabling -> on: "));
    let (status, body) = set_mode(&app, &token, "enabling", Some(NEW_KID)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error(&body).starts_with("invalid encryption transition disabling -> enabling: "));
    move_to(&app, &token, "enabling", None).await;
    // enabling -> on (nothing stored: the gate is open).
    let on = move_to(&app, &token, "on", None).await;
    assert_eq!(on["kid"], KID);
    for (mode, kid) in [("off", None), ("enabling", None), ("enabling", Some(KID))] {
        let (status, body) = set_mode(&app, &token, mode, kid).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            error(&body).starts_with(&format!("invalid encryption transition on -> {mode}: ")),
            "{body}"
        );
    }
    let (status, body) = set_mode(&app, &token, "on", Some(NEW_KID)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // on -> enabling with a new kid (rotation), back to on, on -> disabling -> off.
    let rotated = move_to(&app, &token, "enabling", Some(NEW_KID)).await;
    assert_eq!(rotated["kid"], NEW_KID);
    move_to(&app, &token, "on", None).await;
    move_to(&app, &token, "disabling", None).await;
    let off = move_to(&app, &token, "off", None).await;
    assert_eq!(off["kid"], Value::Null, "off forgets the kid");
    assert!(off["updated_at"].is_string());
    assert_eq!(astation_view(&app, &token).await, off);
}

async fn gates_count_every_summary_and_every_row_version(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let (_, other_token, other) = app.work_session("elsewhere").await;
    let a = app.create_vault(&s, "c", "plain summary").await;
    let b = app.create_vault(&s, "c", "").await;
    app.write(&a, &s, "c", "one", None).await;
    app.write(&a, &s, "c", "one, edited", Some(1)).await;
    app.write(&b, &s, "c", "two", None).await;
    // Another work session's fields never count here.
    let theirs = app.create_vault(&other, "c", "their summary").await;
    app.write(&theirs, &other, "c", "theirs", None).await;

    let view = astation_view(&app, &token).await;
    assert_eq!(
        counts(&view),
        (4, 0, 0),
        "1 summary + 3 rows; the empty summary is not counted"
    );
    let moved = move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(counts(&moved), (4, 0, 0));

    // Half-way: one row sealed with the kid.
    app.write(&b, &s, "c", &seal(KID, "three"), None).await;
    let (status, body) = set_mode(&app, &token, "on", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        error(&body),
        "invalid encryption transition enabling -> on: 4 plaintext and 0 obsolete fields remain; \
         every atem must rewrite its vaults with kid 0a1b2c3d first"
    );
    assert_eq!(counts(&astation_view(&app, &token).await), (4, 1, 0));

    // Seal everything; the gate opens.
    migrate_vault(&app, &a, &s, "c", seal_all(KID)).await;
    migrate_vault(&app, &b, &s, "c", seal_all(KID)).await;
    assert_eq!(counts(&astation_view(&app, &token).await), (0, 5, 0));
    let on = move_to(&app, &token, "on", None).await;
    assert_eq!(counts(&on), (0, 5, 0));

    // A new kid makes every stored envelope obsolete until rewritten.
    let rotated = move_to(&app, &token, "enabling", Some(NEW_KID)).await;
    assert_eq!(counts(&rotated), (0, 0, 5));
    let (status, body) = set_mode(&app, &token, "on", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error(&body).contains("0 plaintext and 5 obsolete fields remain"),
        "{body}"
    );

    // Disabling -> off is gated on ciphertext and obsolete fields.
    move_to(&app, &token, "disabling", None).await;
    let (status, body) = set_mode(&app, &token, "off", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        error(&body),
        "invalid encryption transition disabling -> off: 0 ciphertext and 5 obsolete fields \
         remain; every atem must rewrite its vaults back to plaintext first"
    );
    assert_eq!(counts(&astation_view(&app, &other_token).await), (2, 0, 0));
}

/// Every write route with `value`: (create, append, edit, summary) statuses.
async fn try_every_write(
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

async fn writes_follow_the_mode_and_refusals_write_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "", None).await;
    let mine = seal(KID, "sealed with the kid");
    let other = seal(NEW_KID, "sealed with another kid");

    // (mode, value, accepted?)
    let plan: Vec<(&str, &str, bool)> = vec![
        ("off", "plain", true),
        ("off", "", true),
        ("off", &mine, false),
        ("enabling", "plain", false),
        ("enabling", "", true),
        ("enabling", &mine, true),
        ("enabling", &other, false),
        ("disabling", "plain", true),
        ("disabling", &mine, true),
        ("disabling", &other, false),
        ("disabling", "", true),
        ("on", "plain", false),
        ("on", &mine, true),
        ("on", &other, false),
        ("on", "", true),
    ];
    for (mode, value, accepted) in plan {
        // Reach `mode`: the stored state must let the gates pass, so clean
        // up with the rewrite between modes.
        let now = astation_view(&app, &token).await;
        if now["mode"] != mode {
            match (now["mode"].as_str().unwrap(), mode) {
                ("off", "enabling") => {
                    move_to(&app, &token, "enabling", Some(KID)).await;
                }
                ("enabling", "disabling") => {
                    move_to(&app, &token, "disabling", None).await;
                }
                ("disabling", "on") => {
                    move_to(&app, &token, "enabling", None).await;
                    for vault in app_vaults(&app, &s).await {
                        migrate_vault(&app, &vault, &s, "c", seal_all(KID)).await;
                    }
                    move_to(&app, &token, "on", None).await;
                }
                (from, to) => panic!("plan walks {from} -> {to}"),
            }
        }
        let before = app.read(&v, &s, "c", "history=true").await;
        let (_, info_before) = app
            .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
            .await;
        let vaults_before = app_vaults(&app, &s).await.len();
        for (i, (status, body)) in try_every_write(&app, &v, &s, value)
            .await
            .into_iter()
            .enumerate()
        {
            if accepted {
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "{mode} write #{i} of {value:?}: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::CONFLICT,
                    "{mode} write #{i} of {value:?}: {body}"
                );
                let msg = error(&body);
                assert!(
                    msg.contains(&format!("does not match the encryption mode ({mode})")),
                    "{msg}"
                );
            }
        }
        if !accepted {
            assert_eq!(
                app.read(&v, &s, "c", "history=true").await,
                before,
                "nothing written"
            );
            let (_, info_after) = app
                .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
                .await;
            assert_eq!(info_after["summary"], info_before["summary"]);
            assert_eq!(
                app_vaults(&app, &s).await.len(),
                vaults_before,
                "no vault created"
            );
        }
    }
    // Reads return stored text unchanged.
    let current = app.read(&v, &s, "c", "").await;
    assert!(
        current.iter().any(|r| r["content"] == mine.as_str()),
        "{current:?}"
    );
}

async fn app_vaults(app: &TestApp, session: &str) -> Vec<String> {
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

fn malformed() -> Vec<(&'static str, String)> {
    let good = STANDARD.encode([5u8; 41]);
    vec![
        ("an uppercase kid", format!("e1.0A1B2C3D.{good}")),
        ("a short kid", format!("e1.0a1b2c.{good}")),
        ("no kid", format!("e1..{good}")),
        ("no payload", format!("e1.{KID}.")),
        ("no dot after the kid", format!("e1.{KID}")),
        (
            "unpadded base64",
            format!("e1.{KID}.{}", good.trim_end_matches('=')),
        ),
        (
            "url-safe base64",
            format!(
                "e1.{KID}.{}",
                STANDARD
                    .encode([0xfb; 60])
                    .replace('+', "-")
                    .replace('/', "_")
            ),
        ),
        ("whitespace in base64", format!("e1.{KID}. {good}")),
        (
            "not base64",
            format!("e1.{KID}.{}!", &good[..good.len() - 1]),
        ),
        (
            "non-canonical trailing bits",
            format!("e1.{KID}.{}AB==", "A".repeat(52)),
        ),
        (
            "a payload under 40 bytes",
            format!("e1.{KID}.{}", STANDARD.encode([5u8; 39])),
        ),
    ]
}

async fn malformed_envelopes_are_refused_in_every_mode(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "e1 is fine as plaintext", None)
        .await;
    for mode in ["off", "enabling", "disabling"] {
        if mode == "enabling" {
            move_to(&app, &token, "enabling", Some(KID)).await;
        }
        if mode == "disabling" {
            move_to(&app, &token, "disabling", None).await;
        }
        for (what, value) in malformed() {
            for (i, (status, body)) in try_every_write(&app, &v, &s, &value)
                .await
                .into_iter()
                .enumerate()
            {
                assert_eq!(
                    status,
                    StatusCode::CONFLICT,
                    "{mode}, {what}, write #{i}: {body}"
                );
                assert!(
                    error(&body).contains(&format!("does not match the encryption mode ({mode})")),
                    "{body}"
                );
                assert!(
                    error(&body).contains("starts with \"e1.\""),
                    "{what}: {body}"
                );
            }
        }
    }
    let history = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(history.len(), 1, "nothing malformed was stored");
    // Every padding length of a well-formed envelope is accepted.
    for n in 0..3 {
        let value = seal(KID, &"x".repeat(n));
        app.write(&v, &s, "c", &value, None).await;
    }
    assert_eq!(counts(&astation_view(&app, &token).await), (1, 3, 0));
}

async fn envelopes_may_be_as_long_as_the_sealed_limit(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.max_entry_bytes = 1000).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    // 12 + 4 * ceil((1000 + 40) / 3) = 1400.
    let largest = seal(KID, &"p".repeat(1000));
    assert_eq!(largest.len(), 1400);
    app.write(&v, &s, "c", &largest, None).await;
    let (status, _) = app.set_summary(&v, &s, "c", &largest).await;
    assert_eq!(status, StatusCode::OK);
    let too_long = seal(KID, &"p".repeat(1003));
    assert_eq!(too_long.len(), 1404);
    let (status, body) = app
        .try_write(&v, &s, "c", json!({ "text": too_long }))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error(&body).contains("the limit is 1400 bytes"), "{body}");
    // Plaintext keeps its own limit.
    move_to(&app, &token, "disabling", None).await;
    let (status, body) = app
        .try_write(&v, &s, "c", json!({ "text": "p".repeat(1001) }))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error(&body).contains("the limit is 1000 bytes"), "{body}");
}

async fn sessions_see_their_work_sessions_mode(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let (_, _, other) = app.work_session("elsewhere").await;
    let (status, body) = app
        .vault_call(Method::GET, "/api/encryption", &s, "c", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"mode": "off", "kid": null}));
    move_to(&app, &token, "enabling", Some(KID)).await;
    let (_, body) = app
        .vault_call(Method::GET, "/api/encryption", &s, "c", None)
        .await;
    assert_eq!(body, json!({"mode": "enabling", "kid": KID}));
    let (_, body) = app
        .vault_call(Method::GET, "/api/encryption", &other, "c", None)
        .await;
    assert_eq!(
        body,
        json!({"mode": "off", "kid": null}),
        "another work session's own mode"
    );
    // Sessions need their client id; they cannot change the mode.
    let (status, body) = app
        .call(
            Method::GET,
            "/api/encryption",
            Some(&format!("session {s}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .call(
            Method::POST,
            "/api/encryption?id=c",
            Some(&format!("session {s}")),
            Some(json!({"mode": "off"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The viewer's vault header carries the mode too.
    let v = app.create_vault(&s, "c", "").await;
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(info["encryption"], json!({"mode": "enabling", "kid": KID}));
}

async fn bad_mode_requests_are_400_or_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, _) = app.work_session("home").await;
    for (mode, kid) in [
        ("maybe", Some(KID)),
        ("ON", None),
        ("enabling", Some("0A1B2C3D")),
        ("enabling", Some("0a1b2c3")),
        ("enabling", Some("")),
    ] {
        let (status, body) = set_mode(&app, &token, mode, kid).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{mode} {kid:?}: {body}");
        assert!(body["error"].is_string());
    }
    let (status, body) = app
        .call(
            Method::POST,
            "/api/encryption",
            Some(&format!("Bearer {token}")),
            Some(json!({"kid": KID})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "missing mode: {body}");
    for auth in [None, Some("Bearer not-a-token".to_string())] {
        let (status, body) = app
            .call(Method::GET, "/api/encryption", auth.as_deref(), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(astation_view(&app, &token).await["mode"], "off");
}

async fn the_rewrite_replaces_rows_with_fresh_seqs_in_the_order_listed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&s, "atem-a", "the plan").await;
    app.write(&v, &s, "atem-a", "one", None).await;
    app.write(&v, &s, "atem-b", "two", None).await;
    let r3 = app.write(&v, &s, "atem-a", "one, edited", Some(1)).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    move_to(&app, &token, "enabling", Some(KID)).await;

    // Listed out of seq order: e2 v1, then e1 v2, then e1 v1.
    let body = json!({
        "summary": seal(KID, "the plan"),
        "entries": [
            {"entry_no": 2, "version": 1, "content": seal(KID, "two")},
            {"entry_no": 1, "version": 2, "content": seal(KID, "one, edited")},
            {"entry_no": 1, "version": 1, "content": seal(KID, "one")},
        ],
    });
    let (status, answer) = rewrite(&app, &v, &s, "migrator", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"rewritten": 3}));

    let history = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(history.len(), 3, "rewritten in place, no new rows");
    let order: Vec<(i64, i64)> = history
        .iter()
        .map(|r| {
            (
                r["entry_no"].as_i64().unwrap(),
                r["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![(2, 1), (1, 2), (1, 1)],
        "seq order is the order listed"
    );
    let seqs: Vec<i64> = history.iter().map(seq).collect();
    assert!(
        seqs[0] > seq(&r3) && seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{seqs:?}"
    );
    for row in &history {
        let old = before
            .iter()
            .find(|b| b["entry_no"] == row["entry_no"] && b["version"] == row["version"])
            .unwrap();
        for kept in ["kind", "writer_id", "created_at"] {
            assert_eq!(row[kept], old[kept], "{kept} is kept");
        }
        assert_eq!(
            open(row["content"].as_str().unwrap()),
            old["content"].as_str().unwrap()
        );
    }
    // Since: the rows once more, after the old head; nothing after the new one.
    let since_old_head = app
        .read(&v, &s, "c", &format!("history=true&since={}", seq(&r3)))
        .await;
    assert_eq!(since_old_head, history);
    let current = app.read(&v, &s, "c", &format!("since={}", seq(&r3))).await;
    assert_eq!(
        current
            .iter()
            .map(|r| (
                r["entry_no"].as_i64().unwrap(),
                r["version"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![(1, 2), (2, 1)],
        "the current view, still newest version per entry"
    );
    assert!(
        app.read(&v, &s, "c", &format!("history=true&since={}", seqs[2]))
            .await
            .is_empty()
    );
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(open(info["summary"].as_str().unwrap()), "the plan");
    assert_eq!(info["head_seq"].as_i64(), Some(seqs[2]));
    // The writer list is unchanged: "migrator" never wrote content, so from
    // another work session it does not find the vault.
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "migrator", None)
        .await;
    assert_eq!(list, json!([]));
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "atem-b", None)
        .await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "past writers still find it"
    );
    // New writes continue after the rewritten rows.
    let r4 = app.write(&v, &s, "c", &seal(KID, "four"), None).await;
    assert_eq!(r4["entry_no"], 3);
    assert!(seq(&r4) > seqs[2]);
}

async fn a_rewrite_naming_a_missing_row_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "summary").await;
    app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    let body = json!({
        "summary": seal(KID, "summary"),
        "entries": [
            {"entry_no": 1, "version": 1, "content": seal(KID, "one")},
            {"entry_no": 1, "version": 2, "content": seal(KID, "never written")},
            {"entry_no": 9, "version": 1, "content": seal(KID, "nor this")},
        ],
    });
    let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(
        error(&answer).contains("e1 v2"),
        "names the first missing row: {answer}"
    );
    assert_eq!(
        app.read(&v, &s, "c", "history=true").await,
        before,
        "nothing changed"
    );
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(info["summary"], "summary", "not even the summary");
    // No such vault; rows listed twice; numbers below 1.
    let (status, _) = rewrite(&app, "v-NoSuchVault1", &s, "c", json!({"summary": ""})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let twice = json!({"summary": "", "entries": [
        {"entry_no": 1, "version": 1, "content": ""},
        {"entry_no": 1, "version": 1, "content": ""}]});
    let (status, body) = rewrite(&app, &v, &s, "c", twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let zero = json!({"summary": "", "entries": [{"entry_no": 0, "version": 1, "content": ""}]});
    let (status, _) = rewrite(&app, &v, &s, "c", zero).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = rewrite(&app, &v, &s, "c", json!({"entries": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the summary is required");
    assert_eq!(app.read(&v, &s, "c", "history=true").await, before);
}

async fn a_rewrite_outside_enabling_or_disabling_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "one", None).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    let plain =
        json!({"summary": "", "entries": [{"entry_no": 1, "version": 1, "content": "one"}]});
    let (status, body) = rewrite(&app, &v, &s, "c", plain.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "off: {body}");
    assert!(
        error(&body).contains("its encryption mode is off"),
        "{body}"
    );
    move_to(&app, &token, "enabling", Some(KID)).await;
    let sealed = json!({"summary": "", "entries": [{"entry_no": 1, "version": 1, "content": seal(KID, "one")}]});
    rewrite(&app, &v, &s, "c", sealed.clone()).await;
    move_to(&app, &token, "on", None).await;
    let after_enabling = app.read(&v, &s, "c", "history=true").await;
    let (status, body) = rewrite(&app, &v, &s, "c", sealed).await;
    assert_eq!(status, StatusCode::CONFLICT, "on: {body}");
    assert!(error(&body).contains("its encryption mode is on"), "{body}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await, after_enabling);
    assert_ne!(after_enabling, before);
}

async fn a_rewrite_whose_values_do_not_fit_the_mode_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "s").await;
    app.write(&v, &s, "c", "one", None).await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    for (summary, content) in [
        (seal(KID, "s"), "still plain".to_string()),
        (seal(KID, "s"), seal(NEW_KID, "other kid")),
        ("plain summary".to_string(), seal(KID, "one")),
        (seal(KID, "s"), format!("e1.{KID}.AAAA")),
    ] {
        let body = json!({"summary": summary, "entries": [{"entry_no": 1, "version": 1, "content": content}]});
        let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(
            error(&answer).contains("does not match the encryption mode (enabling)"),
            "{answer}"
        );
    }
    move_to(&app, &token, "disabling", None).await;
    let body = json!({"summary": "s", "entries": [{"entry_no": 1, "version": 1, "content": seal(KID, "one")}]});
    let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a rewrite while disabling stores plaintext: {answer}"
    );
    assert!(
        error(&answer).contains("does not match the encryption mode (disabling)"),
        "{answer}"
    );
    assert_eq!(app.read(&v, &s, "c", "history=true").await, before);
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(info["summary"], "s");
}

async fn past_writers_are_skipped_and_strangers_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "roamer", "").await;
    app.write(&v, &home, "roamer", "written at home", None)
        .await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let before = app.read(&v, &home, "c", "history=true").await;
    let body = json!({"summary": seal(KID, "x"), "entries": [{"entry_no": 1, "version": 1, "content": seal(KID, "x")}]});
    // The roamer, now in another work session, still lists the vault (it
    // wrote there), so its own migration sends it too: skipped.
    let (status, answer) = rewrite(&app, &v, &away, "roamer", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rewritten"], 0);
    assert!(
        answer["skipped"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert_eq!(
        app.read(&v, &home, "c", "history=true").await,
        before,
        "nothing changed"
    );
    // A stranger is refused as on a write.
    let (status, answer) = rewrite(&app, &v, &away, "stranger", body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/vault/{v}/encryption?id=c"),
            None,
            Some(json!({"summary": ""})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.read(&v, &home, "c", "history=true").await, before);
}

async fn a_stream_open_across_a_rewrite_sees_each_row_once_more(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let r1 = app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    app.write(&v, &s, "c", "one, edited", Some(1)).await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    // One stream replays from the first row, one starts at the head.
    let mut replaying = app
        .open_stream(&v, &s, "w1", &format!("since={}", seq(&r1)))
        .await;
    let mut live = app.open_stream(&v, &s, "w2", "").await;
    replaying.next_of("caught_up").await;
    live.next_of("encryption").await;

    let answer = migrate_vault(&app, &v, &s, "c", seal_all(KID)).await;
    assert_eq!(answer["rewritten"], 3);
    let history = app.read(&v, &s, "c", "history=true").await;
    for stream in [&mut replaying, &mut live] {
        let rows = stream.entries(3).await;
        for (frame, row) in rows.iter().zip(&history) {
            let mut frame = frame.clone();
            frame.as_object_mut().unwrap().remove("type");
            assert_eq!(&frame, row, "each rewritten row once, as stored");
        }
        let summary = stream.next_of("summary").await;
        assert_eq!(summary["summary"], "", "the rewritten (empty) summary");
    }
    // A new write arrives next, nothing rewritten twice in between.
    let r = app.write(&v, &s, "c", &seal(KID, "four"), None).await;
    for stream in [&mut replaying, &mut live] {
        assert_eq!(seq(&stream.next_of("entry").await), seq(&r));
    }
    // A resume from before the rewrite sees each row once, in the new order.
    let mut resumed = app
        .open_stream(&v, &s, "w3", &format!("since={}", seq(&r1)))
        .await;
    let replay = resumed.entries(4).await;
    let seqs: Vec<i64> = replay.iter().map(seq).collect();
    let want: Vec<i64> = history.iter().map(seq).chain([seq(&r)]).collect();
    assert_eq!(seqs, want);
    assert_eq!(
        resumed.next_of("caught_up").await["seq"].as_i64(),
        Some(seq(&r))
    );
}

async fn streams_announce_the_mode_after_hello_and_on_every_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let (_, other_token, other) = app.work_session("elsewhere").await;
    let v = app.create_vault(&s, "c", "").await;
    let theirs = app.create_vault(&other, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "since=0").await;
    let mut bystander = app.open_stream(&theirs, &other, "w", "").await;
    assert_eq!(stream.next_frame().await["type"], "hello");
    let first = loop {
        let f = stream.next_frame().await;
        if f["type"] != "presence" {
            break f;
        }
    };
    assert_eq!(
        first,
        json!({"type": "encryption", "mode": "off", "kid": null}),
        "right after hello"
    );
    assert_eq!(stream.next_of("caught_up").await["seq"], 0);
    assert_eq!(
        bystander.next_of("encryption").await,
        json!({"type": "encryption", "mode": "off", "kid": null})
    );

    move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(
        stream.next_of("encryption").await,
        json!({"type": "encryption", "mode": "enabling", "kid": KID})
    );
    move_to(&app, &token, "on", None).await;
    assert_eq!(
        stream.next_of("encryption").await,
        json!({"type": "encryption", "mode": "on", "kid": KID})
    );
    // A no-op announces nothing; the next change does.
    move_to(&app, &token, "on", None).await;
    move_to(&app, &token, "disabling", None).await;
    assert_eq!(
        stream.next_of("encryption").await,
        json!({"type": "encryption", "mode": "disabling", "kid": KID})
    );
    // The other work session's change reaches only its own vaults' streams.
    move_to(&app, &other_token, "enabling", Some(NEW_KID)).await;
    assert_eq!(
        bystander.next_of("encryption").await,
        json!({"type": "encryption", "mode": "enabling", "kid": NEW_KID})
    );
    app.write(&v, &s, "c", "marker", None).await;
    let next = loop {
        let f = stream.next_frame().await;
        if f["type"] != "presence" {
            break f;
        }
    };
    assert_eq!(
        next["type"], "entry",
        "no frame for the other work session: {next}"
    );
}

async fn a_work_session_migrates_to_encryption_and_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s1) = app.work_session("home").await;
    let s2 = app.session(&token).await;
    let (_, _, away) = app.work_session("away").await;
    // Two atems, two vaults of the work session, and a vault of another
    // work session that atem-a once wrote to from there.
    let a = app.create_vault(&s1, "atem-a", "release plan").await;
    let b = app.create_vault(&s2, "atem-b", "").await;
    let theirs = app.create_vault(&away, "atem-a", "their notes").await;
    app.write(
        &theirs,
        &away,
        "atem-a",
        "written by atem-a while away",
        None,
    )
    .await;
    for (v, s, c) in [
        (&a, &s1, "atem-a"),
        (&b, &s2, "atem-b"),
        (&a, &s2, "atem-b"),
    ] {
        app.write(v, s, c, &format!("{c} note"), None).await;
    }
    app.write(&a, &s1, "atem-a", "edited", Some(1)).await;
    let plain_a = app.read(&a, &s1, "c", "history=true").await;
    let theirs_before = app.read(&theirs, &away, "c", "history=true").await;
    let mut watching = app.open_stream(&a, &s2, "viewer", "").await;
    watching.next_of("encryption").await;

    // Enabling: every atem rewrites every vault it lists.
    move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(watching.next_of("encryption").await["mode"], "enabling");
    let mut skipped = 0;
    for (s, c) in [(&s1, "atem-a"), (&s2, "atem-b")] {
        let (_, list) = app.vault_call(Method::GET, "/api/vault", s, c, None).await;
        for item in list.as_array().unwrap() {
            let v = item["vault_id"].as_str().unwrap();
            let answer = migrate_vault(&app, v, s, c, seal_all(KID)).await;
            if answer.get("skipped").is_some() {
                skipped += 1;
            }
        }
    }
    // atem-a lists `theirs` (it wrote there from the other work session):
    // that one rewrite is skipped and changes nothing.
    assert_eq!(skipped, 1);
    assert_eq!(
        app.read(&theirs, &away, "c", "history=true").await,
        theirs_before
    );
    // Each row was rewritten twice (both atems list both vaults); the
    // stream saw each rewrite.
    let frames = watching.entries(2 * plain_a.len()).await;
    assert!(
        frames
            .iter()
            .all(|f| f["content"].as_str().unwrap().starts_with("e1."))
    );

    let on = move_to(&app, &token, "on", None).await;
    assert_eq!(counts(&on).0, 0);
    assert_eq!(watching.next_of("encryption").await["mode"], "on");
    let (status, body) = app
        .try_write(&a, &s1, "atem-a", json!({"text": "plaintext"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error(&body).contains("does not match the encryption mode (on)"),
        "{body}"
    );
    app.write(&a, &s1, "atem-a", &seal(KID, "sealed note"), None)
        .await;

    // Disabling and back.
    move_to(&app, &token, "disabling", None).await;
    app.write(&b, &s2, "atem-b", "plaintext again", None).await;
    let (status, body) = set_mode(&app, &token, "off", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error(&body).starts_with("invalid encryption transition disabling -> off: "));
    for (s, c) in [(&s1, "atem-a"), (&s2, "atem-b")] {
        for v in [&a, &b] {
            migrate_vault(&app, v, s, c, open_all).await;
        }
    }
    let off = move_to(&app, &token, "off", None).await;
    let (plain, sealed, obsolete) = counts(&off);
    assert!(plain > 0 && sealed == 0 && obsolete == 0, "{off}");
    assert_eq!(off["kid"], Value::Null);
    let back = app.read(&a, &s1, "c", "history=true").await;
    assert_eq!(back.len(), plain_a.len() + 1);
    for old in &plain_a {
        let now = back
            .iter()
            .find(|r| r["entry_no"] == old["entry_no"] && r["version"] == old["version"])
            .unwrap();
        assert_eq!(now["content"], old["content"], "the plaintext came back");
        assert_eq!(now["created_at"], old["created_at"]);
    }
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{a}/info"), &s1, "c", None)
        .await;
    assert_eq!(info["summary"], "release plan");
    app.write(&a, &s1, "atem-a", "plaintext is fine again", None)
        .await;
}

/// Plaintext writes racing enabling -> on: whichever wins, `on` is never
/// reached with plaintext stored.
async fn writes_racing_a_transition_to_on_never_leave_plaintext_behind(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let rounds = if backend == Backend::Postgres { 12 } else { 4 };
    let mut reached_on = 0;
    let mut stored_plaintext = 0;
    for round in 0..rounds {
        let (_, token, s) = app.work_session(&format!("race-{round}")).await;
        let v = app.create_vault(&s, "c", "").await;
        move_to(&app, &token, "enabling", Some(KID)).await;
        move_to(&app, &token, "disabling", None).await;
        // In disabling plaintext is accepted; the change of mode races it.
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (app, s, v) = (app.clone(), s.clone(), v.clone());
                tokio::spawn(async move {
                    let mut accepted = 0;
                    for i in 0..4 {
                        let (status, body) = app
                            .try_write(
                                &v,
                                &s,
                                &format!("w{w}"),
                                json!({"text": format!("plain {w}.{i}")}),
                            )
                            .await;
                        match status {
                            StatusCode::OK => accepted += 1,
                            StatusCode::CONFLICT => assert!(
                                error(&body).contains("does not match the encryption mode"),
                                "{body}"
                            ),
                            other => panic!("{other}: {body}"),
                        }
                    }
                    accepted
                })
            })
            .collect();
        move_to(&app, &token, "enabling", None).await;
        let (status, body) = set_mode(&app, &token, "on", None).await;
        let mut accepted = 0;
        for w in writers {
            accepted += w.await.unwrap();
        }
        let history = app.read(&v, &s, "c", "history=true").await;
        let plaintext = history
            .iter()
            .filter(|r| !r["content"].as_str().unwrap().starts_with("e1."))
            .count();
        assert_eq!(plaintext, accepted, "every accepted write is stored");
        let view = astation_view(&app, &token).await;
        if status == StatusCode::OK {
            reached_on += 1;
            assert_eq!(body["plaintext_fields"], 0, "{body}");
            assert_eq!(view["mode"], "on");
            assert_eq!(plaintext, 0, "on was reached with plaintext stored");
            assert_eq!(counts(&view), (0, 0, 0));
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(view["mode"], "enabling");
            assert!(
                plaintext > 0,
                "the gate refused on, so it counted plaintext"
            );
            assert!(
                error(&body).starts_with("invalid encryption transition enabling -> on: "),
                "{body}"
            );
            stored_plaintext += 1;
        }
    }
    // Both outcomes are legitimate; the invariant is checked in each round.
    assert_eq!(reached_on + stored_plaintext, rounds);
}

/// Waits until some backend of the test database waits for a lock, running
/// a statement that contains `needle`.
async fn until_waiting_on_lock(conn: &mut sqlx::PgConnection, needle: &str) {
    let deadline = tokio::time::Instant::now() + crate::helpers::FRAME_WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'
               and query like '%' || $1 || '%'",
        )
        .bind(needle)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody waits on a lock running {needle}"
        );
        tokio::task::yield_now().await;
    }
}

/// A plaintext write still in flight holds the mode row: the change of mode
/// waits for it to commit, and then its gate counts what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_change_of_mode_waits_for_a_write_in_flight_and_counts_it() {
    use sqlx::Connection;
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    move_to(&app, &token, "disabling", None).await;

    let db = app.db.clone().expect("a database");
    let mut writer = db.connect().await;
    let mut tx = writer.begin().await.unwrap();
    sqlx::query("select * from vault_write($1, null, 'raw', 'plaintext in flight')")
        .bind(&v)
        .execute(&mut *tx)
        .await
        .unwrap();
    let change = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { set_mode(&app, &token, "enabling", None).await })
    };
    let mut watcher = db.connect().await;
    until_waiting_on_lock(&mut watcher, "for update").await;
    assert!(!change.is_finished(), "the change waits for the write");
    tx.commit().await.unwrap();
    let (status, body) = change.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = set_mode(&app, &token, "on", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error(&body).contains("1 plaintext and 0 obsolete fields remain"),
        "{body}"
    );
}

/// A write that starts while a change of mode holds the mode row waits for
/// it, then checks the new mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_write_during_a_change_of_mode_checks_the_new_mode() {
    use sqlx::Connection;
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (astation, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    move_to(&app, &token, "disabling", None).await;

    let db = app.db.clone().expect("a database");
    let mut changer = db.connect().await;
    let mut tx = changer.begin().await.unwrap();
    sqlx::query("select mode from encryption_modes where work_session = $1 for update")
        .bind(&astation)
        .execute(&mut *tx)
        .await
        .unwrap();
    let write = {
        let (app, s, v) = (app.clone(), s.clone(), v.clone());
        tokio::spawn(async move {
            app.try_write(&v, &s, "c", json!({"text": "plaintext"}))
                .await
        })
    };
    let mut watcher = db.connect().await;
    until_waiting_on_lock(&mut watcher, "vault_write").await;
    assert!(!write.is_finished(), "the write waits for the change");
    sqlx::query(
        "update encryption_modes set mode = 'enabling', updated_at = now() where work_session = $1",
    )
    .bind(&astation)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (status, body) = write.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error(&body).contains("does not match the encryption mode (enabling)"),
        "{body}"
    );
    assert!(
        app.read(&v, &s, "c", "history=true").await.is_empty(),
        "nothing written"
    );
}

/// Runs `vault-relay <args>` against the app as the astation.
async fn cli(app: &TestApp, token: &str, args: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--relay-url".to_string(), app.base.clone()]);
    let token = token.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
            .args(args)
            .env("ASTATION_TOKEN", token)
            .env_remove("DATABASE_URL")
            .output()
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encryption_subcommands_show_and_change_the_mode() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, token, s) = app.work_session("home").await;
    app.create_vault(&s, "c", "plain summary").await;
    let out = cli(&app, &token, &["encryption", "status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mode:       off"), "{stdout}");
    assert!(
        stdout.contains("1 plaintext, 0 ciphertext, 0 obsolete"),
        "{stdout}"
    );

    let out = cli(
        &app,
        &token,
        &["encryption", "set", "enabling", "--kid", KID],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("kid:        {KID}")));
    assert_eq!(astation_view(&app, &token).await["mode"], "enabling");

    // A refused change fails with the relay's words.
    let out = cli(&app, &token, &["encryption", "set", "on"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid encryption transition enabling -> on: 1 plaintext"),
        "{stderr}"
    );
    let out = cli(&app, "wrong-token", &["encryption", "status"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
