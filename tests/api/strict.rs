//! Strict input: bodies are JSON objects, query values decode exactly,
//! stream tickets belong to one client id, and wrong pairing codes are
//! counted atomically.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};

both_stores!(
    bodies_that_are_not_objects_get_400,
    an_empty_object_still_creates_a_vault,
    query_values_that_are_not_utf8_get_400,
    a_ticket_works_only_for_its_client_id,
    concurrent_wrong_codes_get_at_most_five_wrong_code_answers,
);

async fn bodies_that_are_not_objects_get_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "kept").await;
    app.write(&v, &s, "c", "first", None).await;
    let p = app.pair().await;
    let pending = p["id"].as_str().unwrap();
    let session = format!("session {s}");
    let bearer = format!("Bearer {token}");
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let routes: Vec<(String, &str)> = vec![
        ("/api/vault?id=c".into(), session.as_str()),
        (format!("/api/vault/{v}?id=c"), session.as_str()),
        (format!("/api/vault/{v}/summary?id=c"), session.as_str()),
        (format!("/api/vault/{v}/links?id=c"), session.as_str()),
        ("/api/sessions".into(), bearer.as_str()),
        (format!("/api/sessions/{pending}/grant"), bearer.as_str()),
        ("/api/admin/astations".into(), admin.as_str()),
    ];
    for (path, auth) in &routes {
        for body in [
            json!([]),
            json!(["edited", 1]),
            json!("text"),
            json!(7),
            json!(null),
            json!(true),
        ] {
            let (status, err) = app
                .call(Method::POST, path, Some(auth), Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {err}");
            let text = err["error"].as_str().unwrap();
            assert!(text.contains("object"), "{path} {body}: {text}");
        }
    }
    // Nothing was created, written or changed.
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(list, json!([{"vault_id": v, "summary": "kept"}]));
    let rows = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["content"], "first");
    assert_eq!(app.session_status(pending).await, "pending");
    let (_, astations) = app
        .call(Method::GET, "/api/admin/astations", Some(&admin), None)
        .await;
    assert_eq!(astations.as_array().map(Vec::len), Some(1));
}

async fn an_empty_object_still_creates_a_vault(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let (status, body) = app
        .vault_call(Method::POST, "/api/vault", &s, "c", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = body["vault_id"].as_str().unwrap();
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(list, json!([{"vault_id": v, "summary": ""}]));
}

async fn query_values_that_are_not_utf8_get_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let auth = format!("session {s}");
    for id in ["%ff", "%fe", "a%80b", "%c3%28", "%ed%a0%80"] {
        for (method, path, body) in [
            (Method::GET, "/api/vault".to_string(), None),
            (Method::POST, "/api/vault".to_string(), Some(json!({}))),
            (Method::GET, format!("/api/vault/{v}"), None),
            (
                Method::POST,
                format!("/api/vault/{v}"),
                Some(json!({"text": "t"})),
            ),
            (Method::GET, format!("/api/vault/{v}/stream"), None),
        ] {
            let (status, err) = app
                .call(method, &format!("{path}?id={id}"), Some(&auth), body)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?id={id}: {err}");
            let text = err["error"].as_str().unwrap();
            assert!(text.contains("`id`") && text.contains("UTF-8"), "{text}");
        }
    }
    let (status, err) = app
        .call(
            Method::GET,
            &format!("/api/vault/{v}?id=c&since=%ff"),
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    // Nothing was written under a replacement character.
    assert!(app.read(&v, &s, "c", "history=true").await.is_empty());
    // Valid encodings, and an atem_id the route sanitizes itself, still work.
    let mut stream = app
        .open_stream(&v, &s, "%E4%BD%A0-1", "atem_id=%ff%E4%BD%A0")
        .await;
    let hello = stream.next_frame().await;
    assert_eq!(hello["type"], "hello", "{hello}");
    stream.close().await;
}

async fn a_ticket_works_only_for_its_client_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c-a1", "").await;
    let ticket = |body: Value| body["ticket"].as_str().unwrap().to_string();

    let (status, body) = app.ticket(&v, &s, "c-a1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let t = ticket(body);
    let (status, err) = app
        .stream(&v, None, "c-other", &format!("ticket={t}"))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        err["error"].as_str().unwrap().contains("another client id"),
        "{err}"
    );
    let (status, _) = app
        .stream(&v, None, "c-a1", &format!("ticket={t}"))
        .await
        .err()
        .expect("the ticket was spent by the refused attempt");
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, body) = app.ticket(&v, &s, "c-a1").await;
    let t = ticket(body);
    let Ok(mut stream) = app.stream(&v, None, "c-a1", &format!("ticket={t}")).await else {
        panic!("its own client id opens the stream");
    };
    assert_eq!(stream.next_frame().await["type"], "hello");
    stream.close().await;
}

async fn concurrent_wrong_codes_get_at_most_five_wrong_code_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token) = app.astation("desk").await;
    for _round in 0..3 {
        let p = app.pair().await;
        let id = p["id"].as_str().unwrap().to_string();
        let otp = p["otp"].as_str().unwrap();
        let wrong = if otp == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        let path = format!("/api/sessions/{id}/grant");
        let auth = format!("Bearer {token}");
        let attempts = (0..40).map(|_| {
            app.call(
                Method::POST,
                &path,
                Some(&auth),
                Some(json!({ "otp": wrong })),
            )
        });
        let answers = futures_util::future::join_all(attempts).await;
        let wrong_code = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::FORBIDDEN)
            .count();
        let not_pending = answers
            .iter()
            .filter(|(status, body)| {
                *status == StatusCode::CONFLICT
                    && body["error"].as_str().unwrap().contains("denied")
            })
            .count();
        assert_eq!(wrong_code, 5, "{answers:?}");
        assert_eq!(not_pending, 35, "{answers:?}");
        assert_eq!(app.session_status(&id).await, "denied");
        let (status, _) = app
            .call(
                Method::POST,
                &format!("/api/sessions/{id}/grant"),
                Some(&format!("Bearer {token}")),
                Some(json!({ "otp": otp })),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "the right code is too late");
    }
}
