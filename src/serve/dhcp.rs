//! The proxyDHCP service: the engine's `ProxyDhcp` on UDP 67 and 4011, or on 4011 alone
//! (`dhcp.mode = "pxe-only"`, when the DHCP server on this host owns 67 and sends option 60
//! "PXEClient" so PXE clients come to 4011).
//!
//! One socket per port on one event loop: with `SO_REUSEPORT` every socket would see each
//! broadcast. Sockets learn the arrival address and interface of each request (`IP_PKTINFO`) and
//! replies leave from that address and interface, so a multi-homed server names the right
//! next-server on each segment.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use zpxe_engine::dhcp::{DhcpEvent, DhcpPort, ProxyDhcp};
use zpxe_platform::udp::{NoImages, Received, UdpEndpoint, UdpOptions};

use super::ThreadCtx;
use super::receivers::{Answer, Receivers};
use crate::metrics::Metrics;

const BUF: usize = 4096;

pub(crate) struct DhcpService {
    engine: RefCell<ProxyDhcp>,
    /// The reload generation whose policy `engine` answers with.
    generation: std::cell::Cell<u64>,
    ctx: Rc<ThreadCtx>,
    /// `None` in pxe-only mode.
    dhcp: Option<Rc<UdpEndpoint>>,
    pxe: Rc<UdpEndpoint>,
}

impl DhcpService {
    /// Binds 4011, and 67 unless `dhcp_addr` is `None` (pxe-only); one socket per device when
    /// devices are configured.
    pub(crate) fn bind(
        ctx: &Rc<ThreadCtx>,
        dhcp_addr: Option<SocketAddr>,
        pxe_addr: SocketAddr,
        device: Option<String>,
    ) -> Result<Rc<Self>, (SocketAddr, io::Error)> {
        let options = UdpOptions {
            pktinfo: true,
            broadcast: true,
            device,
            recv_buffer: Some(4 << 20),
            send_buffer: Some(1 << 20),
            ..UdpOptions::default()
        };
        let dhcp = match dhcp_addr {
            Some(addr) => Some(UdpEndpoint::bind(addr, &options).map_err(|e| (addr, e))?),
            None => None,
        };
        let pxe = UdpEndpoint::bind(pxe_addr, &options).map_err(|e| (pxe_addr, e))?;
        if dhcp.is_none() && ctx.shared.config.dhcp.mode == crate::config::DhcpMode::PxeOnly {
            tracing::info!(
                pxe = %pxe.local_addr(),
                "pxe-only: answering PXE clients on the PXE port only; the DHCP server on this \
                 host keeps the DHCP port and must send option 60 \"PXEClient\""
            );
        }
        let config = super::proxy_config(&ctx.shared.config);
        let mut engine = ProxyDhcp::new(config);
        let (registry, hook) = (ctx.shared.registry.clone(), ctx.shared.hook.clone());
        if let Some(o) = super::registry::BootOverrides::of(registry, hook) {
            engine.set_overrides(o);
        }
        Ok(Rc::new(Self {
            engine: RefCell::new(engine),
            generation: std::cell::Cell::new(ctx.shared.reloader.generation()),
            ctx: Rc::clone(ctx),
            dhcp: dhcp.map(Rc::new),
            pxe: Rc::new(pxe),
        }))
    }

    /// The DHCP socket's address (none in pxe-only mode) and the PXE socket's.
    pub(crate) fn local_addrs(&self) -> (Option<SocketAddr>, SocketAddr) {
        (
            self.dhcp.as_ref().map(|s| s.local_addr()),
            self.pxe.local_addr(),
        )
    }

    pub(crate) fn start(self: &Rc<Self>) {
        let dhcp = self.dhcp.as_ref().map(|s| (Rc::clone(s), DhcpPort::Dhcp));
        let pxe = (Rc::clone(&self.pxe), DhcpPort::Pxe);
        for (socket, port) in dhcp.into_iter().chain([pxe]) {
            let service = Rc::clone(self);
            Receivers::start(Rc::new(ProxyPort { service, port }), socket);
        }
        // No driver task: `ProxyDhcp` has no timers and queues replies and events only in
        // `handle_datagram`, which the receive task flushes at once. The loop's end takes the
        // receive tasks with it.
    }

    /// Takes the policy of a reload for this and later requests: one atomic load per
    /// datagram, the new settings loaded once per reload.
    fn follow_reload(&self) {
        let reloader = &self.ctx.shared.reloader;
        if reloader.generation() != self.generation.get() {
            let settings = reloader.settings();
            self.engine.borrow_mut().set_config(settings.proxy.clone());
            self.generation.set(settings.generation);
        }
    }

    /// Sends every reply the engine has ready, then logs and records `events`, the events of
    /// the datagram just handled, which `from` sent.
    async fn flush(&self, buf: &mut [u8], events: &mut Vec<DhcpEvent>, from: IpAddr) {
        loop {
            let polled = self.engine.borrow_mut().poll_transmit(Instant::now(), buf);
            let Some((port, t)) = polled else { break };
            let socket = match (port, &self.dhcp) {
                (DhcpPort::Dhcp, Some(dhcp)) => dhcp,
                // Replies leave from the port their request came in on, so without a DHCP
                // socket the engine has none for it.
                (DhcpPort::Dhcp, None) => {
                    tracing::error!(to = %t.destination, "a DHCP-port reply in pxe-only mode");
                    continue;
                }
                _ => &self.pxe,
            };
            match socket.send_transmit(&t, buf, &NoImages).await {
                Ok(_) => Metrics::add(&self.ctx.shared.metrics.dhcp_replies_total, 1),
                Err(e) => tracing::warn!(to = %t.destination, error = %e, "DHCP reply failed"),
            }
        }
        for ev in events.drain(..) {
            log_event(&ev, &self.ctx.shared.metrics);
            let recorder = &self.ctx.shared.recorder;
            if recorder.enabled() {
                // A relayed request comes from the relay agent, not the client: its address
                // would tie another machine's TFTP and HTTP legs to this MAC.
                let relayed = matches!(
                    ev,
                    DhcpEvent::Offered { relay: Some(_), .. }
                        | DhcpEvent::Acked { relay: Some(_), .. }
                );
                if let Some(e) = crate::db::dhcp_event(&ev, Some(from).filter(|_| !relayed)) {
                    recorder.record(e);
                }
            }
        }
    }
}

/// One port's receive tasks answer with the proxy's engine: a reply leaves without a hop
/// through another task, and what the datagram produced is logged right after.
struct ProxyPort {
    service: Rc<DhcpService>,
    port: DhcpPort,
}

/// A receive task's reply buffer, and the events of the datagram it handled with their
/// sender: taken before any other task's datagram can add to the engine's queue, so they are
/// recorded under this sender's address.
struct ProxyScratch {
    out: Vec<u8>,
    events: Vec<DhcpEvent>,
    from: Option<IpAddr>,
}

impl Default for ProxyScratch {
    fn default() -> Self {
        Self {
            out: vec![0; BUF],
            events: Vec::new(),
            from: None,
        }
    }
}

impl Answer for ProxyPort {
    type Scratch = ProxyScratch;

    fn handle(
        &self,
        received: io::Result<Received>,
        datagram: &[u8],
        now: Instant,
        scratch: &mut ProxyScratch,
    ) -> bool {
        let service = &self.service;
        let Some(r) = to_handle(received, &service.ctx) else {
            return false;
        };
        Metrics::add(&service.ctx.shared.metrics.dhcp_requests_total, 1);
        service.follow_reload();
        let mut engine = service.engine.borrow_mut();
        engine.handle_datagram(now, self.port, r.meta, datagram);
        scratch
            .events
            .extend(std::iter::from_fn(|| engine.poll_event()));
        scratch.from = Some(r.meta.remote.ip());
        true
    }

    async fn flush(&self, scratch: &mut ProxyScratch) {
        if let Some(from) = scratch.from.take() {
            let ProxyScratch { out, events, .. } = scratch;
            self.service.flush(out, events, from).await;
        }
    }
}

/// What a DHCP receive loop (this proxy's, or the server's in src/serve/dhcp_server.rs) makes
/// of a receive: the datagram to handle, or none. Draining, it handles nothing (quiet, so
/// clients turn to the server that takes over); an ICMP refusal of an earlier reply surfaces
/// here and is no error; any other error is logged.
pub(crate) fn to_handle(res: io::Result<Received>, ctx: &ThreadCtx) -> Option<Received> {
    match res {
        Ok(_) if ctx.drain.fired() => None,
        Ok(r) => Some(r),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => None,
        Err(e) => {
            tracing::warn!(error = %e, "DHCP receive failed");
            None
        }
    }
}

fn log_event(ev: &DhcpEvent, metrics: &Metrics) {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    match ev {
        DhcpEvent::Offered {
            mac,
            uuid,
            arch,
            boot_file,
            relay,
            ipxe,
        } => tracing::info!(
            %mac,
            uuid = show(&uuid.map(|u| u.to_string())),
            arch = show(&arch.map(|a| a.to_string())),
            relay = show(&relay.map(|r| r.to_string())),
            ipxe,
            boot_file,
            "proxyDHCP offer"
        ),
        DhcpEvent::Acked {
            mac,
            uuid,
            arch,
            boot_file,
            relay,
            ipxe,
            port,
        } => tracing::info!(
            %mac,
            uuid = show(&uuid.map(|u| u.to_string())),
            arch = show(&arch.map(|a| a.to_string())),
            relay = show(&relay.map(|r| r.to_string())),
            ipxe,
            port = port.number(),
            boot_file,
            "PXE ack"
        ),
        DhcpEvent::Ignored { reason, mac } => {
            Metrics::add(&metrics.dhcp_ignored_total, 1);
            // A refusal by policy answers "why won't it PXE?": info, rate-limited per client
            // (src/logging.rs). Everything else (other DHCP clients, REQUESTs for other
            // servers) is routine on a segment.
            let mac_text = show(&mac.map(|m| m.to_string()));
            let reason_text = crate::explain::reason_text(reason);
            let refusal = matches!(
                reason,
                zpxe_engine::dhcp::IgnoreReason::Policy(_)
                    | zpxe_engine::dhcp::IgnoreReason::NoServerAddress
                    | zpxe_engine::dhcp::IgnoreReason::Overridden
            );
            match refusal
                .then(|| crate::logging::allow_refusal("dhcp", mac))
                .flatten()
            {
                Some(held_back) => tracing::info!(
                    mac = mac_text,
                    reason = reason_text,
                    held_back,
                    "DHCP request refused"
                ),
                None => {
                    tracing::debug!(mac = mac_text, reason = reason_text, "DHCP request ignored")
                }
            }
        }
        other => tracing::debug!(event = ?other, "DHCP"),
    }
}
