//! Signing in: with an astation token, and by pairing.

use super::*;

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
