//! Linux: bodies copied into the socket by non-blocking `send`s, each only after the version
//! was seen intact, so no byte of a file rewritten in place can leave as part of the old one.
//!
//! Not `sendfile`: it attaches page-cache pages to the socket by reference, and what goes out is
//! what the pages hold when each packet is built (and retransmitted), or, for a reader on this
//! host (loopback, a veth into a container), when that reader gets round to reading them. A
//! check before each call therefore bounds nothing: a slow client got a complete 200 whose last
//! 2.7 MB were the new file's (issue 13). A copy cannot change after the check that vouched for
//! it:
//! - Writers excluded (a read lease): `send` straight from the mapping, the lease checked before
//!   every call. A writer's `open` waits for our release (or lease-break-time, far longer than
//!   one non-blocking call), so what the kernel copies during the call is this version's.
//! - Otherwise (no lease: `fstat` checks): `pread` into a buffer, check (a write in place moves
//!   mtime before it changes a byte), then send the buffer. One more copy per byte.
//!
//! Each call is a plain syscall on a non-blocking socket, not a queued io_uring write, so the
//! check and the copy are microseconds apart rather than however long the socket stays full.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use zpxe_engine::ByteRange;

use super::{COPY_CHUNK, KernelSend, TcpConn};
use crate::store::{Version, VersionBroken};
use crate::udp::SendError;

/// The most one `send` moves (1 MiB), and how much the body moves between turns of the loop:
/// its other connections (and new requests) go at least this often, which bounds the time to
/// first byte under load.
const SEND_STEP: usize = 1 << 20;

/// The direct `send` calls must never park the event loop: on a non-blocking socket they return
/// EAGAIN and the loop waits for writability (io_uring and the poll driver work the same on
/// non-blocking sockets). Whether the socket could be made so.
pub(super) fn kernel_bodies(stream: &compio::net::TcpStream) -> bool {
    socket2::SockRef::from(stream).set_nonblocking(true).is_ok()
}

pub(super) fn body_path() -> &'static str {
    "copies checked against the version (from the mapping under a lease, by pread without)"
}

impl TcpConn {
    /// The checked-copy path. It never answers `Unsupported`: reading the mapping or the file
    /// works on every file system.
    pub(super) async fn kernel_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, KernelSend> {
        let failed = |e: VersionBroken| KernelSend::Failed(e.into());
        let sock = self.stream.as_raw_fd();
        let from_mapping = image.writers_excluded();
        // Verified bytes not yet taken by the socket: `copy[taken..filled]`, which are the
        // body's bytes from `at`. The connection's buffer, put back when this body ends.
        let mut copy = std::mem::take(&mut self.copy);
        let (mut taken, mut filled) = (0, 0);
        let mut head_sent = 0;
        let mut at = range.start;
        let mut since_turn = 0;
        while head_sent < head.len() || at < range.end {
            let res = if head_sent < head.len() {
                // MSG_MORE: the head waits for the body's first bytes, one segment not two.
                let more = if at < range.end { libc::MSG_MORE } else { 0 };
                sys_send(sock, &head[head_sent..], more).inspect(|&n| head_sent += n)
            } else {
                let want = (range.end - at).min(SEND_STEP as u64) as usize;
                let sent = if from_mapping {
                    image.check().map_err(failed)?;
                    let slice = image
                        .kernel_slice(ByteRange::new(at, at + want as u64))
                        .ok_or(failed(VersionBroken::Modified))?;
                    sys_send(sock, slice, 0)
                } else {
                    if taken == filled {
                        if copy.len() < COPY_CHUNK {
                            copy.resize(COPY_CHUNK, 0);
                        }
                        let len = want.min(COPY_CHUNK);
                        filled = image
                            .read_verified(&mut copy[..len], at)
                            .map_err(KernelSend::Failed)?;
                        taken = 0;
                        // Nothing to read at `at`: the file shrank under the version.
                        if filled == 0 {
                            return Err(failed(VersionBroken::Modified));
                        }
                    }
                    sys_send(sock, &copy[taken..filled], 0).inspect(|&n| taken += n)
                };
                sent.inspect(|&n| {
                    at += n as u64;
                    since_turn += n;
                })
            };
            match res {
                // What the socket took (head or body) is progress for the stall watch.
                Ok(n) => self.taken.set(self.taken.get() + n as u64),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    since_turn = 0;
                    self.writable()
                        .await
                        .map_err(|e| KernelSend::Failed(SendError::Io(e)))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(KernelSend::Failed(SendError::of_mapped_send(e))),
            }
            if since_turn >= SEND_STEP && at < range.end {
                // Let the loop's other connections and new requests go first.
                since_turn = 0;
                YieldNow(false).await;
            }
        }
        self.copy = copy;
        Ok(range.len())
    }

    /// Waits until the socket takes more bytes.
    async fn writable(&self) -> io::Result<()> {
        use compio::driver::ToSharedFd;
        use compio::driver::op::{Interest, PollOnce};
        let op = PollOnce::new(self.stream.to_shared_fd(), Interest::Writable);
        compio::runtime::submit(op).await.0.map(drop)
    }
}

/// Gives the event loop one turn: pending once, then ready.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// One non-blocking `send`; `flags` adds to `MSG_DONTWAIT | MSG_NOSIGNAL`. The kernel copies
/// `buf` into the socket before it returns. `EFAULT` means `buf` is in a mapping whose file
/// shrank under it.
fn sys_send(sock: RawFd, buf: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes; `sock` is an open socket.
    let n = unsafe {
        libc::send(
            sock,
            buf.as_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
