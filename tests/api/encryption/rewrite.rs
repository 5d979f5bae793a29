//! The rewrite route, and a work session migrating to encryption and back.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    the_rewrite_replaces_rows_with_fresh_seqs_in_the_order_listed,
    a_rewrite_naming_a_missing_row_changes_nothing,
    a_rewrite_outside_enabling_or_disabling_is_409,
    a_rewrite_whose_values_do_not_fit_the_mode_is_409,
    past_writers_are_skipped_and_strangers_refused,
    a_work_session_migrates_to_encryption_and_back,
    the_rewrite_takes_bodies_up_to_its_own_limit,
);

async fn the_rewrite_replaces_rows_with_fresh_seqs_in_the_order_listed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&s, "atem-a", "the plan").await;
    app.write(&v, &s, "atem-a", "one", None).await;
    app.write(&v, &s, "atem-b", "two", None).await;
    let r3 = app.write(&v, &s, "atem-a", "one, edited", Some(1)).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    move_to(&app, &token, "enabling", Some(KID)).await;

    // Listed out of seq order: e2 v1, then e1 v2, then e1 v1.
    let body = json!({
        "summary": seal(KID, "the plan"),
        "entries": [
            {"entry_no": 2, "version": 1, "content": seal(KID, "two")},
            {"entry_no": 1, "version": 2, "content": seal(KID, "one, edited")},
            {"entry_no": 1, "version": 1, "content": seal(KID, "one")},
        ],
    });
    let (status, answer) = rewrite(&app, &v, &s, "migrator", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"rewritten": 3}));

    let history = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(history.len(), 3, "rewritten in place, no new rows");
    let order: Vec<(i64, i64)> = history
        .iter()
        .map(|r| {
            (
                r["entry_no"].as_i64().unwrap(),
                r["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![(2, 1), (1, 2), (1, 1)],
        "seq order is the order listed"
    );
    let seqs: Vec<i64> = history.iter().map(seq).collect();
    assert!(
        seqs[0] > seq(&r3) && seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{seqs:?}"
    );
    for row in &history {
        let old = before
            .iter()
            .find(|b| b["entry_no"] == row["entry_no"] && b["version"] == row["version"])
            .unwrap();
        for kept in ["kind", "writer_id", "created_at"] {
            assert_eq!(row[kept], old[kept], "{kept} is kept");
        }
        assert_eq!(
            open(row["content"].as_str().unwrap()),
            old["content"].as_str().unwrap()
        );
    }
    // Since: the rows once more, after the old head; nothing after the new one.
    let since_old_head = app
        .read(&v, &s, "c", &format!("history=true&since={}", seq(&r3)))
        .await;
    assert_eq!(since_old_head, history);
    let current = app.read(&v, &s, "c", &format!("since={}", seq(&r3))).await;
    assert_eq!(
        current
            .iter()
            .map(|r| (
                r["entry_no"].as_i64().unwrap(),
                r["version"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![(1, 2), (2, 1)],
        "the current view, still newest version per entry"
    );
    assert!(
        app.read(&v, &s, "c", &format!("history=true&since={}", seqs[2]))
            .await
            .is_empty()
    );
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(open(info["summary"].as_str().unwrap()), "the plan");
    assert_eq!(info["head_seq"].as_i64(), Some(seqs[2]));
    // The writer list is unchanged: "migrator" never wrote content, so from
    // another work session it does not find the vault.
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "migrator", None)
        .await;
    assert_eq!(list, json!([]));
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &away, "atem-b", None)
        .await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "past writers still find it"
    );
    // New writes continue after the rewritten rows.
    let r4 = app.write(&v, &s, "c", &seal(KID, "four"), None).await;
    assert_eq!(r4["entry_no"], 3);
    assert!(seq(&r4) > seqs[2]);
}

async fn a_rewrite_naming_a_missing_row_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "summary").await;
    app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    let body = json!({
        "summary": seal(KID, "summary"),
        "entries": [
            {"entry_no": 1, "version": 1, "content": seal(KID, "one")},
            {"entry_no": 1, "version": 2, "content": seal(KID, "never written")},
            {"entry_no": 9, "version": 1, "content": seal(KID, "nor this")},
        ],
    });
    let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(
        error(&answer).contains("e1 v2"),
        "names the first missing row: {answer}"
    );
    assert_eq!(
        app.read(&v, &s, "c", "history=true").await,
        before,
        "nothing changed"
    );
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(info["summary"], "summary", "not even the summary");
    // No such vault; rows listed twice; numbers below 1.
    let (status, _) = rewrite(&app, "v-NoSuchVault1", &s, "c", json!({"summary": ""})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let twice = json!({"summary": "", "entries": [
        {"entry_no": 1, "version": 1, "content": ""},
        {"entry_no": 1, "version": 1, "content": ""}]});
    let (status, body) = rewrite(&app, &v, &s, "c", twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let zero = json!({"summary": "", "entries": [{"entry_no": 0, "version": 1, "content": ""}]});
    let (status, _) = rewrite(&app, &v, &s, "c", zero).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = rewrite(&app, &v, &s, "c", json!({"entries": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the summary is required");
    // A row must be an object, as the body must: not its fields in a list.
    let listed = json!({"summary": seal(KID, "summary"),
                        "entries": [[1, 1, seal(KID, "one")]]});
    let (status, body) = rewrite(&app, &v, &s, "c", listed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error(&body).contains("a JSON object"), "{body}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await, before);
}

async fn a_rewrite_outside_enabling_or_disabling_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "one", None).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    let plain =
        json!({"summary": "", "entries": [{"entry_no": 1, "version": 1, "content": "one"}]});
    let (status, body) = rewrite(&app, &v, &s, "c", plain.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "off: {body}");
    assert!(
        error(&body).contains("its encryption mode is off"),
        "{body}"
    );
    move_to(&app, &token, "enabling", Some(KID)).await;
    let sealed = json!({"summary": "", "entries": [{"entry_no": 1, "version": 1, "content": seal(KID, "one")}]});
    rewrite(&app, &v, &s, "c", sealed.clone()).await;
    move_to(&app, &token, "on", None).await;
    let after_enabling = app.read(&v, &s, "c", "history=true").await;
    let (status, body) = rewrite(&app, &v, &s, "c", sealed).await;
    assert_eq!(status, StatusCode::CONFLICT, "on: {body}");
    assert!(error(&body).contains("its encryption mode is on"), "{body}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await, after_enabling);
    assert_ne!(after_enabling, before);
}

async fn a_rewrite_whose_values_do_not_fit_the_mode_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "s").await;
    app.write(&v, &s, "c", "one", None).await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let before = app.read(&v, &s, "c", "history=true").await;
    for (summary, content) in [
        (seal(KID, "s"), "still plain".to_string()),
        (seal(KID, "s"), seal(NEW_KID, "other kid")),
        ("plain summary".to_string(), seal(KID, "one")),
        (seal(KID, "s"), format!("e1.{KID}.AAAA")),
    ] {
        let body = json!({"summary": summary, "entries": [{"entry_no": 1, "version": 1, "content": content}]});
        let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(
            error(&answer).contains("does not match the encryption mode (enabling)"),
            "{answer}"
        );
    }
    move_to(&app, &token, "disabling", None).await;
    let body = json!({"summary": "s", "entries": [{"entry_no": 1, "version": 1, "content": seal(KID, "one")}]});
    let (status, answer) = rewrite(&app, &v, &s, "c", body).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a rewrite while disabling stores plaintext: {answer}"
    );
    assert!(
        error(&answer).contains("does not match the encryption mode (disabling)"),
        "{answer}"
    );
    assert_eq!(app.read(&v, &s, "c", "history=true").await, before);
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(info["summary"], "s");
}

async fn past_writers_are_skipped_and_strangers_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "roamer", "").await;
    app.write(&v, &home, "roamer", "written at home", None)
        .await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let before = app.read(&v, &home, "c", "history=true").await;
    let body = json!({"summary": seal(KID, "x"), "entries": [{"entry_no": 1, "version": 1, "content": seal(KID, "x")}]});
    // The roamer, now in another work session, still lists the vault (it
    // wrote there), so its own migration sends it too: skipped.
    let (status, answer) = rewrite(&app, &v, &away, "roamer", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rewritten"], 0);
    assert!(
        answer["skipped"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert_eq!(
        app.read(&v, &home, "c", "history=true").await,
        before,
        "nothing changed"
    );
    // A stranger is refused as on a write.
    let (status, answer) = rewrite(&app, &v, &away, "stranger", body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/vault/{v}/encryption?id=c"),
            None,
            Some(json!({"summary": ""})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.read(&v, &home, "c", "history=true").await, before);
}

async fn a_work_session_migrates_to_encryption_and_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s1) = app.work_session("home").await;
    let s2 = app.session(&token).await;
    let (_, _, away) = app.work_session("away").await;
    // Two atems, two vaults of the work session, and a vault of another
    // work session that atem-a once wrote to from there.
    let a = app.create_vault(&s1, "atem-a", "release plan").await;
    let b = app.create_vault(&s2, "atem-b", "").await;
    let theirs = app.create_vault(&away, "atem-a", "their notes").await;
    app.write(
        &theirs,
        &away,
        "atem-a",
        "written by atem-a while away",
        None,
    )
    .await;
    for (v, s, c) in [
        (&a, &s1, "atem-a"),
        (&b, &s2, "atem-b"),
        (&a, &s2, "atem-b"),
    ] {
        app.write(v, s, c, &format!("{c} note"), None).await;
    }
    app.write(&a, &s1, "atem-a", "edited", Some(1)).await;
    let plain_a = app.read(&a, &s1, "c", "history=true").await;
    let theirs_before = app.read(&theirs, &away, "c", "history=true").await;
    let mut watching = app.open_stream(&a, &s2, "viewer", "").await;
    watching.next_of("encryption").await;

    // Enabling: every atem rewrites every vault it lists.
    move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(watching.next_of("encryption").await["mode"], "enabling");
    let mut skipped = 0;
    for (s, c) in [(&s1, "atem-a"), (&s2, "atem-b")] {
        let (_, list) = app.vault_call(Method::GET, "/api/vault", s, c, None).await;
        for item in list.as_array().unwrap() {
            let v = item["vault_id"].as_str().unwrap();
            let answer = migrate_vault(&app, v, s, c, seal_all(KID)).await;
            if answer.get("skipped").is_some() {
                skipped += 1;
            }
        }
    }
    // atem-a lists `theirs` (it wrote there from the other work session):
    // that one rewrite is skipped and changes nothing.
    assert_eq!(skipped, 1);
    assert_eq!(
        app.read(&theirs, &away, "c", "history=true").await,
        theirs_before
    );
    // Each row was rewritten twice (both atems list both vaults); the
    // stream saw each rewrite.
    let frames = watching.entries(2 * plain_a.len()).await;
    assert!(
        frames
            .iter()
            .all(|f| f["content"].as_str().unwrap().starts_with("e1."))
    );

    let on = move_to(&app, &token, "on", None).await;
    assert_eq!(counts(&on).0, 0);
    assert_eq!(watching.next_of("encryption").await["mode"], "on");
    let (status, body) = app
        .try_write(&a, &s1, "atem-a", json!({"text": "plaintext"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error(&body).contains("does not match the encryption mode (on)"),
        "{body}"
    );
    app.write(&a, &s1, "atem-a", &seal(KID, "sealed note"), None)
        .await;

    // Disabling and back.
    move_to(&app, &token, "disabling", None).await;
    app.write(&b, &s2, "atem-b", "plaintext again", None).await;
    let (status, body) = set_mode(&app, &token, "off", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error(&body).starts_with("invalid encryption transition disabling -> off: "));
    for (s, c) in [(&s1, "atem-a"), (&s2, "atem-b")] {
        for v in [&a, &b] {
            migrate_vault(&app, v, s, c, open_all).await;
        }
    }
    let off = move_to(&app, &token, "off", None).await;
    let (plain, sealed, obsolete) = counts(&off);
    assert!(plain > 0 && sealed == 0 && obsolete == 0, "{off}");
    assert_eq!(off["kid"], Value::Null);
    let back = app.read(&a, &s1, "c", "history=true").await;
    assert_eq!(back.len(), plain_a.len() + 1);
    for old in &plain_a {
        let now = back
            .iter()
            .find(|r| r["entry_no"] == old["entry_no"] && r["version"] == old["version"])
            .unwrap();
        assert_eq!(now["content"], old["content"], "the plaintext came back");
        assert_eq!(now["created_at"], old["created_at"]);
    }
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{a}/info"), &s1, "c", None)
        .await;
    assert_eq!(info["summary"], "release plan");
    app.write(&a, &s1, "atem-a", "plaintext is fine again", None)
        .await;
}

/// The rewrite carries a whole vault: its body limit is its own
/// (`MAX_REWRITE_BODY_BYTES`), larger than every other route's.
async fn the_rewrite_takes_bodies_up_to_its_own_limit(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.max_entry_bytes = 8 * 1024;
        c.max_body_bytes = 16 * 1024;
        c.max_rewrite_body_bytes = 256 * 1024;
    })
    .await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    for i in 0..20 {
        app.write(&v, &s, "c", &format!("{i:02} {}", "x".repeat(6000)), None)
            .await;
    }
    move_to(&app, &token, "enabling", Some(KID)).await;
    // About 165 KB: over the general body limit, under the rewrite's.
    let answer = migrate_vault(&app, &v, &s, "c", seal_all(KID)).await;
    assert_eq!(answer["rewritten"], 20);
    let history = app.read(&v, &s, "c", "history=true").await;
    assert!(
        history
            .iter()
            .all(|r| r["content"].as_str().unwrap().starts_with("e1."))
    );
    // Every other route keeps the general limit.
    let (status, body) = app
        .try_write(
            &v,
            &s,
            "c",
            json!({ "text": seal(KID, &"y".repeat(6000)), "pad": "z".repeat(20_000) }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // Over the rewrite's own limit: 413 with the JSON error, nothing changed.
    let huge = json!({ "summary": "", "entries": [], "pad": "z".repeat(300 * 1024) });
    let (status, body) = rewrite(&app, &v, &s, "c", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error(&body).contains("body"), "{body}");
    assert_eq!(app.read(&v, &s, "c", "history=true").await, history);
}
