//! The stdio bridge (`vault-relay mcp`) as an agent starts it, and an
//! independent client (the Python MCP SDK) against `/mcp`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::connect_over;
use crate::helpers::{Backend, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_bridge_serves_the_relay_to_an_agent() {
    use std::os::fd::OwnedFd;

    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, s) = app.work_session("home").await;
    let (_, _, away) = app.work_session("away").await;
    let theirs = app.create_vault(&away, "other", "not mine").await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .arg("mcp")
        .env("RELAY_URL", &app.base)
        .env("RELAY_SESSION", &s)
        .env("RELAY_CLIENT_ID", "stdio-agent")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start vault-relay mcp");
    let to_bridge = tokio::fs::File::from_std(std::fs::File::from(OwnedFd::from(
        child.stdin.take().unwrap(),
    )));
    let from_bridge = tokio::fs::File::from_std(std::fs::File::from(OwnedFd::from(
        child.stdout.take().unwrap(),
    )));
    let mut mcp = connect_over((from_bridge, to_bridge)).await;

    let tools = mcp.service.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.len(), 5);
    assert!(
        tools
            .iter()
            .all(|t| t.input_schema.contains_key("properties") || t.name == "vault_list")
    );
    let v = mcp
        .ok("vault_create", json!({"summary": "over stdio"}))
        .await["vault_id"]
        .as_str()
        .unwrap()
        .to_string();
    mcp.subscribe(&v).await;
    mcp.ok("vault_write", json!({"vault_id": v, "text": "piped"}))
        .await;
    assert_eq!(mcp.next_update().await, format!("vault://{v}"));
    app.write(&v, &s, "atem-rest", "from rest", None).await;
    assert_eq!(mcp.next_update().await, format!("vault://{v}"));
    let over_stdio = mcp
        .ok("vault_read", json!({"vault_id": v, "history": true}))
        .await;
    let over_rest = app.read(&v, &s, "stdio-agent", "history=true").await;
    assert_eq!(over_stdio, json!({ "entries": over_rest }));
    assert_eq!(over_rest[0]["writer_id"], "stdio-agent");
    let (status, words) = mcp.refused("vault_read", json!({"vault_id": theirs})).await;
    assert_eq!(status, 403);
    assert!(words.contains("another work session"), "{words}");
    let listed = mcp
        .service
        .list_all_resources()
        .await
        .expect("resources/list");
    assert_eq!(listed.len(), 1);

    // Closing stdin ends the bridge.
    drop(mcp);
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_bridge_says_why_it_cannot_connect() {
    let app = TestApp::spawn(Backend::Memory).await;
    let out = tokio::task::spawn_blocking({
        let base = app.base.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
                .arg("mcp")
                .env("RELAY_URL", base)
                .env("RELAY_SESSION", "not-a-session")
                .env("RELAY_CLIENT_ID", "stdio-agent")
                .env("RUST_LOG", "off")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run vault-relay mcp")
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing but MCP on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not open an MCP session"), "{stderr}");
}

/// The interpreter for the Python SDK client: `MCP_PYTHON` (./scripts/test
/// sets it when it could install the `mcp` package), else `python3` if it
/// has the package.
fn python_with_mcp() -> Option<String> {
    let candidates = std::env::var("MCP_PYTHON")
        .into_iter()
        .chain(["python3".to_string()]);
    candidates.into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import mcp.client.streamable_http"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_client_agrees() {
    let Some(python) = python_with_mcp() else {
        eprintln!(
            "SKIPPED: no Python with the `mcp` package (MCP_PYTHON unset); ./scripts/test installs one"
        );
        return;
    };
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, _, s) = app.work_session("home").await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking({
            let base = app.base.clone();
            let s = s.clone();
            move || {
                std::process::Command::new(python)
                    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py"))
                    .env("RELAY_URL", base)
                    .env("RELAY_SESSION", s)
                    .env("RELAY_CLIENT_ID", "py-agent")
                    .output()
                    .expect("run the Python client")
            }
        }),
    )
    .await
    .expect("the Python client finishes in time")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let v = report["vault_id"].as_str().expect("vault_id").to_string();
    assert!(
        report["protocol_version"].as_str().unwrap() >= "2025-06-18",
        "{report}"
    );
    assert_eq!(
        report["tools"],
        json!([
            "vault_create",
            "vault_list",
            "vault_read",
            "vault_set_summary",
            "vault_write"
        ])
    );
    assert_eq!(report["write"]["entry_no"], 1);
    let uri = format!("vault://{v}");
    assert_eq!(report["updates"], json!([uri, uri]), "one update per write");
    assert_eq!(report["set_summary"], json!({}));
    let (_, rest_list) = app
        .vault_call(Method::GET, "/api/vault", &s, "py-agent", None)
        .await;
    assert_eq!(report["list"], json!({ "vaults": rest_list }));
    let rest_rows = app.read(&v, &s, "py-agent", "").await;
    assert_eq!(report["read"], json!({ "entries": rest_rows }));
    assert_eq!(
        report["read_text"],
        "e1 v1 [py-agent] hello from python\ne2 v1 [rest-writer] hello over rest"
    );
    assert_eq!(report["refused"]["is_error"], true);
    assert_eq!(report["refused"]["text"], "no such vault");
    assert_eq!(
        report["resource"],
        format!(
            "vault {v}: renamed\ne1 v1 [py-agent] hello from python\ne2 v1 [rest-writer] hello over rest"
        )
    );
}
