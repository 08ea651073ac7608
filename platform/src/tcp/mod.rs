//! TCP listeners and connections, with bodies sent straight from the image mapping.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};
use zpxe_engine::ByteRange;

use crate::store::{Version, VersionBroken};
use crate::udp::SendError;

/// How much of a body goes to the kernel per write: between writes the version is re-checked,
/// so a file rewritten in place stops the body within this many bytes.
const BODY_CHUNK: u64 = 4 << 20;

/// The most one `sendfile` call moves (1 MiB): the loop turns to its other connections (and new
/// requests) at least this often, which bounds the time to first byte under load. A call that
/// attaches pages is cheap, so the smaller step costs little throughput.
#[cfg(target_os = "linux")]
const SENDFILE_CHUNK: u64 = 1 << 20;

/// A listening socket on the current event loop.
#[derive(Debug)]
pub struct TcpServer {
    listener: TcpListener,
    local: SocketAddr,
}

impl TcpServer {
    /// Binds and listens. With `reuse_port`, each event loop binds its own listener on the port.
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        #[cfg(not(unix))]
        let _ = reuse_port;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound socket has no inet address"))?;
        let listener = TcpListener::from_std(socket.into())?;
        Ok(Self { listener, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub async fn accept(&self) -> io::Result<(TcpConn, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((TcpConn::new(stream), peer))
    }
}

/// One TCP connection.
#[derive(Debug)]
pub struct TcpConn {
    stream: TcpStream,
    /// `sendfile` was refused for this connection's files: bodies go from the mapping.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    no_sendfile: bool,
}

/// Why the `sendfile` path stopped.
#[cfg(target_os = "linux")]
enum Sendfile {
    /// Refused before any body byte left (the head, if any, is out): the body goes from the
    /// mapping instead.
    Unsupported,
    Failed(SendError),
}

/// Gives the event loop one turn: pending once, then ready.
#[cfg(target_os = "linux")]
struct YieldNow(bool);

#[cfg(target_os = "linux")]
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
#[cfg(target_os = "linux")]
fn sys_send(sock: std::os::fd::RawFd, buf: &[u8], flags: i32) -> io::Result<usize> {
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
#[cfg(target_os = "linux")]
fn sys_sendfile(
    sock: std::os::fd::RawFd,
    file: std::os::fd::RawFd,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both descriptors are open; `off` is a live off_t the kernel updates.
    let n = unsafe { libc::sendfile(sock, file, &mut off, len) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl TcpConn {
    fn new(stream: TcpStream) -> Self {
        // The direct `send`/`sendfile` calls must never park the event loop: on a non-blocking
        // socket they return EAGAIN and the loop waits for writability. (io_uring and the
        // poll driver work the same on non-blocking sockets.) Without it, no `sendfile`.
        #[cfg(target_os = "linux")]
        let no_sendfile = socket2::SockRef::from(&stream)
            .set_nonblocking(true)
            .is_err();
        #[cfg(not(target_os = "linux"))]
        let no_sendfile = true;
        Self {
            stream,
            no_sendfile,
        }
    }

    /// Connects (used by clients: the load generator and tests).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Self::new(stream))
    }

    /// Connects from a chosen local address (the load generator gives each virtual client its
    /// own loopback address).
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> io::Result<Self> {
        let socket = match addr {
            SocketAddr::V4(_) => compio::net::TcpSocket::new_v4().await?,
            SocketAddr::V6(_) => compio::net::TcpSocket::new_v6().await?,
        };
        socket.bind(SocketAddr::new(local, 0)).await?;
        let stream = socket.connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Self::new(stream))
    }

    /// Reads what is available into `buf` (filled from its start, up to its capacity); 0 = EOF.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        let BufResult(r, buf) = self.stream.read(buf).await;
        (r, buf)
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let BufResult(r, buf) = self.stream.write_all(buf).await;
        (r, buf)
    }

    /// Writes the first `len` bytes of `buf` and hands the buffer back whole.
    pub async fn write_prefix(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let len = len.min(buf.len());
        let BufResult(r, slice) = self.stream.write_all(buf.slice(..len)).await;
        (r, slice.into_inner())
    }

    /// Writes `range` of `image` from its mapping: the kernel copies from the page cache, no
    /// user-space copy. The version is checked before every chunk.
    pub async fn send_image(
        &mut self,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        self.send_head_and_image(Vec::new(), image, range).await
    }

    /// Writes `head` (a response head) and then `range` of `image`.
    ///
    /// On Linux the body goes with `sendfile` from the version's file: the kernel attaches page
    /// cache pages to the socket instead of copying them (a write from the mapping copies every
    /// byte into socket buffers). Elsewhere, or when the file system refuses `sendfile`, the head
    /// and the first chunk leave in one vectored write from the mapping and the rest follows.
    pub async fn send_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        #[cfg(target_os = "linux")]
        if !self.no_sendfile {
            return match self.sendfile_head_and_image(&head, image, range).await {
                Ok(n) => Ok(n),
                Err(Sendfile::Failed(e)) => Err(e),
                Err(Sendfile::Unsupported) => {
                    self.no_sendfile = true;
                    self.write_head_and_image(Vec::new(), image, range).await
                }
            };
        }
        self.write_head_and_image(head, image, range).await
    }

    /// The `sendfile` path. When it returns `Unsupported` the head is out and no body byte is.
    #[cfg(target_os = "linux")]
    async fn sendfile_head_and_image(
        &mut self,
        head: &[u8],
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, Sendfile> {
        use std::os::fd::AsRawFd;
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
                image.check().map_err(|e| Sendfile::Failed(e.into()))?;
                let want = (range.end - at).min(SENDFILE_CHUNK) as usize;
                match sys_sendfile(sock, file, at, want) {
                    // Nothing to read at `at`: the file shrank under the version.
                    Ok(0) => return Err(Sendfile::Failed(VersionBroken::Modified.into())),
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
                        return Err(Sendfile::Unsupported);
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self
                    .writable()
                    .await
                    .map_err(|e| Sendfile::Failed(SendError::Io(e)))?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Sendfile::Failed(SendError::Io(e))),
            }
        }
        Ok(range.len())
    }

    /// Waits until the socket takes more bytes.
    #[cfg(target_os = "linux")]
    async fn writable(&self) -> io::Result<()> {
        use compio::driver::ToSharedFd;
        use compio::driver::op::{Interest, PollOnce};
        let op = PollOnce::new(self.stream.to_shared_fd(), Interest::Writable);
        compio::runtime::submit(op).await.0.map(drop)
    }

    /// The mapping path: the head and the first chunk of the body in one vectored write, so a
    /// small ranged response costs one syscall.
    async fn write_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        let mut head = Some(head).filter(|h| !h.is_empty());
        let mut at = range.start;
        while at < range.end || head.is_some() {
            image.check()?;
            let end = (at + BODY_CHUNK).min(range.end);
            let body = MappedSlice {
                image: Rc::clone(image),
                range: ByteRange::new(at, end),
            };
            if body.as_init().len() as u64 != end - at {
                return Err(SendError::Image(VersionBroken::Modified));
            }
            let written = match head.take() {
                Some(head) => {
                    let BufResult(r, _) = self
                        .stream
                        .write_vectored_all(HeadAndBody { head, body })
                        .await;
                    r
                }
                None => {
                    let BufResult(r, _) = self.stream.write_all(body).await;
                    r
                }
            };
            written.map_err(|e| {
                if e.raw_os_error() == Some(EFAULT) {
                    // The kernel could not read the mapping: the file shrank under it.
                    SendError::Image(VersionBroken::Modified)
                } else {
                    SendError::Io(e)
                }
            })?;
            at = end;
        }
        Ok(range.len())
    }

    /// Half-closes the write side so the peer sees EOF after the last byte.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}

#[cfg(unix)]
const EFAULT: i32 = libc::EFAULT;
#[cfg(not(unix))]
const EFAULT: i32 = 14;

/// A response head and the first slice of its body, written together.
struct HeadAndBody {
    head: Vec<u8>,
    body: MappedSlice,
}

impl compio::buf::IoVectoredBuf for HeadAndBody {
    fn iter_slice(&self) -> impl Iterator<Item = &[u8]> {
        [self.head.as_slice(), self.body.as_init()].into_iter()
    }
}

/// A byte range of a mapping, owned for as long as the kernel may read it.
struct MappedSlice {
    image: Rc<Version>,
    range: ByteRange,
}

impl IoBuf for MappedSlice {
    fn as_init(&self) -> &[u8] {
        self.image.kernel_slice(self.range).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{EventLoop, spawn};
    use crate::store::TestImage;
    use zpxe_engine::path::NameFlavor;

    #[test]
    fn body_from_mapping_is_byte_exact() {
        let data: Vec<u8> = (0..(9 << 20) + 5).map(|i: u32| (i % 253) as u8).collect();
        let img = TestImage::new(&data, true, NameFlavor::Http);
        let len = img.version.len();
        let (sent, got) = send_and_read(img.version, b"", ByteRange::new(3, len), false);
        assert_eq!(sent.expect("send"), len - 3);
        assert!(got == data[3..], "body differs");
    }

    /// Sends `head` + `range` of `version` with or without `sendfile` and returns what a reader
    /// got, with the sender's result.
    fn send_and_read(
        version: Rc<Version>,
        head: &[u8],
        range: ByteRange,
        sendfile: bool,
    ) -> (Result<u64, SendError>, Vec<u8>) {
        let head = head.to_vec();
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async move {
            let server =
                TcpServer::bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
            let addr = server.local_addr();
            let reader = spawn(async move {
                let mut c = TcpConn::connect(addr).await.expect("connect");
                let mut all = Vec::new();
                let mut buf = Vec::with_capacity(1 << 16);
                loop {
                    let (r, b) = c.read(buf).await;
                    buf = b;
                    match r {
                        Ok(0) | Err(_) => break all,
                        Ok(n) => all.extend_from_slice(&buf[..n]),
                    }
                }
            });
            let (mut conn, _) = server.accept().await.expect("accept");
            conn.no_sendfile = !sendfile;
            let res = conn.send_head_and_image(head, &version, range).await;
            let _ = conn.shutdown().await;
            drop(conn);
            (res, reader.await.expect("reader"))
        })
    }

    #[test]
    fn head_and_body_are_byte_exact_with_and_without_sendfile() {
        let data: Vec<u8> = (0..(9 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
        let img = TestImage::new(&data, true, NameFlavor::Http);
        let version = &img.version;
        let head = b"HTTP/1.1 206 Partial Content\r\n\r\n";
        for sendfile in [true, false] {
            for (start, end) in [(0, data.len()), (4097, (5 << 20) + 3), (7, 8), (9, 9)] {
                let range = ByteRange::new(start as u64, end as u64);
                let (res, got) = send_and_read(Rc::clone(version), head, range, sendfile);
                assert_eq!(res.expect("send"), (end - start) as u64);
                assert!(got[..head.len()] == head[..], "head (sendfile={sendfile})");
                assert!(
                    got[head.len()..] == data[start..end],
                    "body {start}..{end} differs (sendfile={sendfile})"
                );
            }
        }
    }

    #[test]
    fn truncated_file_stops_the_body_with_an_error_not_wrong_bytes() {
        let img = TestImage::new(&vec![9u8; 8 << 20], false, NameFlavor::Http);
        img.truncate(1 << 20);
        for sendfile in [true, false] {
            let (res, got) = send_and_read(
                Rc::clone(&img.version),
                b"",
                ByteRange::new(0, 8 << 20),
                sendfile,
            );
            assert!(
                matches!(res, Err(SendError::Image(VersionBroken::Modified))),
                "sendfile={sendfile}: {res:?}"
            );
            assert!(got.len() < 8 << 20, "a short body, never a padded one");
            assert!(got.iter().all(|&b| b == 9), "only the file's bytes");
        }
    }

    #[test]
    fn rename_replace_keeps_sending_the_old_bytes() {
        let img = TestImage::new(&vec![1u8; 3 << 20], true, NameFlavor::Http);
        let new = img.dir.path().join("img.new");
        std::fs::write(&new, vec![2u8; 3 << 20]).expect("write new");
        std::fs::rename(&new, &img.path).expect("rename");
        let (res, got) = send_and_read(img.version, b"", ByteRange::new(0, 3 << 20), true);
        assert_eq!(res.expect("send"), 3 << 20);
        assert!(
            got.len() == 3 << 20 && got.iter().all(|&b| b == 1),
            "old bytes"
        );
    }
}
