//! Bad input gets a clear 4xx with a JSON `{"error"}`; never a 500.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    malformed_requests_get_400_with_a_reason,
    credentials_are_checked_with_401,
    a_header_of_the_wrong_shape_is_told_what_its_route_takes,
    size_limits_answer_413_and_accept_the_limit_itself,
    bodies_that_are_not_json_get_415,
    unknown_routes_and_methods_answer_json,
    hostile_input_never_yields_a_500,
);

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {body}"))
}

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    session: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .body(body);
    if let Some(s) = session {
        req = req.header("authorization", format!("session {s}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status} must have a JSON body, got {text:?}"));
    (status, value)
}

async fn malformed_requests_get_400_with_a_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "one", None).await;
    let json_ct = Some("application/json");
    let path = format!("/api/vault/{v}?id=c");

    let cases: Vec<(Method, String, Vec<u8>, &str)> = vec![
        (
            Method::POST,
            path.clone(),
            b"{\"text\": ".to_vec(),
            "not valid JSON",
        ),
        (
            Method::POST,
            path.clone(),
            b"{\"text\": 5}".to_vec(),
            "wrong shape",
        ),
        (Method::POST, path.clone(), b"{}".to_vec(), "wrong shape"),
        (
            Method::POST,
            path.clone(),
            b"{\"text\": \"x\", \"entry_id\": \"1\"}".to_vec(),
            "wrong shape",
        ),
        (
            Method::POST,
            path.clone(),
            b"{\"text\": \"x\", \"entry_id\": 1.5}".to_vec(),
            "wrong shape",
        ),
        (
            Method::POST,
            path.clone(),
            b"{\"text\": \"x\", \"entry_id\": 0}".to_vec(),
            "entry_id",
        ),
        (
            Method::POST,
            path.clone(),
            b"{\"text\": \"x\", \"entry_id\": -3}".to_vec(),
            "entry_id",
        ),
        (
            Method::POST,
            path.clone(),
            b"{\"text\": \"a\\u0000b\"}".to_vec(),
            "NUL",
        ),
        (
            Method::POST,
            format!("/api/vault/{v}/summary?id=c"),
            b"{\"text\": \"a\\u0000b\"}".to_vec(),
            "NUL",
        ),
        (
            Method::POST,
            "/api/vault?id=c".into(),
            b"{\"summary\": 3}".to_vec(),
            "wrong shape",
        ),
        (
            Method::POST,
            "/api/vault?id=c".into(),
            b"[1,2]".to_vec(),
            "wrong shape",
        ),
        (Method::GET, format!("/api/vault/{v}"), vec![], "?id="),
        (
            Method::GET,
            format!("/api/vault/{v}?id="),
            vec![],
            "client id",
        ),
        (
            Method::GET,
            format!("/api/vault/{v}?id=c&since=-1"),
            vec![],
            "since",
        ),
        (
            Method::GET,
            format!("/api/vault/{v}?id=c&since=abc"),
            vec![],
            "since",
        ),
        (
            Method::GET,
            format!("/api/vault/{v}?id=c&since=1.5"),
            vec![],
            "since",
        ),
        (
            Method::GET,
            format!("/api/vault/{v}?id=c&history=maybe"),
            vec![],
            "history",
        ),
        (Method::GET, "/api/vault".into(), vec![], "?id="),
    ];
    for (method, path, body, hint) in cases {
        let (status, err) = raw(&app, method.clone(), &path, Some(&s), json_ct, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {err}");
        assert!(
            error_text(&err).contains(hint),
            "{method} {path}: {err} should mention {hint}"
        );
    }
    assert_eq!(
        app.read(&v, &s, "c", "history=true").await.len(),
        1,
        "nothing was written"
    );
}

async fn credentials_are_checked_with_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let path = format!("/api/vault/{v}?id=c");
    let cases = [
        (None, "`Authorization: link <secret>` for a read-only link"),
        (
            Some("session s-doesnotexist".to_string()),
            "unknown session",
        ),
        (Some(format!("Bearer {token}")), "not a bearer"),
        (
            Some("Basic abc".to_string()),
            "unknown Authorization scheme",
        ),
        (Some("session".to_string()), "Authorization header"),
    ];
    for (auth, hint) in cases {
        let (status, err) = app.call(Method::GET, &path, auth.as_deref(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {err}");
        assert!(error_text(&err).contains(hint), "{auth:?}: {err}");
    }
    // Two Authorization headers, even two good ones: which one would act is
    // not the client's to guess. Refused, and nothing is written.
    for second in [format!("session {s}"), format!("Bearer {token}")] {
        let resp = app
            .client
            .post(format!("{}{path}", app.base))
            .header("authorization", format!("session {s}"))
            .header("authorization", second.as_str())
            .json(&json!({"text": "two credentials"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{second}");
        let err: Value = resp.json().await.unwrap();
        assert!(
            error_text(&err).contains("one Authorization header"),
            "{err}"
        );
    }
    assert!(
        app.read(&v, &s, "c", "").await.is_empty(),
        "nothing written"
    );
}

async fn a_header_of_the_wrong_shape_is_told_what_its_route_takes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let vault = "`session <session_id>` or `link <secret>`";
    let cases = [
        (
            Method::GET,
            format!("/api/vault/{v}?id=c"),
            "Basic abc",
            vault,
        ),
        (Method::GET, format!("/api/vault/{v}?id=c"), "link", vault),
        (
            Method::GET,
            "/api/admin/astations".into(),
            "Bxarer x",
            "`Bearer <admin token>`",
        ),
        (
            Method::POST,
            "/api/sessions/s-unknown/grant".into(),
            "Basic x",
            "`Bearer <astation token>`",
        ),
        (
            Method::DELETE,
            format!("/api/sessions/{s}"),
            "Basic x",
            "`session <session_id>` or `Bearer <astation token>`",
        ),
        (
            Method::POST,
            "/mcp?id=c".into(),
            "Basic x",
            "`Bearer <session_id>` or `session <session_id>`",
        ),
    ];
    for (method, path, auth, takes) in cases {
        let (status, err) = app
            .call(method.clone(), &path, Some(auth), Some(json!({})))
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} {auth:?}: {err}"
        );
        let text = error_text(&err);
        assert!(
            text.contains(&format!("this route takes {takes}")),
            "{method} {path} {auth:?}: {text}"
        );
    }
}

async fn size_limits_answer_413_and_accept_the_limit_itself(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let limit = 256 * 1024;

    let at_limit = "a".repeat(limit);
    let r = app.write(&v, &s, "c", &at_limit, None).await;
    assert_eq!(r["entry_no"], 1);
    let current = app.read(&v, &s, "c", "").await;
    assert_eq!(
        current[0]["content"].as_str().unwrap().len(),
        limit,
        "stored whole"
    );

    // Multi-byte characters count in bytes.
    let over = "é".repeat(limit / 2 + 1);
    let (status, err) = app.try_write(&v, &s, "c", json!({ "text": over })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_text(&err).contains("262144"), "{err}");

    let (status, err) = app.set_summary(&v, &s, "c", &"s".repeat(limit + 1)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");

    let huge = format!("{{\"text\": \"{}\"}}", "b".repeat(1024 * 1024 + 10));
    let (status, err) = raw(
        &app,
        Method::POST,
        &format!("/api/vault/{v}?id=c"),
        Some(&s),
        Some("application/json"),
        huge.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_text(&err).contains("larger"), "{err}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 1);
}

async fn bodies_that_are_not_json_get_415(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, err) = raw(
            &app,
            Method::POST,
            &format!("/api/vault/{v}?id=c"),
            Some(&s),
            ct,
            b"{\"text\": \"hi\"}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert!(error_text(&err).contains("application/json"), "{err}");
    }
    // JSON however RFC 9110 lets a client spell it is taken.
    for (i, ct) in [
        "application/json ; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
        "application/json;  charset=utf8",
        "application/vnd.atem+json",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = raw(
            &app,
            Method::POST,
            &format!("/api/vault/{v}?id=c"),
            Some(&s),
            Some(ct),
            format!("{{\"text\": \"spelling {i}\"}}").into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ct}: {body}");
    }
    // A charset other than UTF-8 is refused, saying why; nothing is written.
    let before = app.read(&v, &s, "c", "history=true").await.len();
    let (status, err) = raw(
        &app,
        Method::POST,
        &format!("/api/vault/{v}?id=c"),
        Some(&s),
        Some("application/json; charset=latin1"),
        b"{\"text\": \"caf\xe9\"}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    assert!(error_text(&err).contains("UTF-8"), "{err}");
    assert!(error_text(&err).contains("charset=latin1"), "{err}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), before);
}

async fn unknown_routes_and_methods_answer_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, err) = app.call(Method::GET, "/api/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_text(&err).contains("route"));
    let (status, err) = app.call(Method::DELETE, "/api/vault", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    error_text(&err);
    let (_, _, s) = app.work_session("home").await;
    let (status, err) = app
        .vault_call(Method::GET, "/api/vault/v-doesnotexist0", &s, "c", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_text(&err), "no such vault");
    let (status, err) = app
        .vault_call(
            Method::POST,
            "/api/vault/v-doesnotexist0",
            &s,
            "c",
            Some(json!({"text": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
}

async fn hostile_input_never_yields_a_500(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let weird_paths = [
        format!("/api/vault/{v}?id=%00"),
        format!("/api/vault/{v}?id=c&since=99999999999999999999999"),
        format!("/api/vault/{v}?id=c&since=%ff"),
        "/api/vault/%ff%fe?id=c".to_string(),
        format!("/api/vault/{v}%00?id=c"),
        format!("/api/vault/{}?id=c", "v".repeat(5000)),
        format!("/api/vault/{v}?id={}", "x".repeat(500)),
        "/api/sessions/%00/status".to_string(),
        format!("/api/vault/{v}/stream?id=c&since=-1"),
    ];
    for path in weird_paths {
        let (status, body) = raw(&app, Method::GET, &path, Some(&s), None, vec![]).await;
        assert!(status.is_client_error(), "{path}: {status} {body}");
        error_text(&body);
    }
    let bodies: Vec<&[u8]> = vec![
        b"",
        b"null",
        b"\xff\xfe",
        b"{\"text\": \"\\ud800\"}",
        b"{\"text\": \"x\", \"entry_id\": 99999999999999999999}",
        b"{\"text\": \"x\", \"entry_id\": 9223372036854775807}",
        b"{\"text\": [\"x\"]}",
    ];
    for body in bodies {
        let (status, err) = raw(
            &app,
            Method::POST,
            &format!("/api/vault/{v}?id=c"),
            Some(&s),
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        assert!(status.is_client_error(), "{body:?}: {status} {err}");
        error_text(&err);
    }
    for body in [
        b"{\"name\": 1}".to_vec(),
        b"{".to_vec(),
        b"{\"name\": \"\"}".to_vec(),
    ] {
        let (status, _) = raw(
            &app,
            Method::POST,
            "/api/admin/astations",
            None,
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // A control character in a client id is refused, not stored.
    let (status, _) = raw(
        &app,
        Method::POST,
        &format!("/api/vault/{v}?id=a%0Ab"),
        Some(&s),
        Some("application/json"),
        b"{\"text\":\"x\"}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
