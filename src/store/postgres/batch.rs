//! Group commit: the content writes of sessions that arrive together are
//! committed together.
//!
//! One writer task per process owns the batch ([`Batcher`]). It waits for
//! the first write, takes whatever else is already queued (up to
//! [`MAX_BATCH`]), commits them with one call of `vault_write_batch`
//! (migrations/0006: one statement, so one transaction and one
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
//! as a deadlock: that batch is split and tried again, see
//! [`commit_columns`].)

use futures_util::future::BoxFuture;
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

/// The columns of a batch, as `vault_write_batch` takes them.
struct Columns {
    sessions: Vec<String>,
    vaults: Vec<String>,
    entries: Vec<Option<i64>>,
    writers: Vec<String>,
    contents: Vec<String>,
    keys: Vec<Option<String>>,
    fingerprints: Vec<Option<String>>,
    ttls: Vec<Option<f64>>,
}

impl Columns {
    fn new(items: Vec<Item>) -> Columns {
        let n = items.len();
        let mut c = Columns {
            sessions: Vec::with_capacity(n),
            vaults: Vec::with_capacity(n),
            entries: Vec::with_capacity(n),
            writers: Vec::with_capacity(n),
            contents: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            fingerprints: Vec::with_capacity(n),
            ttls: Vec::with_capacity(n),
        };
        for item in items {
            c.sessions.push(item.session_hash);
            c.vaults.push(item.entry.vault_id);
            c.entries.push(item.entry.entry_no);
            c.writers.push(item.entry.writer_id);
            c.contents.push(item.entry.content);
            c.keys.push(item.key.as_ref().map(|k| k.key.clone()));
            c.fingerprints
                .push(item.key.as_ref().map(|k| k.fingerprint.clone()));
            c.ttls.push(item.key.as_ref().map(|k| k.ttl.as_secs_f64()));
        }
        c
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Moves the writes from `at` on into a batch of their own.
    fn split_off(&mut self, at: usize) -> Columns {
        Columns {
            sessions: self.sessions.split_off(at),
            vaults: self.vaults.split_off(at),
            entries: self.entries.split_off(at),
            writers: self.writers.split_off(at),
            contents: self.contents.split_off(at),
            keys: self.keys.split_off(at),
            fingerprints: self.fingerprints.split_off(at),
            ttls: self.ttls.split_off(at),
        }
    }
}

/// Commits a batch; one result per item, in order.
pub async fn commit(pool: &PgPool, items: Vec<Item>) -> Vec<Outcome> {
    commit_columns(pool, Columns::new(items)).await
}

/// Commits `batch` in one statement. When the database refuses the whole
/// statement (a write that fails a check only at COMMIT, a deadlock), the
/// transaction committed nothing, so the batch is split in two and each half
/// is tried on its own: one bad write costs its neighbours a few more round
/// trips, never their write. An error that says the database cannot be
/// reached (or an answer that may have been lost after the commit) is given
/// to every write of the batch, none of them acknowledged as written.
fn commit_columns(pool: &PgPool, mut batch: Columns) -> BoxFuture<'_, Vec<Outcome>> {
    Box::pin(async move {
        let n = batch.len();
        let rows = sqlx::query(
            "select out_error, out_entry_no, out_version, out_seq, out_prev_seq, out_created_at,
                    out_prior_fingerprint, out_prior_response
             from vault_write_batch($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&batch.sessions)
        .bind(&batch.vaults)
        .bind(&batch.entries)
        .bind(&batch.writers)
        .bind(&batch.contents)
        .bind(&batch.keys)
        .bind(&batch.fingerprints)
        .bind(&batch.ttls)
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
                let refused_whole = matches!(e, sqlx::Error::Database(_));
                let e = StoreError::from(e);
                if n > 1 && refused_whole && matches!(e, StoreError::Fault(_)) {
                    let second = batch.split_off(n / 2);
                    let mut outcomes = commit_columns(pool, batch).await;
                    outcomes.extend(commit_columns(pool, second).await);
                    return outcomes;
                }
                return (0..n).map(|_| Err(same_error(&e))).collect();
            }
        };
        let Columns {
            entries,
            writers,
            contents,
            ..
        } = batch;
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
    })
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
