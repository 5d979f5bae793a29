//! End-to-end encryption: the relay stores envelopes it cannot open,
//! enforces each work session's encryption mode on every write, and lets
//! atems rewrite a vault's rows when the mode changes.
//!
//! - [`envelope`]: the shape of an envelope and how a value counts (pure);
//! - [`mode`]: modes, transitions and their gates, what each mode accepts
//!   (pure);
//! - this module: the operations the routes call (status, change of mode,
//!   rewrite) and the errors a person reads when a value does not fit.
//!
//! The stores check the mode inside the write itself (on Postgres in SQL,
//! `encryption_check` in migrations/0004_encryption.sql), so a change of
//! mode and a racing write cannot interleave badly.

pub mod envelope;
pub mod mode;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{self, Action};
use crate::auth::{Caller, Principal};
use crate::error::ApiError;
use crate::metrics::WriteKind;
use crate::state::AppState;
use crate::store::StoreError;
use envelope::{Malformed, Shape};
pub use mode::{FieldCounts, Mode, ModeChange, ModeState};

/// What the astation sees: `GET`/`POST /api/encryption`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = EncryptionStatus)]
pub struct Status {
    pub mode: Mode,
    pub kid: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub counts: FieldCounts,
}

impl Status {
    /// A mode with its counts.
    pub fn new(state: ModeState, counts: FieldCounts) -> Self {
        Status {
            mode: state.mode,
            kid: state.kid,
            updated_at: state.updated_at,
            counts,
        }
    }
}

/// What a session sees: `GET /api/encryption?id=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = EncryptionView)]
pub struct SessionView {
    pub mode: Mode,
    pub kid: Option<String>,
}

/// One row to rewrite.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct RewriteRow {
    pub entry_no: i64,
    pub version: i64,
    pub content: String,
}

/// The rewrite route's body.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct RewriteBody {
    pub summary: String,
    #[serde(default, deserialize_with = "crate::error::objects")]
    pub entries: Vec<RewriteRow>,
}

/// A rewrite, checked, for the store.
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub vault_id: String,
    pub summary: String,
    /// In the order they get their new seqs.
    pub entries: Vec<RewriteRow>,
}

/// What the rewrite route answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RewriteOutcome {
    pub rewritten: i64,
    /// Why nothing was rewritten (a past writer from another work session).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub skipped: Option<String>,
}

/// The largest text a value may have: `max_plain_bytes`, or for a value
/// that starts with `e1.` the length of the envelope sealing that much
/// ([`envelope::sealed_limit`]).
pub fn text_limit(text: &str, max_plain_bytes: usize) -> usize {
    if text.starts_with(envelope::PREFIX) {
        envelope::sealed_limit(max_plain_bytes)
    } else {
        max_plain_bytes
    }
}

/// A value's shape, kept after the value itself went to the store, to
/// explain a refusal.
#[derive(Clone, Debug)]
pub enum Seen {
    Empty,
    Plain,
    Sealed(String),
    Malformed(Malformed),
}

impl Seen {
    /// The shape of `value`.
    pub fn of(value: &str) -> Seen {
        match envelope::shape(value) {
            Shape::Empty => Seen::Empty,
            Shape::Plain => Seen::Plain,
            Shape::Sealed { kid } => Seen::Sealed(kid.to_string()),
            Shape::Malformed(m) => Seen::Malformed(m),
        }
    }

    fn describe(&self, state: &ModeState) -> String {
        match self {
            Seen::Empty => "it is empty".into(),
            Seen::Plain => "it is plaintext".into(),
            Seen::Sealed(kid) => match state.kid.as_deref() {
                Some(cur) if cur == kid => format!("it is sealed with kid {kid}"),
                Some(cur) => format!("it is sealed with kid {kid}, not the current kid {cur}"),
                None => format!("it is an envelope (kid {kid})"),
            },
            Seen::Malformed(m) => m.describe().into(),
        }
    }
}

/// The 409 for a value the mode refuses:
/// `` `<field>` does not match the encryption mode (<mode>) of this work session: ... ``
pub fn mismatch(field: &str, seen: &Seen, state: &ModeState, rewrite: bool) -> ApiError {
    ApiError::Conflict(format!(
        "`{field}` does not match the encryption mode ({}) of this work session: {}; {}. \
         Nothing was written.",
        state.mode,
        seen.describe(state),
        mode::wants(state, rewrite)
    ))
}

/// Turns a store refusal of a written value into its 409; other errors pass.
pub fn explain_write(e: StoreError, field: &str, seen: &Seen) -> ApiError {
    match e {
        StoreError::ModeMismatch(state) => mismatch(field, seen, &state, false),
        other => other.into(),
    }
}

fn parse_change(mode: &str, kid: Option<&str>) -> Result<ModeChange, ApiError> {
    let mode = Mode::parse(mode).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown encryption mode `{mode}`; use off, enabling, on or disabling"
        ))
    })?;
    if let Some(k) = kid
        && !envelope::is_valid_kid(k)
    {
        return Err(ApiError::bad_request(format!(
            "`kid` must be exactly 8 lowercase hex characters, not `{k}`"
        )));
    }
    Ok(ModeChange {
        mode,
        kid: kid.map(str::to_string),
    })
}

/// The work session's mode and counts.
pub async fn status(state: &AppState, work_session: &str) -> Result<Status, ApiError> {
    let mode = state.store.encryption_mode(work_session).await?;
    let counts = state
        .store
        .encryption_counts(work_session, mode.kid.as_deref())
        .await?;
    Ok(Status::new(mode, counts))
}

/// Changes the work session's mode (gates checked atomically by the store).
pub async fn set(
    state: &AppState,
    work_session: &str,
    mode: &str,
    kid: Option<&str>,
) -> Result<Status, ApiError> {
    let change = parse_change(mode, kid)?;
    let (mode, counts) = state
        .store
        .set_encryption_mode(work_session, &change)
        .await?;
    Ok(Status::new(mode, counts))
}

/// The mode and kid of the caller's work session.
pub async fn session_view(state: &AppState, caller: &Caller) -> Result<SessionView, ApiError> {
    let Principal::Session { work_session, .. } = &caller.principal else {
        return Err(ApiError::Forbidden(
            "a read-only link has no work session; the vault's stream carries its mode".into(),
        ));
    };
    let mode = state.store.encryption_mode(work_session).await?;
    Ok(SessionView {
        mode: mode.mode,
        kid: mode.kid,
    })
}

/// Checks a rewrite's body: sizes, NULs and rows listed once.
fn validate_rewrite(state: &AppState, body: &RewriteBody) -> Result<(), ApiError> {
    let max = state.settings.max_entry_bytes;
    crate::vaults::validate_text("summary", &body.summary, max)?;
    let mut seen = HashSet::with_capacity(body.entries.len());
    for row in &body.entries {
        if row.entry_no < 1 || row.version < 1 {
            return Err(ApiError::bad_request(format!(
                "entries are numbered from e1 v1; e{} v{} cannot exist",
                row.entry_no, row.version
            )));
        }
        if !seen.insert((row.entry_no, row.version)) {
            return Err(ApiError::bad_request(format!(
                "e{} v{} is listed twice; list each row once",
                row.entry_no, row.version
            )));
        }
        crate::vaults::validate_text(
            &format!("content of e{} v{}", row.entry_no, row.version),
            &row.content,
            max,
        )?;
    }
    Ok(())
}

/// Rewrites a vault's summary and rows in place (the rewrite route).
pub async fn rewrite(
    state: &AppState,
    caller: &Caller,
    vault_id: &str,
    body: RewriteBody,
) -> Result<RewriteOutcome, ApiError> {
    // A rewrite counts as one write against the session's write limit.
    state.limits.check_write(caller)?;
    validate_rewrite(state, &body)?;
    let store = state.store.as_ref();
    let vault = match access::vault_for(store, caller, vault_id, Action::Read).await {
        Ok(v) if access::allows(caller, &v, Action::Write) => v,
        // A session that may read but not write is a past writer from
        // another work session: its migration of its own work session
        // lists this vault too, and must be able to finish.
        Ok(_) if matches!(caller.principal, Principal::Session { .. }) => {
            return Ok(RewriteOutcome {
                rewritten: 0,
                skipped: Some(
                    "this vault belongs to another work session, whose own atems rewrite it".into(),
                ),
            });
        }
        // Everyone else is refused as on a write (and gets its words).
        _ => access::vault_for(store, caller, vault_id, Action::Write).await?,
    };
    let job = Rewrite {
        vault_id: vault.id,
        summary: body.summary,
        entries: body.entries,
    };
    match state.store.rewrite_vault(&job).await {
        Ok(rewritten) => {
            state.metrics.write(WriteKind::Rewrite);
            Ok(RewriteOutcome {
                rewritten,
                skipped: None,
            })
        }
        Err(StoreError::ModeMismatch(mode)) => Err(rewrite_refusal(&job, &mode)),
        Err(StoreError::RowNotFound { entry_no, version }) => Err(ApiError::NotFound(format!(
            "e{entry_no} v{version} does not exist in this vault; nothing was rewritten"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Why the store refused a rewrite: the mode itself, or the first value
/// that does not fit it.
fn rewrite_refusal(job: &Rewrite, state: &ModeState) -> ApiError {
    if !mode::rewrite_runs_in(state.mode) {
        return ApiError::Conflict(format!(
            "the rewrite runs only while the work session is enabling or disabling \
             encryption; its encryption mode is {}. Nothing was rewritten.",
            state.mode
        ));
    }
    if !mode::accepts_rewrite(state, &job.summary) {
        return mismatch("summary", &Seen::of(&job.summary), state, true);
    }
    for row in &job.entries {
        if !mode::accepts_rewrite(state, &row.content) {
            let field = format!("content of e{} v{}", row.entry_no, row.version);
            return mismatch(&field, &Seen::of(&row.content), state, true);
        }
    }
    // The mode changed again between the store's check and ours.
    ApiError::Conflict(format!(
        "the rewrite does not match the encryption mode ({}) of this work session; \
         read the mode again and retry. Nothing was rewritten.",
        state.mode
    ))
}
