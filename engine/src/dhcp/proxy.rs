//! The proxyDHCP/PXE responder: answers PXE clients' DISCOVER and REQUEST on port 67 and their
//! REQUEST/INFORM on port 4011 with the boot server and file, never with an address.
//!
//! Stateless: each request is answered from the request and the policy alone, so several zpxe
//! nodes can answer the same segment.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use super::ids::{ClientUuid, MacAddr};
use super::options::{DISCOVERY_USE_BOOT_FILE, DhcpOptions, MessageType, PxeVendorOptions};
use super::policy::{BootKind, BootPolicy, ClientFacts, PolicyRefusal};
use super::wire::{BootOp, CLIENT_PORT, DhcpRepr, SERVER_PORT, WireError};
use crate::net::{DatagramMeta, Payload, Transmit};

/// Replies waiting for `poll_transmit` beyond this are dropped: a flood must not grow memory.
const MAX_QUEUED_REPLIES: usize = 256;
const MAX_QUEUED_EVENTS: usize = 1024;
/// The longest name that fits the 128-byte `file` field with its terminating NUL.
const MAX_FILE_FIELD: usize = 127;

const PXE_CLIENT: &[u8] = b"PXEClient";
const HTTP_CLIENT: &[u8] = b"HTTPClient";

/// Which socket a datagram came in on or leaves from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DhcpPort {
    /// UDP 67.
    Dhcp,
    /// UDP 4011, PXE boot server discovery.
    Pxe,
}

impl DhcpPort {
    pub fn number(self) -> u16 {
        match self {
            DhcpPort::Dhcp => SERVER_PORT,
            DhcpPort::Pxe => super::wire::PXE_PORT,
        }
    }
}

/// Runtime settings of the responder (assembled by the binary from its configuration).
#[derive(Debug, Clone)]
pub struct ProxyDhcpConfig {
    pub policy: BootPolicy,
    /// Port of zpxe's HTTP service, for the URL templates.
    pub http_port: u16,
    /// Address to name as the server when the platform cannot tell which local address a
    /// request arrived on.
    pub server_ip: Option<Ipv4Addr>,
    /// The port this responder's DHCP socket is on (67). Replies to relays go to this port on
    /// the relay and replies to clients to the one above it, as with dnsmasq's alternate ports:
    /// a server on 6767 (unprivileged tests, the load generator) talks to relays on 6767 and to
    /// clients on 6768.
    pub dhcp_port: u16,
}

impl Default for ProxyDhcpConfig {
    fn default() -> Self {
        Self {
            policy: BootPolicy::default(),
            http_port: 80,
            server_ip: None,
            dhcp_port: SERVER_PORT,
        }
    }
}

/// What happened to a request, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DhcpEvent {
    Offered {
        mac: MacAddr,
        uuid: Option<ClientUuid>,
        arch: Option<u16>,
        boot_file: String,
        relay: Option<Ipv4Addr>,
        ipxe: bool,
    },
    Acked {
        mac: MacAddr,
        uuid: Option<ClientUuid>,
        arch: Option<u16>,
        boot_file: String,
        relay: Option<Ipv4Addr>,
        ipxe: bool,
        port: DhcpPort,
    },
    Ignored {
        reason: IgnoreReason,
        /// The client, when the message parsed far enough to tell.
        mac: Option<MacAddr>,
    },
}

/// Why a datagram got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IgnoreReason {
    #[error("malformed: {0}")]
    Malformed(WireError),
    #[error("not a BOOTREQUEST")]
    NotBootRequest,
    #[error("not a PXE client")]
    NotPxeClient,
    #[error("message type {0:?} is not answered on this port")]
    UnexpectedMessage(Option<MessageType>),
    #[error("request addressed to another server")]
    NotForUs,
    #[error("no local IPv4 address to name as the server")]
    NoServerAddress,
    #[error(transparent)]
    Policy(PolicyRefusal),
    #[error("reply queue full")]
    QueueFull,
    #[error("a per-client decision says ignore")]
    Overridden,
}

#[derive(Debug)]
struct QueuedReply {
    port: DhcpPort,
    destination: SocketAddr,
    source_ip: Option<IpAddr>,
    ifindex: Option<u32>,
    bytes: Vec<u8>,
}

/// Per-client decisions kept outside the static policy (the binary's machine registry and its
/// request-handler hook). Called on the data path for every answered request: implementations
/// must answer from memory, without I/O and without waiting on anything but a brief lock.
pub trait ClientOverrides: std::fmt::Debug + Send + Sync {
    /// A loader that replaces the policy's for a client not yet running iPXE.
    fn loader(&self, facts: &ClientFacts) -> Option<String>;

    /// Everything the overrides decide for a request the policy answers (`request` for what
    /// [`ClientFacts`] leaves out, such as the vendor and user classes). By default the
    /// [`ClientOverrides::loader`] alone.
    fn decide(&self, facts: &ClientFacts, request: &DhcpRepr) -> ClientOverride {
        let _ = request;
        ClientOverride {
            loader: self.loader(facts),
            ..ClientOverride::default()
        }
    }

    /// The machine registry group of a registered client, for `[[boot.rule]]`s that name
    /// groups (asked only when one does, before the policy decides). By default none.
    fn group(&self, facts: &ClientFacts) -> Option<String> {
        let _ = facts;
        None
    }
}

/// What [`ClientOverrides::decide`] says about one client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOverride {
    /// Send this client nothing ([`IgnoreReason::Overridden`]).
    pub ignore: bool,
    /// Replaces the policy's loader for a client not yet running iPXE.
    pub loader: Option<String>,
    /// Replaces the policy's script URL for a client running iPXE.
    pub script_url: Option<String>,
}

/// The responder. Feed it datagrams from the 67 and 4011 sockets; poll replies and events.
#[derive(Debug)]
pub struct ProxyDhcp {
    config: ProxyDhcpConfig,
    replies: VecDeque<QueuedReply>,
    events: VecDeque<DhcpEvent>,
    overrides: Option<std::sync::Arc<dyn ClientOverrides>>,
}

impl ProxyDhcp {
    pub fn new(config: ProxyDhcpConfig) -> Self {
        Self {
            config,
            replies: VecDeque::new(),
            events: VecDeque::new(),
            overrides: None,
        }
    }

    /// Consults `overrides` for each client the policy answers (see [`ClientOverrides`]).
    pub fn set_overrides(&mut self, overrides: std::sync::Arc<dyn ClientOverrides>) {
        self.overrides = Some(overrides);
    }

    /// Answers with `config` from the next request on (a live reload); replies already queued
    /// leave as they were made.
    pub fn set_config(&mut self, config: ProxyDhcpConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &ProxyDhcpConfig {
        &self.config
    }

    pub fn handle_datagram(
        &mut self,
        _now: Instant,
        port: DhcpPort,
        meta: DatagramMeta,
        data: &[u8],
    ) {
        let request = match DhcpRepr::parse_bytes(data) {
            Ok(request) => request,
            Err(error) => return self.ignore(IgnoreReason::Malformed(error), None),
        };
        let mac = Some(request.client_mac);
        match self.answer(port, &meta, &request) {
            Ok((reply, event)) => {
                if self.replies.len() >= MAX_QUEUED_REPLIES {
                    return self.ignore(IgnoreReason::QueueFull, mac);
                }
                self.replies.push_back(reply);
                self.push_event(event);
            }
            Err(reason) => self.ignore(reason, mac),
        }
    }

    /// The next reply: its bytes go to the front of `buf`, to be sent from the socket of the
    /// returned port. A reply larger than `buf` is dropped.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<(DhcpPort, Transmit)> {
        while let Some(reply) = self.replies.pop_front() {
            let Some(out) = buf.get_mut(..reply.bytes.len()) else {
                continue;
            };
            out.copy_from_slice(&reply.bytes);
            let transmit = Transmit {
                destination: reply.destination,
                source_ip: reply.source_ip,
                ifindex: reply.ifindex,
                payload: Payload::Bytes {
                    len: reply.bytes.len(),
                },
            };
            return Some((reply.port, transmit));
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<DhcpEvent> {
        self.events.pop_front()
    }

    fn ignore(&mut self, reason: IgnoreReason, mac: Option<MacAddr>) {
        self.push_event(DhcpEvent::Ignored { reason, mac });
    }

    fn push_event(&mut self, event: DhcpEvent) {
        if self.events.len() < MAX_QUEUED_EVENTS {
            self.events.push_back(event);
        }
    }

    fn answer(
        &self,
        port: DhcpPort,
        meta: &DatagramMeta,
        request: &DhcpRepr,
    ) -> Result<(QueuedReply, DhcpEvent), IgnoreReason> {
        if request.op != BootOp::Request {
            return Err(IgnoreReason::NotBootRequest);
        }
        // PXE clients identify themselves with a vendor class starting "PXEClient" (PXE 2.1
        // section 2.2), UEFI HTTP boot clients with "HTTPClient:Arch:xxxxx:UNDI:yyyzzz" (UEFI
        // 2.10 section 24.7.2, HTTP Boot's DHCPv4 options), on x64 and ARM64 alike.
        let Some(http_client) = boot_client(request) else {
            return Err(IgnoreReason::NotPxeClient);
        };
        let server =
            server_address(meta, self.config.server_ip).ok_or(IgnoreReason::NoServerAddress)?;
        let message_type = request.options.message_type;
        let reply_type = match (port, message_type) {
            (DhcpPort::Dhcp, Some(MessageType::Discover)) => MessageType::Offer,
            (DhcpPort::Dhcp, Some(MessageType::Request)) => {
                // A REQUEST on 67 selects one server's offer; only answer the one naming us.
                if request.options.server_id != Some(server) {
                    return Err(IgnoreReason::NotForUs);
                }
                MessageType::Ack
            }
            (DhcpPort::Pxe, Some(MessageType::Request | MessageType::Inform)) => MessageType::Ack,
            _ => return Err(IgnoreReason::UnexpectedMessage(message_type)),
        };

        let mut options = DhcpOptions {
            message_type: Some(reply_type),
            server_id: Some(server),
            ..Default::default()
        };
        let BootAnswer {
            next_server,
            file_field,
            boot_file,
            facts,
        } = boot_answer(
            &self.config.policy,
            self.config.http_port,
            self.overrides.as_deref(),
            meta,
            request,
            http_client,
            server,
            &mut options,
        )?;

        let reply = DhcpRepr {
            op: BootOp::Reply,
            hops: 0,
            xid: request.xid,
            secs: 0,
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.1
            //# If the BROADCAST bit is set, the relay agent broadcasts the reply to the
            //# client; otherwise it unicasts to 'yiaddr'.
            // A proxy offer has no 'yiaddr': unless the client already has an address, a relayed
            // reply must ask for a broadcast or the relay sends it to 0.0.0.0 (seen with
            // dnsmasq's relay and iPXE, which does not set the flag itself).
            broadcast: request.broadcast
                || (port == DhcpPort::Dhcp
                    && !request.giaddr.is_unspecified()
                    && request.ciaddr.is_unspecified()),
            ciaddr: request.ciaddr,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: next_server,
            giaddr: request.giaddr,
            client_mac: request.client_mac,
            server_name: Vec::new(),
            boot_file: file_field,
            options,
        };
        let destination = match port {
            DhcpPort::Dhcp => dhcp_destination(request, self.config.dhcp_port),
            // PXE 2.1: the boot server answers to the request's source address and port. EDK2
            // sends from 4011, iPXE from 68; both expect the reply on that port.
            DhcpPort::Pxe => meta.remote,
        };
        let queued = QueuedReply {
            port,
            destination,
            source_ip: meta.local_ip,
            ifindex: meta.ifindex,
            bytes: reply.to_bytes(),
        };
        let relay = facts.relay;
        let event = if reply_type == MessageType::Offer {
            DhcpEvent::Offered {
                mac: facts.mac,
                uuid: facts.uuid,
                arch: facts.arch,
                boot_file,
                relay,
                ipxe: facts.ipxe,
            }
        } else {
            DhcpEvent::Acked {
                mac: facts.mac,
                uuid: facts.uuid,
                arch: facts.arch,
                boot_file,
                relay,
                ipxe: facts.ipxe,
                port,
            }
        };
        Ok((queued, event))
    }
}

/// The address a reply names as its server (option 54, and `{server}` in templates): the local
/// address the request arrived on, else `fallback` (the configured one) when the platform
/// cannot tell. Shared with the DHCP server (`server.rs`).
pub(crate) fn server_address(meta: &DatagramMeta, fallback: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    match meta.local_ip {
        Some(IpAddr::V4(ip)) if !ip.is_unspecified() && !ip.is_broadcast() => Some(ip),
        _ => fallback,
    }
}

/// Whether `request` comes from a client the boot policy answers: `Some(false)` for a PXE
/// client (vendor class "PXEClient...", PXE 2.1 section 2.2), `Some(true)` for a UEFI HTTP Boot
/// client ("HTTPClient:Arch:xxxxx:UNDI:yyyzzz", UEFI 2.10 section 24.7.2, x64 and ARM64 alike),
/// `None` for anything else.
pub(crate) fn boot_client(request: &DhcpRepr) -> Option<bool> {
    let vendor_class = request.options.vendor_class.as_deref().unwrap_or_default();
    let http_client = vendor_class.starts_with(HTTP_CLIENT);
    (vendor_class.starts_with(PXE_CLIENT) || http_client).then_some(http_client)
}

/// The boot part of a reply, as proxy and server mode both give it.
#[derive(Debug)]
pub(crate) struct BootAnswer {
    /// siaddr.
    pub(crate) next_server: Ipv4Addr,
    /// The BOOTP `file` field (empty when the name only fits option 67).
    pub(crate) file_field: Vec<u8>,
    /// The file or URL the client is sent to.
    pub(crate) boot_file: String,
    pub(crate) facts: ClientFacts,
}

/// The policy's answer for a boot client (`http_client` from [`boot_client`]), with the
/// per-client overrides applied, and options 60, 43, 67 and 97 added to `options`. Shared by
/// [`ProxyDhcp`] and the DHCP server, which puts the same answer in its OFFER and ACK.
#[allow(clippy::too_many_arguments)]
pub(crate) fn boot_answer(
    policy: &BootPolicy,
    http_port: u16,
    overrides: Option<&dyn ClientOverrides>,
    meta: &DatagramMeta,
    request: &DhcpRepr,
    http_client: bool,
    server: Ipv4Addr,
    options: &mut DhcpOptions,
) -> Result<BootAnswer, IgnoreReason> {
    let mut facts = client_facts(meta, request, http_client);
    if policy.uses_groups()
        && let Some(o) = overrides
    {
        facts.group = o.group(&facts);
    }
    let mut target = policy
        .decide(&facts, server, http_port)
        .map_err(IgnoreReason::Policy)?;
    if let Some(o) = overrides {
        let over = o.decide(&facts, request);
        if over.ignore {
            return Err(IgnoreReason::Overridden);
        }
        // Like a rule's loader: only clients that take a loader over TFTP (iPXE gets its
        // script, or it would load itself again; HTTP boot clients get a URL).
        let replace = match target.kind {
            BootKind::Loader => over.loader,
            BootKind::IpxeScript => over.script_url,
            _ => None,
        };
        if let Some(file) = replace.filter(|f| !f.is_empty()) {
            target.boot_file = file;
        }
    }
    options.client_uuid = request.options.client_uuid;
    let boot_file = target.boot_file.clone().into_bytes();
    let file_field = if target.kind == BootKind::HttpBoot || boot_file.len() > MAX_FILE_FIELD {
        // UEFI HTTP boot reads the URI from option 67; names too long for `file` go there too.
        options.bootfile_name = Some(boot_file.clone());
        if boot_file.len() > MAX_FILE_FIELD {
            Vec::new()
        } else {
            boot_file
        }
    } else {
        boot_file
    };
    if http_client {
        // UEFI 2.10 section 24.7.2: the HTTP boot client takes an offer (an address server's
        // or a proxy's without yiaddr) as an HTTP boot offer only when its option 60 is
        // "HTTPClient"; the boot file URI comes in `file` or option 67. EDK2 ignores offers
        // without the class and keeps discovering. No option 43: that is PXE's.
        options.vendor_class = Some(HTTP_CLIENT.to_vec());
    } else {
        options.vendor_class = Some(PXE_CLIENT.to_vec());
        options.vendor_specific = Some(pxe_vendor_reply(request).to_bytes());
    }
    Ok(BootAnswer {
        next_server: target.next_server,
        file_field,
        boot_file: target.boot_file,
        facts,
    })
}

/// Option 43 for a PXEClient reply: boot the file we name directly (no menu, no further
/// discovery), and echo the boot item a 4011 request asked for.
fn pxe_vendor_reply(request: &DhcpRepr) -> PxeVendorOptions {
    let asked_item = request
        .options
        .vendor_specific
        .as_deref()
        .and_then(|raw| PxeVendorOptions::parse(raw).ok())
        .and_then(|pxe| pxe.boot_item);
    PxeVendorOptions {
        discovery_control: Some(DISCOVERY_USE_BOOT_FILE),
        boot_item: asked_item,
        ..Default::default()
    }
}

/// What the policy and the rules see of a request (`zpxe explain` builds its facts here too).
pub fn client_facts(meta: &DatagramMeta, request: &DhcpRepr, http_client: bool) -> ClientFacts {
    let options = &request.options;
    let arch = options.client_arch.first().copied().or_else(|| {
        options
            .vendor_class
            .as_deref()
            .and_then(arch_from_vendor_class)
    });
    let ipxe = options.ipxe_encap.is_some()
        || options.user_classes().iter().any(|class| *class == b"iPXE");
    let relay = Some(request.giaddr).filter(|ip| !ip.is_unspecified());
    let source = match meta.remote.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    };
    let client_ip = Some(request.ciaddr)
        .filter(|ip| !ip.is_unspecified())
        .or(source.filter(|ip| Some(*ip) != relay));
    ClientFacts {
        mac: request.client_mac,
        uuid: options.client_uuid,
        arch,
        ipxe,
        http_client,
        relay,
        client_ip,
        group: None,
    }
}

/// `PXEClient:Arch:00007:UNDI:003000` -> 7, for old clients that do not send option 93.
fn arch_from_vendor_class(class: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(class).ok()?;
    let mut parts = text.split(':');
    while let Some(part) = parts.next() {
        if part == "Arch" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// The clients' port for a DHCP server on `server_port`: 68 beside 67, else the one above it
/// (dnsmasq's alternate ports: 6767 and 6768).
pub(crate) fn client_port(server_port: u16) -> u16 {
    if server_port == SERVER_PORT {
        CLIENT_PORT
    } else {
        server_port.wrapping_add(1)
    }
}

//= https://www.rfc-editor.org/rfc/rfc2131#section-4.1
//# If the 'giaddr' field in a DHCP message from a client is non-zero,
//# the server sends any return messages to the 'DHCP server' port on the
//# BOOTP relay agent whose address appears in 'giaddr'. If the 'giaddr'
//# field is zero and the 'ciaddr' field is nonzero, then the server
//# unicasts DHCPOFFER and DHCPACK messages to the address in 'ciaddr'.
//
// A proxy offer has no 'yiaddr' to unicast to, so the remaining case is always a broadcast;
// the DHCP server broadcasts there too (see `server.rs`: unicast to 'yiaddr' needs an ARP entry).
pub(crate) fn dhcp_destination(request: &DhcpRepr, server_port: u16) -> SocketAddr {
    let client_port = client_port(server_port);
    let (ip, port) = if !request.giaddr.is_unspecified() {
        (request.giaddr, server_port)
    } else if !request.ciaddr.is_unspecified() {
        (request.ciaddr, client_port)
    } else {
        (Ipv4Addr::BROADCAST, client_port)
    };
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::fixtures::{self, Fixture};
    use crate::dhcp::options::PxeBootItem;
    use crate::dhcp::wire::PXE_PORT;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn meta(remote: &str) -> DatagramMeta {
        DatagramMeta {
            remote: remote.parse().unwrap(),
            local_ip: Some(IpAddr::V4(LOCAL)),
            ifindex: Some(3),
        }
    }

    fn proxy() -> ProxyDhcp {
        ProxyDhcp::new(ProxyDhcpConfig {
            http_port: 8080,
            ..Default::default()
        })
    }

    /// Feeds one datagram; returns the reply (parsed), where it goes, and the event.
    fn exchange(
        proxy: &mut ProxyDhcp,
        port: DhcpPort,
        meta: DatagramMeta,
        data: &[u8],
    ) -> Option<(DhcpPort, Transmit, DhcpRepr, DhcpEvent)> {
        let now = Instant::now();
        proxy.handle_datagram(now, port, meta, data);
        let event = proxy.poll_event().expect("every datagram yields an event");
        assert_eq!(proxy.poll_event(), None);
        let mut buf = [0u8; 1500];
        let (out_port, transmit) = proxy.poll_transmit(now, &mut buf)?;
        assert!(proxy.poll_transmit(now, &mut buf).is_none());
        let Payload::Bytes { len } = transmit.payload else {
            panic!("DHCP replies are plain bytes");
        };
        let reply = DhcpRepr::parse_bytes(&buf[..len]).unwrap();
        Some((out_port, transmit, reply, event))
    }

    fn pxe43(reply: &DhcpRepr) -> PxeVendorOptions {
        PxeVendorOptions::parse(reply.options.vendor_specific.as_deref().unwrap()).unwrap()
    }

    fn assert_proxy_reply(reply: &DhcpRepr, request: &Fixture, kind: MessageType, file: &str) {
        let request = DhcpRepr::parse_bytes(&request.bytes()).unwrap();
        assert_eq!(reply.op, BootOp::Reply);
        assert_eq!(reply.xid, request.xid);
        assert_eq!(reply.client_mac.0, fixtures::MAC);
        assert_eq!(reply.yiaddr, Ipv4Addr::UNSPECIFIED, "a proxy never leases");
        assert_eq!(reply.siaddr, LOCAL);
        assert_eq!(reply.giaddr, request.giaddr);
        assert_eq!(reply.boot_file, file.as_bytes());
        assert_eq!(reply.options.message_type, Some(kind));
        assert_eq!(reply.options.server_id, Some(LOCAL));
        assert_eq!(
            reply.options.vendor_class.as_deref(),
            Some(&b"PXEClient"[..])
        );
        assert_eq!(reply.options.client_uuid, request.options.client_uuid);
        assert_eq!(
            reply.options.client_uuid.map(|u| u.to_string()).as_deref(),
            Some(fixtures::UUID_TEXT)
        );
        assert_eq!(
            pxe43(reply).discovery_control,
            Some(DISCOVERY_USE_BOOT_FILE)
        );
    }

    const SCRIPT_EFI: &str = "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A62%3A40%3A01\
                              &uuid=01020304-0506-0708-090a-0b0c0d0e0f10&arch=7";

    #[test]
    fn edk2_discover_gets_broadcast_proxy_offer() {
        let mut proxy = proxy();
        let (port, transmit, reply, event) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::EDK2_DISCOVER.bytes(),
        )
        .unwrap();
        assert_eq!(port, DhcpPort::Dhcp);
        assert_eq!(transmit.destination, "255.255.255.255:68".parse().unwrap());
        assert_eq!(transmit.source_ip, Some(IpAddr::V4(LOCAL)));
        assert_eq!(transmit.ifindex, Some(3));
        assert!(reply.broadcast);
        assert_proxy_reply(
            &reply,
            &fixtures::EDK2_DISCOVER,
            MessageType::Offer,
            "ipxe.efi",
        );
        assert!(matches!(
            event,
            DhcpEvent::Offered {
                arch: Some(7),
                ipxe: false,
                relay: None,
                ..
            }
        ));
    }

    #[test]
    fn edk2_request_on_4011_gets_unicast_ack_to_its_source_port() {
        let mut proxy = proxy();
        let (port, transmit, reply, event) = exchange(
            &mut proxy,
            DhcpPort::Pxe,
            meta("10.0.0.50:4011"),
            &fixtures::EDK2_REQUEST_4011.bytes(),
        )
        .unwrap();
        assert_eq!(port, DhcpPort::Pxe);
        assert_eq!(transmit.destination, "10.0.0.50:4011".parse().unwrap());
        assert_proxy_reply(
            &reply,
            &fixtures::EDK2_REQUEST_4011,
            MessageType::Ack,
            "ipxe.efi",
        );
        assert_eq!(reply.ciaddr, Ipv4Addr::new(10, 0, 0, 50));
        // The boot item asked for is echoed.
        assert_eq!(
            pxe43(&reply).boot_item,
            Some(PxeBootItem {
                server_type: 0,
                layer: 0
            })
        );
        assert!(matches!(
            event,
            DhcpEvent::Acked {
                arch: Some(7),
                port: DhcpPort::Pxe,
                ..
            }
        ));
    }

    #[test]
    fn ipxe_bios_discover_gets_script_not_loader() {
        let mut proxy = proxy();
        let (_, transmit, reply, event) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_BIOS_DISCOVER.bytes(),
        )
        .unwrap();
        let script = SCRIPT_EFI.replace("arch=7", "arch=0");
        assert_eq!(transmit.destination, "255.255.255.255:68".parse().unwrap());
        assert!(!reply.broadcast);
        assert_proxy_reply(
            &reply,
            &fixtures::IPXE_BIOS_DISCOVER,
            MessageType::Offer,
            &script,
        );
        assert!(matches!(
            event,
            DhcpEvent::Offered {
                ipxe: true,
                arch: Some(0),
                ..
            }
        ));
    }

    #[test]
    fn ipxe_request_on_4011_from_port_68_gets_reply_on_68() {
        let mut proxy = proxy();
        let (_, transmit, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Pxe,
            meta("10.0.0.60:68"),
            &fixtures::IPXE_BIOS_REQUEST_4011.bytes(),
        )
        .unwrap();
        assert_eq!(transmit.destination, "10.0.0.60:68".parse().unwrap());
        assert_eq!(reply.xid, 0);
        let script = SCRIPT_EFI.replace("arch=7", "arch=0");
        assert_proxy_reply(
            &reply,
            &fixtures::IPXE_BIOS_REQUEST_4011,
            MessageType::Ack,
            &script,
        );
    }

    /// A registry-like override that knows one machine's group.
    #[derive(Debug)]
    struct Grouped(MacAddr, &'static str);

    impl ClientOverrides for Grouped {
        fn loader(&self, _: &ClientFacts) -> Option<String> {
            None
        }
        fn group(&self, facts: &ClientFacts) -> Option<String> {
            (facts.mac == self.0).then(|| self.1.to_owned())
        }
    }

    #[test]
    fn a_rule_naming_a_group_matches_the_registered_machines_of_that_group() {
        let policy: BootPolicy =
            toml::from_str("[[rule]]\ngroup = [\"lab\"]\nloader = \"lab.efi\"\n").unwrap();
        let mut proxy = ProxyDhcp::new(ProxyDhcpConfig {
            http_port: 8080,
            policy,
            ..Default::default()
        });
        let request = fixtures::EDK2_REQUEST_4011.bytes();
        let file = |proxy: &mut ProxyDhcp| {
            exchange(proxy, DhcpPort::Pxe, meta("10.0.0.50:4011"), &request)
                .unwrap()
                .2
                .boot_file
        };
        // Not registered (no overrides), or in another group: the policy's loader.
        assert_eq!(file(&mut proxy), b"ipxe.efi");
        proxy.set_overrides(std::sync::Arc::new(Grouped(
            MacAddr(fixtures::MAC),
            "office",
        )));
        assert_eq!(file(&mut proxy), b"ipxe.efi");
        proxy.set_overrides(std::sync::Arc::new(Grouped(MacAddr(fixtures::MAC), "lab")));
        assert_eq!(file(&mut proxy), b"lab.efi");
    }

    /// A registry-like override: one loader for one MAC.
    #[derive(Debug)]
    struct OneMachine(MacAddr, &'static str);

    impl ClientOverrides for OneMachine {
        fn loader(&self, facts: &ClientFacts) -> Option<String> {
            (facts.mac == self.0).then(|| self.1.to_owned())
        }
    }

    #[test]
    fn overrides_replace_the_loader_and_never_the_script() {
        let mut proxy = proxy();
        proxy.set_overrides(std::sync::Arc::new(OneMachine(
            MacAddr(fixtures::MAC),
            "custom/loader.efi",
        )));
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Pxe,
            meta("10.0.0.50:4011"),
            &fixtures::EDK2_REQUEST_4011.bytes(),
        )
        .unwrap();
        assert_eq!(reply.boot_file, b"custom/loader.efi");
        // iPXE gets its script: the loader again would loop.
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_EFI_DISCOVER.bytes(),
        )
        .unwrap();
        assert_eq!(reply.boot_file, SCRIPT_EFI.as_bytes());
        // Other machines keep the policy's loader.
        proxy.set_overrides(std::sync::Arc::new(OneMachine(MacAddr([2; 6]), "x.efi")));
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Pxe,
            meta("10.0.0.50:4011"),
            &fixtures::EDK2_REQUEST_4011.bytes(),
        )
        .unwrap();
        assert_eq!(reply.boot_file, b"ipxe.efi");
    }

    /// A hook-like override: silence one MAC, give another a loader and a script URL.
    #[derive(Debug)]
    struct Decider;

    impl ClientOverrides for Decider {
        fn loader(&self, _: &ClientFacts) -> Option<String> {
            None
        }
        fn decide(&self, facts: &ClientFacts, request: &DhcpRepr) -> ClientOverride {
            assert!(request.options.vendor_class.is_some());
            ClientOverride {
                ignore: facts.mac == MacAddr([2; 6]),
                loader: Some("hook/loader.efi".into()),
                script_url: Some("http://10.0.0.9/hook.ipxe".into()),
            }
        }
    }

    #[test]
    fn a_decision_silences_a_client_or_replaces_loader_and_script_url() {
        let mut proxy = proxy();
        proxy.set_overrides(std::sync::Arc::new(Decider));
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Pxe,
            meta("10.0.0.50:4011"),
            &fixtures::EDK2_REQUEST_4011.bytes(),
        )
        .unwrap();
        assert_eq!(reply.boot_file, b"hook/loader.efi");
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_EFI_DISCOVER.bytes(),
        )
        .unwrap();
        assert_eq!(reply.boot_file, b"http://10.0.0.9/hook.ipxe");
        let mut silenced = DhcpRepr::parse_bytes(&fixtures::EDK2_REQUEST_4011.bytes()).unwrap();
        silenced.client_mac = MacAddr([2; 6]);
        let now = Instant::now();
        proxy.handle_datagram(
            now,
            DhcpPort::Pxe,
            meta("10.0.0.50:4011"),
            &silenced.to_bytes(),
        );
        assert_eq!(
            proxy.poll_event(),
            Some(DhcpEvent::Ignored {
                reason: IgnoreReason::Overridden,
                mac: Some(MacAddr([2; 6]))
            })
        );
        assert!(proxy.poll_transmit(now, &mut [0u8; 1500]).is_none());
    }

    #[test]
    fn ipxe_efi_discover_gets_script() {
        let mut proxy = proxy();
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_EFI_DISCOVER.bytes(),
        )
        .unwrap();
        assert_proxy_reply(
            &reply,
            &fixtures::IPXE_EFI_DISCOVER,
            MessageType::Offer,
            SCRIPT_EFI,
        );
    }

    #[test]
    fn relayed_discover_goes_back_to_the_relay() {
        let mut proxy = proxy();
        let (_, transmit, reply, event) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("10.20.0.1:67"),
            &fixtures::RELAYED_DISCOVER.bytes(),
        )
        .unwrap();
        assert_eq!(transmit.destination, "10.20.0.1:67".parse().unwrap());
        assert_proxy_reply(
            &reply,
            &fixtures::RELAYED_DISCOVER,
            MessageType::Offer,
            "undionly.kpxe",
        );
        assert_eq!(reply.giaddr, Ipv4Addr::new(10, 20, 0, 1));
        assert_eq!(reply.hops, 0);
        assert!(
            reply.broadcast,
            "a relayed proxy offer asks the relay to broadcast: there is no yiaddr to unicast to"
        );
        assert!(matches!(
            event,
            DhcpEvent::Offered { relay: Some(ip), .. } if ip == Ipv4Addr::new(10, 20, 0, 1)
        ));
    }

    #[test]
    fn http_boot_gets_url_and_httpclient() {
        let mut proxy = proxy();
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::HTTP_BOOT_DISCOVER.bytes(),
        )
        .unwrap();
        let url = b"http://10.0.0.1:8080/ipxe.efi";
        assert_eq!(
            reply.options.vendor_class.as_deref(),
            Some(&b"HTTPClient"[..])
        );
        assert_eq!(reply.options.bootfile_name.as_deref(), Some(&url[..]));
        assert_eq!(reply.boot_file, url);
        assert_eq!(reply.options.vendor_specific, None);
    }

    /// An HTTP boot DISCOVER as EDK2's HttpBootDxe sends it, for `arch` (16 x64, 19 ARM64).
    fn http_boot_discover(arch: u16) -> DhcpRepr {
        let mut request = DhcpRepr::parse_bytes(&fixtures::HTTP_BOOT_DISCOVER.bytes()).unwrap();
        request.options.client_arch = vec![arch];
        request.options.vendor_class =
            Some(format!("HTTPClient:Arch:{arch:05}:UNDI:003000").into_bytes());
        request
    }

    fn assert_http_boot_reply(reply: &DhcpRepr, request: &DhcpRepr, kind: MessageType, url: &str) {
        assert_eq!(reply.op, BootOp::Reply);
        assert_eq!(reply.xid, request.xid);
        assert_eq!(reply.client_mac, request.client_mac);
        assert_eq!(reply.yiaddr, Ipv4Addr::UNSPECIFIED, "a proxy never leases");
        assert_eq!(reply.giaddr, request.giaddr);
        assert_eq!(reply.options.message_type, Some(kind));
        assert_eq!(reply.options.server_id, Some(LOCAL));
        assert_eq!(
            reply.options.vendor_class.as_deref(),
            Some(&b"HTTPClient"[..]),
            "without option 60 HTTPClient the firmware ignores the offer"
        );
        assert_eq!(reply.options.bootfile_name.as_deref(), Some(url.as_bytes()));
        assert_eq!(reply.boot_file, url.as_bytes());
        assert_eq!(reply.options.vendor_specific, None, "option 43 is PXE's");
        assert_eq!(reply.options.client_uuid, request.options.client_uuid);
    }

    #[test]
    fn arm64_http_boot_discover_gets_its_url() {
        let mut proxy = proxy();
        let request = http_boot_discover(19);
        let (port, transmit, reply, event) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &request.to_bytes(),
        )
        .unwrap();
        assert_eq!(port, DhcpPort::Dhcp);
        assert_eq!(transmit.destination, "255.255.255.255:68".parse().unwrap());
        assert!(reply.broadcast);
        let url = "http://10.0.0.1:8080/ipxe-arm64.efi";
        assert_http_boot_reply(&reply, &request, MessageType::Offer, url);
        assert!(matches!(
            event,
            DhcpEvent::Offered { arch: Some(19), ipxe: false, relay: None, ref boot_file, .. }
                if boot_file == url
        ));
    }

    #[test]
    fn relayed_http_boot_goes_back_to_the_relay_for_both_architectures() {
        for (arch, url) in [
            (16, "http://10.0.0.1:8080/ipxe.efi"),
            (19, "http://10.0.0.1:8080/ipxe-arm64.efi"),
        ] {
            let mut request = http_boot_discover(arch);
            request.giaddr = Ipv4Addr::new(10, 20, 0, 1);
            request.hops = 1;
            // Some relays and firmware leave the flag clear: the reply must still ask the relay
            // to broadcast, as there is no yiaddr to unicast to.
            request.broadcast = false;
            let mut proxy = proxy();
            let (port, transmit, reply, event) = exchange(
                &mut proxy,
                DhcpPort::Dhcp,
                meta("10.20.0.1:67"),
                &request.to_bytes(),
            )
            .unwrap();
            assert_eq!(port, DhcpPort::Dhcp, "arch {arch}");
            assert_eq!(transmit.destination, "10.20.0.1:67".parse().unwrap());
            assert!(reply.broadcast, "arch {arch}");
            assert_eq!(reply.hops, 0);
            assert_http_boot_reply(&reply, &request, MessageType::Offer, url);
            assert!(matches!(
                event,
                DhcpEvent::Offered { arch: Some(a), relay: Some(ip), .. }
                    if a == arch && ip == Ipv4Addr::new(10, 20, 0, 1)
            ));
        }
    }

    #[test]
    fn http_boot_request_on_4011_gets_an_ack_with_the_url() {
        for (arch, url) in [
            (16, "http://10.0.0.1:8080/ipxe.efi"),
            (19, "http://10.0.0.1:8080/ipxe-arm64.efi"),
        ] {
            let mut request = http_boot_discover(arch);
            request.options.message_type = Some(MessageType::Request);
            request.ciaddr = Ipv4Addr::new(10, 0, 0, 70);
            request.broadcast = false;
            let mut proxy = proxy();
            let (port, transmit, reply, event) = exchange(
                &mut proxy,
                DhcpPort::Pxe,
                meta("10.0.0.70:4011"),
                &request.to_bytes(),
            )
            .unwrap();
            assert_eq!(port, DhcpPort::Pxe);
            assert_eq!(transmit.destination, "10.0.0.70:4011".parse().unwrap());
            assert_http_boot_reply(&reply, &request, MessageType::Ack, url);
            assert!(matches!(
                event,
                DhcpEvent::Acked { arch: Some(a), port: DhcpPort::Pxe, .. } if a == arch
            ));
        }
    }

    #[test]
    fn http_client_of_an_architecture_without_a_url_is_refused() {
        let mut proxy = proxy();
        // 18: 32-bit ARM UEFI over HTTP, which zpxe has no URL for.
        assert_eq!(
            ignored(
                &mut proxy,
                DhcpPort::Dhcp,
                &http_boot_discover(18).to_bytes()
            ),
            IgnoreReason::Policy(PolicyRefusal::UnsupportedArch(Some(18)))
        );
    }

    #[test]
    fn request_on_67_only_when_addressed_to_us() {
        let mut request = DhcpRepr::parse_bytes(&fixtures::EDK2_DISCOVER.bytes()).unwrap();
        request.options.message_type = Some(MessageType::Request);
        request.options.server_id = Some(LOCAL);
        request.ciaddr = Ipv4Addr::new(10, 0, 0, 50);
        let mut proxy = proxy();
        let (_, transmit, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("10.0.0.50:68"),
            &request.to_bytes(),
        )
        .unwrap();
        assert_eq!(transmit.destination, "10.0.0.50:68".parse().unwrap());
        assert_eq!(reply.options.message_type, Some(MessageType::Ack));

        request.options.server_id = Some(Ipv4Addr::new(10, 0, 0, 254));
        assert!(
            exchange(
                &mut proxy,
                DhcpPort::Dhcp,
                meta("10.0.0.50:68"),
                &request.to_bytes()
            )
            .is_none()
        );
        request.options.server_id = None;
        assert!(
            exchange(
                &mut proxy,
                DhcpPort::Dhcp,
                meta("10.0.0.50:68"),
                &request.to_bytes()
            )
            .is_none()
        );
    }

    fn ignored(proxy: &mut ProxyDhcp, port: DhcpPort, data: &[u8]) -> IgnoreReason {
        proxy.handle_datagram(Instant::now(), port, meta("0.0.0.0:68"), data);
        let mut buf = [0u8; 1500];
        assert!(proxy.poll_transmit(Instant::now(), &mut buf).is_none());
        match proxy.poll_event() {
            Some(DhcpEvent::Ignored { reason, .. }) => reason,
            other => panic!("expected Ignored, got {other:?}"),
        }
    }

    #[test]
    fn non_pxe_and_wrong_messages_are_ignored() {
        let mut proxy = proxy();
        let linux = fixtures::LINUX_DISCOVER.bytes();
        assert_eq!(
            ignored(&mut proxy, DhcpPort::Dhcp, &linux),
            IgnoreReason::NotPxeClient
        );

        let mut reply = fixtures::EDK2_DISCOVER.bytes();
        reply[0] = 2;
        assert_eq!(
            ignored(&mut proxy, DhcpPort::Dhcp, &reply),
            IgnoreReason::NotBootRequest
        );

        let discover = fixtures::EDK2_DISCOVER.bytes();
        assert_eq!(
            ignored(&mut proxy, DhcpPort::Pxe, &discover),
            IgnoreReason::UnexpectedMessage(Some(MessageType::Discover))
        );
        let mut no_cookie = discover.clone();
        no_cookie[237] ^= 0xff;
        assert_eq!(
            ignored(&mut proxy, DhcpPort::Dhcp, &no_cookie),
            IgnoreReason::Malformed(WireError::BadMagicCookie)
        );
        let mut bad_hlen = discover.clone();
        bad_hlen[2] = 8;
        assert!(matches!(
            ignored(&mut proxy, DhcpPort::Dhcp, &bad_hlen),
            IgnoreReason::Malformed(WireError::NotEthernet { .. })
        ));

        let mut no_address = ProxyDhcp::new(ProxyDhcpConfig::default());
        no_address.handle_datagram(
            Instant::now(),
            DhcpPort::Dhcp,
            DatagramMeta::from_remote("0.0.0.0:68".parse().unwrap()),
            &discover,
        );
        assert!(matches!(
            no_address.poll_event(),
            Some(DhcpEvent::Ignored {
                reason: IgnoreReason::NoServerAddress,
                ..
            })
        ));
    }

    #[test]
    fn policy_ignore_is_reported() {
        let mut config = ProxyDhcpConfig::default();
        config.policy.ignore_uuids = vec![fixtures::UUID_TEXT.parse().unwrap()];
        let mut proxy = ProxyDhcp::new(config);
        assert_eq!(
            ignored(&mut proxy, DhcpPort::Dhcp, &fixtures::EDK2_DISCOVER.bytes()),
            IgnoreReason::Policy(PolicyRefusal::IgnoredUuid)
        );
    }

    #[test]
    fn fallback_server_ip_and_configured_next_server() {
        let mut config = ProxyDhcpConfig {
            server_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..Default::default()
        };
        config.policy.next_server = Some(Ipv4Addr::new(192, 0, 2, 9));
        let mut proxy = ProxyDhcp::new(config);
        proxy.handle_datagram(
            Instant::now(),
            DhcpPort::Dhcp,
            DatagramMeta::from_remote("0.0.0.0:68".parse().unwrap()),
            &fixtures::EDK2_DISCOVER.bytes(),
        );
        let mut buf = [0u8; 1500];
        let (_, transmit) = proxy.poll_transmit(Instant::now(), &mut buf).unwrap();
        let Payload::Bytes { len } = transmit.payload else {
            panic!()
        };
        let reply = DhcpRepr::parse_bytes(&buf[..len]).unwrap();
        assert_eq!(reply.options.server_id, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(reply.siaddr, Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(transmit.source_ip, None);
    }

    #[test]
    fn option_overload_is_parsed() {
        let bytes = fixtures::overloaded_discover();
        let repr = DhcpRepr::parse_bytes(&bytes).unwrap();
        assert_eq!(
            repr.options.vendor_class.as_deref(),
            Some(&b"PXEClient:Arch:00007:UNDI:003000"[..])
        );
        assert_eq!(repr.options.client_arch, vec![7]);
        assert!(repr.boot_file.is_empty() && repr.server_name.is_empty());
        let mut proxy = proxy();
        let (_, _, reply, _) =
            exchange(&mut proxy, DhcpPort::Dhcp, meta("0.0.0.0:68"), &bytes).unwrap();
        assert_eq!(reply.boot_file, b"ipxe.efi");
    }

    #[test]
    fn long_boot_file_moves_to_option_67() {
        let mut config = ProxyDhcpConfig::default();
        config.policy.ipxe_script_url = format!("http://{{server}}/{}", "x".repeat(200));
        let mut proxy = ProxyDhcp::new(config);
        let (_, _, reply, _) = exchange(
            &mut proxy,
            DhcpPort::Dhcp,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_EFI_DISCOVER.bytes(),
        )
        .unwrap();
        assert!(reply.boot_file.is_empty());
        assert_eq!(
            reply.options.bootfile_name.as_ref().map(Vec::len),
            Some(216)
        );
    }

    #[test]
    fn every_truncation_is_ignored_without_panic() {
        let mut proxy = proxy();
        let fixtures = [
            fixtures::IPXE_BIOS_DISCOVER.bytes(),
            fixtures::IPXE_EFI_DISCOVER.bytes(),
            fixtures::EDK2_DISCOVER.bytes(),
            fixtures::EDK2_REQUEST_4011.bytes(),
            fixtures::RELAYED_DISCOVER.bytes(),
            fixtures::overloaded_discover(),
        ];
        let mut buf = [0u8; 1500];
        for bytes in &fixtures {
            for len in 0..bytes.len() {
                for port in [DhcpPort::Dhcp, DhcpPort::Pxe] {
                    proxy.handle_datagram(
                        Instant::now(),
                        port,
                        meta("10.0.0.50:4011"),
                        &bytes[..len],
                    );
                    while proxy.poll_transmit(Instant::now(), &mut buf).is_some() {}
                    while proxy.poll_event().is_some() {}
                }
            }
            // Cut inside the fixed header or an option: always malformed.
            for len in [0, 100, 239] {
                assert!(matches!(
                    ignored(&mut proxy, DhcpPort::Dhcp, &bytes[..len]),
                    IgnoreReason::Malformed(WireError::Truncated)
                ));
            }
        }
    }

    #[test]
    fn queue_is_bounded() {
        let mut proxy = proxy();
        let bytes = fixtures::EDK2_DISCOVER.bytes();
        for _ in 0..MAX_QUEUED_REPLIES + 10 {
            proxy.handle_datagram(Instant::now(), DhcpPort::Dhcp, meta("0.0.0.0:68"), &bytes);
        }
        let mut full = 0;
        while let Some(event) = proxy.poll_event() {
            if matches!(
                event,
                DhcpEvent::Ignored {
                    reason: IgnoreReason::QueueFull,
                    ..
                }
            ) {
                full += 1;
            }
        }
        assert_eq!(full, 10);
        let mut buf = [0u8; 1500];
        let mut sent = 0;
        while proxy.poll_transmit(Instant::now(), &mut buf).is_some() {
            sent += 1;
        }
        assert_eq!(sent, MAX_QUEUED_REPLIES);
        // A buffer too small drops the reply instead of panicking.
        proxy.handle_datagram(Instant::now(), DhcpPort::Dhcp, meta("0.0.0.0:68"), &bytes);
        assert!(
            proxy
                .poll_transmit(Instant::now(), &mut buf[..100])
                .is_none()
        );
    }

    #[test]
    fn pxe_port_number() {
        assert_eq!(DhcpPort::Pxe.number(), PXE_PORT);
        assert_eq!(DhcpPort::Dhcp.number(), 67);
    }
}
