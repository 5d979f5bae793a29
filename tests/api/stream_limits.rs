//! What a stream's client may not do, on both stores: flood pings without
//! reading (the relay's output stays bounded and the client is closed),
//! send a message over 64 KiB (1009), or send more frames per second than
//! allowed (1008); and what it may: ping while it does not read, and get
//! every pong and row whole once it reads again. Stream opens take turns
//! and give them back after their greeting, not their replay. Limits are
//! set explicitly per test.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::both_stores;
use crate::helpers::{Backend, FRAME_WAIT, TestApp};

both_stores!(
    a_ping_flood_that_never_reads_is_answered_within_the_bound_and_closed,
    a_message_over_64_kib_closes_with_1009,
    too_many_frames_per_second_close_with_1008,
    a_client_within_its_frame_allowance_keeps_its_stream,
    pongs_and_rows_to_a_client_that_pauses_arrive_whole,
    every_stream_open_gives_its_turn_back,
    every_stream_open_gives_its_check_back,
    a_replay_does_not_hold_up_the_next_open,
    a_clients_close_is_answered_with_its_code,
);

type Ws = WebSocketStream<TcpStream>;

/// Opens a stream over a plain socket (`query` is appended as is);
/// `receive_buffer` pins the client's kernel receive buffer (no
/// autotuning) for a client that will not read.
async fn connect(
    app: &TestApp,
    vault: &str,
    session: &str,
    client: &str,
    query: &str,
    receive_buffer: Option<u32>,
) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let tcp = socket.connect(app.addr).await.expect("connect");
    let url = format!(
        "ws://{}/api/vault/{vault}/stream?id={client}{query}",
        app.addr
    );
    let mut request = url.into_client_request().expect("stream request");
    request.headers_mut().insert(
        "authorization",
        format!("session {session}").parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("stream accepted");
    ws
}

/// The next message; panics when none comes within the wait, the stream
/// ends or the bytes are not a WebSocket message.
async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(FRAME_WAIT, ws.next())
        .await
        .expect("a message within the wait")
        .expect("the stream stays open")
        .expect("a well-formed message")
}

/// The next text frame (the hello, first): the stream has joined the vault.
async fn next_text(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = next_message(ws).await;
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

/// What a client reads until the relay ends the stream.
#[derive(Debug, Default)]
struct Outcome {
    texts: usize,
    pongs: usize,
    close: Option<u16>,
}

async fn read_to_end(ws: &mut Ws) -> Outcome {
    let mut out = Outcome::default();
    loop {
        let msg = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("the relay ends the stream (so far: {out:?})"));
        match msg {
            Some(Ok(Message::Text(_))) => out.texts += 1,
            Some(Ok(Message::Pong(_))) => out.pongs += 1,
            Some(Ok(Message::Close(c))) => {
                out.close = c.map(|c| u16::from(c.code));
                return out;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return out,
        }
    }
}

/// A relay that closes a client only once a write to it has waited
/// `send_timeout_ms`, and a stream to it from a client with a 16 KB receive
/// buffer: the relay, (session, vault) and the socket.
async fn pinging_client(backend: Backend, send_timeout_ms: u64) -> (TestApp, (String, String), Ws) {
    let app = TestApp::spawn_with(backend, |c| {
        c.stream_send_timeout_ms = send_timeout_ms;
        // The frame limit would close it first; these tests are about
        // output.
        c.stream_max_client_frames_per_sec = 0;
        // Nothing of the relay's own may be sent while the client pings:
        // only the pongs can make it notice the client is stuck.
        c.stream_ping_secs = 3600;
    })
    .await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let ws = connect(&app, &v, &s, "pinger", "", Some(16 * 1024)).await;
    (app, (s, v), ws)
}

async fn a_ping_flood_that_never_reads_is_answered_within_the_bound_and_closed(backend: Backend) {
    let (app, (s, v), mut ws) = pinging_client(backend, 1000).await;
    // The greeting (hello, presence, the encryption mode); after it the
    // vault is quiet (the presence our own join causes is not sent again).
    assert_eq!(next_text(&mut ws).await["type"], "hello");
    assert_eq!(next_text(&mut ws).await["type"], "presence");
    assert_eq!(next_text(&mut ws).await["type"], "encryption");
    // Pings with the largest payload, far more than the kernel buffers
    // between us hold in pongs (about 5 MB on loopback): the relay answers
    // until its output is stuck, then stops reading and closes us. Send
    // until it stops taking them or all are sent.
    let payload = Bytes::from(vec![b'p'; 125]);
    let pings = 200_000;
    let mut sent = 0;
    while sent < pings {
        let step = ws.feed(Message::Ping(payload.clone()));
        // Keep trying well past the relay's 1 s send timeout: a client that
        // resumed reading in time would not be stuck.
        match tokio::time::timeout(Duration::from_secs(4), step).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    // Only now read: whatever reached us, then the end.
    let out = read_to_end(&mut ws).await;
    // A relay that queued a pong per ping would deliver every one of them
    // now that we read; a bounded one dropped what it could not send.
    assert!(
        out.pongs < sent / 2,
        "{} pongs for {sent} pings: the relay's output is bounded",
        out.pongs
    );
    assert!(
        out.close.is_none() || out.close == Some(4000),
        "closed as a stuck client (or dropped once not even the close frame fit): {out:?}"
    );
    // The relay serves others as before.
    let mut other = app.open_stream(&v, &s, "other", "").await;
    other.next_frame().await;
    let r = app.write(&v, &s, "c", "after the flood", None).await;
    assert_eq!(other.next_of("entry").await["seq"], r["seq"]);
}

async fn a_message_over_64_kib_closes_with_1009(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut ws = connect(&app, &v, &s, "big", "", None).await;
    next_text(&mut ws).await;
    // Exactly 64 KiB is still accepted (and ignored).
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .expect("send");
    let r = app.write(&v, &s, "c", "still open", None).await;
    loop {
        let msg = next_message(&mut ws).await;
        if let Message::Text(t) = msg
            && t.contains("still open")
        {
            let frame: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(frame["seq"], r["seq"]);
            break;
        }
    }
    ws.send(Message::Text("x".repeat(64 * 1024 + 1).into()))
        .await
        .expect("send");
    let out = read_to_end(&mut ws).await;
    assert_eq!(out.close, Some(1009), "{out:?}");
}

async fn too_many_frames_per_second_close_with_1008(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.stream_max_client_frames_per_sec = 10).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut ws = connect(&app, &v, &s, "chatty", "", None).await;
    // Pings count like any frame; 40 at once is four times the allowance.
    for _ in 0..40 {
        if ws.send(Message::Ping(Bytes::new())).await.is_err() {
            break;
        }
    }
    let out = read_to_end(&mut ws).await;
    assert_eq!(out.close, Some(1008), "{out:?}");
    assert!(out.pongs <= 10, "at most the allowance answered: {out:?}");
}

async fn a_client_within_its_frame_allowance_keeps_its_stream(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.stream_max_client_frames_per_sec = 10).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut ws = connect(&app, &v, &s, "polite", "", None).await;
    next_text(&mut ws).await;
    for _ in 0..8 {
        ws.send(Message::Ping(Bytes::new())).await.expect("send");
    }
    let r = app.write(&v, &s, "c", "for the polite", None).await;
    // The row and (at least the newest ping's) pong arrive, in either order.
    let (mut pongs, mut entry) = (0, false);
    while !entry || pongs == 0 {
        let msg = next_message(&mut ws).await;
        match msg {
            Message::Pong(_) => pongs += 1,
            Message::Text(t) if t.contains("for the polite") => {
                let frame: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(frame["seq"], r["seq"]);
                entry = true;
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    assert!(pongs >= 1, "pings are answered");
}

/// A client that pings while it does not read gets every pong and the
/// rows that came meanwhile whole once it reads again: when the socket is
/// full a pong (written by the library) can be cut part-way, and a row
/// (written by the relay itself) must wait for the rest of it.
async fn pongs_and_rows_to_a_client_that_pauses_arrive_whole(backend: Backend) {
    let (app, (s, v), mut ws) = pinging_client(backend, 30_000).await;
    assert_eq!(next_text(&mut ws).await["type"], "hello");
    // Ping until the relay stops reading: its socket is full of pongs, the
    // last of them cut part-way.
    let payload = Bytes::from(vec![b'p'; 125]);
    let mut pings = 0;
    while pings < 200_000 {
        let ping = ws.feed(Message::Ping(payload.clone()));
        match tokio::time::timeout(Duration::from_millis(500), ping).await {
            Ok(Ok(())) => pings += 1,
            _ => break,
        }
    }
    // Rows meanwhile.
    let mut seqs = Vec::new();
    for i in 0..3 {
        let row = app
            .write(&v, &s, "c", &"r".repeat(700 + i * 13), None)
            .await;
        seqs.push(row["seq"].as_i64().expect("seq"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut entries = Vec::new();
    let mut pongs = 0;
    while entries.len() < seqs.len() {
        let msg = next_message(&mut ws).await;
        match msg {
            Message::Text(t) => {
                let frame: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                if frame["type"] == "entry" {
                    entries.push(frame["seq"].as_i64().expect("seq"));
                }
            }
            Message::Pong(p) => {
                assert_eq!(p, payload, "a pong carries its ping's payload");
                pongs += 1;
            }
            _ => {}
        }
    }
    assert_eq!(entries, seqs, "every row once, in order");
    assert!(pongs > 1000, "{pongs} pongs for {pings} pings");
}

/// With one turn for all, every open gives it back: a refused one at once,
/// an accepted one after its greeting (else the next open never goes).
async fn every_stream_open_gives_its_turn_back(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.stream_max_opening = 1).await;
    refused_then_twelve_opens_all_get_their_hello(&app).await;
}

/// With one open checking at a time (and turns to spare), every open gives
/// its check back too, refused or not.
async fn every_stream_open_gives_its_check_back(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.stream_max_checking = 1).await;
    refused_then_twelve_opens_all_get_their_hello(&app).await;
}

/// Two refused opens (a wrong session, a vault that does not exist), then
/// twelve at once: each of the twelve gets its hello within the wait.
async fn refused_then_twelve_opens_all_get_their_hello(app: &TestApp) {
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "turns").await;
    let answered = |open| async move {
        tokio::time::timeout(FRAME_WAIT, open)
            .await
            .expect("a refused open is answered within the wait")
    };
    let refused = answered(app.stream(&v, Some("not-a-session"), "stranger", "")).await;
    let (status, body) = refused.err().expect("a wrong session is refused");
    assert_eq!(status, 401, "{body}");
    let missing = answered(app.stream("v-nosuchvault", Some(&s), "c", "")).await;
    let (status, body) = missing
        .err()
        .expect("a vault that does not exist is refused");
    assert_eq!(status, 404, "{body}");
    let opens = (0..12).map(|i| {
        let (v, s) = (v.clone(), s.clone());
        async move {
            let mut stream = app.open_stream(&v, &s, &format!("c{i}"), "").await;
            stream.next_frame().await
        }
    });
    let opened = tokio::time::timeout(FRAME_WAIT, futures_util::future::join_all(opens))
        .await
        .expect("every open gets its turn");
    for hello in opened {
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["vault_id"], v.as_str());
        assert_eq!(hello["summary"], "turns");
    }
}

/// A turn ends with the greeting, not the replay: a client far behind that
/// does not read, its replay stuck on a full socket, leaves the next open
/// free to go.
async fn a_replay_does_not_hold_up_the_next_open(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.stream_max_opening = 1;
        // Long enough that only a turn given back lets the next open in.
        c.stream_send_timeout_ms = 60_000;
    })
    .await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    // 8 MiB of rows: more than the kernel's buffers on both ends hold.
    let text = "r".repeat(64 * 1024);
    for _ in 0..128 {
        app.write(&v, &s, "c", &text, None).await;
    }
    let mut behind = connect(&app, &v, &s, "behind", "&since=0", Some(16 * 1024)).await;
    assert_eq!(next_text(&mut behind).await["type"], "hello");
    // The replay is under way and stuck; the next open goes all the same.
    let next = async {
        let mut stream = app.open_stream(&v, &s, "next", "").await;
        stream.next_frame().await
    };
    let hello = tokio::time::timeout(FRAME_WAIT, next)
        .await
        .expect("the next open is not held up by the replay");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["head_seq"], 128);
    // And the client behind still gets every row once it reads.
    let mut rows = 0;
    while rows < 128 {
        let frame = next_text(&mut behind).await;
        if frame["type"] == "entry" {
            rows += 1;
            assert_eq!(frame["seq"], rows);
        }
    }
    assert_eq!(next_text(&mut behind).await["type"], "caught_up");
}

/// A client's close is answered with its code (the close handshake), and
/// a client that breaks the protocol is told which rule it broke.
async fn a_clients_close_is_answered_with_its_code(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    for code in [1000u16, 1001, 4000] {
        let mut ws = connect(&app, &v, &s, "closer", "", None).await;
        assert_eq!(next_text(&mut ws).await["type"], "hello");
        ws.send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: "done".into(),
            },
        )))
        .await
        .expect("send the close");
        // The relay answers the close handshake with the same code.
        let answer = loop {
            match tokio::time::timeout(FRAME_WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Close(c)))) => break c.map(|c| u16::from(c.code)),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame back for {code}: {other:?}"),
            }
        };
        assert_eq!(answer, Some(code));
    }
    // Frames that break the protocol close with its code: an unmasked frame
    // (1002), a text message that is not UTF-8 (1007; masked with zeros).
    for (raw, want) in [
        (vec![0x81u8, 0x02, b'h', b'i'], 1002u16),
        (vec![0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe], 1007),
    ] {
        let mut ws = connect(&app, &v, &s, "breaker", "", None).await;
        assert_eq!(next_text(&mut ws).await["type"], "hello");
        tokio::io::AsyncWriteExt::write_all(ws.get_mut(), &raw)
            .await
            .expect("raw frame");
        let got = read_to_end(&mut ws).await;
        assert_eq!(got.close, Some(want), "{raw:?}: {got:?}");
    }
}
