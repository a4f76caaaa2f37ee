//! What the harness reads about the processes under test, from `/proc`: CPU time (all threads,
//! from `task/*/schedstat`, nanoseconds on CPU) and resident memory (`VmRSS`), for a process
//! and its descendants (nginx's master and workers) or for named threads of this process (the
//! in-process double and load generator).

use std::path::Path;

/// Something whose CPU time and memory are measured.
#[derive(Debug, Clone)]
pub enum Probe {
    /// A process and all its descendants.
    Process(u32),
    /// The threads of this process whose name starts with the prefix.
    Threads(&'static str),
}

/// One reading of a probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Nanoseconds on CPU, all threads, since they started.
    pub cpu_ns: u64,
    /// Resident memory in bytes (processes only; 0 for threads).
    pub rss_bytes: u64,
}

impl Probe {
    /// Reads the probe now. Vanished processes and threads read as zero.
    pub fn sample(&self) -> Sample {
        match self {
            Probe::Process(pid) => {
                let pids = process_tree(*pid);
                Sample {
                    cpu_ns: pids.iter().map(|&p| process_cpu_ns(p)).sum(),
                    rss_bytes: pids.iter().map(|&p| process_rss_bytes(p)).sum(),
                }
            }
            Probe::Threads(prefix) => Sample { cpu_ns: threads_cpu_ns(prefix), rss_bytes: 0 },
        }
    }
}

/// The first number of a `schedstat` file: nanoseconds spent on CPU.
fn schedstat_ns(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Nanoseconds process `pid` has spent on CPU, all threads.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks.flatten().map(|task| schedstat_ns(&task.path().join("schedstat"))).sum()
}

/// Nanoseconds the threads of this process named `prefix*` have spent on CPU. Threads that
/// ended are not counted, so probes must outlive the window they measure.
pub fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.starts_with(prefix)))
        .map(|task| schedstat_ns(&task.path().join("schedstat")))
        .sum()
}

/// The thread ids of this process's threads named `prefix*`.
pub fn thread_ids(prefix: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.starts_with(prefix)))
        .filter_map(|task| task.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// `VmRSS` of a process, in bytes.
pub fn process_rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The parent pid of a process, from `/proc/<pid>/stat` (the field after the parenthesised
/// command name, which may itself hold spaces and parentheses).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and every process descended from it.
pub fn process_tree(root: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter_map(|pid| parent_pid(pid).map(|parent| (pid, parent)))
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    tree
}

/// The load average line of `/proc/loadavg` (1, 5 and 15 minutes).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU µs per request of one probe over a window: the CPU time between two samples over
/// the requests completed.
pub fn cpu_us_per_request(first: &Sample, last: &Sample, requests: u64) -> f64 {
    last.cpu_ns.saturating_sub(first.cpu_ns) as f64 / 1000.0 / requests.max(1) as f64
}

/// Total bytes of the regular files under `dir` (recursively); 0 when it does not exist.
pub fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_nonzero() {
        let me = Probe::Process(std::process::id()).sample();
        assert!(me.rss_bytes > 1024 * 1024, "rss {}", me.rss_bytes);
        // Burn a little CPU so the reading cannot be zero on a coarse clock.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(Probe::Process(std::process::id()).sample().cpu_ns > 0);
        assert!(process_tree(std::process::id()).contains(&std::process::id()));
    }

    #[test]
    fn threads_are_found_by_name() {
        let handle = std::thread::Builder::new()
            .name("sgperf-probe-t".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(30) {}
                threads_cpu_ns("sgperf-probe-t")
            })
            .unwrap();
        assert!(handle.join().unwrap() > 1_000_000);
        assert_eq!(threads_cpu_ns("no-such-thread-name"), 0);
    }

    #[test]
    fn directory_bytes_sums_nested_files() {
        let dir = std::env::temp_dir().join(format!("sgperf-dirbytes-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("sub/b"), [0u8; 32]).unwrap();
        assert_eq!(directory_bytes(&dir), 42);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(directory_bytes(&dir), 0);
    }
}
