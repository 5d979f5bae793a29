//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every HTTP
//! route, generated from the same declarations that route requests.
//!
//! How a route is declared (every module under `src/http/` does it this
//! way, and `tests/api/openapi.rs` fails for a route declared otherwise):
//!
//! 1. the handler carries `#[utoipa::path(...)]` with its method, path
//!    template, parameters, body, responses and `security`;
//! 2. the module's `router()` returns an [`OpenApiRouter`] and adds the
//!    handler with `.routes(routes!(handler, other_handler_on_same_path))`,
//!    never with a plain `.route(...)`, so the router and this document
//!    are built from one list.
//!
//! Each operation has a unique `operation_id` and a `security(...)` list
//! naming the schemes below ([`SESSION`], [`LINK`], [`SESSION_BEARER`],
//! [`ASTATION`], [`ADMIN`], [`TICKET`]); the few public operations are
//! listed in the test. Errors are documented as [`ErrorBody`]: each
//! operation ends its `responses(...)` with one of the sets here,
//! [`Refusals`] (only `default`, which covers what every route may answer:
//! 429, 503, ...), [`VaultRefusals`] (400, 401, 403, 404 for routes on one
//! vault) or [`AdminRefusals`] (401 for the admin token), plus
//! [`BodyRefusals`] (413, 415) on routes with a JSON body; statuses
//! particular to a route are listed as tuples before them. Schema names are
//! global to the document: name body and answer types after their route
//! (`CreateVaultBody`), not `Body`.
//!
//! A route served by a tower service (like `/mcp`) gets thin handlers that
//! hand the request to the service, one per method, so it is declared the
//! same way. The browser viewer's static files are not described: they are
//! the fallback for paths no route names.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, IntoResponses, Modify, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Security scheme: `Authorization: session <session_id>`.
pub const SESSION: &str = "session";
/// Security scheme: `Authorization: link <secret>` (a read-only link).
pub const LINK: &str = "link";
/// Security scheme: `Authorization: Bearer <session_id>` (`/mcp` only).
pub const SESSION_BEARER: &str = "session_bearer";
/// Security scheme: `Authorization: Bearer <astation token>`.
pub const ASTATION: &str = "astation";
/// Security scheme: `Authorization: Bearer <admin token>`.
pub const ADMIN: &str = "admin";
/// Security scheme: `?ticket=<ticket>` from `stream-ticket` (browsers).
pub const TICKET: &str = "ticket";

/// The path of the document itself.
pub const PATH: &str = "/api/openapi.json";

/// The document's fixed parts: what the relay is, the shared schemas and
/// the security schemes. The paths come from the routers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "vault-relay",
        description = "Shared, append-only, versioned vaults for teams of coding agents, \
            granted through astation-approved sessions and streamed live. \
            Every error is JSON `{\"error\": \"...\"}`. The browser viewer's static \
            files (every path outside /api that no route below names) are not described here.",
        license(name = "MIT", identifier = "MIT"),
    ),
    components(schemas(ErrorBody, Empty)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "vaults", description = "The five vault routes and the viewer's additions"),
        (name = "streams", description = "Live streams of a vault's rows"),
        (name = "links", description = "Read-only links"),
        (name = "sessions", description = "Pairing and sessions"),
        (name = "admin", description = "Astations, for the admin token"),
        (name = "encryption", description = "End-to-end encryption modes and the rewrite"),
        (name = "mcp", description = "The Model Context Protocol endpoint (Streamable HTTP)"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let header = |description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                description,
            )))
        };
        let bearer = |format: &str, description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            SESSION,
            header("The header value is `session <session_id>`: a granted session."),
        );
        components.add_security_scheme(
            LINK,
            header("The header value is `link <secret>`: a read-only link to one vault."),
        );
        components.add_security_scheme(
            SESSION_BEARER,
            bearer(
                "session id",
                "A granted session's id as a bearer token, for MCP clients that can only send \
                 bearer tokens (`/mcp` only).",
            ),
        );
        components.add_security_scheme(
            ASTATION,
            bearer("astation token", "An astation's token (`ast-...`)."),
        );
        components.add_security_scheme(
            ADMIN,
            bearer(
                "admin token",
                "The relay's admin token (RELAY_ADMIN_TOKEN).",
            ),
        );
        components.add_security_scheme(
            TICKET,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A single-use stream ticket from `POST /api/vault/{vault_id}/stream-ticket`, \
                 for browsers, which cannot set headers on a WebSocket or EventSource.",
            ))),
        );
    }
}

/// Every error's body.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What is wrong, in words a person can act on.
    pub error: String,
}

/// An empty JSON object, `{}`: the answer of routes with nothing to say.
#[derive(Serialize, ToSchema, Default)]
pub struct Empty {}

/// The client id every vault request carries.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes the parameter; `auth::Caller` reads it.
pub struct ClientId {
    /// The atem's stable instance id: the principal recorded as writer.
    id: String,
}

/// The vault a route acts on, in its path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Describes the parameter; handlers take `ApiPath`.
pub struct VaultId {
    /// The vault (`v-` and base62 characters).
    vault_id: String,
}

/// The optional `Idempotency-Key` of a create or content write.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Describes the header; `idempotency::IdempotencyKey` reads it.
pub struct IdempotencyKeyHeader {
    /// 1 to 128 printable ASCII characters. A repeat with the same request
    /// gets the first answer again and writes nothing; the same key with
    /// another request is 422. Kept IDEMPOTENCY_TTL_SECS.
    #[param(
        rename = "Idempotency-Key",
        max_length = 128,
        min_length = 1,
        nullable = false
    )]
    idempotency_key: Option<String>,
}

/// What the `default` response says.
const DEFAULT_REFUSAL: &str = "Any other refusal or fault: `{\"error\"}` with a status that \
    says who must act (400 malformed, 401 credential, 403 rules, 404 missing, 405 method, \
    408 body too slow, 409 state or encryption mode conflict, 410 gone, 413 too large, \
    414 request target too long, 415 not JSON, 422 Idempotency-Key reused, 429 rate limited \
    with Retry-After, 431 headers too large, 500 fault, 503 database unreachable).";

/// Error responses with the [`ErrorBody`] shape, by status.
fn refusals(list: &[(&str, &str)]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    list.iter()
        .chain(std::iter::once(&("default", DEFAULT_REFUSAL)))
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Error")))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// Only the `default` response: any refusal or fault, as [`ErrorBody`].
pub struct Refusals;

impl IntoResponses for Refusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        refusals(&[])
    }
}

/// The refusals of a route on one vault, and `default`.
pub struct VaultRefusals;

impl IntoResponses for VaultRefusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        refusals(&[
            (
                "400",
                "Malformed: missing `?id`, a bad query value or body field, NUL in text",
            ),
            ("401", "Missing, unknown, pending or revoked credential"),
            ("403", "The access rules refuse this caller on this vault"),
            ("404", "No such vault (or entry, or link)"),
        ])
    }
}

/// The refusals of a route with a JSON body (add to another set).
pub struct BodyRefusals;

impl IntoResponses for BodyRefusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut out = refusals(&[
            (
                "413",
                "Text or summary over MAX_ENTRY_BYTES, or the body over MAX_BODY_BYTES \
                 (MAX_REWRITE_BODY_BYTES for the encryption rewrite)",
            ),
            (
                "415",
                "The body is not sent as Content-Type: application/json",
            ),
        ]);
        out.remove("default");
        out
    }
}

/// The refusal of a route for the admin token, and `default`.
pub struct AdminRefusals;

impl IntoResponses for AdminRefusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        refusals(&[("401", "Missing or wrong admin token")])
    }
}

/// Every documented route, with the document built from them, and the
/// route that serves that document.
pub fn with_document(api: OpenApiRouter<AppState>) -> axum::Router<AppState> {
    let (router, mut doc) = api.routes(routes!(openapi_json)).split_for_parts();
    let mut base = <ApiDoc as utoipa::OpenApi>::openapi();
    // The fixed parts first, then the paths and schemas the routers
    // collected.
    base.paths = std::mem::take(&mut doc.paths);
    if let (Some(into), Some(from)) = (base.components.as_mut(), doc.components.take()) {
        into.schemas.extend(from.schemas);
        into.responses.extend(from.responses);
    }
    let json = serde_json::to_string(&base).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document does not serialize");
        String::from("{}")
    });
    router.layer(Extension(Document(Arc::from(json))))
}

/// The serialized document, shared by every request.
#[derive(Clone)]
struct Document(Arc<str>);

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi_document",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of every route", content_type = "application/json"),
        Refusals,
    )
)]
async fn openapi_json(Extension(doc): Extension<Document>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
}
