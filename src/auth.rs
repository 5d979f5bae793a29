//! Who is calling: sessions, astations, the admin token, read-only links;
//! and who may revoke a session. The pairing rules that turn a pending
//! session into a granted one are in [`crate::pairing`].
//!
//! Handlers never parse credentials themselves; they take a [`Caller`],
//! [`AstationAuth`] or [`AdminAuth`] extractor. Every secret a client presents is resolved here, under the
//! failed-authentication limit ([`crate::limits::Limits::guard_credential`]):
//! an unknown or wrong one is [`ApiError::WrongSecret`], and counted.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{ApiError, ApiQuery};
use crate::limits::ClientAddr;
use crate::secrets;
use crate::state::AppState;
use crate::store::{Astation, Revocation, SessionRecord, SessionState, Store, Vault};

/// The longest client id (`?id=`) accepted, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;
/// The credential a vault request authenticated with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A granted session; `work_session` is its astation's id.
    Session {
        session_hash: String,
        work_session: String,
    },
    /// A read-only link to one vault.
    Link {
        link_id: String,
        vault_id: String,
        /// Hash of the link's secret (what a stream ticket refers to).
        secret_hash: String,
        expires_at: DateTime<Utc>,
    },
}

impl Principal {
    /// Whether `revocation` ends this principal's access: every open
    /// stream, held long poll and MCP session of it ends on one.
    pub fn revoked_by(&self, revocation: &Revocation) -> bool {
        match (revocation, self) {
            (Revocation::Session(h), Principal::Session { session_hash, .. }) => h == session_hash,
            (Revocation::Astation(a), Principal::Session { work_session, .. }) => a == work_session,
            (Revocation::Link(id), Principal::Link { link_id, .. }) => id == link_id,
            _ => false,
        }
    }
}

/// An authenticated vault caller: a principal and the client id it acts as.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub client_id: String,
}

/// The credential in an `Authorization` header.
enum Credential<'a> {
    Session(&'a str),
    Link(&'a str),
    Bearer(&'a str),
}

/// What a route's `Authorization` header may be, as its errors tell it.
mod takes {
    /// Vault routes: a session, or a read-only link.
    pub const VAULT: &str = "`session <session_id>` or `link <secret>`";
    /// `/mcp`.
    pub const MCP: &str = "`Bearer <session_id>` or `session <session_id>`";
    /// Routes of an astation (sessions, grants).
    pub const ASTATION: &str = "`Bearer <astation token>`";
    /// `/api/admin` and a private `/metrics`.
    pub const ADMIN: &str = "`Bearer <admin token>`";
    /// Revoking a session.
    pub const REVOKE: &str = "`session <session_id>` or `Bearer <astation token>`";
}

/// The header's credential, or `None` without one. `takes` is what the
/// route accepts, named in the error for a header that is none of them.
fn credential<'a>(headers: &'a HeaderMap, takes: &str) -> Result<Option<Credential<'a>>, ApiError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two credentials leave it to chance (or to whichever proxy reorders
    // them) which one acts: refused, like two Idempotency-Keys.
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "send one Authorization header, not several: this route takes {takes}"
        )));
    }
    let value = value.to_str().map_err(|_| {
        ApiError::Unauthorized("the Authorization header is not readable text".into())
    })?;
    let (scheme, secret) = value.trim().split_once(' ').ok_or_else(|| {
        ApiError::Unauthorized(format!(
            "the Authorization header must be a scheme and a secret: this route takes {takes}"
        ))
    })?;
    let secret = secret.trim();
    Ok(Some(match scheme.to_ascii_lowercase().as_str() {
        "session" => Credential::Session(secret),
        "link" => Credential::Link(secret),
        "bearer" => Credential::Bearer(secret),
        _ => {
            return Err(ApiError::Unauthorized(format!(
                "unknown Authorization scheme `{scheme}`; this route takes {takes}"
            )));
        }
    }))
}

/// Checks a client id from `?id=`.
pub fn validate_client_id(id: Option<&str>) -> Result<String, ApiError> {
    let id = id.ok_or_else(|| {
        ApiError::bad_request("missing query parameter `id`: add ?id=<client_id> to the URL")
    })?;
    if id.is_empty() || id.chars().count() > MAX_CLIENT_ID_CHARS {
        return Err(ApiError::bad_request(format!(
            "the client id (`id`) must be 1 to {MAX_CLIENT_ID_CHARS} characters"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "the client id (`id`) must not contain control characters",
        ));
    }
    Ok(id.to_string())
}

/// The principal of a granted session, by the hash of its id, or why the
/// session cannot be used.
pub async fn session_principal(
    store: &dyn Store,
    session_hash: &str,
) -> Result<Principal, ApiError> {
    principal_of_record(session_hash, store.session(session_hash).await?)
}

/// The principal of a session record as read, or why it cannot be used.
fn principal_of_record(
    session_hash: &str,
    record: Option<SessionRecord>,
) -> Result<Principal, ApiError> {
    let record = record
        .ok_or_else(|| ApiError::WrongSecret("unknown session; pair again to get one".into()))?;
    usable_session(&record)?;
    let work_session = record
        .astation_id
        .ok_or_else(|| ApiError::Internal("granted session without an astation".into()))?;
    Ok(Principal::Session {
        session_hash: session_hash.to_string(),
        work_session,
    })
}

/// Says why a session cannot be used, if it cannot.
fn usable_session(record: &SessionRecord) -> Result<(), ApiError> {
    match public_status(record) {
        "granted" => Ok(()),
        "pending" => Err(ApiError::Unauthorized(
            "this session is still pending: the astation owner must grant it first".into(),
        )),
        "expired" => Err(ApiError::Unauthorized(
            "this session expired before it was granted; pair again".into(),
        )),
        "denied" => Err(ApiError::Unauthorized("this session was denied".into())),
        _ => Err(ApiError::Unauthorized(
            "this session was revoked; pair again".into(),
        )),
    }
}

/// The principal of a live read-only link, by the hash of its secret, or
/// why the link does not work.
pub async fn link_principal(store: &dyn Store, secret_hash: &str) -> Result<Principal, ApiError> {
    let link = store
        .link_by_secret_hash(secret_hash)
        .await?
        .ok_or_else(|| ApiError::WrongSecret("unknown link".into()))?;
    if link.revoked {
        return Err(ApiError::Unauthorized("this link was revoked".into()));
    }
    if link.expires_at <= Utc::now() {
        return Err(ApiError::Unauthorized("this link has expired".into()));
    }
    Ok(Principal::Link {
        link_id: link.link_id,
        vault_id: link.vault_id,
        secret_hash: link.secret_hash,
        expires_at: link.expires_at,
    })
}

/// Re-checks that a principal is still valid (for long-lived streams and
/// stream tickets).
pub async fn still_valid(store: &dyn Store, principal: &Principal) -> Result<(), ApiError> {
    match principal {
        Principal::Session { session_hash, .. } => session_principal(store, session_hash).await,
        Principal::Link { secret_hash, .. } => link_principal(store, secret_hash).await,
    }
    .map(|_| ())
}

#[derive(Deserialize)]
struct ClientIdQuery {
    id: Option<String>,
}

/// Resolves the `Authorization` header of a vault request (session or
/// link) into a principal, under the failed-authentication limit of `addr`.
/// Every transport that serves vaults authenticates through this (or the
/// [`Caller`] extractor, which calls it).
pub async fn principal_from_headers(
    state: &AppState,
    addr: ClientAddr,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let store = state.store.as_ref();
    let limits = &state.limits;
    match credential(headers, takes::VAULT)? {
        None => Err(ApiError::Unauthorized(
            "missing credential: send the header `Authorization: session <session_id>` \
             (or `Authorization: link <secret>` for a read-only link)"
                .into(),
        )),
        Some(Credential::Session(id)) => {
            limits
                .guard_credential(addr, session_principal(store, &secrets::hash(id)))
                .await
        }
        Some(Credential::Link(secret)) => {
            limits
                .guard_credential(addr, link_principal(store, &secrets::hash(secret)))
                .await
        }
        Some(Credential::Bearer(_)) => Err(ApiError::Unauthorized(
            "vault routes take `Authorization: session <session_id>`, not a bearer token".into(),
        )),
    }
}

/// The principal from the `Authorization` header, as
/// [`principal_from_headers`], and the vault `vault_id` as the store has it
/// (`None` when there is none, or when the id is not one a vault can
/// have): with a session credential both come from one store look-up.
/// Judge the vault with [`crate::access::vault_given`].
pub async fn principal_and_vault(
    state: &AppState,
    addr: ClientAddr,
    headers: &HeaderMap,
    vault_id: &str,
) -> Result<(Principal, Option<Vault>), ApiError> {
    let store = state.store.as_ref();
    let plain = crate::secrets::is_plain_id(vault_id);
    if let Ok(Some(Credential::Session(id))) = credential(headers, takes::VAULT)
        && plain
    {
        let hash = secrets::hash(id);
        let looked_up = async {
            let (record, vault) = store.session_and_vault(&hash, vault_id).await?;
            Ok((principal_of_record(&hash, record)?, vault))
        };
        return state.limits.guard_credential(addr, looked_up).await;
    }
    let principal = principal_from_headers(state, addr, headers).await?;
    let vault = if plain {
        store.vault(vault_id).await?
    } else {
        None
    };
    Ok((principal, vault))
}

/// The client id from `?id=`, checked.
async fn client_id_from_query(parts: &mut Parts, state: &AppState) -> Result<String, ApiError> {
    let ApiQuery(q) = ApiQuery::<ClientIdQuery>::from_request_parts(parts, state).await?;
    validate_client_id(q.id.as_deref())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let addr = ClientAddr::of(parts, &state.limits);
        let principal = principal_from_headers(state, addr, &parts.headers).await?;
        let client_id = client_id_from_query(parts, state).await?;
        Ok(Caller {
            principal,
            client_id,
        })
    }
}

/// A caller of `/mcp`: a session, sent as `Authorization: session <id>` or
/// as `Authorization: Bearer <id>`, because many MCP clients can only send
/// bearer tokens. Only `/mcp` takes a session id as a bearer token: on every
/// other route a bearer token is an astation's or the admin's.
pub struct McpCaller(pub Caller);

impl FromRequestParts<AppState> for McpCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let store = state.store.as_ref();
        let principal = match credential(&parts.headers, takes::MCP)? {
            None => {
                return Err(ApiError::Unauthorized(
                    "missing credential: send the header `Authorization: Bearer <session_id>` \
                     (or `Authorization: session <session_id>`)"
                        .into(),
                ));
            }
            Some(Credential::Session(id) | Credential::Bearer(id)) => {
                let addr = ClientAddr::of(parts, &state.limits);
                state
                    .limits
                    .guard_credential(addr, session_principal(store, &secrets::hash(id)))
                    .await?
            }
            Some(Credential::Link(_)) => {
                return Err(ApiError::Unauthorized(
                    "/mcp takes a session (`Authorization: Bearer <session_id>`); \
                     read-only links work on the REST routes and in the viewer"
                        .into(),
                ));
            }
        };
        let client_id = client_id_from_query(parts, state).await?;
        Ok(McpCaller(Caller {
            principal,
            client_id,
        }))
    }
}

/// A vault caller whose credential is parsed but, for a session, not yet
/// looked up: what the content write takes, because the store checks the
/// session inside the write itself ([`crate::store::Store::write_as`]), which
/// saves a round trip per write and still refuses a revoked session on the
/// very next write, on every replica.
#[derive(Clone, Debug)]
pub enum Claimed {
    /// `Authorization: session <id>`, by the hash of the id, from `addr`
    /// (already checked against the failed-authentication limit; an
    /// unknown session found later is counted through
    /// [`claimed_session_principal`]).
    Session {
        session_hash: String,
        client_id: String,
        addr: ClientAddr,
    },
    /// Any other credential, resolved as [`Caller`] resolves it.
    Resolved(Caller),
}

impl Claimed {
    /// Looks the credential up, for answers that must say what is wrong
    /// with it before anything else (a session's 401 comes before a bad
    /// request's 400, as on every other route).
    pub async fn verify(&self, state: &AppState) -> Result<(), ApiError> {
        match self {
            Claimed::Session {
                session_hash, addr, ..
            } => claimed_session_principal(state, *addr, session_hash)
                .await
                .map(|_| ()),
            Claimed::Resolved(_) => Ok(()),
        }
    }
}

/// The principal of a session claimed by a request from `addr`, under the
/// failed-authentication limit (an unknown session is counted).
pub async fn claimed_session_principal(
    state: &AppState,
    addr: ClientAddr,
    session_hash: &str,
) -> Result<Principal, ApiError> {
    state
        .limits
        .guard_credential(addr, session_principal(state.store.as_ref(), session_hash))
        .await
}

impl FromRequestParts<AppState> for Claimed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let session_hash = match credential(&parts.headers, takes::VAULT)? {
            Some(Credential::Session(id)) => secrets::hash(id),
            _ => {
                return Caller::from_request_parts(parts, state)
                    .await
                    .map(Claimed::Resolved);
            }
        };
        let addr = ClientAddr::of(parts, &state.limits);
        state.limits.check_credential(addr)?;
        match client_id_from_query(parts, state).await {
            Ok(client_id) => Ok(Claimed::Session {
                session_hash,
                client_id,
                addr,
            }),
            Err(bad_query) => {
                claimed_session_principal(state, addr, &session_hash).await?;
                Err(bad_query)
            }
        }
    }
}

/// A request authenticated with an astation's bearer token.
pub struct AstationAuth(pub Astation);

/// The astation an astation token belongs to, under the failed-
/// authentication limit of `addr`.
async fn astation_by_token(
    state: &AppState,
    addr: ClientAddr,
    token: &str,
) -> Result<Astation, ApiError> {
    state
        .limits
        .guard_credential(addr, async {
            state
                .store
                .astation_by_token_hash(&secrets::hash(token))
                .await?
                .ok_or_else(|| ApiError::WrongSecret("unknown astation token".into()))
        })
        .await
}

/// Resolves an optional astation bearer token; `Ok(None)` when there is no
/// Authorization header at all.
pub async fn optional_astation(
    state: &AppState,
    addr: ClientAddr,
    headers: &HeaderMap,
) -> Result<Option<Astation>, ApiError> {
    match credential(headers, takes::ASTATION)? {
        None => Ok(None),
        Some(Credential::Bearer(token)) => astation_by_token(state, addr, token).await.map(Some),
        Some(_) => Err(ApiError::Unauthorized(
            "this route takes `Authorization: Bearer <astation token>`".into(),
        )),
    }
}

impl FromRequestParts<AppState> for AstationAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let addr = ClientAddr::of(parts, &state.limits);
        optional_astation(state, addr, &parts.headers)
            .await?
            .map(AstationAuth)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing credential: send `Authorization: Bearer <astation token>`".into(),
                )
            })
    }
}

/// A request authenticated with the admin token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match credential(&parts.headers, takes::ADMIN)? {
            Some(Credential::Bearer(token)) => {
                let addr = ClientAddr::of(parts, &state.limits);
                let right = secrets::matches_hash(token, &state.settings.admin_token_hash);
                state
                    .limits
                    .guard_credential(addr, async {
                        if right {
                            Ok(AdminAuth)
                        } else {
                            Err(ApiError::WrongSecret("wrong admin token".into()))
                        }
                    })
                    .await
            }
            _ => Err(ApiError::Unauthorized(
                "send `Authorization: Bearer <admin token>` (RELAY_ADMIN_TOKEN)".into(),
            )),
        }
    }
}

/// The status a client sees: the stored state, or `expired` for a pending
/// session past its deadline.
pub fn public_status(record: &SessionRecord) -> &'static str {
    if record.state == SessionState::Pending && record.expires_at <= Utc::now() {
        "expired"
    } else {
        record.state.as_str()
    }
}

/// Revokes a session. Allowed with the session itself, or with the token of
/// the astation it is bound to; under the failed-authentication limit like
/// every credential.
pub async fn revoke(
    state: &AppState,
    addr: ClientAddr,
    session_id: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let record = match credential(headers, takes::REVOKE)? {
        Some(Credential::Session(presented)) => {
            state.limits.check_credential(addr)?;
            // Both ids come from this request, so a plain comparison leaks
            // nothing; made before any lookup, so that this refusal says
            // nothing of whether the path's session exists.
            if presented != session_id {
                return Err(ApiError::Forbidden(
                    "a session can only revoke itself; use its astation token for others".into(),
                ));
            }
            crate::pairing::presented_session(state, addr, session_id).await?
        }
        Some(Credential::Bearer(token)) => {
            let astation = astation_by_token(state, addr, token).await?;
            let record = crate::pairing::pairing_session(state.store.as_ref(), session_id).await?;
            if record.astation_id.as_deref() != Some(astation.astation_id.as_str()) {
                return Err(ApiError::Forbidden(
                    "this session is not bound to your astation".into(),
                ));
            }
            record
        }
        _ => {
            return Err(ApiError::Unauthorized(
                "send `Authorization: session <that id>` or `Bearer <its astation token>`".into(),
            ));
        }
    };
    state.store.revoke_session(&record.id_hash).await?;
    Ok(())
}
