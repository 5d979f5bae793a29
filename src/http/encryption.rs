//! End-to-end encryption routes:
//!
//! - `GET /api/encryption` with an astation's bearer token: its work
//!   session's mode, kid and field counts; with a session (`?id=`): the mode
//!   and kid of the caller's work session;
//! - `POST /api/encryption {"mode", "kid"?}` (astation): a change of mode;
//! - `POST /api/vault/{vault_id}/encryption?id=` (session): the rewrite, with
//!   its own, larger body limit (`MAX_REWRITE_BODY_BYTES`).
//!
//! The rules live in [`crate::encryption`].

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{AstationAuth, Caller};
use crate::encryption::{self, RewriteBody, RewriteOutcome, Status};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::state::AppState;

/// Encryption routes; `rewrite_body_limit` is the rewrite route's body limit.
pub fn router(rewrite_body_limit: usize) -> Router<AppState> {
    Router::new()
        .route("/api/encryption", get(status).post(set_mode))
        .route(
            "/api/vault/{vault_id}/encryption",
            post(rewrite).layer(DefaultBodyLimit::max(rewrite_body_limit)),
        )
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
    kid: Option<String>,
}

/// Whether the request authenticates with a bearer token (an astation)
/// rather than a session.
fn is_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

async fn status(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    if is_bearer(&parts.headers) {
        let AstationAuth(astation) = AstationAuth::from_request_parts(&mut parts, &state).await?;
        let status = encryption::status(&state, &astation.astation_id).await?;
        Ok(Json(status).into_response())
    } else {
        let caller = Caller::from_request_parts(&mut parts, &state).await?;
        Ok(Json(encryption::session_view(&state, &caller).await?).into_response())
    }
}

async fn set_mode(
    State(state): State<AppState>,
    AstationAuth(astation): AstationAuth,
    ApiJson(body): ApiJson<ModeBody>,
) -> Result<Json<Status>, ApiError> {
    let status = encryption::set(
        &state,
        &astation.astation_id,
        &body.mode,
        body.kid.as_deref(),
    )
    .await?;
    Ok(Json(status))
}

async fn rewrite(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
    ApiJson(body): ApiJson<RewriteBody>,
) -> Result<Json<RewriteOutcome>, ApiError> {
    Ok(Json(
        encryption::rewrite(&state, &caller, &vault_id, body).await?,
    ))
}
