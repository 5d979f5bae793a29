//! The browser viewer: static files from `web/`, served at the root with a
//! strict Content-Security-Policy (our own scripts, styles and WebSocket
//! only) and revalidating caching.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::ApiError;
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
    let files = ServeDir::new(dir).append_index_html_on_directories(true);
    let files = Router::new()
        .fallback(move |req: Request| serve_file(files.clone(), req))
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

/// One static file, or a JSON error: a path that names no file is 404
/// whatever its length or bytes, never a 5xx, and never logged above debug.
async fn serve_file(mut files: ServeDir, req: Request) -> Response {
    match files.try_call(req).await {
        Ok(response) if response.status().is_client_error() => {
            file_refusal(response.status(), response.headers())
        }
        // ServeDir's only 5xx without an I/O error is a directory redirect
        // it could not build: no file there either.
        Ok(response) if response.status().is_server_error() => {
            file_refusal(StatusCode::NOT_FOUND, response.headers())
        }
        Ok(response) => response.map(Body::new),
        Err(e) if names_no_file(&e) => {
            tracing::debug!(error = %e, "static path names no file");
            file_refusal(StatusCode::NOT_FOUND, &HeaderMap::new())
        }
        Err(e) => ApiError::Internal(format!("reading a static file: {e}")).into_response(),
    }
}

/// I/O errors that mean the path cannot name a file (too long a name, a
/// file used as a directory, bytes the file system refuses), as opposed to
/// a fault of the disk.
fn names_no_file(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound | PermissionDenied | InvalidFilename | InvalidInput | NotADirectory | IsADirectory
    )
}

fn file_refusal(status: StatusCode, headers: &HeaderMap) -> Response {
    let message = match status {
        StatusCode::NOT_FOUND => "no such file; the viewer is at /".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "the viewer's files are read with GET or HEAD".into(),
        other => format!(
            "the viewer's files cannot answer this request ({})",
            other.canonical_reason().unwrap_or("refused")
        ),
    };
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    // Keep what ServeDir said about the refusal (Allow, Content-Range).
    for name in [header::ALLOW, header::CONTENT_RANGE] {
        if let Some(v) = headers.get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    response
}
