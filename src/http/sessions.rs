//! Pairing and sessions: `/api/sessions`. The rules live in [`crate::auth`].

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, AstationAuth};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::openapi::{BodyRefusals, Empty, ErrorBody, Refusals};
use crate::limits::ClientAddr;
use crate::pairing;
use crate::state::AppState;

/// Routes under `/api/sessions`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create))
        .routes(routes!(status))
        .routes(routes!(grant))
        .routes(routes!(deny))
        .routes(routes!(revoke))
}

#[derive(Deserialize, ToSchema)]
struct CreateSessionBody {
    /// The requesting machine's name, shown to the astation's owner.
    #[serde(default)]
    hostname: String,
}

#[derive(Deserialize, ToSchema)]
struct GrantSessionBody {
    /// The one-time code the pending session shows.
    otp: String,
}

/// `POST /api/sessions`'s answer: pending without a token, granted with an
/// astation's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum SessionCreated {
    /// A pairing waiting for its grant.
    Pending {
        id: String,
        /// The one-time code to show the astation's owner.
        otp: String,
        /// Always `pending`.
        status: &'static str,
        expires_at: DateTime<Utc>,
    },
    /// A session granted at once by the astation whose token came along.
    Granted {
        id: String,
        /// Always `granted`.
        status: &'static str,
        astation_id: String,
    },
}

/// A session's status, optionally with the astation that granted it.
#[derive(Serialize, ToSchema)]
struct SessionStatus {
    /// `pending`, `granted`, `denied`, `expired` or `revoked`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    astation_id: Option<String>,
}

/// Without a bearer token: a pending session with a one-time code. With an
/// astation's token: a session granted at once.
#[utoipa::path(
    post,
    path = "/api/sessions",
    operation_id = "create_session",
    tag = "sessions",
    request_body = CreateSessionBody,
    responses(
        (status = 200, description = "A pending pairing, or a granted session with an astation token", body = SessionCreated),
        (status = 400, description = "Malformed body or an unusable hostname", body = ErrorBody),
        (status = 401, description = "Unknown astation token", body = ErrorBody),
        BodyRefusals,
        Refusals,
    ),
    security((), ("astation" = []))
)]
async fn create(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSessionBody>,
) -> Result<Json<SessionCreated>, ApiError> {
    let store = state.store.as_ref();
    let hostname = pairing::validate_name("hostname", &body.hostname, false)?;
    match auth::optional_astation(&state, addr, &headers).await? {
        Some(astation) => {
            let id = pairing::mint_session(store, &astation, &hostname).await?;
            Ok(Json(SessionCreated::Granted {
                id,
                status: "granted",
                astation_id: astation.astation_id,
            }))
        }
        None => {
            state.limits.check_pairing(addr)?;
            let p = pairing::start_pairing(store, &hostname, state.settings.pairing_ttl).await?;
            Ok(Json(SessionCreated::Pending {
                id: p.id,
                otp: p.otp,
                status: "pending",
                expires_at: p.expires_at,
            }))
        }
    }
}

/// A session's status (for the pairing client to poll).
#[utoipa::path(
    get,
    path = "/api/sessions/{id}/status",
    operation_id = "session_status",
    tag = "sessions",
    params(("id" = String, Path, description = "The session")),
    responses(
        (status = 200, description = "The status", body = SessionStatus),
        (status = 404, description = "No such session", body = ErrorBody),
        Refusals,
    )
)]
async fn status(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionStatus>, ApiError> {
    let status = pairing::session_status(&state, addr, &id).await?;
    Ok(Json(SessionStatus {
        status,
        astation_id: None,
    }))
}

/// Grants a pending session with the code it shows.
#[utoipa::path(
    post,
    path = "/api/sessions/{id}/grant",
    operation_id = "grant_session",
    tag = "sessions",
    params(("id" = String, Path, description = "The pending session")),
    request_body = GrantSessionBody,
    responses(
        (status = 200, description = "Granted, bound to this astation", body = SessionStatus),
        (status = 401, description = "Missing or unknown astation token", body = ErrorBody),
        (status = 403, description = "Wrong code (after 5, the session is denied)", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session is no longer pending", body = ErrorBody),
        (status = 410, description = "The pairing expired", body = ErrorBody),
        BodyRefusals,
        Refusals,
    ),
    security(("astation" = []))
)]
async fn grant(
    State(state): State<AppState>,
    AstationAuth(astation): AstationAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<GrantSessionBody>,
) -> Result<Json<SessionStatus>, ApiError> {
    pairing::grant(state.store.as_ref(), &id, &body.otp, &astation).await?;
    Ok(Json(SessionStatus {
        status: "granted",
        astation_id: Some(astation.astation_id),
    }))
}

/// Denies a pending session.
#[utoipa::path(
    post,
    path = "/api/sessions/{id}/deny",
    operation_id = "deny_session",
    tag = "sessions",
    params(("id" = String, Path, description = "The pending session")),
    responses(
        (status = 200, description = "Denied", body = SessionStatus),
        (status = 401, description = "Missing or unknown astation token", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session is no longer pending", body = ErrorBody),
        (status = 410, description = "The pairing expired", body = ErrorBody),
        Refusals,
    ),
    security(("astation" = []))
)]
async fn deny(
    State(state): State<AppState>,
    AstationAuth(_astation): AstationAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionStatus>, ApiError> {
    pairing::deny(state.store.as_ref(), &id).await?;
    Ok(Json(SessionStatus {
        status: "denied",
        astation_id: None,
    }))
}

/// Revokes a session: with its astation's token, or with the session
/// itself. Its streams close.
#[utoipa::path(
    delete,
    path = "/api/sessions/{id}",
    operation_id = "revoke_session",
    tag = "sessions",
    params(("id" = String, Path, description = "The session")),
    responses(
        (status = 200, description = "Revoked", body = Empty),
        (status = 401, description = "Missing credential, or an unknown astation token", body = ErrorBody),
        (status = 403, description = "A credential that does not own this session: another session, or the token of another astation", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        Refusals,
    ),
    security(("astation" = []), ("session" = []))
)]
async fn revoke(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Empty>, ApiError> {
    auth::revoke(&state, addr, &id, &headers).await?;
    Ok(Json(Empty {}))
}
