//! Figure 2: a reconnect storm, then resident memory per idle stream. The
//! relay is a child process, so the benchmark's own sockets are not counted
//! in its memory; a REST reader on a thread of its own times reads while the
//! streams connect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Api, expect_hello, open_reporting};
use crate::common::{ms, percentile, thousands};
use crate::relay::Relay;
use crate::system::{mib, on_own_thread};
use crate::{Plan, Result, entry_text, verdict};

pub(crate) async fn storm_then_idle(relay: &Relay, api: &Api, plan: &Plan) -> Result<()> {
    let n = plan.idle_subscribers;
    let vault_count = plan.storm_vaults.max(1);
    let pid = relay.pid();
    println!(
        "[2] storm: {n} streams over {vault_count} vaults all connecting at once, then idle; \
         relay is a child process (pid {pid})"
    );
    let mut vaults = Vec::with_capacity(vault_count);
    for _ in 0..vault_count {
        vaults.push(api.create_vault().await?);
    }
    let text = entry_text();
    for v in &vaults {
        api.append(v, &text).await?;
    }

    // Open and close a few streams first so one-time allocations (thread
    // caches, the first channel) are not charged to the storm.
    for i in 0..16 {
        let mut ws = api
            .connect(&vaults[0], &format!("warm-{i}"), None, 4 * 1024)
            .await?;
        expect_hello(&mut ws).await?;
        let _ = ws.close(None).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = relay.rss_kib()?;

    // A REST reader, one read at a time, for as long as the storm lasts. It
    // runs on a thread and runtime of its own with its own connection, so
    // what it measures is the relay, not this process's ten thousand
    // connecting clients queued ahead of it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reader_stop_tx, reader_stop) = watch::channel(false);
    let reader = {
        let vault = vaults[0].clone();
        let stop = reader_stop;
        on_own_thread(api, move |api| async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while !*stop.borrow() {
                let started = Instant::now();
                match api.read(&vault).await {
                    Ok(()) => latencies.push(started.elapsed().as_nanos() as u64),
                    Err(_) => failures += 1,
                }
            }
            Ok((latencies, failures))
        })
    };

    let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(n);
    let closed_early = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let api = api.clone();
        let vault = vaults[i % vault_count].clone();
        let mut stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let closed_early = closed_early.clone();
        streams.push(tokio::spawn(async move {
            let Some(mut ws) =
                open_reporting(&api, &vault, &format!("storm-{i}"), None, ready).await
            else {
                return;
            };
            // Keep reading so pings are answered and presence frames drain.
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            closed_early.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(ready_tx);
    let mut failed = Vec::new();
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => failed.push(e),
            None => break,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // The reader stops with the storm.
    let _ = reader_stop_tx.send(true);
    let (mut reads, read_failures) = reader.join().map_err(|_| "the REST reader panicked")??;
    reads.sort_unstable();
    if !failed.is_empty() {
        println!(
            "note: {} of {n} streams failed to open (first: {})",
            failed.len(),
            failed[0]
        );
    }
    println!(
        "time to open all {n} = {open_secs:.2} s (target <= 5 s: {})",
        verdict(open_secs <= 5.0 && failed.is_empty())
    );
    let read_p99 = percentile(&reads, 99.0);
    println!(
        "REST reads while they connect: p50 = {}, p99 = {} (target p99 < 50 ms: {}) \
         [{} reads one at a time, max = {}, {read_failures} failed]",
        ms(percentile(&reads, 50.0)),
        ms(read_p99),
        verdict((read_p99 as f64) < 50e6 && read_failures == 0),
        thousands(reads.len() as u64),
        ms(reads.last().copied().unwrap_or(0)),
    );

    // Let the join presence frames go out and the relay settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with = relay.rss_kib()?;
    let early = closed_early.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for s in streams {
        s.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = relay.rss_kib()?;
    let opened = (n - failed.len()).max(1);
    let per_stream = (with.saturating_sub(before) * 1024) as f64 / opened as f64;
    println!(
        "relay RSS (VmRSS) before = {}, with {opened} idle streams = {}, after closing them = {}",
        mib(before),
        mib(with),
        mib(after),
    );
    println!(
        "memory per idle stream = {:.1} KB ({} bytes) (target <= 10 KB: {}; before: 16.4 KB)",
        per_stream / 1000.0,
        thousands(per_stream.round() as u64),
        verdict(per_stream <= 10_000.0),
    );
    if early > 0 {
        println!("note: the relay closed {early} idle streams before the measurement ended");
    }
    Ok(())
}
