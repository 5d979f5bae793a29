//! The HTTP edge: one module per resource, each with its own `router()`.
//! Handlers parse, ask [`crate::access`], call the store and shape the reply.
//!
//! Every route is declared once, with its OpenAPI description: see
//! [`openapi`] for how, and [`routes`] for the list.

pub mod admin;
pub mod edge;
pub mod encryption;
pub mod health;
pub mod links;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod sessions;
pub mod stream;
pub mod vaults;
pub mod web;

use std::path::PathBuf;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware;
use axum::routing::any;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use utoipa_axum::router::OpenApiRouter;

use crate::error::{method_not_allowed, route_not_found};
use crate::state::AppState;

/// Every route the relay serves (but the fallbacks and the document's own
/// route), each with its OpenAPI description.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::default()
        .merge(vaults::router())
        .merge(stream::router())
        .merge(links::router())
        .merge(sessions::router())
        .merge(admin::router())
        .merge(encryption::router())
        .merge(health::router())
        .merge(mcp::router(state))
        .merge(metrics::router());
    // The default body limit covers the routes above; a route with a larger
    // one is merged below with `edge::with_body_limit` of its own.
    edge::with_body_limit(routes, state.settings.max_body_bytes).merge(encryption::rewrite_router(
        state.settings.max_rewrite_body_bytes,
    ))
}

/// The whole application's routes.
pub fn router(state: AppState, web_dir: Option<PathBuf>, cors_origin: Option<&str>) -> Router {
    let api = openapi::with_document(routes(&state))
        // Not routes of their own: the answer for any `/api` path that no
        // route above names.
        .route("/api", any(route_not_found))
        .route("/api/", any(route_not_found))
        .route("/api/{*rest}", any(route_not_found))
        .method_not_allowed_fallback(method_not_allowed);
    let app = web::serve(api, web_dir)
        // Spans name the route template, never the URI: paths can hold
        // session ids and query strings can hold client ids.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "(static)".to_owned());
                    tracing::info_span!("request", method = %req.method(), route)
                })
                // A fault is logged at error where it happens, with its
                // detail (ApiError::Internal); the other 5xx (an unreachable
                // database, a full room of long polls, shutting down) are
                // the load's or the operator's, not faults: this line says
                // that a response failed, at warn.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        );
    // CORS_ORIGIN may list several origins, comma-separated; a request from
    // any other origin gets no CORS headers at all.
    let origins: Vec<HeaderValue> = cors_origin
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = o, "ignoring an unusable CORS_ORIGIN entry");
                None
            }
        })
        .collect();
    let app = if origins.is_empty() {
        app
    } else {
        app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::IF_NONE_MATCH,
                    header::HeaderName::from_static(crate::idempotency::HEADER),
                    // Browser MCP clients: the session, the revision and
                    // resuming the event stream.
                    header::HeaderName::from_static(crate::mcp::SESSION_HEADER),
                    header::HeaderName::from_static(crate::mcp::PROTOCOL_VERSION_HEADER),
                    header::HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([
                    header::ETAG,
                    header::LINK,
                    header::RETRY_AFTER,
                    header::HeaderName::from_static(crate::mcp::SESSION_HEADER),
                ]),
        )
    };
    // The edge's limits apply to every answer (CORS preflights and static
    // files too).
    let app = app.layer(middleware::from_fn_with_state(state.clone(), edge::guard));
    // Outermost, so it counts every answer: CORS preflights, the static
    // files and the fallbacks too. Routing runs first, so the route
    // template is known here.
    let app = app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::metrics::track_http,
    ));
    app.with_state(state)
}
