//! The browser viewer: static files from `web/`, served at the root with a
//! strict Content-Security-Policy (our own scripts, styles and WebSocket
//! only) and revalidating caching.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Finds the viewer's files: `WEB_DIR` if set, else `web/` in the working
/// directory, next to the executable's repository, or `/app/web` (Docker).
pub fn locate(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from("web")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/vault-relay -> repository root.
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("web"));
        }
    }
    candidates.push(PathBuf::from("/app/web"));
    candidates
        .into_iter()
        .find(|dir| dir.join("index.html").is_file())
}

/// Adds the static files as the fallback of `api`.
pub fn serve(api: Router<AppState>, web_dir: Option<PathBuf>) -> Router<AppState> {
    let Some(dir) = web_dir else {
        tracing::warn!("no web/ directory found; the browser viewer is not served (set WEB_DIR)");
        return api;
    };
    let files = Router::new()
        .fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ));
    api.merge(files)
}
