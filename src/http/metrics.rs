//! `GET /metrics`: the relay's Prometheus metrics, for the admin token
//! unless `METRICS_PUBLIC=true`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::http::openapi::AdminRefusals;
use crate::state::AppState;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(metrics))
}

/// The relay's metrics (the README's Monitoring section lists every
/// series). Open to anyone when METRICS_PUBLIC=true.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        AdminRefusals,
    ),
    security(("admin" = []))
)]
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
