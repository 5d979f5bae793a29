//! `vault-relay encryption status` and `set`.

use super::*;
use crate::helpers::{Backend, TestApp};

/// Runs `vault-relay <args>` against the app as the astation.
async fn cli(app: &TestApp, token: &str, args: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--relay-url".to_string(), app.base.clone()]);
    let token = token.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
            .args(args)
            .env("ASTATION_TOKEN", token)
            .env_remove("DATABASE_URL")
            .output()
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encryption_subcommands_show_and_change_the_mode() {
    let app = TestApp::spawn(Backend::Memory).await;
    let (_, token, s) = app.work_session("home").await;
    app.create_vault(&s, "c", "plain summary").await;
    let out = cli(&app, &token, &["encryption", "status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mode:       off"), "{stdout}");
    assert!(
        stdout.contains("1 plaintext, 0 ciphertext, 0 obsolete"),
        "{stdout}"
    );

    let out = cli(
        &app,
        &token,
        &["encryption", "set", "enabling", "--kid", KID],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("kid:        {KID}")));
    assert_eq!(astation_view(&app, &token).await["mode"], "enabling");

    // A refused change fails with the relay's words.
    let out = cli(&app, &token, &["encryption", "set", "on"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid encryption transition enabling -> on: 1 plaintext"),
        "{stderr}"
    );
    let out = cli(&app, "wrong-token", &["encryption", "status"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// `vault-relay watch` says on stderr which encryption mode the vault's
/// work session is in, and when it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_the_encryption_mode_and_its_changes() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let app = TestApp::spawn(Backend::Memory).await;
    let (_, token, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    /// Ends the watch however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .args(["watch", v.as_str(), "--relay-url", app.base.as_str()])
        .env("RELAY_SESSION", &s)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watch");
    let stderr = child.stderr.take().expect("stderr");
    let _running = Running(child);
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut until = async |wanted: &str| loop {
        let line = tokio::time::timeout(crate::helpers::FRAME_WAIT, lines.recv())
            .await
            .expect("a line in time")
            .expect("watch is running");
        if line == wanted {
            return;
        }
    };
    until("-- encryption: off").await;
    move_to(&app, &token, "enabling", Some(KID)).await;
    until(&format!("-- encryption: enabling (kid {KID})")).await;
}
