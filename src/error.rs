//! The API's one error type. Every failure becomes a status that says who
//! must act and a JSON body `{"error": "..."}` a person can act on. Faults
//! (5xx) are logged with their detail; the body only says that it happened.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::store::StoreError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no usable credential.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid credential that the rules refuse.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the thing is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// 410: it existed and is gone (an expired pairing).
    #[error("{0}")]
    Gone(String),
    /// 413: over a configured size limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the request is well formed but contradicts an earlier one (an
    /// idempotency key reused for another request).
    #[error("{0}")]
    Unprocessable(String),
    /// 503 with `Retry-After`: the relay is at a documented bound (held long
    /// polls) and the client should come back after that many seconds.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_secs: u64,
    },
    /// 401 for a secret the relay does not know (or a wrong one): counted by
    /// the failed-authentication limit, unlike the other 401s.
    #[error("{0}")]
    WrongSecret(String),
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 414: the request target is longer than the relay reads.
    #[error("{0}")]
    UriTooLong(String),
    /// 429: a rate limit; `retry_after_secs` goes out as `Retry-After`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// 431: the request headers are larger than the relay reads.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 503: the store cannot be reached; the detail is logged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// 500: a real fault; the detail is logged, never sent.
    #[error("internal fault: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::WrongSecret(_) => StatusCode::UNAUTHORIZED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Shorthand for a 400.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
}

impl ApiError {
    /// The words a client is told: the message itself, or for faults a
    /// generic sentence (the detail goes to the log here). Every transport
    /// answers with these words, so a refusal reads the same everywhere.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                "the relay hit an internal error; it has been logged".to_string()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                "the relay's database is unreachable; try again shortly".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.public_message();
        let mut response = (self.status(), Json(json!({ "error": message }))).into_response();
        if let ApiError::Busy {
            retry_after_secs, ..
        }
        | ApiError::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VaultNotFound => ApiError::NotFound("no such vault".into()),
            StoreError::EntryNotFound(n) => ApiError::NotFound(format!(
                "entry e{n} does not exist in this vault; omit entry_id to append a new entry"
            )),
            StoreError::AstationNotFound => ApiError::NotFound("no such astation".into()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Fault(m) => ApiError::Internal(m),
            StoreError::SessionRefused => {
                ApiError::Unauthorized("this session cannot be used; pair again".into())
            }
            StoreError::WriteForbidden => ApiError::Forbidden(crate::access::WRITE_REFUSAL.into()),
            StoreError::ModeMismatch(state) => ApiError::Conflict(format!(
                "the value does not match the encryption mode ({}) of this work session; \
                 nothing was written",
                state.mode
            )),
            StoreError::Transition(t) => ApiError::Conflict(t.to_string()),
            StoreError::RowNotFound { entry_no, version } => ApiError::NotFound(format!(
                "e{entry_no} v{version} does not exist in this vault"
            )),
        }
    }
}

/// `axum::Json` with our error shape: 415 for a body that is not declared
/// JSON, 413 over the body limit, 408 when the body is too slow, 400 for
/// anything else malformed, including a body that is not a JSON object.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, Self::Rejection> {
        declared_json(&mut req)?;
        match Json::<Object<T>>::from_request(req, state).await {
            Ok(Json(Object(v))) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON object deserialized as `T`. serde's derived structs also accept
/// an array of their fields in order; bodies here must be objects.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(Object)
    }
}

/// Reads a JSON `Content-Type` as RFC 9110 spells it (spaces around `;`,
/// any case, parameters) and hands the body on as plain
/// `application/json`; a charset other than UTF-8 is refused, since JSON
/// bodies are UTF-8. Anything else is left to the JSON extractor's 415.
fn declared_json(req: &mut Request) -> Result<(), ApiError> {
    let Some(declared) = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    if declared == "application/json" {
        return Ok(());
    }
    let mut parts = declared.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !is_json {
        return Ok(());
    }
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(ApiError::UnsupportedMediaType(format!(
                "JSON bodies are UTF-8: send the body as UTF-8 with Content-Type: \
                 application/json (not charset={value})"
            )));
        }
    }
    req.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(())
}

/// A list of JSON objects as `Vec<T>`, for a body's nested lists
/// (`#[serde(deserialize_with = "crate::error::objects")]`): each element
/// must be an object, as the body itself must.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let list = Vec::<Object<T>>::deserialize(deserializer)?;
    Ok(list.into_iter().map(|Object(v)| v).collect())
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if crate::http::edge::is_body_timeout(&rejection) {
        return ApiError::RequestTimeout(
            "the request body did not arrive in time; send it in one go".into(),
        );
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "send the body as JSON with the header Content-Type: application/json".into(),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::BadRequest(format!(
            "the JSON body has the wrong shape: {}",
            e.body_text()
        )),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge("the request body is larger than the relay accepts".into())
        }
        other => ApiError::BadRequest(format!("could not read the body: {}", other.body_text())),
    }
}

/// A query string decoded exactly ([`crate::http::query`]), with our error
/// shape: a value that is not UTF-8 once decoded is 400.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        crate::http::query::from_query(parts.uri.query().unwrap_or_default())
            .map(ApiQuery)
            .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))
    }
}

/// A 404 for unknown routes, in our shape.
pub async fn route_not_found() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".into())
}

/// A 405 for a known route with the wrong method, in our shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this route does not accept that method".into())
}

/// `axum::extract::Path` with our error shape (a path segment that is not
/// valid UTF-8, say).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))
    }
}
