//! Postgres only: a change of mode and the writes it races with, step by
//! step under real locks.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use super::*;
use crate::helpers::{Backend, TestApp};

/// Waits until some backend of the test database waits for a lock, running
/// a statement that contains `needle`.
async fn until_waiting_on_lock(conn: &mut sqlx::PgConnection, needle: &str) {
    let deadline = tokio::time::Instant::now() + crate::helpers::FRAME_WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'
               and query like '%' || $1 || '%'",
        )
        .bind(needle)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody waits on a lock running {needle}"
        );
        tokio::task::yield_now().await;
    }
}

/// A plaintext write still in flight holds the mode row: the change of mode
/// waits for it to commit, and then its gate counts what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_change_of_mode_waits_for_a_write_in_flight_and_counts_it() {
    use sqlx::Connection;
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    move_to(&app, &token, "disabling", None).await;

    let db = app.db.clone().expect("a database");
    let mut writer = db.connect().await;
    let mut tx = writer.begin().await.unwrap();
    sqlx::query("select * from vault_write($1, null, 'raw', 'plaintext in flight')")
        .bind(&v)
        .execute(&mut *tx)
        .await
        .unwrap();
    let change = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { set_mode(&app, &token, "enabling", None).await })
    };
    let mut watcher = db.connect().await;
    until_waiting_on_lock(&mut watcher, "for update").await;
    assert!(!change.is_finished(), "the change waits for the write");
    tx.commit().await.unwrap();
    let (status, body) = change.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = set_mode(&app, &token, "on", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error(&body).contains("1 plaintext and 0 obsolete fields remain"),
        "{body}"
    );
}

/// A write that starts while a change of mode holds the mode row waits for
/// it, then checks the new mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_write_during_a_change_of_mode_checks_the_new_mode() {
    use sqlx::Connection;
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (astation, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    move_to(&app, &token, "disabling", None).await;

    let db = app.db.clone().expect("a database");
    let mut changer = db.connect().await;
    let mut tx = changer.begin().await.unwrap();
    sqlx::query("select mode from encryption_modes where work_session = $1 for update")
        .bind(&astation)
        .execute(&mut *tx)
        .await
        .unwrap();
    let write = {
        let (app, s, v) = (app.clone(), s.clone(), v.clone());
        tokio::spawn(async move {
            app.try_write(&v, &s, "c", json!({"text": "plaintext"}))
                .await
        })
    };
    let mut watcher = db.connect().await;
    until_waiting_on_lock(&mut watcher, "vault_write").await;
    assert!(!write.is_finished(), "the write waits for the change");
    sqlx::query(
        "update encryption_modes set mode = 'enabling', updated_at = now() where work_session = $1",
    )
    .bind(&astation)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (status, body) = write.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error(&body).contains("does not match the encryption mode (enabling)"),
        "{body}"
    );
    assert!(
        app.read(&v, &s, "c", "history=true").await.is_empty(),
        "nothing written"
    );
}
