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

use std::process::ExitCode;
use std::sync::Arc;

// The relay this process runs in-process allocates as the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../common/mod.rs"]
mod common;

mod client;
mod fan_out;
mod many_vaults;
mod relay;
mod replay;
mod storm;
mod system;
mod writer;

use client::Api;
use common::RELAY_BIN;
use fan_out::fan_out;
use many_vaults::many_vaults;
use relay::{Relay, RelayProcess};
use replay::replay;
use storm::storm_then_idle;
use system::raise_fd_limit;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

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
    let runtime = match common::client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
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

/// What each figure is measured against, by store: the targets,
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
