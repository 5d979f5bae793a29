//! Encryption modes and the rewrite on Postgres. The SQL side lives in
//! migrations/0004_encryption.sql: `encryption_check` and
//! `encryption_refusal` (the mode check every write makes in its own
//! statement), `encryption_shape` (stored beside every value, what the
//! gates count) and `vault_rewrite`.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::postgres::PgDatabaseError;
use sqlx::{Postgres, Row};

use super::PgStore;
use crate::encryption::mode::{self, Plan};
use crate::encryption::{FieldCounts, Mode, ModeChange, ModeState, Rewrite};
use crate::store::{StoreError, StoreResult};

/// SQLSTATE of `encryption_check` (migrations/0004) and `vault_rewrite`: the mode refuses a
/// value (message: the mode, detail: its kid or '').
pub(super) const SQLSTATE_MODE_MISMATCH: &str = "VR003";
/// SQLSTATE of `vault_rewrite`: a listed row does not exist (message:
/// `<entry_no> <version>`).
const SQLSTATE_NO_ROW: &str = "VR004";

/// Reads the refusing mode out of a VR003 error, if `e` is one.
pub(super) fn mode_mismatch(e: &sqlx::Error) -> Option<StoreError> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    if d.code().as_deref() != Some(SQLSTATE_MODE_MISMATCH) {
        return None;
    }
    let pg = d.try_downcast_ref::<PgDatabaseError>()?;
    let kid = pg.detail().filter(|k| !k.is_empty()).map(str::to_string);
    Some(StoreError::ModeMismatch(ModeState {
        mode: Mode::parse(pg.message())?,
        kid,
        updated_at: None,
    }))
}

/// The refusal `encryption_refusal` reports as `<mode> <kid>` (the kid
/// empty in mode off).
pub(super) fn refusal_from(text: &str) -> StoreError {
    let (mode, kid) = text.split_once(' ').unwrap_or((text, ""));
    match Mode::parse(mode) {
        Some(mode) => StoreError::ModeMismatch(ModeState {
            mode,
            kid: Some(kid).filter(|k| !k.is_empty()).map(str::to_string),
            updated_at: None,
        }),
        None => StoreError::Fault(format!("unknown encryption refusal `{text}`")),
    }
}

fn missing_row(e: &sqlx::Error) -> Option<StoreError> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    if d.code().as_deref() != Some(SQLSTATE_NO_ROW) {
        return None;
    }
    let (n, v) = d.message().split_once(' ')?;
    Some(StoreError::RowNotFound {
        entry_no: n.parse().ok()?,
        version: v.parse().ok()?,
    })
}

fn mode_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<ModeState> {
    let mode: String = row.try_get("mode")?;
    Ok(ModeState {
        mode: Mode::parse(&mode)
            .ok_or_else(|| StoreError::Fault(format!("unknown encryption mode {mode}")))?,
        kid: row.try_get("kid")?,
        updated_at: row.try_get::<Option<DateTime<Utc>>, _>("updated_at")?,
    })
}

/// Counts every summary and every row version of the work session's
/// vaults against `kid` from the shapes stored beside them
/// (`summary_shape`, `content_shape`: migrations/0004_encryption.sql), so
/// nothing is parsed while the mode row is locked.
const COUNT_SQL: &str = "select count(*) filter (where s = 'plain') as plaintext,
            count(*) filter (where s = $2) as ciphertext,
            count(*) filter (where s not in ('empty', 'plain') and s is distinct from $2) as obsolete
     from (
        select v.summary_shape as s from vaults v where v.work_session = $1
        union all
        select e.content_shape
        from vaults v join vault_entries e on e.vault_id = v.id
        where v.work_session = $1
     ) fields";

async fn count<'e, E>(
    executor: E,
    work_session: &str,
    kid: Option<&str>,
) -> StoreResult<FieldCounts>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row = sqlx::query(COUNT_SQL)
        .bind(work_session)
        .bind(kid)
        .fetch_one(executor)
        .await?;
    Ok(FieldCounts {
        plaintext_fields: row.try_get("plaintext")?,
        ciphertext_fields: row.try_get("ciphertext")?,
        obsolete_fields: row.try_get("obsolete")?,
    })
}

impl PgStore {
    pub(super) async fn pg_encryption_mode(&self, work_session: &str) -> StoreResult<ModeState> {
        let row = sqlx::query(
            "select mode, kid, updated_at from encryption_modes where work_session = $1",
        )
        .bind(work_session)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => mode_from_row(&r),
            None => Ok(ModeState::default()),
        }
    }

    pub(super) async fn pg_encryption_counts(
        &self,
        work_session: &str,
        kid: Option<&str>,
    ) -> StoreResult<FieldCounts> {
        count(&self.pool, work_session, kid).await
    }

    pub(super) async fn pg_set_encryption_mode(
        &self,
        work_session: &str,
        change: &ModeChange,
    ) -> StoreResult<(ModeState, FieldCounts)> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE waits for every write still holding the row FOR SHARE
        // (encryption_check); the counts below then see what they stored.
        sqlx::query(
            "insert into encryption_modes (work_session) values ($1) on conflict do nothing",
        )
        .bind(work_session)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "select mode, kid, updated_at from encryption_modes
             where work_session = $1 for update",
        )
        .bind(work_session)
        .fetch_one(&mut *tx)
        .await?;
        let current = mode_from_row(&row)?;
        let gate = if Plan::gated(current.mode, change.mode) {
            Some(count(&mut *tx, work_session, current.kid.as_deref()).await?)
        } else {
            None
        };
        let plan = mode::plan(&current, change, || gate.unwrap_or_default())?;
        let after = match plan {
            Plan::Keep => current.clone(),
            Plan::Move { mode, kid } => {
                let row = sqlx::query(
                    "update encryption_modes set mode = $2, kid = $3, updated_at = now()
                     where work_session = $1 returning mode, kid, updated_at",
                )
                .bind(work_session)
                .bind(mode.as_str())
                .bind(&kid)
                .fetch_one(&mut *tx)
                .await?;
                Self::notify(&mut tx, json!({"t": "encryption", "w": work_session})).await?;
                mode_from_row(&row)?
            }
        };
        let counts = match gate {
            Some(c) if after.kid.as_deref() == current.kid.as_deref() => c,
            _ => count(&mut *tx, work_session, after.kid.as_deref()).await?,
        };
        tx.commit().await?;
        Ok((after, counts))
    }

    pub(super) async fn pg_rewrite_vault(&self, rewrite: &Rewrite) -> StoreResult<i64> {
        let entry_nos: Vec<i64> = rewrite.entries.iter().map(|r| r.entry_no).collect();
        let versions: Vec<i64> = rewrite.entries.iter().map(|r| r.version).collect();
        let contents: Vec<&str> = rewrite.entries.iter().map(|r| r.content.as_str()).collect();
        sqlx::query_scalar("select vault_rewrite($1, $2, $3, $4, $5)")
            .bind(&rewrite.vault_id)
            .bind(&rewrite.summary)
            .bind(&entry_nos)
            .bind(&versions)
            .bind(&contents)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                mode_mismatch(&e)
                    .or_else(|| missing_row(&e))
                    .unwrap_or_else(|| super::store_error(e))
            })
    }
}
