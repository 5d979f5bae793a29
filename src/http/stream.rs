//! `GET /api/vault/{id}/stream` (WebSocket) and `GET /api/vault/{id}/events`
//! (server-sent events): the same checks, made before the upgrade or the
//! response, so a refused request gets a plain HTTP error with our JSON
//! body; then the same flow over either transport.
//! `POST /api/vault/{id}/stream-ticket`: a short-lived, single-use ticket
//! for browsers, which cannot set headers on a WebSocket or an EventSource.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{self, Action};
use crate::auth::{self, Caller, Principal};
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::http::openapi::{ClientId, VaultId, VaultRefusals};
use crate::http::vaults::parse_since;
use crate::identity::sanitize_atem_id;
use crate::limits::ClientAddr;
use crate::secrets;
use crate::state::AppState;
use crate::store::{StreamTicket, Vault};
use crate::stream::flow::{self, Opening, StreamRequest};
use crate::stream::socket::{self, SocketLimits, WebSocket};
use crate::stream::sse;
use crate::stream::upgrade::Upgrade;

/// Seconds a stream ticket stays valid.
pub const TICKET_TTL_SECS: i64 = 30;

/// Stream routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(stream))
        .routes(routes!(events))
        .routes(routes!(ticket))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// The client id (optional with a ticket, which carries its own).
    id: Option<String>,
    /// Replay every row with a seq above this first, then go live.
    #[param(value_type = Option<i64>, minimum = 0)]
    since: Option<String>,
    /// The epoch the client's cursor comes from; another epoch gets a
    /// `reset` frame.
    epoch: Option<String>,
    /// A single-use ticket from `stream-ticket`, instead of the header.
    ticket: Option<String>,
}

/// `POST /api/vault/{vault_id}/stream-ticket`'s answer.
#[derive(Serialize, ToSchema)]
struct Ticket {
    /// Opens this vault's stream once, as `?ticket=`.
    ticket: String,
    expires_at: DateTime<Utc>,
}

/// The raw (still percent-encoded) `atem_id`: the sanitizer decodes it
/// itself.
fn raw_atem_id(uri: &axum::http::Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("atem_id="))
}

/// The stream's principal and client id: from a ticket (which names both)
/// or from the `Authorization` header and `?id=`, under the
/// failed-authentication limit of `addr`; with the vault when it was read
/// in the same look-up (a session header: one store round trip for both).
async fn principal(
    state: &AppState,
    addr: ClientAddr,
    vault_id: &str,
    q: &StreamQuery,
    headers: &HeaderMap,
) -> Result<(Principal, String, Option<Option<Vault>>), ApiError> {
    let Some(ticket) = q.ticket.as_deref() else {
        let (principal, vault) = auth::principal_and_vault(state, addr, headers, vault_id).await?;
        let client_id = auth::validate_client_id(q.id.as_deref())?;
        return Ok((principal, client_id, Some(vault)));
    };
    let (principal, client_id) = state
        .limits
        .guard_credential(
            addr,
            ticket_principal(state, vault_id, ticket, q.id.as_deref()),
        )
        .await?;
    Ok((principal, client_id, None))
}

/// Spends a ticket: valid for its vault and its client id only (a ticket
/// used with another `?id=` is refused, and spent all the same).
async fn ticket_principal(
    state: &AppState,
    vault_id: &str,
    ticket: &str,
    client_id: Option<&str>,
) -> Result<(Principal, String), ApiError> {
    let store = state.store.as_ref();
    let t = store
        .take_ticket(&secrets::hash(ticket))
        .await?
        .filter(|t| t.vault_id == vault_id)
        .ok_or_else(|| {
            ApiError::WrongSecret(
                "unknown, used or expired stream ticket; get a new one from stream-ticket".into(),
            )
        })?;
    if client_id.is_some_and(|id| id != t.client_id) {
        return Err(ApiError::WrongSecret(
            "this stream ticket was issued for another client id; get a new one with this id"
                .into(),
        ));
    }
    // The ticket carries the credential it was issued to; check it again so
    // a revocation in between is honoured.
    let principal = match (&t.session_hash, &t.link_hash) {
        (Some(session_hash), _) => auth::session_principal(store, session_hash).await?,
        (None, Some(link_hash)) => auth::link_principal(store, link_hash).await?,
        (None, None) => return Err(ApiError::Internal("ticket without a credential".into())),
    };
    Ok((principal, t.client_id))
}

/// Checks a stream request (credential, client id, cursor, access) and
/// says what the stream needs. `last_event_id` (an event stream's resume
/// header) takes the place of `since` when present.
async fn open(
    state: &AppState,
    addr: ClientAddr,
    vault_id: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    q: StreamQuery,
    last_event_id: Option<&str>,
) -> Result<Box<StreamRequest>, ApiError> {
    // An open's turn (state::opening_slots) lasts until its greeting is
    // sent: it travels with the request, and the flow gives it back.
    let opening = state
        .stream_openings
        .clone()
        .acquire_owned()
        .await
        .map(Opening::new)
        .map_err(|_| ApiError::Unavailable("the relay is shutting down".into()))?;
    // Within their turns, opens take turns with their checks too
    // (state::check_slots: a few at a time on Postgres); that permit goes
    // when the checks are done.
    let _checking = state
        .stream_checks
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("the relay is shutting down".into()))?;
    // Listen before checking: a revocation after the check below reaches
    // the stream, one before it fails the check.
    let revocations = state.hub.revocations();
    let (principal, client_id, read) = principal(state, addr, vault_id, &q, headers).await?;
    let since = match last_event_id {
        // Named as the client sent it: a bad header is not a bad `since`.
        Some(id) => Some(parse_since(Some(id)).map_err(|_| {
            ApiError::bad_request(format!(
                "`Last-Event-ID` must be a seq (a non-negative integer), not `{id}`"
            ))
        })?),
        None => q
            .since
            .as_deref()
            .map(|s| parse_since(Some(s)))
            .transpose()?,
    };
    let expires_at = match &principal {
        Principal::Link { expires_at, .. } => Some(*expires_at),
        Principal::Session { .. } => None,
    };
    let caller = Caller {
        principal,
        client_id,
    };
    let vault = match read {
        Some(read) => access::vault_given(&caller, vault_id, read, Action::Read)?,
        None => access::vault_for(state.store.as_ref(), &caller, vault_id, Action::Read).await?,
    };
    let atem_id = sanitize_atem_id(raw_atem_id(uri).unwrap_or(""));
    // Boxed: it passes through every layer of the stream's task, and each
    // layer would otherwise keep room for a copy for the stream's lifetime.
    Ok(Box::new(StreamRequest {
        vault,
        principal: caller.principal,
        client_id: caller.client_id,
        atem_id,
        since,
        epoch: q.epoch.filter(|e| !e.is_empty()),
        expires_at,
        revocations,
        ping_every: state.settings.stream_ping,
        metrics: state.metrics.clone(),
        opening,
    }))
}

/// Upgrades to a WebSocket carrying the vault's rows as they commit (frames
/// and close codes: docs/stream.md). Everything is checked before the
/// upgrade; a refusal is a plain HTTP error.
#[utoipa::path(
    get,
    path = "/api/vault/{vault_id}/stream",
    operation_id = "open_stream",
    tag = "streams",
    params(
        VaultId,
        StreamQuery,
        ("atem_id" = Option<String>, Query, description = "A display name for presence (percent-encoded, sanitized; any letters of any script, digits and `-`)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; frames are JSON text (hello, presence, entry, caught_up, summary, reset, ...)"),
        VaultRefusals,
    ),
    security(("session" = []), ("link" = []), ("ticket" = []))
)]
async fn stream(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiPath(vault_id): ApiPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
    upgrade: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    let req = open(&state, addr, &vault_id, &uri, &headers, q, None).await?;
    // Checked last, so refusals say what is wrong with the credential first.
    let upgrade = upgrade?;
    let limits = SocketLimits {
        ping_every: state.settings.stream_ping,
        send_timeout: state.settings.stream_send_timeout,
        max_client_frames_per_sec: state.settings.stream_max_client_frames_per_sec,
    };
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    // Shutdown waits for this stream's close frame before the process exits.
    let guard = shutdown.track();
    Ok(
        upgrade.on_upgrade(socket::config(), move |socket| async move {
            flow::serve(WebSocket::new(socket, limits), hub, req, shutdown).await;
            drop(guard);
        }),
    )
}

/// The same stream as server-sent events (`text/event-stream`): each frame
/// one event named after its type, entries with `id: <seq>`,
/// `Last-Event-ID` to resume, keepalive comments, and `event: close` with
/// the close code (docs/stream.md). Everything is checked before the
/// response; a refusal is a plain HTTP error.
#[utoipa::path(
    get,
    path = "/api/vault/{vault_id}/events",
    operation_id = "open_event_stream",
    tag = "streams",
    params(
        VaultId,
        StreamQuery,
        ("atem_id" = Option<String>, Query, description = "A display name for presence (percent-encoded, sanitized; any letters of any script, digits and `-`)"),
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "Resume after this seq, like `since` (wins over it)"),
    ),
    responses(
        (status = 200, description = "An event stream of the vault's frames (hello, presence, encryption, entry, caught_up, summary, reset, close)", content_type = "text/event-stream", body = String),
        VaultRefusals,
    ),
    security(("session" = []), ("link" = []), ("ticket" = []))
)]
async fn events(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiPath(vault_id): ApiPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::BadRequest("Last-Event-ID must be a seq (a non-negative integer)".into())
        })?),
        None => None,
    };
    let req = open(&state, addr, &vault_id, &uri, &headers, q, last_event_id).await?;
    let (transport, body) = sse::channel(state.settings.stream_send_timeout);
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    let guard = shutdown.track();
    tokio::spawn(async move {
        flow::serve(transport, hub, req, shutdown).await;
        drop(guard);
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Proxies that buffer responses would hold the events back.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response())
}

/// Issues a single-use ticket that opens this vault's stream within 30
/// seconds (`TICKET_TTL_SECS`), with the caller's credential.
#[utoipa::path(
    post,
    path = "/api/vault/{vault_id}/stream-ticket",
    operation_id = "stream_ticket",
    tag = "streams",
    params(VaultId, ClientId),
    responses(
        (status = 200, description = "A ticket valid once, for 30 seconds", body = Ticket),
        VaultRefusals,
    ),
    security(("session" = []), ("link" = []))
)]
async fn ticket(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
) -> Result<Json<Ticket>, ApiError> {
    access::vault_for(state.store.as_ref(), &caller, &vault_id, Action::Read).await?;
    let (session_hash, link_hash) = match &caller.principal {
        Principal::Session { session_hash, .. } => (Some(session_hash.clone()), None),
        Principal::Link { secret_hash, .. } => (None, Some(secret_hash.clone())),
    };
    let ticket = secrets::token("tk");
    let expires_at = crate::store::now() + chrono::Duration::seconds(TICKET_TTL_SECS);
    state
        .store
        .insert_ticket(&StreamTicket {
            ticket_hash: secrets::hash(&ticket),
            vault_id,
            session_hash,
            link_hash,
            client_id: caller.client_id,
            expires_at,
        })
        .await?;
    Ok(Json(Ticket { ticket, expires_at }))
}
