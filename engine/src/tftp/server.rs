//! The read-only TFTP server machine: RRQs in, OACKs and windows of DATA out, every transfer
//! tracked by a few integers. It performs no I/O: the platform feeds it datagrams and the time,
//! and sends what it polls, binding a socket per transfer unless single-port mode is on.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::options::{self, Limits};
pub use super::transfer::{Abort, ClientAbort, ServerAbort, TransferOutcome};
use super::transfer::{AckStep, Next, Rollover, Start, TimeoutStep, Transfer};
use super::wire::{ErrorCode, OP_WRQ, Packet, TftpRepr, WireError, emit_error};
use crate::image::{ImageCatalog, OpenError};
use crate::net::{DatagramMeta, Payload, Transmit};
use crate::path::{NameFlavor, PathError};

/// `[tftp]` in the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TftpServerConfig {
    /// Link MTU: the largest block is `mtu - 32` (IPv4 + UDP + TFTP headers) so data is never
    /// fragmented, unless `allow-fragmentation` is set.
    pub mtu: u16,
    pub allow_fragmentation: bool,
    /// A further cap on blksize.
    pub max_blksize: Option<u32>,
    /// The largest windowsize granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks none (RFC 2349 `timeout`).
    pub timeout_ms: u64,
    /// The longest RFC 2349 `timeout` granted. A longer one is left out of the OACK (the RFC
    /// lets a server accept the client's value or ignore it, not lower it) and the transfer
    /// runs on `timeout_ms`.
    pub max_timeout_ms: u64,
    /// How long a transfer waits for its first ACK (of the OACK, or of block 1); with a
    /// negotiated `timeout`, at least two of those and a second more. Until then nothing is
    /// retransmitted: each RRQ gets one answer, and the client retransmits its RRQ (or its
    /// ACK) when something is lost (RFC 1350), so a peer that never showed it receives gets
    /// back one datagram per datagram it sent. The default lets a client with a 4 s timeout
    /// (EDK2) lose two datagrams of the handshake.
    pub first_ack_timeout_ms: u64,
    /// Retransmissions after a timeout (the window's first and last blocks each) before the
    /// transfer is abandoned.
    pub retries: u32,
    pub rollover: Rollover,
    /// Transfers at once, over all clients. Past it, a new request first evicts the oldest
    /// transfer that never got its first ACK; only without one is it refused.
    pub max_transfers: usize,
    /// Transfers at once from one client address (the same eviction applies, among that
    /// address's transfers).
    pub max_transfers_per_client: usize,
    /// Answer every transfer from the TFTP port itself (for NAT and firewalls).
    pub single_port: bool,
    /// Answer Windows boot manager's variable-window extension.
    pub msftwindow: bool,
}

impl Default for TftpServerConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            allow_fragmentation: false,
            max_blksize: None,
            max_windowsize: 64,
            timeout_ms: 1000,
            max_timeout_ms: 10_000,
            first_ack_timeout_ms: 10_000,
            retries: 5,
            rollover: Rollover::Zero,
            max_transfers: 4096,
            max_transfers_per_client: 8,
            single_port: false,
            msftwindow: true,
        }
    }
}

/// Identifies one transfer for the life of the server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u64);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tftp#{}", self.0)
    }
}

/// Names one transfer socket for the life of the server. A transfer's own socket is named
/// after it; when no port is left the platform says so ([`TftpServer::socket_unavailable`])
/// and the transfer shares a socket another transfer opened.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tftp-socket#{}", self.0)
    }
}

/// Which local socket a datagram arrived on or leaves from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Local {
    /// The TFTP port (69).
    Listener,
    /// A transfer socket (per-transfer-port mode): one transfer's, or, when the port range is
    /// used up, several transfers' told apart by their client's address and port.
    Socket(SocketId),
}

/// What happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TftpEvent {
    TransferStarted {
        id: TransferId,
        remote: SocketAddr,
        file: String,
        size: u64,
        blksize: u32,
        windowsize: u16,
    },
    TransferEnded {
        id: TransferId,
        remote: SocketAddr,
        outcome: TransferOutcome,
    },
    Refused {
        remote: SocketAddr,
        file: String,
        reason: String,
    },
}

/// A small packet waiting to go out (OACKs are built from transfer state instead).
#[derive(Debug)]
struct Control {
    local: Local,
    to: SocketAddr,
    source_ip: Option<IpAddr>,
    ifindex: Option<u32>,
    code: ErrorCode,
    message: Say,
}

/// What an ERROR says. Kept as a value and written into the caller's buffer when the ERROR
/// leaves: an ERROR costs no allocation or formatting, and one the budget drops none at all.
#[derive(Copy, Clone, Debug)]
enum Say {
    Text(&'static str),
    Malformed(WireError),
    Path(PathError),
    Abort(ServerAbort),
}

impl fmt::Display for Say {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Say::Text(s) => f.write_str(s),
            Say::Malformed(e) => write!(f, "malformed packet: {e}"),
            Say::Path(e) => write!(f, "{}", OpenError::Refused(*e)),
            Say::Abort(a) => write!(f, "{a}"),
        }
    }
}

/// A socket transfers send from, and how many of them use it.
#[derive(Debug)]
struct SocketUse {
    users: usize,
    /// The transfer it was named for (its only user until the platform opened it).
    creator: TransferId,
    /// Its place in `TftpServer::open`, once the platform opened it.
    slot: Option<usize>,
}

/// At most this many ERROR replies wait at once; more are dropped (a flood of garbage must not
/// grow memory).
const MAX_CONTROL: usize = 1024;

/// ERROR replies sent per second at most. Every stray datagram (an ACK for no transfer, a
/// malformed packet, a request for a missing file) is answered with an ERROR (RFC 1350 section
/// 7), so without a cap a spoofed flood is reflected one for one at whatever address it forged.
/// Past the cap the rest of that second's errors are not sent: a real client retransmits.
pub(crate) const ERRORS_PER_SECOND: u32 = 256;

/// The TFTP server.
#[derive(Debug)]
pub struct TftpServer {
    config: TftpServerConfig,
    mtu: u16,
    transfers: HashMap<TransferId, Transfer>,
    /// Transfers by client address and port: one per pair, whatever socket it uses. A
    /// datagram belongs to the transfer of its source when it came in on that transfer's
    /// socket (RFC 1350 section 4: a connection is the pair of ports).
    by_remote: HashMap<SocketAddr, TransferId>,
    /// Transfer sockets in use (per-transfer-port mode).
    sockets: HashMap<SocketId, SocketUse>,
    /// The sockets the platform opened, for a pick at random when no port is left.
    open: Vec<SocketId>,
    /// Open sockets no transfer uses any more: the platform closes them.
    unused: VecDeque<SocketId>,
    per_client: HashMap<IpAddr, usize>,
    /// Transfers that never got an ACK, oldest first (ids grow), the first to go under pressure.
    unacked: BTreeSet<TransferId>,
    /// The same, by client address.
    unacked_by_ip: BTreeSet<(IpAddr, TransferId)>,
    /// Transfers with something to send, in order (each at most once: `Transfer::queued`).
    ready: VecDeque<TransferId>,
    /// Retransmission deadlines, at most about one entry per transfer (`Transfer::timer_at`).
    /// An entry that fires before its transfer's real deadline re-arms it then, so
    /// `poll_timeout` may wake the caller early, never late.
    timers: BinaryHeap<Reverse<(Instant, TransferId)>>,
    control: VecDeque<Control>,
    events: VecDeque<TftpEvent>,
    next_id: u64,
    /// False once the server drains: new read requests get no answer.
    accepting: bool,
    /// ERROR replies left in the current one-second window, and when that window began.
    error_budget: u32,
    error_window: Option<Instant>,
}

impl TftpServer {
    pub fn new(config: TftpServerConfig) -> Self {
        Self {
            mtu: config.mtu,
            config,
            transfers: HashMap::new(),
            by_remote: HashMap::new(),
            sockets: HashMap::new(),
            open: Vec::new(),
            unused: VecDeque::new(),
            per_client: HashMap::new(),
            unacked: BTreeSet::new(),
            unacked_by_ip: BTreeSet::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            control: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            accepting: true,
            error_budget: ERRORS_PER_SECOND,
            error_window: None,
        }
    }

    /// The platform tells the machine the link's MTU (65535 on loopback).
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = mtu;
    }

    pub fn config(&self) -> &TftpServerConfig {
        &self.config
    }

    /// Drain: transfers under way go on to the end (a repeated RRQ of one is still answered),
    /// new read requests get no answer at all. Silence, not an ERROR: firmware retries its RRQ
    /// and reaches the server that takes over, where an ERROR would end its boot attempt.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    pub fn active_transfers(&self) -> usize {
        self.transfers.len()
    }

    /// Whether `id` is a transfer in progress (its socket is still wanted).
    pub fn is_active(&self, id: TransferId) -> bool {
        self.transfers.contains_key(&id)
    }

    fn limits(&self, ipv6: bool) -> Limits {
        // IPv4 + UDP + TFTP headers are 32 bytes; IPv6 + UDP + TFTP are 52.
        let headers = if ipv6 { 52 } else { 32 };
        let mtu_cap = if self.config.allow_fragmentation {
            options::MAX_BLKSIZE
        } else {
            u32::from(self.mtu)
                .saturating_sub(headers)
                .max(options::MIN_BLKSIZE)
        };
        Limits {
            max_blksize: self
                .config
                .max_blksize
                .unwrap_or(options::MAX_BLKSIZE)
                .min(mtu_cap)
                .min(options::MAX_BLKSIZE),
            max_windowsize: self.config.max_windowsize.max(1),
            max_timeout: Duration::from_millis(self.config.max_timeout_ms),
            msftwindow: self.config.msftwindow,
        }
    }

    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: Local,
        meta: DatagramMeta,
        data: &[u8],
        images: &mut dyn ImageCatalog,
    ) {
        if self
            .error_window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1))
        {
            self.error_window = Some(now);
            self.error_budget = ERRORS_PER_SECOND;
        }
        //= https://www.rfc-editor.org/rfc/rfc1350#section-4
        //# In order to create a connection, each end of the connection chooses a TID
        //# for itself, to be used for the duration of that connection.
        //
        // The transfer this datagram belongs to: the one of its source's address and port, if
        // that transfer uses the socket it came in on (its own, one it shares with others once
        // the port range is used up, or the listener in single-port mode).
        let owner = self.owner(local, meta.remote);
        // On a transfer socket, a datagram of no transfer there comes from a stranger.
        let stranger = owner.is_none() && matches!(local, Local::Socket(_));
        let packet = match Packet::new_checked(data).and_then(|p| TftpRepr::parse(&p)) {
            Ok(p) => p,
            Err(e) => {
                // Too short to be anything: stay silent. Otherwise say what is wrong.
                if data.len() >= 2 {
                    self.reply_error(local, &meta, ErrorCode::IllegalOperation, Say::Malformed(e));
                }
                return;
            }
        };
        match packet {
            TftpRepr::Rrq(req) => {
                if matches!(local, Local::Socket(_)) {
                    // An RRQ to a transfer's port is not how TFTP works.
                    self.reply_error(
                        local,
                        &meta,
                        ErrorCode::IllegalOperation,
                        Say::Text("RRQ sent to a transfer port"),
                    );
                    return;
                }
                self.handle_rrq(now, meta, req, images);
            }
            TftpRepr::Wrq(req) => {
                //= https://www.rfc-editor.org/rfc/rfc1350#section-7
                //# Error Codes ... 2 Access violation.
                let _ = (OP_WRQ, req.mode);
                self.events.push_back(TftpEvent::Refused {
                    remote: meta.remote,
                    file: req.filename.chars().take(300).collect(),
                    reason: "write request: this server is read-only".into(),
                });
                self.reply_error(
                    local,
                    &meta,
                    ErrorCode::AccessViolation,
                    Say::Text("read-only server"),
                );
            }
            TftpRepr::Ack { block, extra } => match owner {
                Some(id) => self.handle_ack(now, id, block, extra, images),
                None if stranger => self.stranger(local, &meta),
                None => {
                    self.reply_error(
                        local,
                        &meta,
                        ErrorCode::UnknownTransferId,
                        Say::Text("no transfer"),
                    );
                }
            },
            TftpRepr::Error { code, message } => {
                if let Some(id) = owner {
                    //= https://www.rfc-editor.org/rfc/rfc2347#section-5
                    //# the client ... may send an ERROR packet (error code 8) and terminate.
                    let outcome = TransferOutcome::Aborted(Abort::Client(ClientAbort::Error {
                        code: code.code(),
                        message: message.chars().take(200).collect(),
                    }));
                    self.end(id, outcome, images);
                }
                // An ERROR is never answered with an ERROR.
            }
            TftpRepr::Data { .. } | TftpRepr::Oack { .. } if stranger => {
                self.stranger(local, &meta);
            }
            TftpRepr::Data { .. } | TftpRepr::Oack { .. } => self.reply_error(
                local,
                &meta,
                ErrorCode::IllegalOperation,
                Say::Text("unexpected packet"),
            ),
        }
    }

    /// The transfer a datagram from `remote` on `local` belongs to.
    fn owner(&self, local: Local, remote: SocketAddr) -> Option<TransferId> {
        let &id = self.by_remote.get(&remote)?;
        let t = self.transfers.get(&id)?;
        (t.local() == local).then_some(id)
    }

    /// The transfer a transmit from `local` to `remote` is part of (none for an ERROR to a
    /// stranger or for one that ended). The platform binds a socket only for a transfer, and
    /// ends this transfer if its image changed ([`TftpServer::abort_transfer`]).
    pub fn transfer_of(&self, local: Local, remote: SocketAddr) -> Option<TransferId> {
        self.owner(local, remote)
    }

    //= https://www.rfc-editor.org/rfc/rfc1350#section-4
    //# If a source TID does not match, the packet should be discarded as erroneously sent from
    //# somewhere else.  An error packet should be sent to the source of the incorrect packet,
    //# while not disturbing the transfer.
    fn stranger(&mut self, local: Local, meta: &DatagramMeta) {
        self.reply_error(
            local,
            meta,
            ErrorCode::UnknownTransferId,
            Say::Text("unknown transfer ID"),
        );
    }

    /// Queues an ERROR, within the budget: past it (or with the queue full) this costs a
    /// comparison and nothing else.
    fn reply_error(&mut self, local: Local, meta: &DatagramMeta, code: ErrorCode, message: Say) {
        if self.error_budget == 0 || self.control.len() >= MAX_CONTROL {
            return;
        }
        self.error_budget -= 1;
        self.control.push_back(Control {
            local,
            to: meta.remote,
            source_ip: meta.local_ip,
            ifindex: meta.ifindex,
            code,
            message,
        });
    }

    /// Refuses a request: `message` goes to the client, `reason` (often more precise) to the
    /// logs.
    fn refuse(
        &mut self,
        meta: &DatagramMeta,
        file: &str,
        code: ErrorCode,
        message: Say,
        reason: &str,
    ) {
        self.events.push_back(TftpEvent::Refused {
            remote: meta.remote,
            file: file.chars().take(300).collect(),
            reason: reason.to_owned(),
        });
        self.reply_error(Local::Listener, meta, code, message);
    }

    fn handle_rrq(
        &mut self,
        now: Instant,
        meta: DatagramMeta,
        req: super::wire::Request<'_>,
        images: &mut dyn ImageCatalog,
    ) {
        if let Some(&id) = self.by_remote.get(&meta.remote)
            && let Some(t) = self.transfers.get_mut(&id)
        {
            // The same request again from the same port: either our first answer was lost (answer
            // again from the same transfer) or the network delayed or duplicated the RRQ (the
            // transfer is under way: ignore it). Never start a second transfer, never kill this one.
            if t.file == req.filename {
                // One answer per request, and only the first one's (see
                // `Transfer::on_repeated_request`).
                if t.on_repeated_request() {
                    self.enqueue(id);
                }
                return;
            }
            // Same client port, new request: the old transfer is over.
            self.end(
                id,
                TransferOutcome::Aborted(Abort::Client(ClientAbort::Superseded)),
                images,
            );
        }
        if !self.accepting {
            return;
        }
        if !req.mode.eq_ignore_ascii_case("octet") {
            // The client's mode is not echoed: an ERROR is never longer than what it answers.
            let msg = "mode not supported, use octet";
            self.refuse(
                &meta,
                req.filename,
                ErrorCode::IllegalOperation,
                Say::Text(msg),
                msg,
            );
            return;
        }
        let client = meta.remote.ip();
        // At a cap, only a transfer that never got an ACK can make room, the oldest first and
        // whatever its age; without one, refuse before touching the file system. No age floor:
        // with one (it was 1 s), a spoofed flood of `max-transfers` RRQs a second (4,096 by
        // default: 160 KB/s) kept the table full of transfers too young to evict, and every
        // real request was refused for as long as it lasted. Oldest-first, a flood must land
        // a whole table of requests within one real client's round trip (milliseconds) to
        // evict it mid-handshake, and a client evicted anyway retransmits its RRQ. Each
        // candidate is found once.
        let full = self.transfers.len() >= self.config.max_transfers;
        let oldest_evictable = full.then(|| self.unacked.first().copied()).flatten();
        if full && oldest_evictable.is_none() {
            let msg = "server busy, try again";
            self.refuse(
                &meta,
                req.filename,
                ErrorCode::NotDefined,
                Say::Text(msg),
                msg,
            );
            return;
        }
        let crowded = self.per_client.get(&client).copied().unwrap_or(0)
            >= self.config.max_transfers_per_client;
        let client_evictable = crowded.then(|| self.oldest_unacked_of(client)).flatten();
        if crowded && client_evictable.is_none() {
            let msg = "too many transfers from this address, try again";
            self.refuse(
                &meta,
                req.filename,
                ErrorCode::NotDefined,
                Say::Text(msg),
                msg,
            );
            return;
        }
        let info = match images.open(req.filename, NameFlavor::Tftp) {
            Ok(info) => info,
            Err(e) => {
                let (code, msg) = Self::open_error_reply(req.filename, &e);
                self.refuse(&meta, req.filename, code, msg, &e.to_string());
                return;
            }
        };
        // The file exists: now make room, oldest unacknowledged transfer first. A spoofed flood
        // fills the table with transfers that never get an ACK; a real client's request then
        // replaces the oldest of them instead of being refused.
        if let Some(victim) = oldest_evictable {
            self.evict(victim, images);
        }
        // When the oldest of all was this client's own, its count fell below the cap already.
        if let Some(victim) = client_evictable
            && client_evictable != oldest_evictable
        {
            self.evict(victim, images);
        }
        let negotiated =
            options::negotiate(&req.options, info.len, self.limits(meta.remote.is_ipv6()));
        self.next_id += 1;
        let id = TransferId(self.next_id);
        let start = Start {
            remote: meta.remote,
            local_ip: meta.local_ip,
            ifindex: meta.ifindex,
            file: req.filename.to_owned(),
            image: info.id,
            len: info.len,
            negotiated,
            default_timeout: Duration::from_millis(self.config.timeout_ms.max(1)),
            first_ack_timeout: Duration::from_millis(self.config.first_ack_timeout_ms),
            rollover: self.config.rollover,
        };
        let mut t = Transfer::new(start, now);
        if !self.config.single_port {
            // A socket of its own, named after it, until the platform says no port is left.
            let socket = SocketId(id.0);
            t.socket = Some(socket);
            self.sockets.insert(
                socket,
                SocketUse {
                    users: 1,
                    creator: id,
                    slot: None,
                },
            );
        }
        self.events.push_back(TftpEvent::TransferStarted {
            id,
            remote: meta.remote,
            file: t.file.clone(),
            size: t.len,
            blksize: t.blksize,
            windowsize: t.windowsize,
        });
        *self.per_client.entry(client).or_insert(0) += 1;
        self.by_remote.insert(meta.remote, id);
        self.unacked.insert(id);
        self.unacked_by_ip.insert((client, id));
        self.transfers.insert(id, t);
        self.enqueue(id);
    }

    /// What a client is told when its file cannot be opened.
    fn open_error_reply(name: &str, e: &OpenError) -> (ErrorCode, Say) {
        let (code, msg) = match e {
            // A name that is fine but resolves outside the root (a symlink) or to a directory
            // answers like a missing file, as HTTP answers 404: the reply must not tell a prober
            // that the link or the directory exists. A name refused for what it is (`..`, a
            // drive letter) tells nothing about the file system, so it still says "access
            // violation".
            OpenError::NotFound | OpenError::NotAFile => {
                (ErrorCode::FileNotFound, "file not found")
            }
            OpenError::Refused(_) if crate::path::sanitize(name, NameFlavor::Tftp).is_ok() => {
                (ErrorCode::FileNotFound, "file not found")
            }
            &OpenError::Refused(e) => return (ErrorCode::AccessViolation, Say::Path(e)),
            OpenError::Denied => (ErrorCode::AccessViolation, "access denied"),
            OpenError::Busy => (ErrorCode::NotDefined, "the file is being written"),
            _ => (ErrorCode::NotDefined, "server error"),
        };
        (code, Say::Text(msg))
    }

    /// The oldest transfer from `ip` that never got an ACK.
    fn oldest_unacked_of(&self, ip: IpAddr) -> Option<TransferId> {
        self.unacked_by_ip
            .range((ip, TransferId(0))..)
            .next()
            .filter(|(i, _)| *i == ip)
            .map(|&(_, id)| id)
    }

    /// Ends a transfer that never got an ACK to make room, without a word to its peer (which
    /// never showed it receives; a real client whose answer was lost retransmits its RRQ).
    fn evict(&mut self, id: TransferId, images: &mut dyn ImageCatalog) {
        self.end(
            id,
            TransferOutcome::Aborted(Abort::Server(ServerAbort::Evicted)),
            images,
        );
    }

    fn handle_ack(
        &mut self,
        now: Instant,
        id: TransferId,
        wire: u16,
        extra: Option<u8>,
        images: &mut dyn ImageCatalog,
    ) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let was_heard = t.heard;
        let step = t.on_ack(now, wire, extra, self.config.max_windowsize);
        if t.heard && !was_heard {
            self.unacked.remove(&id);
            self.unacked_by_ip.remove(&(t.remote.ip(), id));
        }
        match step {
            AckStep::Ignore => {}
            AckStep::Complete => {
                let outcome = TransferOutcome::Completed {
                    bytes: t.len,
                    retransmits: t.retransmits,
                };
                self.end(id, outcome, images);
            }
            AckStep::Send => self.enqueue(id),
        }
    }

    fn enqueue(&mut self, id: TransferId) {
        if let Some(t) = self.transfers.get_mut(&id)
            && !t.queued
        {
            t.queued = true;
            self.ready.push_back(id);
        }
    }

    /// Makes sure the heap has an entry for `t` no later than its deadline.
    fn ensure_timer(
        timers: &mut BinaryHeap<Reverse<(Instant, TransferId)>>,
        id: TransferId,
        t: &mut Transfer,
    ) {
        if t.timer_at.is_none_or(|at| t.deadline < at) {
            timers.push(Reverse((t.deadline, id)));
            t.timer_at = Some(t.deadline);
        }
    }

    /// Ends a transfer the platform cannot serve (no port, image gone): tells the client with
    /// an ERROR when it can, then ends it.
    pub fn abort_transfer(
        &mut self,
        id: TransferId,
        reason: ServerAbort,
        images: &mut dyn ImageCatalog,
    ) {
        self.end_with_error(
            id,
            Say::Abort(reason),
            TransferOutcome::Aborted(Abort::Server(reason)),
            images,
        );
    }

    /// Sends the transfer's client an ERROR 0 from the transfer's socket, then ends it.
    fn end_with_error(
        &mut self,
        id: TransferId,
        message: Say,
        outcome: TransferOutcome,
        images: &mut dyn ImageCatalog,
    ) {
        let Some(t) = self.transfers.get(&id) else {
            return;
        };
        let meta = DatagramMeta {
            remote: t.remote,
            local_ip: t.local_ip,
            ifindex: t.ifindex,
        };
        self.reply_error(t.local(), &meta, ErrorCode::NotDefined, message);
        self.end(id, outcome, images);
    }

    fn end(&mut self, id: TransferId, outcome: TransferOutcome, images: &mut dyn ImageCatalog) {
        let Some(t) = self.transfers.remove(&id) else {
            return;
        };
        images.close(t.image);
        self.unacked.remove(&id);
        self.unacked_by_ip.remove(&(t.remote.ip(), id));
        if self.by_remote.get(&t.remote) == Some(&id) {
            self.by_remote.remove(&t.remote);
        }
        if let Some(socket) = t.socket {
            self.leave_socket(socket);
        }
        let ip = t.remote.ip();
        if let Some(n) = self.per_client.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
        self.events.push_back(TftpEvent::TransferEnded {
            id,
            remote: t.remote,
            outcome,
        });
    }

    /// A transfer stops using `socket`; the last one out hands an open socket back.
    fn leave_socket(&mut self, socket: SocketId) {
        let Some(entry) = self.sockets.get_mut(&socket) else {
            return;
        };
        entry.users = entry.users.saturating_sub(1);
        if entry.users > 0 {
            return;
        }
        let slot = entry.slot;
        self.sockets.remove(&socket);
        if let Some(slot) = slot {
            self.open.swap_remove(slot);
            if let Some(&moved) = self.open.get(slot)
                && let Some(m) = self.sockets.get_mut(&moved)
            {
                m.slot = Some(slot);
            }
            self.unused.push_back(socket);
        }
    }

    /// The platform bound `socket` (the first transmit from it asked for one): transfers may
    /// share it once no port is left.
    pub fn socket_opened(&mut self, socket: SocketId) {
        if let Some(entry) = self.sockets.get_mut(&socket)
            && entry.slot.is_none()
        {
            entry.slot = Some(self.open.len());
            self.open.push(socket);
        }
    }

    /// The platform could not bind `socket`: no port of the range is left. Its transfer moves
    /// to a socket that is open, picked by `draw` (a random number: a spoofer that did not see
    /// the answer cannot tell which port its transfer uses), and the transmit that asked for
    /// the socket leaves from the one returned. With none open, the transfer ends and its
    /// client hears why from the TFTP port, where its request went.
    pub fn socket_unavailable(
        &mut self,
        socket: SocketId,
        draw: u64,
        images: &mut dyn ImageCatalog,
    ) -> Option<SocketId> {
        let entry = self.sockets.get(&socket)?;
        if entry.slot.is_some() {
            // Open already: nothing to move.
            return Some(socket);
        }
        let id = entry.creator;
        if !self.open.is_empty() {
            //= https://www.rfc-editor.org/rfc/rfc1350#section-4
            //# In order to create a connection, each end of the connection chooses a TID
            //# for itself, to be used for the duration of that connection.
            //
            // A connection is the pair of TIDs: a port already serving other clients'
            // transfers still makes a new pair with this client's, and datagrams are told
            // apart by the client's address and port. An unacknowledged transfer then holds a
            // table entry, not a port: a flood shuts no one out.
            let shared = self.open[(draw % self.open.len() as u64) as usize];
            self.sockets.remove(&socket);
            if let Some(entry) = self.sockets.get_mut(&shared) {
                entry.users += 1;
            }
            if let Some(t) = self.transfers.get_mut(&id) {
                t.socket = Some(shared);
            }
            return Some(shared);
        }
        if let Some(t) = self.transfers.get(&id) {
            let meta = DatagramMeta {
                remote: t.remote,
                local_ip: t.local_ip,
                ifindex: t.ifindex,
            };
            let reason = ServerAbort::OutOfPorts;
            self.reply_error(
                Local::Listener,
                &meta,
                ErrorCode::NotDefined,
                Say::Abort(reason),
            );
            self.end(id, TransferOutcome::Aborted(Abort::Server(reason)), images);
        }
        None
    }

    /// An open socket no transfer uses any more: the platform closes it (and frees its port).
    pub fn poll_unused_socket(&mut self) -> Option<SocketId> {
        self.unused.pop_front()
    }

    /// Transfer sockets in use, open or not (tests check none is left behind).
    pub fn sockets_in_use(&self) -> usize {
        self.sockets.len()
    }

    pub fn handle_timeout(&mut self, now: Instant, images: &mut dyn ImageCatalog) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(t) = self.transfers.get_mut(&id) else {
                continue;
            };
            if t.timer_at == Some(at) {
                t.timer_at = None;
            }
            let retransmits = t.retransmits;
            let timed_out =
                || TransferOutcome::Aborted(Abort::Client(ClientAbort::TimedOut { retransmits }));
            match t.on_timeout(now, self.config.retries) {
                TimeoutStep::Busy => {}
                TimeoutStep::Wait => Self::ensure_timer(&mut self.timers, id, t),
                TimeoutStep::Expire => self.end(id, timed_out(), images),
                // The client went silent: tell it, if it still listens, and end.
                TimeoutStep::GiveUp => {
                    self.end_with_error(id, Say::Text("timed out"), timed_out(), images)
                }
                TimeoutStep::Resend => self.enqueue(id),
            }
        }
    }

    /// Entries in the timer heap (tests check it stays about one per transfer).
    #[cfg(test)]
    pub(crate) fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn poll_event(&mut self) -> Option<TftpEvent> {
        self.events.pop_front()
    }

    /// The next thing to send: an ERROR or OACK in `buf` (`Payload::Bytes`), or up to
    /// `max_datagrams` DATA blocks of one window (`Payload::Segments`, their 4-byte headers in
    /// `buf`). A window that does not fit continues in the next poll.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut [u8],
    ) -> Option<(Local, Transmit)> {
        self.poll_transmit_of(now, max_datagrams, buf)
            .map(|(local, _, t)| (local, t))
    }

    /// [`Self::poll_transmit`], with the transfer the transmit is part of (none for an ERROR
    /// to a stranger or for one that ended): a driver that counts or reports per transfer
    /// needs no lookup per send.
    pub fn poll_transmit_of(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut [u8],
    ) -> Option<(Local, Option<TransferId>, Transmit)> {
        while let Some(c) = self.control.pop_front() {
            // Every message fits the smallest buffer a caller polls with; one that does not is
            // dropped, not the rest of the queue with it.
            let Ok(len) = emit_error(buf, c.code, &c.message) else {
                continue;
            };
            return Some((
                c.local,
                self.owner(c.local, c.to),
                Transmit {
                    destination: c.to,
                    source_ip: c.source_ip,
                    ifindex: c.ifindex,
                    payload: Payload::Bytes { len },
                },
            ));
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(t) = self.transfers.get_mut(&id) else {
                continue;
            };
            t.queued = false;
            let local = t.local();
            let destination = t.remote;
            let (source_ip, ifindex) = (t.local_ip, t.ifindex);
            match t.poll(now, max_datagrams, buf) {
                Next::Idle { armed } => {
                    if armed {
                        Self::ensure_timer(&mut self.timers, id, t);
                    }
                }
                Next::NoRoom => {
                    t.queued = true;
                    self.ready.push_front(id);
                    return None;
                }
                Next::Send { payload, armed } => {
                    if armed {
                        Self::ensure_timer(&mut self.timers, id, t);
                    } else {
                        t.queued = true;
                        self.ready.push_back(id);
                    }
                    let transmit = Transmit {
                        destination,
                        source_ip,
                        ifindex,
                        payload,
                    };
                    return Some((local, Some(id), transmit));
                }
            }
        }
        None
    }
}
