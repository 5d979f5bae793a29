//! Figure 1: commit-to-delivery latency at fan-out. Many subscribers of one
//! vault read while a writer, on a thread of its own, asks for a fixed rate
//! of appends: the rate it reached, late sends, the time from each append's
//! send to its entry frame at every subscriber, and the frames the relay
//! delivers per CPU-second.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Api, entry_seq, open_reporting};
use crate::common::{ms, percentile, thousands};
use crate::system::{cpu_split, nanos_since};
use crate::writer::paced_appends;
use crate::{CONNECT_CONCURRENCY, Plan, Result, Targets, report_exactly_once, verdict};

/// What one fan-out subscriber saw.
struct Received {
    /// (seq, nanoseconds since the bench's time base) per entry frame.
    entries: Vec<(i64, u64)>,
    /// Why the relay ended the stream early, if it did.
    ended: Option<String>,
}

pub(crate) async fn fan_out(
    api: &Arc<Api>,
    relay_pid: Option<u32>,
    plan: &Plan,
    text: &str,
    targets: &Targets,
) -> Result<()> {
    let subs = plan.fan_out_subscribers;
    let rate = plan.appends_per_sec;
    let secs = plan.fan_out_secs;
    let total = u64::from(rate) * secs;
    println!(
        "[1] fan-out: {subs} subscribers on one vault, {rate} appends/s for {secs} s \
         ({total} appends)"
    );
    let vault = api.create_vault().await?;
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(subs);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut readers = Vec::with_capacity(subs);
    let capacity = (total as usize) + 64;
    for i in 0..subs {
        let api = api.clone();
        let vault = vault.clone();
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let permits = permits.clone();
        readers.push(tokio::spawn(async move {
            let mut received = Received {
                entries: Vec::with_capacity(capacity),
                ended: None,
            };
            let Some(mut ws) =
                open_reporting(&api, &vault, &format!("fan-{i}"), Some(&permits), ready).await
            else {
                return received;
            };
            let stopped = stop.wait_for(|s| *s);
            tokio::pin!(stopped);
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = &mut stopped => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let at = nanos_since(base);
                        if let Some(seq) = entry_seq(&t) {
                            received.entries.push((seq, at));
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        received.ended = Some(format!("closed by the relay: {c:?}"));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        received.ended = Some(format!("socket error: {e}"));
                        break;
                    }
                    None => {
                        received.ended = Some("socket closed".into());
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            received
        }));
    }
    drop(ready_tx);
    let connect_started = Instant::now();
    for _ in 0..subs {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("opening a fan-out stream failed: {e}").into()),
            None => return Err("the fan-out subscribers stopped before connecting".into()),
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();

    // Warm-up rows (not measured) and time for the join presence to settle.
    const WARM_UP: u64 = 10;
    for _ in 0..WARM_UP {
        api.append(&vault, text).await?;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let cpu_before = cpu_split(relay_pid);
    let delivered_before = delivered.load(Ordering::Relaxed);
    let written = paced_appends(api, vec![vault.clone()], text, rate, total, base).await?;
    let (late, write_secs) = (written.late, written.secs);
    let cpu_after = cpu_split(relay_pid);
    let delivered_while_writing = delivered.load(Ordering::Relaxed) - delivered_before;

    // Wait for every delivery, or give up after a while: late or missing
    // deliveries are part of the figure.
    let expected = (total + WARM_UP) * subs as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(subs);
    for r in readers {
        results.push(r.await?);
    }

    let sends = written.sends;
    let sent_at: HashMap<i64, u64> = sends.iter().map(|s| (s.seq, s.at)).collect();
    let first_sent = sends.iter().map(|s| s.at).min().unwrap_or(0);
    let mut latencies = Vec::with_capacity(total as usize * subs);
    let mut last_received = first_sent;
    let mut ended = Vec::new();
    for r in &results {
        for &(seq, at) in &r.entries {
            if let Some(&t) = sent_at.get(&seq) {
                latencies.push(at.saturating_sub(t));
                last_received = last_received.max(at);
            }
        }
        if let Some(why) = &r.ended {
            ended.push(why.clone());
        }
    }
    let mut acked: Vec<i64> = sends.iter().map(|s| s.seq).collect();
    acked.sort_unstable();
    let mut rtts: Vec<u64> = sends.iter().map(|s| s.round_trip).collect();
    latencies.sort_unstable();
    rtts.sort_unstable();

    let pairs = total * subs as u64;
    let got = latencies.len() as u64;
    let reached = total as f64 / write_secs;
    println!(
        "streams opened in {connect_secs:.2} s; appends sent in {write_secs:.2} s \
         (append round trip p50 = {}, p99 = {})",
        ms(percentile(&rtts, 50.0)),
        ms(percentile(&rtts, 99.0)),
    );
    println!(
        "writer rate reached = {reached:.0} appends/s of {rate} asked (target {rate}: {}); \
         late sends = {late} of {total} (target 0: {})",
        verdict(reached >= f64::from(rate) * 0.99),
        verdict(late == 0),
    );
    let p99 = percentile(&latencies, 99.0);
    println!(
        "delivery p50 = {}, p99 = {} (target p99 <= {} ms on {}: {}) [send of the append -> \
         entry frame at each subscriber; p99.9 = {}, max = {}; {} of {} (subscriber, row) \
         pairs delivered]",
        ms(percentile(&latencies, 50.0)),
        ms(p99),
        targets.delivery_p99_ms,
        targets.store,
        verdict(p99 as f64 / 1e6 <= targets.delivery_p99_ms && got == pairs),
        ms(percentile(&latencies, 99.9)),
        ms(latencies.last().copied().unwrap_or(0)),
        thousands(got),
        thousands(pairs),
    );
    let window = last_received.saturating_sub(first_sent) as f64 / 1e9;
    let rate_delivered = if window > 0.0 {
        got as f64 / window
    } else {
        0.0
    };
    println!(
        "fan-out throughput = {} frames/s delivered at {subs} subscribers (offered {} frames/s)",
        thousands(rate_delivered.round() as u64),
        thousands(u64::from(rate) * subs as u64),
    );
    if let (Some((r0, c0)), Some((r1, c1))) = (cpu_before, cpu_after) {
        println!(
            "CPU while appending: relay {:.2} cores, bench clients {:.2} cores (machine has {})",
            (r1 - r0) / write_secs,
            (c1 - c0) / write_secs,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        let relay_cpu = r1 - r0;
        if relay_cpu > 0.0 {
            let per_cpu_sec = delivered_while_writing as f64 / relay_cpu;
            let wanted = 2.0 * targets.frames_per_cpu_sec_before;
            println!(
                "frames per relay CPU-second = {} ({} frames while appending / {relay_cpu:.2} \
                 relay CPU-s) (before: {} on {}; target >= 2x = {}: {}, {:.2}x)",
                thousands(per_cpu_sec.round() as u64),
                thousands(delivered_while_writing),
                thousands(targets.frames_per_cpu_sec_before as u64),
                targets.store,
                thousands(wanted as u64),
                verdict(per_cpu_sec >= wanted),
                per_cpu_sec / targets.frames_per_cpu_sec_before,
            );
        }
    }
    report_exactly_once(
        results
            .iter()
            .map(|r| (acked.as_slice(), r.entries.iter().map(|&(seq, _)| seq))),
    );
    if !ended.is_empty() {
        println!(
            "note: the relay ended {} of {subs} streams early (first: {})",
            ended.len(),
            ended[0]
        );
    }
    Ok(())
}
