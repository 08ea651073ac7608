//! Threads that work in the background of the event loops.

/// Lowers the calling thread's CPU priority, for a thread whose work can wait a few
/// milliseconds (the database's timeline writer, the SQLite checkpointer), so that on a busy
/// host the event loops and the threads they wait on (the DHCP server's lease writer: an ACK
/// leaves only once its lease is written) run first.
///
/// Linux: 10 nice levels down (at most to 19) for this thread only (a thread is a task of its
/// own there; setpriority(2) with its id). Windows: `THREAD_PRIORITY_BELOW_NORMAL`. Best
/// effort: `false` when refused.
pub fn lower_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        let Some(tid) = linux::tid() else {
            return false;
        };
        let Some(nice) = linux::nice(tid) else {
            return false;
        };
        // SAFETY: plain integer arguments; setpriority only reads them.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, (nice + 10).min(19)) == 0 }
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::Threading::{
            GetCurrentThread, SetThreadPriority, THREAD_PRIORITY_BELOW_NORMAL,
        };
        // SAFETY: GetCurrentThread returns a pseudo-handle that needs no closing; the call
        // only changes this thread's priority.
        unsafe { SetThreadPriority(GetCurrentThread(), THREAD_PRIORITY_BELOW_NORMAL) != 0 }
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        false
    }
}

#[cfg(target_os = "linux")]
mod linux {
    /// The calling thread's id.
    pub(super) fn tid() -> Option<libc::id_t> {
        // SAFETY: gettid takes nothing and cannot fail.
        libc::id_t::try_from(unsafe { libc::gettid() }).ok()
    }

    /// Thread `tid`'s nice value. getpriority(2) can return -1 as a value, so errno tells.
    pub(super) fn nice(tid: libc::id_t) -> Option<i32> {
        // SAFETY: errno is thread-local; clearing it is how getpriority's -1 is told apart.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: plain integer arguments.
        let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        // SAFETY: as above.
        (n != -1 || unsafe { *libc::__errno_location() } == 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_runs_at_a_lower_priority_and_others_do_not() {
        #[cfg(target_os = "linux")]
        let before = linux::nice(linux::tid().expect("tid")).expect("nice");
        let lowered = std::thread::spawn(move || {
            assert!(lower_priority(), "refused");
            #[cfg(target_os = "linux")]
            {
                let nice = linux::nice(linux::tid().expect("tid")).expect("nice");
                assert_eq!(nice, (before + 10).min(19));
            }
        });
        lowered.join().expect("thread");
        #[cfg(target_os = "linux")]
        assert_eq!(
            linux::nice(linux::tid().expect("tid")).expect("nice"),
            before
        );
    }
}
