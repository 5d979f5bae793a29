//! The SQL of idempotency keys (migrations/0005_idempotency_keys.sql).
//!
//! A keyed write runs [`claim`], the write itself and [`record`] in one
//! transaction, so the key and the row it stands for commit together or not
//! at all. Whoever batches writes into one transaction must run the claim
//! before each keyed write and the record after it, inside the batch.

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};

use crate::store::{IdempotencyClaim, PriorResponse, StoreResult};

/// Claims the key for this transaction. `None`: the key was free (or had
/// expired) and is now held by this transaction until it ends; a concurrent
/// claim of the same key waits on the primary key until then. `Some`: a live
/// key, committed by an earlier request: do not write.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    claim: &IdempotencyClaim,
) -> StoreResult<Option<PriorResponse>> {
    let claimed = sqlx::query(
        "insert into idempotency_keys (work_session, client_id, key, fingerprint, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))
         on conflict (work_session, client_id, key) do update set
            fingerprint = excluded.fingerprint,
            response = null,
            created_at = now(),
            expires_at = excluded.expires_at
         where idempotency_keys.expires_at <= now()",
    )
    .bind(&claim.work_session)
    .bind(&claim.client_id)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(claim.ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    // A live key. This statement's snapshot is newer than the conflict, so
    // it sees the committed record (with its response: claim and record
    // commit together).
    let row = sqlx::query(
        "select fingerprint, coalesce(response, '') as response from idempotency_keys
         where work_session = $1 and client_id = $2 and key = $3",
    )
    .bind(&claim.work_session)
    .bind(&claim.client_id)
    .bind(&claim.key)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Some(PriorResponse {
        fingerprint: row.try_get("fingerprint")?,
        response: row.try_get("response")?,
    }))
}

/// Stores the response of the write this transaction just did.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    claim: &IdempotencyClaim,
    response: &str,
) -> StoreResult<()> {
    sqlx::query(
        "update idempotency_keys set response = $4
         where work_session = $1 and client_id = $2 and key = $3",
    )
    .bind(&claim.work_session)
    .bind(&claim.client_id)
    .bind(&claim.key)
    .bind(response)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes expired keys.
pub async fn sweep(pool: &PgPool) -> StoreResult<u64> {
    let swept = sqlx::query("delete from idempotency_keys where expires_at <= now()")
        .execute(pool)
        .await?;
    Ok(swept.rows_affected())
}
