//! The store behaviour suite: the `Store` trait's contract, checked directly
//! on both implementations (the HTTP suites check it through the routes).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use vault_relay::store::memory::MemoryStore;
use vault_relay::store::postgres::{PgConfig, PgStore};
use vault_relay::store::{
    Astation, NewEntry, NewVault, Notice, ReadLink, SessionRecord, SessionState, Store, StoreError,
    StreamTicket, View, WatcherRecord,
};

use crate::both_stores;
use crate::helpers::{Backend, TestDb};

both_stores!(
    unknown_vaults_are_reported_as_such,
    entries_after_pages_in_seq_order,
    writes_are_announced_after_they_land,
    session_transitions_are_compare_and_set,
    wrong_codes_count_up_to_the_limit_then_deny,
    only_long_ended_unpaired_sessions_are_purged,
    tickets_work_once_and_expire,
    links_are_found_by_secret_hash_and_revoked_once,
    watchers_are_counted_and_withdrawn_with_their_replica,
    removing_an_astation_revokes_its_sessions,
    a_session_and_a_vault_are_read_together_as_each_alone,
);

/// A fresh store of the given kind (and the database behind it, if any).
pub(crate) async fn store(backend: Backend) -> (Arc<dyn Store>, Option<TestDb>) {
    match backend {
        Backend::Memory => (Arc::new(MemoryStore::new()), None),
        Backend::Postgres => {
            let db = TestDb::create().await;
            let config = PgConfig {
                url: db.url.clone(),
                max_connections: 4,
            };
            let store = PgStore::connect(&config).await.expect("connect");
            (Arc::new(store), Some(db))
        }
    }
}

async fn vault(store: &dyn Store, id: &str) {
    store
        .create_vault(NewVault {
            id: id.into(),
            summary: String::new(),
            work_session: "a-home".into(),
            creator: "c".into(),
        })
        .await
        .expect("create vault");
}

fn append(vault_id: &str, text: &str) -> NewEntry {
    NewEntry {
        vault_id: vault_id.into(),
        entry_no: None,
        writer_id: "w".into(),
        content: text.into(),
    }
}

fn session(id_hash: &str, state: SessionState) -> SessionRecord {
    SessionRecord {
        id_hash: id_hash.into(),
        hostname: "h".into(),
        state,
        astation_id: None,
        otp_hash: Some("otp".into()),
        failed_attempts: 0,
        expires_at: Utc::now() + chrono::Duration::minutes(5),
        created_at: Utc::now(),
    }
}

async fn unknown_vaults_are_reported_as_such(backend: Backend) {
    let (store, _db) = store(backend).await;
    let store = store.as_ref();
    assert!(store.vault("v-none").await.unwrap().is_none());
    assert!(matches!(
        store.write_entry(append("v-none", "x")).await,
        Err(StoreError::VaultNotFound)
    ));
    assert!(matches!(
        store.read_entries("v-none", View::History, 0).await,
        Err(StoreError::VaultNotFound)
    ));
    assert!(matches!(
        store.read_entries("v-none", View::Current, 0).await,
        Err(StoreError::VaultNotFound)
    ));
    assert!(matches!(
        store.set_summary("v-none", "s").await,
        Err(StoreError::VaultNotFound)
    ));
    vault(store, "v-one").await;
    assert!(
        store
            .read_entries("v-one", View::Current, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let mut edit = append("v-one", "x");
    edit.entry_no = Some(3);
    assert!(matches!(
        store.write_entry(edit).await,
        Err(StoreError::EntryNotFound(3))
    ));
    assert!(matches!(
        store
            .create_vault(NewVault {
                id: "v-one".into(),
                summary: String::new(),
                work_session: "a".into(),
                creator: "c".into(),
            })
            .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn entries_after_pages_in_seq_order(backend: Backend) {
    let (store, _db) = store(backend).await;
    let store = store.as_ref();
    vault(store, "v-a").await;
    vault(store, "v-b").await;
    let mut a_seqs = Vec::new();
    for i in 0..7 {
        a_seqs.push(
            store
                .write_entry(append("v-a", &format!("a{i}")))
                .await
                .unwrap()
                .seq,
        );
        store
            .write_entry(append("v-b", &format!("b{i}")))
            .await
            .unwrap();
    }
    let first = store.entries_after("v-a", 0, 3).await.unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), a_seqs[..3]);
    let rest = store.entries_after("v-a", first[2].seq, 100).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), a_seqs[3..]);
    assert!(
        rest.iter().all(|e| e.content.starts_with('a')),
        "only this vault's rows"
    );
    let v = store.vault("v-a").await.unwrap().unwrap();
    assert_eq!(v.head_seq, *a_seqs.last().unwrap());
    assert_eq!(v.writers, vec!["w".to_string()], "a writer is listed once");
}

async fn writes_are_announced_after_they_land(backend: Backend) {
    let (store, _db) = store(backend).await;
    let mut notices = store.notices();
    vault(store.as_ref(), "v-n").await;
    let receipt = store.write_entry(append("v-n", "x")).await.unwrap();
    store.set_summary("v-n", "new").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), notices.recv())
            .await
            .expect("a notice")
            .expect("open channel");
        if n != Notice::Resync {
            seen.push(n);
        }
    }
    assert_eq!(
        seen,
        vec![
            Notice::Entry {
                vault_id: "v-n".into(),
                seq: receipt.seq
            },
            Notice::Summary {
                vault_id: "v-n".into()
            },
        ]
    );
    // What was announced is there to read.
    let rows = store.entries_after("v-n", 0, 10).await.unwrap();
    assert_eq!(rows[0].seq, receipt.seq);
}

async fn session_transitions_are_compare_and_set(backend: Backend) {
    let (store, _db) = store(backend).await;
    store
        .insert_session(&session("h1", SessionState::Pending))
        .await
        .unwrap();
    assert!(
        store
            .transition_session(
                "h1",
                SessionState::Pending,
                SessionState::Granted,
                Some("a-1")
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_session("h1", SessionState::Pending, SessionState::Denied, None)
            .await
            .unwrap(),
        "no longer pending"
    );
    let s = store.session("h1").await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.astation_id.as_deref()),
        (SessionState::Granted, Some("a-1"))
    );
    assert!(store.revoke_session("h1").await.unwrap());
    assert!(!store.revoke_session("h1").await.unwrap(), "revoked once");
    assert!(!store.revoke_session("h-unknown").await.unwrap());
}

async fn wrong_codes_count_up_to_the_limit_then_deny(backend: Backend) {
    let (store, _db) = store(backend).await;
    store
        .insert_session(&session("h2", SessionState::Pending))
        .await
        .unwrap();
    for n in 1..=2 {
        let s = store.record_failed_code("h2", 3).await.unwrap().unwrap();
        assert_eq!((s.failed_attempts, s.state), (n, SessionState::Pending));
    }
    let s = store.record_failed_code("h2", 3).await.unwrap().unwrap();
    assert_eq!((s.failed_attempts, s.state), (3, SessionState::Denied));
    assert!(
        store.record_failed_code("h2", 3).await.unwrap().is_none(),
        "a denied session counts no more"
    );
    let s = store.session("h2").await.unwrap().unwrap();
    assert_eq!(s.failed_attempts, 3);
    assert!(
        store
            .record_failed_code("h-unknown", 3)
            .await
            .unwrap()
            .is_none()
    );
    let mut late = session("h3", SessionState::Pending);
    late.expires_at = Utc::now() - chrono::Duration::seconds(1);
    store.insert_session(&late).await.unwrap();
    assert!(
        store.record_failed_code("h3", 3).await.unwrap().is_none(),
        "an expired pairing counts no wrong codes"
    );
}

async fn only_long_ended_unpaired_sessions_are_purged(backend: Backend) {
    let (store, _db) = store(backend).await;
    let two_hours_ago = Utc::now() - chrono::Duration::hours(2);
    let mut old_pending = session("old-pending", SessionState::Pending);
    old_pending.expires_at = two_hours_ago;
    let mut old_denied = session("old-denied", SessionState::Denied);
    old_denied.expires_at = two_hours_ago;
    let mut old_granted = session("old-granted", SessionState::Granted);
    old_granted.expires_at = two_hours_ago;
    let fresh = session("fresh-pending", SessionState::Pending);
    for s in [&old_pending, &old_denied, &old_granted, &fresh] {
        store.insert_session(s).await.unwrap();
    }
    store
        .purge_unpaired_sessions(Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    assert!(store.session("old-pending").await.unwrap().is_none());
    assert!(store.session("old-denied").await.unwrap().is_none());
    assert!(
        store.session("old-granted").await.unwrap().is_some(),
        "granted sessions stay"
    );
    assert!(store.session("fresh-pending").await.unwrap().is_some());
}

async fn tickets_work_once_and_expire(backend: Backend) {
    let (store, _db) = store(backend).await;
    vault(store.as_ref(), "v-t").await;
    let ticket = |hash: &str, secs: i64| StreamTicket {
        ticket_hash: hash.into(),
        vault_id: "v-t".into(),
        session_hash: Some("s".into()),
        link_hash: None,
        client_id: "c".into(),
        expires_at: Utc::now() + chrono::Duration::seconds(secs),
    };
    store.insert_ticket(&ticket("t-live", 30)).await.unwrap();
    store.insert_ticket(&ticket("t-stale", -1)).await.unwrap();
    let taken = store
        .take_ticket("t-live")
        .await
        .unwrap()
        .expect("the ticket");
    assert_eq!(
        (taken.vault_id.as_str(), taken.client_id.as_str()),
        ("v-t", "c")
    );
    assert!(
        store.take_ticket("t-live").await.unwrap().is_none(),
        "single use"
    );
    assert!(
        store.take_ticket("t-stale").await.unwrap().is_none(),
        "expired"
    );
}

async fn links_are_found_by_secret_hash_and_revoked_once(backend: Backend) {
    let (store, _db) = store(backend).await;
    vault(store.as_ref(), "v-l").await;
    let link = ReadLink {
        link_id: "l-1".into(),
        secret_hash: "secret-hash".into(),
        vault_id: "v-l".into(),
        created_by: "c".into(),
        created_at: Utc::now(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        revoked: false,
    };
    store.insert_link(&link).await.unwrap();
    assert_eq!(
        store
            .link_by_secret_hash("secret-hash")
            .await
            .unwrap()
            .unwrap()
            .link_id,
        "l-1"
    );
    assert!(
        !store.revoke_link("v-other", "l-1").await.unwrap(),
        "only through its vault"
    );
    assert!(store.revoke_link("v-l", "l-1").await.unwrap());
    assert!(!store.revoke_link("v-l", "l-1").await.unwrap());
    assert!(store.links_for_vault("v-l").await.unwrap()[0].revoked);
}

async fn watchers_are_counted_and_withdrawn_with_their_replica(backend: Backend) {
    let (store, _db) = store(backend).await;
    let stale = Duration::from_secs(60);
    store.heartbeat("r1", stale).await.unwrap();
    store.heartbeat("r2", stale).await.unwrap();
    let watcher = |replica: &str, conn: i64, vault: &str| WatcherRecord {
        replica_id: replica.into(),
        conn_id: conn,
        vault_id: vault.into(),
        atem_id: format!("{replica}-{conn}"),
        client_id: "c".into(),
    };
    let mut notices = store.notices();
    // One call records a burst, over two vaults.
    store
        .update_watchers(
            "r1",
            &[
                watcher("r1", 1, "v-w"),
                watcher("r1", 2, "v-w"),
                watcher("r1", 3, "v-x"),
            ],
            &[],
        )
        .await
        .unwrap();
    let mut announced = Vec::new();
    while announced.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), notices.recv())
            .await
            .expect("a presence notice")
            .expect("open channel")
        {
            Notice::Presence { vault_id, by } => announced.push((vault_id, by)),
            Notice::Resync => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    announced.sort();
    assert_eq!(
        announced,
        vec![
            ("v-w".to_string(), Some("r1".to_string())),
            ("v-x".to_string(), Some("r1".to_string()))
        ],
        "each vault once, naming the replica"
    );
    store
        .update_watchers("r2", &[watcher("r2", 1, "v-w")], &[])
        .await
        .unwrap();
    let (listed, count) = store.watchers("v-w", 2).await.unwrap();
    assert_eq!(count, 3);
    assert_eq!(
        listed
            .iter()
            .map(|w| w.atem_id.as_str())
            .collect::<Vec<_>>(),
        vec!["r1-1", "r1-2"],
        "oldest first, cut to the limit"
    );
    // Leaves name connections of their own replica only: r2's conn 1 stays.
    store
        .update_watchers("r1", &[watcher("r1", 4, "v-w")], &[1, 3])
        .await
        .unwrap();
    let (listed, count) = store.watchers("v-w", 10).await.unwrap();
    assert_eq!(count, 3);
    let mut names: Vec<_> = listed.iter().map(|w| w.atem_id.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["r1-2", "r1-4", "r2-1"]);
    assert_eq!(store.watchers("v-x", 10).await.unwrap().1, 0);
    store.forget_replica("r1").await.unwrap();
    let (listed, count) = store.watchers("v-w", 10).await.unwrap();
    assert_eq!(count, 1);
    assert_eq!(listed[0].atem_id, "r2-1");
}

async fn removing_an_astation_revokes_its_sessions(backend: Backend) {
    let (store, _db) = store(backend).await;
    let a = Astation {
        astation_id: "a-x".into(),
        name: "x".into(),
        created_at: vault_relay::store::now(),
    };
    store.create_astation(&a, "token-hash").await.unwrap();
    assert_eq!(
        store.astation_by_token_hash("token-hash").await.unwrap(),
        Some(a.clone())
    );
    let mut s = session("h3", SessionState::Granted);
    s.astation_id = Some("a-x".into());
    store.insert_session(&s).await.unwrap();
    store.delete_astation("a-x").await.unwrap();
    assert_eq!(
        store.session("h3").await.unwrap().unwrap().state,
        SessionState::Revoked
    );
    assert!(
        store
            .astation_by_token_hash("token-hash")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.delete_astation("a-x").await,
        Err(StoreError::AstationNotFound)
    ));
}

async fn a_session_and_a_vault_are_read_together_as_each_alone(backend: Backend) {
    let (store, _db) = store(backend).await;
    let store = store.as_ref();
    vault(store, "v-sv").await;
    store.write_entry(append("v-sv", "x")).await.unwrap();
    let mut granted = session("h-sv", SessionState::Granted);
    granted.astation_id = Some("a-home".into());
    store.insert_session(&granted).await.unwrap();
    let alone = (
        store.session("h-sv").await.unwrap(),
        store.vault("v-sv").await.unwrap(),
    );
    assert!(alone.0.is_some() && alone.1.is_some());
    let together = store.session_and_vault("h-sv", "v-sv").await.unwrap();
    assert_eq!(together.0, alone.0);
    assert_eq!(together.1, alone.1);
    assert_eq!(together.1.as_ref().unwrap().head_seq, 1);
    let (s, v) = store.session_and_vault("h-none", "v-sv").await.unwrap();
    assert!(s.is_none());
    assert_eq!(v, alone.1);
    let (s, v) = store.session_and_vault("h-sv", "v-none").await.unwrap();
    assert_eq!(s, alone.0);
    assert!(v.is_none());
    assert_eq!(
        store.session_and_vault("h-none", "v-none").await.unwrap(),
        (None, None)
    );
}
