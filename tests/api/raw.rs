//! A raw HTTP/1.1 client over one TCP connection, for what a polite client
//! library will not do: half-sent headers, slow bodies, bytes that are not
//! text, keep-alive checked by hand.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for any one answer or close.
pub const RAW_WAIT: Duration = Duration::from_secs(10);

/// One response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the response announces that the connection closes.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "{} must have a JSON body, got {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the relay's error shape: JSON content type and an `error`
    /// text.
    pub fn assert_json_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{self:?}"
        );
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {self:?}"))
            .to_string()
    }
}

/// A raw connection to the relay.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn open(addr: std::net::SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Sends, tolerating a connection the relay has already closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(RAW_WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the relay answers or closes within the wait")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response. `None` when the connection closed first.
    pub async fn response(&mut self) -> Option<RawResponse> {
        self.response_to(false).await
    }

    /// Reads one response to a HEAD request (`head`: no body follows) or
    /// any other. `None` when the connection closed first.
    pub async fn response_to(&mut self, to_head: bool) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let no_body = to_head || status == 204 || status == 304 || (100..200).contains(&status);
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if no_body {
            Vec::new()
        } else if chunked {
            self.chunked_body().await
        } else {
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            self.take(len).await
        };
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn take(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            if !self.fill().await {
                panic!("connection closed inside a response body");
            }
        }
        self.buf.drain(..len).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                return line;
            }
            if !self.fill().await {
                panic!("connection closed inside a chunked body");
            }
        }
    }

    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line().await;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line().await.is_empty() {}
                return body;
            }
            body.extend(self.take(size).await);
            self.line().await;
        }
    }

    /// Waits until the relay closes the connection; panics if it sends
    /// anything else first or keeps it open past the wait.
    pub async fn closed(&mut self) {
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(RAW_WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the relay closes the connection within the wait")
            {
                Ok(0) | Err(_) => return,
                Ok(n) => assert!(
                    self.buf.is_empty() && n == 0,
                    "unexpected bytes before the close: {:?}",
                    String::from_utf8_lossy(&chunk[..n])
                ),
            }
        }
    }
}

/// One request and its answer on a fresh connection.
pub async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut conn = RawConn::open(addr).await;
    if !conn.try_send(request).await {
        return None;
    }
    conn.response_to(request.starts_with(b"HEAD ")).await
}
