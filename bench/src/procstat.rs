//! CPU time and anonymous memory of a server's process tree, from /proc.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (ppid, utime + stime + cutime + cstime in ticks) of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: state is field 3.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let sum = (11..15).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum();
    Some((ppid, sum))
}

/// `pid` and every live descendant.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((ppid, _)) = stat(p)
            {
                parent.insert(p, ppid);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// CPU seconds used so far by the tree (children that exited and were reaped count through
/// their parent's cutime/cstime).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks: u64 = tree(pid).iter().filter_map(|p| stat(*p)).map(|s| s.1).sum();
    ticks as f64 / ticks_per_second()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// RssAnon of the whole tree now, in KiB.
pub fn anon_kib(pid: u32) -> u64 {
    tree(pid).iter().map(|p| status_kib(*p, "RssAnon:")).sum()
}

/// VmHWM (peak resident set, file-backed pages included) of the main process, in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Samples the RssAnon of one or more trees (summed) every 50 ms while a workload runs;
/// `stop` returns the peak.
#[derive(Debug)]
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl PeakSampler {
    pub fn start(pid: u32) -> Self {
        Self::start_many(vec![pid])
    }

    /// The peak of the sum over the trees of `pids` (a stack of several servers).
    pub fn start_many(pids: Vec<u32>) -> Self {
        let total = move || pids.iter().map(|p| anon_kib(*p)).sum::<u64>();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(total()));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(total(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// Peak RssAnon in KiB.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}
