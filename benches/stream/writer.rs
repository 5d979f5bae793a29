//! The paced writer of figures 1 and 4: appends at a fixed rate, at most 64
//! unanswered, on a thread and runtime of its own with its own connections.
//! On the figures' runtime its ticks and answers would wait behind the
//! subscriber sockets this process reads, and the figure would be this
//! process's scheduling, not the relay's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::client::Api;
use crate::system::{lock, nanos_since, on_own_thread};
use crate::{BoxError, Result};

/// Appends at most this many unanswered.
const IN_FLIGHT: usize = 64;

/// One acknowledged append.
pub(crate) struct Sent {
    /// Index of its vault in the writer's list.
    pub vault: usize,
    pub seq: i64,
    /// Nanoseconds since the figure's time base, when the append was sent.
    pub at: u64,
    /// Nanoseconds from the send to the answer.
    pub round_trip: u64,
}

/// What the writer did.
pub(crate) struct Written {
    /// In the order the answers came.
    pub sends: Vec<Sent>,
    /// Sends that left more than one period after their slot: the writer
    /// could not keep the rate it was asked for, because [`IN_FLIGHT`]
    /// appends were still unanswered.
    pub late: u64,
    /// Seconds from the first slot to the last answer.
    pub secs: f64,
}

/// Appends `total` rows of `text` at `rate` per second, the i-th to
/// `vaults[i % vaults.len()]`, with times measured from `base`.
pub(crate) async fn paced_appends(
    api: &Api,
    vaults: Vec<String>,
    text: &str,
    rate: u32,
    total: u64,
    base: Instant,
) -> Result<Written> {
    let text = text.to_string();
    let writer = on_own_thread(api, move |api| async move {
        let api = Arc::new(api);
        let sends = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let period = Duration::from_secs(1) / rate;
        // The schedule starts here, once the thread and its runtime are up,
        // so their start is not counted as lateness.
        let writing = Instant::now();
        let mut tick = tokio::time::interval(period);
        let mut writes = Vec::with_capacity(total as usize);
        let mut late = 0u64;
        for i in 0..total {
            tick.tick().await;
            let permit = in_flight.clone().acquire_owned().await?;
            if writing.elapsed() > period * (i as u32 + 1) {
                late += 1;
            }
            let vault = i as usize % vaults.len();
            let (api, name, text, sends) = (
                api.clone(),
                vaults[vault].clone(),
                text.clone(),
                sends.clone(),
            );
            writes.push(tokio::spawn(async move {
                let at = nanos_since(base);
                let seq = api.append(&name, &text).await?;
                let round_trip = nanos_since(base) - at;
                drop(permit);
                lock(&sends).push(Sent {
                    vault,
                    seq,
                    at,
                    round_trip,
                });
                Ok::<_, BoxError>(())
            }));
        }
        for w in writes {
            w.await??;
        }
        let sends = std::mem::take(&mut *lock(&sends));
        Ok(Written {
            sends,
            late,
            secs: writing.elapsed().as_secs_f64(),
        })
    });
    // Waited for off this runtime's workers, which the subscribers need.
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the writer panicked")?
}
