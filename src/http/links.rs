//! Read-only links: `/api/vault/{id}/links`. Whoever holds a link may watch
//! that one vault, read-only, until it expires or is revoked. The secret is
//! shown once (inside the link's URL fragment, which browsers never send to
//! a server) and stored only as a hash.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{self, Action};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::openapi::{BodyRefusals, ClientId, Empty, VaultId, VaultRefusals};
use crate::secrets;
use crate::state::AppState;
use crate::store::ReadLink;

/// The longest lifetime a link may ask for: 90 days.
pub const MAX_LINK_TTL_SECS: u64 = 90 * 24 * 3600;

/// Link routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

#[derive(Deserialize, ToSchema)]
struct CreateLinkBody {
    /// Lifetime in seconds, 1 to 90 days; LINK_TTL_SECS when absent.
    #[schema(minimum = 1, maximum = 7_776_000)]
    expires_in_secs: Option<u64>,
}

/// The base URL links point at: PUBLIC_BASE_URL, else the request's Host.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.settings.public_base_url {
        return base.clone();
    }
    from_host(headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// `http://<host>` for a `Host` header that is a plain authority (a name or
/// address and an optional port), else `http://localhost`: whatever a
/// client puts there goes into URLs and `Link` headers.
fn from_host(host: Option<&str>) -> String {
    let plain = host.filter(|h| {
        !h.contains('@') && axum::http::uri::Authority::try_from(*h).is_ok_and(|a| a.as_str() == *h)
    });
    format!("http://{}", plain.unwrap_or("localhost"))
}

/// A link as listed (never its secret).
#[derive(Serialize, ToSchema)]
struct LinkInfo {
    link_id: String,
    vault_id: String,
    /// The client id that made it.
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked: bool,
}

impl From<ReadLink> for LinkInfo {
    fn from(link: ReadLink) -> Self {
        Self {
            link_id: link.link_id,
            vault_id: link.vault_id,
            created_by: link.created_by,
            created_at: link.created_at,
            expires_at: link.expires_at,
            revoked: link.revoked,
        }
    }
}

/// A new link, with its secret inside the URL's fragment (shown once).
#[derive(Serialize, ToSchema)]
struct LinkCreated {
    link_id: String,
    /// `<base>/#vault=<vault_id>&link=<secret>`.
    url: String,
    expires_at: DateTime<Utc>,
}

/// Makes a read-only link to this vault.
#[utoipa::path(
    post,
    path = "/api/vault/{vault_id}/links",
    operation_id = "create_link",
    tag = "links",
    params(VaultId, ClientId),
    request_body = CreateLinkBody,
    responses(
        (status = 200, description = "The link, its secret shown this once", body = LinkCreated),
        VaultRefusals,
        BodyRefusals,
    ),
    security(("session" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateLinkBody>,
) -> Result<Json<LinkCreated>, ApiError> {
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
    Ok(Json(LinkCreated {
        link_id: link.link_id,
        url,
        expires_at: link.expires_at,
    }))
}

/// This vault's links, live, expired and revoked.
#[utoipa::path(
    get,
    path = "/api/vault/{vault_id}/links",
    operation_id = "list_links",
    tag = "links",
    params(VaultId, ClientId),
    responses(
        (status = 200, description = "The links", body = Vec<LinkInfo>),
        VaultRefusals,
    ),
    security(("session" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
) -> Result<Json<Vec<LinkInfo>>, ApiError> {
    access::vault_for(
        state.store.as_ref(),
        &caller,
        &vault_id,
        Action::ManageLinks,
    )
    .await?;
    let links = state.store.links_for_vault(&vault_id).await?;
    Ok(Json(links.into_iter().map(LinkInfo::from).collect()))
}

/// Revokes a link; its open streams close.
#[utoipa::path(
    delete,
    path = "/api/vault/{vault_id}/links/{link_id}",
    operation_id = "revoke_link",
    tag = "links",
    params(
        VaultId,
        ("link_id" = String, Path, description = "The link"),
        ClientId,
    ),
    responses(
        (status = 200, description = "Revoked", body = Empty),
        VaultRefusals,
    ),
    security(("session" = []))
)]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((vault_id, link_id)): ApiPath<(String, String)>,
) -> Result<Json<Empty>, ApiError> {
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
    Ok(Json(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::from_host;

    #[test]
    fn only_a_plain_host_goes_into_urls() {
        assert_eq!(
            from_host(Some("relay.example:8080")),
            "http://relay.example:8080"
        );
        assert_eq!(from_host(Some("127.0.0.1:3000")), "http://127.0.0.1:3000");
        assert_eq!(from_host(Some("[::1]:3000")), "http://[::1]:3000");
        for odd in ["a>; rel=\"x\"", "user@evil", "a b", "a/b", "", "a?b"] {
            assert_eq!(from_host(Some(odd)), "http://localhost", "{odd:?}");
        }
        assert_eq!(from_host(None), "http://localhost");
    }
}
