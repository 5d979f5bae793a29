//! A read-only link in the page: the vault shown, its secret hidden, hostile
//! content shown as text, and a revoked link that stops working.

use super::*;

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
