//! The TFTP server machine fed a script of datagrams from several peers, to port 69 and to
//! transfer ports, with the clock moving and timeouts firing in between.
//!
//! Input: a config byte, the number of transfer ports the platform has (0-3, so transfers
//! share sockets or end for want of one), then records of a tag byte (what to do, from whom)
//! and, for datagrams, a u16 length and the bytes.
//! Oracles: no panic; every transmit names bytes inside the image it holds; a transfer moved
//! off a socket that could not be bound goes to one that is open; once input stops and the
//! clock runs on, every transfer ends, every image reference is released and every socket is
//! handed back.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zpxe_engine::image::MemoryCatalog;
use zpxe_engine::net::{DatagramMeta, Payload};
use zpxe_engine::tftp::{
    Local, ServerAbort, SocketId, TftpEvent, TftpServer, TftpServerConfig, TransferId,
};
use zpxe_fuzz::Script;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn peer(n: u8) -> SocketAddr {
    match n & 3 {
        0 => "10.0.0.50:2070".parse().unwrap(),
        1 => "10.0.0.50:2071".parse().unwrap(),
        2 => "10.0.0.51:1024".parse().unwrap(),
        _ => "[fe80::5]:3000".parse().unwrap(),
    }
}

fn catalog() -> MemoryCatalog {
    let mut images = MemoryCatalog::new();
    images.insert("boot/loader.efi", (0..70_000u32).map(|i| i as u8).collect());
    images.insert("pxelinux.0", vec![0x55; 1432 * 3]);
    images.insert("small.bin", vec![7; 512]);
    images.insert("empty", Vec::new());
    images.insert("Boot/BCD", vec![1; 9000]);
    images
}

/// The platform's side: binds a socket for each transfer socket the engine sends from while
/// `ports` lasts, then says none is left; closes the ones the engine hands back.
struct Platform {
    ports: usize,
    open: HashSet<SocketId>,
    draws: u64,
}

fn drain(
    server: &mut TftpServer,
    images: &mut MemoryCatalog,
    platform: &mut Platform,
    now: Instant,
    started: &mut Vec<TransferId>,
    buf: &mut [u8],
) {
    while let Some((local, transmit)) = server.poll_transmit(now, 64, buf) {
        if let Local::Socket(socket) = local
            && !platform.open.contains(&socket)
        {
            // A socket is bound only for a transfer; an ERROR to a socket that is gone is
            // dropped.
            if server.transfer_of(local, transmit.destination).is_none() {
                continue;
            }
            if platform.ports > 0 {
                platform.ports -= 1;
                platform.open.insert(socket);
                server.socket_opened(socket);
            } else {
                platform.draws += 1;
                let moved =
                    server.socket_unavailable(socket, platform.draws.wrapping_mul(0x9e37), images);
                if let Some(moved) = moved {
                    assert!(
                        platform.open.contains(&moved),
                        "moved to a socket never opened"
                    );
                }
                continue;
            }
        }
        if let Payload::Segments {
            header_len,
            count,
            segment,
            image,
            range,
        } = transmit.payload
        {
            assert_eq!(header_len, 4);
            assert!(count >= 1);
            assert!(range.len() <= u64::from(count) * u64::from(segment));
            assert!(
                images.slice(image, range).is_some(),
                "segments outside their image: {range:?}"
            );
        }
    }
    while let Some(socket) = server.poll_unused_socket() {
        assert!(
            platform.open.remove(&socket),
            "handed back a socket never opened"
        );
        platform.ports += 1;
    }
    while let Some(event) = server.poll_event() {
        if let TftpEvent::TransferStarted { id, .. } = event {
            started.push(id);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script::new(data);
    let c = script.byte();
    let config = TftpServerConfig {
        mtu: if c & 1 == 0 { 1500 } else { u16::MAX },
        single_port: c & 2 != 0,
        msftwindow: c & 4 != 0,
        max_transfers: if c & 8 != 0 { 2 } else { 4096 },
        max_transfers_per_client: if c & 16 != 0 { 1 } else { 8 },
        max_windowsize: if c & 32 != 0 { 4 } else { 64 },
        allow_fragmentation: c & 64 != 0,
        ..TftpServerConfig::default()
    };
    let mut server = TftpServer::new(config);
    let mut images = catalog();
    images.set_case_insensitive(c & 128 != 0);
    let mut now = Instant::now();
    let mut started: Vec<TransferId> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    // Transfer ports the platform has: none (every transfer shares, or ends), or a few.
    let mut platform = Platform {
        ports: usize::from(script.byte() % 4),
        open: HashSet::new(),
        draws: 0,
    };

    let mut steps = 0;
    while !script.is_empty() && steps < 256 {
        steps += 1;
        let tag = script.byte();
        match tag & 7 {
            0..=3 => {
                let local = match tag & 3 {
                    0 | 1 => Local::Listener,
                    // A transfer port: one that was handed out, or one that never was.
                    _ => match started.get(usize::from(tag >> 5)) {
                        Some(&id) if tag & 1 == 0 => Local::Socket(SocketId(id.0)),
                        Some(&id) => Local::Socket(SocketId(id.0.wrapping_add(1000))),
                        None => Local::Socket(SocketId(u64::from(tag >> 5))),
                    },
                };
                let meta = DatagramMeta {
                    remote: peer(tag >> 3),
                    local_ip: Some(IpAddr::V4(SERVER)),
                    ifindex: None,
                };
                let datagram = script.record();
                server.handle_datagram(now, local, meta, datagram, &mut images);
            }
            4 => {
                now += Duration::from_millis(u64::from(script.byte()) * 50);
                if server.poll_timeout().is_some_and(|t| t <= now) {
                    server.handle_timeout(now, &mut images);
                }
            }
            5 => {
                if let Some(&id) = started.get(usize::from(tag >> 3)) {
                    let reason =
                        [ServerAbort::OutOfPorts, ServerAbort::FileChanged][usize::from(tag >> 7)];
                    server.abort_transfer(id, reason, &mut images);
                }
            }
            6 => server.stop_accepting(),
            _ => server.set_mtu(script.u16()),
        }
        drain(
            &mut server,
            &mut images,
            &mut platform,
            now,
            &mut started,
            &mut buf,
        );
    }

    // The peers go quiet: every transfer must time out and let go of its image.
    let mut rounds = 0;
    while let Some(at) = server.poll_timeout() {
        rounds += 1;
        assert!(rounds < 100_000, "timers keep firing with no input");
        now = now.max(at);
        server.handle_timeout(now, &mut images);
        drain(
            &mut server,
            &mut images,
            &mut platform,
            now,
            &mut started,
            &mut buf,
        );
    }
    assert_eq!(
        server.active_transfers(),
        0,
        "a transfer outlived every timer"
    );
    assert_eq!(images.total_open_refs(), 0, "an image is still held");
    assert_eq!(
        server.sockets_in_use(),
        0,
        "a socket outlived its transfers"
    );
    assert!(
        platform.open.is_empty(),
        "an open socket was never handed back"
    );
});
