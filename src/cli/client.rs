//! The vault subcommands that speak plain HTTP: `read`, `write` and the
//! long-polling side of `watch`, for scripts that would otherwise use curl
//! and for networks where the WebSocket upgrade does not get through.

use std::time::Duration;

use serde_json::{Value, json};

use super::{format_entry, urlencode};
use crate::config::{ReadArgs, VaultClientArgs, WatchArgs, WriteArgs};

/// Attempts of one `write` before giving up (the same key every time).
const WRITE_ATTEMPTS: u32 = 5;
/// How long a long poll asks to be held.
const POLL_WAIT_SECS: u64 = 30;
/// Rows per long-poll answer.
const POLL_LIMIT: u32 = 1000;

/// A relay answer the command cannot use, and whether trying again may help.
struct Failure {
    message: String,
    retry: bool,
    retry_after: Option<Duration>,
}

fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("could not build an HTTP client: {e}"))
}

fn vault_url(relay: &VaultClientArgs, vault_id: &str, query: &str) -> String {
    format!(
        "{}/api/vault/{}?id={}{query}",
        relay.relay_url.trim_end_matches('/'),
        urlencode(vault_id),
        urlencode(&relay.client_id)
    )
}

/// Sends a request and returns the JSON body of a 2xx answer; otherwise a
/// [`Failure`] that says whether a retry may help (no answer, 429, 5xx).
async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(Value, reqwest::header::HeaderMap), Failure> {
    let response = request.send().await.map_err(|e| Failure {
        message: format!("could not reach the relay: {e}"),
        retry: true,
        retry_after: None,
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| Failure {
        message: format!("the relay's answer was cut off: {e}"),
        retry: true,
        retry_after: None,
    })?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok((body, headers));
    }
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(30)));
    Err(Failure {
        message: format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or(text.trim())
        ),
        retry: status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
        retry_after,
    })
}

/// `vault-relay read`: the entries once, one line each (or the JSON).
pub async fn read(args: ReadArgs) -> Result<(), String> {
    let mut query = String::new();
    if let Some(s) = args.since {
        query.push_str(&format!("&since={s}"));
    }
    if args.history {
        query.push_str("&history=true");
    }
    if let Some(n) = args.limit {
        query.push_str(&format!("&limit={n}"));
    }
    let request = client(Duration::from_secs(60))?
        .get(vault_url(&args.relay, &args.vault_id, &query))
        .header("authorization", format!("session {}", args.relay.session));
    let (rows, headers) = send(request).await.map_err(|f| f.message)?;
    if args.json {
        println!("{rows}");
    } else {
        for row in rows.as_array().map(Vec::as_slice).unwrap_or_default() {
            println!("{}", format_entry(row));
        }
    }
    if headers.contains_key(reqwest::header::LINK)
        && let Some(last) = rows.as_array().and_then(|r| r.last())
    {
        eprintln!("-- more rows follow; continue with --since {}", last["seq"]);
    }
    Ok(())
}

/// `vault-relay write`: one append or edit, retried under one idempotency
/// key until the relay answers, so a lost answer never makes two rows.
pub async fn write(args: WriteArgs) -> Result<(), String> {
    let text = if args.text == "-" {
        let mut text = std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("could not read stdin: {e}"))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        text
    } else {
        args.text
    };
    let key = args
        .idempotency_key
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
    let mut body = json!({ "text": text });
    if let Some(n) = args.entry_id {
        body["entry_id"] = json!(n);
    }
    let http = client(Duration::from_secs(30))?;
    let url = vault_url(&args.relay, &args.vault_id, "");
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=WRITE_ATTEMPTS {
        let request = http
            .post(&url)
            .header("authorization", format!("session {}", args.relay.session))
            .header(crate::idempotency::HEADER, &key)
            .json(&body);
        match send(request).await {
            Ok((receipt, _)) => {
                println!("{receipt}");
                return Ok(());
            }
            Err(f) if f.retry && attempt < WRITE_ATTEMPTS => {
                eprintln!("-- {}; retrying with the same Idempotency-Key", f.message);
                tokio::time::sleep(f.retry_after.unwrap_or(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(f) => return Err(f.message),
        }
    }
    Err("the relay did not take the write".into())
}

/// Follows a vault by long polling its history: the same lines as the
/// stream, for networks where the WebSocket upgrade is refused. `cursor`
/// and `epoch` carry on from the stream when it fell back mid-way.
pub async fn watch_by_polling(
    args: &WatchArgs,
    mut cursor: Option<i64>,
    mut epoch: Option<String>,
) -> Result<(), String> {
    let relay = VaultClientArgs {
        relay_url: args.relay_url.clone(),
        session: args.session.clone(),
        client_id: args.client_id.clone(),
    };
    // Longer than the hold, so a held poll is never cut off by us.
    let http = client(Duration::from_secs(POLL_WAIT_SECS + 30))?;
    let auth = format!("session {}", args.session);
    let info_url = format!(
        "{}/api/vault/{}/info?id={}",
        relay.relay_url.trim_end_matches('/'),
        urlencode(&args.vault_id),
        urlencode(&relay.client_id)
    );
    let mut backoff = Duration::from_millis(250);
    // Look at the vault's head and epoch first, and again after each empty
    // answer: a new epoch means the relay's store was reset.
    let mut check_info = true;
    eprintln!("-- following by long polling");
    loop {
        let result = async {
            if check_info || cursor.is_none() {
                let (info, _) = send(http.get(&info_url).header("authorization", &auth)).await?;
                let now = info["epoch"].as_str().map(str::to_string);
                if epoch.is_some() && now != epoch {
                    eprintln!("-- the relay's store was reset; starting over");
                    cursor = Some(0);
                }
                epoch = now;
                if cursor.is_none() {
                    cursor = info["head_seq"].as_i64();
                }
                check_info = false;
            }
            let since = cursor.unwrap_or(0);
            let query =
                format!("&history=true&since={since}&limit={POLL_LIMIT}&wait={POLL_WAIT_SECS}");
            let request = http
                .get(vault_url(&relay, &args.vault_id, &query))
                .header("authorization", &auth);
            let (rows, _) = send(request).await?;
            let rows = rows.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                check_info = true;
                return Ok::<_, Failure>(());
            }
            for row in rows {
                let seq = row["seq"].as_i64().unwrap_or(0);
                if cursor.is_none_or(|c| seq > c) {
                    println!("{}", format_entry(&row));
                    cursor = Some(seq);
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(f) if f.retry => {
                eprintln!("-- {}; retrying", f.message);
                tokio::time::sleep(f.retry_after.unwrap_or(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(f) => return Err(f.message),
        }
    }
}
