//! The WebSocket handshake, done here rather than by axum's extractor so the
//! socket is a plain tokio-tungstenite stream: that lets the relay write
//! its frames to the connection itself, from bytes encoded once for every
//! socket, and leave the library only the client's frames and the control
//! frames (see [`super::socket`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::error::ApiError;

/// A server-side stream socket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A request that asked to become a WebSocket (HTTP/1.1, version 13).
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let refuse = |what: &str| {
            ApiError::BadRequest(format!(
                "this route is a WebSocket: connect with a WebSocket client ({what})"
            ))
        };
        if parts.method != Method::GET {
            return Err(refuse("use GET"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(refuse("missing Connection: upgrade and Upgrade: websocket"));
        }
        if !header_has_token(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(refuse("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| refuse("missing Sec-WebSocket-Key"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| refuse("this connection cannot be upgraded"))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and runs `serve` on the socket once the client has it.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    serve(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
            [(header::SEC_WEBSOCKET_ACCEPT, accept)],
        )
            .into_response()
    }
}
