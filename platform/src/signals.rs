//! SIGTERM and SIGINT as values a thread waits for, not handlers that interrupt.
//!
//! [`Terminations::block`] blocks both signals in the calling thread before the server starts
//! its event loops, which inherit the mask; one thread then takes them with `sigwait`. Nothing
//! runs in signal-handler context. SIGHUP (reload) is blocked and taken the same way, so the
//! caller decides what it means instead of the default action ending the process.
//!
//! On Windows the console's Ctrl-C and Ctrl-Break play their part: a console control handler
//! (run by Windows on a thread of its own) queues the event and [`Terminations::wait`] takes
//! it. Closing the console window, logoff and shutdown keep their default handling (Windows
//! ends the process after a few seconds whatever a handler does).

use std::io;

/// SIGTERM and SIGINT (and SIGHUP on Unix), blocked for this thread and the threads it starts
/// from now on.
#[derive(Debug)]
pub struct Terminations {
    #[cfg(unix)]
    set: libc::sigset_t,
}

impl Terminations {
    /// Blocks SIGTERM and SIGINT in the calling thread (call it before starting threads).
    #[cfg(unix)]
    pub fn block() -> io::Result<Self> {
        // SAFETY: `set` is initialised by `sigemptyset` before any other use; the calls take
        // valid pointers to it and to no old mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGHUP);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self { set })
        }
    }

    /// Takes Ctrl-C and Ctrl-Break from the console from now on.
    #[cfg(windows)]
    pub fn block() -> io::Result<Self> {
        console::install()?;
        Ok(Self {})
    }

    /// Elsewhere the process keeps its default handling (Ctrl-C ends it).
    #[cfg(not(any(unix, windows)))]
    pub fn block() -> io::Result<Self> {
        Ok(Self {})
    }

    /// Waits for the next SIGTERM, SIGINT or SIGHUP and names it.
    #[cfg(unix)]
    pub fn wait(&self) -> io::Result<&'static str> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is a valid, initialised signal set and `sig` a valid out pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(match sig {
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            _ => "signal",
        })
    }

    /// Waits for the next Ctrl-C or Ctrl-Break and names it.
    #[cfg(windows)]
    pub fn wait(&self) -> io::Result<&'static str> {
        Ok(console::next())
    }

    /// Elsewhere nothing is ever delivered here.
    #[cfg(not(any(unix, windows)))]
    pub fn wait(&self) -> io::Result<&'static str> {
        loop {
            std::thread::park();
        }
    }
}

#[cfg(windows)]
mod console {
    use std::collections::VecDeque;
    use std::io;
    use std::sync::{Condvar, Mutex};

    use windows_sys::Win32::System::Console::{
        CTRL_BREAK_EVENT, CTRL_C_EVENT, SetConsoleCtrlHandler,
    };
    use windows_sys::core::BOOL;

    static EVENTS: Mutex<VecDeque<&'static str>> = Mutex::new(VecDeque::new());
    static ARRIVED: Condvar = Condvar::new();

    pub(super) fn install() -> io::Result<()> {
        // SAFETY: registers a handler function that lives for the whole program.
        if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn next() -> &'static str {
        let mut events = EVENTS.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = events.pop_front() {
                return e;
            }
            events = ARRIVED.wait(events).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs on a thread Windows starts for the event: queue it and say it is handled.
    unsafe extern "system" fn handler(event: u32) -> BOOL {
        let name = match event {
            CTRL_C_EVENT => "Ctrl-C",
            CTRL_BREAK_EVENT => "Ctrl-Break",
            _ => return 0,
        };
        EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(name);
        ARRIVED.notify_one();
        1
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A blocked SIGTERM sent to this thread is taken by `wait`, not by the default action
    /// (which would end the test process).
    #[test]
    fn a_blocked_sigterm_is_waited_for() {
        let t = std::thread::spawn(|| {
            let signals = Terminations::block().expect("block");
            // SAFETY: signals this very thread, which has SIGTERM blocked.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
            assert_eq!(rc, 0);
            signals.wait().expect("wait")
        });
        assert_eq!(t.join().expect("thread"), "SIGTERM");
    }
}
