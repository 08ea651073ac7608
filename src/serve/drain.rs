//! Stopping: [`Stop`] says when (from the signal thread, the demo or a test), each event loop's
//! [`Drain`] tells its tasks and counts the work that still holds the loop open.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};

/// Asks a running server to drain or to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopFlags>);

#[derive(Debug, Default)]
struct StopFlags {
    draining: AtomicBool,
    stopped: AtomicBool,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }
    /// Stops at once: transfers under way are cut.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::Relaxed);
    }
    pub fn stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Relaxed)
    }
    /// Stops gracefully: listeners close, proxyDHCP goes quiet, new TFTP requests get no
    /// answer, idle HTTP connections close; TFTP transfers and HTTP responses under way run to
    /// their end, then each event loop exits.
    pub fn drain(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed) || self.stopped()
    }
}

/// One event loop's view of a drain: whether it began, who waits for it, and how much work
/// (TFTP services with transfers, HTTP connections) still holds the loop open.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    fired: Cell<bool>,
    /// Wakers of the tasks waiting for the drain, by slot; freed slots are reused.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
    busy: Cell<usize>,
}

impl Drain {
    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    pub(super) fn fire(&self) {
        if self.fired.replace(true) {
            return;
        }
        // Taken out first: a woken task runs later, but nothing here may hold the borrow.
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves when the drain begins.
    pub(crate) fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
        }
    }

    /// No work holds the loop open.
    pub(crate) fn idle(&self) -> bool {
        self.busy.get() == 0
    }

    /// Holds the loop open until the guard drops.
    pub(crate) fn busy(self: &Rc<Self>) -> Busy {
        self.busy.set(self.busy.get() + 1);
        Busy(Rc::clone(self))
    }
}

/// Work that keeps a draining loop alive.
pub(crate) struct Busy(Rc<Drain>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

/// The future of [`Drain::wait`].
pub(crate) struct DrainWait<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.drain.fired() {
            return Poll::Ready(());
        }
        let waker = Some(cx.waker().clone());
        match self.slot {
            Some(i) => self.drain.waiters.borrow_mut()[i] = waker,
            None => {
                let mut waiters = self.drain.waiters.borrow_mut();
                let i = match self.drain.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = waker;
                        i
                    }
                    None => {
                        waiters.push(waker);
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.drain.waiters.borrow_mut()[i] = None;
            self.drain.free.borrow_mut().push(i);
        }
    }
}
