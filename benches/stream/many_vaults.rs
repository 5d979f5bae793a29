//! Figure 4: many vaults, a few subscribers each: delivery latency while the
//! appends are spread over all of them, beside the appends' own round trip
//! (a row goes out once committed, so a slow commit is a slow delivery).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Api, entry_seq, open_reporting};
use crate::common::{ms, percentile, thousands};
use crate::system::nanos_since;
use crate::writer::paced_appends;
use crate::{CONNECT_CONCURRENCY, FILL_CONCURRENCY, Plan, Result, Targets, report_exactly_once};

pub(crate) async fn many_vaults(
    api: &Arc<Api>,
    plan: &Plan,
    text: &str,
    targets: &Targets,
) -> Result<()> {
    let vault_count = plan.many_vaults;
    let per_vault = plan.many_subscribers_per_vault;
    let rate = plan.many_appends_per_sec;
    let secs = plan.many_secs;
    let total = u64::from(rate) * secs;
    let subs = vault_count * per_vault;
    println!(
        "[4] many vaults: {vault_count} vaults x {per_vault} subscribers ({subs} streams), \
         {rate} appends/s spread over them for {secs} s ({total} appends); relay is a child process"
    );
    let mut vaults = Vec::with_capacity(vault_count);
    {
        let permits = Arc::new(Semaphore::new(FILL_CONCURRENCY));
        let mut creating = Vec::with_capacity(vault_count);
        for _ in 0..vault_count {
            let api = api.clone();
            let permits = permits.clone();
            creating.push(tokio::spawn(async move {
                let _permit = permits.acquire().await?;
                api.create_vault().await
            }));
        }
        for c in creating {
            vaults.push(c.await??);
        }
    }
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(subs);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut readers = Vec::with_capacity(subs);
    for i in 0..subs {
        let api = api.clone();
        let vault = vaults[i % vault_count].clone();
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let permits = permits.clone();
        readers.push(tokio::spawn(async move {
            let mut entries: Vec<(i64, u64)> = Vec::new();
            let Some(mut ws) =
                open_reporting(&api, &vault, &format!("many-{i}"), Some(&permits), ready).await
            else {
                return entries;
            };
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let at = nanos_since(base);
                        if let Some(seq) = entry_seq(&t) {
                            entries.push((seq, at));
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
            let _ = ws.close(None).await;
            entries
        }));
    }
    drop(ready_tx);
    for _ in 0..subs {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("opening a stream failed: {e}").into()),
            None => return Err("the subscribers stopped before connecting".into()),
        }
    }
    // The join presence frames settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let written = paced_appends(api, vaults.clone(), text, rate, total, base).await?;
    let write_secs = written.secs;
    let expected = total * per_vault as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let sends = written.sends;
    let sent_at: HashMap<i64, u64> = sends.iter().map(|s| (s.seq, s.at)).collect();
    let mut acked: Vec<Vec<i64>> = vec![Vec::new(); vault_count];
    for s in &sends {
        acked[s.vault].push(s.seq);
    }
    let mut rtts: Vec<u64> = sends.iter().map(|s| s.round_trip).collect();
    rtts.sort_unstable();
    for rows in &mut acked {
        rows.sort_unstable();
    }
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut received = Vec::with_capacity(subs);
    for r in readers {
        let entries = r.await?;
        for &(seq, at) in &entries {
            if let Some(&t) = sent_at.get(&seq) {
                latencies.push(at.saturating_sub(t));
            }
        }
        received.push(entries);
    }
    latencies.sort_unstable();
    let before = |v: f64| {
        if v.is_nan() {
            "not measured".to_string()
        } else {
            format!("{v} ms")
        }
    };
    println!(
        "appends sent in {write_secs:.2} s ({:.0}/s of {rate} asked; append round trip \
         p50 = {}, p99 = {})",
        total as f64 / write_secs,
        ms(percentile(&rtts, 50.0)),
        ms(percentile(&rtts, 99.0)),
    );
    println!(
        "delivery p50 = {}, p99 = {} (before on {}: p50 {}, p99 {}) [p99.9 = {}, max = {}; \
         {} of {} (subscriber, row) pairs delivered]",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        targets.store,
        before(targets.many_p50_ms_before),
        before(targets.many_p99_ms_before),
        ms(percentile(&latencies, 99.9)),
        ms(latencies.last().copied().unwrap_or(0)),
        thousands(latencies.len() as u64),
        thousands(expected),
    );
    report_exactly_once(received.iter().enumerate().map(|(i, entries)| {
        (
            acked[i % vault_count].as_slice(),
            entries.iter().map(|&(seq, _)| seq),
        )
    }));
    Ok(())
}
