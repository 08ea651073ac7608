//! The DHCP server (`dhcp.mode = "server"`): zpxe as the only DHCP server of an isolated
//! imaging network. It hands out addresses from pools per subnet (RFC 2131) and puts the PXE,
//! iPXE or HTTP Boot answer of the boot policy in the same OFFER and ACK, so no 4011 exchange
//! is needed (4011 is still answered by the proxy responder beside it).
//!
//! Durability: an ACK depends on a lease, so it is held until the caller says the lease is
//! written. Each REQUEST that binds produces a [`Commit`] (`poll_commit`); its reply leaves
//! `poll_transmit` only after `committed(seq, true)`. A crash before that loses an ACK the
//! client never saw, never a lease it holds. RELEASE and DECLINE produce commits without a reply.
//!
//! What one unauthenticated datagram may cost is bounded:
//! - only a REQUEST that follows this server's OFFER (SELECTING), or names a lease the table
//!   holds for that client (INIT-REBOOT, RENEWING, REBINDING), binds an address;
//! - a renewal writes nothing while the lease on disk still has more than 5/8 of its time left
//!   (it is answered with that time): a client writes at most once per half lease;
//! - one commit at a time per address: a retransmitted REQUEST joins the commit in flight;
//! - renewals may hold at most half of the commits in flight, so a flood of them leaves room
//!   for new clients;
//! - RELEASE and INFORM are taken only from the address they name (or a trusted relay), and a
//!   relayed message only from its relay (`giaddr`) or an address of `dhcp.relays`.
//!
//! Bad input gets no reply and an [`ServerEvent::Ignored`] with its reason.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::ids::{ClientUuid, MacAddr};
use super::leases::{
    AllocError, ClientKey, LeaseRecord, LeaseState, LeaseTable, MAX_POOL_ADDRESSES, Pool,
};
use super::options::{DhcpOptions, MessageType};
use super::policy::{BootPolicy, Ipv4Cidr};
use super::proxy::{self, BootAnswer};
use super::wire::{BootOp, DhcpRepr, SERVER_PORT, WireError};
use crate::net::{DatagramMeta, Payload, Transmit};

const MAX_QUEUED_REPLIES: usize = 256;
const MAX_QUEUED_EVENTS: usize = 1024;
/// Commits handed out and not yet confirmed, with their held replies. A writer that falls
/// behind makes REQUESTs wait (ignored, counted; clients retransmit), never memory grow.
const MAX_PENDING_COMMITS: usize = 1024;
/// Of those, renewals of live leases may hold at most this many: the rest stays for clients
/// that have no lease yet, and for RELEASE and DECLINE.
const MAX_PENDING_RENEWALS: usize = MAX_PENDING_COMMITS / 2;
/// Shorter leases only make sense in tests (renewal at T1 = 5 s).
const MIN_LEASE_SECS: u32 = 10;
/// Offers held for a conflict check at once. Each costs one echo request; past this a
/// DISCOVER that needs a check goes unanswered (counted; the client retransmits), so a flood
/// of DISCOVERs with made-up addresses cannot make the server ping without end.
const MAX_PROBES: usize = 256;
/// Addresses one DISCOVER may try: after a conflict the next is chosen and checked at once,
/// up to this many in all.
const MAX_PROBE_ATTEMPTS: u8 = 3;

/// Option codes this machine writes that `DhcpOptions` keeps in `other`.
mod code {
    pub(super) const DNS: u8 = 6;
    pub(super) const BROADCAST_ADDRESS: u8 = 28;
    pub(super) const RENEWAL_TIME: u8 = 58;
    pub(super) const REBINDING_TIME: u8 = 59;
}

/// `[[dhcp.pool]]`: one subnet's addresses and options.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PoolConfig {
    /// The subnet, e.g. "10.0.0.0/24": clients on it (directly, or through a relay whose giaddr
    /// is in it) get addresses from `range`.
    pub subnet: Ipv4Cidr,
    /// First and last address handed out, inclusive.
    pub range: [Ipv4Addr; 2],
    /// Option 3.
    #[serde(default)]
    pub router: Vec<Ipv4Addr>,
    /// Option 6.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Lease time for this pool; `dhcp.lease-time-secs` when absent.
    #[serde(default)]
    pub lease_time_secs: Option<u32>,
}

/// `[[dhcp.reservation]]`: a fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
}

/// Runtime settings of the server (assembled by the binary from its configuration).
#[derive(Debug, Clone)]
pub struct DhcpServerConfig {
    pub policy: BootPolicy,
    pub http_port: u16,
    /// Address to name as the server when the platform cannot tell the arrival address.
    pub server_ip: Option<Ipv4Addr>,
    /// This server's DHCP port; clients are answered on the one above it unless it is 67.
    pub dhcp_port: u16,
    pub pools: Vec<PoolConfig>,
    pub reservations: Vec<Reservation>,
    pub lease_time: Duration,
    /// How long an offered address is held for its client.
    pub offer_hold: Duration,
    /// How long a declined address is kept out of the pool.
    pub decline_hold: Duration,
    /// Relay agents that forward from an address other than their `giaddr` (`dhcp.relays`).
    pub relays: Vec<Ipv4Addr>,
    /// Before offering an address the client does not hold already, ask whether anyone
    /// answers at it (an ICMP echo, sent by the caller: `poll_probe`), waiting this long for
    /// an answer (`probe_answered`). `None`: offer at once.
    pub conflict_check: Option<Duration>,
}

impl Default for DhcpServerConfig {
    fn default() -> Self {
        Self {
            policy: BootPolicy::default(),
            http_port: 80,
            server_ip: None,
            dhcp_port: SERVER_PORT,
            pools: Vec::new(),
            reservations: Vec::new(),
            lease_time: Duration::from_secs(3600),
            offer_hold: Duration::from_secs(10),
            decline_hold: Duration::from_secs(600),
            relays: Vec::new(),
            conflict_check: None,
        }
    }
}

impl DhcpServerConfig {
    /// Every problem with the pools and reservations, as messages naming the key.
    pub fn check(
        pools: &[PoolConfig],
        reservations: &[Reservation],
        lease_secs: u32,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if pools.is_empty() {
            problems.push(
                "dhcp.mode = \"server\" needs at least one [[dhcp.pool]] (subnet and range)"
                    .to_owned(),
            );
        }
        if lease_secs < MIN_LEASE_SECS {
            problems.push(format!(
                "dhcp.lease-time-secs = {lease_secs}: at least {MIN_LEASE_SECS} seconds"
            ));
        }
        let mut total: u64 = 0;
        for (i, p) in pools.iter().enumerate() {
            let [first, last] = p.range;
            let name = format!("dhcp.pool[{i}] ({})", cidr_text(p.subnet));
            if !p.subnet.contains(first) || !p.subnet.contains(last) {
                problems.push(format!(
                    "{name}: range {first}-{last} is not inside the subnet"
                ));
            }
            if u32::from(first) > u32::from(last) {
                problems.push(format!("{name}: range starts at {first}, after {last}"));
            }
            total += u64::from(u32::from(last).saturating_sub(u32::from(first))) + 1;
            if p.lease_time_secs.is_some_and(|s| s < MIN_LEASE_SECS) {
                problems.push(format!(
                    "{name}: lease-time-secs must be at least {MIN_LEASE_SECS}"
                ));
            }
            for q in &pools[..i] {
                if q.subnet.contains(p.subnet.network) || p.subnet.contains(q.subnet.network) {
                    problems.push(format!(
                        "{name} overlaps the pool for {}: each subnet has one pool",
                        cidr_text(q.subnet)
                    ));
                }
            }
        }
        if total > MAX_POOL_ADDRESSES {
            problems.push(format!(
                "the pools hold {total} addresses; at most {MAX_POOL_ADDRESSES}"
            ));
        }
        for (i, r) in reservations.iter().enumerate() {
            if !pools.iter().any(|p| p.subnet.contains(r.ip)) {
                problems.push(format!(
                    "dhcp.reservation[{i}]: {} is in no pool's subnet",
                    r.ip
                ));
            }
            if reservations[..i].iter().any(|o| o.mac == r.mac) {
                problems.push(format!(
                    "dhcp.reservation[{i}]: {} is reserved twice",
                    r.mac
                ));
            }
            if reservations[..i].iter().any(|o| o.ip == r.ip) {
                problems.push(format!(
                    "dhcp.reservation[{i}]: {} is reserved for two machines",
                    r.ip
                ));
            }
        }
        problems
    }
}

fn cidr_text(c: Ipv4Cidr) -> String {
    format!("{}/{}", c.network, c.prefix_len)
}

/// What happened to a request, for logs, metrics and the boot timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    Offered {
        mac: MacAddr,
        ip: Ipv4Addr,
        relay: Option<Ipv4Addr>,
        boot: Option<BootInfo>,
    },
    Acked {
        mac: MacAddr,
        ip: Ipv4Addr,
        relay: Option<Ipv4Addr>,
        lease_secs: u32,
        boot: Option<BootInfo>,
    },
    /// An INFORM answered: options, no address.
    Informed {
        mac: MacAddr,
        ip: Ipv4Addr,
        relay: Option<Ipv4Addr>,
    },
    Nak {
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        reason: NakReason,
    },
    Released {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
    Declined {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
    /// Something answered the conflict check at `ip` before it was offered to `mac`: the
    /// address is held out as a declined one is, and the client offered another.
    Conflict {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
    Ignored {
        reason: ServerIgnore,
        mac: Option<MacAddr>,
    },
}

/// The boot answer that went with an offer or ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub uuid: Option<ClientUuid>,
    pub arch: Option<u16>,
    pub boot_file: String,
    pub ipxe: bool,
}

/// Why a REQUEST got a NAK.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NakReason {
    #[error("the requested address is not on the client's network")]
    WrongNetwork,
    #[error("the requested address is leased to another client")]
    InUse,
    #[error("the client's lease is for another address")]
    NotItsLease,
    #[error("a REQUEST without an address")]
    NoAddress,
    #[error("a REQUEST selecting an address this server did not offer the client")]
    NotOffered,
}

/// Why a datagram got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerIgnore {
    #[error("malformed: {0}")]
    Malformed(WireError),
    #[error("not a BOOTREQUEST")]
    NotBootRequest,
    #[error("message type {0:?} is not answered by a DHCP server")]
    UnexpectedMessage(Option<MessageType>),
    #[error("message for another server")]
    NotForUs,
    #[error("no local IPv4 address to name as the server")]
    NoServerAddress,
    #[error("no pool for the client's subnet")]
    NoPool,
    #[error("the pool has no free address")]
    PoolExhausted,
    #[error("INIT-REBOOT from a client this server has no lease for")]
    UnknownClient,
    #[error("RELEASE or DECLINE of an address the client does not hold")]
    NotHolder,
    #[error("relayed, but not from its relay (giaddr) or an address of dhcp.relays")]
    UntrustedRelay,
    #[error("RELEASE or INFORM not sent from the address it names (ciaddr)")]
    WrongSender,
    #[error("lease writes are backed up")]
    CommitBacklog,
    #[error("reply queue full")]
    QueueFull,
    #[error("the offer waits for its conflict check")]
    Probing,
    #[error("too many conflict checks under way")]
    ProbeBacklog,
    #[error("every address tried for the client answered the conflict check")]
    Conflicts,
}

/// Lease changes to write down, in one transaction, before `committed(seq, true)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub seq: u64,
    pub records: Vec<LeaseRecord>,
}

/// A reply as it will be encoded: once, into the caller's buffer, by `poll_transmit`.
#[derive(Debug)]
struct QueuedReply {
    destination: SocketAddr,
    source_ip: Option<IpAddr>,
    ifindex: Option<u32>,
    reply: DhcpRepr,
}

/// A lease whose commit is in flight: who it binds, until when.
#[derive(Debug)]
struct Binding {
    ip: Ipv4Addr,
    client: ClientKey,
    until: Instant,
}

#[derive(Debug)]
struct Held {
    seq: u64,
    reply: Option<QueuedReply>,
    event: ServerEvent,
    binding: Option<Binding>,
    /// A renewal of a live lease (counted against `MAX_PENDING_RENEWALS`).
    renewal: bool,
}

/// An offer that waits for its conflict check: sent at `deadline` unless the address answers
/// first.
#[derive(Debug)]
struct Probing {
    ip: Ipv4Addr,
    deadline: Instant,
    reply: QueuedReply,
    event: ServerEvent,
    /// What to choose another address from, if this one answers.
    meta: DatagramMeta,
    request: Box<DhcpRepr>,
    server: Ipv4Addr,
    attempt: u8,
}

/// The server. Feed it datagrams from the DHCP port; poll commits, replies and events.
#[derive(Debug)]
pub struct DhcpServer {
    config: DhcpServerConfig,
    table: LeaseTable,
    replies: VecDeque<QueuedReply>,
    events: VecDeque<ServerEvent>,
    commits: VecDeque<Commit>,
    held: VecDeque<Held>,
    renewals_held: usize,
    next_seq: u64,
    overrides: Option<std::sync::Arc<dyn super::proxy::ClientOverrides>>,
    /// Offers waiting for their conflict checks, by deadline (all wait as long).
    probing: VecDeque<Probing>,
    /// Addresses to check, for the caller to send an echo to.
    probes: VecDeque<Ipv4Addr>,
}

/// What one request resolved to.
enum Outcome {
    Reply(QueuedReply, ServerEvent),
    /// A reply (or none) that waits for `records` to be written.
    Durable {
        reply: Option<QueuedReply>,
        event: ServerEvent,
        records: Vec<LeaseRecord>,
        binding: Option<Binding>,
        renewal: bool,
    },
    /// A retransmission of a REQUEST whose commit `seq` is in flight: its reply replaces the
    /// one held (the client waits for the newest).
    Join(u64, QueuedReply),
    /// An offer held for its conflict check.
    Probing,
    Ignore(ServerIgnore),
}

impl DhcpServer {
    pub fn new(config: DhcpServerConfig) -> Self {
        let mut server_ips: Vec<Ipv4Addr> = config.server_ip.into_iter().collect();
        server_ips.extend(config.pools.iter().flat_map(|p| p.router.iter().copied()));
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let mut excluded: Vec<Ipv4Addr> = p.router.iter().chain(&p.dns).copied().collect();
                excluded.extend(server_ips.iter().copied());
                Pool::new(p.subnet, p.range[0], p.range[1], excluded)
            })
            .collect();
        let reservations: Vec<(MacAddr, Ipv4Addr)> =
            config.reservations.iter().map(|r| (r.mac, r.ip)).collect();
        Self {
            table: LeaseTable::new(pools, &reservations),
            config,
            replies: VecDeque::new(),
            events: VecDeque::new(),
            commits: VecDeque::new(),
            held: VecDeque::new(),
            renewals_held: 0,
            next_seq: 1,
            overrides: None,
            probing: VecDeque::new(),
            probes: VecDeque::new(),
        }
    }

    /// Answers with a reloaded boot policy (and HTTP port, advertised address) from the next
    /// request on; pools and leases are kept.
    pub fn set_boot(&mut self, policy: BootPolicy, http_port: u16, server_ip: Option<Ipv4Addr>) {
        self.config.policy = policy;
        self.config.http_port = http_port;
        self.config.server_ip = server_ip;
    }

    /// Consults `overrides` (the machine registry) for each client's loader, as the proxy does.
    pub fn set_overrides(&mut self, overrides: std::sync::Arc<dyn super::proxy::ClientOverrides>) {
        self.overrides = Some(overrides);
    }

    pub fn config(&self) -> &DhcpServerConfig {
        &self.config
    }

    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// Restores the stored leases (at start, before the first datagram). Returns how many were
    /// taken; leases outside every pool are left out.
    pub fn restore(&mut self, now: Instant, records: &[LeaseRecord]) -> usize {
        records
            .iter()
            .filter(|r| self.table.restore(r, now))
            .count()
    }

    pub fn handle_datagram(&mut self, now: Instant, meta: DatagramMeta, data: &[u8]) {
        let request = match DhcpRepr::parse_bytes(data) {
            Ok(request) => request,
            Err(error) => return self.ignore(ServerIgnore::Malformed(error), None),
        };
        let mac = Some(request.client_mac);
        let outcome = self.answer(now, &meta, &request);
        self.apply(outcome, mac);
    }

    fn apply(&mut self, outcome: Outcome, mac: Option<MacAddr>) {
        match outcome {
            Outcome::Reply(reply, event) => {
                if self.replies.len() >= MAX_QUEUED_REPLIES {
                    return self.ignore(ServerIgnore::QueueFull, mac);
                }
                self.replies.push_back(reply);
                self.push_event(event);
            }
            Outcome::Durable {
                reply,
                event,
                records,
                binding,
                renewal,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(b) = &binding {
                    self.table.set_pending(b.ip, Some(seq));
                }
                self.renewals_held += usize::from(renewal);
                self.commits.push_back(Commit { seq, records });
                self.held.push_back(Held {
                    seq,
                    reply,
                    event,
                    binding,
                    renewal,
                });
            }
            Outcome::Join(seq, reply) => {
                if let Some(held) = self.held.iter_mut().find(|h| h.seq == seq) {
                    held.reply = Some(reply);
                }
            }
            Outcome::Probing => {}
            Outcome::Ignore(reason) => self.ignore(reason, mac),
        }
    }

    /// The next address to check before it is offered: the caller sends it an ICMP echo and
    /// reports an answer with [`DhcpServer::probe_answered`].
    pub fn poll_probe(&mut self) -> Option<Ipv4Addr> {
        self.probes.pop_front()
    }

    /// When the oldest offer waiting for its conflict check is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probing.front().map(|p| p.deadline)
    }

    /// Sends the offers whose conflict checks got no answer in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.probing.front().is_some_and(|p| p.deadline <= now) {
            let Some(p) = self.probing.pop_front() else {
                break;
            };
            let mac = Some(p.request.client_mac);
            self.apply(Outcome::Reply(p.reply, p.event), mac);
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-2.2
    //# the allocating server SHOULD probe the reused address before
    //# allocating the address, e.g., with an ICMP echo request, and the
    //# client SHOULD probe the newly received address, e.g., with ARP.
    //
    // Something answered at `ip`: it is held out as a declined address is (the record is
    // written, so a restart keeps it out too) and the client gets the next address, checked
    // in turn. An answer for an address not being checked is dropped: it costs a lookup.
    pub fn probe_answered(&mut self, now: Instant, ip: Ipv4Addr) {
        let Some(pos) = self.probing.iter().position(|p| p.ip == ip) else {
            return;
        };
        let Some(p) = self.probing.remove(pos) else {
            return;
        };
        let mac = p.request.client_mac;
        let client = ClientKey::from_request(&p.request);
        let until = now + self.config.decline_hold;
        if let Some(record) = self.table.decline(ip, &client, until, now) {
            if self.backlog_full(false) {
                // Not written: held out in memory only, until `until`.
                self.push_event(ServerEvent::Conflict { mac, ip });
            } else {
                self.apply(
                    Outcome::Durable {
                        reply: None,
                        event: ServerEvent::Conflict { mac, ip },
                        records: vec![record],
                        binding: None,
                        renewal: false,
                    },
                    Some(mac),
                );
            }
        }
        if p.attempt >= MAX_PROBE_ATTEMPTS {
            return self.ignore(ServerIgnore::Conflicts, Some(mac));
        }
        let outcome = self.offer_to(now, &p.meta, &p.request, p.server, p.attempt + 1);
        self.apply(outcome, Some(mac));
    }

    /// The next batch of lease changes to write.
    pub fn poll_commit(&mut self) -> Option<Commit> {
        self.commits.pop_front()
    }

    /// Commits handed out or waiting and not yet confirmed.
    pub fn pending_commits(&self) -> usize {
        self.held.len()
    }

    /// The writer's answer for commit `seq`: its reply is released when written, dropped when
    /// not (the client retransmits; its lease stays in memory, so the retry binds it again and
    /// writes it again).
    pub fn committed(&mut self, seq: u64, written: bool) {
        let Some(pos) = self.held.iter().position(|h| h.seq == seq) else {
            return;
        };
        let Some(held) = self.held.remove(pos) else {
            return;
        };
        self.renewals_held -= usize::from(held.renewal);
        if let Some(b) = &held.binding {
            if self.table.slot(b.ip).and_then(|s| s.pending) == Some(seq) {
                self.table.set_pending(b.ip, None);
            }
            if written {
                self.table.mark_written(b.ip, &b.client, b.until);
            }
        }
        if !written {
            return;
        }
        if let Some(reply) = held.reply {
            if self.replies.len() >= MAX_QUEUED_REPLIES {
                let mac = event_mac(&held.event);
                return self.ignore(ServerIgnore::QueueFull, mac);
            }
            self.replies.push_back(reply);
        }
        self.push_event(held.event);
    }

    /// The next reply, encoded into the front of `buf`; always sent from the DHCP port. A
    /// reply larger than `buf` is dropped.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(queued) = self.replies.pop_front() {
            let Ok(len) = queued.reply.emit(buf) else {
                continue;
            };
            return Some(Transmit {
                destination: queued.destination,
                source_ip: queued.source_ip,
                ifindex: queued.ifindex,
                payload: Payload::Bytes { len },
            });
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn ignore(&mut self, reason: ServerIgnore, mac: Option<MacAddr>) {
        self.push_event(ServerEvent::Ignored { reason, mac });
    }

    fn push_event(&mut self, event: ServerEvent) {
        if self.events.len() < MAX_QUEUED_EVENTS {
            self.events.push_back(event);
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.1
    //# the address is selected based on the subnet from which
    //# the message was received (if 'giaddr' is 0) or on the address of
    //# the relay agent that forwarded the message ('giaddr' when not 0).
    fn pool_for(&self, request: &DhcpRepr, server: Ipv4Addr) -> Option<usize> {
        let on = if request.giaddr.is_unspecified() {
            server
        } else {
            request.giaddr
        };
        self.table.pool_of_subnet(on)
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.1
    //# If the 'giaddr' field in a DHCP message from a client is non-zero,
    //# the server sends any return messages to the 'DHCP server' port on the
    //# BOOTP relay agent whose address appears in 'giaddr'.
    //
    // So `giaddr` chooses both the pool and where the answer goes, and anyone could write it.
    // A relayed message is taken only from its relay: its source is `giaddr` itself, or one of
    // `dhcp.relays` (a relay that forwards from its address on the server's side, as ISC
    // dhcrelay and dnsmasq do when that differs from the client side's). `giaddr` must also be
    // in a pool's subnet (`pool_for`), so a reply never goes to an address outside them.
    fn relay_trusted(&self, meta: &DatagramMeta, request: &DhcpRepr) -> bool {
        if request.giaddr.is_unspecified() {
            return true;
        }
        match meta.remote.ip() {
            IpAddr::V4(from) => from == request.giaddr || self.config.relays.contains(&from),
            IpAddr::V6(_) => false,
        }
    }

    /// Room for one more commit (`renewal`: of a live lease, which may take only half).
    fn backlog_full(&self, renewal: bool) -> bool {
        self.held.len() >= MAX_PENDING_COMMITS
            || (renewal && self.renewals_held >= MAX_PENDING_RENEWALS)
    }

    fn answer(&mut self, now: Instant, meta: &DatagramMeta, request: &DhcpRepr) -> Outcome {
        if request.op != BootOp::Request {
            return Outcome::Ignore(ServerIgnore::NotBootRequest);
        }
        let Some(server) = proxy::server_address(meta, self.config.server_ip) else {
            return Outcome::Ignore(ServerIgnore::NoServerAddress);
        };
        if !self.relay_trusted(meta, request) {
            return Outcome::Ignore(ServerIgnore::UntrustedRelay);
        }
        match request.options.message_type {
            Some(MessageType::Discover) => self.discover(now, meta, request, server),
            Some(MessageType::Request) => self.request(now, meta, request, server),
            Some(MessageType::Release) => self.release(now, meta, request, server),
            Some(MessageType::Decline) => self.decline(now, request, server),
            Some(MessageType::Inform) => self.inform(meta, request, server),
            other => Outcome::Ignore(ServerIgnore::UnexpectedMessage(other)),
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.1
    //# When a server receives a DHCPDISCOVER message from a client, the
    //# server chooses a network address for the requesting client.
    fn discover(
        &mut self,
        now: Instant,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
    ) -> Outcome {
        self.offer_to(now, meta, request, server, 1)
    }

    /// Chooses an address for a DISCOVER and offers it, after a conflict check when that is
    /// on and the client does not hold the address already (`attempt`: the how-manieth
    /// address tried for this DISCOVER).
    fn offer_to(
        &mut self,
        now: Instant,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
        attempt: u8,
    ) -> Outcome {
        let Some(pool) = self.pool_for(request, server) else {
            return Outcome::Ignore(ServerIgnore::NoPool);
        };
        let client = ClientKey::from_request(request);
        let mac = request.client_mac;
        let ip = match self
            .table
            .choose(pool, &client, mac, request.options.requested_ip, now)
        {
            Ok(ip) => ip,
            Err(AllocError::Exhausted) => return Outcome::Ignore(ServerIgnore::PoolExhausted),
        };
        let lease = self.lease_time(pool);
        let (reply, boot) = self.lease_reply(
            meta,
            request,
            server,
            pool,
            MessageType::Offer,
            ip,
            Some(lease),
        );
        // A retransmitted DISCOVER while its address is checked: the newest gets the answer.
        if let Some(p) = self.probing.iter_mut().find(|p| p.ip == ip) {
            p.reply = reply;
            return Outcome::Ignore(ServerIgnore::Probing);
        }
        let check = self.config.conflict_check.filter(|_| {
            !(self.table.holds(ip, &client, now) || self.table.offered_to(ip, &client))
        });
        if check.is_some() && self.probing.len() >= MAX_PROBES {
            return Outcome::Ignore(ServerIgnore::ProbeBacklog);
        }
        let until = now + self.config.offer_hold;
        self.table.offer(ip, &client, mac, until, now);
        let event = ServerEvent::Offered {
            mac,
            ip,
            relay: relay_of(request),
            boot,
        };
        let Some(wait) = check else {
            return Outcome::Reply(reply, event);
        };
        self.probes.push_back(ip);
        self.probing.push_back(Probing {
            ip,
            deadline: now + wait,
            reply,
            event,
            meta: *meta,
            request: Box::new(request.clone()),
            server,
            attempt,
        });
        Outcome::Probing
    }

    /// Whether `client`'s REQUEST for `ip` NAKs (`Err`) or binds; `ip` must be available to it.
    fn nak_unless_available(
        &self,
        pool: usize,
        ip: Ipv4Addr,
        client: &ClientKey,
        mac: MacAddr,
        now: Instant,
    ) -> Result<(), NakReason> {
        if self.table.available(pool, ip, client, mac, now) {
            Ok(())
        } else if self.table.belongs(pool, ip, mac) {
            Err(NakReason::InUse)
        } else {
            Err(NakReason::WrongNetwork)
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.2
    //# A DHCPREQUEST message may come from a client responding to a
    //# DHCPOFFER message from a server, from a client verifying a
    //# previously allocated IP address or from a client extending the
    //# lease on a network address.
    fn request(
        &mut self,
        now: Instant,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
    ) -> Outcome {
        let client = ClientKey::from_request(request);
        let mac = request.client_mac;
        let requested = request.options.requested_ip;
        let Some(pool) = self.pool_for(request, server) else {
            return Outcome::Ignore(ServerIgnore::NoPool);
        };
        let checked = match (request.options.server_id, requested) {
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.2
            //# If the DHCPREQUEST message contains a 'server identifier'
            //# option, the message is in response to a DHCPOFFER message.
            //# Otherwise, the message is a request to verify or extend an
            //# existing lease.
            (Some(id), _) if id != server => {
                //= https://www.rfc-editor.org/rfc/rfc2131#section-3.1
                //# Those servers not selected by the DHCPREQUEST message use the
                //# message as notification that the client has declined that server's
                //# offer.
                self.table.withdraw_offer(&client);
                return Outcome::Ignore(ServerIgnore::NotForUs);
            }
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.2
            //# DHCPREQUEST generated during SELECTING state:
            //#
            //# Client inserts the address of the selected server in 'server
            //# identifier', 'ciaddr' MUST be zero, 'requested IP address' MUST be
            //# filled in with the yiaddr value from the chosen DHCPOFFER.
            //
            // So there is an offer: this server's, of that address, to that client (the hold
            // may have run out if nobody took the address since), or the client already holds
            // it (the REQUEST again, its ACK lost). Anything else gets a NAK and binds nothing.
            (Some(_), Some(ip)) => self
                .nak_unless_available(pool, ip, &client, mac, now)
                .and_then(|()| {
                    let ours =
                        self.table.offered_to(ip, &client) || self.table.holds(ip, &client, now);
                    if ours {
                        Ok(ip)
                    } else {
                        Err(NakReason::NotOffered)
                    }
                }),
            (Some(_), None) => Err(NakReason::NoAddress),
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.2
            //# DHCPREQUEST generated during INIT-REBOOT state:
            //#
            //# 'server identifier' MUST NOT be filled in, 'requested IP address'
            //# option MUST be filled in with client's notion of its previously
            //# assigned address. 'ciaddr' MUST be zero.
            (None, Some(ip)) if request.ciaddr.is_unspecified() => {
                //# If the client's notion of its address is not correct for the
                //# subnet, the server MUST reply with a DHCPNAK
                let on_network = self
                    .table
                    .pools()
                    .get(pool)
                    .is_some_and(|p| p.subnet.contains(ip));
                // zpxe's rule: the address must be the one the table records for this client
                // (bound, expired or released by it, and nobody took it since); a free address
                // the client has no record of is not handed out without an OFFER.
                match self.table.address_of(&client) {
                    _ if !on_network => Err(NakReason::WrongNetwork),
                    Some(known) if known == ip && self.table.names(ip, &client) => self
                        .nak_unless_available(pool, ip, &client, mac, now)
                        .map(|()| ip),
                    Some(_) => Err(NakReason::NotItsLease),
                    //# If the DHCP server has no record of this client, then it
                    //# MUST remain silent
                    None => return Outcome::Ignore(ServerIgnore::UnknownClient),
                }
            }
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.2
            //# DHCPREQUEST generated during RENEWING state:
            //#
            //# 'server identifier' MUST NOT be filled in, 'requested IP address'
            //# option MUST NOT be filled in, 'ciaddr' MUST be filled in with
            //# client's IP address.
            //
            // REBINDING is the same message broadcast; both extend the lease the table records
            // for this client (live, or expired while nobody took the address). An address the
            // table has no record of gets no answer, as in INIT-REBOOT: binding it would take
            // no OFFER.
            (None, _) if !request.ciaddr.is_unspecified() => {
                let ip = request.ciaddr;
                match self.table.slot(ip) {
                    None if self.table.belongs(pool, ip, mac) => {
                        return Outcome::Ignore(ServerIgnore::UnknownClient);
                    }
                    None => Err(NakReason::WrongNetwork),
                    Some(s)
                        if s.client.as_ref() == Some(&client) && s.state == LeaseState::Bound =>
                    {
                        self.nak_unless_available(pool, ip, &client, mac, now)
                            .map(|()| ip)
                    }
                    Some(_) => match self.nak_unless_available(pool, ip, &client, mac, now) {
                        Ok(()) => Err(NakReason::NotItsLease),
                        Err(reason) => Err(reason),
                    },
                }
            }
            (None, _) => Err(NakReason::NoAddress),
        };
        let ip = match checked {
            Ok(ip) => ip,
            Err(reason) => return self.nak(meta, request, server, reason),
        };
        self.bind(now, meta, request, server, pool, ip, client)
    }

    /// ACKs `ip` for the client of `request`, writing the lease unless the one on disk is
    /// fresh enough.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &mut self,
        now: Instant,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
        pool: usize,
        ip: Ipv4Addr,
        client: ClientKey,
    ) -> Outcome {
        let mac = request.client_mac;
        let lease = self.lease_time(pool);
        let relay = relay_of(request);
        let renewal = self.table.holds(ip, &client, now);
        let slot = self
            .table
            .slot(ip)
            .filter(|s| renewal && s.mac == mac && s.client.as_ref() == Some(&client));
        let acked = |lease_secs, boot| ServerEvent::Acked {
            mac,
            ip,
            relay,
            lease_secs,
            boot,
        };
        //= https://www.rfc-editor.org/rfc/rfc2131#section-4.4.5
        //# T1
        //# defaults to (0.5 * duration_of_lease).
        //
        // A renewal before 3/8 of the written lease has passed (so before T1, with slack for
        // clocks and retransmissions) changes nothing but the end: it is answered with the time
        // the lease on disk has left, and writes nothing. The client renews again at half of
        // that, by which time a write is due. So each lease costs at most one write per half
        // lease, however often its client asks.
        if let Some(s) = slot
            && s.pending.is_none()
            && let Some(written) = s.written
            && written.saturating_duration_since(now) * 8 >= lease * 5
        {
            let left = written.saturating_duration_since(now);
            let (reply, boot) = self.lease_reply(
                meta,
                request,
                server,
                pool,
                MessageType::Ack,
                ip,
                Some(left),
            );
            return Outcome::Reply(reply, acked(whole_secs(left), boot));
        }
        // The same lease's commit is in flight: this retransmission waits for it too.
        if let Some(s) = slot
            && let Some(seq) = s.pending
            && self.held.iter().any(|h| h.seq == seq)
        {
            let left = s.until.saturating_duration_since(now);
            let (reply, _) = self.lease_reply(
                meta,
                request,
                server,
                pool,
                MessageType::Ack,
                ip,
                Some(left),
            );
            return Outcome::Join(seq, reply);
        }
        if self.backlog_full(renewal) {
            return Outcome::Ignore(ServerIgnore::CommitBacklog);
        }
        let until = now + lease;
        let records = self.table.bind(ip, &client, mac, until, now);
        let (reply, boot) = self.lease_reply(
            meta,
            request,
            server,
            pool,
            MessageType::Ack,
            ip,
            Some(lease),
        );
        Outcome::Durable {
            reply: Some(reply),
            event: acked(whole_secs(lease), boot),
            records,
            binding: Some(Binding { ip, client, until }),
            renewal,
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.4
    //# Upon receipt of a DHCPRELEASE message, the server marks the network
    //# address as not allocated.
    //
    // Only the holder may: the address must be leased to the client named, and (not relayed)
    // the message must come from that address, which RFC 2131 4.4.4 has the client unicast
    // from. The holder check comes first, so a stranger learns nothing more from the reason.
    fn release(
        &mut self,
        now: Instant,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
    ) -> Outcome {
        if request.options.server_id.is_some_and(|id| id != server) {
            return Outcome::Ignore(ServerIgnore::NotForUs);
        }
        let ip = request.ciaddr;
        if self.table.pool_of_subnet(ip).is_none() {
            return Outcome::Ignore(ServerIgnore::NoPool);
        }
        let client = ClientKey::from_request(request);
        let holder = self
            .table
            .slot(ip)
            .is_some_and(|s| s.state == LeaseState::Bound && s.client.as_ref() == Some(&client));
        if !holder {
            return Outcome::Ignore(ServerIgnore::NotHolder);
        }
        if request.giaddr.is_unspecified() && meta.remote.ip() != IpAddr::V4(ip) {
            return Outcome::Ignore(ServerIgnore::WrongSender);
        }
        if self.backlog_full(false) {
            return Outcome::Ignore(ServerIgnore::CommitBacklog);
        }
        match self.table.release(ip, &client, now) {
            Some(record) => Outcome::Durable {
                reply: None,
                event: ServerEvent::Released {
                    mac: request.client_mac,
                    ip,
                },
                records: vec![record],
                binding: None,
                renewal: false,
            },
            None => Outcome::Ignore(ServerIgnore::NotHolder),
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.3
    //# If the server receives a DHCPDECLINE message, the client has
    //# discovered through some other means that the suggested network
    //# address is already in use.  The server MUST mark the network address
    //# as not available and SHOULD notify the local system administrator of
    //# a possible configuration problem.
    fn decline(&mut self, now: Instant, request: &DhcpRepr, server: Ipv4Addr) -> Outcome {
        if request.options.server_id.is_some_and(|id| id != server) {
            return Outcome::Ignore(ServerIgnore::NotForUs);
        }
        let Some(ip) = request.options.requested_ip else {
            return Outcome::Ignore(ServerIgnore::NotHolder);
        };
        let client = ClientKey::from_request(request);
        if !self.table.names(ip, &client) {
            return Outcome::Ignore(ServerIgnore::NotHolder);
        }
        if self.backlog_full(false) {
            return Outcome::Ignore(ServerIgnore::CommitBacklog);
        }
        let until = now + self.config.decline_hold;
        match self.table.decline(ip, &client, until, now) {
            Some(record) => Outcome::Durable {
                reply: None,
                event: ServerEvent::Declined {
                    mac: request.client_mac,
                    ip,
                },
                records: vec![record],
                binding: None,
                renewal: false,
            },
            None => Outcome::Ignore(ServerIgnore::NotHolder),
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.5
    //# The server responds to a DHCPINFORM message by sending a DHCPACK
    //# message directly to the address given in the 'ciaddr' field of the
    //# DHCPINFORM message.  The server MUST NOT send a lease expiration time
    //# to the client and SHOULD NOT fill in 'yiaddr'.
    //
    // The answer goes to 'ciaddr', so 'ciaddr' must be the sender (or the message came through
    // a trusted relay) and in one of the pools' subnets, whose options it gets: otherwise
    // anyone could have a reply sent to any address.
    fn inform(&mut self, meta: &DatagramMeta, request: &DhcpRepr, server: Ipv4Addr) -> Outcome {
        let ip = request.ciaddr;
        if ip.is_unspecified() {
            return Outcome::Ignore(ServerIgnore::UnexpectedMessage(Some(MessageType::Inform)));
        }
        let Some(pool) = self.table.pool_of_subnet(ip) else {
            return Outcome::Ignore(ServerIgnore::NoPool);
        };
        if request.giaddr.is_unspecified() && meta.remote.ip() != IpAddr::V4(ip) {
            return Outcome::Ignore(ServerIgnore::WrongSender);
        }
        let (reply, _) = self.lease_reply(
            meta,
            request,
            server,
            pool,
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            None,
        );
        Outcome::Reply(
            reply,
            ServerEvent::Informed {
                mac: request.client_mac,
                ip,
                relay: relay_of(request),
            },
        )
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.2
    //# If the server receives a DHCPREQUEST message with an invalid
    //# 'requested IP address', the server SHOULD respond to the client with
    //# a DHCPNAK message
    fn nak(
        &self,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
        reason: NakReason,
    ) -> Outcome {
        let relayed = !request.giaddr.is_unspecified();
        let reply = DhcpRepr {
            op: BootOp::Reply,
            hops: 0,
            xid: request.xid,
            secs: 0,
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.1
            //# If 'giaddr' is non-zero, the server
            //# sends the DHCPNAK to the relay agent with the broadcast bit set
            broadcast: relayed,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: request.giaddr,
            client_mac: request.client_mac,
            server_name: Vec::new(),
            boot_file: Vec::new(),
            options: DhcpOptions {
                message_type: Some(MessageType::Nak),
                server_id: Some(server),
                client_id: request.options.client_id.clone(),
                ..Default::default()
            },
        };
        //= https://www.rfc-editor.org/rfc/rfc2131#section-4.1
        //# In all cases, when 'giaddr' is zero, the server broadcasts any DHCPNAK
        //# messages to 0xffffffff.
        let destination = if relayed {
            SocketAddr::V4(SocketAddrV4::new(request.giaddr, self.config.dhcp_port))
        } else {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::BROADCAST,
                proxy::client_port(self.config.dhcp_port),
            ))
        };
        Outcome::Reply(
            QueuedReply {
                destination,
                source_ip: meta.local_ip,
                ifindex: meta.ifindex,
                reply,
            },
            ServerEvent::Nak {
                mac: request.client_mac,
                requested: request
                    .options
                    .requested_ip
                    .or(Some(request.ciaddr).filter(|ip| !ip.is_unspecified())),
                reason,
            },
        )
    }

    fn lease_time(&self, pool: usize) -> Duration {
        self.config
            .pools
            .get(pool)
            .and_then(|p| p.lease_time_secs)
            .map_or(self.config.lease_time, |s| {
                Duration::from_secs(u64::from(s))
            })
    }

    /// An OFFER or ACK for `ip` (unspecified and no `lease` for INFORM): the lease, the
    /// network's options and the boot answer.
    #[allow(clippy::too_many_arguments)]
    fn lease_reply(
        &self,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
        pool: usize,
        kind: MessageType,
        ip: Ipv4Addr,
        lease: Option<Duration>,
    ) -> (QueuedReply, Option<BootInfo>) {
        let mut options = DhcpOptions {
            message_type: Some(kind),
            server_id: Some(server),
            ..Default::default()
        };
        if let Some(p) = self.config.pools.get(pool) {
            options.subnet_mask = Some(p.subnet.mask());
            options.routers = p.router.clone();
            if !p.dns.is_empty() {
                let dns: Vec<u8> = p.dns.iter().flat_map(|d| d.octets()).collect();
                options.other.insert(code::DNS, dns);
            }
            options.other.insert(
                code::BROADCAST_ADDRESS,
                p.subnet.broadcast().octets().to_vec(),
            );
        }
        if let Some(lease) = lease {
            //= https://www.rfc-editor.org/rfc/rfc2131#section-4.4.5
            //# T1
            //# defaults to (0.5 * duration_of_lease).  T2 defaults to (0.875 *
            //# duration_of_lease).
            let lease_secs = whole_secs(lease);
            options.lease_time = Some(lease_secs);
            let t1 = lease_secs / 2;
            let t2 = u32::try_from(u64::from(lease_secs) * 7 / 8).unwrap_or(u32::MAX);
            options
                .other
                .insert(code::RENEWAL_TIME, t1.to_be_bytes().to_vec());
            options
                .other
                .insert(code::REBINDING_TIME, t2.to_be_bytes().to_vec());
        }
        let (siaddr, file_field, boot) = self.boot_options(meta, request, server, &mut options);
        let reply = DhcpRepr {
            op: BootOp::Reply,
            hops: 0,
            xid: request.xid,
            secs: 0,
            broadcast: request.broadcast,
            ciaddr: request.ciaddr,
            yiaddr: ip,
            siaddr,
            giaddr: request.giaddr,
            client_mac: request.client_mac,
            server_name: Vec::new(),
            boot_file: file_field,
            options,
        };
        //= https://www.rfc-editor.org/rfc/rfc2131#section-4.1
        //# If 'giaddr' is zero and 'ciaddr' is zero, and the broadcast bit is
        //# set, then the server broadcasts DHCPOFFER and DHCPACK messages to
        //# 0xffffffff. If the broadcast bit is not set and 'giaddr' is zero and
        //# 'ciaddr' is zero, then the server unicasts DHCPOFFER and DHCPACK
        //# messages to the client's hardware address and 'yiaddr' address.
        //
        // Unicasting to an address the client has not configured needs an ARP entry for it,
        // which takes raw sockets or a privileged ioctl; zpxe broadcasts instead, which every
        // client accepts (the flag only asks for a broadcast, it never forbids one). The relay
        // and 'ciaddr' cases are the proxy's (`proxy::dhcp_destination`).
        let destination = proxy::dhcp_destination(request, self.config.dhcp_port);
        (
            QueuedReply {
                destination,
                source_ip: meta.local_ip,
                ifindex: meta.ifindex,
                reply,
            },
            boot,
        )
    }

    /// The boot policy's answer for a PXE, iPXE or HTTP Boot client, exactly as proxy mode
    /// gives it (`proxy::boot_answer`): siaddr, the `file` field, and options 60, 43, 67 and 97
    /// added to `options`. Other clients (an installed OS renewing its lease), clients the
    /// policy has nothing for and clients the registry silences get an address without boot
    /// options.
    fn boot_options(
        &self,
        meta: &DatagramMeta,
        request: &DhcpRepr,
        server: Ipv4Addr,
        options: &mut DhcpOptions,
    ) -> (Ipv4Addr, Vec<u8>, Option<BootInfo>) {
        let none = (Ipv4Addr::UNSPECIFIED, Vec::new(), None);
        let Some(http_client) = proxy::boot_client(request) else {
            return none;
        };
        // `boot_answer` touches `options` only once the answer stands.
        let Ok(BootAnswer {
            next_server,
            file_field,
            boot_file,
            facts,
        }) = proxy::boot_answer(
            &self.config.policy,
            self.config.http_port,
            self.overrides.as_deref(),
            meta,
            request,
            http_client,
            server,
            options,
        )
        else {
            return none;
        };
        let info = BootInfo {
            uuid: facts.uuid,
            arch: facts.arch,
            boot_file,
            ipxe: facts.ipxe,
        };
        (next_server, file_field, Some(info))
    }
}

/// Whole seconds of `d`, for options 51, 58 and 59.
fn whole_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn relay_of(request: &DhcpRepr) -> Option<Ipv4Addr> {
    Some(request.giaddr).filter(|ip| !ip.is_unspecified())
}

fn event_mac(event: &ServerEvent) -> Option<MacAddr> {
    match event {
        ServerEvent::Offered { mac, .. }
        | ServerEvent::Acked { mac, .. }
        | ServerEvent::Informed { mac, .. }
        | ServerEvent::Nak { mac, .. }
        | ServerEvent::Released { mac, .. }
        | ServerEvent::Declined { mac, .. }
        | ServerEvent::Conflict { mac, .. } => Some(*mac),
        ServerEvent::Ignored { mac, .. } => *mac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::dhcp::fixtures;
    use crate::dhcp::leases;
    use crate::dhcp::options::{DISCOVERY_USE_BOOT_FILE, PxeVendorOptions};

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const RELAY: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn pool(subnet: &str, first: [u8; 4], last: [u8; 4]) -> PoolConfig {
        PoolConfig {
            subnet: cidr(subnet),
            range: [Ipv4Addr::from(first), Ipv4Addr::from(last)],
            router: vec![],
            dns: vec![],
            lease_time_secs: None,
        }
    }

    fn config() -> DhcpServerConfig {
        let mut direct = pool("10.0.0.0/24", [10, 0, 0, 100], [10, 0, 0, 199]);
        direct.router = vec![LOCAL];
        direct.dns = vec![Ipv4Addr::new(10, 0, 0, 53)];
        let relayed = pool("10.20.0.0/24", [10, 20, 0, 10], [10, 20, 0, 19]);
        DhcpServerConfig {
            http_port: 8080,
            pools: vec![direct, relayed],
            lease_time: Duration::from_secs(600),
            ..Default::default()
        }
    }

    fn meta(remote: &str) -> DatagramMeta {
        DatagramMeta {
            remote: remote.parse().unwrap(),
            local_ip: Some(IpAddr::V4(LOCAL)),
            ifindex: Some(3),
        }
    }

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    /// A plain (non-PXE) client message, as udhcpc sends it.
    fn msg(kind: MessageType, mac: MacAddr) -> DhcpRepr {
        DhcpRepr {
            op: BootOp::Request,
            hops: 0,
            xid: 0x1234_5678,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            client_mac: mac,
            server_name: Vec::new(),
            boot_file: Vec::new(),
            options: DhcpOptions {
                message_type: Some(kind),
                ..Default::default()
            },
        }
    }

    fn selecting(mac: MacAddr, ip: Ipv4Addr, server: Ipv4Addr) -> DhcpRepr {
        let mut r = msg(MessageType::Request, mac);
        r.options.server_id = Some(server);
        r.options.requested_ip = Some(ip);
        r
    }

    struct Out {
        transmits: Vec<(Transmit, DhcpRepr)>,
        events: Vec<ServerEvent>,
    }

    /// Feeds one message at `now`, confirms every commit as written, and collects what left.
    fn feed(server: &mut DhcpServer, now: Instant, meta: DatagramMeta, req: &DhcpRepr) -> Out {
        server.handle_datagram(now, meta, &req.to_bytes());
        while let Some(c) = server.poll_commit() {
            server.committed(c.seq, true);
        }
        drain(server, now)
    }

    fn drain(server: &mut DhcpServer, now: Instant) -> Out {
        let mut transmits = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            let Payload::Bytes { len } = t.payload else {
                panic!("bytes")
            };
            transmits.push((t, DhcpRepr::parse_bytes(&buf[..len]).unwrap()));
        }
        let mut events = Vec::new();
        while let Some(e) = server.poll_event() {
            events.push(e);
        }
        Out { transmits, events }
    }

    fn one(out: &Out) -> (&Transmit, &DhcpRepr) {
        assert_eq!(out.transmits.len(), 1, "events: {:?}", out.events);
        (&out.transmits[0].0, &out.transmits[0].1)
    }

    fn ignored(out: &Out) -> ServerIgnore {
        assert!(out.transmits.is_empty());
        match out.events.as_slice() {
            [ServerEvent::Ignored { reason, .. }] => reason.clone(),
            other => panic!("expected one Ignored, got {other:?}"),
        }
    }

    /// DISCOVER then REQUEST: the leased address.
    fn lease(server: &mut DhcpServer, now: Instant, m: MacAddr) -> Ipv4Addr {
        let offer = feed(
            server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, m),
        );
        let ip = one(&offer).1.yiaddr;
        let ack = feed(server, now, meta("0.0.0.0:68"), &selecting(m, ip, LOCAL));
        let (_, reply) = one(&ack);
        assert_eq!(reply.options.message_type, Some(MessageType::Ack));
        assert_eq!(reply.yiaddr, ip);
        ip
    }

    fn opt32(reply: &DhcpRepr, code: u8) -> Option<u32> {
        let v = reply.options.other.get(&code)?;
        Some(u32::from_be_bytes(v.as_slice().try_into().ok()?))
    }

    fn checking() -> DhcpServerConfig {
        DhcpServerConfig {
            conflict_check: Some(Duration::from_millis(500)),
            ..config()
        }
    }

    fn discover(server: &mut DhcpServer, now: Instant, m: MacAddr) -> Out {
        feed(
            server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, m),
        )
    }

    fn probes(server: &mut DhcpServer) -> Vec<Ipv4Addr> {
        std::iter::from_fn(|| server.poll_probe()).collect()
    }

    #[test]
    fn a_conflict_check_holds_the_offer_until_its_timeout() {
        let mut server = DhcpServer::new(checking());
        let now = Instant::now();
        let first = Ipv4Addr::new(10, 0, 0, 100);
        let held = |out: &Out| out.transmits.is_empty() && out.events.is_empty();
        assert!(held(&discover(&mut server, now, mac(1))));
        assert_eq!(probes(&mut server), [first]);
        assert_eq!(
            server.poll_timeout(),
            Some(now + Duration::from_millis(500))
        );
        // A retransmission is not checked again, nor answered before the check ends.
        let again = discover(&mut server, now + Duration::from_millis(100), mac(1));
        assert_eq!(ignored(&again), ServerIgnore::Probing);
        assert!(probes(&mut server).is_empty());
        // Another client meanwhile gets (and checks) another address.
        assert!(held(&discover(&mut server, now, mac(2))));
        assert_eq!(probes(&mut server), [Ipv4Addr::new(10, 0, 0, 101)]);
        // Not yet due: nothing.
        server.handle_timeout(now + Duration::from_millis(499));
        assert!(drain(&mut server, now).transmits.is_empty());
        // No answer: the offers leave.
        server.handle_timeout(now + Duration::from_millis(500));
        let out = drain(&mut server, now);
        let offered: Vec<Ipv4Addr> = out.transmits.iter().map(|(_, r)| r.yiaddr).collect();
        assert_eq!(offered, [first, Ipv4Addr::new(10, 0, 0, 101)]);
        assert_eq!(server.poll_timeout(), None);
        // The client's REQUEST binds as usual, and its next DISCOVER is not checked: it
        // holds the address.
        let mut req = msg(MessageType::Request, mac(1));
        req.options.server_id = Some(LOCAL);
        req.options.requested_ip = Some(first);
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &req);
        assert_eq!(one(&out).1.options.message_type, Some(MessageType::Ack));
        let out = discover(&mut server, now, mac(1));
        assert_eq!(one(&out).1.yiaddr, first);
        assert!(probes(&mut server).is_empty());
    }

    #[test]
    fn an_address_that_answers_is_held_out_and_the_next_one_offered() {
        let mut server = DhcpServer::new(checking());
        let now = Instant::now();
        let taken = Ipv4Addr::new(10, 0, 0, 100);
        let next = Ipv4Addr::new(10, 0, 0, 101);
        discover(&mut server, now, mac(1));
        assert_eq!(probes(&mut server), [taken]);
        // An answer from an address nobody checks changes nothing.
        server.probe_answered(now, Ipv4Addr::new(10, 0, 0, 150));
        assert!(server.poll_commit().is_none());
        server.probe_answered(now + Duration::from_millis(10), taken);
        // The conflict is written like a DECLINE, and the next address checked at once.
        let c = server.poll_commit().expect("the conflict's record");
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.records[0].ip, taken);
        assert_eq!(c.records[0].state, LeaseState::Declined);
        server.committed(c.seq, true);
        assert_eq!(probes(&mut server), [next]);
        let out = drain(&mut server, now);
        assert!(out.transmits.is_empty());
        assert!(
            out.events.contains(&ServerEvent::Conflict {
                mac: mac(1),
                ip: taken
            }),
            "{:?}",
            out.events
        );
        server.handle_timeout(now + Duration::from_secs(1));
        let out = drain(&mut server, now);
        assert_eq!(one(&out).1.yiaddr, next);
        // The answering address stays out for decline-hold, for every client.
        let (_, other) = {
            discover(&mut server, now, mac(2));
            assert_eq!(probes(&mut server), [Ipv4Addr::new(10, 0, 0, 102)]);
            server.handle_timeout(now + Duration::from_secs(2));
            let out = drain(&mut server, now);
            (out.transmits.len(), out.transmits[0].1.yiaddr)
        };
        assert_ne!(other, taken);
    }

    #[test]
    fn one_discover_tries_at_most_three_addresses_and_checks_are_bounded() {
        let mut server = DhcpServer::new(checking());
        let now = Instant::now();
        discover(&mut server, now, mac(1));
        let mut tried = Vec::new();
        while let Some(ip) = server.poll_probe() {
            tried.push(ip);
            server.probe_answered(now, ip);
            while let Some(c) = server.poll_commit() {
                server.committed(c.seq, true);
            }
        }
        assert_eq!(tried.len(), MAX_PROBE_ATTEMPTS as usize, "{tried:?}");
        let out = drain(&mut server, now);
        assert!(out.transmits.is_empty());
        assert!(
            out.events.iter().any(|e| matches!(
                e,
                ServerEvent::Ignored {
                    reason: ServerIgnore::Conflicts,
                    ..
                }
            )),
            "{:?}",
            out.events
        );
        // A flood of DISCOVERs from made-up clients: at most MAX_PROBES checks at once, the
        // rest unanswered and counted.
        let mut big = checking();
        big.pools[0] = pool("10.0.0.0/16", [10, 0, 1, 0], [10, 0, 4, 255]);
        let mut server = DhcpServer::new(big);
        let mut backlog = 0;
        for n in 0..(MAX_PROBES as u32 + 10) {
            let out = discover(&mut server, now, mac(100 + n));
            if !out.events.is_empty() {
                assert_eq!(ignored(&out), ServerIgnore::ProbeBacklog);
                backlog += 1;
            }
        }
        assert_eq!(probes(&mut server).len(), MAX_PROBES);
        assert_eq!(backlog, 10);
    }

    #[test]
    fn discover_gets_an_offer_with_the_lease_and_network_options() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1)),
        );
        let (t, offer) = one(&out);
        assert_eq!(t.destination, "255.255.255.255:68".parse().unwrap());
        assert_eq!(t.source_ip, Some(IpAddr::V4(LOCAL)));
        assert_eq!(offer.options.message_type, Some(MessageType::Offer));
        assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(offer.options.server_id, Some(LOCAL));
        assert_eq!(offer.options.lease_time, Some(600));
        assert_eq!(opt32(offer, code::RENEWAL_TIME), Some(300));
        assert_eq!(opt32(offer, code::REBINDING_TIME), Some(525));
        assert_eq!(
            offer.options.subnet_mask,
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(offer.options.routers, vec![LOCAL]);
        assert_eq!(
            opt32(offer, code::BROADCAST_ADDRESS),
            Some(u32::from(Ipv4Addr::new(10, 0, 0, 255)))
        );
        assert_eq!(
            offer.options.other.get(&code::DNS),
            Some(&vec![10, 0, 0, 53])
        );
        assert_eq!(offer.options.vendor_class, None, "not a PXE client");
        assert_eq!(offer.boot_file, b"");
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Offered { ip, relay: None, boot: None, .. }] if *ip == offer.yiaddr
        ));
        // The same client asking again is offered the same address; another gets the next.
        let again = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1)),
        );
        assert_eq!(one(&again).1.yiaddr, offer.yiaddr);
        let other = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(2)),
        );
        assert_eq!(one(&other).1.yiaddr, Ipv4Addr::new(10, 0, 0, 101));
    }

    #[test]
    fn the_ack_waits_for_its_lease_to_be_written() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let offer = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1)),
        );
        let ip = one(&offer).1.yiaddr;
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(1), ip, LOCAL).to_bytes(),
        );
        let commit = server.poll_commit().expect("a lease to write");
        assert_eq!(commit.records.len(), 1);
        assert_eq!(commit.records[0].ip, ip);
        assert_eq!(commit.records[0].state, LeaseState::Bound);
        assert_eq!(commit.records[0].remaining, Duration::from_secs(600));
        let mut buf = [0u8; 1500];
        assert!(
            server.poll_transmit(now, &mut buf).is_none(),
            "no ACK before the write"
        );
        assert_eq!(server.poll_event(), None);
        server.committed(commit.seq, true);
        let out = drain(&mut server, now);
        let (t, ack) = one(&out);
        assert_eq!(t.destination, "255.255.255.255:68".parse().unwrap());
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, ip);
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Acked {
                lease_secs: 600,
                ..
            }]
        ));

        // The same REQUEST again (its ACK lost): the written lease answers it, no new write.
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(1), ip, LOCAL).to_bytes(),
        );
        assert_eq!(server.poll_commit(), None);
        assert_eq!(
            one(&drain(&mut server, now)).1.options.message_type,
            Some(MessageType::Ack)
        );

        // A failed write drops the ACK; the retransmitted REQUEST writes and gets it.
        let offer = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(2)),
        );
        let ip2 = one(&offer).1.yiaddr;
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(2), ip2, LOCAL).to_bytes(),
        );
        let commit = server.poll_commit().unwrap();
        server.committed(commit.seq, false);
        assert!(drain(&mut server, now).transmits.is_empty());
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(2), ip2, LOCAL).to_bytes(),
        );
        let commit = server
            .poll_commit()
            .expect("written again: the first write failed");
        server.committed(commit.seq, true);
        let out = drain(&mut server, now);
        assert_eq!(one(&out).1.options.message_type, Some(MessageType::Ack));
    }

    #[test]
    fn a_request_for_another_server_withdraws_the_offer() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let offer = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1)),
        );
        let ip = one(&offer).1.yiaddr;
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(1), ip, Ipv4Addr::new(10, 0, 0, 2)),
        );
        assert_eq!(ignored(&out), ServerIgnore::NotForUs);
        assert!(
            server.table().slot(ip).is_none(),
            "the offer is released at once"
        );
    }

    #[test]
    fn requests_for_addresses_the_client_cannot_have_get_a_nak() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let ip1 = lease(&mut server, now, mac(1));

        // SELECTING an address leased to someone else.
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(2), ip1, LOCAL),
        );
        let (t, nak) = one(&out);
        assert_eq!(t.destination, "255.255.255.255:68".parse().unwrap());
        assert_eq!(nak.options.message_type, Some(MessageType::Nak));
        assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.options.lease_time, None);
        assert_eq!(nak.options.server_id, Some(LOCAL));
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Nak {
                reason: NakReason::InUse,
                ..
            }]
        ));

        // INIT-REBOOT on the wrong network.
        let mut reboot = msg(MessageType::Request, mac(1));
        reboot.options.requested_ip = Some(Ipv4Addr::new(192, 168, 1, 5));
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &reboot);
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Nak {
                reason: NakReason::WrongNetwork,
                ..
            }]
        ));

        // INIT-REBOOT with an address that is not its lease.
        reboot.options.requested_ip = Some(Ipv4Addr::new(10, 0, 0, 150));
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &reboot);
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Nak {
                reason: NakReason::NotItsLease,
                ..
            }]
        ));

        // INIT-REBOOT from a client the server has no record of: silence.
        let mut stranger = msg(MessageType::Request, mac(9));
        stranger.options.requested_ip = Some(Ipv4Addr::new(10, 0, 0, 150));
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &stranger);
        assert_eq!(ignored(&out), ServerIgnore::UnknownClient);

        // INIT-REBOOT with its own address: ACK.
        reboot.options.requested_ip = Some(ip1);
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &reboot);
        assert_eq!(one(&out).1.options.message_type, Some(MessageType::Ack));

        // RENEWING someone else's address.
        let mut renew = msg(MessageType::Request, mac(3));
        renew.ciaddr = ip1;
        let out = feed(&mut server, now, meta(&format!("{ip1}:68")), &renew);
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Nak {
                reason: NakReason::InUse,
                ..
            }]
        ));

        // SELECTING outside the pool.
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(4), Ipv4Addr::new(10, 0, 0, 5), LOCAL),
        );
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Nak {
                reason: NakReason::WrongNetwork,
                ..
            }]
        ));

        // A NAK to a relayed client goes to the relay with the broadcast bit.
        let mut relayed = selecting(mac(5), Ipv4Addr::new(10, 0, 0, 120), LOCAL);
        relayed.giaddr = RELAY;
        let out = feed(&mut server, now, meta("10.20.0.1:67"), &relayed);
        let (t, nak) = one(&out);
        assert_eq!(t.destination, "10.20.0.1:67".parse().unwrap());
        assert!(nak.broadcast);
        assert_eq!(nak.options.message_type, Some(MessageType::Nak));
    }

    #[test]
    fn renewing_extends_the_lease_and_answers_unicast() {
        let mut server = DhcpServer::new(config());
        let t0 = Instant::now();
        let ip = lease(&mut server, t0, mac(1));
        let t1 = t0 + Duration::from_secs(300);
        let mut renew = msg(MessageType::Request, mac(1));
        renew.ciaddr = ip;
        server.handle_datagram(t1, meta(&format!("{ip}:68")), &renew.to_bytes());
        let commit = server.poll_commit().unwrap();
        assert_eq!(commit.records[0].remaining, Duration::from_secs(600));
        server.committed(commit.seq, true);
        let out = drain(&mut server, t1);
        let (t, ack) = one(&out);
        assert_eq!(t.destination, SocketAddr::V4(SocketAddrV4::new(ip, 68)));
        assert_eq!(ack.yiaddr, ip);
        assert_eq!(ack.ciaddr, ip);
        // Still held 500 s after the first lease would have ended at 600 s.
        let t2 = t0 + Duration::from_secs(800);
        assert!(server.table().holds(ip, &ClientKey::from_mac(mac(1)), t2));
        // REBINDING (broadcast, same fields) after the lease ran out, nobody else took it: ACK.
        let t3 = t0 + Duration::from_secs(2000);
        let out = feed(&mut server, t3, meta("0.0.0.0:68"), &renew);
        assert_eq!(one(&out).1.options.message_type, Some(MessageType::Ack));
    }

    #[test]
    fn release_frees_the_address_and_decline_keeps_it_out() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let ip1 = lease(&mut server, now, mac(1));
        // A RELEASE forged by another client changes nothing.
        let mut forged = msg(MessageType::Release, mac(2));
        forged.ciaddr = ip1;
        forged.options.server_id = Some(LOCAL);
        assert_eq!(
            ignored(&feed(&mut server, now, meta("10.0.0.9:68"), &forged)),
            ServerIgnore::NotHolder
        );
        assert!(server.table().holds(ip1, &ClientKey::from_mac(mac(1)), now));

        let mut release = msg(MessageType::Release, mac(1));
        release.ciaddr = ip1;
        release.options.server_id = Some(LOCAL);
        server.handle_datagram(now, meta(&format!("{ip1}:68")), &release.to_bytes());
        let commit = server.poll_commit().expect("the release is written");
        assert_eq!(commit.records[0].state, LeaseState::Released);
        server.committed(commit.seq, true);
        let out = drain(&mut server, now);
        assert!(out.transmits.is_empty(), "RELEASE has no reply");
        assert!(matches!(out.events.as_slice(), [ServerEvent::Released { ip, .. }] if *ip == ip1));
        assert!(!server.table().holds(ip1, &ClientKey::from_mac(mac(1)), now));
        // The client comes back: its previous address.
        assert_eq!(lease(&mut server, now, mac(1)), ip1);

        // DECLINE: the address is out of the pool for decline_hold, then back.
        let mut decline = msg(MessageType::Decline, mac(1));
        decline.options.requested_ip = Some(ip1);
        decline.options.server_id = Some(LOCAL);
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &decline);
        assert!(out.transmits.is_empty());
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Declined { .. }]
        ));
        let next = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1)),
        );
        assert_ne!(
            one(&next).1.yiaddr,
            ip1,
            "a declined address is not offered again"
        );
        let mut ask = msg(MessageType::Discover, mac(7));
        ask.options.requested_ip = Some(ip1);
        let out = feed(&mut server, now, meta("0.0.0.0:68"), &ask);
        assert_ne!(one(&out).1.yiaddr, ip1);
        // mac(7) would get its own offered address back first (RFC 2131 4.3.1): a newcomer.
        let later = now + Duration::from_secs(601);
        let mut ask = msg(MessageType::Discover, mac(8));
        ask.options.requested_ip = Some(ip1);
        let out = feed(&mut server, later, meta("0.0.0.0:68"), &ask);
        assert_eq!(one(&out).1.yiaddr, ip1, "free again after the hold");
    }

    #[test]
    fn inform_gets_options_without_a_lease() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let mut inform = msg(MessageType::Inform, mac(1));
        inform.ciaddr = Ipv4Addr::new(10, 0, 0, 7);
        let out = feed(&mut server, now, meta("10.0.0.7:68"), &inform);
        let (t, ack) = one(&out);
        assert_eq!(t.destination, "10.0.0.7:68".parse().unwrap());
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.options.lease_time, None);
        assert_eq!(opt32(ack, code::RENEWAL_TIME), None);
        assert_eq!(
            ack.options.subnet_mask,
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Informed { .. }]
        ));
        assert_eq!(server.table().sizes(), (0, 0), "INFORM allocates nothing");
    }

    #[test]
    fn exhausted_pool_answers_nothing_until_offers_expire() {
        let mut cfg = config();
        cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 102)];
        let mut server = DhcpServer::new(cfg);
        let now = Instant::now();
        let mut seen = Vec::new();
        for n in 0..3 {
            let out = feed(
                &mut server,
                now,
                meta("0.0.0.0:68"),
                &msg(MessageType::Discover, mac(n)),
            );
            seen.push(one(&out).1.yiaddr);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(3)),
        );
        assert_eq!(ignored(&out), ServerIgnore::PoolExhausted);
        // Offers are held for offer_hold (10 s); then the address goes to whoever asks.
        let later = now + Duration::from_secs(11);
        let out = feed(
            &mut server,
            later,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(3)),
        );
        assert!(seen.contains(&one(&out).1.yiaddr));
    }

    #[test]
    fn expired_leases_are_reused_only_when_nothing_fresher_is_left() {
        let mut cfg = config();
        cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)];
        let mut server = DhcpServer::new(cfg);
        let now = Instant::now();
        let a = lease(&mut server, now, mac(1));
        let b = lease(&mut server, now, mac(2));
        assert_ne!(a, b);
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(3)),
        );
        assert_eq!(ignored(&out), ServerIgnore::PoolExhausted);
        // After 600 s both leases expired: a newcomer gets one of them, and the old client
        // coming back gets whatever is still free, never a duplicate.
        let later = now + Duration::from_secs(601);
        let c = lease(&mut server, later, mac(3));
        assert!(c == a || c == b);
        let again = lease(&mut server, later, mac(1));
        assert_ne!(again, c);
        let out = feed(
            &mut server,
            later,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(2)),
        );
        assert_eq!(ignored(&out), ServerIgnore::PoolExhausted);
    }

    #[test]
    fn the_relay_address_selects_the_pool_and_gets_the_reply() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let mut discover = msg(MessageType::Discover, mac(1));
        discover.giaddr = RELAY;
        discover.hops = 1;
        let out = feed(&mut server, now, meta("10.20.0.1:67"), &discover);
        let (t, offer) = one(&out);
        assert_eq!(t.destination, "10.20.0.1:67".parse().unwrap());
        assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 20, 0, 10));
        assert_eq!(offer.giaddr, RELAY);
        assert_eq!(
            offer.options.subnet_mask,
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert!(
            matches!(out.events.as_slice(), [ServerEvent::Offered { relay: Some(r), .. }] if *r == RELAY)
        );
        let mut request = selecting(mac(1), offer.yiaddr, LOCAL);
        request.giaddr = RELAY;
        let out = feed(&mut server, now, meta("10.20.0.1:67"), &request);
        let (t, ack) = one(&out);
        assert_eq!(t.destination, "10.20.0.1:67".parse().unwrap());
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        // A relay on a subnet without a pool.
        discover.giaddr = Ipv4Addr::new(172, 16, 0, 1);
        let out = feed(&mut server, now, meta("172.16.0.1:67"), &discover);
        assert_eq!(ignored(&out), ServerIgnore::NoPool);
    }

    #[test]
    fn pxe_clients_get_their_boot_file_in_the_offer() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        server.handle_datagram(now, meta("0.0.0.0:68"), &fixtures::EDK2_DISCOVER.bytes());
        let out = drain(&mut server, now);
        let (t, offer) = one(&out);
        assert_eq!(t.destination, "255.255.255.255:68".parse().unwrap());
        assert!(offer.broadcast, "EDK2 sets the broadcast flag");
        assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(offer.siaddr, LOCAL);
        assert_eq!(offer.boot_file, b"ipxe.efi");
        assert_eq!(
            offer.options.vendor_class.as_deref(),
            Some(&b"PXEClient"[..])
        );
        let pxe =
            PxeVendorOptions::parse(offer.options.vendor_specific.as_deref().unwrap()).unwrap();
        assert_eq!(pxe.discovery_control, Some(DISCOVERY_USE_BOOT_FILE));
        assert_eq!(offer.options.lease_time, Some(600));
        assert!(matches!(
            out.events.as_slice(),
            [ServerEvent::Offered {
                boot: Some(BootInfo {
                    arch: Some(7),
                    ipxe: false,
                    ..
                }),
                ..
            }]
        ));
        // iPXE on the same machine gets the same address and the script.
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_EFI_DISCOVER.bytes(),
        );
        let out = drain(&mut server, now);
        let (_, offer) = one(&out);
        assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
        assert!(
            String::from_utf8_lossy(&offer.boot_file).starts_with("http://10.0.0.1:8080/boot.ipxe")
        );
    }

    #[test]
    fn random_macs_cannot_grow_the_table_past_the_pool() {
        let mut cfg = config();
        cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 149)];
        let mut server = DhcpServer::new(cfg);
        let start = Instant::now();
        for n in 0..20_000u32 {
            let now = start + Duration::from_millis(u64::from(n));
            let m = mac(n.wrapping_mul(2_654_435_761));
            let _ = feed(
                &mut server,
                now,
                meta("0.0.0.0:68"),
                &msg(MessageType::Discover, m),
            );
            // Some also ask for the address they were offered.
            if n % 3 == 0 {
                let ip = Ipv4Addr::new(10, 0, 0, 100 + (n % 50) as u8);
                let _ = feed(
                    &mut server,
                    now,
                    meta("0.0.0.0:68"),
                    &selecting(m, ip, LOCAL),
                );
            }
            let (slots, clients) = server.table().sizes();
            assert!(
                slots <= 50 && clients <= 50,
                "{slots} slots, {clients} clients after {n}"
            );
            assert_eq!(server.pending_commits(), 0);
        }
    }

    #[test]
    fn restored_leases_keep_their_owner() {
        let now = Instant::now();
        let mut first = DhcpServer::new(config());
        let ip1 = lease(&mut first, now, mac(1));
        let ip2 = lease(&mut first, now, mac(2));
        let mut records = Vec::new();
        // What a restart reads back: the written commits.
        for (ip, m) in [(ip1, mac(1)), (ip2, mac(2))] {
            records.push(LeaseRecord {
                ip,
                state: LeaseState::Bound,
                client: Some(ClientKey::from_mac(m)),
                mac: m,
                remaining: Duration::from_secs(500),
            });
        }
        records.push(LeaseRecord {
            ip: Ipv4Addr::new(192, 168, 9, 9),
            state: LeaseState::Bound,
            client: Some(ClientKey::from_mac(mac(5))),
            mac: mac(5),
            remaining: Duration::from_secs(500),
        });
        let later = now + Duration::from_secs(5);
        let mut second = DhcpServer::new(config());
        assert_eq!(
            second.restore(later, &records),
            2,
            "the address in no pool is left out"
        );
        // A newcomer gets neither address, even asking for one.
        let mut ask = msg(MessageType::Discover, mac(3));
        ask.options.requested_ip = Some(ip1);
        let out = feed(&mut second, later, meta("0.0.0.0:68"), &ask);
        let got = one(&out).1.yiaddr;
        assert!(got != ip1 && got != ip2);
        assert_eq!(lease(&mut second, later, mac(2)), ip2);
        assert_eq!(lease(&mut second, later, mac(1)), ip1);
    }

    #[test]
    fn reservations_win_and_are_kept_from_others() {
        let mut cfg = config();
        let fixed = Ipv4Addr::new(10, 0, 0, 50);
        let in_range = Ipv4Addr::new(10, 0, 0, 100);
        cfg.reservations = vec![
            Reservation {
                mac: mac(1),
                ip: fixed,
            },
            Reservation {
                mac: mac(2),
                ip: in_range,
            },
        ];
        let mut server = DhcpServer::new(cfg);
        let now = Instant::now();
        assert_eq!(lease(&mut server, now, mac(1)), fixed);
        let other = lease(&mut server, now, mac(3));
        assert_ne!(
            other, in_range,
            "a reserved address is not in the dynamic pool"
        );
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(4), in_range, LOCAL),
        );
        assert!(matches!(out.events.as_slice(), [ServerEvent::Nak { .. }]));
        assert_eq!(lease(&mut server, now, mac(2)), in_range);
    }

    #[test]
    fn bad_input_gets_no_reply_and_a_reason() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        server.handle_datagram(now, meta("0.0.0.0:68"), &[1, 2, 3]);
        assert!(matches!(
            drain(&mut server, now).events.as_slice(),
            [ServerEvent::Ignored {
                reason: ServerIgnore::Malformed(_),
                mac: None
            }]
        ));
        let mut reply = msg(MessageType::Discover, mac(1));
        reply.op = BootOp::Reply;
        assert_eq!(
            ignored(&feed(&mut server, now, meta("0.0.0.0:68"), &reply)),
            ServerIgnore::NotBootRequest
        );
        let offer = msg(MessageType::Offer, mac(1));
        assert!(matches!(
            ignored(&feed(&mut server, now, meta("0.0.0.0:68"), &offer)),
            ServerIgnore::UnexpectedMessage(Some(MessageType::Offer))
        ));
        let mut untyped = msg(MessageType::Discover, mac(1));
        untyped.options.message_type = None;
        assert!(matches!(
            ignored(&feed(&mut server, now, meta("0.0.0.0:68"), &untyped)),
            ServerIgnore::UnexpectedMessage(None)
        ));
        let unknown_iface = DatagramMeta {
            remote: "0.0.0.0:68".parse().unwrap(),
            local_ip: None,
            ifindex: None,
        };
        assert_eq!(
            ignored(&feed(
                &mut server,
                now,
                unknown_iface,
                &msg(MessageType::Discover, mac(1))
            )),
            ServerIgnore::NoServerAddress
        );
    }

    /// RFC 2131 4.3.2: a REQUEST binds only what this server offered or the client holds.
    /// The old code ACKed (and wrote) a SELECTING REQUEST for any free address, and a
    /// RENEWING one for an address it had no record of: one datagram, one lease for an hour.
    #[test]
    fn a_request_without_an_offer_binds_nothing() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let free = Ipv4Addr::new(10, 0, 0, 150);
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(1), free, LOCAL).to_bytes(),
        );
        assert_eq!(server.poll_commit(), None, "nothing to write");
        let out = drain(&mut server, now);
        assert!(
            matches!(
                out.events.as_slice(),
                [ServerEvent::Nak {
                    reason: NakReason::NotOffered,
                    ..
                }]
            ),
            "{:?}",
            out.events
        );
        // RENEWING (and REBINDING) an address the table has no record of: silence.
        let mut renew = msg(MessageType::Request, mac(2));
        renew.ciaddr = free;
        let out = feed(&mut server, now, meta(&format!("{free}:68")), &renew);
        assert_eq!(ignored(&out), ServerIgnore::UnknownClient);
        assert_eq!(server.table().sizes(), (0, 0));
        // Offered to one client, requested by another: NAK, and the offer stands.
        let offer = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(3)),
        );
        let ip = one(&offer).1.yiaddr;
        let out = feed(
            &mut server,
            now,
            meta("0.0.0.0:68"),
            &selecting(mac(4), ip, LOCAL),
        );
        assert_eq!(one(&out).1.options.message_type, Some(MessageType::Nak));
        assert_eq!(lease(&mut server, now, mac(3)), ip);
    }

    /// Renewals before T1 write nothing (answered with the time the written lease has left),
    /// retransmissions join the write in flight, and a renewal at T1 writes once.
    #[test]
    fn renewals_before_t1_write_nothing_and_retransmissions_coalesce() {
        let mut server = DhcpServer::new(config());
        let t0 = Instant::now();
        let ip = lease(&mut server, t0, mac(1));
        let mut renew = msg(MessageType::Request, mac(1));
        renew.ciaddr = ip;
        let from = meta(&format!("{ip}:68"));
        for n in 0..1000u64 {
            let now = t0 + Duration::from_millis(n * 200);
            server.handle_datagram(now, from, &renew.to_bytes());
            assert_eq!(server.poll_commit(), None, "renewal {n} wrote");
            let out = drain(&mut server, now);
            let (_, ack) = one(&out);
            assert_eq!(ack.options.message_type, Some(MessageType::Ack));
            let left = 600 - u32::try_from(n / 5).unwrap() - u32::from(n % 5 != 0);
            assert_eq!(ack.options.lease_time, Some(left), "renewal {n}");
            assert_eq!(opt32(ack, code::RENEWAL_TIME), Some(left / 2));
        }
        // At T1 (300 s) the renewal writes; its retransmissions wait for the same write.
        let t1 = t0 + Duration::from_secs(300);
        server.handle_datagram(t1, from, &renew.to_bytes());
        let commit = server.poll_commit().expect("a renewal at T1 writes");
        assert_eq!(commit.records[0].remaining, Duration::from_secs(600));
        for _ in 0..5 {
            server.handle_datagram(t1, from, &renew.to_bytes());
        }
        assert_eq!(server.poll_commit(), None, "retransmissions join the write");
        assert_eq!(server.pending_commits(), 1);
        assert!(
            drain(&mut server, t1).transmits.is_empty(),
            "no ACK before it"
        );
        server.committed(commit.seq, true);
        let out = drain(&mut server, t1);
        assert_eq!(one(&out).1.options.lease_time, Some(600));
        // Right after: nothing to write again.
        server.handle_datagram(t1 + Duration::from_secs(1), from, &renew.to_bytes());
        assert_eq!(server.poll_commit(), None);
    }

    /// A stalled writer with a flood of renewals: the held replies stay bounded, renewals
    /// take at most half of the backlog, and new clients still get their leases written.
    /// The old code wrote every renewal; 1,024 of them shut every new client out.
    #[test]
    fn a_renewal_flood_with_a_stalled_writer_leaves_room_for_new_clients() {
        let mut cfg = config();
        cfg.pools[0] = pool("10.0.0.0/16", [10, 0, 1, 0], [10, 0, 15, 255]);
        let mut server = DhcpServer::new(cfg);
        let t0 = Instant::now();
        let clients = MAX_PENDING_COMMITS as u32 + 50;
        let leased: Vec<Ipv4Addr> = (0..clients)
            .map(|n| lease(&mut server, t0, mac(n)))
            .collect();
        // Past T1 every renewal writes, and the writer answers none of them.
        let now = t0 + Duration::from_secs(400);
        let mut backlog = 0;
        for round in 0..3 {
            for (n, ip) in leased.iter().enumerate() {
                let mut renew = msg(MessageType::Request, mac(n as u32));
                renew.ciaddr = *ip;
                server.handle_datagram(now, meta(&format!("{ip}:68")), &renew.to_bytes());
                while let Some(ServerEvent::Ignored { reason, .. }) = server.poll_event() {
                    if reason == ServerIgnore::CommitBacklog {
                        backlog += 1;
                    }
                }
            }
            assert_eq!(
                server.pending_commits(),
                MAX_PENDING_RENEWALS,
                "round {round}"
            );
        }
        assert!(
            backlog >= 3 * (clients as usize - MAX_PENDING_RENEWALS),
            "{backlog}"
        );
        // The writer took them and answers none.
        let mut taken = 0;
        while server.poll_commit().is_some() {
            taken += 1;
        }
        assert_eq!(taken, MAX_PENDING_RENEWALS);
        // New clients still get their leases written, up to the whole backlog.
        let mut written = 0;
        for n in 0..(MAX_PENDING_COMMITS as u32) {
            let m = mac(100_000 + n);
            server.handle_datagram(
                now,
                meta("0.0.0.0:68"),
                &msg(MessageType::Discover, m).to_bytes(),
            );
            let ip = one(&drain(&mut server, now)).1.yiaddr;
            server.handle_datagram(now, meta("0.0.0.0:68"), &selecting(m, ip, LOCAL).to_bytes());
            written += usize::from(server.poll_commit().is_some());
            let _ = drain(&mut server, now);
        }
        assert_eq!(written, MAX_PENDING_COMMITS - MAX_PENDING_RENEWALS);
        assert_eq!(server.pending_commits(), MAX_PENDING_COMMITS);
    }

    /// A RELEASE forged with the victim's identity from another address frees nothing; an
    /// INFORM is answered only to its sender, inside a pool's subnet. The old code freed the
    /// lease, and sent an ACK to whatever 'ciaddr' said.
    #[test]
    fn release_and_inform_only_from_the_address_they_name() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let ip = lease(&mut server, now, mac(1));
        let mut forged = msg(MessageType::Release, mac(1));
        forged.ciaddr = ip;
        forged.options.server_id = Some(LOCAL);
        for from in ["10.0.0.9:68", "0.0.0.0:68", "192.168.7.7:68"] {
            assert_eq!(
                ignored(&feed(&mut server, now, meta(from), &forged)),
                ServerIgnore::WrongSender,
                "{from}"
            );
        }
        assert!(server.table().holds(ip, &ClientKey::from_mac(mac(1)), now));
        // Outside every pool's subnet: nothing to release.
        forged.ciaddr = Ipv4Addr::new(192, 168, 7, 7);
        assert_eq!(
            ignored(&feed(&mut server, now, meta("192.168.7.7:68"), &forged)),
            ServerIgnore::NoPool
        );

        // INFORM naming another address: no reflection.
        let mut inform = msg(MessageType::Inform, mac(2));
        inform.ciaddr = Ipv4Addr::new(10, 0, 0, 7);
        assert_eq!(
            ignored(&feed(&mut server, now, meta("10.0.0.8:68"), &inform)),
            ServerIgnore::WrongSender
        );
        // Or an address outside the pools (a victim elsewhere, spoofed as the source too).
        inform.ciaddr = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(
            ignored(&feed(&mut server, now, meta("198.51.100.7:68"), &inform)),
            ServerIgnore::NoPool
        );
        // A relayed INFORM from a client behind the relay gets the options of its subnet.
        inform.ciaddr = Ipv4Addr::new(10, 20, 0, 50);
        inform.giaddr = RELAY;
        let out = feed(&mut server, now, meta("10.20.0.1:67"), &inform);
        let (t, ack) = one(&out);
        assert_eq!(t.destination, "10.20.0.1:67".parse().unwrap());
        assert_eq!(
            ack.options.routers,
            Vec::<Ipv4Addr>::new(),
            "the relayed pool's"
        );
    }

    /// A relayed message is taken only from its relay (source = giaddr) or a configured relay
    /// address. The old code sent the OFFER to any giaddr a stranger wrote.
    #[test]
    fn giaddr_is_trusted_only_from_its_relay() {
        let mut cfg = config();
        cfg.relays = vec![Ipv4Addr::new(10, 0, 0, 254)];
        let mut server = DhcpServer::new(cfg);
        let now = Instant::now();
        let mut discover = msg(MessageType::Discover, mac(1));
        discover.giaddr = RELAY;
        for from in ["10.0.0.9:67", "10.0.0.9:68", "0.0.0.0:68", "10.20.0.2:67"] {
            assert_eq!(
                ignored(&feed(&mut server, now, meta(from), &discover)),
                ServerIgnore::UntrustedRelay,
                "{from}"
            );
        }
        assert_eq!(server.table().sizes(), (0, 0), "nothing offered");
        // From the relay itself, or from its configured address on the server's side.
        for from in ["10.20.0.1:67", "10.0.0.254:67"] {
            let out = feed(&mut server, now, meta(from), &discover);
            let (t, offer) = one(&out);
            assert_eq!(t.destination, "10.20.0.1:67".parse().unwrap());
            assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 20, 0, 10));
        }
    }

    /// Allocation never scans: in a /16 pool that has cycled, where the one free address is
    /// far from where the last allocation stopped, DISCOVER still finds it, looking at a few
    /// entries. The old code gave up after 4,096 probes (PoolExhausted with an address free).
    #[test]
    fn the_last_free_address_of_a_big_pool_is_found_without_a_scan() {
        let mut cfg = config();
        cfg.pools[0] = pool("10.0.0.0/16", [10, 0, 0, 2], [10, 0, 255, 254]);
        cfg.pools[0].router = vec![LOCAL];
        let mut server = DhcpServer::new(cfg);
        let start = Instant::now();
        // Fill the pool with offers (65,533 addresses).
        let mut n = 0u32;
        loop {
            let out = feed(
                &mut server,
                start,
                meta("0.0.0.0:68"),
                &msg(MessageType::Discover, mac(n)),
            );
            n += 1;
            if out.transmits.is_empty() {
                assert_eq!(ignored(&out), ServerIgnore::PoolExhausted);
                break;
            }
        }
        assert_eq!(n - 1, 65_533);
        // The offers lapse; every client but the one offered `keep` comes back and leases
        // its address, so the allocation cursor has gone round and `keep` is the only free
        // address.
        let later = start + Duration::from_secs(11);
        let keep = Ipv4Addr::new(10, 0, 0, 40);
        let mut free = 0;
        for k in 0..n - 1 {
            let m = mac(k);
            let ip = server.table().address_of(&ClientKey::from_mac(m)).unwrap();
            if ip == keep {
                continue;
            }
            let out = feed(
                &mut server,
                later,
                meta("0.0.0.0:68"),
                &msg(MessageType::Discover, m),
            );
            let ip = one(&out).1.yiaddr;
            let out = feed(
                &mut server,
                later,
                meta("0.0.0.0:68"),
                &selecting(m, ip, LOCAL),
            );
            assert_eq!(one(&out).1.options.message_type, Some(MessageType::Ack));
            free += 1;
        }
        assert_eq!(free, 65_532);
        let before = server.table().allocation_steps();
        let out = feed(
            &mut server,
            later,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1_000_000)),
        );
        assert_eq!(one(&out).1.yiaddr, keep);
        let steps = server.table().allocation_steps() - before;
        assert!(steps < 100, "{steps} entries looked at for one allocation");
        // Nothing left: said at once, not after a scan.
        let before = server.table().allocation_steps();
        let out = feed(
            &mut server,
            later,
            meta("0.0.0.0:68"),
            &msg(MessageType::Discover, mac(1_000_001)),
        );
        assert_eq!(ignored(&out), ServerIgnore::PoolExhausted);
        assert!(server.table().allocation_steps() - before < 100);
        let (slots, clients) = server.table().sizes();
        assert!(slots <= 65_533 && clients <= 65_533);
    }

    /// Option 61 up to 255 bytes is kept as at most 64: longer identifiers by their first 48
    /// bytes and a hash of the whole, the same across restarts (the stored key matches).
    #[test]
    fn long_client_identifiers_are_capped_and_still_tell_clients_apart() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let long = |last: u8| {
            let mut id = vec![0xff; 200];
            id[199] = last;
            id
        };
        let mut ips = Vec::new();
        for last in [1u8, 2] {
            let mut d = msg(MessageType::Discover, mac(1));
            d.options.client_id = Some(long(last));
            let ip = one(&feed(&mut server, now, meta("0.0.0.0:68"), &d))
                .1
                .yiaddr;
            let mut r = selecting(mac(1), ip, LOCAL);
            r.options.client_id = Some(long(last));
            server.handle_datagram(now, meta("0.0.0.0:68"), &r.to_bytes());
            let commit = server.poll_commit().unwrap();
            let key = commit.records[0].client.clone().unwrap();
            assert_eq!(key.as_bytes().len(), leases::MAX_CLIENT_KEY);
            assert_eq!(&key.as_bytes()[..48], &long(last)[..48]);
            // What a restart reads back is the same key.
            assert_eq!(ClientKey::from_bytes(key.as_bytes()), Some(key.clone()));
            assert_eq!(ClientKey::from_bytes(&long(last)), Some(key));
            server.committed(commit.seq, true);
            ips.push(one(&drain(&mut server, now)).1.yiaddr);
        }
        assert_ne!(ips[0], ips[1], "two clients, not one");
        let short = ClientKey::from_bytes(&[1, 2, 3]).unwrap();
        assert_eq!(short.as_bytes(), &[1, 2, 3]);
        assert_eq!(ClientKey::from_bytes(&[]), None);
        assert_eq!(ClientKey::from_bytes(&[0; 256]), None);
    }

    #[test]
    fn config_check_names_each_problem() {
        let good = config();
        assert!(DhcpServerConfig::check(&good.pools, &[], 600).is_empty());
        assert!(!DhcpServerConfig::check(&[], &[], 600).is_empty());
        let mut outside = pool("10.0.0.0/24", [10, 0, 0, 10], [10, 0, 1, 10]);
        let p = DhcpServerConfig::check(std::slice::from_ref(&outside), &[], 600);
        assert!(p[0].contains("not inside the subnet"), "{p:?}");
        outside.range = [Ipv4Addr::new(10, 0, 0, 20), Ipv4Addr::new(10, 0, 0, 10)];
        let p = DhcpServerConfig::check(std::slice::from_ref(&outside), &[], 600);
        assert!(p[0].contains("after"), "{p:?}");
        let overlap = [
            pool("10.0.0.0/16", [10, 0, 0, 10], [10, 0, 0, 20]),
            good.pools[0].clone(),
        ];
        assert!(DhcpServerConfig::check(&overlap, &[], 600)[0].contains("overlaps"));
        assert!(DhcpServerConfig::check(&good.pools, &[], 9)[0].contains("at least 10"));
        let huge = [pool("10.0.0.0/8", [10, 0, 0, 1], [10, 255, 255, 254])];
        assert!(DhcpServerConfig::check(&huge, &[], 600)[0].contains("at most"));
        let r = [
            Reservation {
                mac: mac(1),
                ip: Ipv4Addr::new(192, 168, 0, 1),
            },
            Reservation {
                mac: mac(1),
                ip: Ipv4Addr::new(10, 0, 0, 5),
            },
        ];
        let p = DhcpServerConfig::check(&good.pools, &r, 600);
        assert_eq!(p.len(), 2, "{p:?}");
    }
    /// The load generator's firmware client against the server: it takes the offered address,
    /// REQUESTs it, and boots the file from the same replies (no 4011 exchange).
    #[test]
    fn the_firmware_client_leases_and_boots_without_4011() {
        use crate::dhcp::client::{DhcpClient, DhcpClientConfig};
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let mut leased = Vec::new();
        for n in 0..20u32 {
            let mut client = DhcpClient::new(
                now,
                DhcpClientConfig {
                    mac: mac(n),
                    rng_seed: u64::from(n),
                    server: "255.255.255.255:67".parse().unwrap(),
                    ..Default::default()
                },
            );
            let mut buf = [0u8; 1500];
            for _ in 0..4 {
                let Some(t) = client.poll_transmit(now, &mut buf) else {
                    break;
                };
                let Payload::Bytes { len } = t.payload else {
                    panic!("bytes")
                };
                assert_eq!(t.destination, "255.255.255.255:67".parse().unwrap());
                let out = feed(
                    &mut server,
                    now,
                    meta("0.0.0.0:68"),
                    &DhcpRepr::parse_bytes(&buf[..len]).unwrap(),
                );
                for (_, reply) in &out.transmits {
                    client.handle_datagram(now, "10.0.0.1:67".parse().unwrap(), &reply.to_bytes());
                }
            }
            let answer = client.outcome().expect("done").expect("booted");
            assert_eq!(answer.boot_file, "ipxe.efi");
            assert!(!answer.via_4011);
            leased.push(client.leased().expect("an address"));
        }
        let mut unique = leased.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), leased.len(), "{leased:?}");
        assert_eq!(server.table().bound_count(now), 20);
    }

    #[test]
    fn a_registered_loader_replaces_the_policy_s() {
        #[derive(Debug)]
        struct One(MacAddr);
        impl crate::dhcp::proxy::ClientOverrides for One {
            fn loader(&self, facts: &crate::dhcp::ClientFacts) -> Option<String> {
                (facts.mac == self.0).then(|| "custom.efi".to_owned())
            }
        }
        let mut server = DhcpServer::new(config());
        server.set_overrides(std::sync::Arc::new(One(MacAddr(fixtures::MAC))));
        let now = Instant::now();
        server.handle_datagram(now, meta("0.0.0.0:68"), &fixtures::EDK2_DISCOVER.bytes());
        let out = drain(&mut server, now);
        assert_eq!(one(&out).1.boot_file, b"custom.efi");
        // iPXE still gets its script.
        server.handle_datagram(
            now,
            meta("0.0.0.0:68"),
            &fixtures::IPXE_EFI_DISCOVER.bytes(),
        );
        let out = drain(&mut server, now);
        assert!(one(&out).1.boot_file.starts_with(b"http://"));
    }

    /// Random DISCOVER, REQUEST (each kind), RELEASE, DECLINE and INFORM from 40 clients
    /// against a 16-address pool over simulated hours, some commits failing: no address is ever
    /// leased to two clients at once, every ACK names an address of the pool, and the table
    /// never outgrows the pool.
    #[test]
    fn random_traffic_never_leases_one_address_twice() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut cfg = config();
            cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 115)];
            cfg.lease_time = Duration::from_secs(60);
            let mut server = DhcpServer::new(cfg);
            let start = Instant::now();
            let mut now = start;
            // What each client believes it holds, and until when.
            let mut held: HashMap<u32, (Ipv4Addr, Instant)> = HashMap::new();
            for step in 0..3000 {
                now += Duration::from_millis(rng.random_range(0..2000));
                let n = rng.random_range(0..40u32);
                let m = mac(n);
                let ip_any = Ipv4Addr::new(10, 0, 0, rng.random_range(95..120));
                let mine = held.get(&n).map(|h| h.0);
                let req = match rng.random_range(0..7) {
                    0 | 1 => msg(MessageType::Discover, m),
                    2 => selecting(m, mine.unwrap_or(ip_any), LOCAL),
                    3 => {
                        let mut r = msg(MessageType::Request, m);
                        r.options.requested_ip = Some(mine.unwrap_or(ip_any));
                        r
                    }
                    4 => {
                        let mut r = msg(MessageType::Request, m);
                        r.ciaddr = mine.unwrap_or(ip_any);
                        r
                    }
                    5 => {
                        let mut r = msg(MessageType::Release, m);
                        r.ciaddr = mine.unwrap_or(ip_any);
                        r.options.server_id = Some(LOCAL);
                        held.remove(&n);
                        r
                    }
                    _ => {
                        let mut r = msg(MessageType::Decline, m);
                        r.options.requested_ip = Some(mine.unwrap_or(ip_any));
                        r.options.server_id = Some(LOCAL);
                        held.remove(&n);
                        r
                    }
                };
                // RELEASE comes from the address it gives back (RFC 2131 4.4.4: unicast).
                let from = if req.options.message_type == Some(MessageType::Release) {
                    format!("{}:68", req.ciaddr)
                } else {
                    "0.0.0.0:68".to_owned()
                };
                server.handle_datagram(now, meta(&from), &req.to_bytes());
                while let Some(c) = server.poll_commit() {
                    server.committed(c.seq, rng.random_range(0..10) != 0);
                }
                let out = drain(&mut server, now);
                for (_, reply) in &out.transmits {
                    match reply.options.message_type {
                        Some(MessageType::Ack) if !reply.yiaddr.is_unspecified() => {
                            let ip = reply.yiaddr;
                            assert!(
                                (100..=115).contains(&ip.octets()[3]),
                                "seed {seed} step {step}: {ip}"
                            );
                            held.insert(n, (ip, now + Duration::from_secs(60)));
                        }
                        Some(MessageType::Nak) => {
                            held.remove(&n);
                        }
                        _ => {}
                    }
                }
                held.retain(|_, (_, until)| *until > now);
                let mut seen = HashMap::new();
                for (client, (ip, _)) in &held {
                    if let Some(other) = seen.insert(*ip, *client) {
                        panic!("seed {seed} step {step}: {ip} held by {other} and {client}");
                    }
                }
                let (slots, clients) = server.table().sizes();
                assert!(
                    slots <= 16 && clients <= 16,
                    "seed {seed}: {slots} {clients}"
                );
            }
        }
    }

    #[test]
    fn a_reloaded_policy_answers_the_next_request() {
        let mut server = DhcpServer::new(config());
        let now = Instant::now();
        let policy = BootPolicy {
            efi64: "reloaded.efi".into(),
            ..Default::default()
        };
        server.set_boot(policy, 8080, None);
        server.handle_datagram(now, meta("0.0.0.0:68"), &fixtures::EDK2_DISCOVER.bytes());
        let out = drain(&mut server, now);
        assert_eq!(one(&out).1.boot_file, b"reloaded.efi");
    }
}
