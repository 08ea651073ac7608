//! Seeded, bounded fuzzing under `cargo test`: random bytes and mutated firmware requests into
//! the responder and the client (nothing may panic), and random messages through emit/parse.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use super::fixtures;
use super::ids::{ClientUuid, MacAddr};
use super::options::{DhcpOptions, MessageType, PxeVendorOptions};
use super::proxy::{DhcpEvent, DhcpPort, ProxyDhcp, ProxyDhcpConfig};
use super::wire::{BootOp, DhcpRepr};
use super::{DhcpClient, DhcpClientConfig};
use crate::net::DatagramMeta;

const ITERATIONS: usize = 20_000;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        fixtures::IPXE_BIOS_DISCOVER.bytes(),
        fixtures::IPXE_BIOS_REQUEST_4011.bytes(),
        fixtures::IPXE_EFI_DISCOVER.bytes(),
        fixtures::EDK2_DISCOVER.bytes(),
        fixtures::EDK2_REQUEST_4011.bytes(),
        fixtures::RELAYED_DISCOVER.bytes(),
        fixtures::HTTP_BOOT_DISCOVER.bytes(),
        fixtures::LINUX_DISCOVER.bytes(),
        fixtures::overloaded_discover(),
    ]
}

/// One random edit: flip, overwrite, insert, delete, truncate, or splice a random option.
fn mutate(rng: &mut SmallRng, bytes: &mut Vec<u8>) {
    let at = if bytes.is_empty() {
        0
    } else {
        rng.random_range(0..bytes.len())
    };
    match rng.random_range(0..7) {
        0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.random_range(0..8),
        1 if !bytes.is_empty() => bytes[at] = rng.random(),
        2 => bytes.insert(at, rng.random()),
        3 if !bytes.is_empty() => {
            bytes.remove(at);
        }
        4 => bytes.truncate(at),
        5 => {
            // A random option with a plausible code (incl. 52 overload and 43 with PXE data).
            let codes = [
                0x34, 0x35, 0x2b, 0x3c, 0x4d, 0x5d, 0x61, 0xaf, 0x43, 0x00, 0xff,
            ];
            let code = codes[rng.random_range(0..codes.len())];
            let len = rng.random_range(0..6u8);
            let mut option = vec![code, len];
            option.extend((0..len).map(|_| rng.random::<u8>()));
            let at = at.max(240.min(bytes.len()));
            bytes.splice(at..at, option);
        }
        _ if bytes.len() > 240 => {
            // Rewrite the option overload value, the most structural byte there is.
            bytes.splice(240..240, [0x34, 0x01, rng.random_range(0..5)]);
        }
        _ => {}
    }
}

#[test]
fn proxy_survives_random_and_mutated_datagrams() {
    let mut rng = SmallRng::seed_from_u64(0x5eed_d4c9);
    let seeds = seeds();
    let mut proxy = ProxyDhcp::new(ProxyDhcpConfig::default());
    let meta = DatagramMeta {
        remote: "10.0.0.50:68".parse().unwrap(),
        local_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        ifindex: Some(2),
    };
    let now = Instant::now();
    let mut buf = [0u8; 1500];
    let (mut answered, mut ignored) = (0, 0);
    for i in 0..ITERATIONS {
        let bytes = if i % 10 == 0 {
            let len = rng.random_range(0..600);
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            if len >= 240 && rng.random() {
                bytes[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
            }
            bytes
        } else {
            let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..5) {
                mutate(&mut rng, &mut bytes);
            }
            bytes
        };
        let port = if rng.random() {
            DhcpPort::Dhcp
        } else {
            DhcpPort::Pxe
        };
        proxy.handle_datagram(now, port, meta, &bytes);
        while let Some((_, transmit)) = proxy.poll_transmit(now, &mut buf) {
            // Whatever we send must itself parse.
            let crate::net::Payload::Bytes { len } = transmit.payload else {
                panic!()
            };
            assert!(DhcpRepr::parse_bytes(&buf[..len]).is_ok());
        }
        while let Some(event) = proxy.poll_event() {
            match event {
                DhcpEvent::Ignored { .. } => ignored += 1,
                _ => answered += 1,
            }
        }
    }
    // The mutations must leave enough valid requests to exercise the answering paths too.
    assert!(answered > ITERATIONS / 20, "answered {answered}");
    assert!(ignored > ITERATIONS / 10, "ignored {ignored}");
}

#[test]
fn client_survives_mutated_replies() {
    let mut rng = SmallRng::seed_from_u64(0x00c1_1e47);
    let now = Instant::now();
    let from: SocketAddr = "10.0.0.1:67".parse().unwrap();
    let mut proxy = ProxyDhcp::new(ProxyDhcpConfig::default());
    let mut buf = [0u8; 1500];
    for i in 0..2_000 {
        let mut client = DhcpClient::new(
            now,
            DhcpClientConfig {
                rng_seed: i,
                request_4011: i % 2 == 0,
                ..Default::default()
            },
        );
        let Some(transmit) = client.poll_transmit(now, &mut buf) else {
            panic!()
        };
        let crate::net::Payload::Bytes { len } = transmit.payload else {
            panic!()
        };
        let meta = DatagramMeta {
            remote: "0.0.0.0:68".parse().unwrap(),
            local_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            ifindex: None,
        };
        proxy.handle_datagram(now, DhcpPort::Dhcp, meta, &buf[..len]);
        while proxy.poll_event().is_some() {}
        let Some((_, reply)) = proxy.poll_transmit(now, &mut buf) else {
            panic!()
        };
        let crate::net::Payload::Bytes { len } = reply.payload else {
            panic!()
        };
        let mut bytes = buf[..len].to_vec();
        for _ in 0..rng.random_range(0..4) {
            mutate(&mut rng, &mut bytes);
        }
        client.handle_datagram(now, from, &bytes);
        let _ = client.outcome();
        let _ = client.poll_transmit(now, &mut buf);
    }
}

fn random_bytes(rng: &mut SmallRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    (0..len).map(|_| rng.random()).collect()
}

fn maybe<T>(rng: &mut SmallRng, make: impl FnOnce(&mut SmallRng) -> T) -> Option<T> {
    if rng.random() { Some(make(rng)) } else { None }
}

fn random_repr(rng: &mut SmallRng) -> DhcpRepr {
    let ip = |rng: &mut SmallRng| Ipv4Addr::from(rng.random::<u32>());
    let typed = [
        0x00, 0x01, 0x03, 0x0c, 0x2b, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x39, 0x3c, 0x3d, 0x42,
        0x43, 0x4d, 0x5d, 0x5e, 0x61, 0xaf, 0xff,
    ];
    let mut other = BTreeMap::new();
    for _ in 0..rng.random_range(0..4) {
        let code: u8 = rng.random();
        if !typed.contains(&code) {
            other.insert(code, random_bytes(rng, 300));
        }
    }
    // Names without NUL that fit their fields.
    let name = |rng: &mut SmallRng, max: usize| -> Vec<u8> {
        let len = rng.random_range(0..=max);
        (0..len).map(|_| rng.random_range(1..=255u8)).collect()
    };
    DhcpRepr {
        op: if rng.random() {
            BootOp::Request
        } else {
            BootOp::Reply
        },
        hops: rng.random(),
        xid: rng.random(),
        secs: rng.random(),
        broadcast: rng.random(),
        ciaddr: ip(rng),
        yiaddr: ip(rng),
        siaddr: ip(rng),
        giaddr: ip(rng),
        client_mac: MacAddr(rng.random()),
        server_name: name(rng, 64),
        boot_file: name(rng, 128),
        options: DhcpOptions {
            message_type: maybe(rng, |r| MessageType::from_wire(r.random())),
            subnet_mask: maybe(rng, ip),
            routers: (0..rng.random_range(0..3)).map(|_| ip(rng)).collect(),
            hostname: maybe(rng, |r| random_bytes(r, 40)),
            vendor_specific: maybe(rng, |r| random_bytes(r, 300)),
            requested_ip: maybe(rng, ip),
            lease_time: maybe(rng, |r| r.random()),
            server_id: maybe(rng, ip),
            parameter_request_list: maybe(rng, |r| random_bytes(r, 30)),
            max_message_size: maybe(rng, |r| r.random()),
            vendor_class: maybe(rng, |r| random_bytes(r, 40)),
            client_id: maybe(rng, |r| random_bytes(r, 20)),
            tftp_server_name: maybe(rng, |r| random_bytes(r, 20)),
            bootfile_name: maybe(rng, |r| random_bytes(r, 400)),
            user_class: maybe(rng, |r| random_bytes(r, 20)),
            client_arch: (0..rng.random_range(0..3)).map(|_| rng.random()).collect(),
            client_ndi: maybe(rng, |r| r.random()),
            client_uuid: maybe(rng, |r| ClientUuid::from_wire(r.random())),
            ipxe_encap: maybe(rng, |r| random_bytes(r, 60)),
            other,
        },
    }
}

#[test]
fn emit_parse_round_trips() {
    let mut rng = SmallRng::seed_from_u64(0x0ddb_a11a);
    for _ in 0..2_000 {
        let repr = random_repr(&mut rng);
        let bytes = repr.to_bytes();
        assert_eq!(bytes.len(), repr.buffer_len());
        assert_eq!(DhcpRepr::parse_bytes(&bytes).as_ref(), Ok(&repr));
    }
}

#[test]
fn pxe_vendor_options_parse_never_panics() {
    let mut rng = SmallRng::seed_from_u64(43);
    for _ in 0..5_000 {
        let bytes = random_bytes(&mut rng, 40);
        if let Ok(pxe) = PxeVendorOptions::parse(&bytes) {
            let again = PxeVendorOptions::parse(&pxe.to_bytes());
            assert_eq!(again.as_ref(), Ok(&pxe));
        }
    }
}
