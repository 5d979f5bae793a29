//! End-to-end encryption in the page: envelopes shown locked, the mode's
//! badge, and rewrites replacing rows in place.

use super::*;

/// The encryption badge of the vault header: [mode, text].
const BADGE_JS: &str =
    "const n = document.getElementById('encryption'); return [n.dataset.mode, n.textContent];";

/// Envelopes show as locked content with their key id, never as base64;
/// the header shows the work session's mode and follows its changes; a
/// rewrite replaces rows in place, live, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_shown_locked_and_rewrites_replace_rows_in_place() {
    use crate::encryption::{KID, seal};
    let (app, token, session) = desk(Backend::Memory).await;
    let vault = app.create_vault(&session, "atem-a", "Sealed plans").await;
    app.write(&vault, &session, "atem-a", "a plain first note", None)
        .await;
    let auth = format!("Bearer {token}");
    let set_mode = |mode: &'static str| {
        let body = json!({ "mode": mode, "kid": KID });
        app.call(Method::POST, "/api/encryption", Some(&auth), Some(body))
    };
    assert_eq!(set_mode("enabling").await.0, StatusCode::OK);
    let sealed = seal(KID, "a sealed second note");
    app.write(&vault, &session, "atem-b", &sealed, None).await;
    let payload = sealed[12..].to_string();

    let browser = Browser::launch().await;
    open_as_session(&browser, &app, &session, &vault).await;
    let state = browser
        .wait_until("the vault with both entries", WAIT, |s| {
            s.live() && s.entries().len() == 2
        })
        .await;
    assert_eq!(state.entry(1).unwrap()["content"], "a plain first note");
    let locked = state.entry(2).unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        locked.contains("encrypted") && locked.contains(KID),
        "{locked}"
    );
    let shown = browser.js(BADGE_JS, vec![]).await;
    assert_eq!(shown[0], "enabling");
    assert!(shown[1].as_str().unwrap().contains(KID), "{shown}");
    let leaked = browser
        .js(
            "return document.documentElement.outerHTML.includes(arguments[0]);",
            vec![json!(payload)],
        )
        .await;
    assert_eq!(leaked, json!(false), "the raw base64 is never in the page");

    // An atem rewrites the vault: the first entry and the summary turn
    // locked in place; no row is added.
    let history = app.read(&vault, &session, "c", "history=true").await;
    let entries: Vec<Value> = history
        .iter()
        .map(|r| {
            let content = r["content"].as_str().unwrap();
            let content = if content.starts_with("e1.") {
                content.to_string()
            } else {
                seal(KID, content)
            };
            json!({"entry_no": r["entry_no"], "version": r["version"], "content": content})
        })
        .collect();
    let (status, body) = app
        .vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/encryption"),
            &session,
            "atem-a",
            Some(json!({"summary": seal(KID, "Sealed plans"), "entries": entries})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state = browser
        .wait_until("the rewritten rows in place", LIVE_WAIT, |s| {
            s.entries().len() == 2
                && s.entries()
                    .iter()
                    .all(|e| e["content"].as_str().unwrap().contains(KID))
                && s.str("summary").contains(KID)
        })
        .await;
    let rewritten: Vec<i64> = app
        .read(&vault, &session, "c", "history=true")
        .await
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    let state = if state.history() == rewritten {
        state
    } else {
        browser
            .wait_until("the history at the new seqs", LIVE_WAIT, |s| {
                s.history() == rewritten
            })
            .await
    };
    assert_eq!(state.history().len(), 2, "each row once, under its new seq");

    assert_eq!(set_mode("on").await.0, StatusCode::OK);
    let deadline = Instant::now() + LIVE_WAIT;
    loop {
        let shown = browser.js(BADGE_JS, vec![]).await;
        if shown[0] == "on" {
            assert!(shown[1].as_str().unwrap().contains(KID), "{shown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the badge never showed on: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.close().await;
}
