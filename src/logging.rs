//! Logging: `[log]` in the configuration, the subscriber, log files with rotation, and the rate
//! limit on refusal lines.
//!
//! Refusals ("why won't this machine PXE?") are logged at info level, but a LAN can send a
//! refused request as often as it likes: each client's refusal is logged at most once per
//! [`REPEAT`], and at most [`BURST`] refusal lines a second leave each event loop in all. What
//! is held back is counted and the count rides on the next line that is logged.
//!
//! With `log.file` set (and always for the Windows service), lines go to a file that is
//! rotated by size: `zpxe.log` becomes `zpxe.log.1`, `.1` becomes `.2`, ... up to `log.keep`
//! old files. No thread that logs ever touches the file: each line goes by one `try_send` into
//! a bounded queue ([`QUEUE`]) that a writer thread of its own empties, so a slow disk or a
//! rotation never blocks an event loop. When the queue is full the line is dropped and counted,
//! and the count is written with the next line that gets through.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct LogSection {
    /// `text` (one line per event, for people and journald) or `json` (one object per line).
    pub format: LogFormat,
    /// A file to log to instead of stderr, rotated by size; relative to the configuration
    /// file's directory. Unset: stderr (journald under systemd). The Windows service always
    /// logs to a file: this one, else `logs\zpxe.log` beside its configuration.
    pub file: Option<PathBuf>,
    /// The size at which the file is rotated: bytes, or a number with `KiB`, `MiB` or `GiB`.
    pub max_size: Size,
    /// Rotated files kept beside the current one (`zpxe.log.1` the newest); 0 keeps none.
    pub keep: u32,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            file: None,
            max_size: Size(DEFAULT_MAX_SIZE),
            keep: DEFAULT_KEEP,
        }
    }
}

/// 10 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// Rotated files kept by default.
pub const DEFAULT_KEEP: u32 = 5;
/// The most rotated files `log.keep` may ask for.
pub const MAX_KEEP: u32 = 1000;
/// The smallest `log.max-size`: a rotation per line would say nothing useful.
pub const MIN_MAX_SIZE: u64 = 1024;

/// `log.max-size`: a byte count, written as a number or as `"10 MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        let bytes = match Raw::deserialize(d)? {
            Raw::Bytes(b) => b,
            Raw::Text(t) => parse_size(&t).map_err(serde::de::Error::custom)?,
        };
        if bytes < MIN_MAX_SIZE {
            return Err(serde::de::Error::custom(format!(
                "log.max-size {bytes} is below the smallest, {MIN_MAX_SIZE} bytes"
            )));
        }
        Ok(Size(bytes))
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| {
        format!("log.max-size {text:?}: expected a number of bytes, e.g. \"10 MiB\"")
    })?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" | "KB" => 10,
        "MiB" | "M" | "MB" => 20,
        "GiB" | "G" | "GB" => 30,
        other => {
            return Err(format!(
                "log.max-size {text:?}: unknown unit {other:?} (B, KiB, MiB, GiB)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("log.max-size {text:?} is too large"))
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where a rotated log file lives and how big it grows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub file: PathBuf,
    pub max_size: u64,
    pub keep: u32,
}

impl LogSection {
    /// The file `log.file` names, relative paths taken from `dir` (the configuration file's).
    pub fn rotation(&self, dir: &Path) -> Option<Rotation> {
        self.file.as_ref().map(|f| self.rotation_to(dir.join(f)))
    }

    /// A rotation of `file` with this section's size and count.
    pub fn rotation_to(&self, file: PathBuf) -> Rotation {
        Rotation {
            file,
            max_size: self.max_size.0,
            keep: self.keep.min(MAX_KEEP),
        }
    }
}

/// Keeps the log writer's queue drained: dropping it writes out what is queued (for at most
/// a few seconds) so a stopping server's last lines reach the file.
#[derive(Debug, Default)]
pub struct LogGuard(Option<FileLog>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(log) = &self.0 {
            log.flush(Duration::from_secs(5));
        }
    }
}

/// Installs the process's subscriber: `RUST_LOG` if set, else `default_level`; on stderr, or
/// into `file` with rotation. Fails only when the file cannot be opened.
pub fn init(
    default_level: &str,
    format: LogFormat,
    file: Option<&Rotation>,
) -> io::Result<LogGuard> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let Some(rotation) = file else {
        let builder = builder.with_writer(std::io::stderr);
        let _ = match format {
            // Colour codes only for a person at a terminal: journald and files get plain text.
            LogFormat::Text => builder
                .with_ansi(
                    std::env::var_os("NO_COLOR").is_none()
                        && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                )
                .try_init(),
            LogFormat::Json => builder
                .json()
                .with_ansi(false)
                .flatten_event(true)
                .with_current_span(false)
                .try_init(),
        };
        return Ok(LogGuard(None));
    };
    let log = FileLog::start(rotation.clone(), QUEUE)?;
    let builder = builder.with_writer(log.clone()).with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(LogGuard(Some(log)))
}

/// Lines the file writer's queue holds; past it lines are dropped and counted.
pub const QUEUE: usize = 8192;

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

/// The sending side of a rotated log file: cheap to clone, never blocks.
#[derive(Clone)]
pub struct FileLog {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FileLog {
    /// Opens (appends to) the file, creating its directory, and starts the writer thread.
    pub fn start(rotation: Rotation, queue: usize) -> io::Result<Self> {
        let file = open_log(&rotation.file).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("log file {}: {e}", rotation.file.display()),
            )
        })?;
        let size = file.metadata().map_or(0, |m| m.len());
        let (tx, rx) = mpsc::sync_channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            rotation,
            file: Some(file),
            size,
            dropped: Arc::clone(&dropped),
        };
        std::thread::Builder::new()
            .name("zpxe-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self { tx, dropped })
    }

    /// Queues one line (never blocks): dropped and counted when the queue is full.
    pub fn send(&self, line: Vec<u8>) {
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `limit`) until every line queued so far is written.
    pub fn flush(&self, limit: Duration) {
        let (tx, rx) = mpsc::sync_channel(1);
        let deadline = Instant::now() + limit;
        let mut msg = Message::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// One event's bytes, sent when the formatter is done with it.
#[derive(Debug)]
pub struct LineWriter {
    log: FileLog,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.log.send(std::mem::take(&mut self.line));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for FileLog {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            log: self.clone(),
            line: Vec::with_capacity(256),
        }
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// `file.N`.
fn numbered(file: &Path, n: u32) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The writer thread's side.
struct Writer {
    rotation: Rotation,
    /// None after a failed reopen; tried again at the next line.
    file: Option<File>,
    size: u64,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Message::Line(line) => {
                    let lost = self.dropped.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        let note =
                            format!("zpxe: {lost} log lines dropped: the log writer fell behind\n");
                        self.write(note.as_bytes());
                    }
                    self.write(&line);
                }
                Message::Flush(done) => {
                    if let Some(f) = &mut self.file {
                        let _ = f.flush();
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_size {
            self.rotate();
        }
        if self.file.is_none() {
            match open_log(&self.rotation.file) {
                Ok(f) => {
                    self.size = f.metadata().map_or(0, |m| m.len());
                    self.file = Some(f);
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if let Some(f) = &mut self.file {
            match f.write_all(line) {
                Ok(()) => self.size += line.len() as u64,
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    self.file = None;
                }
            }
        }
    }

    /// `file.(keep-1)` -> `file.keep`, ..., `file` -> `file.1`, then a new `file`. The file is
    /// closed first: Windows renames no open file. A rename that fails (someone holds the
    /// file open without delete sharing) leaves the file to grow until the next try.
    fn rotate(&mut self) {
        self.file = None;
        let file = &self.rotation.file;
        let keep = self.rotation.keep;
        let moved = if keep == 0 {
            std::fs::remove_file(file)
        } else {
            let _ = std::fs::remove_file(numbered(file, keep));
            for n in (1..keep).rev() {
                let from = numbered(file, n);
                if from.exists() {
                    let _ = std::fs::rename(&from, numbered(file, n + 1));
                }
            }
            std::fs::rename(file, numbered(file, 1))
        };
        // Whatever happened, the next rotation is due after another max-size of lines.
        self.size = 0;
        if let Err(e) = moved {
            let note = format!(
                "zpxe: could not rotate the log file {}: {e}\n",
                file.display()
            );
            if let Ok(mut f) = open_log(file) {
                let _ = f.write_all(note.as_bytes());
            }
        }
    }
}

/// How long one client's refusal stays unlogged after it was logged once. Firmware retries a
/// DISCOVER after about 4, 8 and 16 s: one line per try would say nothing new.
pub const REPEAT: Duration = Duration::from_secs(30);
/// Refusal lines an event loop logs in one second at most.
pub const BURST: u32 = 20;
/// Clients remembered for [`REPEAT`]; past it the oldest are forgotten.
const REMEMBERED: usize = 4096;

/// The limiter of one kind of refusal on one thread.
#[derive(Debug)]
pub struct RefusalLimiter {
    second: Instant,
    in_second: u32,
    last: HashMap<u64, Instant>,
    held_back: u64,
}

impl RefusalLimiter {
    pub fn new(now: Instant) -> Self {
        Self {
            second: now,
            in_second: 0,
            last: HashMap::new(),
            held_back: 0,
        }
    }

    /// Whether to log the refusal of `key` now: `Some(n)` with the lines held back since the
    /// last one logged, `None` to stay quiet (counted).
    pub fn allow(&mut self, key: u64, now: Instant) -> Option<u64> {
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.in_second = 0;
        }
        let recent = self
            .last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < REPEAT);
        if recent || self.in_second >= BURST {
            self.held_back += 1;
            return None;
        }
        if self.last.len() >= REMEMBERED {
            self.last.retain(|_, t| now.duration_since(*t) < REPEAT);
            if self.last.len() >= REMEMBERED {
                self.last.clear();
            }
        }
        self.last.insert(key, now);
        self.in_second += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

thread_local! {
    static LIMITERS: RefCell<HashMap<&'static str, RefusalLimiter>> = RefCell::new(HashMap::new());
}

/// Whether this thread logs a refusal of kind `kind` (`"dhcp"`, `"tftp"`) for client `key`
/// now; see [`RefusalLimiter::allow`].
pub fn allow_refusal(kind: &'static str, key: impl Hash) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let key = h.finish();
    let now = Instant::now();
    LIMITERS.with(|l| {
        l.borrow_mut()
            .entry(kind)
            .or_insert_with(|| RefusalLimiter::new(now))
            .allow(key, now)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_client_per_repeat_and_a_burst_cap() {
        let t0 = Instant::now();
        let mut l = RefusalLimiter::new(t0);
        assert_eq!(l.allow(1, t0), Some(0));
        // The same client's retries stay quiet until REPEAT has passed.
        for s in [4, 8, 16] {
            assert_eq!(l.allow(1, t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(l.allow(1, t0 + REPEAT), Some(3));

        // A flood of distinct clients: BURST lines a second, the rest counted.
        let t1 = t0 + REPEAT + Duration::from_secs(5);
        let logged = (100..1100u64).filter(|k| l.allow(*k, t1).is_some()).count();
        assert_eq!(logged, BURST as usize);
        let next = t1 + Duration::from_secs(1);
        assert_eq!(l.allow(5000, next), Some(1000 - u64::from(BURST)));
    }

    #[test]
    fn remembered_clients_stay_bounded() {
        let t0 = Instant::now();
        let mut l = RefusalLimiter::new(t0);
        for k in 0..(REMEMBERED as u64 * 3) {
            let now = t0 + Duration::from_secs(k);
            l.allow(k, now);
            assert!(l.last.len() <= REMEMBERED);
        }
    }

    fn rotation(dir: &Path, max_size: u64, keep: u32) -> Rotation {
        Rotation {
            file: dir.join("logs").join("zpxe.log"),
            max_size,
            keep,
        }
    }

    /// Past max-size the file moves to .1, .1 to .2, ...; no more than `keep` old files stay,
    /// none bigger than max-size, and every line is in exactly one file, in order.
    #[test]
    fn files_rotate_by_size_and_keep_the_newest() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = rotation(dir.path(), 1024, 3);
        let log = FileLog::start(r.clone(), 100_000).expect("start");
        let lines: Vec<String> = (0..400)
            .map(|i| format!("line {i:05} {}\n", "x".repeat(40)))
            .collect();
        for l in &lines {
            log.send(l.clone().into_bytes());
        }
        log.flush(Duration::from_secs(10));
        assert!(!numbered(&r.file, 4).exists(), "more than keep files");
        let mut text = String::new();
        for n in (1..=3).rev() {
            let f = std::fs::read_to_string(numbered(&r.file, n)).expect("rotated file");
            assert!(f.len() as u64 <= r.max_size, "{n}: {} bytes", f.len());
            text.push_str(&f);
        }
        let current = std::fs::read_to_string(&r.file).expect("current");
        assert!(current.len() as u64 <= r.max_size);
        text.push_str(&current);
        // The newest lines, whole and in order, end with the last one sent.
        let kept: Vec<&str> = text.lines().collect();
        let first = lines.len() - kept.len();
        for (got, want) in kept.iter().zip(&lines[first..]) {
            assert_eq!(*got, want.trim_end());
        }
        // Three full rotated files and the current one.
        let per_file = r.max_size as usize / lines[0].len();
        assert!(kept.len() > 3 * per_file, "{} lines kept", kept.len());
    }

    /// keep = 0: the file starts over, nothing else is left beside it.
    #[test]
    fn keep_zero_starts_the_file_over() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = rotation(dir.path(), 1024, 0);
        let log = FileLog::start(r.clone(), 1000).expect("start");
        for i in 0..100 {
            log.send(format!("line {i} {}\n", "y".repeat(50)).into_bytes());
        }
        log.flush(Duration::from_secs(10));
        assert!(!numbered(&r.file, 1).exists());
        let current = std::fs::read_to_string(&r.file).expect("current");
        assert!(current.len() <= 1024, "{} bytes", current.len());
        assert!(
            current.starts_with("line ") && current.contains("line 99 "),
            "{current}"
        );
    }

    /// Sending never waits: with the queue full, lines are dropped, counted, and the count is
    /// written with the next line that gets through.
    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = rotation(dir.path(), 1 << 20, 1);
        let log = FileLog::start(r.clone(), 4).expect("start");
        let started = Instant::now();
        for i in 0..20_000 {
            log.send(format!("burst {i}\n").into_bytes());
        }
        let took = started.elapsed();
        log.flush(Duration::from_secs(10));
        log.send(b"after\n".to_vec());
        log.flush(Duration::from_secs(10));
        let text = std::fs::read_to_string(&r.file).expect("log");
        let written = text.lines().filter(|l| l.starts_with("burst ")).count() as u64;
        let noted: u64 = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("zpxe: ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        assert_eq!(written + noted, 20_000, "{text}");
        assert!(noted > 0, "the queue of 4 never filled");
        assert!(text.ends_with("after\n"));
        // 20,000 sends that never wait on the disk: far below a second even on a busy host.
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    /// A file that cannot be opened is an error at start, naming it.
    #[test]
    fn an_unopenable_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").expect("write");
        let r = Rotation {
            file: blocker.join("zpxe.log"),
            max_size: 4096,
            keep: 1,
        };
        let e = FileLog::start(r, 10).expect_err("a file below a file");
        assert!(e.to_string().contains("zpxe.log"), "{e}");
    }

    #[test]
    fn log_section_parses_sizes() {
        #[derive(Deserialize)]
        struct Root {
            log: LogSection,
        }
        let r: Root =
            toml::from_str("[log]\nfile = 'logs/z.log'\nmax-size = \"2 MiB\"\nkeep = 2\n")
                .expect("valid");
        assert_eq!(r.log.max_size, Size(2 << 20));
        let rot = r.log.rotation(Path::new("/etc/zpxe")).expect("file set");
        assert_eq!(rot.file, Path::new("/etc/zpxe/logs/z.log"));
        assert_eq!(rot.keep, 2);
        let r: Root = toml::from_str("[log]\nmax-size = 4096\n").expect("bytes");
        assert_eq!(r.log.max_size, Size(4096));
        assert!(r.log.rotation(Path::new("/")).is_none());
        assert_eq!(LogSection::default().max_size, Size(10 << 20));
        for bad in [
            "max-size = 0",
            "max-size = \"10 parsecs\"",
            "max-size = \"MiB\"",
            "keep = -1",
        ] {
            assert!(
                toml::from_str::<Root>(&format!("[log]\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn log_format_parses() {
        #[derive(Deserialize)]
        struct Root {
            log: LogSection,
        }
        let r: Root = toml::from_str("[log]\nformat = \"json\"\n").expect("json");
        assert_eq!(r.log.format, LogFormat::Json);
        assert!(toml::from_str::<Root>("[log]\nformat = \"xml\"\n").is_err());
        assert!(toml::from_str::<Root>("[log]\nlevel = \"x\"\n").is_err());
    }
}
