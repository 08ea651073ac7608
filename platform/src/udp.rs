//! UDP endpoints: receive with the destination address (`IP_PKTINFO`), and send what a machine
//! polled ([`UdpEndpoint::send_transmit`]): from a chosen source address and interface, either
//! one datagram from the caller's buffer or a run of image-backed datagrams in one call (UDP GSO)
//! or one submission (batched sends), without copying image bytes in user space. Header and
//! datagram bytes are copied into send buffers from a per-thread pool (each event loop has its
//! own thread), so a send allocates no buffer of zpxe's.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;

use compio::BufResult;
use compio::buf::IoVectoredBuf;
use compio::io::ancillary::{AncillaryBuf, AncillaryData, AncillaryIter, CodecError};
use compio::net::UdpSocket;
use futures_util::future::join_all;
use socket2::{Domain, Protocol, Socket, Type};
use zpxe_engine::{ByteRange, DatagramMeta, ImageId, Payload, Transmit};

use crate::store::{ImageStore, Version, VersionBroken};

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// The kernel's limit on segments in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
const CONTROL_LEN: usize = 128;
/// Send buffers an event loop keeps for reuse: one per send in flight is enough (TFTP has one
/// per transfer socket sending at once); more come and go when a burst needs them.
const POOL_BUFFERS: usize = 64;
/// A send buffer larger than this (a datagram near the UDP maximum) is not kept.
const POOL_KEEP_CAPACITY: usize = 16 * 1024;

/// How to set up a UDP socket.
#[derive(Debug, Clone, Default)]
pub struct UdpOptions {
    /// Learn each datagram's destination address and interface, and choose the source of replies.
    pub pktinfo: bool,
    /// Allow sending to broadcast addresses.
    pub broadcast: bool,
    /// Share the port between event loops (unicast only: every such socket sees each broadcast).
    pub reuse_port: bool,
    /// Bind to one network device (Linux `SO_BINDTODEVICE`).
    pub device: Option<String>,
    /// Socket buffer sizes in bytes, when the default is too small for a storm.
    pub recv_buffer: Option<usize>,
    pub send_buffer: Option<usize>,
    /// Let the kernel hand over a run of same-sized datagrams from one sender in one receive
    /// (Linux `UDP_GRO`); [`Received::datagrams`] splits it again. Receive buffers must then
    /// hold 64 KiB. Where the kernel lacks it, datagrams simply arrive one by one.
    pub gro: bool,
}

/// A datagram received, or with [`UdpOptions::gro`] a run of datagrams from one sender.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub meta: DatagramMeta,
    /// The size of every datagram in the run but the last, when the kernel coalesced several.
    pub segment: Option<usize>,
}

impl Received {
    /// The byte ranges of the datagrams in the receive buffer, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let len = self.len;
        let step = self.segment.unwrap_or(len).max(1);
        // At least one: a zero-length datagram is a datagram.
        (0..len.div_ceil(step).max(1)).map(move |i| i * step..((i + 1) * step).min(len))
    }
}

/// Where a datagram goes and where it leaves from: a [`Transmit`] without its payload.
#[derive(Debug, Clone, Copy)]
struct Route {
    destination: SocketAddr,
    source_ip: Option<IpAddr>,
    ifindex: Option<u32>,
}

impl Route {
    fn of(t: &Transmit) -> Self {
        Self {
            destination: t.destination,
            source_ip: t.source_ip,
            ifindex: t.ifindex,
        }
    }
}

/// Where [`UdpEndpoint::send_transmit`] finds the versions a [`Payload::Segments`] names.
pub trait Images {
    /// The version behind `id`, while it is held.
    fn version(&self, id: ImageId) -> Option<Rc<Version>>;
}

impl Images for ImageStore {
    fn version(&self, id: ImageId) -> Option<Rc<Version>> {
        ImageStore::version(self, id)
    }
}

/// An event loop's store, borrowed only to look the version up (never across the send). A
/// store borrowed mutably elsewhere at that moment has no version to give: the send fails with
/// [`VersionBroken::Gone`] rather than panicking.
impl<T: Images> Images for RefCell<T> {
    fn version(&self, id: ImageId) -> Option<Rc<Version>> {
        self.try_borrow().ok()?.version(id)
    }
}

/// For senders whose machines never name image bytes (DHCP, clients): every
/// [`Payload::Segments`] fails with [`VersionBroken::Gone`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImages;

impl Images for NoImages {
    fn version(&self, _id: ImageId) -> Option<Rc<Version>> {
        None
    }
}

/// Why a send of image bytes (or a transmit) could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("image changed on disk: {0}")]
    Image(#[from] VersionBroken),
    #[error("send failed: {0}")]
    Io(#[from] io::Error),
}

/// A transmit that does not match the buffer it came with (a machine's bug, never a peer's):
/// an `InvalidInput` error that says what did not fit, and nothing is sent.
fn malformed(what: &'static str) -> SendError {
    SendError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("malformed transmit: {what}"),
    ))
}

impl SendError {
    /// A failed send of mapped bytes: `EFAULT` means the kernel could not read the mapping, so
    /// the file shrank under it.
    pub(crate) fn of_mapped_send(e: io::Error) -> Self {
        if e.raw_os_error() == Some(crate::EFAULT) {
            Self::Image(VersionBroken::Modified)
        } else {
            Self::Io(e)
        }
    }
}

/// A run of datagrams that share a header length and slice one image range.
#[derive(Debug, Clone, Copy)]
struct SegmentRun {
    header_len: usize,
    count: usize,
    segment: usize,
    range: ByteRange,
}

thread_local! {
    /// Send buffers back from the kernel, for the next send on this thread's event loop. Each
    /// is held by one `Rc` (the batches of a send share it while the kernel reads it).
    static POOL: RefCell<Vec<Rc<Vec<u8>>>> = const { RefCell::new(Vec::new()) };
}

/// A send buffer holding `bytes`: a pooled one when the pool has one, else a new one.
fn pooled(bytes: &[u8]) -> Rc<Vec<u8>> {
    let spare = POOL.with(|p| p.borrow_mut().pop());
    if let Some(mut rc) = spare
        && let Some(v) = Rc::get_mut(&mut rc)
    {
        v.clear();
        v.extend_from_slice(bytes);
        return rc;
    }
    Rc::new(bytes.to_vec())
}

/// Returns a send buffer to the pool once nothing else holds it. A send cancelled while the
/// kernel still reads the buffer leaves a holder in the driver: then the buffer is simply
/// dropped when that one lets go.
fn unpool(rc: Rc<Vec<u8>>) {
    if Rc::strong_count(&rc) == 1 && Rc::weak_count(&rc) == 0 && rc.capacity() <= POOL_KEEP_CAPACITY
    {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_BUFFERS {
                p.push(rc);
            }
        });
    }
}

/// A bound UDP socket on the current event loop.
#[derive(Debug)]
pub struct UdpEndpoint {
    socket: UdpSocket,
    local: SocketAddr,
    pktinfo: bool,
    gro: bool,
    gso: Cell<bool>,
}

impl UdpEndpoint {
    /// Binds a socket. Errors are plain `io::Error`s; see [`crate::bind::BindError::explain`].
    pub fn bind(addr: SocketAddr, options: &UdpOptions) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if options.broadcast {
            socket.set_broadcast(true)?;
        }
        #[cfg(unix)]
        if options.reuse_port {
            socket.set_reuse_port(true)?;
        }
        #[cfg(windows)]
        {
            // No other socket may take the port (see `TcpServer::bind`), and a client's ICMP
            // port-unreachable must not fail our next receive.
            crate::windows::exclusive_address_use(&socket)?;
            crate::windows::udp_connreset_off(&socket)?;
        }
        #[cfg(target_os = "linux")]
        if let Some(dev) = &options.device {
            socket.bind_device(Some(dev.as_bytes()))?;
        }
        if let Some(n) = options.recv_buffer {
            // Best effort: the kernel caps it at net.core.rmem_max.
            let _ = socket.set_recv_buffer_size(n);
        }
        if let Some(n) = options.send_buffer {
            let _ = socket.set_send_buffer_size(n);
        }
        let pktinfo = options.pktinfo && addr.is_ipv4();
        if pktinfo {
            sys::enable_pktinfo(&socket)?;
        }
        // Best effort: without GRO every datagram arrives on its own, which is still correct.
        let gro = options.gro && sys::enable_gro(&socket).is_ok();
        socket.bind(&addr.into())?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound socket has no inet address"))?;
        let socket = UdpSocket::from_std(socket.into())?;
        Ok(Self {
            socket,
            local,
            pktinfo,
            gro,
            gso: Cell::new(sys::GSO_AVAILABLE),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether runs are sent with UDP segmentation offload.
    pub fn gso(&self) -> bool {
        self.gso.get()
    }

    /// Turns GSO off (for comparisons and for paths that mangle it).
    pub fn disable_gso(&self) {
        self.gso.set(false);
    }

    /// Receives one datagram into `buf` (filled from its start, up to its capacity), or with
    /// [`UdpOptions::gro`] possibly a run of them (see [`Received::datagrams`]).
    pub async fn recv(&self, mut buf: Vec<u8>) -> (io::Result<Received>, Vec<u8>) {
        buf.clear();
        let (res, buf) = self.recv_inner(buf).await;
        if res.is_ok() {
            crate::runtime::note_work();
        }
        (res, buf)
    }

    async fn recv_inner(&self, buf: Vec<u8>) -> (io::Result<Received>, Vec<u8>) {
        if !self.pktinfo && !self.gro {
            let BufResult(res, buf) = self.socket.recv_from(buf).await;
            let res = res.map(|(len, remote)| Received {
                len,
                meta: DatagramMeta::from_remote(unmap(remote)),
                segment: None,
            });
            return (res, buf);
        }
        let control = AncillaryBuf::<CONTROL_LEN>::new();
        let BufResult(res, (buf, control)) = self.socket.recv_msg(buf, control).await;
        let res = res.map(|(len, clen, remote, _flags)| {
            let mut meta = DatagramMeta::from_remote(unmap(remote));
            let mut segment = None;
            // A datagram may come without any control message (GRO only adds one to runs), and
            // the iterator refuses (panics on) a buffer shorter than one header.
            let control = &control[..clen.min(control.len())];
            let messages = (!control.is_empty()).then(|| {
                // SAFETY: the kernel wrote `clen` bytes of whole control messages.
                unsafe { AncillaryIter::new(control) }
            });
            for msg in messages.into_iter().flatten() {
                if let Some((ip, ifindex)) = sys::parse_pktinfo(&msg) {
                    meta.local_ip = Some(IpAddr::V4(ip));
                    meta.ifindex = ifindex;
                } else if let Some(size) = sys::parse_gro(&msg) {
                    segment = Some(size).filter(|&s| s > 0 && s < len);
                }
            }
            Received { len, meta, segment }
        });
        (res, buf)
    }

    /// Sends what a machine polled: `buf` is the buffer it wrote into. A [`Payload::Bytes`] is
    /// one datagram of `buf`'s first `len` bytes; a [`Payload::Segments`] is `count` datagrams,
    /// each a header from `buf` followed by the next slice of the image range, the bytes going
    /// from the mapping to the kernel (with GSO up to 64 datagrams per call). The version is
    /// checked before the send (see [`Version::check`]). Returns the datagrams sent.
    pub async fn send_transmit(
        &self,
        t: &Transmit,
        buf: &[u8],
        images: &impl Images,
    ) -> Result<usize, SendError> {
        let route = Route::of(t);
        match t.payload {
            Payload::Bytes { len } => {
                let bytes = buf
                    .get(..len)
                    .ok_or_else(|| malformed("datagram longer than its buffer"))?;
                let bytes = pooled(bytes);
                let batch = Batch::bytes(&bytes);
                let res = self.send_batch_plain(route, batch).await;
                unpool(bytes);
                res.map(|_| 1).map_err(SendError::Io)
            }
            Payload::Segments {
                header_len,
                count,
                segment,
                image,
                range,
            } => {
                let run = SegmentRun {
                    header_len: usize::from(header_len),
                    count: usize::from(count),
                    segment: segment as usize,
                    range,
                };
                let headers = buf
                    .get(..run.header_len * run.count)
                    .ok_or_else(|| malformed("headers longer than their buffer"))?;
                let version = images.version(image).ok_or(VersionBroken::Gone)?;
                version.check()?;
                let headers = pooled(headers);
                let res = self
                    .send_run_unchecked(route, &headers, &version, run)
                    .await;
                unpool(headers);
                res
            }
            _ => Err(malformed("a payload kind this platform does not know")),
        }
    }

    /// Sends `run.count` datagrams: datagram `i` is `headers[i*hl..(i+1)*hl]` followed by the next
    /// `run.segment` bytes of `run.range` of `image` (the last takes what remains), without
    /// checking the version first: the kernel alone guards the mapping.
    async fn send_run_unchecked(
        &self,
        route: Route,
        headers: &Rc<Vec<u8>>,
        image: &Rc<Version>,
        run: SegmentRun,
    ) -> Result<usize, SendError> {
        if run.count == 0 || headers.len() < run.header_len * run.count {
            return Ok(0);
        }
        let seg_len = run.header_len + run.segment;
        let mut per_call = if self.gso.get() && seg_len * 2 <= MAX_UDP_PAYLOAD {
            (MAX_UDP_PAYLOAD / seg_len).min(MAX_GSO_SEGMENTS)
        } else {
            1
        };
        let mut sent = 0;
        while sent < run.count {
            let res = if per_call > 1 && run.count - sent > 1 {
                let n = per_call.min(run.count - sent);
                let batch = Batch::run(headers, image, run, sent, n);
                self.send_gso(route, batch, seg_len as u16).await.map(|_| n)
            } else {
                // Without GSO, still one submission for the whole run: the sends go to the
                // kernel together and complete together.
                let n = MAX_GSO_SEGMENTS.min(run.count - sent);
                let sends = (sent..sent + n)
                    .map(|i| self.send_batch_plain(route, Batch::run(headers, image, run, i, 1)));
                join_all(sends)
                    .await
                    .into_iter()
                    .find(Result::is_err)
                    .unwrap_or(Ok(0))
                    .map(|_| n)
            };
            match res {
                Ok(n) => sent += n,
                Err(e) if per_call > 1 && gso_unsupported(&e) => {
                    tracing::info!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    self.gso.set(false);
                    per_call = 1;
                }
                Err(e) => return Err(SendError::of_mapped_send(e)),
            }
        }
        Ok(sent)
    }

    async fn send_gso(&self, route: Route, batch: Batch, segment_size: u16) -> io::Result<usize> {
        let control = self
            .control(route, Some(segment_size))
            .ok_or_else(|| io::Error::from_raw_os_error(sys::EINVAL))?;
        let BufResult(r, _) = self
            .socket
            .send_msg_vectored(batch, control, route.destination)
            .await;
        r
    }

    async fn send_batch_plain(&self, route: Route, batch: Batch) -> io::Result<usize> {
        match self.control(route, None) {
            Some(control) => {
                let BufResult(r, _) = self
                    .socket
                    .send_msg_vectored(batch, control, route.destination)
                    .await;
                r
            }
            None => {
                let BufResult(r, _) = self.socket.send_to_vectored(batch, route.destination).await;
                r
            }
        }
    }

    fn control(&self, route: Route, gso: Option<u16>) -> Option<AncillaryBuf<CONTROL_LEN>> {
        let pktinfo = self.pktinfo && (route.source_ip.is_some() || route.ifindex.is_some());
        if !pktinfo && gso.is_none() {
            return None;
        }
        let mut buf = AncillaryBuf::<CONTROL_LEN>::new();
        let mut builder = buf.builder();
        if pktinfo {
            let source = match route.source_ip {
                Some(IpAddr::V4(v4)) => v4,
                _ => Ipv4Addr::UNSPECIFIED,
            };
            sys::push_pktinfo(&mut builder, source, route.ifindex)?;
        }
        if let Some(size) = gso {
            builder
                .push(sys::SOL_UDP, sys::UDP_SEGMENT, &GsoSize(size))
                .ok()?;
        }
        Some(buf)
    }
}

/// The `UDP_GRO` control message of a coalesced receive: the size of every segment but the last.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct GroSize(i32);

impl AncillaryData for GroSize {
    const SIZE: usize = 4;

    fn encode(&self, buffer: &mut [MaybeUninit<u8>]) -> Result<(), CodecError> {
        let bytes = self.0.to_ne_bytes();
        if buffer.len() < bytes.len() {
            return Err(CodecError::BufferTooSmall);
        }
        for (slot, b) in buffer.iter_mut().zip(bytes) {
            slot.write(b);
        }
        Ok(())
    }

    fn decode(buffer: &[u8]) -> Result<Self, CodecError> {
        match buffer {
            [a, b, c, d, ..] => Ok(GroSize(i32::from_ne_bytes([*a, *b, *c, *d]))),
            _ => Err(CodecError::BufferTooSmall),
        }
    }
}

/// The `UDP_SEGMENT` control message: the size of every segment but the last.
struct GsoSize(u16);

impl AncillaryData for GsoSize {
    const SIZE: usize = 2;

    fn encode(&self, buffer: &mut [MaybeUninit<u8>]) -> Result<(), CodecError> {
        let bytes = self.0.to_ne_bytes();
        if buffer.len() < 2 {
            return Err(CodecError::BufferTooSmall);
        }
        buffer[0].write(bytes[0]);
        buffer[1].write(bytes[1]);
        Ok(())
    }

    fn decode(buffer: &[u8]) -> Result<Self, CodecError> {
        match buffer {
            [a, b, ..] => Ok(GsoSize(u16::from_ne_bytes([*a, *b]))),
            _ => Err(CodecError::BufferTooSmall),
        }
    }
}

/// The iovec list of one send: header, image slice, header, image slice, ... (or one datagram's
/// bytes alone). It owns what it points at (the pooled headers and the version) for as long as
/// the kernel may read it.
struct Batch {
    headers: Rc<Vec<u8>>,
    image: Option<Rc<Version>>,
    header_len: usize,
    segment: usize,
    first: usize,
    count: usize,
    range: ByteRange,
}

impl Batch {
    /// Datagrams `first..first + count` of `run`.
    fn run(
        headers: &Rc<Vec<u8>>,
        image: &Rc<Version>,
        run: SegmentRun,
        first: usize,
        count: usize,
    ) -> Self {
        Self {
            headers: Rc::clone(headers),
            image: Some(Rc::clone(image)),
            header_len: run.header_len,
            segment: run.segment,
            first,
            count,
            range: run.range,
        }
    }

    /// One datagram: all of `bytes`.
    fn bytes(bytes: &Rc<Vec<u8>>) -> Self {
        Self {
            headers: Rc::clone(bytes),
            image: None,
            header_len: bytes.len(),
            segment: 0,
            first: 0,
            count: 1,
            range: ByteRange::new(0, 0),
        }
    }

    fn data(&self, i: usize) -> &[u8] {
        let Some(image) = &self.image else {
            return &[];
        };
        let start = self.range.start + (i * self.segment) as u64;
        let end = (start + self.segment as u64).min(self.range.end);
        if start >= end {
            return &[];
        }
        image
            .kernel_slice(ByteRange::new(start, end))
            .unwrap_or(&[])
    }
}

impl IoVectoredBuf for Batch {
    fn iter_slice(&self) -> impl Iterator<Item = &[u8]> {
        (self.first..self.first + self.count).flat_map(move |i| {
            let h = self
                .headers
                .get(i * self.header_len..(i + 1) * self.header_len)
                .unwrap_or(&[]);
            [h, self.data(i)]
        })
    }
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if sys::GSO_REFUSAL_CODES.contains(&code)
    )
}

#[cfg(target_os = "linux")]
mod sys {
    use compio::io::ancillary::{AncillaryBuilder, AncillaryRef};
    use socket2::Socket;
    use std::io;
    use std::net::Ipv4Addr;
    use std::os::fd::AsRawFd;

    pub(super) const UDP_SEGMENT: i32 = 103;
    pub(super) const SOL_UDP: i32 = libc::SOL_UDP;
    pub(super) const EINVAL: i32 = libc::EINVAL;

    /// The local address a datagram was sent to and the interface it came in on.
    pub(super) fn parse_pktinfo(msg: &AncillaryRef<'_>) -> Option<(Ipv4Addr, Option<u32>)> {
        if msg.level() != libc::IPPROTO_IP || msg.ty() != libc::IP_PKTINFO {
            return None;
        }
        let info = msg.data::<libc::in_pktinfo>().ok()?;
        let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
        let ifindex = u32::try_from(info.ipi_ifindex).ok().filter(|&i| i > 0);
        Some((ip, ifindex))
    }

    pub(super) fn push_pktinfo<B: compio::buf::IoBufMut + ?Sized>(
        builder: &mut AncillaryBuilder<'_, B>,
        source: Ipv4Addr,
        ifindex: Option<u32>,
    ) -> Option<()> {
        let info = libc::in_pktinfo {
            ipi_ifindex: ifindex.and_then(|i| i32::try_from(i).ok()).unwrap_or(0),
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(source).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        builder.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info).ok()
    }
    /// `UDP_GRO` (linux/udp.h): as a socket option it turns receive coalescing on; as a control
    /// message it carries the segment size of a coalesced receive.
    const UDP_GRO: i32 = 104;

    pub(super) fn parse_gro(msg: &AncillaryRef<'_>) -> Option<usize> {
        if msg.level() != libc::SOL_UDP || msg.ty() != UDP_GRO {
            return None;
        }
        msg.data::<super::GroSize>()
            .ok()
            .and_then(|n| usize::try_from(n.0).ok())
    }

    pub(super) fn enable_gro(socket: &Socket) -> io::Result<()> {
        set_int(socket, libc::SOL_UDP, UDP_GRO, 1)
    }

    fn set_int(socket: &Socket, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) const GSO_AVAILABLE: bool = true;
    /// What the kernel answers when a device or kernel cannot segment.
    pub(super) const GSO_REFUSAL_CODES: &[i32] = &[libc::EIO, libc::EINVAL, libc::ENOPROTOOPT];

    pub(super) fn enable_pktinfo(socket: &Socket) -> io::Result<()> {
        set_int(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Where the kernel has no UDP segmentation offload nor receive coalescing (as zpxe uses them):
/// every datagram is sent and received on its own.
#[cfg(not(target_os = "linux"))]
mod no_offload {
    use compio::io::ancillary::AncillaryRef;
    use socket2::Socket;
    use std::io;

    /// Placeholders for the control message [`super::GsoSize`] would carry; never sent here.
    pub(crate) const UDP_SEGMENT: i32 = 103;
    pub(crate) const SOL_UDP: i32 = 17;
    pub(crate) const GSO_AVAILABLE: bool = false;
    pub(crate) const GSO_REFUSAL_CODES: &[i32] = &[];

    pub(crate) fn parse_gro(_msg: &AncillaryRef<'_>) -> Option<usize> {
        None
    }

    pub(crate) fn enable_gro(_socket: &Socket) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Windows: `IP_PKTINFO` through `WSARecvMsg`/`WSASendMsg` (an `IN_PKTINFO`: the address a
/// datagram was sent to, or the source to send from, and the interface); no GSO or GRO here
/// (Windows' USO is not used yet).
#[cfg(windows)]
mod sys {
    use compio::io::ancillary::{AncillaryBuilder, AncillaryRef};
    use socket2::Socket;
    use std::io;
    use std::net::Ipv4Addr;
    use windows_sys::Win32::Networking::WinSock::{
        IN_ADDR, IN_ADDR_0, IN_PKTINFO, IP_PKTINFO, IPPROTO_IP,
    };

    /// WSAEINVAL.
    pub(super) const EINVAL: i32 = 10022;

    pub(super) fn parse_pktinfo(msg: &AncillaryRef<'_>) -> Option<(Ipv4Addr, Option<u32>)> {
        if msg.level() != IPPROTO_IP || msg.ty() != IP_PKTINFO {
            return None;
        }
        let info = msg.data::<IN_PKTINFO>().ok()?;
        // SAFETY: every field of the IN_ADDR union is the same four bytes.
        let addr = unsafe { info.ipi_addr.S_un.S_addr };
        let ifindex = Some(info.ipi_ifindex).filter(|&i| i > 0);
        Some((Ipv4Addr::from(u32::from_be(addr)), ifindex))
    }

    pub(super) fn push_pktinfo<B: compio::buf::IoBufMut + ?Sized>(
        builder: &mut AncillaryBuilder<'_, B>,
        source: Ipv4Addr,
        ifindex: Option<u32>,
    ) -> Option<()> {
        let info = IN_PKTINFO {
            ipi_addr: IN_ADDR {
                S_un: IN_ADDR_0 {
                    S_addr: u32::from(source).to_be(),
                },
            },
            ipi_ifindex: ifindex.unwrap_or(0),
        };
        builder.push(IPPROTO_IP, IP_PKTINFO, &info).ok()
    }

    pub(super) fn enable_pktinfo(socket: &Socket) -> io::Result<()> {
        crate::windows::set_int(socket, IPPROTO_IP, IP_PKTINFO, 1)
    }

    pub(super) use super::no_offload::*;
}

#[cfg(not(any(target_os = "linux", windows)))]
mod sys {
    use compio::io::ancillary::{AncillaryBuilder, AncillaryRef};
    use socket2::Socket;
    use std::io;
    use std::net::Ipv4Addr;

    pub(super) const EINVAL: i32 = 22;

    // Destination-address reporting is not done here: replies leave from the address the OS
    // picks.
    pub(super) fn parse_pktinfo(_msg: &AncillaryRef<'_>) -> Option<(Ipv4Addr, Option<u32>)> {
        None
    }

    pub(super) fn push_pktinfo<B: compio::buf::IoBufMut + ?Sized>(
        _builder: &mut AncillaryBuilder<'_, B>,
        _source: Ipv4Addr,
        _ifindex: Option<u32>,
    ) -> Option<()> {
        Some(())
    }
    pub(super) use super::no_offload::*;

    pub(super) fn enable_pktinfo(_socket: &Socket) -> io::Result<()> {
        Ok(())
    }
}

/// Tests that hold on every system (the Windows build runs them under Wine).
#[cfg(test)]
mod portable_tests {
    use super::*;
    use crate::runtime::EventLoop;

    /// A socket on the wildcard address learns which of its addresses each datagram was sent
    /// to: proxyDHCP names that address in its offers and answers from it.
    #[test]
    fn pktinfo_reports_the_address_a_datagram_was_sent_to() {
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async {
            let options = UdpOptions {
                pktinfo: true,
                ..UdpOptions::default()
            };
            let ep = UdpEndpoint::bind("0.0.0.0:0".parse().expect("addr"), &options).expect("bind");
            let port = ep.local_addr().port();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            for to in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)] {
                client.send_to(b"ping", (to, port)).expect("send");
                let (res, buf) = ep.recv(Vec::with_capacity(64)).await;
                let got = res.expect("recv");
                assert_eq!(&buf[..got.len], b"ping");
                assert_eq!(got.meta.local_ip, Some(IpAddr::V4(to)), "sent to {to}");
                let reply = Transmit {
                    destination: got.meta.remote,
                    source_ip: got.meta.local_ip,
                    ifindex: got.meta.ifindex,
                    payload: Payload::Bytes { len: 4 },
                };
                let sent = ep.send_transmit(&reply, b"pong", &NoImages).await;
                assert_eq!(sent.expect("reply"), 1);
                let mut back = [0u8; 16];
                let (n, from) = client.recv_from(&mut back).expect("reply arrives");
                assert_eq!(&back[..n], b"pong");
                // Wine ignores control data on WSASendMsg: there the OS picks the source.
                if cfg!(target_os = "linux") {
                    assert_eq!(from.ip(), IpAddr::V4(to), "the reply leaves from {to}");
                }
            }
        });
    }

    /// The next datagram `rx` receives, exactly as it arrived.
    fn next_datagram(rx: &std::net::UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let (n, _) = rx.recv_from(&mut buf).expect("a datagram arrives");
        buf.truncate(n);
        buf
    }

    fn segments(count: u16, segment: u32, image: ImageId, range: ByteRange) -> Payload {
        Payload::Segments {
            header_len: 4,
            count,
            segment,
            image,
            range,
        }
    }

    /// Both payload kinds arrive as the engine describes them, datagram by datagram and byte
    /// by byte: one datagram of the buffer's first `len` bytes; headers from the buffer each
    /// followed by the next slice of the image range, the last with what remains (or none).
    #[test]
    fn send_transmit_sends_both_payload_kinds_byte_exact() {
        use crate::store::TestImage;
        use zpxe_engine::path::NameFlavor;
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + i / 253) as u8).collect();
        let img = TestImage::new(&data, false, NameFlavor::Tftp);
        let id = img.version.id();
        let ev = EventLoop::new().expect("loop");
        for gso in [true, false] {
            ev.block_on(async {
                let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("rx");
                rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("timeout");
                let options = UdpOptions {
                    pktinfo: true,
                    ..UdpOptions::default()
                };
                let tx = UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &options)
                    .expect("tx");
                if !gso {
                    tx.disable_gso();
                }
                let to = |payload| Transmit {
                    destination: rx.local_addr().expect("rx addr"),
                    source_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    ifindex: None,
                    payload,
                };
                // Bytes: only the first `len` of the buffer.
                let buf = b"one datagram|not this";
                let sent = tx
                    .send_transmit(&to(Payload::Bytes { len: 12 }), buf, &NoImages)
                    .await;
                assert_eq!(sent.expect("bytes"), 1);
                assert_eq!(next_datagram(&rx), b"one datagram");

                // Segments: 4.5 segments of image bytes in five datagrams.
                let headers: Vec<u8> = (0..5u32).flat_map(|i| (0xa0 + i).to_be_bytes()).collect();
                let range = ByteRange::new(2000, 6500);
                let t = to(segments(5, 1000, id, range));
                let mut buf = headers.clone();
                buf.extend_from_slice(b"trailing bytes no datagram takes");
                let sent = tx.send_transmit(&t, &buf, &img._store).await;
                assert_eq!(sent.expect("segments"), 5);
                for i in 0..5usize {
                    let mut want = headers[i * 4..i * 4 + 4].to_vec();
                    want.extend_from_slice(&data[2000 + i * 1000..(3000 + i * 1000).min(6500)]);
                    assert_eq!(next_datagram(&rx), want, "datagram {i} (gso {gso})");
                }

                // A range that ends on a segment boundary: the last datagram is its header.
                let t = to(segments(3, 1000, id, ByteRange::new(0, 2000)));
                let sent = tx.send_transmit(&t, &headers, &img._store).await;
                assert_eq!(sent.expect("segments"), 3);
                assert_eq!(next_datagram(&rx), [&headers[..4], &data[..1000]].concat());
                assert_eq!(next_datagram(&rx), [&headers[4..8], &data[1000..2000]].concat());
                assert_eq!(next_datagram(&rx), &headers[8..12]);

                // What does not add up is refused with an error, and nothing leaves.
                let res = tx
                    .send_transmit(&to(Payload::Bytes { len: 64 }), b"short", &NoImages)
                    .await;
                assert!(
                    matches!(&res, Err(SendError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput),
                    "{res:?}"
                );
                let res = tx.send_transmit(&t, &headers[..8], &img._store).await;
                assert!(
                    matches!(&res, Err(SendError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput),
                    "{res:?}"
                );
                let res = tx.send_transmit(&t, &headers, &NoImages).await;
                assert!(
                    matches!(res, Err(SendError::Image(VersionBroken::Gone))),
                    "{res:?}"
                );
                rx.set_nonblocking(true).expect("nonblocking");
                let mut probe = [0u8; 16];
                assert!(rx.recv_from(&mut probe).is_err(), "a refused transmit sent nothing");
            });
        }
    }

    /// Sends copy into one pooled buffer, again and again: a send allocates no buffer.
    #[test]
    fn sends_reuse_a_pooled_buffer() {
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("rx");
            rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let tx =
                UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &UdpOptions::default())
                    .expect("tx");
            let t = Transmit {
                destination: rx.local_addr().expect("rx addr"),
                source_ip: None,
                ifindex: None,
                payload: Payload::Bytes { len: 300 },
            };
            let pool = || POOL.with(|p| p.borrow().iter().map(|b| b.as_ptr()).collect::<Vec<_>>());
            let mut first = None;
            for i in 0..50u8 {
                let buf = [i; 300];
                assert_eq!(
                    tx.send_transmit(&t, &buf, &NoImages).await.expect("send"),
                    1
                );
                assert_eq!(next_datagram(&rx), buf);
                let held = pool();
                assert_eq!(held.len(), 1, "the buffer came back after send {i}");
                assert_eq!(
                    *first.get_or_insert(held[0]),
                    held[0],
                    "and is the same one"
                );
            }
        });
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::runtime::EventLoop;
    use crate::store::TestImage;
    use zpxe_engine::path::NameFlavor;

    fn run_and_collect(gso: bool, len: usize, segment: usize) {
        run_and_collect_with(gso, false, len, segment);
    }

    fn run_and_collect_with(gso: bool, gro: bool, len: usize, segment: usize) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let img = TestImage::new(&data, true, NameFlavor::Tftp);
        let version = &img.version;
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async {
            let opts = UdpOptions {
                pktinfo: true,
                recv_buffer: Some(8 << 20),
                ..UdpOptions::default()
            };
            let rx_opts = UdpOptions {
                gro,
                ..opts.clone()
            };
            let rx = UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &rx_opts).expect("rx");
            let tx = UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &opts).expect("tx");
            assert_eq!(rx.gro, gro, "this kernel has UDP_GRO");
            if !gso {
                tx.disable_gso();
            }
            let count = len.div_ceil(segment) + usize::from(len.is_multiple_of(segment));
            let headers: Vec<u8> = (0..count).flat_map(|i| (i as u32).to_be_bytes()).collect();
            let mut sent = 0;
            // The engine asks for at most u16::MAX datagrams per transmit; send the run in
            // transmits of 100.
            for first in (0..count).step_by(100) {
                let n = 100.min(count - first);
                let start = (first * segment) as u64;
                let t = Transmit {
                    destination: rx.local_addr(),
                    source_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    ifindex: None,
                    payload: Payload::Segments {
                        header_len: 4,
                        count: n as u16,
                        segment: segment as u32,
                        image: version.id(),
                        range: ByteRange::new(start, ((first + n) * segment).min(len) as u64),
                    },
                };
                let res = tx
                    .send_transmit(&t, &headers[first * 4..], &img._store)
                    .await;
                sent += res.expect("send");
            }
            assert_eq!(sent, count);
            assert_eq!(tx.gso(), gso, "GSO used as asked, no silent fallback");
            let mut got = vec![0u8; len];
            let mut buf = Vec::with_capacity(70_000);
            let (mut seen, mut receives) = (0, 0);
            while seen < count {
                let (r, b) = rx.recv(buf).await;
                buf = b;
                let r = r.expect("recv");
                receives += 1;
                assert_eq!(r.meta.local_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                assert_eq!(r.meta.remote, tx.local_addr());
                for d in r.datagrams() {
                    let dgram = &buf[d];
                    let i = u32::from_be_bytes(dgram[..4].try_into().expect("hdr")) as usize;
                    let body = &dgram[4..];
                    assert!(body.len() <= segment);
                    got[i * segment..i * segment + body.len()].copy_from_slice(body);
                    seen += 1;
                }
            }
            assert_eq!(seen, count, "every datagram once");
            assert!(got == data, "bytes differ (gso={gso}, gro={gro})");
            if gso && gro {
                assert!(
                    receives < count,
                    "GRO coalesced nothing: {receives} receives"
                );
            } else {
                assert_eq!(receives, count, "one datagram per receive without GRO");
            }
        });
    }

    #[test]
    fn gso_run_is_byte_exact() {
        run_and_collect(true, 200 * 1468 + 17, 1468);
        run_and_collect(true, 64 * 512, 512);
    }

    #[test]
    fn gro_receive_splits_runs_back_into_datagrams() {
        run_and_collect_with(true, true, 200 * 1468 + 17, 1468);
        run_and_collect_with(true, true, 64 * 512, 512);
        run_and_collect_with(false, true, 20 * 1468 + 5, 1468);
    }

    #[test]
    fn received_datagrams_cover_the_buffer() {
        let meta = DatagramMeta::from_remote("127.0.0.1:9".parse().expect("addr"));
        let ranges = |len, segment| {
            Received { len, meta, segment }
                .datagrams()
                .collect::<Vec<_>>()
        };
        assert_eq!(ranges(10, None), vec![0..10]);
        assert_eq!(ranges(0, None), vec![0..0]);
        assert_eq!(ranges(10, Some(4)), vec![0..4, 4..8, 8..10]);
        assert_eq!(ranges(8, Some(4)), vec![0..4, 4..8]);
    }

    #[test]
    fn plain_run_is_byte_exact() {
        run_and_collect(false, 50 * 1468 + 3, 1468);
    }

    #[test]
    fn truncated_unleased_file_fails_the_send_not_the_process() {
        let img = TestImage::new(&vec![5u8; 1 << 20], false, NameFlavor::Tftp);
        img.truncate(0).expect("truncate");
        let version = &img.version;
        let ev = EventLoop::new().expect("loop");
        ev.block_on(async {
            let opts = UdpOptions::default();
            let rx = UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &opts).expect("rx");
            let tx = UdpEndpoint::bind("127.0.0.1:0".parse().expect("addr"), &opts).expect("tx");
            let route = Route {
                destination: rx.local_addr(),
                source_ip: None,
                ifindex: None,
            };
            let run = SegmentRun {
                header_len: 4,
                count: 8,
                segment: 1468,
                range: ByteRange::new(512 * 1024, 512 * 1024 + 8 * 1468),
            };
            assert!(version.check().is_err(), "fstat notices the truncation");
            // Skip that check to prove the kernel path alone is safe: EFAULT, not SIGBUS.
            let res = tx
                .send_run_unchecked(route, &Rc::new(vec![0u8; 32]), version, run)
                .await;
            assert!(
                matches!(res, Err(SendError::Image(VersionBroken::Modified))),
                "{res:?}"
            );
            // Through the front door the version check refuses before any send.
            let t = Transmit {
                destination: rx.local_addr(),
                source_ip: None,
                ifindex: None,
                payload: Payload::Segments {
                    header_len: 4,
                    count: 8,
                    segment: 1468,
                    image: version.id(),
                    range: run.range,
                },
            };
            let res = tx.send_transmit(&t, &[0u8; 32], &img._store).await;
            assert!(
                matches!(res, Err(SendError::Image(VersionBroken::Modified))),
                "{res:?}"
            );
        });
    }
}
