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

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AnyOfBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AstationAuth, Caller};
use crate::encryption::{self, RewriteBody, RewriteOutcome, SessionView, Status};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::edge;
use crate::http::openapi::{BodyRefusals, ClientId, ErrorBody, Refusals, VaultId, VaultRefusals};
use crate::state::AppState;

/// The encryption mode routes (the default body limit applies).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(status, set_mode))
}

/// The rewrite route, with its own body limit `rewrite_body_limit`: merged
/// after the default limit was applied to the other routes, so a declared
/// `Content-Length` is checked against this limit, not the default.
pub fn rewrite_router(rewrite_body_limit: usize) -> OpenApiRouter<AppState> {
    edge::with_body_limit(
        OpenApiRouter::default().routes(routes!(rewrite)),
        rewrite_body_limit,
    )
}

#[derive(Deserialize, ToSchema)]
struct ModeBody {
    /// `off`, `enabling`, `on` or `disabling`.
    mode: String,
    /// The key id (8 lowercase hex characters): required to move from `off`
    /// to `enabling` and for key rotation (`on` to `enabling`, a new kid);
    /// otherwise optional, and when given it must be the current kid.
    kid: Option<String>,
}

/// `GET /api/encryption`'s answer: the astation's full status, or what a
/// session sees.
#[derive(Serialize)]
#[serde(untagged)]
enum EncryptionAnswer {
    Astation(Status),
    Session(SessionView),
}

// By hand: the derive would say `oneOf`, but a full status also has the
// session view's fields, so it is `anyOf`.
impl PartialSchema for EncryptionAnswer {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(Status::name()))
            .item(Ref::from_schema_name(SessionView::name()))
            .description(Some(
                "The astation's full status, or a session's view (mode and kid)",
            ))
            .into()
    }
}

impl ToSchema for EncryptionAnswer {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Status::name().into_owned(), Status::schema()));
        Status::schemas(schemas);
        schemas.push((SessionView::name().into_owned(), SessionView::schema()));
        SessionView::schemas(schemas);
    }
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

/// The encryption mode of a work session: with an astation's token, its own
/// (with field counts); with a session (and `?id=`), the caller's.
#[utoipa::path(
    get,
    path = "/api/encryption",
    operation_id = "encryption_status",
    tag = "encryption",
    params(("id" = Option<String>, Query, description = "With a session: the client id")),
    responses(
        (status = 200, description = "The astation's status (mode, kid, updated_at, counts), or for a session its mode and kid", body = EncryptionAnswer),
        (status = 400, description = "A session without `?id`", body = ErrorBody),
        (status = 401, description = "Missing or unusable credential", body = ErrorBody),
        Refusals,
    ),
    security(("astation" = []), ("session" = []))
)]
async fn status(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<EncryptionAnswer>, ApiError> {
    let (mut parts, _) = req.into_parts();
    if is_bearer(&parts.headers) {
        let AstationAuth(astation) = AstationAuth::from_request_parts(&mut parts, &state).await?;
        let status = encryption::status(&state, &astation.astation_id).await?;
        Ok(Json(EncryptionAnswer::Astation(status)))
    } else {
        let caller = Caller::from_request_parts(&mut parts, &state).await?;
        Ok(Json(EncryptionAnswer::Session(
            encryption::session_view(&state, &caller).await?,
        )))
    }
}

/// Changes the astation's work session's encryption mode.
#[utoipa::path(
    post,
    path = "/api/encryption",
    operation_id = "set_encryption_mode",
    tag = "encryption",
    request_body = ModeBody,
    responses(
        (status = 200, description = "The status after the change", body = Status),
        (status = 400, description = "An unknown mode or a malformed kid", body = ErrorBody),
        (status = 401, description = "Missing or unknown astation token", body = ErrorBody),
        (status = 409, description = "`invalid encryption transition <from> -> <to>: ...`, or the current mode with another kid", body = ErrorBody),
        BodyRefusals,
        Refusals,
    ),
    security(("astation" = []))
)]
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

/// Rewrites the vault's summary and the listed rows in place, for a change
/// of encryption mode; each rewritten row gets a fresh seq. Its body may be
/// up to MAX_REWRITE_BODY_BYTES.
#[utoipa::path(
    post,
    path = "/api/vault/{vault_id}/encryption",
    operation_id = "rewrite_vault",
    tag = "encryption",
    params(VaultId, ClientId),
    request_body = RewriteBody,
    responses(
        (status = 200, description = "How many rows were rewritten (`skipped` says why none were, for a past writer from another work session)", body = RewriteOutcome),
        (status = 409, description = "Not in `enabling` or `disabling`, or a value the mode does not accept", body = ErrorBody),
        VaultRefusals,
        BodyRefusals,
    ),
    security(("session" = []))
)]
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
