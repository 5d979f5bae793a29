//! Small helpers on the process and the OS: a thread and runtime of its own
//! for a task that measures, CPU time and the open-file limit from the
//! kernel, and the mutex, clock and memory-size helpers the figures share.

use std::sync::Mutex;
use std::time::Instant;

use crate::Result;
use crate::client::Api;

/// Runs `task` on a thread and current-thread runtime of its own, with its
/// own connections to the relay: what it measures is then the relay, not
/// this process's other tasks (thousands of client sockets) queued ahead of
/// it on the shared runtime.
pub(crate) fn on_own_thread<T, F, Fut>(api: &Api, task: F) -> std::thread::JoinHandle<Result<T>>
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// CPU seconds used so far by the relay and by the bench's clients: the
/// relay's threads are named `relay` when it runs in process, otherwise it
/// is the child `relay_pid`. `None` where /proc is not available.
pub(crate) fn cpu_split(relay_pid: Option<u32>) -> Option<(f64, f64)> {
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
pub(crate) fn cpu_secs(stat_path: &str) -> Option<f64> {
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
pub(crate) fn raise_fd_limit(want: u64) -> Option<u64> {
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
pub(crate) fn raise_fd_limit(_want: u64) -> Option<u64> {
    None
}
