//! `/mcp` through the SDK's own MCP client: the handshake, the five tools
//! compared with REST, the access rules, resources and subscriptions, on
//! both stores. `/mcp` as HTTP (refusals before any exchange, pings,
//! revocation, replicas) is tested in `http.rs`, the stdio bridge and an
//! independent client in `bridge.rs`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion, ReadResourceRequestParams, ResourceContents, ResourceUpdatedNotificationParam,
    SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

mod bridge;
mod http;

both_stores!(
    the_handshake_offers_the_five_tools_with_schemas,
    every_tool_answers_what_rest_answers,
    refusals_are_tool_errors_in_the_rest_words,
    arguments_that_do_not_match_the_schema_are_tool_errors_that_say_so,
    vaults_are_resources_that_read_as_their_current_view,
    a_subscription_hears_rest_writes_and_summary_changes,
    idempotency_keys_make_retries_safe_as_on_rest,
    the_encryption_mode_holds_on_mcp_writes,
);

/// Longest wait for a notification. Updates normally arrive within
/// milliseconds; the margin is for a loaded test machine.
const UPDATE_WAIT: Duration = Duration::from_secs(5);

/// The test's MCP client: records every `notifications/resources/updated`.
struct Listener {
    updates: mpsc::UnboundedSender<String>,
}

impl ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("vault-relay-tests", "1"),
        )
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send(params.uri);
    }
}

struct McpClient {
    service: RunningService<RoleClient, Listener>,
    updates: mpsc::UnboundedReceiver<String>,
}

/// Connects over any transport (HTTP, or the bridge's stdio).
async fn connect_over<T, E, A>(transport: T) -> McpClient
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let (tx, updates) = mpsc::unbounded_channel();
    let service = tokio::time::timeout(UPDATE_WAIT, Listener { updates: tx }.serve(transport))
        .await
        .expect("the MCP handshake finishes in time")
        .expect("the MCP handshake succeeds");
    McpClient { service, updates }
}

/// Opens an MCP session on `/mcp?id={client}` with the session as a bearer
/// token (what most MCP clients send).
async fn connect(app: &TestApp, session: &str, client: &str) -> McpClient {
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp?id={client}", app.base))
            .auth_header(session);
    connect_over(StreamableHttpClientTransport::from_config(config)).await
}

impl McpClient {
    async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let args = args.as_object().expect("arguments are an object").clone();
        tokio::time::timeout(
            UPDATE_WAIT,
            self.service
                .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args)),
        )
        .await
        .expect("the tool answers in time")
        .expect("the tool call is answered")
    }

    /// A call that must succeed: its structured content.
    async fn ok(&self, tool: &str, args: Value) -> Value {
        let r = self.call(tool, args).await;
        assert_eq!(r.is_error, Some(false), "{tool}: {r:?}");
        r.structured_content.expect("structured content")
    }

    /// A call that must be refused: (REST status, words).
    async fn refused(&self, tool: &str, args: Value) -> (u16, String) {
        let r = self.call(tool, args).await;
        assert_eq!(r.is_error, Some(true), "{tool} should be refused: {r:?}");
        let s = r.structured_content.clone().expect("structured error");
        let words = s["error"].as_str().expect("error words").to_string();
        assert_eq!(text(&r), words, "the text says the same words");
        (s["status"].as_u64().expect("status") as u16, words)
    }

    /// Asserts that REST answered `want` (`rest`: its status and body) and
    /// that `tool` refuses `args` with the same status and the same words.
    async fn refuses_like_rest(
        &self,
        tool: &str,
        args: Value,
        rest: (StatusCode, Value),
        want: StatusCode,
    ) {
        let (status, body) = rest;
        assert_eq!(status, want, "REST: {body}");
        let words = body["error"].as_str().expect("REST error words");
        assert_eq!(
            self.refused(tool, args).await,
            (want.as_u16(), words.to_string()),
            "{tool}"
        );
    }

    async fn subscribe(&self, vault: &str) {
        #[allow(deprecated)]
        let subscribed = self
            .service
            .subscribe(SubscribeRequestParams::new(format!("vault://{vault}")));
        tokio::time::timeout(UPDATE_WAIT, subscribed)
            .await
            .expect("subscribe answers in time")
            .expect("subscribe succeeds");
    }

    /// The next resource update's URI.
    async fn next_update(&mut self) -> String {
        tokio::time::timeout(UPDATE_WAIT, self.updates.recv())
            .await
            .expect("an update arrives in time")
            .expect("the client is running")
    }
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn the_handshake_offers_the_five_tools_with_schemas(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let mcp = connect(&app, &s, "agent-1").await;

    let info = mcp.service.peer_info().expect("server info");
    assert!(
        info.protocol_version >= ProtocolVersion::V_2025_06_18,
        "{:?}",
        info.protocol_version
    );
    let caps = &info.capabilities;
    assert!(caps.tools.is_some());
    let resources = caps.resources.as_ref().expect("resources capability");
    assert_eq!(resources.subscribe, Some(true));

    let tools = mcp.service.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "vault_create",
            "vault_list",
            "vault_read",
            "vault_set_summary",
            "vault_write"
        ]
    );
    let schema = |name: &str| -> Value {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        assert!(tool.description.as_ref().is_some_and(|d| !d.is_empty()));
        Value::Object((*tool.input_schema).clone())
    };
    let props = |s: &Value| -> Vec<String> {
        let mut p: Vec<String> = s["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        p.sort();
        p
    };
    let required = |s: &Value| -> Vec<String> {
        let mut r: Vec<String> = s["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        r.sort();
        r
    };
    let list = schema("vault_list");
    assert_eq!(list["type"], "object");
    assert!(props(&list).is_empty(), "{list}");
    let create = schema("vault_create");
    assert_eq!(props(&create), ["idempotency_key", "summary"]);
    assert_eq!(required(&create), ["summary"]);
    let read = schema("vault_read");
    assert_eq!(props(&read), ["history", "since", "vault_id"]);
    assert_eq!(required(&read), ["vault_id"]);
    assert!(
        read["properties"]["since"]["type"]
            .to_string()
            .contains("integer"),
        "{read}"
    );
    assert!(
        read["properties"]["history"]["type"]
            .to_string()
            .contains("boolean"),
        "{read}"
    );
    let write = schema("vault_write");
    assert_eq!(
        props(&write),
        ["entry_id", "idempotency_key", "text", "vault_id"]
    );
    assert_eq!(required(&write), ["text", "vault_id"]);
    let summary = schema("vault_set_summary");
    assert_eq!(props(&summary), ["text", "vault_id"]);
    assert_eq!(required(&summary), ["text", "vault_id"]);
}

async fn every_tool_answers_what_rest_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let mcp = connect(&app, &s, "agent-1").await;

    let created = mcp.ok("vault_create", json!({"summary": "plan"})).await;
    let v = created["vault_id"].as_str().expect("vault_id").to_string();
    assert_eq!(created, json!({ "vault_id": v }));

    let w1 = mcp
        .ok("vault_write", json!({"vault_id": v, "text": "first"}))
        .await;
    let w2 = app.write(&v, &s, "atem-rest", "second", None).await;
    let edit = mcp
        .call(
            "vault_write",
            json!({"vault_id": v, "text": "first, fixed", "entry_id": 1}),
        )
        .await;
    assert_eq!(
        text(&edit),
        format!(
            "wrote e1 v2 (seq {})",
            edit.structured_content.as_ref().unwrap()["seq"]
        )
    );
    let w3 = edit.structured_content.unwrap();
    assert_eq!(
        (w1["entry_no"].as_i64(), w1["version"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (w3["entry_no"].as_i64(), w3["version"].as_i64()),
        (Some(1), Some(2))
    );
    let mut keys: Vec<&String> = w1.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["entry_no", "seq", "version"]);

    // Reads: the same rows as REST, in every view.
    for (args, query) in [
        (json!({"vault_id": v}), ""),
        (json!({"vault_id": v, "history": true}), "history=true"),
        (
            json!({"vault_id": v, "since": w2["seq"]}),
            &*format!("since={}", w2["seq"]),
        ),
        (
            json!({"vault_id": v, "history": true, "since": w1["seq"]}),
            &*format!("history=true&since={}", w1["seq"]),
        ),
    ] {
        let over_mcp = mcp.ok("vault_read", args.clone()).await;
        let over_rest = app.read(&v, &s, "agent-1", query).await;
        assert_eq!(over_mcp, json!({ "entries": over_rest }), "{args}");
    }
    let current = mcp.call("vault_read", json!({"vault_id": v})).await;
    assert_eq!(
        text(&current),
        "e1 v2 [agent-1] first, fixed\ne2 v1 [atem-rest] second"
    );

    assert_eq!(
        mcp.ok(
            "vault_set_summary",
            json!({"vault_id": v, "text": "plan, v2"})
        )
        .await,
        json!({})
    );
    let (_, rest_list) = app
        .vault_call(Method::GET, "/api/vault", &s, "agent-1", None)
        .await;
    assert_eq!(rest_list, json!([{ "vault_id": v, "summary": "plan, v2" }]));
    let listed = mcp.call("vault_list", json!({})).await;
    assert_eq!(
        listed.structured_content,
        Some(json!({ "vaults": rest_list }))
    );
    assert_eq!(text(&listed), format!("{v} plan, v2"));
}

async fn refusals_are_tool_errors_in_the_rest_words(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let v = app.create_vault(&home, "owner", "private").await;
    app.write(&v, &home, "owner", "secret", None).await;
    let stranger = connect(&app, &away, "stranger").await;

    // A stranger's session cannot read, write or summarize: the REST
    // status and words, as a tool error.
    let forbidden = StatusCode::FORBIDDEN;
    let rest = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{v}"),
            &away,
            "stranger",
            None,
        )
        .await;
    stranger
        .refuses_like_rest("vault_read", json!({"vault_id": v}), rest, forbidden)
        .await;
    let rest = app
        .try_write(&v, &away, "stranger", json!({"text": "x"}))
        .await;
    let args = json!({"vault_id": v, "text": "x"});
    stranger
        .refuses_like_rest("vault_write", args, rest, forbidden)
        .await;
    let rest = app.set_summary(&v, &away, "stranger", "mine now").await;
    let args = json!({"vault_id": v, "text": "mine now"});
    stranger
        .refuses_like_rest("vault_set_summary", args, rest, forbidden)
        .await;
    assert_eq!(
        stranger.ok("vault_list", json!({})).await,
        json!({ "vaults": [] })
    );
    // Nothing changed.
    let rows = app.read(&v, &home, "owner", "history=true").await;
    assert_eq!(rows.len(), 1);

    // The other rules hold too: no such vault, a missing entry, bad input.
    let member = connect(&app, &home, "owner").await;
    let missing = "v-doesnotexist1";
    let rest = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{missing}"),
            &home,
            "owner",
            None,
        )
        .await;
    let args = json!({"vault_id": missing});
    member
        .refuses_like_rest("vault_read", args, rest, StatusCode::NOT_FOUND)
        .await;
    for (body, want) in [
        (json!({"text": "x", "entry_id": 9}), StatusCode::NOT_FOUND),
        (json!({"text": "a\u{0}b"}), StatusCode::BAD_REQUEST),
    ] {
        let rest = app.try_write(&v, &home, "owner", body.clone()).await;
        let mut args = body;
        args["vault_id"] = json!(v);
        member
            .refuses_like_rest("vault_write", args, rest, want)
            .await;
    }
    let (status, _) = app
        .try_write(&v, &home, "owner", json!({"text": "x", "entry_id": 0}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        member
            .refused(
                "vault_write",
                json!({"vault_id": v, "text": "x", "entry_id": 0})
            )
            .await
            .0,
        400
    );
    let (code, words) = member
        .refused("vault_read", json!({"vault_id": v, "since": -1}))
        .await;
    assert_eq!(code, 400);
    assert!(words.contains("`since`"), "{words}");
    let big = "x".repeat(256 * 1024 + 1);
    assert_eq!(
        member
            .refused("vault_write", json!({"vault_id": v, "text": big}))
            .await
            .0,
        413
    );
    assert_eq!(app.read(&v, &home, "owner", "history=true").await.len(), 1);
}

async fn arguments_that_do_not_match_the_schema_are_tool_errors_that_say_so(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "owner", "kept").await;
    let agent = connect(&app, &s, "owner").await;
    let cases = [
        (
            "vault_write",
            json!({"vault_id": 1, "text": "x"}),
            "expected a string",
        ),
        (
            "vault_write",
            json!({"vault_id": v}),
            "missing field `text`",
        ),
        (
            "vault_read",
            json!({"vault_id": v, "since": "soon"}),
            "invalid type",
        ),
        (
            "vault_set_summary",
            json!({"vault_id": v, "text": 5}),
            "expected a string",
        ),
    ];
    for (tool, args, says) in cases {
        let r = agent.call(tool, args.clone()).await;
        assert_eq!(r.is_error, Some(true), "{tool} {args}: {r:?}");
        let words = text(&r);
        assert!(words.contains(says), "{tool} {args}: {words}");
    }
    // Nothing was written.
    assert!(app.read(&v, &s, "owner", "history=true").await.is_empty());
    let (_, view) = app
        .vault_call(
            Method::GET,
            &format!("/api/vault/{v}/info"),
            &s,
            "owner",
            None,
        )
        .await;
    assert_eq!(view["summary"], "kept", "{view}");
}

async fn idempotency_keys_make_retries_safe_as_on_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let mcp = connect(&app, &s, "agent-1").await;

    let create = json!({"summary": "once", "idempotency_key": "create-1"});
    let first = mcp.ok("vault_create", create.clone()).await;
    assert_eq!(mcp.ok("vault_create", create).await, first);
    let v = first["vault_id"].as_str().unwrap().to_string();
    let write = json!({"vault_id": v, "text": "only once", "idempotency_key": "write-1"});
    let receipt = mcp.ok("vault_write", write.clone()).await;
    assert_eq!(mcp.ok("vault_write", write).await, receipt);
    assert_eq!(app.read(&v, &s, "agent-1", "history=true").await.len(), 1);

    // The same key for another request is refused as REST refuses it.
    let (status, words) = mcp
        .refused(
            "vault_write",
            json!({"vault_id": v, "text": "something else", "idempotency_key": "write-1"}),
        )
        .await;
    assert_eq!(status, 422, "{words}");
    // Keys are shared with REST: a REST retry of the MCP write replays it.
    let rest_retry = app
        .client
        .post(format!("{}/api/vault/{v}?id=agent-1", app.base))
        .header("authorization", format!("session {s}"))
        .header("idempotency-key", "write-1")
        .json(&json!({"text": "only once"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rest_retry.status(), StatusCode::OK);
    assert_eq!(rest_retry.json::<Value>().await.unwrap(), receipt);
    assert_eq!(app.read(&v, &s, "agent-1", "history=true").await.len(), 1);
    // A key the header rule refuses is refused here too.
    let (status, _) = mcp
        .refused(
            "vault_write",
            json!({"vault_id": v, "text": "x", "idempotency_key": ""}),
        )
        .await;
    assert_eq!(status, 400);
}

async fn the_encryption_mode_holds_on_mcp_writes(backend: Backend) {
    use crate::encryption::{KID, move_to, seal};

    let app = TestApp::spawn(backend).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "agent-1", "").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    let mcp = connect(&app, &s, "agent-1").await;

    // Plaintext is refused with the REST words, on every kind of write.
    let (status, rest) = app
        .try_write(&v, &s, "agent-1", json!({"text": "in the clear"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        mcp.refused(
            "vault_write",
            json!({"vault_id": v, "text": "in the clear"})
        )
        .await,
        (409, rest["error"].as_str().unwrap().to_string())
    );
    let (status, rest) = app.set_summary(&v, &s, "agent-1", "in the clear").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        mcp.refused(
            "vault_set_summary",
            json!({"vault_id": v, "text": "in the clear"})
        )
        .await,
        (409, rest["error"].as_str().unwrap().to_string())
    );
    let (status, words) = mcp
        .refused("vault_create", json!({"summary": "in the clear"}))
        .await;
    assert_eq!(status, 409);
    assert!(
        words.contains("does not match the encryption mode (enabling)"),
        "{words}"
    );
    // An envelope with the current kid is accepted and read back unchanged.
    let sealed = seal(KID, "secret plan");
    mcp.ok("vault_write", json!({"vault_id": v, "text": sealed}))
        .await;
    let rows = mcp.ok("vault_read", json!({"vault_id": v})).await;
    assert_eq!(rows["entries"][0]["content"], sealed);
    assert_eq!(app.read(&v, &s, "agent-1", "").await.len(), 1);
}

async fn vaults_are_resources_that_read_as_their_current_view(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, home) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let mine = app.create_vault(&home, "agent-1", "release plan").await;
    let theirs = app.create_vault(&away, "other", "not mine").await;
    app.write(&mine, &home, "agent-1", "draft", None).await;
    app.write(&mine, &home, "agent-2", "draft, reviewed", Some(1))
        .await;
    app.write(&mine, &home, "agent-2", "tag it", None).await;
    let mcp = connect(&app, &home, "agent-1").await;

    let listed = mcp
        .service
        .list_all_resources()
        .await
        .expect("resources/list");
    let uris: Vec<&str> = listed.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, [format!("vault://{mine}")]);
    assert_eq!(listed[0].description.as_deref(), Some("release plan"));

    let read = mcp
        .service
        .read_resource(ReadResourceRequestParams::new(format!("vault://{mine}")))
        .await
        .expect("resources/read");
    let [ResourceContents::TextResourceContents { text, uri, .. }] = &read.contents[..] else {
        panic!("one text content: {read:?}");
    };
    assert_eq!(uri, &format!("vault://{mine}"));
    assert_eq!(
        text,
        &format!(
            "vault {mine}: release plan\ne1 v2 [agent-2] draft, reviewed\ne2 v1 [agent-2] tag it"
        )
    );
    // Another work session's vault is refused, with the REST words.
    let refused = mcp
        .service
        .read_resource(ReadResourceRequestParams::new(format!("vault://{theirs}")))
        .await
        .expect_err("a stranger's vault cannot be read");
    assert!(
        refused
            .to_string()
            .contains("belongs to another work session"),
        "{refused}"
    );
}

async fn a_subscription_hears_rest_writes_and_summary_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "agent-1", "").await;
    let other = app.create_vault(&s, "agent-1", "").await;
    let mut mcp = connect(&app, &s, "agent-1").await;
    mcp.subscribe(&v).await;
    let uri = format!("vault://{v}");

    let written = std::time::Instant::now();
    app.write(&v, &s, "atem-rest", "hello", None).await;
    assert_eq!(mcp.next_update().await, uri);
    eprintln!(
        "resource update {:?} after the REST write",
        written.elapsed()
    );
    // A watcher joining (presence) is not a change; a write to another
    // vault is not either; the next thing heard is this vault's edit.
    let mut watcher = app.open_stream(&v, &s, "viewer", "atem_id=viewer").await;
    watcher.next_of("hello").await;
    app.write(&other, &s, "atem-rest", "elsewhere", None).await;
    app.write(&v, &s, "atem-rest", "hello again", Some(1)).await;
    assert_eq!(mcp.next_update().await, uri);
    let (status, _) = app
        .set_summary(&v, &s, "atem-rest", "now with a summary")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mcp.next_update().await, uri);
    // One notice per committed row.
    for i in 0..3 {
        app.write(&v, &s, "atem-rest", &format!("#{i}"), None).await;
    }
    for _ in 0..3 {
        assert_eq!(mcp.next_update().await, uri);
    }
    assert!(mcp.updates.try_recv().is_err(), "no extra updates");
}
