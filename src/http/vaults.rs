//! The five vault routes (their shapes are fixed by deployed clients) and
//! the viewer's vault info. The operations themselves live in
//! [`crate::vaults`], shared with the other transports.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{self, Action};
use crate::auth::{Caller, Claimed, Principal};
use crate::encryption::SessionView;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::http::links;
use crate::http::openapi::{
    BodyRefusals, ClientId, Empty, ErrorBody, IdempotencyKeyHeader, Refusals, VaultId,
    VaultRefusals,
};
use crate::idempotency::IdempotencyKey;
use crate::polling::{self, ReadRequest};
use crate::state::AppState;
use crate::store::{Entry, VaultListItem, View, WriteReceipt};
use crate::vaults::{self, ReadAnswer};

/// Routes under `/api/vault`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create, list))
        .routes(routes!(read, write))
        .routes(routes!(set_summary))
        .routes(routes!(info))
}

#[derive(Deserialize, ToSchema)]
struct CreateVaultBody {
    /// The vault's one-line summary; empty when absent.
    #[serde(default)]
    summary: String,
}

#[derive(Deserialize, ToSchema)]
struct WriteEntryBody {
    /// The entry's text (at most MAX_ENTRY_BYTES, no NUL).
    text: String,
    /// Edit this entry (a new version) instead of appending a new one.
    #[schema(minimum = 1)]
    entry_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
struct SetSummaryBody {
    /// The new summary.
    text: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    /// Only rows with a seq above this (a non-negative integer).
    #[param(value_type = Option<i64>, minimum = 0)]
    since: Option<String>,
    /// `true` for every row in seq order; the current view (newest version
    /// of each entry, by entry number) otherwise.
    #[param(value_type = Option<bool>)]
    history: Option<String>,
    /// With `history=true`: at most this many rows (1 to 1000); when more
    /// remain, a `Link: <...>; rel="next"` header names the next page.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// With `since`: when no row qualifies, hold the request up to this
    /// many seconds (1 to 60) for one to commit; `[]` if none does.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 60)]
    wait: Option<String>,
}

/// `POST /api/vault`'s answer.
#[derive(Serialize, ToSchema)]
struct VaultCreated {
    vault_id: String,
}

/// `GET /api/vault/{vault_id}/info`'s answer.
#[derive(Serialize, ToSchema)]
struct VaultInfo {
    vault_id: String,
    summary: String,
    /// The vault's newest seq; 0 when empty.
    head_seq: i64,
    /// The store's lifetime id, for resuming streams.
    epoch: String,
    created_at: DateTime<Utc>,
    /// Whether the caller may write content.
    can_write: bool,
    /// Whether the caller is a read-only link.
    read_only_link: bool,
    /// The encryption mode and key id of the vault's work session.
    encryption: SessionView,
}

/// Parses a `since` cursor: a non-negative integer.
pub fn parse_since(raw: Option<&str>) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(0) };
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "`since` must be a non-negative integer (a seq), not `{raw}`"
        )));
    }
    raw.parse()
        .map_err(|_| ApiError::bad_request("`since` is too large to be a seq"))
}

fn parse_history(raw: Option<&str>) -> Result<View, ApiError> {
    match raw {
        None | Some("false") | Some("0") => Ok(View::Current),
        Some("true") | Some("1") | Some("") => Ok(View::History),
        Some(other) => Err(ApiError::bad_request(format!(
            "`history` must be true or false, not `{other}`"
        ))),
    }
}

/// Creates a vault in the caller's work session.
#[utoipa::path(
    post,
    path = "/api/vault",
    operation_id = "create_vault",
    tag = "vaults",
    params(ClientId, IdempotencyKeyHeader),
    request_body = CreateVaultBody,
    responses(
        (status = 200, description = "The new vault (for a repeated Idempotency-Key, the first answer)", body = VaultCreated),
        (status = 422, description = "The Idempotency-Key was used for another request", body = ErrorBody),
        (status = 400, description = "Malformed body or missing `?id`", body = ErrorBody),
        (status = 401, description = "Missing or unusable session", body = ErrorBody),
        (status = 403, description = "A read-only link (which this route does not take) cannot create vaults", body = ErrorBody),
        (status = 409, description = "The value does not fit the work session's encryption mode; nothing was written", body = ErrorBody),
        BodyRefusals,
        Refusals,
    ),
    security(("session" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<CreateVaultBody>,
) -> Result<Json<VaultCreated>, ApiError> {
    let vault = vaults::create_keyed(&state, &caller, body.summary, key).await?;
    Ok(Json(VaultCreated { vault_id: vault.id }))
}

/// The vaults of the caller's work session, and those its client id wrote
/// to.
#[utoipa::path(
    get,
    path = "/api/vault",
    operation_id = "list_vaults",
    tag = "vaults",
    params(ClientId),
    responses(
        (status = 200, description = "The vaults the caller can see", body = Vec<VaultListItem>),
        (status = 400, description = "Missing `?id`", body = ErrorBody),
        (status = 401, description = "Missing or unusable credential", body = ErrorBody),
        Refusals,
    ),
    security(("session" = []), ("link" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<VaultListItem>>, ApiError> {
    Ok(Json(vaults::list(&state, &caller).await?))
}

/// A vault's rows: the current view, or its history.
#[utoipa::path(
    get,
    path = "/api/vault/{vault_id}",
    operation_id = "read_vault",
    tag = "vaults",
    params(
        VaultId,
        ClientId,
        ReadQuery,
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer to this same request: 304 while it is still current"),
    ),
    responses(
        (status = 200, description = "The rows, as the view orders them", body = Vec<Entry>, headers(
            ("ETag" = String, description = "Changes whenever this request's answer would"),
            ("Link" = String, description = "With `limit`, when more rows remain: `<url>; rel=\"next\"`"),
        )),
        (status = 304, description = "Not modified: If-None-Match names the current ETag", headers(
            ("ETag" = String, description = "The current tag"),
        )),
        VaultRefusals,
    ),
    security(("session" = []), ("link" = []))
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let if_none_match = match headers.get(header::IF_NONE_MATCH) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("If-None-Match is not a list of tags"))?
                .to_string(),
        ),
        None => None,
    };
    let req = ReadRequest {
        view: parse_history(q.history.as_deref())?,
        since: q
            .since
            .as_deref()
            .map(|s| parse_since(Some(s)))
            .transpose()?,
        limit: polling::parse_limit(q.limit.as_deref())?,
        wait: polling::parse_wait(q.wait.as_deref())?,
        if_none_match,
    };
    let answer = vaults::read_with(&state, &caller, &vault_id, &req).await?;
    Ok(match answer {
        ReadAnswer::NotModified { etag } => {
            (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
        }
        ReadAnswer::Rows {
            entries,
            etag,
            next_since,
        } => {
            let mut response = ([(header::ETAG, etag)], Json(entries)).into_response();
            if let Some(next) = next_since {
                let link = polling::next_link(
                    &links::base_url(&state, &headers),
                    &format!("/api/vault/{vault_id}"),
                    raw_query.as_deref().unwrap_or_default(),
                    next,
                );
                if let Ok(value) = HeaderValue::from_str(&link) {
                    response.headers_mut().insert(header::LINK, value);
                }
            }
            response
        }
    })
}

/// Appends an entry, or with `entry_id` writes a new version of it.
#[utoipa::path(
    post,
    path = "/api/vault/{vault_id}",
    operation_id = "write_entry",
    tag = "vaults",
    params(VaultId, ClientId, IdempotencyKeyHeader),
    request_body = WriteEntryBody,
    responses(
        (status = 200, description = "Where the row landed (for a repeated Idempotency-Key, the first answer)", body = WriteReceipt),
        (status = 422, description = "The Idempotency-Key was used for another request", body = ErrorBody),
        (status = 409, description = "The value does not fit the work session's encryption mode; nothing was written", body = ErrorBody),
        VaultRefusals,
        BodyRefusals,
    ),
    security(("session" = []))
)]
async fn write(
    State(state): State<AppState>,
    claimed: Claimed,
    ApiPath(vault_id): ApiPath<String>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<ApiJson<WriteEntryBody>, ApiError>,
) -> Result<Json<WriteReceipt>, ApiError> {
    let (key, body) = match (key, body) {
        (Ok(IdempotencyKey(key)), Ok(ApiJson(body))) => (key, body),
        (Err(bad), _) | (_, Err(bad)) => {
            // The session was not looked up yet; its 401 comes first.
            claimed.verify(&state).await?;
            return Err(bad);
        }
    };
    let receipt =
        vaults::write_claimed(&state, &claimed, &vault_id, body.text, body.entry_id, key).await?;
    Ok(Json(receipt))
}

/// Replaces the vault's one-line summary.
#[utoipa::path(
    post,
    path = "/api/vault/{vault_id}/summary",
    operation_id = "set_summary",
    tag = "vaults",
    params(VaultId, ClientId),
    request_body = SetSummaryBody,
    responses(
        (status = 200, description = "The summary is set", body = Empty),
        (status = 409, description = "The value does not fit the work session's encryption mode; nothing was written", body = ErrorBody),
        VaultRefusals,
        BodyRefusals,
    ),
    security(("session" = []))
)]
async fn set_summary(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
    ApiJson(body): ApiJson<SetSummaryBody>,
) -> Result<Json<Empty>, ApiError> {
    vaults::set_summary(&state, &caller, &vault_id, &body.text).await?;
    Ok(Json(Empty {}))
}

/// The viewer's one-call header: summary, head seq, epoch and what the
/// caller may do.
#[utoipa::path(
    get,
    path = "/api/vault/{vault_id}/info",
    operation_id = "vault_info",
    tag = "vaults",
    params(VaultId, ClientId),
    responses(
        (status = 200, description = "The vault's header", body = VaultInfo),
        VaultRefusals,
    ),
    security(("session" = []), ("link" = []))
)]
async fn info(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
) -> Result<Json<VaultInfo>, ApiError> {
    let vault = access::vault_for(state.store.as_ref(), &caller, &vault_id, Action::Read).await?;
    let encryption = state.store.encryption_mode(&vault.work_session).await?;
    Ok(Json(VaultInfo {
        can_write: access::allows(&caller, &vault, Action::Write),
        read_only_link: matches!(caller.principal, Principal::Link { .. }),
        epoch: state.store.epoch(),
        vault_id: vault.id,
        summary: vault.summary,
        head_seq: vault.head_seq,
        created_at: vault.created_at,
        encryption: SessionView {
            mode: encryption.mode,
            kid: encryption.kid,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_only_non_negative_integers() {
        assert_eq!(parse_since(None).ok(), Some(0));
        assert_eq!(parse_since(Some("42")).ok(), Some(42));
        for bad in ["-1", "abc", "", "1.5", "+3", "99999999999999999999"] {
            assert!(parse_since(Some(bad)).is_err(), "{bad}");
        }
    }
}
