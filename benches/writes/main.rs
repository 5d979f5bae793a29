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

use std::process::ExitCode;
use std::time::Duration;

#[path = "../common/mod.rs"]
mod common;

mod measure;
mod raw;
mod relay;
mod scratch;

use common::{client_runtime, thousands};
use measure::{Outcome, measure};
use scratch::ScratchDb;
use sqlx::Connection;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

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
