//! Generated hostile input against the real relay, on both stores: paths,
//! query strings, headers and bodies of every route, sent as raw bytes.
//! Properties: never a 5xx, every 4xx is JSON `{"error"}` with
//! `Content-Type: application/json`, every request is answered (a panic
//! would drop the connection), and the rows written before read back
//! identical afterwards.

use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};
use crate::raw::exchange;

/// Cases per store: enough to cover every route with odd input several
/// times, few enough to keep the suite quick.
const CASES: u32 = 400;

/// The identities the generator may use. A separate observer (another
/// astation, session and vault) is never handed to it: its data must not
/// change at all.
#[derive(Clone, Debug)]
struct World {
    session: String,
    astation_token: String,
    astation_id: String,
    vault: String,
    link_secret: String,
    link_id: String,
    pending: String,
}

#[derive(Clone, Debug)]
enum Auth {
    None,
    Session,
    Astation,
    Admin,
    Link,
    /// A scheme and secret of any bytes a header value may hold.
    Random(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Hostile {
    method: &'static str,
    path: String,
    query: String,
    auth: Auth,
    content_type: Option<&'static str>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Bytes as `%XX` escapes: any byte can reach the relay this way, while the
/// request line stays one hyper parses.
fn percent_encoded(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "%{b:02X}");
        s
    })
}

/// A path segment: one of the world's real ids, or anything.
fn segment(ids: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(ids),
        2 => "[A-Za-z0-9_.~-]{0,24}",
        2 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| percent_encoded(&b)),
        1 => "[a-z]{250,400}",
        1 => prop::sample::select(vec![
            "..".to_string(), "%2e%2e".into(), "%00".into(), "%2F".into(), "%ff".into(),
            "v-".into(), "%E4%BD%A0".into(), "".into(),
        ]),
    ]
}

/// A method and path: mostly a route the relay has with a method it takes
/// (so the input reaches the route's own parsing), sometimes any method on
/// any path, including paths the relay does not have.
fn route(world: &World) -> impl Strategy<Value = (&'static str, String)> + use<> {
    let ids = vec![
        world.vault.clone(),
        world.session.clone(),
        world.astation_id.clone(),
        world.link_id.clone(),
        world.pending.clone(),
    ];
    let seg = || segment(ids.clone());
    let on =
        |method: &'static str, path: BoxedStrategy<String>| path.prop_map(move |p| (method, p));
    let vault = |suffix: &'static str| {
        seg()
            .prop_map(move |v| format!("/api/vault/{v}{suffix}"))
            .boxed()
    };
    let session = |suffix: &'static str| {
        seg()
            .prop_map(move |s| format!("/api/sessions/{s}{suffix}"))
            .boxed()
    };
    let fixed = |p: &'static str| Just(p.to_string()).boxed();
    let known = prop_oneof![
        on("POST", fixed("/api/vault")),
        on("GET", fixed("/api/vault")),
        on("GET", vault("")),
        on("POST", vault("")),
        on("POST", vault("/summary")),
        on("GET", vault("/info")),
        on("GET", vault("/stream")),
        on("POST", vault("/stream-ticket")),
        on("POST", vault("/links")),
        on("POST", vault("/encryption")),
        on("GET", fixed("/api/encryption")),
        on("POST", fixed("/api/encryption")),
        on("GET", vault("/links")),
        on(
            "DELETE",
            (seg(), seg())
                .prop_map(|(v, l)| format!("/api/vault/{v}/links/{l}"))
                .boxed()
        ),
        on("POST", fixed("/api/sessions")),
        on("DELETE", session("")),
        on("GET", session("/status")),
        on("POST", session("/grant")),
        on("POST", session("/deny")),
        on("POST", fixed("/api/admin/astations")),
        on("GET", fixed("/api/admin/astations")),
        on(
            "DELETE",
            seg()
                .prop_map(|a| format!("/api/admin/astations/{a}"))
                .boxed()
        ),
        on("GET", fixed("/health")),
        on("GET", fixed("/metrics")),
        on("POST", fixed("/mcp")),
    ];
    let anywhere = prop_oneof![
        vault(""),
        vault("/summary"),
        session("/grant"),
        prop::sample::select(vec!["/api", "/api/", "/", "/index.html", "/app.js", "/mcp"])
            .prop_map(str::to_string),
        prop::collection::vec(seg(), 1..5).prop_map(|s| format!("/{}", s.join("/"))),
        prop::collection::vec(seg(), 1..4).prop_map(|s| format!("/api/{}", s.join("/"))),
    ];
    let any_method = prop::sample::select(vec![
        "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS",
    ]);
    prop_oneof![
        4 => known,
        1 => (any_method, anywhere),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "id", "since", "history", "ticket", "epoch", "atem_id", "limit", "after",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
        prop::collection::vec(any::<u8>(), 1..6).prop_map(|b| percent_encoded(&b)),
    ];
    let value = prop_oneof![
        "[A-Za-z0-9_-]{0,16}",
        "-?[0-9]{1,25}",
        prop::sample::select(vec![
            "true", "false", "", "%ff", "%fe%ff", "%00", "+", "%2B"
        ])
        .prop_map(str::to_string),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| percent_encoded(&b)),
    ];
    // `wait` only with values that are refused at once: a valid one holds a
    // long poll for up to a minute.
    let wait = (
        Just("wait".to_string()),
        prop::option::of(
            prop::sample::select(vec!["0", "61", "-1", "abc", "%ff", "1e3", ""])
                .prop_map(str::to_string),
        ),
    );
    let pair = prop_oneof![6 => (key, prop::option::of(value)), 1 => wait];
    let pairs = prop::collection::vec(pair, 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    // Vault routes need `?id=`: usually give one, so the rest is parsed.
    (any::<bool>(), pairs).prop_map(|(with_id, rest)| match (with_id, rest.is_empty()) {
        (true, true) => "id=c-gen".to_string(),
        (true, false) => format!("id=c-gen&{rest}"),
        (false, _) => rest,
    })
}

/// Bytes a header value may carry on the wire: visible ASCII, space, tab
/// and obs-text (hyper refuses control bytes itself, before the relay).
fn header_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff],
        0..64,
    )
    .prop_map(|mut v| {
        // Leading and trailing whitespace is trimmed by the parser; keep
        // the value what the test says it is.
        while v.first().is_some_and(|b| b.is_ascii_whitespace()) {
            v.remove(0);
        }
        v
    })
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        2 => Just(Auth::None),
        4 => Just(Auth::Session),
        2 => Just(Auth::Astation),
        2 => Just(Auth::Admin),
        1 => Just(Auth::Link),
        2 => (
            prop::sample::select(vec!["session ", "Bearer ", "link ", "Basic ", "", "session"]),
            header_value_bytes(),
        )
            .prop_map(|(scheme, secret)| {
                let mut v = scheme.as_bytes().to_vec();
                v.extend(secret);
                Auth::Random(v)
            }),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[\\x00-\\x1f]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "summary",
                        "text",
                        "entry_id",
                        "hostname",
                        "otp",
                        "name",
                        "expires_in_secs",
                        "mode",
                        "kid",
                        "entries",
                    ])
                    .prop_map(str::to_string),
                    ".{0,8}",
                ],
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::sample::select(vec![
            "{", "{\"text\": \"\\ud800\"}", "{\"text\": \"a\\u0000b\"}", "[[[[[[[[[[[[[[[[",
            "{\"entry_id\": 1e400}", "{\"text\": 1}", "", "null", "{\"summary\": \"x\"} trailing",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (1usize..40).prop_map(|depth| {
            format!("{}{}", "[".repeat(depth * 10), "]".repeat(depth * 10)).into_bytes()
        }),
    ]
}

fn hostile(world: &World) -> impl Strategy<Value = Hostile> + use<> {
    (
        route(world),
        query(),
        auth(),
        prop::sample::select(vec![
            Some("application/json"),
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/problem+json"),
            None,
        ]),
        prop::collection::vec(("x-[a-z-]{1,16}", header_value_bytes()), 0..3),
        body(),
    )
        .prop_map(
            |((method, path), query, auth, content_type, headers, body)| Hostile {
                method,
                path,
                query,
                auth,
                content_type,
                headers,
                body,
            },
        )
}

impl Hostile {
    fn wire(&self, world: &World) -> Vec<u8> {
        let mut head = format!("{} {}", self.method, self.path);
        if !self.query.is_empty() {
            head.push('?');
            head.push_str(&self.query);
        }
        head.push_str(" HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n");
        let mut wire = head.into_bytes();
        let auth: Option<Vec<u8>> = match &self.auth {
            Auth::None => None,
            // Real credentials never go with DELETE, so the generator
            // cannot revoke the identities the final check reads with.
            _ if self.method == "DELETE" => None,
            Auth::Session => Some(format!("session {}", world.session).into_bytes()),
            Auth::Astation => Some(format!("Bearer {}", world.astation_token).into_bytes()),
            Auth::Admin => Some(format!("Bearer {ADMIN_TOKEN}").into_bytes()),
            Auth::Link => Some(format!("link {}", world.link_secret).into_bytes()),
            Auth::Random(bytes) => Some(bytes.clone()),
        };
        if let Some(a) = auth {
            wire.extend_from_slice(b"Authorization: ");
            wire.extend(a);
            wire.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = self.content_type {
            wire.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        for (name, value) in &self.headers {
            wire.extend_from_slice(name.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        wire.extend_from_slice(&self.body);
        wire
    }
}

/// What the generator must never change: every row of both vaults, and the
/// observer's vault as a whole.
async fn snapshot(
    app: &TestApp,
    world: &World,
    observer: &(String, String),
) -> (Vec<Value>, Value) {
    let rows = app
        .read(&world.vault, &world.session, "c-gen", "history=true")
        .await;
    let (observer_session, observer_vault) = observer;
    let (_, info) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{observer_vault}/info"),
            observer_session,
            "c-obs",
            None,
        )
        .await;
    let observer_rows = app
        .read(observer_vault, observer_session, "c-obs", "history=true")
        .await;
    (rows, json!({ "info": info, "rows": observer_rows }))
}

async fn generated_requests_never_break_the_relay(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (astation_id, astation_token, session) = app.work_session("gen").await;
    let vault = app.create_vault(&session, "c-gen", "generated").await;
    for i in 0..3 {
        app.write(&vault, &session, "c-gen", &format!("row {i}"), None)
            .await;
    }
    let (_, link) = app
        .vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/links"),
            &session,
            "c-gen",
            Some(json!({})),
        )
        .await;
    let url = link["url"].as_str().expect("a link url");
    let link_secret = url.rsplit("link=").next().expect("secret").to_string();
    let pending = app.pair().await["id"].as_str().expect("id").to_string();
    let world = World {
        session,
        astation_token,
        astation_id,
        vault,
        link_secret,
        link_id: link["link_id"].as_str().expect("link_id").to_string(),
        pending,
    };
    let (_, _, observer_session) = app.work_session("observer").await;
    let observer_vault = app
        .create_vault(&observer_session, "c-obs", "observed")
        .await;
    app.write(
        &observer_vault,
        &observer_session,
        "c-obs",
        "kept as is",
        None,
    )
    .await;
    let observer = (observer_session, observer_vault);
    let (rows_before, observer_before) = snapshot(&app, &world, &observer).await;

    let addr = app.addr;
    let handle = tokio::runtime::Handle::current();
    let world_for_cases = world.clone();
    // proptest drives the cases synchronously; each one blocks this
    // (dedicated) thread on the relay's runtime.
    let outcome = tokio::task::spawn_blocking(move || {
        let strategy = hostile(&world_for_cases);
        let mut runner = TestRunner::new(ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..ProptestConfig::default()
        });
        runner
            .run(&strategy, |case| {
                let wire = case.wire(&world_for_cases);
                let response = handle
                    .block_on(exchange(addr, &wire))
                    .ok_or_else(|| TestCaseError::fail("no answer: the connection dropped"))?;
                prop_assert!(
                    response.status < 500,
                    "{} for {:?}",
                    response.status,
                    String::from_utf8_lossy(&wire)
                );
                if response.status >= 400 && case.method != "HEAD" {
                    let ct = response.header("content-type").unwrap_or_default();
                    prop_assert!(
                        ct.starts_with("application/json"),
                        "{} with Content-Type {ct:?} for {:?}",
                        response.status,
                        String::from_utf8_lossy(&wire)
                    );
                    let body: Value = serde_json::from_slice(&response.body).map_err(|_| {
                        TestCaseError::fail(format!(
                            "{} body is not JSON: {:?}",
                            response.status,
                            String::from_utf8_lossy(&response.body)
                        ))
                    })?;
                    prop_assert!(
                        body["error"].as_str().is_some_and(|e| !e.is_empty()),
                        "no error text: {body}"
                    );
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    })
    .await
    .expect("the generator thread");
    if let Err(e) = outcome {
        panic!("{e}");
    }

    // The relay is still up, and nothing written before has changed.
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (rows_after, observer_after) = snapshot(&app, &world, &observer).await;
    assert!(rows_after.len() >= rows_before.len());
    assert_eq!(&rows_after[..rows_before.len()], &rows_before[..]);
    assert_eq!(observer_after, observer_before);
}

crate::both_stores!(generated_requests_never_break_the_relay);

/// Client mistakes of every family, sent to the real binary: none of them
/// may produce an ERROR log line (those are for the relay's own faults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_never_logged_as_errors() {
    use std::process::{Command, Stdio};
    let port = crate::binary::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .env_remove("DATABASE_URL")
        .env_remove("LOG_FORMAT")
        .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("RUST_LOG", "info")
        .env("HTTP_BODY_TIMEOUT_SECS", "1")
        // Every long poll is refused (503): the load's answer, not a fault.
        .env("LONG_POLL_MAX", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "relay did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A long poll beyond LONG_POLL_MAX, and MCP protocol mistakes (before
    // the wrong tokens below block this address).
    let api = TestApp::external(addr);
    let (_, _, session) = api.work_session("desk").await;
    let vault = api.create_vault(&session, "c", "").await;
    let (status, body) = api
        .vault_call(
            Method::GET,
            &format!("/api/vault/{vault}?since=0&wait=5"),
            &session,
            "c",
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let _ = api
        .client
        .post(format!("{}/mcp?id=c", api.base))
        .header("authorization", format!("Bearer {session}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "no-such-session")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "no/such/method"}))
        .send()
        .await;
    let long = "s".repeat(300);
    let requests: Vec<Vec<u8>> = vec![
        format!("GET /{long} HTTP/1.1\r\nHost: r\r\n\r\n").into_bytes(),
        format!("GET /{long}/{long}.css HTTP/1.1\r\nHost: r\r\n\r\n").into_bytes(),
        b"GET /%00 HTTP/1.1\r\nHost: r\r\n\r\n".to_vec(),
        b"GET /index.html/x HTTP/1.1\r\nHost: r\r\n\r\n".to_vec(),
        b"POST /index.html HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"GET /api/vault?id=%ff HTTP/1.1\r\nHost: r\r\nAuthorization: session x\r\n\r\n".to_vec(),
        format!(
            "GET /api/vault?id={} HTTP/1.1\r\nHost: r\r\n\r\n",
            "a".repeat(9000)
        )
        .into_bytes(),
        format!(
            "GET / HTTP/1.1\r\nHost: r\r\nx-big: {}\r\n\r\n",
            "b".repeat(70_000)
        )
        .into_bytes(),
        format!(
            "GET / HTTP/1.1\r\nHost: r\r\nx-huge: {}\r\n\r\n",
            "b".repeat(300_000)
        )
        .into_bytes(),
        b"POST /api/vault?id=c HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
          Content-Length: 5\r\nAuthorization: session x\r\n\r\n[1,2]"
            .to_vec(),
        b"POST /api/sessions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
          Content-Length: 3\r\n\r\n{\"h"
            .to_vec(),
        b"POST /api/sessions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
          Content-Length: 99999999\r\n\r\n"
            .to_vec(),
        // A body that never completes: 408 after a second.
        b"POST /api/sessions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
          Content-Length: 50\r\n\r\n{"
            .to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: r\r\nbad header\r\n\r\n".to_vec(),
        b"GET /api/vault/v-1/stream?id=c HTTP/1.1\r\nHost: r\r\nAuthorization: session x\r\n\r\n"
            .to_vec(),
        b"DELETE /api/admin/astations/a-1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer x\r\n\r\n"
            .to_vec(),
    ];
    for request in &requests {
        let _ = exchange(addr, request).await;
    }
    // A burst of wrong tokens, into the default failed-authentication limit.
    for i in 0..40 {
        let request = format!(
            "GET /api/admin/astations HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer w{i}\r\n\r\n"
        );
        let _ = exchange(addr, request.as_bytes()).await;
    }
    // A client that disconnects in the middle of a body.
    let mut conn = crate::raw::RawConn::open(addr).await;
    conn.send(
        b"POST /api/sessions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"hostname\"",
    )
    .await;
    drop(conn);
    crate::logs::stop(&mut child).await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        !stderr.contains("ERROR"),
        "client mistakes logged as errors:\n{stderr}"
    );
    assert!(stderr.contains("vault-relay stopped"), "{stderr}");
}
