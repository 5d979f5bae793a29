//! The browser viewer in a real headless Chromium, driven through
//! chromedriver. These tests never skip: without Chromium and chromedriver
//! they fail and say how to get them (./scripts/test installs both).
//!
//! Every wait polls the page's state with a generous deadline; nothing
//! asserts on how fast something happened.

mod driver;
mod encryption;
mod links;
mod live;
mod sharing;
mod sign_in;

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
