//! The five vault routes (their shapes are fixed by deployed clients) and
//! the viewer's vault info. The operations themselves live in
//! [`crate::vaults`], shared with the other transports.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{self, Action};
use crate::auth::{Caller, Claimed, Principal};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::http::links;
use crate::idempotency::IdempotencyKey;
use crate::polling::{self, ReadRequest};
use crate::state::AppState;
use crate::store::{View, WriteReceipt};
use crate::vaults::{self, ReadAnswer};

/// Routes under `/api/vault`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/vault", post(create).get(list))
        .route("/api/vault/{vault_id}", get(read).post(write))
        .route("/api/vault/{vault_id}/summary", post(set_summary))
        .route("/api/vault/{vault_id}/info", get(info))
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    summary: String,
}

#[derive(Deserialize)]
struct WriteBody {
    text: String,
    entry_id: Option<i64>,
}

#[derive(Deserialize)]
struct SummaryBody {
    text: String,
}

#[derive(Deserialize)]
struct ReadQuery {
    since: Option<String>,
    history: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
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

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Json<Value>, ApiError> {
    let vault = vaults::create_keyed(&state, &caller, body.summary, key).await?;
    Ok(Json(json!({ "vault_id": vault.id })))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(vaults::list(&state, &caller).await?)))
}

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

async fn write(
    State(state): State<AppState>,
    claimed: Claimed,
    ApiPath(vault_id): ApiPath<String>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<ApiJson<WriteBody>, ApiError>,
) -> Result<Json<WriteReceipt>, ApiError> {
    let (key, body) = match (key, body) {
        (Ok(IdempotencyKey(key)), Ok(ApiJson(body))) => (key, body),
        (Err(bad), _) | (_, Err(bad)) => {
            // The session was not looked up yet; its 401 comes first.
            claimed.verify(state.store.as_ref()).await?;
            return Err(bad);
        }
    };
    let receipt =
        vaults::write_claimed(&state, &claimed, &vault_id, body.text, body.entry_id, key).await?;
    Ok(Json(receipt))
}

async fn set_summary(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
    ApiJson(body): ApiJson<SummaryBody>,
) -> Result<Json<Value>, ApiError> {
    vaults::set_summary(&state, &caller, &vault_id, &body.text).await?;
    Ok(Json(json!({})))
}

/// The viewer's one-call header: summary, head seq, epoch and what the
/// caller may do.
async fn info(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(vault_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let vault = access::vault_for(state.store.as_ref(), &caller, &vault_id, Action::Read).await?;
    let encryption = state.store.encryption_mode(&vault.work_session).await?;
    Ok(Json(json!({
        "vault_id": vault.id,
        "summary": vault.summary,
        "head_seq": vault.head_seq,
        "epoch": state.store.epoch(),
        "created_at": vault.created_at,
        "can_write": access::allows(&caller, &vault, Action::Write),
        "read_only_link": matches!(caller.principal, Principal::Link { .. }),
        "encryption": {"mode": encryption.mode, "kid": encryption.kid},
    })))
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
