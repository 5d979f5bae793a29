//! `/mcp` as HTTP: refusals before any exchange, keepalive pings of a
//! subscribed session, a session bound to the credential that opened it,
//! browser clients' headers, revocation (of subscribed and idle sessions),
//! and subscriptions across replicas.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use super::{UPDATE_WAIT, connect};
use crate::helpers::{Backend, TestApp};

/// A hand-made JSON-RPC POST to `/mcp` as agent-1 with `session`'s
/// credential, inside MCP session `mcp_session` when given.
fn mcp_post(
    app: &TestApp,
    session: &str,
    mcp_session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let req = app
        .client
        .post(format!("{}/mcp?id=agent-1", app.base))
        .header("authorization", format!("Bearer {session}"))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    match mcp_session {
        Some(id) => req
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-06-18"),
        None => req,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_any_exchange_are_http_errors_with_the_json_body() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, s) = app.work_session("home").await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "curl", "version": "1"}
        }
    });
    let post = |path: &str, auth: Option<String>| {
        let mut req = app
            .client
            .post(format!("{}{path}", app.base))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let json_error = async |resp: reqwest::Response| -> (StatusCode, String) {
        let status = resp.status();
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/json",
            "{status}"
        );
        let body: Value = resp.json().await.expect("a JSON body");
        (
            status,
            body["error"].as_str().expect("an error").to_string(),
        )
    };

    let (status, words) = json_error(post("/mcp?id=c", None).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(words.contains("Bearer <session_id>"), "{words}");
    let (status, _) =
        json_error(post("/mcp?id=c", Some("Bearer nope".into())).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An astation token is not a session.
    let (_, token) = app.astation("other").await;
    let (status, _) = json_error(
        post("/mcp?id=c", Some(format!("Bearer {token}")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, words) =
        json_error(post("/mcp", Some(format!("Bearer {s}"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(words.contains("?id="), "{words}");
    // A revoked session is refused the same way.
    let (_, token2) = app.astation("third").await;
    let gone = app.session(&token2).await;
    app.revoke_session(&gone, &format!("session {gone}")).await;
    let (status, words) = json_error(
        post("/mcp?id=c", Some(format!("session {gone}")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(words.contains("revoked"), "{words}");

    // Both spellings of a good credential open a session.
    for auth in [format!("session {s}"), format!("Bearer {s}")] {
        let resp = post("/mcp?id=c", Some(auth)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().contains_key("mcp-session-id"));
    }
    // The library's own refusals get our JSON shape too.
    let resp = app
        .client
        .get(format!("{}/mcp?id=c", app.base))
        .header("authorization", format!("Bearer {s}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "no-such-session")
        .send()
        .await
        .unwrap();
    let (status, words) = json_error(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(words.contains("initialize a new one"), "{words}");

    // A JSON body that is not one JSON-RPC message is the body's fault
    // (400), not the Content-Type's (the library says 415).
    for body in [
        "garbage",
        "",
        "[]",
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
    ] {
        let resp = app
            .client
            .post(format!("{}/mcp?id=c", app.base))
            .header("authorization", format!("Bearer {s}"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, words) = json_error(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {words}");
        assert!(
            words.contains("not one JSON-RPC 2.0 message"),
            "{body:?}: {words}"
        );
    }
    // Another Content-Type is still 415.
    let resp = app
        .client
        .post(format!("{}/mcp?id=c", app.base))
        .header("authorization", format!("Bearer {s}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "text/plain")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(resp).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Ending a session without naming it says which header names it.
    let resp = app
        .client
        .delete(format!("{}/mcp?id=c", app.base))
        .header("authorization", format!("Bearer {s}"))
        .send()
        .await
        .unwrap();
    let (status, words) = json_error(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(words.contains("`Mcp-Session-Id`"), "{words}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_session_is_pinged_and_keeps_hearing() {
    let app = TestApp::spawn_with(Backend::Memory, |c| c.stream_ping_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "agent-1", "").await;
    let mut mcp = connect(&app, &s, "agent-1").await;
    mcp.subscribe(&v).await;
    // Several ping periods pass; the client answers each ping (the SDK
    // does so by itself), so the session and its subscription live on.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    app.write(&v, &s, "atem-rest", "still there?", None).await;
    assert_eq!(mcp.next_update().await, format!("vault://{v}"));
    assert_eq!(
        mcp.ok("vault_list", json!({})).await["vaults"][0]["vault_id"],
        v
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_session_whose_client_never_answers_pings_is_closed() {
    let app = TestApp::spawn_with(Backend::Memory, |c| c.stream_ping_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "agent-1", "").await;
    // A hand-rolled client that subscribes but never opens the event
    // stream, so the relay's pings cannot reach it.
    let rpc = async |session: Option<&str>, body: Value| {
        let resp = mcp_post(&app, &s, session, &body)
            .send()
            .await
            .expect("the relay answers");
        let status = resp.status();
        let id = resp
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.expect("a body");
        (status, id, text)
    };
    let (status, id, _) = rpc(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "silent", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = id.expect("a session id");
    let (status, _, _) = rpc(
        Some(&id),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, body) = rpc(
        Some(&id),
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
               "params": {"uri": format!("vault://{v}")}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"result\""), "{body}");

    // Within a few ping periods the relay gives up on it and closes the
    // session: its next request is told to start a new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, body) = rpc(
            Some(&id),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
        )
        .await;
        if status == StatusCode::NOT_FOUND {
            let body: Value = serde_json::from_str(&body).expect("a JSON body");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("initialize a new one")
            );
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent session was never closed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_stays_with_the_credential_that_opened_it() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, mine) = app.work_session("home").await;
    let (_, _, theirs) = app.work_session("away").await;
    let post = |session: &str, mcp_session: Option<&str>, body: Value| {
        mcp_post(&app, session, mcp_session, &body).send()
    };
    let id = initialize(&app, &mine).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "vault_list", "arguments": {}}});
    // Another valid session cannot use this MCP session.
    let hijack = post(&theirs, Some(&id), list.clone())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        hijack.contains("opened with another credential"),
        "{hijack}"
    );
    assert!(!hijack.contains("\"result\""), "{hijack}");
    let own = post(&mine, Some(&id), list)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(own.contains("\"result\""), "{own}");

    // Nor read its event stream or end it: every method is checked. Each
    // case: who, which method, on which MCP session, and the refusal.
    let refused = async |session: &str, method: Method, mcp_session: &str| {
        let r = app
            .client
            .request(method.clone(), format!("{}/mcp?id=agent-1", app.base))
            .header("authorization", format!("Bearer {session}"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", mcp_session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let words = body["error"].as_str().unwrap_or_default().to_string();
        (status, words)
    };
    for method in [Method::GET, Method::DELETE] {
        let (status, words) = refused(&theirs, method.clone(), &id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}: {words}");
        assert!(
            words.contains("opened with another credential"),
            "{method}: {words}"
        );
    }
    // The session is still there for its owner, who ends it; after that,
    // and for an id never opened, every method answers 404.
    let (status, words) = refused(&mine, Method::DELETE, &id).await;
    assert!(status.is_success(), "{status}: {words}");
    for mcp_session in [id.as_str(), "no-such-session"] {
        for method in [Method::POST, Method::GET, Method::DELETE] {
            let (status, words) = refused(&mine, method.clone(), mcp_session).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{method} {mcp_session}: {words}"
            );
            assert!(words.contains("initialize a new one"), "{method}: {words}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_mcp_clients_may_send_and_read_the_mcp_headers() {
    let app = TestApp::spawn_with(Backend::Memory, |c| {
        c.cors_origin = Some("https://agent.example.com".into());
    })
    .await;
    let preflight = app
        .client
        .request(Method::OPTIONS, format!("{}/mcp?id=c", app.base))
        .header("origin", "https://agent.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, mcp-session-id, mcp-protocol-version",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["authorization", "mcp-session-id", "mcp-protocol-version"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    let (_, _, s) = app.work_session("home").await;
    let opened = app
        .client
        .post(format!("{}/mcp?id=c", app.base))
        .header("origin", "https://agent.example.com")
        .header("authorization", format!("Bearer {s}"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "browser", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    let exposed = opened.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("mcp-session-id"), "{exposed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_session_ends_its_mcp_access() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "agent-1", "").await;
    let mut mcp = connect(&app, &s, "agent-1").await;
    mcp.subscribe(&v).await;
    app.write(&v, &s, "c", "before", None).await;
    assert_eq!(mcp.next_update().await, format!("vault://{v}"));

    let (status, _) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    let after = tokio::time::timeout(
        UPDATE_WAIT,
        mcp.service
            .call_tool(CallToolRequestParams::new("vault_list").with_arguments(Default::default())),
    )
    .await
    .expect("the relay answers in time");
    assert!(
        after.is_err(),
        "a revoked session gets no tool results: {after:?}"
    );
}

/// Opens an MCP session on `app` as `session` by hand (initialize, then
/// initialized); returns its `Mcp-Session-Id`.
async fn initialize(app: &TestApp, session: &str) -> String {
    let opened = mcp_post(
        app,
        session,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    let id = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    mcp_post(app, session, Some(&id), &initialized)
        .send()
        .await
        .unwrap();
    id
}

/// Opens an MCP session on `app` as `session` and its event stream;
/// returns the open stream's response.
async fn open_event_stream(app: &TestApp, session: &str) -> reqwest::Response {
    let id = initialize(app, session).await;
    let events = app
        .client
        .get(format!("{}/mcp?id=agent-1", app.base))
        .header("authorization", format!("Bearer {session}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    events
}

/// An MCP session with no subscription, only its event stream open: the
/// session's revocation (on `revoker`, this replica or another) ends that
/// stream, as it closes the vault streams.
async fn revoking_ends_an_idle_mcp_event_stream(app: &TestApp, revoker: &TestApp) {
    let (_, _, s) = app.work_session("home").await;
    let mut events = open_event_stream(app, &s).await;
    // Still open a moment later: the end below is the revocation's doing.
    let early = tokio::time::timeout(Duration::from_millis(300), events.chunk()).await;
    assert!(
        !matches!(early, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ended on its own: {early:?}"
    );
    let (status, _) = revoker.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(UPDATE_WAIT, async {
        loop {
            match events.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream is still open after the revocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_session_ends_its_idle_mcp_event_stream() {
    let app = TestApp::spawn(Backend::Memory).await;
    revoking_ends_an_idle_mcp_event_stream(&app, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_on_another_replica_ends_an_idle_mcp_event_stream() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    revoking_ends_an_idle_mcp_event_stream(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_on_one_replica_hears_writes_on_another() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    let (_, _, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "agent-1", "").await;
    let mut on_a = connect(&a, &s, "agent-1").await;
    on_a.subscribe(&v).await;

    b.write(&v, &s, "atem-b", "from the other replica", None)
        .await;
    assert_eq!(on_a.next_update().await, format!("vault://{v}"));
    let (status, _) = b.set_summary(&v, &s, "atem-b", "summary from b").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(on_a.next_update().await, format!("vault://{v}"));
    // And the tools on A read what B wrote.
    let rows = on_a.ok("vault_read", json!({"vault_id": v})).await;
    assert_eq!(rows["entries"][0]["content"], "from the other replica");
}
