//! The client side: the public API, as a client uses it (a session, vaults,
//! appends, reads, streams), and reading the frames a stream sends.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{bench_session, field_str, send_json};
use crate::{ADMIN_TOKEN, BoxError, Result};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    pub(crate) seq: Option<i64>,
}

#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    addr: SocketAddr,
    session: String,
}

impl Api {
    /// The same session over a client of its own (its own connections, for
    /// use on another runtime).
    pub(crate) fn with_own_connections(&self) -> Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            ..self.clone()
        })
    }

    /// Registers an astation, mints a granted session with its token.
    pub(crate) async fn setup(addr: SocketAddr) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(128)
            .build()?;
        let base = format!("http://{addr}");
        let session = bench_session(&http, &base, ADMIN_TOKEN).await?;
        Ok(Api {
            http,
            base,
            addr,
            session,
        })
    }

    fn auth(&self) -> String {
        format!("session {}", self.session)
    }

    pub(crate) async fn create_vault(&self) -> Result<String> {
        let v = send_json(
            self.http
                .post(format!("{}/api/vault?id=bench-writer", self.base))
                .header("Authorization", self.auth())
                .json(&json!({ "summary": "stream benchmark" })),
        )
        .await?;
        field_str(&v, "vault_id")
    }

    /// Appends one entry; returns its seq.
    pub(crate) async fn append(&self, vault: &str, text: &str) -> Result<i64> {
        let r = send_json(
            self.http
                .post(format!("{}/api/vault/{vault}?id=bench-writer", self.base))
                .header("Authorization", self.auth())
                .json(&json!({ "text": text })),
        )
        .await?;
        r["seq"]
            .as_i64()
            .ok_or_else(|| format!("an append answered without seq: {r}").into())
    }

    /// Reads a vault's current view (the body is read and dropped).
    pub(crate) async fn read(&self, vault: &str) -> Result<()> {
        let response = self
            .http
            .get(format!("{}/api/vault/{vault}?id=bench-reader", self.base))
            .header("Authorization", self.auth())
            .send()
            .await?;
        let status = response.status();
        let _ = response.bytes().await?;
        if !status.is_success() {
            return Err(format!("a read answered {status}").into());
        }
        Ok(())
    }

    /// Opens a vault's stream with a small client read buffer (idle
    /// subscribers would otherwise each hold the 128 KiB default).
    pub(crate) async fn connect(
        &self,
        vault: &str,
        client_id: &str,
        since: Option<i64>,
        read_buffer: usize,
    ) -> Result<Ws> {
        let mut url = format!("ws://{}/api/vault/{vault}/stream?id={client_id}", self.addr);
        if let Some(since) = since {
            url.push_str(&format!("&since={since}"));
        }
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("Authorization", HeaderValue::from_str(&self.auth())?);
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        Ok(ws)
    }
}

/// The next text frame; a close or a dropped socket is an error.
pub(crate) async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(c))) => {
                return Err(format!("the relay closed the stream: {c:?}").into());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the stream ended".into()),
        }
    }
}

/// The seq of an entry frame; the clients of the fan-out read thousands of
/// frames a second, so the usual shape is read without a full JSON parse.
pub(crate) fn entry_seq(text: &str) -> Option<i64> {
    if let Some(rest) = text.strip_prefix(r#"{"type":"entry","seq":"#) {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if let Ok(seq) = rest[..end].parse() {
            return Some(seq);
        }
    }
    let frame: Frame = serde_json::from_str(text).ok()?;
    if frame.kind == "entry" {
        frame.seq
    } else {
        None
    }
}

/// Opens one benchmark stream up to its hello (taking one of `permits`
/// while it connects, when given) and says on `ready` whether it opened.
pub(crate) async fn open_reporting(
    api: &Api,
    vault: &str,
    client_id: &str,
    permits: Option<&Semaphore>,
    ready: mpsc::Sender<std::result::Result<(), String>>,
) -> Option<Ws> {
    let opened = async {
        let _permit = match permits {
            Some(p) => Some(p.acquire().await?),
            None => None,
        };
        let mut ws = api.connect(vault, client_id, None, 4 * 1024).await?;
        expect_hello(&mut ws).await?;
        Ok::<_, BoxError>(ws)
    }
    .await;
    let outcome = opened.as_ref().map(|_| ()).map_err(|e| e.to_string());
    let _ = ready.send(outcome).await;
    opened.ok()
}

pub(crate) async fn expect_hello(ws: &mut Ws) -> Result<()> {
    let t = next_text(ws).await?;
    let frame: Frame = serde_json::from_str(&t)?;
    if frame.kind != "hello" {
        return Err(format!("the first frame was not hello: {t}").into());
    }
    Ok(())
}
