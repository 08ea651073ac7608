//! The machine's own limit on loopback: zpxe's platform data path with nothing else in the way.
//! A UDP sender pushes TFTP-shaped windows (4-byte header + 1468 image bytes, 64 per window,
//! one ACK per window) from a mapped file to a counting receiver thread; a TCP sender writes a
//! mapped file to a reading receiver thread. The criterion bench (`benches/platform.rs`) and
//! `compare` both use these, so the table's ceiling is the same code the benches time.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use zpxe_engine::path::NameFlavor;
use zpxe_engine::{ByteRange, ImageCatalog, ImageId, Payload, Transmit};
use zpxe_platform::runtime::{EventLoop, timeout};
use zpxe_platform::tcp::TcpConn;
use zpxe_platform::udp::{NoImages, UdpEndpoint, UdpOptions};
use zpxe_platform::{ImageStore, StoreOptions, Version};

/// TFTP's usual block on a 1500-byte MTU.
pub const BLOCK: usize = 1468;
/// Blocks per window (RFC 7440 windowsize 64).
pub const WINDOW: usize = 64;
const HEADER: usize = 4;
/// An upper bound on any one measurement, so a lost ACK cannot hang the run.
const MAX_RUN: Duration = Duration::from_secs(60);

/// One ceiling measurement.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Bytes of the file the receiver got (datagram payload minus headers for UDP).
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Measured {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `root/name` opened in a store of its own: the store (which holds the mapping), its id in
/// that store, and the version.
fn open(root: &Path, name: &str) -> io::Result<(ImageStore, ImageId, Rc<Version>)> {
    let mut store = ImageStore::new(
        root,
        StoreOptions {
            case_insensitive: false,
            leases: false,
        },
    )?;
    let info = store
        .open(name, NameFlavor::Tftp)
        .map_err(|e| io::Error::other(format!("open {name}: {e}")))?;
    let version = store
        .version(info.id)
        .ok_or_else(|| io::Error::other("no version after open"))?;
    Ok((store, info.id, version))
}

/// The ACK the ceiling's receivers send: a TFTP ACK's size, no more.
const ACK: [u8; 4] = [0, 4, 0, 0];

/// One datagram of [`ACK`] to `destination`, as a machine would poll it.
fn ack_to(destination: SocketAddr) -> Transmit {
    Transmit {
        destination,
        source_ip: None,
        ifindex: None,
        payload: Payload::Bytes { len: ACK.len() },
    }
}

/// How the ceiling's UDP sender and receiver move datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPath {
    /// GSO sends; the receiver takes each coalesced run in one receive (`UDP_GRO`), as the
    /// project's own TFTP client does.
    GsoToGro,
    /// GSO sends; the receiver takes one datagram per `recv`, as most TFTP clients do.
    Gso,
    /// One datagram per send (still one submission per window) and per receive.
    Plain,
}

impl UdpPath {
    pub fn label(self) -> &'static str {
        match self {
            Self::GsoToGro => "UDP GSO, GRO receiver",
            Self::Gso => "UDP GSO",
            Self::Plain => "UDP no GSO",
        }
    }
}

/// Sends `root/name` as TFTP-like windows over loopback UDP and returns what the receiver got.
/// With `gso` false the platform sends one datagram per call (still one submission per window).
pub fn udp_windows(root: &Path, name: &str, gso: bool) -> io::Result<Measured> {
    udp_windows_via(root, name, if gso { UdpPath::Gso } else { UdpPath::Plain })
}

/// [`udp_windows`] with the receiver's side chosen too.
pub fn udp_windows_via(root: &Path, name: &str, path: UdpPath) -> io::Result<Measured> {
    let gso = path != UdpPath::Plain;
    let (store, id, image) = open(root, name)?;
    let len = image.len();
    let blocks = len.div_ceil(BLOCK as u64) as usize;
    let event_loop = EventLoop::new()?;
    event_loop.block_on(async move {
        let sender = UdpEndpoint::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            &UdpOptions {
                send_buffer: Some(4 << 20),
                recv_buffer: Some(1 << 20),
                ..UdpOptions::default()
            },
        )?;
        if !gso {
            sender.disable_gso();
        }
        let sender_addr = sender.local_addr();
        let (counter, receiver_addr) = if path == UdpPath::GsoToGro {
            // The GRO receiver lives on its own event loop: it binds there and says where.
            let (tx, rx) = std::sync::mpsc::channel();
            let counter = thread::spawn(move || count_windows_gro(tx, sender_addr, blocks));
            let addr = rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| io::Error::other("GRO receiver did not start"))?;
            (counter, addr)
        } else {
            let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let addr = receiver.local_addr()?;
            let counter = thread::spawn(move || count_windows(receiver, sender_addr, blocks));
            (counter, addr)
        };
        let started = Instant::now();
        let mut headers = vec![0u8; HEADER * WINDOW];
        let mut ack = Vec::with_capacity(64);
        let mut block = 0usize;
        while block < blocks && started.elapsed() < MAX_RUN {
            let count = WINDOW.min(blocks - block);
            for (i, h) in headers.chunks_mut(HEADER).take(count).enumerate() {
                h[..2].copy_from_slice(&3u16.to_be_bytes());
                h[2..].copy_from_slice(&(((block + i + 1) & 0xffff) as u16).to_be_bytes());
            }
            let start = (block * BLOCK) as u64;
            let end = ((block + count) * BLOCK) as u64;
            let window = Transmit {
                destination: receiver_addr,
                source_ip: None,
                ifindex: None,
                payload: Payload::Segments {
                    header_len: HEADER as u8,
                    count: count as u16,
                    segment: BLOCK as u32,
                    image: id,
                    range: ByteRange::new(start, end.min(len)),
                },
            };
            sender
                .send_transmit(&window, &headers, &store)
                .await
                .map_err(io::Error::other)?;
            block += count;
            // Wait for the window's ACK; a lost datagram costs one short timeout, not the run.
            if let Some((res, back)) = timeout(
                Duration::from_millis(50),
                sender.recv(std::mem::take(&mut ack)),
            )
            .await
            {
                ack = back;
                res?;
            } else {
                ack = Vec::with_capacity(64);
            }
        }
        let bytes = counter
            .join()
            .map_err(|_| io::Error::other("receiver thread panicked"))??;
        Ok(Measured {
            bytes,
            elapsed: started.elapsed(),
        })
    })
}

/// Counts datagrams, ACKs every full window (or after a short silence), stops after the last
/// block or a long silence. Returns image bytes received.
fn count_windows(socket: UdpSocket, sender: SocketAddr, blocks: usize) -> io::Result<u64> {
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(8 << 20);
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut buf = vec![0u8; 65536];
    let (mut bytes, mut got, mut in_window, mut idle) = (0u64, 0usize, 0usize, 0u32);
    let started = Instant::now();
    while got < blocks && idle < 50 && started.elapsed() < MAX_RUN {
        match eintr(|| socket.recv(&mut buf)) {
            Ok(n) => {
                idle = 0;
                got += 1;
                in_window += 1;
                bytes += n.saturating_sub(HEADER) as u64;
                if in_window == WINDOW || got == blocks {
                    in_window = 0;
                    socket.send_to(&[0, 4, 0, 0], sender)?;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                idle += 1;
                in_window = 0;
                socket.send_to(&[0, 4, 0, 0], sender)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(bytes)
}

/// Writes `root/name` over one loopback TCP connection from its mapping and returns what the
/// receiver read.
pub fn tcp_stream(root: &Path, name: &str) -> io::Result<Measured> {
    let (_store, _, image) = open(root, name)?;
    let len = image.len();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let reader = thread::spawn(move || -> io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(MAX_RUN))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match eintr(|| conn.read(&mut buf))? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let event_loop = EventLoop::new()?;
    let started = Instant::now();
    event_loop.block_on(async {
        let mut conn = TcpConn::connect(addr).await?;
        conn.send_image(&image, ByteRange::new(0, len))
            .await
            .map_err(io::Error::other)?;
        conn.shutdown().await
    })?;
    let bytes = reader
        .join()
        .map_err(|_| io::Error::other("reader thread panicked"))??;
    Ok(Measured {
        bytes,
        elapsed: started.elapsed(),
    })
}

/// [`count_windows`] on the platform's endpoint with `UDP_GRO`: a GSO run arrives in one
/// receive and is split back into datagrams.
fn count_windows_gro(
    bound: std::sync::mpsc::Sender<SocketAddr>,
    sender: SocketAddr,
    blocks: usize,
) -> io::Result<u64> {
    let event_loop = EventLoop::new()?;
    event_loop.block_on(async move {
        let rx = UdpEndpoint::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            &UdpOptions {
                recv_buffer: Some(8 << 20),
                gro: true,
                ..UdpOptions::default()
            },
        )?;
        let _ = bound.send(rx.local_addr());
        let to_sender = ack_to(sender);
        let mut buf = Vec::with_capacity(65_536);
        let (mut bytes, mut got, mut in_window, mut idle) = (0u64, 0usize, 0usize, 0u32);
        let started = Instant::now();
        while got < blocks && idle < 50 && started.elapsed() < MAX_RUN {
            match timeout(Duration::from_millis(20), rx.recv(std::mem::take(&mut buf))).await {
                Some((res, b)) => {
                    buf = b;
                    let r = res?;
                    idle = 0;
                    let mut ack = false;
                    for d in r.datagrams() {
                        got += 1;
                        in_window += 1;
                        bytes += d.len().saturating_sub(HEADER) as u64;
                        if in_window == WINDOW || got == blocks {
                            in_window = 0;
                            ack = true;
                        }
                    }
                    if ack {
                        rx.send_transmit(&to_sender, &ACK, &NoImages)
                            .await
                            .map_err(io::Error::other)?;
                    }
                }
                None => {
                    buf = Vec::with_capacity(65_536);
                    idle += 1;
                    in_window = 0;
                    rx.send_transmit(&to_sender, &ACK, &NoImages)
                        .await
                        .map_err(io::Error::other)?;
                }
            }
        }
        Ok(bytes)
    })
}

/// Writes a file of `size` bytes of a non-repeating pattern (so a block served from the wrong
/// offset is caught by whoever checks).
pub fn write_pattern_file(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut state = seed | 1;
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = chunk.len().min(left as usize);
        for word in chunk[..n].chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()
}
