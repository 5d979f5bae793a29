//! The vault operations every transport shares (REST today, MCP and the
//! other front doors as they come): input rules, the access check and the
//! store call, in that order. Transports only parse their own wire format
//! and shape the reply, so a rule added here holds everywhere at once.
//!
//! Every write (a new vault's summary, append, edit, summary change) is
//! checked against the work session's encryption mode by the store, in the
//! write's own atomic step; a refusal is a 409 that says what the mode
//! wants ([`encryption::explain_write`]).

use crate::access::{self, Action};
use crate::auth::{self, Caller, Claimed, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::encryption;
use crate::error::ApiError;
use crate::idempotency;
use crate::limits::ClientAddr;
use crate::metrics::WriteKind;
use crate::polling::{self, ReadRequest};
use crate::secrets;
use crate::state::AppState;
use crate::store::{
    Entry, Keyed, NewEntry, NewVault, StoreError, Vault, VaultListItem, View, WriteReceipt,
};

/// Checks a text field against the NUL rule and the size limit: `max_bytes`
/// for plaintext, and for an envelope the length of the envelope that seals
/// `max_bytes` ([`encryption::text_limit`]).
pub fn validate_text(field: &str, text: &str, max_bytes: usize) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "`{field}` contains a NUL character, which cannot be stored"
        )));
    }
    let limit = encryption::text_limit(text, max_bytes);
    if text.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "`{field}` is {} bytes; the limit is {limit} bytes",
            text.len()
        )));
    }
    Ok(())
}

/// Checks an `entry_id`: entries are numbered from 1.
pub fn validate_entry_id(entry_id: Option<i64>) -> Result<(), ApiError> {
    match entry_id {
        Some(n) if n < 1 => Err(ApiError::bad_request(format!(
            "`entry_id` must be 1 or more (entries are numbered from e1), not {n}"
        ))),
        _ => Ok(()),
    }
}

/// The caller's work session, for operations only sessions may do.
fn work_session(caller: &Caller) -> Result<&str, ApiError> {
    match &caller.principal {
        Principal::Session { work_session, .. } => Ok(work_session),
        Principal::Link { .. } => Err(ApiError::Forbidden(
            "a read-only link cannot create vaults".into(),
        )),
    }
}

/// Creates a vault in the caller's work session.
pub async fn create(state: &AppState, caller: &Caller, summary: String) -> Result<Vault, ApiError> {
    create_keyed(state, caller, summary, None).await
}

/// [`create`] under an optional idempotency key: a repeat of the same
/// request answers with the vault the first one created.
pub async fn create_keyed(
    state: &AppState,
    caller: &Caller,
    summary: String,
    key: Option<String>,
) -> Result<Vault, ApiError> {
    let work_session = work_session(caller)?.to_string();
    validate_text("summary", &summary, state.settings.max_entry_bytes)?;
    let claim = key.map(|key| {
        idempotency::claim(
            &work_session,
            &caller.client_id,
            key,
            &json!(["create", summary]),
            state.settings.idempotency_ttl,
        )
    });
    // The store checks the encryption mode inside the write itself.
    let seen = encryption::Seen::of(&summary);
    let refused = |e| encryption::explain_write(e, "summary", &seen);
    let new = NewVault {
        id: secrets::vault_id(),
        summary,
        work_session,
        creator: caller.client_id.clone(),
    };
    let Some(claim) = claim else {
        return state.store.create_vault(new).await.map_err(refused);
    };
    match state
        .store
        .create_vault_keyed(new, &claim)
        .await
        .map_err(refused)?
    {
        Keyed::Done(vault) => Ok(vault),
        Keyed::Prior(prior) => {
            #[derive(Deserialize)]
            struct Created {
                vault_id: String,
            }
            let created: Created = idempotency::replay(&claim, &prior)?;
            state
                .store
                .vault(&created.vault_id)
                .await?
                .ok_or_else(|| ApiError::Internal("an idempotent create lost its vault".into()))
        }
    }
}

/// The vaults the caller can list: its work session's and those its client
/// id wrote to (a link sees exactly its one vault).
pub async fn list(state: &AppState, caller: &Caller) -> Result<Vec<VaultListItem>, ApiError> {
    Ok(match &caller.principal {
        Principal::Session { work_session, .. } => {
            state
                .store
                .list_vaults(work_session, &caller.client_id)
                .await?
        }
        Principal::Link { vault_id, .. } => state
            .store
            .vault(vault_id)
            .await?
            .map(|v| VaultListItem {
                vault_id: v.id,
                summary: v.summary,
            })
            .into_iter()
            .collect(),
    })
}

/// Reads a vault's rows with `seq > since` in the chosen view.
pub async fn read(
    state: &AppState,
    caller: &Caller,
    vault_id: &str,
    view: View,
    since: i64,
) -> Result<Vec<Entry>, ApiError> {
    if since < 0 {
        return Err(ApiError::bad_request(format!(
            "`since` must be a non-negative integer (a seq), not `{since}`"
        )));
    }
    access::vault_for(state.store.as_ref(), caller, vault_id, Action::Read).await?;
    Ok(state.store.read_entries(vault_id, view, since).await?)
}

/// A read's answer: the rows, their tag, and where the next page starts
/// when a paged read left rows out.
#[derive(Clone, Debug)]
pub enum ReadAnswer {
    /// The client's `If-None-Match` names the current tag.
    NotModified { etag: String },
    /// The rows to answer with.
    Rows {
        entries: Vec<Entry>,
        etag: String,
        /// The `since` of the next page, when more rows remain.
        next_since: Option<i64>,
    },
}

/// Reads with every option of [`ReadRequest`]: paged history, a long poll
/// when no row qualifies yet, and a tag (304 when the client has it).
pub async fn read_with(
    state: &AppState,
    caller: &Caller,
    vault_id: &str,
    req: &ReadRequest,
) -> Result<ReadAnswer, ApiError> {
    polling::check(req)?;
    let vault = access::vault_for(state.store.as_ref(), caller, vault_id, Action::Read).await?;
    let since = req.since.unwrap_or(0);
    // No row of either view qualifies exactly when the head is not past
    // `since`: every write moves the head, and the newest row is always the
    // newest version of its entry.
    let mut head = vault.head_seq;
    if let Some(wait) = req.wait
        && head <= since
    {
        head = polling::wait_for_row(state, &caller.principal, vault_id, head, since, wait).await?;
    }
    let etag = polling::etag(&state.store.epoch(), vault_id, head, req);
    if req
        .if_none_match
        .as_deref()
        .is_some_and(|tags| polling::etag_matches(tags, &etag))
    {
        return Ok(ReadAnswer::NotModified { etag });
    }
    if head <= since {
        return Ok(ReadAnswer::Rows {
            entries: Vec::new(),
            etag,
            next_since: None,
        });
    }
    let (entries, next_since) = match req.limit {
        Some(limit) => {
            // One row more than the page tells whether another page follows.
            let mut rows = state
                .store
                .entries_after(vault_id, since, limit + 1)
                .await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let next = if more {
                rows.last().map(|r| r.seq)
            } else {
                None
            };
            (rows, next)
        }
        None => (
            state.store.read_entries(vault_id, req.view, since).await?,
            None,
        ),
    };
    Ok(ReadAnswer::Rows {
        entries,
        etag,
        next_since,
    })
}

/// Appends (no `entry_id`) or edits entry `entry_id`.
pub async fn write(
    state: &AppState,
    caller: &Caller,
    vault_id: &str,
    text: String,
    entry_id: Option<i64>,
) -> Result<WriteReceipt, ApiError> {
    write_keyed(state, caller, vault_id, text, entry_id, None).await
}

/// [`write`] under an optional idempotency key: a repeat of the same
/// request answers with the first receipt and writes nothing.
pub async fn write_keyed(
    state: &AppState,
    caller: &Caller,
    vault_id: &str,
    text: String,
    entry_id: Option<i64>,
    key: Option<String>,
) -> Result<WriteReceipt, ApiError> {
    if let Principal::Session { session_hash, .. } = &caller.principal {
        let write = SessionWrite {
            session_hash,
            addr: None,
            client_id: &caller.client_id,
            vault_id,
            text,
            entry_id,
            key,
        };
        return write_as_session(state, write).await;
    }
    state.limits.check_write(caller)?;
    validate_entry_id(entry_id)?;
    validate_text("text", &text, state.settings.max_entry_bytes)?;
    access::vault_for(state.store.as_ref(), caller, vault_id, Action::Write).await?;
    // Only work-session callers pass the write check, so the key has an owner.
    let claim = match (key, &caller.principal) {
        (Some(key), Principal::Session { work_session, .. }) => Some(idempotency::claim(
            work_session,
            &caller.client_id,
            key,
            &json!(["write", vault_id, entry_id, text]),
            state.settings.idempotency_ttl,
        )),
        _ => None,
    };
    // The store checks the encryption mode inside the write itself.
    let seen = encryption::Seen::of(&text);
    let refused = |e| encryption::explain_write(e, "text", &seen);
    let new = NewEntry {
        vault_id: vault_id.to_string(),
        entry_no: entry_id,
        writer_id: caller.client_id.clone(),
        content: text,
    };
    let receipt = match claim {
        None => state.store.write_entry(new).await.map_err(refused)?,
        Some(claim) => match state
            .store
            .write_entry_keyed(new, &claim)
            .await
            .map_err(refused)?
        {
            Keyed::Done(receipt) => receipt,
            // A replay wrote nothing, so it counts as no write.
            Keyed::Prior(prior) => return idempotency::replay(&claim, &prior),
        },
    };
    count_write(state, &receipt);
    Ok(receipt)
}

fn count_write(state: &AppState, receipt: &WriteReceipt) {
    state.metrics.write(if receipt.version == 1 {
        WriteKind::Append
    } else {
        WriteKind::Edit
    });
}

/// [`write_keyed`] for a caller whose session is not looked up yet: the
/// store checks it in the write itself, so a write costs one round trip (on
/// Postgres, a share of one batch's). Rows committed here reach this
/// process's subscribers at once (the hub's fast path); other replicas learn
/// of them by the commit's notice.
pub async fn write_claimed(
    state: &AppState,
    claimed: &Claimed,
    vault_id: &str,
    text: String,
    entry_id: Option<i64>,
    key: Option<String>,
) -> Result<WriteReceipt, ApiError> {
    match claimed {
        Claimed::Session {
            session_hash,
            client_id,
            addr,
        } => {
            let write = SessionWrite {
                session_hash,
                addr: Some(*addr),
                client_id,
                vault_id,
                text,
                entry_id,
                key,
            };
            write_as_session(state, write).await
        }
        Claimed::Resolved(caller) => {
            write_keyed(state, caller, vault_id, text, entry_id, key).await
        }
    }
}

/// A session's content write, before its session is looked up.
struct SessionWrite<'a> {
    session_hash: &'a str,
    /// The client's address when the session was not looked up before: an
    /// unknown one then counts as a failed authentication.
    addr: Option<ClientAddr>,
    client_id: &'a str,
    vault_id: &'a str,
    text: String,
    entry_id: Option<i64>,
    key: Option<String>,
}

async fn write_as_session(state: &AppState, w: SessionWrite<'_>) -> Result<WriteReceipt, ApiError> {
    let SessionWrite {
        session_hash,
        addr,
        client_id,
        vault_id,
        text,
        entry_id,
        key,
    } = w;
    let store = state.store.as_ref();
    // Why the session cannot write, said exactly (unknown, pending,
    // revoked, ...), and counted when it is unknown.
    let refusal = async || match addr {
        Some(addr) => auth::claimed_session_principal(state, addr, session_hash).await,
        None => auth::session_principal(store, session_hash).await,
    };
    state.limits.check_write_for(session_hash)?;
    let checked = validate_entry_id(entry_id)
        .and_then(|()| validate_text("text", &text, state.settings.max_entry_bytes))
        .and_then(|()| {
            if secrets::is_plain_id(vault_id) {
                Ok(())
            } else {
                Err(ApiError::NotFound("no such vault".into()))
            }
        });
    if let Err(e) = checked {
        // The credential is judged first, as on every route.
        refusal().await?;
        return Err(e);
    }
    let key = key.map(|key| {
        idempotency::write_key(
            key,
            &json!(["write", vault_id, entry_id, text]),
            state.settings.idempotency_ttl,
        )
    });
    let fingerprint = key.as_ref().map(|k| k.fingerprint.clone());
    // The store checks the encryption mode inside the write itself.
    let seen = encryption::Seen::of(&text);
    let new = NewEntry {
        vault_id: vault_id.to_string(),
        entry_no: entry_id,
        writer_id: client_id.to_string(),
        content: text,
    };
    match store.write_as(session_hash, new, key).await {
        Ok(Keyed::Done(committed)) => {
            state.hub.publish_committed(vault_id, &committed);
            let receipt = committed.receipt();
            count_write(state, &receipt);
            Ok(receipt)
        }
        // A replay wrote nothing, so it counts as no write.
        Ok(Keyed::Prior(prior)) => {
            idempotency::replay_for(fingerprint.as_deref().unwrap_or_default(), &prior)
        }
        Err(StoreError::SessionRefused) => {
            refusal().await?;
            Err(StoreError::SessionRefused.into())
        }
        Err(e) => Err(encryption::explain_write(e, "text", &seen)),
    }
}

/// Replaces the vault's one-line summary.
pub async fn set_summary(
    state: &AppState,
    caller: &Caller,
    vault_id: &str,
    text: &str,
) -> Result<(), ApiError> {
    state.limits.check_write(caller)?;
    validate_text("text", text, state.settings.max_entry_bytes)?;
    access::vault_for(state.store.as_ref(), caller, vault_id, Action::SetSummary).await?;
    state
        .store
        .set_summary(vault_id, text)
        .await
        .map_err(|e| encryption::explain_write(e, "text", &encryption::Seen::of(text)))?;
    state.metrics.write(WriteKind::Summary);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules_are_nul_and_size() {
        assert!(validate_text("text", "fine", 10).is_ok());
        assert!(matches!(
            validate_text("text", "a\0b", 10),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            validate_text("text", "elevenbytes", 10),
            Err(ApiError::TooLarge(_))
        ));
    }

    #[test]
    fn entry_ids_start_at_one() {
        assert!(validate_entry_id(None).is_ok());
        assert!(validate_entry_id(Some(1)).is_ok());
        assert!(validate_entry_id(Some(0)).is_err());
        assert!(validate_entry_id(Some(-3)).is_err());
    }
}
