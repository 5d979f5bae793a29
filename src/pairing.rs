//! Pairing: how a person's astation comes to vouch for an atem's session.
//! An astation is registered (by the operator), then either mints granted
//! sessions itself or grants a pending one that an atem started, by the
//! one-time code the atem shows; wrong codes are counted and, past
//! [`MAX_WRONG_CODES`], deny the session.

use chrono::{DateTime, Utc};

use crate::auth::public_status;
use crate::error::ApiError;
use crate::limits::ClientAddr;
use crate::secrets;
use crate::state::AppState;
use crate::store::{Astation, SessionRecord, SessionState, Store};

/// Wrong one-time codes a pending session tolerates before it is denied.
pub const MAX_WRONG_CODES: i32 = 5;
/// The longest hostname or astation name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// Checks and trims a person-given name (hostname, astation name).
pub fn validate_name(field: &str, value: &str, required: bool) -> Result<String, ApiError> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not be empty"
        )));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "`{field}` is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not contain control characters"
        )));
    }
    Ok(value.to_string())
}

/// A new astation and its token (the only time the token exists in clear).
pub async fn register_astation(
    store: &dyn Store,
    name: &str,
) -> Result<(Astation, String), ApiError> {
    let name = validate_name("name", name, true)?;
    let token = secrets::astation_token();
    let astation = Astation {
        astation_id: secrets::astation_id(),
        name,
        created_at: crate::store::now(),
    };
    store
        .create_astation(&astation, &secrets::hash(&token))
        .await?;
    Ok((astation, token))
}

/// A pending pairing, as returned to the client that asked for it.
pub struct Pending {
    pub id: String,
    pub otp: String,
    pub expires_at: DateTime<Utc>,
}

/// How long an unpaired (expired or denied) pairing is still reported by
/// its status route before it is deleted.
pub const UNPAIRED_KEPT_FOR: chrono::Duration = chrono::Duration::hours(1);

/// Starts a pairing: a pending session with a one-time code. Pairings that
/// ended unpaired more than [`UNPAIRED_KEPT_FOR`] ago are swept here, so
/// anonymous pairing requests cannot pile up.
pub async fn start_pairing(
    store: &dyn Store,
    hostname: &str,
    ttl: std::time::Duration,
) -> Result<Pending, ApiError> {
    let id = secrets::session_id();
    let otp = secrets::otp();
    let now = crate::store::now();
    let expires_at = now
        + chrono::Duration::from_std(ttl)
            .map_err(|_| ApiError::Internal("pairing TTL out of range".into()))?;
    store
        .purge_unpaired_sessions(now - UNPAIRED_KEPT_FOR)
        .await?;
    store
        .insert_session(&SessionRecord {
            id_hash: secrets::hash(&id),
            hostname: hostname.to_string(),
            state: SessionState::Pending,
            astation_id: None,
            otp_hash: Some(secrets::hash(&otp)),
            failed_attempts: 0,
            expires_at,
            created_at: now,
        })
        .await?;
    Ok(Pending {
        id,
        otp,
        expires_at,
    })
}

/// A session minted directly by an astation: granted from the start.
pub async fn mint_session(
    store: &dyn Store,
    astation: &Astation,
    hostname: &str,
) -> Result<String, ApiError> {
    let id = secrets::session_id();
    let now = crate::store::now();
    store
        .insert_session(&SessionRecord {
            id_hash: secrets::hash(&id),
            hostname: hostname.to_string(),
            state: SessionState::Granted,
            astation_id: Some(astation.astation_id.clone()),
            otp_hash: None,
            failed_attempts: 0,
            // Not pending, so never expires by this field.
            expires_at: now,
            created_at: now,
        })
        .await?;
    Ok(id)
}

pub(crate) async fn pairing_session(
    store: &dyn Store,
    session_id: &str,
) -> Result<SessionRecord, ApiError> {
    store
        .session(&secrets::hash(session_id))
        .await?
        .ok_or_else(|| ApiError::NotFound("no such session".into()))
}

/// The public status of a session. The session id is its secret, so an
/// unknown one counts as a failed authentication of `addr`.
pub async fn session_status(
    state: &AppState,
    addr: ClientAddr,
    session_id: &str,
) -> Result<&'static str, ApiError> {
    state.limits.check_credential(addr)?;
    let record = presented_session(state, addr, session_id).await?;
    Ok(public_status(&record))
}

/// The session whose id the client presented (in the path or in its
/// Authorization header): 404 when there is none, counted as a failed
/// authentication of `addr` because the id is the session's secret. The
/// caller has checked that `addr` is not over the limit.
pub(crate) async fn presented_session(
    state: &AppState,
    addr: ClientAddr,
    session_id: &str,
) -> Result<SessionRecord, ApiError> {
    let found = pairing_session(state.store.as_ref(), session_id).await;
    if let Err(ApiError::NotFound(_)) = &found {
        state.limits.record_auth_failure(addr);
    }
    found
}

/// Says why a session that is not pending cannot be granted or denied.
fn not_pending(status: &str) -> ApiError {
    match status {
        "expired" => ApiError::Gone("this pairing expired; the client must start a new one".into()),
        other => ApiError::Conflict(format!("this session is {other}, not pending")),
    }
}

/// Grants a pending session to `astation` if `otp` is its code.
pub async fn grant(
    store: &dyn Store,
    session_id: &str,
    otp: &str,
    astation: &Astation,
) -> Result<(), ApiError> {
    let record = pairing_session(store, session_id).await?;
    let status = public_status(&record);
    if status != "pending" {
        return Err(not_pending(status));
    }
    let code_ok = record
        .otp_hash
        .as_deref()
        .is_some_and(|h| secrets::matches_hash(otp.trim(), h));
    if !code_ok {
        let Some(after) = store
            .record_failed_code(&record.id_hash, MAX_WRONG_CODES)
            .await?
        else {
            // Resolved (denied by other wrong codes, granted, expired)
            // since we read it: this code was never counted, so it gets no
            // wrong-code answer.
            let now = pairing_session(store, session_id).await?;
            return Err(not_pending(public_status(&now)));
        };
        let left = MAX_WRONG_CODES - after.failed_attempts;
        return Err(if after.state == SessionState::Denied {
            ApiError::Forbidden(
                "wrong code; too many wrong codes, so the session is now denied".into(),
            )
        } else {
            ApiError::Forbidden(format!("wrong code; {left} attempt(s) left"))
        });
    }
    let granted = store
        .transition_session(
            &record.id_hash,
            SessionState::Pending,
            SessionState::Granted,
            Some(&astation.astation_id),
        )
        .await?;
    if !granted {
        // Someone else resolved it between our read and our write.
        let now = pairing_session(store, session_id).await?;
        return Err(not_pending(public_status(&now)));
    }
    Ok(())
}

/// Denies a pending session.
pub async fn deny(store: &dyn Store, session_id: &str) -> Result<(), ApiError> {
    let record = pairing_session(store, session_id).await?;
    let status = public_status(&record);
    if status != "pending" {
        return Err(not_pending(status));
    }
    if !store
        .transition_session(
            &record.id_hash,
            SessionState::Pending,
            SessionState::Denied,
            None,
        )
        .await?
    {
        let now = pairing_session(store, session_id).await?;
        return Err(not_pending(public_status(&now)));
    }
    Ok(())
}
