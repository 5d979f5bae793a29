//! The write benchmark: appends through REST on Postgres at 1, 8 and 32
//! concurrent writers, each figure beside a raw-Postgres baseline measured
//! in the same run.
//!
//! - **relay**: the release binary as a child process on a fresh database;
//!   each writer is one client with its own vault that appends as fast as
//!   its answers come back (`POST /api/vault/<id>`, 200-byte entries).
//! - **raw**: the per-append transaction straight through sqlx, no relay:
//!   one statement per append that locks the vault row, allocates the entry
//!   number and seq, inserts, updates the vault and notifies (the relay's
//!   own write before it batched, kept here verbatim so that the baseline
//!   does not move when the relay's SQL does), on a fresh database of its
//!   own, with one connection per writer.
//! - **the hop** (1 writer only): the same relay binary on its in-memory
//!   store, driven by the same client. It costs what the relay adds to a
//!   write apart from the database (the HTTP exchange and the relay's own
//!   work), and so bounds the 1-writer ratio: a relay pays the hop plus its
//!   database work, which is at least raw's.
//!
//! Both run with Postgres's durability settings as they are (fsync on is
//! checked and printed), set up side by side and driven in alternating
//! rounds, so that the load of whatever else runs on the machine weighs on
//! both alike. Each figure is appends per second over the measured windows
//! and the p50/p99 latency of one append; the ratio is relay throughput
//! over raw throughput. After each relay run the stored
//! rows are counted against the acknowledgements.
//!
//! Run with `BENCH_DATABASE_URL=postgres://USER:PASSWORD@HOST/DB cargo bench
//! --bench writes` (or `scripts/bench`); the role must be allowed to create
//! databases. `-- --quick` measures shorter windows as a smoke test.
//! Missed targets are reported, never fatal.

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{
    RELAY_BIN, bench_session, client_runtime, field_str, ms, percentile, send_json, thousands,
    wait_until_healthy,
};

use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

/// The relay binary `cargo bench` builds next to this benchmark.
/// Admin token of the relay this benchmark starts.
const ADMIN_TOKEN: &str = "adm-bench-writes";
/// Size of each entry's text, in bytes.
const ENTRY_BYTES: usize = 200;
/// Concurrent writers of each figure.
const WRITERS: [usize; 3] = [1, 8, 32];

/// The writer counts to measure: `BENCH_WRITERS` (comma-separated) when
/// set, to look at one figure closely, otherwise all of [`WRITERS`].
fn chosen_writers() -> Result<Vec<usize>> {
    match std::env::var("BENCH_WRITERS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|w| {
                w.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&w| w > 0)
                    .ok_or_else(|| format!("BENCH_WRITERS: `{w}` is not a writer count").into())
            })
            .collect(),
        _ => Ok(WRITERS.to_vec()),
    }
}

/// The targets, as ratios of relay over raw throughput, by writer count.
fn target_ratio(writers: usize) -> Option<f64> {
    match writers {
        32 => Some(1.5),
        8 => Some(1.2),
        1 => Some(0.79),
        _ => None,
    }
}

/// The baseline's append: the per-write transaction as one statement.
const BASELINE_FUNCTION: &str = r#"
create function bench_append(p_vault text, p_writer text, p_content text)
returns table (out_entry_no bigint, out_version bigint, out_seq bigint)
language plpgsql
as $$
declare
    v_next bigint;
    v_seq bigint;
begin
    select v.next_entry_no into v_next from vaults v where v.id = p_vault for update;
    if not found then
        raise exception 'no such vault';
    end if;
    v_seq := nextval('vault_seq');
    insert into vault_entries (seq, vault_id, entry_no, version, kind, writer_id, content)
    values (v_seq, p_vault, v_next, 1, 'content', p_writer, p_content);
    update vaults v set
        head_seq = v_seq,
        next_entry_no = v.next_entry_no + 1,
        writers = case when v.writers @> array[p_writer] then v.writers else array_append(v.writers, p_writer) end
    where v.id = p_vault;
    perform pg_notify('vault_relay', json_build_object('t', 'entry', 'v', p_vault, 's', v_seq)::text);
    return query select v_next, 1::bigint, v_seq;
end;
$$"#;

/// Each figure is measured in `rounds` alternating rounds of the relay and
/// the baseline, each round `measure` long after `warm_up`.
struct Plan {
    rounds: u32,
    warm_up: Duration,
    measure: Duration,
}

const USAGE: &str = "usage: cargo bench --bench writes [-- --quick]
  --quick  short windows, a smoke test
  BENCH_DATABASE_URL=postgres://USER:PASSWORD@HOST/DB  required: a role that may create databases
  BENCH_WRITERS=1,8  only these writer counts (default: 1,8,32)
  scripts/bench [--quick]  runs this and the stream benchmark";

fn main() -> ExitCode {
    let mut quick = false;
    let mut benching = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            // Accepted so that scripts/bench can pass the stream
            // benchmark's options here too; the relay is always a child.
            "--child" => {}
            "--bench" => benching = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument `{other}`\n{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !benching {
        println!("write benchmark: skipped (it runs under `cargo bench --bench writes`)");
        return ExitCode::SUCCESS;
    }
    let Some(server) = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!(
            "write benchmark: skipped: set BENCH_DATABASE_URL to a Postgres role that may create \
             databases, e.g. BENCH_DATABASE_URL=postgres://vault_relay_test:vault_relay_test@127.0.0.1:5432/vault_relay_test \
             (scripts/test creates that role)"
        );
        return ExitCode::SUCCESS;
    };
    let plan = if quick {
        Plan {
            rounds: 1,
            warm_up: Duration::from_millis(300),
            measure: Duration::from_secs(1),
        }
    } else {
        Plan {
            rounds: 3,
            warm_up: Duration::from_millis(500),
            measure: Duration::from_secs(2),
        }
    };
    let runtime = match client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(run(&server, &plan, quick)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(server: &str, plan: &Plan, quick: bool) -> Result<()> {
    println!("vault-relay write benchmark");
    println!(
        "command: BENCH_DATABASE_URL=... {}",
        std::env::var("BENCH_COMMAND").unwrap_or_else(|_| format!(
            "cargo bench --bench writes{}",
            if quick { " -- --quick" } else { "" }
        ))
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .map_err(|e| format!("cannot reach BENCH_DATABASE_URL: {e}"))?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "select name, setting from pg_settings
         where name in ('fsync', 'synchronous_commit', 'wal_sync_method', 'commit_delay')
         order by name",
    )
    .fetch_all(&mut admin)
    .await?;
    let version: String = sqlx::query_scalar("show server_version")
        .fetch_one(&mut admin)
        .await?;
    println!(
        "machine: {cpus} CPUs; Postgres {version} ({}); entries of {ENTRY_BYTES} bytes; \
         each writer appends to its own vault; relay and raw measured in {} alternating rounds \
         of {} s (after {} s of warm-up) each{}",
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        plan.rounds,
        plan.measure.as_secs_f64(),
        plan.warm_up.as_secs_f64(),
        if quick {
            "; QUICK mode: short windows"
        } else {
            ""
        }
    );
    if settings.iter().any(|(k, v)| k == "fsync" && v != "on") {
        println!("note: fsync is off on this server; the figures do not measure durable commits");
    }
    println!();
    println!(
        "{:>7}  {:>29}  {:>29}  {:>6}  target",
        "writers", "relay (REST)", "raw Postgres", "ratio"
    );
    println!(
        "{:>7}  {:>29}  {:>29}  {:>6}",
        "", "appends/s  p50 / p99", "appends/s  p50 / p99", ""
    );

    let text = entry_text();
    let mut failed = false;
    for writers in chosen_writers()? {
        let raw_db = ScratchDb::create(server, &mut admin).await?;
        let relay_db = ScratchDb::create(server, &mut admin).await?;
        let outcome = measure(&raw_db.url, &relay_db.url, writers, plan, &text).await;
        raw_db.drop_with(&mut admin).await;
        relay_db.drop_with(&mut admin).await;
        let (relay, raw, hop) = outcome?;
        let ratio = relay.per_sec() / raw.per_sec().max(f64::MIN_POSITIVE);
        let target = match target_ratio(writers) {
            Some(t) if ratio >= t => format!(">= {t}x: met"),
            Some(t) => format!(">= {t}x: MISSED"),
            None => String::new(),
        };
        let p50_note = if writers == 1 {
            let p50 = relay.percentile(50.0);
            let met = if p50 < 1_300_000 { "met" } else { "MISSED" };
            format!("; relay p50 < 1.3 ms: {met}")
        } else {
            String::new()
        };
        println!(
            "{writers:>7}  {:>29}  {:>29}  {:>5.2}x  {target}{p50_note}",
            relay.figure(),
            raw.figure(),
            ratio
        );
        if let Some(problem) = &relay.problem {
            println!("         relay check FAILED: {problem}");
            failed = true;
        }
        if let Some(hop) = hop {
            print_hop(&hop, &raw);
        }
    }
    if failed {
        return Err("acknowledged writes were not all stored as acknowledged".into());
    }
    Ok(())
}

/// The hop's figure and the ceiling it puts on the relay's ratio: a relay
/// is the hop (client, HTTP, the relay's own work) plus its database work,
/// so even a relay whose database work cost exactly raw's would spend
/// 1/raw + 1/hop seconds per append.
fn print_hop(hop: &Outcome, raw: &Outcome) {
    let ceiling = 1.0 / (1.0 / raw.per_sec() + 1.0 / hop.per_sec());
    println!(
        "         the hop alone (the same relay on its in-memory store, same client): {}; \
         so at most {}/s ({:.2}x of raw) for a relay whose database work cost what raw's does",
        hop.figure().trim_start(),
        thousands(ceiling.round() as u64),
        ceiling / raw.per_sec()
    );
}

fn entry_text() -> String {
    let line = "bench entry: a note one agent leaves for the others on this vault. ";
    line.repeat(ENTRY_BYTES / line.len() + 1)[..ENTRY_BYTES].to_string()
}

// ---------------------------------------------------------------------------
// Measuring.

/// What one case measured.
struct Outcome {
    appends: u64,
    window: Duration,
    /// Latency of every append in the window, in nanoseconds, sorted.
    latencies: Vec<u64>,
    /// Set when the stored rows disagree with the acknowledgements.
    problem: Option<String>,
}

impl Outcome {
    fn empty() -> Outcome {
        Outcome {
            appends: 0,
            window: Duration::ZERO,
            latencies: Vec::new(),
            problem: None,
        }
    }

    /// Adds a round's figures (the latencies stay sorted).
    fn add(&mut self, round: Outcome) {
        self.appends += round.appends;
        self.window += round.window;
        self.latencies.extend(round.latencies);
        self.latencies.sort_unstable();
    }

    fn per_sec(&self) -> f64 {
        self.appends as f64 / self.window.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> u64 {
        percentile(&self.latencies, p)
    }

    fn figure(&self) -> String {
        format!(
            "{:>6}/s  {} / {}",
            thousands(self.per_sec().round() as u64),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0))
        )
    }
}

/// When the measured window opens and closes, shared by every writer.
#[derive(Clone)]
struct Window {
    opens: Instant,
    closes: Instant,
    stop: Arc<AtomicBool>,
}

/// Per writer: appends acknowledged in all, and latencies in the window.
struct WriterLog {
    acknowledged: u64,
    latencies: Vec<u64>,
}

impl Window {
    fn new(plan: &Plan) -> Window {
        let opens = Instant::now() + plan.warm_up;
        Window {
            opens,
            closes: opens + plan.measure,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs `append` in a loop until the window closes; latencies of
    /// appends that start and end inside the window are kept.
    async fn drive<F, Fut>(self, mut append: F) -> Result<WriterLog>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut log = WriterLog {
            acknowledged: 0,
            latencies: Vec::new(),
        };
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            if started >= self.closes {
                break;
            }
            if let Err(e) = append().await {
                self.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let ended = Instant::now();
            log.acknowledged += 1;
            if started >= self.opens && ended <= self.closes {
                log.latencies.push((ended - started).as_nanos() as u64);
            }
        }
        Ok(log)
    }

    /// The round's figures, and the appends acknowledged per writer.
    fn outcome(&self, logs: Vec<WriterLog>) -> (Outcome, Vec<u64>) {
        let acknowledged = logs.iter().map(|l| l.acknowledged).collect();
        let latencies: Vec<u64> = logs.into_iter().flat_map(|l| l.latencies).collect();
        let outcome = Outcome {
            appends: latencies.len() as u64,
            window: self.closes - self.opens,
            latencies,
            problem: None,
        };
        (outcome, acknowledged)
    }
}

async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<Result<WriterLog>>>,
) -> Result<Vec<WriterLog>> {
    let mut logs = Vec::with_capacity(tasks.len());
    for t in tasks {
        logs.push(t.await??);
    }
    Ok(logs)
}

/// Measures one writer count: the relay and the baseline are set up side
/// by side, then driven in alternating rounds, so that a change in the
/// machine's load during the run weighs on both alike. At one writer a
/// third side joins the rounds: the hop, the same relay on its in-memory
/// store, which costs what the relay adds to a write apart from the
/// database (a bound, not a relay figure: its rows are not counted).
/// Returns (relay, raw, hop).
async fn measure(
    raw_url: &str,
    relay_url: &str,
    writers: usize,
    plan: &Plan,
    text: &str,
) -> Result<(Outcome, Outcome, Option<Outcome>)> {
    let raw = RawSide::setup(raw_url, writers, text).await?;
    let relay = RelaySide::setup(Some(relay_url), writers, text).await?;
    let mut hop = if writers == 1 {
        Some((
            RelaySide::setup(None, writers, text).await?,
            Outcome::empty(),
        ))
    } else {
        None
    };
    let (mut raw_total, mut relay_total) = (Outcome::empty(), Outcome::empty());
    let mut acknowledged = vec![0; writers];
    for _ in 0..plan.rounds {
        raw_total.add(raw.round(plan).await?.0);
        let (outcome, acked) = relay.round(plan).await?;
        relay_total.add(outcome);
        for (total, n) in acknowledged.iter_mut().zip(acked) {
            *total += n;
        }
        if let Some((side, total)) = &mut hop {
            total.add(side.round(plan).await?.0);
        }
    }
    raw.pool.close().await;
    relay.relay.stop();
    let hop = hop.map(|(side, total)| {
        side.relay.stop();
        total
    });
    relay_total.problem = check_stored(relay_url, &relay.vaults, &acknowledged).await?;
    Ok((relay_total, raw_total, hop))
}

/// The baseline: one connection per writer, held for the whole run (so no
/// pool checks it between appends), and a vault each.
struct RawSide {
    pool: PgPool,
    connections: Vec<Arc<tokio::sync::Mutex<PgConnection>>>,
    vaults: Vec<String>,
    text: String,
}

impl RawSide {
    async fn setup(url: &str, writers: usize, text: &str) -> Result<RawSide> {
        let pool = PgPoolOptions::new()
            .max_connections(writers as u32)
            .min_connections(writers as u32)
            .connect(url)
            .await?;
        vault_relay::store::postgres::MIGRATOR.run(&pool).await?;
        sqlx::raw_sql(BASELINE_FUNCTION).execute(&pool).await?;
        let mut vaults = Vec::new();
        for i in 0..writers {
            let id = format!("v-rawbench{i:04}");
            sqlx::query(
                "insert into vaults (id, summary, work_session, creator)
                 values ($1, '', 'a-bench', 'bench')",
            )
            .bind(&id)
            .execute(&pool)
            .await?;
            vaults.push(id);
        }
        let mut connections = Vec::new();
        for _ in 0..writers {
            let conn = pool.acquire().await?.detach();
            connections.push(Arc::new(tokio::sync::Mutex::new(conn)));
        }
        Ok(RawSide {
            pool,
            connections,
            vaults,
            text: text.to_string(),
        })
    }

    async fn round(&self, plan: &Plan) -> Result<(Outcome, Vec<u64>)> {
        let window = Window::new(plan);
        let tasks = self
            .vaults
            .iter()
            .enumerate()
            .map(|(i, vault)| {
                let (conn, window) = (self.connections[i].clone(), window.clone());
                let (vault, text) = (vault.clone(), self.text.clone());
                let writer = format!("bench-w{i}");
                tokio::spawn(window.drive(move || {
                    append_raw(conn.clone(), vault.clone(), writer.clone(), text.clone())
                }))
            })
            .collect();
        let logs = join_all(tasks).await?;
        Ok(window.outcome(logs))
    }
}

async fn append_raw(
    conn: Arc<tokio::sync::Mutex<PgConnection>>,
    vault: String,
    writer: String,
    text: String,
) -> Result<()> {
    sqlx::query("select out_seq from bench_append($1, $2, $3)")
        .bind(&vault)
        .bind(&writer)
        .bind(&text)
        .fetch_one(&mut *conn.lock().await)
        .await?;
    Ok(())
}

/// The relay: the release binary on its own database (or on its in-memory
/// store, for the hop), one client per writer, a vault each.
struct RelaySide {
    relay: Relay,
    http: reqwest::Client,
    session: String,
    base: String,
    vaults: Vec<String>,
    body: Value,
}

impl RelaySide {
    async fn setup(url: Option<&str>, writers: usize, text: &str) -> Result<RelaySide> {
        let relay = Relay::start(url).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(writers * 2)
            .build()?;
        let base = format!("http://127.0.0.1:{}", relay.port);
        let session = bench_session(&http, &base, ADMIN_TOKEN).await?;
        let mut vaults = Vec::new();
        for i in 0..writers {
            let v = send_json(
                http.post(format!("{base}/api/vault?id=bench-w{i}"))
                    .header("Authorization", format!("session {session}"))
                    .json(&json!({ "summary": "write benchmark" })),
            )
            .await?;
            vaults.push(field_str(&v, "vault_id")?);
        }
        Ok(RelaySide {
            relay,
            http,
            session,
            base,
            vaults,
            body: json!({ "text": text }),
        })
    }

    async fn round(&self, plan: &Plan) -> Result<(Outcome, Vec<u64>)> {
        let window = Window::new(plan);
        let tasks =
            self.vaults
                .iter()
                .enumerate()
                .map(|(i, vault)| {
                    let url = format!("{}/api/vault/{vault}?id=bench-w{i}", self.base);
                    let auth = format!("session {}", self.session);
                    let body = self.body.clone();
                    let (http, window) = (self.http.clone(), window.clone());
                    tokio::spawn(window.drive(move || {
                        let request = http.post(&url).header("Authorization", &auth).json(&body);
                        async move {
                            let r = send_json(request).await?;
                            r["seq"].as_i64().map(|_| ()).ok_or_else(|| {
                                format!("an append answered without seq: {r}").into()
                            })
                        }
                    }))
                })
                .collect();
        let logs = join_all(tasks).await?;
        Ok(window.outcome(logs))
    }
}

/// Compares each vault's stored rows with the appends acknowledged for it:
/// the same number, numbered e1..eN without gaps.
async fn check_stored(
    url: &str,
    vaults: &[String],
    acknowledged: &[u64],
) -> Result<Option<String>> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    for (vault, &acked) in vaults.iter().zip(acknowledged) {
        let (rows, top): (i64, Option<i64>) =
            sqlx::query_as("select count(*), max(entry_no) from vault_entries where vault_id = $1")
                .bind(vault)
                .fetch_one(&mut conn)
                .await?;
        if rows as u64 != acked || top.unwrap_or(0) != rows {
            return Ok(Some(format!(
                "vault {vault}: {acked} appends acknowledged, {rows} rows stored, highest entry e{}",
                top.unwrap_or(0)
            )));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// The relay child and the scratch databases.

/// The release binary as a child process, killed if the benchmark ends
/// without stopping it.
struct Relay {
    child: Child,
    port: u16,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Relay {
    /// Starts the relay on `database_url`, or on its in-memory store.
    async fn start(database_url: Option<&str>) -> Result<Relay> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(RELAY_BIN);
        match database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        let child = command
            .env("PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "error")
            // The benchmark is one client writing as fast as it can: turn
            // the per-session and per-address limits off.
            .env("RATE_LIMIT_WRITES_PER_SEC", "0")
            .env("RATE_LIMIT_AUTH_FAILURES_PER_MIN", "0")
            .env("RATE_LIMIT_PAIRINGS_PER_MIN", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {RELAY_BIN}: {e}"))?;
        let mut relay = Relay { child, port };
        wait_until_healthy(&mut relay.child, &format!("http://127.0.0.1:{port}")).await?;
        Ok(relay)
    }

    /// SIGTERM, then SIGKILL (by dropping) if it is still running 10 s later.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A database of its own for one case.
struct ScratchDb {
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create(server: &str, admin: &mut sqlx::PgConnection) -> Result<ScratchDb> {
        let name = format!("vr_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&mut *admin)
            .await
            .map_err(|e| {
                format!("cannot create a scratch database (the role needs createdb): {e}")
            })?;
        Ok(ScratchDb {
            url: with_database(server, &name),
            name,
        })
    }

    async fn drop_with(self, admin: &mut sqlx::PgConnection) {
        let sql = format!("drop database if exists {} with (force)", self.name);
        if let Err(e) = sqlx::query(&sql).execute(&mut *admin).await {
            eprintln!("warning: could not drop {}: {e}", self.name);
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    format!("{base}/{db}{query}")
}

// ---------------------------------------------------------------------------
// Small helpers.
