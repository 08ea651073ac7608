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
        Ok((TcpConn { stream }, peer))
    }
}

/// One TCP connection.
#[derive(Debug)]
pub struct TcpConn {
    stream: TcpStream,
}

impl TcpConn {
    /// Connects (used by clients: the load generator and tests).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Self { stream })
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
        Ok(Self { stream })
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

    /// Writes `head` (a response head) and then `range` of `image`, the head and the first
    /// chunk of the body in one vectored write: a small ranged response costs one syscall.
    pub async fn send_head_and_image(
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
    use crate::store::{ImageStore, StoreOptions};
    use zpxe_engine::ImageCatalog;
    use zpxe_engine::path::NameFlavor;

    #[test]
    fn body_from_mapping_is_byte_exact() {
        let dir = tempfile::tempdir().expect("tmp");
        let data: Vec<u8> = (0..(9 << 20) + 5).map(|i: u32| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("img"), &data).expect("write");
        let mut store = ImageStore::new(dir.path(), StoreOptions::default()).expect("store");
        let info = store.open("img", NameFlavor::Http).expect("open");
        let version = store.version(info.id).expect("version");
        let ev = EventLoop::new().expect("loop");
        let got = ev.block_on(async move {
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
                    match r.expect("read") {
                        0 => break all,
                        n => all.extend_from_slice(&buf[..n]),
                    }
                }
            });
            let (mut conn, _) = server.accept().await.expect("accept");
            let sent = conn
                .send_image(&version, ByteRange::new(3, version.len()))
                .await
                .expect("send");
            assert_eq!(sent, version.len() - 3);
            conn.shutdown().await.expect("shutdown");
            drop(conn);
            reader.await.expect("reader")
        });
        assert!(got == data[3..], "body differs");
    }
}
