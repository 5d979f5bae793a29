//! Who watches which vault, across replicas, on Postgres: the watcher rows
//! each replica keeps for its open streams, and the heartbeats that let
//! the others sweep what a crashed replica left behind.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgPool;

use super::{CHANNEL, PgStore};
use crate::store::{StoreResult, Watcher, WatcherRecord};

pub(super) async fn update_watchers(
    pool: &PgPool,
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
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn watchers(
    pool: &PgPool,
    vault_id: &str,
    limit: i64,
) -> StoreResult<(Vec<Watcher>, i64)> {
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
    .fetch_all(pool)
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

pub(super) async fn heartbeat(
    pool: &PgPool,
    replica_id: &str,
    stale_after: Duration,
) -> StoreResult<()> {
    sqlx::query(
        "insert into relay_replicas (replica_id) values ($1)
         on conflict (replica_id) do update set heartbeat_at = now()",
    )
    .bind(replica_id)
    .execute(pool)
    .await?;
    // Sweep what crashed replicas left behind.
    let secs = stale_after.as_secs_f64();
    sqlx::query(
        "delete from stream_watchers where replica_id in (
            select replica_id from relay_replicas
            where heartbeat_at < now() - make_interval(secs => $1))",
    )
    .bind(secs)
    .execute(pool)
    .await?;
    sqlx::query(
        "delete from relay_replicas where heartbeat_at < now() - make_interval(secs => $1)",
    )
    .bind(secs)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn forget_replica(pool: &PgPool, replica_id: &str) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    let vaults: Vec<String> =
        sqlx::query_scalar("delete from stream_watchers where replica_id = $1 returning vault_id")
            .bind(replica_id)
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("delete from relay_replicas where replica_id = $1")
        .bind(replica_id)
        .execute(&mut *tx)
        .await?;
    let mut seen = std::collections::HashSet::new();
    for vault_id in vaults.into_iter().filter(|v| seen.insert(v.clone())) {
        PgStore::notify(&mut tx, json!({"t": "presence", "v": vault_id})).await?;
    }
    tx.commit().await?;
    Ok(())
}
