//! Pairing and sessions: `/api/sessions`. The rules live in [`crate::auth`].

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, AstationAuth};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::state::AppState;

/// Routes under `/api/sessions`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", post(create))
        .route("/api/sessions/{id}/status", get(status))
        .route("/api/sessions/{id}/grant", post(grant))
        .route("/api/sessions/{id}/deny", post(deny))
        .route("/api/sessions/{id}", delete(revoke))
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    hostname: String,
}

#[derive(Deserialize)]
struct GrantBody {
    otp: String,
}

/// Without a bearer token: a pending session with a one-time code. With an
/// astation's token: a session granted at once.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.as_ref();
    let hostname = auth::validate_name("hostname", &body.hostname, false)?;
    match auth::optional_astation(store, &headers).await? {
        Some(astation) => {
            let id = auth::mint_session(store, &astation, &hostname).await?;
            Ok(Json(json!({
                "id": id,
                "status": "granted",
                "astation_id": astation.astation_id,
            })))
        }
        None => {
            let p = auth::start_pairing(store, &hostname, state.settings.pairing_ttl).await?;
            Ok(Json(json!({
                "id": p.id,
                "otp": p.otp,
                "status": "pending",
                "expires_at": p.expires_at,
            })))
        }
    }
}

async fn status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let status = auth::session_status(state.store.as_ref(), &id).await?;
    Ok(Json(json!({ "status": status })))
}

async fn grant(
    State(state): State<AppState>,
    AstationAuth(astation): AstationAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<Json<Value>, ApiError> {
    auth::grant(state.store.as_ref(), &id, &body.otp, &astation).await?;
    Ok(Json(json!({
        "status": "granted",
        "astation_id": astation.astation_id,
    })))
}

async fn deny(
    State(state): State<AppState>,
    AstationAuth(_astation): AstationAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    auth::deny(state.store.as_ref(), &id).await?;
    Ok(Json(json!({ "status": "denied" })))
}

async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    auth::revoke(state.store.as_ref(), &id, &headers).await?;
    Ok(Json(json!({})))
}
