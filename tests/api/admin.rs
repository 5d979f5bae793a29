//! The admin API and `/health`.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};

both_stores!(
    the_admin_api_registers_lists_and_removes_astations,
    the_admin_api_needs_the_admin_token,
    health_names_the_backend,
);

async fn the_admin_api_registers_lists_and_removes_astations(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let (status, created) = app
        .call(
            Method::POST,
            "/api/admin/astations",
            Some(&admin),
            Some(json!({"name": "Ana's desk"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = created["astation_id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(token.len() >= 32, "{token}");
    assert_eq!(created.as_object().unwrap().len(), 2);

    let (status, list) = app
        .call(Method::GET, "/api/admin/astations", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["astation_id"], id);
    assert_eq!(list[0]["name"], "Ana's desk");
    chrono::DateTime::parse_from_rfc3339(list[0]["created_at"].as_str().unwrap()).unwrap();
    assert!(
        !list[0].to_string().contains(token),
        "tokens are never listed"
    );
    assert_eq!(list[0].as_object().unwrap().len(), 3);

    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/api/admin/astations/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, list) = app
        .call(Method::GET, "/api/admin/astations", Some(&admin), None)
        .await;
    assert_eq!(list, json!([]));

    let (status, err) = app
        .call(
            Method::POST,
            "/api/admin/astations",
            Some(&admin),
            Some(json!({"name": "  "})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

async fn the_admin_api_needs_the_admin_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for auth in [None, Some("Bearer wrong"), Some("session s-x")] {
        let (status, err) = app
            .call(Method::GET, "/api/admin/astations", auth, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(err["error"].is_string());
        let (status, _) = app
            .call(
                Method::POST,
                "/api/admin/astations",
                auth,
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (_, token) = app.astation("desk").await;
    let (status, _) = app
        .call(
            Method::GET,
            "/api/admin/astations",
            Some(&format!("Bearer {token}")),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an astation token is not the admin token"
    );
}

async fn health_names_the_backend(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let want = match backend {
        Backend::Memory => "memory",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body, json!({"status": "ok", "backend": want}));
}

#[tokio::test]
async fn cors_allows_only_the_configured_origin() {
    let app = TestApp::spawn_with(Backend::Memory, |c| {
        c.cors_origin = Some("https://dash.example.com".into());
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, format!("{}/api/vault", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://dash.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let allowed_headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn links_point_at_the_public_base_url() {
    let app = TestApp::spawn_with(Backend::Memory, |c| {
        c.public_base_url = Some("https://relay.example.com/".into());
    })
    .await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let (status, link) = app
        .vault_call(
            Method::POST,
            &format!("/api/vault/{v}/links"),
            &s,
            "c",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("https://relay.example.com/#vault={v}&link=lk-")),
        "{url}"
    );
}
