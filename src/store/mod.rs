//! The store: vaults, their entries, astations, sessions, stream tickets and
//! read-only links. Two implementations live side by side, [`memory`] and
//! [`postgres`]; both pass the same behaviour suite (`tests/api`).
//!
//! Nothing here knows about HTTP: failures are [`StoreError`]s, mapped to
//! statuses at the edge.

pub mod memory;
pub mod postgres;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::encryption::{FieldCounts, ModeChange, ModeState, Rewrite};

/// The current time at the precision both stores keep (Postgres keeps
/// microseconds), so a value reads back exactly as it was written.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// The `kind` of every row written through the API.
pub const KIND_CONTENT: &str = "content";

/// One row of a vault's log, exactly as the REST read returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub seq: i64,
    pub entry_no: i64,
    pub version: i64,
    pub kind: String,
    pub writer_id: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// A vault's mutable header.
#[derive(Clone, Debug, PartialEq)]
pub struct Vault {
    pub id: String,
    pub summary: String,
    /// The work session (astation id) the vault belongs to.
    pub work_session: String,
    /// The client id that created it.
    pub creator: String,
    pub created_at: DateTime<Utc>,
    /// Client ids that wrote content here, each once, in order of first write.
    pub writers: Vec<String>,
    /// The newest seq of the vault, 0 when it has no entries.
    pub head_seq: i64,
}

/// What the vault list shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VaultListItem {
    pub vault_id: String,
    pub summary: String,
}

/// A vault to create.
#[derive(Clone, Debug)]
pub struct NewVault {
    pub id: String,
    pub summary: String,
    pub work_session: String,
    pub creator: String,
}

/// A content write: an append when `entry_no` is `None`, else a new version
/// of that entry.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub vault_id: String,
    pub entry_no: Option<i64>,
    pub writer_id: String,
    pub content: String,
}

/// Where a write landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteReceipt {
    pub entry_no: i64,
    pub version: i64,
    pub seq: i64,
}

/// A content write the store committed: the row as stored, and the vault's
/// newest seq just before it (read under the vault's write lock), which
/// tells the hub whether it may deliver the row without a re-read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub entry: Entry,
    pub prev_seq: i64,
}

impl Committed {
    /// What the writer is told.
    pub fn receipt(&self) -> WriteReceipt {
        WriteReceipt {
            entry_no: self.entry.entry_no,
            version: self.entry.version,
            seq: self.entry.seq,
        }
    }
}

/// Which rows a read returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// The newest version of each entry, by `entry_no`.
    #[default]
    Current,
    /// Every row, by `seq`.
    History,
}

/// A registered astation (its token is stored only as a hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Astation {
    pub astation_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The stored lifecycle state of a session. "expired" is not stored: it is a
/// pending session past its `expires_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Pending,
    Granted,
    Denied,
    Revoked,
}

impl SessionState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Granted => "granted",
            SessionState::Denied => "denied",
            SessionState::Revoked => "revoked",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => SessionState::Pending,
            "granted" => SessionState::Granted,
            "denied" => SessionState::Denied,
            "revoked" => SessionState::Revoked,
            _ => return None,
        })
    }
}

/// A session, keyed by the hash of its id.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id_hash: String,
    pub hostname: String,
    pub state: SessionState,
    /// Set once granted: the caller's work session.
    pub astation_id: Option<String>,
    /// Hash of the one-time code, for pending sessions.
    pub otp_hash: Option<String>,
    pub failed_attempts: i32,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// A short-lived, single-use credential for opening a stream from a browser.
#[derive(Clone, Debug)]
pub struct StreamTicket {
    pub ticket_hash: String,
    pub vault_id: String,
    /// The session the ticket was issued to, if any.
    pub session_hash: Option<String>,
    /// The read-only link the ticket was issued to, if any.
    pub link_hash: Option<String>,
    pub client_id: String,
    pub expires_at: DateTime<Utc>,
}

/// A read-only link to one vault (its secret is stored only as a hash).
#[derive(Clone, Debug)]
pub struct ReadLink {
    pub link_id: String,
    pub secret_hash: String,
    pub vault_id: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
}

/// One watcher as presence shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Watcher {
    pub atem_id: String,
    pub client_id: String,
}

/// One open stream, as presence records it (across replicas).
#[derive(Clone, Debug)]
pub struct WatcherRecord {
    /// The relay process holding the socket.
    pub replica_id: String,
    /// The socket, unique within its replica.
    pub conn_id: i64,
    pub vault_id: String,
    pub atem_id: String,
    pub client_id: String,
}

/// A change announced after its transaction committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A row with this seq committed in this vault.
    Entry { vault_id: String, seq: i64 },
    /// The vault's summary changed.
    Summary { vault_id: String },
    /// The set of watchers of the vault changed.
    Presence {
        vault_id: String,
        /// The replica whose own streams came or went; `None` when a
        /// replica's watchers were withdrawn for it (at its shutdown, or
        /// when it fell silent).
        by: Option<String>,
    },
    /// Credentials were revoked; open streams that use them must close.
    Revoked(Revocation),
    /// A work session's encryption mode changed.
    Encryption { work_session: String },
    /// Notices may have been lost (the listener reconnected, or a receiver
    /// lagged): every subscriber must catch up from the store.
    Resync,
}

/// What a revocation covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// One session, by the hash of its id.
    Session(String),
    /// Every session of an astation (the astation was removed).
    Astation(String),
    /// One read-only link, by its public id.
    Link(String),
}

/// An idempotency key claimed by a create or content write (see
/// [`crate::idempotency`]): stored in the write's own transaction.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    /// The caller's work session and client id: keys belong to both.
    pub work_session: String,
    pub client_id: String,
    /// The key as the client sent it.
    pub key: String,
    /// A hash of what the request asked for (route, vault, body).
    pub fingerprint: String,
    /// How long the key is kept.
    pub ttl: std::time::Duration,
}

/// The idempotency key of a session's content write ([`Store::write_as`]).
/// Its owner is the session's work session and the writer's client id,
/// which the store finds in the write itself.
#[derive(Clone, Debug)]
pub struct WriteKey {
    /// The key as the client sent it.
    pub key: String,
    /// A hash of what the request asked for (route, vault, body).
    pub fingerprint: String,
    /// How long the key is kept.
    pub ttl: std::time::Duration,
}

impl WriteKey {
    /// The claim this key makes once its owner is known.
    pub fn claim(&self, work_session: &str, client_id: &str) -> IdempotencyClaim {
        IdempotencyClaim {
            work_session: work_session.to_string(),
            client_id: client_id.to_string(),
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            ttl: self.ttl,
        }
    }
}

/// What a keyed write found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyed<T> {
    /// The key was new (or expired): the write happened and its response is
    /// stored under the key.
    Done(T),
    /// A live key: nothing was written; this is what the first request with
    /// the key asked for and got.
    Prior(PriorResponse),
}

/// The first request's fingerprint and its stored response (JSON text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorResponse {
    pub fingerprint: String,
    pub response: String,
}

/// The response stored for a keyed content write: the receipt's JSON.
pub fn receipt_response(receipt: &WriteReceipt) -> String {
    // Serializing three integers cannot fail.
    serde_json::to_string(receipt).unwrap_or_default()
}

/// The response stored for a keyed create: `{"vault_id"}`.
pub fn created_response(vault: &Vault) -> String {
    serde_json::json!({ "vault_id": vault.id }).to_string()
}

/// Failures that the store reports. No HTTP here: the edge maps them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such vault")]
    VaultNotFound,
    #[error("vault has no entry e{0}")]
    EntryNotFound(i64),
    #[error("no such astation")]
    AstationNotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// A write as a session that is not granted (unknown, pending, denied,
    /// revoked); the caller looks the session up to say which.
    #[error("the session is not granted")]
    SessionRefused,
    /// A write by a session outside the vault's work session.
    #[error("the session is not in the vault's work session")]
    WriteForbidden,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store fault: {0}")]
    Fault(String),
    /// The work session's encryption mode refuses the value (nothing was
    /// written); carries the mode that refused it.
    #[error("the value does not match the encryption mode ({})", .0.mode)]
    ModeMismatch(crate::encryption::ModeState),
    /// A change of encryption mode that the rules or its gate refuse.
    #[error("{0}")]
    Transition(#[from] crate::encryption::mode::TransitionError),
    /// A rewrite named a row that does not exist.
    #[error("vault has no row e{entry_no} v{version}")]
    RowNotFound { entry_no: i64, version: i64 },
}

/// Store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the relay keeps. Implementations must make each write one
/// atomic step and announce it through [`Store::notices`] only after it is
/// durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `memory` or `postgres`.
    fn backend(&self) -> &'static str;
    /// An id of this store's lifetime; resume cursors from another epoch are
    /// meaningless.
    fn epoch(&self) -> String;
    /// Fails when the store cannot serve requests.
    async fn health(&self) -> StoreResult<()>;
    /// Commit notices, for the stream fan-out.
    fn notices(&self) -> broadcast::Receiver<Notice>;

    // Vaults and entries.
    async fn create_vault(&self, vault: NewVault) -> StoreResult<Vault>;
    async fn vault(&self, vault_id: &str) -> StoreResult<Option<Vault>>;
    /// Vaults of `work_session` plus those `client_id` wrote to.
    async fn list_vaults(
        &self,
        work_session: &str,
        client_id: &str,
    ) -> StoreResult<Vec<VaultListItem>>;
    /// Appends or edits in one transaction holding the vault's lock; adds the
    /// writer to the writer list.
    async fn write_entry(&self, entry: NewEntry) -> StoreResult<WriteReceipt>;
    /// Rows with `seq > since` in the chosen view.
    async fn read_entries(&self, vault_id: &str, view: View, since: i64)
    -> StoreResult<Vec<Entry>>;
    /// Up to `limit` rows of the vault with `seq > after`, in seq order.
    async fn entries_after(
        &self,
        vault_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<Entry>>;
    async fn set_summary(&self, vault_id: &str, summary: &str) -> StoreResult<()>;

    // Astations.
    async fn create_astation(&self, astation: &Astation, token_hash: &str) -> StoreResult<()>;
    async fn list_astations(&self) -> StoreResult<Vec<Astation>>;
    async fn astation_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Astation>>;
    /// Removes an astation and revokes its sessions in one step.
    async fn delete_astation(&self, astation_id: &str) -> StoreResult<()>;
    /// Marks one session revoked; false when it was already revoked.
    async fn revoke_session(&self, id_hash: &str) -> StoreResult<bool>;

    // Sessions.
    async fn insert_session(&self, session: &SessionRecord) -> StoreResult<()>;
    /// Deletes sessions that never got granted (pending or denied) and
    /// whose pairing ended before `before`.
    async fn purge_unpaired_sessions(&self, before: DateTime<Utc>) -> StoreResult<()>;
    async fn session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>>;
    /// A session and a vault together, for a request that needs both
    /// before anything else (a stream open): one round trip on Postgres.
    async fn session_and_vault(
        &self,
        id_hash: &str,
        vault_id: &str,
    ) -> StoreResult<(Option<SessionRecord>, Option<Vault>)> {
        Ok((self.session(id_hash).await?, self.vault(vault_id).await?))
    }
    /// Moves a session from `from` to `to` (binding `astation_id` when given);
    /// false when it was not in `from`.
    async fn transition_session(
        &self,
        id_hash: &str,
        from: SessionState,
        to: SessionState,
        astation_id: Option<&str>,
    ) -> StoreResult<bool>;
    /// Counts one wrong code against a session that is pending and not past
    /// its deadline, in one atomic step; at `limit` wrong codes it is denied.
    /// Returns the session after the update, or `None` when it was not
    /// pending (nothing was counted: the caller's code was never compared
    /// against a live pairing).
    async fn record_failed_code(
        &self,
        id_hash: &str,
        limit: i32,
    ) -> StoreResult<Option<SessionRecord>>;

    // Stream tickets.
    async fn insert_ticket(&self, ticket: &StreamTicket) -> StoreResult<()>;
    /// Removes and returns an unexpired ticket: each ticket works once.
    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<StreamTicket>>;

    // Presence.
    /// Records the streams of `replica_id` that opened (`joined`) and
    /// forgets those that closed (`left`, by connection id), in one go, and
    /// announces each vault whose watchers changed once, as a presence
    /// notice naming the replica.
    async fn update_watchers(
        &self,
        replica_id: &str,
        joined: &[WatcherRecord],
        left: &[i64],
    ) -> StoreResult<()>;
    /// The first `limit` watchers of a vault (oldest first) on live replicas,
    /// and how many there are in all.
    async fn watchers(&self, vault_id: &str, limit: i64) -> StoreResult<(Vec<Watcher>, i64)>;
    /// Marks a replica alive; watchers of replicas silent for longer than
    /// `stale_after` are dropped.
    async fn heartbeat(
        &self,
        replica_id: &str,
        stale_after: std::time::Duration,
    ) -> StoreResult<()>;
    /// Forgets a replica that is shutting down, with all its watchers, and
    /// announces the vaults whose presence changed.
    async fn forget_replica(&self, replica_id: &str) -> StoreResult<()>;

    // Read-only links.
    async fn insert_link(&self, link: &ReadLink) -> StoreResult<()>;
    async fn link_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<ReadLink>>;
    async fn links_for_vault(&self, vault_id: &str) -> StoreResult<Vec<ReadLink>>;
    /// False when the vault has no such live link.
    async fn revoke_link(&self, vault_id: &str, link_id: &str) -> StoreResult<bool>;

    // Idempotency keys (crate::idempotency). A keyed write claims its key,
    // writes and stores its response in one atomic step; a live key means
    // nothing is written and the prior response comes back instead.
    /// [`Store::create_vault`] under an idempotency key.
    async fn create_vault_keyed(
        &self,
        vault: NewVault,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Keyed<Vault>>;
    /// [`Store::write_entry`] under an idempotency key.
    async fn write_entry_keyed(
        &self,
        entry: NewEntry,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Keyed<WriteReceipt>>;
    /// Deletes expired keys; returns how many went.
    async fn sweep_idempotency_keys(&self) -> StoreResult<u64>;

    // Content writes on behalf of a session: the hot path of the relay.
    /// One content write as the session whose id hashes to `session_hash`,
    /// checked and written in one atomic step (on Postgres, one statement):
    /// the session must be granted ([`StoreError::SessionRefused`]), the
    /// vault must exist ([`StoreError::VaultNotFound`]), the session's
    /// astation must be the vault's work session, the write rule of
    /// [`crate::access`] ([`StoreError::WriteForbidden`]); then it is
    /// [`Store::write_entry`]. Checked in the write itself, a revocation
    /// holds for the very next write on every replica, without a separate
    /// session lookup per write. With a `key`, as [`Store::write_entry_keyed`]
    /// (a live key: nothing is written, the prior response comes back).
    /// Postgres commits the writes that arrive together in one transaction
    /// (`store::postgres::batch`); each keeps its own result.
    async fn write_as(
        &self,
        session_hash: &str,
        entry: NewEntry,
        key: Option<WriteKey>,
    ) -> StoreResult<Keyed<Committed>>;

    // End-to-end encryption (src/encryption). Every write above (create,
    // write_entry, set_summary) checks the value against the vault's work
    // session's mode in its own atomic step and fails with
    // `StoreError::ModeMismatch`, writing nothing, when the mode refuses it.
    /// A work session's mode (`off`, never set, when there is none).
    async fn encryption_mode(&self, work_session: &str) -> StoreResult<ModeState>;
    /// How the work session's fields count against `kid`: every summary and
    /// every row version of its vaults.
    async fn encryption_counts(
        &self,
        work_session: &str,
        kid: Option<&str>,
    ) -> StoreResult<FieldCounts>;
    /// Changes the mode as [`crate::encryption::mode::plan`] decides, with
    /// the gate's counts taken in the same atomic step (no write of the work
    /// session commits in between), and announces the change. Returns the
    /// mode after the change and the counts against its kid.
    async fn set_encryption_mode(
        &self,
        work_session: &str,
        change: &ModeChange,
    ) -> StoreResult<(ModeState, FieldCounts)>;
    /// The rewrite route's step, under the vault's write lock: checks the
    /// mode (`ModeMismatch`) and that every listed row exists (`RowNotFound`,
    /// the first missing one), then sets the summary and each row's content,
    /// giving each row a fresh seq in the order listed. All or nothing;
    /// returns how many rows were rewritten.
    async fn rewrite_vault(&self, rewrite: &Rewrite) -> StoreResult<i64>;

    // Operational figures, sampled by `/metrics` at each scrape.
    /// The store's connection figures now; the default has none.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// Operational figures a store reports to `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Times the commit listener re-established its connection after losing it.
    pub listener_reconnects: u64,
    /// The connection pool, for stores that have one.
    pub pool: Option<PoolStats>,
}

/// A connection pool's connections by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Open and waiting for a query.
    pub idle: u64,
    /// Open and in use.
    pub busy: u64,
}
