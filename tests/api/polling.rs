//! Cheap reads on `GET /api/vault/<id>`: paged history with `Link`
//! headers, long polls (`wait`), and `ETag` / `If-None-Match`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    paging_through_2500_rows_follows_the_links,
    paging_parameters_are_checked,
    a_long_poll_is_woken_by_a_write,
    a_long_poll_times_out_with_an_empty_list,
    a_long_poll_answers_at_once_when_rows_qualify,
    long_poll_parameters_are_checked,
    long_polls_beyond_the_bound_are_refused_with_retry_after,
    shutdown_answers_held_long_polls_at_once,
    reads_carry_a_tag_and_answer_304_while_it_holds,
    a_rewrite_changes_the_tag_and_wakes_a_long_poll,
    a_held_poll_ends_when_its_session_or_astation_is_revoked,
    a_held_link_poll_ends_when_the_link_is_revoked_or_expires,
);

/// A raw GET as `session`: status, headers and body text.
async fn get(
    app: &TestApp,
    url: &str,
    session: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    get_with(&app.client, url, session, if_none_match).await
}

async fn get_with(
    client: &reqwest::Client,
    url: &str,
    session: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    get_as(client, url, &format!("session {session}"), if_none_match).await
}

/// A raw GET with the `Authorization` header `auth`.
async fn get_as(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = client
        .get(url)
        .header("authorization", auth)
        .timeout(Duration::from_secs(90));
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let resp = req.send().await.expect("request reaches the relay");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn vault_url(app: &TestApp, vault: &str, query: &str) -> String {
    format!("{}/api/vault/{vault}?id=c&{query}", app.base)
}

fn rows(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text)
        .unwrap_or_else(|_| panic!("JSON rows: {text}"))
        .as_array()
        .expect("an array")
        .clone()
}

fn error_of(status: StatusCode, text: &str) -> String {
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status} {text}"
    );
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("JSON error: {text}"));
    v["error"].as_str().expect("an error message").to_string()
}

/// Each query is refused with 400 and an error naming `needle`.
async fn assert_all_400(app: &TestApp, vault: &str, session: &str, queries: &[&str], needle: &str) {
    for query in queries {
        let (status, _, text) = get(app, &vault_url(app, vault, query), session, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {text}");
        assert!(error_of(status, &text).contains(needle), "{query}: {text}");
    }
}

/// The URL of a `Link: <url>; rel="next"` header, if there is one.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().expect("ASCII Link");
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    Some(
        link.strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(url, _)| url.to_string())
            .expect("<url>"),
    )
}

/// Writes `n` rows, a few requests at a time.
async fn fill(app: &Arc<TestApp>, vault: &str, session: &str, n: usize) {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (app, vault, session) = (app.clone(), vault.to_string(), session.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (worker..n).step_by(8) {
                app.write(&vault, &session, "c", &format!("row {i}"), None)
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// How many long polls the relay holds, from its metrics.
async fn held_polls(app: &TestApp) -> f64 {
    let resp = app
        .client
        .get(format!("{}/metrics", app.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics");
    let body = resp.text().await.expect("metrics body");
    body.lines()
        .find(|l| l.starts_with("vault_relay_long_polls_held"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until the relay holds `n` long polls.
async fn until_held(app: &TestApp, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_polls(app).await != n {
        assert!(
            Instant::now() < deadline,
            "the relay never held {n} long polls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn paging_through_2500_rows_follows_the_links(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    fill(&app, &v, &s, 2500).await;

    let mut url = vault_url(&app, &v, "history=true&limit=1000");
    let mut pages = Vec::new();
    let mut seen: Vec<i64> = Vec::new();
    loop {
        let (status, headers, text) = get(&app, &url, &s, None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let page = rows(&text);
        pages.push(page.len());
        seen.extend(page.iter().map(|r| r["seq"].as_i64().unwrap()));
        match next_link(&headers) {
            Some(next) => {
                // The same request with since = the page's last seq.
                let last = page.last().unwrap()["seq"].as_i64().unwrap();
                assert!(
                    next.starts_with(&format!("{}/api/vault/{v}?", app.base)),
                    "{next}"
                );
                assert!(
                    next.contains("id=c") && next.contains("history=true"),
                    "{next}"
                );
                assert!(next.contains("limit=1000"), "{next}");
                assert!(next.contains(&format!("since={last}")), "{next}");
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, [1000, 1000, 500]);
    let all = app.read(&v, &s, "c", "history=true").await;
    let want: Vec<i64> = all.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seen, want, "every row once, in seq order");
    assert_eq!(seen.len(), 2500);

    // A page that ends exactly at the head has no next link; without
    // `limit` nothing changes (all rows, no Link).
    let (_, headers, text) = get(
        &app,
        &vault_url(
            &app,
            &v,
            &format!("history=true&since={}&limit=1000", want[1499]),
        ),
        &s,
        None,
    )
    .await;
    assert_eq!(rows(&text).len(), 1000);
    assert!(headers.get("link").is_none());
    let (_, headers, text) = get(&app, &vault_url(&app, &v, "history=true"), &s, None).await;
    assert_eq!(rows(&text).len(), 2500);
    assert!(headers.get("link").is_none());
}

async fn paging_parameters_are_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "one", None).await;
    let bad_limits = [
        "history=true&limit=0",
        "history=true&limit=1001",
        "history=true&limit=x",
        "history=true&limit=-1",
        "history=true&limit=",
    ];
    assert_all_400(&app, &v, &s, &bad_limits, "`limit`").await;
    assert_all_400(
        &app,
        &v,
        &s,
        &["limit=5", "history=false&limit=5"],
        "history=true",
    )
    .await;
    let (status, _, text) = get(&app, &vault_url(&app, &v, "history=true&limit=1"), &s, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&text)[0]["content"], "one");
}

/// What one woken long poll saw: the row it was answered with, and when
/// the poll and the write were answered, counted from sending the write.
struct Woken {
    row: Value,
    receipt: Value,
    headers: HeaderMap,
    poll_answered: Duration,
    write_answered: Duration,
}

/// Holds a long poll (`query`) on `poller`, then writes `text` through
/// `writer` once the poll is held; the poll must be answered with that row.
async fn poll_then_write(
    poller: &TestApp,
    writer: &TestApp,
    vault: &str,
    session: &str,
    query: &str,
    text: &str,
) -> Woken {
    let poll = {
        let (client, url, s) = (
            poller.client.clone(),
            vault_url(poller, vault, query),
            session.to_string(),
        );
        tokio::spawn(async move {
            let answer = get_with(&client, &url, &s, None).await;
            (answer, Instant::now())
        })
    };
    until_held(poller, 1.0).await;
    let sent = Instant::now();
    let receipt = writer.write(vault, session, "c", text, None).await;
    let write_answered = sent.elapsed();
    let ((status, headers, body), answered) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll is answered")
        .expect("poll task");
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = rows(&body);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"], text);
    assert_eq!(got[0]["seq"], receipt["seq"]);
    until_held(poller, 0.0).await;
    Woken {
        row: got[0].clone(),
        receipt,
        headers,
        poll_answered: answered.saturating_duration_since(sent),
        write_answered,
    }
}

async fn a_long_poll_is_woken_by_a_write(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let head = app.write(&v, &s, "c", "old", None).await["seq"]
        .as_i64()
        .unwrap();
    let woken = poll_then_write(&app, &app, &v, &s, &format!("since={head}&wait=30"), "new").await;
    assert!(woken.headers.get("etag").is_some());
    assert_eq!(woken.row["writer_id"], "c");
    println!(
        "long poll ({backend:?}, same relay): answered {:?} after the write was sent, \
         write answered after {:?}",
        woken.poll_answered, woken.write_answered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_a_write_on_another_replica() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    let (_, _, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "c", "").await;
    let mut latencies = Vec::new();
    let mut since = 0;
    for round in 0..5 {
        let query = format!("history=true&since={since}&wait=30");
        let woken = poll_then_write(&a, &b, &v, &s, &query, &format!("from b {round}")).await;
        since = woken.receipt["seq"].as_i64().unwrap();
        latencies.push((woken.poll_answered, woken.write_answered));
    }
    println!(
        "long poll woken across replicas: (poll answered, write answered) after the write \
         was sent: {latencies:?}"
    );
}

async fn a_long_poll_times_out_with_an_empty_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let head = app.write(&v, &s, "c", "old", None).await["seq"]
        .as_i64()
        .unwrap();
    for query in [
        format!("since={head}&wait=1"),
        format!("since={head}&wait=1&history=true&limit=10"),
    ] {
        let (status, headers, text) = get(&app, &vault_url(&app, &v, &query), &s, None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, "[]");
        assert!(headers.get("etag").is_some());
        assert!(headers.get("link").is_none());
    }
}

async fn a_long_poll_answers_at_once_when_rows_qualify(backend: Backend) {
    // With no long polls allowed at all, a poll that need not wait still works.
    let app = TestApp::spawn_with(backend, |c| c.long_poll_max = 0).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    let (status, _, text) = get(&app, &vault_url(&app, &v, "since=0&wait=60"), &s, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let got: Vec<Value> = rows(&text).iter().map(|r| r["content"].clone()).collect();
    assert_eq!(got, [json!("one"), json!("two")]);
}

async fn long_poll_parameters_are_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let bad_waits = [
        "since=0&wait=0",
        "since=0&wait=61",
        "since=0&wait=x",
        "since=0&wait=1.5",
        "since=0&wait=",
    ];
    assert_all_400(&app, &v, &s, &bad_waits, "`wait`").await;
    assert_all_400(&app, &v, &s, &["wait=5", "history=true&wait=5"], "`since`").await;
    // Access is checked before anything is held.
    let (_, _, stranger) = app.work_session("elsewhere").await;
    let (status, _, text) = get(
        &app,
        &vault_url(&app, &v, "since=0&wait=30"),
        &stranger,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
}

async fn long_polls_beyond_the_bound_are_refused_with_retry_after(backend: Backend) {
    let app = Arc::new(TestApp::spawn_with(backend, |c| c.long_poll_max = 1).await);
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let held = {
        let (app, v, s) = (app.clone(), v.clone(), s.clone());
        tokio::spawn(
            async move { get(&app, &vault_url(&app, &v, "since=0&wait=30"), &s, None).await },
        )
    };
    until_held(&app, 1.0).await;
    let refused = app
        .client
        .get(vault_url(&app, &v, "since=0&wait=30"))
        .header("authorization", format!("session {s}"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let text = refused.text().await.unwrap();
    assert!(
        error_of(StatusCode::SERVICE_UNAVAILABLE, &text).contains("LONG_POLL_MAX"),
        "{text}"
    );
    // The held one is still answered by the next write.
    app.write(&v, &s, "c", "wake", None).await;
    let (status, _, text) = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&text)[0]["content"], "wake");
}

async fn shutdown_answers_held_long_polls_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let held = {
        let (client, url, s) = (
            app.client.clone(),
            vault_url(&app, &v, "since=0&wait=60"),
            s.clone(),
        );
        tokio::spawn(async move { get_with(&client, &url, &s, None).await })
    };
    until_held(&app, 1.0).await;
    // stop() waits at most 10 s for the relay, far less than the poll's 60.
    app.stop().await;
    let (status, _, text) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held poll is answered well before its 60 s")
        .expect("task");
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, "[]");
}

async fn reads_carry_a_tag_and_answer_304_while_it_holds(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "one", None).await;
    let current = vault_url(&app, &v, "");
    let (status, headers, text) = get(&app, &current, &s, None).await;
    assert_eq!(status, StatusCode::OK);
    let tag = headers["etag"].to_str().unwrap().to_string();
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    assert_eq!(rows(&text).len(), 1);

    let (status, headers, text) = get(&app, &current, &s, Some(&tag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(text, "");
    assert_eq!(headers["etag"].to_str().unwrap(), tag);
    for list in [
        format!("\"other\", {tag}"),
        format!("W/{tag}"),
        "*".to_string(),
    ] {
        let (status, _, _) = get(&app, &current, &s, Some(&list)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{list}");
    }
    let (status, _, _) = get(&app, &current, &s, Some("\"stale\"")).await;
    assert_eq!(status, StatusCode::OK);

    // Another query has another tag; a summary change does not change the
    // rows, so not the tag either.
    let (_, history_headers, _) = get(&app, &vault_url(&app, &v, "history=true"), &s, None).await;
    assert_ne!(history_headers["etag"].to_str().unwrap(), tag);
    let (_, since_headers, _) = get(&app, &vault_url(&app, &v, "since=1"), &s, None).await;
    assert_ne!(since_headers["etag"].to_str().unwrap(), tag);
    app.set_summary(&v, &s, "c", "renamed").await;
    let (status, _, _) = get(&app, &current, &s, Some(&tag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // A write: the old tag no longer holds, the answer comes with a new one.
    app.write(&v, &s, "c", "two", Some(1)).await;
    let (status, headers, text) = get(&app, &current, &s, Some(&tag)).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = headers["etag"].to_str().unwrap().to_string();
    assert_ne!(fresh, tag);
    assert_eq!(rows(&text)[0]["content"], "two");
    let (status, _, _) = get(&app, &current, &s, Some(&fresh)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // A stranger learns nothing from a tag: access comes first.
    let (_, _, stranger) = app.work_session("elsewhere").await;
    let as_stranger = format!("{}/api/vault/{v}?id=stranger", app.base);
    let (status, _, text) = get(&app, &as_stranger, &stranger, Some(&fresh)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
}

async fn a_rewrite_changes_the_tag_and_wakes_a_long_poll(backend: Backend) {
    use crate::encryption::{KID, move_to, rewrite, seal};
    let app = Arc::new(TestApp::spawn(backend).await);
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let head = app.write(&v, &s, "c", "plain", None).await["seq"]
        .as_i64()
        .unwrap();
    let current = vault_url(&app, &v, "");
    let (_, headers, _) = get(&app, &current, &s, None).await;
    let tag = headers["etag"].to_str().unwrap().to_string();

    move_to(&app, &token, "enabling", Some(KID)).await;
    let poll = {
        let (client, url, s) = (
            app.client.clone(),
            vault_url(&app, &v, &format!("history=true&since={head}&wait=30")),
            s.clone(),
        );
        tokio::spawn(async move { get_with(&client, &url, &s, None).await })
    };
    until_held(&app, 1.0).await;
    let sealed = seal(KID, "plain");
    let body = json!({
        "summary": seal(KID, ""),
        "entries": [{"entry_no": 1, "version": 1, "content": sealed}],
    });
    let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The rewritten row has a fresh seq: the poll gets it, the tag moves.
    let (status, _, text) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll is answered")
        .expect("poll task");
    assert_eq!(status, StatusCode::OK, "{text}");
    let got = rows(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"], sealed);
    let (status, _, text) = get(&app, &current, &s, Some(&tag)).await;
    assert_eq!(status, StatusCode::OK, "the old tag no longer holds");
    assert_eq!(rows(&text)[0]["content"], sealed);
}

/// Holds a 30 s poll on `vault` beyond `since` with the header `auth`, and
/// waits until the relay holds it.
async fn hold_poll(
    app: &TestApp,
    vault: &str,
    since: i64,
    auth: String,
) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, String)> {
    let (client, url) = (
        app.client.clone(),
        vault_url(app, vault, &format!("history=true&since={since}&wait=30")),
    );
    let poll = tokio::spawn(async move { get_as(&client, &url, &auth, None).await });
    until_held(app, 1.0).await;
    poll
}

/// The poll is answered with a 401 whose error names `needle`, and without
/// any row.
async fn assert_refused(
    app: &TestApp,
    poll: tokio::task::JoinHandle<(StatusCode, HeaderMap, String)>,
    needle: &str,
) {
    let (status, _, text) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll is answered before its wait ends")
        .expect("poll task");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(error_of(status, &text).contains(needle), "{text}");
    assert!(!text.contains("after"), "no row leaks: {text}");
    until_held(app, 0.0).await;
}

async fn a_held_poll_ends_when_its_session_or_astation_is_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (astation, token, s) = app.work_session("home").await;
    let writer = app.session(&token).await;
    let v = app.create_vault(&s, "c", "").await;
    let head = app.write(&v, &s, "c", "before", None).await["seq"]
        .as_i64()
        .unwrap();

    // The session revoked while its poll is held: a row written after the
    // revocation (by another session) is never its answer.
    let poll = hold_poll(&app, &v, head, format!("session {s}")).await;
    let (status, body) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let head = app.write(&v, &writer, "c", "after one", None).await["seq"]
        .as_i64()
        .unwrap();
    assert_refused(&app, poll, "revoked").await;

    // Its astation removed: the poll of its other session ends too.
    let poll = hold_poll(&app, &v, head, format!("session {writer}")).await;
    let (status, body) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/admin/astations/{astation}"),
            Some(&format!("Bearer {}", crate::helpers::ADMIN_TOKEN)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_refused(&app, poll, "revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_ends_when_its_session_is_revoked_on_another_replica() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    let (_, token, s) = a.work_session("home").await;
    let writer = a.session(&token).await;
    let v = a.create_vault(&s, "c", "").await;
    let head = a.write(&v, &s, "c", "before", None).await["seq"]
        .as_i64()
        .unwrap();
    let poll = hold_poll(&a, &v, head, format!("session {s}")).await;
    let (status, body) = b.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    b.write(&v, &writer, "c", "after one", None).await;
    assert_refused(&a, poll, "revoked").await;
}

async fn a_held_link_poll_ends_when_the_link_is_revoked_or_expires(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut head = app.write(&v, &s, "c", "before", None).await["seq"]
        .as_i64()
        .unwrap();

    // Revoked while held: the next row is not its answer.
    let (id, secret, _) = crate::links::link(&app, &v, &s, json!({"expires_in_secs": 600})).await;
    let poll = hold_poll(&app, &v, head, format!("link {secret}")).await;
    let (status, body) = app
        .vault_call(
            reqwest::Method::DELETE,
            &format!("/api/vault/{v}/links/{id}"),
            &s,
            "c",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    head = app.write(&v, &s, "c", "after the revocation", None).await["seq"]
        .as_i64()
        .unwrap();
    assert_refused(&app, poll, "revoked").await;

    // Expiring while held: answered at its expiry, before a row written
    // after it could be.
    let (_, secret, _) = crate::links::link(&app, &v, &s, json!({"expires_in_secs": 2})).await;
    let poll = hold_poll(&app, &v, head, format!("link {secret}")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.write(&v, &s, "c", "after the expiry", None).await;
    assert_refused(&app, poll, "expired").await;
}
