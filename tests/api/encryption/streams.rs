//! Streams: encryption frames, and rewritten rows arriving once more.

use serde_json::json;

use super::*;
use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    a_stream_open_across_a_rewrite_sees_each_row_once_more,
    streams_announce_the_mode_after_hello_and_on_every_change,
);

async fn a_stream_open_across_a_rewrite_sees_each_row_once_more(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let r1 = app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;
    app.write(&v, &s, "c", "one, edited", Some(1)).await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    // One stream replays from the first row, one starts at the head.
    let mut replaying = app
        .open_stream(&v, &s, "w1", &format!("since={}", seq(&r1)))
        .await;
    let mut live = app.open_stream(&v, &s, "w2", "").await;
    replaying.next_of("caught_up").await;
    live.next_of("encryption").await;

    let answer = migrate_vault(&app, &v, &s, "c", seal_all(KID)).await;
    assert_eq!(answer["rewritten"], 3);
    let history = app.read(&v, &s, "c", "history=true").await;
    for stream in [&mut replaying, &mut live] {
        let rows = stream.entries(3).await;
        for (frame, row) in rows.iter().zip(&history) {
            let mut frame = frame.clone();
            frame.as_object_mut().unwrap().remove("type");
            assert_eq!(&frame, row, "each rewritten row once, as stored");
        }
        let summary = stream.next_of("summary").await;
        assert_eq!(summary["summary"], "", "the rewritten (empty) summary");
    }
    // A new write arrives next, nothing rewritten twice in between.
    let r = app.write(&v, &s, "c", &seal(KID, "four"), None).await;
    for stream in [&mut replaying, &mut live] {
        assert_eq!(seq(&stream.next_of("entry").await), seq(&r));
    }
    // A resume from before the rewrite sees each row once, in the new order.
    let mut resumed = app
        .open_stream(&v, &s, "w3", &format!("since={}", seq(&r1)))
        .await;
    let replay = resumed.entries(4).await;
    let seqs: Vec<i64> = replay.iter().map(seq).collect();
    let want: Vec<i64> = history.iter().map(seq).chain([seq(&r)]).collect();
    assert_eq!(seqs, want);
    assert_eq!(
        resumed.next_of("caught_up").await["seq"].as_i64(),
        Some(seq(&r))
    );
}

async fn streams_announce_the_mode_after_hello_and_on_every_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let (_, other_token, other) = app.work_session("elsewhere").await;
    let v = app.create_vault(&s, "c", "").await;
    let theirs = app.create_vault(&other, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "since=0").await;
    let mut bystander = app.open_stream(&theirs, &other, "w", "").await;
    assert_eq!(stream.next_frame().await["type"], "hello");
    let first = loop {
        let f = stream.next_frame().await;
        if f["type"] != "presence" {
            break f;
        }
    };
    assert_eq!(
        first,
        json!({"type": "encryption", "mode": "off", "kid": null}),
        "right after hello"
    );
    assert_eq!(stream.next_of("caught_up").await["seq"], 0);
    assert_eq!(
        bystander.next_of("encryption").await,
        json!({"type": "encryption", "mode": "off", "kid": null})
    );

    move_to(&app, &token, "enabling", Some(KID)).await;
    assert_eq!(
        stream.next_of("encryption").await,
        json!({"type": "encryption", "mode": "enabling", "kid": KID})
    );
    move_to(&app, &token, "on", None).await;
    assert_eq!(
        stream.next_of("encryption").await,
        json!({"type": "encryption", "mode": "on", "kid": KID})
    );
    // A no-op announces nothing; the next change does.
    move_to(&app, &token, "on", None).await;
    move_to(&app, &token, "disabling", None).await;
    assert_eq!(
        stream.next_of("encryption").await,
        json!({"type": "encryption", "mode": "disabling", "kid": KID})
    );
    // The other work session's change reaches only its own vaults' streams.
    move_to(&app, &other_token, "enabling", Some(NEW_KID)).await;
    assert_eq!(
        bystander.next_of("encryption").await,
        json!({"type": "encryption", "mode": "enabling", "kid": NEW_KID})
    );
    app.write(&v, &s, "c", "marker", None).await;
    let next = loop {
        let f = stream.next_frame().await;
        if f["type"] != "presence" {
            break f;
        }
    };
    assert_eq!(
        next["type"], "entry",
        "no frame for the other work session: {next}"
    );
}

/// Two relays on one database: a change of mode and a rewrite made through
/// one reach the streams open on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mode_changes_and_rewrites_reach_streams_on_every_replica() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().expect("a database")).await;
    let (_, token, s) = a.work_session("home").await;
    let v = a.create_vault(&s, "c", "plan").await;
    a.write(&v, &s, "c", "one", None).await;
    let mut on_b = b.open_stream(&v, &s, "w", "").await;
    assert_eq!(
        on_b.next_of("encryption").await,
        json!({"type": "encryption", "mode": "off", "kid": null})
    );
    move_to(&a, &token, "enabling", Some(KID)).await;
    assert_eq!(
        on_b.next_of("encryption").await,
        json!({"type": "encryption", "mode": "enabling", "kid": KID})
    );
    migrate_vault(&a, &v, &s, "c", seal_all(KID)).await;
    let history = a.read(&v, &s, "c", "history=true").await;
    let mut row = on_b.next_of("entry").await;
    row.as_object_mut().unwrap().remove("type");
    assert_eq!(row, history[0]);
    let summary = on_b.next_of("summary").await;
    assert_eq!(open(summary["summary"].as_str().unwrap()), "plan");
}
