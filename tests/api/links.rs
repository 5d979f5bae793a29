//! Read-only links, on both stores.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    a_link_reads_one_vault_and_nothing_else,
    links_are_listed_and_revoked_by_readers_only,
    an_expired_link_stops_working,
    a_link_streams_through_a_ticket_until_revoked,
);

/// Creates a link; returns (link_id, secret, body).
pub(crate) async fn link(
    app: &TestApp,
    vault: &str,
    session: &str,
    body: Value,
) -> (String, String, Value) {
    let (status, created) = app
        .vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/links"),
            session,
            "c",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let url = created["url"].as_str().unwrap();
    let secret = url
        .split("link=")
        .nth(1)
        .expect("the url holds the secret")
        .to_string();
    assert!(url.contains(&format!("#vault={vault}&")), "{url}");
    (
        created["link_id"].as_str().unwrap().to_string(),
        secret,
        created,
    )
}

async fn as_link(
    app: &TestApp,
    method: Method,
    path: &str,
    secret: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    app.call(
        method,
        &format!("{path}{sep}id=viewer"),
        Some(&format!("link {secret}")),
        body,
    )
    .await
}

/// `DELETE /api/vault/{vault}/links/{id}` as `session` acting as `client`.
async fn revoke(
    app: &TestApp,
    vault: &str,
    id: &str,
    session: &str,
    client: &str,
) -> (StatusCode, Value) {
    app.vault_call(
        Method::DELETE,
        &format!("/api/vault/{vault}/links/{id}"),
        session,
        client,
        None,
    )
    .await
}

/// Opens a vault's stream the way the viewer does with a link: a ticket
/// from the link, then the stream with that ticket and `query`.
async fn link_stream(
    app: &TestApp,
    vault: &str,
    secret: &str,
    query: &str,
) -> crate::helpers::StreamClient {
    let (status, ticket) = as_link(
        app,
        Method::POST,
        &format!("/api/vault/{vault}/stream-ticket"),
        secret,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ticket}");
    let ticket = ticket["ticket"].as_str().unwrap();
    app.stream(vault, None, "viewer", &format!("ticket={ticket}{query}"))
        .await
        .expect("a link's ticket opens the stream")
}

async fn a_link_reads_one_vault_and_nothing_else(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "shared plan").await;
    let other = app.create_vault(&s, "c", "private").await;
    app.write(&v, &s, "c", "visible", None).await;
    let (_, secret, created) = link(&app, &v, &s, json!({})).await;
    chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();

    let (status, rows) =
        as_link(&app, Method::GET, &format!("/api/vault/{v}"), &secret, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows[0]["content"], "visible");
    let (_, info) = as_link(
        &app,
        Method::GET,
        &format!("/api/vault/{v}/info"),
        &secret,
        None,
    )
    .await;
    assert_eq!(
        (
            info["read_only_link"].as_bool(),
            info["can_write"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let (_, list) = as_link(&app, Method::GET, "/api/vault", &secret, None).await;
    assert_eq!(list, json!([{"vault_id": v, "summary": "shared plan"}]));

    for (method, path, body) in [
        (
            Method::POST,
            format!("/api/vault/{v}"),
            Some(json!({"text": "x"})),
        ),
        (
            Method::POST,
            format!("/api/vault/{v}/summary"),
            Some(json!({"text": "x"})),
        ),
        (
            Method::POST,
            format!("/api/vault/{v}/links"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/vault".to_string(),
            Some(json!({"summary": "x"})),
        ),
    ] {
        let (status, err) = as_link(&app, method, &path, &secret, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {err}");
    }
    let (status, _) = as_link(
        &app,
        Method::GET,
        &format!("/api/vault/{other}"),
        &secret,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a link cannot probe other vaults"
    );
    let (status, _) = as_link(
        &app,
        Method::GET,
        &format!("/api/vault/{v}"),
        "lk-forged",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 1);
}

async fn links_are_listed_and_revoked_by_readers_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&s, "c", "").await;
    let (id, secret, _) = link(&app, &v, &s, json!({"expires_in_secs": 3600})).await;

    let (status, list) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/links"), &s, "c", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["link_id"], id);
    assert_eq!(list[0]["revoked"], false);
    assert!(
        !list.to_string().contains(&secret),
        "secrets are never listed"
    );

    let (status, _) = revoke(&app, &v, &id, &away, "stranger").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = revoke(&app, &v, &id, &s, "c").await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, err) = as_link(&app, Method::GET, &format!("/api/vault/{v}"), &secret, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("revoked"));
    let (status, _) = revoke(&app, &v, &id, &s, "c").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already revoked");
    let (_, list) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/links"), &s, "c", None)
        .await;
    assert_eq!(list[0]["revoked"], true);

    for bad in [
        json!({"expires_in_secs": 0}),
        json!({"expires_in_secs": 999_999_999}),
        json!({"expires_in_secs": "soon"}),
    ] {
        let (status, _) = app
            .vault_call(
                Method::POST,
                &format!("/api/vault/{v}/links"),
                &s,
                "c",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

async fn an_expired_link_stops_working(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let (_, secret, _) = link(&app, &v, &s, json!({"expires_in_secs": 2})).await;
    let (status, _) = as_link(&app, Method::GET, &format!("/api/vault/{v}"), &secret, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = link_stream(&app, &v, &secret, "").await;
    assert_eq!(stream.next_frame().await["type"], "hello");
    // The open stream ends when the link expires, not at some later ping.
    let started = std::time::Instant::now();
    assert_eq!(stream.closed().await, Some(4001));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (status, err) = as_link(&app, Method::GET, &format!("/api/vault/{v}"), &secret, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("expired"));
}

async fn a_link_streams_through_a_ticket_until_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let (id, secret, _) = link(&app, &v, &s, json!({})).await;
    let mut stream = link_stream(&app, &v, &secret, "&since=0").await;
    assert_eq!(stream.next_frame().await["type"], "hello");
    let r = app.write(&v, &s, "c", "live", None).await;
    assert_eq!(stream.next_of("entry").await["seq"], r["seq"]);
    revoke(&app, &v, &id, &s, "c").await;
    assert_eq!(stream.closed().await, Some(4001));
}
