//! DHCP and PXE: the wire codec, the boot policy, the proxyDHCP responder, the DHCP server and
//! a firmware-like client.
//!
//! In proxy and pxe-only modes zpxe hands out no addresses. The site's DHCP server does that;
//! zpxe answers PXE clients beside it (on port 67, and on 4011 for clients that ask the boot
//! server directly) with the boot server and file, and hands iPXE a script URL instead of the
//! loader so it does not loop. In server mode ([`server`]) zpxe is that DHCP server, and the
//! same boot answer rides in its OFFER and ACK.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod fuzz_tests;
/// Client identities moved to the engine's top level ([`crate::ids`]); this path stays.
pub use crate::ids;
pub mod leases;
pub mod options;
pub mod policy;
#[cfg(test)]
mod prop_tests;
pub mod proxy;
pub mod server;
pub mod template;
pub mod wire;

pub use client::{BootAnswer, DhcpClient, DhcpClientConfig, DhcpClientError};
pub use ids::{ClientUuid, MacAddr};
pub use options::{DhcpOptions, MessageType, PxeBootItem, PxeVendorOptions};
pub use policy::{
    BootKind, BootPolicy, BootRule, BootTarget, ClientFacts, Decision, Ipv4Cidr, NextServerFrom,
    PolicyRefusal,
};
pub use proxy::client_facts;
pub use proxy::{
    ClientOverride, ClientOverrides, DhcpEvent, DhcpPort, IgnoreReason, ProxyDhcp, ProxyDhcpConfig,
};
pub use server::{DhcpServer, DhcpServerConfig, ServerEvent};
pub use wire::{BootOp, DhcpRepr, Packet, WireError};
