//! The stream as server-sent events (`GET /api/vault/<id>/events`), on both
//! stores: the WebSocket's frames as events, resume by `Last-Event-ID`,
//! refusals as JSON, tickets, keepalive comments and close events.

use reqwest::StatusCode;
use serde_json::Value;

use crate::both_stores;
use crate::helpers::{Backend, FRAME_WAIT, TestApp};

both_stores!(
    events_carry_the_same_frames_as_the_websocket,
    last_event_id_resumes_with_no_gap_and_no_duplicate,
    refusals_come_before_the_response_as_json,
    revoking_the_session_sends_a_close_event_and_ends,
    a_ticket_opens_an_event_stream_once_for_its_client_id,
    shutdown_sends_going_away_and_ends,
    idle_event_streams_get_keepalive_comments,
);

/// What an event stream delivered next.
#[derive(Debug, PartialEq)]
enum Sse {
    Event {
        event: String,
        id: Option<String>,
        data: Value,
    },
    Comment(String),
    End,
}

/// A client of an event stream.
pub(crate) struct EventClient {
    response: reqwest::Response,
    buffer: String,
}

impl EventClient {
    /// The next event or comment (each block ends with a blank line).
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                return parse(block.trim_end_matches('\n'));
            }
            let chunk = tokio::time::timeout(FRAME_WAIT, self.response.chunk())
                .await
                .expect("an event within the wait");
            match chunk {
                Ok(Some(bytes)) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8 events")),
                Ok(None) | Err(_) => {
                    assert!(self.buffer.is_empty(), "a partial event: {:?}", self.buffer);
                    return Sse::End;
                }
            }
        }
    }

    /// The next event (comments skipped); panics at the end.
    async fn event(&mut self) -> (String, Option<String>, Value) {
        loop {
            match self.next().await {
                Sse::Event { event, id, data } => return (event, id, data),
                Sse::Comment(_) => {}
                Sse::End => panic!("the event stream ended"),
            }
        }
    }

    /// The next event of a type, skipping others.
    pub(crate) async fn next_of(&mut self, wanted: &str) -> (Option<String>, Value) {
        loop {
            let (event, id, data) = self.event().await;
            if event == wanted {
                return (id, data);
            }
        }
    }
}

fn parse(block: &str) -> Sse {
    let (mut event, mut id, mut data) = (None, None, None);
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            return Sse::Comment(comment.trim().to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            assert!(data.is_none(), "one data line per event: {block}");
            data = Some(serde_json::from_str(v).expect("JSON data"));
        } else {
            panic!("unexpected line {line:?} in {block:?}");
        }
    }
    Sse::Event {
        event: event.expect("an event name"),
        id,
        data: data.expect("data"),
    }
}

impl TestApp {
    /// `GET /api/vault/{vault}/events?id={client}&{query}` with a session
    /// header and extra headers; the refusal's status and JSON otherwise.
    async fn events(
        &self,
        vault: &str,
        session: Option<&str>,
        client: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<EventClient, (StatusCode, Value)> {
        let mut url = format!("{}/api/vault/{vault}/events?id={client}", self.base);
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        // No overall timeout: the stream lives as long as the test wants.
        let client = reqwest::Client::new();
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(s) = session {
            req = req.header("authorization", format!("session {s}"));
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let response = tokio::time::timeout(FRAME_WAIT, req.send())
            .await
            .expect("an answer")
            .expect("the relay answers");
        let status = response.status();
        if status != StatusCode::OK {
            let content_type = response.headers()["content-type"].clone();
            assert_eq!(content_type, "application/json", "refusals are JSON");
            let body: Value = response.json().await.expect("a JSON refusal");
            return Err((status, body));
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        Ok(EventClient {
            response,
            buffer: String::new(),
        })
    }

    pub(crate) async fn open_events(
        &self,
        vault: &str,
        session: &str,
        client: &str,
        query: &str,
    ) -> EventClient {
        match self.events(vault, Some(session), client, query, &[]).await {
            Ok(e) => e,
            Err((status, body)) => panic!("event stream refused: {status} {body}"),
        }
    }
}

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

async fn events_carry_the_same_frames_as_the_websocket(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "plan").await;
    app.write(&v, &s, "c", "one", None).await;
    app.write(&v, &s, "c", "two", None).await;

    let mut ws = app.open_stream(&v, &s, "w", "since=0").await;
    let mut sse = app.open_events(&v, &s, "w", "since=0").await;
    // Both caught up before the live writes, so both see the same story.
    let mut from_ws = Vec::new();
    let mut from_sse = Vec::new();
    loop {
        let f = ws.next_frame().await;
        let done = f["type"] == "caught_up";
        from_ws.push(f);
        if done {
            break;
        }
    }
    loop {
        let (_, _, data) = sse.event().await;
        let done = data["type"] == "caught_up";
        from_sse.push(data);
        if done {
            break;
        }
    }
    app.write(&v, &s, "c", "three", None).await;
    app.write(&v, &s, "c", "one, edited", Some(1)).await;
    app.set_summary(&v, &s, "c", "plan, frozen").await;
    loop {
        let f = ws.next_frame().await;
        let done = f["type"] == "summary";
        from_ws.push(f);
        if done {
            break;
        }
    }
    loop {
        let (event, id, data) = sse.event().await;
        assert_eq!(
            data["type"], event,
            "the event is named after the frame type"
        );
        if event == "entry" {
            assert_eq!(id, Some(seq(&data).to_string()), "entries carry id: <seq>");
        } else {
            assert_eq!(id, None, "only entries carry an id: {data}");
        }
        let done = event == "summary";
        from_sse.push(data);
        if done {
            break;
        }
    }
    // Presence aside (who watches changes as the two join), frame for frame
    // the same: hello, the encryption mode, 2 replayed rows, caught_up,
    // 2 live rows, summary.
    let without_presence = |frames: Vec<Value>| -> Vec<Value> {
        frames
            .into_iter()
            .filter(|f| f["type"] != "presence")
            .collect()
    };
    let (from_ws, from_sse) = (without_presence(from_ws), without_presence(from_sse));
    assert_eq!(from_sse, from_ws);
    let types: Vec<&str> = from_sse
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "hello",
            "encryption",
            "entry",
            "entry",
            "caught_up",
            "entry",
            "entry",
            "summary"
        ]
    );
    let history = app.read(&v, &s, "c", "history=true").await;
    let rows: Vec<Value> = from_sse
        .iter()
        .filter(|f| f["type"] == "entry")
        .map(|f| {
            let mut row = f.clone();
            row.as_object_mut().unwrap().remove("type");
            row
        })
        .collect();
    assert_eq!(rows, history, "every row once, as REST has it");
}

async fn last_event_id_resumes_with_no_gap_and_no_duplicate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(seq(&app.write(&v, &s, "c", &format!("r{i}"), None).await));
    }
    let mut sse = app.open_events(&v, &s, "w", "since=0").await;
    let (id1, _) = sse.next_of("entry").await;
    let (id2, _) = sse.next_of("entry").await;
    assert_eq!(id1, Some(written[0].to_string()));
    let last = id2.expect("an id");
    drop(sse);
    for i in 3..5 {
        written.push(seq(&app.write(&v, &s, "c", &format!("r{i}"), None).await));
    }
    // Last-Event-ID wins over since, as a browser's reconnect sends both.
    let mut sse = app
        .events(&v, Some(&s), "w", "since=0", &[("last-event-id", &last)])
        .await
        .expect("resumed");
    let mut seen = Vec::new();
    loop {
        let (event, id, data) = sse.event().await;
        match event.as_str() {
            "entry" => {
                assert_eq!(id, Some(seq(&data).to_string()));
                seen.push(seq(&data));
            }
            "caught_up" => {
                assert_eq!(data["seq"].as_i64(), written.last().copied());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        written[2..].to_vec(),
        "exactly the rows after the last id"
    );
    let live = seq(&app.write(&v, &s, "c", "live", None).await);
    let (id, data) = sse.next_of("entry").await;
    assert_eq!((id, seq(&data)), (Some(live.to_string()), live));
}

async fn refusals_come_before_the_response_as_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "c", "").await;
    // (session, vault, query, headers, wanted status)
    type Case<'a> = (
        Option<&'a str>,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        StatusCode,
    );
    let cases: Vec<Case> = vec![
        (None, &v, "", vec![], StatusCode::UNAUTHORIZED),
        (Some("s-unknown"), &v, "", vec![], StatusCode::UNAUTHORIZED),
        (Some(&away), &v, "", vec![], StatusCode::FORBIDDEN),
        (
            Some(&home),
            "v-doesnotexist",
            "",
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (Some(&home), &v, "since=-1", vec![], StatusCode::BAD_REQUEST),
        (
            Some(&home),
            &v,
            "",
            vec![("last-event-id", "later")],
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(&home),
            &v,
            "ticket=tk-forged",
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (session, vault, query, headers, want) in cases {
        match app.events(vault, session, "c", query, &headers).await {
            Ok(_) => panic!("{session:?} {vault} {query} {headers:?}: streamed, wanted {want}"),
            Err((status, body)) => {
                assert_eq!(status, want, "{session:?} {vault} {query}: {body}");
                assert!(
                    body["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{body}"
                );
            }
        }
    }
    // A bad resume header is named as the header, not as `since`.
    match app
        .events(&v, Some(&home), "c", "", &[("last-event-id", "later")])
        .await
    {
        Ok(_) => panic!("streamed with a bad Last-Event-ID"),
        Err((_, body)) => {
            let text = body["error"].as_str().unwrap_or_default();
            assert!(
                text.contains("`Last-Event-ID`") && text.contains("later"),
                "{body}"
            );
        }
    }
}

async fn revoking_the_session_sends_a_close_event_and_ends(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut sse = app.open_events(&v, &s, "w", "").await;
    sse.next_of("hello").await;
    let (status, _) = app.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(status, StatusCode::OK);
    let (id, close) = sse.next_of("close").await;
    assert_eq!(id, None);
    assert_eq!(close["code"], 4001, "{close}");
    assert!(close["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(
        close.as_object().map(|o| o.len()),
        Some(2),
        "exactly code and reason: {close}"
    );
    assert_eq!(sse.next().await, Sse::End, "and the stream ends");
}

async fn a_ticket_opens_an_event_stream_once_for_its_client_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let (status, body) = app.ticket(&v, &s, "browser").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().unwrap().to_string();
    let mut sse = app
        .events(&v, None, "browser", &format!("ticket={ticket}"), &[])
        .await
        .expect("the ticket opens the event stream");
    let (_, hello) = sse.next_of("hello").await;
    assert_eq!(hello["vault_id"], v);
    let again = app
        .events(&v, None, "browser", &format!("ticket={ticket}"), &[])
        .await;
    assert_eq!(
        again.err().map(|e| e.0),
        Some(StatusCode::UNAUTHORIZED),
        "single use"
    );
}

async fn shutdown_sends_going_away_and_ends(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut sse = app.open_events(&v, &s, "w", "since=0").await;
    sse.next_of("caught_up").await;
    let stopping = tokio::spawn(app.stop());
    let (_, close) = sse.next_of("close").await;
    assert_eq!(close["code"], 1001, "{close}");
    assert_eq!(sse.next().await, Sse::End);
    stopping.await.unwrap();
}

async fn idle_event_streams_get_keepalive_comments(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.stream_ping_secs = 1).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut sse = app.open_events(&v, &s, "w", "").await;
    loop {
        match sse.next().await {
            Sse::Comment(_) => break,
            Sse::Event { .. } => {}
            Sse::End => panic!("ended"),
        }
    }
    // And the stream is still live after it.
    let r = app.write(&v, &s, "c", "after a comment", None).await;
    let (_, data) = sse.next_of("entry").await;
    assert_eq!(data["seq"], r["seq"]);
}
