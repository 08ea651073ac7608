//! Event loops that share no port (`server.loop-handoff`, always on Windows): loop 0 holds
//! the listening sockets and hands each accepted connection and each TFTP request to a loop,
//! itself included, through that loop's [`Inbox`]. A TFTP transfer has a socket of its own, so
//! the loop that starts it serves it to the end; an ERROR its engine sends from the listener
//! goes back to loop 0, which holds that socket.
//!
//! Connections go round the loops in turn. TFTP requests go by the client's address (a keyed
//! hash), so one client's retransmitted request meets the transfer it already started, and
//! the per-client limits of one engine see all of that client's transfers.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

use zpxe_engine::{DatagramMeta, Transmit};
use zpxe_platform::tcp::PendingConn;

use super::ThreadCtx;
use super::http::ConnSlot;

/// Work an inbox holds at most. Connections are bounded by `http.max-connections` before they
/// get here; TFTP requests are not, so a flood of them is dropped here (and counted) rather
/// than queued without end.
const INBOX_CAPACITY: usize = 4096;

/// Work for one event loop, from another.
pub(crate) enum Work {
    /// A connection accepted on connection service `service` (its index on every loop).
    Conn {
        service: usize,
        conn: PendingConn,
        peer: SocketAddr,
        slot: ConnSlot,
    },
    /// A TFTP request that arrived on TFTP listener `service`.
    TftpRequest {
        service: usize,
        meta: DatagramMeta,
        datagram: Vec<u8>,
    },
    /// A datagram another loop's engine sends from TFTP listener `service` (an ERROR), for
    /// loop 0 to send: `transmit`'s bytes are `bytes`.
    TftpListenerSend {
        service: usize,
        transmit: Transmit,
        bytes: Vec<u8>,
    },
}

/// Why a loop did not take work: it goes back to the sender (boxed: the refusal is rare).
pub(crate) enum Refused {
    Full(Box<Work>),
    Closed(Box<Work>),
}

/// One loop's queue of work from the others. Any thread sends; the loop's inbox task takes
/// everything queued at each wake.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    queue: VecDeque<Work>,
    waker: Option<Waker>,
    closed: bool,
}

impl Inbox {
    fn state(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `work` and wakes the loop, unless the inbox is full or closed.
    pub(crate) fn send(&self, work: Work) -> Result<(), Refused> {
        let waker = {
            let mut s = self.state();
            if s.closed {
                return Err(Refused::Closed(Box::new(work)));
            }
            if s.queue.len() >= INBOX_CAPACITY {
                return Err(Refused::Full(Box::new(work)));
            }
            s.queue.push_back(work);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Takes no more work; what is queued can still be taken.
    pub(crate) fn close(&self) {
        self.state().closed = true;
    }

    /// Waits for work and moves all of it into `out`; `false` once the inbox is closed and
    /// empty.
    pub(crate) async fn take(&self, out: &mut Vec<Work>) -> bool {
        std::future::poll_fn(|cx| {
            let mut s = self.state();
            if !s.queue.is_empty() {
                out.extend(s.queue.drain(..));
                return Poll::Ready(true);
            }
            if s.closed {
                return Poll::Ready(false);
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Every boot loop's inbox, and how work is spread between them.
pub(crate) struct Loops {
    inboxes: Vec<Inbox>,
    next: AtomicUsize,
    /// Keyed per process: a client cannot choose its loop.
    hash: RandomState,
}

impl Loops {
    pub(crate) fn new(loops: usize) -> Self {
        Self {
            inboxes: (0..loops.max(1)).map(|_| Inbox::default()).collect(),
            next: AtomicUsize::new(0),
            hash: RandomState::new(),
        }
    }

    pub(crate) fn inbox(&self, index: usize) -> &Inbox {
        &self.inboxes[index % self.inboxes.len()]
    }

    /// The loop the next connection goes to: each in turn.
    pub(crate) fn for_connection(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len()
    }

    /// The loop that serves TFTP client `ip`: always the same one.
    pub(crate) fn for_client(&self, ip: IpAddr) -> usize {
        (self.hash.hash_one(ip) % self.inboxes.len() as u64) as usize
    }
}

/// A connection accepted by loop `ctx.index`: served there or handed to the loop whose turn it
/// is. A loop that is draining (its inbox closed) or full leaves it with this one.
pub(crate) fn hand_connection(
    ctx: &Rc<ThreadCtx>,
    loops: &Arc<Loops>,
    service: usize,
    conn: PendingConn,
    peer: SocketAddr,
    slot: ConnSlot,
) {
    let target = loops.for_connection();
    let work = Work::Conn {
        service,
        conn,
        peer,
        slot,
    };
    let work = if target == ctx.index {
        work
    } else {
        match loops.inbox(target).send(work) {
            Ok(()) => {
                crate::metrics::Metrics::add(&ctx.shared.metrics.loop_handoff_connections_total, 1);
                return;
            }
            Err(Refused::Full(w) | Refused::Closed(w)) => *w,
        }
    };
    ctx.do_work(work);
}

/// Runs loop `ctx.index`'s inbox: work from the other loops, until this loop drains. Then the
/// inbox closes (senders keep what they hold) and what was queued before is still done.
pub(crate) fn run_inbox(ctx: &Rc<ThreadCtx>, loops: Arc<Loops>) {
    let ctx = Rc::clone(ctx);
    zpxe_platform::runtime::spawn(async move {
        let busy = ctx.drain.busy();
        let inbox = loops.inbox(ctx.index);
        let mut batch = Vec::new();
        loop {
            let more = {
                let take = std::pin::pin!(inbox.take(&mut batch));
                match futures_util::future::select(take, ctx.drain.wait()).await {
                    futures_util::future::Either::Left((more, _)) => more,
                    // Once closed, `take` ends as soon as the queue is empty.
                    futures_util::future::Either::Right(((), _)) => {
                        inbox.close();
                        true
                    }
                }
            };
            for work in batch.drain(..) {
                ctx.do_work(work);
            }
            if !more {
                break;
            }
        }
        drop(busy);
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: u8) -> Work {
        Work::TftpRequest {
            service: n as usize,
            meta: DatagramMeta {
                remote: SocketAddr::from(([127, 0, 0, n], 1000)),
                local_ip: None,
                ifindex: None,
            },
            datagram: vec![0, 1, n],
        }
    }

    fn service(w: &Work) -> usize {
        match w {
            Work::TftpRequest { service, .. } => *service,
            _ => usize::MAX,
        }
    }

    #[test]
    fn an_inbox_is_bounded_and_a_closed_one_gives_work_back_after_its_queue() {
        let inbox = Inbox::default();
        for i in 0..INBOX_CAPACITY {
            assert!(inbox.send(request(i as u8)).is_ok());
        }
        assert!(matches!(inbox.send(request(7)), Err(Refused::Full(_))));
        let ev = zpxe_platform::runtime::EventLoop::new().expect("loop");
        let mut out = Vec::new();
        assert!(ev.block_on(inbox.take(&mut out)));
        assert_eq!(out.len(), INBOX_CAPACITY);
        assert_eq!(service(&out[3]), 3);
        assert!(inbox.send(request(1)).is_ok());
        inbox.close();
        assert!(matches!(inbox.send(request(2)), Err(Refused::Closed(_))));
        out.clear();
        // Queued before the close: still taken; then the end.
        assert!(ev.block_on(inbox.take(&mut out)));
        assert_eq!(out.iter().map(service).collect::<Vec<_>>(), [1]);
        assert!(!ev.block_on(inbox.take(&mut out)));
    }

    #[test]
    fn work_sent_from_another_thread_wakes_the_loop() {
        let inbox = Arc::new(Inbox::default());
        let sender = Arc::clone(&inbox);
        let ev = zpxe_platform::runtime::EventLoop::new().expect("loop");
        let got = ev.block_on(async move {
            let t = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                assert!(sender.send(request(9)).is_ok());
                sender.close();
            });
            let mut all = Vec::new();
            let mut out = Vec::new();
            while inbox.take(&mut out).await {
                all.append(&mut out);
            }
            t.join().expect("sender");
            all
        });
        assert_eq!(got.iter().map(service).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_client_always_goes_to_the_same_loop_and_connections_take_turns() {
        let loops = Loops::new(3);
        for n in 0..50u8 {
            let ip = IpAddr::from([10, 0, 0, n]);
            let first = loops.for_client(ip);
            assert!(first < 3);
            assert!((0..5).all(|_| loops.for_client(ip) == first));
        }
        let spread: std::collections::HashSet<usize> = (0..50u8)
            .map(|n| loops.for_client(IpAddr::from([10, 0, 1, n])))
            .collect();
        assert_eq!(spread.len(), 3, "50 clients over 3 loops");
        let turns: Vec<usize> = (0..6).map(|_| loops.for_connection()).collect();
        assert_eq!(turns, [0, 1, 2, 0, 1, 2]);
    }
}
