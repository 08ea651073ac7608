//! The TFTP service on one event loop: the engine's `TftpServer` wired to a listener and one
//! socket per transfer (or the listener alone in single-port mode).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use zpxe_engine::tftp::{Local, TftpEvent, TftpServer, TransferId, TransferOutcome};
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
/// Transfers evicted, at most, to free one socket (an evicted transfer may not have one yet).
const MAX_EVICTIONS_PER_SOCKET: usize = 8;

struct Transfer {
    socket: Rc<UdpEndpoint>,
    recv_task: Option<JoinHandle<()>>,
    port: Option<u16>,
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

    /// A port of the range at random (the first free one from a random place).
    fn bind(&mut self, ip: IpAddr, options: &UdpOptions) -> io::Result<(UdpEndpoint, Option<u16>)> {
        let Some(range) = self.range else {
            return UdpEndpoint::bind(SocketAddr::new(ip, 0), options).map(|s| (s, None));
        };
        for port in self.order(range) {
            if self.in_use.contains(&port) {
                continue;
            }
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
                "every port of the TFTP range {}-{} is busy",
                range.lo, range.hi
            ),
        ))
    }

    /// Every port of `range`, starting at a random one.
    fn order(&mut self, range: PortRange) -> impl Iterator<Item = u16> + use<> {
        let count = range.count();
        self.draws += 1;
        let start = (self.random.hash_one(self.draws) % count as u64) as usize;
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
    transfers: RefCell<HashMap<TransferId, Transfer>>,
    /// Each running transfer's file and start, for its timeline event at the end (the end
    /// event names neither). Only filled when the database records.
    recording: RefCell<HashMap<TransferId, (crate::db::Name, Instant)>>,
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
            transfers: RefCell::default(),
            recording: RefCell::default(),
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
        spawn(async move { me.recv_loop(listener, Local::Listener).await }).detach();
        let me = Rc::clone(self);
        spawn(async move { me.drive().await }).detach();
    }

    async fn recv_loop(self: Rc<Self>, socket: Rc<UdpEndpoint>, local: Local) {
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut out = vec![0u8; OUT_BUF];
        loop {
            let (res, b) = socket.recv(buf).await;
            buf = b;
            match res {
                Ok(r) => {
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
                    if matches!(local, Local::Transfer(_)) {
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

    fn socket_for(self: &Rc<Self>, local: Local) -> Option<Rc<UdpEndpoint>> {
        let id = match local {
            Local::Listener => return Some(Rc::clone(&self.listener)),
            Local::Transfer(id) => id,
        };
        if let Some(t) = self.transfers.borrow().get(&id) {
            return Some(Rc::clone(&t.socket));
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
        let (socket, port) = match bound {
            Ok((socket, port)) => {
                if !self.ctx.shared.config.server.udp_gso {
                    socket.disable_gso();
                }
                (Rc::new(socket), port)
            }
            Err(e) => match self.socket_of_unacknowledged(id) {
                Some(taken) => taken,
                None => {
                    if let Some(held) = self.bind_warnings.borrow_mut().admit(Instant::now()) {
                        tracing::warn!(%id, error = %e, held_back = held, "no socket for a TFTP transfer");
                    }
                    let mut store = self.ctx.store.borrow_mut();
                    self.engine.borrow_mut().abort_transfer(
                        id,
                        "server out of transfer ports",
                        &mut *store,
                    );
                    return None;
                }
            },
        };
        let me = Rc::clone(self);
        let task = spawn(me.recv_loop(Rc::clone(&socket), local));
        self.transfers.borrow_mut().insert(
            id,
            Transfer {
                socket: Rc::clone(&socket),
                recv_task: Some(task),
                port,
            },
        );
        Some(socket)
    }

    /// Out of ports (a spoofed flood holds them): the oldest transfer that never got its first
    /// ACK ends, and its socket serves `id` instead. Closing it and binding its port again
    /// could fail, since the socket closes only once its pending receive is cancelled.
    fn socket_of_unacknowledged(&self, id: TransferId) -> Option<(Rc<UdpEndpoint>, Option<u16>)> {
        for _ in 0..MAX_EVICTIONS_PER_SOCKET {
            let victim = {
                let mut store = self.ctx.store.borrow_mut();
                self.engine.borrow_mut().evict_unacknowledged(
                    std::time::Instant::now(),
                    id,
                    &mut *store,
                )?
            };
            let taken = self.transfers.borrow_mut().remove(&victim);
            if let Some(mut t) = taken {
                // Its receive task ends here; a datagram it already took for the evicted
                // transfer is lost, as that transfer is.
                drop(t.recv_task.take());
                return Some((t.socket, t.port));
            }
        }
        None
    }

    async fn send(self: &Rc<Self>, local: Local, t: Transmit, buf: &[u8]) {
        let Some(socket) = self.socket_for(local) else {
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
                    Ok(n) => self
                        .ctx
                        .shared
                        .metrics
                        .tftp_datagrams(n as u64, range.len()),
                    Err(SendError::Image(e)) => {
                        if let Local::Transfer(id) = local {
                            tracing::warn!(%id, error = %e, "ending TFTP transfer: image changed");
                            let mut store = self.ctx.store.borrow_mut();
                            self.engine.borrow_mut().abort_transfer(
                                id,
                                "file changed on the server",
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
                    if recorder.enabled() {
                        let name = crate::db::Name::new(&file);
                        self.recording
                            .borrow_mut()
                            .insert(id, (name, Instant::now()));
                        let kind = crate::db::EventKind::TftpStart { file: name };
                        recorder.record(crate::db::Event::now(kind).ip(remote.ip()));
                    }
                }
                TftpEvent::TransferEnded {
                    id,
                    remote,
                    outcome,
                    ..
                } => {
                    if let Some(mut t) = self.transfers.borrow_mut().remove(&id) {
                        drop(t.recv_task.take());
                        self.ports.borrow_mut().release(t.port);
                    }
                    match &outcome {
                        TransferOutcome::Completed { bytes, .. } => {
                            metrics.tftp_completed();
                            tracing::info!(%id, %remote, bytes, "TFTP transfer complete");
                        }
                        other => {
                            metrics.tftp_failed();
                            tracing::info!(%id, %remote, outcome = ?other, "TFTP transfer ended");
                        }
                    }
                    if let Some((file, started)) = self.recording.borrow_mut().remove(&id) {
                        let kind =
                            crate::db::tftp_end_event(file.as_str(), &outcome, started.elapsed());
                        let event = crate::db::Event::now(kind).ip(remote.ip());
                        self.ctx.shared.recorder.record(event);
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
