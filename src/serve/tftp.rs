//! The TFTP service on one event loop: the engine's `TftpServer` wired to a listener and one
//! socket per transfer (or the listener alone in single-port mode).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use zpxe_engine::tftp::{Local, ServerAbort, TftpEvent, TftpServer, TransferId, TransferOutcome};
use zpxe_engine::{Payload, Transmit};
use zpxe_platform::runtime::{JoinHandle, sleep, spawn};
use zpxe_platform::udp::{Route, SegmentRun, SendError, UdpEndpoint, UdpOptions};

use super::{Shared, ThreadCtx};
use crate::config::PortRange;

/// Most datagrams asked of the engine per poll: one GSO call's worth.
const MAX_DATAGRAMS: usize = 64;
/// Requests and ACKs are small; a request with every option fits in 512 bytes (RFC 2347).
const RECV_BUF: usize = 4096;
/// What a poll writes: ERROR/OACK packets, or 4-byte headers of up to `MAX_DATAGRAMS` blocks.
const OUT_BUF: usize = 2048;
/// At most one "no socket for a TFTP transfer" line this often (a spoofed flood once wrote
/// one per request); the ones held back are counted in the next.
const BIND_WARN_PERIOD: Duration = Duration::from_secs(10);
/// Ports of the range tried, at most, for one new transfer socket before it shares one: a port
/// freed a moment ago may still be bound until its socket's receive is cancelled, and a bind
/// that fails is a system call the event loop waits for.
const MAX_BIND_TRIES: usize = 8;

/// A bound transfer socket and the transfers it serves (`E`: the socket, `Rc<UdpEndpoint>`).
struct Socket<E> {
    endpoint: E,
    recv_task: Option<JoinHandle<()>>,
    port: Option<u16>,
    /// Its transfers by client address and port: one, unless no port was left and transfers
    /// share it.
    peers: HashMap<SocketAddr, TransferId>,
    /// Its place in `Sockets::keys`.
    slot: usize,
}

/// The transfer sockets of one loop.
struct Sockets<E> {
    by_key: HashMap<u64, Socket<E>>,
    /// Every key, for a pick at random.
    keys: Vec<u64>,
    /// The socket of each transfer that has one.
    of: HashMap<TransferId, u64>,
    next_key: u64,
}

impl<E> Default for Sockets<E> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            keys: Vec::new(),
            of: HashMap::new(),
            next_key: 0,
        }
    }
}

impl<E: Clone> Sockets<E> {
    fn endpoint_of(&self, id: TransferId) -> Option<E> {
        let key = self.of.get(&id)?;
        self.by_key.get(key).map(|s| s.endpoint.clone())
    }

    /// Which transfer a datagram from `from` on socket `key` is for: its own, or (a stranger)
    /// any transfer of the socket, whose answer is the ERROR for an unknown transfer ID.
    fn local_for(&self, key: u64, from: SocketAddr) -> Option<Local> {
        let socket = self.by_key.get(&key)?;
        socket
            .peers
            .get(&from)
            .or_else(|| socket.peers.values().next())
            .map(|&id| Local::Transfer(id))
    }

    fn add(&mut self, endpoint: E, port: Option<u16>) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let socket = Socket {
            endpoint,
            recv_task: None,
            port,
            peers: HashMap::new(),
            slot: self.keys.len(),
        };
        self.keys.push(key);
        self.by_key.insert(key, socket);
        key
    }

    fn join(&mut self, key: u64, id: TransferId, remote: SocketAddr) {
        if let Some(socket) = self.by_key.get_mut(&key) {
            // A transfer of the same peer that already ended (its end not handled yet) is
            // replaced: the engine runs one transfer per client address and port.
            if let Some(old) = socket.peers.insert(remote, id) {
                self.of.remove(&old);
            }
            self.of.insert(id, key);
        }
    }

    /// The socket of `at`-th key, modulo the count (a pick at random for a random `at`).
    fn pick(&self, at: u64) -> Option<u64> {
        let n = self.keys.len() as u64;
        (n > 0).then(|| self.keys[(at % n) as usize])
    }

    /// Transfer `id` of `remote` ended: it leaves its socket, which closes when it was the
    /// last. Returns the closed socket's port.
    fn leave(&mut self, id: TransferId, remote: SocketAddr) -> Option<Option<u16>> {
        let key = self.of.remove(&id)?;
        let socket = self.by_key.get_mut(&key)?;
        if socket.peers.get(&remote) == Some(&id) {
            socket.peers.remove(&remote);
        }
        if !socket.peers.is_empty() {
            return None;
        }
        let mut socket = self.by_key.remove(&key)?;
        // Its receive task ends here, which closes the socket.
        drop(socket.recv_task.take());
        self.keys.swap_remove(socket.slot);
        if let Some(&moved) = self.keys.get(socket.slot)
            && let Some(m) = self.by_key.get_mut(&moved)
        {
            m.slot = socket.slot;
        }
        Some(socket.port)
    }
}

/// Hands out transfer ports from the configured range, or ephemeral ones (which the kernel
/// picks at random).
struct PortPool {
    range: Option<PortRange>,
    in_use: HashSet<u16>,
    /// SipHash under this process's random keys, over a counter: where the search for a free
    /// port starts cannot be told from the ports handed out before, so a spoofer that does not
    /// receive the OACK cannot aim an ACK 0 at the transfer (ports in sequence could be).
    random: RandomState,
    draws: u64,
}

impl PortPool {
    fn new(range: Option<PortRange>) -> Self {
        Self {
            range,
            in_use: HashSet::new(),
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// A port of the range at random (the first free one from a random place), trying at
    /// most `MAX_BIND_TRIES` of them; none at all when every port is handed out.
    fn bind(&mut self, ip: IpAddr, options: &UdpOptions) -> io::Result<(UdpEndpoint, Option<u16>)> {
        let Some(range) = self.range else {
            return UdpEndpoint::bind(SocketAddr::new(ip, 0), options).map(|s| (s, None));
        };
        let free = range.count().saturating_sub(self.in_use.len());
        let candidates = self.order(range).filter(|p| !self.in_use.contains(p));
        for port in candidates
            .take(MAX_BIND_TRIES.min(free))
            .collect::<Vec<_>>()
        {
            match UdpEndpoint::bind(SocketAddr::new(ip, port), options) {
                Ok(s) => {
                    self.in_use.insert(port);
                    return Ok((s, Some(port)));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "no free port found in the TFTP range {}-{}",
                range.lo, range.hi
            ),
        ))
    }

    /// A number no one outside can predict.
    fn draw(&mut self) -> u64 {
        self.draws += 1;
        self.random.hash_one(self.draws)
    }

    /// Every port of `range`, starting at a random one.
    fn order(&mut self, range: PortRange) -> impl Iterator<Item = u16> + use<> {
        let count = range.count();
        let start = (self.draw() % count as u64) as usize;
        // The offset is below `count`, so `lo` plus it is a port of the range.
        (0..count).map(move |i| range.lo + ((start + i) % count) as u16)
    }

    fn release(&mut self, port: Option<u16>) {
        if let Some(p) = port {
            self.in_use.remove(&p);
        }
    }
}

/// Lets one warning through per period and counts the ones it holds back.
#[derive(Debug)]
struct Throttle {
    period: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)`: log now, and say `n` warnings were held back since the last line.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.period)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// The TFTP service of one event loop.
pub(crate) struct TftpService {
    engine: RefCell<TftpServer>,
    ctx: Rc<ThreadCtx>,
    listener: Rc<UdpEndpoint>,
    sockets: RefCell<Sockets<Rc<UdpEndpoint>>>,
    /// Each running transfer's file, start and live-view id, for its timeline event and its
    /// duration in the metrics at the end (the end event names neither).
    recording: RefCell<HashMap<TransferId, (crate::db::Name, Instant, u64)>>,
    /// Each running transfer's file, size, last progress report and live-view id, for the
    /// live view (src/web/live.rs). Only filled when the web service runs.
    progress: RefCell<HashMap<TransferId, (crate::db::Name, u64, Instant, u64)>>,
    ports: RefCell<PortPool>,
    transfer_ip: IpAddr,
    bind_warnings: RefCell<Throttle>,
}

impl TftpService {
    pub(crate) fn bind(ctx: &Rc<ThreadCtx>, addr: SocketAddr) -> io::Result<Rc<Self>> {
        let shared: &Shared = &ctx.shared;
        let options = UdpOptions {
            pktinfo: true,
            reuse_port: true,
            recv_buffer: Some(4 << 20),
            send_buffer: Some(4 << 20),
            ..UdpOptions::default()
        };
        let listener = UdpEndpoint::bind(addr, &options)?;
        if !shared.config.server.udp_gso {
            listener.disable_gso();
        }
        let mut engine = TftpServer::new(shared.config.tftp.clone());
        if addr.ip().is_loopback() {
            engine.set_mtu(u16::MAX);
        }
        let range = shared.config.tftp_range();
        Ok(Rc::new(Self {
            engine: RefCell::new(engine),
            ctx: Rc::clone(ctx),
            listener: Rc::new(listener),
            sockets: RefCell::default(),
            recording: RefCell::default(),
            progress: RefCell::default(),
            ports: RefCell::new(PortPool::new(range)),
            transfer_ip: addr.ip(),
            bind_warnings: RefCell::new(Throttle::new(BIND_WARN_PERIOD)),
        }))
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Runs the service until the event loop stops.
    pub(crate) fn start(self: &Rc<Self>) {
        let me = Rc::clone(self);
        let listener = Rc::clone(&self.listener);
        spawn(async move { me.recv_loop(listener, None).await }).detach();
        let me = Rc::clone(self);
        spawn(async move { me.drive().await }).detach();
    }

    /// Receives on the listener (`key` None) or on transfer socket `key`.
    async fn recv_loop(self: Rc<Self>, socket: Rc<UdpEndpoint>, key: Option<u64>) {
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut out = vec![0u8; OUT_BUF];
        loop {
            let (res, b) = socket.recv(buf).await;
            buf = b;
            match res {
                Ok(r) => {
                    let local = match key {
                        None => Local::Listener,
                        Some(key) => match self.sockets.borrow().local_for(key, r.meta.remote) {
                            Some(local) => local,
                            // Its last transfer just ended.
                            None => continue,
                        },
                    };
                    self.engine.borrow_mut().handle_datagram(
                        Instant::now(),
                        local,
                        r.meta,
                        &buf[..r.len],
                        &mut *self.ctx.store.borrow_mut(),
                    );
                    // Answer from this task: a lock-step client's round trip is then one
                    // receive and one send, without a hop through the driver task.
                    self.flush(&mut out).await;
                }
                // ICMP port unreachable from a client that went away surfaces here on Linux.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "TFTP receive failed");
                    if key.is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends everything the engine has to send, then handles its events.
    async fn flush(self: &Rc<Self>, out: &mut [u8]) {
        loop {
            let polled = self
                .engine
                .borrow_mut()
                .poll_transmit(Instant::now(), MAX_DATAGRAMS, out);
            let Some((local, transmit)) = polled else {
                break;
            };
            self.send(local, transmit, out).await;
        }
        self.handle_events();
    }

    /// Retransmission timeouts (receive tasks answer datagrams themselves).
    async fn drive(self: Rc<Self>) {
        let mut out = vec![0u8; OUT_BUF];
        // Holds the loop open while transfers run after a drain began.
        let busy = self.ctx.drain.busy();
        let mut draining = false;
        loop {
            if self.ctx.drain.fired() && !draining {
                draining = true;
                self.engine.borrow_mut().stop_accepting();
            }
            if draining && self.engine.borrow().active_transfers() == 0 {
                drop(busy);
                return;
            }
            let now = Instant::now();
            if self
                .engine
                .borrow()
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                let mut store = self.ctx.store.borrow_mut();
                self.engine.borrow_mut().handle_timeout(now, &mut *store);
            }
            self.flush(&mut out).await;
            if self.ctx.shared.stop.stopped() {
                return;
            }
            // Deadlines armed while this sleeps are a retransmission timeout away (1 s by
            // default), so they are seen in time; with `timeout-ms` below STOP_POLL a
            // retransmission can be up to STOP_POLL late.
            let deadline = self
                .engine
                .borrow()
                .poll_timeout()
                .map_or(now + super::STOP_POLL, |d| d.min(now + super::STOP_POLL));
            let pause = std::pin::pin!(sleep(deadline.saturating_duration_since(Instant::now())));
            // A drain is seen at once: new requests stop being answered from that moment.
            futures_util::future::select(pause, self.ctx.drain.wait()).await;
        }
    }

    /// The socket a transfer's datagram to `remote` leaves from. A transfer gets one when it
    /// first sends: a port of its own, or, when none is left, a share of another transfer's.
    fn socket_for(self: &Rc<Self>, local: Local, remote: SocketAddr) -> Option<Rc<UdpEndpoint>> {
        let id = match local {
            Local::Listener => return Some(Rc::clone(&self.listener)),
            Local::Transfer(id) => id,
        };
        if let Some(endpoint) = self.sockets.borrow().endpoint_of(id) {
            return Some(endpoint);
        }
        if !self.engine.borrow().is_active(id) {
            // A last ERROR for a transfer that already ended: its socket is gone.
            return None;
        }
        let options = UdpOptions {
            send_buffer: Some(1 << 20),
            ..UdpOptions::default()
        };
        let bound = self.ports.borrow_mut().bind(self.transfer_ip, &options);
        match bound {
            Ok((socket, port)) => {
                if !self.ctx.shared.config.server.udp_gso {
                    socket.disable_gso();
                }
                let endpoint = Rc::new(socket);
                let key = self.sockets.borrow_mut().add(Rc::clone(&endpoint), port);
                let me = Rc::clone(self);
                let task = spawn(me.recv_loop(Rc::clone(&endpoint), Some(key)));
                let mut sockets = self.sockets.borrow_mut();
                if let Some(s) = sockets.by_key.get_mut(&key) {
                    s.recv_task = Some(task);
                }
                sockets.join(key, id, remote);
                Some(endpoint)
            }
            Err(e) => {
                //= https://www.rfc-editor.org/rfc/rfc1350#section-4
                //# In order to create a connection, each end of the connection chooses a TID
                //# for itself, to be used for the duration of that connection.
                //
                // A connection is the pair of TIDs: a port already serving other clients'
                // transfers still makes a new pair with this client's. So when no port is left
                // (a spoofed flood holds them all, each waiting for a first ACK that never
                // comes), the transfer shares the socket of another at random, and datagrams
                // are told apart by the client's address and port, as in single-port mode. An
                // unacknowledged transfer then holds a table entry, not a port: a flood shuts
                // no one out, and no loop of failing binds stalls the event loop.
                let at = self.ports.borrow_mut().draw();
                let mut sockets = self.sockets.borrow_mut();
                if let Some(key) = sockets.pick(at) {
                    sockets.join(key, id, remote);
                    return sockets.endpoint_of(id);
                }
                drop(sockets);
                if let Some(held) = self.bind_warnings.borrow_mut().admit(Instant::now()) {
                    tracing::warn!(%id, error = %e, held_back = held, "no socket for a TFTP transfer");
                }
                let mut store = self.ctx.store.borrow_mut();
                self.engine
                    .borrow_mut()
                    .abort_transfer(id, ServerAbort::OutOfPorts, &mut *store);
                None
            }
        }
    }

    async fn send(self: &Rc<Self>, local: Local, t: Transmit, buf: &[u8]) {
        let Some(socket) = self.socket_for(local, t.destination) else {
            return;
        };
        let route = Route {
            destination: t.destination,
            source_ip: t.source_ip,
            ifindex: t.ifindex,
        };
        match t.payload {
            Payload::Bytes { len } => {
                let (res, _) = socket.send(route, buf[..len].to_vec()).await;
                if let Err(e) = res {
                    tracing::debug!(to = %t.destination, error = %e, "TFTP send failed");
                }
            }
            Payload::Segments {
                header_len,
                count,
                segment,
                image,
                range,
            } => {
                let header_len = usize::from(header_len);
                let headers = buf[..header_len * usize::from(count)].to_vec();
                let version = self.ctx.store.borrow().version(image);
                let result = match version {
                    Some(v) => {
                        let run = SegmentRun {
                            header_len,
                            count: usize::from(count),
                            segment: segment as usize,
                            range,
                        };
                        socket.send_run(route, headers, &v, run).await.0
                    }
                    None => Err(SendError::Image(zpxe_platform::VersionBroken::Gone)),
                };
                match result {
                    Ok(n) => {
                        self.ctx
                            .shared
                            .metrics
                            .tftp_datagrams(n as u64, range.len());
                        if let (Local::Transfer(id), Some(live)) =
                            (local, self.ctx.shared.recorder.live())
                        {
                            self.report_progress(live, id, t.destination, range.end);
                        }
                    }
                    Err(SendError::Image(e)) => {
                        if let Local::Transfer(id) = local {
                            tracing::warn!(%id, error = %e, "ending TFTP transfer: image changed");
                            let mut store = self.ctx.store.borrow_mut();
                            self.engine.borrow_mut().abort_transfer(
                                id,
                                ServerAbort::FileChanged,
                                &mut *store,
                            );
                        }
                    }
                    Err(SendError::Io(e)) => {
                        tracing::debug!(to = %t.destination, error = %e, "TFTP data send failed");
                    }
                }
            }
            _ => tracing::error!("unexpected payload from the TFTP engine"),
        }
    }

    /// The live view's progress of transfer `id`, sent up to `at`: at most every
    /// `PROGRESS_EVERY`, and at the end of the file (one `try_send`).
    fn report_progress(
        &self,
        live: &crate::web::live::Tap,
        id: TransferId,
        remote: SocketAddr,
        at: u64,
    ) {
        let mut progress = self.progress.borrow_mut();
        let Some((file, size, last, transfer)) = progress.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        if at >= *size || now.saturating_duration_since(*last) >= crate::web::live::PROGRESS_EVERY {
            *last = now;
            live.progress(
                crate::db::Leg::Tftp,
                *transfer,
                remote,
                file.as_str(),
                at,
                Some(*size),
            );
        }
    }

    fn handle_events(&self) {
        loop {
            let ev = self.engine.borrow_mut().poll_event();
            let Some(ev) = ev else { break };
            let metrics = &self.ctx.shared.metrics;
            match ev {
                TftpEvent::TransferStarted {
                    id,
                    remote,
                    file,
                    size,
                    blksize,
                    windowsize,
                    ..
                } => {
                    metrics.tftp_started();
                    tracing::info!(%id, %remote, file, size, blksize, windowsize, "TFTP transfer started");
                    let recorder = &self.ctx.shared.recorder;
                    // One id from start to end: the live view ends exactly this transfer.
                    let transfer = crate::web::live::next_transfer_id();
                    let name = crate::db::Name::new(&file);
                    if let Some(live) = recorder.live() {
                        live.progress(crate::db::Leg::Tftp, transfer, remote, &file, 0, Some(size));
                        self.progress
                            .borrow_mut()
                            .insert(id, (name, size, Instant::now(), transfer));
                    }
                    self.recording
                        .borrow_mut()
                        .insert(id, (name, Instant::now(), transfer));
                    if recorder.enabled() {
                        let kind = crate::db::EventKind::TftpStart { file: name };
                        let event = crate::db::Event::now(kind).ip(remote.ip());
                        recorder.record(event.transfer(Some(transfer)));
                    }
                }
                TftpEvent::TransferEnded {
                    id,
                    remote,
                    outcome,
                    ..
                } => {
                    self.progress.borrow_mut().remove(&id);
                    let closed = self.sockets.borrow_mut().leave(id, remote);
                    if let Some(port) = closed {
                        self.ports.borrow_mut().release(port);
                    }
                    let recording = self.recording.borrow_mut().remove(&id);
                    // By outcome; an EDK2 size probe is no failure.
                    metrics
                        .tftp_ended(&outcome, recording.map(|(_, started, _)| started.elapsed()));
                    match &outcome {
                        TransferOutcome::Completed { bytes, .. } => {
                            tracing::info!(%id, %remote, bytes, "TFTP transfer complete");
                        }
                        o if o.is_probe() => {
                            tracing::info!(%id, %remote, "TFTP size probe done (client ERROR 8 after the OACK)");
                        }
                        TransferOutcome::Aborted(reason) => {
                            tracing::info!(%id, %remote, %reason, "TFTP transfer ended");
                        }
                        other => {
                            tracing::info!(%id, %remote, outcome = ?other, "TFTP transfer ended");
                        }
                    }
                    if let Some((file, started, transfer)) = recording
                        && self.ctx.shared.recorder.enabled()
                    {
                        let kind =
                            crate::db::tftp_end_event(file.as_str(), &outcome, started.elapsed());
                        let event = crate::db::Event::now(kind).ip(remote.ip());
                        self.ctx
                            .shared
                            .recorder
                            .record(event.transfer(Some(transfer)));
                    }
                }
                TftpEvent::Refused {
                    remote,
                    file,
                    reason,
                    ..
                } => {
                    metrics.tftp_refused();
                    // Rate-limited per client and file (src/logging.rs): a flood of requests
                    // must not become a flood of lines.
                    match crate::logging::allow_refusal("tftp", (remote.ip(), &file)) {
                        Some(held_back) => tracing::info!(
                            %remote,
                            file,
                            reason = %reason,
                            held_back,
                            "TFTP request refused"
                        ),
                        None => {
                            tracing::debug!(%remote, file, reason = %reason, "TFTP request refused")
                        }
                    }
                    let recorder = &self.ctx.shared.recorder;
                    if recorder.enabled() {
                        let kind = crate::db::EventKind::Error {
                            leg: crate::db::Leg::Tftp,
                            detail: crate::db::Detail::new(&reason),
                        };
                        recorder.record(crate::db::Event::now(kind).ip(remote.ip()));
                    }
                }
                other => tracing::debug!(event = ?other, "TFTP event"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_ports_start_at_a_random_place_in_the_range() {
        let range = PortRange {
            lo: 30000,
            hi: 30999,
        };
        let mut pool = PortPool::new(Some(range));
        let firsts: Vec<u16> = (0..50)
            .map(|_| {
                let order: Vec<u16> = pool.order(range).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(
                    sorted,
                    (30000..=30999).collect::<Vec<_>>(),
                    "each port once"
                );
                order[0]
            })
            .collect();
        // In sequence (or stuck) the next port is the last one plus one: a spoofer's guess.
        let guessable = firsts
            .windows(2)
            .filter(|w| w[1] == w[0] || w[1] == w[0] + 1)
            .count();
        assert!(guessable < 5, "{firsts:?}");
        let distinct: HashSet<u16> = firsts.iter().copied().collect();
        assert!(distinct.len() > 40, "{firsts:?}");
    }

    #[test]
    fn transfers_share_a_socket_and_it_closes_with_the_last() {
        let id = TransferId;
        let peer = |n: u16| SocketAddr::from(([127, 1, 0, 1], n));
        let mut sockets: Sockets<&str> = Sockets::default();
        let a = sockets.add("a", Some(30000));
        let b = sockets.add("b", Some(30001));
        sockets.join(a, id(1), peer(1));
        sockets.join(b, id(2), peer(2));
        // The range is used up: transfers 3 and 4 share b's socket.
        let shared = sockets.pick(1).expect("a socket to share");
        assert_eq!(shared, b);
        sockets.join(b, id(3), peer(3));
        sockets.join(b, id(4), peer(4));
        assert_eq!(sockets.endpoint_of(id(3)), Some("b"));
        // Each datagram goes to the transfer of its source; a stranger's to one of them (its
        // ERROR leaves from the same socket).
        assert_eq!(sockets.local_for(b, peer(3)), Some(Local::Transfer(id(3))));
        assert_eq!(sockets.local_for(b, peer(4)), Some(Local::Transfer(id(4))));
        assert!(matches!(
            sockets.local_for(b, peer(9)),
            Some(Local::Transfer(TransferId(2..=4)))
        ));
        // A new transfer of the same peer replaces one that ended unseen.
        sockets.join(b, id(5), peer(4));
        assert_eq!(sockets.endpoint_of(id(4)), None);
        assert_eq!(sockets.local_for(b, peer(4)), Some(Local::Transfer(id(5))));
        // The socket stays while a transfer uses it; its port comes back with the last.
        assert_eq!(sockets.leave(id(2), peer(2)), None);
        assert_eq!(sockets.leave(id(4), peer(4)), None);
        assert_eq!(sockets.leave(id(3), peer(3)), None);
        assert_eq!(sockets.leave(id(5), peer(4)), Some(Some(30001)));
        assert_eq!(sockets.local_for(b, peer(3)), None);
        // The key list stays consistent after the swap-remove: picks land on a.
        assert_eq!(sockets.keys, vec![a]);
        assert_eq!(sockets.pick(7), Some(a));
        assert_eq!(sockets.leave(id(1), peer(1)), Some(Some(30000)));
        assert_eq!(sockets.pick(0), None);
    }

    #[test]
    fn repeated_warnings_are_held_back_and_counted() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0));
        for ms in 1..=9200u64 {
            assert_eq!(t.admit(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.admit(start + Duration::from_secs(10)), Some(9200));
        assert_eq!(t.admit(start + Duration::from_secs(11)), None);
        assert_eq!(t.admit(start + Duration::from_secs(30)), Some(1));
    }
}
