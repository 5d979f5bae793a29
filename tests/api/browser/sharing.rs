//! A session user shares a read-only link from the page and revokes it.

use super::*;

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
