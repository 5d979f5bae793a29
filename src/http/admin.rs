//! The admin API: `/api/admin/astations`, guarded by the admin token.

use axum::extract::State;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, AdminAuth};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::Astation;

/// Routes under `/api/admin`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/astations", post(add).get(list))
        .route("/api/admin/astations/{id}", delete(remove))
}

#[derive(Deserialize)]
struct AddBody {
    name: String,
}

async fn add(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<Json<Value>, ApiError> {
    let (astation, token) = auth::register_astation(state.store.as_ref(), &body.name).await?;
    tracing::info!(astation_id = %astation.astation_id, "astation registered");
    Ok(Json(
        json!({ "astation_id": astation.astation_id, "token": token }),
    ))
}

async fn list(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<Vec<Astation>>, ApiError> {
    Ok(Json(state.store.list_astations().await?))
}

async fn remove(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !crate::secrets::is_plain_id(&id) {
        return Err(ApiError::NotFound("no such astation".into()));
    }
    state.store.delete_astation(&id).await?;
    tracing::info!(astation_id = %id, "astation removed; its sessions are revoked");
    Ok(Json(json!({})))
}
