//! `Idempotency-Key` on create and content writes: replays, conflicts,
//! scoping, expiry, concurrency; across restarts and replicas on Postgres.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    a_repeated_write_gets_the_first_response_and_writes_nothing,
    a_repeated_create_gets_the_first_vault,
    a_key_reused_for_another_request_is_422_and_writes_nothing,
    keys_belong_to_the_work_session_and_client_id,
    a_failed_write_leaves_its_key_unused,
    malformed_keys_are_400,
    twenty_concurrent_repeats_make_one_row,
    an_expired_key_writes_again,
);

/// POSTs `body` to `path` as `session`/`client` with optional raw key
/// header values; returns the status and the body text exactly.
pub async fn keyed_post(
    app: &TestApp,
    path: &str,
    session: &str,
    client: &str,
    keys: &[&[u8]],
    body: &Value,
) -> (StatusCode, String) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut req = app
        .client
        .post(format!("{}{path}{sep}id={client}", app.base))
        .header("authorization", format!("session {session}"))
        .json(body);
    for k in keys {
        req = req.header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(k).expect("header value"),
        );
    }
    let resp = req.send().await.expect("request reaches the relay");
    let status = resp.status();
    (status, resp.text().await.expect("body"))
}

async fn write_with_key(
    app: &TestApp,
    vault: &str,
    session: &str,
    client: &str,
    key: &str,
    body: Value,
) -> (StatusCode, String) {
    keyed_post(
        app,
        &format!("/api/vault/{vault}"),
        session,
        client,
        &[key.as_bytes()],
        &body,
    )
    .await
}

fn error_of(status: StatusCode, text: &str) -> (StatusCode, String) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("JSON error: {text}"));
    (
        status,
        v["error"].as_str().expect("an error message").to_string(),
    )
}

async fn a_repeated_write_gets_the_first_response_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "before", None).await;

    let first = write_with_key(&app, &v, &s, "c", "k-1", json!({"text": "once"})).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    let receipt: Value = serde_json::from_str(&first.1).unwrap();
    assert_eq!(
        (receipt["entry_no"].clone(), receipt["version"].clone()),
        (json!(2), json!(1))
    );
    // The same request again, spelled differently: same status, same bytes.
    let again = write_with_key(&app, &v, &s, "c", "k-1", json!({ "text" : "once" })).await;
    assert_eq!(again, first);
    let edit = write_with_key(
        &app,
        &v,
        &s,
        "c",
        "k-2",
        json!({"text": "v2", "entry_id": 2}),
    )
    .await;
    assert_eq!(edit.0, StatusCode::OK, "{}", edit.1);
    let edit_again = write_with_key(
        &app,
        &v,
        &s,
        "c",
        "k-2",
        json!({"entry_id": 2, "text": "v2"}),
    )
    .await;
    assert_eq!(edit_again, edit);

    let rows = app.read(&v, &s, "c", "history=true").await;
    let contents: Vec<&str> = rows
        .iter()
        .map(|r| r["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["before", "once", "v2"]);
    // A write after the replays lands right after the first one's row.
    let next = app.write(&v, &s, "c", "after", None).await;
    assert_eq!(next["entry_no"], 3);
}

async fn a_repeated_create_gets_the_first_vault(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let body = json!({"summary": "made once"});
    let first = keyed_post(&app, "/api/vault", &s, "c", &[b"create-1"], &body).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    let again = keyed_post(&app, "/api/vault", &s, "c", &[b"create-1"], &body).await;
    assert_eq!(again, first);
    let v: Value = serde_json::from_str(&first.1).unwrap();
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(
        list,
        json!([{"vault_id": v["vault_id"], "summary": "made once"}])
    );
}

async fn a_key_reused_for_another_request_is_422_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let w = app.create_vault(&s, "c", "").await;
    let first = write_with_key(&app, &v, &s, "c", "k", json!({"text": "one"})).await;
    assert_eq!(first.0, StatusCode::OK);

    // Another body, another vault, another route: each 422 with a reason.
    for (status, text) in [
        write_with_key(&app, &v, &s, "c", "k", json!({"text": "two"})).await,
        write_with_key(
            &app,
            &v,
            &s,
            "c",
            "k",
            json!({"text": "one", "entry_id": 1}),
        )
        .await,
        write_with_key(&app, &w, &s, "c", "k", json!({"text": "one"})).await,
        keyed_post(
            &app,
            "/api/vault",
            &s,
            "c",
            &[b"k"],
            &json!({"summary": "one"}),
        )
        .await,
    ] {
        let (status, error) = error_of(status, &text);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert!(error.contains("different request"), "{error}");
    }
    let rows = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["content"], "one");
    assert!(app.read(&w, &s, "c", "history=true").await.is_empty());
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "no vault was created: {list}"
    );
    // And the original request still replays.
    let again = write_with_key(&app, &v, &s, "c", "k", json!({"text": "one"})).await;
    assert_eq!(again, first);
}

async fn keys_belong_to_the_work_session_and_client_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let s2 = app.session(&token).await;
    let v = app.create_vault(&s, "a", "").await;
    let body = json!({"text": "same"});
    let a = write_with_key(&app, &v, &s, "a", "shared-key", body.clone()).await;
    // Another client id of the same work session: its own key space.
    let b = write_with_key(&app, &v, &s, "b", "shared-key", body.clone()).await;
    // Another session of the same astation, same client id: same owner.
    let a2 = write_with_key(&app, &v, &s2, "a", "shared-key", body.clone()).await;
    assert_eq!(a.0, StatusCode::OK);
    assert_eq!(b.0, StatusCode::OK);
    assert_ne!(a.1, b.1, "two clients, two rows");
    assert_eq!(
        a2, a,
        "the key belongs to work session + client id, not the session"
    );
    assert_eq!(app.read(&v, &s, "a", "history=true").await.len(), 2);
}

async fn a_failed_write_leaves_its_key_unused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let missing = write_with_key(&app, &v, &s, "c", "k", json!({"text": "x", "entry_id": 9})).await;
    let (status, error) = error_of(missing.0, &missing.1);
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    // Nothing was stored under the key: another request may use it.
    let ok = write_with_key(&app, &v, &s, "c", "k", json!({"text": "x"})).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 1);
}

async fn malformed_keys_are_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let long = "k".repeat(129);
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![b""],
        vec![long.as_bytes()],
        vec!["caf\u{e9}".as_bytes()],
        vec![b"tab\there"],
        vec![b"one", b"two"],
    ];
    for keys in cases {
        for (path, body) in [
            (format!("/api/vault/{v}"), json!({"text": "t"})),
            ("/api/vault".to_string(), json!({"summary": "s"})),
        ] {
            let (status, text) = keyed_post(&app, &path, &s, "c", &keys, &body).await;
            let (status, error) = error_of(status, &text);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{keys:?} {path}: {error}");
            assert!(error.contains("Idempotency-Key"), "{error}");
        }
    }
    // 128 printable characters, spaces and punctuation included, are fine.
    let longest = format!("a b~{}", "z".repeat(124));
    let ok = write_with_key(&app, &v, &s, "c", &longest, json!({"text": "t"})).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 1);
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

async fn twenty_concurrent_repeats_make_one_row(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, v, s) = (app.clone(), v.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            write_with_key(&app, &v, &s, "c", "burst", json!({"text": "only once"})).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert_eq!(answers[0].0, StatusCode::OK, "{}", answers[0].1);
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    let rows = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(rows.len(), 1, "{rows:?}");

    // The same for creates.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, s) = (app.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            keyed_post(
                &app,
                "/api/vault",
                &s,
                "c",
                &[b"mk"],
                &json!({"summary": "x"}),
            )
            .await
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        created.push(t.await.expect("task"));
    }
    assert!(
        created
            .iter()
            .all(|a| a == &created[0] && a.0 == StatusCode::OK),
        "{created:?}"
    );
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

async fn an_expired_key_writes_again(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.idempotency_ttl_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let first = write_with_key(&app, &v, &s, "c", "k", json!({"text": "t"})).await;
    assert_eq!(first.0, StatusCode::OK);
    // The key lives one second; then the same request is a new write.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let later = write_with_key(&app, &v, &s, "c", "k", json!({"text": "t"})).await;
    assert_eq!(later.0, StatusCode::OK);
    assert_ne!(later.1, first.1);
    assert_eq!(app.read(&v, &s, "c", "history=true").await.len(), 2);
    // And the new record replays in turn.
    let again = write_with_key(&app, &v, &s, "c", "k", json!({"text": "t"})).await;
    assert_eq!(again, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_hold_across_a_restart_and_across_replicas() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let (_, _, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "c", "").await;
    let first = write_with_key(&a, &v, &s, "c", "k", json!({"text": "durable"})).await;
    assert_eq!(first.0, StatusCode::OK);
    let created = keyed_post(&a, "/api/vault", &s, "c", &[b"ck"], &json!({})).await;

    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    assert_eq!(
        write_with_key(&b, &v, &s, "c", "k", json!({"text": "durable"})).await,
        first
    );
    assert_eq!(
        keyed_post(&b, "/api/vault", &s, "c", &[b"ck"], &json!({})).await,
        created
    );
    let conflict = write_with_key(&b, &v, &s, "c", "k", json!({"text": "other"})).await;
    assert_eq!(conflict.0, StatusCode::UNPROCESSABLE_ENTITY);

    let db = a.db.clone().unwrap();
    a.stop().await;
    b.stop().await;
    let c = TestApp::spawn_on(db).await;
    assert_eq!(
        write_with_key(&c, &v, &s, "c", "k", json!({"text": "durable"})).await,
        first
    );
    assert_eq!(c.read(&v, &s, "c", "history=true").await.len(), 1);
    let (_, list) = c.vault_call(Method::GET, "/api/vault", &s, "c", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_on_two_replicas_make_one_row() {
    let a = std::sync::Arc::new(TestApp::spawn(Backend::Postgres).await);
    let b = std::sync::Arc::new(TestApp::spawn_on(a.db.clone().unwrap()).await);
    let (_, _, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "c", "").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (v, s) = (v.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            write_with_key(&app, &v, &s, "c", "split", json!({"text": "once"})).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert_eq!(answers[0].0, StatusCode::OK, "{}", answers[0].1);
    assert!(answers.iter().all(|x| x == &answers[0]), "{answers:?}");
    assert_eq!(a.read(&v, &s, "c", "history=true").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_swept_from_the_table() {
    let app = TestApp::spawn_with(Backend::Postgres, |c| c.idempotency_ttl_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let ok = write_with_key(&app, &v, &s, "c", "k", json!({"text": "t"})).await;
    assert_eq!(ok.0, StatusCode::OK);
    let mut conn = app.db.as_ref().unwrap().connect().await;
    let count = || async {
        let mut conn = app.db.as_ref().unwrap().connect().await;
        sqlx::query_scalar::<_, i64>("select count(*) from idempotency_keys")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let stored: (String, Option<String>) =
        sqlx::query_as("select key, response from idempotency_keys")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(stored, ("k".to_string(), Some(ok.1.clone())));
    // The sweeper runs every second here; wait (bounded) until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired key never swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
