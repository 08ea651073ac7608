//! Property tests: TFTP packets survive emit -> parse, option negotiation stays within its
//! RFC bounds and echoes what it uses, and the transfer model (server and client machines over
//! the simulated network, `crate::sim`) under random loss, duplication, reordering and delay
//! delivers every block once and in order, never has more than windowsize blocks in flight,
//! and ends within a bound.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;

use super::options::{self, Limits, MAX_BLKSIZE, MIN_BLKSIZE};
use super::wire::{Emit, ErrorCode, OP_RRQ, OP_WRQ, Request, TftpRepr};
use super::{
    Abort, ClientAbort, ClientConfig, ClientProfile, Local, SocketId, TftpClient, TftpEvent,
    TftpServer, TftpServerConfig, TransferOutcome,
};
use crate::image::MemoryCatalog;
use crate::net::{DatagramMeta, Payload};
use crate::proptest_config::config;
use crate::sim::{Faults, SimNet};

/// A string as a packet carries it: UTF-8 without NUL.
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(
        any::<char>().prop_filter("NUL ends a string", |c| *c != '\0'),
        0..=max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Option pairs; a name is never empty (an empty name followed by NULs is padding).
fn option_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("blksize".to_owned()),
        Just("tsize".to_owned()),
        Just("timeout".to_owned()),
        Just("windowsize".to_owned()),
        Just("msftwindow".to_owned()),
        Just("BlkSize".to_owned()),
        text(12).prop_filter("named", |s| !s.is_empty()),
    ];
    let value = prop_oneof![
        (0u64..70_000).prop_map(|v| v.to_string()),
        Just(options::MSFT_WINDOW_REQUEST.to_owned()),
        Just(" 1468 ".to_owned()),
        text(8),
    ];
    vec((name, value), 0..8)
}

#[derive(Clone, Debug)]
enum Shape {
    Request(u16, String, String, Vec<(String, String)>),
    Data(u16, Vec<u8>),
    Ack(u16, Option<u8>),
    Error(u16, String),
    Oack(Vec<(String, String)>),
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (
            prop_oneof![Just(OP_RRQ), Just(OP_WRQ)],
            text(40),
            text(10),
            option_pairs()
        )
            .prop_map(|(op, f, m, o)| Shape::Request(op, f, m, o)),
        (any::<u16>(), vec(any::<u8>(), 0..1500)).prop_map(|(b, d)| Shape::Data(b, d)),
        (any::<u16>(), proptest::option::of(any::<u8>())).prop_map(|(b, e)| Shape::Ack(b, e)),
        (any::<u16>(), text(60)).prop_map(|(c, m)| Shape::Error(c, m)),
        option_pairs().prop_map(Shape::Oack),
    ]
}

fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn owned(pairs: &[(String, String)]) -> Vec<(&str, String)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn packet_emit_parse_round_trip(shape in shape()) {
        let mut buf = vec![0u8; 4096];
        let (n, expected) = match &shape {
            Shape::Request(op, file, mode, opts) => {
                let n = Emit::request(&mut buf, *op, file, mode, &owned(opts)).expect("fits");
                let req = Request { filename: file, mode, options: borrowed(opts) };
                (n, if *op == OP_RRQ { TftpRepr::Rrq(req) } else { TftpRepr::Wrq(req) })
            }
            Shape::Data(block, data) => {
                (Emit::data(&mut buf, *block, data).expect("fits"), TftpRepr::Data { block: *block, data })
            }
            Shape::Ack(block, extra) => (
                Emit::ack(&mut buf, *block, *extra).expect("fits"),
                TftpRepr::Ack { block: *block, extra: *extra },
            ),
            Shape::Error(code, message) => (
                Emit::error(&mut buf, ErrorCode::from_code(*code), message).expect("fits"),
                TftpRepr::Error { code: ErrorCode::from_code(*code), message },
            ),
            Shape::Oack(opts) => (
                Emit::oack(&mut buf, &owned(opts)).expect("fits"),
                TftpRepr::Oack { options: borrowed(opts) },
            ),
        };
        prop_assert_eq!(TftpRepr::parse_bytes(&buf[..n]), Ok(expected));
        // Too small a buffer is an error, never a panic or a short packet.
        if n > 0 {
            let short = match &shape {
                Shape::Request(op, f, m, o) => Emit::request(&mut buf[..n - 1], *op, f, m, &owned(o)),
                Shape::Data(b, d) => Emit::data(&mut buf[..n - 1], *b, d),
                Shape::Ack(b, e) => Emit::ack(&mut buf[..n - 1], *b, *e),
                Shape::Error(c, m) => Emit::error(&mut buf[..n - 1], ErrorCode::from_code(*c), m),
                Shape::Oack(o) => Emit::oack(&mut buf[..n - 1], &owned(o)),
            };
            prop_assert!(short.is_err());
        }
    }

    /// RFC 2347-2349 and 7440 bounds, the server's limits, and an OACK that names each option
    /// once and says exactly what the transfer uses, whatever the client repeats.
    #[test]
    fn negotiation_stays_in_bounds_and_echoes_what_it_uses(
        opts in option_pairs(),
        file_len in prop_oneof![Just(0u64), any::<u64>()],
        max_blksize in MIN_BLKSIZE..=MAX_BLKSIZE,
        max_windowsize in 1u16..=u16::MAX,
        max_timeout in (1u64..=300).prop_map(Duration::from_secs),
        msftwindow in any::<bool>(),
    ) {
        let limits = Limits { max_blksize, max_windowsize, max_timeout, msftwindow };
        let n = options::negotiate(&borrowed(&opts), file_len, limits);
        // Unless the client asks, RFC 1350's 512 bytes and one block at a time apply.
        if n.oack.iter().any(|(k, _)| *k == "blksize") {
            prop_assert!((MIN_BLKSIZE..=max_blksize).contains(&n.blksize));
        } else {
            prop_assert_eq!(n.blksize, options::DEFAULT_BLKSIZE);
        }
        prop_assert!((1..=max_windowsize).contains(&n.windowsize));
        if let Some(t) = n.timeout {
            prop_assert!(t >= Duration::from_secs(1) && t <= Duration::from_secs(255));
            prop_assert!(t <= max_timeout);
        }
        prop_assert!(!n.msftwindow || msftwindow);
        for (i, (name, value)) in n.oack.iter().enumerate() {
            prop_assert!(
                n.oack[..i].iter().all(|(other, _)| other != name),
                "{} echoed twice: {:?}", name, n.oack
            );
            let used = match *name {
                "blksize" => n.blksize.to_string(),
                "windowsize" => n.windowsize.to_string(),
                "timeout" => n.timeout.map_or(0, |t| t.as_secs()).to_string(),
                "tsize" => file_len.to_string(),
                "msftwindow" => options::MSFT_WINDOW_REPLY.to_owned(),
                other => return Err(TestCaseError::fail(format!("unknown option {other}"))),
            };
            prop_assert_eq!(value, &used, "OACK {} differs from what is used", name);
        }
    }
}

// ---- the transfer model ------------------------------------------------------------------

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 7)), 2070);

fn server_addr(local: Local) -> SocketAddr {
    let port = match local {
        Local::Listener => 69,
        Local::Socket(id) => 10_000 + (id.0 % 50_000) as u16,
    };
    SocketAddr::new(IpAddr::V4(SERVER_IP), port)
}

fn local_of(addr: SocketAddr) -> Local {
    match addr.port() {
        69 => Local::Listener,
        p => Local::Socket(SocketId(u64::from(p - 10_000))),
    }
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    len: usize,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    tsize: bool,
    /// The client's retransmission timeout: 1 s (iPXE), 2 s (BIOS ROMs), 4 s (EDK2).
    client_timeout: Duration,
    faults: Faults,
    /// Datagrams to lose on purpose, by the order they arrive in (both directions counted).
    lose: Vec<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop_oneof![0usize..=1500, 0usize..=40_000],
        proptest::option::of(prop_oneof![
            Just(1468u16),
            Just(1432),
            Just(512),
            32u16..=1468
        ]),
        proptest::option::of(prop_oneof![Just(4u16), Just(8), Just(64), 1u16..=16]),
        any::<bool>(),
        prop_oneof![Just(1u64), Just(2), Just(4)],
        (
            prop_oneof![Just(0.0), 0.0..0.2f64],
            0.0..0.2f64,
            0.0..0.5f64,
            0u64..5_000,
            0u64..20_000,
        ),
    )
        .prop_map(
            |(
                seed,
                len,
                blksize,
                windowsize,
                tsize,
                secs,
                (loss, dup, reorder, latency, jitter),
            )| Case {
                seed,
                len,
                blksize,
                windowsize,
                tsize,
                client_timeout: Duration::from_secs(secs),
                lose: Vec::new(),
                faults: Faults {
                    loss,
                    duplicate: dup,
                    reorder,
                    latency: Duration::from_micros(latency.max(1)),
                    jitter: Duration::from_micros(jitter),
                },
            },
        )
}

/// What one simulated download showed.
#[derive(Debug)]
struct Run {
    /// The download failed (under loss; see `download`).
    failed: bool,
    /// Virtual time from the first RRQ until the client finished.
    client_time: Duration,
    /// ... and until the server ended the transfer too.
    server_time: Duration,
    /// Datagrams the network lost, and DATA the client got out of order (overtaken,
    /// duplicated or resent): each can cost a timeout.
    disruptions: u64,
    rounds: u64,
    rtt_max: Duration,
    /// Datagrams that reached the network's far end (lost on purpose or not).
    arrivals: u64,
}

/// Reads the server's events: the window it granted, when the transfer ended; a refusal or an
/// abort fails the case.
fn events(
    server: &mut TftpServer,
    now: std::time::Instant,
    window: &mut Option<u16>,
    done: &mut Option<std::time::Instant>,
) -> Result<(), TestCaseError> {
    while let Some(event) = server.poll_event() {
        match event {
            TftpEvent::TransferStarted { windowsize, .. } => *window = Some(windowsize),
            TftpEvent::TransferEnded { outcome, .. } => {
                *done = Some(now);
                // The server gave up, or took the transfer for superseded (a client's time-out
                // or ERROR is the client's business).
                let aborted = matches!(
                    outcome,
                    TransferOutcome::Aborted(
                        Abort::Server(_) | Abort::Client(ClientAbort::Superseded)
                    )
                );
                prop_assert!(!aborted, "server aborted: {:?}", outcome);
            }
            TftpEvent::Refused { reason, .. } => {
                return Err(TestCaseError::fail(format!("refused: {reason}")));
            }
        }
    }
    Ok(())
}

const SERVER_TIMEOUT: Duration = Duration::from_millis(1000);
const RETRIES: u32 = 30;

fn download(c: &Case) -> Result<Run, TestCaseError> {
    let data: Vec<u8> = (0..c.len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ c.seed as u8)
        .collect();
    let mut images = MemoryCatalog::new();
    images.insert("boot/loader.efi", data.clone());
    let server_config = TftpServerConfig {
        timeout_ms: SERVER_TIMEOUT.as_millis() as u64,
        retries: RETRIES,
        msftwindow: false,
        ..TftpServerConfig::default()
    };
    let mut server = TftpServer::new(server_config);
    let mut net = SimNet::new(c.seed, c.faults);
    let client_config = ClientConfig {
        blksize: c.blksize,
        windowsize: c.windowsize,
        tsize: c.tsize,
        retries: RETRIES,
        timeout: c.client_timeout,
        ..ClientProfile::Plain.config("boot/loader.efi")
    };
    let mut client = TftpClient::new(net.now(), server_addr(Local::Listener), client_config);
    let mut buf = vec![0u8; 65_536];
    let start = net.now();
    let mut got: Vec<u8> = Vec::new();
    // The highest block the client acknowledged, as far as the server has heard.
    let mut acked_heard: u64 = 0;
    let mut window: Option<u16> = None;
    let mut client_done = None;
    let mut server_done = None;
    let mut arrivals = 0u64;
    let mut lost = 0u64;
    loop {
        let now = net.now();
        prop_assert!(
            now - start < Duration::from_secs(3600),
            "no end after an hour: {:?}",
            c
        );
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now, &mut images);
            events(&mut server, now, &mut window, &mut server_done)?;
        }
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        while let Some((local, t)) = server.poll_transmit(now, 64, &mut buf) {
            if let Payload::Segments { count, .. } = t.payload {
                let first = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
                let last = first + u64::from(count) - 1;
                let ws = u64::from(window.unwrap_or(1));
                prop_assert!(
                    last <= acked_heard + ws,
                    "block {} sent with only {} acknowledged, window {}: {:?}",
                    last,
                    acked_heard,
                    ws,
                    c
                );
            }
            net.send_transmit(server_addr(local), &t, &buf, &images);
        }
        events(&mut server, now, &mut window, &mut server_done)?;
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            net.send_transmit(CLIENT, &t, &buf, &images);
        }
        let mut delivered = false;
        while let Some(d) = net.deliver() {
            delivered = true;
            arrivals += 1;
            if c.lose.contains(&(arrivals - 1)) {
                lost += 1;
                continue;
            }
            if d.to == CLIENT {
                if let Some(del) = client.handle_datagram(now, d.from, &d.bytes) {
                    prop_assert_eq!(
                        del.offset,
                        got.len() as u64,
                        "out of order or twice: {:?}",
                        c
                    );
                    got.extend_from_slice(&d.bytes[del.range]);
                }
            } else {
                if let Ok(TftpRepr::Ack { block, .. }) = TftpRepr::parse_bytes(&d.bytes) {
                    acked_heard = acked_heard.max(u64::from(block));
                }
                let meta = DatagramMeta {
                    remote: d.from,
                    local_ip: Some(IpAddr::V4(SERVER_IP)),
                    ifindex: None,
                };
                server.handle_datagram(now, local_of(d.to), meta, &d.bytes, &mut images);
                events(&mut server, now, &mut window, &mut server_done)?;
            }
        }
        if client_done.is_none() && client.outcome().is_some() {
            client_done = Some(now);
        }
        if delivered {
            continue;
        }
        if client_done.is_some() && server.active_transfers() == 0 && net.next_arrival().is_none() {
            break;
        }
        let next = [
            net.next_arrival(),
            server.poll_timeout(),
            client.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) => net.advance_to(t),
            None => return Err(TestCaseError::fail(format!("stalled: {c:?}"))),
        }
    }
    prop_assert_eq!(images.total_open_refs(), 0, "image left open: {:?}", c);
    prop_assert_eq!(server.active_transfers(), 0);
    let failed = match client.outcome().expect("finished") {
        Ok(done) => {
            prop_assert_eq!(done.size, c.len as u64);
            prop_assert!(got == data, "bytes differ: {:?}", c);
            false
        }
        // Enough loss ends any download; what was delivered until then was in order (checked
        // on every delivery). Retries are 30 on both sides, so a few lost datagrams must not.
        Err(_) if net.dropped + lost > SURVIVED_LOSSES => true,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "failed after {} lost datagrams: {e}: {c:?}",
                net.dropped + lost
            )));
        }
    };
    let blksize = u64::from(c.blksize.unwrap_or(512));
    let blocks = c.len as u64 / blksize + 1;
    Ok(Run {
        failed,
        client_time: client_done.expect("client done") - start,
        server_time: server_done.unwrap_or(start) - start,
        disruptions: net.dropped + lost + client.stats().duplicates,
        arrivals,
        rounds: blocks.div_ceil(u64::from(window.unwrap_or(1))) + 1,
        rtt_max: 2 * (c.faults.latency + c.faults.jitter),
    })
}

/// Lost datagrams any download survives.
const SURVIVED_LOSSES: u64 = 2;

/// Each window costs at most one round trip; each lost or out-of-order datagram at most one
/// timeout (the client's or the server's) and a few round trips. After the client is done,
/// the server may still retransmit the last block until it gives up (a lost final ACK): at
/// most its retries, one timeout each.
fn check_bounds(c: &Case, run: &Run) -> Result<(), TestCaseError> {
    let per_loss = SERVER_TIMEOUT.max(c.client_timeout) + 4 * run.rtt_max;
    let bound = (run.rounds + 2) as u32 * run.rtt_max + (run.disruptions + 1) as u32 * per_loss;
    prop_assert!(
        run.client_time <= bound,
        "client done after {:?}, bound {:?}: {:?} {:?}",
        run.client_time,
        bound,
        run,
        c
    );
    let tail = (RETRIES + 1) * SERVER_TIMEOUT + 2 * run.rtt_max;
    prop_assert!(
        run.server_time <= run.client_time + tail,
        "server done after {:?}: {:?} {:?}",
        run.server_time,
        run,
        c
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn transfers_deliver_in_order_within_the_window_and_end(c in case()) {
        let run = download(&c)?;
        check_bounds(&c, &run)?;
    }
}

/// Every way of losing one or two datagrams of a download, for each firmware's timeout and
/// request shape: each download still finishes byte-exact, in the same bounds.
#[test]
fn any_two_lost_datagrams_are_survived() {
    let shapes = [
        // EDK2: blksize and windowsize, so an OACK first.
        (Some(1468), Some(4), false, 1468 * 5),
        // iPXE: blksize and tsize, lock-step.
        (Some(1432), None, true, 1432 * 2 + 7),
        // RFC 1350: no options, no OACK, block 1 answers the RRQ.
        (None, None, false, 512 * 2),
    ];
    for secs in [1, 2, 4] {
        for (blksize, windowsize, tsize, len) in shapes {
            let mut c = Case {
                seed: 1,
                len,
                blksize,
                windowsize,
                tsize,
                client_timeout: Duration::from_secs(secs),
                faults: Faults::NONE,
                lose: Vec::new(),
            };
            let clean = download(&c).expect("a download without loss");
            for i in 0..clean.arrivals {
                for j in i..clean.arrivals {
                    c.lose = if i == j { vec![i] } else { vec![i, j] };
                    let run = download(&c).unwrap_or_else(|e| panic!("{e}"));
                    assert!(!run.failed, "{c:?}");
                    check_bounds(&c, &run).unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    }
}
