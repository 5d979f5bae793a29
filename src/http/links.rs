//! Read-only links: `/api/vault/{id}/links`. Whoever holds a link may watch
//! that one vault, read-only, until it expires or is revoked. The secret is
//! shown once (inside the link's URL fragment, which browsers never send to
//! a server) and stored only as a hash.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{self, Action};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::secrets;
use crate::state::AppState;
use crate::store::ReadLink;

/// The longest lifetime a link may ask for: 90 days.
pub const MAX_LINK_TTL_SECS: u64 = 90 * 24 * 3600;

/// Link routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/vault/{vault_id}/links", post(create).get(list))
        .route("/api/vault/{vault_id}/links/{link_id}", delete(revoke))
}

#[derive(Deserialize)]
struct CreateBody {
    /// Lifetime in seconds; the configured default when absent.
    expires_in_secs: Option<u64>,
}

/// The base URL links point at: PUBLIC_BASE_URL, else the request's Host.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.settings.public_base_url {
        return base.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn describe(link: &ReadLink) -> Value {
    json!({
        "link_id": link.link_id,
        "vault_id": link.vault_id,
        "created_by": link.created_by,
        "created_at": link.created_at,
        "expires_at": link.expires_at,
        "revoked": link.revoked,
    })
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Json<Value>, ApiError> {
    let ttl = body
        .expires_in_secs
        .unwrap_or(state.settings.link_ttl.as_secs());
    if ttl == 0 || ttl > MAX_LINK_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "`expires_in_secs` must be between 1 and {MAX_LINK_TTL_SECS}"
        )));
    }
    access::vault_for(
        state.store.as_ref(),
        &caller,
        &vault_id,
        Action::ManageLinks,
    )
    .await?;
    let secret = secrets::token("lk");
    let now = crate::store::now();
    let link = ReadLink {
        link_id: format!("l-{}", secrets::base62(12)),
        secret_hash: secrets::hash(&secret),
        vault_id,
        created_by: caller.client_id,
        created_at: now,
        // ttl is at most 90 days, so this cannot overflow.
        expires_at: now + chrono::Duration::seconds(ttl as i64),
        revoked: false,
    };
    state.store.insert_link(&link).await?;
    let url = format!(
        "{}/#vault={}&link={}",
        base_url(&state, &headers),
        link.vault_id,
        secret
    );
    Ok(Json(json!({
        "link_id": link.link_id,
        "url": url,
        "expires_at": link.expires_at,
    })))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    access::vault_for(
        state.store.as_ref(),
        &caller,
        &vault_id,
        Action::ManageLinks,
    )
    .await?;
    let links = state.store.links_for_vault(&vault_id).await?;
    Ok(Json(Value::Array(links.iter().map(describe).collect())))
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((vault_id, link_id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    access::vault_for(
        state.store.as_ref(),
        &caller,
        &vault_id,
        Action::ManageLinks,
    )
    .await?;
    if !crate::secrets::is_plain_id(&link_id)
        || !state.store.revoke_link(&vault_id, &link_id).await?
    {
        return Err(ApiError::NotFound(
            "this vault has no live link with that id".into(),
        ));
    }
    Ok(Json(json!({})))
}
