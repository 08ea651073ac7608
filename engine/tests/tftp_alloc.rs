//! The TFTP server's send path allocates nothing per packet: ERRORs (however many a flood asks
//! for, and none at all past the error budget), OACKs and runs of DATA headers are written into
//! the caller's buffer. A counting allocator (this test's own: the engine forbids `unsafe`)
//! counts what the calling thread allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use zpxe_engine::tftp::{Local, TftpServer, TftpServerConfig};
use zpxe_engine::{DatagramMeta, MemoryCatalog, Payload};

#[derive(Debug)]
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the count is a
// thread-local `Cell` (no allocation, no lock).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` allocated on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (r, ALLOCATIONS.with(Cell::get) - before)
}

fn client(n: u8) -> DatagramMeta {
    DatagramMeta::from_remote(SocketAddr::from((Ipv4Addr::new(10, 0, 1, n), 2000)))
}

fn server() -> (TftpServer, MemoryCatalog) {
    let mut images = MemoryCatalog::new();
    images.insert("f", vec![7u8; 1 << 20]);
    let server = TftpServer::new(TftpServerConfig {
        mtu: u16::MAX,
        ..TftpServerConfig::default()
    });
    (server, images)
}

/// Sends what the server has, counting datagrams.
fn poll_all(server: &mut TftpServer, now: Instant, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while let Some((_, t)) = server.poll_transmit(now, 64, buf) {
        n += match t.payload {
            Payload::Segments { count, .. } => usize::from(count),
            _ => 1,
        };
    }
    n
}

#[test]
fn error_replies_allocate_nothing_and_past_the_budget_cost_nothing() {
    let (mut server, mut images) = server();
    let mut buf = vec![0u8; 2048];
    // Malformed (an unknown opcode) and ACKs for no transfer: each is answered with an ERROR,
    // up to 256 a second.
    let garbage: [&[u8]; 2] = [b"\x00\x09garbage", b"\x00\x04\x00\x01"];
    let mut round = |now: Instant, count: usize| {
        let ((), handled) = allocations(|| {
            for i in 0..count {
                let meta = client((i % 200) as u8 + 1);
                let data = garbage[i % 2];
                server.handle_datagram(now, Local::Listener, meta, data, &mut images);
            }
        });
        let (sent, polled) = allocations(|| poll_all(&mut server, now, &mut buf));
        (handled, sent, polled)
    };
    let start = Instant::now();
    // The first second grows the queue once.
    let (_, sent, _) = round(start, 256);
    assert_eq!(sent, 256);
    // The next: the same 256 ERRORs, then 10,000 datagrams past the budget.
    let (handled, sent, polled) = round(start + Duration::from_secs(1), 256);
    assert_eq!(sent, 256);
    assert_eq!(
        (handled, polled),
        (0, 0),
        "allocations for 256 ERRORs: taking the datagrams, sending the ERRORs"
    );
    let (handled, sent, polled) = round(start + Duration::from_millis(1500), 10_000);
    assert_eq!(sent, 0, "the budget is spent");
    assert_eq!(
        (handled, polled),
        (0, 0),
        "allocations for 10,000 datagrams past the error budget"
    );
}

#[test]
fn oacks_and_data_headers_are_written_into_the_callers_buffer() {
    let (mut server, mut images) = server();
    let mut buf = vec![0u8; 2048];
    let now = Instant::now();
    let rrq = b"\x00\x01f\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0016\x00";
    // Client 1 grows the server's queues and timer heap once; client 2 is measured.
    for n in [1, 2] {
        server.handle_datagram(now, Local::Listener, client(n), rrq, &mut images);
        let (out, polled) = allocations(|| server.poll_transmit(now, 64, &mut buf));
        let (local, _) = out.expect("the OACK");
        assert!(poll_all(&mut server, now, &mut buf) == 0);
        // A repeated RRQ before any ACK owes the OACK again.
        server.handle_datagram(now, Local::Listener, client(n), rrq, &mut images);
        let (again, polled_again) = allocations(|| poll_all(&mut server, now, &mut buf));
        assert_eq!(again, 1, "the OACK again");
        // ACK 0 on the transfer's socket: a window of 16 blocks, their headers in `buf`.
        server.handle_datagram(now, local, client(n), b"\x00\x04\x00\x00", &mut images);
        let (sent, polled_window) = allocations(|| poll_all(&mut server, now, &mut buf));
        assert_eq!(sent, 16, "one window");
        if n == 2 {
            assert_eq!(
                (polled, polled_again, polled_window),
                (0, 0, 0),
                "allocations for an OACK, a repeated OACK, a window of 16 DATA headers"
            );
        }
    }
}
