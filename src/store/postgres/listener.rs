//! The one dedicated LISTEN connection of a relay process.
//!
//! It forwards each NOTIFY as a [`Notice`]. When the connection drops it
//! reconnects with backoff and then sends [`Notice::Resync`]: notices sent
//! while it was away are gone, so every subscriber re-reads the table from
//! its own cursor. The resync goes out only after LISTEN is active again, so
//! nothing can fall between the re-read and the new notices.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::{CHANNEL, parse_notices};
use crate::store::Notice;

/// Capacity of the per-process notice channel.
pub const NOTICE_CAPACITY: usize = 8192;

/// Spawns the listener task; the store aborts it when dropped. `ready`
/// fires the first time LISTEN is active; `reconnects` counts every later
/// time it is active again after the connection dropped.
pub fn spawn(
    pool: PgPool,
    notices: broadcast::Sender<Notice>,
    ready: tokio::sync::oneshot::Sender<()>,
    reconnects: Arc<AtomicU64>,
) -> tokio::task::AbortHandle {
    let mut ready = Some(ready);
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listener = match connect(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            tracing::debug!("LISTEN connection ready");
            let _ = notices.send(Notice::Resync);
            match ready.take() {
                Some(ready) => {
                    let _ = ready.send(());
                }
                None => {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        let parsed = parse_notices(n.payload());
                        if parsed.is_empty() {
                            tracing::warn!("ignoring a malformed notice");
                        }
                        for notice in parsed {
                            let _ = notices.send(notice);
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                        break;
                    }
                }
            }
        }
    });
    task.abort_handle()
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
