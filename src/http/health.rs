//! `GET /health`: 200 with the backend when the store answers, 503 if not.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::AppState;

/// The health route.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let backend = state.store.backend();
    match state.store.health().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "backend": backend })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "backend": backend,
                    "error": "the store is unreachable",
                })),
            )
        }
    }
}
