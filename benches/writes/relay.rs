//! The relay side: the release binary as a child process, on its own
//! database or on its in-memory store (the hop), one client per writer;
//! and the check of its stored rows against the acknowledgements.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::{RELAY_BIN, bench_session, field_str, send_json, wait_until_healthy};
use crate::measure::{Outcome, Window, join_all};
use crate::{ADMIN_TOKEN, Plan, Result};

/// The relay: the release binary on its own database (or on its in-memory
/// store, for the hop), one client per writer, a vault each.
pub(crate) struct RelaySide {
    pub(crate) relay: Relay,
    http: reqwest::Client,
    session: String,
    base: String,
    pub(crate) vaults: Vec<String>,
    body: Value,
}

impl RelaySide {
    pub(crate) async fn setup(url: Option<&str>, writers: usize, text: &str) -> Result<RelaySide> {
        let relay = Relay::start(url).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(writers * 2)
            .build()?;
        let base = format!("http://127.0.0.1:{}", relay.port);
        let session = bench_session(&http, &base, ADMIN_TOKEN).await?;
        let mut vaults = Vec::new();
        for i in 0..writers {
            let v = send_json(
                http.post(format!("{base}/api/vault?id=bench-w{i}"))
                    .header("Authorization", format!("session {session}"))
                    .json(&json!({ "summary": "write benchmark" })),
            )
            .await?;
            vaults.push(field_str(&v, "vault_id")?);
        }
        Ok(RelaySide {
            relay,
            http,
            session,
            base,
            vaults,
            body: json!({ "text": text }),
        })
    }

    pub(crate) async fn round(&self, plan: &Plan) -> Result<(Outcome, Vec<u64>)> {
        let window = Window::new(plan);
        let tasks =
            self.vaults
                .iter()
                .enumerate()
                .map(|(i, vault)| {
                    let url = format!("{}/api/vault/{vault}?id=bench-w{i}", self.base);
                    let auth = format!("session {}", self.session);
                    let body = self.body.clone();
                    let (http, window) = (self.http.clone(), window.clone());
                    tokio::spawn(window.drive(move || {
                        let request = http.post(&url).header("Authorization", &auth).json(&body);
                        async move {
                            let r = send_json(request).await?;
                            r["seq"].as_i64().map(|_| ()).ok_or_else(|| {
                                format!("an append answered without seq: {r}").into()
                            })
                        }
                    }))
                })
                .collect();
        let logs = join_all(tasks).await?;
        Ok(window.outcome(logs))
    }
}

/// Compares each vault's stored rows with the appends acknowledged for it:
/// the same number, numbered e1..eN without gaps.
pub(crate) async fn check_stored(
    url: &str,
    vaults: &[String],
    acknowledged: &[u64],
) -> Result<Option<String>> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    for (vault, &acked) in vaults.iter().zip(acknowledged) {
        let (rows, top): (i64, Option<i64>) =
            sqlx::query_as("select count(*), max(entry_no) from vault_entries where vault_id = $1")
                .bind(vault)
                .fetch_one(&mut conn)
                .await?;
        if rows as u64 != acked || top.unwrap_or(0) != rows {
            return Ok(Some(format!(
                "vault {vault}: {acked} appends acknowledged, {rows} rows stored, highest entry e{}",
                top.unwrap_or(0)
            )));
        }
    }
    Ok(None)
}

/// The release binary as a child process, killed if the benchmark ends
/// without stopping it.
pub(crate) struct Relay {
    child: Child,
    port: u16,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Relay {
    /// Starts the relay on `database_url`, or on its in-memory store.
    async fn start(database_url: Option<&str>) -> Result<Relay> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(RELAY_BIN);
        match database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        let child = command
            .env("PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "error")
            // The benchmark is one client writing as fast as it can: turn
            // the per-session and per-address limits off.
            .env("RATE_LIMIT_WRITES_PER_SEC", "0")
            .env("RATE_LIMIT_AUTH_FAILURES_PER_MIN", "0")
            .env("RATE_LIMIT_PAIRINGS_PER_MIN", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {RELAY_BIN}: {e}"))?;
        let mut relay = Relay { child, port };
        wait_until_healthy(&mut relay.child, &format!("http://127.0.0.1:{port}")).await?;
        Ok(relay)
    }

    /// SIGTERM, then SIGKILL (by dropping) if it is still running 10 s later.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
