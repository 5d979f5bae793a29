//! Test helpers: start the real relay on 127.0.0.1:0 over either store, give
//! each Postgres test a fresh database, and speak the API.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::task::JoinHandle;
use vault_relay::config::Config;
use vault_relay::shutdown::Shutdown;
use vault_relay::startup::Application;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Postgres,
}

/// The admin token every test relay uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The server that holds the per-test databases. Tests that need Postgres
/// never skip: without it they fail and say how to get one.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set. Postgres tests need a server and a role that may create \
             databases: run ./scripts/test, which starts Postgres and sets it, or set \
             TEST_DATABASE_URL=postgres://USER:PASSWORD@127.0.0.1:5432/DB yourself."
        )
    })
}

/// A throwaway database, dropped when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let server = server_url();
        let name = format!("vr_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot reach TEST_DATABASE_URL ({e}); run ./scripts/test"));
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        // sqlx renders the URL, with the server's user, password and settings.
        let url = server
            .parse::<PgConnectOptions>()
            .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is not a Postgres URL ({e})"))
            .database(&name)
            .to_url_lossy()
            .to_string();
        TestDb { name, url }
    }

    /// A connection to this database, for tests that reach under the relay.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// Terminates every relay's LISTEN connection on this database, as a
    /// network fault would; returns how many were killed.
    pub async fn kill_listen_connections(&self, conn: &mut sqlx::PgConnection) -> i64 {
        sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
             where datname = current_database() and query ilike 'listen%'",
        )
        .fetch_one(conn)
        .await
        .expect("terminate LISTEN connections")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = server_url();
        let name = self.name.clone();
        // Drop runs inside a test's runtime; do the async work on a thread
        // of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&server).await?;
                sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}

/// A running relay and a client for it.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Shutdown,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    pub db: Option<Arc<TestDb>>,
}

/// A relay configuration for tests.
pub fn test_config(database_url: Option<String>) -> Config {
    let mut config = Config::for_tests();
    config.admin_token = Some(ADMIN_TOKEN.into());
    config.database_url = database_url;
    config.database_max_connections = 8;
    config.web_dir = Some(std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/web"
    )));
    // Rate limits are off unless a test turns one on: tests make bursts of
    // requests from one address that no real client would.
    config.rate_limit_auth_failures_per_min = 0;
    config.rate_limit_pairings_per_min = 0;
    config.rate_limit_writes_per_sec = 0;
    config
}

impl TestApp {
    /// A relay on a fresh store of the given kind.
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// A relay on a fresh store, with the configuration adjusted first.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let db = match backend {
            Backend::Memory => None,
            Backend::Postgres => Some(Arc::new(TestDb::create().await)),
        };
        let mut config = test_config(db.as_ref().map(|d| d.url.clone()));
        adjust(&mut config);
        Self::start(config, db).await
    }

    /// Another relay on the same database (a replica, or a restart).
    pub async fn spawn_on(db: Arc<TestDb>) -> TestApp {
        let config = test_config(Some(db.url.clone()));
        Self::start(config, Some(db)).await
    }

    /// A relay on a given port and database (restart on the same address).
    pub async fn start(config: Config, db: Option<Arc<TestDb>>) -> TestApp {
        let app = Application::build(config).await.expect("build the relay");
        let addr = app.local_addr().expect("bound address");
        let shutdown = app.shutdown_handle();
        let handle = tokio::spawn(app.run_until_stopped());
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            shutdown,
            handle: Some(handle),
            db,
        }
    }

    /// Stops the relay gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("relay stops within 10 s");
            result.expect("relay task").expect("relay exits cleanly");
        }
    }

    /// Any request; returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the relay");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"))
        };
        (status, value)
    }

    /// Registers an astation through the admin API: (astation_id, token).
    pub async fn astation(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/admin/astations",
                Some(&format!("Bearer {ADMIN_TOKEN}")),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["astation_id"]
                .as_str()
                .expect("astation_id")
                .to_string(),
            body["token"].as_str().expect("token").to_string(),
        )
    }

    /// A granted session minted with an astation token; returns its id.
    pub async fn session(&self, astation_token: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/sessions",
                Some(&format!("Bearer {astation_token}")),
                Some(json!({ "hostname": "test-host" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "granted");
        body["id"].as_str().expect("id").to_string()
    }

    /// A new astation with one granted session: (astation_id, token, session).
    pub async fn work_session(&self, name: &str) -> (String, String, String) {
        let (id, token) = self.astation(name).await;
        let session = self.session(&token).await;
        (id, token, session)
    }

    /// A vault request as `session` acting as `client`.
    pub async fn vault_call(
        &self,
        method: Method,
        path: &str,
        session: &str,
        client: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.call(
            method,
            &format!("{path}{sep}id={client}"),
            Some(&format!("session {session}")),
            body,
        )
        .await
    }

    /// Creates a vault; returns its id.
    pub async fn create_vault(&self, session: &str, client: &str, summary: &str) -> String {
        let (status, body) = self
            .vault_call(
                Method::POST,
                "/api/vault",
                session,
                client,
                Some(json!({ "summary": summary })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["vault_id"].as_str().expect("vault_id").to_string()
    }

    /// Appends (or edits, with `entry_id`) and returns the receipt.
    pub async fn write(
        &self,
        vault: &str,
        session: &str,
        client: &str,
        text: &str,
        entry_id: Option<i64>,
    ) -> Value {
        let mut body = json!({ "text": text });
        if let Some(n) = entry_id {
            body["entry_id"] = json!(n);
        }
        let (status, receipt) = self
            .vault_call(
                Method::POST,
                &format!("/api/vault/{vault}"),
                session,
                client,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{receipt}");
        receipt
    }

    /// Reads a vault; `query` is appended as is (e.g. "history=true").
    pub async fn read(&self, vault: &str, session: &str, client: &str, query: &str) -> Vec<Value> {
        let path = if query.is_empty() {
            format!("/api/vault/{vault}")
        } else {
            format!("/api/vault/{vault}?{query}")
        };
        let (status, body) = self
            .vault_call(Method::GET, &path, session, client, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().expect("an array").clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Runs one async test body per backend. Usage: `both_stores!(a, b, c);`
/// where each name is `async fn name(backend: Backend)` in the module.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Memory).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A stream client speaking the relay's WebSocket protocol.
pub struct StreamClient {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// How a stream attempt ended before the upgrade: status and JSON body.
pub type Refusal = (StatusCode, Value);

/// What a read from a stream produced.
#[derive(Debug)]
pub enum StreamEvent {
    Frame(Value),
    Closed(Option<u16>, String),
}

impl TestApp {
    /// Opens `/api/vault/{vault}/stream?id={client}&{query}` with a session
    /// header (when given).
    pub async fn stream(
        &self,
        vault: &str,
        session: Option<&str>,
        client: &str,
        query: &str,
    ) -> Result<StreamClient, Refusal> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut url = format!("ws://{}/api/vault/{vault}/stream?id={client}", self.addr);
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        let mut request = url.into_client_request().expect("stream request");
        if let Some(s) = session {
            request.headers_mut().insert(
                "authorization",
                format!("session {s}").parse().expect("header"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(StreamClient { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).expect("refusal body is JSON"))
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("stream connect failed: {e}"),
        }
    }

    /// Opens a stream whose client socket has a tiny, fixed receive buffer
    /// (no autotuning), for a client that stops reading: the server's writes
    /// then block after a few hundred KB instead of after tens of MB.
    pub async fn open_stream_with_small_receive_buffer(
        &self,
        vault: &str,
        session: &str,
        client: &str,
    ) -> StreamClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let tcp = socket.connect(self.addr).await.expect("connect");
        let url = format!("ws://{}/api/vault/{vault}/stream?id={client}", self.addr);
        let mut request = url.into_client_request().expect("stream request");
        request.headers_mut().insert(
            "authorization",
            format!("session {session}").parse().expect("header"),
        );
        let (socket, _) =
            tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await
                .expect("stream accepted");
        StreamClient { socket }
    }

    /// Opens a stream that must be accepted.
    pub async fn open_stream(
        &self,
        vault: &str,
        session: &str,
        client: &str,
        query: &str,
    ) -> StreamClient {
        match self.stream(vault, Some(session), client, query).await {
            Ok(s) => s,
            Err((status, body)) => panic!("stream refused: {status} {body}"),
        }
    }
}

/// Longest wait for any one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

impl StreamClient {
    /// The next frame or close (pings are answered and skipped).
    pub async fn next_event(&mut self) -> StreamEvent {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(FRAME_WAIT, self.socket.next())
                .await
                .expect("a frame within the wait");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return StreamEvent::Frame(serde_json::from_str(&t).expect("JSON frame"));
                }
                Some(Ok(Message::Close(c))) => {
                    return StreamEvent::Closed(
                        c.as_ref().map(|c| u16::from(c.code)),
                        c.map(|c| c.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return StreamEvent::Closed(None, String::new()),
            }
        }
    }

    /// The next frame; panics on close.
    pub async fn next_frame(&mut self) -> Value {
        match self.next_event().await {
            StreamEvent::Frame(f) => f,
            StreamEvent::Closed(code, reason) => panic!("stream closed: {code:?} {reason}"),
        }
    }

    /// The next frame of `frame_type`, skipping others (presence, ...).
    pub async fn next_of(&mut self, frame_type: &str) -> Value {
        loop {
            let f = self.next_frame().await;
            if f["type"] == frame_type {
                return f;
            }
        }
    }

    /// Entry frames until `n` have arrived (other frames are skipped).
    pub async fn entries(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_of("entry").await);
        }
        out
    }

    /// Waits for the server to close the stream; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let StreamEvent::Closed(code, _) = self.next_event().await {
                return code;
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

impl TestApp {
    /// POSTs a write body as is; returns status and body, for refusals.
    pub async fn try_write(
        &self,
        vault: &str,
        session: &str,
        client: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.vault_call(
            Method::POST,
            &format!("/api/vault/{vault}"),
            session,
            client,
            Some(body),
        )
        .await
    }

    /// Sets a vault's summary.
    pub async fn set_summary(
        &self,
        vault: &str,
        session: &str,
        client: &str,
        text: &str,
    ) -> (StatusCode, Value) {
        self.vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/summary"),
            session,
            client,
            Some(json!({ "text": text })),
        )
        .await
    }

    /// Asks for a stream ticket.
    pub async fn ticket(&self, vault: &str, session: &str, client: &str) -> (StatusCode, Value) {
        self.vault_call(
            Method::POST,
            &format!("/api/vault/{vault}/stream-ticket"),
            session,
            client,
            None,
        )
        .await
    }
}

impl TestApp {
    /// `DELETE /api/sessions/{id}` with the given Authorization value.
    pub async fn revoke_session(&self, id: &str, auth: &str) -> (StatusCode, Value) {
        self.call(
            Method::DELETE,
            &format!("/api/sessions/{id}"),
            Some(auth),
            None,
        )
        .await
    }

    /// `GET /api/sessions/{id}/status`: the status, checking the body is
    /// exactly `{"status"}`.
    pub async fn session_status(&self, id: &str) -> String {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/sessions/{id}/status"),
                None,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
        body["status"].as_str().expect("a status").to_string()
    }

    /// Starts a pairing: the pending session's JSON (`id`, `otp`, ...).
    pub async fn pair(&self) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/sessions",
                None,
                Some(json!({"hostname": "laptop"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

impl TestApp {
    /// A client for a relay running elsewhere (the binary as a child
    /// process): the API helpers work, `stop` does nothing.
    pub fn external(addr: std::net::SocketAddr) -> TestApp {
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            shutdown: Shutdown::new(),
            handle: None,
            db: None,
        }
    }
}
