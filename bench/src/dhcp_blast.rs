//! ProxyDHCP replies per second: relayed EDK2 DISCOVERs (built by the engine's firmware client)
//! from a few relay addresses on loopback, a fixed number outstanding per relay, for a fixed
//! time. The same client for zpxe and dnsmasq: the loadgen's full DHCP client cannot follow
//! dnsmasq's PXE menu, but every proxy answers a DISCOVER with an offer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use socket2::{Domain, Protocol, Socket, Type};
use zpxe_engine::Payload;
use zpxe_engine::dhcp::{DhcpClient, DhcpClientConfig, MacAddr};

const RELAYS: u8 = 4;
const OUTSTANDING: usize = 16;
/// Distinct DISCOVERs per relay: at 10,000/s one is reused every 0.4 s.
const POOL: usize = 4096;

#[derive(Debug, Clone)]
pub struct BlastResult {
    pub replies: u64,
    pub lost: u64,
    pub elapsed: Duration,
    /// Reply latencies in microseconds, sorted.
    pub latency_us: Vec<u32>,
    /// DORA only: REQUEST to ACK in microseconds, sorted (the leg that waits for the lease
    /// write in server mode); empty elsewhere.
    pub ack_us: Vec<u32>,
    /// DORA only: DISCOVER to OFFER in microseconds, sorted; empty elsewhere.
    pub offer_us: Vec<u32>,
}

impl BlastResult {
    pub fn per_second(&self) -> f64 {
        self.replies as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency_us, q)
    }
}

/// Quantile `q` of sorted microseconds, in milliseconds (NaN when empty).
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn relay_socket(ip: Ipv4Addr, port: u16) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Shares the port with a proxy bound to the wildcard address (dnsmasq does that).
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, port)).into())?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(s.into())
}

/// DISCOVERs with distinct MACs and xids, as relay `relay` would forward them.
fn pool(relay: Ipv4Addr, server: SocketAddr, salt: u8) -> Vec<(u32, Vec<u8>)> {
    let now = Instant::now();
    (0..POOL)
        .filter_map(|i| {
            let mut client = DhcpClient::new(
                now,
                DhcpClientConfig {
                    mac: MacAddr([0x52, 0x54, salt, 0, (i >> 8) as u8, i as u8]),
                    relay: Some(relay),
                    server,
                    rng_seed: (u64::from(salt) << 32) | i as u64,
                    ..DhcpClientConfig::default()
                },
            );
            let mut buf = [0u8; 1500];
            let t = client.poll_transmit(now, &mut buf)?;
            let Payload::Bytes { len } = t.payload else {
                return None;
            };
            Some((client.xid(), buf[..len].to_vec()))
        })
        .collect()
}

/// Blasts `server` (its DHCP port) for `duration`.
pub fn run(server: SocketAddr, duration: Duration) -> anyhow::Result<BlastResult> {
    let started = Instant::now();
    let handles: Vec<_> = (0..RELAYS)
        .map(|k| {
            let relay = Ipv4Addr::new(127, 2, 0, k + 1);
            let socket = relay_socket(relay, server.port());
            thread::spawn(move || -> anyhow::Result<(u64, u64, Vec<u32>)> {
                let socket = socket?;
                let requests = pool(relay, server, k);
                let mut sent_at: Vec<Option<Instant>> = vec![None; requests.len()];
                let mut next = 0usize;
                let (mut replies, mut lost) = (0u64, 0u64);
                let mut latency = Vec::new();
                let mut send = |slot: &mut Vec<Option<Instant>>, next: &mut usize| {
                    let i = *next % requests.len();
                    *next += 1;
                    if slot[i].is_some() {
                        lost += 1;
                    }
                    slot[i] = Some(Instant::now());
                    socket.send_to(&requests[i].1, server).map(drop)
                };
                for _ in 0..OUTSTANDING {
                    send(&mut sent_at, &mut next)?;
                }
                let mut buf = [0u8; 1500];
                while started.elapsed() < duration {
                    match eintr(|| socket.recv(&mut buf)) {
                        Ok(n) if n >= 8 => {
                            let xid = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                            if let Some(i) = requests.iter().position(|r| r.0 == xid)
                                && let Some(t) = sent_at[i].take()
                            {
                                replies += 1;
                                latency.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                send(&mut sent_at, &mut next)?;
                            }
                        }
                        Ok(_) => {}
                        // Silence: the window was lost; refill it.
                        Err(_) => {
                            for _ in 0..OUTSTANDING {
                                send(&mut sent_at, &mut next)?;
                            }
                        }
                    }
                }
                Ok((replies, lost, latency))
            })
        })
        .collect();
    let mut result = BlastResult {
        replies: 0,
        lost: 0,
        elapsed: Duration::ZERO,
        latency_us: Vec::new(),
        ack_us: Vec::new(),
        offer_us: Vec::new(),
    };
    for h in handles {
        let (r, l, lat) = h
            .join()
            .map_err(|_| anyhow::anyhow!("blaster thread panicked"))??;
        result.replies += r;
        result.lost += l;
        result.latency_us.extend(lat);
    }
    result.elapsed = started.elapsed();
    result.latency_us.sort_unstable();
    Ok(result)
}

/// Sends relayed DISCOVERs at a fixed `rate` (requests per second) for `duration`, whatever the
/// server answers, and times every reply: the latency a server shows at a given load, not at
/// its saturation point. One relay socket, one sending thread (a precise sleep between sends,
/// on an absolute schedule so a late wake-up never lowers the rate) and one receiving thread
/// blocked in `recv`, so a reply is timed when it lands. A request without a reply by the end
/// counts as lost.
pub fn run_paced(server: SocketAddr, rate: u32, duration: Duration) -> anyhow::Result<BlastResult> {
    let relay = Ipv4Addr::new(127, 2, 0, 100);
    let socket = relay_socket(relay, server.port())?;
    let receiver = socket.try_clone()?;
    let requests = Arc::new(pool(relay, server, 100));
    // Nanoseconds after `started` at which request i was last sent; 0 = answered or never sent.
    let sent: Arc<Vec<AtomicU64>> =
        Arc::new((0..requests.len()).map(|_| AtomicU64::new(0)).collect());
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let (to_send, sent_by_sender) = (Arc::clone(&requests), Arc::clone(&sent));
    let sender = thread::spawn(move || -> anyhow::Result<u64> {
        let (mut n, mut overwritten) = (0u64, 0u64);
        while started.elapsed() < duration {
            let due = period.mul_f64(n as f64);
            let now = started.elapsed();
            if due > now {
                thread::sleep(due - now);
                continue;
            }
            let i = (n as usize) % to_send.len();
            let at = (started.elapsed().as_nanos() as u64).max(1);
            if sent_by_sender[i].swap(at, Ordering::AcqRel) != 0 {
                overwritten += 1;
            }
            socket.send_to(&to_send[i].1, server)?;
            n += 1;
        }
        Ok(overwritten)
    });
    let index: HashMap<u32, usize> = requests.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
    let mut buf = [0u8; 1500];
    let (mut replies, mut latency) = (0u64, Vec::new());
    // Replies still in flight when sending stops get a grace period.
    let end = duration + Duration::from_millis(200);
    while started.elapsed() < end {
        match eintr(|| receiver.recv(&mut buf)) {
            Ok(len) if len >= 8 => {
                let now = started.elapsed().as_nanos() as u64;
                let xid = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if let Some(&i) = index.get(&xid) {
                    let at = sent[i].swap(0, Ordering::AcqRel);
                    if at != 0 {
                        replies += 1;
                        latency
                            .push((now.saturating_sub(at) / 1000).min(u64::from(u32::MAX)) as u32);
                    }
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let overwritten = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    let unanswered = sent
        .iter()
        .filter(|a| a.load(Ordering::Acquire) != 0)
        .count() as u64;
    latency.sort_unstable();
    Ok(BlastResult {
        replies,
        lost: overwritten + unanswered,
        elapsed: duration,
        latency_us: latency,
        ack_us: Vec::new(),
        offer_us: Vec::new(),
    })
}

/// How [`run_dora`] paces its exchanges.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Closed loop: this many exchanges in flight, a new one started at each ACK (and the
    /// window refilled after 200 ms of silence): the most the server completes.
    Window(usize),
    /// A new exchange started at this rate (per second), whatever the server answers: the
    /// latency a server shows at a given load.
    Rate(u32),
}

/// Client `i`'s MAC and transaction id: distinct for every exchange of a run (`salt` keeps
/// runs against one server apart), so each exchange leases a new address.
fn dora_ids(salt: u8, i: u32) -> (MacAddr, u32) {
    let b = i.to_be_bytes();
    (
        MacAddr([0x02, salt, b[0], b[1], b[2], b[3]]),
        (u32::from(salt) << 24) | (i & 0x00ff_ffff),
    )
}

/// A relayed BOOTREQUEST of type `kind` from client `i` (RFC 2131 section 4.1: a relay sets
/// `giaddr` and `hops`).
fn dora_message(
    kind: zpxe_engine::dhcp::MessageType,
    relay: Ipv4Addr,
    salt: u8,
    i: u32,
    offer: Option<(Ipv4Addr, Option<Ipv4Addr>)>,
) -> Vec<u8> {
    use zpxe_engine::dhcp::DhcpOptions;
    let (mac, xid) = dora_ids(salt, i);
    let options = DhcpOptions {
        message_type: Some(kind),
        requested_ip: offer.map(|o| o.0),
        server_id: offer.and_then(|o| o.1),
        ..Default::default()
    };
    zpxe_testkit::dhcp::boot_request(xid, mac, relay, options).to_bytes()
}

/// Full DHCP exchanges (DISCOVER, OFFER, REQUEST, ACK) against a server's DHCP port, as a relay
/// at `relay` forwards them: the relay socket is bound to `relay`:`server.port()`, where
/// replies to `giaddr` go. Every exchange is a new client (at most `max` of them, so a run is
/// bounded in count as well as in `duration`); the latency is DISCOVER sent to ACK received.
/// A DISCOVER without an ACK by the end (plus 200 ms of grace) counts as lost, as does a NAK.
pub fn run_dora(
    server: SocketAddr,
    relay: Ipv4Addr,
    pace: Pace,
    duration: Duration,
    max: u32,
    salt: u8,
) -> anyhow::Result<BlastResult> {
    use zpxe_engine::dhcp::{DhcpRepr, MessageType};
    let max = max.min(0x00ff_ffff);
    let socket = relay_socket(relay, server.port())?;
    let sender_socket = socket.try_clone()?;
    // Nanoseconds after `started` at which client i's DISCOVER left; 0 = never, or done.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..max).map(|_| AtomicU64::new(0)).collect());
    // Nanoseconds after `started` at which client i's REQUEST left (receiving thread only).
    let mut requested: Vec<u64> = vec![0; max as usize];
    let mut ack_us: Vec<u32> = Vec::new();
    let mut offer_us: Vec<u32> = Vec::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let discover = move |i: u32, socket: &UdpSocket, sent: &[AtomicU64]| -> std::io::Result<()> {
        let at = (started.elapsed().as_nanos() as u64).max(1);
        sent[i as usize].store(at, Ordering::Release);
        socket
            .send_to(
                &dora_message(MessageType::Discover, relay, salt, i, None),
                server,
            )
            .map(drop)
    };
    // Takes the next client index, if any is left.
    let take = move |next: &AtomicU64| -> Option<u32> {
        let i = next.fetch_add(1, Ordering::AcqRel);
        (i < u64::from(max)).then_some(i as u32)
    };
    let sender = match pace {
        Pace::Rate(rate) => {
            let (sent, next) = (Arc::clone(&sent), Arc::clone(&next));
            let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            Some(thread::spawn(move || -> anyhow::Result<()> {
                let mut n = 0u64;
                while started.elapsed() < duration {
                    let due = period.mul_f64(n as f64);
                    let now = started.elapsed();
                    if due > now {
                        thread::sleep(due - now);
                        continue;
                    }
                    let Some(i) = take(&next) else { break };
                    discover(i, &sender_socket, &sent)?;
                    n += 1;
                }
                Ok(())
            }))
        }
        Pace::Window(w) => {
            for _ in 0..w {
                if let Some(i) = take(&next) {
                    discover(i, &socket, &sent)?;
                }
            }
            None
        }
    };
    let mut buf = [0u8; 1500];
    let (mut replies, mut naks, mut latency) = (0u64, 0u64, Vec::new());
    let end = duration + Duration::from_millis(200);
    let mut quiet_since = Instant::now();
    while started.elapsed() < end {
        let n = match eintr(|| socket.recv(&mut buf)) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Pace::Window(w) = pace
                    && started.elapsed() < duration
                    && quiet_since.elapsed() >= Duration::from_millis(200)
                {
                    for _ in 0..w {
                        if let Some(i) = take(&next) {
                            discover(i, &socket, &sent)?;
                        }
                    }
                    quiet_since = Instant::now();
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(reply) = DhcpRepr::parse_bytes(&buf[..n]) else {
            continue;
        };
        let i = reply.xid & 0x00ff_ffff;
        if reply.xid >> 24 != u32::from(salt) || i >= max || dora_ids(salt, i).0 != reply.client_mac
        {
            continue;
        }
        quiet_since = Instant::now();
        match reply.options.message_type {
            Some(MessageType::Offer) if sent[i as usize].load(Ordering::Acquire) != 0 => {
                let at = sent[i as usize].load(Ordering::Acquire);
                let now = started.elapsed().as_nanos() as u64;
                offer_us.push((now.saturating_sub(at) / 1000).min(u64::from(u32::MAX)) as u32);
                let request = dora_message(
                    MessageType::Request,
                    relay,
                    salt,
                    i,
                    Some((reply.yiaddr, reply.options.server_id)),
                );
                requested[i as usize] = (started.elapsed().as_nanos() as u64).max(1);
                socket.send_to(&request, server)?;
            }
            Some(MessageType::Ack) => {
                let at = sent[i as usize].swap(0, Ordering::AcqRel);
                if at != 0 {
                    let now = started.elapsed().as_nanos() as u64;
                    replies += 1;
                    latency.push((now.saturating_sub(at) / 1000).min(u64::from(u32::MAX)) as u32);
                    let req = std::mem::take(&mut requested[i as usize]);
                    if req != 0 {
                        ack_us
                            .push((now.saturating_sub(req) / 1000).min(u64::from(u32::MAX)) as u32);
                    }
                    if let Pace::Window(_) = pace
                        && started.elapsed() < duration
                        && let Some(i) = take(&next)
                    {
                        discover(i, &socket, &sent)?;
                    }
                }
            }
            Some(MessageType::Nak) if sent[i as usize].swap(0, Ordering::AcqRel) != 0 => {
                naks += 1;
            }
            _ => {}
        }
    }
    if let Some(s) = sender {
        s.join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    }
    let unanswered = sent
        .iter()
        .filter(|a| a.load(Ordering::Acquire) != 0)
        .count() as u64;
    latency.sort_unstable();
    ack_us.sort_unstable();
    offer_us.sort_unstable();
    Ok(BlastResult {
        replies,
        lost: unanswered + naks,
        elapsed: duration,
        latency_us: latency,
        ack_us,
        offer_us,
    })
}
