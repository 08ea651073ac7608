//! Linux: bodies by `sendfile` from the version's file on a non-blocking socket.
//!
//! The kernel attaches page-cache pages to the socket instead of copying them into socket
//! buffers (a write from the mapping copies every byte). The head goes first with `MSG_MORE` so
//! head and body share a segment.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use zpxe_engine::ByteRange;

use super::{KernelSend, TcpConn};
use crate::store::{Version, VersionBroken};
use crate::udp::SendError;

/// The most one `sendfile` call moves (1 MiB): the loop turns to its other connections (and new
/// requests) at least this often, which bounds the time to first byte under load. A call that
/// attaches pages is cheap, so the smaller step costs little throughput.
const SENDFILE_CHUNK: u64 = 1 << 20;

/// The direct `send`/`sendfile` calls must never park the event loop: on a non-blocking socket
/// they return EAGAIN and the loop waits for writability (io_uring and the poll driver work the
/// same on non-blocking sockets). Whether the socket could be made so.
pub(super) fn kernel_bodies(stream: &compio::net::TcpStream) -> bool {
    socket2::SockRef::from(stream).set_nonblocking(true).is_ok()
}

pub(super) fn body_path() -> &'static str {
    "sendfile"
}

impl TcpConn {
    /// The `sendfile` path. When it returns `Unsupported` the head is out and no body byte is.
    pub(super) async fn kernel_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, KernelSend> {
        let sock = self.stream.as_raw_fd();
        let file = image.file().as_raw_fd();
        let mut head_sent = 0;
        let mut at = range.start;
        while head_sent < head.len() || at < range.end {
            let res = if head_sent < head.len() {
                // MSG_MORE: the head waits for the body's first pages, one segment not two.
                let more = if at < range.end { libc::MSG_MORE } else { 0 };
                sys_send(sock, &head[head_sent..], more).map(|n| head_sent += n)
            } else {
                // Once per call (at most SENDFILE_CHUNK): a broken lease or a changed file
                // stops the body here.
                image.check().map_err(|e| KernelSend::Failed(e.into()))?;
                let want = (range.end - at).min(SENDFILE_CHUNK) as usize;
                match sys_sendfile(sock, file, at, want) {
                    // Nothing to read at `at`: the file shrank under the version.
                    Ok(0) => return Err(KernelSend::Failed(VersionBroken::Modified.into())),
                    Ok(n) => {
                        at += n as u64;
                        if at < range.end {
                            // Let the loop's other connections and new requests go first.
                            YieldNow(false).await;
                        }
                        Ok(())
                    }
                    // Before the first body byte: the file system cannot sendfile, fall back.
                    Err(e)
                        if at == range.start
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                            ) =>
                    {
                        return Err(KernelSend::Unsupported { head: Vec::new() });
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self
                    .writable()
                    .await
                    .map_err(|e| KernelSend::Failed(SendError::Io(e)))?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(KernelSend::Failed(SendError::Io(e))),
            }
        }
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

/// One non-blocking `send`; `flags` adds to `MSG_DONTWAIT | MSG_NOSIGNAL`.
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

/// One `sendfile` of up to `len` bytes of `file` from `offset` (the file position is untouched).
fn sys_sendfile(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both descriptors are open; `off` is a live off_t the kernel updates.
    let n = unsafe { libc::sendfile(sock, file, &mut off, len) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
