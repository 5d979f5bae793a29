//! Pairing, sessions and revocation, on both stores.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    pairing_with_the_right_code_grants_a_session_bound_to_the_astation,
    a_wrong_code_is_403_and_five_deny_the_session,
    an_expired_pairing_cannot_be_granted,
    a_denied_session_cannot_be_used,
    a_session_can_revoke_itself,
    an_astation_revokes_only_its_own_sessions,
    removing_an_astation_revokes_its_sessions_and_its_token,
    unknown_sessions_and_bad_tokens_are_refused,
);

async fn grant(app: &TestApp, id: &str, otp: &str, token: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/api/sessions/{id}/grant"),
        Some(&format!("Bearer {token}")),
        Some(json!({ "otp": otp })),
    )
    .await
}

async fn vault_list_status(app: &TestApp, session: &str) -> (StatusCode, Value) {
    app.vault_call(Method::GET, "/api/vault", session, "c", None)
        .await
}

async fn pairing_with_the_right_code_grants_a_session_bound_to_the_astation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (astation_id, token) = app.astation("desk").await;
    let p = app.pair().await;
    assert_eq!(p["status"], "pending");
    let id = p["id"].as_str().unwrap();
    let otp = p["otp"].as_str().unwrap();
    assert!(id.len() >= 32, "session ids are long: {id}");
    assert!(
        otp.len() >= 6 && otp.chars().all(|c| c.is_ascii_digit()),
        "{otp}"
    );
    chrono::DateTime::parse_from_rfc3339(p["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(app.session_status(id).await, "pending");

    let (status, err) = vault_list_status(&app, id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("pending"), "{err}");

    let (status, body) = grant(&app, id, otp, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "granted", "astation_id": astation_id})
    );
    assert_eq!(app.session_status(id).await, "granted");

    // The session's work session is the astation: a vault made with it is
    // visible to another session of the same astation.
    let v = app.create_vault(id, "c1", "paired").await;
    let other = app.session(&token).await;
    let (_, list) = vault_list_status(&app, &other).await;
    assert_eq!(list, json!([{"vault_id": v, "summary": "paired"}]));

    let (status, err) = grant(&app, id, otp, &token).await;
    assert_eq!(status, StatusCode::CONFLICT, "a code works once: {err}");
}

async fn a_wrong_code_is_403_and_five_deny_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token) = app.astation("desk").await;
    let p = app.pair().await;
    let id = p["id"].as_str().unwrap();
    let otp = p["otp"].as_str().unwrap();
    let wrong = if otp == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    for left in (0..5).rev() {
        let (status, err) = grant(&app, id, wrong, &token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
        let text = err["error"].as_str().unwrap();
        if left > 0 {
            assert!(text.contains(&format!("{left} attempt")), "{text}");
            assert_eq!(app.session_status(id).await, "pending");
        } else {
            assert!(text.contains("denied"), "{text}");
        }
    }
    assert_eq!(app.session_status(id).await, "denied");
    let (status, _) = grant(&app, id, otp, &token).await;
    assert_eq!(status, StatusCode::CONFLICT, "the right code is too late");
    assert_eq!(
        vault_list_status(&app, id).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn an_expired_pairing_cannot_be_granted(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.pairing_ttl_secs = 1).await;
    let (_, token) = app.astation("desk").await;
    let p = app.pair().await;
    let id = p["id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(app.session_status(id).await, "expired");
    let (status, err) = grant(&app, id, p["otp"].as_str().unwrap(), &token).await;
    assert_eq!(status, StatusCode::GONE, "{err}");
    assert!(err["error"].as_str().unwrap().contains("expired"));
    let (status, err) = vault_list_status(&app, id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("expired"), "{err}");
}

async fn a_denied_session_cannot_be_used(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token) = app.astation("desk").await;
    let p = app.pair().await;
    let id = p["id"].as_str().unwrap();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/sessions/{id}/deny"),
            Some(&format!("Bearer {token}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "denied"}));
    assert_eq!(app.session_status(id).await, "denied");
    let (status, err) = vault_list_status(&app, id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("denied"));
    let (status, _) = grant(&app, id, p["otp"].as_str().unwrap(), &token).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Deny needs an astation token.
    let p2 = app.pair().await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/sessions/{}/deny", p2["id"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn a_session_can_revoke_itself(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("desk").await;
    let other = app.session(&token).await;
    assert_eq!(vault_list_status(&app, &s).await.0, StatusCode::OK);
    // Another session cannot revoke it, and its refusal is the same for a
    // session that does not exist: it says nothing of which ids are real.
    let (status, refused) = app.revoke_session(&s, &format!("session {other}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("only revoke itself"),
        "{refused}"
    );
    let unknown = app
        .revoke_session("s-no-such-session", &format!("session {other}"))
        .await;
    assert_eq!(unknown, (status, refused));
    // An unknown session revoking itself is told there is no such session.
    let (status, body) = app
        .revoke_session("s-no-such-session", "session s-no-such-session")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no such session"),
        "{body}"
    );
    let (status, body) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({}));
    let (status, err) = vault_list_status(&app, &s).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("revoked"), "{err}");
    assert_eq!(app.session_status(&s).await, "revoked");
    assert_eq!(
        vault_list_status(&app, &other).await.0,
        StatusCode::OK,
        "others live on"
    );
}

async fn an_astation_revokes_only_its_own_sessions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("desk").await;
    let (_, other_token) = app.astation("elsewhere").await;
    let (status, _) = app
        .revoke_session(&s, &format!("Bearer {other_token}"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(vault_list_status(&app, &s).await.0, StatusCode::OK);
    let (status, _) = app.revoke_session(&s, &format!("Bearer {token}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        vault_list_status(&app, &s).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app
        .call(Method::DELETE, &format!("/api/sessions/{s}"), None, None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "revoking needs a credential"
    );
}

async fn removing_an_astation_revokes_its_sessions_and_its_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (astation_id, token, s) = app.work_session("desk").await;
    let (_, _, survivor) = app.work_session("other desk").await;
    let admin = format!("Bearer {}", crate::helpers::ADMIN_TOKEN);
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/api/admin/astations/{astation_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({}));
    let (status, err) = vault_list_status(&app, &s).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("revoked"));
    assert_eq!(app.session_status(&s).await, "revoked");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/sessions",
            Some(&format!("Bearer {token}")),
            Some(json!({"hostname": "h"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the token died with its astation"
    );
    assert_eq!(vault_list_status(&app, &survivor).await.0, StatusCode::OK);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/admin/astations/{astation_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn unknown_sessions_and_bad_tokens_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, err) = app
        .call(Method::GET, "/api/sessions/s-nope/status", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].is_string());
    let (status, _) = app
        .call(
            Method::POST,
            "/api/sessions",
            Some("Bearer ast-wrong"),
            Some(json!({"hostname": "h"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let p = app.pair().await;
    let (status, _) = grant(
        &app,
        p["id"].as_str().unwrap(),
        p["otp"].as_str().unwrap(),
        "ast-wrong",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.session_status(p["id"].as_str().unwrap()).await,
        "pending"
    );
    let (_, token) = app.astation("desk").await;
    let (status, _) = grant(&app, "s-nope", "12345678", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
