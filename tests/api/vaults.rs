//! The five vault routes and the access rules, on both stores.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    appends_edits_and_reads_follow_the_contract,
    since_filters_both_views,
    an_edit_of_a_missing_entry_is_a_404_and_never_collides_with_a_later_append,
    summary_changes_show_in_the_list,
    vault_ids_are_short_random_and_url_safe,
    the_list_holds_own_vaults_and_those_written_to,
    past_writers_from_another_session_may_read_and_summarize_but_not_write,
    strangers_are_refused_on_every_route,
    members_of_the_work_session_may_use_every_route,
    reads_and_summaries_never_add_to_the_writer_list,
);

const ENTRY_FIELDS: [&str; 7] = [
    "seq",
    "entry_no",
    "version",
    "kind",
    "writer_id",
    "content",
    "created_at",
];

fn assert_entry_shape(e: &Value) {
    let obj = e.as_object().expect("entry is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    let mut want = ENTRY_FIELDS.to_vec();
    want.sort();
    assert_eq!(keys, want, "exact VaultEntry fields");
    assert!(e["seq"].is_i64() && e["entry_no"].is_i64() && e["version"].is_i64());
    assert_eq!(e["kind"], "content");
    let created = e["created_at"].as_str().expect("created_at is a string");
    chrono::DateTime::parse_from_rfc3339(created).expect("created_at is RFC 3339");
}

fn summary(e: &Value) -> (i64, i64, &str) {
    (
        e["entry_no"].as_i64().unwrap(),
        e["version"].as_i64().unwrap(),
        e["content"].as_str().unwrap(),
    )
}

async fn appends_edits_and_reads_follow_the_contract(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "atem-a", "plan the release").await;

    let r1 = app.write(&v, &s, "atem-a", "first note", None).await;
    let r2 = app.write(&v, &s, "atem-b", "second note", None).await;
    let r3 = app
        .write(&v, &s, "atem-b", "first note, revised", Some(1))
        .await;
    assert_eq!(
        (r1["entry_no"].as_i64(), r1["version"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (r2["entry_no"].as_i64(), r2["version"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (r3["entry_no"].as_i64(), r3["version"].as_i64()),
        (Some(1), Some(2))
    );
    let (s1, s2, s3) = (
        r1["seq"].as_i64().unwrap(),
        r2["seq"].as_i64().unwrap(),
        r3["seq"].as_i64().unwrap(),
    );
    assert!(s1 < s2 && s2 < s3, "seq increases: {s1} {s2} {s3}");
    assert_eq!(
        r1.as_object().unwrap().len(),
        3,
        "receipt is {{entry_no, version, seq}}"
    );

    let current = app.read(&v, &s, "atem-a", "").await;
    current.iter().for_each(assert_entry_shape);
    let view: Vec<_> = current.iter().map(summary).collect();
    assert_eq!(
        view,
        vec![(1, 2, "first note, revised"), (2, 1, "second note")]
    );
    assert_eq!(current[0]["writer_id"], "atem-b");
    assert_eq!(current[0]["seq"].as_i64(), Some(s3));

    let history = app.read(&v, &s, "atem-a", "history=true").await;
    history.iter().for_each(assert_entry_shape);
    let rows: Vec<_> = history.iter().map(summary).collect();
    assert_eq!(
        rows,
        vec![
            (1, 1, "first note"),
            (2, 1, "second note"),
            (1, 2, "first note, revised")
        ]
    );
    let seqs: Vec<i64> = history.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![s1, s2, s3]);
    assert_eq!(history[0]["writer_id"], "atem-a");

    let explicit_current = app.read(&v, &s, "atem-a", "history=false").await;
    assert_eq!(explicit_current, current);
}

async fn since_filters_both_views(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let r1 = app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    app.write(&v, &s, "c", "one again", Some(1)).await;
    let after_first = r1["seq"].as_i64().unwrap();

    let history = app
        .read(&v, &s, "c", &format!("history=true&since={after_first}"))
        .await;
    let rows: Vec<_> = history.iter().map(summary).collect();
    assert_eq!(rows, vec![(2, 1, "two"), (1, 2, "one again")]);

    // Current view: entries whose newest version is above the cursor.
    let current = app.read(&v, &s, "c", &format!("since={after_first}")).await;
    let rows: Vec<_> = current.iter().map(summary).collect();
    assert_eq!(rows, vec![(1, 2, "one again"), (2, 1, "two")]);

    let head = history.last().unwrap()["seq"].as_i64().unwrap();
    assert!(
        app.read(&v, &s, "c", &format!("since={head}"))
            .await
            .is_empty()
    );
    assert!(
        app.read(&v, &s, "c", &format!("since={head}&history=true"))
            .await
            .is_empty()
    );
    assert_eq!(app.read(&v, &s, "c", "since=0").await.len(), 2);
}

async fn an_edit_of_a_missing_entry_is_a_404_and_never_collides_with_a_later_append(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;

    let (status, body) = app
        .try_write(&v, &s, "c", json!({"text": "x", "entry_id": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("e1"), "{body}");

    let first = app.write(&v, &s, "c", "real first", None).await;
    assert_eq!(first["entry_no"], 1, "the stray edit did not take e1");

    let (status, body) = app
        .try_write(&v, &s, "c", json!({"text": "x", "entry_id": 7}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("e7"), "{body}");
    let second = app.write(&v, &s, "c", "real second", None).await;
    assert_eq!(second["entry_no"], 2);
    let history = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(history.len(), 2, "failed edits left no rows: {history:?}");
}

async fn summary_changes_show_in_the_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "draft").await;
    let (status, body) = app.set_summary(&v, &s, "c", "shipped 1.0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({}));
    let (status, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([{"vault_id": v, "summary": "shipped 1.0"}]));
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(info["summary"], "shipped 1.0");
    assert_eq!(info["head_seq"], 0);
    assert!(
        app.read(&v, &s, "c", "history=true").await.is_empty(),
        "a summary is not a log row"
    );
}

async fn vault_ids_are_short_random_and_url_safe(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let a = app.create_vault(&s, "c", "").await;
    let b = app.create_vault(&s, "c", "").await;
    for id in [&a, &b] {
        assert!(id.starts_with("v-") && id.len() >= 12, "{id}");
        assert!(id[2..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }
    assert_ne!(a, b);
}

async fn the_list_holds_own_vaults_and_those_written_to(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let shared = app.create_vault(&home, "roamer", "shared").await;
    let private = app.create_vault(&home, "someone", "private").await;
    let theirs = app.create_vault(&away, "other", "theirs").await;
    app.write(&shared, &home, "roamer", "hello", None).await;

    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|v| v["vault_id"].as_str().unwrap().to_string())
            .collect()
    };
    // The roamer, now in another work session: its own session's vaults plus
    // the one it wrote to.
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "roamer", None)
        .await;
    let mut got = ids(&list);
    got.sort();
    let mut want = vec![shared.clone(), theirs.clone()];
    want.sort();
    assert_eq!(got, want);
    // A stranger in that session: only the session's own.
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "stranger", None)
        .await;
    assert_eq!(ids(&list), vec![theirs.clone()]);
    // Home sees both of its vaults, with summaries.
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &home, "anyone", None)
        .await;
    assert_eq!(
        list,
        json!([{"vault_id": shared, "summary": "shared"}, {"vault_id": private, "summary": "private"}])
    );
}

async fn past_writers_from_another_session_may_read_and_summarize_but_not_write(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "roamer", "").await;
    app.write(&v, &home, "roamer", "written at home", None)
        .await;

    let current = app.read(&v, &away, "roamer", "").await;
    assert_eq!(current[0]["content"], "written at home");
    assert_eq!(app.read(&v, &away, "roamer", "history=true").await.len(), 1);
    let (status, _) = app.set_summary(&v, &away, "roamer", "from away").await;
    assert_eq!(status, StatusCode::OK);

    for body in [
        json!({"text": "append"}),
        json!({"text": "edit", "entry_id": 1}),
    ] {
        let (status, err) = app.try_write(&v, &away, "roamer", body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(
            err["error"].as_str().unwrap().contains("work session"),
            "{err}"
        );
    }
    let history = app.read(&v, &home, "x", "history=true").await;
    assert_eq!(history.len(), 1, "refused writes left nothing");
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &home, "x", None)
        .await;
    assert_eq!(list[0]["summary"], "from away");
}

async fn strangers_are_refused_on_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "owner", "secret plans").await;
    app.write(&v, &home, "owner", "do not leak", None).await;

    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/vault/{v}"), None),
        (Method::GET, format!("/api/vault/{v}?history=true"), None),
        (
            Method::POST,
            format!("/api/vault/{v}"),
            Some(json!({"text": "x"})),
        ),
        (
            Method::POST,
            format!("/api/vault/{v}"),
            Some(json!({"text": "x", "entry_id": 1})),
        ),
        (
            Method::POST,
            format!("/api/vault/{v}/summary"),
            Some(json!({"text": "x"})),
        ),
        (Method::GET, format!("/api/vault/{v}/info"), None),
        (Method::POST, format!("/api/vault/{v}/stream-ticket"), None),
        (Method::GET, format!("/api/vault/{v}/links"), None),
        (
            Method::POST,
            format!("/api/vault/{v}/links"),
            Some(json!({})),
        ),
    ];
    for (method, path, body) in calls {
        let (status, err) = app
            .vault_call(method.clone(), &path, &away, "stranger", body)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {err}");
        assert!(err["error"].is_string(), "{err}");
        assert!(!err.to_string().contains("do not leak"));
    }
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "stranger", None)
        .await;
    assert_eq!(list, json!([]));
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &home, "owner", None)
        .await;
    assert_eq!(list[0]["summary"], "secret plans", "nothing changed");
}

async fn members_of_the_work_session_may_use_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s1) = app.work_session("home").await;
    // A second session of the same astation, another client id.
    let s2 = app.session(&token).await;
    let v = app.create_vault(&s1, "writer", "").await;
    app.write(&v, &s1, "writer", "from writer", None).await;
    // The reader never wrote, but shares the work session.
    assert_eq!(app.read(&v, &s2, "reader", "").await.len(), 1);
    let r = app.write(&v, &s2, "reader", "reader edits", Some(1)).await;
    assert_eq!(r["version"], 2);
    let (status, _) = app.set_summary(&v, &s2, "reader", "t").await;
    assert_eq!(status, StatusCode::OK);
    let (status, ticket) = app.ticket(&v, &s2, "reader").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ticket["ticket"].as_str().unwrap().len() > 30);
}

async fn reads_and_summaries_never_add_to_the_writer_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "creator", "").await;
    app.write(&v, &home, "creator", "x", None).await;
    // "visitor" reads and sets the summary from home, but never writes.
    app.read(&v, &home, "visitor", "").await;
    app.set_summary(&v, &home, "visitor", "s").await;
    let (status, _) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{v}"),
            &away,
            "visitor",
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "reading did not make a writer"
    );
    // Creating a vault does not make its creator a writer either...
    let (status, _) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{v}"),
            &away,
            "creator",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "...but writing content does");
    app.write(&v, &home, "visitor", "now a writer", None).await;
    let (status, _) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{v}"),
            &away,
            "visitor",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
