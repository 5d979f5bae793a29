//! The page kept live: appends, edits and summaries as they commit, and a
//! relay restart under an open page.

use super::*;

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
