//! What the benchmarks read off processes and the machine: RSS, CPU time, and the
//! formatting of the tables.

use std::path::Path;
use std::time::Duration;

pub(crate) fn machine() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    println!(
        "Machine: {cores} cores, {memory} GiB memory, {}\n",
        std::env::consts::ARCH
    );
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub(crate) fn memory_kib(pid: u32) -> (u64, u64) {
    let memory = resident_kib(pid);
    (memory.rss, memory.peak)
}

/// A process's resident memory from `/proc/<pid>/status`, in KiB: what it costs is
/// `anonymous` (its own heap and stacks, paid per process); `file` is mostly the binary's
/// code pages, shared through the page cache by every process of the same binary on a
/// node (and charged to one cgroup).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Resident {
    pub rss: u64,
    pub peak: u64,
    pub anonymous: u64,
    pub file: u64,
}

pub(crate) fn resident_kib(pid: u32) -> Resident {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Resident {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
        anonymous: field("RssAnon:"),
        file: field("RssFile:") + field("RssShmem:"),
    }
}

/// CPU time of a process, summed over its threads from `/proc/<pid>/task/*/schedstat`
/// (nanoseconds: the tick counts of `/proc/<pid>/stat` are too coarse for a sidecar round).
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// A path as given relative to the working directory, for tables.
pub(crate) fn shown(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd)
        .unwrap_or(path)
        .display()
        .to_string()
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Drops a binary's pages from the page cache, so that the next start reads it from disk
/// as a node does with an image it has just pulled. A binary a linker or `objcopy` has
/// just written sits in the cache in folios as large as its writes (2 MiB), and Linux 6.18
/// maps a whole cached folio on a fault: one string read would then make 2 MiB of
/// read-only data resident, which no node that pulled the image sees.
pub(crate) fn evict_from_page_cache(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path)?;
    // Dirty pages are not dropped: write them back first.
    file.sync_all()?;
    // SAFETY: a valid open descriptor; the advice only drops clean cached pages.
    let result = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if result != 0 {
        return Err(std::io::Error::from_raw_os_error(result));
    }
    Ok(())
}
