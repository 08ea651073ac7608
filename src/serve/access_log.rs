//! The access log (`http.access-log`): one line per response on the boot ports (HTTP and
//! HTTPS), in nginx's `combined` format with the response time after it:
//!
//! ```text
//! 192.0.2.7 - - [04/Dec/2026:03:24:13 +0000] "GET /boot.ipxe?mac=.. HTTP/1.1" 200 1234 "-" "iPXE/1.21.1" 0.003
//! ```
//!
//! The event loops never write it: each response is one `try_send` of its fields into a
//! bounded queue, and a thread of its own formats and appends them, flushing after each batch.
//! A full queue drops the line and counts it (the writer logs how many were dropped); a loop
//! never waits for the disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use zpxe_engine::http::{Method, Version};

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 8192;

/// One response, as the access log writes it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) peer: SocketAddr,
    /// When the response was complete.
    pub(crate) at: SystemTime,
    /// `None`: the request was refused before its method was known (written as `"-"`).
    pub(crate) method: Option<Method>,
    pub(crate) version: Option<Version>,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) status: u16,
    /// Content bytes sent.
    pub(crate) bytes: u64,
    pub(crate) referer: String,
    pub(crate) user_agent: String,
    /// From the request head to the response's last byte.
    pub(crate) elapsed: Duration,
}

/// The event loops' side of the access log.
#[derive(Debug)]
pub(crate) struct AccessLog {
    tx: Option<SyncSender<Entry>>,
    dropped: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl AccessLog {
    /// Opens (creates, appends to) `path` and starts the writer thread.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| {
                format!(
                    "opening the access log {} (http.access-log)",
                    path.display()
                )
            })?;
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        let path = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("zpxe-access-log".into())
            .spawn(move || write_lines(file, &path, &rx, &counted))
            .context("starting the access log writer")?;
        Ok(Self {
            tx: Some(tx),
            dropped,
            writer: Some(writer),
        })
    }

    /// Queues one line; never waits. A full queue drops it and counts it.
    pub(crate) fn log(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(entry) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for AccessLog {
    /// Lets the writer write what is queued, then waits for it.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: formats and appends lines until every sender is gone, flushing after
/// each batch (whatever was queued when it woke).
fn write_lines(file: File, path: &Path, rx: &Receiver<Entry>, dropped: &AtomicU64) {
    let mut out = BufWriter::with_capacity(64 << 10, file);
    let mut line = String::with_capacity(512);
    let mut reported = 0;
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut res = Ok(());
        while let Some(entry) = next {
            line.clear();
            format_line(&entry, &mut line);
            if res.is_ok() {
                res = out.write_all(line.as_bytes());
            }
            next = rx.try_recv().ok();
        }
        let res = res.and_then(|()| out.flush());
        match res {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %e, "access log: writing failed");
            }
            Ok(()) if failing => {
                failing = false;
                tracing::info!(path = %path.display(), "access log: writing again");
            }
            _ => {}
        }
        let now = dropped.load(Ordering::Relaxed);
        if now != reported {
            tracing::warn!(
                lines = now - reported,
                "access log: lines dropped (the writer fell behind)"
            );
            reported = now;
        }
    }
}

/// One line: `addr - - [time] "request" status bytes "referer" "user-agent" seconds`.
fn format_line(e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{} - - [{}] \"",
        e.peer.ip(),
        zpxe_engine::http::date::format_log(e.at)
    );
    match e.method {
        Some(m) => {
            out.push_str(m.as_str());
            out.push(' ');
            escape(&e.path, out);
            if !e.query.is_empty() {
                out.push('?');
                escape(&e.query, out);
            }
            if let Some(v) = e.version {
                out.push(' ');
                out.push_str(v.as_str());
            }
        }
        None => out.push('-'),
    }
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes);
    field(&e.referer, out);
    out.push_str("\" \"");
    field(&e.user_agent, out);
    let _ = writeln!(
        out,
        "\" {}.{:03}",
        e.elapsed.as_secs(),
        e.elapsed.subsec_millis()
    );
}

/// A header's value, or `-` when it was absent or empty.
fn field(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push('-');
    } else {
        escape(value, out);
    }
}

/// Writes `s` with `"`, `\`, control characters and non-ASCII bytes as `\xHH`, as nginx does:
/// a client cannot end a field or a line, or forge one.
fn escape(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            peer: "192.0.2.7:40000".parse().expect("addr"),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777),
            method: Some(Method::Get),
            version: Some(Version::Http11),
            path: "/boot.ipxe".into(),
            query: "mac=52:54:00:00:00:01".into(),
            status: 200,
            bytes: 1234,
            referer: String::new(),
            user_agent: "iPXE/1.21.1".into(),
            elapsed: Duration::from_micros(3_400),
        }
    }

    #[test]
    fn lines_are_nginx_combined_with_the_time_taken() {
        let mut line = String::new();
        format_line(&entry(), &mut line);
        assert_eq!(
            line,
            "192.0.2.7 - - [06/Nov/1994:08:49:37 +0000] \"GET /boot.ipxe?mac=52:54:00:00:00:01 \
             HTTP/1.1\" 200 1234 \"-\" \"iPXE/1.21.1\" 0.003\n"
        );
        let refused = Entry {
            method: None,
            version: None,
            path: String::new(),
            query: String::new(),
            status: 400,
            bytes: 0,
            user_agent: String::new(),
            ..entry()
        };
        line.clear();
        format_line(&refused, &mut line);
        assert!(line.contains("] \"-\" 400 0 \"-\" \"-\" "), "{line}");
    }

    #[test]
    fn a_client_cannot_break_a_field_or_forge_a_line() {
        let mut line = String::new();
        let e = Entry {
            user_agent: "a\" 200 9 \"x\\\u{7f}é".into(),
            referer: "\t".into(),
            ..entry()
        };
        format_line(&e, &mut line);
        assert!(
            line.ends_with("\"\\x09\" \"a\\x22 200 9 \\x22x\\x5C\\x7F\\xC3\\xA9\" 0.003\n"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn lines_reach_the_file_and_a_full_queue_drops_without_waiting() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).expect("open");
        for _ in 0..3 {
            log.log(entry());
        }
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3, "{text}");
        // A queue nobody drains: the line past its bound is dropped and counted at once.
        let (tx, _rx) = sync_channel(1);
        let stuck = AccessLog {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            writer: None,
        };
        stuck.log(entry());
        let t = std::time::Instant::now();
        stuck.log(entry());
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(stuck.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_path_that_cannot_be_opened_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("no-such-dir").join("access.log");
        let e = AccessLog::open(&path).expect_err("opened");
        let text = format!("{e:#}");
        assert!(
            text.contains("http.access-log") && text.contains("no-such-dir"),
            "{text}"
        );
    }
}
