//! DHCP packets and options: what a client on the segment (or a relay) sends to 67 and 4011.
//!
//! Input: one selector byte (port, arrival address, relay), then the datagram.
//! Oracles: no panic; a message that parses emits bytes that parse back to the same message;
//! PXE vendor options round-trip; every reply the responder queues is a well-formed message.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use zpxe_engine::dhcp::{BootOp, DhcpPort, DhcpRepr, ProxyDhcp, ProxyDhcpConfig, PxeVendorOptions};
use zpxe_engine::net::{DatagramMeta, Payload};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datagram)) = data.split_first() else {
        return;
    };

    if let Ok(repr) = DhcpRepr::parse_bytes(datagram) {
        let bytes = repr.to_bytes();
        assert_eq!(bytes.len(), repr.buffer_len());
        let again = DhcpRepr::parse_bytes(&bytes).expect("an emitted message parses");
        assert_eq!(again, repr, "parse -> emit -> parse changed the message");
        let _ = repr.options.user_classes();
        if let Some(raw) = &repr.options.vendor_specific
            && let Ok(pxe) = PxeVendorOptions::parse(raw)
        {
            assert_eq!(PxeVendorOptions::parse(&pxe.to_bytes()).as_ref(), Ok(&pxe));
        }
    }

    let port = if selector & 1 == 0 {
        DhcpPort::Dhcp
    } else {
        DhcpPort::Pxe
    };
    let remote: SocketAddr = match (selector >> 1) & 3 {
        0 => "0.0.0.0:68".parse().unwrap(),
        1 => "10.0.0.50:68".parse().unwrap(),
        2 => "10.1.0.1:67".parse().unwrap(),
        _ => "[fe80::1]:68".parse().unwrap(),
    };
    let local_ip = match (selector >> 3) & 3 {
        0 => Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        1 => None,
        2 => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        _ => Some("fe80::2".parse().unwrap()),
    };
    let config = ProxyDhcpConfig {
        server_ip: (selector & 0x20 != 0).then_some(Ipv4Addr::new(192, 168, 1, 1)),
        ..ProxyDhcpConfig::default()
    };
    let mut proxy = ProxyDhcp::new(config);
    let meta = DatagramMeta {
        remote,
        local_ip,
        ifindex: (selector & 0x40 != 0).then_some(2),
    };
    let now = Instant::now();
    proxy.handle_datagram(now, port, meta, datagram);
    let mut buf = [0u8; 1500];
    while let Some((_, transmit)) = proxy.poll_transmit(now, &mut buf) {
        let Payload::Bytes { len } = transmit.payload else {
            panic!("a DHCP reply names image bytes");
        };
        let reply = DhcpRepr::parse_bytes(&buf[..len]).expect("a reply parses");
        assert_eq!(reply.op, BootOp::Reply);
    }
    while proxy.poll_event().is_some() {}
});
