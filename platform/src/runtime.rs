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
