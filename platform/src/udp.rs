//! UDP endpoints: receive with the destination address (`IP_PKTINFO`), send from a chosen source
//! address and interface, and send runs of image-backed datagrams in one call (UDP GSO) or one
//! submission (batched sends) without copying image bytes in user space.

use std::cell::Cell;
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
use zpxe_engine::{ByteRange, DatagramMeta};

use crate::store::{Version, VersionBroken};

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// The kernel's limit on segments in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
const CONTROL_LEN: usize = 128;

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

/// Where a datagram goes and where it leaves from.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub destination: SocketAddr,
    pub source_ip: Option<IpAddr>,
    pub ifindex: Option<u32>,
}

/// Why a run of image-backed datagrams could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("image changed on disk: {0}")]
    Image(#[from] VersionBroken),
    #[error("send failed: {0}")]
    Io(#[from] io::Error),
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
pub struct SegmentRun {
    pub header_len: usize,
    pub count: usize,
    pub segment: usize,
    pub range: ByteRange,
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

    /// Sends `buf` as one datagram.
    pub async fn send(&self, route: Route, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let control = self.control(route, None);
        let BufResult(res, (buf, _)) = match control {
            Some(control) => self.socket.send_msg(buf, control, route.destination).await,
            None => {
                let BufResult(r, b) = self.socket.send_to(buf, route.destination).await;
                BufResult(r, (b, AncillaryBuf::new()))
            }
        };
        (res.map(drop), buf)
    }

    /// Sends `run.count` datagrams: datagram `i` is `headers[i*hl..(i+1)*hl]` followed by the next
    /// `run.segment` bytes of `run.range` of `image` (the last takes what remains). Image bytes go
    /// from the mapping to the kernel; with GSO up to 64 datagrams leave in one call.
    pub async fn send_run(
        &self,
        route: Route,
        headers: Vec<u8>,
        image: &Rc<Version>,
        run: SegmentRun,
    ) -> (Result<usize, SendError>, Vec<u8>) {
        if let Err(e) = image.check() {
            return (Err(e.into()), headers);
        }
        self.send_run_unchecked(route, headers, image, run).await
    }

    /// [`Self::send_run`] without the version check: the kernel alone guards the mapping.
    async fn send_run_unchecked(
        &self,
        route: Route,
        headers: Vec<u8>,
        image: &Rc<Version>,
        run: SegmentRun,
    ) -> (Result<usize, SendError>, Vec<u8>) {
        if run.count == 0 || headers.len() < run.header_len * run.count {
            return (Ok(0), headers);
        }
        let seg_len = run.header_len + run.segment;
        let mut per_call = if self.gso.get() && seg_len * 2 <= MAX_UDP_PAYLOAD {
            (MAX_UDP_PAYLOAD / seg_len).min(MAX_GSO_SEGMENTS)
        } else {
            1
        };
        let headers = Rc::new(headers);
        let mut sent = 0;
        while sent < run.count {
            let res = if per_call > 1 && run.count - sent > 1 {
                let n = per_call.min(run.count - sent);
                let batch = Batch::new(&headers, image, run, sent, n);
                self.send_gso(route, batch, seg_len as u16).await.map(|_| n)
            } else {
                // Without GSO, still one submission for the whole run: the sends go to the
                // kernel together and complete together.
                let n = MAX_GSO_SEGMENTS.min(run.count - sent);
                let sends = (sent..sent + n)
                    .map(|i| self.send_batch_plain(route, Batch::new(&headers, image, run, i, 1)));
                join_all(sends)
                    .await
                    .into_iter()
                    .collect::<io::Result<Vec<usize>>>()
                    .map(|_| n)
            };
            match res {
                Ok(n) => sent += n,
                Err(e) if per_call > 1 && gso_unsupported(&e) => {
                    tracing::info!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    self.gso.set(false);
                    per_call = 1;
                }
                Err(e) => return (Err(SendError::of_mapped_send(e)), unwrap_rc(headers)),
            }
        }
        (Ok(sent), unwrap_rc(headers))
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

/// The iovec list of one send: header, image slice, header, image slice, ...
/// It owns what it points at (the headers and the version) for as long as the kernel may read it.
struct Batch {
    headers: Rc<Vec<u8>>,
    image: Rc<Version>,
    header_len: usize,
    segment: usize,
    first: usize,
    count: usize,
    range: ByteRange,
}

impl Batch {
    fn new(
        headers: &Rc<Vec<u8>>,
        image: &Rc<Version>,
        run: SegmentRun,
        first: usize,
        count: usize,
    ) -> Self {
        Self {
            headers: Rc::clone(headers),
            image: Rc::clone(image),
            header_len: run.header_len,
            segment: run.segment,
            first,
            count,
            range: run.range,
        }
    }

    fn data(&self, i: usize) -> &[u8] {
        let start = self.range.start + (i * self.segment) as u64;
        let end = (start + self.segment as u64).min(self.range.end);
        if start >= end {
            return &[];
        }
        self.image
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

fn unwrap_rc(headers: Rc<Vec<u8>>) -> Vec<u8> {
    // Every batch is dropped once its send completes, so this is the only holder left.
    Rc::try_unwrap(headers).unwrap_or_else(|rc| (*rc).clone())
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
                let route = Route {
                    destination: got.meta.remote,
                    source_ip: got.meta.local_ip,
                    ifindex: got.meta.ifindex,
                };
                let (res, _) = ep.send(route, b"pong".to_vec()).await;
                res.expect("reply");
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
            let route = Route {
                destination: rx.local_addr(),
                source_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                ifindex: None,
            };
            let run = SegmentRun {
                header_len: 4,
                count,
                segment,
                range: ByteRange::new(0, len as u64),
            };
            let (res, _) = tx.send_run(route, headers, version, run).await;
            assert_eq!(res.expect("send"), count);
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
            let (res, _) = tx
                .send_run_unchecked(route, vec![0u8; 32], version, run)
                .await;
            assert!(
                matches!(res, Err(SendError::Image(VersionBroken::Modified))),
                "{res:?}"
            );
        });
    }
}
