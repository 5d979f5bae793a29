//! The browser viewer in a real headless Chromium, driven through
//! chromedriver. These tests never skip: without Chromium and chromedriver
//! they fail and say how to get them (./scripts/test installs both).
//!
//! Every wait polls the page's state with a generous deadline; nothing
//! asserts on how fast something happened.

mod driver;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, test_config};
use driver::{Browser, LIVE_WAIT, PageState, WAIT, within};

/// A relay on `backend` and a work session "desk" granted by its astation:
/// (relay, astation token, session id).
async fn desk(backend: Backend) -> (TestApp, String, String) {
    let app = TestApp::spawn(backend).await;
    let (_, token, session) = app.work_session("desk").await;
    (app, token, session)
}

/// A Postgres relay with a vault of `notes` (written in order by atem-a)
/// and a read-only link to it: (relay, session, vault, link id, link url).
async fn linked_vault(summary: &str, notes: &[&str]) -> (TestApp, String, String, String, String) {
    let (app, _, session) = desk(Backend::Postgres).await;
    let vault = app.create_vault(&session, "atem-a", summary).await;
    for note in notes {
        app.write(&vault, &session, "atem-a", note, None).await;
    }
    let (link_id, url) = make_link(&app, &vault, &session).await;
    (app, session, vault, link_id, url)
}

/// A read-only link to `vault` made by `session`; returns (link_id, url).
async fn make_link(app: &TestApp, vault: &str, session: &str) -> (String, String) {
    let (status, body) = app
        .vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/links"),
            session,
            "atem-owner",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["link_id"].as_str().expect("link_id").to_string(),
        body["url"].as_str().expect("url").to_string(),
    )
}

/// Opens `url` in a new browser and waits until the page is live and shows
/// `entries` entries.
async fn open_live(url: &str, what: &str, entries: usize) -> (Browser, PageState) {
    let browser = Browser::launch().await;
    browser.goto(url).await;
    let state = browser
        .wait_until(what, WAIT, |s| s.live() && s.entries().len() == entries)
        .await;
    (browser, state)
}

/// Signs the page in as `session` without the form (the form has its own
/// test) and opens `vault`.
async fn open_as_session(browser: &Browser, app: &TestApp, session: &str, vault: &str) {
    browser.goto(&format!("{}/", app.base)).await;
    browser
        .js(
            "sessionStorage.setItem('vr.session', arguments[0]);",
            vec![json!(session)],
        )
        .await;
    browser.goto(&format!("{}/#vault={vault}", app.base)).await;
}

// ------------------------------------------------------------------ tests

/// A read-only link shows the summary and the current view, and its secret
/// leaves the address bar at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_link_shows_the_vault_and_hides_its_secret() {
    let (app, _, session) = desk(Backend::Postgres).await;
    let vault = app
        .create_vault(&session, "atem-a", "Ship the viewer")
        .await;
    app.write(&vault, &session, "atem-a", "first note", None)
        .await;
    app.write(&vault, &session, "atem-b", "second note", None)
        .await;
    app.write(&vault, &session, "atem-a", "third note", None)
        .await;
    app.write(&vault, &session, "atem-b", "second note, revised", Some(2))
        .await;
    let (_, url) = make_link(&app, &vault, &session).await;
    let secret = url
        .split("link=")
        .nth(1)
        .expect("a secret in the link")
        .to_string();

    let (browser, state) = open_live(&url, "the linked vault to load", 3).await;
    assert_eq!(state.str("summary"), "Ship the viewer");
    assert_eq!(state.view(), "vault-view");
    let contents: Vec<(&str, &str, &str)> = state
        .entries()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or(""),
                e["version"].as_str().unwrap_or(""),
                e["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        contents,
        [
            ("e1", "v1", "first note"),
            ("e2", "v2", "second note, revised"),
            ("e3", "v1", "third note"),
        ]
    );
    assert_eq!(state.entry(2).expect("e2")["writer"], "atem-b");
    assert_eq!(state.history().len(), 4, "history has every row");

    let current = browser.current_url().await;
    assert!(
        !current.contains("link="),
        "the secret stays in the address bar: {current}"
    );
    assert!(
        !current.contains(&secret),
        "the secret stays in the address bar: {current}"
    );
    let read_only = browser
        .js(
            "return !document.getElementById('read-only').hidden;",
            vec![],
        )
        .await;
    assert_eq!(read_only, json!(true), "the page says it is read-only");
    let share = browser
        .js(
            "return document.getElementById('share-toggle').hidden;",
            vec![],
        )
        .await;
    assert_eq!(share, json!(true), "a link holder cannot share further");
    browser
        .wait_until("presence to count this viewer", WAIT, |s| {
            s.str("presence") != "0"
        })
        .await;
    browser.close().await;
}

/// Appends, edits and a summary change made through REST show up live; an
/// edit replaces its entry instead of adding one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_append_and_replace_entries() {
    let (app, session, vault, _, url) = linked_vault("Live", &["plan: read the contract"]).await;

    let (browser, _) = open_live(&url, "the stream to be live", 1).await;

    app.write(&vault, &session, "atem-b", "found the stream frames", None)
        .await;
    let state = browser
        .wait_until("an appended entry to appear", LIVE_WAIT, |s| {
            s.entries().len() == 2
        })
        .await;
    let e2 = state.entry(2).expect("e2 is shown");
    assert_eq!(e2["content"], "found the stream frames");
    assert_eq!(e2["version"], "v1");
    assert_eq!(e2["writer"], "atem-b");

    app.write(
        &vault,
        &session,
        "atem-a",
        "plan: read the contract, then test",
        Some(1),
    )
    .await;
    let state = browser
        .wait_until("an edit to replace its entry", LIVE_WAIT, |s| {
            s.entry(1).is_some_and(|e| e["version"] == "v2")
        })
        .await;
    assert_eq!(
        state.entry(1).expect("e1")["content"],
        "plan: read the contract, then test"
    );
    let e1_nodes = state.entries().iter().filter(|e| e["no"] == 1).count();
    assert_eq!(e1_nodes, 1, "an edit replaces its entry");
    assert_eq!(state.entries().len(), 2);
    let state = browser
        .wait_until("the history to hold every row", LIVE_WAIT, |s| {
            s.history().len() == 3
        })
        .await;
    let mut sorted = state.history();
    sorted.sort_unstable();
    assert_eq!(state.history(), sorted, "history is in seq order");

    let (status, body) = app
        .vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/summary"),
            &session,
            "atem-a",
            Some(json!({ "text": "Live, and renamed" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    browser
        .wait_until("the new summary", LIVE_WAIT, |s| {
            s.str("summary") == "Live, and renamed"
        })
        .await;

    // The history tab shows the rows in seq order as `eN vM`.
    browser.click("#tab-history").await;
    let shown = browser
        .js(
            "return Array.from(document.querySelectorAll('#history [data-seq]'))
               .filter((n) => n.getClientRects().length > 0)
               .map((n) => n.querySelector('.entry-no').textContent + ' ' + n.querySelector('.version').textContent);",
            vec![],
        )
        .await;
    assert_eq!(shown, json!(["e1 v1", "e2 v1", "e1 v2"]));
    browser.close().await;
}

/// A relay restart (same database, same port) under an open page: the page
/// says it is reconnecting, comes back live on its own, resumes by seq and
/// shows every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_reconnects_after_a_restart_without_gaps_or_duplicates() {
    let (app, session, vault, _, url) = linked_vault("Restart", &["before 1", "before 2"]).await;

    let (browser, _) = open_live(&url, "the stream to be live", 2).await;

    let port = app.addr.port();
    let db = app.db.clone().expect("a Postgres test has a database");
    app.stop().await;
    browser
        .wait_until("the page to notice the restart", WAIT, |s| {
            matches!(s.str("conn"), "reconnecting" | "offline")
        })
        .await;

    let mut config = test_config(Some(db.url.clone()));
    config.port = port;
    let app = TestApp::start(config, Some(db)).await;
    // Written while the page is still reconnecting (it backs off).
    app.write(&vault, &session, "atem-b", "during the restart", None)
        .await;
    app.write(
        &vault,
        &session,
        "atem-b",
        "before 2, edited while away",
        Some(2),
    )
    .await;
    browser
        .wait_until("the page to be live again", Duration::from_secs(30), |s| {
            s.live()
        })
        .await;
    // Written after it is back.
    app.write(&vault, &session, "atem-a", "after the restart", None)
        .await;
    app.write(
        &vault,
        &session,
        "atem-a",
        "before 1, edited after",
        Some(1),
    )
    .await;

    let rest = app.read(&vault, &session, "atem-a", "history=true").await;
    let want_seqs: Vec<i64> = rest
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(want_seqs.len(), 6);
    browser
        .wait_until("every row to arrive", LIVE_WAIT, |s| {
            s.history().len() >= want_seqs.len()
        })
        .await;
    // Give a stray duplicate a moment to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = browser.state().await;
    assert_eq!(
        state.history(),
        want_seqs,
        "history rows match REST, each seq once"
    );

    let current = app.read(&vault, &session, "atem-a", "").await;
    assert_eq!(
        state.entries().len(),
        current.len(),
        "one element per entry"
    );
    for want in &current {
        let no = want["entry_no"].as_i64().expect("entry_no");
        let shown: Vec<&Value> = state.entries().iter().filter(|e| e["no"] == no).collect();
        assert_eq!(shown.len(), 1, "entry e{no} is shown exactly once");
        assert_eq!(shown[0]["content"], want["content"]);
        assert_eq!(shown[0]["version"], format!("v{}", want["version"]));
    }
    assert!(state.live());
    browser.close().await;
}

/// Content that looks like markup is shown as text and never runs, from
/// REST on load and from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_content_is_shown_as_text() {
    const IMG: &str = "<img src=x onerror=alert(1)>";
    const SCRIPT: &str = "<script>window.__pwned=1</script>";
    const SUMMARY: &str = "<b>bold?</b><img src=x onerror=alert(2)>";
    let (app, session, vault, _, url) = linked_vault(SUMMARY, &[IMG, SCRIPT]).await;
    let writer = "<i onmouseover=alert(3)>w</i>";
    let encoded_writer: String =
        percent_encoding::utf8_percent_encode(writer, percent_encoding::NON_ALPHANUMERIC)
            .to_string();

    let (browser, _) = open_live(&url, "the hostile entries to load", 2).await;
    // One more through the stream, with a hostile writer id too.
    app.write(
        &vault,
        &session,
        &encoded_writer,
        &format!("{IMG}{SCRIPT}"),
        None,
    )
    .await;
    let state = browser
        .wait_until("the streamed hostile entry", LIVE_WAIT, |s| {
            s.entries().len() == 3
        })
        .await;

    assert_eq!(state.str("summary"), SUMMARY);
    assert_eq!(state.entry(1).expect("e1")["content"], IMG);
    assert_eq!(state.entry(2).expect("e2")["content"], SCRIPT);
    assert_eq!(
        state.entry(3).expect("e3")["content"],
        format!("{IMG}{SCRIPT}")
    );
    assert_eq!(state.entry(3).expect("e3")["writer"], writer);

    // Nothing was parsed as markup, and nothing ran.
    let markup = browser
        .js(
            "return document.querySelectorAll('main img, main script, main b, main i').length;",
            vec![],
        )
        .await;
    assert_eq!(markup, json!(0), "content became elements");
    let pwned = browser.js("return typeof window.__pwned;", vec![]).await;
    assert_eq!(pwned, json!("undefined"), "a script from content ran");
    let alert = tokio::time::timeout(WAIT, browser.c().get_alert_text())
        .await
        .expect("in time");
    assert!(alert.is_err(), "an alert is open: {alert:?}");
    browser.close().await;
}

/// Revoking a link closes its open stream (4001): the page says the link no
/// longer works and shows no entries; opening the link again fails the same
/// way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_link_stops_working() {
    let (app, session, vault, link_id, url) =
        linked_vault("Soon private", &["a secret plan"]).await;

    let (browser, _) = open_live(&url, "the linked vault to be live", 1).await;

    let (status, body) = app
        .vault_call(
            Method::DELETE,
            &format!("/api/vault/{vault}/links/{link_id}"),
            &session,
            "atem-owner",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The open stream is closed with 4001 and the page gives up.
    let state = browser
        .wait_until("the page to show the revocation", WAIT, |s| {
            s.view() == "error-view"
        })
        .await;
    assert_eq!(state.str("errorReason"), "link-revoked");
    assert!(
        state.entries().is_empty(),
        "entries stay on screen: {:#}",
        state.0
    );
    assert!(state.history().is_empty());
    assert_eq!(state.str("conn"), "offline");
    let stored = browser
        .js("return sessionStorage.getItem('vr.link');", vec![])
        .await;
    assert!(stored.is_null(), "the dead link is still kept: {stored}");

    // Opening the link afresh fails the same way.
    browser.goto("about:blank").await;
    browser.goto(&url).await;
    let state = browser
        .wait_until("the revoked link to be refused", WAIT, |s| {
            s.view() == "error-view"
        })
        .await;
    assert_eq!(state.str("errorReason"), "link-revoked");
    assert!(state.entries().is_empty());
    assert!(!browser.current_url().await.contains("link="));
    // It stays refused: no entries show up later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(browser.state().await.entries().is_empty());
    browser.close().await;
}

/// An astation owner signs in with the token; the page keeps only the
/// session id and lists the work session's vaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sign_in_lists_the_vaults() {
    let (app, token, session) = desk(Backend::Postgres).await;
    let first = app
        .create_vault(&session, "atem-a", "Refactor the store")
        .await;
    let second = app.create_vault(&session, "atem-b", "Write the docs").await;
    app.write(&first, &session, "atem-a", "started", None).await;
    // Another work session's vault stays out of the list.
    let (_, _, other) = app.work_session("elsewhere").await;
    app.create_vault(&other, "atem-z", "Not yours").await;

    let browser = Browser::launch().await;
    browser.goto(&format!("{}/", app.base)).await;
    browser
        .wait_until("the sign-in form", WAIT, |s| s.view() == "signin-view")
        .await;
    browser.type_into("#token-input", &token).await;
    browser.click("#token-submit").await;
    let state = browser
        .wait_until("the vault list", WAIT, |s| {
            s.view() == "vaults-view" && s.0["vaults"].as_array().is_some_and(|v| v.len() == 2)
        })
        .await;
    let mut listed: Vec<(String, String)> = state.0["vaults"]
        .as_array()
        .expect("vaults")
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or("").to_string(),
                v["summary"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut want = vec![
        (first.clone(), "Refactor the store".to_string()),
        (second.clone(), "Write the docs".to_string()),
    ];
    want.sort();
    assert_eq!(listed, want);

    // The token is gone; only a session id is kept, and only for the tab.
    let kept = browser
        .js(
            "return { storage: JSON.stringify(sessionStorage), local: JSON.stringify(localStorage), \
             input: document.getElementById('token-input').value, session: sessionStorage.getItem('vr.session') };",
            vec![],
        )
        .await;
    assert!(
        !kept["storage"].as_str().unwrap_or("").contains(&token),
        "the token is kept"
    );
    assert!(
        !kept["local"].as_str().unwrap_or("").contains(&token),
        "the token is kept"
    );
    assert_eq!(kept["input"], "");
    let page_session = kept["session"]
        .as_str()
        .expect("a session id is kept")
        .to_string();
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/api/sessions/{page_session}/status"),
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("granted"))
    );

    // Picking a vault opens it.
    browser
        .click(&format!("#vault-list [data-vault-id='{first}']"))
        .await;
    let state = browser
        .wait_until("the vault page", WAIT, |s| {
            s.live() && s.entries().len() == 1
        })
        .await;
    assert_eq!(state.str("summary"), "Refactor the store");
    assert!(
        !browser.current_url().await.contains(&page_session),
        "the session id is in the URL"
    );
    browser.close().await;
}

/// Pairing: the page shows the code, the session id and the command; once
/// the astation grants it, the page is signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_sign_in_waits_for_the_grant() {
    let (app, token, session) = desk(Backend::Postgres).await;
    app.create_vault(&session, "atem-a", "Paired view").await;

    let browser = Browser::launch().await;
    browser.goto(&format!("{}/", app.base)).await;
    browser
        .wait_until("the sign-in form", WAIT, |s| s.view() == "signin-view")
        .await;
    browser.click("#pair-start").await;
    let shown = within(WAIT, "a pairing code", || async {
        let v = browser
            .js(
                "const t = (id) => document.getElementById(id).textContent; \
                 return t('pair-code') ? { code: t('pair-code'), id: t('pair-session'), cmd: t('pair-command') } : null;",
                vec![],
            )
            .await;
        (!v.is_null()).then_some(v)
    })
    .await;
    let id = shown["id"].as_str().expect("session id");
    let code = shown["code"].as_str().expect("code");
    assert_eq!(
        shown["cmd"],
        format!("vault-relay session grant {id} {code}")
    );

    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/sessions/{id}/grant"),
            Some(&format!("Bearer {token}")),
            Some(json!({ "otp": code })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state = browser
        .wait_until("the vault list after the grant", WAIT, |s| {
            s.view() == "vaults-view" && s.0["vaults"].as_array().is_some_and(|v| v.len() == 1)
        })
        .await;
    assert_eq!(state.0["vaults"][0]["summary"], "Paired view");
    browser.close().await;
}

/// A session user shares a read-only link from the page, sees it listed and
/// revokes it. Also takes the screenshot for the docs when VIEWER_SCREENSHOT
/// names a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_user_shares_and_revokes_a_link() {
    let (app, _, session) = desk(Backend::Postgres).await;
    let vault = app
        .create_vault(
            &session,
            "atem-planner",
            "Migrate billing to the new ledger",
        )
        .await;
    let notes = [
        (
            "atem-planner",
            "Plan: 1) dual-write to the new ledger, 2) backfill, 3) switch reads, 4) remove the old tables.",
        ),
        (
            "atem-backend",
            "Dual-write is in behind LEDGER_DUAL_WRITE. Reconciliation job runs every 10 min.",
        ),
        (
            "atem-tests",
            "Backfill dry run: 41,204 accounts, 3 mismatches (all rounding in legacy invoices).",
        ),
        (
            "atem-backend",
            "Question for the planner: may we round legacy invoices half-even to match?",
        ),
    ];
    for (writer, text) in notes {
        app.write(&vault, &session, writer, text, None).await;
    }
    app.write(
        &vault,
        &session,
        "atem-tests",
        "Backfill dry run: 41,204 accounts, 0 mismatches after half-even rounding.",
        Some(3),
    )
    .await;

    // Two atems watching alongside the browser.
    let mut watchers = Vec::new();
    for atem in ["atem-backend", "atem-tests"] {
        let ws_url = format!(
            "ws://{}/api/vault/{vault}/stream?id={atem}&atem_id={atem}",
            app.addr
        );
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
                .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("session {session}").parse().expect("header"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("watcher connects");
        watchers.push(ws);
    }

    let browser = Browser::launch().await;
    open_as_session(&browser, &app, &session, &vault).await;
    browser
        .wait_until("the vault page with presence", WAIT, |s| {
            s.live() && s.entries().len() == 4 && s.str("presence") == "3"
        })
        .await;

    browser.click("#share-toggle").await;
    browser.click("#share-link").await;
    let state = browser
        .wait_until("a new link", WAIT, |s| {
            s.str("shareUrl").contains("link=")
                && s.0["links"].as_array().is_some_and(|l| l.len() == 1)
        })
        .await;
    let share_url = state.str("shareUrl").to_string();
    assert!(
        share_url.contains(&format!("#vault={vault}&link=")),
        "{share_url}"
    );
    let link_id = state.0["links"][0]["id"]
        .as_str()
        .expect("link id")
        .to_string();
    assert_eq!(state.0["links"][0]["state"], "active");

    // The link works for someone else until it is revoked here.
    let secret = share_url.split("link=").nth(1).expect("secret");
    let (info, by_link) = (
        format!("/api/vault/{vault}/info?id=someone"),
        format!("link {secret}"),
    );
    let (status, _) = app.call(Method::GET, &info, Some(&by_link), None).await;
    assert_eq!(status, StatusCode::OK);

    if let Ok(path) = std::env::var("VIEWER_SCREENSHOT") {
        // A calm moment: the new entry's highlight has faded.
        app.write(
            &vault,
            &session,
            "atem-planner",
            "Yes: half-even for legacy invoices only. Proceed to step 3.",
            None,
        )
        .await;
        browser
            .wait_until("the last note", LIVE_WAIT, |s| s.entries().len() == 5)
            .await;
        browser.click("#share-toggle").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let png = tokio::time::timeout(WAIT, browser.c().screenshot())
            .await
            .expect("screenshot in time")
            .expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
        browser.click("#share-toggle").await;
    }

    let revoke = format!("#links [data-link-id='{link_id}'] .revoke");
    browser.click(&revoke).await;
    browser
        .wait_until("the link to show as revoked", WAIT, |s| {
            s.0["links"][0]["state"] == "revoked"
        })
        .await;
    let (status, _) = app.call(Method::GET, &info, Some(&by_link), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    drop(watchers);
    browser.close().await;
}

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
