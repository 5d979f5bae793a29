//! Gives the heap's free pages back to the system after bursts of
//! connections.
//!
//! A reconnect storm allocates the buffers of thousands of handshakes at
//! once and frees them again in between the sockets that stay open. glibc's
//! allocator keeps those freed pages resident (it returns memory only from
//! the top of each heap), so without help the process stays as large as its
//! busiest second. `malloc_trim` returns every whole free page; it runs off
//! the async workers, once a burst has passed, and never on a quiet relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Connections opened and streams ended since the last look.
static CHURN: AtomicU64 = AtomicU64::new(0);
/// How often the churn is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Churn per look that counts as a burst.
const BURST: u64 = 256;

/// Counts a connection opened or a stream ended.
pub fn churned() {
    CHURN.fetch_add(1, Ordering::Relaxed);
}

/// Trims the heap once each burst of churn has died down, until shutdown.
pub async fn trim_after_bursts(shutdown: Shutdown) {
    let mut look = tokio::time::interval(LOOK_EVERY);
    let mut burst_seen = false;
    loop {
        tokio::select! {
            _ = look.tick() => {}
            _ = shutdown.wait() => return,
        }
        let churn = CHURN.swap(0, Ordering::Relaxed);
        if churn >= BURST {
            burst_seen = true;
        } else if burst_seen {
            burst_seen = false;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and only releases memory that
    // glibc's allocator holds free; it is safe to call from any thread.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
