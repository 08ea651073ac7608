//! Blocking socket calls that survive EINTR.
//!
//! With a read timeout set (SO_RCVTIMEO), Linux fails `recv`, `recvfrom`, `accept` and `read`
//! with EINTR when any signal arrives, even one without a handler: a stop and continue of the
//! process (a debugger, a cgroup freeze, a CI host pausing the runner) is enough (signal(7),
//! "Interruption of system calls and library functions by stop signals"). std's `recv_from`
//! and `read` pass that EINTR up, where a test would take it for a timeout or a failure.
//! Every blocking call in the tests goes through [`eintr`].

use std::io;

/// Runs `call` until it returns something other than `ErrorKind::Interrupted`. The socket's
/// timeout starts again on each retry, so a wait can last longer than one timeout, never less.
pub fn eintr<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_call_is_retried_and_other_errors_pass_through() {
        let mut tries = 0;
        let r = eintr(|| {
            tries += 1;
            if tries < 3 {
                Err(io::Error::from(io::ErrorKind::Interrupted))
            } else {
                Ok(tries)
            }
        });
        assert_eq!(r.expect("third try"), 3);
        let r: io::Result<()> = eintr(|| Err(io::Error::from(io::ErrorKind::WouldBlock)));
        assert_eq!(r.expect_err("passed up").kind(), io::ErrorKind::WouldBlock);
    }
}
