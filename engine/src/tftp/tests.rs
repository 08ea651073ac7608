//! TFTP server and client driven together through the simulated network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::image::MemoryCatalog;
use crate::net::{DatagramMeta, Payload};
use crate::sim::{Faults, SimNet};
use crate::tftp::wire::{Emit, ErrorCode, OP_RRQ, OP_WRQ, TftpRepr};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn listener() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_IP), 69)
}

fn local_addr(local: Local) -> SocketAddr {
    match local {
        Local::Listener => listener(),
        Local::Socket(id) => SocketAddr::new(IpAddr::V4(SERVER_IP), 10_000 + id.0 as u16),
    }
}

fn to_local(addr: SocketAddr) -> Option<Local> {
    match addr.port() {
        69 => Some(Local::Listener),
        p if p >= 10_000 => Some(Local::Socket(SocketId(u64::from(p - 10_000)))),
        _ => None,
    }
}

/// The socket of transfer `id` (its own: named after it).
fn at(id: TransferId) -> Local {
    Local::Socket(SocketId(id.0))
}

fn client_addr(n: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, (n % 250) as u8 + 1)),
        2000 + n as u16,
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32) as u8
                ^ seed
        })
        .collect()
}

struct Client {
    addr: SocketAddr,
    machine: TftpClient,
    got: Vec<u8>,
    /// Virtual time the client's outcome was set.
    done_at: Option<Instant>,
}

struct Harness {
    net: SimNet,
    server: TftpServer,
    images: MemoryCatalog,
    clients: Vec<Client>,
    events: Vec<TftpEvent>,
    buf: Vec<u8>,
    max_datagrams: usize,
}

impl Harness {
    fn new(seed: u64, faults: Faults, config: TftpServerConfig) -> Self {
        Self {
            net: SimNet::new(seed, faults),
            server: TftpServer::new(config),
            images: MemoryCatalog::new(),
            clients: Vec::new(),
            events: Vec::new(),
            buf: vec![0u8; 65_536],
            max_datagrams: 64,
        }
    }

    fn add_client(&mut self, n: usize, config: ClientConfig) -> usize {
        let addr = client_addr(n);
        let machine = TftpClient::new(self.net.now(), listener(), config);
        self.clients.push(Client {
            addr,
            machine,
            got: Vec::new(),
            done_at: None,
        });
        self.clients.len() - 1
    }

    /// Runs until every client is done and the server idle, or `limit` of virtual time.
    fn run(&mut self, limit: Duration) {
        let start = self.net.now();
        loop {
            let now = self.net.now();
            assert!(
                now - start <= limit,
                "seed {}: not done after {limit:?} of virtual time",
                self.net.seed
            );
            for c in &mut self.clients {
                if c.done_at.is_none() && c.machine.outcome().is_some() {
                    c.done_at = Some(now);
                }
            }
            if self.server.poll_timeout().is_some_and(|t| t <= now) {
                self.server.handle_timeout(now, &mut self.images);
            }
            for c in &mut self.clients {
                if c.machine.poll_timeout().is_some_and(|t| t <= now) {
                    c.machine.handle_timeout(now);
                }
            }
            while let Some((local, t)) =
                self.server
                    .poll_transmit(now, self.max_datagrams, &mut self.buf)
            {
                self.net
                    .send_transmit(local_addr(local), &t, &self.buf, &self.images);
            }
            while let Some(ev) = self.server.poll_event() {
                self.events.push(ev);
            }
            for c in &mut self.clients {
                while let Some(t) = c.machine.poll_transmit(now, &mut self.buf) {
                    self.net.send_transmit(c.addr, &t, &self.buf, &self.images);
                }
            }
            let mut delivered = false;
            while let Some(d) = self.net.deliver() {
                delivered = true;
                if let Some(local) = to_local(d.to).filter(|_| d.to.ip() == IpAddr::V4(SERVER_IP)) {
                    let meta = DatagramMeta {
                        remote: d.from,
                        local_ip: Some(IpAddr::V4(SERVER_IP)),
                        ifindex: None,
                    };
                    self.server
                        .handle_datagram(now, local, meta, &d.bytes, &mut self.images);
                } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == d.to)
                    && let Some(del) = c.machine.handle_datagram(now, d.from, &d.bytes)
                {
                    {
                        let off = del.offset as usize;
                        let bytes = &d.bytes[del.range];
                        if c.got.len() < off + bytes.len() {
                            c.got.resize(off + bytes.len(), 0);
                        }
                        c.got[off..off + bytes.len()].copy_from_slice(bytes);
                    }
                }
            }
            if delivered {
                // Answers to what just arrived go out at this same instant.
                continue;
            }
            let clients_done = self.clients.iter().all(|c| c.machine.outcome().is_some());
            if clients_done
                && self.server.active_transfers() == 0
                && self.net.next_arrival().is_none()
            {
                while let Some(ev) = self.server.poll_event() {
                    self.events.push(ev);
                }
                return;
            }
            let next = [
                self.net.next_arrival(),
                self.server.poll_timeout(),
                self.clients
                    .iter()
                    .filter_map(|c| c.machine.poll_timeout())
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) => self.net.advance_to(t),
                None if clients_done => {
                    // Clients are done; the server waits for ACKs that will never come.
                    return;
                }
                None => panic!("seed {}: stalled with nothing scheduled", self.net.seed),
            }
        }
    }

    fn outcome(&self, i: usize) -> Result<ClientDone, ClientError> {
        self.clients[i].machine.outcome().expect("client finished")
    }

    fn ended(&self) -> Vec<&TransferOutcome> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TftpEvent::TransferEnded { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    }
}

fn loopback_config() -> TftpServerConfig {
    TftpServerConfig {
        mtu: u16::MAX,
        ..TftpServerConfig::default()
    }
}

fn download(profile: ClientProfile, len: usize, seed: u64, faults: Faults) -> (Harness, Vec<u8>) {
    let mut h = Harness::new(seed, faults, loopback_config());
    let data = pattern(len, seed as u8);
    h.images.insert("boot/loader.efi", data.clone());
    h.add_client(0, profile.config("boot/loader.efi"));
    h.run(Duration::from_secs(600));
    (h, data)
}

#[test]
fn every_firmware_profile_downloads_byte_exact() {
    for profile in [
        ClientProfile::Edk2,
        ClientProfile::Ipxe,
        ClientProfile::Pxelinux,
        ClientProfile::Bios,
        ClientProfile::Bootmgr,
        ClientProfile::Plain,
    ] {
        for len in [0, 1, 511, 512, 1432 * 3, 100_000] {
            let (h, data) = download(profile, len, 7, Faults::NONE);
            let done = h
                .outcome(0)
                .unwrap_or_else(|e| panic!("{profile:?} {len}: {e}"));
            assert_eq!(done.size, len as u64, "{profile:?} {len}");
            assert!(h.clients[0].got == data, "{profile:?} {len}: bytes differ");
            assert_eq!(
                h.images.total_open_refs(),
                0,
                "{profile:?}: image left open"
            );
            assert!(
                matches!(h.ended()[..], [TransferOutcome::Completed { .. }]),
                "{profile:?}"
            );
        }
    }
}

#[test]
fn negotiated_values_match_what_each_firmware_asked() {
    let cases = [
        (ClientProfile::Edk2, 1468, 4, None),
        (ClientProfile::Ipxe, 1432, 1, Some(70_000)),
        (ClientProfile::Pxelinux, 1408, 1, Some(70_000)),
        (ClientProfile::Bios, 1456, 1, Some(70_000)),
        (ClientProfile::Bootmgr, 1456, 8, None),
        (ClientProfile::Plain, 512, 1, None),
    ];
    for (profile, blksize, windowsize, tsize) in cases {
        let (h, _) = download(profile, 70_000, 1, Faults::NONE);
        let done = h.outcome(0).expect("done");
        assert_eq!(
            (done.blksize, done.windowsize, done.tsize),
            (blksize, windowsize, tsize),
            "{profile:?}"
        );
    }
}

#[test]
fn edk2_probe_then_real_request() {
    let mut h = Harness::new(3, Faults::NONE, loopback_config());
    let data = pattern(300_000, 3);
    h.images.insert("ipxe.efi", data.clone());
    h.add_client(0, ClientProfile::Edk2Probe.config("ipxe.efi"));
    h.run(Duration::from_secs(60));
    let probe = h.outcome(0).expect("probe");
    assert_eq!(probe.tsize, Some(300_000));
    assert_eq!(probe.size, 0);
    assert!(
        matches!(
            h.ended()[..],
            [TransferOutcome::Aborted(Abort::Client(
                ClientAbort::Error { code: 8, .. }
            ))]
        ),
        "the probe's ERROR 8 ends the transfer quietly: {:?}",
        h.ended()
    );
    assert_eq!(h.images.total_open_refs(), 0);
    h.add_client(1, ClientProfile::Edk2.config("ipxe.efi"));
    h.run(Duration::from_secs(60));
    assert!(h.outcome(1).is_ok());
    assert!(h.clients[1].got == data);
}

#[test]
fn block_numbers_roll_over_both_ways() {
    for rollover in [Rollover::Zero, Rollover::One] {
        let config = TftpServerConfig {
            rollover,
            ..loopback_config()
        };
        let mut h = Harness::new(11, Faults::NONE, config);
        // blksize 8: 65535 blocks are 524280 bytes; go well past it.
        let data = pattern(8 * 70_000 + 3, 11);
        h.images.insert("big", data.clone());
        let mut c = ClientProfile::Plain.config("big");
        c.blksize = Some(8);
        c.windowsize = Some(16);
        c.rollover = rollover;
        h.add_client(0, c);
        h.run(Duration::from_secs(600));
        assert!(h.outcome(0).is_ok(), "{rollover:?}: {:?}", h.outcome(0));
        assert!(h.clients[0].got == data, "{rollover:?}");
    }
}

#[test]
fn no_oack_when_no_option_is_accepted() {
    let mut h = Harness::new(5, Faults::NONE, loopback_config());
    h.images.insert("f", pattern(1000, 5));
    let mut c = ClientProfile::Plain.config("f");
    c.blksize = Some(4); // invalid: ignored, so nothing is acknowledged
    h.add_client(0, c);
    h.run(Duration::from_secs(30));
    let done = h.outcome(0).expect("done");
    assert_eq!(done.blksize, 512);
}

#[test]
fn blksize_is_clamped_to_the_mtu() {
    let mut h = Harness::new(5, Faults::NONE, TftpServerConfig::default());
    h.images.insert("f", pattern(20_000, 5));
    let mut c = ClientProfile::Plain.config("f");
    c.blksize = Some(8192);
    c.windowsize = Some(500);
    h.add_client(0, c);
    h.run(Duration::from_secs(30));
    let done = h.outcome(0).expect("done");
    assert_eq!((done.blksize, done.windowsize), (1468, 64));
}

#[test]
fn lossy_network_every_window_size_byte_exact() {
    let mut dropped = 0;
    for windowsize in [1u16, 4, 64] {
        for seed in 0..50u64 {
            let mut h = Harness::new(
                seed * 1000 + u64::from(windowsize),
                Faults::LOSSY,
                loopback_config(),
            );
            let data = pattern(40_000 + seed as usize * 97, seed as u8);
            h.images.insert("f", data.clone());
            let mut c = ClientProfile::Plain.config("f");
            c.blksize = Some(1468);
            c.windowsize = Some(windowsize);
            c.retries = 20;
            h.add_client(0, c);
            h.run(Duration::from_secs(3600));
            let seed = h.net.seed;
            assert!(
                h.outcome(0).is_ok(),
                "seed {seed} window {windowsize}: {:?}",
                h.outcome(0)
            );
            assert!(
                h.clients[0].got == data,
                "seed {seed} window {windowsize}: bytes differ"
            );
            dropped += h.net.dropped;
        }
    }
    assert!(
        dropped > 100,
        "the network really lost datagrams ({dropped})"
    );
}

/// Drives the server by hand: RRQ with a window, then ACKs as a test script.
struct Manual {
    server: TftpServer,
    images: MemoryCatalog,
    now: Instant,
    buf: Vec<u8>,
    client: SocketAddr,
    /// Events `rrq_from` read.
    seen: Vec<TftpEvent>,
}

impl Manual {
    fn new(config: TftpServerConfig, len: usize) -> Self {
        let mut images = MemoryCatalog::new();
        images.insert("f", pattern(len, 1));
        Self {
            server: TftpServer::new(config),
            images,
            now: Instant::now(),
            buf: vec![0u8; 65_536],
            client: client_addr(1),
            seen: Vec::new(),
        }
    }

    fn send(&mut self, local: Local, bytes: &[u8]) {
        self.send_from(self.client, local, bytes);
    }

    fn send_from(&mut self, from: SocketAddr, local: Local, bytes: &[u8]) {
        let meta = DatagramMeta::from_remote(from);
        self.server
            .handle_datagram(self.now, local, meta, bytes, &mut self.images);
    }

    fn rrq(&mut self, options: &[(&str, String)]) {
        let mut b = [0u8; 512];
        let n = Emit::request(&mut b, OP_RRQ, "f", "octet", options).expect("emit");
        self.send(Local::Listener, &b[..n]);
    }

    fn ack(&mut self, id: TransferId, block: u16) {
        let mut b = [0u8; 8];
        let n = Emit::ack(&mut b, block, None).expect("emit");
        self.send(at(id), &b[..n]);
    }

    /// Every transmit now, as (local, first wire block or error code, datagram count).
    fn drain(&mut self) -> Vec<(Local, Sent)> {
        let mut out = Vec::new();
        while let Some((local, t)) = self.server.poll_transmit(self.now, 64, &mut self.buf) {
            let sent = match t.payload {
                Payload::Bytes { len } => {
                    match TftpRepr::parse_bytes(&self.buf[..len]).expect("parse") {
                        TftpRepr::Error { code, .. } => Sent::Error(code),
                        TftpRepr::Oack { .. } => Sent::Oack,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                Payload::Segments { count, .. } => {
                    Sent::Data(u16::from_be_bytes([self.buf[2], self.buf[3]]), count)
                }
            };
            out.push((local, sent));
        }
        out
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Oack,
    Data(u16, u16),
    Error(ErrorCode),
}

fn started(m: &mut Manual) -> TransferId {
    while let Some(ev) = m.server.poll_event() {
        if let TftpEvent::TransferStarted { id, .. } = ev {
            return id;
        }
    }
    panic!("no transfer started")
}

#[test]
fn duplicate_acks_never_trigger_duplicate_windows() {
    let mut m = Manual::new(loopback_config(), 1468 * 100);
    m.rrq(&[("blksize", "1468".into()), ("windowsize", "8".into())]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Oack)]);
    m.ack(id, 0);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 8))]);
    m.ack(id, 8);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(9, 8))]);
    // The same ACK again while 9..16 are out: block 9 was lost, resend from it, once.
    m.ack(id, 8);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(9, 8))]);
    // Further copies (duplicated by the network, or the client repeating itself): nothing.
    m.ack(id, 8);
    m.ack(id, 8);
    m.ack(id, 7);
    assert_eq!(m.drain(), vec![]);
}

#[test]
fn early_ack_resends_from_the_block_after_it() {
    let mut m = Manual::new(loopback_config(), 1468 * 100);
    m.rrq(&[("blksize", "1468".into()), ("windowsize", "8".into())]);
    let id = started(&mut m);
    m.drain();
    m.ack(id, 0);
    m.drain();
    // Blocks 4.. were lost: the client acknowledges 3.
    m.ack(id, 3);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(4, 8))]);
}

#[test]
fn timeout_retransmits_then_gives_up_and_closes_the_image() {
    let config = TftpServerConfig {
        retries: 3,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 5000);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    m.ack(id, 1);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(2, 1))]);
    for _ in 0..3 {
        m.now = m.server.poll_timeout().expect("timer");
        m.server.handle_timeout(m.now, &mut m.images);
        assert_eq!(m.drain(), vec![(at(id), Sent::Data(2, 1))]);
    }
    m.now = m.server.poll_timeout().expect("timer");
    m.server.handle_timeout(m.now, &mut m.images);
    assert_eq!(
        m.drain(),
        vec![(at(id), Sent::Error(ErrorCode::NotDefined))]
    );
    assert_eq!(m.server.active_transfers(), 0);
    assert_eq!(m.images.total_open_refs(), 0);
    let ended = std::iter::from_fn(|| m.server.poll_event()).any(|e| {
        matches!(
            e,
            TftpEvent::TransferEnded {
                outcome: TransferOutcome::Aborted(Abort::Client(ClientAbort::TimedOut {
                    retransmits: 3
                })),
                ..
            }
        )
    });
    assert!(ended);
}

#[test]
fn lock_step_acks_keep_one_timer_and_the_deadline_follows_the_last_ack() {
    let config = TftpServerConfig {
        retries: 2,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 512 * 2000);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    for block in 1..=1000u16 {
        m.now += Duration::from_millis(3);
        m.ack(id, block);
        assert_eq!(m.drain(), vec![(at(id), Sent::Data(block + 1, 1))]);
        assert!(
            m.server.timer_entries() <= 2,
            "{} entries",
            m.server.timer_entries()
        );
    }
    // The client goes quiet after ACK 1000: the first resend comes one timeout after that ACK,
    // however early the heap's entry was armed.
    let last_ack = m.now;
    let timeout = Duration::from_millis(loopback_config().timeout_ms);
    let mut resent_at = None;
    for _ in 0..10 {
        m.now = m.server.poll_timeout().expect("timer");
        m.server.handle_timeout(m.now, &mut m.images);
        let sent = m.drain();
        if !sent.is_empty() {
            assert_eq!(sent, vec![(at(id), Sent::Data(1001, 1))]);
            resent_at = Some(m.now);
            break;
        }
    }
    assert_eq!(resent_at, Some(last_ack + timeout));
}

#[test]
fn stranger_gets_error_5_and_transfer_goes_on() {
    let mut m = Manual::new(loopback_config(), 5000);
    m.rrq(&[]);
    let id = started(&mut m);
    m.drain();
    let stranger = client_addr(9);
    let mut b = [0u8; 8];
    let n = Emit::ack(&mut b, 1, None).expect("emit");
    m.send_from(stranger, at(id), &b[..n]);
    assert_eq!(
        m.drain(),
        vec![(at(id), Sent::Error(ErrorCode::UnknownTransferId))]
    );
    m.ack(id, 1);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(2, 1))]);
}

#[test]
fn refusals_answer_with_the_right_error() {
    let mut m = Manual::new(loopback_config(), 10);
    let mut b = [0u8; 512];
    let n = Emit::request(&mut b, OP_WRQ, "f", "octet", &[]).expect("emit");
    m.send(Local::Listener, &b[..n]);
    let n2 = Emit::request(&mut b[256..], OP_RRQ, "missing", "octet", &[]).expect("emit");
    let rrq_missing = b[256..256 + n2].to_vec();
    m.send(Local::Listener, &rrq_missing);
    let n3 = Emit::request(&mut b, OP_RRQ, "../../etc/passwd", "octet", &[]).expect("emit");
    let traversal = b[..n3].to_vec();
    m.send(Local::Listener, &traversal);
    let n4 = Emit::request(&mut b, OP_RRQ, "f", "netascii", &[]).expect("emit");
    let netascii = b[..n4].to_vec();
    m.send(Local::Listener, &netascii);
    m.send(Local::Listener, b"\x00\x01f\x00");
    m.send(Local::Listener, b"\x00");
    let sent: Vec<Sent> = m.drain().into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        sent,
        vec![
            Sent::Error(ErrorCode::AccessViolation),
            Sent::Error(ErrorCode::FileNotFound),
            Sent::Error(ErrorCode::AccessViolation),
            Sent::Error(ErrorCode::IllegalOperation),
            Sent::Error(ErrorCode::IllegalOperation),
        ]
    );
    assert_eq!(m.images.total_open_refs(), 0);
}

fn from(ip: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, ip)), port)
}

impl Manual {
    /// An RRQ for `name` from `from`; the transfer it started, if any.
    fn rrq_from(&mut self, from: SocketAddr, name: &str) -> Option<TransferId> {
        let mut b = [0u8; 512];
        let n = Emit::request(&mut b, OP_RRQ, name, "octet", &[]).expect("emit");
        self.send_from(from, Local::Listener, &b[..n]);
        let mut id = None;
        while let Some(ev) = self.server.poll_event() {
            if let TftpEvent::TransferStarted { id: started, .. } = ev {
                id = Some(started);
            }
            self.seen.push(ev);
        }
        id
    }

    /// The same, and the client acknowledges block 1 (so it showed it receives).
    fn rrq_acked(&mut self, from: SocketAddr) -> TransferId {
        let id = self.rrq_from(from, "f").expect("started");
        assert!(self.drain().contains(&(at(id), Sent::Data(1, 1))));
        let mut b = [0u8; 8];
        let n = Emit::ack(&mut b, 1, None).expect("emit");
        self.send_from(from, at(id), &b[..n]);
        id
    }

    fn events(&mut self) -> Vec<TftpEvent> {
        let mut all = std::mem::take(&mut self.seen);
        all.extend(std::iter::from_fn(|| self.server.poll_event()));
        all
    }
}

#[test]
fn caps_refuse_with_server_busy() {
    let config = TftpServerConfig {
        max_transfers: 3,
        max_transfers_per_client: 2,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 10_000);
    // Every transfer under the caps has acknowledged a block, so none can be evicted.
    let busy = vec![(Local::Listener, Sent::Error(ErrorCode::NotDefined))];
    m.rrq_acked(from(1, 1));
    m.rrq_acked(from(1, 2));
    m.drain();
    // Same IP, third port: over the per-client cap.
    assert_eq!(m.rrq_from(from(1, 3), "f"), None);
    assert_eq!(m.drain(), busy);
    m.rrq_acked(from(2, 5));
    m.drain();
    // Over the global cap.
    assert_eq!(m.rrq_from(from(3, 5), "f"), None);
    assert_eq!(m.drain(), busy);
    assert_eq!(m.server.active_transfers(), 3);
}

#[test]
fn at_a_cap_the_oldest_transfer_without_an_ack_makes_room() {
    let config = TftpServerConfig {
        max_transfers: 3,
        max_transfers_per_client: 2,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 10_000);
    let a = m.rrq_acked(from(1, 1));
    let b = m.rrq_from(from(1, 2), "f").expect("b");
    let c = m.rrq_from(from(2, 5), "f").expect("c");
    m.drain();
    // A request for a missing file makes no room: it is refused for what it is.
    assert_eq!(m.rrq_from(from(4, 5), "missing"), None);
    assert_eq!(
        m.drain().into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        vec![Sent::Error(ErrorCode::FileNotFound)]
    );
    assert_eq!(m.server.active_transfers(), 3);
    // Full, and 10.0.1.1 at its own cap: the oldest unacknowledged transfer (b) goes, however
    // young (a floor let a flood refuse everyone), which also makes room for 10.0.1.1.
    let d = m.rrq_from(from(1, 3), "f").expect("d starts");
    // Full again: the oldest unacknowledged is now c.
    let e = m.rrq_from(from(3, 5), "f").expect("e starts");
    let evicted: Vec<TransferId> = m
        .events()
        .into_iter()
        .filter_map(|ev| match ev {
            TftpEvent::TransferEnded {
                id,
                outcome: TransferOutcome::Aborted(_),
                ..
            } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec![b, c]);
    for id in [a, d, e] {
        assert!(m.server.is_active(id));
    }
    // The evicted peers get nothing (they never showed they receive); d and e get block 1.
    assert_eq!(
        m.drain(),
        vec![(at(d), Sent::Data(1, 1)), (at(e), Sent::Data(1, 1))]
    );
    // a acknowledged: with every other transfer acknowledged too, the table is full for good
    // and a new request is refused rather than evicting anyone who showed they receive.
    for (id, to) in [(d, from(1, 3)), (e, from(3, 5))] {
        ack_from(&mut m, to, at(id), 1);
    }
    m.drain();
    assert_eq!(
        m.rrq_from(from(5, 5), "f"),
        None,
        "acknowledged transfers stay"
    );
    assert_eq!(
        m.drain().into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        vec![Sent::Error(ErrorCode::NotDefined)]
    );
    assert_eq!(m.images.total_open_refs(), 3);
}

#[test]
fn at_the_per_client_cap_only_that_address_loses_a_transfer() {
    let config = TftpServerConfig {
        max_transfers_per_client: 2,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 10_000);
    let other = m.rrq_from(from(9, 1), "f").expect("other");
    let x = m.rrq_acked(from(1, 1));
    let y = m.rrq_from(from(1, 2), "f").expect("y");
    m.now += Duration::from_millis(1_100);
    let z = m.rrq_from(from(1, 3), "f").expect("z starts in y's place");
    assert!(!m.server.is_active(y));
    for id in [other, x, z] {
        assert!(m.server.is_active(id));
    }
}

#[test]
fn a_late_duplicate_rrq_does_not_disturb_a_transfer_under_way() {
    let mut m = Manual::new(loopback_config(), 5000);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    m.ack(id, 1);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(2, 1))]);
    m.rrq(&[]);
    assert_eq!(m.drain(), vec![]);
    assert_eq!(m.server.active_transfers(), 1);
    m.ack(id, 2);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(3, 1))]);
}

#[test]
fn retransmitted_rrq_does_not_start_a_second_transfer() {
    let mut m = Manual::new(loopback_config(), 5000);
    m.rrq(&[("tsize", "0".into())]);
    m.rrq(&[("tsize", "0".into())]);
    assert_eq!(m.server.active_transfers(), 1);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Oack)]);
}

#[test]
fn draining_finishes_transfers_under_way_and_answers_no_new_request() {
    let mut m = Manual::new(loopback_config(), 3 * 512 + 10);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    m.server.stop_accepting();
    // The running transfer's own RRQ, repeated before its first ACK, is still answered.
    m.rrq(&[]);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    // A new client gets nothing: no transfer, no ERROR.
    m.send_from(client_addr(2), Local::Listener, &{
        let mut b = [0u8; 64];
        let n = Emit::request(&mut b, OP_RRQ, "f", "octet", &[]).expect("emit");
        b[..n].to_vec()
    });
    assert_eq!(m.drain(), vec![]);
    assert_eq!(m.server.active_transfers(), 1);
    for block in 1..=3 {
        m.ack(id, block);
        assert_eq!(m.drain(), vec![(at(id), Sent::Data(block + 1, 1))]);
    }
    m.ack(id, 4);
    assert_eq!(m.server.active_transfers(), 0);
    let completed = std::iter::from_fn(|| m.server.poll_event())
        .filter(|e| {
            matches!(
                e,
                TftpEvent::TransferEnded {
                    outcome: TransferOutcome::Completed { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(completed, 1);
}

#[test]
fn single_port_mode_serves_two_clients_from_the_listener() {
    let config = TftpServerConfig {
        single_port: true,
        ..loopback_config()
    };
    let mut h = Harness::new(21, Faults::NONE, config);
    let a = pattern(50_000, 1);
    let b = pattern(70_000, 2);
    h.images.insert("a", a.clone());
    h.images.insert("b", b.clone());
    h.add_client(0, ClientProfile::Ipxe.config("a"));
    h.add_client(1, ClientProfile::Edk2.config("b"));
    h.run(Duration::from_secs(60));
    assert!(h.clients[0].got == a && h.clients[1].got == b);
}

#[test]
fn many_clients_at_once() {
    let mut h = Harness::new(99, Faults::NONE, loopback_config());
    let data = pattern(200_000, 9);
    h.images.insert("undionly.kpxe", data.clone());
    for n in 0..200 {
        let profile = [
            ClientProfile::Edk2,
            ClientProfile::Ipxe,
            ClientProfile::Bios,
            ClientProfile::Bootmgr,
        ][n % 4];
        h.add_client(n, profile.config("undionly.kpxe"));
    }
    h.run(Duration::from_secs(600));
    for c in &h.clients {
        assert!(c.got == data);
    }
    assert_eq!(h.images.total_open_refs(), 0);
}

#[test]
fn random_datagrams_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let mut m = Manual::new(loopback_config(), 3000);
    m.rrq(&[("windowsize", "4".into())]);
    let id = started(&mut m);
    for i in 0..20_000 {
        let len = rng.random_range(0..80);
        let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 && d.len() >= 2 {
            d[0] = 0;
            d[1] = rng.random_range(0..8);
        }
        let local = if i % 2 == 0 { Local::Listener } else { at(id) };
        let from = client_addr(rng.random_range(0..4));
        m.send_from(from, local, &d);
        if i % 50 == 0 {
            m.drain();
            m.now += Duration::from_millis(300);
            m.server.handle_timeout(m.now, &mut m.images);
        }
    }
    m.drain();
    // Let everything time out: every image reference is returned.
    for _ in 0..100 {
        match m.server.poll_timeout() {
            Some(t) => {
                m.now = t;
                m.server.handle_timeout(m.now, &mut m.images);
                m.drain();
            }
            None => break,
        }
    }
    assert_eq!(m.server.active_transfers(), 0);
    assert_eq!(m.images.total_open_refs(), 0);
}

/// Virtual time to download `len` bytes with `config` over a network that drops `loss` of all
/// datagrams (both ways), or None if the download failed (it never delivers wrong bytes).
fn timed_download(seed: u64, loss: f64, config: ClientConfig, len: usize) -> Option<Duration> {
    let faults = Faults {
        loss,
        ..Faults::NONE
    };
    let mut h = Harness::new(seed, faults, loopback_config());
    let data = pattern(len, seed as u8);
    h.images.insert(&config.file, data.clone());
    h.add_client(0, config);
    let start = h.net.now();
    h.run(Duration::from_secs(3600));
    let ok = h.outcome(0).is_ok();
    assert!(!ok || h.clients[0].got == data, "seed {seed}: bytes differ");
    assert_eq!(
        h.images.total_open_refs(),
        0,
        "seed {seed}: image left open"
    );
    ok.then(|| h.clients[0].done_at.expect("finished") - start)
}

/// What the one-block loss window costs under random loss: virtual time of a 1 MiB download per
/// client profile, mean and worst over 40 seeds, and downloads that failed (the server gave up:
/// `retries` timeouts in a row). Prints a table (`--nocapture`); asserts every download that
/// finished is byte-exact, and that at 1% loss every one finished.
#[test]
fn loss_cost_table() {
    const LEN: usize = 1 << 20;
    const SEEDS: u64 = 40;
    let mut plain64 = ClientProfile::Plain.config("f");
    plain64.blksize = Some(1468);
    plain64.windowsize = Some(64);
    let mut plain8 = ClientProfile::Plain.config("f");
    plain8.blksize = Some(1468);
    plain8.windowsize = Some(8);
    let cases = [
        ("ipxe (lock-step, 1 s)", ClientProfile::Ipxe.config("f")),
        ("edk2 (window 4, 4 s)", ClientProfile::Edk2.config("f")),
        ("window 8, 1 s", plain8),
        ("window 64, 1 s", plain64),
    ];
    println!("| client | loss | mean | worst | failed |");
    println!("|---|---|---|---|---|");
    for loss in [0.01, 0.05] {
        for (name, config) in &cases {
            let mut config = config.clone();
            config.retries = 20;
            let runs: Vec<Option<Duration>> = (0..SEEDS)
                .map(|seed| timed_download(seed * 7 + 1, loss, config.clone(), LEN))
                .collect();
            let times: Vec<Duration> = runs.iter().flatten().copied().collect();
            let failed = runs.len() - times.len();
            let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
            let worst = times.iter().max().copied().unwrap_or_default();
            println!(
                "| {name} | {:.0}% | {:.2} s | {:.2} s | {failed}/{SEEDS} |",
                loss * 100.0,
                mean.as_secs_f64(),
                worst.as_secs_f64()
            );
            if loss < 0.02 {
                assert_eq!(failed, 0, "{name} at {loss}");
            }
        }
    }
}

/// One thing a spoofer (or a client that vanishes) does.
#[derive(Clone, Debug)]
enum Step {
    /// An RRQ for `small.bin` with these options, to port 69.
    Rrq(&'static [(&'static str, &'static str)]),
    /// An ACK to the transfer's port (port 69 in single-port mode).
    Ack(u16),
    /// Time passes; the server's timers run.
    Wait(Duration),
}

/// Bytes both ways, counted as UDP payload and as Ethernet frames (14 + 20 + 8 bytes of
/// headers, 60 bytes at least, no FCS): the frame count is what the wire carries.
#[derive(Debug, Default)]
struct Tally {
    datagrams_in: usize,
    payload_in: usize,
    frames_in: usize,
    datagrams_out: usize,
    payload_out: usize,
    frames_out: usize,
}

fn frame(payload: usize) -> usize {
    (payload + 42).max(60)
}

impl Tally {
    fn input(&mut self, len: usize) {
        self.datagrams_in += 1;
        self.payload_in += len;
        self.frames_in += frame(len);
    }

    fn output(&mut self, len: usize) {
        self.datagrams_out += 1;
        self.payload_out += len;
        self.frames_out += frame(len);
    }

    fn ratio(&self) -> f64 {
        self.frames_out as f64 / self.frames_in as f64
    }
}

/// The payload size of every datagram the server sends now.
fn drain_sizes(m: &mut Manual) -> Vec<usize> {
    let mut out = Vec::new();
    while let Some((_, t)) = m.server.poll_transmit(m.now, 64, &mut m.buf) {
        match t.payload {
            Payload::Bytes { len } => out.push(len),
            Payload::Segments {
                header_len,
                count,
                segment,
                range,
                ..
            } => {
                let mut left = range.len();
                for _ in 0..count {
                    let body = left.min(u64::from(segment));
                    left -= body;
                    out.push(usize::from(header_len) + body as usize);
                }
            }
        }
    }
    out
}

/// Plays `steps` against a server holding a 1 MiB `small.bin`, then lets every transfer end,
/// and counts the bytes.
fn amplification(config: TftpServerConfig, steps: &[Step]) -> Tally {
    let single_port = config.single_port;
    let mut m = Manual::new(config, 0);
    m.images.insert("small.bin", pattern(1 << 20, 4));
    let mut t = Tally::default();
    let mut id = None;
    for step in steps {
        match step {
            Step::Rrq(options) => {
                let options: Vec<(&str, String)> =
                    options.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
                let mut b = [0u8; 512];
                let n =
                    Emit::request(&mut b, OP_RRQ, "small.bin", "octet", &options).expect("emit");
                t.input(n);
                m.send(Local::Listener, &b[..n]);
            }
            Step::Ack(block) => {
                let mut b = [0u8; 8];
                let n = Emit::ack(&mut b, *block, None).expect("emit");
                t.input(n);
                let local = match id {
                    Some(id) if !single_port => at(id),
                    _ => Local::Listener,
                };
                m.send(local, &b[..n]);
            }
            Step::Wait(d) => {
                let until = m.now + *d;
                while let Some(at) = m.server.poll_timeout().filter(|&at| at <= until) {
                    m.now = m.now.max(at);
                    m.server.handle_timeout(m.now, &mut m.images);
                    for len in drain_sizes(&mut m) {
                        t.output(len);
                    }
                }
                m.now = until;
            }
        }
        while let Some(ev) = m.server.poll_event() {
            if let TftpEvent::TransferStarted { id: started, .. } = ev {
                id = Some(started);
            }
        }
        for len in drain_sizes(&mut m) {
            t.output(len);
        }
    }
    for _ in 0..10_000 {
        let Some(at) = m.server.poll_timeout() else {
            break;
        };
        m.now = m.now.max(at);
        m.server.handle_timeout(m.now, &mut m.images);
        for len in drain_sizes(&mut m) {
            t.output(len);
        }
    }
    assert_eq!(m.server.active_transfers(), 0, "every transfer ended");
    assert_eq!(m.images.total_open_refs(), 0);
    t
}

const WINDOW_64: &[(&str, &str)] = &[("blksize", "1468"), ("windowsize", "64")];

/// Bytes out per byte in for what a spoofer can send (issue 13, defect 3). Prints the table
/// (`--nocapture`). A peer that never showed it receives gets at most 10x what it sent, in
/// frames; one that acknowledged the OACK once and vanished gets one window and a few single
/// blocks.
#[test]
fn amplification_table() {
    let repeat = |n: usize, rrq: Step| {
        let mut steps = Vec::new();
        for _ in 0..n {
            steps.push(rrq.clone());
            steps.push(Step::Wait(Duration::from_millis(100)));
        }
        steps
    };
    let mut ack0 = vec![Step::Rrq(WINDOW_64), Step::Ack(0)];
    ack0.extend(repeat(40, Step::Rrq(WINDOW_64)));
    let spoofed: Vec<(&str, Vec<Step>)> = vec![
        ("RRQ, no options", vec![Step::Rrq(&[])]),
        ("RRQ timeout 255", vec![Step::Rrq(&[("timeout", "255")])]),
        (
            "RRQ tsize 0 blksize 1468 windowsize 64",
            vec![Step::Rrq(&[
                ("tsize", "0"),
                ("blksize", "1468"),
                ("windowsize", "64"),
            ])],
        ),
        (
            "42 RRQs, no options, 100 ms apart",
            repeat(42, Step::Rrq(&[])),
        ),
        (
            "42 RRQs blksize 1468 windowsize 64, 100 ms apart",
            repeat(42, Step::Rrq(WINDOW_64)),
        ),
        (
            "42 RRQs, no options, 1 s apart",
            (0..42)
                .flat_map(|_| [Step::Rrq(&[]), Step::Wait(Duration::from_secs(1))])
                .collect(),
        ),
    ];
    let acked: Vec<(&str, Vec<Step>)> = vec![
        (
            "RRQ blksize 1468 windowsize 64, ACK 0, silence",
            vec![Step::Rrq(WINDOW_64), Step::Ack(0)],
        ),
        ("the same, then 40 RRQs 100 ms apart", ack0),
    ];
    println!(
        "| request | mode | in: datagrams, bytes (frames) | out: datagrams, bytes (frames) | ratio (frames) |"
    );
    println!("|---|---|---|---|---|");
    let print = |name: &str, mode: &str, t: &Tally| {
        println!(
            "| {name} | {mode} | {}, {} ({}) | {}, {} ({}) | {:.1}x |",
            t.datagrams_in,
            t.payload_in,
            t.frames_in,
            t.datagrams_out,
            t.payload_out,
            t.frames_out,
            t.ratio()
        );
    };
    let mut failures = Vec::new();
    for single_port in [false, true] {
        let mode = if single_port {
            "single port"
        } else {
            "per-transfer port"
        };
        let config = TftpServerConfig {
            single_port,
            ..TftpServerConfig::default()
        };
        for (name, steps) in &spoofed {
            let t = amplification(config.clone(), steps);
            print(name, mode, &t);
            if t.ratio() > 10.0 {
                failures.push(format!("{name} ({mode}): {:.1}x", t.ratio()));
            }
        }
        for (name, steps) in &acked {
            let t = amplification(config.clone(), steps);
            print(name, mode, &t);
            // OACK, one window of 64, two blocks (the window's first and last) per
            // retransmission timeout, the ERROR at the end.
            let bound = 1 + 64 + 2 * config.retries as usize + 1;
            if t.datagrams_out > bound {
                failures.push(format!(
                    "{name} ({mode}): {} datagrams out, bound {bound}",
                    t.datagrams_out
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Issue 13, defect 2: 1000 spoofed RRQs asking `timeout 255`, each from its own address,
/// fill the transfer table; a real client's request a second later is still served, and the
/// spoofed transfers are gone within `first-ack-timeout-ms`, having been sent one datagram each.
#[test]
fn a_spoofed_rrq_flood_neither_locks_out_a_real_client_nor_lingers() {
    let config = TftpServerConfig {
        max_transfers: 1000,
        ..TftpServerConfig::default()
    };
    let bound = Duration::from_millis(config.first_ack_timeout_ms);
    let mut m = Manual::new(config, 0);
    m.images.insert("small.bin", pattern(5000, 3));
    let start = m.now;
    let mut b = [0u8; 512];
    let n = Emit::request(
        &mut b,
        OP_RRQ,
        "small.bin",
        "octet",
        &[("timeout", "255".into())],
    )
    .expect("emit");
    let rrq = b[..n].to_vec();
    let mut sent = 0;
    for i in 0..1000u32 {
        let ip = Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250) as u8 + 1);
        m.send_from(
            SocketAddr::new(IpAddr::V4(ip), 40_000),
            Local::Listener,
            &rrq,
        );
        sent += m.drain().len();
    }
    assert_eq!(m.server.active_transfers(), 1000);
    assert_eq!(sent, 1000, "one answer per spoofed request");
    // timeout 255 is over the cap: not granted, so no OACK, and block 1 answers.
    m.now = start + Duration::from_secs(1);
    let legit = client_addr(7);
    let id = m
        .rrq_from(legit, "small.bin")
        .expect("the real client is served");
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    for block in 1..=10u16 {
        let mut a = [0u8; 8];
        let n = Emit::ack(&mut a, block, None).expect("emit");
        m.send_from(legit, at(id), &a[..n]);
        m.drain();
    }
    let completed = m.events().into_iter().any(|e| {
        matches!(e, TftpEvent::TransferEnded { id: ended, outcome: TransferOutcome::Completed { .. }, .. } if ended == id)
    });
    assert!(completed, "5000 bytes are 10 blocks: done");
    // The spoofed transfers time out silently within the bound, never retransmitting.
    while m.server.active_transfers() > 0 {
        m.now = m.server.poll_timeout().expect("timer");
        m.server.handle_timeout(m.now, &mut m.images);
        assert_eq!(m.drain(), vec![], "nothing to a peer that never answered");
    }
    assert!(m.now <= start + bound, "gone after {:?}", m.now - start);
    assert_eq!(m.images.total_open_refs(), 0);
}

#[test]
fn the_negotiated_timeout_is_capped_and_bounds_the_first_ack_wait() {
    let config = loopback_config();
    let first_ack = Duration::from_millis(config.first_ack_timeout_ms);
    for (asked, granted, life) in [
        ("255", None, first_ack),
        ("11", None, first_ack),
        ("10", Some("10"), Duration::from_secs(21)),
        ("2", Some("2"), first_ack),
    ] {
        let mut m = Manual::new(config.clone(), 100_000);
        let start = m.now;
        let mut b = [0u8; 512];
        let n = Emit::request(
            &mut b,
            OP_RRQ,
            "f",
            "octet",
            &[("timeout", asked.into()), ("blksize", "1468".into())],
        )
        .expect("emit");
        m.send(Local::Listener, &b[..n]);
        let id = started(&mut m);
        let (_, t) = m.server.poll_transmit(m.now, 64, &mut m.buf).expect("OACK");
        let Payload::Bytes { len } = t.payload else {
            panic!("OACK expected")
        };
        let Ok(TftpRepr::Oack { options }) = TftpRepr::parse_bytes(&m.buf[..len]) else {
            panic!("OACK expected")
        };
        let timeout = options
            .iter()
            .find(|(k, _)| *k == "timeout")
            .map(|(_, v)| *v);
        assert_eq!(timeout, granted, "asked {asked}");
        m.now = m.server.poll_timeout().expect("timer");
        m.server.handle_timeout(m.now, &mut m.images);
        assert_eq!(m.drain(), vec![], "asked {asked}");
        assert!(!m.server.is_active(id), "asked {asked}");
        assert_eq!(m.now - start, life, "asked {asked}");
    }
}

#[test]
fn a_repeated_rrq_gets_the_first_answer_only_and_does_not_extend_the_transfer() {
    let mut m = Manual::new(loopback_config(), 1468 * 200);
    let window = [("blksize", "1468".into()), ("windowsize", "64".into())];
    let start = m.now;
    m.rrq(&window);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Oack)]);
    // Repeated before any ACK: the OACK again, once per request, never a window.
    for _ in 0..5 {
        m.now += Duration::from_secs(1);
        m.rrq(&window);
        assert_eq!(m.drain(), vec![(at(id), Sent::Oack)]);
    }
    // The life still counts from the first request.
    m.now = m.server.poll_timeout().expect("timer");
    assert_eq!(
        m.now - start,
        Duration::from_millis(loopback_config().first_ack_timeout_ms)
    );
    // After ACK 0 the transfer is under way, and a repeated RRQ gets nothing.
    let mut m = Manual::new(loopback_config(), 1468 * 200);
    m.rrq(&window);
    let id = started(&mut m);
    m.drain();
    m.ack(id, 0);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 64))]);
    m.rrq(&window);
    m.rrq(&window);
    assert_eq!(m.drain(), vec![]);
    // Without options: block 1 alone answers each repeat.
    let mut m = Manual::new(loopback_config(), 1468 * 200);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
    m.rrq(&[]);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 1))]);
}

#[test]
fn after_a_timeout_only_the_windows_first_and_last_blocks_go_until_an_ack() {
    let config = TftpServerConfig {
        retries: 3,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 1468 * 100);
    m.rrq(&[("blksize", "1468".into()), ("windowsize", "8".into())]);
    let id = started(&mut m);
    m.drain();
    m.ack(id, 0);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(1, 8))]);
    for _ in 0..2 {
        m.now = m.server.poll_timeout().expect("timer");
        m.server.handle_timeout(m.now, &mut m.images);
        assert_eq!(
            m.drain(),
            vec![(at(id), Sent::Data(1, 1)), (at(id), Sent::Data(8, 1))]
        );
    }
    // The client answers: whole windows again.
    m.ack(id, 3);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(4, 8))]);
    // A client that answers once more, then never again: one window, then two blocks per
    // timeout, then the end.
    m.ack(id, 11);
    assert_eq!(m.drain(), vec![(at(id), Sent::Data(12, 8))]);
    let mut blocks = 0;
    while let Some(at) = m.server.poll_timeout() {
        m.now = at;
        m.server.handle_timeout(m.now, &mut m.images);
        for (_, sent) in m.drain() {
            if let Sent::Data(_, n) = sent {
                blocks += n;
            }
        }
    }
    assert_eq!(blocks, 2 * 3);
    assert_eq!(m.server.active_transfers(), 0);
}

#[test]
fn a_repeated_option_is_echoed_once_with_the_value_the_blocks_follow() {
    let mut m = Manual::new(loopback_config(), 1468 * 3);
    m.rrq(&[("blksize", "1468".into()), ("blksize", "512".into())]);
    let id = started(&mut m);
    let (_, t) = m.server.poll_transmit(m.now, 64, &mut m.buf).expect("OACK");
    let Payload::Bytes { len } = t.payload else {
        panic!("OACK expected")
    };
    let Ok(TftpRepr::Oack { options }) = TftpRepr::parse_bytes(&m.buf[..len]) else {
        panic!("OACK expected")
    };
    assert_eq!(options, vec![("blksize", "1468")]);
    m.ack(id, 0);
    let (_, t) = m.server.poll_transmit(m.now, 64, &mut m.buf).expect("DATA");
    let Payload::Segments { segment, .. } = t.payload else {
        panic!("DATA expected")
    };
    assert_eq!(segment, 1468);
}

/// A catalog whose every open fails the same way.
struct Failing(crate::image::OpenError);

impl crate::image::ImageCatalog for Failing {
    fn open(
        &mut self,
        _: &str,
        _: crate::path::NameFlavor,
    ) -> Result<crate::image::ImageInfo, crate::image::OpenError> {
        Err(self.0.clone())
    }
    fn close(&mut self, _: crate::image::ImageId) {}
}

#[test]
fn a_symlink_out_of_the_root_answers_file_not_found() {
    use crate::image::OpenError;
    use crate::path::PathError;
    let cases = [
        // A fine name the store refused where it resolved: a symlink out of the root.
        (
            "link",
            OpenError::Refused(PathError::Traversal),
            ErrorCode::FileNotFound,
            "file not found",
        ),
        (
            "dir",
            OpenError::NotAFile,
            ErrorCode::FileNotFound,
            "file not found",
        ),
        (
            "missing",
            OpenError::NotFound,
            ErrorCode::FileNotFound,
            "file not found",
        ),
        // A name refused for what it is tells nothing about the file system.
        (
            "../etc/passwd",
            OpenError::Refused(PathError::Traversal),
            ErrorCode::AccessViolation,
            "refused path: name steps outside the root",
        ),
        (
            "secret",
            OpenError::Denied,
            ErrorCode::AccessViolation,
            "access denied",
        ),
    ];
    for (name, error, code, message) in cases {
        let mut server = TftpServer::new(loopback_config());
        let mut images = Failing(error.clone());
        let mut b = [0u8; 512];
        let n = Emit::request(&mut b, OP_RRQ, name, "octet", &[]).expect("emit");
        let meta = DatagramMeta::from_remote(client_addr(1));
        server.handle_datagram(Instant::now(), Local::Listener, meta, &b[..n], &mut images);
        let mut buf = [0u8; 1024];
        let (_, t) = server
            .poll_transmit(Instant::now(), 64, &mut buf)
            .expect("an ERROR");
        let Payload::Bytes { len } = t.payload else {
            panic!("ERROR expected")
        };
        let Ok(TftpRepr::Error {
            code: got,
            message: said,
        }) = TftpRepr::parse_bytes(&buf[..len])
        else {
            panic!("ERROR expected")
        };
        assert_eq!((got, said), (code, message), "{name}: {error:?}");
        // The log still says what happened.
        let reason = std::iter::from_fn(|| server.poll_event()).find_map(|e| match e {
            TftpEvent::Refused { reason, .. } => Some(reason),
            _ => None,
        });
        assert_eq!(reason, Some(error.to_string()), "{name}");
    }
}

#[test]
fn stray_datagrams_get_at_most_a_bounded_number_of_errors_a_second() {
    let mut server = TftpServer::new(loopback_config());
    let mut images = MemoryCatalog::new();
    let t0 = Instant::now();
    let mut ack = [0u8; 8];
    let n = Emit::ack(&mut ack, 1, None).expect("emit");
    let mut buf = [0u8; 1024];
    let mut answered = |server: &mut TftpServer, at: Instant, count: u16| {
        let mut errors = 0;
        for i in 0..count {
            // Each from its own (forged) source: an ACK for a transfer that does not exist.
            let meta = DatagramMeta::from_remote(from((i % 250) as u8, 1000 + i));
            server.handle_datagram(at, Local::Listener, meta, &ack[..n], &mut images);
            while server.poll_transmit(at, 64, &mut buf).is_some() {
                errors += 1;
            }
        }
        errors
    };
    // A flood of 10,000 stray ACKs within one second gets the cap, not 10,000 answers.
    let first = answered(&mut server, t0, 10_000);
    assert_eq!(first, super::server::ERRORS_PER_SECOND);
    // The next second has a fresh budget, so a real client's mistake is still answered.
    let later = answered(&mut server, t0 + Duration::from_millis(1_001), 1);
    assert_eq!(later, 1);
}

/// Every transmit now, as (local, destination, what).
fn drain_to(m: &mut Manual) -> Vec<(Local, SocketAddr, Sent)> {
    let mut out = Vec::new();
    while let Some((local, t)) = m.server.poll_transmit(m.now, 64, &mut m.buf) {
        let sent = match t.payload {
            Payload::Bytes { len } => match TftpRepr::parse_bytes(&m.buf[..len]).expect("parse") {
                TftpRepr::Error { code, .. } => Sent::Error(code),
                TftpRepr::Oack { .. } => Sent::Oack,
                other => panic!("unexpected {other:?}"),
            },
            Payload::Segments { count, .. } => {
                Sent::Data(u16::from_be_bytes([m.buf[2], m.buf[3]]), count)
            }
        };
        out.push((local, t.destination, sent));
    }
    out
}

fn ack_from(m: &mut Manual, from: SocketAddr, local: Local, block: u16) {
    let mut b = [0u8; 8];
    let n = Emit::ack(&mut b, block, None).expect("emit");
    m.send_from(from, local, &b[..n]);
}

fn rrq_from_port(m: &mut Manual, from: SocketAddr) -> TransferId {
    let mut b = [0u8; 512];
    let n = Emit::request(&mut b, OP_RRQ, "f", "octet", &[]).expect("emit");
    m.send_from(from, Local::Listener, &b[..n]);
    started(m)
}

#[test]
fn transfers_share_a_socket_when_no_port_is_left_and_datagrams_go_by_source() {
    let mut m = Manual::new(loopback_config(), 5000);
    let (a, b, c) = (client_addr(1), client_addr(2), client_addr(3));
    let ta = rrq_from_port(&mut m, a);
    let sa = SocketId(ta.0);
    assert_eq!(
        drain_to(&mut m),
        vec![(Local::Socket(sa), a, Sent::Data(1, 1))]
    );
    m.server.socket_opened(sa);
    // B's socket cannot be bound: B moves to A's socket, and its block 1 leaves from there.
    let tb = rrq_from_port(&mut m, b);
    assert_eq!(
        drain_to(&mut m),
        vec![(at(tb), b, Sent::Data(1, 1))],
        "first asked from a socket of its own"
    );
    assert_eq!(
        m.server
            .socket_unavailable(SocketId(tb.0), 12_345, &mut m.images),
        Some(sa)
    );
    assert_eq!(m.server.transfer_of(Local::Socket(sa), b), Some(tb));
    assert_eq!(m.server.transfer_of(Local::Socket(sa), a), Some(ta));
    assert_eq!(m.server.transfer_of(at(tb), b), None);
    assert_eq!(m.server.transfer_of(Local::Listener, b), None);
    // Each ACK on the shared socket moves its own sender's transfer.
    ack_from(&mut m, b, Local::Socket(sa), 1);
    assert_eq!(
        drain_to(&mut m),
        vec![(Local::Socket(sa), b, Sent::Data(2, 1))]
    );
    ack_from(&mut m, a, Local::Socket(sa), 1);
    assert_eq!(
        drain_to(&mut m),
        vec![(Local::Socket(sa), a, Sent::Data(2, 1))]
    );
    // A stranger on the shared socket gets ERROR 5 from it; nobody's transfer moves.
    ack_from(&mut m, c, Local::Socket(sa), 2);
    assert_eq!(
        drain_to(&mut m),
        vec![(
            Local::Socket(sa),
            c,
            Sent::Error(ErrorCode::UnknownTransferId)
        )]
    );
    // A client on a socket that is not its transfer's is a stranger there too, and an RRQ
    // to a transfer socket is refused.
    ack_from(&mut m, b, Local::Listener, 2);
    assert_eq!(
        drain_to(&mut m),
        vec![(
            Local::Listener,
            b,
            Sent::Error(ErrorCode::UnknownTransferId)
        )]
    );
    let mut r = [0u8; 64];
    let n = Emit::request(&mut r, OP_RRQ, "f", "octet", &[]).expect("emit");
    m.send_from(c, Local::Socket(sa), &r[..n]);
    assert_eq!(
        drain_to(&mut m),
        vec![(
            Local::Socket(sa),
            c,
            Sent::Error(ErrorCode::IllegalOperation)
        )]
    );
    ack_from(&mut m, b, Local::Socket(sa), 2);
    assert_eq!(
        drain_to(&mut m),
        vec![(Local::Socket(sa), b, Sent::Data(3, 1))]
    );
    // The socket stays while one of its transfers runs; the last one out hands it back.
    let mut e = [0u8; 16];
    let n = Emit::error(&mut e, ErrorCode::NotDefined, "bye").expect("emit");
    m.send_from(a, Local::Socket(sa), &e[..n]);
    assert!(!m.server.is_active(ta));
    assert_eq!(m.server.poll_unused_socket(), None);
    assert_eq!(m.server.sockets_in_use(), 1);
    m.send_from(b, Local::Socket(sa), &e[..n]);
    assert!(!m.server.is_active(tb));
    assert_eq!(m.server.poll_unused_socket(), Some(sa));
    assert_eq!(m.server.poll_unused_socket(), None);
    assert_eq!(m.server.sockets_in_use(), 0);
}

#[test]
fn a_transfer_with_no_socket_to_share_ends_and_its_client_hears_it_from_the_tftp_port() {
    let mut m = Manual::new(loopback_config(), 5000);
    let a = client_addr(1);
    let ta = rrq_from_port(&mut m, a);
    drain_to(&mut m);
    assert_eq!(
        m.server
            .socket_unavailable(SocketId(ta.0), 1, &mut m.images),
        None
    );
    assert!(!m.server.is_active(ta));
    assert_eq!(
        drain_to(&mut m),
        vec![(Local::Listener, a, Sent::Error(ErrorCode::NotDefined))]
    );
    let ended = std::iter::from_fn(|| m.server.poll_event()).find_map(|e| match e {
        TftpEvent::TransferEnded { outcome, .. } => Some(outcome),
        _ => None,
    });
    assert_eq!(
        ended,
        Some(TransferOutcome::Aborted(Abort::Server(
            ServerAbort::OutOfPorts
        )))
    );
    // A socket never opened is not handed back to the platform.
    assert_eq!(m.server.poll_unused_socket(), None);
    assert_eq!(m.server.sockets_in_use(), 0);
}

#[test]
fn single_port_transfers_are_found_by_source_on_the_tftp_port() {
    let config = TftpServerConfig {
        single_port: true,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 5000);
    let (a, b) = (client_addr(1), client_addr(2));
    let ta = rrq_from_port(&mut m, a);
    let tb = rrq_from_port(&mut m, b);
    drain_to(&mut m);
    assert_eq!(m.server.transfer_of(Local::Listener, a), Some(ta));
    assert_eq!(m.server.transfer_of(Local::Listener, b), Some(tb));
    ack_from(&mut m, b, Local::Listener, 1);
    assert_eq!(
        drain_to(&mut m),
        vec![(Local::Listener, b, Sent::Data(2, 1))]
    );
    assert_eq!(m.server.sockets_in_use(), 0);
}

/// Issue 13: without a port range, `max-transfers` is the only bound. With a 1 s age floor
/// before eviction, 1,000 spoofed RRQs in a millisecond kept the table full of transfers too
/// young to evict and this real request was refused "server busy" (ERROR 0). Oldest-first
/// eviction whatever the age serves it, and once it has acknowledged nothing evicts it.
#[test]
fn a_flood_faster_than_the_table_cannot_refuse_a_real_client() {
    let config = TftpServerConfig {
        max_transfers: 64,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 5000);
    let spoofed = |i: u32| {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 9, (i / 250) as u8, (i % 250) as u8 + 1)),
            40_000,
        )
    };
    let mut r = [0u8; 64];
    let n = Emit::request(&mut r, OP_RRQ, "f", "octet", &[]).expect("emit");
    let flood = |m: &mut Manual, from: std::ops::Range<u32>| {
        for i in from {
            m.send_from(spoofed(i), Local::Listener, &r[..n]);
            assert!(m.server.active_transfers() <= 64);
        }
        m.now += Duration::from_millis(1);
    };
    // 1,000 spoofed requests in a millisecond: 15 times what the table holds.
    flood(&mut m, 0..1000);
    drain_to(&mut m);
    while m.server.poll_event().is_some() {}
    let legit = client_addr(1);
    let id = rrq_from_port(&mut m, legit);
    let sent = drain_to(&mut m);
    assert_eq!(sent, vec![(at(id), legit, Sent::Data(1, 1))], "not refused");
    // 31 more spoofed requests still leave it waiting for its ACK; then it acknowledges and
    // is never evicted, however long the flood goes on.
    flood(&mut m, 1000..1031);
    assert!(m.server.is_active(id));
    ack_from(&mut m, legit, at(id), 1);
    for block in 2..=10u16 {
        flood(
            &mut m,
            2000 + u32::from(block) * 100..2100 + u32::from(block) * 100,
        );
        let sent: Vec<_> = drain_to(&mut m)
            .into_iter()
            .filter(|(_, to, _)| *to == legit)
            .collect();
        assert_eq!(sent, vec![(at(id), legit, Sent::Data(block, 1))]);
        ack_from(&mut m, legit, at(id), block);
    }
    let ended = std::iter::from_fn(|| m.server.poll_event()).any(|e| {
        matches!(e, TftpEvent::TransferEnded { id: e, outcome: TransferOutcome::Completed { .. }, .. } if e == id)
    });
    assert!(ended, "the real transfer completed");
}

#[test]
fn each_transmit_names_its_transfer_and_a_strangers_error_names_none() {
    let mut m = Manual::new(loopback_config(), 5000);
    m.rrq(&[]);
    let id = started(&mut m);
    let (local, of, _) = m
        .server
        .poll_transmit_of(m.now, 64, &mut m.buf)
        .expect("the first DATA");
    assert_eq!((local, of), (at(id), Some(id)));
    let mut b = [0u8; 8];
    let n = Emit::ack(&mut b, 1, None).expect("emit");
    m.send_from(client_addr(9), at(id), &b[..n]);
    let (_, of, t) = m
        .server
        .poll_transmit_of(m.now, 64, &mut m.buf)
        .expect("an ERROR to the stranger");
    assert_eq!((of, t.destination), (None, client_addr(9)));
}
