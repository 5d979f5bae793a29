//! The relay under test: in this process on a runtime of its own, or the
//! release binary as a child process; starting it, stopping it and reading
//! its resident memory.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vault_relay::config::Config;
use vault_relay::shutdown::Shutdown;
use vault_relay::startup::Application;

use crate::common::{RELAY_BIN, wait_until_healthy};
use crate::{ADMIN_TOKEN, Result};

pub(crate) enum RelayProcess {
    InProcess {
        shutdown: Shutdown,
        thread: std::thread::JoinHandle<()>,
    },
    Child(ChildGuard),
}

/// A relay child process, killed if the benchmark ends without stopping it.
pub(crate) struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    pub(crate) process: RelayProcess,
}

impl Relay {
    /// The relay in this process, on a runtime of its own so its scheduling
    /// stays apart from the clients'.
    pub(crate) fn in_process(database_url: Option<String>) -> Result<Relay> {
        let mut config = Config::for_tests();
        config.admin_token = Some(ADMIN_TOKEN.to_string());
        config.database_url = database_url;
        // One writer session appends faster than the default write limit.
        config.rate_limit_writes_per_sec = 0;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("relay")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let app = match Application::build(config).await {
                        Ok(app) => app,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let ready = app
                        .local_addr()
                        .map(|addr| (addr, app.shutdown_handle()))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(ready);
                    if let Err(e) = app.run_until_stopped().await {
                        eprintln!("error: the in-process relay stopped: {e}");
                    }
                });
            })?;
        let (addr, shutdown) = rx
            .recv()
            .map_err(|_| "the in-process relay did not start")?
            .map_err(|e| format!("the in-process relay did not start: {e}"))?;
        Ok(Relay {
            addr,
            process: RelayProcess::InProcess { shutdown, thread },
        })
    }

    /// The release binary as a child process.
    pub(crate) async fn child(database_url: Option<String>) -> Result<Relay> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(RELAY_BIN);
        cmd.env("PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "error")
            // One writer session appends faster than the default write limit.
            .env("RATE_LIMIT_WRITES_PER_SEC", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {RELAY_BIN}: {e}"))?;
        let mut guard = ChildGuard(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until_healthy(&mut guard.0, &format!("http://{addr}")).await?;
        Ok(Relay {
            addr,
            process: RelayProcess::Child(guard),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        match &self.process {
            RelayProcess::InProcess { .. } => std::process::id(),
            RelayProcess::Child(c) => c.0.id(),
        }
    }

    /// The relay's resident set, in KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
    }

    /// Stops the relay: the shutdown signal in process, SIGTERM for a child
    /// (SIGKILL if it is still running 10 s later).
    pub(crate) fn stop(self) {
        match self.process {
            RelayProcess::InProcess { shutdown, thread } => {
                shutdown.trigger();
                let _ = thread.join();
            }
            RelayProcess::Child(mut child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.0.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.0.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Dropping the guard kills it.
            }
        }
    }
}
