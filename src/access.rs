//! The access rules, in one place. Every vault route (REST and stream) asks
//! [`vault_for`] before it touches a vault.
//!
//! - read (and stream): the caller's work session owns the vault, or the
//!   caller's client id is in its writer list, or a read-only link names it;
//! - write content: only callers in the vault's work session;
//! - set the summary: the read rule, except that links are read-only;
//! - manage read-only links: the read rule, sessions only.
//!
//! This module is the source of these rules. The content write, the hot
//! path, is checked inside the store's write itself so that it costs no
//! separate lookups ([`crate::store::Store::write_as`]): the memory store
//! calls [`allows`] under its lock, and Postgres's `vault_write_batch`
//! (migrations/0006) spells the same write rule in SQL. The store suite
//! (`tests/api/writes.rs`) checks that the two agree with [`allows`] for
//! every kind of caller.

use crate::auth::{Caller, Principal};
use crate::error::ApiError;
use crate::store::{Store, Vault};

/// What a caller wants to do with a vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    SetSummary,
    ManageLinks,
}

/// Whether `caller` may do `action` on `vault`.
pub fn allows(caller: &Caller, vault: &Vault, action: Action) -> bool {
    match &caller.principal {
        Principal::Session { work_session, .. } => {
            let in_session = *work_session == vault.work_session;
            let past_writer = vault.writers.contains(&caller.client_id);
            match action {
                Action::Write => in_session,
                Action::Read | Action::SetSummary | Action::ManageLinks => {
                    in_session || past_writer
                }
            }
        }
        Principal::Link { vault_id, .. } => *vault_id == vault.id && action == Action::Read,
    }
}

/// Loads a vault the caller may act on: 404 when there is none, 403 when the
/// rules say no.
pub async fn vault_for(
    store: &dyn Store,
    caller: &Caller,
    vault_id: &str,
    action: Action,
) -> Result<Vault, ApiError> {
    unreadable_id(caller, vault_id)?;
    let vault = store.vault(vault_id).await?;
    judge(caller, vault, action)
}

/// [`vault_for`] on a vault the caller already read (with its credential,
/// in one look-up): the same answers.
pub fn vault_given(
    caller: &Caller,
    vault_id: &str,
    read: Option<Vault>,
    action: Action,
) -> Result<Vault, ApiError> {
    unreadable_id(caller, vault_id)?;
    judge(caller, read.filter(|v| v.id == vault_id), action)
}

/// Ids no caller may look up: 404 before any store read.
fn unreadable_id(caller: &Caller, vault_id: &str) -> Result<(), ApiError> {
    // A link names one vault; answer the same 404 for every other id so a
    // link cannot be used to probe for vaults.
    if let Principal::Link {
        vault_id: linked, ..
    } = &caller.principal
        && linked != vault_id
    {
        return Err(ApiError::NotFound("no such vault".into()));
    }
    if !crate::secrets::is_plain_id(vault_id) {
        return Err(ApiError::NotFound("no such vault".into()));
    }
    Ok(())
}

fn judge(caller: &Caller, vault: Option<Vault>, action: Action) -> Result<Vault, ApiError> {
    let vault = vault.ok_or_else(|| ApiError::NotFound("no such vault".into()))?;
    if allows(caller, &vault, action) {
        Ok(vault)
    } else {
        Err(ApiError::Forbidden(refusal(caller, action).into()))
    }
}

/// Why a session may not write content to a vault.
pub const WRITE_REFUSAL: &str = "only sessions of the vault's work session may write to it; ask its astation owner for a session";

fn refusal(caller: &Caller, action: Action) -> &'static str {
    match (&caller.principal, action) {
        (Principal::Link { .. }, _) => "a read-only link can only read its vault",
        (_, Action::Write) => WRITE_REFUSAL,
        _ => "this vault belongs to another work session and this client id never wrote to it",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn vault() -> Vault {
        Vault {
            id: "v-1".into(),
            summary: String::new(),
            work_session: "a-home".into(),
            creator: "c1".into(),
            created_at: Utc::now(),
            writers: vec!["past-writer".into()],
            head_seq: 0,
        }
    }

    fn session(work: &str, client: &str) -> Caller {
        Caller {
            principal: Principal::Session {
                session_hash: "h".into(),
                work_session: work.into(),
            },
            client_id: client.into(),
        }
    }

    #[test]
    fn members_of_the_work_session_may_do_everything() {
        let c = session("a-home", "anyone");
        for a in [
            Action::Read,
            Action::Write,
            Action::SetSummary,
            Action::ManageLinks,
        ] {
            assert!(allows(&c, &vault(), a), "{a:?}");
        }
    }

    #[test]
    fn past_writers_elsewhere_may_read_and_summarize_but_not_write() {
        let c = session("a-away", "past-writer");
        assert!(allows(&c, &vault(), Action::Read));
        assert!(allows(&c, &vault(), Action::SetSummary));
        assert!(!allows(&c, &vault(), Action::Write));
    }

    #[test]
    fn strangers_may_do_nothing() {
        let c = session("a-away", "stranger");
        for a in [
            Action::Read,
            Action::Write,
            Action::SetSummary,
            Action::ManageLinks,
        ] {
            assert!(!allows(&c, &vault(), a), "{a:?}");
        }
    }

    #[test]
    fn links_only_read_their_own_vault() {
        let mut c = session("x", "viewer");
        c.principal = Principal::Link {
            link_id: "l".into(),
            vault_id: "v-1".into(),
            secret_hash: "h".into(),
            expires_at: Utc::now(),
        };
        assert!(allows(&c, &vault(), Action::Read));
        assert!(!allows(&c, &vault(), Action::SetSummary));
        assert!(!allows(&c, &vault(), Action::Write));
        let mut other = vault();
        other.id = "v-2".into();
        assert!(!allows(&c, &other, Action::Read));
    }
}
