//! Windows: bodies by `TransmitFile`, which the kernel feeds from the file cache, head included.
//!
//! Client editions of Windows run at most two `TransmitFile` calls at a time system-wide and
//! queue the rest, which would serialise a boot storm's downloads; there bodies are written from
//! the mapping instead (still no copy in user space). Server editions have no such limit.
//!
//! A rewrite in place cannot reach a client here the way it did through Linux's `sendfile`: the
//! store opens files without write sharing, and each op (this one, or a write from the mapping)
//! holds its version, so the file's handle, until the kernel completes it; no writer can open
//! the file meanwhile. This relies on completion meaning the stack is done reading the file's
//! pages (retransmissions included), which Wine cannot show either way.

use std::io;
use std::os::windows::io::AsRawHandle;
use std::rc::Rc;
use std::task::Poll;

use compio::driver::{OpCode, SharedFd, ToSharedFd};
use windows_sys::Win32::Foundation::{ERROR_IO_PENDING, HANDLE};
use windows_sys::Win32::Networking::WinSock::{
    SOCKET, TRANSMIT_FILE_BUFFERS, TransmitFile, WSAGetLastError,
};
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};
use zpxe_engine::ByteRange;

use super::{FIRST_CALL, KernelSend, TcpConn, next_call_len};
use crate::store::Version;
use crate::udp::SendError;

/// Whether bodies on a new connection go by `TransmitFile`: on server editions only.
pub(super) fn kernel_bodies(_stream: &compio::net::TcpStream) -> bool {
    crate::windows::server_edition()
}

pub(super) fn body_path() -> &'static str {
    if crate::windows::server_edition() {
        "TransmitFile"
    } else {
        "writes from the mapping (client editions of Windows run two TransmitFile calls at a time)"
    }
}

impl TcpConn {
    /// The `TransmitFile` path: the head rides with the first call, the version checked before
    /// each. The send guard sees progress only as a call completes, so calls are sized to what
    /// the client takes (`next_call_len`: from 64 KiB up to 4 MiB). When it returns
    /// `Unsupported` nothing has been sent.
    pub(super) async fn kernel_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, KernelSend> {
        let mut head = Some(head).filter(|h| !h.is_empty());
        let mut at = range.start;
        let timeout = self.send_timeout();
        let mut call = FIRST_CALL;
        while at < range.end || head.is_some() {
            image.check().map_err(|e| KernelSend::Failed(e.into()))?;
            let end = (at + call).min(range.end);
            let started = std::time::Instant::now();
            let op = Transmit {
                socket: self.stream.to_shared_fd(),
                image: Rc::clone(image),
                offset: at,
                len: u32::try_from(end - at).unwrap_or(u32::MAX),
                head: head.take().unwrap_or_default(),
            };
            let head_len = op.head.len() as u64;
            let compio::BufResult(res, op) = compio::runtime::submit(op).await;
            match res {
                // A short completion (the peer went away mid-call) is not a whole body.
                Ok(n) if n as u64 == head_len + u64::from(op.len) => {
                    self.taken.set(self.taken.get() + n as u64);
                    call = next_call_len(end - at, started.elapsed(), timeout);
                    at = end;
                }
                Ok(_) => {
                    return Err(KernelSend::Failed(SendError::Io(
                        io::ErrorKind::WriteZero.into(),
                    )));
                }
                // Before any byte left: the file or socket cannot take this path.
                Err(e) if at == range.start && unsupported(&e) => {
                    return Err(KernelSend::Unsupported { head: op.head });
                }
                Err(e) => return Err(KernelSend::Failed(SendError::Io(e))),
            }
        }
        Ok(range.len())
    }
}

/// `WSAEOPNOTSUPP`, `WSAEINVAL`, `ERROR_NOT_SUPPORTED`: the socket provider or the file cannot
/// do `TransmitFile`.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(10045 | 10022 | 50))
}

/// One `TransmitFile` of `len` bytes of `image` from `offset`, after `head`. The driver keeps
/// the op (and so the head, the file and the socket) alive until the kernel completes it, even
/// if the future is dropped first.
struct Transmit {
    socket: SharedFd<socket2::Socket>,
    image: Rc<Version>,
    offset: u64,
    len: u32,
    head: Vec<u8>,
}

// SAFETY: `operate` passes the overlapped pointer the driver gave it and buffers that live in
// the op, which the driver keeps pinned until completion; `cancel` only names the operation.
unsafe impl OpCode for Transmit {
    /// The head's descriptor: it points into `head` and must stay put while the kernel reads it.
    type Control = TRANSMIT_FILE_BUFFERS;

    unsafe fn init(&mut self, ctrl: &mut Self::Control) {
        ctrl.Head = self.head.as_mut_ptr().cast();
        ctrl.HeadLength = u32::try_from(self.head.len()).unwrap_or(u32::MAX);
    }

    unsafe fn operate(
        &mut self,
        ctrl: &mut Self::Control,
        optr: *mut OVERLAPPED,
    ) -> Poll<io::Result<usize>> {
        // With an OVERLAPPED, TransmitFile starts at the file offset in its Offset and
        // OffsetHigh members, not at the file pointer (the handle is shared by transfers).
        // SAFETY: the driver hands a valid, exclusive OVERLAPPED for this op.
        if let Some(overlapped) = unsafe { optr.as_mut() } {
            overlapped.Anonymous.Anonymous.Offset = (self.offset & 0xFFFF_FFFF) as u32;
            overlapped.Anonymous.Anonymous.OffsetHigh = (self.offset >> 32) as u32;
        }
        let buffers: *const TRANSMIT_FILE_BUFFERS = if self.head.is_empty() {
            std::ptr::null()
        } else {
            ctrl
        };
        // A count of 0 would mean "the whole file": a head alone goes without one.
        let file: HANDLE = if self.len == 0 {
            std::ptr::null_mut()
        } else {
            self.image.file().as_raw_handle()
        };
        // SAFETY: an open socket and file; `buffers` (if any) and `optr` stay valid until the
        // completion, as the op they live in is pinned by the driver.
        let ok =
            unsafe { TransmitFile(socket_of(&self.socket), file, self.len, 0, optr, buffers, 0) };
        if ok != 0 {
            // Done at once; the socket skips the completion port on success.
            return Poll::Ready(Ok(self.head.len() + self.len as usize));
        }
        // SAFETY: no arguments; reads this thread's last Winsock error.
        let code = unsafe { WSAGetLastError() };
        if code == ERROR_IO_PENDING as i32 {
            Poll::Pending
        } else {
            Poll::Ready(Err(io::Error::from_raw_os_error(code)))
        }
    }

    fn cancel(&mut self, _: &mut Self::Control, optr: *mut OVERLAPPED) -> io::Result<()> {
        // SAFETY: `optr` only names the operation to cancel on this socket.
        let ok = unsafe { CancelIoEx(socket_of(&self.socket) as HANDLE, optr) };
        if ok != 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // ERROR_NOT_FOUND: it completed meanwhile.
        if e.raw_os_error() == Some(1168) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

fn socket_of(fd: &SharedFd<socket2::Socket>) -> SOCKET {
    use std::os::windows::io::AsRawSocket;
    fd.as_raw_socket() as SOCKET
}
