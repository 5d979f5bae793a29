//! The content write's hot path: the session and the write rule checked in
//! the write itself (and agreeing with `access::allows`), revocation taking
//! effect on the very next write on every replica, rows reaching the
//! writing process's own subscribers without waiting for a notice, and
//! concurrent writers on several replicas.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vault_relay::access::{self, Action};
use vault_relay::auth::{Caller, Principal};
use vault_relay::store::{
    Committed, Keyed, NewEntry, NewVault, SessionRecord, SessionState, Store, StoreError,
};

use crate::both_stores;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};
use crate::pg_only::assert_log_is_consistent;
use crate::store::store;

both_stores!(
    the_write_check_agrees_with_the_access_rules,
    a_revoked_session_cannot_write_on_its_next_request,
    refusals_judge_the_credential_before_the_input,
);

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

fn error_text(body: &Value) -> &str {
    body["error"].as_str().expect("an error body")
}

fn session(id_hash: &str, state: SessionState, astation: Option<&str>) -> SessionRecord {
    SessionRecord {
        id_hash: id_hash.into(),
        hostname: "h".into(),
        state,
        astation_id: astation.map(str::to_string),
        otp_hash: None,
        failed_attempts: 0,
        expires_at: Utc::now() + chrono::Duration::minutes(5),
        created_at: Utc::now(),
    }
}

/// An unkeyed write as a session; a keyed outcome is a failure here.
async fn write_as(
    store: &dyn Store,
    session_hash: &str,
    new: NewEntry,
) -> Result<Committed, StoreError> {
    match store.write_as(session_hash, new, None).await? {
        Keyed::Done(c) => Ok(c),
        Keyed::Prior(p) => panic!("an unkeyed write found a prior response: {p:?}"),
    }
}

fn entry(vault_id: &str, writer: &str, entry_no: Option<i64>) -> NewEntry {
    NewEntry {
        vault_id: vault_id.into(),
        entry_no,
        writer_id: writer.into(),
        content: format!("by {writer}"),
    }
}

/// The store's write check (SQL on Postgres) and `access::allows` give the
/// same answer for every kind of session caller, and a refused write
/// leaves no trace.
async fn the_write_check_agrees_with_the_access_rules(backend: Backend) {
    let (store, _db) = store(backend).await;
    store
        .create_vault(NewVault {
            id: "v-home".into(),
            summary: String::new(),
            work_session: "a-home".into(),
            creator: "c".into(),
        })
        .await
        .unwrap();
    for (hash, state, astation) in [
        ("h-home", SessionState::Granted, Some("a-home")),
        ("h-away", SessionState::Granted, Some("a-away")),
        ("h-pending", SessionState::Pending, None),
        ("h-denied", SessionState::Denied, None),
        ("h-revoked", SessionState::Revoked, Some("a-home")),
    ] {
        store
            .insert_session(&session(hash, state, astation))
            .await
            .unwrap();
    }
    // A client of another work session that wrote here before, through a
    // session of the home work session.
    write_as(&*store, "h-home", entry("v-home", "past-writer", None))
        .await
        .unwrap();

    let granted = [
        ("h-home", "a-home", "newcomer"),
        ("h-home", "a-home", "past-writer"),
        ("h-away", "a-away", "past-writer"),
        ("h-away", "a-away", "stranger"),
    ];
    let mut allowed_and_refused = (0, 0);
    for (hash, work_session, client) in granted {
        let vault = store.vault("v-home").await.unwrap().unwrap();
        let caller = Caller {
            principal: Principal::Session {
                session_hash: hash.into(),
                work_session: work_session.into(),
            },
            client_id: client.into(),
        };
        let rule = access::allows(&caller, &vault, Action::Write);
        let outcome = write_as(&*store, hash, entry("v-home", client, None)).await;
        let after = store.vault("v-home").await.unwrap().unwrap();
        match outcome {
            Ok(c) => {
                assert!(
                    rule,
                    "{hash}/{client}: the store wrote what the rules refuse"
                );
                assert_eq!(c.prev_seq, vault.head_seq, "{hash}/{client}");
                assert_eq!(after.head_seq, c.entry.seq);
                assert_eq!(c.entry.writer_id, client);
                allowed_and_refused.0 += 1;
            }
            Err(StoreError::WriteForbidden) => {
                assert!(
                    !rule,
                    "{hash}/{client}: the store refused what the rules allow"
                );
                assert_eq!(after.head_seq, vault.head_seq, "nothing was written");
                assert_eq!(after.writers, vault.writers, "the writer list is unchanged");
                allowed_and_refused.1 += 1;
            }
            Err(e) => panic!("{hash}/{client}: {e}"),
        }
    }
    assert_eq!(allowed_and_refused, (2, 2), "both answers were exercised");

    // Sessions that are not granted are refused before anything else, even
    // for a vault that does not exist.
    for hash in ["h-pending", "h-denied", "h-revoked", "h-unknown"] {
        for vault in ["v-home", "v-missing"] {
            assert!(
                matches!(
                    write_as(&*store, hash, entry(vault, "x", None)).await,
                    Err(StoreError::SessionRefused)
                ),
                "{hash} on {vault}"
            );
        }
    }
    assert!(matches!(
        write_as(&*store, "h-home", entry("v-missing", "x", None)).await,
        Err(StoreError::VaultNotFound)
    ));
    assert!(matches!(
        write_as(&*store, "h-home", entry("v-home", "x", Some(99))).await,
        Err(StoreError::EntryNotFound(99))
    ));
    // An edit keeps the entry number and counts the version up.
    let edit = write_as(&*store, "h-home", entry("v-home", "x", Some(1)))
        .await
        .unwrap();
    assert_eq!((edit.entry.entry_no, edit.entry.version), (1, 2));
    let rows = store
        .entries_after("v-home", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.entry_no, r.version, r.writer_id.clone()))
        .collect::<Vec<_>>();
    assert_eq!(
        rows,
        vec![
            (1, 1, "past-writer".to_string()),
            (2, 1, "newcomer".into()),
            (3, 1, "past-writer".into()),
            (1, 2, "x".into()),
        ]
    );
}

async fn a_revoked_session_cannot_write_on_its_next_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (astation_id, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "before", None).await;
    let (status, _) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.try_write(&v, &s, "c", json!({"text": "after"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_text(&body).contains("revoked"), "{body}");

    // Removing the astation revokes its other sessions just as promptly.
    let other = app.session(&token).await;
    app.write(&v, &other, "c", "by another session", None).await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/admin/astations/{astation_id}"),
            Some(&format!("Bearer {ADMIN_TOKEN}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .try_write(&v, &other, "c", json!({"text": "after removal"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_text(&body).contains("revoked"), "{body}");
}

async fn refusals_judge_the_credential_before_the_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&s, "c", "").await;
    let bad_inputs = [
        json!({"text": "x", "entry_id": 0}),
        json!({"text": "a\u{0}b"}),
        json!({"entry_id": 1}),
        json!(["not", "an", "object"]),
    ];
    for body in &bad_inputs {
        let (status, err) = app.try_write(&v, "s-doesnotexist", "c", body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}: {err}");
        assert!(error_text(&err).contains("unknown session"), "{err}");
        let (status, err) = app.try_write(&v, &s, "c", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
    }
    // An unknown session with a missing `?id` is still a 401.
    let (status, err) = app
        .call(
            Method::POST,
            &format!("/api/vault/{v}"),
            Some("session s-doesnotexist"),
            Some(json!({"text": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    // Then 404 for no such vault or entry, and 403 for another work session.
    let (status, err) = app
        .try_write("v-doesnotexist", &s, "c", json!({"text": "x"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert!(error_text(&err).contains("no such vault"), "{err}");
    let (status, err) = app
        .try_write(&v, &s, "c", json!({"text": "x", "entry_id": 7}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert!(error_text(&err).contains("e7"), "{err}");
    let (status, err) = app.try_write(&v, &away, "c", json!({"text": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(error_text(&err).contains("work session"), "{err}");
    assert!(
        app.read(&v, &s, "c", "history=true").await.is_empty(),
        "no refusal wrote anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_session_cannot_write_on_any_replica_at_once() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    let (_, _, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "c", "").await;
    // Both replicas have served this session's writes.
    a.write(&v, &s, "c", "via a", None).await;
    b.write(&v, &s, "c", "via b", None).await;
    let (status, _) = a.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    // No waiting for the revocation's notice: the very next write on the
    // other replica is refused.
    let (status, body) = b.try_write(&v, &s, "c", json!({"text": "too late"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_text(&body).contains("revoked"), "{body}");
    assert_eq!(b.session_status(&s).await, "revoked");
    let mut conn = a.db.as_ref().unwrap().connect().await;
    let stored: Vec<String> =
        sqlx::query_scalar("select content from vault_entries where vault_id = $1 order by seq")
            .bind(&v)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec!["via a", "via b"],
        "the refused write left nothing"
    );
}

/// Writers on two replicas append and edit the same vaults at once: no
/// deadlock, every write is a row, entry numbers stay contiguous, versions
/// count up in seq order, and a subscriber on each replica sees every row
/// exactly once in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_two_replicas_share_vaults_without_gaps_or_duplicates() {
    let a = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let b = Arc::new(TestApp::spawn_on(a.db.clone().unwrap()).await);
    let (_, _, s) = a.work_session("home").await;
    let vaults = [
        a.create_vault(&s, "c", "one").await,
        a.create_vault(&s, "c", "two").await,
    ];
    for v in &vaults {
        a.write(v, &s, "c", "seed", None).await;
    }
    let mut streams = Vec::new();
    for v in &vaults {
        streams.push(a.open_stream(v, &s, "watch-a", "since=0").await);
        streams.push(b.open_stream(v, &s, "watch-b", "since=0").await);
    }
    let per_task = 12;
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let relay = if t % 2 == 0 { a.clone() } else { b.clone() };
            let s = s.clone();
            let vaults = vaults.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    // Each task alternates between the two vaults, so
                    // writes on both replicas contend for both locks.
                    let v = &vaults[(t + i) % 2];
                    let edit = (i % 3 == 2).then_some(1);
                    relay
                        .write(v, &s, &format!("t{t}"), &format!("t{t} i{i}"), edit)
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("no deadlock")
            .unwrap();
    }
    let total_writes = 12 * per_task;
    let mut all_rows = 0;
    for (k, v) in vaults.iter().enumerate() {
        let history = a.read(v, &s, "c", "history=true").await;
        all_rows += history.len();
        assert_log_is_consistent(&history);
        let seqs: Vec<i64> = history.iter().map(seq).collect();
        for stream in &mut streams[2 * k..2 * k + 2] {
            let got: Vec<i64> = stream
                .entries(history.len())
                .await
                .iter()
                .map(seq)
                .collect();
            assert_eq!(got, seqs, "every row once, in seq order");
        }
    }
    assert_eq!(all_rows, 2 + total_writes, "every write is a row");
}

/// One batch, one transaction: the write that names no entry and the one
/// whose session is revoked fail alone, the others commit, entry numbers
/// stay contiguous, and the whole batch is announced by one notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_in_a_batch_fails_alone() {
    use vault_relay::store::postgres::batch::{Item, commit};

    let (store, db) = store(Backend::Postgres).await;
    let db = db.expect("a database");
    for (hash, state) in [
        ("h-ok", SessionState::Granted),
        ("h-gone", SessionState::Revoked),
    ] {
        store
            .insert_session(&session(hash, state, Some("a-home")))
            .await
            .unwrap();
    }
    for id in ["v-a", "v-b"] {
        store
            .create_vault(NewVault {
                id: id.into(),
                summary: String::new(),
                work_session: "a-home".into(),
                creator: "c".into(),
            })
            .await
            .unwrap();
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("vault_relay").await.unwrap();

    let item = |hash: &str, vault: &str, entry_no: Option<i64>, text: &str| Item {
        session_hash: hash.into(),
        entry: NewEntry {
            vault_id: vault.into(),
            entry_no,
            writer_id: "w".into(),
            content: text.into(),
        },
        key: None,
    };
    // v-b first: the batch locks its vaults in id order, not arrival order.
    let outcomes = commit(
        &pool,
        vec![
            item("h-ok", "v-b", None, "b1"),
            item("h-ok", "v-a", None, "a1"),
            item("h-ok", "v-a", Some(9), "edit of nothing"),
            item("h-gone", "v-a", None, "from a revoked session"),
            item("h-ok", "v-missing", None, "nowhere"),
            item("h-ok", "v-a", None, "a2"),
            item("h-ok", "v-a", Some(1), "a1, edited"),
        ],
    )
    .await;
    let results: Vec<Result<(i64, i64, i64), String>> = outcomes
        .into_iter()
        .map(|o| match o {
            Ok(Keyed::Done(c)) => Ok((c.entry.entry_no, c.entry.version, c.prev_seq)),
            Ok(Keyed::Prior(p)) => Err(format!("prior {p:?}")),
            Err(e) => Err(e.to_string()),
        })
        .collect();
    let seqs: Vec<i64> = sqlx::query_scalar("select seq from vault_entries order by seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let [b1, a1, a2, a1v2] = seqs[..] else {
        panic!("four rows expected, got {seqs:?}");
    };
    assert_eq!(
        results,
        vec![
            Ok((1, 1, 0)),
            Ok((1, 1, 0)),
            Err(StoreError::EntryNotFound(9).to_string()),
            Err(StoreError::SessionRefused.to_string()),
            Err(StoreError::VaultNotFound.to_string()),
            Ok((2, 1, a1)),
            Ok((1, 2, a2)),
        ]
    );
    assert!(
        b1 < a1 && a1 < a2 && a2 < a1v2,
        "seq follows the batch order"
    );
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "select vault_id, entry_no, version, content from vault_entries order by seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("v-b".into(), 1, 1, "b1".into()),
            ("v-a".into(), 1, 1, "a1".into()),
            ("v-a".into(), 2, 1, "a2".into()),
            ("v-a".into(), 1, 2, "a1, edited".into()),
        ]
    );
    let notice = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notice")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(notice.payload()).unwrap(),
        json!({"t": "entries", "h": {"v-a": a1v2, "v-b": b1}})
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "one notice for the whole batch"
    );
}

/// Acknowledgements come only after the commit, and one bad write does not
/// sink its batch: a deferred check refuses some rows only at COMMIT (after
/// the write statement has computed every result), so their batches fail
/// whole; the relay tries the rest again without them. Every refused write
/// is answered as an error and not stored, every other write is
/// acknowledged and stored where its answer says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_acknowledged_only_after_their_batch_commits() {
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut conn = app.db.as_ref().unwrap().connect().await;
    sqlx::raw_sql(
        "create function refuse_at_commit() returns trigger language plpgsql as $$
         begin
             if new.content = 'refused at commit' then
                 raise exception 'refused at commit';
             end if;
             return null;
         end $$;
         create constraint trigger refuse_at_commit after insert on vault_entries
         deferrable initially deferred for each row execute function refuse_at_commit();",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (app, s, v) = (app.clone(), s.clone(), v.clone());
            tokio::spawn(async move {
                let text = if i % 10 == 5 {
                    "refused at commit".to_string()
                } else {
                    format!("w{i}")
                };
                let (status, body) = app.try_write(&v, &s, "c", json!({ "text": text })).await;
                (text, status, body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let stored: Vec<(i64, String)> =
        sqlx::query_as("select seq, content from vault_entries where vault_id = $1")
            .bind(&v)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for (text, status, body) in &answers {
        let row = stored.iter().find(|(_, c)| c == text);
        if text == "refused at commit" {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR, "{text}: {body}");
            assert!(!error_text(body).is_empty());
            assert_eq!(row, None, "{text} was refused but stored");
        } else {
            assert_eq!(*status, StatusCode::OK, "{text}: {body}");
            assert_eq!(row.map(|r| r.0), Some(seq(body)), "{text} was acknowledged");
        }
    }
    assert_eq!(stored.len(), 36, "{answers:?}");
    assert_log_is_consistent(&app.read(&v, &s, "c", "history=true").await);
}

/// A write that finds nobody committing commits in its caller's task. A
/// caller given up at any point of that (a client that hung up) hands the
/// turn on: the writes queued behind it and every later write are still
/// committed and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_half_way_leaves_the_writer_free() {
    let (store, db) = store(Backend::Postgres).await;
    let db = db.expect("a database");
    store
        .insert_session(&session("h-ok", SessionState::Granted, Some("a-home")))
        .await
        .unwrap();
    store
        .create_vault(NewVault {
            id: "v-a".into(),
            summary: String::new(),
            work_session: "a-home".into(),
            creator: "c".into(),
        })
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for round in 0..30u64 {
        let given_up = {
            let store = store.clone();
            tokio::spawn(
                async move { write_as(&*store, "h-ok", entry("v-a", "quitter", None)).await },
            )
        };
        // Give it up before, while or after it takes the turn.
        tokio::time::sleep(Duration::from_micros(round * 50)).await;
        given_up.abort();
        let writes: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    write_as(&*store, "h-ok", entry("v-a", &format!("w{i}"), None)).await
                })
            })
            .collect();
        for w in writes {
            let committed = tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a write was never answered"))
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            acknowledged.push(committed.entry.seq);
        }
    }
    let mut conn = db.connect().await;
    let stored: Vec<i64> =
        sqlx::query_scalar("select seq from vault_entries where writer_id <> 'quitter'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    acknowledged.sort_unstable();
    assert_eq!(stored.len(), 120);
    let mut stored = stored;
    stored.sort_unstable();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged write is stored where it says"
    );
}
