//! The SQL of idempotency keys (migrations/0005_idempotency_keys.sql; the
//! claim is `idempotency_claim`, migrations/0006).
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
    // The claim's SQL is one function (migrations/0006), shared with the
    // batched writes.
    let row = sqlx::query(
        "select o_prior_fingerprint, o_prior_response from idempotency_claim($1, $2, $3, $4, $5)",
    )
    .bind(&claim.work_session)
    .bind(&claim.client_id)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(claim.ttl.as_secs_f64())
    .fetch_one(&mut **tx)
    .await?;
    let fingerprint: Option<String> = row.try_get("o_prior_fingerprint")?;
    Ok(match fingerprint {
        None => None,
        Some(fingerprint) => Some(PriorResponse {
            fingerprint,
            response: row.try_get("o_prior_response")?,
        }),
    })
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
