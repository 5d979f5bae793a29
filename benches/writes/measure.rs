//! How a round is driven and what it measured: the window every writer
//! appends in, the figures of a side, and one writer count measured with
//! its sides in alternating rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{ms, percentile, thousands};
use crate::raw::RawSide;
use crate::relay::{RelaySide, check_stored};
use crate::{Plan, Result};

/// What one case measured.
pub(crate) struct Outcome {
    appends: u64,
    window: Duration,
    /// Latency of every append in the window, in nanoseconds, sorted.
    latencies: Vec<u64>,
    /// Set when the stored rows disagree with the acknowledgements.
    pub(crate) problem: Option<String>,
}

impl Outcome {
    pub(crate) fn empty() -> Outcome {
        Outcome {
            appends: 0,
            window: Duration::ZERO,
            latencies: Vec::new(),
            problem: None,
        }
    }

    /// Adds a round's figures (the latencies stay sorted).
    pub(crate) fn add(&mut self, round: Outcome) {
        self.appends += round.appends;
        self.window += round.window;
        self.latencies.extend(round.latencies);
        self.latencies.sort_unstable();
    }

    pub(crate) fn per_sec(&self) -> f64 {
        self.appends as f64 / self.window.as_secs_f64()
    }

    pub(crate) fn percentile(&self, p: f64) -> u64 {
        percentile(&self.latencies, p)
    }

    pub(crate) fn figure(&self) -> String {
        format!(
            "{:>6}/s  {} / {}",
            thousands(self.per_sec().round() as u64),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0))
        )
    }
}

/// When the measured window opens and closes, shared by every writer.
#[derive(Clone)]
pub(crate) struct Window {
    opens: Instant,
    closes: Instant,
    stop: Arc<AtomicBool>,
}

/// Per writer: appends acknowledged in all, and latencies in the window.
pub(crate) struct WriterLog {
    acknowledged: u64,
    latencies: Vec<u64>,
}

impl Window {
    pub(crate) fn new(plan: &Plan) -> Window {
        let opens = Instant::now() + plan.warm_up;
        Window {
            opens,
            closes: opens + plan.measure,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs `append` in a loop until the window closes; latencies of
    /// appends that start and end inside the window are kept.
    pub(crate) async fn drive<F, Fut>(self, mut append: F) -> Result<WriterLog>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut log = WriterLog {
            acknowledged: 0,
            latencies: Vec::new(),
        };
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            if started >= self.closes {
                break;
            }
            if let Err(e) = append().await {
                self.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let ended = Instant::now();
            log.acknowledged += 1;
            if started >= self.opens && ended <= self.closes {
                log.latencies.push((ended - started).as_nanos() as u64);
            }
        }
        Ok(log)
    }

    /// The round's figures, and the appends acknowledged per writer.
    pub(crate) fn outcome(&self, logs: Vec<WriterLog>) -> (Outcome, Vec<u64>) {
        let acknowledged = logs.iter().map(|l| l.acknowledged).collect();
        let latencies: Vec<u64> = logs.into_iter().flat_map(|l| l.latencies).collect();
        let outcome = Outcome {
            appends: latencies.len() as u64,
            window: self.closes - self.opens,
            latencies,
            problem: None,
        };
        (outcome, acknowledged)
    }
}

pub(crate) async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<Result<WriterLog>>>,
) -> Result<Vec<WriterLog>> {
    let mut logs = Vec::with_capacity(tasks.len());
    for t in tasks {
        logs.push(t.await??);
    }
    Ok(logs)
}

/// Measures one writer count: the relay and the baseline are set up side
/// by side, then driven in alternating rounds, so that a change in the
/// machine's load during the run weighs on both alike. At one writer a
/// third side joins the rounds: the hop, the same relay on its in-memory
/// store, which costs what the relay adds to a write apart from the
/// database (a bound, not a relay figure: its rows are not counted).
/// Returns (relay, raw, hop).
pub(crate) async fn measure(
    raw_url: &str,
    relay_url: &str,
    writers: usize,
    plan: &Plan,
    text: &str,
) -> Result<(Outcome, Outcome, Option<Outcome>)> {
    let raw = RawSide::setup(raw_url, writers, text).await?;
    let relay = RelaySide::setup(Some(relay_url), writers, text).await?;
    let mut hop = if writers == 1 {
        Some((
            RelaySide::setup(None, writers, text).await?,
            Outcome::empty(),
        ))
    } else {
        None
    };
    let (mut raw_total, mut relay_total) = (Outcome::empty(), Outcome::empty());
    let mut acknowledged = vec![0; writers];
    for _ in 0..plan.rounds {
        raw_total.add(raw.round(plan).await?.0);
        let (outcome, acked) = relay.round(plan).await?;
        relay_total.add(outcome);
        for (total, n) in acknowledged.iter_mut().zip(acked) {
            *total += n;
        }
        if let Some((side, total)) = &mut hop {
            total.add(side.round(plan).await?.0);
        }
    }
    raw.pool.close().await;
    relay.relay.stop();
    let hop = hop.map(|(side, total)| {
        side.relay.stop();
        total
    });
    relay_total.problem = check_stored(relay_url, &relay.vaults, &acknowledged).await?;
    Ok((relay_total, raw_total, hop))
}
