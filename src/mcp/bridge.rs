//! `vault-relay mcp`: an MCP server on stdin/stdout that forwards every
//! request to a relay's `/mcp` over Streamable HTTP, for agents that only
//! start stdio servers.
//!
//! Two halves of the same SDK meet here: an MCP client session with the
//! relay (its credential in the `Authorization` header, never in the URL),
//! and a stdio server whose tools, resources and subscriptions are the
//! relay's. Resource updates the relay sends are passed on to the agent.
//! The relay decides everything; the bridge keeps no state of its own.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation,
    InitializeRequestParams, InitializeResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ResourceUpdatedNotificationParam, ServerConfig, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{
    ClientHandler, ErrorData as McpError, Peer, RoleClient, RoleServer, ServerHandler,
    ServiceError, ServiceExt,
};

use crate::config::McpArgs;

/// Where the agent's side of the bridge is, once it has connected.
type Downstream = Arc<OnceLock<Peer<RoleServer>>>;

/// The client half: hears the relay and passes its notifications on.
struct Upstream {
    downstream: Downstream,
}

impl ClientHandler for Upstream {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("vault-relay-mcp-bridge", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(agent) = self.downstream.get()
            && let Err(e) = agent.notify_resource_updated(params).await
        {
            tracing::debug!(error = %e, "could not pass a resource update on");
        }
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(agent) = self.downstream.get() {
            let _ = agent.notify_resource_list_changed().await;
        }
    }
}

/// The server half: the agent's MCP server, answered by the relay.
struct Bridge {
    relay: Peer<RoleClient>,
    /// What the relay said about itself when the bridge connected.
    relay_info: ServerConfig,
    downstream: Downstream,
}

/// A relay answer that is not a result: the relay's own error as is, or
/// why it could not be reached.
fn relay_error(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        other => McpError::internal_error(format!("the relay did not answer: {other}"), None),
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        self.relay_info.clone()
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(super::server::protocol_versions())
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let _ = self.downstream.set(context.peer.clone());
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.relay.list_tools(request).await.map_err(relay_error)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.relay
            .call_tool(request)
            .await
            .map(Into::into)
            .map_err(relay_error)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.relay
            .list_resources(request)
            .await
            .map_err(relay_error)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.relay
            .read_resource(request)
            .await
            .map(Into::into)
            .map_err(relay_error)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.relay.subscribe(request).await.map_err(relay_error)
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.relay.unsubscribe(request).await.map_err(relay_error)
    }
}

/// Opens the MCP session with the relay.
async fn connect(
    args: &McpArgs,
    downstream: Downstream,
) -> Result<RunningService<RoleClient, Upstream>, String> {
    let url = format!(
        "{}/mcp?id={}",
        args.relay_url.trim_end_matches('/'),
        crate::cli::urlencode(&args.client_id)
    );
    let config = StreamableHttpClientTransportConfig::with_uri(url.clone())
        .auth_header(args.session.clone())
        // A relay that restarted, or a request that reached another
        // replica, has forgotten the session: open a new one.
        .reinit_on_expired_session(true);
    let transport = StreamableHttpClientTransport::from_config(config);
    Upstream { downstream }
        .serve(transport)
        .await
        .map_err(|e| format!("could not open an MCP session with {url}: {e}"))
}

/// Runs the bridge until the agent closes stdin or the relay goes away.
pub async fn run(args: McpArgs) -> Result<(), String> {
    let downstream: Downstream = Arc::default();
    let relay = connect(&args, downstream.clone()).await?;
    let peer_info = relay
        .peer_info()
        .ok_or("the relay did not describe itself when the session opened")?;
    let mut relay_info = InitializeResult::new(peer_info.capabilities.clone());
    relay_info.protocol_version = peer_info.protocol_version.clone();
    relay_info.instructions = peer_info.instructions.clone();
    if let Some(server) = &peer_info.server_info {
        relay_info.server_info = server.clone();
    }
    let bridge = Bridge {
        relay: relay.peer().clone(),
        relay_info,
        downstream,
    };
    let agent = bridge
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("the agent did not start an MCP session on stdin: {e}"))?;
    let ended = agent.waiting().await;
    let _ = relay.cancel().await;
    ended
        .map(|_| ())
        .map_err(|e| format!("the bridge stopped: {e}"))
}
