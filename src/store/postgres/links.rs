//! Read-only links on Postgres. A revocation notifies in its transaction,
//! so the link's open streams close on every replica.

use serde_json::json;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::PgStore;
use crate::store::{ReadLink, StoreResult};

pub(super) async fn insert_link(pool: &PgPool, l: &ReadLink) -> StoreResult<()> {
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
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn link_by_secret_hash(
    pool: &PgPool,
    secret_hash: &str,
) -> StoreResult<Option<ReadLink>> {
    let row = sqlx::query("select * from read_links where secret_hash = $1")
        .bind(secret_hash)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(link_from_row).transpose()?)
}

pub(super) async fn links_for_vault(pool: &PgPool, vault_id: &str) -> StoreResult<Vec<ReadLink>> {
    let rows =
        sqlx::query("select * from read_links where vault_id = $1 order by created_at, link_id")
            .bind(vault_id)
            .fetch_all(pool)
            .await?;
    Ok(rows.iter().map(link_from_row).collect::<Result<_, _>>()?)
}

pub(super) async fn revoke_link(pool: &PgPool, vault_id: &str, link_id: &str) -> StoreResult<bool> {
    let update = sqlx::query(
        "update read_links set revoked = true where vault_id = $1 and link_id = $2 and not revoked",
    )
    .bind(vault_id)
    .bind(link_id);
    PgStore::update_and_notify(pool, update, json!({"t": "revoke", "link": link_id})).await
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
