//! Helpers both benchmarks use: talking to the relay's JSON API, and
//! summarizing and printing their figures.

use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The release binary both benchmarks start.
pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_vault-relay");

/// The benchmark clients' runtime; on failure, says why and gives the exit
/// code to return.
pub fn client_runtime() -> std::result::Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        })
}

/// Waits (60 s at most) until the relay started as `child` answers
/// `{base}/health`; fails at once if it exits meanwhile.
pub async fn wait_until_healthy(child: &mut std::process::Child, base: &str) -> Result<()> {
    let health = format!("{base}/health");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("{RELAY_BIN} exited at start-up ({status})").into());
        }
        if let Ok(r) = http.get(&health).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{RELAY_BIN} did not answer {health} within 60 s").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends a request and parses its JSON answer; any status but 2xx is an
/// error that quotes the body.
pub async fn send_json(request: reqwest::RequestBuilder) -> Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        return Err(format!("the relay answered {status}: {body}").into());
    }
    Ok(serde_json::from_str(&body)?)
}

/// A string field of a JSON answer.
pub fn field_str(v: &Value, field: &str) -> Result<String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no `{field}` in {v}").into())
}

/// Registers an astation with `admin_token` and mints a session with the
/// astation's token (granted at once); returns the session id.
pub async fn bench_session(
    http: &reqwest::Client,
    base: &str,
    admin_token: &str,
) -> Result<String> {
    let astation = send_json(
        http.post(format!("{base}/api/admin/astations"))
            .bearer_auth(admin_token)
            .json(&json!({ "name": "bench" })),
    )
    .await?;
    let token = field_str(&astation, "token")?;
    let session = send_json(
        http.post(format!("{base}/api/sessions"))
            .bearer_auth(&token)
            .json(&json!({ "hostname": "bench" })),
    )
    .await?;
    if session["status"] != "granted" {
        return Err(format!("the bench session was not granted: {session}").into());
    }
    field_str(&session, "id")
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Nanoseconds as milliseconds: two decimals below 10 ms, one above.
pub fn ms(nanos: u64) -> String {
    let ms = nanos as f64 / 1e6;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// An integer with thousands separators (1,234,567).
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
