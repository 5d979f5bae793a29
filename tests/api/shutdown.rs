//! Shutdown as an operator sees it: SIGTERM to the real binary, with
//! streams open, on both stores. Every stream gets its 1001 close frame
//! before the process exits, every time; the run is repeated because a
//! missing frame is a race between the socket tasks and the exit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{ADMIN_TOKEN, TestApp, TestDb};

/// Shutdowns per store: a race lost one time in four is caught with
/// near certainty.
const ROUNDS: usize = 12;
/// Streams open at each shutdown.
const STREAMS: usize = 3;

struct Relay {
    child: Child,
    app: TestApp,
    log: std::path::PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Relay {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start(database_url: Option<&str>) -> Relay {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let log = std::env::temp_dir().join(format!("vr-shutdown-{}.log", uuid::Uuid::new_v4()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vault-relay"));
    cmd.env("PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
        // Few connections: the other tests share the server's allowance.
        .env("DATABASE_MAX_CONNECTIONS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"));
    match database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let child = cmd.spawn().expect("start the relay");
    let app = TestApp::external(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let mut relay = Relay { child, app, log };
    let started = Instant::now();
    loop {
        if let Some(status) = relay.child.try_wait().expect("wait") {
            panic!("the relay exited at start-up ({status}): {}", relay.log());
        }
        if let Ok(r) = relay
            .app
            .client
            .get(format!("{}/health", relay.app.base))
            .send()
            .await
            && r.status().is_success()
        {
            return relay;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "relay did not come up: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_closes_every_stream_with_going_away(database_url: Option<&str>) {
    for round in 0..ROUNDS {
        let mut relay = start(database_url).await;
        let app = &relay.app;
        let (_, _, s) = app.work_session(&format!("home-{round}")).await;
        let v = app.create_vault(&s, "c", "").await;
        let mut streams = Vec::new();
        for i in 0..STREAMS {
            let mut stream = app.open_stream(&v, &s, &format!("w{i}"), "since=0").await;
            assert_eq!(stream.next_frame().await["type"], "hello");
            // Live: the replay of the empty vault is over.
            stream.next_of("caught_up").await;
            streams.push(stream);
        }
        let killed = Command::new("kill")
            .args(["-TERM", &relay.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        for (i, stream) in streams.iter_mut().enumerate() {
            assert_eq!(
                stream.closed().await,
                Some(1001),
                "round {round}, stream {i}: closed with going away"
            );
        }
        let stopping = Instant::now();
        let status = loop {
            if let Some(status) = relay.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                stopping.elapsed() < Duration::from_secs(10),
                "round {round}: the relay did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "round {round}: exit status {status}: {}",
            relay.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sigterm_closes_every_stream_with_going_away_every_time() {
    sigterm_closes_every_stream_with_going_away(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigterm_closes_every_stream_with_going_away_every_time() {
    let db = TestDb::create().await;
    sigterm_closes_every_stream_with_going_away(Some(&db.url)).await;
}
