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
use vault_relay::store::{NewEntry, NewVault, SessionRecord, SessionState, StoreError};

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
    store
        .write_as("h-home", entry("v-home", "past-writer", None))
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
        let outcome = store.write_as(hash, entry("v-home", client, None)).await;
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
                    store.write_as(hash, entry(vault, "x", None)).await,
                    Err(StoreError::SessionRefused)
                ),
                "{hash} on {vault}"
            );
        }
    }
    assert!(matches!(
        store
            .write_as("h-home", entry("v-missing", "x", None))
            .await,
        Err(StoreError::VaultNotFound)
    ));
    assert!(matches!(
        store
            .write_as("h-home", entry("v-home", "x", Some(99)))
            .await,
        Err(StoreError::EntryNotFound(99))
    ));
    // An edit keeps the entry number and counts the version up.
    let edit = store
        .write_as("h-home", entry("v-home", "x", Some(1)))
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

/// The fast path: with the LISTEN connection cut and unable to come back,
/// a row written through a relay still reaches that relay's subscribers at
/// once, while another replica's subscribers get it only once notices flow
/// again. Nothing arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_reach_the_writing_relays_subscribers_without_a_notice() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let db = a.db.clone().unwrap();
    let b = TestApp::spawn_on(db.clone()).await;
    let (_, _, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "c", "").await;
    let mut on_a = a.open_stream(&v, &s, "watch-a", "since=0").await;
    let mut on_b = b.open_stream(&v, &s, "watch-b", "since=0").await;
    let first = a.write(&v, &s, "c", "with notices", None).await;
    assert_eq!(seq(&on_a.next_of("entry").await), seq(&first));
    assert_eq!(seq(&on_b.next_of("entry").await), seq(&first));

    // Cut every LISTEN connection and keep them from coming back; the
    // relays' pools keep the connections they already hold.
    let mut admin: sqlx::PgConnection = sqlx::Connection::connect(&crate::helpers::server_url())
        .await
        .unwrap();
    let name = &db.name;
    sqlx::query(&format!("alter database {name} allow_connections false"))
        .execute(&mut admin)
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
         where datname = $1 and query ilike 'listen%'",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, 2, "one LISTEN connection per relay");

    let mut written = Vec::new();
    for i in 0..5 {
        let r = a.write(&v, &s, "c", &format!("fast #{i}"), None).await;
        let f = on_a.next_of("entry").await;
        assert_eq!(seq(&f), seq(&r), "delivered by the writing relay at once");
        assert_eq!(f["content"], format!("fast #{i}"));
        written.push(seq(&r));
    }

    sqlx::query(&format!("alter database {name} allow_connections true"))
        .execute(&mut admin)
        .await
        .unwrap();
    // B catches up by its cursor when its listener is back.
    let got_b: Vec<i64> = on_b.entries(5).await.iter().map(seq).collect();
    assert_eq!(got_b, written);
    // A writes through B after the reconnect: both see exactly that row
    // next, so A's resync sent nothing twice.
    let last = b.write(&v, &s, "c", "after", None).await;
    assert_eq!(seq(&on_a.next_of("entry").await), seq(&last));
    assert_eq!(seq(&on_b.next_of("entry").await), seq(&last));
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
