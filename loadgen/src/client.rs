//! One virtual PXE client: the engine's client machines (DHCP, TFTP, HTTP) driven over real
//! sockets on the platform's event loop, walking a whole boot and checking every byte.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};
use zpxe_engine::Transmit;
use zpxe_engine::dhcp::{BootAnswer, ClientUuid, DhcpClient, DhcpClientConfig, MacAddr};
use zpxe_engine::http::{ClientEvent, HttpClient};
use zpxe_engine::tftp::{ClientConfig as TftpClientConfig, TftpClient};
use zpxe_platform::runtime::{sleep, timeout};
use zpxe_platform::tcp::TcpConn;
use zpxe_platform::udp::{NoImages, UdpEndpoint, UdpOptions};

use crate::client_port::{ClientPort, Listener};
use crate::firmware::Firmware;
use crate::report::{ClientRecord, Outcome, Phase, PhaseRecord};
use crate::script;
use crate::verify::{Check, Expected};

/// Where the boot server is and how clients reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// proxyDHCP port 67 (or the alternate port the server runs on).
    pub dhcp: SocketAddr,
    pub pxe_port: u16,
    /// The TFTP server, for `--only tftp` (else the next-server the DHCP answer names).
    pub tftp: SocketAddr,
    /// The HTTP server, for `--only http` (else the script URL the DHCP answer names).
    pub http: SocketAddr,
    /// What a TFTP client fetches in `--only tftp`, and the HTTP file list in `--only http`.
    pub files: Vec<String>,
}

/// Which legs of the boot a client walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// The whole boot.
    All,
    /// DHCP and 4011 only.
    Dhcp,
    /// TFTP downloads of `Target::files` only.
    Tftp,
    /// HTTP downloads of `Target::files` only.
    Http,
}

/// One client's identity and behaviour.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub index: u32,
    pub firmware: Firmware,
    pub mac: MacAddr,
    pub uuid: ClientUuid,
    /// The client's own address (127.x.y.z on loopback): its relay address and source.
    pub ip: Ipv4Addr,
    /// Send DHCP by broadcast on this device (inside a namespace) instead of as a relay.
    pub broadcast: bool,
    pub seed: u64,
}

/// TFTP options that replace what the firmware profile would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TftpOverride {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
}

/// Settings shared by every client of a run.
#[derive(Debug)]
pub struct RunShared {
    pub tftp_options: Option<TftpOverride>,
    pub target: Target,
    pub only: Only,
    pub expected: std::sync::Arc<Expected>,
    pub start: Instant,
    pub deadline: Instant,
    /// By broadcast: this loop's client-port socket, bound by the first client that needs it.
    pub client_port: std::cell::RefCell<Option<Rc<ClientPort>>>,
}

impl RunShared {
    fn client_port(&self) -> Result<Rc<ClientPort>, String> {
        if let Some(p) = &*self.client_port.borrow() {
            return Ok(Rc::clone(p));
        }
        let port = self.target.dhcp.port();
        let p = ClientPort::bind(if port == 67 { 68 } else { port.wrapping_add(1) })?;
        *self.client_port.borrow_mut() = Some(Rc::clone(&p));
        Ok(p)
    }
}

struct Failure {
    phase: Phase,
    reason: String,
}

fn fail(phase: Phase, reason: impl Into<String>) -> Failure {
    Failure {
        phase,
        reason: reason.into(),
    }
}

/// Walks one boot and returns its record.
pub async fn boot(spec: ClientSpec, shared: Rc<RunShared>) -> ClientRecord {
    let started = Instant::now();
    let mut rec = ClientRecord {
        client: spec.index,
        profile: spec.firmware.name().to_owned(),
        start: started.saturating_duration_since(shared.start),
        phases: Vec::new(),
        outcome: Outcome::Booted,
        byte_errors: 0,
        answers: Vec::new(),
    };
    let budget = shared.deadline.saturating_duration_since(Instant::now());
    let result = match timeout(budget, walk(&spec, &shared, &mut rec)).await {
        Some(r) => r,
        None => Err(fail(
            rec.phases.last().map_or(Phase::Dhcp, |p| p.phase),
            "run time limit reached",
        )),
    };
    let end = Instant::now().saturating_duration_since(shared.start);
    rec.phases.push(PhaseRecord {
        phase: Phase::Total,
        start: rec.start,
        end,
        bytes: rec.phases.iter().map(|p| p.bytes).sum(),
        retransmits: rec.phases.iter().map(|p| p.retransmits).sum(),
    });
    if let Err(f) = result {
        rec.outcome = Outcome::Failed {
            phase: f.phase,
            reason: f.reason,
        };
    }
    rec
}

async fn walk(
    spec: &ClientSpec,
    shared: &RunShared,
    rec: &mut ClientRecord,
) -> Result<(), Failure> {
    match shared.only {
        Only::Tftp => {
            for file in &shared.target.files {
                tftp_phase(spec, shared, rec, shared.target.tftp, file).await?;
            }
            return Ok(());
        }
        Only::Http => {
            let urls: Vec<String> = shared
                .target
                .files
                .iter()
                .map(|f| {
                    format!(
                        "http://{}/{}",
                        shared.target.http,
                        f.trim_start_matches('/')
                    )
                })
                .collect();
            return http_fetch_all(spec, shared, rec, &urls, Phase::Http).await;
        }
        Only::Dhcp | Only::All => {}
    }
    let via = dhcp_via(spec, shared).map_err(|e| fail(Phase::Dhcp, e))?;
    let answer = dhcp_phase(spec, shared, rec, &via, false).await?;
    // Closed while the loader downloads (by broadcast: no longer listening for this client).
    drop(via);
    if shared.only == Only::Dhcp {
        return Ok(());
    }
    if answer.boot_file.is_empty() {
        return Err(fail(Phase::Dhcp, "the server named no boot file"));
    }
    let tftp = SocketAddr::new(IpAddr::V4(answer.next_server), shared.target.tftp.port());
    tftp_phase(spec, shared, rec, tftp, &answer.boot_file).await?;
    // The loader (iPXE) starts and asks again, now as iPXE, from a socket of its own.
    let via = dhcp_via(spec, shared).map_err(|e| fail(Phase::IpxeDhcp, e))?;
    let ipxe = dhcp_phase(spec, shared, rec, &via, true).await?;
    drop(via);
    let script_url = ipxe.boot_file;
    if !script_url.starts_with("http://") {
        return Err(fail(
            Phase::IpxeDhcp,
            format!("iPXE got {script_url:?} instead of a script URL (boot loop)"),
        ));
    }
    let t0 = Instant::now();
    let (authority, path) = script::split_url(&script_url)
        .ok_or_else(|| fail(Phase::Script, format!("bad script URL {script_url}")))?;
    let server: SocketAddr = authority.parse().map_err(|_| {
        fail(
            Phase::Script,
            format!("script host {authority} is not an address"),
        )
    })?;
    let mut conn = HttpConn::connect(spec.ip, server)
        .await
        .map_err(|e| fail(Phase::Script, e))?;
    let body = conn
        .get_bytes(&path, &authority)
        .await
        .map_err(|e| fail(Phase::Script, e))?;
    record(rec, shared, Phase::Script, t0, body.len() as u64, 0);
    let text = String::from_utf8(body).map_err(|_| fail(Phase::Script, "script is not UTF-8"))?;
    let plan = script::plan(&text, &spec.mac.to_string()).map_err(|e| fail(Phase::Script, e))?;
    if !plan.boots {
        return Err(fail(Phase::Script, "the script exits without booting"));
    }
    let mut conns: HashMap<String, HttpConn> = HashMap::new();
    conns.insert(authority, conn);
    let t0 = Instant::now();
    let mut bytes = 0;
    for f in &plan.fetches {
        let got = fetch_verified(spec, shared, rec, &mut conns, &f.url).await;
        match got {
            Ok(n) => bytes += n,
            Err(e) if f.required => return Err(fail(Phase::Http, e)),
            Err(_) => {}
        }
    }
    record(rec, shared, Phase::Http, t0, bytes, 0);
    Ok(())
}

fn record(
    rec: &mut ClientRecord,
    shared: &RunShared,
    phase: Phase,
    t0: Instant,
    bytes: u64,
    retransmits: u64,
) {
    rec.phases.push(PhaseRecord {
        phase,
        start: t0.saturating_duration_since(shared.start),
        end: Instant::now().saturating_duration_since(shared.start),
        bytes,
        retransmits,
    });
}

/// How a client's DHCP leaves and its answers come back.
enum Via {
    /// As a relay agent: a socket of its own on its own address and the server's DHCP port,
    /// where the server answers relays.
    Relay(UdpEndpoint),
    /// By broadcast: the loop's shared client port, listening for this client's MAC.
    Broadcast(Rc<ClientPort>, Listener),
}

fn dhcp_via(spec: &ClientSpec, shared: &RunShared) -> Result<Via, String> {
    if spec.broadcast {
        let port = shared.client_port()?;
        let listener = port.listen(spec.mac);
        return Ok(Via::Broadcast(port, listener));
    }
    // SO_REUSEPORT: dnsmasq (with bind-interfaces) holds the wildcard address on its DHCP
    // port with SO_REUSEPORT/SO_REUSEADDR; this lets a relay address share the port.
    let addr = SocketAddr::new(IpAddr::V4(spec.ip), shared.target.dhcp.port());
    let options = UdpOptions {
        reuse_port: true,
        ..UdpOptions::default()
    };
    UdpEndpoint::bind(addr, &options)
        .map(Via::Relay)
        .map_err(|e| format!("bind {addr}: {e}"))
}

async fn dhcp_phase(
    spec: &ClientSpec,
    shared: &RunShared,
    rec: &mut ClientRecord,
    via: &Via,
    ipxe: bool,
) -> Result<BootAnswer, Failure> {
    let socket = match via {
        Via::Relay(s) => s,
        Via::Broadcast(port, _) => port.socket(),
    };
    let phase = if ipxe { Phase::IpxeDhcp } else { Phase::Dhcp };
    let fw = spec.firmware;
    let t0 = Instant::now();
    let config = DhcpClientConfig {
        mac: spec.mac,
        uuid: Some(spec.uuid),
        arch: fw.arch(),
        vendor_class: fw.vendor_class(),
        ipxe,
        relay: (!spec.broadcast).then_some(spec.ip),
        server: shared.target.dhcp,
        pxe_port: shared.target.pxe_port,
        timeout: fw.dhcp_timeout(),
        retries: 4,
        request_4011: fw.asks_4011(),
        rng_seed: spec.seed ^ u64::from(ipxe),
        client_ip: Some(if spec.broadcast {
            local_ip_towards(shared.target.dhcp).unwrap_or(spec.ip)
        } else {
            spec.ip
        }),
    };
    let mut m = DhcpClient::new(t0, config);
    let mut buf = vec![0u8; 1500];
    let mut rbuf = Vec::with_capacity(2048);
    let mut pxe: Option<UdpEndpoint> = None;
    loop {
        let now = Instant::now();
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
        }
        while let Some(t) = m.poll_transmit(now, &mut buf) {
            // By broadcast, several clients share the client port and a unicast reply would
            // reach only one of them: the 4011 exchange gets a port of its own (EDK2 uses 4011).
            if spec.broadcast && t.destination.port() == shared.target.pxe_port {
                if pxe.is_none() {
                    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
                    let s = UdpEndpoint::bind(any, &UdpOptions::default())
                        .map_err(|e| fail(phase, format!("bind a 4011 socket: {e}")))?;
                    pxe = Some(s);
                }
                if let Some(p) = &pxe {
                    send_bytes(p, &t, &buf).await;
                }
            } else {
                send_bytes(socket, &t, &buf).await;
            }
        }
        if let Some(outcome) = m.outcome() {
            record(rec, shared, phase, t0, 0, u64::from(m.retransmits()));
            if let Ok(a) = &outcome {
                rec.answers.push(format!(
                    "{phase}: next-server {} file {} via-4011 {}",
                    a.next_server, a.boot_file, a.via_4011
                ));
            }
            // An address server (zpxe's server mode) acked an address: reported so a storm
            // can be checked for duplicates.
            if let Some(ip) = m.leased() {
                rec.answers.push(format!("{phase}: leased {ip}"));
            }
            return outcome.map_err(|e| fail(phase, e.to_string()));
        }
        let wait = m.poll_timeout().map_or(Duration::from_secs(1), |d| {
            d.saturating_duration_since(Instant::now())
        });
        // Once the 4011 socket exists the answer comes there, and only there is listened to.
        // Listening on both would drop a receive in flight whenever the other finished first
        // (the shared client port sees every other client's broadcast offers), and a receive
        // dropped after the kernel completed it loses its datagram.
        // The shared client port's inbox is a queue: a wait that times out loses nothing.
        if let (None, Via::Broadcast(_, listener)) = (&pxe, via) {
            if let Some((data, from)) = timeout(wait, listener.recv()).await {
                m.handle_datagram(Instant::now(), from, &data);
            }
            continue;
        }
        let listen = pxe.as_ref().unwrap_or(socket);
        let got = timeout(wait, listen.recv(rbuf)).await;
        match got {
            Some((Ok(r), b)) => {
                m.handle_datagram(Instant::now(), r.meta.remote, &b[..r.len]);
                rbuf = b;
            }
            Some((Err(_), b)) => rbuf = b,
            None => rbuf = Vec::with_capacity(2048),
        }
    }
}

/// The address this host sends from towards `server` (a connected UDP socket sends nothing).
fn local_ip_towards(server: SocketAddr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect(server).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

/// Sends what a client machine polled (client sockets have no `IP_PKTINFO`: the OS picks the
/// source). A lost send is the machine's to retransmit, as a lost datagram would be.
async fn send_bytes(socket: &UdpEndpoint, t: &Transmit, buf: &[u8]) {
    let _ = socket.send_transmit(t, buf, &NoImages).await;
}

async fn tftp_phase(
    spec: &ClientSpec,
    shared: &RunShared,
    rec: &mut ClientRecord,
    server: SocketAddr,
    file: &str,
) -> Result<(), Failure> {
    // Looked up before the clock starts: with a reference root the first lookup hashes a file.
    let expected = shared.expected.digest(file);
    let t0 = Instant::now();
    let mut bytes = 0;
    let mut retransmits = 0;
    let mut requests = spec.firmware.tftp_requests(file);
    if let Some(o) = shared.tftp_options {
        requests = vec![TftpClientConfig {
            blksize: o.blksize,
            windowsize: o.windowsize,
            tsize: o.tsize,
            msftwindow: false,
            abort_after_oack: false,
            ..requests
                .pop()
                .unwrap_or_else(|| zpxe_engine::tftp::ClientProfile::Plain.config(file))
        }];
    }
    for config in requests {
        let probe = config.abort_after_oack;
        let (n, r) = tftp_once(spec, server, config)
            .await
            .map_err(|e| fail(Phase::Tftp, format!("{file}: {e}")))?;
        retransmits += r;
        if probe {
            continue;
        }
        bytes += n.len();
        match n.matches(expected) {
            Some(true) => {}
            Some(false) => {
                rec.byte_errors += 1;
                return Err(fail(
                    Phase::Tftp,
                    format!("{file}: bytes differ from the manifest"),
                ));
            }
            None => {
                return Err(fail(
                    Phase::Tftp,
                    format!("{file}: not in the manifest, cannot verify"),
                ));
            }
        }
    }
    record(rec, shared, Phase::Tftp, t0, bytes, retransmits);
    Ok(())
}

/// One TFTP request on a fresh socket (real firmware opens a new port for each).
async fn tftp_once(
    spec: &ClientSpec,
    server: SocketAddr,
    config: TftpClientConfig,
) -> Result<(Check, u64), String> {
    let local = if server.ip().is_loopback() {
        IpAddr::V4(spec.ip)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let socket = UdpEndpoint::bind(
        SocketAddr::new(local, 0),
        &UdpOptions {
            recv_buffer: Some(1 << 20),
            // A window sent with GSO arrives in one receive instead of one per block.
            gro: true,
            ..UdpOptions::default()
        },
    )
    .map_err(|e| format!("bind: {e}"))?;
    let mut m = TftpClient::new(Instant::now(), server, config);
    let mut check = Deferred::default();
    let mut buf = vec![0u8; 2048];
    // One timer, re-armed only when it fires: every datagram moves the machine's deadline, and
    // arming a timer per datagram would cost more than the datagram.
    let mut timer = Box::pin(sleep(
        m.poll_timeout().map_or(Duration::from_secs(1), |d| {
            d.saturating_duration_since(Instant::now())
        }),
    ));
    // One receive stays posted across timer wake-ups: dropping a receive the kernel already
    // completed would lose that datagram (and cost a retransmission).
    let mut recv = std::pin::pin!(socket.recv(check.buffer()));
    loop {
        answer(&mut m, &socket, &mut buf, &mut check).await;
        if let Some(result) = m.outcome() {
            let stats = m.stats();
            return result
                .map(|_| (check.finish(), stats.retransmits))
                .map_err(|e| e.to_string());
        }
        match select(recv.as_mut(), timer.as_mut()).await {
            Either::Left(((res, b), _)) => {
                let mut delivered = check.block_list();
                if let Ok(r) = res {
                    let now = Instant::now();
                    for d in r.datagrams() {
                        let datagram = &b[d.clone()];
                        if let Some(got) = m.handle_datagram(now, r.meta.remote, datagram) {
                            let range = got.range.start + d.start..got.range.end + d.start;
                            delivered.push((got.offset, range));
                        }
                        // Answer at the datagram the machine answers, even mid-run.
                        answer(&mut m, &socket, &mut buf, &mut check).await;
                    }
                }
                check.hold(b, delivered);
                recv.set(socket.recv(check.buffer()));
            }
            Either::Right(((), _)) => {
                check.catch_up();
                let now = Instant::now();
                if m.poll_timeout().is_some_and(|t| t <= now) {
                    m.handle_timeout(now);
                }
                let next = m
                    .poll_timeout()
                    .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
                timer = Box::pin(sleep(next));
            }
        }
    }
}

/// Sends what the TFTP client machine has to send; once an ACK is out, checks the blocks held
/// back for it while the server works on the next window.
async fn answer(m: &mut TftpClient, socket: &UdpEndpoint, buf: &mut [u8], check: &mut Deferred) {
    let now = Instant::now();
    let mut answered = false;
    while let Some(t) = m.poll_transmit(now, buf) {
        send_bytes(socket, &t, buf).await;
        answered = true;
    }
    if answered {
        check.catch_up();
    }
}

/// A delivered block: its offset in the file and its bytes' place in a receive buffer.
type Block = (u64, std::ops::Range<usize>);

/// The check of a TFTP download, run off the critical path: blocks are hashed after the ACK
/// they earn has gone out, while the server prepares the next window, instead of between the
/// last block of a window and its ACK. Receive buffers with unchecked blocks are held (a few
/// at most: every ACK and every fourth buffer catch up).
#[derive(Default)]
struct Deferred {
    check: Check,
    held: Vec<(Vec<u8>, Vec<Block>)>,
    /// Emptied receive buffers and block lists, reused: nothing is allocated per receive.
    free: Vec<Vec<u8>>,
    free_lists: Vec<Vec<Block>>,
}

impl Deferred {
    const MAX_HELD: usize = 4;

    /// A receive buffer that holds a run of 64 KiB (GRO) datagrams.
    fn buffer(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(65_536))
    }

    /// An empty list for the blocks one receive delivers.
    fn block_list(&mut self) -> Vec<Block> {
        self.free_lists.pop().unwrap_or_default()
    }

    /// Keeps `buf` until its delivered blocks (offset, bytes in `buf`) are checked.
    fn hold(&mut self, buf: Vec<u8>, delivered: Vec<Block>) {
        if delivered.is_empty() {
            self.free.push(buf);
            self.free_lists.push(delivered);
            return;
        }
        self.held.push((buf, delivered));
        if self.held.len() >= Self::MAX_HELD {
            self.catch_up();
        }
    }

    /// Checks every held block, in arrival order.
    fn catch_up(&mut self) {
        for (buf, mut delivered) in self.held.drain(..) {
            for (offset, range) in delivered.drain(..) {
                if let Some(bytes) = buf.get(range) {
                    self.check.update(offset, bytes);
                }
            }
            self.free.push(buf);
            self.free_lists.push(delivered);
        }
    }

    fn finish(mut self) -> Check {
        self.catch_up();
        self.check
    }
}

async fn http_fetch_all(
    spec: &ClientSpec,
    shared: &RunShared,
    rec: &mut ClientRecord,
    urls: &[String],
    phase: Phase,
) -> Result<(), Failure> {
    // Warm the expected digests before the clock starts (a reference root hashes a file on
    // its first lookup).
    for url in urls {
        if let Some((_, path)) = script::split_url(url)
            && !path.contains('?')
        {
            let _ = shared.expected.digest(&url_file_name(&path));
        }
    }
    let t0 = Instant::now();
    let mut conns = HashMap::new();
    let mut bytes = 0;
    for url in urls {
        bytes += fetch_verified(spec, shared, rec, &mut conns, url)
            .await
            .map_err(|e| fail(phase, e))?;
    }
    record(rec, shared, phase, t0, bytes, 0);
    Ok(())
}

/// Downloads `url` over a kept-alive connection and checks it against the expected digest
/// (report URLs, which are not files, only need a 2xx).
async fn fetch_verified(
    spec: &ClientSpec,
    shared: &RunShared,
    rec: &mut ClientRecord,
    conns: &mut HashMap<String, HttpConn>,
    url: &str,
) -> Result<u64, String> {
    let (authority, path) = script::split_url(url).ok_or_else(|| format!("bad URL {url}"))?;
    if !conns.contains_key(&authority) {
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| format!("{authority} is not an address"))?;
        conns.insert(authority.clone(), HttpConn::connect(spec.ip, addr).await?);
    }
    let conn = conns.get_mut(&authority).ok_or("no connection")?;
    let is_report = path.contains('?');
    let (check, status) = conn.get_checked(&path, &authority).await?;
    if !(200..300).contains(&status) {
        return Err(format!("{url}: HTTP {status}"));
    }
    if is_report {
        return Ok(0);
    }
    let n = check.len();
    match check.matches(shared.expected.digest(&url_file_name(&path))) {
        Some(true) => Ok(n),
        Some(false) => {
            rec.byte_errors += 1;
            Err(format!("{url}: bytes differ from the manifest"))
        }
        None => Err(format!("{url}: not in the manifest, cannot verify")),
    }
}

/// The file a URL path names below the root: the query cut off, percent-decoded.
fn url_file_name(path: &str) -> String {
    let file = path.split('?').next().unwrap_or(path);
    zpxe_engine::path::percent_decode(file).unwrap_or_else(|_| file.to_owned())
}

/// An HTTP/1.1 client connection: the engine's `HttpClient` over a platform TCP connection.
struct HttpConn {
    tcp: TcpConn,
    machine: HttpClient,
    rbuf: Vec<u8>,
    events: Vec<ClientEvent>,
}

impl HttpConn {
    async fn connect(local: Ipv4Addr, server: SocketAddr) -> Result<Self, String> {
        let tcp = if server.ip().is_loopback() {
            TcpConn::connect_from(IpAddr::V4(local), server).await
        } else {
            TcpConn::connect(server).await
        }
        .map_err(|e| format!("connect {server}: {e}"))?;
        Ok(Self {
            tcp,
            machine: HttpClient::new(1),
            rbuf: Vec::with_capacity(256 * 1024),
            events: Vec::new(),
        })
    }

    async fn get_bytes(&mut self, path: &str, host: &str) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        let status = self
            .get(path, host, |_, bytes| body.extend_from_slice(bytes))
            .await?;
        if status != 200 {
            return Err(format!("GET {path}: HTTP {status}"));
        }
        Ok(body)
    }

    async fn get_checked(&mut self, path: &str, host: &str) -> Result<(Check, u16), String> {
        let mut check = Check::new();
        let status = self
            .get(path, host, |offset, bytes| check.update(offset, bytes))
            .await?;
        Ok((check, status))
    }

    async fn get(
        &mut self,
        path: &str,
        host: &str,
        mut sink: impl FnMut(u64, &[u8]),
    ) -> Result<u16, String> {
        let id = self.machine.get(path, host, None);
        let mut wbuf = vec![0u8; 4096];
        while let Some(n) = self.machine.poll_transmit(&mut wbuf) {
            let (r, b) = self.tcp.write_prefix(wbuf, n).await;
            wbuf = b;
            r.map_err(|e| format!("send: {e}"))?;
        }
        let mut status = 0;
        loop {
            let (r, b) = self.tcp.read(std::mem::take(&mut self.rbuf)).await;
            self.rbuf = b;
            let n = r.map_err(|e| format!("receive: {e}"))?;
            self.events.clear();
            if n == 0 {
                self.machine
                    .handle_eof(&mut self.events)
                    .map_err(|e| format!("{path}: {e}"))?;
            } else {
                self.machine
                    .handle_input(&self.rbuf[..n], &mut self.events)
                    .map_err(|e| format!("{path}: {e}"))?;
            }
            for ev in self.events.drain(..) {
                match ev {
                    ClientEvent::Response {
                        request, status: s, ..
                    } if request == id => {
                        status = s.0;
                    }
                    ClientEvent::Delivered {
                        request,
                        offset,
                        range,
                    } if request == id => {
                        if let Some(bytes) = self.rbuf.get(range) {
                            sink(offset, bytes);
                        }
                    }
                    ClientEvent::Finished { request } if request == id => return Ok(status),
                    ClientEvent::Closed { .. } => {
                        return Err(format!("{path}: the server closed the connection"));
                    }
                    _ => {}
                }
            }
            if n == 0 {
                return Err(format!(
                    "{path}: connection closed before the response ended"
                ));
            }
        }
    }
}
