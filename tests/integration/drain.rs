//! SIGTERM drains: what is under way finishes byte-exact, nothing new starts, the process
//! exits 0; the drain timeout cuts what is left.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use crate::common::{Server, pattern_file};

/// Sends a GET and returns the connection and the response head (through the blank line)
/// plus whatever body bytes came with it.
pub(crate) fn get(addr: SocketAddr, path: &str) -> (TcpStream, String, Vec<u8>) {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(c, "GET /{path} HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = eintr(|| c.read(&mut chunk)).expect("read head");
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            return (c, head, buf[i + 4..].to_vec());
        }
    }
}

/// Waits (up to 5 s) until `addr` refuses connections: the drain closed the listener.
pub(crate) fn wait_until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the rest of a response from `stream` onto `body` until it is as long as `want`, and
/// checks it is byte for byte `want`.
pub(crate) fn finish_body(stream: &mut TcpStream, mut body: Vec<u8>, want: &[u8]) {
    let mut chunk = vec![0u8; 1 << 20];
    while body.len() < want.len() {
        let n = eintr(|| stream.read(&mut chunk)).expect("body");
        assert!(n > 0, "body cut at {} of {}", body.len(), want.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert!(body == want, "HTTP bytes differ");
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length")
}

/// A TFTP client that ACKs only when told: RRQ without options, 512-byte blocks.
struct LockStep {
    sock: UdpSocket,
    server: SocketAddr,
    got: Vec<u8>,
    block: u16,
    done: bool,
}

impl LockStep {
    fn start(tftp: SocketAddr, file: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rrq = vec![0, 1];
        rrq.extend_from_slice(file.as_bytes());
        rrq.push(0);
        rrq.extend_from_slice(b"octet\0");
        sock.send_to(&rrq, tftp).expect("rrq");
        let mut me = Self {
            sock,
            server: tftp,
            got: Vec::new(),
            block: 0,
            done: false,
        };
        me.take_data();
        me
    }

    /// Receives the next DATA block (from the transfer's port), skipping retransmissions of
    /// the last one (the test pauses longer than the server's retransmission timeout).
    fn take_data(&mut self) {
        let mut buf = [0u8; 600];
        let (n, from, block) = loop {
            let (n, from) = eintr(|| self.sock.recv_from(&mut buf)).expect("DATA");
            assert_eq!(
                &buf[..2],
                &[0, 3],
                "expected DATA, got {:?}",
                &buf[..n.min(40)]
            );
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if block != self.block || self.block == 0 {
                break (n, from, block);
            }
        };
        assert_eq!(block, self.block.wrapping_add(1));
        self.server = from;
        self.block = block;
        self.got.extend_from_slice(&buf[4..n]);
        self.done = n - 4 < 512;
    }

    /// ACKs the last block and, unless it was the last, takes the next.
    fn step(&mut self) {
        let b = self.block.to_be_bytes();
        self.sock
            .send_to(&[0, 4, b[0], b[1]], self.server)
            .expect("ACK");
        if !self.done {
            self.take_data();
        }
    }
}

#[test]
fn sigterm_finishes_transfers_under_way_and_starts_none() {
    finishes_transfers_under_way_and_starts_none(false);
}

/// The same with `server.loop-handoff` and two loops: the second download's connection was
/// handed to loop 1 (connections go in turn), which must finish it before the process exits.
#[test]
fn sigterm_finishes_handed_over_transfers_too() {
    finishes_transfers_under_way_and_starts_none(true);
}

fn finishes_transfers_under_way_and_starts_none(handoff: bool) {
    let root = tempfile::tempdir().expect("tmp");
    let big = pattern_file(&root.path().join("big.bin"), 64 << 20, 7);
    let small = pattern_file(&root.path().join("small.bin"), 512 * 9 + 100, 8);
    let config = root.path().join("handoff.toml");
    std::fs::write(&config, "[server]\nloop-handoff = true\n").expect("config");
    let config = config.to_string_lossy().into_owned();
    let mut server = if handoff {
        Server::start(root.path(), &["--config", &config, "--threads", "2"])
    } else {
        Server::start(root.path(), &[])
    };

    // Two HTTP downloads read slowly, so they are still under way when the signal comes.
    let (mut slow, head, body) = get(server.http, "big.bin");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut slow2, head, body2) = get(server.http, "big.bin");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if handoff {
        let conns = crate::common::counter(&server, "loop_handoff_connections_total");
        assert_eq!(conns, 1, "the second connection went to loop 1");
    }
    // An idle keep-alive connection (one response done).
    let (mut idle, head, first) = get(server.http, "small.bin");
    let mut rest = vec![0u8; content_length(&head) - first.len()];
    idle.read_exact(&mut rest).expect("small body");
    // A TFTP transfer at its third block.
    let mut tftp = LockStep::start(server.tftp, "small.bin");
    tftp.step();
    tftp.step();

    server.sigterm();
    server.wait_for_log("draining", Duration::from_secs(5));

    // The idle connection is closed.
    idle.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut b = [0u8; 16];
    assert_eq!(eintr(|| idle.read(&mut b)).expect("EOF, not a timeout"), 0);
    // New connections are refused once the listener closed.
    wait_until_refused(server.http);
    // A new TFTP request gets no answer at all.
    let newcomer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    newcomer
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    newcomer
        .send_to(b"\x00\x01small.bin\x00octet\x00", server.tftp)
        .expect("rrq");
    let mut buf = [0u8; 600];
    assert!(
        eintr(|| newcomer.recv_from(&mut buf)).is_err(),
        "a new TFTP request was answered while draining"
    );

    // The TFTP transfer runs to its end, byte-exact.
    while !tftp.done {
        tftp.step();
    }
    tftp.step();
    assert!(tftp.got == small, "TFTP bytes differ");
    // So do the HTTP downloads.
    finish_body(&mut slow, body, &big);
    finish_body(&mut slow2, body2, &big);

    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("zpxe still running after its transfers ended");
    assert!(status.success(), "exit status {status}");
    assert!(server.lines.iter().any(|l| l.contains("stopped")));
}

#[test]
fn the_drain_timeout_cuts_what_is_still_running() {
    let root = tempfile::tempdir().expect("tmp");
    let big = pattern_file(&root.path().join("big.bin"), 64 << 20, 9);
    let config = root.path().join("zpxe.toml");
    std::fs::write(&config, "[server]\ndrain-timeout-ms = 300\n").expect("config");
    let mut server = Server::start(root.path(), &["--config", config.to_str().expect("utf8")]);
    // A download nobody reads: the socket buffers fill and the response stalls.
    let (mut stalled, head, body) = get(server.http, "big.bin");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("zpxe did not stop at its drain timeout");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() >= Duration::from_millis(300));
    assert!(
        server.lines.iter().any(|l| l.contains("drain timeout")),
        "{:?}",
        server.lines
    );
    // The client finds the response cut short.
    let mut got = body.len();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match eintr(|| stalled.read(&mut chunk)) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < big.len(), "the whole body arrived ({got} bytes)");
}

/// The server's CPU seconds so far (utime + stime of /proc/PID/stat, at 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// While a drain waits for a TFTP transfer under way, the server waits too: no CPU while the
/// client is quiet, and each ACK answered at once. Seen before the fix (the TFTP driver
/// selected on the drain, which resolves at once once fired, and so looped instead of
/// sleeping): this test measured 0.68 CPU seconds in its 1 s of draining, and a probe that
/// ACKed every 0.4 s saw 2.95 CPU seconds in 2 s and an ACK left unanswered for 3 s.
#[test]
fn a_drain_waiting_for_a_tftp_transfer_is_idle() {
    let root = tempfile::tempdir().expect("tmp");
    let small = pattern_file(&root.path().join("small.bin"), 512 * 9 + 100, 8);
    let mut server = Server::start(root.path(), &[]);
    let mut tftp = LockStep::start(server.tftp, "small.bin");
    tftp.step();
    server.sigterm();
    server.wait_for_log("draining", Duration::from_secs(5));
    let before = cpu_seconds(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(server.pid()) - before;
    assert!(used < 0.3, "{used:.2} CPU seconds in 1 s of draining");
    // Every ACK is answered within LockStep's 5 s read timeout, to the last block.
    while !tftp.done {
        tftp.step();
    }
    tftp.step();
    assert!(tftp.got == small, "TFTP bytes differ");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("zpxe still running after its transfer ended");
    assert!(status.success(), "exit status {status}");
}
