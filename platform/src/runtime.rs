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
}

impl EventLoop {
    /// Starts an event loop on this thread.
    pub fn new() -> io::Result<Self> {
        let runtime = compio::runtime::Runtime::new()?;
        Ok(Self { runtime })
    }

    /// The I/O driver the kernel gave us: "io_uring", "epoll/poll" or "IOCP".
    pub fn driver(&self) -> &'static str {
        driver_name(self.runtime.driver_type())
    }

    /// Runs `future` to completion on this loop.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
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
