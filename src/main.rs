//! The `vault-relay` binary: serve, or run an operator subcommand.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vault_relay::config::{Cli, LogFormat};
use vault_relay::startup::Application;
use vault_relay::{cli, shutdown};

/// The log filter without `RUST_LOG`. The MCP library reports a client's
/// protocol mistakes (a refused tool call, an unknown method) as warnings,
/// and names MCP sessions at info; the relay logs client mistakes at debug
/// at most, so the library's own lines show only from `error` up. Postgres's
/// notices (a migration's "already exists, skipping") show from `warn` up.
const DEFAULT_LOG_FILTER: &str = "info,rmcp=error,sqlx::postgres::notice=warn";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr);
    match args.config.log_format {
        LogFormat::Text => logs.init(),
        // One object per line, with the span's fields (route, method) on it.
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    if let Some(command) = args.command {
        return cli::run(command, &args.config).await;
    }
    let app = match Application::build(args.config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "vault-relay could not start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let stop = app.shutdown_handle();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        tracing::info!("shutting down");
        stop.trigger();
    });
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server error");
            std::process::ExitCode::FAILURE
        }
    }
}
