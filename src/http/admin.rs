//! The admin API: `/api/admin/astations`, guarded by the admin token.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminAuth;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::openapi::{AdminRefusals, BodyRefusals, Empty, ErrorBody};
use crate::pairing;
use crate::state::AppState;
use crate::store::Astation;

/// Routes under `/api/admin`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(add, list))
        .routes(routes!(remove))
}

#[derive(Deserialize, ToSchema)]
struct AddAstationBody {
    /// A name for people (the astation's owner or machine).
    name: String,
}

/// `POST /api/admin/astations`'s answer.
#[derive(Serialize, ToSchema)]
struct AstationAdded {
    astation_id: String,
    /// The astation's token, shown this once (stored only as a hash).
    token: String,
}

/// Registers an astation.
#[utoipa::path(
    post,
    path = "/api/admin/astations",
    operation_id = "add_astation",
    tag = "admin",
    request_body = AddAstationBody,
    responses(
        (status = 200, description = "The astation and its token, shown once", body = AstationAdded),
        (status = 400, description = "Malformed body or an unusable name", body = ErrorBody),
        BodyRefusals,
        AdminRefusals,
    ),
    security(("admin" = []))
)]
async fn add(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiJson(body): ApiJson<AddAstationBody>,
) -> Result<Json<AstationAdded>, ApiError> {
    let (astation, token) = pairing::register_astation(state.store.as_ref(), &body.name).await?;
    tracing::info!(astation_id = %astation.astation_id, "astation registered");
    Ok(Json(AstationAdded {
        astation_id: astation.astation_id,
        token,
    }))
}

/// Lists registered astations.
#[utoipa::path(
    get,
    path = "/api/admin/astations",
    operation_id = "list_astations",
    tag = "admin",
    responses(
        (status = 200, description = "Every registered astation", body = Vec<Astation>),
        AdminRefusals,
    ),
    security(("admin" = []))
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<Vec<Astation>>, ApiError> {
    Ok(Json(state.store.list_astations().await?))
}

/// Removes an astation and revokes its sessions (their streams close).
#[utoipa::path(
    delete,
    path = "/api/admin/astations/{id}",
    operation_id = "remove_astation",
    tag = "admin",
    params(("id" = String, Path, description = "The astation")),
    responses(
        (status = 200, description = "Removed", body = Empty),
        (status = 404, description = "No such astation", body = ErrorBody),
        AdminRefusals,
    ),
    security(("admin" = []))
)]
async fn remove(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Empty>, ApiError> {
    if !crate::secrets::is_plain_id(&id) {
        return Err(ApiError::NotFound("no such astation".into()));
    }
    state.store.delete_astation(&id).await?;
    tracing::info!(astation_id = %id, "astation removed; its sessions are revoked");
    Ok(Json(Empty {}))
}
