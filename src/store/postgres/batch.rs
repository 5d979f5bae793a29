//! Group commit: the content writes of sessions that arrive together are
//! committed together.
//!
//! Writes queue in one place per process ([`Batcher`]); whoever holds the
//! turn takes what is queued (up to [`MAX_BATCH`]), commits it with one call
//! of `vault_write_batch` (migrations/0006: one statement, so one
//! transaction and one round trip, with one NOTIFY) and answers each caller
//! on its own oneshot, after the commit. There is no timer: a write that
//! finds nobody committing takes the turn and commits itself, in its own
//! task, so an idle relay's lone write pays no hop to another task; writes
//! that arrive while a batch commits queue, and the writer task commits
//! them together when that batch is done. Under load batches grow by
//! themselves. One exception keeps a company together: writers answered by
//! the same batch come back at about the same moment, and the first of
//! them would otherwise commit alone while the rest queue behind it, two
//! commits (two WAL flushes) where one does. So within [`COMPANY_WINDOW`]
//! of a batch of two or more, a write goes to the writer task, which waits
//! (at most [`GATHER_AT_MOST`], yielding) until as many writes wait as that
//! batch had. A relay that has not just committed such a batch never makes
//! a write wait. Every notifying commit queues on one cluster-wide lock held
//! through the WAL flush, so committing many writes per transaction is what
//! lifts the relay past one transaction per append.
//!
//! Only a write alone commits in its caller's task: a caller that goes away
//! cancels its own commit and nobody else's, since the writer task (which
//! nobody cancels) commits every batch of more than one write.
//!
//! The turn keeps one connection between batches, so a busy writer pays no
//! pool checks (sqlx checks a connection with a round trip whenever it is
//! given back, and the pool again when it hands out one that sat idle). A
//! connection left unused for [`KEEP_IDLE`] is given back and a fresh one
//! taken from the pool, which checks it, so a database restart costs no
//! write.
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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::Row;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::encryption;
use crate::store::{
    Committed, Entry, KIND_CONTENT, Keyed, NewEntry, PriorResponse, StoreError, StoreResult,
    WriteKey,
};

/// Writes committed in one transaction at most. A batch's notice names each
/// vault once (about 30 bytes each), far below NOTIFY's 8,000-byte payload
/// limit at this size.
pub const MAX_BATCH: usize = 64;
/// Writes queued or committing at most; callers beyond it wait to queue,
/// which is the back pressure on a database that cannot keep up.
const QUEUE_DEPTH: usize = 4096;
/// The smallest pool the turn keeps a connection of.
pub const KEEP_FROM_POOL_SIZE: u32 = 4;
/// How long the turn keeps a connection it does not use.
const KEEP_IDLE: Duration = Duration::from_secs(1);
/// Writers that shared a commit come back together: their answers went out
/// at the same moment. A write that finds the turn free within this time
/// of a batch of two or more is gathered with them (see [`GATHER_AT_MOST`]).
const COMPANY_WINDOW: Duration = Duration::from_millis(2);
/// How long the writer task gathers such writes at most before it commits
/// what it has. Otherwise the first writer back would commit alone and the
/// rest wait for it, two commits (and two WAL flushes) where one will do.
const GATHER_AT_MOST: Duration = Duration::from_micros(300);

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

/// The process's write queue and its writer task; the task stops when the
/// handle is dropped.
pub struct Batcher {
    shared: Arc<Shared>,
    slots: Semaphore,
    task: tokio::task::AbortHandle,
}

struct Shared {
    pool: PgPool,
    /// Whether the turn may keep a connection: only in a pool of at least
    /// [`KEEP_FROM_POOL_SIZE`], so a small pool is not one short for
    /// everything else.
    keep: bool,
    queue: Mutex<Queue>,
    /// Tells the writer task that the turn is its own.
    wake: Notify,
}

struct Queue {
    waiting: VecDeque<Pending>,
    /// Someone holds the turn (a lone write, or the writer task) and will
    /// see what is waiting. Nothing waits without a holder.
    busy: bool,
    /// The connection kept between batches, and when it was last used.
    kept: Kept,
    /// When the last batch of two or more writes committed, and its size.
    company: Option<(Instant, usize)>,
    /// The writer task gathers writes until this many wait (or
    /// [`GATHER_AT_MOST`] passes) before it commits.
    gather: Option<usize>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Batcher {
    /// Starts the writer task on `pool`, of at most `pool_size` connections.
    pub fn spawn(pool: PgPool, pool_size: u32) -> Batcher {
        let shared = Arc::new(Shared {
            pool,
            keep: pool_size >= KEEP_FROM_POOL_SIZE,
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                busy: false,
                kept: None,
                company: None,
                gather: None,
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(run(shared.clone())).abort_handle();
        Batcher {
            shared,
            slots: Semaphore::new(QUEUE_DEPTH),
            task,
        }
    }

    /// Queues a write (or commits it at once when nobody is committing) and
    /// waits until its batch has committed (or failed).
    pub async fn write(&self, item: Item) -> Outcome {
        let stopped = || StoreError::Unavailable("the batch writer has stopped".into());
        let _slot = self.slots.acquire().await.map_err(|_| stopped())?;
        let (item, kept) = match self.shared.take_turn(item) {
            Ok(turn) => turn,
            Err(answer) => return answer.await.map_err(|_| stopped())?,
        };
        // Alone: commit here. The guard passes the turn on even if this
        // future is dropped half way.
        let mut turn = PassOn {
            shared: &self.shared,
            kept: None,
        };
        let (mut outcomes, conn) = commit_on(&self.shared, kept, vec![item]).await;
        turn.kept = conn;
        drop(turn);
        outcomes.pop().unwrap_or_else(|| Err(stopped()))
    }
}

/// A connection kept between batches, and when it was last used.
type Kept = Option<(PoolConnection<Postgres>, Instant)>;

impl Shared {
    /// Takes the turn for `item` when nobody holds it and no company is
    /// coming back (handing back the item and the kept connection), or
    /// queues the item for the holder, or for the writer task to gather
    /// with that company (handing back where its answer will come).
    fn take_turn(&self, item: Item) -> Result<(Item, Kept), oneshot::Receiver<Outcome>> {
        let mut queue = self.lock();
        let gather = match queue.company {
            Some((at, size)) if at.elapsed() < COMPANY_WINDOW => Some(size),
            _ => None,
        };
        if queue.busy || gather.is_some() {
            let (reply, answer) = oneshot::channel();
            queue.waiting.push_back(Pending { item, reply });
            if !queue.busy {
                // The first of a company back: the writer task takes the
                // turn and waits a moment for the others.
                queue.busy = true;
                queue.gather = gather;
                self.wake.notify_one();
            }
            return Err(answer);
        }
        queue.busy = true;
        Ok((item, queue.kept.take()))
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds no invariant a panic could break half way.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Queue {
    /// Keeps `conn` for the next holder of the turn.
    fn keep(&mut self, conn: Option<PoolConnection<Postgres>>) {
        self.kept = conn.map(|conn| (conn, Instant::now()));
    }
}

/// A lone write's hold on the turn. Dropped (after the commit, or with the
/// caller's future), it keeps the connection for the next holder and gives
/// the turn up, or passes it to the writer task when writes are waiting.
struct PassOn<'a> {
    shared: &'a Shared,
    kept: Option<PoolConnection<Postgres>>,
}

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.keep(self.kept.take());
        if queue.waiting.is_empty() {
            queue.busy = false;
        } else {
            // Still busy: the turn is the writer task's now.
            self.shared.wake.notify_one();
        }
    }
}

/// The writer task: whenever the turn is passed to it, commits what waits,
/// a batch at a time, until nothing does.
async fn run(shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        gather(&shared).await;
        loop {
            let (batch, kept) = {
                let mut queue = shared.lock();
                if queue.waiting.is_empty() {
                    queue.busy = false;
                    break;
                }
                let n = queue.waiting.len().min(MAX_BATCH);
                let batch: Vec<Pending> = queue.waiting.drain(..n).collect();
                (batch, queue.kept.take())
            };
            let (items, replies): (Vec<Item>, Vec<oneshot::Sender<Outcome>>) =
                batch.into_iter().map(|p| (p.item, p.reply)).unzip();
            let n = items.len();
            let (outcomes, conn) = commit_on(&shared, kept, items).await;
            {
                let mut queue = shared.lock();
                queue.keep(conn);
                queue.company = (n > 1).then(|| (Instant::now(), n));
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that went away no longer wants its answer.
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Waits, when asked to gather, until as many writes wait as the company
/// had or [`GATHER_AT_MOST`] has passed. It yields rather than sleeps: the
/// runtime's timer counts in milliseconds, and yielding lets the requests
/// already arriving be read meanwhile.
async fn gather(shared: &Shared) {
    let Some(target) = shared.lock().gather.take() else {
        return;
    };
    let started = Instant::now();
    while shared.lock().waiting.len() < target && started.elapsed() < GATHER_AT_MOST {
        tokio::task::yield_now().await;
    }
}

/// Commits `items` on the kept connection, or on one from the pool when
/// none is kept or it sat unused for [`KEEP_IDLE`] (given back, the pool
/// checks it). Hands back the connection to keep: none when the database
/// could not be reached on it, or when the pool is too small to spare one.
async fn commit_on(
    shared: &Shared,
    kept: Kept,
    items: Vec<Item>,
) -> (Vec<Outcome>, Option<PoolConnection<Postgres>>) {
    let n = items.len();
    let kept = kept.filter(|(_, used)| used.elapsed() < KEEP_IDLE);
    let mut conn = match kept {
        Some((conn, _)) => conn,
        None => match shared.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return (all_failed(n, &e.into()), None),
        },
    };
    let outcomes = commit_columns(&mut conn, Columns::new(items)).await;
    let reachable = !outcomes
        .iter()
        .any(|o| matches!(o, Err(StoreError::Unavailable(_))));
    let conn = (reachable && shared.keep).then_some(conn);
    (outcomes, conn)
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

/// Commits a batch on a connection of `pool`, outside the queue; one
/// result per item, in order.
pub async fn commit(pool: &PgPool, items: Vec<Item>) -> Vec<Outcome> {
    let n = items.len();
    match pool.acquire().await {
        Ok(mut conn) => commit_columns(&mut conn, Columns::new(items)).await,
        Err(e) => all_failed(n, &e.into()),
    }
}

/// Commits `batch` in one statement. When the database refuses the whole
/// statement (a write that fails a check only at COMMIT, a deadlock), the
/// transaction committed nothing, so the batch is split in two and each half
/// is tried on its own: one bad write costs its neighbours a few more round
/// trips, never their write. An error that says the database cannot be
/// reached (or an answer that may have been lost after the commit) is given
/// to every write of the batch, none of them acknowledged as written.
fn commit_columns(conn: &mut PgConnection, mut batch: Columns) -> BoxFuture<'_, Vec<Outcome>> {
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
        .fetch_all(&mut *conn)
        .await;
        let rows = match rows {
            Ok(rows) if rows.len() == n => rows,
            Ok(rows) => {
                let e = format!(
                    "vault_write_batch answered {} rows for {n} writes",
                    rows.len()
                );
                return all_failed(n, &StoreError::Fault(e));
            }
            Err(e) => {
                let refused_whole = matches!(e, sqlx::Error::Database(_));
                let e = StoreError::from(e);
                if n > 1 && refused_whole && matches!(e, StoreError::Fault(_)) {
                    let second = batch.split_off(n / 2);
                    let mut outcomes = commit_columns(conn, batch).await;
                    outcomes.extend(commit_columns(conn, second).await);
                    return outcomes;
                }
                return all_failed(n, &e);
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

/// A whole-batch error, given to each of its `n` writes: none of them was
/// acknowledged as written.
fn all_failed(n: usize, e: &StoreError) -> Vec<Outcome> {
    (0..n)
        .map(|_| {
            Err(match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                StoreError::Fault(m) => StoreError::Fault(m.clone()),
                other => StoreError::Fault(other.to_string()),
            })
        })
        .collect()
}
