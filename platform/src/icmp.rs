//! ICMP echo for the DHCP server's conflict check: is anyone at this address already?
//!
//! Linux lets an unprivileged program ping through a datagram socket (`IPPROTO_ICMP`) when
//! `net.ipv4.ping_group_range` includes its group; the kernel then picks the identifier and
//! hands back only replies to it. Otherwise (and on Windows) a raw socket, which needs
//! `CAP_NET_RAW` (administrators on Windows), sees every ICMP message with its IP header:
//! replies are matched on an identifier of ours and on the sequence number the caller chose.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use compio::BufResult;
use compio::net::UdpSocket;
use socket2::{Domain, Protocol, Socket, Type};
use zpxe_engine::icmp::{echo_request, parse_reply};

/// An ICMP socket for echo requests and their replies.
#[derive(Debug)]
pub struct Pinger {
    socket: UdpSocket,
    /// A raw socket: replies come with their IP header, and every ICMP message comes, so the
    /// identifier must be checked.
    raw: bool,
    id: u16,
}

impl Pinger {
    /// Opens a datagram ICMP socket where the system allows one, else a raw one. `id` names
    /// this process's echoes on a raw socket (pick it at random).
    pub fn open(id: u16) -> io::Result<Self> {
        let (socket, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
            Ok(s) if cfg!(target_os = "linux") => (s, false),
            _ => match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
                Ok(s) => (s, true),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "no ICMP socket for the conflict check ({e}): on Linux allow zpxe's \
                             group in net.ipv4.ping_group_range or give it CAP_NET_RAW; on \
                             Windows run it as an administrator; or turn \
                             dhcp.conflict-check-ms off"
                        ),
                    ));
                }
            },
        };
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        Ok(Self { socket, raw, id })
    }

    /// Sends an echo request with sequence number `seq` to `to`.
    pub async fn echo(&self, to: Ipv4Addr, seq: u16) -> io::Result<()> {
        let packet = echo_request(self.id, seq);
        let BufResult(res, _) = self.socket.send_to(packet, SocketAddr::from((to, 0))).await;
        res.map(|_| ())
    }

    /// Receives the next ICMP message into `buf`: `Some((from, seq))` for an echo reply to
    /// this pinger, `None` for anything else.
    pub async fn recv(&self, buf: Vec<u8>) -> (io::Result<Option<(Ipv4Addr, u16)>>, Vec<u8>) {
        let BufResult(res, buf) = self.socket.recv_from(buf).await;
        let reply = res.map(|(n, from)| {
            let std::net::IpAddr::V4(from) = from.ip() else {
                return None;
            };
            let seq = parse_reply(buf.get(..n)?, self.raw.then_some(self.id))?;
            Some((from, seq))
        });
        (reply, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real echo to this host's loopback (the test runs as root, or where ping sockets are
    /// allowed): the reply comes back with its sequence number.
    #[test]
    fn loopback_answers_an_echo() {
        let ev = crate::runtime::EventLoop::new().expect("loop");
        ev.block_on(async {
            let pinger = Pinger::open(0x5a5a).expect("ICMP socket");
            pinger
                .echo(Ipv4Addr::LOCALHOST, 4242)
                .await
                .expect("echo sent");
            let mut buf = Vec::with_capacity(1500);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let wait = deadline.saturating_duration_since(std::time::Instant::now());
                let (res, b) = crate::runtime::timeout(wait, pinger.recv(buf))
                    .await
                    .expect("an echo reply within 5 s");
                buf = b;
                if let Some((from, seq)) = res.expect("recv") {
                    assert_eq!((from, seq), (Ipv4Addr::LOCALHOST, 4242));
                    break;
                }
            }
        });
    }
}
