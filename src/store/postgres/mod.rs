//! The Postgres store. Every query of the relay lives in this module.
//!
//! Writes that streams care about call `pg_notify` inside their transaction,
//! so the notice is delivered at commit and never for a rolled-back write;
//! [`listener`] turns those notices into [`Notice`]s.

pub mod batch;
mod credentials;
mod encryption;
pub mod idempotency;
mod links;
pub mod listener;
mod presence;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{PgExecutor, Postgres, Row, Transaction};
use tokio::sync::broadcast;

use crate::encryption::{FieldCounts, ModeChange, ModeState, Rewrite};

use super::{
    Astation, Committed, Entry, IdempotencyClaim, Keyed, NewEntry, NewVault, Notice, PoolStats,
    ReadLink, Revocation, SessionRecord, SessionState, Store, StoreError, StoreResult, StoreStats,
    StreamTicket, Vault, VaultListItem, View, Watcher, WatcherRecord, WriteKey, WriteReceipt,
};

/// The NOTIFY channel the relay speaks on (also named in `vault_write`,
/// migrations/0002_vault_write.sql).
pub const CHANNEL: &str = "vault_relay";

/// SQLSTATEs raised by `vault_write` (migrations/0002_vault_write.sql).
const SQLSTATE_NO_VAULT: &str = "VR001";
const SQLSTATE_NO_ENTRY: &str = "VR002";

/// Maps an error of a vault write: the SQLSTATEs our functions raise for a
/// missing vault and for a value the encryption mode refuses, else the
/// generic mapping.
fn store_error(e: sqlx::Error) -> StoreError {
    if let Some(refused) = encryption::mode_mismatch(&e) {
        return refused;
    }
    match e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some(SQLSTATE_NO_VAULT) => {
            StoreError::VaultNotFound
        }
        other => other.into(),
    }
}

/// Embedded SQL migrations from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How to reach Postgres.
#[derive(Clone, Debug)]
pub struct PgConfig {
    pub url: String,
    pub max_connections: u32,
}

/// The Postgres [`Store`].
pub struct PgStore {
    pool: PgPool,
    epoch: String,
    notices: broadcast::Sender<Notice>,
    listener: tokio::task::AbortHandle,
    /// Reconnections of the LISTEN connection, counted by the listener.
    listener_reconnects: Arc<AtomicU64>,
    /// The writer task that commits sessions' content writes in batches.
    batcher: batch::Batcher,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The listener would otherwise outlive the store and keep a
        // connection open.
        self.listener.abort();
    }
}

/// SQLSTATE classes and codes that mean "the database cannot be reached or
/// will not take us right now", as opposed to a fault in a query.
const UNAVAILABLE_SQLSTATES: [&str; 6] = ["08", "28", "53", "57P", "3D000", "55000"];

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| UNAVAILABLE_SQLSTATES.iter().any(|p| c.starts_with(p))),
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Fault(e.to_string())
        }
    }
}

/// How long a pooled connection may sit unused before it is checked again
/// when handed out.
const RECHECK_IDLE: Duration = Duration::from_secs(1);

impl PgStore {
    /// Connects (retrying for a while, so a relay started next to a booting
    /// database waits for it), runs migrations and starts the listener task.
    pub async fn connect(config: &PgConfig) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx checks every connection it hands out with a round trip,
            // and again when it takes one back. A connection given back less
            // than a second ago passed that second check just now, so only
            // one that sat longer (the database may have restarted since) is
            // checked again: the hot path saves a round trip per query, and
            // a restart still costs no request.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= RECHECK_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy(&config.url)
            .map_err(|e| StoreError::Unavailable(format!("invalid DATABASE_URL: {e}")))?;
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(sqlx::migrate::MigrateError::Execute(e)) if attempt < 10 => {
                    tracing::warn!(attempt, error = %e, "database not ready; retrying");
                }
                Err(e) => return Err(StoreError::Unavailable(format!("migrations failed: {e}"))),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
            attempt += 1;
        }
        let epoch: String = sqlx::query_scalar("select epoch::text from relay_meta")
            .fetch_one(&pool)
            .await?;
        let (notices, _) = broadcast::channel(listener::NOTICE_CAPACITY);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let listener_reconnects = Arc::new(AtomicU64::new(0));
        let listener = listener::spawn(
            pool.clone(),
            notices.clone(),
            ready_tx,
            listener_reconnects.clone(),
        );
        // Serve only once we hear commits, so no write after start-up goes
        // unannounced. If LISTEN is slow to come up, go on: the listener
        // keeps trying and its resync covers whatever it missed.
        if tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .is_err()
        {
            tracing::warn!("the LISTEN connection is not up yet; streams will catch up when it is");
        }
        Ok(Self {
            batcher: batch::Batcher::spawn(pool.clone(), config.max_connections),
            pool,
            epoch,
            notices,
            listener,
            listener_reconnects,
        })
    }

    async fn notify(
        tx: &mut Transaction<'_, Postgres>,
        payload: serde_json::Value,
    ) -> StoreResult<()> {
        sqlx::query("select pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Runs `update` and, when it changed a row, sends `notice` in the same
    /// transaction (so it goes out at commit); returns whether it did. What
    /// revocations do: a credential revoked twice notifies once.
    async fn update_and_notify(
        pool: &PgPool,
        update: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
        notice: serde_json::Value,
    ) -> StoreResult<bool> {
        let mut tx = pool.begin().await?;
        if update.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        Self::notify(&mut tx, notice).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn entry_from_row(row: &PgRow) -> Result<Entry, sqlx::Error> {
    Ok(Entry {
        seq: row.try_get("seq")?,
        entry_no: row.try_get("entry_no")?,
        version: row.try_get("version")?,
        kind: row.try_get("kind")?,
        writer_id: row.try_get("writer_id")?,
        content: row.try_get("content")?,
        created_at: row.try_get("created_at")?,
    })
}

fn vault_from_row(row: &PgRow) -> Result<Vault, sqlx::Error> {
    vault_from_columns(row, "")
}

/// A vault from columns named `{prefix}id`, `{prefix}summary`, ...
fn vault_from_columns(row: &PgRow, prefix: &str) -> Result<Vault, sqlx::Error> {
    let col = |name: &str| format!("{prefix}{name}");
    Ok(Vault {
        id: row.try_get(col("id").as_str())?,
        summary: row.try_get(col("summary").as_str())?,
        work_session: row.try_get(col("work_session").as_str())?,
        creator: row.try_get(col("creator").as_str())?,
        created_at: row.try_get(col("created_at").as_str())?,
        writers: row.try_get(col("writers").as_str())?,
        head_seq: row.try_get(col("head_seq").as_str())?,
    })
}

const ENTRY_COLUMNS: &str = "seq, entry_no, version, kind, writer_id, content, created_at";
const VAULT_COLUMNS: &str = "id, summary, work_session, creator, created_at, writers, head_seq";

/// Inserts a vault row. The encryption mode check runs in the same
/// statement (`encryption_check`, migrations/0004_encryption.sql) and raises
/// when the work session's mode refuses the summary.
async fn insert_vault<'e>(exec: impl PgExecutor<'e>, new: &NewVault) -> StoreResult<Vault> {
    let row = sqlx::query(&format!(
        "insert into vaults (id, summary, work_session, creator)
         select $1, $2, $3, $4 where encryption_check($3, $2)
         returning {VAULT_COLUMNS}"
    ))
    .bind(&new.id)
    .bind(&new.summary)
    .bind(&new.work_session)
    .bind(&new.creator)
    .fetch_one(exec)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(format!("vault {} exists", new.id))
        }
        other => store_error(other),
    })?;
    Ok(vault_from_row(&row)?)
}

/// One content write through `vault_write` (migrations/0002, with the
/// encryption mode check added in 0004), which locks the vault row, checks
/// the value against the work session's encryption mode (holding its mode
/// row FOR SHARE until the transaction ends), allocates the entry number,
/// version and seq under that lock, inserts, updates the writer list and
/// notifies: one statement, one round trip (and, on the pool, one
/// transaction).
async fn vault_write<'e>(exec: impl PgExecutor<'e>, new: &NewEntry) -> StoreResult<WriteReceipt> {
    let row =
        sqlx::query("select out_entry_no, out_version, out_seq from vault_write($1, $2, $3, $4)")
            .bind(&new.vault_id)
            .bind(new.entry_no)
            .bind(&new.writer_id)
            .bind(&new.content)
            .fetch_one(exec)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some(SQLSTATE_NO_ENTRY) => {
                    StoreError::EntryNotFound(new.entry_no.unwrap_or_default())
                }
                other => store_error(other),
            })?;
    Ok(WriteReceipt {
        entry_no: row.try_get("out_entry_no")?,
        version: row.try_get("out_version")?,
        seq: row.try_get("out_seq")?,
    })
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn stats(&self) -> StoreStats {
        let size = u64::from(self.pool.size());
        let idle = self.pool.num_idle() as u64;
        StoreStats {
            listener_reconnects: self.listener_reconnects.load(Ordering::Relaxed),
            pool: Some(PoolStats {
                idle,
                busy: size.saturating_sub(idle),
            }),
        }
    }

    fn epoch(&self) -> String {
        self.epoch.clone()
    }

    async fn health(&self) -> StoreResult<()> {
        let check = sqlx::query("select 1").execute(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(result) => result.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("health check timed out".into())),
        }
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn create_vault(&self, new: NewVault) -> StoreResult<Vault> {
        insert_vault(&self.pool, &new).await
    }

    async fn vault(&self, vault_id: &str) -> StoreResult<Option<Vault>> {
        let row = sqlx::query(&format!("select {VAULT_COLUMNS} from vaults where id = $1"))
            .bind(vault_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(vault_from_row).transpose()?)
    }

    async fn list_vaults(
        &self,
        work_session: &str,
        client_id: &str,
    ) -> StoreResult<Vec<VaultListItem>> {
        let rows = sqlx::query(
            "select id, summary from vaults
             where work_session = $1 or writers @> array[$2]
             order by created_at, id",
        )
        .bind(work_session)
        .bind(client_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VaultListItem {
                    vault_id: r.try_get("id")?,
                    summary: r.try_get("summary")?,
                })
            })
            .collect()
    }

    async fn write_entry(&self, new: NewEntry) -> StoreResult<WriteReceipt> {
        vault_write(&self.pool, &new).await
    }

    async fn read_entries(
        &self,
        vault_id: &str,
        view: View,
        since: i64,
    ) -> StoreResult<Vec<Entry>> {
        let sql = match view {
            View::History => format!(
                "select {ENTRY_COLUMNS} from vault_entries
                 where vault_id = $1 and seq > $2 order by seq"
            ),
            View::Current => format!(
                "select {ENTRY_COLUMNS} from (
                    select distinct on (entry_no) {ENTRY_COLUMNS} from vault_entries
                    where vault_id = $1 order by entry_no, version desc
                 ) newest where seq > $2 order by entry_no"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(vault_id)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        // No rows can also mean no vault; only then is a second look needed.
        if rows.is_empty() && self.vault(vault_id).await?.is_none() {
            return Err(StoreError::VaultNotFound);
        }
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    async fn entries_after(
        &self,
        vault_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<Entry>> {
        let rows = sqlx::query(&format!(
            "select {ENTRY_COLUMNS} from vault_entries
             where vault_id = $1 and seq > $2 order by seq limit $3"
        ))
        .bind(vault_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    async fn set_summary(&self, vault_id: &str, summary: &str) -> StoreResult<()> {
        // vault_set_summary (migrations/0004) locks the vault, checks the
        // encryption mode, updates and notifies in one statement.
        sqlx::query("select vault_set_summary($1, $2)")
            .bind(vault_id)
            .bind(summary)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn create_astation(&self, astation: &Astation, token_hash: &str) -> StoreResult<()> {
        credentials::create_astation(&self.pool, astation, token_hash).await
    }

    async fn list_astations(&self) -> StoreResult<Vec<Astation>> {
        credentials::list_astations(&self.pool).await
    }

    async fn astation_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Astation>> {
        credentials::astation_by_token_hash(&self.pool, token_hash).await
    }

    async fn delete_astation(&self, astation_id: &str) -> StoreResult<()> {
        credentials::delete_astation(&self.pool, astation_id).await
    }

    async fn revoke_session(&self, id_hash: &str) -> StoreResult<bool> {
        credentials::revoke_session(&self.pool, id_hash).await
    }

    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        credentials::insert_session(&self.pool, s).await
    }

    async fn purge_unpaired_sessions(&self, before: DateTime<Utc>) -> StoreResult<()> {
        credentials::purge_unpaired_sessions(&self.pool, before).await
    }

    async fn session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        credentials::session(&self.pool, id_hash).await
    }

    async fn session_and_vault(
        &self,
        id_hash: &str,
        vault_id: &str,
    ) -> StoreResult<(Option<SessionRecord>, Option<Vault>)> {
        credentials::session_and_vault(&self.pool, id_hash, vault_id).await
    }

    async fn transition_session(
        &self,
        id_hash: &str,
        from: SessionState,
        to: SessionState,
        astation_id: Option<&str>,
    ) -> StoreResult<bool> {
        credentials::transition_session(&self.pool, id_hash, from, to, astation_id).await
    }

    async fn record_failed_code(
        &self,
        id_hash: &str,
        limit: i32,
    ) -> StoreResult<Option<SessionRecord>> {
        credentials::record_failed_code(&self.pool, id_hash, limit).await
    }

    async fn insert_ticket(&self, t: &StreamTicket) -> StoreResult<()> {
        credentials::insert_ticket(&self.pool, t).await
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<StreamTicket>> {
        credentials::take_ticket(&self.pool, ticket_hash).await
    }

    async fn update_watchers(
        &self,
        replica_id: &str,
        joined: &[WatcherRecord],
        left: &[i64],
    ) -> StoreResult<()> {
        presence::update_watchers(&self.pool, replica_id, joined, left).await
    }

    async fn watchers(&self, vault_id: &str, limit: i64) -> StoreResult<(Vec<Watcher>, i64)> {
        presence::watchers(&self.pool, vault_id, limit).await
    }

    async fn heartbeat(&self, replica_id: &str, stale_after: Duration) -> StoreResult<()> {
        presence::heartbeat(&self.pool, replica_id, stale_after).await
    }

    async fn forget_replica(&self, replica_id: &str) -> StoreResult<()> {
        presence::forget_replica(&self.pool, replica_id).await
    }

    async fn insert_link(&self, l: &ReadLink) -> StoreResult<()> {
        links::insert_link(&self.pool, l).await
    }

    async fn link_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<ReadLink>> {
        links::link_by_secret_hash(&self.pool, secret_hash).await
    }

    async fn links_for_vault(&self, vault_id: &str) -> StoreResult<Vec<ReadLink>> {
        links::links_for_vault(&self.pool, vault_id).await
    }

    async fn revoke_link(&self, vault_id: &str, link_id: &str) -> StoreResult<bool> {
        links::revoke_link(&self.pool, vault_id, link_id).await
    }

    async fn create_vault_keyed(
        &self,
        new: NewVault,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Keyed<Vault>> {
        // claim, write, record: one transaction (migrations/0005).
        let mut tx = self.pool.begin().await?;
        if let Some(prior) = idempotency::claim(&mut tx, claim).await? {
            return Ok(Keyed::Prior(prior));
        }
        let vault = insert_vault(&mut *tx, &new).await?;
        idempotency::record(&mut tx, claim, &super::created_response(&vault)).await?;
        tx.commit().await?;
        Ok(Keyed::Done(vault))
    }

    async fn write_entry_keyed(
        &self,
        new: NewEntry,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Keyed<WriteReceipt>> {
        // claim, write, record: one transaction (migrations/0005). A batched
        // write path must keep all three in the batch's transaction.
        let mut tx = self.pool.begin().await?;
        if let Some(prior) = idempotency::claim(&mut tx, claim).await? {
            return Ok(Keyed::Prior(prior));
        }
        let receipt = vault_write(&mut *tx, &new).await?;
        idempotency::record(&mut tx, claim, &super::receipt_response(&receipt)).await?;
        tx.commit().await?;
        Ok(Keyed::Done(receipt))
    }

    async fn sweep_idempotency_keys(&self) -> StoreResult<u64> {
        idempotency::sweep(&self.pool).await
    }

    async fn write_as(
        &self,
        session_hash: &str,
        entry: NewEntry,
        key: Option<WriteKey>,
    ) -> StoreResult<Keyed<Committed>> {
        self.batcher
            .write(batch::Item {
                session_hash: session_hash.to_string(),
                entry,
                key,
            })
            .await
    }

    async fn encryption_mode(&self, work_session: &str) -> StoreResult<ModeState> {
        self.pg_encryption_mode(work_session).await
    }

    async fn encryption_counts(
        &self,
        work_session: &str,
        kid: Option<&str>,
    ) -> StoreResult<FieldCounts> {
        self.pg_encryption_counts(work_session, kid).await
    }

    async fn set_encryption_mode(
        &self,
        work_session: &str,
        change: &ModeChange,
    ) -> StoreResult<(ModeState, FieldCounts)> {
        self.pg_set_encryption_mode(work_session, change).await
    }

    async fn rewrite_vault(&self, rewrite: &Rewrite) -> StoreResult<i64> {
        self.pg_rewrite_vault(rewrite).await
    }
}

/// Parses a NOTIFY payload written by this module or by the SQL functions
/// in `migrations/` into the notices it carries (a batch of writes names
/// each vault it touched, with its highest new seq).
pub(crate) fn parse_notices(payload: &str) -> Vec<Notice> {
    if let Some(notice) = parse_notice(payload) {
        return vec![notice];
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return Vec::new();
    };
    match (v.get("t").and_then(|t| t.as_str()), v.get("h")) {
        (Some("entries"), Some(serde_json::Value::Object(heads))) => heads
            .iter()
            .filter_map(|(vault_id, seq)| {
                Some(Notice::Entry {
                    vault_id: vault_id.clone(),
                    seq: seq.as_i64()?,
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses a NOTIFY payload written by this module.
pub(crate) fn parse_notice(payload: &str) -> Option<Notice> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match v.get("t")?.as_str()? {
        "entry" => Some(Notice::Entry {
            vault_id: text("v")?,
            seq: v.get("s")?.as_i64()?,
        }),
        "summary" => Some(Notice::Summary {
            vault_id: text("v")?,
        }),
        "presence" => Some(Notice::Presence {
            vault_id: text("v")?,
            by: text("r"),
        }),
        "encryption" => Some(Notice::Encryption {
            work_session: text("w")?,
        }),
        "revoke" => Some(Notice::Revoked(if let Some(s) = text("session") {
            Revocation::Session(s)
        } else if let Some(a) = text("astation") {
            Revocation::Astation(a)
        } else {
            Revocation::Link(text("link")?)
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notices_round_trip_through_their_payload() {
        assert_eq!(
            parse_notice(&json!({"t": "entry", "v": "v-a", "s": 7}).to_string()),
            Some(Notice::Entry {
                vault_id: "v-a".into(),
                seq: 7
            })
        );
        assert_eq!(
            parse_notice(&json!({"t": "revoke", "astation": "a-1"}).to_string()),
            Some(Notice::Revoked(Revocation::Astation("a-1".into())))
        );
        assert_eq!(parse_notice("not json"), None);
        assert_eq!(
            parse_notices(r#"{"t":"entries","h":{"v-a":7,"v-b":9}}"#),
            vec![
                Notice::Entry {
                    vault_id: "v-a".into(),
                    seq: 7
                },
                Notice::Entry {
                    vault_id: "v-b".into(),
                    seq: 9
                }
            ]
        );
        assert!(parse_notices(r#"{"t":"entries","h":[]}"#).is_empty());
        assert_eq!(parse_notice(r#"{"t":"entry","v":"x"}"#), None);
    }
}
