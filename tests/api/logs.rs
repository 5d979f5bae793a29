//! `LOG_FORMAT`: the binary's log lines as text (the default) or as one
//! JSON object per line.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::free_port;

/// Starts the binary on the in-memory store with `LOG_FORMAT` set (or not),
/// waits for /health, stops it with SIGTERM and returns
/// its stderr.
async fn run_and_collect_logs(log_format: Option<&str>) -> String {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_vault-relay"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("LOG_FORMAT")
        .env("RELAY_ADMIN_TOKEN", "logs-test-admin-token")
        .env("PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(format) = log_format {
        command.env("LOG_FORMAT", format);
    }
    let mut child = command.spawn().expect("start the relay");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "relay did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut child).await;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    stderr
}

pub async fn stop(child: &mut Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let stopping = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            stopping.elapsed() < Duration::from_secs(8),
            "relay did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let logs = run_and_collect_logs(Some("json")).await;
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "start, in-memory warning, stop: {logs}");
    let mut messages = Vec::new();
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\nall logs:\n{logs}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
        messages.push(
            object["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert!(
        messages.iter().any(|m| m.contains("IN-MEMORY")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "vault-relay listening"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "vault-relay stopped"),
        "{messages:?}"
    );
}

#[tokio::test]
async fn logs_are_human_text_by_default() {
    let logs = run_and_collect_logs(None).await;
    let listening = logs
        .lines()
        .find(|l| l.contains("vault-relay listening"))
        .unwrap_or_else(|| panic!("no start line: {logs}"));
    assert!(!listening.trim_start().starts_with('{'), "{listening}");
    assert!(listening.contains("INFO"), "{listening}");
}
