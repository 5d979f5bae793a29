//! One shutdown signal, shared by the server, the streams and the tasks,
//! and a count of the work that must finish before the process exits.

use tokio::sync::watch;

/// A cloneable shutdown signal: trigger it once, everyone waiting wakes.
///
/// It also counts live [`TaskGuard`]s: work the server does not track by
/// itself (an upgraded WebSocket outlives its HTTP connection as far as the
/// server knows) holds one, so shutdown can wait for it to say goodbye.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    tasks: watch::Sender<usize>,
}

/// Held by a piece of work that must end before the process exits; dropping
/// it says the work is done.
#[derive(Debug)]
pub struct TaskGuard {
    tasks: watch::Sender<usize>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.tasks.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
            tasks: watch::Sender::new(0),
        }
    }

    /// Counts one piece of work until the guard is dropped.
    pub fn track(&self) -> TaskGuard {
        self.tasks.send_modify(|n| *n += 1);
        TaskGuard {
            tasks: self.tasks.clone(),
        }
    }

    /// Resolves once no [`TaskGuard`] is alive (at once if none is).
    pub async fn drained(&self) {
        let mut rx = self.tasks.subscribe();
        // The sender lives in self, so wait_for cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves when the signal fires (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in self, so wait_for cannot fail.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn os_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
