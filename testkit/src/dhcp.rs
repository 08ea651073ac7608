//! DHCP messages as a client (or a relay on its behalf) sends them, over the engine's codec.

use std::net::Ipv4Addr;

use zpxe_engine::dhcp::{BootOp, DhcpOptions, DhcpRepr, MacAddr};

/// A client's BOOTREQUEST carrying `options`: every other field zero or empty, as firmware
/// sends them before it has an address. A `giaddr` other than 0.0.0.0 makes it relayed, and a
/// relay counts itself in `hops` (RFC 2131 section 4.1), so `hops` is then 1. Fields a case
/// needs otherwise (`ciaddr`, `secs`, ...) are set on the result.
pub fn boot_request(xid: u32, mac: MacAddr, giaddr: Ipv4Addr, options: DhcpOptions) -> DhcpRepr {
    DhcpRepr {
        op: BootOp::Request,
        hops: u8::from(!giaddr.is_unspecified()),
        xid,
        secs: 0,
        broadcast: false,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr,
        client_mac: mac,
        server_name: Vec::new(),
        boot_file: Vec::new(),
        options,
    }
}
