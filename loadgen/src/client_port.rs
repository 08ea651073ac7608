//! The DHCP client port (68), shared by one event loop's virtual clients.
//!
//! By broadcast every offer reaches every socket bound to the client port. With a socket per
//! virtual client, 1,000 clients meant each offer was received 1,000 times, and the storm
//! measured the load generator's receive path instead of the server. Here one socket per event
//! loop receives each datagram once and hands it to the client whose hardware address it names
//! (BOOTP `chaddr`); datagrams for clients of other loops, or for clients not in a DHCP phase,
//! are dropped. The inboxes are queues, so a client that stops waiting (its timer fired) loses
//! nothing that already arrived.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use zpxe_engine::dhcp::MacAddr;
use zpxe_platform::runtime::spawn;
use zpxe_platform::udp::{UdpEndpoint, UdpOptions};

/// Where `chaddr` sits in a BOOTP message (RFC 951: op, htype, hlen, hops, xid, secs, flags,
/// ciaddr, yiaddr, siaddr, giaddr, then chaddr).
const CHADDR: std::ops::Range<usize> = 28..34;

/// How many unread datagrams one client keeps (later ones are dropped, as a full socket would).
const INBOX_CAP: usize = 64;

/// One loop's client-port socket and the clients listening on it.
#[derive(Debug)]
pub struct ClientPort {
    socket: Rc<UdpEndpoint>,
    inboxes: Rc<RefCell<HashMap<[u8; 6], Rc<Inbox>>>>,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: RefCell<VecDeque<(Vec<u8>, SocketAddr)>>,
    waker: RefCell<Option<Waker>>,
}

impl ClientPort {
    /// Binds the client port on every address (broadcasts allowed, shared with the other
    /// loops' sockets) and starts the task that sorts what arrives.
    pub fn bind(port: u16) -> Result<Rc<Self>, String> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let options = UdpOptions {
            broadcast: true,
            reuse_port: true,
            recv_buffer: Some(4 << 20),
            ..UdpOptions::default()
        };
        let socket =
            Rc::new(UdpEndpoint::bind(addr, &options).map_err(|e| format!("bind {addr}: {e}"))?);
        let inboxes: Rc<RefCell<HashMap<[u8; 6], Rc<Inbox>>>> = Rc::default();
        let (s, boxes) = (Rc::clone(&socket), Rc::clone(&inboxes));
        spawn(async move {
            let mut buf = Vec::with_capacity(2048);
            loop {
                let (res, b) = s.recv(buf).await;
                buf = b;
                let Ok(r) = res else { continue };
                let data = &buf[..r.len];
                let Some(mac) = data.get(CHADDR).and_then(|m| <[u8; 6]>::try_from(m).ok()) else {
                    continue;
                };
                let inbox = boxes.borrow().get(&mac).cloned();
                if let Some(inbox) = inbox {
                    let mut q = inbox.queue.borrow_mut();
                    if q.len() < INBOX_CAP {
                        q.push_back((data.to_vec(), r.meta.remote));
                    }
                    drop(q);
                    if let Some(w) = inbox.waker.borrow_mut().take() {
                        w.wake();
                    }
                }
            }
        })
        .detach();
        Ok(Rc::new(Self { socket, inboxes }))
    }

    /// The socket, for sending (broadcast DISCOVERs leave from the client port).
    pub fn socket(&self) -> &UdpEndpoint {
        &self.socket
    }

    /// Starts listening for `mac` until the returned listener drops.
    pub fn listen(&self, mac: MacAddr) -> Listener {
        let inbox = Rc::new(Inbox::default());
        self.inboxes.borrow_mut().insert(mac.0, Rc::clone(&inbox));
        Listener {
            mac: mac.0,
            inbox,
            inboxes: Rc::clone(&self.inboxes),
        }
    }
}

/// One client's share of the client port.
#[derive(Debug)]
pub struct Listener {
    mac: [u8; 6],
    inbox: Rc<Inbox>,
    inboxes: Rc<RefCell<HashMap<[u8; 6], Rc<Inbox>>>>,
}

impl Listener {
    /// The next datagram for this client and who sent it.
    pub fn recv(&self) -> impl Future<Output = (Vec<u8>, SocketAddr)> + '_ {
        Next { inbox: &self.inbox }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut boxes = self.inboxes.borrow_mut();
        if boxes
            .get(&self.mac)
            .is_some_and(|b| Rc::ptr_eq(b, &self.inbox))
        {
            boxes.remove(&self.mac);
        }
    }
}

struct Next<'a> {
    inbox: &'a Inbox,
}

impl Future for Next<'_> {
    type Output = (Vec<u8>, SocketAddr);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(d) = self.inbox.queue.borrow_mut().pop_front() {
            return Poll::Ready(d);
        }
        *self.inbox.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zpxe_platform::runtime::EventLoop;

    fn bootp_for(mac: [u8; 6], tag: u8) -> Vec<u8> {
        let mut d = vec![0u8; 300];
        d[0] = 2;
        d[CHADDR].copy_from_slice(&mac);
        d[299] = tag;
        d
    }

    /// Each datagram goes to the listener its chaddr names, once; others are dropped; what
    /// arrives while nobody awaits waits in the inbox.
    #[test]
    fn datagrams_go_to_the_client_they_name() {
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async {
            let port = ClientPort::bind(0).expect("bind");
            let to = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port.socket().local_addr().port(),
            );
            let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let la = port.listen(MacAddr(a));
            let lb = port.listen(MacAddr(b));
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("sender");
            for (mac, tag) in [(a, 1), ([2, 0, 0, 0, 0, 9], 9), (b, 2), (a, 3)] {
                sender.send_to(&bootp_for(mac, tag), to).expect("send");
            }
            let (d, from) = la.recv().await;
            assert_eq!(
                (d[299], from.port()),
                (1, sender.local_addr().expect("addr").port())
            );
            assert_eq!(lb.recv().await.0[299], 2);
            assert_eq!(la.recv().await.0[299], 3);
            drop(lb);
            sender.send_to(&bootp_for(b, 4), to).expect("send");
            sender.send_to(&bootp_for(a, 5), to).expect("send");
            // b's datagram went nowhere; a's next is 5.
            assert_eq!(la.recv().await.0[299], 5);
            assert!(port.inboxes.borrow().get(&b).is_none());
        });
    }
}
