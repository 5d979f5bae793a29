//! Every setting of the relay. Each one is a flag and an environment
//! variable; the README's configuration table lists them all.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The command line: serve by default, or run an operator subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "vault-relay",
    version,
    about = "Shared, live vaults for teams of coding agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// Operator subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, list and remove astations directly in DATABASE_URL.
    #[command(subcommand)]
    Astation(AstationCommand),
    /// Act on sessions as an astation (token from ASTATION_TOKEN).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Print a vault's entries as they arrive, reconnecting on its own.
    Watch(WatchArgs),
    /// Serve MCP on stdin/stdout, forwarding to a relay's /mcp (for agents
    /// that only start stdio MCP servers).
    Mcp(McpArgs),
    /// Show or change the work session's end-to-end encryption mode, as an
    /// astation (token from ASTATION_TOKEN).
    #[command(subcommand)]
    Encryption(EncryptionCommand),
    /// Print a vault's entries (current view, or history) once.
    Read(ReadArgs),
    /// Append an entry (or edit one) from an argument or stdin.
    Write(WriteArgs),
}

/// `vault-relay encryption ...`
#[derive(Debug, Subcommand)]
pub enum EncryptionCommand {
    /// Print the mode, the kid and how many fields are plaintext,
    /// ciphertext or obsolete.
    Status {
        #[command(flatten)]
        relay: RelayClientArgs,
    },
    /// Change the mode: off, enabling (with --kid), on or disabling.
    Set {
        mode: String,
        /// The key id (8 lowercase hex characters) for enabling.
        #[arg(long)]
        kid: Option<String>,
        #[command(flatten)]
        relay: RelayClientArgs,
    },
}

/// `vault-relay astation ...`
#[derive(Debug, Subcommand)]
pub enum AstationCommand {
    /// Register an astation and print its token (shown once).
    Add { name: String },
    /// List registered astations.
    List,
    /// Remove an astation and revoke its sessions.
    Remove { astation_id: String },
}

/// `vault-relay session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Grant a pending session with the one-time code it shows.
    Grant {
        session_id: String,
        code: String,
        #[command(flatten)]
        relay: RelayClientArgs,
    },
}

/// How a client subcommand reaches a running relay.
#[derive(Debug, Args)]
pub struct RelayClientArgs {
    /// Base URL of the relay.
    #[arg(long, env = "RELAY_URL", default_value = "http://127.0.0.1:3000")]
    pub relay_url: String,
    /// The astation token that acts.
    #[arg(long, env = "ASTATION_TOKEN", hide_env_values = true)]
    pub astation_token: String,
}

/// `vault-relay watch ...`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The vault to watch.
    pub vault_id: String,
    /// Base URL of the relay.
    #[arg(long, env = "RELAY_URL", default_value = "http://127.0.0.1:3000")]
    pub relay_url: String,
    /// Session id to authenticate with.
    #[arg(long, env = "RELAY_SESSION", hide_env_values = true)]
    pub session: String,
    /// This client's id (`?id=`).
    #[arg(long, env = "RELAY_CLIENT_ID", default_value = "watch")]
    pub client_id: String,
    /// Display name shown to other watchers.
    #[arg(long, env = "ATEM_ID")]
    pub atem_id: Option<String>,
    /// Start after this seq instead of at the head.
    #[arg(long)]
    pub since: Option<i64>,
    /// How to follow: `auto` (the WebSocket stream, falling back to long
    /// polling when the upgrade is refused), `websocket` or `poll`.
    #[arg(long, env = "WATCH_TRANSPORT", value_enum, default_value_t = WatchTransport::Auto)]
    pub transport: WatchTransport,
}

/// How `watch` follows a vault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchTransport {
    /// The WebSocket stream; long polling where the upgrade is refused.
    #[default]
    Auto,
    /// The WebSocket stream only.
    Websocket,
    /// Long polling only (`GET ...?since=&wait=`).
    Poll,
}

/// How `read` and `write` reach a vault on a running relay.
#[derive(Clone, Debug, Args)]
pub struct VaultClientArgs {
    /// Base URL of the relay.
    #[arg(long, env = "RELAY_URL", default_value = "http://127.0.0.1:3000")]
    pub relay_url: String,
    /// Session id to authenticate with.
    #[arg(long, env = "RELAY_SESSION", hide_env_values = true)]
    pub session: String,
    /// This client's id (`?id=`): the writer recorded on entries.
    #[arg(long, env = "RELAY_CLIENT_ID", default_value = "cli")]
    pub client_id: String,
}

/// `vault-relay read ...`
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The vault to read.
    pub vault_id: String,
    /// Only rows after this seq.
    #[arg(long)]
    pub since: Option<i64>,
    /// Every row by seq, instead of the newest version of each entry.
    #[arg(long)]
    pub history: bool,
    /// At most this many rows (1 to 1000; with --history).
    #[arg(long, requires = "history")]
    pub limit: Option<i64>,
    /// Print the relay's JSON answer instead of one line per entry.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub relay: VaultClientArgs,
}

/// `vault-relay write ...`
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The vault to write to.
    pub vault_id: String,
    /// The entry's text, or `-` to read it from stdin (one trailing newline
    /// is dropped).
    pub text: String,
    /// Write a new version of this entry instead of appending.
    #[arg(long)]
    pub entry_id: Option<i64>,
    /// The Idempotency-Key sent with every attempt of this write; a fresh
    /// random one when not given, so the command's own retries never write
    /// twice. Pass one to make retries of the whole command safe too.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub relay: VaultClientArgs,
}

/// `vault-relay mcp`
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Base URL of the relay.
    #[arg(long, env = "RELAY_URL", default_value = "http://127.0.0.1:3000")]
    pub relay_url: String,
    /// Session id to authenticate with.
    #[arg(long, env = "RELAY_SESSION", hide_env_values = true)]
    pub session: String,
    /// This client's id (`?id=`): the writer recorded on its entries.
    #[arg(long, env = "RELAY_CLIENT_ID")]
    pub client_id: String,
}

/// Serving configuration.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,
    /// Postgres URL; unset means the in-memory store (nothing durable).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Largest Postgres pool, the LISTEN connection included (so at least
    /// 2: one for it and one for everything else).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub database_max_connections: u32,
    /// Bearer token for /api/admin; generated and printed once when unset.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Origins allowed to call the API from another site's pages,
    /// comma-separated (e.g. https://dash.example.com); unset allows none.
    #[arg(long, env = "CORS_ORIGIN")]
    pub cors_origin: Option<String>,
    /// The relay's public URL, used to build read-only links.
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Largest entry text (and summary), in bytes.
    #[arg(long, env = "MAX_ENTRY_BYTES", default_value_t = 256 * 1024)]
    pub max_entry_bytes: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a pending pairing waits for its grant.
    #[arg(long, env = "PAIRING_TTL_SECS", default_value_t = 300)]
    pub pairing_ttl_secs: u64,
    /// Directory of the browser viewer's files; found on its own when unset.
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Seconds between pings on an idle stream (at least 1).
    #[arg(long, env = "STREAM_PING_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_ping_secs: u64,
    /// Frames buffered per vault and process (at least 16); a subscriber
    /// that falls further behind catches up from the store.
    #[arg(long, env = "STREAM_BUFFER_FRAMES", default_value_t = 256,
          value_parser = at_least::<16>)]
    pub stream_buffer_frames: usize,
    /// Milliseconds a single frame may take to reach a client before the
    /// client is treated as stuck and closed with code 4000 (at least 100).
    #[arg(long, env = "STREAM_SEND_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub stream_send_timeout_ms: u64,
    /// Seconds a read-only link lives unless the request says otherwise
    /// (1 to 90 days' worth, the range a request may ask for).
    #[arg(long, env = "LINK_TTL_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..=crate::http::links::MAX_LINK_TTL_SECS))]
    pub link_ttl_secs: u64,
    /// Serve `/metrics` without the admin token (for a scraper on a private
    /// network that cannot send one).
    #[arg(long, env = "METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Log lines as human-readable `text`, or `json` (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds an Idempotency-Key is remembered (then swept; at least 1).
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl_secs: u64,
    /// Long polls (`wait=`) this process holds at once; one more is refused
    /// with 503 and Retry-After (0 refuses every long poll that would wait).
    #[arg(long, env = "LONG_POLL_MAX", default_value_t = 1024)]
    pub long_poll_max: usize,
    /// Largest request body of the encryption rewrite route
    /// (`POST /api/vault/{id}/encryption`), in bytes: it carries a whole
    /// vault's rows.
    #[arg(long, env = "MAX_REWRITE_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_rewrite_body_bytes: usize,
    /// Stream opens in progress at once, from their checks to the end of
    /// their greeting (hello, presence, mode; not the replay); more wait
    /// their turn. 0: 16 per worker thread.
    #[arg(long, env = "STREAM_MAX_OPENING", default_value_t = 0)]
    pub stream_max_opening: usize,
    /// Stream opens running their credential and vault checks at once,
    /// within their turns; more wait. 0: 2 per worker thread on Postgres
    /// (never more than the pool but three, and at least 1), no bound in
    /// memory.
    #[arg(long, env = "STREAM_MAX_CHECKING", default_value_t = 0)]
    pub stream_max_checking: usize,
    /// Frames per second a stream's client may send (pings included)
    /// before it is closed with 1008; 0 turns the limit off.
    #[arg(long, env = "STREAM_MAX_CLIENT_FRAMES_PER_SEC", default_value_t = 50)]
    pub stream_max_client_frames_per_sec: u32,
    /// Seconds a request's headers may take to arrive, counted from the
    /// connection opening or the previous response on it (0: no limit).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Seconds a connection may sit with nothing read or written, between
    /// requests or with a response the client does not read (0: no limit).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub http_idle_timeout_secs: u64,
    /// Seconds a request body may take to arrive after its headers; later
    /// is 408 (0: no limit).
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,
    /// Requests refused for an unknown or wrong secret, per client address
    /// and minute, before every credential from it gets 429 (0: off).
    #[arg(long, env = "RATE_LIMIT_AUTH_FAILURES_PER_MIN", default_value_t = 30)]
    pub rate_limit_auth_failures_per_min: u32,
    /// Unauthenticated pairing requests per client address and minute (0: off).
    #[arg(long, env = "RATE_LIMIT_PAIRINGS_PER_MIN", default_value_t = 30)]
    pub rate_limit_pairings_per_min: u32,
    /// Content writes, summary changes and rewrites per session and second
    /// (0: off).
    #[arg(long, env = "RATE_LIMIT_WRITES_PER_SEC", default_value_t = 100)]
    pub rate_limit_writes_per_sec: u32,
    /// Take the client address from the first `X-Forwarded-For` entry (only
    /// behind a proxy that sets it).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,
}

/// A count of at least `MIN` (clap's ranges are for integers of fixed
/// width only).
fn at_least<const MIN: usize>(text: &str) -> Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|e| format!("`{text}` is not a whole number: {e}"))?;
    if n < MIN {
        return Err(format!("{n} is below the least allowed, {MIN}"));
    }
    Ok(n)
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Defaults for tests and embedding: port 0 on loopback, in-memory store.
    pub fn for_tests() -> Self {
        let mut cfg = Cli::parse_from(["vault-relay"]).config;
        cfg.port = 0;
        cfg.bind_addr = IpAddr::from([127, 0, 0, 1]);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::Parser;

    /// The error clap gives for `--flag value`, or None when it is accepted.
    fn refusal(flag: &str, value: &str) -> Option<String> {
        Cli::try_parse_from(["vault-relay", flag, value])
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn settings_below_their_floor_are_refused_at_start_and_the_floor_is_accepted() {
        let floors = [
            ("--database-max-connections", "1", "2"),
            ("--stream-ping-secs", "0", "1"),
            ("--stream-buffer-frames", "15", "16"),
            ("--stream-send-timeout-ms", "99", "100"),
            ("--link-ttl-secs", "0", "1"),
            ("--idempotency-ttl-secs", "0", "1"),
        ];
        for (flag, below, floor) in floors {
            let error =
                refusal(flag, below).unwrap_or_else(|| panic!("{flag} {below} was accepted"));
            assert!(error.contains(flag), "{flag} {below}: {error}");
            assert!(error.contains(below), "{flag} {below}: {error}");
            assert_eq!(refusal(flag, floor), None, "{flag} {floor}");
        }
    }

    #[test]
    fn a_default_link_lifetime_beyond_what_a_request_may_ask_is_refused() {
        let max = crate::http::links::MAX_LINK_TTL_SECS;
        assert_eq!(refusal("--link-ttl-secs", &max.to_string()), None);
        let error = refusal("--link-ttl-secs", &(max + 1).to_string()).expect("refused");
        assert!(error.contains("--link-ttl-secs"), "{error}");
        assert!(error.contains(&(max + 1).to_string()), "{error}");
    }

    #[test]
    fn a_count_that_is_not_a_number_says_so() {
        let error = refusal("--stream-buffer-frames", "many").expect("refused");
        assert!(error.contains("`many` is not a whole number"), "{error}");
    }
}
