//! `/mcp`: the MCP server ([`crate::mcp::server`]) on the Streamable HTTP
//! transport, behind the same credential check as the vault routes.
//!
//! Every request (POST, the GET event stream, DELETE) is authenticated here
//! before the MCP service sees it, so a refusal is a plain HTTP 401/403/400
//! with our JSON body and no MCP exchange. The resolved [`Caller`] travels
//! in the request's extensions, where the MCP handlers find it.
//!
//! MCP sessions live in the process that opened them. Behind a load
//! balancer with several replicas, a request for a session another replica
//! holds gets 404, and MCP clients answer that by initializing a new
//! session; subscriptions and tool results do not depend on the replica.

use std::sync::Arc;

use axum::extract::{Extension, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::auth::{Caller, McpCaller};
use crate::error::ApiError;
use crate::http::openapi::{ClientId, Refusals};
use crate::mcp::SESSION_HEADER;
use crate::mcp::owners::{Access, Owners};
use crate::mcp::server::VaultMcp;
use crate::state::AppState;

/// The most of an error body from the MCP library that is read to re-wrap
/// it in our JSON shape.
const MAX_LIBRARY_ERROR_BYTES: usize = 16 * 1024;

/// The MCP library's service, handed to the handlers below.
#[derive(Clone)]
struct Mcp(StreamableHttpService<VaultMcp, LocalSessionManager>);

/// The `/mcp` route.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    let sessions = Arc::new(LocalSessionManager::default());
    let config = StreamableHttpServerConfig::default()
        // The library's Host check guards unauthenticated local servers
        // against DNS rebinding; every request here carries a credential,
        // and the relay is meant to be reached under any public name.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(state.settings.max_body_bytes)
        .with_sse_keep_alive(Some(state.settings.stream_ping));
    // Event streams would otherwise hold graceful shutdown open.
    let cancel = config.cancellation_token.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown.wait().await;
        cancel.cancel();
    });
    let factory = {
        let (state, sessions) = (state.clone(), sessions.clone());
        move || Ok(VaultMcp::new(state.clone(), sessions.clone()))
    };
    let owners = Owners::new(sessions.clone());
    owners.end_on_revocation(state);
    let service = Mcp(StreamableHttpService::new(factory, sessions, config));
    OpenApiRouter::default()
        .routes(routes!(post_mcp, get_mcp, delete_mcp).layer(Extension(service)))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // Outside the check, so that the check finds it.
        .layer(Extension(owners))
}

/// Hands a request to the MCP library.
async fn serve(Mcp(service): Mcp, request: Request) -> Response {
    service.handle(request).await.map(axum::body::Body::new)
}

/// Sends a JSON-RPC message (initialize, tools/call, resources/subscribe,
/// ...) of the Model Context Protocol's Streamable HTTP transport; the
/// answer is JSON or an event stream of JSON-RPC messages.
#[utoipa::path(
    post,
    path = "/mcp",
    operation_id = "mcp_message",
    tag = "mcp",
    params(ClientId),
    request_body(content = serde_json::Value, content_type = "application/json", description = "A JSON-RPC 2.0 message"),
    responses(
        (status = 200, description = "The JSON-RPC answer, as application/json or text/event-stream"),
        (status = 202, description = "A notification or response was accepted"),
        Refusals,
    ),
    security(("session" = []), ("session_bearer" = []))
)]
async fn post_mcp(Extension(mcp): Extension<Mcp>, request: Request) -> Response {
    serve(mcp, request).await
}

/// Opens the MCP session's event stream (server-to-client messages such
/// as `notifications/resources/updated`).
#[utoipa::path(
    get,
    path = "/mcp",
    operation_id = "mcp_events",
    tag = "mcp",
    params(ClientId),
    responses(
        (status = 200, description = "An event stream of JSON-RPC messages", content_type = "text/event-stream"),
        Refusals,
    ),
    security(("session" = []), ("session_bearer" = []))
)]
async fn get_mcp(Extension(mcp): Extension<Mcp>, request: Request) -> Response {
    serve(mcp, request).await
}

/// Ends the MCP session named by the `Mcp-Session-Id` header.
#[utoipa::path(
    delete,
    path = "/mcp",
    operation_id = "mcp_end_session",
    tag = "mcp",
    params(ClientId),
    responses(
        (status = 200, description = "The session ended"),
        Refusals,
    ),
    security(("session" = []), ("session_bearer" = []))
)]
async fn delete_mcp(Extension(mcp): Extension<Mcp>, request: Request) -> Response {
    serve(mcp, request).await
}

/// Resolves the caller before the MCP service runs, lets a request that
/// names an MCP session through only from the credential that opened it
/// ([`Owners`]), and gives the library's own HTTP refusals (wrong Accept,
/// ...) our JSON error shape.
async fn authenticate(
    Extension(owners): Extension<Owners>,
    McpCaller(caller): McpCaller,
    mut request: Request,
    next: Next,
) -> Response {
    let named = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &named {
        match owners.check(id, &caller.principal).await {
            Access::Allowed => {}
            Access::Forbidden => {
                return ApiError::Forbidden(
                    "this MCP session was opened with another credential; initialize a new session"
                        .into(),
                )
                .into_response();
            }
            Access::Unknown => {
                return ApiError::NotFound(
                    "no such MCP session: it ended, timed out or lives on another relay; \
                     initialize a new one"
                        .into(),
                )
                .into_response();
            }
        }
    }
    let principal = caller.principal.clone();
    let ends = request.method() == Method::DELETE;
    request.extensions_mut().insert::<Caller>(caller);
    let sent_json = is_json(request.headers());
    let response = next.run(request).await;
    if response.status().is_success() {
        match &named {
            Some(id) if ends => owners.ended(id),
            Some(_) => {}
            None => {
                let opened = response.headers().get(SESSION_HEADER);
                if let Some(id) = opened.and_then(|v| v.to_str().ok()) {
                    owners.opened(id, principal).await;
                }
            }
        }
    }
    if !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    if is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_LIBRARY_ERROR_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("refused")
            .to_string()
    } else {
        text
    };
    // The library answers 415 for a JSON body that is not one JSON-RPC 2.0
    // message too; with the right Content-Type, the body is what to fix.
    let status = match parts.status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE if sent_json => StatusCode::BAD_REQUEST,
        other => other,
    };
    let mut rewrapped = match status.as_u16() {
        404 => ApiError::NotFound(format!(
            "{message}; the MCP session ended or lives on another relay: initialize a new one"
        )),
        413 => ApiError::TooLarge(message),
        415 => ApiError::UnsupportedMediaType(message),
        400 if sent_json && parts.status != status => ApiError::BadRequest(format!(
            "the body is not one JSON-RPC 2.0 message (an object with \"jsonrpc\": \"2.0\", \
             a \"method\" and, for a request, an \"id\"): {message}"
        )),
        400 if message.contains("Session ID") => ApiError::BadRequest(format!(
            "{message}: send the `Mcp-Session-Id` header that `initialize` answered with"
        )),
        500.. => ApiError::Internal(message),
        _ => ApiError::BadRequest(message),
    }
    .into_response();
    // Keep the library's status (but the 415 above) and headers (Allow,
    // ...), with our body.
    *rewrapped.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewrapped.headers_mut().insert(name, value.clone());
        }
    }
    rewrapped
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
