//! TCP listeners and connections, with response bodies handed to the kernel from the image's
//! file (`TransmitFile` on Windows Server), copied into the socket only after the version was
//! seen intact (Linux), or written from its mapping.

// The system's own path from file to socket, one module per system: `kernel_bodies` (whether a
// new connection takes it), `body_path` (its name) and `TcpConn::kernel_head_and_image`.
#[cfg_attr(target_os = "linux", path = "linux.rs")]
#[cfg_attr(windows, path = "windows.rs")]
#[cfg_attr(not(any(target_os = "linux", windows)), path = "none.rs")]
mod kernel;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

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

/// How much of a body is read and verified at a time where the bytes must be copied out first:
/// enough that the read, the two checks and the send cost little per byte, little enough to
/// hold per connection.
const COPY_CHUNK: usize = 256 << 10;

/// How response bodies leave on this system, for the log: checked copies, `TransmitFile`, or
/// writes from the mapping.
pub fn body_path() -> &'static str {
    kernel::body_path()
}

/// Why the path that hands the file to the kernel stopped.
enum KernelSend {
    /// Refused before any body byte left: the body (and `head`, what of the response head is
    /// still unsent) goes from the mapping instead.
    #[cfg_attr(
        target_os = "linux",
        expect(dead_code, reason = "Linux's checked copies work on every file")
    )]
    Unsupported {
        head: Vec<u8>,
    },
    Failed(SendError),
}

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
        // Unix: rebind at once after a restart (connections of the old process in TIME_WAIT).
        // Windows' SO_REUSEADDR means something else, letting another socket take the port
        // over; there the port is claimed exclusively, and TIME_WAIT does not block a bind.
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        #[cfg(windows)]
        crate::windows::exclusive_address_use(&socket)?;
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

    /// Accepts a connection that belongs to no event loop yet: [`PendingConn`] can go to
    /// another thread, whose loop takes it with [`TcpConn::adopt`]. On Windows a socket joins
    /// one completion port for good, so the accepted socket must not join this loop's: it is
    /// made here, outside compio, and `AcceptEx` only fills it in.
    pub async fn accept_pending(&self) -> io::Result<(PendingConn, SocketAddr)> {
        use compio::driver::ToSharedFd;
        let listener = self.listener.to_shared_fd();
        #[cfg(windows)]
        let (socket, peer) = {
            let fresh = Socket::new(
                Domain::for_address(self.local),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            let op = compio::driver::op::Accept::new(listener, fresh);
            let BufResult(res, op) = compio::runtime::submit(op).await;
            res?;
            // Without it the socket knows neither its addresses nor its listener's options.
            op.update_context()?;
            op.into_addr()?
        };
        #[cfg(not(windows))]
        let (socket, peer) = {
            let op = compio::driver::op::Accept::new(listener);
            let BufResult(res, op) = compio::runtime::submit(op).await;
            res?;
            op.into_inner()
        };
        let peer = peer
            .as_socket()
            .ok_or_else(|| io::Error::other("accepted socket has no inet address"))?;
        socket.set_nonblocking(true)?;
        Ok((PendingConn { socket }, peer))
    }
}

/// An accepted TCP connection on no event loop yet ([`TcpServer::accept_pending`]). Dropping it
/// closes the connection.
#[derive(Debug)]
pub struct PendingConn {
    socket: Socket,
}

/// One TCP connection.
#[derive(Debug)]
pub struct TcpConn {
    stream: TcpStream,
    /// Bodies are handed to the kernel from the file (see [`body_path`]); false where the
    /// system has no such path, or once a file system refused it: bodies go from the mapping.
    kernel_bodies: bool,
    /// The buffer body bytes are read and verified into where they must be copied out first:
    /// one per connection, taken on its first such body and kept for the next.
    copy: Vec<u8>,
    /// See [`TcpConn::set_send_timeout`]: kept across writes, shared with the one under way.
    guard: Option<Rc<RefCell<Guard>>>,
    /// See [`TcpConn::set_min_send_rate`].
    min_send_rate: u64,
    /// Bytes the socket has taken, counted as each write or `send` returns (the guard's view of
    /// progress where the system cannot say what the peer acknowledged).
    taken: Rc<Cell<u64>>,
}

/// The error of a send that stalled for the connection's send timeout (see
/// [`TcpConn::set_send_timeout`]): [`io::ErrorKind::TimedOut`], this message.
pub const STALLED: &str = "the peer took too few bytes in the send timeout";

/// Whether a send failed because the peer stopped taking bytes ([`TcpConn::set_send_timeout`]).
pub fn is_stalled(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

impl TcpConn {
    fn new(stream: TcpStream) -> Self {
        let kernel_bodies = kernel::kernel_bodies(&stream);
        Self {
            stream,
            kernel_bodies,
            copy: Vec::new(),
            guard: None,
            min_send_rate: 0,
            taken: Rc::new(Cell::new(0)),
        }
    }

    /// Every write on this connection fails with [`io::ErrorKind::TimedOut`] once writes have
    /// waited `timeout` in all while the peer acknowledged fewer than
    /// [`set_min_send_rate`](Self::set_min_send_rate) × `timeout` bytes (at least one) since
    /// that wait began: a client that stopped reading, or one that reads a trickle to hold the
    /// connection and its buffers (a slowloris on the sending side). Only time spent waiting
    /// counts, so gaps between writes (a keep-alive client thinking, an event stream idle) never
    /// do. Progress is what the peer acknowledged (Linux: `TCP_INFO`), elsewhere what the
    /// socket took as each write completes. The connection then closes with a reset, dropping
    /// what the client left unread. `None` (the default): writes wait forever.
    pub fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.guard = timeout.map(|timeout| {
            Rc::new(RefCell::new(Guard {
                timeout,
                min_rate: self.min_send_rate,
                taken: Rc::clone(&self.taken),
                probe: AckProbe::of(&self.stream),
                window: None,
                timer: None,
            }))
        });
    }

    /// The average rate, in bytes per second, below which a waiting write counts as stalled
    /// (see [`set_send_timeout`](Self::set_send_timeout)); 0: any acknowledged byte is progress.
    pub fn set_min_send_rate(&mut self, bytes_per_sec: u64) {
        self.min_send_rate = bytes_per_sec;
        if let Some(guard) = &self.guard {
            guard.borrow_mut().min_rate = bytes_per_sec;
        }
    }

    /// The send guard of a write, if the connection has a send timeout.
    fn watch(&self) -> Option<Rc<RefCell<Guard>>> {
        self.guard.clone()
    }

    /// The send timeout, if any (sizes `TransmitFile` calls on Windows).
    #[cfg_attr(
        not(windows),
        expect(dead_code, reason = "sizes Windows' TransmitFile calls")
    )]
    fn send_timeout(&self) -> Option<Duration> {
        self.guard.as_ref().map(|g| g.borrow().timeout)
    }

    /// Serves a [`PendingConn`] on the current event loop.
    pub fn adopt(pending: PendingConn) -> io::Result<Self> {
        let stream = TcpStream::from_std(std::net::TcpStream::from(pending.socket))?;
        let _ = stream.set_nodelay(true);
        Ok(Self::new(stream))
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

    /// Writes all of `buf`. After a stall (see [`TcpConn::set_send_timeout`]) the buffer is
    /// lost with the write, and an empty one comes back.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let len = buf.len() as u64;
        let watch = self.watch();
        let taken = Rc::clone(&self.taken);
        let write = async {
            let BufResult(r, buf) = self.stream.write_all(buf).await;
            if r.is_ok() {
                taken.set(taken.get() + len);
            }
            (r, buf)
        };
        match unless_stalled(watch, write).await {
            Ok(done) => done,
            Err(e) => {
                self.reset_on_close();
                (Err(e), Vec::new())
            }
        }
    }

    /// Writes the first `len` bytes of `buf` and hands the buffer back whole (empty after a
    /// stall, as [`TcpConn::write_all`]).
    pub async fn write_prefix(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let len = len.min(buf.len());
        let watch = self.watch();
        let taken = Rc::clone(&self.taken);
        let write = async {
            let BufResult(r, slice) = self.stream.write_all(buf.slice(..len)).await;
            if r.is_ok() {
                taken.set(taken.get() + len as u64);
            }
            (r, slice.into_inner())
        };
        match unless_stalled(watch, write).await {
            Ok(done) => done,
            Err(e) => {
                self.reset_on_close();
                (Err(e), Vec::new())
            }
        }
    }

    /// Writes `range` of `image` (see [`TcpConn::send_head_and_image`]).
    pub async fn send_image(
        &mut self,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        self.send_head_and_image(Vec::new(), image, range).await
    }

    /// Writes `head` (a response head) and then `range` of `image`.
    ///
    /// Where the system has a path of its own (see [`body_path`]) the body takes it. Elsewhere,
    /// or when the file system refuses, the head and the first chunk leave in one vectored
    /// write and the rest follows.
    ///
    /// No byte of a file rewritten in place goes out as part of this version: bytes leave as
    /// copies taken while the version was intact, or from a file nobody can write meanwhile
    /// ([`Version::writers_excluded`]). When the version breaks, the connection is set to close
    /// with a reset, so the client sees a cut response and not a complete one, whatever it makes
    /// of a short body, and queued bytes are dropped.
    pub async fn send_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        let watch = self.watch();
        let res = unless_stalled(watch, self.head_and_image(head, image, range))
            .await
            .unwrap_or_else(|e| Err(SendError::Io(e)));
        match &res {
            Err(SendError::Image(_)) => self.reset_on_close(),
            Err(SendError::Io(e)) if is_stalled(e) => self.reset_on_close(),
            _ => {}
        }
        res
    }

    /// Closing sends a reset and drops what is queued: after a stall (what the client left
    /// unread would otherwise stay queued in the kernel, orphaned, for as long as it trickles it
    /// out) and after a version broke (the client sees a cut response, not a complete one).
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    async fn head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        if self.kernel_bodies {
            match self.kernel_head_and_image(head, image, range).await {
                Ok(n) => Ok(n),
                Err(KernelSend::Failed(e)) => Err(e),
                Err(KernelSend::Unsupported { head }) => {
                    self.kernel_bodies = false;
                    self.write_head_and_image(head, image, range).await
                }
            }
        } else {
            self.write_head_and_image(head, image, range).await
        }
    }

    /// The generic path: the head and the first chunk of the body in one vectored write, so a
    /// small ranged response costs one syscall. From the mapping where nobody can write the
    /// file meanwhile; otherwise as copies read and verified first (a write from the mapping
    /// copies what the file holds during the call, which a check before it cannot vouch for).
    async fn write_head_and_image(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        if !image.writers_excluded() {
            return self.write_head_and_copies(head, image, range).await;
        }
        self.write_head_and_mapped(head, image, range).await
    }

    async fn write_head_and_mapped(
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
            written.map_err(SendError::of_mapped_send)?;
            self.taken.set(self.taken.get() + (end - at));
            at = end;
        }
        Ok(range.len())
    }

    /// Bytes read into a buffer and verified ([`Version::read_at`]), then written; the head
    /// rides in front of the first chunk.
    async fn write_head_and_copies(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        let mut buf = std::mem::take(&mut self.copy);
        buf.clear();
        buf.extend_from_slice(&head);
        let mut at = range.start;
        while at < range.end || !buf.is_empty() {
            let from = buf.len();
            let want = (range.end - at).min(COPY_CHUNK as u64) as usize;
            buf.resize(from + want, 0);
            let n = image.read_verified(&mut buf[from..], at)?;
            if n == 0 && want > 0 {
                // Nothing to read at `at`: the file shrank under the version.
                return Err(SendError::Image(VersionBroken::Modified));
            }
            buf.truncate(from + n);
            let sent = buf.len() as u64;
            let BufResult(r, b) = self.stream.write_all(buf).await;
            r?;
            self.taken.set(self.taken.get() + sent);
            buf = b;
            buf.clear();
            at += n as u64;
        }
        self.copy = buf;
        Ok(range.len())
    }

    /// Half-closes the write side so the peer sees EOF after the last byte.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}

/// A connection's send guard (see [`TcpConn::set_send_timeout`]). It costs a write nothing
/// unless the write has to wait, and a waiting write only two clock reads and a poll of a timer
/// that already exists: the progress probe (a `getsockopt`) and a new timer come once per
/// `timeout` of waiting, not once per write.
struct Guard {
    timeout: Duration,
    /// Bytes per second the peer must acknowledge on average over each window.
    min_rate: u64,
    taken: Rc<Cell<u64>>,
    probe: AckProbe,
    /// The window under way: opened by the first write that had to wait, closed (judged) once
    /// writes waited `timeout` in it.
    window: Option<Window>,
    /// Due when the window may have reached `timeout` of waiting; polled only while a write
    /// waits (a wake-up while none does finds nothing to do).
    timer: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("timeout", &self.timeout)
            .field("min_rate", &self.min_rate)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Window {
    /// Progress when the window opened.
    from: u64,
    /// Time writes waited in this window, not counting the wait under way.
    waited: Duration,
    /// When the write waiting now began to wait.
    since: Option<Instant>,
}

impl Guard {
    /// Bytes the peer acknowledged, or where the system cannot say, the socket took.
    fn progress(&self) -> u64 {
        self.probe.acked().unwrap_or_else(|| self.taken.get())
    }

    /// What a window of `timeout` must move: `min_rate` × `timeout`, at least one byte.
    fn needed(&self) -> u64 {
        let n = u128::from(self.min_rate) * self.timeout.as_millis() / 1000;
        u64::try_from(n).unwrap_or(u64::MAX).max(1)
    }

    /// A write began to wait.
    fn begin_wait(&mut self, now: Instant) {
        let waited = match &mut self.window {
            Some(w) => {
                w.since = Some(now);
                w.waited
            }
            None => {
                self.window = Some(Window {
                    from: self.progress(),
                    waited: Duration::ZERO,
                    since: Some(now),
                });
                self.timer = None;
                Duration::ZERO
            }
        };
        if self.timer.is_none() {
            self.arm(self.timeout.saturating_sub(waited));
        }
    }

    /// The waiting write completed (or was dropped).
    fn end_wait(&mut self, now: Instant) {
        if let Some(w) = &mut self.window
            && let Some(since) = w.since.take()
        {
            w.waited += now.saturating_duration_since(since);
        }
    }

    fn arm(&mut self, after: Duration) {
        self.timer = Some(Box::pin(crate::runtime::sleep(after)));
    }

    /// Polled while a write waits: `Ready` once the peer fell below the rate for a window.
    fn poll_stalled(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        loop {
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
            let now = Instant::now();
            let Some(w) = &self.window else {
                return Poll::Pending;
            };
            let waited = w.waited + w.since.map_or(Duration::ZERO, |s| now - s);
            if waited < self.timeout {
                self.arm(self.timeout - waited);
                continue;
            }
            let (from, progress) = (w.from, self.progress());
            if progress.saturating_sub(from) < self.needed() {
                return Poll::Ready(());
            }
            self.window = Some(Window {
                from: progress,
                waited: Duration::ZERO,
                since: Some(now),
            });
            self.arm(self.timeout);
        }
    }
}

/// Reads how many bytes the peer has acknowledged on a socket.
#[derive(Clone, Copy, Debug)]
struct AckProbe {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

impl AckProbe {
    fn of(stream: &TcpStream) -> Self {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            Self {
                fd: stream.as_raw_fd(),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = stream;
            Self {}
        }
    }

    /// `TCP_INFO`'s `tcpi_bytes_acked` (Linux 4.1); `None` where the system has no such count
    /// (then only completed writes show progress). Exact whatever is queued or being written,
    /// unlike the send queue's length (`SIOCOUTQ`), which a write under way moves too.
    fn acked(self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: all-zero bytes are a valid `tcp_info` (integers only).
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: `fd` is the socket of the connection whose writes this probe guards, open
            // for as long as the connection; `info` and `len` are valid for the kernel to fill
            // (it writes at most `len` bytes).
            let r = unsafe {
                libc::getsockopt(
                    self.fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&raw mut info).cast(),
                    &mut len,
                )
            };
            let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
            (r == 0 && len as usize >= end).then_some(info.tcpi_bytes_acked)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// Runs `op` until it completes, or fails it with [`STALLED`] once its guard says the peer fell
/// below the rate (see [`TcpConn::set_send_timeout`]). A write that completes at once touches
/// nothing.
async fn unless_stalled<T>(
    guard: Option<Rc<RefCell<Guard>>>,
    op: impl std::future::Future<Output = T>,
) -> io::Result<T> {
    let mut op = std::pin::pin!(op);
    let Some(guard) = guard else {
        return Ok(op.await);
    };
    let mut wait = Waiting {
        guard: &guard,
        waiting: false,
    };
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = op.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let mut g = wait.guard.borrow_mut();
        if !wait.waiting {
            wait.waiting = true;
            g.begin_wait(Instant::now());
        }
        g.poll_stalled(cx)
            .map(|()| Err(io::Error::new(io::ErrorKind::TimedOut, STALLED)))
    })
    .await
}

/// Ends a write's wait in its guard when the write completes or is dropped.
struct Waiting<'a> {
    guard: &'a RefCell<Guard>,
    waiting: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.waiting
            && let Ok(mut g) = self.guard.try_borrow_mut()
        {
            g.end_wait(Instant::now());
        }
    }
}

/// The first `TransmitFile` call of a body: small, so a slow client shows progress within the
/// send timeout; the next calls grow with what the client takes.
#[cfg(any(windows, test))]
const FIRST_CALL: u64 = 64 << 10;

/// The smallest `TransmitFile` call after the first.
#[cfg(any(windows, test))]
const MIN_CALL: u64 = 16 << 10;

/// The length of the next call of a body sent by calls that show progress only as each
/// completes (`TransmitFile`): what the client took in a quarter of the send timeout at the rate
/// the last call (`last` bytes in `took`) went, between [`MIN_CALL`] and [`BODY_CHUNK`]. A
/// client that keeps a quarter of its rate finishes each call within the timeout, so the send
/// guard sees its progress; before, every call was 4 MiB and a client below 4 MiB per timeout
/// (140 KiB/s at 30 s) was cut while reading. Without a timeout: [`BODY_CHUNK`].
#[cfg(any(windows, test))]
fn next_call_len(last: u64, took: Duration, timeout: Option<Duration>) -> u64 {
    let Some(timeout) = timeout else {
        return BODY_CHUNK;
    };
    let quarter = timeout.as_secs_f64() / 4.0;
    let secs = took.as_secs_f64();
    if secs <= 0.0 {
        return BODY_CHUNK;
    }
    let fits = last as f64 / secs * quarter;
    if fits >= BODY_CHUNK as f64 {
        BODY_CHUNK
    } else {
        (fits as u64).clamp(MIN_CALL, BODY_CHUNK)
    }
}

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

    /// A connection accepted on one loop is served by another thread's loop (on Windows the
    /// accepted socket joins the second loop's completion port, the only one it ever joins).
    #[test]
    fn a_pending_connection_is_served_by_another_loop() {
        let ev = EventLoop::new().expect("loop");
        let (tx, rx) = std::sync::mpsc::channel::<PendingConn>();
        let server_thread = std::thread::spawn(move || {
            let ev = EventLoop::new().expect("second loop");
            ev.block_on(async move {
                let mut served = 0;
                while let Ok(pending) = rx.recv() {
                    let mut conn = TcpConn::adopt(pending).expect("adopt");
                    let (r, buf) = conn.read(Vec::with_capacity(64)).await;
                    let n = r.expect("read on the second loop");
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let (w, _) = conn.write_all(reply).await;
                    w.expect("write on the second loop");
                    served += 1;
                }
                served
            })
        });
        ev.block_on(async move {
            let server =
                TcpServer::bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
            let addr = server.local_addr();
            for i in 0..3u8 {
                let client = spawn(async move {
                    let mut c = TcpConn::connect(addr).await.expect("connect");
                    let (w, _) = c.write_all(vec![b'a' + i; 3]).await;
                    w.expect("client write");
                    let mut all = Vec::new();
                    let mut buf = Vec::with_capacity(64);
                    while all.len() < 8 {
                        let (r, b) = c.read(buf).await;
                        buf = b;
                        match r {
                            Ok(0) | Err(_) => break,
                            Ok(n) => all.extend_from_slice(&buf[..n]),
                        }
                    }
                    all
                });
                let (pending, peer) = server.accept_pending().await.expect("accept");
                assert!(peer.ip().is_loopback(), "{peer}");
                tx.send(pending).expect("to the second loop");
                let mut want = b"echo:".to_vec();
                want.extend_from_slice(&[b'a' + i; 3]);
                assert_eq!(client.await.expect("client"), want);
            }
            drop(tx);
        });
        assert_eq!(server_thread.join().expect("second loop"), 3);
    }

    #[test]
    fn body_from_mapping_is_byte_exact() {
        let data: Vec<u8> = (0..(9 << 20) + 5).map(|i: u32| (i % 253) as u8).collect();
        let img = TestImage::new(&data, true, NameFlavor::Http);
        let len = img.version.len();
        let (sent, got) = send_and_read(img.version, b"", ByteRange::new(3, len), false);
        assert_eq!(sent.expect("send"), len - 3);
        assert!(got == data[3..], "body differs");
    }

    /// Sends `head` + `range` of `version` by the kernel's file path (`sendfile`,
    /// `TransmitFile`) or from the mapping, and returns what a reader got, with the sender's
    /// result.
    fn send_and_read(
        version: Rc<Version>,
        head: &[u8],
        range: ByteRange,
        kernel: bool,
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
            conn.kernel_bodies = kernel;
            let res = conn.send_head_and_image(head, &version, range).await;
            assert_eq!(
                conn.kernel_bodies, kernel,
                "the kernel path fell back to the mapping"
            );
            let _ = conn.shutdown().await;
            drop(conn);
            (res, reader.await.expect("reader"))
        })
    }

    #[test]
    fn head_and_body_are_byte_exact_with_and_without_the_kernel_path() {
        let data: Vec<u8> = (0..(9 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
        let img = TestImage::new(&data, true, NameFlavor::Http);
        let version = &img.version;
        let head = b"HTTP/1.1 206 Partial Content\r\n\r\n";
        for kernel in [true, false] {
            for (start, end) in [(0, data.len()), (4097, (5 << 20) + 3), (7, 8), (9, 9)] {
                let range = ByteRange::new(start as u64, end as u64);
                let (res, got) = send_and_read(Rc::clone(version), head, range, kernel);
                assert_eq!(res.expect("send"), (end - start) as u64);
                assert!(got[..head.len()] == head[..], "head (kernel={kernel})");
                assert!(
                    got[head.len()..] == data[start..end],
                    "body {start}..{end} differs (kernel={kernel})"
                );
            }
        }
    }

    /// Offsets past 4 GiB (install.wim files are that big) reach the kernel whole: `off_t` on
    /// Linux, the high half of the OVERLAPPED offset on Windows.
    #[test]
    fn ranges_past_four_gib_come_from_the_right_place() {
        use std::io::{Seek, SeekFrom, Write};
        let far = (4u64 << 30) + 12_345;
        let marker: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8 + 1).collect();
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("big.wim");
        {
            // Sparse: only the marker takes disk space.
            let mut f = std::fs::File::create(&path).expect("create");
            f.set_len(far + marker.len() as u64 + 4096).expect("size");
            f.seek(SeekFrom::Start(far)).expect("seek");
            f.write_all(&marker).expect("write");
        }
        let mut store =
            crate::ImageStore::new(dir.path(), crate::StoreOptions::default()).expect("store");
        let info =
            zpxe_engine::ImageCatalog::open(&mut store, "big.wim", NameFlavor::Http).expect("open");
        let version = store.version(info.id).expect("version");
        for kernel in [true, false] {
            let range = ByteRange::new(far - 3, far + marker.len() as u64);
            let (res, got) = send_and_read(Rc::clone(&version), b"H", range, kernel);
            assert_eq!(res.expect("send"), range.len());
            assert_eq!(got[..4], [b'H', 0, 0, 0], "kernel={kernel}");
            assert!(got[4..] == marker[..], "kernel={kernel}: marker differs");
        }
    }

    /// A file rewritten in place while a slow reader downloads it (issue 13): the reader gets
    /// a prefix of the old bytes and a reset, never a byte of the new file, with and without a
    /// lease. Before, `sendfile` left page-cache pages in the socket queues (and, on loopback,
    /// in the reader's receive queue) that showed the new bytes once the writer went ahead.
    /// (Windows refuses the writer while a version holds the file: store tests.)
    #[cfg(unix)]
    #[test]
    fn in_place_rewrite_reaches_no_reader() {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        use std::time::Duration;
        const LEN: usize = 24 << 20;
        let old: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let new = vec![0xEEu8; LEN];
        for (leases, kernel) in [(true, true), (false, true), (true, false), (false, false)] {
            let TestImage {
                dir: _dir,
                path,
                _store: store,
                version,
            } = TestImage::new(&old, leases, NameFlavor::Http);
            let writer_new = new.clone();
            let ev = EventLoop::new().expect("loop");
            let (res, got, end) = ev.block_on(async move {
                let server =
                    TcpServer::bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
                let addr = server.local_addr();
                let reader = std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    let mut got = vec![0u8; 1 << 20];
                    c.read_exact(&mut got).expect("first MiB");
                    // Another program writes the new bytes over the old in place; with a lease
                    // its open waits until the sender lets go of the version.
                    let writer = std::thread::spawn(move || {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .and_then(|f| f.write_all_at(&writer_new, 0))
                            .expect("rewrite");
                    });
                    let mut buf = vec![0u8; 64 << 10];
                    let end = loop {
                        match c.read(&mut buf) {
                            Ok(0) => break "EOF".to_owned(),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => break e.to_string(),
                        }
                        // Slowly, so most of what was queued is read after the rewrite.
                        std::thread::sleep(Duration::from_millis(5));
                    };
                    writer.join().expect("writer");
                    (got, end)
                });
                let (mut conn, _) = server.accept().await.expect("accept");
                conn.kernel_bodies = kernel;
                let res = conn
                    .send_head_and_image(Vec::new(), &version, ByteRange::new(0, LEN as u64))
                    .await;
                // The version goes (and with it the lease, letting the writer in) once its
                // transfer stopped, as in the server.
                drop(conn);
                drop(version);
                drop(store);
                let (got, end) = spawn(async move { reader.join() })
                    .await
                    .expect("task")
                    .expect("reader");
                (res, got, end)
            });
            assert!(
                matches!(res, Err(SendError::Image(VersionBroken::Modified))),
                "leases={leases} kernel={kernel}: {res:?}"
            );
            assert!(
                got.len() < LEN,
                "leases={leases} kernel={kernel}: a cut body ({end})"
            );
            if let Some(at) = (0..got.len()).find(|&i| got[i] != old[i]) {
                panic!(
                    "leases={leases} kernel={kernel}: {} bytes read ({end}); from offset {at} \
                     they differ from the old file ({} of them are the new file's)",
                    got.len(),
                    got[at..].iter().filter(|&&b| b == 0xEE).count()
                );
            }
        }
    }

    /// A peer that takes nothing fails the send at the send timeout (its buffers full), with
    /// the stall's error, on the kernel path and the generic one.
    #[test]
    fn a_send_to_a_peer_that_reads_nothing_fails_at_the_send_timeout() {
        use std::time::{Duration, Instant};
        let img = TestImage::new(&vec![5u8; 64 << 20], true, NameFlavor::Http);
        for kernel in [true, false] {
            let version = Rc::clone(&img.version);
            let ev = EventLoop::new().expect("loop");
            let (res, waited) = ev.block_on(async move {
                let server =
                    TcpServer::bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
                let addr = server.local_addr();
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let peer = std::thread::spawn(move || {
                    let c = std::net::TcpStream::connect(addr).expect("connect");
                    // Reads nothing until the sender gave up.
                    let _ = rx.recv_timeout(Duration::from_secs(20));
                    drop(c);
                });
                let (mut conn, _) = server.accept().await.expect("accept");
                conn.kernel_bodies = kernel;
                conn.set_send_timeout(Some(Duration::from_millis(300)));
                let t = Instant::now();
                let res = conn
                    .send_head_and_image(Vec::new(), &version, ByteRange::new(0, 64 << 20))
                    .await;
                let waited = t.elapsed();
                let _ = tx.send(());
                peer.join().expect("peer");
                (res, waited)
            });
            match res {
                Err(SendError::Io(e)) => assert!(is_stalled(&e), "kernel={kernel}: {e}"),
                other => panic!("kernel={kernel}: {other:?}"),
            }
            assert!(
                waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
                "kernel={kernel}: gave up after {waited:?}"
            );
        }
    }

    /// `TransmitFile` calls follow the client: at once the largest, a slow client's calls
    /// shrink to what it takes in a quarter of the timeout (never below the floor), and they
    /// grow back when it speeds up.
    #[test]
    fn call_lengths_follow_what_the_client_takes() {
        let t = Some(Duration::from_secs(30));
        assert_eq!(next_call_len(FIRST_CALL, Duration::ZERO, t), BODY_CHUNK);
        assert_eq!(
            next_call_len(FIRST_CALL, Duration::from_micros(50), t),
            BODY_CHUNK
        );
        // 64 KiB in 1 s: 64 KiB/s, 7.5 s worth = 480 KiB.
        assert_eq!(
            next_call_len(FIRST_CALL, Duration::from_secs(1), t),
            480 << 10
        );
        // 4 KiB/s: 30 KiB per quarter timeout.
        assert_eq!(next_call_len(4 << 10, Duration::from_secs(1), t), 30 << 10);
        assert_eq!(next_call_len(100, Duration::from_secs(10), t), MIN_CALL);
        assert_eq!(
            next_call_len(MIN_CALL, Duration::from_millis(1), t),
            BODY_CHUNK
        );
        assert_eq!(next_call_len(1, Duration::from_secs(100), None), BODY_CHUNK);
    }

    /// A peer that reads a trickle (512 bytes every 500 ms through the smallest receive
    /// buffer, so it acknowledges something in every window): with no rate set (any
    /// acknowledged byte is progress, the guard before `min_send_rate`) it holds the send for
    /// as long as it likes on Linux (on Windows, where only completed writes show progress,
    /// not); at 4 KiB/s it is cut within a window or two.
    #[test]
    fn a_send_to_a_peer_that_reads_a_trickle_fails_below_the_rate() {
        use std::io::Read;
        use std::time::{Duration, Instant};
        let img = TestImage::new(&vec![5u8; 64 << 20], true, NameFlavor::Http);
        for (kernel, rate) in [(true, 0), (true, 4096), (false, 4096)] {
            let version = Rc::clone(&img.version);
            let ev = EventLoop::new().expect("loop");
            let (res, waited) = ev.block_on(async move {
                let server =
                    TcpServer::bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
                let addr = server.local_addr();
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let peer = std::thread::spawn(move || {
                    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                    s.set_recv_buffer_size(1).expect("rcvbuf");
                    s.connect(&addr.into()).expect("connect");
                    let mut c: std::net::TcpStream = s.into();
                    let mut buf = [0u8; 512];
                    let t = Instant::now();
                    // Until the sender gave up, or for 5 s (then it hangs up).
                    while rx.recv_timeout(Duration::from_millis(500)).is_err()
                        && t.elapsed() < Duration::from_secs(5)
                    {
                        if matches!(c.read(&mut buf), Ok(0) | Err(_)) {
                            break;
                        }
                    }
                });
                let (mut conn, _) = server.accept().await.expect("accept");
                conn.kernel_bodies = kernel;
                conn.set_min_send_rate(rate);
                conn.set_send_timeout(Some(Duration::from_millis(1500)));
                let t = Instant::now();
                let res = conn
                    .send_head_and_image(Vec::new(), &version, ByteRange::new(0, 64 << 20))
                    .await;
                let waited = t.elapsed();
                let _ = tx.send(());
                drop(conn);
                peer.join().expect("peer");
                (res, waited)
            });
            if rate == 0 && cfg!(not(target_os = "linux")) {
                // Without a count of acknowledged bytes (Windows) progress is a completed
                // write, and a write is at least 16 KiB (`MIN_CALL`): a peer taking 1 KiB/s
                // completes none in the 1.5 s window, so even rate 0 calls it stalled.
                match res {
                    Err(SendError::Io(e)) => assert!(is_stalled(&e), "rate 0: {e}"),
                    other => panic!("rate 0: {other:?}"),
                }
                assert!(waited < Duration::from_secs(5), "rate 0: {waited:?}");
                continue;
            }
            if rate == 0 {
                // The peer hung up after 5 s; the guard never called it stalled.
                match res {
                    Err(SendError::Io(e)) => assert!(!is_stalled(&e), "rate 0: stalled: {e}"),
                    other => panic!("rate 0: {other:?}"),
                }
                assert!(waited >= Duration::from_secs(5), "rate 0: {waited:?}");
                continue;
            }
            match res {
                Err(SendError::Io(e)) => assert!(is_stalled(&e), "kernel={kernel}: {e}"),
                other => panic!("kernel={kernel}: {other:?}"),
            }
            assert!(
                waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
                "kernel={kernel}: gave up after {waited:?}"
            );
        }
    }

    /// (Windows refuses the truncation itself while a version holds the file: store tests.)
    #[cfg(unix)]
    #[test]
    fn truncated_file_stops_the_body_with_an_error_not_wrong_bytes() {
        let img = TestImage::new(&vec![9u8; 8 << 20], false, NameFlavor::Http);
        img.truncate(1 << 20).expect("truncate");
        for kernel in [true, false] {
            let (res, got) = send_and_read(
                Rc::clone(&img.version),
                b"",
                ByteRange::new(0, 8 << 20),
                kernel,
            );
            assert!(
                matches!(res, Err(SendError::Image(VersionBroken::Modified))),
                "kernel={kernel}: {res:?}"
            );
            assert!(got.len() < 8 << 20, "a short body, never a padded one");
            assert!(got.iter().all(|&b| b == 9), "only the file's bytes");
        }
    }

    /// (Windows may refuse the rename while a version holds the file: store tests.)
    #[cfg(unix)]
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
