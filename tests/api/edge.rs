//! The HTTP edge: connection timeouts, early refusals with
//! `Connection: close`, and the JSON answer for every refusal the relay
//! makes before a route runs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, TestApp};
use crate::raw::{RawConn, exchange};

async fn app_with(adjust: impl FnOnce(&mut vault_relay::config::Config)) -> TestApp {
    TestApp::spawn_with(Backend::Memory, adjust).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_after_the_header_timeout() {
    let app = app_with(|c| {
        c.http_header_timeout_secs = 1;
        c.http_idle_timeout_secs = 60;
    })
    .await;
    let mut conn = RawConn::open(app.addr).await;
    conn.send(b"GET /health HTTP/1.1\r\nHost: relay\r\n").await;
    // Keep sending header lines, slower than a client should: the bytes
    // keep the connection from being idle, so only the header timeout can
    // end it.
    let dribble = async {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !conn.try_send(format!("x-slow-{i}: y\r\n").as_bytes()).await {
                return;
            }
        }
        panic!("the relay kept reading headers for 10 s");
    };
    dribble.await;
    conn.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let app = app_with(|c| {
        c.http_header_timeout_secs = 60;
        c.http_idle_timeout_secs = 1;
    })
    .await;
    // A connection that never sends anything.
    let mut silent = RawConn::open(app.addr).await;
    // A keep-alive connection after one answered request.
    let mut kept = RawConn::open(app.addr).await;
    kept.send(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await;
    let r = kept.response().await.expect("an answer");
    assert_eq!(r.status, 200);
    assert!(!r.closes(), "a keep-alive answer: {r:?}");
    silent.closed().await;
    kept.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_the_connection_closes() {
    let app = app_with(|c| c.http_body_timeout_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let mut conn = RawConn::open(app.addr).await;
    conn.send(
        format!(
            "POST /api/vault?id=c HTTP/1.1\r\nHost: relay\r\nAuthorization: session {s}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"summary\": \""
        )
        .as_bytes(),
    )
    .await;
    let r = conn.response().await.expect("an answer");
    let text = r.assert_json_error(408);
    assert!(text.contains("in time"), "{text}");
    assert!(r.closes(), "{r:?}");
    conn.closed().await;
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(list, json!([]), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_content_length_gets_413_at_once() {
    let app = app_with(|c| c.http_body_timeout_secs = 60).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut conn = RawConn::open(app.addr).await;
    // Only the headers: an answer that waited for the body would never come
    // (the wait is far shorter than the body timeout).
    conn.send(
        format!(
            "POST /api/vault/{v}?id=c HTTP/1.1\r\nHost: relay\r\nAuthorization: session {s}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            50 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await;
    let r = conn.response().await.expect("an answer");
    let text = r.assert_json_error(413);
    assert!(text.contains("larger"), "{text}");
    assert!(text.contains(&(1024 * 1024).to_string()), "{text}");
    assert!(r.closes(), "{r:?}");
    conn.closed().await;
    // The limit applies to unauthenticated requests too, and to any route.
    let r = exchange(
        app.addr,
        b"POST /api/sessions HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
          Content-Length: 2000000\r\n\r\n",
    )
    .await
    .expect("an answer");
    r.assert_json_error(413);
    assert!(app.read(&v, &s, "c", "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_closes_and_a_keep_alive_client_carries_on() {
    let app = app_with(|_| {}).await;
    let (_, _, s) = app.work_session("home").await;

    // Raw: a POST refused before its body is read says so and closes.
    let mut conn = RawConn::open(app.addr).await;
    conn.send(
        b"POST /api/vault?id=c HTTP/1.1\r\nHost: relay\r\nAuthorization: session nope\r\n\
          Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n{\"summary\":",
    )
    .await;
    let r = conn.response().await.expect("an answer");
    r.assert_json_error(401);
    assert!(r.closes(), "{r:?}");
    conn.closed().await;

    // Raw: requests whose bodies are read keep the connection.
    let mut conn = RawConn::open(app.addr).await;
    for summary in ["one", "two"] {
        let body = format!("{{\"summary\": \"{summary}\"}}");
        conn.send(
            format!(
                "POST /api/vault?id=c HTTP/1.1\r\nHost: relay\r\nAuthorization: session {s}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        let r = conn
            .response()
            .await
            .expect("an answer on the same connection");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.closes(), "{r:?}");
    }

    // A pooled client: an early 401 with a large body, then the next
    // request goes through (on a new connection).
    let big = json!({ "summary": "x".repeat(300_000) });
    for _ in 0..3 {
        let resp = app
            .client
            .post(format!("{}/api/vault?id=c", app.base))
            .header("authorization", "session wrong")
            .json(&big)
            .send()
            .await
            .expect("the refusal arrives");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let (status, body) = app
            .vault_call(Method::GET, "/api/vault", &s, "c", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body.as_array().map(Vec::len), Some(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_targets_and_headers_get_json_414_and_431() {
    let app = app_with(|_| {}).await;
    let long = "a".repeat(9 * 1024);
    let r = exchange(
        app.addr,
        format!("GET /api/vault?id={long} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes(),
    )
    .await
    .expect("an answer");
    let text = r.assert_json_error(414);
    assert!(text.contains("8192"), "{text}");
    let r = exchange(
        app.addr,
        format!("GET /{long} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes(),
    )
    .await
    .expect("an answer");
    r.assert_json_error(414);

    for headers in [
        format!("x-big: {}\r\n", "b".repeat(70 * 1024)),
        // Over 64 KiB in many lines, but no more than hyper parses.
        (0..90)
            .map(|i| format!("x-h{i}: {}\r\n", "c".repeat(800)))
            .collect(),
    ] {
        let r = exchange(
            app.addr,
            format!("GET /health HTTP/1.1\r\nHost: relay\r\n{headers}\r\n").as_bytes(),
        )
        .await
        .expect("an answer");
        let text = r.assert_json_error(431);
        assert!(text.contains("65536"), "{text}");
    }

    // Beyond what hyper reads at all, hyper answers 431 itself (the README
    // says so); the relay stays up.
    let r = exchange(
        app.addr,
        format!(
            "GET /health HTTP/1.1\r\nHost: relay\r\nx-huge: {}\r\n\r\n",
            "d".repeat(300 * 1024)
        )
        .as_bytes(),
    )
    .await;
    if let Some(r) = r {
        assert_eq!(r.status, 431, "{r:?}");
    }
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_paths_and_static_paths_that_name_no_file_get_json() {
    let app = app_with(|_| {}).await;
    for path in ["/api", "/api/", "/api/nope", "/api/vault/v-1/nope/deeper"] {
        for method in ["GET", "POST", "DELETE", "PUT"] {
            let r = exchange(
                app.addr,
                format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("an answer");
            r.assert_json_error(404);
        }
    }
    let r = exchange(
        app.addr,
        b"DELETE /api/vault HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("an answer");
    r.assert_json_error(405);

    let long_segment = "s".repeat(300);
    for path in [
        format!("/{long_segment}"),
        format!("/{long_segment}/{long_segment}.js"),
        "/index.html/inside".to_string(),
        "/%00".to_string(),
        "/%ff%fe".to_string(),
        "/..%2f..%2fetc%2fpasswd".to_string(),
        "/nope.css".to_string(),
    ] {
        let r = exchange(
            app.addr,
            format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes(),
        )
        .await
        .expect("an answer");
        let text = r.assert_json_error(404);
        assert!(text.contains("no such file"), "{path}: {text}");
    }
    let r = exchange(
        app.addr,
        b"POST /index.html HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("an answer");
    r.assert_json_error(405);
    // The viewer itself is still served.
    let r = exchange(app.addr, b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.contains("html")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_a_request_in_flight_finish() {
    let app = app_with(|c| c.http_body_timeout_secs = 30).await;
    let (_, _, s) = app.work_session("home").await;
    let addr = app.addr;
    // A request whose body is still to come when the relay is told to stop.
    // `Expect: 100-continue` makes the relay say when the route starts
    // reading the body: from then on the request is in flight.
    let mut conn = RawConn::open(addr).await;
    let body = b"{\"summary\": \"made during shutdown\"}";
    conn.send(
        format!(
            "POST /api/vault?id=c HTTP/1.1\r\nHost: relay\r\nAuthorization: session {s}\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let r = conn.response().await.expect("100 Continue");
    assert_eq!(r.status, 100, "{r:?}");
    let stopping = tokio::spawn(app.stop());
    // Wait until the relay has stopped accepting, then finish the body.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the relay stops accepting");
    conn.send(body).await;
    let r = conn
        .response()
        .await
        .expect("the request in flight is answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["vault_id"].is_string());
    tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("the relay stops")
        .expect("stop task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_client_does_not_take_is_dropped_after_the_idle_timeout() {
    let app = app_with(|c| c.http_idle_timeout_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let text = "x".repeat(250 * 1024);
    for _ in 0..40 {
        app.write(&v, &s, "c", &text, None).await;
    }
    // A client with a small receive buffer asks for the whole history (about
    // 10 MB) and does not read it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let mut tcp = socket.connect(app.addr).await.expect("connect");
    tcp.write_all(
        format!(
            "GET /api/vault/{v}?id=c&history=true HTTP/1.1\r\nHost: relay\r\n\
             Authorization: session {s}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send");
    // Longer than the idle timeout: the relay gives up on this client.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut received))
        .await
        .expect("the connection ends");
    assert!(
        received.len() < 40 * 250 * 1024,
        "the relay dropped the stalled response ({} bytes arrived)",
        received.len()
    );
    // The relay itself is fine.
    assert_eq!(app.read(&v, &s, "c", "").await.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_hyper_refuses_by_itself_is_what_the_readme_says() {
    let app = app_with(|_| {}).await;
    let many_lines: String = (0..1100).map(|i| format!("x-{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            b"GET / HTTP/1.1\r\nHost: r\r\nno colon here\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /api/vault HTTP/1.1\r\nHost: r\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: r\r\n{many_lines}\r\n").into_bytes(),
            431,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: r\r\nx-huge: {}\r\n\r\n",
                "h".repeat(300 * 1024)
            )
            .into_bytes(),
            431,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: r\r\n\r\n", "t".repeat(70_000)).into_bytes(),
            414,
        ),
    ];
    for (request, status) in cases {
        let r = exchange(app.addr, &request)
            .await
            .expect("hyper answers before it closes");
        assert_eq!(r.status, status, "{r:?}");
        assert!(
            r.body.is_empty(),
            "hyper's own answers have no body: {:?} -> {r:?}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
    }
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
}
