//! The receive tasks of a DHCP socket, the proxy's (src/serve/dhcp.rs) and the server's
//! (src/serve/dhcp_server.rs): how many receives a socket keeps posted follows how fast
//! requests come.
//!
//! One receive per socket takes one request per pass of the event loop: under a flood of
//! DISCOVERs each request costs a pass, and its reply waits for it. With [`RECEIVERS`] receives
//! posted, one pass takes up to that many queued requests, and one `io_uring_enter` sends all
//! their replies together with the next receives. But every receive posted on an idle socket is
//! woken by each datagram that arrives (io_uring's receives are not exclusive waiters), and all
//! but one find nothing and wait again. So on io_uring the extra receives run only while
//! requests come closer together than [`BUSY_GAP`] on average, and park again when they thin
//! out. Where a datagram completes one receive (IOCP, and compio's epoll driver) every receive
//! stays posted: idle, they cost only their buffers.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join;
use zpxe_platform::runtime::{Notify, datagram_wakes_every_receive, spawn};
use zpxe_platform::udp::{Received, UdpEndpoint};

/// Receives a socket keeps posted under load (one task each); one always.
pub(crate) const RECEIVERS: usize = 8;

/// The average gap between requests below which a socket is busy: 50,000 requests a second.
/// Paced at 10,000 a second (the `dhcp_blast paced` row), one receive stays posted.
const BUSY_GAP: Duration = Duration::from_micros(20);

/// The most a gap between requests counts for.
const IDLE_GAP: Duration = Duration::from_millis(1);

const BUF: usize = 4096;

/// What a socket's receive tasks answer with: the proxy's port, the server's socket.
pub(crate) trait Answer: 'static {
    /// What each task keeps across datagrams (its reply buffer and the like).
    type Scratch: Default;

    /// Handles one receive (a datagram or an error); whether there is anything to flush.
    fn handle(
        &self,
        received: io::Result<Received>,
        datagram: &[u8],
        now: Instant,
        scratch: &mut Self::Scratch,
    ) -> bool;

    /// Sends the replies ready, then logs and records what the handled datagram produced.
    async fn flush(&self, scratch: &mut Self::Scratch);
}

/// The shared side of one socket's receive tasks: the rate they see and the parked ones.
pub(crate) struct Receivers {
    /// The gap between requests, smoothed over about 16 of them (nanoseconds): a client that
    /// sends in small bursts at a modest rate does not wake the extra tasks.
    gap_ns: Cell<u64>,
    last: Cell<Option<Instant>>,
    /// Whether tasks park while the socket is not busy ([`datagram_wakes_every_receive`]).
    park: bool,
    /// The tasks whose receive is posted.
    posted: Cell<usize>,
    /// The tasks waiting for a busy socket.
    parked: RefCell<Vec<Rc<Notify>>>,
}

impl Receivers {
    /// Starts the receive tasks of `socket`: one receives, the others start parked.
    pub(crate) fn start<A: Answer>(answer: Rc<A>, socket: Rc<UdpEndpoint>) -> Rc<Self> {
        let receivers = Rc::new(Self::new(datagram_wakes_every_receive()));
        for i in 0..RECEIVERS {
            let (answer, socket, receivers) = (
                Rc::clone(&answer),
                Rc::clone(&socket),
                Rc::clone(&receivers),
            );
            let parked = i > 0 && receivers.park;
            spawn(async move { receivers.run(&*answer, &socket, parked).await }).detach();
        }
        receivers
    }

    /// `park`: whether receives park while the socket is not busy.
    fn new(park: bool) -> Self {
        Self {
            park,
            gap_ns: Cell::new(IDLE_GAP.as_nanos() as u64),
            last: Cell::new(None),
            posted: Cell::new(0),
            parked: RefCell::default(),
        }
    }

    /// A request arrived at `now`: whether the socket is busy. While it is, each request
    /// wakes one more parked task.
    fn arrived(&self, now: Instant) -> bool {
        // A gap counts at most as a millisecond, an idle socket's: after a quiet spell a burst
        // is busy within a few dozen requests.
        let gap = self.last.replace(Some(now)).map_or(IDLE_GAP, |l| now - l);
        let gap = gap.min(IDLE_GAP).as_nanos() as u64;
        let smoothed = self.gap_ns.get();
        let smoothed = smoothed - smoothed / 16 + gap / 16;
        self.gap_ns.set(smoothed);
        let busy = smoothed < BUSY_GAP.as_nanos() as u64;
        if busy && let Some(n) = self.parked.borrow_mut().pop() {
            n.notify();
        }
        busy
    }

    /// One receive task; `parked` starts it parked. A task whose datagram finds the socket
    /// not busy parks if another task's receive is posted, whichever task it is: each
    /// datagram wakes the receive posted last first, so a rule that parked only "extra" tasks
    /// would leave them posted for ever on a quiet socket. One receive stays posted: the task
    /// that finds none posted receives again.
    async fn run<A: Answer>(&self, answer: &A, socket: &UdpEndpoint, mut parked: bool) {
        let me = Rc::new(Notify::new());
        let mut scratch = A::Scratch::default();
        let mut buf = Vec::with_capacity(BUF);
        loop {
            if parked {
                self.parked.borrow_mut().push(Rc::clone(&me));
                me.notified().await;
            }
            self.posted.set(self.posted.get() + 1);
            let (mut res, mut b) = socket.recv(buf).await;
            loop {
                self.posted.set(self.posted.get() - 1);
                let now = Instant::now();
                let busy = res.is_ok() && self.arrived(now);
                let len = res.as_ref().map_or(0, |r| r.len);
                let handled = answer.handle(res, &b[..len], now, &mut scratch);
                if self.park && !busy && self.posted.get() > 0 {
                    if handled {
                        answer.flush(&mut scratch).await;
                    }
                    buf = b;
                    parked = true;
                    break;
                }
                self.posted.set(self.posted.get() + 1);
                // The next receive is posted together with the replies (`join`), so one pass
                // of the event loop submits both: awaiting the sends first cost another pass.
                // The handler keeps nothing of `b`: it takes the next datagram at once.
                let next = socket.recv(b);
                (res, b) = if handled {
                    join(answer.flush(&mut scratch), next).await.1
                } else {
                    next.await
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zpxe_platform::runtime::{EventLoop, sleep};
    use zpxe_platform::udp::UdpOptions;

    /// Counts what each task handled; a task's scratch is its number.
    #[derive(Default)]
    struct Count {
        by_task: RefCell<Vec<u32>>,
        flushed: Cell<u32>,
    }

    struct Task(usize);

    impl Default for Task {
        fn default() -> Self {
            thread_local!(static NEXT: Cell<usize> = const { Cell::new(0) });
            Task(NEXT.with(|n| n.replace(n.get() + 1)))
        }
    }

    impl Answer for Count {
        type Scratch = Task;

        fn handle(&self, r: io::Result<Received>, _: &[u8], _: Instant, task: &mut Task) -> bool {
            r.expect("receive");
            let mut by_task = self.by_task.borrow_mut();
            if by_task.len() <= task.0 {
                by_task.resize(task.0 + 1, 0);
            }
            by_task[task.0] += 1;
            true
        }

        async fn flush(&self, _: &mut Task) {
            self.flushed.set(self.flushed.get() + 1);
        }
    }

    #[test]
    fn a_flood_is_taken_by_several_receives_and_on_io_uring_a_trickle_by_one() {
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async {
            let options = UdpOptions {
                recv_buffer: Some(4 << 20),
                ..UdpOptions::default()
            };
            let socket =
                UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &options).expect("bind");
            let to = socket.local_addr();
            let count = Rc::new(Count::default());
            let receivers = Receivers::start(Rc::clone(&count), Rc::new(socket));
            let send = |n: u32, gap: Duration| {
                std::thread::spawn(move || {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
                    for i in 0..n {
                        s.send_to(&i.to_be_bytes(), to).expect("send");
                        if !gap.is_zero() {
                            std::thread::sleep(gap);
                        }
                    }
                })
            };
            let handled = |c: &Count| c.by_task.borrow().iter().sum::<u32>();
            // A flood, as fast as one thread sends: queued faster than one receive a pass.
            let flood = send(20_000, Duration::ZERO);
            // Until the sender is done and nothing more comes (what the socket buffer dropped
            // never will).
            loop {
                let before = handled(&count);
                sleep(Duration::from_millis(200)).await;
                if flood.is_finished() && handled(&count) == before {
                    break;
                }
            }
            flood.join().expect("flood");
            let tasks = count.by_task.borrow().iter().filter(|&&n| n > 0).count();
            assert!(
                tasks > 1,
                "one receive took the whole flood: {:?}",
                count.by_task
            );
            assert_eq!(
                count.flushed.get(),
                handled(&count),
                "every datagram flushed"
            );
            // A trickle, a millisecond apart: where receives park, the extra tasks park again,
            // each after at most one datagram; elsewhere every receive stays posted.
            let before = count.by_task.borrow().clone();
            let trickle = send(200, Duration::from_millis(1));
            while !trickle.is_finished() {
                sleep(Duration::from_millis(10)).await;
            }
            trickle.join().expect("trickle");
            sleep(Duration::from_millis(100)).await;
            if !receivers.park {
                assert!(receivers.parked.borrow().is_empty());
                return;
            }
            assert_eq!(receivers.parked.borrow().len(), RECEIVERS - 1);
            let after = count.by_task.borrow().clone();
            let most = (0..after.len())
                .map(|i| after[i] - before.get(i).copied().unwrap_or(0))
                .max();
            assert!(
                most >= Some(190),
                "one task took {most:?} of 200: {after:?}"
            );
        });
    }

    #[test]
    fn dense_requests_wake_the_parked_and_sparse_ones_do_not() {
        let r = Receivers::new(true);
        let parked: Vec<Rc<Notify>> = (0..3).map(|_| Rc::new(Notify::new())).collect();
        r.parked.borrow_mut().extend(parked.iter().cloned());
        let t0 = Instant::now();
        // 10,000 a second, in bursts of 10 (2 µs apart, every millisecond): never busy,
        // nobody woken.
        let mut t = t0;
        for i in 0..100 {
            t += Duration::from_micros(if i % 10 == 0 { 982 } else { 2 });
            assert!(!r.arrived(t), "{i}");
        }
        assert_eq!(r.parked.borrow().len(), 3);
        // 200,000 a second: busy within a few requests, one woken per request after that.
        let mut busy_at = None;
        for i in 0..100 {
            t += Duration::from_micros(5);
            if r.arrived(t) && busy_at.is_none() {
                busy_at = Some(i);
            }
        }
        assert!(busy_at.is_some_and(|i| i < 80), "{busy_at:?}");
        assert!(r.parked.borrow().is_empty());
        // Thinning out again: idle within a few requests.
        let idle_after = (0..20)
            .position(|_| {
                t += Duration::from_micros(200);
                !r.arrived(t)
            })
            .expect("idle again");
        assert!(idle_after < 10, "{idle_after}");
    }
}
