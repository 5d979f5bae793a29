//! Figure 3: replay rate for a subscriber far behind: the vault is filled
//! over HTTP, then one stream resumes from `since=0` up to `caught_up`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::client::{Api, Frame, next_text};
use crate::common::thousands;
use crate::{BoxError, FILL_CONCURRENCY, Result};

pub(crate) async fn replay(api: &Arc<Api>, rows: u64, text: &str) -> Result<()> {
    println!("[3] replay: a subscriber resuming {rows} rows behind (since=0)");
    let vault = api.create_vault().await?;
    let next = Arc::new(AtomicU64::new(0));
    let head = Arc::new(AtomicU64::new(0));
    let filling = Instant::now();
    let mut workers = Vec::with_capacity(FILL_CONCURRENCY);
    for _ in 0..FILL_CONCURRENCY {
        let api = api.clone();
        let vault = vault.clone();
        let text = text.to_string();
        let next = next.clone();
        let head = head.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < rows {
                let seq = api.append(&vault, &text).await?;
                head.fetch_max(seq as u64, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let fill_secs = filling.elapsed().as_secs_f64();
    let head = head.load(Ordering::Relaxed) as i64;

    let started = Instant::now();
    let mut ws = api.connect(&vault, "replay", Some(0), 64 * 1024).await?;
    let mut entries = 0u64;
    let mut last_seq = 0i64;
    let caught_up = loop {
        let t = next_text(&mut ws).await?;
        let frame: Frame = serde_json::from_str(&t)?;
        match frame.kind {
            "entry" => {
                let seq = frame.seq.ok_or("an entry frame without seq")?;
                if seq <= last_seq {
                    return Err(format!("replay out of order: seq {seq} after {last_seq}").into());
                }
                last_seq = seq;
                entries += 1;
            }
            "caught_up" => break frame.seq.ok_or("a caught_up frame without seq")?,
            _ => {}
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    if entries != rows || caught_up != head {
        return Err(format!(
            "replay returned {entries} rows up to seq {caught_up}; expected {rows} up to {head}"
        )
        .into());
    }
    println!(
        "filled the vault in {fill_secs:.2} s ({} appends/s over HTTP, {FILL_CONCURRENCY} in flight)",
        thousands((rows as f64 / fill_secs).round() as u64),
    );
    println!(
        "replay rate = {} rows/s ({} rows in {secs:.3} s, connect to caught_up) \
         (target > 50,000 rows/s)",
        thousands((rows as f64 / secs).round() as u64),
        thousands(rows),
    );
    Ok(())
}
