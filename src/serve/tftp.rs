//! The TFTP service on one event loop: the engine's `TftpServer` wired to a listener and the
//! transfer sockets the engine names (or the listener alone in single-port mode). The engine
//! decides which transfer a datagram is for; this file only binds, receives and sends.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zpxe_engine::tftp::{
    Local, ServerAbort, SocketId, TftpEvent, TftpServer, TransferId, TransferOutcome,
};
use zpxe_engine::{DatagramMeta, Payload, Transmit};
use zpxe_platform::runtime::{JoinHandle, Notify, spawn};
use zpxe_platform::udp::{SendError, UdpEndpoint, UdpOptions};

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

/// A bound transfer socket: the engine decides which transfers use it and whose datagrams
/// are whose (`TftpServer::socket_unavailable`, `Local::Socket`).
struct TransferSocket {
    endpoint: Rc<UdpEndpoint>,
    /// Its receive task; dropping it ends the receive, which closes the socket.
    recv_task: Option<JoinHandle<()>>,
    port: Option<u16>,
}

/// Hands out transfer ports from the configured range, or ephemeral ones (which the kernel
/// picks at random). One pool serves every event loop, since the range is one: a loop never
/// tries a port another loop holds, nor shares a socket while the range still has a port.
/// Its lock is taken per new transfer socket, never per datagram.
pub(crate) struct PortPool {
    range: Option<PortRange>,
    in_use: Mutex<HashSet<u16>>,
    /// SipHash under this process's random keys, over a counter: where the search for a free
    /// port starts cannot be told from the ports handed out before, so a spoofer that does not
    /// receive the OACK cannot aim an ACK 0 at the transfer (ports in sequence could be).
    random: RandomState,
    draws: AtomicU64,
}

impl PortPool {
    pub(crate) fn new(range: Option<PortRange>) -> Self {
        Self {
            range,
            in_use: Mutex::new(HashSet::new()),
            random: RandomState::new(),
            draws: AtomicU64::new(0),
        }
    }

    /// A port of the range at random (the first free one from a random place), trying at
    /// most `MAX_BIND_TRIES` of them; none at all when every port is handed out. A port is
    /// taken under the lock and bound outside it; one some other program holds goes back.
    fn bind(&self, ip: IpAddr, options: &UdpOptions) -> io::Result<(UdpEndpoint, Option<u16>)> {
        let Some(range) = self.range else {
            return UdpEndpoint::bind(SocketAddr::new(ip, 0), options).map(|s| (s, None));
        };
        for _ in 0..MAX_BIND_TRIES {
            let Some(port) = self.take(range) else {
                break;
            };
            match UdpEndpoint::bind(SocketAddr::new(ip, port), options) {
                Ok(s) => return Ok((s, Some(port))),
                Err(e) => {
                    self.release(Some(port));
                    if e.kind() != io::ErrorKind::AddrInUse {
                        return Err(e);
                    }
                }
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

    /// Takes the first free port of `range` from a random place.
    fn take(&self, range: PortRange) -> Option<u16> {
        let start = self.draw();
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if in_use.len() >= range.count() {
            return None;
        }
        let port = Self::order(range, start).find(|p| !in_use.contains(p))?;
        in_use.insert(port);
        Some(port)
    }

    /// A number no one outside can predict.
    fn draw(&self) -> u64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        self.random.hash_one(n)
    }

    /// Every port of `range`, starting at the one `start` picks.
    fn order(range: PortRange, start: u64) -> impl Iterator<Item = u16> {
        let count = range.count();
        let start = (start % count as u64) as usize;
        // The offset is below `count`, so `lo` plus it is a port of the range.
        (0..count).map(move |i| range.lo + ((start + i) % count) as u16)
    }

    fn release(&self, port: Option<u16>) {
        if let Some(p) = port {
            self.in_use
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p);
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
    /// The port-69 socket; none on a loop that gets its requests from the loop holding it
    /// (src/serve/handoff.rs), which also sends what this one's engine sends from it.
    listener: Option<Rc<UdpEndpoint>>,
    /// Where the listener is bound (or, on a loop without it, where the listening loop's is).
    addr: SocketAddr,
    /// This service's index among the loop's TFTP services, the same on every loop.
    service: Cell<usize>,
    sockets: RefCell<HashMap<SocketId, TransferSocket>>,
    /// Each running transfer's file, start and live-view id, for its timeline event and its
    /// duration in the metrics at the end (the end event names neither).
    recording: RefCell<HashMap<TransferId, (crate::db::Name, Instant, u64)>>,
    /// Each running transfer's file, size, last progress report and live-view id, for the
    /// live view (src/web/live.rs). Only filled when the web service runs.
    progress: RefCell<HashMap<TransferId, (crate::db::Name, u64, Instant, u64)>>,
    transfer_ip: IpAddr,
    bind_warnings: RefCell<Throttle>,
    /// Wakes the driver task when a receive task armed a timer earlier than the one the driver
    /// sleeps for, or when a drain's last transfer ended.
    wake: Notify,
    /// Whether the driver sleeps, and until when (`None`: until woken).
    driver_asleep: Cell<bool>,
    driver_until: Cell<Option<Instant>>,
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
        let addr = listener.local_addr();
        Ok(Self::new(ctx, addr, Some(Rc::new(listener))))
    }

    /// The service on a loop that does not hold the listener: requests for `addr` come from
    /// the loop that does.
    pub(crate) fn handed(ctx: &Rc<ThreadCtx>, addr: SocketAddr) -> Rc<Self> {
        Self::new(ctx, addr, None)
    }

    fn new(ctx: &Rc<ThreadCtx>, addr: SocketAddr, listener: Option<Rc<UdpEndpoint>>) -> Rc<Self> {
        let shared: &Shared = &ctx.shared;
        let mut engine = TftpServer::new(shared.config.tftp.clone());
        if addr.ip().is_loopback() {
            engine.set_mtu(u16::MAX);
        }
        let svc = Rc::new(Self {
            engine: RefCell::new(engine),
            ctx: Rc::clone(ctx),
            listener,
            addr,
            service: Cell::new(0),
            sockets: RefCell::default(),
            recording: RefCell::default(),
            progress: RefCell::default(),
            transfer_ip: addr.ip(),
            bind_warnings: RefCell::new(Throttle::new(BIND_WARN_PERIOD)),
            wake: Notify::new(),
            driver_asleep: Cell::new(false),
            driver_until: Cell::new(None),
        });
        svc.service.set(ctx.add_tftp_service(&svc));
        svc
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs the service until the event loop stops.
    pub(crate) fn start(self: &Rc<Self>) {
        if let Some(listener) = &self.listener {
            let me = Rc::clone(self);
            let listener = Rc::clone(listener);
            spawn(async move { me.recv_loop(listener, Local::Listener).await }).detach();
        }
        let me = Rc::clone(self);
        spawn(async move { me.drive().await }).detach();
    }

    /// With loop handoff, on the listening loop: hands a request (RRQ) to the loop that serves
    /// its client, unless that is this one. `true`: it is gone (handed over, or dropped with
    /// that loop's inbox full or closed: the client asks again). Transfers in single-port mode
    /// all use the listener, so they stay here.
    fn hand_over(&self, meta: &DatagramMeta, datagram: &[u8]) -> bool {
        let Some(loops) = self.ctx.loops() else {
            return false;
        };
        // RFC 1350 section 5: opcode 1 is a read request.
        if datagram.get(..2) != Some(&[0, 1]) || self.ctx.shared.config.tftp.single_port {
            return false;
        }
        // Draining: a new request is answered by no loop, whichever has seen the drain yet.
        if self.ctx.drain.fired() {
            return true;
        }
        let target = loops.for_client(meta.remote.ip());
        if target == self.ctx.index {
            return false;
        }
        let work = super::handoff::Work::TftpRequest {
            service: self.service.get(),
            meta: *meta,
            datagram: datagram.to_vec(),
        };
        let metrics = &self.ctx.shared.metrics;
        match loops.inbox(target).send(work) {
            Ok(()) => crate::metrics::Metrics::add(&metrics.loop_handoff_tftp_total, 1),
            Err(_) => crate::metrics::Metrics::add(&metrics.loop_handoffs_dropped_total, 1),
        }
        true
    }

    /// Once this loop's drain fired, the engine takes no new request. The driver calls it when
    /// it sees the drain, and every datagram handled calls it first (one `Cell` read), since
    /// a request handled before the driver has run would start a transfer.
    fn follow_drain(&self) {
        if self.ctx.drain.fired() {
            self.engine.borrow_mut().stop_accepting();
        }
    }

    /// A request the listening loop handed to this one.
    pub(crate) fn handle_handed(self: &Rc<Self>, meta: DatagramMeta, datagram: Vec<u8>) {
        let me = Rc::clone(self);
        spawn(async move {
            me.follow_drain();
            me.engine.borrow_mut().handle_datagram(
                Instant::now(),
                Local::Listener,
                meta,
                &datagram,
                &mut *me.ctx.store.borrow_mut(),
            );
            let mut out = vec![0u8; OUT_BUF];
            me.flush(&mut out).await;
            me.nudge_driver();
        })
        .detach();
    }

    /// Sends, from the listener this loop holds, a datagram another loop's engine sends from
    /// it.
    pub(crate) fn send_for_other_loop(self: &Rc<Self>, t: Transmit, bytes: Vec<u8>) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        let me = Rc::clone(self);
        spawn(async move {
            if let Err(e) = listener.send_transmit(&t, &bytes, &me.ctx.store).await {
                tracing::debug!(to = %t.destination, error = %e, "TFTP send failed");
            }
        })
        .detach();
    }

    /// Receives on the listener or on a transfer socket (`local`).
    async fn recv_loop(self: Rc<Self>, socket: Rc<UdpEndpoint>, local: Local) {
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut out = vec![0u8; OUT_BUF];
        loop {
            let (res, b) = socket.recv(buf).await;
            buf = b;
            match res {
                Ok(r) if local == Local::Listener && self.hand_over(&r.meta, &buf[..r.len]) => {}
                Ok(r) => {
                    self.follow_drain();
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
                    self.nudge_driver();
                }
                // ICMP port unreachable from a client that went away surfaces here on Linux.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "TFTP receive failed");
                    if local != Local::Listener {
                        return;
                    }
                }
            }
        }
    }

    /// Sends everything the engine has to send, then handles its events.
    async fn flush(self: &Rc<Self>, out: &mut [u8]) {
        loop {
            let now = Instant::now();
            let polled = self
                .engine
                .borrow_mut()
                .poll_transmit_of(now, MAX_DATAGRAMS, out);
            let Some((local, transfer, transmit)) = polled else {
                break;
            };
            self.send(local, transfer, transmit, out, now).await;
        }
        self.handle_events();
    }

    /// Retransmission timeouts (receive tasks answer datagrams themselves). The driver sleeps
    /// until the engine's next deadline, with none until a receive task wakes it
    /// ([`Self::nudge_driver`]), or until a drain begins: no periodic wake-up. The loop's
    /// end takes this task with it.
    async fn drive(self: Rc<Self>) {
        let mut out = vec![0u8; OUT_BUF];
        // Holds the loop open while transfers run after a drain began.
        let busy = self.ctx.drain.busy();
        let mut draining = false;
        loop {
            if self.ctx.drain.fired() && !draining {
                draining = true;
                self.follow_drain();
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
            if draining && self.engine.borrow().active_transfers() == 0 {
                continue;
            }
            let deadline = self.engine.borrow().poll_timeout();
            self.driver_until.set(deadline);
            self.driver_asleep.set(true);
            let woken = std::pin::pin!(self.wake.notified_until(deadline));
            if draining {
                woken.await;
            } else {
                // A drain is seen at once: new requests stop being answered from that moment.
                futures_util::future::select(woken, self.ctx.drain.wait()).await;
            }
            self.driver_asleep.set(false);
        }
    }

    /// After a receive task's flush: wakes the sleeping driver if the engine's next deadline
    /// is now earlier than the one it sleeps until, or if a drain's last transfer ended (one
    /// comparison per datagram; nothing when the driver is awake, since it looks again
    /// before it sleeps).
    fn nudge_driver(&self) {
        if !self.driver_asleep.get() {
            return;
        }
        let engine = self.engine.borrow();
        let earlier = match (engine.poll_timeout(), self.driver_until.get()) {
            (Some(next), Some(until)) => next < until,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let drained = self.ctx.drain.fired() && engine.active_transfers() == 0;
        if earlier || drained {
            self.wake.notify();
        }
    }

    /// The socket a datagram from `local` to `remote` leaves from. A transfer socket is bound
    /// when a transfer first sends from it; when no port is left the engine moves the
    /// transfer to a socket that is open (or ends it) and the datagram leaves from that one.
    fn socket_for(self: &Rc<Self>, local: Local, remote: SocketAddr) -> Option<Rc<UdpEndpoint>> {
        let socket = match local {
            Local::Listener => return self.listener.clone(),
            Local::Socket(socket) => socket,
        };
        if let Some(s) = self.sockets.borrow().get(&socket) {
            return Some(Rc::clone(&s.endpoint));
        }
        // A socket is bound only for a transfer: a last ERROR for one that already ended
        // finds its socket gone.
        self.engine.borrow().transfer_of(local, remote)?;
        let options = UdpOptions {
            send_buffer: Some(1 << 20),
            ..UdpOptions::default()
        };
        let pool = &self.ctx.shared.tftp_ports;
        match pool.bind(self.transfer_ip, &options) {
            Ok((bound, port)) => {
                if !self.ctx.shared.config.server.udp_gso {
                    bound.disable_gso();
                }
                let endpoint = Rc::new(bound);
                let me = Rc::clone(self);
                let task = spawn(me.recv_loop(Rc::clone(&endpoint), local));
                self.sockets.borrow_mut().insert(
                    socket,
                    TransferSocket {
                        endpoint: Rc::clone(&endpoint),
                        recv_task: Some(task),
                        port,
                    },
                );
                self.engine.borrow_mut().socket_opened(socket);
                Some(endpoint)
            }
            Err(e) => {
                let moved = self.engine.borrow_mut().socket_unavailable(
                    socket,
                    pool.draw(),
                    &mut *self.ctx.store.borrow_mut(),
                );
                if let Some(moved) = moved {
                    return self
                        .sockets
                        .borrow()
                        .get(&moved)
                        .map(|s| Rc::clone(&s.endpoint));
                }
                if let Some(held) = self.bind_warnings.borrow_mut().admit(Instant::now()) {
                    tracing::warn!(%socket, error = %e, held_back = held, "no socket for a TFTP transfer");
                }
                None
            }
        }
    }

    /// Sends one transmit of the engine as it is (`UdpEndpoint::send_transmit`: DATA runs by
    /// GSO from the mapping), then counts it, reports progress, or ends the transfer whose
    /// image changed.
    /// `transfer` is the one it is part of, whatever socket it uses, as the engine named it
    /// at the poll (another task may end it while this one waits on the send); `now` is the
    /// poll's time.
    async fn send(
        self: &Rc<Self>,
        local: Local,
        transfer: Option<TransferId>,
        t: Transmit,
        buf: &[u8],
        now: Instant,
    ) {
        if local == Local::Listener && self.listener.is_none() {
            self.send_from_listening_loop(t, buf);
            return;
        }
        let Some(socket) = self.socket_for(local, t.destination) else {
            return;
        };
        match socket.send_transmit(&t, buf, &self.ctx.store).await {
            Ok(n) => {
                if let Payload::Segments { range, .. } = t.payload {
                    self.ctx
                        .shared
                        .metrics
                        .tftp_datagrams(n as u64, range.len());
                    if let (Some(id), Some(live)) = (transfer, self.ctx.shared.recorder.live()) {
                        self.report_progress(live, id, t.destination, range.end, now);
                    }
                }
            }
            Err(SendError::Image(e)) => {
                if let Some(id) = transfer {
                    tracing::warn!(%id, error = %e, "ending TFTP transfer: image changed");
                    let mut store = self.ctx.store.borrow_mut();
                    self.engine.borrow_mut().abort_transfer(
                        id,
                        ServerAbort::FileChanged,
                        &mut *store,
                    );
                }
            }
            Err(e) => {
                tracing::debug!(to = %t.destination, error = %e, "TFTP send failed");
            }
        }
    }

    /// On a loop without the listener: a datagram from it (an ERROR, for a refused request
    /// or a transfer out of ports) goes to loop 0, which holds it. Nothing but single
    /// datagrams leaves from the listener here (DATA runs do only in single-port mode,
    /// whose transfers all stay on loop 0).
    fn send_from_listening_loop(&self, t: Transmit, buf: &[u8]) {
        let (Some(loops), Payload::Bytes { len }) = (self.ctx.loops(), t.payload) else {
            return;
        };
        let Some(bytes) = buf.get(..len) else { return };
        let work = super::handoff::Work::TftpListenerSend {
            service: self.service.get(),
            transmit: t,
            bytes: bytes.to_vec(),
        };
        // Best effort, as any ERROR: a listening loop that is draining or full drops it.
        let _ = loops.inbox(0).send(work);
    }

    /// The live view's progress of transfer `id`, sent up to `at`: at most every
    /// `PROGRESS_EVERY`, and at the end of the file (one `try_send`).
    fn report_progress(
        &self,
        live: &crate::web::live::Tap,
        id: TransferId,
        remote: SocketAddr,
        at: u64,
        now: Instant,
    ) {
        let mut progress = self.progress.borrow_mut();
        let Some((file, size, last, transfer)) = progress.get_mut(&id) else {
            return;
        };
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
        // Sockets no transfer uses any more close, and their ports go back to the pool.
        loop {
            let unused = self.engine.borrow_mut().poll_unused_socket();
            let Some(socket) = unused else { break };
            if let Some(mut s) = self.sockets.borrow_mut().remove(&socket) {
                drop(s.recv_task.take());
                self.ctx.shared.tftp_ports.release(s.port);
            }
        }
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
        let pool = PortPool::new(Some(range));
        let firsts: Vec<u16> = (0..50)
            .map(|_| {
                let order: Vec<u16> = PortPool::order(range, pool.draw()).collect();
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
    fn loops_take_ports_from_one_pool() {
        let range = PortRange {
            lo: 30000,
            hi: 30015,
        };
        let pool = std::sync::Arc::new(PortPool::new(Some(range)));
        // Two event loops at once take the whole range between them, each port once.
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let pool = std::sync::Arc::clone(&pool);
                std::thread::spawn(move || {
                    std::iter::from_fn(|| pool.take(range)).collect::<Vec<u16>>()
                })
            })
            .collect();
        let mut all: Vec<u16> = takers
            .into_iter()
            .flat_map(|t| t.join().expect("taker"))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (30000..=30015).collect::<Vec<_>>());
        assert_eq!(pool.take(range), None, "the range is used up");
        pool.release(Some(30007));
        assert_eq!(pool.take(range), Some(30007));
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
