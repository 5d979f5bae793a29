//! The browser the viewer tests drive: a chromedriver process with one
//! headless Chromium session, and the page's state read back as JSON.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any single wait may take before the test fails.
pub(super) const WAIT: Duration = Duration::from_secs(15);
/// How long a live update may take to show (generous; it is usually instant).
pub(super) const LIVE_WAIT: Duration = Duration::from_secs(5);

fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).is_file(),
        "{what} not found at {path}. The browser tests need Chromium and chromedriver: run \
         ./scripts/test, which installs them (Debian: apt-get install chromium chromium-driver)."
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A chromedriver process and one browser session in it. Dropping it ends
/// the session (so Chromium quits), kills chromedriver and removes the
/// throwaway profile, also when a test fails half-way.
pub(super) struct Browser {
    client: Option<Client>,
    driver: Child,
    port: u16,
    session: Option<String>,
    profile: PathBuf,
}

impl Browser {
    pub(super) async fn launch() -> Browser {
        require(CHROMIUM, "Chromium");
        require(CHROMEDRIVER, "chromedriver");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER} ({e}); run ./scripts/test"));
        let profile =
            std::env::temp_dir().join(format!("vr-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let mut browser = Browser {
            client: None,
            driver,
            port,
            session: None,
            profile,
        };

        // chromedriver answers /status once it listens.
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        within(Duration::from_secs(20), "chromedriver to listen", || {
            let req = http.get(&status).timeout(Duration::from_secs(2)).send();
            async move {
                req.await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await;

        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--no-first-run",
                    format!("--user-data-dir={}", browser.profile.display()),
                    "--window-size=1200,900",
                ],
            }),
        );
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = match tokio::time::timeout(
            Duration::from_secs(60),
            builder.connect(&webdriver),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("chromedriver could not start Chromium ({e}); run ./scripts/test"),
            Err(_) => panic!("Chromium did not start within 60 s"),
        };
        browser.session = client.session_id().await.ok().flatten();
        browser.client = Some(client);
        browser
    }

    pub(super) fn c(&self) -> &Client {
        self.client.as_ref().expect("an open browser session")
    }

    pub(super) async fn goto(&self, url: &str) {
        tokio::time::timeout(WAIT, self.c().goto(url))
            .await
            .expect("the page loads in time")
            .expect("navigate");
    }

    /// Runs a script in the page and returns what it returns.
    pub(super) async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        tokio::time::timeout(WAIT, self.c().execute(script, args))
            .await
            .expect("the script answers in time")
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Everything the tests look at, read in one round trip.
    pub(super) async fn state(&self) -> PageState {
        let value = self.js(STATE_JS, vec![]).await;
        PageState(value)
    }

    /// Polls the page until `ready` holds; fails with the last state.
    pub(super) async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&PageState) -> bool,
    ) -> PageState {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state().await;
            if ready(&state) {
                return state;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; the page shows: {:#}",
                    state.0
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `css` names, retrying while it is missing or was
    /// just re-rendered (a stale reference).
    pub(super) async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let attempt = async {
                let el = self.c().find(Locator::Css(css)).await?;
                el.click().await
            };
            let error = match tokio::time::timeout(WAIT, attempt).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_string(),
            };
            if Instant::now() >= deadline {
                panic!("click {css}: {error}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn type_into(&self, css: &str, text: &str) {
        let el = tokio::time::timeout(WAIT, self.c().find(Locator::Css(css)))
            .await
            .expect("find in time")
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub(super) async fn current_url(&self) -> String {
        tokio::time::timeout(WAIT, self.c().current_url())
            .await
            .expect("url in time")
            .expect("current url")
            .to_string()
    }

    /// Ends the session and chromedriver cleanly.
    pub(super) async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
            self.session = None;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed half-way still has a session: end it with a
        // plain request so chromedriver makes Chromium quit.
        if let Some(session) = self.session.take()
            && let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port))
        {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                conn,
                "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Polls `probe` until it gives a value, failing after `timeout`.
pub(super) async fn within<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page's state as the tests see it (see STATE_JS).
pub(super) struct PageState(pub(super) Value);

const STATE_JS: &str = r##"
const q = (s) => Array.from(document.querySelectorAll(s));
const text = (id) => { const n = document.getElementById(id); return n ? n.textContent : null; };
const visible = (id) => { const n = document.getElementById(id); return !!n && !n.hidden && n.getClientRects().length > 0; };
return {
  url: location.href,
  conn: text("conn-state"),
  summary: text("summary"),
  presence: text("presence-count"),
  presenceNames: text("presence-names"),
  view: ["signin-view", "error-view", "vaults-view", "vault-view", "loading"].find(visible) || null,
  errorReason: document.getElementById("error-view").dataset.reason || null,
  entries: q("#entries [data-entry-no]").map((n) => ({
    no: Number(n.dataset.entryNo),
    version: n.querySelector(".version").textContent,
    content: n.querySelector(".content").textContent,
    writer: n.querySelector(".writer").textContent,
    id: n.querySelector(".entry-no").textContent,
  })),
  history: q("#history [data-seq]").map((n) => Number(n.dataset.seq)),
  vaults: q("#vault-list [data-vault-id]").map((n) => ({
    id: n.dataset.vaultId,
    summary: n.querySelector(".vault-summary").textContent,
  })),
  links: q("#links [data-link-id]").map((n) => ({ id: n.dataset.linkId, state: n.dataset.state })),
  shareUrl: document.getElementById("share-url").value,
};
"##;

impl PageState {
    pub(super) fn str(&self, key: &str) -> &str {
        self.0[key].as_str().unwrap_or("")
    }
    pub(super) fn entries(&self) -> &[Value] {
        self.0["entries"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    pub(super) fn entry(&self, no: i64) -> Option<&Value> {
        self.entries().iter().find(|e| e["no"] == no)
    }
    pub(super) fn history(&self) -> Vec<i64> {
        self.0["history"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    }
    pub(super) fn live(&self) -> bool {
        self.str("conn") == "live"
    }
    pub(super) fn view(&self) -> &str {
        self.str("view")
    }
}
