//! `vault-relay read`, `write` and `watch` from the real binary, against a
//! test relay, directly and through a proxy that loses answers or refuses
//! WebSocket upgrades.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    read_and_write_work_from_the_binary,
    a_write_whose_answer_is_lost_is_retried_under_one_key,
);

const CLIENT: &str = "cli-test";

fn cli(relay_url: &str, session: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vault-relay"));
    cmd.args(args)
        .env("RELAY_URL", relay_url)
        .env("RELAY_SESSION", session)
        .env("RELAY_CLIENT_ID", CLIENT)
        .env_remove("DATABASE_URL")
        .env_remove("WATCH_TRANSPORT")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs a command to completion (killed after 60 s): success, stdout, stderr.
async fn run(mut cmd: Command, stdin: Option<&str>) -> (bool, String, String) {
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vault-relay");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the command did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("command thread")
}

/// A proxy in front of a relay: it forwards every request, except that it
/// refuses WebSocket upgrades (like some corporate proxies) and can lose the
/// answers of the first few POSTs after forwarding them.
struct Proxy {
    base: String,
}

struct ProxyState {
    target: String,
    client: reqwest::Client,
    lose_posts: AtomicUsize,
}

impl Proxy {
    async fn start(target: &str, lose_posts: usize) -> Proxy {
        let state = Arc::new(ProxyState {
            target: target.to_string(),
            client: reqwest::Client::new(),
            lose_posts: AtomicUsize::new(lose_posts),
        });
        let app = axum::Router::new()
            .route(
                "/api/vault/{vault_id}/stream",
                axum::routing::any(|| async {
                    (
                        StatusCode::FORBIDDEN,
                        "WebSocket upgrades are not allowed here",
                    )
                }),
            )
            .fallback(forward)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let base = format!("http://{}", listener.local_addr().expect("proxy address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy { base }
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = state
        .client
        .request(method.clone(), format!("{}{path}", state.target))
        .body(body);
    for (name, value) in &headers {
        let hop_by_hop = [header::HOST, header::CONTENT_LENGTH, header::CONNECTION];
        if !hop_by_hop.contains(name) {
            request = request.header(name, value);
        }
    }
    let Ok(answer) = request.send().await else {
        return (StatusCode::BAD_GATEWAY, "the relay is unreachable").into_response();
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    if method == Method::POST
        && state
            .lose_posts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        // The write happened; its answer never reaches the client.
        return (StatusCode::BAD_GATEWAY, "upstream answer lost").into_response();
    }
    let mut response = (status, bytes).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

async fn read_and_write_work_from_the_binary(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;

    let (ok, out, err) = run(cli(&app.base, &s, &["write", &v, "first"]), None).await;
    assert!(ok, "{err}");
    let receipt: Value = serde_json::from_str(out.trim()).expect("the receipt JSON");
    assert_eq!(
        (receipt["entry_no"].as_i64(), receipt["version"].as_i64()),
        (Some(1), Some(1))
    );
    let (ok, _, err) = run(
        cli(&app.base, &s, &["write", &v, "-"]),
        Some("from stdin\n"),
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        cli(
            &app.base,
            &s,
            &["write", &v, "first, edited", "--entry-id", "1"],
        ),
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"version\":2"), "{out}");

    // A retried command with the same key writes once and prints the same.
    let keyed = ["write", &v, "keyed", "--idempotency-key", "script-step-7"];
    let first = run(cli(&app.base, &s, &keyed), None).await;
    let again = run(cli(&app.base, &s, &keyed), None).await;
    assert!(first.0, "{}", first.2);
    assert_eq!(first.1, again.1);

    let (ok, out, err) = run(cli(&app.base, &s, &["read", &v]), None).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "e1 v2 [cli-test] first, edited",
            "e2 v1 [cli-test] from stdin",
            "e3 v1 [cli-test] keyed"
        ]
    );
    let history = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(history.len(), 4, "one row per write, the keyed one once");
    let (ok, out, err) = run(
        cli(&app.base, &s, &["read", &v, "--history", "--json"]),
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        Value::from(history.clone())
    );

    let since = history[0]["seq"].to_string();
    let (ok, out, err) = run(
        cli(
            &app.base,
            &s,
            &["read", &v, "--history", "--since", &since, "--limit", "2"],
        ),
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "e2 v1 [cli-test] from stdin",
            "e1 v2 [cli-test] first, edited"
        ]
    );
    assert!(
        err.contains(&format!("--since {}", history[2]["seq"])),
        "{err}"
    );

    // Refusals are reported, with the relay's reason, and fail the command.
    let (ok, _, err) = run(cli(&app.base, &s, &["read", "v-doesnotexist1"]), None).await;
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no such vault"),
        "{err}"
    );
    let (ok, _, err) = run(
        cli(&app.base, &s, &["write", &v, "x", "--entry-id", "99"]),
        None,
    )
    .await;
    assert!(!ok);
    assert!(err.contains("404") && err.contains("e99"), "{err}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 4);
}

async fn a_write_whose_answer_is_lost_is_retried_under_one_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    // The first two answers are lost after the relay wrote: the command
    // retries with its generated key and the relay replays the receipt.
    let proxy = Proxy::start(&app.base, 2).await;
    let (ok, out, err) = run(cli(&proxy.base, &s, &["write", &v, "exactly once"]), None).await;
    assert!(ok, "{err}");
    assert_eq!(
        err.matches("retrying with the same Idempotency-Key")
            .count(),
        2,
        "{err}"
    );
    let rows = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let receipt: Value = serde_json::from_str(out.trim()).expect("receipt");
    assert_eq!(receipt["seq"], rows[0]["seq"]);
}

/// A running `watch` whose stdout lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Watcher {
    fn start(mut cmd: Command) -> Watcher {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }

    async fn next_lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.recv())
                .await
                .expect("a line within 20 s")
                .expect("watch is still running");
            out.push(line);
        }
        out
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_same_lines_over_the_stream_and_by_long_polling() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "before", None).await;
    let proxy = Proxy::start(&app.base, 0).await;

    let mut watchers = [
        // The stream, directly.
        Watcher::start(cli(
            &app.base,
            &s,
            &["watch", &v, "--since", "0", "--transport", "websocket"],
        )),
        // Long polling, asked for.
        Watcher::start(cli(
            &app.base,
            &s,
            &["watch", &v, "--since", "0", "--transport", "poll"],
        )),
        // Through a proxy that refuses the upgrade: falls back on its own.
        Watcher::start(cli(&proxy.base, &s, &["watch", &v, "--since", "0"])),
    ];
    for w in watchers.iter_mut() {
        assert_eq!(w.next_lines(1).await, ["e1 v1 [c] before"]);
    }
    app.write(&v, &s, "c", "live", None).await;
    app.write(&v, &s, "d", "edited", Some(1)).await;
    for w in watchers.iter_mut() {
        assert_eq!(
            w.next_lines(2).await,
            ["e2 v1 [c] live", "e1 v2 [d] edited"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_by_long_polling_starts_at_the_head_and_reports_refusals() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "old news", None).await;
    let proxy = Proxy::start(&app.base, 0).await;
    let mut watcher = Watcher::start(cli(&proxy.base, &s, &["watch", &v]));
    // Without --since it starts at the head: only rows written from now on.
    // The write may land before the watcher has read the head, so wait for
    // a first row, then check that "old news" never shows.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.is_empty() {
        assert!(Instant::now() < deadline, "no line from watch");
        app.write(&v, &s, "c", "fresh", None).await;
        if let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(500), watcher.lines.recv()).await
        {
            lines.push(line);
        }
    }
    assert!(lines[0].ends_with("[c] fresh"), "{lines:?}");
    drop(watcher);

    // A vault the session may not read: the relay's refusal ends the command.
    let (_, _, stranger) = app.work_session("elsewhere").await;
    let (ok, _, err) = run(
        cli(
            &proxy.base,
            &stranger,
            &["watch", &v, "--transport", "poll"],
        ),
        None,
    )
    .await;
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
}
