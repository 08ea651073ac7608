//! A DHCP client that behaves like PXE firmware toward a proxyDHCP server: DISCOVER, take the
//! proxy offer, ask the boot server on 4011 when the offer names no boot file (or when told
//! to), and report the boot server and file. The load generator runs thousands of these; tests
//! run them against [`super::ProxyDhcp`] and against offers captured from dnsmasq.
//!
//! What firmware does after a proxy offer without a boot file depends on its option 43 (PXE 2.1
//! section 2.2; EDK2's PxeBcDhcp4 sorts offers the same way):
//! - a boot menu (sub-option 9): boot the first item (what the prompt's timeout picks) by asking
//!   a boot server for that item's type, layer 0 (sub-option 71 in the request); the server is
//!   the first one sub-option 8 lists for that type, else the proxy itself;
//! - no discovery options at all (a "BINL" offer): ask `siaddr` (else the server id) on 4011
//!   with no boot item. dnsmasq answers UEFI clients this way when one service fits their arch.
//!
//! Broadcast and multicast discovery (PXE_DISCOVERY_CONTROL bits 0 and 1 clear, no server
//! listed) are not done: the item is asked of the proxy by unicast, where dnsmasq and zpxe
//! answer it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::ids::{ClientUuid, MacAddr};
use super::options::{DhcpOptions, MessageType, PxeBootItem, PxeVendorOptions, code};
use super::wire::{BootOp, DhcpRepr, PXE_PORT, SERVER_PORT};
use crate::net::{Payload, Transmit};

/// Backoff stops doubling after this many doublings (64 x the base timeout).
const MAX_BACKOFF_SHIFT: u32 = 6;
const MAX_MESSAGE_SIZE: u16 = 1472;

/// One simulated machine.
#[derive(Debug, Clone)]
pub struct DhcpClientConfig {
    pub mac: MacAddr,
    pub uuid: Option<ClientUuid>,
    /// Option 93.
    pub arch: u16,
    /// Option 60, e.g. `PXEClient:Arch:00007:UNDI:003000`.
    pub vendor_class: String,
    /// Behave as iPXE: user class `iPXE` and option 175.
    pub ipxe: bool,
    /// Act as if relayed: `giaddr` = this address, `hops` = 1, sent unicast to `server` (which
    /// then answers to this address on port 67). Works on loopback.
    pub relay: Option<Ipv4Addr>,
    /// The proxy. Without a relay the DISCOVER is broadcast to this port.
    pub server: SocketAddr,
    pub pxe_port: u16,
    /// First retransmission timeout; doubles on every retry.
    pub timeout: Duration,
    /// Retransmissions per phase before giving up.
    pub retries: u32,
    /// After the proxy offer, send a REQUEST to the boot server on `pxe_port` (as EDK2 does).
    pub request_4011: bool,
    /// Seeds the transaction ids; no OS randomness.
    pub rng_seed: u64,
    /// The address the site's DHCP server leased, which firmware puts in `ciaddr` when it asks
    /// the boot server on 4011 (some boot servers, dnsmasq among them, answer only then).
    pub client_ip: Option<Ipv4Addr>,
}

impl Default for DhcpClientConfig {
    fn default() -> Self {
        Self {
            mac: MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]),
            uuid: None,
            arch: 7,
            vendor_class: "PXEClient:Arch:00007:UNDI:003000".into(),
            ipxe: false,
            relay: None,
            server: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)),
            pxe_port: PXE_PORT,
            timeout: Duration::from_secs(4),
            retries: 3,
            request_4011: false,
            rng_seed: 0,
            client_ip: None,
        }
    }
}

/// Where the firmware would boot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootAnswer {
    pub next_server: Ipv4Addr,
    pub boot_file: String,
    /// The answer came from the 4011 ACK rather than the proxy offer.
    pub via_4011: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhcpClientError {
    #[error("no proxy offer after all retries")]
    NoOffer,
    #[error("no ACK from the boot server on 4011 after all retries")]
    NoAck,
    /// The first item of the offer's PXE menu is type 0: boot from local media.
    #[error("the PXE menu's first item is local boot")]
    LocalBootItem,
    /// An address server's offer was taken, and no ACK came for its REQUEST.
    #[error("no ACK for the REQUEST of the offered address after all retries")]
    NoLeaseAck,
    /// The address server refused the REQUEST.
    #[error("the address server answered the REQUEST with a NAK")]
    Nak,
}

/// What the client does once its address is acked: boot the offer's file, or ask a boot server.
type NextStep = Result<Option<(Ipv4Addr, Option<PxeBootItem>)>, DhcpClientError>;

#[derive(Debug)]
enum Phase {
    Discovering,
    /// An address server's offer (zpxe's server mode): REQUEST it on the DHCP port, as
    /// firmware does, before booting.
    Selecting {
        offer: BootAnswer,
        address: Ipv4Addr,
        server_id: Ipv4Addr,
        next: NextStep,
    },
    /// Asking the boot server; `offer` is what the proxy offer said.
    Requesting {
        offer: BootAnswer,
        boot_server: Ipv4Addr,
        /// Option 43 sub-option 71 of the request; `None` for a BINL request (no item).
        boot_item: Option<PxeBootItem>,
    },
    Done(Result<BootAnswer, DhcpClientError>),
}

#[derive(Debug)]
pub struct DhcpClient {
    config: DhcpClientConfig,
    rng: SmallRng,
    started: Instant,
    phase: Phase,
    xid: u32,
    attempt: u32,
    deadline: Instant,
    send_pending: bool,
    retransmits: u32,
    /// The address an address server acked.
    leased: Option<Ipv4Addr>,
}

impl DhcpClient {
    pub fn new(now: Instant, config: DhcpClientConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.rng_seed);
        let xid = rng.random();
        let deadline = later(now, config.timeout);
        Self {
            config,
            rng,
            started: now,
            phase: Phase::Discovering,
            xid,
            attempt: 0,
            deadline,
            send_pending: true,
            retransmits: 0,
            leased: None,
        }
    }

    /// The address an address server (zpxe's server mode) acked, if one did.
    pub fn leased(&self) -> Option<Ipv4Addr> {
        self.leased
    }

    /// Messages sent again after a timeout, over every phase.
    pub fn retransmits(&self) -> u32 {
        self.retransmits
    }

    /// The transaction id of the current phase.
    pub fn xid(&self) -> u32 {
        self.xid
    }

    pub fn outcome(&self) -> Option<Result<BootAnswer, DhcpClientError>> {
        match &self.phase {
            Phase::Done(result) => Some(result.clone()),
            _ => None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done(_) => None,
            _ => Some(self.deadline),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline || matches!(self.phase, Phase::Done(_)) {
            return;
        }
        if self.attempt >= self.config.retries {
            let error = match self.phase {
                Phase::Discovering => DhcpClientError::NoOffer,
                Phase::Selecting { .. } => DhcpClientError::NoLeaseAck,
                _ => DhcpClientError::NoAck,
            };
            self.phase = Phase::Done(Err(error));
            self.send_pending = false;
            return;
        }
        self.attempt += 1;
        let shift = self.attempt.min(MAX_BACKOFF_SHIFT);
        let backoff = self.config.timeout.checked_mul(1 << shift);
        self.deadline = later(now, backoff.unwrap_or(Duration::MAX));
        self.send_pending = true;
        self.retransmits += 1;
    }

    /// The next message, written to the front of `buf`. Returns `None` when nothing is due or
    /// `buf` is too small (the message stays due).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if !self.send_pending {
            return None;
        }
        let (message, destination, source_ip) = match &self.phase {
            Phase::Discovering => {
                let destination = match self.config.relay {
                    Some(_) => self.config.server,
                    None => SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::BROADCAST,
                        self.config.server.port(),
                    )),
                };
                (
                    self.discover(now),
                    destination,
                    self.config.relay.map(IpAddr::V4),
                )
            }
            Phase::Selecting { .. } => {
                let destination = match self.config.relay {
                    Some(_) => self.config.server,
                    None => SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::BROADCAST,
                        self.config.server.port(),
                    )),
                };
                (
                    self.request_lease(now),
                    destination,
                    self.config.relay.map(IpAddr::V4),
                )
            }
            Phase::Requesting { boot_server, .. } => {
                let destination =
                    SocketAddr::V4(SocketAddrV4::new(*boot_server, self.config.pxe_port));
                (self.request_4011(now), destination, None)
            }
            Phase::Done(_) => return None,
        };
        let len = message.emit(buf).ok()?;
        self.send_pending = false;
        Some(Transmit {
            destination,
            source_ip,
            ifindex: None,
            payload: Payload::Bytes { len },
        })
    }

    pub fn handle_datagram(&mut self, now: Instant, _from: SocketAddr, data: &[u8]) {
        let Ok(reply) = DhcpRepr::parse_bytes(data) else {
            return;
        };
        if reply.op != BootOp::Reply || reply.xid != self.xid || reply.client_mac != self.config.mac
        {
            return;
        }
        match &self.phase {
            Phase::Discovering => {
                if reply.options.message_type != Some(MessageType::Offer) || !is_pxe_reply(&reply) {
                    return;
                }
                let offer = answer_from(&reply, None, false);
                let next = self.next_step(&reply, &offer);
                if !reply.yiaddr.is_unspecified()
                    && let Some(server_id) = reply.options.server_id
                {
                    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.4.1
                    //# The client broadcasts a DHCPREQUEST message that MUST include the
                    //# 'server identifier' option to indicate which server it has selected
                    self.phase = Phase::Selecting {
                        offer,
                        address: reply.yiaddr,
                        server_id,
                        next,
                    };
                    self.attempt = 0;
                    self.deadline = later(now, self.config.timeout);
                    self.send_pending = true;
                    return;
                }
                self.take_step(now, offer, next);
            }
            Phase::Selecting { address, .. } => {
                match reply.options.message_type {
                    Some(MessageType::Ack) if reply.yiaddr == *address => {}
                    Some(MessageType::Nak) => return self.finish(Err(DhcpClientError::Nak)),
                    _ => return,
                }
                self.leased = Some(*address);
                let Phase::Selecting { offer, next, .. } =
                    std::mem::replace(&mut self.phase, Phase::Discovering)
                else {
                    return;
                };
                self.take_step(now, offer, next);
            }
            Phase::Requesting { offer, .. } => {
                if reply.options.message_type != Some(MessageType::Ack) {
                    return;
                }
                let answer = answer_from(&reply, Some(offer), true);
                self.finish(Ok(answer));
            }
            Phase::Done(_) => {}
        }
    }

    /// After the proxy offer: boot its file (`None`), or ask a boot server on 4011 for the
    /// item (`Some((server, item))`).
    fn next_step(
        &self,
        reply: &DhcpRepr,
        offer: &BootAnswer,
    ) -> Result<Option<(Ipv4Addr, Option<PxeBootItem>)>, DhcpClientError> {
        let proxy = reply.options.server_id.unwrap_or(match self.config.server {
            SocketAddr::V4(server) => *server.ip(),
            SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        });
        if !offer.boot_file.is_empty() {
            if !self.config.request_4011 {
                return Ok(None);
            }
            // Told to ask anyway (EDK2 against zpxe): the proxy, item 0 layer 0; iPXE's
            // proxyDHCP request carries no item.
            let item = (!self.config.ipxe).then_some(PxeBootItem {
                server_type: 0,
                layer: 0,
            });
            return Ok(Some((proxy, item)));
        }
        let pxe = reply
            .options
            .vendor_specific
            .as_deref()
            .and_then(|raw| PxeVendorOptions::parse(raw).ok())
            .unwrap_or_default();
        match pxe.boot_menu.as_deref().and_then(first_menu_item) {
            // PXE 2.1 boot server discovery: the client asks for the boot server type of the
            // menu item it chose, layer 0.
            Some(0) => Err(DhcpClientError::LocalBootItem),
            Some(server_type) => {
                let server = pxe
                    .boot_servers
                    .as_deref()
                    .and_then(|list| listed_server(list, server_type))
                    .unwrap_or(proxy);
                Ok(Some((
                    server,
                    Some(PxeBootItem {
                        server_type,
                        layer: 0,
                    }),
                )))
            }
            None => {
                // A BINL offer: the server in `siaddr` (else option 54) names the file on 4011.
                let server = Some(reply.siaddr)
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(proxy);
                Ok(Some((server, None)))
            }
        }
    }

    fn take_step(&mut self, now: Instant, offer: BootAnswer, next: NextStep) {
        match next {
            Ok(Some((boot_server, boot_item))) => {
                self.phase = Phase::Requesting {
                    offer,
                    boot_server,
                    boot_item,
                };
                self.xid = self.rng.random();
                self.attempt = 0;
                self.deadline = later(now, self.config.timeout);
                self.send_pending = true;
            }
            Ok(None) => self.finish(Ok(offer)),
            Err(e) => self.finish(Err(e)),
        }
    }

    fn finish(&mut self, result: Result<BootAnswer, DhcpClientError>) {
        self.phase = Phase::Done(result);
        self.send_pending = false;
    }

    fn base_options(&self, kind: MessageType) -> DhcpOptions {
        let config = &self.config;
        let mut options = DhcpOptions {
            message_type: Some(kind),
            max_message_size: Some(MAX_MESSAGE_SIZE),
            parameter_request_list: Some(vec![
                code::SUBNET_MASK,
                code::ROUTER,
                code::VENDOR_SPECIFIC,
                code::SERVER_ID,
                code::VENDOR_CLASS,
                code::TFTP_SERVER_NAME,
                code::BOOTFILE_NAME,
                code::CLIENT_MACHINE_ID,
            ]),
            client_arch: vec![config.arch],
            // UNDI 3.0 on EFI, 2.1 on BIOS: what EDK2 and iPXE report.
            client_ndi: Some(if config.arch == 0 {
                [1, 2, 1]
            } else {
                [1, 3, 0]
            }),
            vendor_class: Some(config.vendor_class.clone().into_bytes()),
            client_uuid: config.uuid,
            ..Default::default()
        };
        if config.ipxe {
            let mut client_id = vec![0x01];
            client_id.extend_from_slice(&config.mac.0);
            options.client_id = Some(client_id);
            options.user_class = Some(b"iPXE".to_vec());
            // Feature flags: HTTP (0x13), PXE extensions (0x10); iPXE sends more.
            options.ipxe_encap = Some(vec![0x13, 0x01, 0x01, 0x10, 0x01, 0x02]);
        }
        options
    }

    fn elapsed_secs(&self, now: Instant) -> u16 {
        let secs = now.saturating_duration_since(self.started).as_secs();
        u16::try_from(secs).unwrap_or(u16::MAX)
    }

    fn discover(&self, now: Instant) -> DhcpRepr {
        let relay = self.config.relay;
        DhcpRepr {
            op: BootOp::Request,
            hops: u8::from(relay.is_some()),
            xid: self.xid,
            secs: self.elapsed_secs(now),
            // EDK2 sets the broadcast flag; iPXE does not.
            broadcast: !self.config.ipxe,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: relay.unwrap_or(Ipv4Addr::UNSPECIFIED),
            client_mac: self.config.mac,
            server_name: Vec::new(),
            boot_file: Vec::new(),
            options: self.base_options(MessageType::Discover),
        }
    }

    /// The REQUEST for an offered address (SELECTING): same xid as the DISCOVER, the chosen
    /// server's identifier and the address.
    fn request_lease(&self, now: Instant) -> DhcpRepr {
        let mut request = self.discover(now);
        let mut options = self.base_options(MessageType::Request);
        if let Phase::Selecting {
            address, server_id, ..
        } = self.phase
        {
            options.server_id = Some(server_id);
            options.requested_ip = Some(address);
        }
        request.options = options;
        request
    }

    fn request_4011(&self, now: Instant) -> DhcpRepr {
        let mut options = self.base_options(MessageType::Request);
        if let Phase::Requesting {
            boot_item: Some(item),
            ..
        } = self.phase
        {
            let pxe = PxeVendorOptions {
                boot_item: Some(item),
                ..Default::default()
            };
            options.vendor_specific = Some(pxe.to_bytes());
        }
        DhcpRepr {
            op: BootOp::Request,
            hops: 0,
            xid: self.xid,
            secs: self.elapsed_secs(now),
            broadcast: false,
            ciaddr: self
                .leased
                .or(self.config.client_ip)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            client_mac: self.config.mac,
            server_name: Vec::new(),
            boot_file: Vec::new(),
            options,
        }
    }
}

/// `now + wait` without overflow panics for absurd configured timeouts.
fn later(now: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(wait.min(FAR)).unwrap_or(now)
}

/// The server type of the first item of a PXE boot menu (option 43, sub-option 9: entries of
/// type u16, description length u8, description), which is what firmware boots when the menu
/// prompt times out or there is no prompt.
fn first_menu_item(menu: &[u8]) -> Option<u16> {
    match menu {
        [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// The first address PXE_BOOT_SERVERS (option 43, sub-option 8: entries of type u16, count u8,
/// count IPv4 addresses) lists for `server_type`.
fn listed_server(list: &[u8], server_type: u16) -> Option<Ipv4Addr> {
    let mut rest = list;
    while let [hi, lo, count, tail @ ..] = rest {
        let (ips, after) = tail.split_at_checked(usize::from(*count) * 4)?;
        if u16::from_be_bytes([*hi, *lo]) == server_type
            && let [a, b, c, d, ..] = ips
        {
            return Some(Ipv4Addr::new(*a, *b, *c, *d));
        }
        rest = after;
    }
    None
}

fn is_pxe_reply(reply: &DhcpRepr) -> bool {
    let class = reply.options.vendor_class.as_deref().unwrap_or_default();
    class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient")
}

/// Boot file from option 67 or the `file` field, next server from `siaddr` or option 54; what
/// the reply leaves out comes from `fallback`.
fn answer_from(reply: &DhcpRepr, fallback: Option<&BootAnswer>, via_4011: bool) -> BootAnswer {
    let file = reply
        .options
        .bootfile_name
        .as_deref()
        .filter(|name| !name.is_empty())
        .unwrap_or(&reply.boot_file);
    let mut boot_file = String::from_utf8_lossy(file).into_owned();
    if boot_file.is_empty()
        && let Some(fallback) = fallback
    {
        boot_file = fallback.boot_file.clone();
    }
    let next_server = Some(reply.siaddr)
        .filter(|ip| !ip.is_unspecified())
        .or(fallback.map(|f| f.next_server))
        .or(reply.options.server_id)
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    BootAnswer {
        next_server,
        boot_file,
        via_4011,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::proxy::{DhcpEvent, DhcpPort, ProxyDhcp, ProxyDhcpConfig};
    use crate::net::DatagramMeta;

    const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    /// Where the simulated client's unicast datagrams come from (after its DHCP lease).
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

    struct Run {
        result: Result<BootAnswer, DhcpClientError>,
        /// (virtual time since start, destination) of every client send.
        sends: Vec<(Duration, SocketAddr)>,
        proxy_events: Vec<DhcpEvent>,
        /// Where every proxy reply went.
        reply_destinations: Vec<SocketAddr>,
        retransmits: u32,
    }

    /// Runs one client against one proxy over an in-memory network with a virtual clock.
    /// `lose_reply(n)` drops the n-th proxy reply.
    fn simulate(config: DhcpClientConfig, mut lose_reply: impl FnMut(usize) -> bool) -> Run {
        let start = Instant::now();
        let mut now = start;
        let mut proxy = ProxyDhcp::new(ProxyDhcpConfig {
            http_port: 8080,
            ..Default::default()
        });
        let relay = config.relay;
        let pxe_port = config.pxe_port;
        let mut client = DhcpClient::new(now, config);
        let mut run = Run {
            result: Err(DhcpClientError::NoOffer),
            sends: Vec::new(),
            proxy_events: Vec::new(),
            reply_destinations: Vec::new(),
            retransmits: 0,
        };
        let mut buf = [0u8; 1500];
        let mut replies = 0;
        for _ in 0..100 {
            if let Some(result) = client.outcome() {
                run.result = result;
                run.retransmits = client.retransmits();
                return run;
            }
            while let Some(transmit) = client.poll_transmit(now, &mut buf) {
                let Payload::Bytes { len } = transmit.payload else {
                    panic!()
                };
                run.sends.push((now - start, transmit.destination));
                let (port, remote) = if transmit.destination.port() == pxe_port {
                    // EDK2 sends its 4011 request from port 4011.
                    (DhcpPort::Pxe, SocketAddr::new(IpAddr::V4(CLIENT_IP), 4011))
                } else if let Some(relay) = relay {
                    (DhcpPort::Dhcp, SocketAddr::new(IpAddr::V4(relay), 67))
                } else {
                    (DhcpPort::Dhcp, "0.0.0.0:68".parse().unwrap())
                };
                let meta = DatagramMeta {
                    remote,
                    local_ip: Some(IpAddr::V4(PROXY_IP)),
                    ifindex: Some(1),
                };
                proxy.handle_datagram(now, port, meta, &buf[..len]);
                run.proxy_events
                    .extend(std::iter::from_fn(|| proxy.poll_event()));
                let mut reply_buf = [0u8; 1500];
                while let Some((out_port, reply)) = proxy.poll_transmit(now, &mut reply_buf) {
                    let Payload::Bytes { len } = reply.payload else {
                        panic!()
                    };
                    run.reply_destinations.push(reply.destination);
                    replies += 1;
                    if lose_reply(replies) {
                        continue;
                    }
                    let from = SocketAddr::new(IpAddr::V4(PROXY_IP), out_port.number());
                    client.handle_datagram(now, from, &reply_buf[..len]);
                }
            }
            if client.outcome().is_none() {
                now = client
                    .poll_timeout()
                    .expect("running client has a deadline");
                client.handle_timeout(now);
            }
        }
        panic!("client did not finish");
    }

    fn uuid() -> ClientUuid {
        "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap()
    }

    #[test]
    fn broadcast_discover_takes_proxy_offer() {
        let run = simulate(
            DhcpClientConfig {
                uuid: Some(uuid()),
                ..Default::default()
            },
            |_| false,
        );
        assert_eq!(
            run.result,
            Ok(BootAnswer {
                next_server: PROXY_IP,
                boot_file: "ipxe.efi".into(),
                via_4011: false
            })
        );
        assert_eq!(run.sends.len(), 1);
        assert_eq!(run.sends[0].1, "255.255.255.255:67".parse().unwrap());
        assert_eq!(
            run.reply_destinations,
            vec!["255.255.255.255:68".parse().unwrap()]
        );
    }

    #[test]
    fn relay_mode_goes_through_giaddr() {
        let config = DhcpClientConfig {
            relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
            server: "127.0.0.1:67".parse().unwrap(),
            arch: 0,
            vendor_class: "PXEClient:Arch:00000:UNDI:002001".into(),
            ..Default::default()
        };
        let run = simulate(config, |_| false);
        assert_eq!(run.result.unwrap().boot_file, "undionly.kpxe");
        assert_eq!(run.sends[0].1, "127.0.0.1:67".parse().unwrap());
        assert_eq!(
            run.reply_destinations,
            vec!["127.0.0.2:67".parse().unwrap()]
        );
        assert!(matches!(
            run.proxy_events[0],
            DhcpEvent::Offered { relay: Some(ip), .. } if ip == Ipv4Addr::new(127, 0, 0, 2)
        ));
    }

    #[test]
    fn request_on_4011_after_the_offer() {
        let config = DhcpClientConfig {
            request_4011: true,
            ..Default::default()
        };
        let run = simulate(config, |_| false);
        assert_eq!(
            run.result,
            Ok(BootAnswer {
                next_server: PROXY_IP,
                boot_file: "ipxe.efi".into(),
                via_4011: true
            })
        );
        assert_eq!(run.sends.len(), 2);
        assert_eq!(run.sends[1].1, SocketAddr::new(IpAddr::V4(PROXY_IP), 4011));
        assert_eq!(
            run.reply_destinations[1],
            SocketAddr::new(IpAddr::V4(CLIENT_IP), 4011)
        );
        assert!(matches!(
            run.proxy_events[1],
            DhcpEvent::Acked {
                port: DhcpPort::Pxe,
                ..
            }
        ));
    }

    #[test]
    fn ipxe_second_dhcp_gets_the_script() {
        for request_4011 in [false, true] {
            let config = DhcpClientConfig {
                ipxe: true,
                uuid: Some(uuid()),
                request_4011,
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]),
                ..Default::default()
            };
            let answer = simulate(config, |_| false).result.unwrap();
            assert_eq!(
                answer.boot_file,
                "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A0a\
                 &uuid=01020304-0506-0708-090a-0b0c0d0e0f10&arch=7"
            );
            assert_eq!(answer.via_4011, request_4011);
        }
    }

    #[test]
    fn lost_reply_is_retransmitted_with_backoff() {
        let config = DhcpClientConfig {
            request_4011: true,
            ..Default::default()
        };
        // Lose the first offer and the first 4011 ACK.
        let run = simulate(config, |n| n == 1 || n == 3);
        assert!(run.result.unwrap().via_4011);
        assert_eq!(run.retransmits, 2);
        let times: Vec<u64> = run.sends.iter().map(|(t, _)| t.as_secs()).collect();
        // DISCOVER at 0, again at 4 s; REQUEST right after, again 4 s later.
        assert_eq!(times, vec![0, 4, 4, 8]);
    }

    #[test]
    fn gives_up_after_retries() {
        let config = DhcpClientConfig {
            retries: 3,
            ..Default::default()
        };
        let run = simulate(config, |_| true);
        assert_eq!(run.result, Err(DhcpClientError::NoOffer));
        let times: Vec<u64> = run.sends.iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(times, vec![0, 4, 12, 28]);

        let config = DhcpClientConfig {
            request_4011: true,
            retries: 1,
            ..Default::default()
        };
        let run = simulate(config, |n| n > 1);
        assert_eq!(run.result, Err(DhcpClientError::NoAck));
    }

    #[test]
    fn xid_comes_from_the_seed() {
        let now = Instant::now();
        let a = DhcpClient::new(
            now,
            DhcpClientConfig {
                rng_seed: 7,
                ..Default::default()
            },
        );
        let b = DhcpClient::new(
            now,
            DhcpClientConfig {
                rng_seed: 7,
                ..Default::default()
            },
        );
        let c = DhcpClient::new(
            now,
            DhcpClientConfig {
                rng_seed: 8,
                ..Default::default()
            },
        );
        assert_eq!(a.xid(), b.xid());
        assert_ne!(a.xid(), c.xid());
    }

    #[test]
    fn ignores_foreign_and_non_pxe_replies() {
        let now = Instant::now();
        let mut client = DhcpClient::new(now, DhcpClientConfig::default());
        let mut buf = [0u8; 1500];
        let transmit = client.poll_transmit(now, &mut buf).unwrap();
        let Payload::Bytes { len } = transmit.payload else {
            panic!()
        };
        let discover = DhcpRepr::parse_bytes(&buf[..len]).unwrap();
        let mut offer = discover.clone();
        offer.op = BootOp::Reply;
        offer.options = DhcpOptions {
            message_type: Some(MessageType::Offer),
            server_id: Some(PROXY_IP),
            ..Default::default()
        };
        offer.boot_file = b"x".to_vec();
        let from: SocketAddr = "10.0.0.1:67".parse().unwrap();
        // A plain DHCP offer (no PXEClient) is not a proxy offer.
        client.handle_datagram(now, from, &offer.to_bytes());
        assert!(client.outcome().is_none());
        offer.options.vendor_class = Some(b"PXEClient".to_vec());
        offer.xid ^= 1;
        client.handle_datagram(now, from, &offer.to_bytes());
        assert!(client.outcome().is_none());
        offer.xid ^= 1;
        client.handle_datagram(now, from, &offer.to_bytes()[..100]);
        assert!(client.outcome().is_none());
        client.handle_datagram(now, from, &offer.to_bytes());
        assert_eq!(client.outcome().unwrap().unwrap().next_server, PROXY_IP);
        assert!(client.poll_timeout().is_none());
        assert!(client.poll_transmit(now, &mut buf).is_none());
    }

    #[test]
    fn asks_4011_for_the_first_item_of_a_pxe_menu() {
        let now = Instant::now();
        let config = DhcpClientConfig {
            server: SocketAddr::new(IpAddr::V4(PROXY_IP), 67),
            pxe_port: 4011,
            ..Default::default()
        };
        let mut client = DhcpClient::new(now, config);
        let mut buf = [0u8; 1500];
        assert!(client.poll_transmit(now, &mut buf).is_some());
        // A dnsmasq-style proxy offer: a menu, no boot file.
        let bytes = menu_offer(&client, 0x8001, None, 0x03);
        client.handle_datagram(now, SocketAddr::new(IpAddr::V4(PROXY_IP), 67), &bytes);
        let t = client.poll_transmit(now, &mut buf).expect("4011 request");
        assert_eq!(t.destination.port(), 4011);
        let Payload::Bytes { len } = t.payload else {
            panic!("bytes")
        };
        let request = DhcpRepr::parse_bytes(&buf[..len]).expect("parse");
        let pxe = PxeVendorOptions::parse(request.options.vendor_specific.as_deref().expect("43"))
            .expect("43 parses");
        assert_eq!(pxe.boot_item.map(|b| b.server_type), Some(0x8001));
    }

    /// Drives one client through captured dnsmasq replies: the offer, then the 4011 ACK.
    /// Returns the 4011 request it sent (destination, option 43) and the outcome.
    fn against_dnsmasq(
        config: DhcpClientConfig,
        offer: &[u8],
        ack: &[u8],
    ) -> (
        SocketAddr,
        Option<PxeVendorOptions>,
        Result<BootAnswer, DhcpClientError>,
    ) {
        use crate::dhcp::fixtures::with_xid;
        let now = Instant::now();
        let dnsmasq = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 79, 1, 1)), 67);
        let mut client = DhcpClient::new(now, config);
        let mut buf = [0u8; 1500];
        assert!(client.poll_transmit(now, &mut buf).is_some(), "DISCOVER");
        client.handle_datagram(now, dnsmasq, &with_xid(offer.to_vec(), client.xid()));
        assert!(client.outcome().is_none(), "no boot file yet");
        let t = client.poll_transmit(now, &mut buf).expect("4011 request");
        let Payload::Bytes { len } = t.payload else {
            panic!("bytes")
        };
        let request = DhcpRepr::parse_bytes(&buf[..len]).expect("parse");
        assert_eq!(request.options.message_type, Some(MessageType::Request));
        assert_eq!(request.ciaddr, Ipv4Addr::new(10, 79, 1, 2));
        let pxe = request
            .options
            .vendor_specific
            .as_deref()
            .map(|raw| PxeVendorOptions::parse(raw).expect("43 parses"));
        let from = SocketAddr::new(dnsmasq.ip(), 4011);
        client.handle_datagram(now, from, &with_xid(ack.to_vec(), client.xid()));
        (t.destination, pxe, client.outcome().expect("done"))
    }

    fn dnsmasq_client(arch: u16, ipxe: bool) -> DhcpClientConfig {
        DhcpClientConfig {
            mac: MacAddr(crate::dhcp::fixtures::MAC),
            arch,
            vendor_class: format!("PXEClient:Arch:{arch:05}:UNDI:003000"),
            ipxe,
            client_ip: Some(Ipv4Addr::new(10, 79, 1, 2)),
            ..Default::default()
        }
    }

    #[test]
    fn bios_rom_boots_the_first_item_of_a_dnsmasq_menu() {
        use crate::dhcp::fixtures::{DNSMASQ_BIOS_ACK_4011, DNSMASQ_BIOS_OFFER};
        let (to, pxe, result) = against_dnsmasq(
            dnsmasq_client(0, false),
            &DNSMASQ_BIOS_OFFER.bytes(),
            &DNSMASQ_BIOS_ACK_4011.bytes_with_fields("", "undionly.kpxe"),
        );
        // The boot server sub-option 8 lists for type 0x8000, on 4011.
        assert_eq!(to, "10.79.1.1:4011".parse().unwrap());
        assert_eq!(
            pxe.and_then(|p| p.boot_item),
            Some(PxeBootItem {
                server_type: 0x8000,
                layer: 0
            })
        );
        assert_eq!(
            result,
            Ok(BootAnswer {
                next_server: Ipv4Addr::new(10, 79, 1, 1),
                boot_file: "undionly.kpxe".into(),
                via_4011: true
            })
        );
    }

    #[test]
    fn ipxe_asks_for_the_menu_item_too() {
        use crate::dhcp::fixtures::{DNSMASQ_IPXE_BIOS_ACK_4011, DNSMASQ_IPXE_BIOS_OFFER};
        let url = "http://10.79.1.1:8080/boot.ipxe";
        let (_, pxe, result) = against_dnsmasq(
            dnsmasq_client(0, true),
            &DNSMASQ_IPXE_BIOS_OFFER.bytes(),
            &DNSMASQ_IPXE_BIOS_ACK_4011.bytes_with_fields("", url),
        );
        assert_eq!(
            pxe.and_then(|p| p.boot_item).map(|b| b.server_type),
            Some(0x8002)
        );
        assert_eq!(result.unwrap().boot_file, url);
    }

    #[test]
    fn uefi_asks_without_a_boot_item_after_a_binl_offer() {
        use crate::dhcp::fixtures::{DNSMASQ_EFI_ACK_4011, DNSMASQ_EFI_OFFER};
        for ipxe in [false, true] {
            let (to, pxe, result) = against_dnsmasq(
                dnsmasq_client(7, ipxe),
                &DNSMASQ_EFI_OFFER.bytes(),
                &DNSMASQ_EFI_ACK_4011.bytes_with_fields("10.79.1.1", "ipxe.efi"),
            );
            // siaddr of the offer, and no option 43: dnsmasq ignores a request for item 0.
            assert_eq!(to, "10.79.1.1:4011".parse().unwrap());
            assert_eq!(pxe, None);
            assert_eq!(
                result,
                Ok(BootAnswer {
                    next_server: Ipv4Addr::new(10, 79, 1, 1),
                    boot_file: "ipxe.efi".into(),
                    via_4011: true
                })
            );
        }
    }

    /// A menu offer built by hand: `servers` is sub-option 8, the first item has `item` type.
    /// A proxy offer with a one-item PXE menu (option 43) and no boot file, as dnsmasq sends;
    /// `servers`: the boot servers list (sub-option 8); `control`: discovery control (6).
    fn menu_offer(
        client: &DhcpClient,
        item: u16,
        servers: Option<Vec<u8>>,
        control: u8,
    ) -> Vec<u8> {
        let mut menu = item.to_be_bytes().to_vec();
        menu.extend_from_slice(&[1, b'x']);
        let options = DhcpOptions {
            message_type: Some(MessageType::Offer),
            server_id: Some(PROXY_IP),
            vendor_class: Some(b"PXEClient".to_vec()),
            vendor_specific: Some(
                PxeVendorOptions {
                    discovery_control: Some(control),
                    boot_servers: servers,
                    boot_menu: Some(menu),
                    ..Default::default()
                }
                .to_bytes(),
            ),
            ..Default::default()
        };
        DhcpRepr {
            op: BootOp::Reply,
            hops: 0,
            xid: client.xid(),
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            client_mac: client.config.mac,
            server_name: Vec::new(),
            boot_file: Vec::new(),
            options,
        }
        .to_bytes()
    }

    #[test]
    fn menu_item_goes_to_the_server_listed_for_its_type() {
        let now = Instant::now();
        let from = SocketAddr::new(IpAddr::V4(PROXY_IP), 67);
        let mut buf = [0u8; 1500];
        // Type 0x8001 is served by 10.0.0.9 (after an entry for another type with two servers).
        let servers = vec![
            0x80, 0x00, 2, 10, 0, 0, 7, 10, 0, 0, 8, 0x80, 0x01, 1, 10, 0, 0, 9,
        ];
        let mut client = DhcpClient::new(now, DhcpClientConfig::default());
        client.poll_transmit(now, &mut buf);
        client.handle_datagram(now, from, &menu_offer(&client, 0x8001, Some(servers), 0x07));
        let t = client.poll_transmit(now, &mut buf).expect("request");
        assert_eq!(t.destination, "10.0.0.9:4011".parse().unwrap());
        // A type the list does not name is asked of the proxy.
        let mut client = DhcpClient::new(now, DhcpClientConfig::default());
        client.poll_transmit(now, &mut buf);
        let servers = vec![0x80, 0x00, 1, 10, 0, 0, 7];
        client.handle_datagram(now, from, &menu_offer(&client, 0x8001, Some(servers), 0x07));
        let t = client.poll_transmit(now, &mut buf).expect("request");
        assert_eq!(t.destination, SocketAddr::new(IpAddr::V4(PROXY_IP), 4011));
        // A truncated list is ignored rather than read past its end.
        assert_eq!(listed_server(&[0x80, 0x01, 2, 10, 0, 0, 9], 0x8001), None);
    }

    #[test]
    fn local_boot_as_first_item_ends_the_network_boot() {
        let now = Instant::now();
        let mut buf = [0u8; 1500];
        let mut client = DhcpClient::new(now, DhcpClientConfig::default());
        client.poll_transmit(now, &mut buf);
        let offer = menu_offer(&client, 0, None, 0x07);
        client.handle_datagram(now, SocketAddr::new(IpAddr::V4(PROXY_IP), 67), &offer);
        assert_eq!(client.outcome(), Some(Err(DhcpClientError::LocalBootItem)));
        assert!(client.poll_transmit(now, &mut buf).is_none());
    }
}
