//! Group commit: the content writes of sessions that arrive together are
//! committed together.
//!
//! One writer task per process owns the batch ([`Batcher`]). It waits for
//! the first write, takes whatever else is already queued (up to
//! [`MAX_BATCH`]), commits them with one call of `vault_write_batch`
//! (migrations/0006 and 0008: one statement, so one transaction and one
//! round trip, with one NOTIFY) and answers each caller on its own oneshot,
//! after the commit. There is no timer: an idle relay's lone write goes at
//! once, and under load batches grow by themselves while the previous one
//! commits. Every notifying commit queues on one cluster-wide lock held
//! through the WAL flush, so committing many writes per transaction is what
//! lifts the relay past one transaction per append.
//!
//! Each write keeps its own result: the SQL checks every item and refuses
//! one (no such entry, a session that is not granted, ...) without raising,
//! so its neighbours still commit. Every vault of a batch is locked first, in
//! id order, so batches on several replicas never deadlock over vaults. (One
//! wait remains outside that order: an idempotency key claimed by another
//! uncommitted transaction. A repeat of a request names the same vault, so
//! it queues on the vault lock first; only a client that reuses two keys for
//! different requests at once, on two replicas, in opposite orders, could
//! make two batches wait on each other, and Postgres then fails one of them
//! as a deadlock: its writes are refused, none acknowledged.)

use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::encryption;
use crate::store::{
    Committed, Entry, KIND_CONTENT, Keyed, NewEntry, PriorResponse, StoreError, StoreResult,
    WriteKey,
};

/// Writes committed in one transaction at most. A batch's notice names each
/// vault once (about 30 bytes each), far below NOTIFY's 8,000-byte payload
/// limit at this size.
pub const MAX_BATCH: usize = 64;
/// Writes waiting for the writer task at most; callers beyond it wait to
/// enqueue, which is the back pressure on a database that cannot keep up.
const QUEUE_DEPTH: usize = 4096;

/// One content write of a batch.
pub struct Item {
    pub session_hash: String,
    pub entry: NewEntry,
    pub key: Option<WriteKey>,
}

/// What a write of a batch comes back with.
pub type Outcome = StoreResult<Keyed<Committed>>;

struct Pending {
    item: Item,
    reply: oneshot::Sender<Outcome>,
}

/// The handle on the process's writer task; the task stops when the
/// handle is dropped.
pub struct Batcher {
    queue: mpsc::Sender<Pending>,
    task: tokio::task::AbortHandle,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Batcher {
    /// Starts the writer task on `pool`.
    pub fn spawn(pool: PgPool) -> Batcher {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(run(pool, rx)).abort_handle();
        Batcher { queue, task }
    }

    /// Queues a write and waits until its batch has committed (or failed).
    pub async fn write(&self, item: Item) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the batch writer has stopped".into());
        self.queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Pending>) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    // recv_many waits for the first write, then takes what is queued.
    while queue.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let (items, replies): (Vec<Item>, Vec<oneshot::Sender<Outcome>>) =
            pending.drain(..).map(|p| (p.item, p.reply)).unzip();
        let outcomes = commit(&pool, items).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away no longer wants its answer.
            let _ = reply.send(outcome);
        }
    }
}

/// Commits a batch; one result per item, in order. An error for the whole
/// batch (the database is unreachable, the commit failed) is given to every
/// item: none of them was acknowledged as written.
pub async fn commit(pool: &PgPool, items: Vec<Item>) -> Vec<Outcome> {
    let n = items.len();
    let mut sessions = Vec::with_capacity(n);
    let mut vaults = Vec::with_capacity(n);
    let mut entries = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut fingerprints = Vec::with_capacity(n);
    let mut ttls = Vec::with_capacity(n);
    for item in items {
        sessions.push(item.session_hash);
        vaults.push(item.entry.vault_id);
        entries.push(item.entry.entry_no);
        writers.push(item.entry.writer_id);
        contents.push(item.entry.content);
        keys.push(item.key.as_ref().map(|k| k.key.clone()));
        fingerprints.push(item.key.as_ref().map(|k| k.fingerprint.clone()));
        ttls.push(item.key.as_ref().map(|k| k.ttl.as_secs_f64()));
    }
    let rows = sqlx::query(
        "select out_error, out_entry_no, out_version, out_seq, out_prev_seq, out_created_at,
                out_prior_fingerprint, out_prior_response
         from vault_write_batch($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&sessions)
    .bind(&vaults)
    .bind(&entries)
    .bind(&writers)
    .bind(&contents)
    .bind(&keys)
    .bind(&fingerprints)
    .bind(&ttls)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) if rows.len() == n => rows,
        Ok(rows) => {
            let e = format!(
                "vault_write_batch answered {} rows for {n} writes",
                rows.len()
            );
            return (0..n).map(|_| Err(StoreError::Fault(e.clone()))).collect();
        }
        Err(e) => {
            let e = StoreError::from(e);
            return (0..n).map(|_| Err(same_error(&e))).collect();
        }
    };
    rows.iter()
        .zip(entries.into_iter().zip(writers.into_iter().zip(contents)))
        .map(|(row, (entry_no, (writer_id, content)))| {
            let refused: Option<String> = row.try_get("out_error")?;
            match refused.as_deref() {
                None => {}
                Some("prior") => {
                    return Ok(Keyed::Prior(PriorResponse {
                        fingerprint: row.try_get("out_prior_fingerprint")?,
                        response: row.try_get("out_prior_response")?,
                    }));
                }
                Some(reason) => return Err(refusal(reason, entry_no)),
            }
            Ok(Keyed::Done(Committed {
                entry: Entry {
                    seq: row.try_get("out_seq")?,
                    entry_no: row.try_get("out_entry_no")?,
                    version: row.try_get("out_version")?,
                    kind: KIND_CONTENT.to_string(),
                    writer_id,
                    content,
                    created_at: row.try_get("out_created_at")?,
                },
                prev_seq: row.try_get("out_prev_seq")?,
            }))
        })
        .collect()
}

/// The error of an item the batch refused.
fn refusal(reason: &str, entry_no: Option<i64>) -> StoreError {
    match reason {
        "session" => StoreError::SessionRefused,
        "vault" => StoreError::VaultNotFound,
        "forbidden" => StoreError::WriteForbidden,
        "entry" => StoreError::EntryNotFound(entry_no.unwrap_or_default()),
        // 'mode <mode> <kid>': the encryption mode refused it.
        mode if mode.starts_with("mode ") => encryption::refusal_from(&mode["mode ".len()..]),
        other => StoreError::Fault(format!(
            "vault_write_batch refused a write for an unknown reason `{other}`"
        )),
    }
}

/// A copy of a whole-batch error for each of its writes.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Fault(other.to_string()),
    }
}
