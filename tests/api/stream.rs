//! The live stream, on both stores: refusals before the upgrade, hello,
//! replay and live, exactly-once across reconnects, presence, revocation,
//! epochs, tickets, slow readers and shutdown.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(
    refusals_come_before_the_upgrade_as_json,
    a_resume_replays_then_marks_the_end_then_goes_live,
    without_since_the_stream_starts_at_the_head,
    nothing_missed_means_caught_up_at_since,
    every_row_arrives_exactly_once_across_a_reconnect_under_concurrent_writers,
    summary_changes_are_pushed,
    an_entry_at_the_size_limit_streams_intact,
    presence_shows_and_drops_a_non_ascii_watcher,
    presence_is_coalesced_when_many_watchers_join,
    a_newcomer_is_not_told_of_its_own_join_twice,
    revoking_the_session_closes_its_streams,
    removing_the_astation_closes_its_streams,
    a_cursor_from_another_epoch_is_told_to_start_over,
    shutdown_closes_streams_with_going_away,
    a_ticket_opens_one_stream_once,
    a_reader_that_never_reads_does_not_delay_others_and_is_cut_loose,
    a_reader_that_pauses_gets_every_frame_whole_and_in_order,
);

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

async fn refusals_come_before_the_upgrade_as_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "c", "").await;

    let cases: Vec<(Option<&str>, &str, &str, StatusCode)> = vec![
        (None, &v, "", StatusCode::UNAUTHORIZED),
        (Some("s-unknown"), &v, "", StatusCode::UNAUTHORIZED),
        (Some(&away), &v, "", StatusCode::FORBIDDEN),
        (Some(&home), "v-doesnotexist", "", StatusCode::NOT_FOUND),
        (Some(&home), &v, "since=-4", StatusCode::BAD_REQUEST),
        (Some(&home), &v, "since=later", StatusCode::BAD_REQUEST),
        (
            Some(&home),
            &v,
            "ticket=tk-forged",
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (session, vault, query, want) in cases {
        match app.stream(vault, session, "c", query).await {
            Ok(_) => panic!("{session:?} {vault} {query}: upgraded, wanted {want}"),
            Err((status, body)) => {
                assert_eq!(status, want, "{session:?} {vault} {query}: {body}");
                assert!(
                    body["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{body}"
                );
            }
        }
    }
    // A plain GET (no upgrade) from a permitted caller is a 400 in our shape.
    let (status, body) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{v}/stream"),
            &home,
            "c",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("WebSocket"));
}

async fn a_resume_replays_then_marks_the_end_then_goes_live(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "the plan").await;
    let r1 = app.write(&v, &s, "c", "one", None).await;
    let r2 = app.write(&v, &s, "c", "two", None).await;
    let r3 = app.write(&v, &s, "c", "one, v2", Some(1)).await;

    let mut stream = app
        .open_stream(&v, &s, "watcher", &format!("since={}", seq(&r1)))
        .await;
    let hello = stream.next_frame().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["vault_id"], v);
    assert_eq!(hello["summary"], "the plan");
    assert_eq!(hello["head_seq"].as_i64(), Some(seq(&r3)));
    let epoch = hello["epoch"].as_str().expect("epoch").to_string();
    assert!(!epoch.is_empty());

    let replay = stream.entries(2).await;
    assert_eq!(
        replay.iter().map(seq).collect::<Vec<_>>(),
        vec![seq(&r2), seq(&r3)]
    );
    let history = app.read(&v, &s, "c", "history=true").await;
    // Entry frames carry exactly the REST row, plus `type`.
    for frame in &replay {
        let mut row = frame.clone();
        row.as_object_mut().unwrap().remove("type");
        assert!(history.contains(&row), "{row} is a REST row");
    }
    let caught_up = stream.next_of("caught_up").await;
    assert_eq!(caught_up["seq"].as_i64(), Some(seq(&r3)));

    let r4 = app.write(&v, &s, "c", "three", None).await;
    let live = stream.next_of("entry").await;
    assert_eq!(seq(&live), seq(&r4));
    assert_eq!(live["content"], "three");
    assert_eq!(live["entry_no"], 3);
    assert_eq!(live["version"], 1);
    assert_eq!(live["writer_id"], "c");
    assert_eq!(live["kind"], "content");
    stream.close().await;
}

async fn without_since_the_stream_starts_at_the_head(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "old", None).await;
    let r2 = app.write(&v, &s, "c", "older edit", Some(1)).await;

    let mut stream = app.open_stream(&v, &s, "w", "").await;
    let hello = stream.next_frame().await;
    assert_eq!(hello["head_seq"].as_i64(), Some(seq(&r2)));
    let r3 = app.write(&v, &s, "c", "new", None).await;
    // Presence frames (own join, coalesced) and the encryption frame may
    // come first; nothing else may.
    let first = loop {
        let f = stream.next_frame().await;
        if f["type"] != "presence" && f["type"] != "encryption" {
            break f;
        }
    };
    assert_eq!(
        first["type"], "entry",
        "no replay and no caught_up without since: {first}"
    );
    assert_eq!(seq(&first), seq(&r3));
}

async fn nothing_missed_means_caught_up_at_since(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let r = app.write(&v, &s, "c", "x", None).await;
    let mut stream = app
        .open_stream(&v, &s, "w", &format!("since={}", seq(&r)))
        .await;
    assert_eq!(stream.next_frame().await["type"], "hello");
    let next = loop {
        let f = stream.next_frame().await;
        if f["type"] != "presence" && f["type"] != "encryption" {
            break f;
        }
    };
    assert_eq!(next, json!({"type": "caught_up", "seq": seq(&r)}));
    // An empty vault resumed from 0.
    let empty = app.create_vault(&s, "c", "").await;
    let mut stream = app.open_stream(&empty, &s, "w", "since=0").await;
    assert_eq!(stream.next_frame().await["head_seq"], 0);
    assert_eq!(stream.next_of("caught_up").await["seq"], 0);
}

async fn every_row_arrives_exactly_once_across_a_reconnect_under_concurrent_writers(
    backend: Backend,
) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "seed", None).await;

    let mut stream = app.open_stream(&v, &s, "w", "since=0").await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (app, s, v) = (app.clone(), s.clone(), v.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    // Every third write edits the seed entry.
                    let edit = (i % 3 == 0).then_some(1);
                    app.write(&v, &s, &format!("writer-{w}"), &format!("w{w} #{i}"), edit)
                        .await;
                }
            })
        })
        .collect();

    let total = 1 + 4 * 40;
    let mut seen: Vec<i64> = Vec::new();
    // Read part of it, then drop the connection mid-flow.
    while seen.len() < 50 {
        let f = stream.next_frame().await;
        if f["type"] == "entry" {
            seen.push(seq(&f));
        }
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let last = *seen.last().unwrap();
    let mut stream = app.open_stream(&v, &s, "w", &format!("since={last}")).await;
    while seen.len() < total {
        let f = stream.next_frame().await;
        if f["type"] == "entry" {
            seen.push(seq(&f));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let history = app.read(&v, &s, "c", "history=true").await;
    let want: Vec<i64> = history.iter().map(seq).collect();
    assert_eq!(want.len(), total);
    assert_eq!(
        seen, want,
        "every row once, in seq order, across the reconnect"
    );
    // Nothing more arrives: write one more and it is the very next entry.
    let extra = app.write(&v, &s, "c", "extra", None).await;
    assert_eq!(seq(&stream.next_of("entry").await), seq(&extra));
}

async fn an_entry_at_the_size_limit_streams_intact(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "").await;
    stream.next_frame().await;
    // Two-byte characters with an odd-length prefix: the relay's fragments
    // split characters, and the client must still get the exact text.
    let text = format!("x{}", "é".repeat(128 * 1024 - 1));
    assert_eq!(text.len(), 256 * 1024 - 1);
    let r = app.write(&v, &s, "c", &text, None).await;
    let f = stream.next_of("entry").await;
    assert_eq!(f["seq"], r["seq"]);
    assert_eq!(f["content"].as_str(), Some(text.as_str()));
    // And the socket carries on normally afterwards.
    let r = app.write(&v, &s, "c", "small", None).await;
    assert_eq!(stream.next_of("entry").await["seq"], r["seq"]);
}

async fn summary_changes_are_pushed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "before").await;
    let mut stream = app.open_stream(&v, &s, "w", "").await;
    assert_eq!(stream.next_frame().await["summary"], "before");
    app.set_summary(&v, &s, "c", "after").await;
    assert_eq!(
        stream.next_of("summary").await,
        json!({"type": "summary", "summary": "after"})
    );
}

fn watcher_ids(presence: &Value) -> Vec<String> {
    presence["watchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["atem_id"].as_str().unwrap().to_string())
        .collect()
}

async fn presence_shows_and_drops_a_non_ascii_watcher(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    // "東京のマシン #2" percent-encoded: the sanitizer keeps the Japanese,
    // the digit, and drops the space and '#'.
    let encoded = "%E6%9D%B1%E4%BA%AC%E3%81%AE%E3%83%9E%E3%82%B7%E3%83%B3%20%232";
    let mut tokyo = app
        .open_stream(&v, &s, "client-tokyo", &format!("atem_id={encoded}"))
        .await;
    assert_eq!(tokyo.next_frame().await["type"], "hello");
    let own = tokyo.next_of("presence").await;
    assert_eq!(watcher_ids(&own), vec!["東京のマシン2"]);
    assert_eq!(own["watchers"][0]["client_id"], "client-tokyo");
    assert_eq!(own["count"], 1);

    let mut seoul = app
        .open_stream(
            &v,
            &s,
            "client-seoul",
            "atem_id=%EC%84%9C%EC%9A%B8-%EB%85%B8%ED%8A%B8%EB%B6%81",
        )
        .await;
    seoul.next_frame().await;
    let both = seoul.next_of("presence").await;
    assert_eq!(both["count"], 2);
    assert_eq!(watcher_ids(&both), vec!["東京のマシン2", "서울-노트북"]);
    // Tokyo hears of Seoul (coalesced, within a second or so).
    loop {
        let p = tokyo.next_of("presence").await;
        if p["count"] == 2 {
            break;
        }
    }
    tokyo.close().await;
    loop {
        let p = seoul.next_of("presence").await;
        if p["count"] == 1 {
            assert_eq!(watcher_ids(&p), vec!["서울-노트북"]);
            break;
        }
    }
}

async fn presence_is_coalesced_when_many_watchers_join(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut first = app.open_stream(&v, &s, "first", "atem_id=first").await;
    first.next_frame().await;
    assert_eq!(first.next_of("presence").await["count"], 1);
    let started = std::time::Instant::now();
    let mut crowd = Vec::new();
    for i in 0..40 {
        crowd.push(app.open_stream(&v, &s, &format!("c{i}"), "").await);
    }
    // Watch for a while after the crowd arrived: a few frames, the last
    // one counting everybody, instead of one frame per join.
    let mut frames = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_millis(3500);
    while let Ok(event) = tokio::time::timeout_at(deadline.into(), first.next_event()).await {
        match event {
            crate::helpers::StreamEvent::Frame(f) if f["type"] == "presence" => frames.push(f),
            crate::helpers::StreamEvent::Frame(_) => {}
            crate::helpers::StreamEvent::Closed(code, _) => panic!("closed: {code:?}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        (frames.len() as f64) <= seconds + 2.0,
        "{} presence frames in {seconds:.1} s",
        frames.len()
    );
    let last = frames
        .last()
        .expect("a presence frame after the crowd joined");
    assert_eq!(last["count"], 41);
    assert_eq!(last["watchers"].as_array().unwrap().len(), 41);
    assert_eq!(last["watchers"][0]["atem_id"], "first", "oldest first");
}

/// Nothing but pings reaches `client` for `quiet` (the presence period
/// and more).
async fn assert_quiet(client: &mut crate::helpers::StreamClient, quiet: Duration, who: &str) {
    if let Ok(event) = tokio::time::timeout(quiet, client.next_event()).await {
        panic!("{who} got a frame it had already seen: {event:?}");
    }
}

async fn a_newcomer_is_not_told_of_its_own_join_twice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let quiet = Duration::from_millis(2500);
    let mut first = app.open_stream(&v, &s, "first", "atem_id=first").await;
    assert_eq!(first.next_frame().await["type"], "hello");
    assert_eq!(first.next_of("presence").await["count"], 1);
    assert_eq!(first.next_frame().await["type"], "encryption");
    // Its join is announced a moment later; it already showed this.
    assert_quiet(&mut first, quiet, "the first watcher").await;

    // A second watcher: the first hears of it, once; the second's greeting
    // already shows both, and nothing repeats it.
    let mut second = app.open_stream(&v, &s, "second", "atem_id=second").await;
    assert_eq!(second.next_frame().await["type"], "hello");
    assert_eq!(second.next_of("presence").await["count"], 2);
    assert_eq!(second.next_frame().await["type"], "encryption");
    assert_eq!(first.next_of("presence").await["count"], 2);
    assert_quiet(&mut second, quiet, "the second watcher").await;
    assert_quiet(&mut first, Duration::from_millis(100), "the first watcher").await;
}

async fn revoking_the_session_closes_its_streams(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let other = app.session(&token).await;
    let v = app.create_vault(&s, "c", "").await;
    let mut doomed = app.open_stream(&v, &s, "w", "").await;
    let mut survivor = app.open_stream(&v, &other, "w2", "").await;
    doomed.next_frame().await;
    survivor.next_frame().await;
    let (status, _) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doomed.closed().await, Some(4001));
    let r = app.write(&v, &other, "c", "still here", None).await;
    assert_eq!(seq(&survivor.next_of("entry").await), seq(&r));
    assert_eq!(
        app.stream(&v, Some(&s), "w", "").await.err().map(|e| e.0),
        Some(StatusCode::UNAUTHORIZED)
    );
}

async fn removing_the_astation_closes_its_streams(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (astation_id, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "").await;
    stream.next_frame().await;
    app.call(
        Method::DELETE,
        &format!("/api/admin/astations/{astation_id}"),
        Some(&format!("Bearer {}", crate::helpers::ADMIN_TOKEN)),
        None,
    )
    .await;
    assert_eq!(stream.closed().await, Some(4001));
}

async fn a_cursor_from_another_epoch_is_told_to_start_over(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let r1 = app.write(&v, &s, "c", "one", None).await;
    let r2 = app.write(&v, &s, "c", "two", None).await;
    let mut stream = app
        .open_stream(&v, &s, "w", "since=9999&epoch=some-old-epoch")
        .await;
    let hello = stream.next_frame().await;
    let epoch = hello["epoch"].as_str().unwrap();
    let reset = stream.next_of("reset").await;
    assert_eq!(reset, json!({"type": "reset", "epoch": epoch}));
    let replay = stream.entries(2).await;
    assert_eq!(
        replay.iter().map(seq).collect::<Vec<_>>(),
        vec![seq(&r1), seq(&r2)]
    );
    assert_eq!(
        stream.next_of("caught_up").await["seq"].as_i64(),
        Some(seq(&r2))
    );

    // The right epoch resumes normally, with no reset.
    let mut stream = app
        .open_stream(&v, &s, "w", &format!("since={}&epoch={epoch}", seq(&r1)))
        .await;
    stream.next_frame().await;
    loop {
        let f = stream.next_frame().await;
        assert_ne!(f["type"], "reset");
        if f["type"] == "entry" {
            assert_eq!(seq(&f), seq(&r2));
            break;
        }
    }
}

async fn shutdown_closes_streams_with_going_away(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "").await;
    stream.next_frame().await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    assert_eq!(stream.closed().await, Some(1001));
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped promptly"
    );
}

async fn a_ticket_opens_one_stream_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let (status, body) = app.ticket(&v, &s, "browser").await;
    assert_eq!(status, StatusCode::OK);
    let ticket = body["ticket"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    // No Authorization header: the ticket is the credential.
    let mut stream = app
        .stream(&v, None, "browser", &format!("ticket={ticket}"))
        .await
        .expect("the ticket opens the stream");
    assert_eq!(stream.next_frame().await["vault_id"], v);
    let again = app
        .stream(&v, None, "browser", &format!("ticket={ticket}"))
        .await;
    assert_eq!(
        again.err().map(|e| e.0),
        Some(StatusCode::UNAUTHORIZED),
        "single use"
    );
    // A ticket is bound to its vault.
    let other = app.create_vault(&s, "c", "").await;
    let (_, body) = app.ticket(&v, &s, "browser").await;
    let wrong = app
        .stream(
            &other,
            None,
            "browser",
            &format!("ticket={}", body["ticket"].as_str().unwrap()),
        )
        .await;
    assert_eq!(wrong.err().map(|e| e.0), Some(StatusCode::UNAUTHORIZED));
}

async fn a_reader_that_never_reads_does_not_delay_others_and_is_cut_loose(backend: Backend) {
    let app = std::sync::Arc::new(
        TestApp::spawn_with(backend, |c| {
            c.stream_buffer_frames = 16;
            c.stream_send_timeout_ms = 1000;
        })
        .await,
    );
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut stuck = app
        .open_stream_with_small_receive_buffer(&v, &s, "stuck")
        .await;
    let mut reader = app.open_stream(&v, &s, "reader", "").await;
    reader.next_frame().await;

    // ~24 MB of entries: far more than the socket buffers between the relay
    // and the stuck client hold.
    let big = "x".repeat(96 * 1024);
    let rows = 250;
    let writer = {
        let (app, s, v, big) = (app.clone(), s.clone(), v.clone(), big.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            for _ in 0..rows {
                app.write(&v, &s, "c", &big, None).await;
            }
            started.elapsed()
        })
    };
    let mut got = HashSet::new();
    while got.len() < rows {
        let f = reader.next_of("entry").await;
        assert_eq!(f["content"].as_str().map(str::len), Some(big.len()));
        got.insert(seq(&f));
    }
    writer.await.unwrap();
    // Stay stuck well past the 1 s send timeout: a client that starts
    // reading again in time is not stuck.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The stuck reader is closed by the server (4000: resume with since), or
    // its connection is dropped once the close frame cannot be written.
    let mut frames = 0;
    let code = loop {
        match stuck.next_event().await {
            crate::helpers::StreamEvent::Frame(_) => frames += 1,
            crate::helpers::StreamEvent::Closed(code, _) => break code,
        }
    };
    assert!(code.is_none() || code == Some(4000), "closed with {code:?}");
    assert!(
        frames < rows + 2,
        "it did not get everything queued for it ({frames} frames)"
    );
}

/// A reader that stops reading for a while, then reads again, gets every
/// row whole and in order: the relay's writes to it stop part-way through
/// frames (its receive buffer is tiny and the rows are of odd sizes) and
/// carry on from there, and the rows it fell behind on come from the store.
async fn a_reader_that_pauses_gets_every_frame_whole_and_in_order(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.stream_buffer_frames = 16;
        c.stream_send_timeout_ms = 30_000;
    })
    .await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut paused = app
        .open_stream_with_small_receive_buffer(&v, &s, "paused")
        .await;
    assert_eq!(paused.next_frame().await["type"], "hello");
    // About 4.5 MB: more than the socket buffers between them hold.
    let mut written = Vec::new();
    for i in 0..200 {
        let text = format!("{i}:{}", "y".repeat(20_000 + i * 37));
        let r = app.write(&v, &s, "c", &text, None).await;
        written.push((seq(&r), text));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (want, text) in &written {
        let f = paused.next_of("entry").await;
        assert_eq!(seq(&f), *want);
        assert_eq!(f["content"].as_str(), Some(text.as_str()), "row {want}");
    }
    // And it is live again.
    let r = app.write(&v, &s, "c", "after", None).await;
    assert_eq!(seq(&paused.next_of("entry").await), seq(&r));
}

/// Stream opens take turns with their checks (a share of the database pool,
/// here one connection of two): a crowd opening at once all get their
/// hello, none waits for ever behind another, and a REST read made in the
/// middle of the crowd is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_opens_takes_turns_and_every_open_gets_its_hello() {
    let app = std::sync::Arc::new(
        TestApp::spawn_with(Backend::Postgres, |c| c.database_max_connections = 2).await,
    );
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "c", "before the crowd", None).await;
    let crowd: Vec<_> = (0..30)
        .map(|i| {
            let (app, s, v) = (app.clone(), s.clone(), v.clone());
            tokio::spawn(async move {
                let mut stream = app.open_stream(&v, &s, &format!("c{i}"), "").await;
                let hello = stream.next_frame().await;
                (hello, stream)
            })
        })
        .collect();
    let read = app.read(&v, &s, "c", "").await;
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["content"], "before the crowd", "{read:?}");
    let mut streams = Vec::new();
    for open in crowd {
        let (hello, stream) = tokio::time::timeout(Duration::from_secs(30), open)
            .await
            .expect("every open gets its turn")
            .unwrap();
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["vault_id"], v.as_str());
        streams.push(stream);
    }
    assert_eq!(streams.len(), 30);
}
