//! The stream benchmark: drives a running relay over real sockets, the way
//! clients do, and prints one line per figure with its target.
//!
//! 1. Fan-out: 1,000 subscribers of one vault while a writer asks for 200
//!    appends/s: the rate reached, late sends, commit-to-delivery latency,
//!    and frames delivered per relay CPU-second.
//! 2. Reconnect storm and idle memory: 10,000 streams over 100 vaults all
//!    connecting at once (time to open them all, REST read latency while
//!    they connect), then the relay's resident memory per idle stream, read
//!    from its `/proc/<pid>/status` (the relay runs as a child process so
//!    the benchmark's own sockets are not counted).
//! 3. Replay rate of a subscriber resuming far behind (`since=0`).
//! 4. Many vaults: 2,000 vaults with 5 subscribers each, 500 appends/s
//!    spread over them: delivery latency.
//!
//! Each figure is printed beside its target, or the figure measured before
//! the current design where the target is a ratio to it. Figures 1 and 4
//! also check that each subscriber got every acknowledged row of its vault
//! exactly once, in seq order.
//!
//! Run with `cargo bench --bench stream` (or `scripts/bench`, which raises
//! the open-file limit first); `-- --quick` runs reduced sizes as a smoke
//! test, `-- --child` runs every figure against the release binary instead
//! of an in-process relay. `BENCH_DATABASE_URL` selects the Postgres store.
//! Missed targets are reported, never fatal: the exit code is non-zero only
//! when something fails.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The relay this process runs in-process allocates as the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{bench_session, field_str, ms, percentile, send_json, thousands};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vault_relay::config::Config;
use vault_relay::shutdown::Shutdown;
use vault_relay::startup::Application;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The relay binary `cargo bench` builds next to this benchmark.
const RELAY_BIN: &str = env!("CARGO_BIN_EXE_vault-relay");
/// Admin token of every relay this benchmark starts.
const ADMIN_TOKEN: &str = "adm-bench-stream";
/// Streams being opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Appends in flight while filling the replay vault.
const FILL_CONCURRENCY: usize = 32;
/// Size of each entry's text, in bytes.
const ENTRY_BYTES: usize = 200;
/// File descriptors kept free for everything but the streams.
const SPARE_FDS: u64 = 256;

/// Sizes of one run.
struct Plan {
    fan_out_subscribers: usize,
    appends_per_sec: u32,
    fan_out_secs: u64,
    idle_subscribers: usize,
    storm_vaults: usize,
    replay_rows: u64,
    many_vaults: usize,
    many_subscribers_per_vault: usize,
    many_appends_per_sec: u32,
    many_secs: u64,
}

impl Plan {
    fn full() -> Self {
        Plan {
            fan_out_subscribers: 1_000,
            appends_per_sec: 200,
            fan_out_secs: 10,
            idle_subscribers: 10_000,
            storm_vaults: 100,
            replay_rows: 100_000,
            many_vaults: 2_000,
            many_subscribers_per_vault: 5,
            many_appends_per_sec: 500,
            many_secs: 10,
        }
    }

    fn quick() -> Self {
        Plan {
            fan_out_subscribers: 200,
            appends_per_sec: 200,
            fan_out_secs: 3,
            idle_subscribers: 1_000,
            storm_vaults: 10,
            replay_rows: 10_000,
            many_vaults: 200,
            many_subscribers_per_vault: 5,
            many_appends_per_sec: 200,
            many_secs: 3,
        }
    }
}

struct Options {
    quick: bool,
    child_for_all: bool,
    /// The figures to run (1 to 4); empty runs them all.
    only: Vec<u8>,
}

impl Options {
    fn runs(&self, figure: u8) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

const USAGE: &str = "usage: cargo bench --bench stream [-- --quick] [-- --child] [-- --figure N]
  --quick     reduced sizes, a smoke test
  --child     run every figure against the release binary, not an in-process relay
  --figure N  run figure N (1 to 4) only; repeat it for several
  BENCH_DATABASE_URL=postgres://...  bench the Postgres store (default: memory)
  scripts/bench [--quick] [--child]  the same, with the open-file limit raised";

/// What the command line asks for.
enum Parsed {
    Run(Options),
    Usage,
    /// Started by `cargo test --benches`: nothing to measure there.
    Skip,
}

fn parse_args() -> std::result::Result<Parsed, String> {
    let mut opts = Options {
        quick: false,
        child_for_all: false,
        only: Vec::new(),
    };
    let mut benching = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--child" => opts.child_for_all = true,
            "--figure" => match args.next().as_deref().map(str::parse::<u8>) {
                Some(Ok(n @ 1..=4)) => opts.only.push(n),
                _ => return Err("--figure takes a figure number, 1 to 4".into()),
            },
            // `cargo bench` passes this; `cargo test --benches` does not.
            "--bench" => benching = true,
            "--help" | "-h" => return Ok(Parsed::Usage),
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(if benching {
        Parsed::Run(opts)
    } else {
        Parsed::Skip
    })
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Usage) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Skip) => {
            println!("stream benchmark: skipped (it runs under `cargo bench --bench stream`)");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Options) -> Result<()> {
    let mut plan = if opts.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let database_url = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());

    println!("vault-relay stream benchmark");
    println!("command: {}", command_line(&opts, database_url.is_some()));
    println!(
        "store: {}",
        if database_url.is_some() {
            "postgres (BENCH_DATABASE_URL)"
        } else {
            "memory (set BENCH_DATABASE_URL to bench Postgres)"
        }
    );
    println!(
        "relay: figures 1 and 3 on {}; figure 2 on {RELAY_BIN} as a child process",
        if opts.child_for_all {
            "the same binary as a child process"
        } else {
            "a relay in this process (Application::build, on its own runtime)"
        },
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Both ends of every stream are in this process when the relay is.
    let fds_per_fan_out_stream = if opts.child_for_all { 1 } else { 2 };
    let fds = raise_fd_limit(
        (plan.idle_subscribers as u64)
            .max((plan.many_vaults * plan.many_subscribers_per_vault) as u64)
            .max(plan.fan_out_subscribers as u64 * fds_per_fan_out_stream)
            + SPARE_FDS,
    );
    println!(
        "machine: {cpus} CPUs; open-file limit {}; entries of {ENTRY_BYTES} bytes{}",
        fds.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        if opts.quick {
            "; QUICK mode: reduced sizes, figures are not measured at the targets' conditions"
        } else {
            ""
        }
    );
    if let Some(limit) = fds {
        let room = limit.saturating_sub(SPARE_FDS) as usize;
        let fan_out_room = room / fds_per_fan_out_stream as usize;
        if fan_out_room < plan.fan_out_subscribers {
            println!(
                "note: the open-file limit ({limit}) allows only {fan_out_room} fan-out streams, \
                 not {}; run scripts/bench (or `ulimit -n 65536` first) for the full figure",
                plan.fan_out_subscribers
            );
            plan.fan_out_subscribers = fan_out_room.max(1);
        }
        if room < plan.idle_subscribers {
            println!(
                "note: the open-file limit ({limit}) allows only {room} idle streams, not {}; \
                 run scripts/bench (or `ulimit -n 65536` first) for the full figure",
                plan.idle_subscribers
            );
            plan.idle_subscribers = room.max(1);
        }
        let many = plan.many_vaults * plan.many_subscribers_per_vault;
        if room < many {
            println!(
                "note: the open-file limit ({limit}) allows only {room} streams for the many-vaults \
                 case, not {many}; run scripts/bench for the full figure"
            );
            plan.many_vaults = (room / plan.many_subscribers_per_vault).max(1);
        }
    }
    println!();

    let text = entry_text();
    let relay = if opts.child_for_all {
        Relay::child(database_url.clone()).await?
    } else {
        Relay::in_process(database_url.clone())?
    };
    let api = Arc::new(Api::setup(relay.addr).await?);

    let child_pid = match relay.process {
        RelayProcess::Child(_) => Some(relay.pid()),
        RelayProcess::InProcess { .. } => None,
    };
    let targets = Targets::for_store(database_url.is_some());
    if opts.runs(1) {
        fan_out(&api, child_pid, &plan, &text, &targets).await?;
        println!();
    }

    if opts.runs(2) {
        let idle_relay = Relay::child(database_url.clone()).await?;
        let idle_api = Api::setup(idle_relay.addr).await?;
        let outcome = storm_then_idle(&idle_relay, &idle_api, &plan).await;
        idle_relay.stop();
        outcome?;
        println!();
    }

    if opts.runs(3) {
        replay(&api, plan.replay_rows, &text).await?;
        println!();
    }
    relay.stop();

    if opts.runs(4) {
        let many_relay = Relay::child(database_url.clone()).await?;
        let many_api = Arc::new(Api::setup(many_relay.addr).await?);
        let outcome = many_vaults(&many_api, &plan, &text, &targets).await;
        many_relay.stop();
        outcome?;
    }
    Ok(())
}

/// What each figure is measured against, by store: the issue's targets,
/// and the figures of the design before this one where a target is a
/// ratio to them.
struct Targets {
    store: &'static str,
    delivery_p99_ms: f64,
    frames_per_cpu_sec_before: f64,
    many_p50_ms_before: f64,
    many_p99_ms_before: f64,
}

impl Targets {
    fn for_store(postgres: bool) -> Self {
        if postgres {
            Targets {
                store: "Postgres",
                delivery_p99_ms: 15.0,
                frames_per_cpu_sec_before: 110_000.0,
                many_p50_ms_before: 1.7,
                many_p99_ms_before: 10.1,
            }
        } else {
            Targets {
                store: "memory",
                delivery_p99_ms: 10.0,
                frames_per_cpu_sec_before: 162_000.0,
                many_p50_ms_before: f64::NAN,
                many_p99_ms_before: 0.7,
            }
        }
    }
}

/// `met` or `MISSED`, for a figure beside its target.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// How one subscriber's stream departs from its vault's acknowledged rows
/// (`acked`, sorted), if it does: each must arrive exactly once, in seq
/// order. Rows it saw that were not acknowledged in the measurement (the
/// warm-up's) are left out.
fn stream_fault(acked: &[i64], received: impl Iterator<Item = i64>) -> Option<String> {
    let mut next = 0;
    for seq in received.filter(|seq| acked.binary_search(seq).is_ok()) {
        match acked.get(next) {
            Some(&want) if want == seq => next += 1,
            Some(&want) if seq < want => {
                return Some(format!("seq {seq} again (or out of order) before {want}"));
            }
            Some(&want) => return Some(format!("seq {want} skipped, {seq} came instead")),
            None => return Some(format!("seq {seq} again, after the last row")),
        }
    }
    acked
        .get(next)
        .map(|want| format!("{} rows from seq {want} on never came", acked.len() - next))
}

/// Prints whether every subscriber got each acknowledged row of its vault
/// exactly once and in order; `streams` is (acked rows, received seqs).
fn report_exactly_once<'a, I>(streams: impl Iterator<Item = (&'a [i64], I)>)
where
    I: Iterator<Item = i64>,
{
    let faults: Vec<(usize, String)> = streams
        .enumerate()
        .filter_map(|(i, (acked, received))| stream_fault(acked, received).map(|f| (i, f)))
        .collect();
    match faults.first() {
        None => println!("every acknowledged row reached every subscriber once, in seq order: met"),
        Some((i, fault)) => println!(
            "every acknowledged row reached every subscriber once, in seq order: MISSED \
             ({} streams; first, subscriber {i}: {fault})",
            faults.len()
        ),
    }
}

/// The command as the user would type it again.
fn command_line(opts: &Options, postgres: bool) -> String {
    let env = if postgres {
        "BENCH_DATABASE_URL=... "
    } else {
        ""
    };
    if let Ok(cmd) = std::env::var("BENCH_COMMAND") {
        return format!("{env}{cmd}");
    }
    let mut args = Vec::new();
    if opts.quick {
        args.push("--quick".to_string());
    }
    if opts.child_for_all {
        args.push("--child".to_string());
    }
    for n in &opts.only {
        args.push(format!("--figure {n}"));
    }
    if args.is_empty() {
        format!("{env}cargo bench --bench stream")
    } else {
        format!("{env}cargo bench --bench stream -- {}", args.join(" "))
    }
}

fn entry_text() -> String {
    let line = "bench entry: a note one agent leaves for the others on this vault. ";
    line.repeat(ENTRY_BYTES / line.len() + 1)[..ENTRY_BYTES].to_string()
}

// ---------------------------------------------------------------------------
// Figure 1: commit-to-delivery latency at fan-out.

/// What one fan-out subscriber saw.
struct Received {
    /// (seq, nanoseconds since the bench's time base) per entry frame.
    entries: Vec<(i64, u64)>,
    /// Why the relay ended the stream early, if it did.
    ended: Option<String>,
}

async fn fan_out(
    api: &Arc<Api>,
    relay_pid: Option<u32>,
    plan: &Plan,
    text: &str,
    targets: &Targets,
) -> Result<()> {
    let subs = plan.fan_out_subscribers;
    let rate = plan.appends_per_sec;
    let secs = plan.fan_out_secs;
    let total = u64::from(rate) * secs;
    println!(
        "[1] fan-out: {subs} subscribers on one vault, {rate} appends/s for {secs} s \
         ({total} appends)"
    );
    let vault = api.create_vault().await?;
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(subs);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut readers = Vec::with_capacity(subs);
    let capacity = (total as usize) + 64;
    for i in 0..subs {
        let api = api.clone();
        let vault = vault.clone();
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let permits = permits.clone();
        readers.push(tokio::spawn(async move {
            let mut received = Received {
                entries: Vec::with_capacity(capacity),
                ended: None,
            };
            let Some(mut ws) =
                open_reporting(&api, &vault, &format!("fan-{i}"), Some(&permits), ready).await
            else {
                return received;
            };
            let stopped = stop.wait_for(|s| *s);
            tokio::pin!(stopped);
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = &mut stopped => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let at = nanos_since(base);
                        if let Some(seq) = entry_seq(&t) {
                            received.entries.push((seq, at));
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        received.ended = Some(format!("closed by the relay: {c:?}"));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        received.ended = Some(format!("socket error: {e}"));
                        break;
                    }
                    None => {
                        received.ended = Some("socket closed".into());
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            received
        }));
    }
    drop(ready_tx);
    let connect_started = Instant::now();
    for _ in 0..subs {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("opening a fan-out stream failed: {e}").into()),
            None => return Err("the fan-out subscribers stopped before connecting".into()),
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();

    // Warm-up rows (not measured) and time for the join presence to settle.
    const WARM_UP: u64 = 10;
    for _ in 0..WARM_UP {
        api.append(&vault, text).await?;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The writer runs on a thread and runtime of its own, with its own
    // connections: on this runtime its ticks and answers would wait behind
    // the thousand subscriber sockets this process reads, and the figure
    // would be this process's scheduling, not the relay's.
    let sends = Arc::new(Mutex::new(Vec::<(i64, u64, u64)>::with_capacity(
        total as usize,
    )));
    let period = Duration::from_secs(1) / rate;
    let cpu_before = cpu_split(relay_pid);
    let delivered_before = delivered.load(Ordering::Relaxed);
    let writer = {
        let (vault, text, sends) = (vault.clone(), text.to_string(), sends.clone());
        on_own_thread(api, move |api| async move {
            let api = Arc::new(api);
            let in_flight = Arc::new(Semaphore::new(64));
            // The schedule starts here, once the thread and its runtime
            // are up, so their start is not counted as lateness.
            let writing = Instant::now();
            let mut tick = tokio::time::interval(period);
            let mut writes = Vec::with_capacity(total as usize);
            // A send is late when it leaves more than one period after
            // its slot: the writer could not keep the rate it was asked
            // for, because 64 appends were still unanswered.
            let mut late = 0u64;
            for i in 0..total {
                tick.tick().await;
                let permit = in_flight.clone().acquire_owned().await?;
                if writing.elapsed() > period * (i as u32 + 1) {
                    late += 1;
                }
                let api = api.clone();
                let vault = vault.clone();
                let text = text.clone();
                let sends = sends.clone();
                writes.push(tokio::spawn(async move {
                    let sent = nanos_since(base);
                    let seq = api.append(&vault, &text).await?;
                    let answered = nanos_since(base);
                    drop(permit);
                    lock(&sends).push((seq, sent, answered - sent));
                    Ok::<_, BoxError>(())
                }));
            }
            for w in writes {
                w.await??;
            }
            Ok((late, writing.elapsed().as_secs_f64()))
        })
    };
    // Waited for off this runtime's workers, which the subscribers need.
    let (late, write_secs) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the writer panicked")??;
    let cpu_after = cpu_split(relay_pid);
    let delivered_while_writing = delivered.load(Ordering::Relaxed) - delivered_before;

    // Wait for every delivery, or give up after a while: late or missing
    // deliveries are part of the figure.
    let expected = (total + WARM_UP) * subs as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(subs);
    for r in readers {
        results.push(r.await?);
    }

    let sends = std::mem::take(&mut *lock(&sends));
    let sent_at: HashMap<i64, u64> = sends.iter().map(|&(seq, t, _)| (seq, t)).collect();
    let first_sent = sends.iter().map(|&(_, t, _)| t).min().unwrap_or(0);
    let mut latencies = Vec::with_capacity(total as usize * subs);
    let mut last_received = first_sent;
    let mut ended = Vec::new();
    for r in &results {
        for &(seq, at) in &r.entries {
            if let Some(&t) = sent_at.get(&seq) {
                latencies.push(at.saturating_sub(t));
                last_received = last_received.max(at);
            }
        }
        if let Some(why) = &r.ended {
            ended.push(why.clone());
        }
    }
    let mut acked: Vec<i64> = sends.iter().map(|&(seq, _, _)| seq).collect();
    acked.sort_unstable();
    let mut rtts: Vec<u64> = sends.iter().map(|&(_, _, rtt)| rtt).collect();
    latencies.sort_unstable();
    rtts.sort_unstable();

    let pairs = total * subs as u64;
    let got = latencies.len() as u64;
    let reached = total as f64 / write_secs;
    println!(
        "streams opened in {connect_secs:.2} s; appends sent in {write_secs:.2} s \
         (append round trip p50 = {}, p99 = {})",
        ms(percentile(&rtts, 50.0)),
        ms(percentile(&rtts, 99.0)),
    );
    println!(
        "writer rate reached = {reached:.0} appends/s of {rate} asked (target {rate}: {}); \
         late sends = {late} of {total} (target 0: {})",
        verdict(reached >= f64::from(rate) * 0.99),
        verdict(late == 0),
    );
    let p99 = percentile(&latencies, 99.0);
    println!(
        "delivery p50 = {}, p99 = {} (target p99 <= {} ms on {}: {}) [send of the append -> \
         entry frame at each subscriber; p99.9 = {}, max = {}; {} of {} (subscriber, row) \
         pairs delivered]",
        ms(percentile(&latencies, 50.0)),
        ms(p99),
        targets.delivery_p99_ms,
        targets.store,
        verdict(p99 as f64 / 1e6 <= targets.delivery_p99_ms && got == pairs),
        ms(percentile(&latencies, 99.9)),
        ms(latencies.last().copied().unwrap_or(0)),
        thousands(got),
        thousands(pairs),
    );
    let window = last_received.saturating_sub(first_sent) as f64 / 1e9;
    let rate_delivered = if window > 0.0 {
        got as f64 / window
    } else {
        0.0
    };
    println!(
        "fan-out throughput = {} frames/s delivered at {subs} subscribers (offered {} frames/s)",
        thousands(rate_delivered.round() as u64),
        thousands(u64::from(rate) * subs as u64),
    );
    if let (Some((r0, c0)), Some((r1, c1))) = (cpu_before, cpu_after) {
        println!(
            "CPU while appending: relay {:.2} cores, bench clients {:.2} cores (machine has {})",
            (r1 - r0) / write_secs,
            (c1 - c0) / write_secs,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        let relay_cpu = r1 - r0;
        if relay_cpu > 0.0 {
            let per_cpu_sec = delivered_while_writing as f64 / relay_cpu;
            let wanted = 2.0 * targets.frames_per_cpu_sec_before;
            println!(
                "frames per relay CPU-second = {} ({} frames while appending / {relay_cpu:.2} \
                 relay CPU-s) (before: {} on {}; target >= 2x = {}: {}, {:.2}x)",
                thousands(per_cpu_sec.round() as u64),
                thousands(delivered_while_writing),
                thousands(targets.frames_per_cpu_sec_before as u64),
                targets.store,
                thousands(wanted as u64),
                verdict(per_cpu_sec >= wanted),
                per_cpu_sec / targets.frames_per_cpu_sec_before,
            );
        }
    }
    report_exactly_once(
        results
            .iter()
            .map(|r| (acked.as_slice(), r.entries.iter().map(|&(seq, _)| seq))),
    );
    if !ended.is_empty() {
        println!(
            "note: the relay ended {} of {subs} streams early (first: {})",
            ended.len(),
            ended[0]
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Figure 2: a reconnect storm, then resident memory per idle stream.

async fn storm_then_idle(relay: &Relay, api: &Api, plan: &Plan) -> Result<()> {
    let n = plan.idle_subscribers;
    let vault_count = plan.storm_vaults.max(1);
    let pid = relay.pid();
    println!(
        "[2] storm: {n} streams over {vault_count} vaults all connecting at once, then idle; \
         relay is a child process (pid {pid})"
    );
    let mut vaults = Vec::with_capacity(vault_count);
    for _ in 0..vault_count {
        vaults.push(api.create_vault().await?);
    }
    let text = entry_text();
    for v in &vaults {
        api.append(v, &text).await?;
    }

    // Open and close a few streams first so one-time allocations (thread
    // caches, the first channel) are not charged to the storm.
    for i in 0..16 {
        let mut ws = api
            .connect(&vaults[0], &format!("warm-{i}"), None, 4 * 1024)
            .await?;
        expect_hello(&mut ws).await?;
        let _ = ws.close(None).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = relay.rss_kib()?;

    // A REST reader, one read at a time, for as long as the storm lasts. It
    // runs on a thread and runtime of its own with its own connection, so
    // what it measures is the relay, not this process's ten thousand
    // connecting clients queued ahead of it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reader_stop_tx, reader_stop) = watch::channel(false);
    let reader = {
        let vault = vaults[0].clone();
        let stop = reader_stop;
        on_own_thread(api, move |api| async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while !*stop.borrow() {
                let started = Instant::now();
                match api.read(&vault).await {
                    Ok(()) => latencies.push(started.elapsed().as_nanos() as u64),
                    Err(_) => failures += 1,
                }
            }
            Ok((latencies, failures))
        })
    };

    let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(n);
    let closed_early = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let api = api.clone();
        let vault = vaults[i % vault_count].clone();
        let mut stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let closed_early = closed_early.clone();
        streams.push(tokio::spawn(async move {
            let Some(mut ws) =
                open_reporting(&api, &vault, &format!("storm-{i}"), None, ready).await
            else {
                return;
            };
            // Keep reading so pings are answered and presence frames drain.
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            closed_early.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(ready_tx);
    let mut failed = Vec::new();
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => failed.push(e),
            None => break,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // The reader stops with the storm.
    let _ = reader_stop_tx.send(true);
    let (mut reads, read_failures) = reader.join().map_err(|_| "the REST reader panicked")??;
    reads.sort_unstable();
    if !failed.is_empty() {
        println!(
            "note: {} of {n} streams failed to open (first: {})",
            failed.len(),
            failed[0]
        );
    }
    println!(
        "time to open all {n} = {open_secs:.2} s (target <= 5 s: {})",
        verdict(open_secs <= 5.0 && failed.is_empty())
    );
    let read_p99 = percentile(&reads, 99.0);
    println!(
        "REST reads while they connect: p50 = {}, p99 = {} (target p99 < 50 ms: {}) \
         [{} reads one at a time, max = {}, {read_failures} failed]",
        ms(percentile(&reads, 50.0)),
        ms(read_p99),
        verdict((read_p99 as f64) < 50e6 && read_failures == 0),
        thousands(reads.len() as u64),
        ms(reads.last().copied().unwrap_or(0)),
    );

    // Let the join presence frames go out and the relay settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with = relay.rss_kib()?;
    let early = closed_early.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for s in streams {
        s.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = relay.rss_kib()?;
    let opened = (n - failed.len()).max(1);
    let per_stream = (with.saturating_sub(before) * 1024) as f64 / opened as f64;
    println!(
        "relay RSS (VmRSS) before = {}, with {opened} idle streams = {}, after closing them = {}",
        mib(before),
        mib(with),
        mib(after),
    );
    println!(
        "memory per idle stream = {:.1} KB ({} bytes) (target <= 10 KB: {}; before: 16.4 KB)",
        per_stream / 1000.0,
        thousands(per_stream.round() as u64),
        verdict(per_stream <= 10_000.0),
    );
    if early > 0 {
        println!("note: the relay closed {early} idle streams before the measurement ended");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Figure 3: replay rate for a subscriber far behind.

async fn replay(api: &Arc<Api>, rows: u64, text: &str) -> Result<()> {
    println!("[3] replay: a subscriber resuming {rows} rows behind (since=0)");
    let vault = api.create_vault().await?;
    let next = Arc::new(AtomicU64::new(0));
    let head = Arc::new(AtomicU64::new(0));
    let filling = Instant::now();
    let mut workers = Vec::with_capacity(FILL_CONCURRENCY);
    for _ in 0..FILL_CONCURRENCY {
        let api = api.clone();
        let vault = vault.clone();
        let text = text.to_string();
        let next = next.clone();
        let head = head.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < rows {
                let seq = api.append(&vault, &text).await?;
                head.fetch_max(seq as u64, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let fill_secs = filling.elapsed().as_secs_f64();
    let head = head.load(Ordering::Relaxed) as i64;

    let started = Instant::now();
    let mut ws = api.connect(&vault, "replay", Some(0), 64 * 1024).await?;
    let mut entries = 0u64;
    let mut last_seq = 0i64;
    let caught_up = loop {
        let t = next_text(&mut ws).await?;
        let frame: Frame = serde_json::from_str(&t)?;
        match frame.kind {
            "entry" => {
                let seq = frame.seq.ok_or("an entry frame without seq")?;
                if seq <= last_seq {
                    return Err(format!("replay out of order: seq {seq} after {last_seq}").into());
                }
                last_seq = seq;
                entries += 1;
            }
            "caught_up" => break frame.seq.ok_or("a caught_up frame without seq")?,
            _ => {}
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    if entries != rows || caught_up != head {
        return Err(format!(
            "replay returned {entries} rows up to seq {caught_up}; expected {rows} up to {head}"
        )
        .into());
    }
    println!(
        "filled the vault in {fill_secs:.2} s ({} appends/s over HTTP, {FILL_CONCURRENCY} in flight)",
        thousands((rows as f64 / fill_secs).round() as u64),
    );
    println!(
        "replay rate = {} rows/s ({} rows in {secs:.3} s, connect to caught_up) \
         (target > 50,000 rows/s)",
        thousands((rows as f64 / secs).round() as u64),
        thousands(rows),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Figure 4: many vaults, a few subscribers each.

async fn many_vaults(api: &Arc<Api>, plan: &Plan, text: &str, targets: &Targets) -> Result<()> {
    let vault_count = plan.many_vaults;
    let per_vault = plan.many_subscribers_per_vault;
    let rate = plan.many_appends_per_sec;
    let secs = plan.many_secs;
    let total = u64::from(rate) * secs;
    let subs = vault_count * per_vault;
    println!(
        "[4] many vaults: {vault_count} vaults x {per_vault} subscribers ({subs} streams), \
         {rate} appends/s spread over them for {secs} s ({total} appends); relay is a child process"
    );
    let mut vaults = Vec::with_capacity(vault_count);
    {
        let permits = Arc::new(Semaphore::new(FILL_CONCURRENCY));
        let mut creating = Vec::with_capacity(vault_count);
        for _ in 0..vault_count {
            let api = api.clone();
            let permits = permits.clone();
            creating.push(tokio::spawn(async move {
                let _permit = permits.acquire().await?;
                api.create_vault().await
            }));
        }
        for c in creating {
            vaults.push(c.await??);
        }
    }
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(subs);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut readers = Vec::with_capacity(subs);
    for i in 0..subs {
        let api = api.clone();
        let vault = vaults[i % vault_count].clone();
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let permits = permits.clone();
        readers.push(tokio::spawn(async move {
            let mut entries: Vec<(i64, u64)> = Vec::new();
            let Some(mut ws) =
                open_reporting(&api, &vault, &format!("many-{i}"), Some(&permits), ready).await
            else {
                return entries;
            };
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let at = nanos_since(base);
                        if let Some(seq) = entry_seq(&t) {
                            entries.push((seq, at));
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
            let _ = ws.close(None).await;
            entries
        }));
    }
    drop(ready_tx);
    for _ in 0..subs {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("opening a stream failed: {e}").into()),
            None => return Err("the subscribers stopped before connecting".into()),
        }
    }
    // The join presence frames settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // (vault index, seq, sent at) per append.
    let sends = Arc::new(Mutex::new(Vec::<(usize, i64, u64)>::with_capacity(
        total as usize,
    )));
    let in_flight = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut writes = Vec::with_capacity(total as usize);
    let writing = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let api = api.clone();
        let index = i as usize % vault_count;
        let vault = vaults[index].clone();
        let text = text.to_string();
        let sends = sends.clone();
        writes.push(tokio::spawn(async move {
            let sent = nanos_since(base);
            let seq = api.append(&vault, &text).await?;
            drop(permit);
            lock(&sends).push((index, seq, sent));
            Ok::<_, BoxError>(())
        }));
    }
    for w in writes {
        w.await??;
    }
    let write_secs = writing.elapsed().as_secs_f64();
    let expected = total * per_vault as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let sends = std::mem::take(&mut *lock(&sends));
    let sent_at: HashMap<i64, u64> = sends.iter().map(|&(_, seq, t)| (seq, t)).collect();
    let mut acked: Vec<Vec<i64>> = vec![Vec::new(); vault_count];
    for &(index, seq, _) in &sends {
        acked[index].push(seq);
    }
    for rows in &mut acked {
        rows.sort_unstable();
    }
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut received = Vec::with_capacity(subs);
    for r in readers {
        let entries = r.await?;
        for &(seq, at) in &entries {
            if let Some(&t) = sent_at.get(&seq) {
                latencies.push(at.saturating_sub(t));
            }
        }
        received.push(entries);
    }
    latencies.sort_unstable();
    let before = |v: f64| {
        if v.is_nan() {
            "not measured".to_string()
        } else {
            format!("{v} ms")
        }
    };
    println!(
        "appends sent in {write_secs:.2} s ({:.0}/s of {rate} asked)",
        total as f64 / write_secs
    );
    println!(
        "delivery p50 = {}, p99 = {} (before on {}: p50 {}, p99 {}) [p99.9 = {}, max = {}; \
         {} of {} (subscriber, row) pairs delivered]",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        targets.store,
        before(targets.many_p50_ms_before),
        before(targets.many_p99_ms_before),
        ms(percentile(&latencies, 99.9)),
        ms(latencies.last().copied().unwrap_or(0)),
        thousands(latencies.len() as u64),
        thousands(expected),
    );
    report_exactly_once(received.iter().enumerate().map(|(i, entries)| {
        (
            acked[i % vault_count].as_slice(),
            entries.iter().map(|&(seq, _)| seq),
        )
    }));
    Ok(())
}

// ---------------------------------------------------------------------------
// The relay under test.

enum RelayProcess {
    InProcess {
        shutdown: Shutdown,
        thread: std::thread::JoinHandle<()>,
    },
    Child(ChildGuard),
}

/// A relay child process, killed if the benchmark ends without stopping it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Relay {
    addr: SocketAddr,
    process: RelayProcess,
}

impl Relay {
    /// The relay in this process, on a runtime of its own so its scheduling
    /// stays apart from the clients'.
    fn in_process(database_url: Option<String>) -> Result<Relay> {
        let mut config = Config::for_tests();
        config.admin_token = Some(ADMIN_TOKEN.to_string());
        config.database_url = database_url;
        // One writer session appends faster than the default write limit.
        config.rate_limit_writes_per_sec = 0;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("relay")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let app = match Application::build(config).await {
                        Ok(app) => app,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let ready = app
                        .local_addr()
                        .map(|addr| (addr, app.shutdown_handle()))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(ready);
                    if let Err(e) = app.run_until_stopped().await {
                        eprintln!("error: the in-process relay stopped: {e}");
                    }
                });
            })?;
        let (addr, shutdown) = rx
            .recv()
            .map_err(|_| "the in-process relay did not start")?
            .map_err(|e| format!("the in-process relay did not start: {e}"))?;
        Ok(Relay {
            addr,
            process: RelayProcess::InProcess { shutdown, thread },
        })
    }

    /// The release binary as a child process.
    async fn child(database_url: Option<String>) -> Result<Relay> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(RELAY_BIN);
        cmd.env("PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "error")
            // One writer session appends faster than the default write limit.
            .env("RATE_LIMIT_WRITES_PER_SEC", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {RELAY_BIN}: {e}"))?;
        let mut relay = Relay {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process: RelayProcess::Child(ChildGuard(child)),
        };
        let health = format!("http://{}/health", relay.addr);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let RelayProcess::Child(c) = &mut relay.process
                && let Some(status) = c.0.try_wait()?
            {
                return Err(format!("{RELAY_BIN} exited at start-up ({status})").into());
            }
            if let Ok(r) = http.get(&health).send().await
                && r.status().is_success()
            {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                return Err(format!("{RELAY_BIN} did not answer {health} within 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        match &self.process {
            RelayProcess::InProcess { .. } => std::process::id(),
            RelayProcess::Child(c) => c.0.id(),
        }
    }

    /// The relay's resident set, in KiB.
    fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
    }

    /// Stops the relay: the shutdown signal in process, SIGTERM for a child
    /// (SIGKILL if it is still running 10 s later).
    fn stop(self) {
        match self.process {
            RelayProcess::InProcess { shutdown, thread } => {
                shutdown.trigger();
                let _ = thread.join();
            }
            RelayProcess::Child(mut child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.0.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.0.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Dropping the guard kills it.
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The client side: the public API, as a client uses it.

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: Option<i64>,
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    addr: SocketAddr,
    session: String,
}

impl Api {
    /// The same session over a client of its own (its own connections, for
    /// use on another runtime).
    fn with_own_connections(&self) -> Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            ..self.clone()
        })
    }

    /// Registers an astation, mints a granted session with its token.
    async fn setup(addr: SocketAddr) -> Result<Api> {
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

    async fn create_vault(&self) -> Result<String> {
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
    async fn append(&self, vault: &str, text: &str) -> Result<i64> {
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
    async fn read(&self, vault: &str) -> Result<()> {
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
    async fn connect(
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
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes> {
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
fn entry_seq(text: &str) -> Option<i64> {
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
async fn open_reporting(
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

async fn expect_hello(ws: &mut Ws) -> Result<()> {
    let t = next_text(ws).await?;
    let frame: Frame = serde_json::from_str(&t)?;
    if frame.kind != "hello" {
        return Err(format!("the first frame was not hello: {t}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Small helpers.

/// Runs `task` on a thread and current-thread runtime of its own, with its
/// own connections to the relay: what it measures is then the relay, not
/// this process's other tasks (thousands of client sockets) queued ahead of
/// it on the shared runtime.
fn on_own_thread<T, F, Fut>(api: &Api, task: F) -> std::thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce(Api) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let api = api.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move { task(api.with_own_connections()?).await })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// CPU seconds used so far by the relay and by the bench's clients: the
/// relay's threads are named `relay` when it runs in process, otherwise it
/// is the child `relay_pid`. `None` where /proc is not available.
fn cpu_split(relay_pid: Option<u32>) -> Option<(f64, f64)> {
    match relay_pid {
        Some(pid) => Some((
            cpu_secs(&format!("/proc/{pid}/stat"))?,
            cpu_secs("/proc/self/stat")?,
        )),
        None => {
            let (mut relay, mut clients) = (0.0, 0.0);
            for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
                let path = task.path();
                let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                let Some(secs) = cpu_secs(&path.join("stat").to_string_lossy()) else {
                    continue;
                };
                if name.trim_end() == "relay" {
                    relay += secs;
                } else {
                    clients += secs;
                }
            }
            Some((relay, clients))
        }
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds (100 ticks/s).
fn cpu_secs(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name, which is in parentheses: state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Raises the soft open-file limit towards `want` (never above the hard
/// limit); returns the limit now in force. The relay child inherits it.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn raise_fd_limit(want: u64) -> Option<u64> {
    #[repr(C)]
    struct RLimit {
        soft: u64,
        hard: u64,
    }
    const RLIMIT_NOFILE: i32 = 7;
    unsafe extern "C" {
        fn getrlimit(resource: i32, limit: *mut RLimit) -> i32;
        fn setrlimit(resource: i32, limit: *const RLimit) -> i32;
    }
    let mut limit = RLimit { soft: 0, hard: 0 };
    // SAFETY: plain libc calls on a struct laid out as `struct rlimit`.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.soft < want {
        let raised = RLimit {
            soft: want.min(limit.hard),
            hard: limit.hard,
        };
        // SAFETY: as above.
        if unsafe { setrlimit(RLIMIT_NOFILE, &raised) } == 0 {
            limit.soft = raised.soft;
        }
    }
    Some(limit.soft)
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn raise_fd_limit(_want: u64) -> Option<u64> {
    None
}
