//! `GET /metrics`: the relay's Prometheus metrics, for the admin token
//! unless `METRICS_PUBLIC=true`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(
    State(state): State<AppState>,
    admin: Result<AdminAuth, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.settings.metrics_public {
        admin?;
    }
    Ok((
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(state.store.as_ref()),
    ))
}
