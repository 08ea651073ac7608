//! Property tests: DHCP messages and PXE vendor options survive emit -> parse unchanged, and
//! any bytes that parse re-emit to bytes that parse to the same message.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::ids::{ClientUuid, MacAddr};
use super::options::{DhcpOptions, MessageType, PxeBootItem, PxeVendorOptions, code, gather_area};
use super::wire::{BootOp, DhcpRepr};
use crate::proptest_config::config;

/// Codes with a typed field (or no value at all: Pad, End, Overload) never land in `other`.
const TYPED: [u8; 22] = [
    code::PAD,
    code::SUBNET_MASK,
    code::ROUTER,
    code::HOSTNAME,
    code::VENDOR_SPECIFIC,
    code::REQUESTED_IP,
    code::LEASE_TIME,
    code::OVERLOAD,
    code::MESSAGE_TYPE,
    code::SERVER_ID,
    code::PARAMETER_REQUEST_LIST,
    code::MAX_MESSAGE_SIZE,
    code::VENDOR_CLASS,
    code::CLIENT_ID,
    code::TFTP_SERVER_NAME,
    code::BOOTFILE_NAME,
    code::USER_CLASS,
    code::CLIENT_ARCH,
    code::CLIENT_NDI,
    code::CLIENT_MACHINE_ID,
    code::IPXE_ENCAP,
    code::END,
];

fn ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

/// Values up to 600 bytes: longer than one option instance (255), so splitting is covered.
fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// A header text field as parsing returns it: no NUL, within the field.
fn name(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(1..=255u8, 0..=max)
}

prop_compose! {
    fn options()(
        message_type in proptest::option::of(any::<u8>().prop_map(MessageType::from_wire)),
        subnet_mask in proptest::option::of(ip()),
        routers in vec(ip(), 0..4),
        hostname in proptest::option::of(blob(64)),
        vendor_specific in proptest::option::of(blob(600)),
        requested_ip in proptest::option::of(ip()),
        lease_time in proptest::option::of(any::<u32>()),
        server_id in proptest::option::of(ip()),
        parameter_request_list in proptest::option::of(blob(40)),
        max_message_size in proptest::option::of(any::<u16>()),
        (vendor_class, client_id, tftp_server_name, bootfile_name, user_class) in (
            proptest::option::of(blob(40)),
            proptest::option::of(blob(20)),
            proptest::option::of(blob(20)),
            proptest::option::of(blob(400)),
            proptest::option::of(blob(20)),
        ),
        client_arch in vec(any::<u16>(), 0..4),
        client_ndi in proptest::option::of(any::<[u8; 3]>()),
        client_uuid in proptest::option::of(any::<[u8; 16]>().prop_map(ClientUuid::from_wire)),
        ipxe_encap in proptest::option::of(blob(80)),
        other in btree_map(any::<u8>().prop_filter("typed code", |c| !TYPED.contains(c)), blob(300), 0..4),
    ) -> DhcpOptions {
        DhcpOptions {
            message_type, subnet_mask, routers, hostname, vendor_specific, requested_ip,
            lease_time, server_id, parameter_request_list, max_message_size, vendor_class,
            client_id, tftp_server_name, bootfile_name, user_class, client_arch, client_ndi,
            client_uuid, ipxe_encap, other,
        }
    }
}

prop_compose! {
    fn repr()(
        reply in any::<bool>(),
        (hops, xid, secs, broadcast) in (any::<u8>(), any::<u32>(), any::<u16>(), any::<bool>()),
        (ciaddr, yiaddr, siaddr, giaddr) in (ip(), ip(), ip(), ip()),
        mac in any::<[u8; 6]>(),
        server_name in name(64),
        boot_file in name(128),
        options in options(),
    ) -> DhcpRepr {
        DhcpRepr {
            op: if reply { BootOp::Reply } else { BootOp::Request },
            hops, xid, secs, broadcast, ciaddr, yiaddr, siaddr, giaddr,
            client_mac: MacAddr(mac),
            server_name, boot_file, options,
        }
    }
}

prop_compose! {
    fn pxe_options()(
        discovery_control in proptest::option::of(any::<u8>()),
        boot_servers in proptest::option::of(blob(40)),
        boot_menu in proptest::option::of(blob(300)),
        menu_prompt in proptest::option::of(blob(40)),
        boot_item in proptest::option::of((any::<u16>(), any::<u16>())),
        other in btree_map(
            any::<u8>().prop_filter("typed sub-option", |c| ![0, 6, 8, 9, 10, 71, 255].contains(c)),
            blob(20),
            0..3,
        ),
    ) -> PxeVendorOptions {
        PxeVendorOptions {
            discovery_control, boot_servers, boot_menu, menu_prompt,
            boot_item: boot_item.map(|(server_type, layer)| PxeBootItem { server_type, layer }),
            other,
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn message_emit_parse_round_trip(repr in repr()) {
        let bytes = repr.to_bytes();
        prop_assert_eq!(bytes.len(), repr.buffer_len());
        prop_assert!(bytes.len() >= 300);
        prop_assert_eq!(DhcpRepr::parse_bytes(&bytes), Ok(repr));
    }

    #[test]
    fn options_emit_gather_round_trip(options in options()) {
        let mut buf = vec![0u8; options.buffer_len()];
        prop_assert_eq!(options.emit(&mut buf), Ok(buf.len()));
        let mut all = BTreeMap::new();
        prop_assert_eq!(gather_area(&buf, &mut all), Ok(()));
        prop_assert_eq!(DhcpOptions::from_aggregate(all), Ok(options));
    }

    #[test]
    fn pxe_vendor_options_round_trip(pxe in pxe_options()) {
        prop_assert_eq!(PxeVendorOptions::parse(&pxe.to_bytes()), Ok(pxe));
    }

    /// Whatever parses, however odd (overload, split options, junk after End), emits a
    /// message that parses to the same thing: the codec has one meaning per message.
    #[test]
    fn parsed_bytes_re_emit_to_the_same_message(
        repr in repr(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let mut bytes = repr.to_bytes();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(parsed) = DhcpRepr::parse_bytes(&bytes) {
            prop_assert_eq!(DhcpRepr::parse_bytes(&parsed.to_bytes()), Ok(parsed));
        }
    }
}
