//! The `vault-relay` binary as an operator runs it: in-memory default with
//! its warnings, the admin token printed once, health, and SIGTERM.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn the_binary_serves_memory_by_default_and_stops_cleanly_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .env_remove("DATABASE_URL")
        .env_remove("RELAY_ADMIN_TOKEN")
        .env("PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay");
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/health");
    let started = Instant::now();
    let body = loop {
        if let Ok(r) = client.get(&health).send().await {
            break r.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "relay did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["backend"], "memory");
    // The root serves the viewer.
    let page = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("<html"));

    // Pair and mint sessions while the relay logs at debug level; none of
    // the secrets may reach the log.
    let base = format!("http://127.0.0.1:{port}");
    let pending: serde_json::Value = client
        .post(format!("{base}/api/sessions"))
        .json(&serde_json::json!({"hostname": "h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secrets_seen = [
        pending["id"].as_str().unwrap().to_string(),
        pending["otp"].as_str().unwrap().to_string(),
    ];
    let status = client
        .get(format!(
            "{base}/api/sessions/{}/status?id=c",
            secrets_seen[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(8),
            "relay did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit code 0 on SIGTERM, got {status}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("IN-MEMORY"),
        "warns that nothing is durable: {stderr}"
    );
    let token_line = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("adm-"))
        .expect("the generated admin token is printed");
    assert_eq!(
        stderr.matches(token_line).count(),
        1,
        "printed once, never logged again"
    );
}
