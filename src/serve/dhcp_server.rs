//! The DHCP server service (`dhcp.mode = "server"`): the engine's `DhcpServer` on UDP 67, its
//! leases in the database (src/db/leases.rs; with SQLite a file of their own beside it). 4011
//! stays with the proxy responder (src/serve/dhcp.rs), for clients that ask a boot server there
//! anyway.
//!
//! One engine per process, on loop 0, shared by the sockets of every listen address and
//! device, so two interfaces can never hand out one address twice. Stored leases are loaded
//! before the first socket is bound.
//!
//! An ACK leaves only once its lease is written:
//! - SQLite: the journal task appends the commit to the lease journal (src/db/journal.rs) on
//!   this loop, by the loop's driver, and releases the ACK when that write completes; the lease
//!   writer then brings the lease file up to date behind it. No thread hop on the ACK's path.
//! - PostgreSQL (leases shared by several servers): the receive task hands the commit to the
//!   lease writer (`LeaseStore::submit`, never blocking) and goes on; the completion task wakes
//!   when the writer reports it committed and sends the replies the engine then releases.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::hash::BuildHasher;
use zpxe_engine::dhcp::server::{DhcpServerConfig, ServerEvent};
use zpxe_engine::dhcp::{DhcpEvent, DhcpPort, DhcpServer};
use zpxe_platform::append::LoopFile;
use zpxe_platform::icmp::Pinger;
use zpxe_platform::runtime::{Notify, spawn};
use zpxe_platform::udp::{NoImages, Received, UdpEndpoint, UdpOptions};

use super::ThreadCtx;
use super::receivers::{Answer, Receivers};
use crate::config::Config;
use crate::db::journal;
use crate::db::leases::{LeaseStore, Row};
use crate::metrics::Metrics;

const BUF: usize = 4096;

/// The engine, the lease writer and the sockets, shared by every socket's receive task.
pub(crate) struct Core {
    engine: RefCell<DhcpServer>,
    /// The reload generation whose boot policy `engine` answers with.
    generation: std::cell::Cell<u64>,
    store: LeaseStore,
    ctx: Rc<ThreadCtx>,
    /// Sockets by the interface index requests arrived on, to answer from the same one.
    by_ifindex: RefCell<HashMap<u32, Rc<UdpEndpoint>>>,
    sockets: RefCell<Vec<Rc<UdpEndpoint>>>,
    /// The conflict check's ICMP socket and the echoes awaiting replies (`dhcp.conflict-check-ms`).
    conflicts: Option<ConflictCheck>,
    /// SQLite: the lease journal this loop appends each commit to before it ACKs.
    journal: Option<Journal>,
}

/// The loop's side of the lease journal (src/db/journal.rs): one write in flight at a time;
/// commits made meanwhile go out together in the next one.
struct Journal {
    files: [LoopFile; 2],
    /// The file written now, and where its next frame goes.
    active: std::cell::Cell<usize>,
    offset: std::cell::Cell<u64>,
    /// Commits waiting for the next write: sequence number and rows.
    pending: RefCell<Vec<(u64, Vec<Row>)>>,
    wake: Notify,
    /// A commit failed to reach the writer: its file is never left (so never emptied).
    stuck: std::cell::Cell<bool>,
}

/// The echoes the conflict check sent: by sequence number (drawn at random, so an answer
/// must carry one of ours), the address and when.
struct ConflictCheck {
    pinger: Rc<Pinger>,
    sent: RefCell<HashMap<u16, (std::net::Ipv4Addr, Instant)>>,
    random: std::hash::RandomState,
    draws: std::cell::Cell<u64>,
    /// Wakes the timer task when an offer starts waiting for its check.
    wake: Notify,
}

/// Echoes awaiting a reply at most (the engine checks at most 256 addresses at once; older
/// entries are dropped first).
const MAX_ECHOES: usize = 1024;

impl ConflictCheck {
    fn seq(&self) -> u16 {
        let n = self.draws.get();
        self.draws.set(n + 1);
        self.random.hash_one(n) as u16
    }
}

/// The server's settings from the configuration.
pub(crate) fn server_config(config: &Config) -> DhcpServerConfig {
    let proxy = super::proxy_config(config);
    let d = &config.dhcp;
    DhcpServerConfig {
        policy: proxy.policy,
        http_port: proxy.http_port,
        server_ip: proxy.server_ip,
        dhcp_port: config.ports.dhcp,
        pools: d.pool.clone(),
        reservations: d.reservation.clone(),
        lease_time: Duration::from_secs(u64::from(d.lease_time_secs)),
        offer_hold: Duration::from_secs(u64::from(d.offer_hold_secs)),
        decline_hold: Duration::from_secs(u64::from(d.decline_hold_secs)),
        relays: d.relays.clone(),
        conflict_check: (d.conflict_check_ms > 0)
            .then(|| Duration::from_millis(d.conflict_check_ms)),
    }
}

impl Core {
    /// Opens the lease table, loads the stored leases and starts the lease writer. Blocking:
    /// runs while the loop sets up, before it serves.
    pub(crate) fn open(ctx: &Rc<ThreadCtx>) -> anyhow::Result<Rc<Self>> {
        let config = &ctx.shared.config;
        if !config.database.enabled {
            anyhow::bail!(
                "dhcp.mode = \"server\" keeps its leases in the database, and the database is \
                 off (database.enabled = false or --no-database): turn it on, or run zpxe as a \
                 proxy beside another DHCP server"
            );
        }
        let url = config.database.url.get_ref();
        let (backend, stored) = crate::db::leases::open(url)
            .map_err(|e| anyhow::anyhow!("opening the lease table: {e:#}"))?;
        let mut engine = DhcpServer::new(server_config(config));
        if let Some(registry) = &ctx.shared.registry {
            engine.set_overrides(std::sync::Arc::new(super::registry::RegistryOverrides(
                std::sync::Arc::clone(registry),
            )));
        }
        let now = Instant::now();
        let restored = engine.restore(now, &stored);
        let live = engine.table().bound_count(now);
        tracing::info!(
            stored = stored.len(),
            restored,
            live,
            pools = config.dhcp.pool.len(),
            "DHCP server: leases loaded"
        );
        let conflicts = match config.dhcp.conflict_check_ms {
            0 => None,
            ms => {
                let random = std::hash::RandomState::new();
                let pinger = Pinger::open(random.hash_one("icmp id") as u16)?;
                tracing::info!(wait_ms = ms, "DHCP server: conflict check on (ICMP echo)");
                Some(ConflictCheck {
                    pinger: Rc::new(pinger),
                    sent: RefCell::default(),
                    random,
                    draws: std::cell::Cell::new(0),
                    wake: Notify::new(),
                })
            }
        };
        let journal = match backend.journal_paths() {
            Some(paths) => Some(Journal {
                files: [LoopFile::open(&paths[0])?, LoopFile::open(&paths[1])?],
                active: std::cell::Cell::new(0),
                offset: std::cell::Cell::new(0),
                pending: RefCell::default(),
                wake: Notify::new(),
                stuck: std::cell::Cell::new(false),
            }),
            None => None,
        };
        let store = LeaseStore::spawn(backend)?;
        let core = Rc::new(Self {
            engine: RefCell::new(engine),
            generation: std::cell::Cell::new(ctx.shared.reloader.generation()),
            store,
            ctx: Rc::clone(ctx),
            by_ifindex: RefCell::new(HashMap::new()),
            sockets: RefCell::new(Vec::new()),
            conflicts,
            journal,
        });
        // One task waits on the writer: the completions (PostgreSQL) or the journal.
        let me = Rc::clone(&core);
        if core.journal.is_some() {
            spawn(async move { me.journal_writes().await }).detach();
        } else {
            spawn(async move { me.completions().await }).detach();
        }
        if core.conflicts.is_some() {
            let me = Rc::clone(&core);
            spawn(async move { me.echo_replies().await }).detach();
            let me = Rc::clone(&core);
            spawn(async move { me.check_timeouts().await }).detach();
        }
        Ok(core)
    }

    /// Binds the DHCP port at `addr` (on `device` when given) and starts its receive task.
    pub(crate) fn bind(
        self: &Rc<Self>,
        addr: SocketAddr,
        device: Option<String>,
    ) -> io::Result<SocketAddr> {
        let options = UdpOptions {
            pktinfo: true,
            broadcast: true,
            device,
            recv_buffer: Some(4 << 20),
            send_buffer: Some(1 << 20),
            ..UdpOptions::default()
        };
        let socket = Rc::new(UdpEndpoint::bind(addr, &options)?);
        let local = socket.local_addr();
        self.sockets.borrow_mut().push(Rc::clone(&socket));
        let core = Rc::clone(self);
        let answer = ServerSocket {
            core,
            socket: Rc::clone(&socket),
        };
        Receivers::start(Rc::new(answer), socket);
        tracing::info!(dhcp = %local, "DHCP server: handing out addresses");
        Ok(local)
    }

    /// Takes the boot policy of a reload (`[boot]`, the advertised address) for this and later
    /// requests, as the proxy does; pools and lease times need a restart.
    fn follow_reload(&self) {
        let reloader = &self.ctx.shared.reloader;
        if reloader.generation() != self.generation.get() {
            let settings = reloader.settings();
            let p = &settings.proxy;
            self.engine
                .borrow_mut()
                .set_boot(p.policy.clone(), p.http_port, p.server_ip);
            self.generation.set(settings.generation);
        }
    }

    /// Waits for the lease writer's reports and sends the replies they release. It sleeps
    /// until the writer wakes it (no timer) and ends, like the receive tasks, when the loop
    /// stops and drops it.
    async fn completions(self: Rc<Self>) {
        let mut out = vec![0u8; BUF];
        loop {
            self.store.wait().await;
            let done = self.store.take_done();
            if !done.is_empty() {
                {
                    let mut engine = self.engine.borrow_mut();
                    for (seq, written) in done {
                        engine.committed(seq, written);
                    }
                }
                self.flush(&mut out).await;
            }
        }
    }

    /// Writes the journal: every commit waiting goes out in one write, and once it is in the
    /// file (the page cache) the engine may send their ACKs and the lease writer gets them for
    /// the lease file. A write that fails costs those ACKs (the clients retransmit), not the
    /// loop. A file past [`journal::ROTATE_BYTES`] is left for the other one once the writer
    /// has emptied that, so the journal holds only what the lease file may still lack.
    async fn journal_writes(self: Rc<Self>) {
        let Some(journal) = &self.journal else { return };
        let mut bytes = Vec::new();
        let mut out = vec![0u8; BUF];
        // Swapped with `pending` each pass, so neither is allocated again per write.
        let mut batch: Vec<(u64, Vec<Row>)> = Vec::new();
        loop {
            if journal.pending.borrow().is_empty() {
                journal.wake.notified().await;
                continue;
            }
            // The lease file is far behind: wait for the writer (commits wait in `pending`,
            // and past the engine's bound on unconfirmed commits REQUESTs go unanswered).
            self.store.until_admits().await;
            std::mem::swap(&mut batch, &mut *journal.pending.borrow_mut());
            bytes.clear();
            for (seq, rows) in &batch {
                journal::encode(*seq, rows, &mut bytes);
            }
            let active = journal.active.get();
            if journal.offset.get() >= journal::ROTATE_BYTES
                && !journal.stuck.get()
                && self.store.journal_clean(1 - active)
                && self.store.swap_journal(active, 1 - active)
            {
                journal.active.set(1 - active);
                journal.offset.set(0);
            }
            let (file, at) = (journal.active.get(), journal.offset.get());
            let (res, b) = journal.files[file].write_all_at(bytes, at).await;
            bytes = b;
            {
                let mut engine = self.engine.borrow_mut();
                match res {
                    Ok(()) => {
                        journal.offset.set(at + bytes.len() as u64);
                        for (seq, rows) in batch.drain(..) {
                            // A commit the writer did not take stays in the journal for the
                            // next start, so the ACK may still go; but this file must then
                            // never be emptied.
                            if !self.store.submit_journaled(seq, rows) && !journal.stuck.get() {
                                tracing::warn!(
                                    "the lease writer took no commit: the lease journal keeps growing until a restart applies it"
                                );
                                journal.stuck.set(true);
                            }
                            engine.committed(seq, true);
                        }
                    }
                    Err(e) => {
                        // The next write goes to the same place, over whatever part landed.
                        tracing::warn!(error = %e, commits = batch.len(), "writing the lease journal failed: those REQUESTs go unanswered");
                        for (seq, _) in batch.drain(..) {
                            engine.committed(seq, false);
                        }
                    }
                }
            }
            self.flush(&mut out).await;
        }
    }

    /// Replies to the conflict check's echoes: an answer from an address being checked holds
    /// it out (the engine then checks the next one). Anything else costs a lookup.
    async fn echo_replies(self: Rc<Self>) {
        let Some(check) = &self.conflicts else { return };
        let pinger = Rc::clone(&check.pinger);
        let mut buf = Vec::with_capacity(1500);
        let mut out = vec![0u8; BUF];
        loop {
            let (res, b) = pinger.recv(buf).await;
            buf = b;
            match res {
                Ok(Some((from, seq))) => {
                    let ours = check
                        .sent
                        .borrow()
                        .get(&seq)
                        .is_some_and(|(ip, _)| *ip == from);
                    if ours {
                        check.sent.borrow_mut().remove(&seq);
                        self.engine
                            .borrow_mut()
                            .probe_answered(Instant::now(), from);
                        self.flush(&mut out).await;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "conflict check: ICMP receive failed");
                    zpxe_platform::runtime::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Sends the offers whose conflict checks ran out without an answer. Sleeps until the
    /// engine's next deadline, or until a check starts.
    async fn check_timeouts(self: Rc<Self>) {
        let Some(check) = &self.conflicts else { return };
        let mut out = vec![0u8; BUF];
        loop {
            let deadline = self.engine.borrow().poll_timeout();
            check.wake.notified_until(deadline).await;
            // Sends only the offers now due (none when woken for a new check).
            self.engine.borrow_mut().handle_timeout(Instant::now());
            self.flush(&mut out).await;
        }
    }

    /// Sends an echo to each address the engine wants checked.
    async fn send_probes(&self) {
        let Some(check) = &self.conflicts else { return };
        let mut started = false;
        loop {
            let probe = self.engine.borrow_mut().poll_probe();
            let Some(ip) = probe else { break };
            let now = Instant::now();
            let seq = check.seq();
            {
                let mut sent = check.sent.borrow_mut();
                if sent.len() >= MAX_ECHOES {
                    let stale =
                        Duration::from_millis(self.ctx.shared.config.dhcp.conflict_check_ms);
                    sent.retain(|_, (_, at)| now.saturating_duration_since(*at) <= stale);
                    if sent.len() >= MAX_ECHOES {
                        sent.clear();
                    }
                }
                sent.insert(seq, (ip, now));
            }
            if let Err(e) = check.pinger.echo(ip, seq).await {
                tracing::debug!(%ip, error = %e, "conflict check: echo not sent");
            }
            started = true;
        }
        if started {
            check.wake.notify();
        }
    }

    /// Hands commits to the writer, sends the replies ready, logs and records the events.
    /// Each reply is encoded once, into `buf`; `send_transmit` copies it into a pooled send
    /// buffer.
    async fn flush(&self, buf: &mut [u8]) {
        self.send_probes().await;
        loop {
            let commit = self.engine.borrow_mut().poll_commit();
            let Some(commit) = commit else { break };
            if let Some(journal) = &self.journal {
                let rows = crate::db::leases::rows(&commit.records);
                journal.pending.borrow_mut().push((commit.seq, rows));
                journal.wake.notify();
                continue;
            }
            if !self.store.submit(commit.seq, &commit.records) {
                tracing::warn!("the lease writer is backed up: a REQUEST goes unanswered");
                self.engine.borrow_mut().committed(commit.seq, false);
            }
        }
        loop {
            let polled = self.engine.borrow_mut().poll_transmit(Instant::now(), buf);
            let Some(t) = polled else { break };
            let socket = t
                .ifindex
                .and_then(|i| self.by_ifindex.borrow().get(&i).cloned())
                .or_else(|| self.sockets.borrow().first().cloned());
            let Some(socket) = socket else { break };
            match socket.send_transmit(&t, buf, &NoImages).await {
                Ok(_) => Metrics::add(&self.ctx.shared.metrics.dhcp_replies_total, 1),
                Err(e) => tracing::warn!(to = %t.destination, error = %e, "DHCP reply failed"),
            }
        }
        loop {
            let ev = self.engine.borrow_mut().poll_event();
            let Some(ev) = ev else { break };
            log_event(&ev, &self.ctx.shared.metrics);
            let recorder = &self.ctx.shared.recorder;
            if recorder.enabled()
                && let Some((e, ip)) = timeline_event(&ev)
                && let Some(e) = crate::db::dhcp_event(&e, ip)
            {
                recorder.record(e);
            }
        }
    }
}

/// One socket's receive tasks answer with the server's engine.
struct ServerSocket {
    core: Rc<Core>,
    socket: Rc<UdpEndpoint>,
}

/// A receive task's reply buffer.
struct ServerScratch(Vec<u8>);

impl Default for ServerScratch {
    fn default() -> Self {
        Self(vec![0; BUF])
    }
}

impl Answer for ServerSocket {
    type Scratch = ServerScratch;

    fn handle(
        &self,
        received: io::Result<Received>,
        datagram: &[u8],
        now: Instant,
        _: &mut ServerScratch,
    ) -> bool {
        let core = &self.core;
        let Some(r) = super::dhcp::to_handle(received, &core.ctx) else {
            return false;
        };
        Metrics::add(&core.ctx.shared.metrics.dhcp_requests_total, 1);
        if let Some(i) = r.meta.ifindex {
            // Bounded by the host's interfaces (the index comes from the kernel).
            core.by_ifindex
                .borrow_mut()
                .entry(i)
                .or_insert_with(|| Rc::clone(&self.socket));
        }
        core.follow_reload();
        core.engine
            .borrow_mut()
            .handle_datagram(now, r.meta, datagram);
        true
    }

    async fn flush(&self, scratch: &mut ServerScratch) {
        self.core.flush(&mut scratch.0).await;
    }
}

/// Offers with a boot answer and every ACK join the client's boot timeline, with the address
/// it was given (the one its TFTP and HTTP legs come from).
fn timeline_event(ev: &ServerEvent) -> Option<(DhcpEvent, Option<IpAddr>)> {
    match ev {
        ServerEvent::Offered {
            mac,
            relay,
            boot: Some(boot),
            ..
        } => Some((
            DhcpEvent::Offered {
                mac: *mac,
                uuid: boot.uuid,
                arch: boot.arch,
                boot_file: boot.boot_file.clone(),
                relay: *relay,
                ipxe: boot.ipxe,
            },
            None,
        )),
        ServerEvent::Acked {
            mac,
            ip,
            relay,
            boot,
            ..
        } => Some((
            DhcpEvent::Acked {
                mac: *mac,
                uuid: boot.as_ref().and_then(|b| b.uuid),
                arch: boot.as_ref().and_then(|b| b.arch),
                boot_file: boot
                    .as_ref()
                    .map(|b| b.boot_file.clone())
                    .unwrap_or_default(),
                relay: *relay,
                ipxe: boot.as_ref().is_some_and(|b| b.ipxe),
                port: DhcpPort::Dhcp,
            },
            Some(IpAddr::V4(*ip)),
        )),
        _ => None,
    }
}

fn log_event(ev: &ServerEvent, metrics: &Metrics) {
    let file = |b: &Option<zpxe_engine::dhcp::server::BootInfo>| {
        b.as_ref()
            .map_or_else(|| "-".to_owned(), |b| b.boot_file.clone())
    };
    match ev {
        ServerEvent::Offered {
            mac,
            ip,
            relay,
            boot,
        } => tracing::info!(
            %mac,
            %ip,
            relay = relay.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            boot_file = file(boot),
            "DHCP offer"
        ),
        ServerEvent::Acked {
            mac,
            ip,
            relay,
            lease_secs,
            boot,
        } => tracing::info!(
            %mac,
            %ip,
            relay = relay.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            lease_secs,
            boot_file = file(boot),
            "DHCP ack"
        ),
        ServerEvent::Nak {
            mac,
            requested,
            reason,
        } => tracing::info!(
            %mac,
            requested = requested.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            %reason,
            "DHCP nak"
        ),
        ServerEvent::Released { mac, ip } => tracing::info!(%mac, %ip, "DHCP release"),
        ServerEvent::Declined { mac, ip } => {
            tracing::warn!(%mac, %ip, "DHCP decline: the client found the address in use")
        }
        ServerEvent::Conflict { mac, ip } => {
            Metrics::add(&metrics.dhcp_server_conflicts_total, 1);
            tracing::warn!(%mac, %ip, "DHCP conflict check: something answers at the address; offering another")
        }
        ServerEvent::Informed { mac, ip, .. } => tracing::debug!(%mac, %ip, "DHCP inform"),
        ServerEvent::Ignored { reason, mac } => {
            Metrics::add(&metrics.dhcp_ignored_total, 1);
            let mac = mac.map_or_else(|| "-".to_owned(), |m| m.to_string());
            tracing::debug!(%mac, %reason, "DHCP request ignored");
        }
        other => tracing::debug!(event = ?other, "DHCP"),
    }
}
