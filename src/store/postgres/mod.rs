//! The Postgres store. Every query of the relay lives in this module.
//!
//! Writes that streams care about call `pg_notify` inside their transaction,
//! so the notice is delivered at commit and never for a rolled-back write;
//! [`listener`] turns those notices into [`Notice`]s.

pub mod batch;
mod encryption;
pub mod idempotency;
pub mod listener;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
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

fn session_from_row(row: &PgRow) -> StoreResult<SessionRecord> {
    let state: String = row.try_get("state")?;
    Ok(SessionRecord {
        id_hash: row.try_get("id_hash")?,
        hostname: row.try_get("hostname")?,
        state: SessionState::parse(&state)
            .ok_or_else(|| StoreError::Fault(format!("unknown session state {state}")))?,
        astation_id: row.try_get("astation_id")?,
        otp_hash: row.try_get("otp_hash")?,
        failed_attempts: row.try_get("failed_attempts")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn link_from_row(row: &PgRow) -> Result<ReadLink, sqlx::Error> {
    Ok(ReadLink {
        link_id: row.try_get("link_id")?,
        secret_hash: row.try_get("secret_hash")?,
        vault_id: row.try_get("vault_id")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked: row.try_get("revoked")?,
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
        sqlx::query(
            "insert into astations (id, name, token_hash, created_at) values ($1, $2, $3, $4)",
        )
        .bind(&astation.astation_id)
        .bind(&astation.name)
        .bind(token_hash)
        .bind(astation.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("astation exists".into())
            }
            other => other.into(),
        })?;
        Ok(())
    }

    async fn list_astations(&self) -> StoreResult<Vec<Astation>> {
        let rows =
            sqlx::query("select id, name, created_at from astations order by created_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Astation {
                    astation_id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn astation_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Astation>> {
        let row = sqlx::query("select id, name, created_at from astations where token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Astation {
                astation_id: r.try_get("id")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn delete_astation(&self, astation_id: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("delete from astations where id = $1")
            .bind(astation_id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::AstationNotFound);
        }
        sqlx::query("update sessions set state = 'revoked' where astation_id = $1")
            .bind(astation_id)
            .execute(&mut *tx)
            .await?;
        Self::notify(&mut tx, json!({"t": "revoke", "astation": astation_id})).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_session(&self, id_hash: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "update sessions set state = 'revoked' where id_hash = $1 and state <> 'revoked'",
        )
        .bind(id_hash)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        Self::notify(&mut tx, json!({"t": "revoke", "session": id_hash})).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        sqlx::query(
            "insert into sessions
                (id_hash, hostname, state, astation_id, otp_hash, failed_attempts, expires_at, created_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.id_hash)
        .bind(&s.hostname)
        .bind(s.state.as_str())
        .bind(&s.astation_id)
        .bind(&s.otp_hash)
        .bind(s.failed_attempts)
        .bind(s.expires_at)
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_unpaired_sessions(&self, before: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "delete from sessions where state in ('pending', 'denied') and expires_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query("select * from sessions where id_hash = $1")
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn session_and_vault(
        &self,
        id_hash: &str,
        vault_id: &str,
    ) -> StoreResult<(Option<SessionRecord>, Option<Vault>)> {
        let row = sqlx::query(
            "select s.*, v.id as v_id, v.summary as v_summary, v.work_session as v_work_session,
                    v.creator as v_creator, v.created_at as v_created_at,
                    v.writers as v_writers, v.head_seq as v_head_seq
             from (select 1) as one
             left join sessions s on s.id_hash = $1
             left join vaults v on v.id = $2",
        )
        .bind(id_hash)
        .bind(vault_id)
        .fetch_one(&self.pool)
        .await?;
        let session = match row.try_get::<Option<String>, _>("id_hash")? {
            Some(_) => Some(session_from_row(&row)?),
            None => None,
        };
        let vault = match row.try_get::<Option<String>, _>("v_id")? {
            Some(_) => Some(vault_from_columns(&row, "v_")?),
            None => None,
        };
        Ok((session, vault))
    }

    async fn transition_session(
        &self,
        id_hash: &str,
        from: SessionState,
        to: SessionState,
        astation_id: Option<&str>,
    ) -> StoreResult<bool> {
        let updated = sqlx::query(
            "update sessions set state = $3, astation_id = coalesce($4, astation_id)
             where id_hash = $1 and state = $2",
        )
        .bind(id_hash)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(astation_id)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn record_failed_code(
        &self,
        id_hash: &str,
        limit: i32,
    ) -> StoreResult<Option<SessionRecord>> {
        // One statement: concurrent wrong guesses queue on the row lock and
        // each re-checks `state` after the one before it, so at most `limit`
        // of them are counted and the rest find the session denied.
        let row = sqlx::query(
            "update sessions set
                failed_attempts = failed_attempts + 1,
                state = case when failed_attempts + 1 >= $2 then 'denied' else state end
             where id_hash = $1 and state = 'pending' and expires_at > now()
             returning *",
        )
        .bind(id_hash)
        .bind(limit)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn insert_ticket(&self, t: &StreamTicket) -> StoreResult<()> {
        // Expired tickets are swept on the way in so the table stays small.
        sqlx::query("delete from stream_tickets where expires_at < now()")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "insert into stream_tickets (ticket_hash, vault_id, session_hash, link_hash, client_id, expires_at)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.ticket_hash)
        .bind(&t.vault_id)
        .bind(&t.session_hash)
        .bind(&t.link_hash)
        .bind(&t.client_id)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<StreamTicket>> {
        let row = sqlx::query(
            "delete from stream_tickets where ticket_hash = $1 and expires_at > now() returning *",
        )
        .bind(ticket_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StreamTicket {
                ticket_hash: r.try_get("ticket_hash")?,
                vault_id: r.try_get("vault_id")?,
                session_hash: r.try_get("session_hash")?,
                link_hash: r.try_get("link_hash")?,
                client_id: r.try_get("client_id")?,
                expires_at: r.try_get::<DateTime<Utc>, _>("expires_at")?,
            })
        })
        .transpose()
    }

    async fn update_watchers(
        &self,
        replica_id: &str,
        joined: &[WatcherRecord],
        left: &[i64],
    ) -> StoreResult<()> {
        // One statement (so one transaction and one round trip) for a whole
        // burst of opens and closes, with one notice per vault; the table is
        // unlogged (migrations/0009), so the commit waits for no disk flush.
        let conns: Vec<i64> = joined.iter().map(|w| w.conn_id).collect();
        let vaults: Vec<&str> = joined.iter().map(|w| w.vault_id.as_str()).collect();
        let atems: Vec<&str> = joined.iter().map(|w| w.atem_id.as_str()).collect();
        let clients: Vec<&str> = joined.iter().map(|w| w.client_id.as_str()).collect();
        sqlx::query(
            "with added as (
                insert into stream_watchers (replica_id, conn_id, vault_id, atem_id, client_id)
                select $1, c, v, a, cl from unnest($2::bigint[], $3::text[], $4::text[], $5::text[])
                    as j(c, v, a, cl)
                returning vault_id),
             gone as (
                delete from stream_watchers where replica_id = $1 and conn_id = any($6)
                returning vault_id),
             touched as (select vault_id from added union select vault_id from gone)
             select pg_notify($7, json_build_object('t', 'presence', 'v', vault_id, 'r', $1::text)::text)
             from touched",
        )
        .bind(replica_id)
        .bind(&conns)
        .bind(&vaults)
        .bind(&atems)
        .bind(&clients)
        .bind(left)
        .bind(CHANNEL)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn watchers(&self, vault_id: &str, limit: i64) -> StoreResult<(Vec<Watcher>, i64)> {
        // Only replicas that said they were alive recently count (see heartbeat).
        let rows = sqlx::query(
            "select atem_id, client_id, count(*) over () as total
             from stream_watchers w join relay_replicas r using (replica_id)
             where w.vault_id = $1 and r.heartbeat_at > now() - interval '60 seconds'
             order by w.joined_at, w.replica_id, w.conn_id
             limit $2",
        )
        .bind(vault_id)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        let total = match rows.first() {
            Some(r) => r.try_get("total")?,
            None => 0,
        };
        let listed = rows
            .iter()
            .map(|r| {
                Ok(Watcher {
                    atem_id: r.try_get("atem_id")?,
                    client_id: r.try_get("client_id")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((listed, total))
    }

    async fn heartbeat(&self, replica_id: &str, stale_after: Duration) -> StoreResult<()> {
        sqlx::query(
            "insert into relay_replicas (replica_id) values ($1)
             on conflict (replica_id) do update set heartbeat_at = now()",
        )
        .bind(replica_id)
        .execute(&self.pool)
        .await?;
        // Sweep what crashed replicas left behind.
        let secs = stale_after.as_secs_f64();
        sqlx::query(
            "delete from stream_watchers where replica_id in (
                select replica_id from relay_replicas
                where heartbeat_at < now() - make_interval(secs => $1))",
        )
        .bind(secs)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "delete from relay_replicas where heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(secs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_replica(&self, replica_id: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let vaults: Vec<String> = sqlx::query_scalar(
            "delete from stream_watchers where replica_id = $1 returning vault_id",
        )
        .bind(replica_id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("delete from relay_replicas where replica_id = $1")
            .bind(replica_id)
            .execute(&mut *tx)
            .await?;
        let mut seen = std::collections::HashSet::new();
        for vault_id in vaults.into_iter().filter(|v| seen.insert(v.clone())) {
            Self::notify(&mut tx, json!({"t": "presence", "v": vault_id})).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_link(&self, l: &ReadLink) -> StoreResult<()> {
        sqlx::query(
            "insert into read_links (link_id, secret_hash, vault_id, created_by, created_at, expires_at, revoked)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&l.link_id)
        .bind(&l.secret_hash)
        .bind(&l.vault_id)
        .bind(&l.created_by)
        .bind(l.created_at)
        .bind(l.expires_at)
        .bind(l.revoked)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn link_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<ReadLink>> {
        let row = sqlx::query("select * from read_links where secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(link_from_row).transpose()?)
    }

    async fn links_for_vault(&self, vault_id: &str) -> StoreResult<Vec<ReadLink>> {
        let rows = sqlx::query(
            "select * from read_links where vault_id = $1 order by created_at, link_id",
        )
        .bind(vault_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(link_from_row).collect::<Result<_, _>>()?)
    }

    async fn revoke_link(&self, vault_id: &str, link_id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "update read_links set revoked = true where vault_id = $1 and link_id = $2 and not revoked",
        )
        .bind(vault_id)
        .bind(link_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        Self::notify(&mut tx, json!({"t": "revoke", "link": link_id})).await?;
        tx.commit().await?;
        Ok(true)
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
