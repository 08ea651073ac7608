//! Event loops: one compio runtime per thread, io_uring where the kernel allows it, epoll where
//! io_uring is blocked (container seccomp, `kernel.io_uring_disabled`), IOCP on Windows.

use std::future::Future;
use std::io;
use std::time::Duration;

pub use compio::runtime::{JoinHandle, spawn};

/// One event loop.
#[derive(Debug)]
pub struct EventLoop {
    runtime: compio::runtime::Runtime,
    /// The longest spin before the loop sleeps in the kernel; zero sleeps at once.
    busy_poll: Duration,
}

/// How an event loop waits for I/O.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopOptions {
    /// The longest the loop polls, once it has gone idle, before it sleeps in the kernel
    /// (see [`EventLoop::block_on`]); zero: it sleeps at once.
    pub busy_poll: Duration,
}

thread_local! {
    /// Receives completed on this thread: a spin that sees the count move found work.
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts a receive that completed, for the loop's spin ([`LoopOptions::busy_poll`]).
pub fn note_work() {
    WORK.with(|w| w.set(w.get().wrapping_add(1)));
}

fn work() -> u64 {
    WORK.with(std::cell::Cell::get)
}

impl EventLoop {
    /// Starts an event loop on this thread that sleeps as soon as it is idle.
    pub fn new() -> io::Result<Self> {
        Self::with_options(LoopOptions::default())
    }

    /// Starts an event loop on this thread.
    pub fn with_options(options: LoopOptions) -> io::Result<Self> {
        Ok(Self {
            runtime: build_runtime()?,
            busy_poll: options.busy_poll,
        })
    }

    /// The I/O driver the kernel gave us: "io_uring", "epoll/poll" or "IOCP".
    pub fn driver(&self) -> &'static str {
        driver_name(self.runtime.driver_type())
    }

    /// Runs `future` to completion on this loop.
    ///
    /// With [`LoopOptions::busy_poll`], a loop that has run out of work polls the driver for a
    /// while before it sleeps. A sleeping thread is woken by the CPU that received its
    /// datagram, with an interrupt; on a busy or virtual machine that wake-up can take far
    /// longer than the datagram's work (about 1 ms at 1% of wake-ups on the 2-vCPU machines
    /// the benchmarks run on). The spin adapts as Linux's guest halt-polling governor does:
    /// it grows while sleeps end soon after the spin gave up (a longer spin would have caught
    /// the work) and shrinks while they are long, to none on an idle loop, which then costs
    /// nothing.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        if self.busy_poll.is_zero() {
            return self.runtime.block_on(future);
        }
        self.block_on_polling(future)
    }

    fn block_on_polling<F: Future>(&self, future: F) -> F::Output {
        use std::task::{Context, Poll};
        use std::time::Instant;
        let rt = &self.runtime;
        rt.enter(|| {
            let waker = rt.waker();
            let mut cx = Context::from_waker(&waker);
            let mut future = std::pin::pin!(future);
            let mut spin = Spin::new(self.busy_poll);
            // Since when the loop has been working (woken, or a spin found work).
            let mut busy_since = Instant::now();
            // While spinning: until when, and the receive count it started from.
            let mut spinning: Option<(Instant, u64)> = None;
            loop {
                // The future is polled on every pass: the driver takes its wake-up with the
                // completions, and would not give it again to the sleep after the spin.
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    rt.run();
                    return out;
                }
                if rt.run() {
                    rt.poll_with(Some(Duration::ZERO));
                    continue;
                }
                let now = Instant::now();
                let (until, seen) = *spinning
                    .get_or_insert_with(|| (now + spin.window_after(now - busy_since), work()));
                if work() != seen {
                    // Work came: the spin paid off; the next idle pass starts another.
                    spinning = None;
                    busy_since = now;
                    continue;
                }
                if now < until {
                    rt.poll_with(Some(Duration::ZERO));
                    continue;
                }
                spinning = None;
                rt.poll();
                let woken = Instant::now();
                spin.after_sleep(woken - now);
                busy_since = woken;
            }
        })
    }
}

/// The spin's length ([`EventLoop::block_on`]).
#[derive(Debug, Clone, Copy)]
struct Spin {
    window: Duration,
    max: Duration,
}

/// A spin lasts at most this many times the work the loop did before it: a sender who trickles
/// datagrams to keep a loop polling gets at most this much CPU per datagram's worth of work,
/// not a core.
const SPIN_PER_WORK: u32 = 8;

impl Spin {
    fn new(max: Duration) -> Self {
        Self {
            window: Duration::ZERO,
            max,
        }
    }

    /// The step the spin grows from and shrinks to none below.
    fn step(&self) -> Duration {
        (self.max / 8).max(Duration::from_micros(1))
    }

    /// How long to spin after `busy` of work: the window, bounded by [`SPIN_PER_WORK`].
    fn window_after(&self, busy: Duration) -> Duration {
        self.window.min(busy.saturating_mul(SPIN_PER_WORK))
    }

    /// A sleep shorter than the longest spin would have been caught by one: spin longer
    /// (doubling, from `step`); a longer one: halve the spin, to none below `step`.
    fn after_sleep(&mut self, slept: Duration) {
        let step = self.step();
        self.window = if slept < self.max {
            (self.window * 2).max(step).min(self.max)
        } else if self.window / 2 < step {
            Duration::ZERO
        } else {
            self.window / 2
        };
    }
}

/// io_uring for one thread (`IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`, Linux
/// 6.1): a completion is finished when this loop next asks for completions, instead of
/// interrupting the thread from the CPU where the datagram arrived. The closed-loop DHCP
/// benchmark measured 40,464 exchanges/s without and 43,729 with (`zpxe-bench dora`, medians of
/// 3). A kernel that refuses the flags gets the plain ring; IOCP and epoll ignore them.
fn build_runtime() -> io::Result<compio::runtime::Runtime> {
    use compio::driver::{DriverType, ProactorBuilder};
    let mut proactor = ProactorBuilder::new();
    proactor.single_issuer(true).defer_taskrun(true);
    match compio::runtime::Runtime::builder()
        .with_proactor(proactor)
        .build()
    {
        Ok(rt) if rt.driver_type() != DriverType::Poll => Ok(rt),
        _ => compio::runtime::Runtime::new(),
    }
}

/// Whether a datagram wakes every receive posted on its socket (io_uring: its receives wait on
/// the socket as non-exclusive waiters, and all but one find nothing and wait again), rather
/// than completing one of them (IOCP; compio's epoll driver, which hands one readiness to one
/// operation). Outside an event loop, `false`.
pub fn datagram_wakes_every_receive() -> bool {
    compio::runtime::Runtime::try_with_current(|rt| rt.driver_type().is_iouring()).unwrap_or(false)
}

fn driver_name(t: compio::driver::DriverType) -> &'static str {
    use compio::driver::DriverType;
    match t {
        DriverType::IoUring => "io_uring",
        DriverType::Poll => "epoll/poll",
        DriverType::IOCP => "IOCP",
    }
}

/// Sleeps on the current event loop.
pub async fn sleep(d: Duration) {
    compio::time::sleep(d).await;
}

/// Runs `future` with a deadline; `None` if it ran out.
pub async fn timeout<F: Future>(d: Duration, future: F) -> Option<F::Output> {
    compio::time::timeout(d, future).await.ok()
}

/// Wakes one waiting task on the same event loop: TFTP's receive tasks wake its driver task
/// when they armed a timer earlier than the one it sleeps for (src/serve/tftp.rs), so the
/// driver sleeps until a deadline or a wake, never on a polling period.
#[derive(Debug, Default)]
pub struct Notify {
    pending: std::cell::Cell<bool>,
    waker: std::cell::RefCell<Option<std::task::Waker>>,
}

impl Notify {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the waiter, or the next one to wait.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits for a `notify` since the last wait.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                std::task::Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// Waits for a `notify` or until `deadline`, whichever comes first.
    pub async fn notified_until(&self, deadline: Option<std::time::Instant>) {
        use futures_util::future::{Either, select};
        // Work already came in: no timer to arm (the common case under load).
        if self.pending.replace(false) {
            return;
        }
        let Some(deadline) = deadline else {
            return self.notified().await;
        };
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        if wait.is_zero() {
            return;
        }
        let n = std::pin::pin!(self.notified());
        let s = std::pin::pin!(sleep(wait));
        match select(n, s).await {
            Either::Left(_) | Either::Right(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::{UdpEndpoint, UdpOptions};

    #[test]
    fn the_spin_grows_on_short_sleeps_and_dies_on_long_ones() {
        let max = Duration::from_micros(800);
        let mut s = Spin::new(max);
        assert!(s.window.is_zero(), "a new loop sleeps at once");
        s.after_sleep(Duration::from_secs(1));
        assert!(s.window.is_zero(), "a long sleep starts no spin");
        let mut grown = Vec::new();
        for _ in 0..5 {
            s.after_sleep(Duration::from_micros(50));
            grown.push(s.window.as_micros());
        }
        assert_eq!(
            grown,
            [100, 200, 400, 800, 800],
            "doubles up to the longest"
        );
        let mut shrunk = Vec::new();
        for _ in 0..5 {
            s.after_sleep(Duration::from_millis(100));
            shrunk.push(s.window.as_micros());
        }
        assert_eq!(shrunk, [400, 200, 100, 0, 0], "halves, then none");
        s.window = max;
        assert_eq!(
            s.window_after(Duration::from_micros(20)),
            Duration::from_micros(160),
            "a spin costs at most 8 times the work before it"
        );
        assert_eq!(s.window_after(Duration::from_millis(1)), max);
    }

    /// A loop that polls still runs every task, timer and receive, and once traffic stops it
    /// goes back to sleeping: an idle polling loop costs (almost) no CPU.
    #[test]
    fn a_polling_loop_serves_then_sleeps_when_idle() {
        let ev = EventLoop::with_options(LoopOptions {
            busy_poll: Duration::from_millis(1),
        })
        .expect("loop");
        let idle_cpu = ev.block_on(async {
            let ep =
                UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &UdpOptions::default())
                    .expect("bind");
            let to = ep.local_addr();
            // Datagrams from another thread, 200 µs apart: sleeps shorter than the spin.
            let sender = std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
                for i in 0..400u32 {
                    s.send_to(&i.to_be_bytes(), to).expect("send");
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
            let mut buf = Vec::with_capacity(64);
            for i in 0..400u32 {
                let (res, b) = ep.recv(buf).await;
                let got = res.expect("recv");
                assert_eq!(&b[..got.len], i.to_be_bytes(), "datagram {i} in order");
                buf = b;
            }
            sender.join().expect("sender");
            let cpu0 = thread_cpu();
            for _ in 0..10 {
                sleep(Duration::from_millis(30)).await;
            }
            thread_cpu().map(|c| c - cpu0.expect("cpu"))
        });
        // 300 ms idle: a loop that kept spinning would have used nearly all of it. (The
        // thread's CPU time is read on Linux only.)
        if cfg!(target_os = "linux") {
            let cpu = idle_cpu.expect("/proc/thread-self/schedstat");
            assert!(
                cpu < Duration::from_millis(60),
                "an idle polling loop used {cpu:?} of CPU in 300 ms"
            );
        }
    }

    /// This thread's CPU time (Linux: /proc/thread-self/schedstat); `None` elsewhere.
    fn thread_cpu() -> Option<Duration> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_nanos(ns))
    }
}
