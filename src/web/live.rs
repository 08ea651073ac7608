//! Live view of the boots under way: a bounded fan-out from the event loops to the web
//! service, Server-Sent Events (`/api/v1/events`), `/api/v1/status` and the page at `/`.
//!
//! The data path pays one `try_send` per event ([`Tap::send`]) into a queue of
//! [`QUEUE_CAPACITY`]; a full queue drops the event and counts it. The web service's loop
//! drains that queue every [`PUMP_EVERY`] ([`Live::pump`]) into a ring of the last
//! [`RING_CAPACITY`] SSE frames and into the state `/api/v1/status` reads (machines booting,
//! active transfers, recent errors, counters per leg, the throughput graph). Each SSE client
//! reads the ring from its own cursor: one that falls behind the ring is told how many frames
//! it missed (`event: lagged`), one whose socket takes nothing for [`WRITE_TIMEOUT`] is
//! dropped. At most [`MAX_SUBSCRIBERS`] streams are open at once, at most
//! [`MAX_SUBSCRIBERS_PER_PEER`] from one source (past either: 503 with `Retry-After`); a
//! comment line every [`HEARTBEAT`] keeps proxies from closing an idle stream. Progress and
//! the event that ends a transfer carry its id ([`next_transfer_id`]), so the end takes off
//! exactly that transfer.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};
use serde::Serialize;
use zpxe_engine::dhcp::MacAddr;
use zpxe_platform::runtime::sleep;
use zpxe_platform::tcp::TcpConn;

use crate::db::{Event, EventKind, Leg, Name, Outcome};
use crate::metrics::Metrics;

/// The SSE route.
pub const EVENTS_PATH: &str = "/api/v1/events";
/// Events in flight from the event loops to the web service's loop, and so the most one pump
/// takes: a flood cannot hold the web loop. With a pump every [`PUMP_EVERY`], 160,000 events a
/// second at most.
pub const QUEUE_CAPACITY: usize = 4096;
/// SSE frames kept for streams to catch up on.
pub const RING_CAPACITY: usize = 4096;
/// SSE streams open at once; past it, `/api/v1/events` answers 503.
pub const MAX_SUBSCRIBERS: usize = 32;
/// SSE streams one source address (an IPv6 /64) may hold open; past it, 503 too, so one peer
/// cannot take every place.
pub const MAX_SUBSCRIBERS_PER_PEER: usize = 4;
/// Seconds a refused stream is told to wait (`Retry-After`).
pub const RETRY_AFTER_S: u32 = 5;
/// How often the web loop drains the queue while events come (and streams look for new
/// frames).
pub const PUMP_EVERY: Duration = Duration::from_millis(25);
/// How often it looks after a drain that found nothing: an idle server wakes 20 times a
/// second, and the first 50 ms of a storm can still bring [`QUEUE_CAPACITY`] events.
pub const IDLE_PUMP_EVERY: Duration = Duration::from_millis(50);
/// An idle stream gets a comment line this often.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A stream whose socket takes nothing for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of frames one write to a stream carries.
const WRITE_CHUNK: usize = 64 * 1024;
/// A transfer reports progress at most this often (per transfer, on the data path).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// A transfer with no news for this long is taken off the active list.
const STALE: Duration = Duration::from_secs(10);
/// How long frames are kept after a page last looked (read the status, or had a stream
/// open): a page that reloads, or a stream that reconnects with `Last-Event-ID`, misses
/// nothing. With nobody looking, no frame is serialized: a storm costs the web thread its
/// counters and machine table only.
const WATCH_GRACE: Duration = Duration::from_secs(60);
/// Machines with an event in this window count as booting now.
const BOOTING_WINDOW_MS: i64 = 120_000;
/// Machines, active transfers and address-to-MAC entries tracked at most.
const MAX_MACHINES: usize = 4096;
const MAX_ACTIVE: usize = 4096;
const MAX_ADDRESSES: usize = 8192;
/// Machines and transfers `/api/v1/status` lists at most.
const LISTED: usize = 256;
/// Recent errors kept.
const ERRORS_KEPT: usize = 50;
/// Seconds of throughput the graph keeps.
pub const GRAPH_SECONDS: usize = 300;

/// What the event loops send.
#[derive(Debug, Clone, Copy)]
pub enum LiveEvent {
    /// A timeline event, as recorded for the database.
    Recorded(Event),
    /// Bytes of a file sent so far to `remote` (`total` when known), by transfer `transfer`
    /// ([`next_transfer_id`]; its end event carries the same id).
    Progress {
        leg: Leg,
        transfer: u64,
        remote: SocketAddr,
        file: Name,
        done: u64,
        total: Option<u64>,
    },
}

/// A transfer id no other transfer of this process has: the progress events of one TFTP
/// transfer or HTTP connection and the event that ends it carry it, so the live view ends
/// exactly that transfer (one lookup), however many clients fetch the same file.
#[inline]
pub fn next_transfer_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// The data path's end of the fan-out: clone one into each event loop.
///
/// The queue is a `VecDeque` under a mutex (held for one push, or for one swap by the web
/// service), so its memory follows its use up to [`QUEUE_CAPACITY`] events (1 MiB of 264-byte
/// events, and as much again in the spare it is swapped with), where a preallocated channel
/// would take all of it at start.
#[derive(Debug, Clone, Default)]
pub struct Tap {
    queue: Arc<Mutex<VecDeque<LiveEvent>>>,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// Queues `ev` for the web service. Never blocks: a full queue drops it and counts it.
    #[inline]
    pub fn send(&self, ev: LiveEvent) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() < QUEUE_CAPACITY {
            q.push_back(ev);
        } else {
            drop(q);
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Progress of a transfer; see [`LiveEvent::Progress`].
    #[inline]
    pub fn progress(
        &self,
        leg: Leg,
        transfer: u64,
        remote: SocketAddr,
        file: &str,
        done: u64,
        total: Option<u64>,
    ) {
        self.send(LiveEvent::Progress {
            leg,
            transfer,
            remote,
            file: Name::new(file),
            done,
            total,
        });
    }
}

/// A transfer under way, as `/api/v1/status` and the page show it.
#[derive(Debug, Clone, Serialize)]
struct Active {
    /// The transfer's id ([`next_transfer_id`]).
    id: u64,
    leg: &'static str,
    remote: String,
    mac: Option<String>,
    file: String,
    done: u64,
    total: Option<u64>,
    /// Bytes per second over the transfer so far.
    rate: u64,
    started_ms: i64,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    seen: Instant,
}

/// A machine seen lately.
#[derive(Debug, Clone, Serialize)]
struct Machine {
    /// The MAC, or the address when no DHCP event named its MAC.
    key: MachineKey,
    #[serde(serialize_with = "ser_mac")]
    mac: Option<MacAddr>,
    ip: Option<IpAddr>,
    /// The leg of its latest event (`dhcp`, `pxe`, `tftp`, `http`, `script`).
    leg: &'static str,
    /// Its latest stage (a leg, or a stage its script reported).
    stage: Cow<'static, str>,
    detail: String,
    /// The file of its latest transfer, with progress.
    file: Option<String>,
    done: u64,
    total: Option<u64>,
    first_ms: i64,
    last_ms: i64,
}

/// What the machine table is keyed by: typed, so an event costs no formatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MachineKey {
    Mac(MacAddr),
    Ip(IpAddr),
    Unknown,
}

impl Serialize for MachineKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MachineKey::Mac(m) => s.collect_str(m),
            MachineKey::Ip(ip) => s.collect_str(ip),
            MachineKey::Unknown => s.serialize_str("unknown"),
        }
    }
}

fn ser_mac<S: serde::Serializer>(m: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.collect_str(m),
        None => s.serialize_none(),
    }
}

/// An error or failed transfer.
#[derive(Debug, Clone, Serialize)]
struct ErrorItem {
    at_ms: i64,
    mac: Option<String>,
    ip: Option<String>,
    leg: &'static str,
    reason: String,
}

/// Events per leg.
#[derive(Debug, Clone, Default, Serialize)]
struct LegCounts {
    events: u64,
    started: u64,
    ok: u64,
    failed: u64,
    bytes: u64,
}

/// One second of the throughput graph.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    at_ms: i64,
    tftp_bps: u64,
    http_bps: u64,
}

/// One frame streamed to SSE clients, as its JSON.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Frame<'a> {
    /// A timeline event.
    Boot {
        at_ms: i64,
        kind: &'static str,
        leg: &'static str,
        mac: Option<String>,
        ip: Option<String>,
        stage: Option<&'a str>,
        file: Option<&'a str>,
        bytes: Option<u64>,
        outcome: Option<&'static str>,
        detail: Option<&'a str>,
    },
    Progress(&'a Active),
    /// A transfer that was active and is no longer (ended or went silent).
    Done {
        id: u64,
        leg: &'static str,
        remote: String,
    },
    Error(&'a ErrorItem),
    Sample(Sample),
}

#[derive(Debug, Default)]
struct State {
    /// Id of the last frame (ids start at 1).
    seq: u64,
    ring: VecDeque<(u64, String)>,
    /// Whether frames go into the ring this pass: a stream is open or a page looked within
    /// [`WATCH_GRACE`] (until `watched_until`).
    watched: bool,
    watched_until: Option<Instant>,
    machines: HashMap<MachineKey, Machine>,
    macs: HashMap<IpAddr, MacAddr>,
    /// By transfer id.
    active: HashMap<u64, Active>,
    errors: VecDeque<ErrorItem>,
    legs: BTreeMap<&'static str, LegCounts>,
    graph: VecDeque<Sample>,
    /// (when, TFTP bytes, HTTP bytes) at the last sample.
    last_sample: Option<(Instant, u64, u64)>,
}

/// Counters of the fan-out itself.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Events taken off the queue.
    pub received: AtomicU64,
    /// SSE streams opened, refused at the cap, and dropped for not reading.
    pub streams_opened: AtomicU64,
    pub streams_refused: AtomicU64,
    pub streams_dropped: AtomicU64,
    /// Times a stream fell behind the ring (and was told so).
    pub streams_lagged: AtomicU64,
}

/// What the server runs, for `/api/v1/status`: set once its loops are up.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// `io_uring`, `iocp`, `epoll`, ...
    pub io_driver: &'static str,
    pub threads: usize,
    /// Each service that runs, with the addresses it listens on.
    pub services: BTreeMap<&'static str, Vec<String>>,
}

impl ServerInfo {
    /// `threads`: the boot event loops.
    pub fn new(threads: usize, bound: &crate::serve::Bound) -> Self {
        let list = |a: &[SocketAddr]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut services = BTreeMap::new();
        for (name, addrs) in [
            ("dhcp", &bound.dhcp),
            ("pxe", &bound.pxe),
            ("tftp", &bound.tftp),
            ("http", &bound.http),
            ("https", &bound.https),
            ("web", &bound.web),
        ] {
            if !addrs.is_empty() {
                services.insert(name, list(addrs));
            }
        }
        Self {
            io_driver: bound.driver,
            threads,
            services,
        }
    }
}

/// The live state, shared by the web service's connections; only the web loop touches it.
#[derive(Debug)]
pub struct Live {
    server: std::sync::OnceLock<ServerInfo>,
    tap: Tap,
    /// What [`Live::drain_queue`] swaps with the tap's queue: the two keep their capacity.
    spare: Mutex<VecDeque<LiveEvent>>,
    state: Mutex<State>,
    subscribers: Arc<AtomicUsize>,
    /// Open streams per source (an IPv4 address or an IPv6 /64); entries leave at 0.
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    pub stats: LiveStats,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            server: std::sync::OnceLock::new(),
            tap: Tap::default(),
            spare: Mutex::default(),
            state: Mutex::default(),
            subscribers: Arc::default(),
            per_peer: Arc::default(),
            stats: LiveStats::default(),
        }
    }
}

/// One SSE stream's place under [`MAX_SUBSCRIBERS`] and [`MAX_SUBSCRIBERS_PER_PEER`], given
/// back when it drops.
#[derive(Debug)]
pub struct Subscriber {
    count: Arc<AtomicUsize>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: IpAddr,
    /// The id of the last frame the client has (from `Last-Event-ID`), if any.
    resume: Option<u64>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.count.fetch_sub(1, Relaxed);
    }
}

/// Why [`Live::subscribe`] gave no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// [`MAX_SUBSCRIBERS`] streams are open.
    Total,
    /// This source holds [`MAX_SUBSCRIBERS_PER_PEER`].
    Peer,
}

fn mac_text(mac: Option<MacAddr>) -> Option<String> {
    mac.map(|m| m.to_string())
}

fn leg_of(kind: &EventKind) -> Leg {
    match kind {
        EventKind::DhcpOffer { .. } => Leg::Dhcp,
        EventKind::PxeAck { .. } => Leg::Pxe,
        EventKind::TftpStart { .. } | EventKind::TftpEnd { .. } => Leg::Tftp,
        EventKind::ScriptFetch { .. } => Leg::Script,
        EventKind::HttpFile { .. } => Leg::Http,
        EventKind::Stage { .. } => Leg::Script,
        EventKind::Error { leg, .. } => *leg,
    }
}

impl State {
    /// Numbers a frame and, while someone looks, keeps it in the ring. Unwatched, the ring is
    /// emptied, so a stream that resumes from before the gap is told what it missed.
    fn push(&mut self, frame: &Frame<'_>) {
        if !self.watched {
            return self.skip();
        }
        self.seq += 1;
        let id = self.seq;
        let Ok(json) = serde_json::to_string(frame) else {
            return;
        };
        // The JSON holds no line break (serde escapes them in strings), so one data line.
        let mut text = String::with_capacity(json.len() + 32);
        let _ = write!(text, "id: {id}\ndata: {json}\n\n");
        if self.ring.len() == RING_CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back((id, text));
    }

    /// A frame nobody looks at: it takes its id and nothing else.
    fn skip(&mut self) {
        self.seq += 1;
        self.ring.clear();
    }

    /// Keeps frames for [`WATCH_GRACE`] from `now`.
    fn look(&mut self, now: Instant) {
        self.watched = true;
        self.watched_until = Some(now + WATCH_GRACE);
    }

    fn leg(&mut self, leg: Leg) -> &mut LegCounts {
        self.legs.entry(leg.as_str()).or_default()
    }

    fn error(&mut self, item: ErrorItem) {
        self.push(&Frame::Error(&item));
        if self.errors.len() == ERRORS_KEPT {
            self.errors.pop_back();
        }
        self.errors.push_front(item);
    }

    /// The machine an event belongs to: by MAC, else by the MAC a DHCP event gave its
    /// address, else by address.
    fn machine(&mut self, mac: Option<MacAddr>, ip: Option<IpAddr>, at_ms: i64) -> &mut Machine {
        let mac = mac.or_else(|| ip.and_then(|ip| self.macs.get(&ip).copied()));
        let key = match (mac, ip) {
            (Some(m), _) => MachineKey::Mac(m),
            (None, Some(ip)) => MachineKey::Ip(ip),
            (None, None) => MachineKey::Unknown,
        };
        if !self.machines.contains_key(&key) && self.machines.len() >= MAX_MACHINES {
            self.prune_machines(at_ms);
        }
        let m = self.machines.entry(key).or_insert_with(|| Machine {
            key,
            mac,
            ip: None,
            leg: "dhcp",
            stage: Cow::Borrowed(""),
            detail: String::new(),
            file: None,
            done: 0,
            total: None,
            first_ms: at_ms,
            last_ms: at_ms,
        });
        if ip.is_some() {
            m.ip = ip;
        }
        m.last_ms = m.last_ms.max(at_ms);
        m
    }

    /// Makes room: machines outside the booting window go, then the least recently seen
    /// quarter. Sorting once per quarter keeps this amortized cheap under a flood of new MACs.
    fn prune_machines(&mut self, now_ms: i64) {
        self.machines
            .retain(|_, m| now_ms - m.last_ms <= BOOTING_WINDOW_MS);
        if self.machines.len() >= MAX_MACHINES {
            let mut lasts: Vec<i64> = self.machines.values().map(|m| m.last_ms).collect();
            lasts.sort_unstable();
            let cut = lasts.get(MAX_MACHINES / 4).copied().unwrap_or(i64::MAX);
            self.machines.retain(|_, m| m.last_ms > cut);
        }
    }

    fn apply(&mut self, ev: LiveEvent, now: Instant) {
        match ev {
            LiveEvent::Recorded(e) => self.recorded(e, now),
            LiveEvent::Progress {
                leg,
                transfer,
                remote,
                file,
                done,
                total,
            } => self.progress(leg, transfer, remote, file.as_str(), done, total, now),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn progress(
        &mut self,
        leg: Leg,
        key: u64,
        remote: SocketAddr,
        file: &str,
        done: u64,
        total: Option<u64>,
        now: Instant,
    ) {
        let at_ms = crate::db::now_ms();
        let mac = self.macs.get(&remote.ip()).copied();
        if !self.active.contains_key(&key) {
            if self.active.len() >= MAX_ACTIVE {
                return;
            }
            self.leg(leg).started += 1;
        }
        let a = self.active.entry(key).or_insert_with(|| Active {
            id: key,
            leg: leg.as_str(),
            remote: remote.to_string(),
            mac: None,
            file: String::new(),
            done: 0,
            total: None,
            rate: 0,
            started_ms: at_ms,
            started: now,
            seen: now,
        });
        if a.file != file {
            // A new file on the same connection (HTTP keep-alive): a new transfer.
            a.file = file.to_owned();
            a.started = now;
            a.started_ms = at_ms;
        }
        a.mac = mac_text(mac);
        a.done = done;
        a.total = total;
        a.seen = now;
        let secs = now.saturating_duration_since(a.started).as_secs_f64();
        a.rate = if secs > 0.0 {
            (done as f64 / secs) as u64
        } else {
            0
        };
        let file = a.file.clone();
        if self.watched {
            let a = a.clone();
            self.push(&Frame::Progress(&a));
        } else {
            self.skip();
        }
        let m = self.machine(mac, Some(remote.ip()), at_ms);
        m.leg = leg.as_str();
        m.stage = Cow::Borrowed(leg.as_str());
        m.file = Some(file);
        m.done = done;
        m.total = total;
    }

    /// Takes transfer `id` off the active list.
    fn finish(&mut self, id: u64) {
        if let Some(a) = self.active.remove(&id) {
            self.push(&Frame::Done {
                id,
                leg: a.leg,
                remote: a.remote,
            });
        }
    }

    fn recorded(&mut self, e: Event, _now: Instant) {
        let leg = leg_of(&e.kind);
        if let (Some(mac), Some(ip)) = (e.mac, e.ip) {
            if self.macs.len() >= MAX_ADDRESSES && !self.macs.contains_key(&ip) {
                self.macs.clear();
            }
            self.macs.insert(ip, mac);
        }
        let mac = e
            .mac
            .or_else(|| e.ip.and_then(|ip| self.macs.get(&ip).copied()));
        let counts = self.leg(leg);
        counts.events += 1;
        let (mut stage, mut file, mut bytes, mut outcome, mut detail) =
            (None, None, None, None, None);
        let mut failure: Option<String> = None;
        match &e.kind {
            EventKind::DhcpOffer { .. } | EventKind::PxeAck { .. } => counts.ok += 1,
            EventKind::TftpStart { file: f } => {
                file = Some(f.as_str());
            }
            EventKind::TftpEnd {
                file: f,
                bytes: b,
                outcome: o,
                ..
            } => {
                counts.bytes += b;
                match o {
                    Outcome::Ok | Outcome::Probe => counts.ok += 1,
                    _ => {
                        counts.failed += 1;
                        failure = Some(format!("TFTP {}: {}", f.as_str(), o.as_str()));
                    }
                }
                (file, bytes, outcome) = (Some(f.as_str()), Some(*b), Some(o.as_str()));
            }
            EventKind::ScriptFetch { path, status } => {
                if *status < 400 {
                    counts.ok += 1;
                } else {
                    counts.failed += 1;
                    failure = Some(format!("script {}: HTTP {status}", path.as_str()));
                }
                file = Some(path.as_str());
            }
            EventKind::HttpFile {
                path,
                bytes: b,
                status,
                outcome: o,
                ..
            } => {
                counts.bytes += b;
                if *o == Outcome::Ok && *status < 400 {
                    counts.ok += 1;
                } else {
                    counts.failed += 1;
                    failure = Some(format!("HTTP {}: {} ({status})", path.as_str(), o.as_str()));
                }
                (file, bytes, outcome) = (Some(path.as_str()), Some(*b), Some(o.as_str()));
            }
            EventKind::Stage {
                stage: s,
                detail: d,
            } => {
                stage = Some(s.as_str());
                detail = Some(d.as_str());
                if s.as_str() == "failed" {
                    counts.failed += 1;
                    failure = Some(if d.is_empty() {
                        "the script reported failed".to_owned()
                    } else {
                        d.as_str().to_owned()
                    });
                }
            }
            EventKind::Error { detail: d, .. } => {
                counts.failed += 1;
                detail = Some(d.as_str());
                failure = Some(d.as_str().to_owned());
            }
        }
        if self.watched {
            self.push(&Frame::Boot {
                at_ms: e.at_ms,
                kind: e.kind.name(),
                leg: leg.as_str(),
                mac: mac_text(mac),
                ip: e.ip.map(|ip| ip.to_string()),
                stage,
                file,
                bytes,
                outcome,
                detail,
            });
        } else {
            self.skip();
        }
        let file = file.map(str::to_owned);
        let stage = stage.map(str::to_owned);
        let detail = detail.map(str::to_owned);
        if matches!(
            e.kind,
            EventKind::TftpEnd { .. } | EventKind::HttpFile { .. }
        ) && let Some(id) = e.transfer
        {
            self.finish(id.get());
        }
        if let Some(reason) = failure {
            self.error(ErrorItem {
                at_ms: e.at_ms,
                mac: mac_text(mac),
                ip: e.ip.map(|ip| ip.to_string()),
                leg: leg.as_str(),
                reason,
            });
        }
        // Errors without a machine (a refused TFTP request from anywhere) are not machines.
        if matches!(e.kind, EventKind::Error { .. }) && mac.is_none() {
            return;
        }
        let m = self.machine(mac, e.ip, e.at_ms);
        m.leg = leg.as_str();
        m.stage = match (stage, e.kind.name()) {
            (Some(s), _) => Cow::Owned(s),
            (None, "dhcp-offer") => Cow::Borrowed("dhcp"),
            (None, "ipxe-dhcp") => Cow::Borrowed("ipxe"),
            (None, "pxe-ack") => Cow::Borrowed("pxe"),
            (None, "error") => std::mem::take(&mut m.stage),
            _ => Cow::Borrowed(leg.as_str()),
        };
        if let Some(d) = detail {
            m.detail = d;
        }
        if let (Some(f), Some(b)) = (file, bytes) {
            m.file = Some(f);
            m.done = b;
            m.total = Some(b);
        }
    }

    /// Drops transfers with no news for [`STALE`].
    fn expire(&mut self, now: Instant) {
        let stale: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.seen) > STALE)
            .map(|(k, _)| *k)
            .collect();
        for id in stale {
            self.finish(id);
        }
    }

    /// One point of the graph: bytes per second since the last point.
    fn sample(&mut self, metrics: &Metrics, now: Instant) {
        let tftp = metrics.tftp_bytes_sent_total.load(Relaxed);
        let http = metrics.http_bytes_sent_total.load(Relaxed);
        if let Some((at, t0, h0)) = self.last_sample {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs < 0.5 {
                return;
            }
            let s = Sample {
                at_ms: crate::db::now_ms(),
                tftp_bps: (tftp.saturating_sub(t0) as f64 / secs) as u64,
                http_bps: (http.saturating_sub(h0) as f64 / secs) as u64,
            };
            if self.graph.len() == GRAPH_SECONDS {
                self.graph.pop_front();
            }
            self.graph.push_back(s);
            self.push(&Frame::Sample(s));
        }
        self.last_sample = Some((now, tftp, http));
    }
}

/// What `/api/v1/status` shows of the live state.
#[derive(Debug, Serialize)]
pub struct LiveStatus {
    /// Id of the last event frame: an SSE stream opened with `Last-Event-ID` set to it misses
    /// nothing after this status.
    pub last_event_id: u64,
    pub active_transfers: usize,
    transfers: Vec<Active>,
    pub booting: usize,
    machines: Vec<Machine>,
    errors: Vec<ErrorItem>,
    legs: BTreeMap<&'static str, LegCounts>,
    graph: Vec<Sample>,
    pub events_dropped: u64,
    pub sse_streams: usize,
}

impl Live {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the server runs (the first call wins).
    pub fn set_server(&self, info: ServerInfo) {
        let _ = self.server.set(info);
    }

    pub fn server(&self) -> Option<&ServerInfo> {
        self.server.get()
    }

    /// The data path's handle.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Events dropped at a full queue.
    pub fn dropped(&self) -> u64 {
        self.tap.dropped.load(Relaxed)
    }

    /// Takes what the event loops sent into the state and the ring; how many events it took.
    pub fn drain_queue(&self, metrics: &Metrics) -> u64 {
        let now = Instant::now();
        let mut batch = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(
            &mut *self.tap.queue.lock().unwrap_or_else(|p| p.into_inner()),
            &mut *batch,
        );
        let mut state = self.state();
        if self.subscribers.load(Relaxed) > 0 {
            state.look(now);
        } else {
            state.watched = state.watched_until.is_some_and(|until| now < until);
        }
        let n = batch.len() as u64;
        for ev in batch.drain(..) {
            state.apply(ev, now);
        }
        self.stats.received.fetch_add(n, Relaxed);
        state.expire(now);
        state.sample(metrics, now);
        n
    }

    /// Runs on the web service's loop until `stop` resolves: drains the queue every
    /// [`PUMP_EVERY`] while events come, every [`IDLE_PUMP_EVERY`] after a drain that found
    /// none.
    pub async fn pump(&self, metrics: Arc<Metrics>, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let taken = self.drain_queue(&metrics);
            let every = if taken == 0 {
                IDLE_PUMP_EVERY
            } else {
                PUMP_EVERY
            };
            let tick = std::pin::pin!(sleep(every));
            if let Either::Right(_) = select(tick, stop.as_mut()).await {
                return;
            }
        }
    }

    /// The live part of `/api/v1/status`.
    pub fn status(&self) -> LiveStatus {
        let mut state = self.state();
        // The page that reads this opens a stream next: keep what it would miss.
        state.look(Instant::now());
        let now_ms = crate::db::now_ms();
        let mut transfers: Vec<Active> = state.active.values().cloned().collect();
        transfers.sort_by_key(|a| std::cmp::Reverse(a.started_ms));
        let active_transfers = transfers.len();
        transfers.truncate(LISTED);
        let mut machines: Vec<Machine> = state
            .machines
            .values()
            .filter(|m| now_ms - m.last_ms <= BOOTING_WINDOW_MS)
            .cloned()
            .collect();
        machines.sort_by_key(|m| std::cmp::Reverse(m.last_ms));
        let booting = machines.len();
        machines.truncate(LISTED);
        LiveStatus {
            last_event_id: state.seq,
            active_transfers,
            transfers,
            booting,
            machines,
            errors: state.errors.iter().cloned().collect(),
            legs: state.legs.clone(),
            graph: state.graph.iter().copied().collect(),
            events_dropped: self.dropped(),
            sse_streams: self.subscribers.load(Relaxed),
        }
    }

    /// A place for one more stream from `peer`, unless [`MAX_SUBSCRIBERS`] are open or
    /// `peer`'s source (its address, an IPv6 /64) holds [`MAX_SUBSCRIBERS_PER_PEER`].
    /// `last_event_id` is the client's `Last-Event-ID` header, if it sent one.
    pub fn subscribe(&self, peer: IpAddr, last_event_id: Option<&str>) -> Result<Subscriber, Full> {
        let peer = super::source_key(peer);
        // The per-peer table first, under its lock: the total is only taken with a peer place.
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let held = per_peer.get(&peer).copied().unwrap_or(0);
        if held >= MAX_SUBSCRIBERS_PER_PEER {
            self.stats.streams_refused.fetch_add(1, Relaxed);
            return Err(Full::Peer);
        }
        let taken = self
            .subscribers
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_SUBSCRIBERS).then_some(n + 1));
        if taken.is_err() {
            self.stats.streams_refused.fetch_add(1, Relaxed);
            return Err(Full::Total);
        }
        per_peer.insert(peer, held + 1);
        drop(per_peer);
        self.stats.streams_opened.fetch_add(1, Relaxed);
        Ok(Subscriber {
            count: Arc::clone(&self.subscribers),
            per_peer: Arc::clone(&self.per_peer),
            peer,
            resume: last_event_id
                .filter(|v| v.len() <= 20)
                .and_then(|v| v.trim().parse().ok()),
        })
    }

    /// Frames after `cursor`, at most about [`WRITE_CHUNK`] bytes, appended to `out`; the new
    /// cursor, and how many frames the ring no longer held.
    fn frames_since(&self, cursor: u64, out: &mut String) -> (u64, u64) {
        let state = self.state();
        let Some(&(first, _)) = state.ring.front() else {
            return (state.seq, state.seq.saturating_sub(cursor));
        };
        let missed = first.saturating_sub(cursor + 1);
        let skip = usize::try_from(cursor.saturating_sub(first - 1)).unwrap_or(usize::MAX);
        let mut last = cursor.max(first - 1);
        for (id, text) in state.ring.iter().skip(skip) {
            if out.len() >= WRITE_CHUNK {
                break;
            }
            out.push_str(text);
            last = *id;
        }
        (last, missed)
    }

    fn last_id(&self) -> u64 {
        self.state().seq
    }

    /// Streams frames to `tcp` until the client goes, stops reading for [`WRITE_TIMEOUT`],
    /// or `stop` resolves (the service drains).
    pub async fn stream(&self, sub: Subscriber, tcp: &mut TcpConn, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        //= https://html.spec.whatwg.org/multipage/server-sent-events.html#server-sent-events-intro
        //# Event streams are always decoded as UTF-8. There is no way to specify another
        //# character encoding.
        // No Content-Length and no chunking: the stream ends when the connection closes.
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                    Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
                    X-Accel-Buffering: no\r\nConnection: close\r\n\r\n\
                    retry: 2000\n\n";
        if !self
            .write(tcp, head.as_bytes().to_vec(), stop.as_mut())
            .await
        {
            return;
        }
        let mut cursor = match sub.resume {
            Some(id) if id <= self.last_id() => id,
            _ => self.last_id(),
        };
        let mut quiet_since = Instant::now();
        let mut out = String::new();
        loop {
            out.clear();
            let (next, missed) = self.frames_since(cursor, &mut out);
            if missed > 0 {
                self.stats.streams_lagged.fetch_add(1, Relaxed);
                out.insert_str(
                    0,
                    &format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n"),
                );
            }
            cursor = next;
            if out.is_empty() {
                if quiet_since.elapsed() < HEARTBEAT {
                    // Caught up: look again after the next pump.
                    let tick = std::pin::pin!(sleep(PUMP_EVERY));
                    if let Either::Right(_) = select(tick, stop.as_mut()).await {
                        return;
                    }
                    continue;
                }
                //= https://html.spec.whatwg.org/multipage/server-sent-events.html#authoring-notes
                //# Legacy proxy servers are known to, in certain cases, drop HTTP connections
                //# after a short timeout. To protect against such proxy servers, authors can
                //# include a comment line (one starting with a ':' character) every 15
                //# seconds or so.
                out.push_str(": heartbeat\n\n");
            }
            let bytes = std::mem::take(&mut out).into_bytes();
            if !self.write(tcp, bytes, stop.as_mut()).await {
                return;
            }
            quiet_since = Instant::now();
        }
    }

    /// Writes `bytes`, or false when the client is gone or took nothing for [`WRITE_TIMEOUT`]
    /// (then it is dropped: a reader that never reads holds nothing for long).
    async fn write<S: Future<Output = ()>>(
        &self,
        tcp: &mut TcpConn,
        bytes: Vec<u8>,
        stop: std::pin::Pin<&mut S>,
    ) -> bool {
        let write = std::pin::pin!(tcp.write_all(bytes));
        let timer = std::pin::pin!(sleep(WRITE_TIMEOUT));
        match select(write, select(timer, stop)).await {
            Either::Left(((Ok(()), _), _)) => true,
            Either::Left(((Err(_), _), _)) => false,
            // The service drains.
            Either::Right((Either::Right(_), _)) => false,
            Either::Right((Either::Left(_), _)) => {
                self.stats.streams_dropped.fetch_add(1, Relaxed);
                tracing::info!("SSE stream dropped: the client took nothing for 5 s");
                false
            }
        }
    }

    /// The fan-out's counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        let rows: [(&str, &str, &str, u64); 7] = [
            (
                "live_events_total",
                "counter",
                "events the live view took from the event loops",
                s.received.load(Relaxed),
            ),
            (
                "live_events_dropped_total",
                "counter",
                "events dropped at the live view's full queue",
                self.dropped(),
            ),
            (
                "sse_streams",
                "gauge",
                "open Server-Sent Events streams",
                self.subscribers.load(Relaxed) as u64,
            ),
            (
                "sse_streams_opened_total",
                "counter",
                "Server-Sent Events streams opened",
                s.streams_opened.load(Relaxed),
            ),
            (
                "sse_streams_refused_total",
                "counter",
                "Server-Sent Events streams refused at the cap",
                s.streams_refused.load(Relaxed),
            ),
            (
                "sse_streams_dropped_total",
                "counter",
                "Server-Sent Events streams dropped for not reading",
                s.streams_dropped.load(Relaxed),
            ),
            (
                "sse_streams_lagged_total",
                "counter",
                "times a Server-Sent Events stream fell behind and missed frames",
                s.streams_lagged.load(Relaxed),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP zpxe_{name} {help}");
            let _ = writeln!(out, "# TYPE zpxe_{name} {kind}");
            let _ = writeln!(out, "zpxe_{name} {v}");
        }
    }
}

/// A `GET /api/v1/events` request head, read whole at the start of a web connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRequest {
    query: String,
    last_event_id: Option<String>,
}

/// `first`, the bytes a web connection sent first, when they hold a whole `GET` head for
/// [`EVENTS_PATH`]; anything else (another route, `HEAD`, a head cut short) is left to the
/// HTTP machine.
pub fn events_request(first: &[u8]) -> Option<EventsRequest> {
    if !first.starts_with(b"GET /api/v1/events") {
        return None;
    }
    let limits = zpxe_engine::http::request::HeadLimits::default();
    let (req, _) = zpxe_engine::http::Request::parse(first, &limits).ok()??;
    (req.method == zpxe_engine::http::Method::Get && req.path == EVENTS_PATH).then(|| {
        EventsRequest {
            query: req.query.unwrap_or_default().to_owned(),
            last_event_id: req.header("last-event-id").map(str::to_owned),
        }
    })
}

/// `first` with the rest of its head read, when it starts a `GET` for [`EVENTS_PATH`] whose
/// head came in more than one segment: up to the empty line, the head size limit, or `within`.
/// Other requests come back as they were.
pub async fn complete_events_head(
    tcp: &mut TcpConn,
    mut first: Vec<u8>,
    within: Duration,
) -> Vec<u8> {
    let prefix: &[u8] = b"GET /api/v1/events";
    let n = first.len().min(prefix.len());
    if first.get(..n) != prefix.get(..n) {
        return first;
    }
    let max = zpxe_engine::http::request::HeadLimits::default().max_head_bytes();
    let deadline = Instant::now() + within;
    while !first.windows(4).any(|w| w == b"\r\n\r\n") && first.len() < max {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let got = {
            let read = std::pin::pin!(tcp.read(Vec::with_capacity(4096)));
            let timer = std::pin::pin!(sleep(left));
            match select(read, timer).await {
                Either::Left(((Ok(n), b), _)) if n > 0 => b.get(..n).unwrap_or_default().to_vec(),
                _ => break,
            }
        };
        first.extend_from_slice(&got);
    }
    first
}

/// Answers an [`events_request`]: a peer outside `web.allow` gets 403, one past a cap 503
/// with `Retry-After`; otherwise the connection becomes a stream until the client goes, stops
/// reading, or `stop` resolves.
pub async fn serve_events(
    web: &super::WebService,
    tcp: &mut TcpConn,
    peer: SocketAddr,
    req: EventsRequest,
    stop: impl Future<Output = ()>,
) {
    let refusal = if !web.access().allows(Some(peer.ip())) {
        Some((web.access().forbidden_peer(Some(peer.ip())), None))
    } else {
        match web.live.subscribe(peer.ip(), req.last_event_id.as_deref()) {
            Ok(sub) => {
                web.count_request(EVENTS_PATH, 200);
                web.live.stream(sub, tcp, stop).await;
                None
            }
            //= https://www.rfc-editor.org/rfc/rfc9110#section-15.6.4
            //# The 503 (Service Unavailable) status code indicates that the server is
            //# currently unable to handle the request due to a temporary overload
            //# or scheduled maintenance, which will likely be alleviated after some
            //# delay. The server MAY send a Retry-After header field (Section 10.2.3)
            //# to suggest an appropriate amount of time for the client to wait before
            //# retrying the request.
            Err(full) => Some((
                super::WebReply::new(
                    503,
                    "text/plain",
                    match full {
                        Full::Total => {
                            format!("too many event streams (at most {MAX_SUBSCRIBERS})\n")
                        }
                        Full::Peer => format!(
                            "too many event streams from {} (at most {MAX_SUBSCRIBERS_PER_PEER} \
                             per address)\n",
                            peer.ip()
                        ),
                    },
                ),
                Some(RETRY_AFTER_S),
            )),
        }
    };
    if let Some((r, retry_after)) = refusal {
        web.count_request(EVENTS_PATH, r.status);
        let retry = retry_after
            .map(|s| format!("Retry-After: {s}\r\n"))
            .unwrap_or_default();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{retry}\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            r.status,
            zpxe_engine::http::StatusCode(r.status).reason(),
            r.content_type,
            r.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&r.body);
        let written = {
            let write = std::pin::pin!(tcp.write_all(out));
            let timer = std::pin::pin!(sleep(WRITE_TIMEOUT));
            matches!(select(write, timer).await, Either::Left(((Ok(()), _), _)))
        };
        if written {
            let _ = tcp.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Detail, Stage};

    fn mac(i: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, i])
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let live = Live::default();
        let tap = live.tap();
        let ev = LiveEvent::Recorded(Event::now(EventKind::PxeAck { arch: None }).mac(mac(1)));
        // A page looks, so the frames are kept.
        live.status();
        for _ in 0..2 {
            for _ in 0..QUEUE_CAPACITY + 10 {
                tap.send(ev);
            }
            live.drain_queue(&Metrics::default());
        }
        assert_eq!(live.dropped(), 20);
        let sent = 2 * QUEUE_CAPACITY as u64;
        assert_eq!(live.stats.received.load(Relaxed), sent);
        // The ring kept its newest frames only.
        let mut out = String::new();
        let (last, missed) = live.frames_since(0, &mut out);
        assert_eq!(missed, sent - RING_CAPACITY as u64);
        assert!(last > 0 && last < sent, "{last}");
        assert!(out.len() >= WRITE_CHUNK && out.len() < WRITE_CHUNK + 1024);
        assert!(
            out.starts_with(&format!("id: {}\n", missed + 1)),
            "{out:.80}"
        );
        // A caught-up cursor gets nothing and misses nothing.
        let mut rest = String::new();
        let (end, missed) = live.frames_since(sent, &mut rest);
        assert_eq!((end, missed, rest.len()), (sent, 0, 0));
    }

    #[test]
    fn progress_then_end_makes_a_machine_and_ends_its_transfer() {
        let live = Live::default();
        let tap = live.tap();
        let ip: IpAddr = "10.0.0.7".parse().expect("ip");
        let remote = SocketAddr::new(ip, 40000);
        tap.send(LiveEvent::Recorded(
            Event::now(EventKind::DhcpOffer {
                arch: Some(7),
                ipxe: false,
            })
            .mac(mac(7))
            .ip(ip),
        ));
        let id = next_transfer_id();
        tap.progress(Leg::Tftp, id, remote, "ipxe.efi", 0, Some(1000));
        tap.progress(Leg::Tftp, id, remote, "ipxe.efi", 500, Some(1000));
        live.drain_queue(&Metrics::default());
        let s = serde_json::to_value(live.status()).expect("json");
        assert_eq!(s["active_transfers"], 1, "{s}");
        assert_eq!(s["transfers"][0]["mac"], "52:54:00:00:00:07");
        assert_eq!(s["transfers"][0]["done"], 500);
        assert_eq!(s["machines"][0]["stage"], "tftp");
        assert_eq!(s["machines"][0]["total"], 1000);
        tap.send(LiveEvent::Recorded(
            Event::now(crate::db::tftp_end_event(
                "ipxe.efi",
                &zpxe_engine::tftp::TransferOutcome::Completed {
                    bytes: 1000,
                    retransmits: 0,
                },
                Duration::from_millis(10),
            ))
            .ip(ip)
            .transfer(Some(id)),
        ));
        tap.send(LiveEvent::Recorded(
            Event::now(EventKind::Stage {
                stage: Stage::new("failed"),
                detail: Detail::new("<script>alert(1)</script>"),
            })
            .mac(mac(7)),
        ));
        live.drain_queue(&Metrics::default());
        let s = serde_json::to_value(live.status()).expect("json");
        assert_eq!(s["active_transfers"], 0, "{s}");
        assert_eq!(s["legs"]["tftp"]["ok"], 1);
        assert_eq!(s["legs"]["tftp"]["bytes"], 1000);
        assert_eq!(s["errors"][0]["reason"], "<script>alert(1)</script>");
        assert_eq!(s["booting"], 1);
        assert_eq!(s["machines"][0]["stage"], "failed");
        let mut out = String::new();
        live.frames_since(0, &mut out);
        assert!(out.contains("\"type\":\"done\""), "{out}");
        // Every frame is one `id:` line and one `data:` line.
        for frame in out.split_terminator("\n\n") {
            let lines: Vec<&str> = frame.lines().collect();
            assert_eq!(lines.len(), 2, "{frame}");
            assert!(lines[0].starts_with("id: ") && lines[1].starts_with("data: {"));
        }
    }

    #[test]
    fn frames_are_kept_only_while_someone_looks() {
        let live = Live::default();
        let tap = live.tap();
        let ev =
            |i: u8| LiveEvent::Recorded(Event::now(EventKind::PxeAck { arch: None }).mac(mac(i)));
        // Nobody looks: the events count and make machines, but no frame is kept.
        tap.send(ev(1));
        tap.send(ev(2));
        live.drain_queue(&Metrics::default());
        assert_eq!(live.last_id(), 2);
        assert!(live.state().ring.is_empty());
        assert_eq!(live.state().machines.len(), 2);
        // A page reads the status, then resumes from its id: it gets what came after.
        let from = live.status().last_event_id;
        tap.send(ev(3));
        live.drain_queue(&Metrics::default());
        let mut out = String::new();
        assert_eq!(live.frames_since(from, &mut out), (3, 0));
        assert!(out.starts_with("id: 3\n"), "{out}");
        // The grace runs out with no stream open: the ring empties, and a stream resuming
        // from before the gap is told how much it missed.
        live.state().watched_until = Some(Instant::now());
        tap.send(ev(4));
        live.drain_queue(&Metrics::default());
        assert!(live.state().ring.is_empty());
        let mut out = String::new();
        assert_eq!(live.frames_since(2, &mut out), (4, 2));
        assert!(out.is_empty());
        // An open stream keeps frames without any status read.
        let sub = live
            .subscribe("192.0.2.1".parse().expect("ip"), None)
            .expect("a place");
        live.state().watched_until = None;
        tap.send(ev(5));
        live.drain_queue(&Metrics::default());
        assert_eq!(live.state().ring.len(), 1);
        drop(sub);
    }

    #[test]
    fn machines_stay_bounded_under_a_flood_of_macs() {
        let live = Live::default();
        let tap = live.tap();
        for i in 0..(MAX_MACHINES as u32 * 3) {
            let b = i.to_be_bytes();
            let m = MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]]);
            tap.send(LiveEvent::Recorded(
                Event::now(EventKind::PxeAck { arch: None }).mac(m),
            ));
            if i % 1000 == 0 {
                live.drain_queue(&Metrics::default());
            }
        }
        live.drain_queue(&Metrics::default());
        assert!(live.state().machines.len() <= MAX_MACHINES);
        assert!(live.status().machines.len() <= LISTED);
    }

    #[test]
    fn only_whole_get_heads_for_the_events_route_stream() {
        let r = events_request(
            b"GET /api/v1/events?x=1 HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 42\r\n\r\n",
        )
        .expect("events");
        assert_eq!(r.query, "x=1");
        assert_eq!(r.last_event_id.as_deref(), Some("42"));
        for head in [
            &b"GET /api/v1/events HTTP/1.1\r\nHost: a\r\n"[..],
            b"HEAD /api/v1/events HTTP/1.1\r\n\r\n",
            b"GET /api/v1/eventsx HTTP/1.1\r\n\r\n",
            b"GET /api/v1/status HTTP/1.1\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nBad header\r\n\r\n",
        ] {
            assert_eq!(
                events_request(head),
                None,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn subscribers_are_capped_in_all_and_per_source() {
        let live = Live::default();
        let ip = |i: u32| IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        // One source gets its share, no more.
        let mine: Vec<_> = (0..MAX_SUBSCRIBERS_PER_PEER)
            .map(|_| live.subscribe(ip(1), None).expect("room"))
            .collect();
        assert_eq!(live.subscribe(ip(1), None).err(), Some(Full::Peer));
        // Its IPv6 /64 neighbours are the same source.
        let v6 = |i: u16| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, i));
        let six: Vec<_> = (0..MAX_SUBSCRIBERS_PER_PEER as u16)
            .map(|i| live.subscribe(v6(i), None).expect("room"))
            .collect();
        assert_eq!(live.subscribe(v6(99), None).err(), Some(Full::Peer));
        // Others fill the rest, then the total cap holds.
        let others: Vec<_> = (0..(MAX_SUBSCRIBERS - 2 * MAX_SUBSCRIBERS_PER_PEER) as u32)
            .map(|i| live.subscribe(ip(100 + i), None).expect("room"))
            .collect();
        assert_eq!(live.subscribe(ip(9999), None).err(), Some(Full::Total));
        drop(mine);
        assert!(live.per_peer.lock().expect("lock").get(&ip(1)).is_none());
        let s = live.subscribe(ip(1), Some("12")).expect("room again");
        assert_eq!(s.resume, Some(12));
        drop((six, others, s));
        assert_eq!(live.subscribers.load(Relaxed), 0);
        assert!(live.per_peer.lock().expect("lock").is_empty());
        assert!(
            live.subscribe(ip(1), Some("x"))
                .expect("room")
                .resume
                .is_none()
        );
    }

    #[test]
    fn a_transfer_ends_by_its_id_not_by_its_file() {
        let live = Live::default();
        let tap = live.tap();
        let ip: IpAddr = "10.0.0.8".parse().expect("ip");
        // Two transfers of the same file to the same address (two clients behind one NAT, or
        // one client's retry): the end of the first leaves the second under way.
        let (a, b) = (next_transfer_id(), next_transfer_id());
        tap.progress(
            Leg::Tftp,
            a,
            SocketAddr::new(ip, 1000),
            "ipxe.efi",
            10,
            Some(100),
        );
        tap.progress(
            Leg::Tftp,
            b,
            SocketAddr::new(ip, 1001),
            "ipxe.efi",
            20,
            Some(100),
        );
        tap.progress(
            Leg::Tftp,
            next_transfer_id(),
            SocketAddr::new(ip, 1002),
            "x/ipxe.efi",
            5,
            Some(100),
        );
        live.drain_queue(&Metrics::default());
        assert_eq!(live.state().active.len(), 3);
        let end = |id| {
            LiveEvent::Recorded(
                Event::now(crate::db::tftp_end_event(
                    "ipxe.efi",
                    &zpxe_engine::tftp::TransferOutcome::Completed {
                        bytes: 100,
                        retransmits: 0,
                    },
                    Duration::from_millis(10),
                ))
                .ip(ip)
                .transfer(Some(id)),
            )
        };
        tap.send(end(a));
        live.drain_queue(&Metrics::default());
        let state = live.state();
        assert_eq!(state.active.len(), 2, "only transfer {a} ended");
        assert!(state.active.contains_key(&b));
        drop(state);
        tap.send(end(b));
        live.drain_queue(&Metrics::default());
        assert_eq!(live.state().active.len(), 1);
    }
}
