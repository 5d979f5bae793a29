//! The MCP server behind `/mcp`: five tools, one resource per vault, and
//! resource subscriptions.
//!
//! One [`VaultMcp`] lives per MCP session. Every HTTP request of the
//! session was authenticated in front of the service (`http::mcp`), which
//! put the [`Caller`] in the request's extensions; the handlers take it from
//! there and call [`crate::vaults`], so access rules, limits and modes are
//! the REST ones. A refusal is a tool result with `isError: true` and the
//! words REST would answer.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, InitializeRequestParams, InitializeResult,
    ListResourcesResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::watch::{WatchRequest, Watches};
use super::{SESSION_HEADER, render, vault_id_of, vault_uri};
use crate::access::{self, Action};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::idempotency;
use crate::state::AppState;
use crate::store::View;
use crate::vaults;

/// `vault_create` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateArgs {
    /// The new vault's one-line summary (may be empty).
    pub summary: String,
    /// Makes a retry safe: a repeat with the same key and summary answers
    /// with the vault the first call created (1 to 128 printable ASCII
    /// characters; the same keys as REST's `Idempotency-Key`).
    pub idempotency_key: Option<String>,
}

/// `vault_read` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadArgs {
    /// The vault to read (`v-...`).
    pub vault_id: String,
    /// Only rows with a seq above this one (for the current view: entries
    /// whose newest version is above it). Default 0: everything.
    pub since: Option<i64>,
    /// Every row (every version) in seq order instead of the current view
    /// (the newest version of each entry, by entry number).
    pub history: Option<bool>,
}

/// `vault_write` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteArgs {
    /// The vault to write to.
    pub vault_id: String,
    /// The entry's text.
    pub text: String,
    /// Edit this entry (a new version of e<entry_id>) instead of appending.
    pub entry_id: Option<i64>,
    /// Makes a retry safe: a repeat with the same key and arguments answers
    /// with the first receipt and writes nothing (1 to 128 printable ASCII
    /// characters; the same keys as REST's `Idempotency-Key`).
    pub idempotency_key: Option<String>,
}

/// `vault_set_summary` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SummaryArgs {
    /// The vault whose summary to replace.
    pub vault_id: String,
    /// The new one-line summary.
    pub text: String,
}

/// The MCP server of one MCP session.
pub struct VaultMcp {
    state: AppState,
    watches: Watches,
    tool_router: ToolRouter<Self>,
}

/// A tool result: the text rendering for models, the REST shape as
/// structured content.
fn success(text: String, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::structured(structured);
    result.content = vec![ContentBlock::text(text)];
    result
}

/// A refused tool call: `isError`, the words REST would answer, and the
/// REST status beside them.
fn refusal(e: ApiError) -> CallToolResult {
    let message = e.public_message();
    let mut result = CallToolResult::structured_error(json!({
        "error": message,
        "status": e.status().as_u16(),
    }));
    result.content = vec![ContentBlock::text(message)];
    result
}

fn reply<T>(
    outcome: Result<T, ApiError>,
    text: impl FnOnce(&T) -> String,
    shape: impl FnOnce(T) -> Value,
) -> CallToolResult {
    match outcome {
        Ok(v) => success(text(&v), shape(v)),
        Err(e) => refusal(e),
    }
}

/// Checks an optional idempotency key by the REST header's rule.
fn idempotency_key(raw: Option<String>) -> Result<Option<String>, ApiError> {
    raw.map(|k| idempotency::parse_key(k.as_bytes()))
        .transpose()
}

/// A refusal outside a tool (resources, subscriptions) is a protocol error
/// carrying the REST words and status.
fn protocol_error(e: ApiError) -> McpError {
    let status = e.status().as_u16();
    let message = e.public_message();
    let data = Some(json!({ "status": status }));
    match e {
        ApiError::NotFound(_) => McpError::resource_not_found(message, data),
        ApiError::BadRequest(_) => McpError::invalid_params(message, data),
        ApiError::Internal(_) | ApiError::Unavailable(_) => McpError::internal_error(message, data),
        _ => McpError::invalid_request(message, data),
    }
}

fn not_a_vault(uri: &str) -> McpError {
    McpError::resource_not_found(
        format!("`{uri}` is not a vault resource; vault resources are vault://<vault_id>"),
        Some(json!({ "status": 404 })),
    )
}

/// The protocol revisions served: those with an `initialize` handshake and
/// MCP sessions, where `resources/subscribe` lives.
pub fn protocol_versions() -> &'static [ProtocolVersion] {
    ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25)
}

#[tool_router]
impl VaultMcp {
    /// A server for one MCP session.
    pub fn new(state: AppState, sessions: Arc<LocalSessionManager>) -> Self {
        Self {
            watches: Watches::new(state.clone(), sessions),
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// The authenticated caller of this request.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        let caller = ctx
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::internal_error("an MCP request without a caller", None))?;
        // `/mcp` let the request in only from the credential that opened
        // this session (crate::mcp::owners).
        Ok(caller)
    }

    #[tool(
        name = "vault_list",
        description = "List the vaults you can read: your work session's vaults and those your client id wrote to. Text: one `vault_id summary` line each; structured: {\"vaults\": [{\"vault_id\", \"summary\"}]}."
    )]
    async fn vault_list(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        Ok(reply(
            vaults::list(&self.state, &caller).await,
            |v| render::vault_list(v),
            |v| json!({ "vaults": v }),
        ))
    }

    #[tool(
        name = "vault_create",
        description = "Create a vault in your work session. Structured: {\"vault_id\"}."
    )]
    async fn vault_create(
        &self,
        Parameters(args): Parameters<CreateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        let created = match idempotency_key(args.idempotency_key) {
            Ok(key) => vaults::create_keyed(&self.state, &caller, args.summary, key).await,
            Err(e) => Err(e),
        };
        Ok(reply(
            created,
            |v| format!("created vault {}", v.id),
            |v| json!({ "vault_id": v.id }),
        ))
    }

    #[tool(
        name = "vault_read",
        description = "Read a vault: by default its current view (the newest version of each entry); with history=true every row in seq order; with since=N only rows above seq N. Text: one `e3 v2 [writer] text` line per entry; structured: {\"entries\": [{\"seq\", \"entry_no\", \"version\", \"kind\", \"writer_id\", \"content\", \"created_at\"}]}."
    )]
    async fn vault_read(
        &self,
        Parameters(args): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        let view = if args.history.unwrap_or(false) {
            View::History
        } else {
            View::Current
        };
        let since = args.since.unwrap_or(0);
        Ok(reply(
            vaults::read(&self.state, &caller, &args.vault_id, view, since).await,
            |rows| render::entries(rows),
            |rows| json!({ "entries": rows }),
        ))
    }

    #[tool(
        name = "vault_write",
        description = "Append an entry to a vault, or with entry_id=N write a new version of entry eN. Structured: {\"entry_no\", \"version\", \"seq\"}."
    )]
    async fn vault_write(
        &self,
        Parameters(args): Parameters<WriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        let written = match idempotency_key(args.idempotency_key) {
            Ok(key) => {
                let (vault_id, text, entry_id) = (&args.vault_id, args.text, args.entry_id);
                vaults::write_keyed(&self.state, &caller, vault_id, text, entry_id, key).await
            }
            Err(e) => Err(e),
        };
        Ok(reply(written, render::receipt, |r| json!(r)))
    }

    #[tool(
        name = "vault_set_summary",
        description = "Replace a vault's one-line summary. Structured: {}."
    )]
    async fn vault_set_summary(
        &self,
        Parameters(args): Parameters<SummaryArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        Ok(reply(
            vaults::set_summary(&self.state, &caller, &args.vault_id, &args.text).await,
            |_| "summary set".to_string(),
            |_| json!({}),
        ))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for VaultMcp {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("vault-relay", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Shared, append-only, versioned vaults for a team of coding agents. \
             vault_list shows what you can read; vault_read shows entries as `e3 v2 [writer] text`; \
             vault_write appends (or edits with entry_id). Subscribe to vault://<vault_id> to hear \
             about new entries.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(protocol_versions())
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        // A request that reached us has its caller (`/mcp` records who opened
        // the session from the answer to this initialize).
        self.caller(&context)?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&context)?;
        let listed = vaults::list(&self.state, &caller)
            .await
            .map_err(protocol_error)?;
        let resources = listed
            .into_iter()
            .map(|v| {
                let resource = Resource::new(vault_uri(&v.vault_id), v.vault_id.clone())
                    .with_mime_type("text/plain");
                if v.summary.is_empty() {
                    resource
                } else {
                    resource.with_description(v.summary)
                }
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&context)?;
        let vault_id = vault_id_of(&request.uri).ok_or_else(|| not_a_vault(&request.uri))?;
        let vault = access::vault_for(self.state.store.as_ref(), &caller, vault_id, Action::Read)
            .await
            .map_err(protocol_error)?;
        let rows = vaults::read(&self.state, &caller, vault_id, View::Current, 0)
            .await
            .map_err(protocol_error)?;
        let text = render::vault_view(vault_id, &vault.summary, &rows);
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri)]).into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        let vault_id = vault_id_of(&request.uri).ok_or_else(|| not_a_vault(&request.uri))?;
        // Subscribing is reading: the stream's rule.
        let vault = access::vault_for(self.state.store.as_ref(), &caller, vault_id, Action::Read)
            .await
            .map_err(protocol_error)?;
        let session_id = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get(SESSION_HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.watches.add(WatchRequest {
            vault_id: vault.id,
            head_seq: vault.head_seq,
            uri: request.uri,
            principal: caller.principal,
            peer: context.peer.clone(),
            session_id,
        });
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.caller(&context)?;
        self.watches.remove(&request.uri);
        Ok(())
    }
}
