//! Rate limits: 429 with `Retry-After` and the JSON body, per address for
//! failed authentications and pairings, per session for writes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};

both_stores!(
    wrong_tokens_meet_429_and_then_every_credential_does,
    every_kind_of_wrong_secret_counts,
    writes_are_limited_per_session,
);

/// A request with an Authorization value and, optionally, an
/// X-Forwarded-For address: status, Retry-After (if any) and JSON body.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: Option<&str>,
    forwarded_for: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<u64>, Value) {
    let mut req = app.client.request(method, format!("{}{path}", app.base));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(f) = forwarded_for {
        req = req.header("x-forwarded-for", f);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request reaches the relay");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().expect("whole seconds"));
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text:?}"));
    (status, retry_after, body)
}

/// An unauthenticated pairing request from `from`.
async fn pair_from(app: &TestApp, from: Option<&str>) -> (StatusCode, Option<u64>, Value) {
    send(
        app,
        Method::POST,
        "/api/sessions",
        None,
        from,
        Some(json!({})),
    )
    .await
}

fn assert_429(answer: &(StatusCode, Option<u64>, Value), max_wait: u64) -> u64 {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let wait = retry_after.expect("a Retry-After header");
    assert!((1..=max_wait).contains(&wait), "Retry-After {wait}");
    wait
}

async fn wrong_tokens_meet_429_and_then_every_credential_does(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.rate_limit_auth_failures_per_min = 30;
        c.trust_forwarded_for = true;
    })
    .await;
    let (_, _, s) = app.work_session("home").await;
    let right = format!("Bearer {ADMIN_TOKEN}");
    let attacker = Some("203.0.113.7");
    let admin = "/api/admin/astations";

    // A burst of wrong admin tokens: the allowance, then 429s.
    let mut refused = 0;
    let mut limited = None;
    for i in 0..200 {
        let answer = send(
            &app,
            Method::GET,
            admin,
            Some(&format!("Bearer wrong-{i}")),
            attacker,
            None,
        )
        .await;
        match answer.0 {
            StatusCode::UNAUTHORIZED => refused += 1,
            _ => {
                limited = Some(answer);
                break;
            }
        }
    }
    let limited = limited.expect("the burst meets a 429");
    assert_429(&limited, 60);
    // 30 at once, plus one more every 2 s the burst takes.
    assert!(
        (30..=40).contains(&refused),
        "the allowance is about 30 failures, got {refused}"
    );

    // Now every credential from that address is refused, the right ones too,
    // of every kind.
    let answer = send(&app, Method::GET, admin, Some(&right), attacker, None).await;
    assert_429(&answer, 60);
    let answer = send(
        &app,
        Method::GET,
        "/api/vault?id=c",
        Some(&format!("session {s}")),
        attacker,
        None,
    )
    .await;
    assert_429(&answer, 60);
    // Requests without a credential are not affected.
    let answer = send(&app, Method::GET, "/health", None, attacker, None).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    // Another address is not affected.
    let answer = send(
        &app,
        Method::GET,
        admin,
        Some(&right),
        Some("203.0.113.8"),
        None,
    )
    .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);

    // One token comes back after Retry-After seconds.
    let wait = assert_429(
        &send(&app, Method::GET, admin, Some(&right), attacker, None).await,
        60,
    );
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let answer = send(&app, Method::GET, admin, Some(&right), attacker, None).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
}

async fn every_kind_of_wrong_secret_counts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.rate_limit_auth_failures_per_min = 8;
        c.trust_forwarded_for = true;
    })
    .await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let from = Some("198.51.100.1");
    // Eight wrong secrets, one of each kind (a session id both on a read
    // and on a write, which checks the session inside the write, and an
    // unknown session id in a status route and in a revoke): each is a
    // plain 401 (or 404), and counted.
    let attempts: Vec<(Method, String, Option<String>, Option<Value>)> = vec![
        (
            Method::GET,
            "/api/admin/astations".into(),
            Some("Bearer nope".into()),
            None,
        ),
        (
            Method::POST,
            "/api/sessions".into(),
            Some("Bearer nope".into()),
            Some(json!({})),
        ),
        (
            Method::GET,
            "/api/vault?id=c".into(),
            Some("session nope".into()),
            None,
        ),
        (
            Method::POST,
            format!("/api/vault/{v}?id=c"),
            Some("session nope-too".into()),
            Some(json!({"text": "guess"})),
        ),
        (
            Method::GET,
            format!("/api/vault/{v}?id=c"),
            Some("link nope".into()),
            None,
        ),
        (
            Method::GET,
            format!("/api/vault/{v}/stream?id=c&ticket=nope"),
            None,
            None,
        ),
        (
            Method::GET,
            "/api/sessions/s-nope/status".into(),
            None,
            None,
        ),
        (
            Method::DELETE,
            "/api/sessions/s-nope-again".into(),
            Some("session s-nope-again".into()),
            None,
        ),
    ];
    for (method, path, auth, body) in attempts {
        let (status, _, err) = send(&app, method, &path, auth.as_deref(), from, body).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND,
            "{path}: {status} {err}"
        );
    }
    // The allowance is used up: the right astation token is refused too.
    let answer = send(
        &app,
        Method::POST,
        "/api/sessions",
        Some(&format!("Bearer {token}")),
        from,
        Some(json!({"hostname": "h"})),
    )
    .await;
    assert_429(&answer, 10);
    let answer = send(
        &app,
        Method::POST,
        &format!("/api/vault/{v}?id=c"),
        Some(&format!("session {s}")),
        from,
        Some(json!({"text": "right session, blocked address"})),
    )
    .await;
    assert_429(&answer, 10);
    assert!(
        app.read(&v, &s, "c", "").await.is_empty(),
        "nothing written"
    );
    // A session revoking itself carries a credential: refused too, and the
    // session lives on.
    let answer = send(
        &app,
        Method::DELETE,
        &format!("/api/sessions/{s}"),
        Some(&format!("session {s}")),
        from,
        None,
    )
    .await;
    assert_429(&answer, 10);
    assert_eq!(app.session_status(&s).await, "granted");
    // A pairing request carries no credential: it is not affected.
    let answer = pair_from(&app, from).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
}

async fn writes_are_limited_per_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.rate_limit_writes_per_sec = 3).await;
    let (_, token, s) = app.work_session("home").await;
    let other = app.session(&token).await;
    let v = app.create_vault(&s, "c", "").await;
    let path = format!("/api/vault/{v}?id=c");
    let auth = format!("session {s}");
    let writes = (0..30).map(|i| {
        app.call(
            Method::POST,
            &path,
            Some(&auth),
            Some(json!({ "text": format!("w{i}") })),
        )
    });
    let answers = futures_util::future::join_all(writes).await;
    let ok = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(ok + limited.len(), 30, "{answers:?}");
    assert!(ok >= 3, "the burst goes through: {answers:?}");
    assert!(!limited.is_empty(), "30 at once meet the limit");
    assert!(limited[0]["error"].as_str().unwrap().contains("slow down"));
    // Exactly the accepted writes are stored.
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), ok);
    // Summary changes count too; another session has its own allowance.
    let mut summary_limited = false;
    for i in 0..20 {
        let (status, body) = app.set_summary(&v, &s, "c", &format!("s{i}")).await;
        match status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => {
                summary_limited = true;
                break;
            }
            other => panic!("{other} {body}"),
        }
    }
    assert!(summary_limited, "summary changes are limited too");
    let r = app
        .write(&v, &other, "c2", "from the other session", None)
        .await;
    assert!(r["seq"].is_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_pairings_are_limited_per_address() {
    let app = TestApp::spawn_with(Backend::Memory, |c| {
        c.rate_limit_pairings_per_min = 3;
        c.trust_forwarded_for = true;
    })
    .await;
    let (_, token) = app.astation("desk").await;
    let from = Some("192.0.2.50");
    for _ in 0..3 {
        let (status, _, body) = pair_from(&app, from).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "pending");
    }
    let answer = pair_from(&app, from).await;
    assert_429(&answer, 20);
    // An astation minting a session is not a pairing request.
    let (status, _, body) = send(
        &app,
        Method::POST,
        "/api/sessions",
        Some(&format!("Bearer {token}")),
        from,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "granted");
    // Another address may still pair; without TRUST_FORWARDED_FOR the
    // header would be ignored (checked in the unit tests).
    let (status, _, _) = pair_from(&app, Some("192.0.2.51")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_leave_normal_use_alone() {
    // Default limits: an atem's ordinary day (pairing, a few hundred writes
    // spread over time, reads, tickets) meets no 429.
    let app = TestApp::spawn_with(Backend::Memory, |c| {
        let d = vault_relay::config::Config::for_tests();
        c.rate_limit_auth_failures_per_min = d.rate_limit_auth_failures_per_min;
        c.rate_limit_pairings_per_min = d.rate_limit_pairings_per_min;
        c.rate_limit_writes_per_sec = d.rate_limit_writes_per_sec;
    })
    .await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    for i in 0..50 {
        app.write(&v, &s, "c", &format!("note {i}"), None).await;
        let _ = app.read(&v, &s, "c", "").await;
        let (status, body) = app.ticket(&v, &s, "c").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for _ in 0..5 {
        app.pair().await;
    }
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 50);
}
