//! TFTP server and client driven together through the simulated network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::image::MemoryCatalog;
use crate::net::{DatagramMeta, Payload};
use crate::sim::{Faults, SimNet};
use crate::tftp::wire::{Emit, ErrorCode, OP_RRQ, OP_WRQ, Packet};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn listener() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_IP), 69)
}

fn local_addr(local: Local) -> SocketAddr {
    match local {
        Local::Listener => listener(),
        Local::Transfer(id) => SocketAddr::new(IpAddr::V4(SERVER_IP), 10_000 + id.0 as u16),
    }
}

fn to_local(addr: SocketAddr) -> Option<Local> {
    match addr.port() {
        69 => Some(Local::Listener),
        p if p >= 10_000 => Some(Local::Transfer(TransferId(u64::from(p - 10_000)))),
        _ => None,
    }
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
            [TransferOutcome::ClientError { code: 8, .. }]
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
        self.send(Local::Transfer(id), &b[..n]);
    }

    /// Every transmit now, as (local, first wire block or error code, datagram count).
    fn drain(&mut self) -> Vec<(Local, Sent)> {
        let mut out = Vec::new();
        while let Some((local, t)) = self.server.poll_transmit(self.now, 64, &mut self.buf) {
            let sent = match t.payload {
                Payload::Bytes { len } => match Packet::parse(&self.buf[..len]).expect("parse") {
                    Packet::Error { code, .. } => Sent::Error(code),
                    Packet::Oack { .. } => Sent::Oack,
                    other => panic!("unexpected {other:?}"),
                },
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
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Oack)]);
    m.ack(id, 0);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 8))]);
    m.ack(id, 8);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(9, 8))]);
    // The same ACK again while 9..16 are out: block 9 was lost, resend from it, once.
    m.ack(id, 8);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(9, 8))]);
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
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(4, 8))]);
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
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 1))]);
    for _ in 0..3 {
        m.now = m.server.poll_timeout().expect("timer");
        m.server.handle_timeout(m.now, &mut m.images);
        assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 1))]);
    }
    m.now = m.server.poll_timeout().expect("timer");
    m.server.handle_timeout(m.now, &mut m.images);
    assert_eq!(
        m.drain(),
        vec![(Local::Transfer(id), Sent::Error(ErrorCode::NotDefined))]
    );
    assert_eq!(m.server.active_transfers(), 0);
    assert_eq!(m.images.total_open_refs(), 0);
    let ended = std::iter::from_fn(|| m.server.poll_event()).any(|e| {
        matches!(
            e,
            TftpEvent::TransferEnded {
                outcome: TransferOutcome::TimedOut { retransmits: 3 },
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
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 1))]);
    for block in 1..=1000u16 {
        m.now += Duration::from_millis(3);
        m.ack(id, block);
        assert_eq!(
            m.drain(),
            vec![(Local::Transfer(id), Sent::Data(block + 1, 1))]
        );
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
            assert_eq!(sent, vec![(Local::Transfer(id), Sent::Data(1001, 1))]);
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
    m.send_from(stranger, Local::Transfer(id), &b[..n]);
    assert_eq!(
        m.drain(),
        vec![(
            Local::Transfer(id),
            Sent::Error(ErrorCode::UnknownTransferId)
        )]
    );
    m.ack(id, 1);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(2, 1))]);
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

#[test]
fn caps_refuse_with_server_busy() {
    let config = TftpServerConfig {
        max_transfers: 3,
        max_transfers_per_client: 2,
        ..loopback_config()
    };
    let mut m = Manual::new(config, 10_000);
    let mut b = [0u8; 512];
    let n = Emit::request(&mut b, OP_RRQ, "f", "octet", &[]).expect("emit");
    let rrq = b[..n].to_vec();
    // Same IP, ports 1..3: the third is over the per-client cap.
    for port in 1..=3u16 {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), port);
        m.send_from(from, Local::Listener, &rrq);
    }
    for ip in 2..=3u8 {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, ip)), 5);
        m.send_from(from, Local::Listener, &rrq);
    }
    assert_eq!(m.server.active_transfers(), 3);
    let errors: Vec<Sent> = m
        .drain()
        .into_iter()
        .filter_map(|(_, s)| matches!(s, Sent::Error(_)).then_some(s))
        .collect();
    assert_eq!(
        errors,
        vec![
            Sent::Error(ErrorCode::NotDefined),
            Sent::Error(ErrorCode::NotDefined)
        ]
    );
    let refused = std::iter::from_fn(|| m.server.poll_event())
        .filter(|e| matches!(e, TftpEvent::Refused { .. }))
        .count();
    assert_eq!(refused, 2);
}

#[test]
fn a_late_duplicate_rrq_does_not_disturb_a_transfer_under_way() {
    let mut m = Manual::new(loopback_config(), 5000);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 1))]);
    m.ack(id, 1);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(2, 1))]);
    m.rrq(&[]);
    assert_eq!(m.drain(), vec![]);
    assert_eq!(m.server.active_transfers(), 1);
    m.ack(id, 2);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(3, 1))]);
}

#[test]
fn retransmitted_rrq_does_not_start_a_second_transfer() {
    let mut m = Manual::new(loopback_config(), 5000);
    m.rrq(&[("tsize", "0".into())]);
    m.rrq(&[("tsize", "0".into())]);
    assert_eq!(m.server.active_transfers(), 1);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Oack)]);
}

#[test]
fn draining_finishes_transfers_under_way_and_answers_no_new_request() {
    let mut m = Manual::new(loopback_config(), 3 * 512 + 10);
    m.rrq(&[]);
    let id = started(&mut m);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 1))]);
    m.server.stop_accepting();
    // The running transfer's own RRQ, repeated before its first ACK, is still answered.
    m.rrq(&[]);
    assert_eq!(m.drain(), vec![(Local::Transfer(id), Sent::Data(1, 1))]);
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
        assert_eq!(
            m.drain(),
            vec![(Local::Transfer(id), Sent::Data(block + 1, 1))]
        );
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
        let local = if i % 2 == 0 {
            Local::Listener
        } else {
            Local::Transfer(id)
        };
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
