//! The raw-Postgres baseline: the per-append transaction straight through
//! sqlx, no relay.

use std::sync::Arc;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use crate::Plan;
use crate::Result;
use crate::measure::{Outcome, Window, join_all};

/// The baseline's append: the per-write transaction as one statement.
const BASELINE_FUNCTION: &str = r#"
create function bench_append(p_vault text, p_writer text, p_content text)
returns table (out_entry_no bigint, out_version bigint, out_seq bigint)
language plpgsql
as $$
declare
    v_next bigint;
    v_seq bigint;
begin
    select v.next_entry_no into v_next from vaults v where v.id = p_vault for update;
    if not found then
        raise exception 'no such vault';
    end if;
    v_seq := nextval('vault_seq');
    insert into vault_entries (seq, vault_id, entry_no, version, kind, writer_id, content)
    values (v_seq, p_vault, v_next, 1, 'content', p_writer, p_content);
    update vaults v set
        head_seq = v_seq,
        next_entry_no = v.next_entry_no + 1,
        writers = case when v.writers @> array[p_writer] then v.writers else array_append(v.writers, p_writer) end
    where v.id = p_vault;
    perform pg_notify('vault_relay', json_build_object('t', 'entry', 'v', p_vault, 's', v_seq)::text);
    return query select v_next, 1::bigint, v_seq;
end;
$$"#;

/// The baseline: one connection per writer, held for the whole run (so no
/// pool checks it between appends), and a vault each.
pub(crate) struct RawSide {
    pub(crate) pool: PgPool,
    connections: Vec<Arc<tokio::sync::Mutex<PgConnection>>>,
    vaults: Vec<String>,
    text: String,
}

impl RawSide {
    pub(crate) async fn setup(url: &str, writers: usize, text: &str) -> Result<RawSide> {
        let pool = PgPoolOptions::new()
            .max_connections(writers as u32)
            .min_connections(writers as u32)
            .connect(url)
            .await?;
        vault_relay::store::postgres::MIGRATOR.run(&pool).await?;
        sqlx::raw_sql(BASELINE_FUNCTION).execute(&pool).await?;
        let mut vaults = Vec::new();
        for i in 0..writers {
            let id = format!("v-rawbench{i:04}");
            sqlx::query(
                "insert into vaults (id, summary, work_session, creator)
                 values ($1, '', 'a-bench', 'bench')",
            )
            .bind(&id)
            .execute(&pool)
            .await?;
            vaults.push(id);
        }
        let mut connections = Vec::new();
        for _ in 0..writers {
            let conn = pool.acquire().await?.detach();
            connections.push(Arc::new(tokio::sync::Mutex::new(conn)));
        }
        Ok(RawSide {
            pool,
            connections,
            vaults,
            text: text.to_string(),
        })
    }

    pub(crate) async fn round(&self, plan: &Plan) -> Result<(Outcome, Vec<u64>)> {
        let window = Window::new(plan);
        let tasks = self
            .vaults
            .iter()
            .enumerate()
            .map(|(i, vault)| {
                let (conn, window) = (self.connections[i].clone(), window.clone());
                let (vault, text) = (vault.clone(), self.text.clone());
                let writer = format!("bench-w{i}");
                tokio::spawn(window.drive(move || {
                    append_raw(conn.clone(), vault.clone(), writer.clone(), text.clone())
                }))
            })
            .collect();
        let logs = join_all(tasks).await?;
        Ok(window.outcome(logs))
    }
}

async fn append_raw(
    conn: Arc<tokio::sync::Mutex<PgConnection>>,
    vault: String,
    writer: String,
    text: String,
) -> Result<()> {
    sqlx::query("select out_seq from bench_append($1, $2, $3)")
        .bind(&vault)
        .bind(&writer)
        .bind(&text)
        .fetch_one(&mut *conn.lock().await)
        .await?;
    Ok(())
}
