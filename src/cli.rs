//! Operator subcommands: manage astations in the database, grant a pairing
//! as an astation, and watch, read and write a vault from a terminal
//! ([`client`] holds the plain-HTTP ones).

pub mod client;

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::{
    AstationCommand, Command, Config, EncryptionCommand, RelayClientArgs, SessionCommand,
    WatchArgs, WatchTransport,
};
use crate::pairing;
use crate::startup::open_store;
use crate::stream::frames::CLOSE_REVOKED;

/// Runs a subcommand; its exit code is the process's.
pub async fn run(command: Command, config: &Config) -> ExitCode {
    let result = match command {
        Command::Astation(cmd) => astation(cmd, config).await,
        Command::Session(SessionCommand::Grant {
            session_id,
            code,
            relay,
        }) => grant(&session_id, &code, &relay).await,
        Command::Watch(args) => watch(args).await,
        Command::Mcp(args) => crate::mcp::bridge::run(args).await,
        Command::Encryption(cmd) => encryption(cmd).await,
        Command::Read(args) => client::read(args).await,
        Command::Write(args) => client::write(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn astation(cmd: AstationCommand, config: &Config) -> Result<(), String> {
    if config.database_url.is_none() {
        return Err(
            "DATABASE_URL is not set. The in-memory store lives inside a running relay; \
                    use its admin API (POST /api/admin/astations) instead."
                .into(),
        );
    }
    let store = open_store(config).await.map_err(|e| e.to_string())?;
    match cmd {
        AstationCommand::Add { name } => {
            let (a, token) = pairing::register_astation(store.as_ref(), &name)
                .await
                .map_err(|e| e.to_string())?;
            println!("astation_id: {}", a.astation_id);
            println!("token:       {token}");
            println!("(the token is shown only now; keep it safe)");
        }
        AstationCommand::List => {
            let all = store.list_astations().await.map_err(|e| e.to_string())?;
            if all.is_empty() {
                println!("no astations");
            }
            for a in all {
                println!(
                    "{}\t{}\t{}",
                    a.astation_id,
                    a.created_at.to_rfc3339(),
                    a.name
                );
            }
        }
        AstationCommand::Remove { astation_id } => {
            store
                .delete_astation(&astation_id)
                .await
                .map_err(|e| e.to_string())?;
            println!("removed {astation_id}; its sessions are revoked");
        }
    }
    Ok(())
}

async fn grant(session_id: &str, code: &str, relay: &RelayClientArgs) -> Result<(), String> {
    let url = format!(
        "{}/api/sessions/{session_id}/grant",
        relay.relay_url.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(&relay.astation_token)
        .json(&serde_json::json!({ "otp": code }))
        .send()
        .await
        .map_err(|e| format!("could not reach the relay: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        println!(
            "granted; the session belongs to {}",
            body["astation_id"].as_str().unwrap_or("?")
        );
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("no details")
        ))
    }
}

async fn encryption(cmd: EncryptionCommand) -> Result<(), String> {
    let (relay, change) = match &cmd {
        EncryptionCommand::Status { relay } => (relay, None),
        EncryptionCommand::Set { mode, kid, relay } => {
            (relay, Some(serde_json::json!({ "mode": mode, "kid": kid })))
        }
    };
    let url = format!("{}/api/encryption", relay.relay_url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let request = match change {
        Some(body) => client.post(url).json(&body),
        None => client.get(url),
    };
    let response = request
        .bearer_auth(&relay.astation_token)
        .send()
        .await
        .map_err(|e| format!("could not reach the relay: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("no details")
        ));
    }
    println!("mode:       {}", body["mode"].as_str().unwrap_or("?"));
    println!("kid:        {}", body["kid"].as_str().unwrap_or("-"));
    println!(
        "updated_at: {}",
        body["updated_at"].as_str().unwrap_or("never")
    );
    println!(
        "fields:     {} plaintext, {} ciphertext, {} obsolete",
        body["plaintext_fields"], body["ciphertext_fields"], body["obsolete_fields"]
    );
    Ok(())
}

/// One line per entry: `e3 v2 [writer] text`.
pub fn format_entry(frame: &Value) -> String {
    format!(
        "e{} v{} [{}] {}",
        frame["entry_no"],
        frame["version"],
        frame["writer_id"].as_str().unwrap_or(""),
        frame["content"].as_str().unwrap_or("")
    )
}

async fn watch(args: WatchArgs) -> Result<(), String> {
    let base = args.relay_url.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("https://") {
        return Err("watch speaks plain ws://; reach TLS relays through a local tunnel".into());
    } else {
        base.to_string()
    };
    let mut cursor: Option<i64> = args.since;
    let mut epoch: Option<String> = None;
    if args.transport == WatchTransport::Poll {
        return client::watch_by_polling(&args, cursor, epoch).await;
    }
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut url = format!(
            "{ws_base}/api/vault/{}/stream?id={}",
            args.vault_id,
            urlencode(&args.client_id)
        );
        if let Some(c) = cursor {
            url.push_str(&format!("&since={c}"));
        }
        if let Some(e) = &epoch {
            url.push_str(&format!("&epoch={}", urlencode(e)));
        }
        if let Some(a) = &args.atem_id {
            url.push_str(&format!("&atem_id={}", urlencode(a)));
        }
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let auth = HeaderValue::from_str(&format!("session {}", args.session))
            .map_err(|_| "the session id is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", auth);
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, _)) => {
                backoff = Duration::from_millis(250);
                eprintln!("-- connected");
                while let Some(msg) = socket.next().await {
                    match msg {
                        Ok(Message::Text(text)) => {
                            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            match frame["type"].as_str() {
                                Some("hello") => {
                                    epoch = frame["epoch"].as_str().map(str::to_string);
                                    if cursor.is_none() {
                                        cursor = frame["head_seq"].as_i64();
                                    }
                                }
                                Some("reset") => {
                                    eprintln!("-- the relay's store was reset; starting over");
                                    cursor = Some(0);
                                }
                                Some("entry") => {
                                    let seq = frame["seq"].as_i64().unwrap_or(0);
                                    // The relay sends each row once; this
                                    // guard only protects our own output.
                                    if cursor.is_none_or(|c| seq > c) {
                                        println!("{}", format_entry(&frame));
                                        cursor = Some(seq);
                                    }
                                }
                                Some("summary") => {
                                    eprintln!(
                                        "-- summary: {}",
                                        frame["summary"].as_str().unwrap_or("")
                                    );
                                }
                                Some("encryption") => {
                                    eprintln!(
                                        "-- encryption: {}{}",
                                        frame["mode"].as_str().unwrap_or("?"),
                                        frame["kid"]
                                            .as_str()
                                            .map(|k| format!(" (kid {k})"))
                                            .unwrap_or_default()
                                    );
                                }
                                _ => {}
                            }
                        }
                        Ok(Message::Close(Some(close)))
                            if close.code == CloseCode::from(CLOSE_REVOKED) =>
                        {
                            return Err(format!("the relay closed the stream: {}", close.reason));
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                eprintln!("-- disconnected; reconnecting");
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|v| v["error"].as_str().map(str::to_string));
                match body {
                    // The relay itself refused: polling would be refused too.
                    Some(error) if status.is_client_error() => {
                        return Err(format!("{status}: {error}"));
                    }
                    // Something in between (a proxy) refused the upgrade.
                    _ if args.transport == WatchTransport::Auto => {
                        eprintln!("-- the WebSocket upgrade was refused ({status})");
                        return client::watch_by_polling(&args, cursor, epoch).await;
                    }
                    Some(error) => eprintln!("-- relay answered {status}: {error}; retrying"),
                    None if status.is_client_error() => return Err(format!("{status}")),
                    None => eprintln!("-- relay answered {status}; retrying"),
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::Protocol(e))
                if args.transport == WatchTransport::Auto =>
            {
                eprintln!("-- the WebSocket handshake failed ({e})");
                return client::watch_by_polling(&args, cursor, epoch).await;
            }
            Err(e) => eprintln!("-- could not connect ({e}); retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
