//! Builds the application (store, hub, routes, bound listener) and runs it
//! until the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;
use crate::http;
use crate::limits::{self, Limits};
use crate::metrics::Metrics;
use crate::secrets;
use crate::server::{self, ConnectionLimits};
use crate::shutdown::Shutdown;
use crate::state::{AppState, Settings, Shared, secs_or_off};
use crate::store::memory::MemoryStore;
use crate::store::postgres::{PgConfig, PgStore};
use crate::store::{Store, StoreError};
use crate::stream::Hub;

/// How long in-flight requests get to finish after the signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connections the kernel queues for `accept` (it caps this at
/// `net.core.somaxconn`). The default of 128 overflows when thousands of
/// streams reconnect at once, and each overflowed connect then waits a
/// second for the client's SYN retry.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket with a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's bind does: a restarted relay can take its port back while
    // the old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("could not open the store: {0}")]
    Store(#[from] StoreError),
    #[error("could not bind the listener: {0}")]
    Bind(#[from] std::io::Error),
}

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.database_url {
        Some(url) => {
            let store = PgStore::connect(&PgConfig {
                url: url.clone(),
                max_connections: config.database_max_connections,
            })
            .await?;
            Ok(Arc::new(store))
        }
        None => {
            tracing::warn!(
                "DATABASE_URL is not set: using the IN-MEMORY store. Nothing is durable: \
                 every vault, session and astation is lost when the relay stops."
            );
            Ok(Arc::new(MemoryStore::new()))
        }
    }
}

/// A built relay, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    state: AppState,
    connection_limits: ConnectionLimits,
}

impl Application {
    /// Builds the relay on its own store.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let store = open_store(&config).await?;
        Self::build_with_store(config, store).await
    }

    /// Builds the relay on a given store (tests share one between builds).
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, StartupError> {
        let admin_token = match &config.admin_token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => {
                let token = secrets::token("adm");
                // Printed once to the terminal, deliberately not through the
                // log pipeline, so it does not end up in collected logs.
                eprintln!(
                    "\nRELAY_ADMIN_TOKEN was not set; this run's admin token is:\n\n    {token}\n\n\
                     Set RELAY_ADMIN_TOKEN to keep one across restarts.\n"
                );
                token
            }
        };
        let shutdown = Shutdown::new();
        let settings = Settings::new(&config, &admin_token);
        let hub = Hub::start(
            store.clone(),
            settings.stream_buffer_frames,
            shutdown.clone(),
        )
        .await;
        let metrics = Metrics::new();
        metrics.spawn_upkeep(shutdown.clone());
        tokio::spawn(crate::idempotency::run_sweeper(
            store.clone(),
            settings.idempotency_ttl,
            shutdown.clone(),
        ));
        let limits = Arc::new(Limits::new(&config).with_metrics(metrics.clone()));
        spawn_housekeeping(limits.clone(), shutdown.clone());
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let state = AppState::new(Shared {
            store,
            settings: Arc::new(settings),
            hub,
            shutdown,
            metrics,
            long_polls: crate::polling::LongPolls::new(config.long_poll_max),
            limits,
            stream_checks: Arc::new(tokio::sync::Semaphore::new(crate::state::check_slots(
                &config, workers,
            ))),
            stream_openings: Arc::new(tokio::sync::Semaphore::new(crate::state::opening_slots(
                &config, workers,
            ))),
        });
        let connection_limits = ConnectionLimits {
            header_timeout: secs_or_off(config.http_header_timeout_secs),
            idle_timeout: secs_or_off(config.http_idle_timeout_secs),
            shutdown_grace: SHUTDOWN_GRACE,
        };
        let web_dir = http::web::locate(config.web_dir.as_deref());
        let router = http::router(state.clone(), web_dir, config.cors_origin.as_deref());
        // Bind before returning so port 0 resolves to a real port.
        let listener = listen(SocketAddr::new(config.bind_addr, config.port))?;
        Ok(Self {
            listener,
            router,
            state,
            connection_limits,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The signal that stops this relay.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown signal, then stops accepting, closes streams
    /// with 1001 and gives in-flight requests and streams [`SHUTDOWN_GRACE`]
    /// to finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, backend = self.state.store.backend(), "vault-relay listening");
        let finished = async {
            server::serve(
                self.listener,
                self.router,
                shutdown.clone(),
                self.connection_limits,
            )
            .await?;
            // Upgraded streams are no longer connections as far as the
            // server knows: wait for each to send its close frame, or the
            // process could exit in the middle of one.
            shutdown.drained().await;
            Ok::<_, std::io::Error>(())
        };
        let deadline = async {
            shutdown.wait().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = finished => result?,
            _ = deadline => tracing::warn!("shutdown grace period over; dropping remaining connections"),
        }
        tracing::info!("vault-relay stopped");
        Ok(())
    }
}

/// Drops stale rate-limit buckets now and then, until the relay stops.
fn spawn_housekeeping(limits: Arc<Limits>, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(limits::HOUSEKEEPING_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = every.tick() => limits.housekeeping(),
            }
        }
    });
}
