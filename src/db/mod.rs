//! Boot reporting and the machine registry, kept in a database (issues 14 and 16).
//!
//! The data path never touches the database. Services build an [`Event`] (plain data, no heap)
//! and hand it to a [`Recorder`], whose [`Recorder::record`] is one `try_send` on a bounded
//! queue: a full queue drops the event and counts it, it never waits. One writer thread drains
//! the queue in batches (every `batch-interval-ms` or `batch-events`, whichever comes first),
//! one transaction per batch, and groups events into boots: one boot is one timeline of one
//! machine, from the firmware's DHCP to the stage its script reports last.
//!
//! Reads ([`Database::clients`], [`Database::boots_of`], ...) and the machine registry's CRUD
//! run on a second connection, from the caller's thread: never call them from an event loop.
//! The registry is also published as an in-memory [`RegistrySnapshot`] that the data path reads
//! without locks ([`Registry::load`]); every change commits to the database first, then
//! publishes a new snapshot. Servers sharing one PostgreSQL see each other's changes through a
//! generation counter the writer polls.
//!
//! Both backends (SQLite, embedded; PostgreSQL, shared) implement the small [`Backend`] trait:
//! transactions of parameterized statements. Everything else (grouping, retention, queries,
//! the registry) is written once here, in SQL both understand. Client data only ever travels
//! as bound parameters; the only SQL assembled at run time is from fixed fragments and
//! parameter numbers.

pub(crate) mod journal;
pub mod leases;
mod postgres;
mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use zpxe_engine::dhcp::{ClientUuid, DhcpEvent, DhcpPort, MacAddr};
use zpxe_engine::tftp::{Abort, ClientAbort, TransferOutcome};

// ---------------------------------------------------------------------------------------------
// Configuration

/// `[database]`: where boot timelines and the machine registry live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct DatabaseConfig {
    /// Record boots and keep the registry; off, the data path records nothing.
    pub enabled: bool,
    /// `sqlite:///path/to/file.db` (embedded; default /var/lib/zpxe/zpxe.db, on Windows
    /// C:/ProgramData/zpxe/zpxe.db) or `postgres://user@host/db` (shared; a Unix socket
    /// directory goes in `?host=/run/postgresql`).
    pub url: toml::Spanned<String>,
    /// Boots kept per machine (the oldest go first); 0 keeps all.
    pub retention_boots: u32,
    /// Days a boot, an unattributed event or a machine not seen since is kept; 0 keeps all.
    pub retention_days: u32,
    /// Events the queue holds before new ones are dropped (and counted).
    pub queue: usize,
    /// Events written in one transaction at most.
    pub batch_events: usize,
    /// How long the writer gathers a batch after its first event (milliseconds).
    pub batch_interval_ms: u64,
    /// A machine silent for this long starts a new boot at its next event (minutes).
    pub boot_gap_minutes: u64,
    /// The stage whose report ends a boot successfully and marks a boot-once machine deployed.
    pub final_stage: String,
}

/// Where [`DatabaseConfig::url`] points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            // `sqlite:///C:/x.db` names a Windows drive: drop the slash before the letter.
            let b = rest.as_bytes();
            let path = if b.len() > 3 && b[0] == b'/' && b[1].is_ascii_alphabetic() && b[2] == b':'
            {
                &rest[1..]
            } else {
                rest
            };
            if path.is_empty() {
                return Err(format!("database url {url:?} names no file"));
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            ::postgres::Config::from_str(url)
                .map_err(|e| format!("database url is not a PostgreSQL connection URL: {e}"))?;
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "database url {url:?}: give sqlite:///path/file.db or postgres://user@host/db"
            ))
        }
    }
}

/// The embedded database's default place.
#[cfg(not(windows))]
pub const DEFAULT_URL: &str = "sqlite:///var/lib/zpxe/zpxe.db";
#[cfg(windows)]
pub const DEFAULT_URL: &str = "sqlite:///C:/ProgramData/zpxe/zpxe.db";

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: toml::Spanned::new(0..0, DEFAULT_URL.to_owned()),
            retention_boots: 20,
            retention_days: 90,
            queue: 16_384,
            batch_events: 1000,
            batch_interval_ms: 100,
            boot_gap_minutes: 30,
            final_stage: "loaded".to_owned(),
        }
    }
}

impl DatabaseConfig {
    /// Problems the types cannot catch, as messages (the caller adds positions).
    pub fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = DbUrl::parse(self.url.get_ref()) {
            out.push(e);
        }
        if self.queue == 0 {
            out.push("database.queue must be at least 1".to_owned());
        }
        if self.batch_events == 0 {
            out.push("database.batch-events must be at least 1".to_owned());
        }
        if self.final_stage.is_empty() || self.final_stage.len() > STAGE_LEN {
            out.push(format!(
                "database.final-stage must be 1 to {STAGE_LEN} bytes long"
            ));
        }
        out
    }

    fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            batch_events: self.batch_events.max(1),
            batch_interval: Duration::from_millis(self.batch_interval_ms),
            retention: Retention {
                boots_per_machine: self.retention_boots,
                days: self.retention_days,
            },
            retention_every: Duration::from_secs(60),
            registry_poll: Duration::from_secs(2),
            rules: BootRules {
                gap_ms: i64::try_from(self.boot_gap_minutes.saturating_mul(60_000))
                    .unwrap_or(i64::MAX),
                final_stage: self.final_stage.clone(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events: what the data path emits

/// Longest stage name kept.
pub const STAGE_LEN: usize = 32;
/// Longest file name or path kept (longer ones are cut at a character boundary).
pub const NAME_LEN: usize = 128;
/// Longest detail kept. 152, so that a Stage event (stage + detail) and with it every `Event`
/// stays within 256 bytes: the queue's 16,384 slots stay at 4 MiB.
pub const DETAIL_LEN: usize = 152;

/// A string of at most `N` bytes held inline, so an event costs no allocation. Longer input is
/// cut at a character boundary; bytes that are not UTF-8 end it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text<const N: usize> {
    len: u8,
    buf: [u8; N],
}

/// A stage name.
pub type Stage = Text<STAGE_LEN>;
/// A file name or path.
pub type Name = Text<NAME_LEN>;
/// A reason or detail.
pub type Detail = Text<DETAIL_LEN>;

impl<const N: usize> Text<N> {
    pub const EMPTY: Self = Self {
        len: 0,
        buf: [0; N],
    };

    pub fn new(s: &str) -> Self {
        let n = s.floor_char_boundary(N.min(usize::from(u8::MAX)));
        let mut t = Self::EMPTY;
        t.buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        t.len = n as u8;
        t
    }

    /// From bytes a client sent (a TFTP file name): the UTF-8 prefix.
    pub fn from_bytes(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => Self::new(s),
            Err(e) => Self::new(std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default()),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// The client ended it (a TFTP ERROR, a closed connection) before the end.
    Aborted,
    /// A size probe: EDK2 asks for `tsize`, takes the OACK and ends with ERROR 8. Not a
    /// failure.
    Probe,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Probe => "probe",
        }
    }
}

/// Which leg an error happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Dhcp,
    Pxe,
    Tftp,
    Http,
    Script,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Pxe => "pxe",
            Self::Tftp => "tftp",
            Self::Http => "http",
            Self::Script => "script",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// proxyDHCP answered a DISCOVER or REQUEST on 67; `ipxe` when iPXE asked (its user class)
    /// rather than the firmware.
    DhcpOffer {
        arch: Option<u16>,
        ipxe: bool,
    },
    /// The PXE boot server (4011) answered.
    PxeAck {
        arch: Option<u16>,
    },
    TftpStart {
        file: Name,
    },
    TftpEnd {
        file: Name,
        bytes: u64,
        retransmits: u32,
        duration_ms: u32,
        outcome: Outcome,
    },
    /// iPXE fetched its script.
    ScriptFetch {
        path: Name,
        status: u16,
    },
    /// One HTTP response with a file body.
    HttpFile {
        path: Name,
        bytes: u64,
        duration_ms: u32,
        /// The byte range asked for (inclusive end), if the request had one.
        range: Option<(u64, u64)>,
        status: u16,
        outcome: Outcome,
    },
    /// A stage the script reported.
    Stage {
        stage: Stage,
        detail: Detail,
    },
    Error {
        leg: Leg,
        detail: Detail,
    },
}

impl EventKind {
    /// The name stored in `events.kind`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DhcpOffer { ipxe: false, .. } => "dhcp-offer",
            Self::DhcpOffer { ipxe: true, .. } => "ipxe-dhcp",
            Self::PxeAck { .. } => "pxe-ack",
            Self::TftpStart { .. } => "tftp-start",
            Self::TftpEnd { .. } => "tftp-end",
            Self::ScriptFetch { .. } => "script-fetch",
            Self::HttpFile { .. } => "http-file",
            Self::Stage { .. } => "stage",
            Self::Error { .. } => "error",
        }
    }

    /// The stage a machine is in after this event (what `clients` filters and counts by).
    fn stage(&self) -> Option<&str> {
        Some(match self {
            Self::DhcpOffer { ipxe: false, .. } => "dhcp",
            Self::DhcpOffer { ipxe: true, .. } => "ipxe",
            Self::PxeAck { .. } => "pxe",
            Self::TftpStart { .. } | Self::TftpEnd { .. } => "tftp",
            Self::ScriptFetch { .. } => "script",
            Self::HttpFile { .. } => "http",
            Self::Stage { stage, .. } => stage.as_str(),
            Self::Error { .. } => return None,
        })
    }

    fn arch(&self) -> Option<u16> {
        match self {
            Self::DhcpOffer { arch, .. } | Self::PxeAck { arch } => *arch,
            _ => None,
        }
    }
}

/// One thing that happened to one client. Cheap to build: plain data, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub mac: Option<MacAddr>,
    pub uuid: Option<ClientUuid>,
    /// The client's address, when known. TFTP and HTTP events carry only this; the writer
    /// finds the machine through the last DHCP event that named both.
    pub ip: Option<IpAddr>,
    pub kind: EventKind,
    /// The transfer a TFTP or HTTP event belongs to (`crate::web::live::next_transfer_id`):
    /// the live view ends exactly that transfer. Not stored. Ids start at 1, so the niche
    /// keeps the event within its 256-byte budget.
    pub transfer: Option<std::num::NonZeroU64>,
}

impl Event {
    /// An event happening now.
    pub fn now(kind: EventKind) -> Self {
        Self {
            at_ms: now_ms(),
            mac: None,
            uuid: None,
            ip: None,
            kind,
            transfer: None,
        }
    }

    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }

    pub fn uuid(mut self, uuid: Option<ClientUuid>) -> Self {
        self.uuid = uuid;
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    pub fn at(mut self, at_ms: i64) -> Self {
        self.at_ms = at_ms;
        self
    }

    /// Id 0 is no transfer (`crate::web::live::next_transfer_id` starts at 1).
    pub fn transfer(mut self, id: Option<u64>) -> Self {
        self.transfer = id.and_then(std::num::NonZeroU64::new);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// From the engines' events: what the services call, so wiring is one line per event

/// The event for a proxyDHCP answer (`None` for requests it ignored). `client_ip` is the
/// address the request came from (4011) or asked for, when known: it lets the writer tie the
/// TFTP and HTTP legs that follow, which know only addresses, to this MAC.
pub fn dhcp_event(ev: &DhcpEvent, client_ip: Option<IpAddr>) -> Option<Event> {
    let (mac, uuid, kind) = match ev {
        DhcpEvent::Offered {
            mac,
            uuid,
            arch,
            ipxe,
            ..
        } => (
            *mac,
            *uuid,
            EventKind::DhcpOffer {
                arch: *arch,
                ipxe: *ipxe,
            },
        ),
        DhcpEvent::Acked {
            mac,
            uuid,
            arch,
            ipxe,
            port,
            ..
        } => {
            let kind = if *port == DhcpPort::Pxe {
                EventKind::PxeAck { arch: *arch }
            } else {
                // An ACK on 67 answers the REQUEST of the same DHCP exchange as the offer.
                EventKind::DhcpOffer {
                    arch: *arch,
                    ipxe: *ipxe,
                }
            };
            (*mac, *uuid, kind)
        }
        _ => return None,
    };
    let mut e = Event::now(kind).mac(mac).uuid(uuid);
    e.ip = client_ip.filter(|ip| !ip.is_unspecified());
    Some(e)
}

/// The event for a TFTP transfer that ended.
pub fn tftp_end_event(file: &str, outcome: &TransferOutcome, took: Duration) -> EventKind {
    let (bytes, retransmits, outcome) = match outcome {
        TransferOutcome::Completed { bytes, retransmits } => (*bytes, *retransmits, Outcome::Ok),
        //= https://www.rfc-editor.org/rfc/rfc2347#section-5
        //# the client ... may send an ERROR packet (error code 8) and terminate.
        // EDK2 does exactly that after reading `tsize` from the OACK: a size probe.
        o if o.is_probe() => (0, 0, Outcome::Probe),
        TransferOutcome::Aborted(Abort::Client(ClientAbort::Error { .. })) => {
            (0, 0, Outcome::Aborted)
        }
        TransferOutcome::Aborted(Abort::Client(ClientAbort::TimedOut { retransmits })) => {
            (0, *retransmits, Outcome::Failed)
        }
        _ => (0, 0, Outcome::Failed),
    };
    EventKind::TftpEnd {
        file: Name::new(file),
        bytes,
        retransmits: u32::try_from(retransmits).unwrap_or(u32::MAX),
        duration_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        outcome,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// The queue

// Events travel by value: the channel allocates its slots in blocks of 31 as it fills and frees
// them as the writer takes them, so a record costs a copy and a 31st of an allocation (boxing
// the big variant would allocate per event), and the queue's memory follows its depth, where a
// preallocated bounded channel would hold all of it (4 MiB of 264-byte slots) from the start.
// The bound is the `queued` gauge's.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event),
    /// Write what is queued before this, then answer.
    Flush(SyncSender<()>),
    Stop,
}

/// The writer's counters, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events waiting in the queue (a gauge).
    pub queued: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events committed to the database.
    pub written: AtomicU64,
    /// Transactions committed by the writer.
    pub batches: AtomicU64,
    /// Events lost because their batch could not be written (database down).
    pub lost: AtomicU64,
    /// Batch attempts that failed (retried or lost).
    pub write_errors: AtomicU64,
    /// Events stored without a machine (no MAC, and no DHCP event named their address).
    pub unattributed: AtomicU64,
}

impl Stats {
    /// Renders the counters and the queue gauge in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 7] = [
            (
                "db_queue_depth",
                "gauge",
                "events waiting for the database writer",
                &self.queued,
            ),
            (
                "db_events_dropped_total",
                "counter",
                "events dropped at a full writer queue",
                &self.dropped,
            ),
            (
                "db_events_written_total",
                "counter",
                "events committed to the database",
                &self.written,
            ),
            (
                "db_batches_total",
                "counter",
                "database transactions committed by the writer",
                &self.batches,
            ),
            (
                "db_events_lost_total",
                "counter",
                "events lost to database errors",
                &self.lost,
            ),
            (
                "db_write_errors_total",
                "counter",
                "failed database batch attempts",
                &self.write_errors,
            ),
            (
                "db_events_unattributed_total",
                "counter",
                "events no machine could be found for",
                &self.unattributed,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP zpxe_{name} {help}");
            let _ = writeln!(out, "# TYPE zpxe_{name} {kind}");
            let _ = writeln!(out, "zpxe_{name} {}", v.load(Relaxed));
        }
    }
}

/// The data path's handle: clone one into each event loop.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: Option<Sender<Msg>>,
    /// Events queued at most: past it, `record` drops them.
    capacity: u64,
    stats: Arc<Stats>,
    /// The live view's queue (the web service's page and SSE), when it runs.
    live: Option<crate::web::live::Tap>,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event(e) => f.debug_tuple("Event").field(e).finish(),
            Self::Flush(_) => f.write_str("Flush"),
            Self::Stop => f.write_str("Stop"),
        }
    }
}

impl Recorder {
    /// A recorder that records nothing (reporting off).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            capacity: 0,
            stats: Arc::default(),
            live: None,
        }
    }

    /// Events also go to the live view's queue (one more `try_send`; full, it drops them).
    pub fn with_live(mut self, live: Option<crate::web::live::Tap>) -> Self {
        self.live = live;
        self
    }

    /// The live view's queue, for progress events that are not recorded.
    #[inline]
    pub fn live(&self) -> Option<&crate::web::live::Tap> {
        self.live.as_ref()
    }

    /// Whether events go anywhere; callers may skip building them when not.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.tx.is_some() || self.live.is_some()
    }

    /// Queues `event` for the writer. Never blocks: a full queue drops it and counts it.
    #[inline]
    pub fn record(&self, event: Event) {
        if let Some(live) = &self.live {
            live.send(crate::web::live::LiveEvent::Recorded(event));
        }
        let Some(tx) = &self.tx else { return };
        // Counted before the send so the writer's decrement can never run first.
        let queued = self.stats.queued.fetch_add(1, Relaxed);
        // Full or writer gone: either way the event is dropped, and counted.
        if queued >= self.capacity || tx.send(Msg::Event(event)).is_err() {
            self.stats.queued.fetch_sub(1, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Waits until everything recorded before this call is committed (or `timeout` passes).
    /// Blocks: for tests and shutdown, never on an event loop.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if tx.send(Msg::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// The receiving end of a [`Recorder`]'s queue, for [`Writer::spawn`].
#[derive(Debug)]
pub struct EventQueue {
    rx: Receiver<Msg>,
    stats: Arc<Stats>,
}

/// A bounded queue of `capacity` events: the recorder for the data path and the end the writer
/// drains.
pub fn queue(capacity: usize) -> (Recorder, EventQueue) {
    let (tx, rx) = std::sync::mpsc::channel();
    let stats = Arc::<Stats>::default();
    (
        Recorder {
            tx: Some(tx),
            capacity: capacity.max(1) as u64,
            stats: stats.clone(),
            live: None,
        },
        EventQueue { rx, stats },
    )
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A statement parameter. Integers are 64-bit everywhere; NULLs keep their type so PostgreSQL
/// can check them.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Blob(Option<&'a [u8]>),
}

/// One result row.
pub trait Row {
    fn int(&self, i: usize) -> Result<Option<i64>>;
    fn text(&self, i: usize) -> Result<Option<String>>;
    fn blob(&self, i: usize) -> Result<Option<Vec<u8>>>;
}

/// Statements inside one transaction. SQL uses `$1`, `$2`, ... for parameters.
pub trait Sql {
    /// Runs a statement; the rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64>;
    /// Runs a query, calling `each` per row.
    fn query(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()>;
}

/// One database connection: SQLite or PostgreSQL.
pub trait Backend: Send {
    /// Applies the migrations not applied yet (each once, in its own transaction); the schema
    /// version after.
    fn migrate(&mut self) -> Result<i64>;
    /// Runs `f` in one write transaction: committed if it returns `Ok`, rolled back
    /// otherwise. Writers wait for each other (SQLite takes the write lock at the start).
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>) -> Result<()>;
    /// Runs `f` in a transaction that only reads: it never waits for a writer.
    fn read(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>) -> Result<()>;
    /// Checks the database itself (SQLite's `integrity_check`; a round trip for PostgreSQL).
    fn check(&mut self) -> Result<()>;
    fn kind(&self) -> &'static str;
}

/// Opens a connection to `url` and brings its schema up to date.
pub fn connect(url: &str) -> Result<Box<dyn Backend>> {
    open(url, false)
}

/// [`connect`] for a serving process, where a [`Checkpointer`] from [`checkpointer_for`]
/// runs on the same file: the connection's commits never checkpoint (src/db/sqlite.rs says
/// why). Without one the SQLite log grows until the last connection closes.
pub fn connect_served(url: &str) -> Result<Box<dyn Backend>> {
    open(url, true)
}

fn open(url: &str, served: bool) -> Result<Box<dyn Backend>> {
    let mut backend: Box<dyn Backend> = match DbUrl::parse(url).map_err(|e| anyhow!(e))? {
        DbUrl::Sqlite(path) if served => Box::new(sqlite::SqliteBackend::open_served(&path)?),
        DbUrl::Sqlite(path) => Box::new(sqlite::SqliteBackend::open(&path)?),
        DbUrl::Postgres(url) => Box::new(postgres::PgBackend::connect(&url)?),
    };
    backend.migrate()?;
    Ok(backend)
}

/// The thread that checkpoints `url`'s file for this process's [`connect_served`]
/// connections: SQLite only (PostgreSQL has nothing to do).
pub(crate) type Checkpointer = sqlite::Checkpointer;

/// Starts the [`Checkpointer`] for `url`, `None` for PostgreSQL.
pub(crate) fn checkpointer_for(url: &str) -> Result<Option<Checkpointer>> {
    match DbUrl::parse(url).map_err(|e| anyhow!(e))? {
        DbUrl::Sqlite(path) => Ok(Some(sqlite::Checkpointer::spawn(&path)?)),
        DbUrl::Postgres(_) => Ok(None),
    }
}

/// Where the DHCP server keeps its leases (`dhcp.mode = "server"`). SQLite: a file of its own
/// beside the database (`zpxe.db`: `zpxe-leases.db`), because SQLite locks a whole file for a
/// write and an ACK waits for its lease's commit: in the shared file a lease commit waited for
/// the timeline writer's batch (30 to 50 ms for 1,000 events), the p99 of `zpxe-bench dora` at
/// 10,000 exchanges/s. PostgreSQL locks rows: there the leases stay in the shared database,
/// which is what several servers need.
pub fn leases_url(url: &str) -> Result<String> {
    match DbUrl::parse(url).map_err(|e| anyhow!(e))? {
        DbUrl::Sqlite(path) => {
            let stem = path
                .file_stem()
                .with_context(|| format!("database url {url:?} names no file"))?
                .to_string_lossy();
            let name = match path.extension() {
                Some(ext) => format!("{stem}-leases.{}", ext.to_string_lossy()),
                None => format!("{stem}-leases"),
            };
            Ok(format!("sqlite://{}", path.with_file_name(name).display()))
        }
        DbUrl::Postgres(_) => Ok(url.to_owned()),
    }
}

/// The registry's database records, read without changing anything (no migration; a SQLite
/// file that does not exist is not created): for `zpxe check`. `None` when there is no
/// database yet.
pub fn stored_machines(config: &DatabaseConfig) -> Result<Option<Vec<MachineRecord>>> {
    let mut backend: Box<dyn Backend> =
        match DbUrl::parse(config.url.get_ref()).map_err(|e| anyhow!(e))? {
            DbUrl::Sqlite(path) => {
                if !path.exists() {
                    return Ok(None);
                }
                Box::new(sqlite::SqliteBackend::open(&path)?)
            }
            DbUrl::Postgres(url) => Box::new(postgres::PgBackend::connect(&url)?),
        };
    let mut records = Vec::new();
    backend.read(&mut |sql| {
        records = load_registry(sql)?.records().cloned().collect();
        Ok(())
    })?;
    Ok(Some(records))
}

// ---------------------------------------------------------------------------------------------
// Stored forms

/// An address as stored: 16 bytes, IPv4 mapped into IPv6, so a subnet is one byte range.
fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from_key(b: &[u8]) -> Option<IpAddr> {
    let octets: [u8; 16] = b.try_into().ok()?;
    Some(Ipv6Addr::from(octets).to_canonical())
}

fn mac_from(b: &[u8]) -> Option<MacAddr> {
    Some(MacAddr(b.try_into().ok()?))
}

fn uuid_from(b: &[u8]) -> Option<ClientUuid> {
    Some(ClientUuid::from_wire(b.try_into().ok()?))
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A subnet in CIDR form (`10.1.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    lo: [u8; 16],
    hi: [u8; 16],
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a subnet (address/prefix)");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        let (key, len) = match addr {
            IpAddr::V4(_) if len <= 32 => (ip_key(addr), len + 96),
            IpAddr::V6(_) if len <= 128 => (ip_key(addr), len),
            _ => return Err(bad()),
        };
        let bits = u128::from_be_bytes(key);
        // A /32 (/128) has no host bits: a plain `>> 128` would overflow (and in release
        // shift by 0, matching every address).
        let host = u128::MAX.checked_shr(len).unwrap_or(0);
        Ok(Self {
            lo: (bits & !host).to_be_bytes(),
            hi: (bits | host).to_be_bytes(),
        })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = ip_key(ip);
        self.lo <= k && k <= self.hi
    }
}

fn ser_mac<S: serde::Serializer>(m: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.collect_str(m),
        None => s.serialize_none(),
    }
}

fn ser_uuid<S: serde::Serializer>(u: &Option<ClientUuid>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.collect_str(u),
        None => s.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing: batches grouped into boots

/// Boot phases as stored in `boots.phase`.
const PHASE_DHCP: i64 = 0;
const PHASE_UNDER_WAY: i64 = 1;
const PHASE_FINISHED: i64 = 2;
/// The stage zpxe's scripts report when a boot failed.
const FAILED_STAGE: &str = "failed";

/// How events become boots.
#[derive(Debug, Clone)]
pub struct BootRules {
    /// Silence after which a machine's next event starts a new boot.
    pub gap_ms: i64,
    /// The reported stage that ends a boot well (and deploys a boot-once machine).
    pub final_stage: String,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub events: u64,
    pub new_boots: u64,
    pub unattributed: u64,
    /// A boot-once machine was marked deployed: the registry snapshot is stale.
    pub registry_changed: bool,
}

#[derive(Debug)]
struct MachineState {
    id: i64,
    mac: Option<MacAddr>,
    uuid: Option<ClientUuid>,
    ip: Option<IpAddr>,
    arch: Option<u16>,
    last_seen: i64,
    stage: Option<String>,
    new_boots: i64,
    dirty: bool,
}

#[derive(Debug)]
struct BootState {
    id: i64,
    last_seen: i64,
    phase: i64,
    stage: String,
    finished: Option<i64>,
    outcome: Option<&'static str>,
    ip: Option<IpAddr>,
    arch: Option<u16>,
    dirty: bool,
}

const INSERT_EVENT: &str = "INSERT INTO events (boot_id, at, kind, ip, name, detail, outcome, \
     bytes, duration_ms, retransmits, range_start, range_end, status, arch) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

fn insert_event(sql: &mut dyn Sql, boot: Option<i64>, e: &Event) -> Result<()> {
    let ip = e.ip.map(ip_key);
    let (mut name, mut detail, mut outcome) = (None, None, None);
    let (mut bytes, mut duration, mut retransmits, mut range, mut status) =
        (None, None, None, None, None);
    match &e.kind {
        EventKind::DhcpOffer { .. } | EventKind::PxeAck { .. } => {}
        EventKind::TftpStart { file } => name = Some(file.as_str()),
        EventKind::TftpEnd {
            file,
            bytes: b,
            retransmits: r,
            duration_ms: d,
            outcome: o,
        } => {
            name = Some(file.as_str());
            bytes = Some(*b);
            retransmits = Some(i64::from(*r));
            duration = Some(i64::from(*d));
            outcome = Some(o.as_str());
        }
        EventKind::ScriptFetch { path, status: s } => {
            name = Some(path.as_str());
            status = Some(i64::from(*s));
        }
        EventKind::HttpFile {
            path,
            bytes: b,
            duration_ms: d,
            range: r,
            status: s,
            outcome: o,
        } => {
            name = Some(path.as_str());
            bytes = Some(*b);
            duration = Some(i64::from(*d));
            range = *r;
            status = Some(i64::from(*s));
            outcome = Some(o.as_str());
        }
        EventKind::Stage { stage, detail: d } => {
            name = Some(stage.as_str());
            detail = (!d.is_empty()).then(|| d.as_str());
        }
        EventKind::Error { leg, detail: d } => {
            name = Some(leg.as_str());
            detail = Some(d.as_str());
        }
    }
    sql.exec(
        INSERT_EVENT,
        &[
            Value::Int(boot),
            Value::Int(Some(e.at_ms)),
            Value::Text(Some(e.kind.name())),
            Value::Blob(ip.as_ref().map(|k| &k[..])),
            Value::Text(name),
            Value::Text(detail),
            Value::Text(outcome),
            Value::Int(opt_i64(bytes)),
            Value::Int(duration),
            Value::Int(retransmits),
            Value::Int(opt_i64(range.map(|r| r.0))),
            Value::Int(opt_i64(range.map(|r| r.1))),
            Value::Int(status),
            Value::Int(e.kind.arch().map(i64::from)),
        ],
    )?;
    Ok(())
}

/// Writes `events` through `sql` (one transaction), grouping them into boots.
/// The configuration's boot-once machines, as (MAC, UUID, key): the writer marks them deployed
/// in `file_deployed`.
type FileBootOnce = [(Option<MacAddr>, Option<ClientUuid>, String)];

fn write_batch(
    sql: &mut dyn Sql,
    events: &[Event],
    rules: &BootRules,
    file_once: &FileBootOnce,
) -> Result<BatchReport> {
    let mut report = BatchReport::default();
    let mut machines: HashMap<i64, MachineState> = HashMap::new();
    let mut by_mac: HashMap<MacAddr, i64> = HashMap::new();
    let mut by_ip: HashMap<IpAddr, Option<i64>> = HashMap::new();
    let mut boots: HashMap<i64, Option<BootState>> = HashMap::new();
    let mut deployed: Vec<(MacAddr, Option<ClientUuid>)> = Vec::new();

    // Machines named by MAC are created (or found) first, in MAC order: two servers writing
    // to one PostgreSQL then lock shared machines in the same order and cannot deadlock.
    let mut macs: Vec<(MacAddr, i64)> = Vec::new();
    for e in events {
        if let Some(m) = e.mac {
            macs.push((m, e.at_ms));
        }
    }
    macs.sort_unstable();
    macs.dedup_by_key(|(m, _)| *m);
    for (mac, first) in &macs {
        let mut id = None;
        sql.query(
            "INSERT INTO machines (mac, first_seen, last_seen, stage, boots) \
             VALUES ($1, $2, $2, '', 0) \
             ON CONFLICT (mac) DO UPDATE SET mac = excluded.mac RETURNING id",
            &[Value::Blob(Some(&mac.0)), Value::Int(Some(*first))],
            &mut |r| {
                id = r.int(0)?;
                Ok(())
            },
        )?;
        let id = id.context("machine upsert returned no id")?;
        by_mac.insert(*mac, id);
        machines.insert(id, MachineState::new(id, Some(*mac)));
    }

    for e in events {
        // Which machine: by MAC, else by the address a DHCP event tied to one.
        let machine = match (e.mac, e.ip) {
            (Some(mac), ip) => {
                let id = by_mac[&mac];
                if let Some(ip) = ip {
                    by_ip.insert(ip, Some(id));
                }
                Some(id)
            }
            (None, Some(ip)) => match by_ip.get(&ip) {
                Some(id) => *id,
                None => {
                    let found = machine_by_ip(sql, ip)?;
                    if let Some((id, mac, uuid)) = found {
                        machines.entry(id).or_insert_with(|| {
                            let mut m = MachineState::new(id, mac);
                            m.uuid = uuid;
                            m
                        });
                    }
                    let id = found.map(|f| f.0);
                    by_ip.insert(ip, id);
                    id
                }
            },
            (None, None) => None,
        };
        let Some(mid) = machine else {
            insert_event(sql, None, e)?;
            report.unattributed += 1;
            report.events += 1;
            continue;
        };
        let Some(m) = machines.get_mut(&mid) else {
            bail!("machine {mid} lost from the batch");
        };
        m.last_seen = m.last_seen.max(e.at_ms);
        m.dirty = true;
        if e.uuid.is_some() {
            m.uuid = e.uuid;
        }
        if e.ip.is_some() && e.mac.is_some() {
            m.ip = e.ip;
        }
        if let Some(a) = e.kind.arch() {
            m.arch = Some(a);
        }

        // Which boot: the machine's latest, unless this event starts a new one.
        if let std::collections::hash_map::Entry::Vacant(v) = boots.entry(mid) {
            v.insert(latest_boot(sql, mid)?);
        }
        let slot = boots.entry(mid).or_insert(None);
        let firmware_dhcp = matches!(e.kind, EventKind::DhcpOffer { ipxe: false, .. });
        let start_new = match slot {
            None => true,
            Some(b) => {
                e.at_ms - b.last_seen > rules.gap_ms
                    // The firmware asking again after its boot moved on is a reboot; before,
                    // it is the same boot's DHCP retrying.
                    || (firmware_dhcp && b.phase != PHASE_DHCP)
            }
        };
        if start_new {
            // The boot this one follows may have changed earlier in this batch.
            if let Some(old) = slot.as_ref() {
                save_boot(sql, old)?;
            }
            let mut id = None;
            let ip = e.ip.map(ip_key);
            sql.query(
                "INSERT INTO boots (machine_id, started, last_seen, phase, stage, ip, arch) \
                 VALUES ($1, $2, $2, $3, '', $4, $5) RETURNING id",
                &[
                    Value::Int(Some(mid)),
                    Value::Int(Some(e.at_ms)),
                    Value::Int(Some(PHASE_DHCP)),
                    Value::Blob(ip.as_ref().map(|k| &k[..])),
                    Value::Int(e.kind.arch().map(i64::from)),
                ],
                &mut |r| {
                    id = r.int(0)?;
                    Ok(())
                },
            )?;
            *slot = Some(BootState {
                id: id.context("boot insert returned no id")?,
                last_seen: e.at_ms,
                phase: PHASE_DHCP,
                stage: String::new(),
                finished: None,
                outcome: None,
                ip: None,
                arch: None,
                dirty: true,
            });
            m.new_boots += 1;
            report.new_boots += 1;
        }
        let Some(b) = slot.as_mut() else {
            bail!("boot lost from the batch");
        };
        b.dirty = true;
        b.last_seen = b.last_seen.max(e.at_ms);
        if e.ip.is_some() {
            b.ip = e.ip;
        }
        if let Some(a) = e.kind.arch() {
            b.arch = Some(a);
        }
        let leg = !matches!(
            e.kind,
            EventKind::DhcpOffer { ipxe: false, .. } | EventKind::PxeAck { .. }
        );
        if leg && b.phase == PHASE_DHCP {
            b.phase = PHASE_UNDER_WAY;
        }
        if b.phase != PHASE_FINISHED
            && let Some(stage) = e.kind.stage()
        {
            b.stage.clear();
            b.stage.push_str(stage);
            m.stage = Some(b.stage.clone());
        }
        if let EventKind::Stage { stage, .. } = &e.kind {
            let stage = stage.as_str();
            if stage == rules.final_stage || stage == FAILED_STAGE {
                b.phase = PHASE_FINISHED;
                b.finished = Some(e.at_ms);
                b.outcome = Some(if stage == FAILED_STAGE {
                    "failed"
                } else {
                    "ok"
                });
                b.stage.clear();
                b.stage.push_str(stage);
                m.stage = Some(b.stage.clone());
                if stage == rules.final_stage
                    && let Some(mac) = m.mac
                {
                    deployed.push((mac, m.uuid));
                }
            }
        }
        insert_event(sql, Some(b.id), e)?;
        report.events += 1;
    }

    for b in boots.values().flatten() {
        save_boot(sql, b)?;
    }
    let mut ids: Vec<&i64> = machines.keys().collect();
    ids.sort_unstable();
    for id in ids {
        let m = &machines[id];
        if !m.dirty {
            continue;
        }
        let ip = m.ip.map(ip_key);
        let uuid = m.uuid.map(|u| u.wire_bytes());
        sql.exec(
            "UPDATE machines SET \
             last_seen = CASE WHEN last_seen < $2 THEN $2 ELSE last_seen END, \
             stage = COALESCE($3, stage), ip = COALESCE($4, ip), uuid = COALESCE($5, uuid), \
             arch = COALESCE($6, arch), boots = boots + $7 WHERE id = $1",
            &[
                Value::Int(Some(m.id)),
                Value::Int(Some(m.last_seen)),
                Value::Text(m.stage.as_deref()),
                Value::Blob(ip.as_ref().map(|k| &k[..])),
                Value::Blob(uuid.as_ref().map(|k| &k[..])),
                Value::Int(m.arch.map(i64::from)),
                Value::Int(Some(m.new_boots)),
            ],
        )?;
    }
    let now = now_ms();
    for (mac, client_uuid) in deployed {
        let uuid = client_uuid.map(|u| u.wire_bytes());
        let n = sql.exec(
            "UPDATE registry SET state = 'deployed', updated = $3 \
             WHERE boot_once = 1 AND state <> 'deployed' AND (mac = $1 OR uuid = $2)",
            &[
                Value::Blob(Some(&mac.0)),
                Value::Blob(uuid.as_ref().map(|k| &k[..])),
                Value::Int(Some(now)),
            ],
        )?;
        if n > 0 {
            bump_generation(sql)?;
            report.registry_changed = true;
        }
        for (fmac, fuuid, key) in file_once {
            let same =
                *fmac == Some(mac) || (fmac.is_none() && fuuid.is_some() && *fuuid == client_uuid);
            if !same {
                continue;
            }
            let n = sql.exec(
                "INSERT INTO file_deployed (key, updated) VALUES ($1, $2) \
                 ON CONFLICT (key) DO NOTHING",
                &[Value::Text(Some(key)), Value::Int(Some(now))],
            )?;
            if n > 0 {
                bump_generation(sql)?;
                report.registry_changed = true;
            }
        }
    }
    Ok(report)
}

fn save_boot(sql: &mut dyn Sql, b: &BootState) -> Result<()> {
    if !b.dirty {
        return Ok(());
    }
    let ip = b.ip.map(ip_key);
    sql.exec(
        "UPDATE boots SET last_seen = $2, phase = $3, stage = $4, finished = $5, \
         outcome = $6, ip = COALESCE($7, ip), arch = COALESCE($8, arch) WHERE id = $1",
        &[
            Value::Int(Some(b.id)),
            Value::Int(Some(b.last_seen)),
            Value::Int(Some(b.phase)),
            Value::Text(Some(&b.stage)),
            Value::Int(b.finished),
            Value::Text(b.outcome),
            Value::Blob(ip.as_ref().map(|k| &k[..])),
            Value::Int(b.arch.map(i64::from)),
        ],
    )?;
    Ok(())
}

impl MachineState {
    fn new(id: i64, mac: Option<MacAddr>) -> Self {
        Self {
            id,
            mac,
            uuid: None,
            ip: None,
            arch: None,
            last_seen: i64::MIN,
            stage: None,
            new_boots: 0,
            dirty: false,
        }
    }
}

type MachineIds = (i64, Option<MacAddr>, Option<ClientUuid>);

fn machine_by_ip(sql: &mut dyn Sql, ip: IpAddr) -> Result<Option<MachineIds>> {
    let key = ip_key(ip);
    let mut found = None;
    sql.query(
        "SELECT id, mac, uuid FROM machines WHERE ip = $1 ORDER BY last_seen DESC LIMIT 1",
        &[Value::Blob(Some(&key))],
        &mut |r| {
            let id = r.int(0)?.context("machine without id")?;
            let mac = r.blob(1)?.as_deref().and_then(mac_from);
            let uuid = r.blob(2)?.as_deref().and_then(uuid_from);
            found = Some((id, mac, uuid));
            Ok(())
        },
    )?;
    Ok(found)
}

fn latest_boot(sql: &mut dyn Sql, machine: i64) -> Result<Option<BootState>> {
    let mut found = None;
    sql.query(
        "SELECT id, last_seen, phase, stage, finished, outcome FROM boots \
         WHERE machine_id = $1 ORDER BY id DESC LIMIT 1",
        &[Value::Int(Some(machine))],
        &mut |r| {
            found = Some(BootState {
                id: r.int(0)?.context("boot without id")?,
                last_seen: r.int(1)?.unwrap_or(0),
                phase: r.int(2)?.unwrap_or(PHASE_DHCP),
                stage: r.text(3)?.unwrap_or_default(),
                finished: r.int(4)?,
                outcome: match r.text(5)?.as_deref() {
                    Some("ok") => Some("ok"),
                    Some("failed") => Some("failed"),
                    _ => None,
                },
                ip: None,
                arch: None,
                dirty: false,
            });
            Ok(())
        },
    )?;
    Ok(found)
}

fn bump_generation(sql: &mut dyn Sql) -> Result<()> {
    sql.exec(
        "UPDATE meta SET value = value + 1 WHERE key = 'registry_generation'",
        &[],
    )?;
    Ok(())
}

/// What retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Boots kept per machine; 0 keeps all.
    pub boots_per_machine: u32,
    /// Days kept; 0 keeps all.
    pub days: u32,
}

fn apply_retention(sql: &mut dyn Sql, r: Retention, now: i64) -> Result<u64> {
    let mut removed = 0;
    if r.boots_per_machine > 0 {
        let keep = Value::Int(Some(i64::from(r.boots_per_machine)));
        const OLD: &str = "SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
             (PARTITION BY machine_id ORDER BY id DESC) AS rn FROM boots) AS ranked \
             WHERE rn > $1";
        sql.exec(
            &format!("DELETE FROM events WHERE boot_id IN ({OLD})"),
            &[keep],
        )?;
        removed += sql.exec(&format!("DELETE FROM boots WHERE id IN ({OLD})"), &[keep])?;
    }
    if r.days > 0 {
        let cutoff = Value::Int(Some(now - i64::from(r.days) * 86_400_000));
        sql.exec(
            "DELETE FROM events WHERE boot_id IN (SELECT id FROM boots WHERE last_seen < $1)",
            &[cutoff],
        )?;
        sql.exec(
            "DELETE FROM events WHERE boot_id IS NULL AND at < $1",
            &[cutoff],
        )?;
        removed += sql.exec("DELETE FROM boots WHERE last_seen < $1", &[cutoff])?;
        sql.exec(
            "DELETE FROM machines WHERE last_seen < $1 AND NOT EXISTS \
             (SELECT 1 FROM boots WHERE boots.machine_id = machines.id)",
            &[cutoff],
        )?;
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// The writer thread

/// How the writer batches and cleans up.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub batch_events: usize,
    pub batch_interval: Duration,
    pub retention: Retention,
    pub retention_every: Duration,
    pub registry_poll: Duration,
    pub rules: BootRules,
}

/// The thread that drains an [`EventQueue`] into the database.
#[derive(Debug)]
pub struct Writer {
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer on its own connection. It ends when every [`Recorder`] is gone or a
    /// stop message arrives, after writing what is queued.
    pub fn spawn(
        backend: Box<dyn Backend>,
        queue: EventQueue,
        config: WriterConfig,
        registry: Arc<Registry>,
    ) -> Result<Self> {
        let thread = std::thread::Builder::new()
            .name("zpxe-db-writer".into())
            .spawn(move || run_writer(backend, queue, config, registry))?;
        Ok(Self { thread })
    }

    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the database writer panicked");
        }
    }
}

/// Attempts per batch before its events are counted lost.
const WRITE_ATTEMPTS: u32 = 3;
/// While a batch gathers, the writer looks at the queue this often instead of blocking on it:
/// a blocked receiver is woken by every event sent (a futex wake on the event loop's send,
/// and a context switch onto a core the loops and their clients need), so a storm of 10,000
/// events a second cost as many wake-ups; now at most 100 a second. The queue holds
/// [`DatabaseConfig::queue`] events (16,384 by default), far more than a nap's worth.
const GATHER_NAP: Duration = Duration::from_millis(10);

fn run_writer(
    mut backend: Box<dyn Backend>,
    queue: EventQueue,
    cfg: WriterConfig,
    registry: Arc<Registry>,
) {
    // Timelines can wait a few milliseconds; the event loops and the lease writer cannot.
    zpxe_platform::thread::lower_priority();
    let EventQueue { rx, stats } = queue;
    let mut batch: Vec<Event> = Vec::with_capacity(cfg.batch_events);
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    let mut last_retention = Instant::now();
    let mut last_poll = Instant::now();
    let tick = cfg
        .registry_poll
        .min(cfg.retention_every)
        .max(Duration::from_millis(10));
    let mut stopping = false;
    while !stopping {
        // Wait for a batch's first message, then gather until it is full or its time is up.
        let mut deadline: Option<Instant> = None;
        loop {
            let msg = match deadline {
                None => rx.recv_timeout(tick),
                Some(d) => match rx.try_recv() {
                    Ok(m) => Ok(m),
                    Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                    Err(TryRecvError::Empty) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::sleep(left.min(GATHER_NAP));
                        continue;
                    }
                },
            };
            match msg {
                Ok(Msg::Event(e)) => {
                    stats.queued.fetch_sub(1, Relaxed);
                    batch.push(e);
                    deadline.get_or_insert_with(|| Instant::now() + cfg.batch_interval);
                    if batch.len() >= cfg.batch_events {
                        break;
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    acks.push(ack);
                    break;
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        if !batch.is_empty() {
            write_with_retry(backend.as_mut(), &batch, &cfg.rules, &stats, &registry);
            batch.clear();
        }
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
        if last_retention.elapsed() >= cfg.retention_every {
            last_retention = Instant::now();
            let r = cfg.retention;
            let now = now_ms();
            if let Err(e) = backend.transaction(&mut |sql| apply_retention(sql, r, now).map(drop)) {
                tracing::warn!(error = %e, "database retention failed");
            }
        }
        if last_poll.elapsed() >= cfg.registry_poll {
            last_poll = Instant::now();
            if let Err(e) = refresh_registry(backend.as_mut(), &registry, false) {
                tracing::warn!(error = %e, "reading the machine registry failed");
            }
        }
    }
}

fn write_with_retry(
    backend: &mut dyn Backend,
    batch: &[Event],
    rules: &BootRules,
    stats: &Stats,
    registry: &Registry,
) {
    let file_once = registry.load().file_boot_once();
    for attempt in 1..=WRITE_ATTEMPTS {
        let mut report = BatchReport::default();
        let r = backend.transaction(&mut |sql| {
            report = write_batch(sql, batch, rules, &file_once)?;
            Ok(())
        });
        match r {
            Ok(()) => {
                stats.written.fetch_add(report.events, Relaxed);
                stats.batches.fetch_add(1, Relaxed);
                stats.unattributed.fetch_add(report.unattributed, Relaxed);
                if report.registry_changed
                    && let Err(e) = refresh_registry(backend, registry, true)
                {
                    tracing::warn!(error = %e, "reading the machine registry failed");
                }
                return;
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, attempt, events = batch.len(), "database batch failed");
                if attempt < WRITE_ATTEMPTS {
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                }
            }
        }
    }
    stats.lost.fetch_add(batch.len() as u64, Relaxed);
}

// ---------------------------------------------------------------------------------------------
// The machine registry (issue 16)

/// Whether a boot-once machine has been deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOnceState {
    #[default]
    Pending,
    Deployed,
}

impl BootOnceState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Deployed => "deployed",
        }
    }
}

/// One registered machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct MachineRecord {
    #[serde(serialize_with = "ser_mac")]
    pub mac: Option<MacAddr>,
    #[serde(serialize_with = "ser_uuid")]
    pub uuid: Option<ClientUuid>,
    pub name: String,
    pub group: String,
    /// The menu entry to boot (an `id` of `[[menu.entries]]`).
    pub entry: Option<String>,
    /// A loader that replaces the policy's for this machine.
    pub loader: Option<String>,
    /// Variables set in the iPXE script.
    pub variables: BTreeMap<String, String>,
    /// After a successful deployment, boot from local disk (`exit`) from then on.
    pub boot_once: bool,
    pub state: BootOnceState,
    /// When the record last changed (ms since the epoch; set by the database).
    pub updated_ms: i64,
    /// Where a record from the configuration (`[[machine]]`, in zpxe.toml or conf.d/) is
    /// written, as `file:line:column`; `None` for the database's records. The API shows it
    /// and refuses to change or delete such a record.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Limits on a record's fields (it comes from an API client).
pub const RECORD_TEXT_LEN: usize = 128;
pub const RECORD_VARIABLES: usize = 64;
pub const RECORD_VALUE_LEN: usize = 256;

impl MachineRecord {
    /// Checks a record before it is stored.
    pub fn validate(&self) -> Result<(), String> {
        if self.mac.is_none() && self.uuid.is_none() {
            return Err("a machine record needs a MAC or a UUID".into());
        }
        for (what, v) in [
            ("name", Some(&self.name)),
            ("group", Some(&self.group)),
            ("entry", self.entry.as_ref()),
            ("loader", self.loader.as_ref()),
        ] {
            if let Some(v) = v
                && (v.len() > RECORD_TEXT_LEN || v.chars().any(char::is_control))
            {
                return Err(format!(
                    "{what} must be at most {RECORD_TEXT_LEN} bytes without control characters"
                ));
            }
        }
        if self.variables.len() > RECORD_VARIABLES {
            return Err(format!("at most {RECORD_VARIABLES} variables"));
        }
        for (k, v) in &self.variables {
            // iPXE's `set` takes these names unquoted.
            let name_ok = !k.is_empty()
                && k.len() <= 64
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !name_ok {
                return Err(format!("variable name {k:?}: 1 to 64 of A-Z a-z 0-9 _ - ."));
            }
            if v.len() > RECORD_VALUE_LEN || v.chars().any(char::is_control) {
                return Err(format!(
                    "variable {k}: at most {RECORD_VALUE_LEN} bytes without control characters"
                ));
            }
        }
        Ok(())
    }
}

/// Which record an API call names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineKey {
    Mac(MacAddr),
    Uuid(ClientUuid),
}

impl FromStr for MachineKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(m) = s.parse() {
            Ok(Self::Mac(m))
        } else if let Ok(u) = s.parse() {
            Ok(Self::Uuid(u))
        } else {
            Err(format!("{s:?} is neither a MAC nor a UUID"))
        }
    }
}

/// What the registry says about a booting machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// A boot-once machine already deployed: answer with `exit` (boot from local disk).
    Exit,
    /// Boot as the record says (entry, loader, variables).
    Use(&'a MachineRecord),
}

/// The registry as the data path sees it: immutable, replaced whole on change.
///
/// It holds the database's records and the configuration's (`[[machine]]`). A configuration
/// record wins over a database record for the same MAC or UUID: the files are what the admin
/// deploys and reloads, and the API refuses to change them, so a database record they shadow
/// is one stored before the file named the machine (`zpxe check` warns about each).
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    generation: i64,
    /// The database's records, in registration order.
    records: Vec<Arc<MachineRecord>>,
    /// The configuration's, in file order (boot-once ones deployed per `deployed`).
    files: Arc<[Arc<MachineRecord>]>,
    /// Keys ([`file_key`]) of the configuration's boot-once machines that were deployed
    /// (table `file_deployed`: a file record has no row of its own).
    deployed: Arc<std::collections::HashSet<String>>,
    by_mac: HashMap<MacAddr, Arc<MachineRecord>>,
    by_uuid: HashMap<ClientUuid, Arc<MachineRecord>>,
    file_by_mac: HashMap<MacAddr, Arc<MachineRecord>>,
    file_by_uuid: HashMap<ClientUuid, Arc<MachineRecord>>,
}

impl RegistrySnapshot {
    fn new(
        generation: i64,
        records: Vec<MachineRecord>,
        deployed: std::collections::HashSet<String>,
    ) -> Self {
        Self::build(
            generation,
            records.into_iter().map(Arc::new).collect(),
            Arc::new([]),
            Arc::new(deployed),
        )
    }

    fn build(
        generation: i64,
        records: Vec<Arc<MachineRecord>>,
        files: Arc<[Arc<MachineRecord>]>,
        deployed: Arc<std::collections::HashSet<String>>,
    ) -> Self {
        let mut s = Self {
            generation,
            ..Self::default()
        };
        // A deployed boot-once file record: the same record, deployed.
        let files: Arc<[Arc<MachineRecord>]> = files
            .iter()
            .map(|r| {
                let done =
                    r.boot_once && file_key(r.mac, r.uuid).is_some_and(|k| deployed.contains(&k));
                if done {
                    Arc::new(MachineRecord {
                        state: BootOnceState::Deployed,
                        ..(**r).clone()
                    })
                } else {
                    Arc::clone(r)
                }
            })
            .collect();
        for r in &records {
            if let Some(m) = r.mac {
                s.by_mac.insert(m, r.clone());
            }
            if let Some(u) = r.uuid {
                s.by_uuid.insert(u, r.clone());
            }
        }
        for r in files.iter() {
            if let Some(m) = r.mac {
                s.file_by_mac.insert(m, r.clone());
            }
            if let Some(u) = r.uuid {
                s.file_by_uuid.insert(u, r.clone());
            }
        }
        s.records = records;
        s.files = files;
        s.deployed = deployed;
        s
    }

    /// This snapshot's database records with other configuration records.
    fn with_files(&self, files: Arc<[Arc<MachineRecord>]>) -> Self {
        Self::build(
            self.generation,
            self.records.clone(),
            files,
            Arc::clone(&self.deployed),
        )
    }

    /// The configuration's boot-once records, as (MAC, UUID, key) for the writer.
    fn file_boot_once(&self) -> Vec<(Option<MacAddr>, Option<ClientUuid>, String)> {
        self.files
            .iter()
            .filter(|r| r.boot_once)
            .filter_map(|r| Some((r.mac, r.uuid, file_key(r.mac, r.uuid)?)))
            .collect()
    }

    /// The record for a client: a configuration record for its MAC or UUID first, then the
    /// database's (by MAC, then by UUID).
    pub fn get(&self, mac: MacAddr, uuid: Option<ClientUuid>) -> Option<&MachineRecord> {
        self.file_record(Some(mac), uuid)
            .or_else(|| self.by_mac.get(&mac).map(|r| &**r))
            .or_else(|| uuid.and_then(|u| self.by_uuid.get(&u)).map(|r| &**r))
    }

    /// The configuration record for this MAC or UUID, if any (the API refuses to change it).
    pub fn file_record(
        &self,
        mac: Option<MacAddr>,
        uuid: Option<ClientUuid>,
    ) -> Option<&MachineRecord> {
        mac.and_then(|m| self.file_by_mac.get(&m))
            .or_else(|| uuid.and_then(|u| self.file_by_uuid.get(&u)))
            .map(|r| &**r)
    }

    /// The record an API key names: the configuration's first, as for a booting client.
    pub fn by_key(&self, key: MachineKey) -> Option<&MachineRecord> {
        match key {
            MachineKey::Mac(m) => self.get(m, None),
            MachineKey::Uuid(u) => self
                .file_record(None, Some(u))
                .or_else(|| self.by_uuid.get(&u).map(|r| &**r)),
        }
    }

    /// What this client's next boot gets from the registry; `None` when it has no record.
    pub fn decide(&self, mac: MacAddr, uuid: Option<ClientUuid>) -> Option<Decision<'_>> {
        let r = self.get(mac, uuid)?;
        Some(if r.boot_once && r.state == BootOnceState::Deployed {
            Decision::Exit
        } else {
            Decision::Use(r)
        })
    }

    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Every record: the configuration's (in file order), then the database's.
    pub fn records(&self) -> impl Iterator<Item = &MachineRecord> {
        self.files.iter().chain(&self.records).map(|r| &**r)
    }

    pub fn len(&self) -> usize {
        self.files.len() + self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a configuration record's deployed state is keyed: by its MAC, else its UUID.
pub fn file_key(mac: Option<MacAddr>, uuid: Option<ClientUuid>) -> Option<String> {
    match (mac, uuid) {
        (Some(m), _) => Some(format!("mac:{m}")),
        (None, Some(u)) => Some(format!("uuid:{u}")),
        (None, None) => None,
    }
}

/// Database records that configuration records shadow: (file record, database record), one
/// pair per database record whose MAC or UUID a file record also names.
pub fn shadowed<'a>(
    files: &'a [MachineRecord],
    db: &'a [MachineRecord],
) -> Vec<(&'a MachineRecord, &'a MachineRecord)> {
    let mut out = Vec::new();
    for d in db {
        let file = files.iter().find(|f| {
            (f.mac.is_some() && f.mac == d.mac) || (f.uuid.is_some() && f.uuid == d.uuid)
        });
        if let Some(f) = file {
            out.push((f, d));
        }
    }
    out
}

/// The published registry: the data path loads it without locks.
#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<RegistrySnapshot>,
    /// Serializes publishers so an older snapshot never replaces a newer one; holds the
    /// configuration's records, which every snapshot published carries.
    publish: Mutex<Arc<[Arc<MachineRecord>]>>,
}

impl Registry {
    /// The current snapshot (lock-free; hold it only briefly).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RegistrySnapshot>> {
        self.current.load()
    }

    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.current.load_full()
    }

    fn publish(&self, snap: RegistrySnapshot, force: bool) {
        let files = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load();
        if force || snap.generation > cur.generation {
            self.current
                .store(Arc::new(snap.with_files(Arc::clone(&files))));
        }
    }

    /// Replaces the configuration's records (at start and at each reload), keeping the
    /// database's: the next request sees them.
    pub fn set_files(&self, records: Vec<MachineRecord>) {
        let mut files = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        *files = records.into_iter().map(Arc::new).collect();
        let cur = self.current.load();
        self.current
            .store(Arc::new(cur.with_files(Arc::clone(&files))));
    }
}

fn registry_generation(sql: &mut dyn Sql) -> Result<i64> {
    let mut g = 0;
    sql.query(
        "SELECT value FROM meta WHERE key = 'registry_generation'",
        &[],
        &mut |r| {
            g = r.int(0)?.unwrap_or(0);
            Ok(())
        },
    )?;
    Ok(g)
}

const RECORD_COLUMNS: &str =
    "mac, uuid, name, grp, entry, loader, variables, boot_once, state, updated";

fn read_record(r: &dyn Row) -> Result<MachineRecord> {
    let variables = r.text(6)?.unwrap_or_default();
    Ok(MachineRecord {
        mac: r.blob(0)?.as_deref().and_then(mac_from),
        uuid: r.blob(1)?.as_deref().and_then(uuid_from),
        name: r.text(2)?.unwrap_or_default(),
        group: r.text(3)?.unwrap_or_default(),
        entry: r.text(4)?,
        loader: r.text(5)?,
        variables: serde_json::from_str(&variables).unwrap_or_default(),
        boot_once: r.int(7)?.unwrap_or(0) != 0,
        state: if r.text(8)?.as_deref() == Some("deployed") {
            BootOnceState::Deployed
        } else {
            BootOnceState::Pending
        },
        updated_ms: r.int(9)?.unwrap_or(0),
        source: None,
    })
}

fn load_registry(sql: &mut dyn Sql) -> Result<RegistrySnapshot> {
    let generation = registry_generation(sql)?;
    let mut deployed = std::collections::HashSet::new();
    sql.query("SELECT key FROM file_deployed", &[], &mut |r| {
        if let Some(k) = r.text(0)? {
            deployed.insert(k);
        }
        Ok(())
    })?;
    let mut records = Vec::new();
    sql.query(
        &format!("SELECT {RECORD_COLUMNS} FROM registry ORDER BY id"),
        &[],
        &mut |r| {
            records.push(read_record(r)?);
            Ok(())
        },
    )?;
    Ok(RegistrySnapshot::new(generation, records, deployed))
}

/// Re-reads the registry when its generation moved (or always, with `force`) and publishes it.
fn refresh_registry(backend: &mut dyn Backend, registry: &Registry, force: bool) -> Result<()> {
    let current = registry.load().generation;
    let mut snap = None;
    backend.read(&mut |sql| {
        if force || registry_generation(sql)? != current {
            snap = Some(load_registry(sql)?);
        }
        Ok(())
    })?;
    if let Some(s) = snap {
        registry.publish(s, false);
    }
    Ok(())
}

fn record_id(sql: &mut dyn Sql, key: MachineKey) -> Result<Option<i64>> {
    let (col, bytes): (&str, Vec<u8>) = match key {
        MachineKey::Mac(m) => ("mac", m.0.to_vec()),
        MachineKey::Uuid(u) => ("uuid", u.wire_bytes().to_vec()),
    };
    let mut id = None;
    let q = if col == "mac" {
        "SELECT id FROM registry WHERE mac = $1"
    } else {
        "SELECT id FROM registry WHERE uuid = $1"
    };
    sql.query(q, &[Value::Blob(Some(&bytes))], &mut |r| {
        id = r.int(0)?;
        Ok(())
    })?;
    Ok(id)
}

fn put_record(sql: &mut dyn Sql, rec: &MachineRecord) -> Result<()> {
    let by_mac = match rec.mac {
        Some(m) => record_id(sql, MachineKey::Mac(m))?,
        None => None,
    };
    let by_uuid = match rec.uuid {
        Some(u) => record_id(sql, MachineKey::Uuid(u))?,
        None => None,
    };
    let id = match (by_mac, by_uuid) {
        (Some(a), Some(b)) if a != b => {
            bail!("the MAC and the UUID belong to two different records")
        }
        (a, b) => a.or(b),
    };
    let mac = rec.mac.map(|m| m.0);
    let uuid = rec.uuid.map(|u| u.wire_bytes());
    let vars = serde_json::to_string(&rec.variables)?;
    let params = [
        Value::Blob(mac.as_ref().map(|k| &k[..])),
        Value::Blob(uuid.as_ref().map(|k| &k[..])),
        Value::Text(Some(&rec.name)),
        Value::Text(Some(&rec.group)),
        Value::Text(rec.entry.as_deref()),
        Value::Text(rec.loader.as_deref()),
        Value::Text(Some(&vars)),
        Value::Int(Some(i64::from(rec.boot_once))),
        Value::Text(Some(rec.state.as_str())),
        Value::Int(Some(now_ms())),
        Value::Int(id),
    ];
    if id.is_some() {
        sql.exec(
            "UPDATE registry SET mac = $1, uuid = $2, name = $3, grp = $4, entry = $5, \
             loader = $6, variables = $7, boot_once = $8, state = $9, updated = $10 \
             WHERE id = $11",
            &params,
        )?;
    } else {
        sql.exec(
            &format!(
                "INSERT INTO registry ({RECORD_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            &params[..10],
        )?;
    }
    bump_generation(sql)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Filters and page of a client list.
#[derive(Debug, Clone, Default)]
pub struct ClientQuery {
    pub offset: u64,
    /// At most [`MAX_PAGE`]; 0 means [`DEFAULT_PAGE`].
    pub limit: u32,
    pub stage: Option<String>,
    pub mac: Option<MacAddr>,
    pub subnet: Option<Cidr>,
    /// Seen at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Seen before.
    pub until_ms: Option<i64>,
}

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

/// One machine in a client list, with its latest boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    #[serde(serialize_with = "ser_mac")]
    pub mac: Option<MacAddr>,
    #[serde(serialize_with = "ser_uuid")]
    pub uuid: Option<ClientUuid>,
    pub ip: Option<IpAddr>,
    pub arch: Option<u16>,
    pub stage: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub boots: u64,
    pub boot: Option<BootSummary>,
}

/// One page of clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientPage {
    pub total: u64,
    pub offset: u64,
    pub clients: Vec<ClientRow>,
}

/// A boot without its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSummary {
    pub id: i64,
    #[serde(serialize_with = "ser_mac")]
    pub mac: Option<MacAddr>,
    pub started_ms: i64,
    pub last_seen_ms: i64,
    pub finished_ms: Option<i64>,
    /// `ok` or `failed` once finished.
    pub outcome: Option<String>,
    pub stage: String,
    pub ip: Option<IpAddr>,
    pub arch: Option<u16>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub at_ms: i64,
    pub kind: String,
    pub ip: Option<IpAddr>,
    /// File, path, stage or leg, by kind.
    pub name: Option<String>,
    pub detail: Option<String>,
    pub outcome: Option<String>,
    pub bytes: Option<u64>,
    pub duration_ms: Option<u64>,
    pub retransmits: Option<u64>,
    pub range: Option<(u64, u64)>,
    pub status: Option<u16>,
    pub arch: Option<u16>,
}

/// A boot and its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootTimeline {
    #[serde(flatten)]
    pub boot: BootSummary,
    pub events: Vec<EventRecord>,
}

/// Machines in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageCount {
    pub stage: String,
    pub machines: u64,
}

/// An error event with its machine, for "recent errors".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorRecord {
    #[serde(serialize_with = "ser_mac")]
    pub mac: Option<MacAddr>,
    #[serde(flatten)]
    pub event: EventRecord,
}

fn u64_of(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn u16_of(v: Option<i64>) -> Option<u16> {
    v.and_then(|v| u16::try_from(v).ok())
}

const BOOT_COLUMNS: &str = "b.id, b.started, b.last_seen, b.finished, b.outcome, b.stage, b.ip, \
     b.arch";

/// Reads [`BOOT_COLUMNS`] starting at column `at`.
fn read_boot(r: &dyn Row, at: usize, mac: Option<MacAddr>) -> Result<Option<BootSummary>> {
    let Some(id) = r.int(at)? else {
        return Ok(None);
    };
    Ok(Some(BootSummary {
        id,
        mac,
        started_ms: r.int(at + 1)?.unwrap_or(0),
        last_seen_ms: r.int(at + 2)?.unwrap_or(0),
        finished_ms: r.int(at + 3)?,
        outcome: r.text(at + 4)?,
        stage: r.text(at + 5)?.unwrap_or_default(),
        ip: r.blob(at + 6)?.as_deref().and_then(ip_from_key),
        arch: u16_of(r.int(at + 7)?),
    }))
}

const EVENT_COLUMNS: &str = "e.at, e.kind, e.ip, e.name, e.detail, e.outcome, e.bytes, \
     e.duration_ms, e.retransmits, e.range_start, e.range_end, e.status, e.arch";

fn read_event(r: &dyn Row, at: usize) -> Result<EventRecord> {
    let range = match (u64_of(r.int(at + 9)?), u64_of(r.int(at + 10)?)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    Ok(EventRecord {
        at_ms: r.int(at)?.unwrap_or(0),
        kind: r.text(at + 1)?.unwrap_or_default(),
        ip: r.blob(at + 2)?.as_deref().and_then(ip_from_key),
        name: r.text(at + 3)?,
        detail: r.text(at + 4)?,
        outcome: r.text(at + 5)?,
        bytes: u64_of(r.int(at + 6)?),
        duration_ms: u64_of(r.int(at + 7)?),
        retransmits: u64_of(r.int(at + 8)?),
        range,
        status: u16_of(r.int(at + 11)?),
        arch: u16_of(r.int(at + 12)?),
    })
}

fn query_clients(sql: &mut dyn Sql, q: &ClientQuery) -> Result<ClientPage> {
    let mac = q.mac.map(|m| m.0);
    let mut params: Vec<Value<'_>> = Vec::new();
    let mut filter = String::new();
    if let Some(stage) = &q.stage {
        params.push(Value::Text(Some(stage)));
        let _ = write!(filter, " AND m.stage = ${}", params.len());
    }
    if let Some(mac) = &mac {
        params.push(Value::Blob(Some(mac)));
        let _ = write!(filter, " AND m.mac = ${}", params.len());
    }
    if let Some(net) = &q.subnet {
        params.push(Value::Blob(Some(&net.lo)));
        params.push(Value::Blob(Some(&net.hi)));
        let _ = write!(
            filter,
            " AND m.ip >= ${} AND m.ip <= ${}",
            params.len() - 1,
            params.len()
        );
    }
    if let Some(t) = q.since_ms {
        params.push(Value::Int(Some(t)));
        let _ = write!(filter, " AND m.last_seen >= ${}", params.len());
    }
    if let Some(t) = q.until_ms {
        params.push(Value::Int(Some(t)));
        let _ = write!(filter, " AND m.last_seen < ${}", params.len());
    }
    let mut total = 0;
    sql.query(
        &format!("SELECT COUNT(*) FROM machines m WHERE 1 = 1{filter}"),
        &params,
        &mut |r| {
            total = u64_of(r.int(0)?).unwrap_or(0);
            Ok(())
        },
    )?;
    let limit = match q.limit {
        0 => DEFAULT_PAGE,
        l => l.min(MAX_PAGE),
    };
    params.push(Value::Int(Some(i64::from(limit))));
    params.push(Value::Int(opt_i64(Some(q.offset))));
    let n = params.len();
    let mut clients = Vec::new();
    sql.query(
        &format!(
            "SELECT m.mac, m.uuid, m.ip, m.arch, m.stage, m.first_seen, m.last_seen, m.boots, \
             {BOOT_COLUMNS} FROM machines m LEFT JOIN boots b ON b.id = \
             (SELECT MAX(id) FROM boots WHERE boots.machine_id = m.id) \
             WHERE 1 = 1{filter} ORDER BY m.last_seen DESC, m.id DESC LIMIT ${} OFFSET ${}",
            n - 1,
            n
        ),
        &params,
        &mut |r| {
            let mac = r.blob(0)?.as_deref().and_then(mac_from);
            clients.push(ClientRow {
                mac,
                uuid: r.blob(1)?.as_deref().and_then(uuid_from),
                ip: r.blob(2)?.as_deref().and_then(ip_from_key),
                arch: u16_of(r.int(3)?),
                stage: r.text(4)?.unwrap_or_default(),
                first_seen_ms: r.int(5)?.unwrap_or(0),
                last_seen_ms: r.int(6)?.unwrap_or(0),
                boots: u64_of(r.int(7)?).unwrap_or(0),
                boot: read_boot(r, 8, mac)?,
            });
            Ok(())
        },
    )?;
    Ok(ClientPage {
        total,
        offset: q.offset,
        clients,
    })
}

fn events_of(sql: &mut dyn Sql, boot: i64) -> Result<Vec<EventRecord>> {
    let mut out = Vec::new();
    sql.query(
        &format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.boot_id = $1 ORDER BY e.id"),
        &[Value::Int(Some(boot))],
        &mut |r| {
            out.push(read_event(r, 0)?);
            Ok(())
        },
    )?;
    Ok(out)
}

fn query_boots_of(sql: &mut dyn Sql, mac: MacAddr, limit: u32) -> Result<Vec<BootTimeline>> {
    let mut boots = Vec::new();
    sql.query(
        &format!(
            "SELECT {BOOT_COLUMNS} FROM boots b JOIN machines m ON m.id = b.machine_id \
             WHERE m.mac = $1 ORDER BY b.id DESC LIMIT $2"
        ),
        &[
            Value::Blob(Some(&mac.0)),
            Value::Int(Some(i64::from(limit.min(MAX_PAGE)))),
        ],
        &mut |r| {
            if let Some(b) = read_boot(r, 0, Some(mac))? {
                boots.push(b);
            }
            Ok(())
        },
    )?;
    let mut out = Vec::with_capacity(boots.len());
    for boot in boots {
        let events = events_of(sql, boot.id)?;
        out.push(BootTimeline { boot, events });
    }
    Ok(out)
}

fn query_boots_since(sql: &mut dyn Sql, since_ms: i64, limit: u32) -> Result<Vec<BootSummary>> {
    let mut out = Vec::new();
    sql.query(
        &format!(
            "SELECT m.mac, {BOOT_COLUMNS} FROM boots b JOIN machines m ON m.id = b.machine_id \
             WHERE b.last_seen >= $1 ORDER BY b.last_seen, b.id LIMIT $2"
        ),
        &[
            Value::Int(Some(since_ms)),
            Value::Int(Some(i64::from(limit.min(MAX_PAGE)))),
        ],
        &mut |r| {
            let mac = r.blob(0)?.as_deref().and_then(mac_from);
            if let Some(b) = read_boot(r, 1, mac)? {
                out.push(b);
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn query_stage_counts(sql: &mut dyn Sql) -> Result<Vec<StageCount>> {
    let mut out = Vec::new();
    sql.query(
        "SELECT stage, COUNT(*) FROM machines GROUP BY stage ORDER BY stage",
        &[],
        &mut |r| {
            out.push(StageCount {
                stage: r.text(0)?.unwrap_or_default(),
                machines: u64_of(r.int(1)?).unwrap_or(0),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

fn query_recent_errors(sql: &mut dyn Sql, limit: u32) -> Result<Vec<ErrorRecord>> {
    let mut out = Vec::new();
    sql.query(
        &format!(
            "SELECT m.mac, {EVENT_COLUMNS} FROM events e \
             LEFT JOIN boots b ON b.id = e.boot_id LEFT JOIN machines m ON m.id = b.machine_id \
             WHERE e.kind = 'error' OR e.outcome = 'failed' \
             OR (e.kind = 'stage' AND e.name = 'failed') ORDER BY e.id DESC LIMIT $1"
        ),
        &[Value::Int(Some(i64::from(limit.min(MAX_PAGE))))],
        &mut |r| {
            out.push(ErrorRecord {
                mac: r.blob(0)?.as_deref().and_then(mac_from),
                event: read_event(r, 1)?,
            });
            Ok(())
        },
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The whole: what the server holds

/// The database as the server uses it: a writer thread fed by [`Recorder`]s, a read connection
/// for the API, and the published registry.
pub struct Database {
    recorder: Recorder,
    registry: Arc<Registry>,
    reader: Mutex<Box<dyn Backend>>,
    writer: Mutex<Option<Writer>>,
    /// SQLite: the thread that checkpoints for every connection of this process.
    checkpointer: Mutex<Option<Checkpointer>>,
    kind: &'static str,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("kind", &self.kind)
            .field("recorder", &self.recorder)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connects (two connections: the writer's and the reader's), migrates, loads the registry
    /// and starts the writer. Blocking: call before the event loops start.
    pub fn open(config: &DatabaseConfig) -> Result<Self> {
        let url = config.url.get_ref();
        if let Ok(DbUrl::Sqlite(path)) = DbUrl::parse(url)
            && let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let writer = connect_served(url)?;
        let reader = connect_served(url)?;
        let checkpointer = checkpointer_for(url)?;
        let db = Self::with_backends(writer, reader, config.queue, config.writer_config())?;
        *db.checkpointer.lock().unwrap_or_else(|p| p.into_inner()) = checkpointer;
        Ok(db)
    }

    /// A database over given connections (tests pick their own writer configuration).
    pub fn with_backends(
        writer: Box<dyn Backend>,
        mut reader: Box<dyn Backend>,
        queue_capacity: usize,
        config: WriterConfig,
    ) -> Result<Self> {
        let registry = Arc::new(Registry::default());
        refresh_registry(reader.as_mut(), &registry, true)?;
        let kind = reader.kind();
        let (recorder, q) = queue(queue_capacity);
        let writer = Writer::spawn(writer, q, config, registry.clone())?;
        Ok(Self {
            recorder,
            registry,
            reader: Mutex::new(reader),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(None),
            kind,
        })
    }

    /// A recorder for the data path (clone it per event loop).
    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.recorder.stats()
    }

    /// The registry the data path reads.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn read<T>(&self, mut f: impl FnMut(&mut dyn Sql) -> Result<T>) -> Result<T> {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = None;
        reader.read(&mut |sql| {
            out = Some(f(sql)?);
            Ok(())
        })?;
        out.context("transaction ran nothing")
    }

    fn write<T>(&self, mut f: impl FnMut(&mut dyn Sql) -> Result<T>) -> Result<T> {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = None;
        reader.transaction(&mut |sql| {
            out = Some(f(sql)?);
            Ok(())
        })?;
        out.context("transaction ran nothing")
    }

    /// One page of clients, most recently seen first.
    pub fn clients(&self, q: &ClientQuery) -> Result<ClientPage> {
        self.read(|sql| query_clients(sql, q))
    }

    /// A machine's last `limit` boots, newest first, each with its timeline.
    pub fn boots_of(&self, mac: MacAddr, limit: u32) -> Result<Vec<BootTimeline>> {
        self.read(|sql| query_boots_of(sql, mac, limit))
    }

    /// Boots with an event at or after `since_ms`, oldest first.
    pub fn boots_since(&self, since_ms: i64, limit: u32) -> Result<Vec<BootSummary>> {
        self.read(|sql| query_boots_since(sql, since_ms, limit))
    }

    /// Machines per current stage.
    pub fn stage_counts(&self) -> Result<Vec<StageCount>> {
        self.read(query_stage_counts)
    }

    /// The latest errors and failed transfers, newest first.
    pub fn recent_errors(&self, limit: u32) -> Result<Vec<ErrorRecord>> {
        self.read(|sql| query_recent_errors(sql, limit))
    }

    /// Applies retention now (the writer also does so every minute).
    pub fn apply_retention(&self, r: Retention) -> Result<u64> {
        let now = now_ms();
        self.write(|sql| apply_retention(sql, r, now))
    }

    /// Every registered machine.
    pub fn machines(&self) -> Result<Vec<MachineRecord>> {
        Ok(self.registry_from_db()?.records().cloned().collect())
    }

    fn registry_from_db(&self) -> Result<RegistrySnapshot> {
        self.read(load_registry)
    }

    pub fn machine(&self, key: MachineKey) -> Result<Option<MachineRecord>> {
        let (col, bytes): (&str, Vec<u8>) = match key {
            MachineKey::Mac(m) => ("mac", m.0.to_vec()),
            MachineKey::Uuid(u) => ("uuid", u.wire_bytes().to_vec()),
        };
        let q = format!(
            "SELECT {RECORD_COLUMNS} FROM registry WHERE {} = $1",
            if col == "mac" { "mac" } else { "uuid" }
        );
        self.read(|sql| {
            let mut found = None;
            sql.query(&q, &[Value::Blob(Some(&bytes))], &mut |r| {
                found = Some(read_record(r)?);
                Ok(())
            })?;
            Ok(found)
        })
    }

    /// Creates or replaces the record with the record's MAC (or UUID), then publishes the
    /// registry.
    pub fn put_machine(&self, rec: &MachineRecord) -> Result<()> {
        rec.validate().map_err(|e| anyhow!(e))?;
        self.write(|sql| put_record(sql, rec))?;
        self.republish()
    }

    /// Stores every record in one transaction (all or none), then publishes the registry.
    pub fn put_machines(&self, recs: &[MachineRecord]) -> Result<()> {
        for (i, r) in recs.iter().enumerate() {
            r.validate().map_err(|e| anyhow!("record {i}: {e}"))?;
        }
        self.write(|sql| {
            for (i, r) in recs.iter().enumerate() {
                put_record(sql, r).with_context(|| format!("record {i}"))?;
            }
            Ok(())
        })?;
        self.republish()
    }

    /// Deletes a record; whether there was one.
    pub fn delete_machine(&self, key: MachineKey) -> Result<bool> {
        let deleted = self.write(|sql| {
            let Some(id) = record_id(sql, key)? else {
                return Ok(false);
            };
            sql.exec(
                "DELETE FROM registry WHERE id = $1",
                &[Value::Int(Some(id))],
            )?;
            bump_generation(sql)?;
            Ok(true)
        })?;
        if deleted {
            self.republish()?;
        }
        Ok(deleted)
    }

    /// Re-arms a deployed boot-once machine of the configuration (`[[machine]]`), named by
    /// its [`file_key`]; whether it was deployed.
    pub fn rearm_file_machine(&self, key: &str) -> Result<bool> {
        let rearmed = self.write(|sql| {
            let n = sql.exec(
                "DELETE FROM file_deployed WHERE key = $1",
                &[Value::Text(Some(key))],
            )?;
            if n > 0 {
                bump_generation(sql)?;
            }
            Ok(n > 0)
        })?;
        self.republish()?;
        Ok(rearmed)
    }

    fn republish(&self) -> Result<()> {
        let snap = self.registry_from_db()?;
        self.registry.publish(snap, false);
        Ok(())
    }

    /// Checks the database (SQLite's `integrity_check`).
    pub fn check(&self) -> Result<()> {
        self.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check()
    }

    /// Writes what is queued and stops the writer. Blocking.
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            if let Some(tx) = &self.recorder.tx {
                let _ = tx.send(Msg::Stop);
            }
            w.join();
        }
        // After the writer's last batch: the last checkpoint empties the log.
        drop(
            self.checkpointer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.close();
    }
}

#[doc(hidden)]
pub mod suite;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_leases_get_a_file_of_their_own_and_postgres_keeps_them() {
        let cases = [
            (
                "sqlite:///var/lib/zpxe/zpxe.db",
                "sqlite:///var/lib/zpxe/zpxe-leases.db",
            ),
            ("sqlite://rel/state", "sqlite://rel/state-leases"),
            (
                "sqlite:///C:/ProgramData/zpxe/zpxe.db",
                "sqlite://C:/ProgramData/zpxe/zpxe-leases.db",
            ),
            ("postgres://zpxe@db/zpxe", "postgres://zpxe@db/zpxe"),
        ];
        for (url, want) in cases {
            let got = leases_url(url).expect(url);
            // The same file whichever way the path is spelled back.
            assert_eq!(DbUrl::parse(&got), DbUrl::parse(want), "{url}");
        }
        assert!(leases_url("mysql://x").is_err());
    }

    /// A fresh SQLite database in a temporary directory (kept alive by the returned guard).
    fn fresh() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("zpxe.db").display());
        (dir, url)
    }

    macro_rules! on_sqlite {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                let (_dir, url) = fresh();
                suite::$name(&url);
            }
        )*};
    }

    on_sqlite!(
        migrations_idempotent,
        batching,
        drop_and_count,
        grouping_and_queries,
        retention,
        registry_crud,
        boot_once,
        file_boot_once,
        hostile_text,
        two_recorders,
        leases_persist,
    );

    #[test]
    fn sqlite_is_wal_and_checks_clean() {
        let (_dir, url) = fresh();
        let db = suite::open(&url, suite::test_writer(10, 10));
        db.check().expect("integrity_check");
        let mut mode = String::new();
        db.read(|sql| {
            sql.query("PRAGMA journal_mode", &[], &mut |r| {
                mode = r.text(0)?.unwrap_or_default();
                Ok(())
            })
        })
        .expect("pragma");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn text_is_bounded_at_a_char_boundary() {
        let s = "é".repeat(100);
        let t = Stage::new(&s);
        assert_eq!(t.as_str(), "é".repeat(16));
        assert_eq!(Name::from_bytes(b"ok\xffrest").as_str(), "ok");
        assert_eq!(Detail::new("").as_str(), "");
        assert!(
            std::mem::size_of::<Event>() <= 256,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    #[test]
    fn cidr_ranges() {
        let net: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(net.contains("10.1.255.255".parse().expect("ip")));
        assert!(!net.contains("10.2.0.0".parse().expect("ip")));
        assert!(!net.contains("::1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        assert!(!all.contains("fd00::1".parse().expect("ip")));
        let v6: Cidr = "fd00::/8".parse().expect("cidr");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_section_and_its_problems() {
        use crate::config::Config;
        use std::path::Path;
        let good = "[server]\nroot = \"/tmp\"\n[database]\nurl = \"postgres://zpxe@db/zpxe\"\n\
                    retention-boots = 5\nretention-days = 30\nqueue = 64\nbatch-events = 10\n\
                    batch-interval-ms = 20\nboot-gap-minutes = 5\nfinal-stage = \"deployed\"\n";
        let c = Config::parse(Path::new("z.toml"), good).expect("valid");
        assert_eq!(c.database.retention_boots, 5);
        assert_eq!(c.database.final_stage, "deployed");
        let d = Config::parse(Path::new("z.toml"), "[server]\nroot = \"/tmp\"\n").expect("valid");
        assert_eq!(d.database.url.get_ref(), DEFAULT_URL);
        assert!(d.database.enabled);
        let bad = "[server]\nroot = \"/tmp\"\n[database]\nurl = \"mysql://x\"\nqueue = 0\n";
        let p = Config::parse(Path::new("z.toml"), bad)
            .expect_err("invalid")
            .0;
        let p: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("z.toml:4:7: database url"), "{p:?}");
        assert!(p[1].starts_with("z.toml:3:1: database.queue"), "{p:?}");
    }

    #[test]
    fn engine_events_map_to_timeline_events() {
        use zpxe_engine::dhcp::IgnoreReason;
        let mac: MacAddr = "52:54:00:00:00:01".parse().expect("mac");
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let offered = DhcpEvent::Offered {
            mac,
            uuid: None,
            arch: Some(7),
            boot_file: "ipxe.efi".into(),
            relay: None,
            ipxe: false,
        };
        let e = dhcp_event(&offered, Some("0.0.0.0".parse().expect("ip"))).expect("event");
        assert_eq!(
            e.kind,
            EventKind::DhcpOffer {
                arch: Some(7),
                ipxe: false
            }
        );
        assert_eq!((e.mac, e.ip), (Some(mac), None), "0.0.0.0 names no client");
        let acked = DhcpEvent::Acked {
            mac,
            uuid: None,
            arch: Some(7),
            boot_file: "ipxe.efi".into(),
            relay: None,
            ipxe: false,
            port: DhcpPort::Pxe,
        };
        let e = dhcp_event(&acked, Some(ip)).expect("event");
        assert_eq!(e.kind, EventKind::PxeAck { arch: Some(7) });
        assert_eq!(e.ip, Some(ip));
        let ignored = DhcpEvent::Ignored {
            reason: IgnoreReason::NotPxeClient,
            mac: Some(mac),
        };
        assert!(dhcp_event(&ignored, None).is_none());

        let probe = TransferOutcome::Aborted(Abort::Client(ClientAbort::Error {
            code: 8,
            message: "tsize".into(),
        }));
        let k = tftp_end_event("ipxe.efi", &probe, Duration::from_millis(3));
        assert!(
            matches!(
                k,
                EventKind::TftpEnd {
                    outcome: Outcome::Probe,
                    ..
                }
            ),
            "{k:?}"
        );
        let done = TransferOutcome::Completed {
            bytes: 1000,
            retransmits: 3,
        };
        let k = tftp_end_event("ipxe.efi", &done, Duration::from_millis(40));
        assert!(
            matches!(
                k,
                EventKind::TftpEnd {
                    bytes: 1000,
                    retransmits: 3,
                    duration_ms: 40,
                    outcome: Outcome::Ok,
                    ..
                }
            ),
            "{k:?}"
        );
        let lost =
            TransferOutcome::Aborted(Abort::Client(ClientAbort::TimedOut { retransmits: 5 }));
        let k = tftp_end_event("x", &lost, Duration::ZERO);
        assert!(
            matches!(
                k,
                EventKind::TftpEnd {
                    outcome: Outcome::Failed,
                    ..
                }
            ),
            "{k:?}"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            DbUrl::parse("sqlite:///var/lib/zpxe/zpxe.db"),
            Ok(DbUrl::Sqlite("/var/lib/zpxe/zpxe.db".into()))
        );
        assert_eq!(
            DbUrl::parse("sqlite:///C:/ProgramData/zpxe/zpxe.db"),
            Ok(DbUrl::Sqlite("C:/ProgramData/zpxe/zpxe.db".into()))
        );
        assert!(matches!(
            DbUrl::parse("postgres://zpxe@db.example/zpxe"),
            Ok(DbUrl::Postgres(_))
        ));
        assert!(DbUrl::parse("mysql://x").is_err());
        assert!(DbUrl::parse("sqlite://").is_err());
    }

    fn rec(mac: u8, name: &str, source: Option<&str>) -> MachineRecord {
        MachineRecord {
            mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, mac])),
            name: name.into(),
            source: source.map(str::to_owned),
            ..MachineRecord::default()
        }
    }

    #[test]
    fn a_configuration_record_wins_over_the_databases_until_it_is_removed() {
        let registry = Registry::default();
        let uuid = ClientUuid::from_wire([7; 16]);
        let db_uuid = MachineRecord {
            uuid: Some(uuid),
            mac: None,
            ..rec(0, "db-uuid", None)
        };
        registry.publish(
            RegistrySnapshot::new(
                3,
                vec![rec(1, "db", None), rec(2, "db-only", None), db_uuid],
                Default::default(),
            ),
            false,
        );
        let file_uuid = MachineRecord {
            uuid: Some(uuid),
            mac: None,
            ..rec(0, "file-uuid", Some("conf.d/b.toml:1:1"))
        };
        registry.set_files(vec![rec(1, "file", Some("conf.d/a.toml:3:1")), file_uuid]);
        let snap = registry.load();
        assert_eq!(snap.generation(), 3, "the database's generation is kept");
        let mac = |n| MacAddr([0x52, 0x54, 0, 0, 0, n]);
        assert_eq!(
            snap.get(mac(1), None).map(|r| r.name.as_str()),
            Some("file")
        );
        assert_eq!(
            snap.get(mac(2), None).map(|r| r.name.as_str()),
            Some("db-only")
        );
        // A file record for the UUID wins over a database record for the MAC.
        assert_eq!(
            snap.get(mac(2), Some(uuid)).map(|r| r.name.as_str()),
            Some("file-uuid")
        );
        assert_eq!(
            snap.by_key(MachineKey::Uuid(uuid)).map(|r| r.name.as_str()),
            Some("file-uuid")
        );
        assert!(snap.file_record(Some(mac(2)), None).is_none());
        assert_eq!(snap.len(), 5);
        let names: Vec<&str> = snap.records().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["file", "file-uuid", "db", "db-only", "db-uuid"]);
        // A newer database snapshot keeps the files.
        registry.publish(
            RegistrySnapshot::new(4, vec![rec(1, "db2", None)], Default::default()),
            false,
        );
        assert_eq!(
            registry.load().get(mac(1), None).map(|r| r.name.as_str()),
            Some("file")
        );
        // The files emptied (a reload without them): the database's record decides again.
        registry.set_files(Vec::new());
        assert_eq!(
            registry.load().get(mac(1), None).map(|r| r.name.as_str()),
            Some("db2")
        );
        let files = [
            rec(1, "file", Some("a:1:1")),
            rec(9, "alone", Some("a:5:1")),
        ];
        let stored = [rec(1, "db", None), rec(2, "other", None)];
        let pairs = shadowed(&files, &stored);
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].0.name.as_str(), pairs[0].1.name.as_str()),
            ("file", "db")
        );
    }
}
