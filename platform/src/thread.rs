//! Threads that work in the background of the event loops.

/// Lowers the calling thread's CPU priority, for a thread whose work can wait (the database's
/// timeline writer, the SQLite checkpointers), so that the event loops and the threads they
/// wait on (the DHCP server's lease writer: an ACK leaves only once its lease is written) run
/// first.
///
/// Linux: `SCHED_IDLE` for this thread only (sched_setscheduler(2) with pid 0 names the calling
/// thread). A woken event loop then takes the CPU from it at once. At nice +10, as before, it did
/// not: the scheduler let the timeline writer run out its slice, and `perf sched timehist` of
/// a DHCP server at 10,000 exchanges/s showed 24 of the loop's 42 waits over 1 ms in 5 s
/// (up to 6 ms) spent behind it on one vCPU while the other was idle. The thread still gets
/// every idle CPU, and a sliver of a busy one. If `SCHED_IDLE` is refused, 10 nice levels down.
///
/// Windows: `THREAD_PRIORITY_BELOW_NORMAL`. Best effort: `false` when refused.
pub fn lower_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        if linux::idle_policy() {
            return true;
        }
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

    /// Puts the calling thread under `SCHED_IDLE`.
    pub(super) fn idle_policy() -> bool {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param it only reads.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
    }

    /// The calling thread's scheduling policy.
    #[cfg(test)]
    pub(super) fn policy() -> i32 {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
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
        let before = linux::policy();
        let lowered = std::thread::spawn(move || {
            assert!(lower_priority(), "refused");
            #[cfg(target_os = "linux")]
            assert_eq!(linux::policy(), libc::SCHED_IDLE);
        });
        lowered.join().expect("thread");
        #[cfg(target_os = "linux")]
        {
            assert_eq!(linux::policy(), before);
            assert_ne!(before, libc::SCHED_IDLE);
        }
    }
}
