//! Astations, sessions and stream tickets on Postgres: the credentials that
//! src/auth.rs resolves callers by. Revocations notify in their own
//! transaction, so every replica's streams hear of them at commit.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::{PgStore, vault_from_columns};
use crate::store::{
    Astation, SessionRecord, SessionState, StoreError, StoreResult, StreamTicket, Vault,
};

pub(super) async fn create_astation(
    pool: &PgPool,
    astation: &Astation,
    token_hash: &str,
) -> StoreResult<()> {
    sqlx::query("insert into astations (id, name, token_hash, created_at) values ($1, $2, $3, $4)")
        .bind(&astation.astation_id)
        .bind(&astation.name)
        .bind(token_hash)
        .bind(astation.created_at)
        .execute(pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("astation exists".into())
            }
            other => other.into(),
        })?;
    Ok(())
}

pub(super) async fn list_astations(pool: &PgPool) -> StoreResult<Vec<Astation>> {
    let rows = sqlx::query("select id, name, created_at from astations order by created_at, id")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(astation_from_row)
        .collect::<Result<_, _>>()?)
}

pub(super) async fn astation_by_token_hash(
    pool: &PgPool,
    token_hash: &str,
) -> StoreResult<Option<Astation>> {
    let row = sqlx::query("select id, name, created_at from astations where token_hash = $1")
        .bind(token_hash)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(astation_from_row).transpose()?)
}

pub(super) async fn delete_astation(pool: &PgPool, astation_id: &str) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
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
    PgStore::notify(&mut tx, json!({"t": "revoke", "astation": astation_id})).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn revoke_session(pool: &PgPool, id_hash: &str) -> StoreResult<bool> {
    let update = sqlx::query(
        "update sessions set state = 'revoked' where id_hash = $1 and state <> 'revoked'",
    )
    .bind(id_hash);
    PgStore::update_and_notify(pool, update, json!({"t": "revoke", "session": id_hash})).await
}

pub(super) async fn insert_session(pool: &PgPool, s: &SessionRecord) -> StoreResult<()> {
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
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn purge_unpaired_sessions(
    pool: &PgPool,
    before: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query("delete from sessions where state in ('pending', 'denied') and expires_at < $1")
        .bind(before)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn session(pool: &PgPool, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
    let row = sqlx::query("select * from sessions where id_hash = $1")
        .bind(id_hash)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(session_from_row).transpose()
}

pub(super) async fn session_and_vault(
    pool: &PgPool,
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
    .fetch_one(pool)
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

pub(super) async fn transition_session(
    pool: &PgPool,
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
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub(super) async fn record_failed_code(
    pool: &PgPool,
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
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(session_from_row).transpose()
}

pub(super) async fn insert_ticket(pool: &PgPool, t: &StreamTicket) -> StoreResult<()> {
    // Expired tickets are swept on the way in so the table stays small.
    sqlx::query("delete from stream_tickets where expires_at < now()")
        .execute(pool)
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
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn take_ticket(
    pool: &PgPool,
    ticket_hash: &str,
) -> StoreResult<Option<StreamTicket>> {
    let row = sqlx::query(
        "delete from stream_tickets where ticket_hash = $1 and expires_at > now() returning *",
    )
    .bind(ticket_hash)
    .fetch_optional(pool)
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

fn astation_from_row(row: &PgRow) -> Result<Astation, sqlx::Error> {
    Ok(Astation {
        astation_id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}
