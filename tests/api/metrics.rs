//! `GET /metrics`: who may scrape it, and that its series move with the
//! traffic they describe. Each relay has its own registry, so a fresh relay
//! starts from zero and the figures below are exact.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::both_stores;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};

both_stores!(
    requests_and_writes_are_counted_under_route_templates,
    streams_are_counted_while_open_with_their_frames_and_close_codes,
    event_streams_are_counted_as_sse,
);

/// Scrapes `/metrics` with the admin token; returns the exposition text.
pub async fn scrape(app: &TestApp) -> String {
    let resp = app
        .client
        .get(format!("{}/metrics", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("scrape reaches the relay");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.expect("body")
}

/// The value of the series `name` with exactly `labels` (in any order), if
/// the exposition has it.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (key, value) = line.rsplit_once(' ')?;
        let (series_name, mut have) = match key.split_once('{') {
            Some((n, rest)) => (
                n,
                rest.trim_end_matches('}')
                    .split(',')
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            ),
            None => (key, Vec::new()),
        };
        have.sort();
        (series_name == name && have == wanted).then(|| value.parse().expect("a number"))
    })
}

/// Scrapes until `check` holds for the exposition (the relay counts a frame
/// right after it leaves, so a client can see it a moment earlier).
async fn scrape_until(app: &TestApp, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(app).await;
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never showed in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_need_the_admin_token() {
    let app = TestApp::spawn(Backend::Memory).await;
    for auth in [None, Some("Bearer not-the-token"), Some("session s-123")] {
        let (status, body) = app.call(Method::GET, "/metrics", auth, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let text = scrape(&app).await;
    assert!(
        text.contains("# TYPE vault_relay_writes_total counter"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_public_serves_metrics_without_a_token() {
    let app = TestApp::spawn_with(Backend::Memory, |c| c.metrics_public = true).await;
    let resp = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("vault_relay_stream_frames_sent_total 0"),
        "{text}"
    );
}

async fn requests_and_writes_are_counted_under_route_templates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "first").await;
    app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    app.write(&v, &s, "c", "one, again", Some(1)).await;
    let (status, body) = app.set_summary(&v, &s, "c", "second").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.read(&v, &s, "c", "").await;
    let (status, _) = app
        .vault_call(Method::GET, "/api/vault/v-xyz", &s, "c", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(Method::GET, "/api/no-such-route", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let page = app
        .client
        .get(format!("{}/app.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    let text = scrape(&app).await;
    let writes = |kind| series(&text, "vault_relay_writes_total", &[("kind", kind)]);
    assert_eq!(writes("append"), Some(2.0), "{text}");
    assert_eq!(writes("edit"), Some(1.0), "{text}");
    assert_eq!(writes("summary"), Some(1.0), "{text}");
    let requests = |route, method, status| {
        series(
            &text,
            "vault_relay_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(
        requests("/api/vault/{vault_id}", "GET", "200"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("/api/vault/{vault_id}", "GET", "404"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("/api/vault/{vault_id}", "POST", "200"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(requests("/api/vault", "POST", "200"), Some(1.0), "{text}");
    assert_eq!(requests("/api/{*rest}", "GET", "404"), Some(1.0), "{text}");
    assert_eq!(requests("(static)", "GET", "200"), Some(1.0), "{text}");
    let durations = series(
        &text,
        "vault_relay_http_request_duration_seconds_count",
        &[("route", "/api/vault/{vault_id}"), ("method", "GET")],
    );
    assert_eq!(durations, Some(2.0), "{text}");
    let slowest_bucket = series(
        &text,
        "vault_relay_http_request_duration_seconds_bucket",
        &[
            ("route", "/api/vault/{vault_id}"),
            ("method", "GET"),
            ("le", "+Inf"),
        ],
    );
    assert_eq!(slowest_bucket, Some(2.0), "{text}");
    // Labels are templates: no concrete id, path or client id ever shows.
    for leaked in [v.as_str(), "v-xyz", "no-such-route", "app.js", &s] {
        assert!(
            !text.contains(leaked),
            "`{leaked}` leaked into a label:\n{text}"
        );
    }
}

fn frames_sent(text: &str) -> f64 {
    series(text, "vault_relay_stream_frames_sent_total", &[]).expect("frames series")
}

fn open_streams(text: &str) -> Option<f64> {
    open_of(text, "websocket")
}

fn open_of(text: &str, transport: &str) -> Option<f64> {
    series(
        text,
        "vault_relay_streams_open",
        &[("transport", transport)],
    )
}

async fn streams_are_counted_while_open_with_their_frames_and_close_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let before = scrape(&app).await;
    assert_eq!(open_streams(&before), Some(0.0), "{before}");
    assert_eq!(frames_sent(&before), 0.0);

    let mut stream = app.open_stream(&v, &s, "w", "").await;
    let mut received = 0;
    assert_eq!(stream.next_frame().await["type"], "hello");
    received += 1;
    app.write(&v, &s, "c", "live", None).await;
    loop {
        received += 1;
        if stream.next_frame().await["type"] == "entry" {
            break;
        }
    }
    let open = scrape_until(&app, "the frames the client received", |t| {
        frames_sent(t) >= received as f64
    })
    .await;
    assert_eq!(open_streams(&open), Some(1.0), "{open}");

    // Revoking the session closes the stream with 4001.
    let (status, body) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stream.closed().await, Some(4001));
    let closed = scrape_until(&app, "the closed stream", |t| open_streams(t) == Some(0.0)).await;
    assert_eq!(
        series(
            &closed,
            "vault_relay_stream_closes_total",
            &[("code", "4001")]
        ),
        Some(1.0),
        "{closed}"
    );
    assert!(frames_sent(&closed) >= received as f64);
}

#[tokio::test]
async fn the_memory_store_reports_no_pool() {
    let app = TestApp::spawn(Backend::Memory).await;
    let text = scrape(&app).await;
    assert!(!text.contains("vault_relay_db_pool_connections"), "{text}");
    assert_eq!(
        series(&text, "vault_relay_listener_reconnects_total", &[]),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reports_its_pool_and_listener_reconnects() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, _, s) = app.work_session("home").await;
    app.create_vault(&s, "c", "").await;
    let text = scrape(&app).await;
    let idle = series(
        &text,
        "vault_relay_db_pool_connections",
        &[("state", "idle")],
    );
    let busy = series(
        &text,
        "vault_relay_db_pool_connections",
        &[("state", "busy")],
    );
    let (Some(idle), Some(busy)) = (idle, busy) else {
        panic!("no pool gauges:\n{text}");
    };
    // The pool served the requests above and keeps its connections; the
    // LISTEN connection is one of them only while it is being opened.
    assert!(idle + busy >= 1.0, "{text}");
    assert!(
        idle + busy <= 8.0,
        "at most DATABASE_MAX_CONNECTIONS: {text}"
    );
    assert_eq!(
        series(&text, "vault_relay_listener_reconnects_total", &[]),
        Some(0.0),
        "{text}"
    );

    let db = app.db.clone().expect("a database");
    let mut conn = db.connect().await;
    let killed = db.kill_listen_connections(&mut conn).await;
    assert_eq!(killed, 1, "one LISTEN connection to kill");
    scrape_until(&app, "the listener's reconnect", |t| {
        series(t, "vault_relay_listener_reconnects_total", &[]) == Some(1.0)
    })
    .await;
}

#[test]
fn series_reads_labelled_and_bare_lines() {
    let text = "# TYPE a counter\na{x=\"1\",y=\"2\"} 3\nb 4\n";
    assert_eq!(series(text, "a", &[("y", "2"), ("x", "1")]), Some(3.0));
    assert_eq!(series(text, "a", &[("x", "1")]), None);
    assert_eq!(series(text, "b", &[]), Some(4.0));
}

async fn event_streams_are_counted_as_sse(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let before = scrape(&app).await;
    assert_eq!(open_of(&before, "sse"), Some(0.0), "{before}");

    let mut events = app.open_events(&v, &s, "w", "").await;
    events.next_of("hello").await;
    app.write(&v, &s, "c", "live", None).await;
    events.next_of("entry").await;
    let open = scrape_until(&app, "the event stream and its frames", |t| {
        open_of(t, "sse") == Some(1.0) && frames_sent(t) >= 2.0
    })
    .await;
    assert_eq!(open_of(&open, "websocket"), Some(0.0), "{open}");

    let (status, body) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, close) = events.next_of("close").await;
    assert_eq!(close["code"], 4001, "{close}");
    let closed = scrape_until(&app, "the closed event stream", |t| {
        open_of(t, "sse") == Some(0.0)
    })
    .await;
    assert_eq!(
        series(
            &closed,
            "vault_relay_stream_closes_total",
            &[("code", "4001")]
        ),
        Some(1.0),
        "{closed}"
    );
}

#[tokio::test]
async fn refusals_by_rate_limits_are_counted_by_limit() {
    let app = TestApp::spawn_with(Backend::Memory, |c| {
        c.metrics_public = true;
        c.rate_limit_pairings_per_min = 1;
        c.rate_limit_auth_failures_per_min = 1;
    })
    .await;
    let pairing = || {
        app.call(
            Method::POST,
            "/api/sessions",
            None,
            Some(serde_json::json!({"hostname": "h"})),
        )
    };
    assert_eq!(pairing().await.0, StatusCode::OK);
    assert_eq!(pairing().await.0, StatusCode::TOO_MANY_REQUESTS);
    let wrong = || {
        app.call(
            Method::GET,
            "/api/admin/astations",
            Some("Bearer not-the-token"),
            None,
        )
    };
    assert_eq!(wrong().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong().await.0, StatusCode::TOO_MANY_REQUESTS);

    // Public, so the scrape carries no credential the limit would refuse.
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let limited = |limit| series(&text, "vault_relay_rate_limited_total", &[("limit", limit)]);
    assert_eq!(limited("pairings"), Some(1.0), "{text}");
    assert_eq!(limited("auth_failures"), Some(1.0), "{text}");
    assert_eq!(limited("writes"), None, "{text}");
}
