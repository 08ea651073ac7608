//! Attacks from the same LAN while machines boot (issue 13). Each test runs one attack against
//! a zpxe that serves a legitimate 100-client loadgen storm at the same time; the storm must end
//! with 0 failures and 0 byte errors, and zpxe must still be up. Every attack loop is bounded in
//! count and time, and sends only to loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use crate::common::{Server, relay_socket, require, run};
use crate::loadgen::{image_set, loadgen, report};

const STORM_CLIENTS: usize = 100;

/// A storm running in the background beside an attack.
struct Storm {
    child: Child,
    json: std::path::PathBuf,
}

impl Storm {
    fn start(server: &Server, root: &Path) -> Storm {
        let json = root.join("storm.json");
        let child = loadgen(server, root, STORM_CLIENTS, &json, 150)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn loadgen");
        Storm { child, json }
    }

    /// Waits for the storm and checks that every client booted with every byte right.
    fn finish(self, server: &mut Server, attack: &str) {
        let out = self.child.wait_with_output().expect("loadgen");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "storm during {attack}:\n{log}");
        let r = report(&self.json);
        assert_eq!(r["booted"], STORM_CLIENTS, "storm during {attack}:\n{log}");
        assert_eq!(r["failed"], 0, "storm during {attack}:\n{log}");
        assert_eq!(r["byte_errors"], 0, "storm during {attack}:\n{log}");
        assert!(server.alive(), "zpxe died during {attack}");
    }
}

/// A zpxe with the demo image set and the storm menu, plus `config` (TOML) and `flags`.
fn server_with(config: &str, flags: &[&str]) -> (tempfile::TempDir, Server) {
    let (root, path) = image_set();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("config");
    f.write_all(config.as_bytes()).expect("config");
    let mut args = vec!["--config", path.as_str()];
    args.extend_from_slice(flags);
    // Each attack's zpxe listens on a loopback address of its own, so a flood sprayed across a
    // port range reaches only this server's transfer sockets, never those of a test running
    // beside it on 127.0.0.1 (their ephemeral ports overlap the range).
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    let ip = format!(
        "127.0.9.{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let server = Server::start_on(&ip, root.path(), &args);
    (root, server)
}

/// A UDP socket on a spoofed loopback source, 127.2.x.y (the storm's clients use 127.1.x.y).
fn spoofed_socket(i: u32, port: u16) -> UdpSocket {
    let ip = Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250) as u8 + 1);
    let s = UdpSocket::bind(SocketAddrV4::new(ip, port)).expect("bind spoofed source");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// RRQ `name` with `options` (name, value pairs).
fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for part in [name, "octet"]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    p
}

/// Sends and counts what came back on `sockets` (never reading it is the spoofer's view; this
/// reads only to measure).
fn drain_bytes(sockets: &[UdpSocket]) -> (u64, u64) {
    let mut buf = vec![0u8; 65536];
    let (mut packets, mut bytes) = (0, 0);
    for s in sockets {
        while let Ok(n) = eintr(|| s.recv(&mut buf)) {
            packets += 1;
            bytes += n as u64;
        }
    }
    (packets, bytes)
}

/// A TFTP download by atftp, as a legitimate client does it: true when it got `name` right.
fn atftp_ok(server: &Server, root: &Path, name: &str) -> bool {
    let out = root.join("atftp.out");
    let _ = std::fs::remove_file(&out);
    let (ok, _) = run(
        std::process::Command::new(require("atftp"))
            .args(["--option", "blksize 1468", "--option", "timeout 1"])
            .args(["-g", "-r", name, "-l"])
            .arg(&out)
            .arg(server.tftp.ip().to_string())
            .arg(server.tftp.port().to_string()),
        Duration::from_secs(20),
    );
    ok && std::fs::read(&out).ok() == std::fs::read(root.join(name)).ok()
}

/// Defect 2: spoofed RRQs asking for a 255 s timeout held a port and a slot each for ~25 min;
/// 1,000 of them against a small port range shut TFTP out. Now the negotiated timeout is capped,
/// and once the range is used up a new transfer shares the port of another (told apart by the
/// client's address), so the flood's transfers, which never get a first ACK, hold no port a
/// real client needs.
#[test]
fn a_spoofed_rrq_flood_does_not_stop_a_storm() {
    let port = crate::common::free_udp_port();
    // A range of 400 ports: ample for the storm, far fewer than the flood's transfers.
    let base = 20000 + (port % 20000);
    let range = format!("{base}-{}", base + 399);
    let (root, mut server) = server_with("", &["--tftp-port-range", &range]);
    let sockets: Vec<UdpSocket> = (0..1000).map(|i| spoofed_socket(i, 40000)).collect();
    let flood = rrq("wimboot", &[("timeout", "255")]);
    for s in &sockets {
        s.send_to(&flood, server.tftp).expect("send");
    }
    let storm = Storm::start(&server, root.path());
    // Two more waves while the storm runs, 3 s apart.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        for s in &sockets {
            let _ = s.send_to(&flood, server.tftp);
        }
    }
    storm.finish(&mut server, "an RRQ flood");
    // A legitimate download right after the flood is answered at once.
    assert!(atftp_ok(&server, root.path(), "wimboot"));
    // What the spoofed sources got back, in Ethernet frames as the README's amplification
    // table counts (42 bytes of headers, 60 at least): the flood sent 3,000 RRQs of 28 bytes,
    // each answered once with block 1.
    let frame = |payload: u64| (payload + 42).max(60);
    let (packets, back) = drain_bytes(&sockets);
    let back = back + 42 * packets;
    let sent = 3 * sockets.len() as u64 * frame(flood.len() as u64);
    assert!(
        back <= 10 * sent,
        "the flood got {back} bytes back ({packets} datagrams) for {sent} sent"
    );
}

/// ACKs and errors for transfers that do not exist, to the TFTP port and across the whole
/// transfer-port range.
#[test]
fn acks_for_unknown_transfers_do_not_stop_a_storm() {
    let port = crate::common::free_udp_port();
    let base = 20000 + (port % 20000);
    let range = format!("{base}-{}", base + 399);
    let (root, mut server) = server_with("", &["--tftp-port-range", &range]);
    let storm = Storm::start(&server, root.path());
    let sockets: Vec<UdpSocket> = (0..64).map(|i| spoofed_socket(i, 41000)).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(8);
    let mut sent = 0u64;
    'flood: for round in 0u32.. {
        for (i, s) in sockets.iter().enumerate() {
            let block = (round as u16).wrapping_mul(31).wrapping_add(i as u16);
            let ack = [0, 4, (block >> 8) as u8, block as u8];
            let target = SocketAddr::new(server.tftp.ip(), base + (round % 400) as u16);
            let _ = s.send_to(&ack, target);
            let _ = s.send_to(&ack, server.tftp);
            let _ = s.send_to(b"\0\x05\0\0bye\0", target);
            sent += 3;
        }
        if Instant::now() > deadline || sent > 300_000 {
            break 'flood;
        }
        if round % 16 == 15 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    storm.finish(&mut server, "an ACK flood");
    let flood_secs = started.elapsed().as_secs_f64();
    let mut buf = [0u8; 1500];
    let (mut from_listener, mut from_transfers) = (0u64, 0u64);
    for s in &sockets {
        while let Ok((_, from)) = eintr(|| s.recv_from(&mut buf)) {
            if from == server.tftp {
                from_listener += 1;
            } else {
                from_transfers += 1;
            }
        }
    }
    let packets = from_listener + from_transfers;
    // RFC 1350 answers a stray packet with an ERROR; zpxe sends at most 256 a second, so the
    // flood is not reflected one for one at the addresses it forged.
    // The budget is per event loop (one per core by default).
    let loops = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let seconds = started.elapsed().as_secs() + 1;
    assert!(
        packets <= 256 * loops * seconds,
        "{packets} answers ({from_listener} from the TFTP port, {from_transfers} from transfer ports) \
         to {sent} stray packets in {flood_secs:.1} s with {loops} loops"
    );
}

/// Clients that acknowledge the first window and then fall silent: each costs about one window
/// and a few single-block retransmissions, and none stops the storm.
#[test]
fn clients_that_stop_acking_do_not_stop_a_storm() {
    let (root, mut server) = server_with("", &[]);
    let storm = Storm::start(&server, root.path());
    let sockets: Vec<UdpSocket> = (0..200).map(|i| spoofed_socket(i, 42000)).collect();
    let ask = rrq("ipxe.efi", &[("blksize", "1468"), ("windowsize", "64")]);
    for s in &sockets {
        s.send_to(&ask, server.tftp).expect("send");
    }
    // Acknowledge each OACK (block 0) from the transfer's own port, then never again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut acked = vec![false; sockets.len()];
    let mut buf = vec![0u8; 65536];
    let mut got = 0u64;
    while Instant::now() < deadline && acked.iter().any(|a| !a) {
        for (i, s) in sockets.iter().enumerate() {
            while let Ok((n, from)) = eintr(|| s.recv_from(&mut buf)) {
                got += n as u64;
                if !acked[i] && n >= 2 && buf[1] == 6 {
                    let _ = s.send_to(&[0, 4, 0, 0], from);
                    acked[i] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(acked.iter().all(|a| *a), "every client got an OACK");
    storm.finish(&mut server, "clients that stop acking");
    // Let their transfers time out, then count everything they were sent.
    std::thread::sleep(Duration::from_secs(8));
    for s in &sockets {
        while let Ok(n) = eintr(|| s.recv(&mut buf)) {
            got += n as u64;
        }
    }
    // One 64-block window of 1468 bytes is 94 KB; then, while no ACK comes, the window's first
    // and last blocks at each of the 5 retries, and the OACK and a final ERROR.
    let per_client = got / sockets.len() as u64;
    assert!(
        per_client <= (64 + 2 * 5 + 2) * 1472,
        "a client that acked once got {per_client} bytes"
    );
}

/// Holds up to 10,000 idle TCP connections to `to` from a child process (this kernel allows a
/// process 20,000 descriptors, and the test holds two such sets): opens them for at most 15 s
/// without sending a byte, then waits up to 90 s for zpxe to close every one. Prints
/// "opened N open M".
const IDLE_HOLDER: &str = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conns, deadline = [], time.time() + 15
while len(conns) < 10000 and time.time() < deadline:
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((host, port))
        s.setblocking(False)
        conns.append(s)
    except OSError:
        s.close()
opened = len(conns)
deadline = time.time() + 90
while conns and time.time() < deadline:
    still = []
    for s in conns:
        try:
            s.recv(512)
            s.close()
        except BlockingIOError:
            still.append(s)
        except OSError:
            s.close()
    conns = still
    time.sleep(0.5)
print("opened", opened, "open", len(conns))
"#;

fn idle_holder(to: SocketAddr) -> Child {
    std::process::Command::new(require("python3"))
        .args([
            "-c",
            IDLE_HOLDER,
            &to.ip().to_string(),
            &to.port().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3")
}

/// 10,000 idle TCP connections tried on the boot port and 10,000 on the web port: zpxe holds
/// at most its caps (the rest wait in the backlog or are not accepted), drops every idle one at
/// the header timeout, and the storm's downloads and reports still get through.
#[test]
fn ten_thousand_idle_connections_on_8050_and_8051_do_not_stop_a_storm() {
    let (root, mut server) = server_with("[http]\nheader-timeout-ms = 3000\n", &[]);
    let (http, web) = (server.http, server.web);
    let holders = [idle_holder(http), idle_holder(web)];
    std::thread::sleep(Duration::from_secs(1));
    let storm = Storm::start(&server, root.path());
    storm.finish(&mut server, "20,000 idle connections");
    for (h, port) in holders.into_iter().zip(["boot", "web"]) {
        let out = h.wait_with_output().expect("holder");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let n: Vec<usize> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(
            n.len(),
            2,
            "{port} port holder: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            n[0] >= 1_000,
            "{port} port: only {} connections opened",
            n[0]
        );
        assert_eq!(
            n[1], 0,
            "{port} port: {} idle connections never closed",
            n[1]
        );
    }
    // The status answers once the idle connections are gone.
    let (ok, status) = run(
        std::process::Command::new(require("curl"))
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{web}/api/status")),
        Duration::from_secs(10),
    );
    assert!(ok, "{status}");
}

/// Defect 5: clients that ask for the big file and never read held their connections forever;
/// with a send timeout they are dropped, and the storm's downloads are never shut out.
///
/// Each stalled client is read only once the server has reported its send timeout: read
/// earlier, it is a client that reads, and gets the whole file. (That is how this test failed
/// while it was marked open: the storm ended before the 2 s send timeout, and the reads that
/// followed were progress.)
#[test]
fn never_reading_http_clients_do_not_stop_a_storm() {
    const STALLED: usize = 50;
    let (root, mut server) = server_with(
        "[http]\nmax-connections = 80\nsend-timeout-ms = 2000\n",
        &[],
    );
    let http = server.http;
    // Far larger than the socket buffers on loopback (a 4 MiB boot.wim fits in them whole).
    let big = root.path().join("big.bin");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(256 << 20))
        .expect("big.bin");
    let started = Instant::now();
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            let mut c = TcpStream::connect(http).expect("connect");
            c.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("request");
            c
        })
        .collect();
    let storm = Storm::start(&server, root.path());
    storm.finish(&mut server, "never-reading HTTP clients");
    let send_timeouts = |server: &mut Server| {
        server
            .drain_log()
            .iter()
            .filter(|l| l.contains("HTTP connection timed out") && l.contains("timer=\"send\""))
            .count()
    };
    while send_timeouts(&mut server) < STALLED && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        send_timeouts(&mut server),
        STALLED,
        "send timeouts after {:?}",
        started.elapsed()
    );
    // Each stalled connection was cut: reading it now ends before the whole file.
    let wim = 256u64 << 20;
    for mut c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut got = 0u64;
        let mut b = vec![0u8; 1 << 16];
        let closed = loop {
            match eintr(|| c.read(&mut b)) {
                Ok(0) => break true,
                Ok(n) => got += n as u64,
                Err(e) => {
                    break !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        };
        assert!(closed, "a stalled connection still open after {got} bytes");
        assert!(got < wim, "a never-reading client was sent the whole file");
    }
}

/// A relayed PXE DISCOVER from `giaddr` (a spoofed relay), transaction `xid`.
fn discover(giaddr: Ipv4Addr, xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[3] = 1; // one hop
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[24..28].copy_from_slice(&giaddr.octets());
    p[28..34].copy_from_slice(&[
        0x52,
        0x54,
        0,
        (xid >> 16) as u8,
        (xid >> 8) as u8,
        xid as u8,
    ]);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]);
    let class = b"PXEClient:Arch:00007:UNDI:003016";
    p.extend_from_slice(&[60, class.len() as u8]);
    p.extend_from_slice(class);
    p.extend_from_slice(&[93, 2, 0, 7, 94, 3, 1, 3, 16]);
    p.extend_from_slice(&[97, 17, 0]);
    p.extend_from_slice(&xid.to_be_bytes().repeat(4));
    p.push(255);
    p
}

/// A DHCP flood (relayed DISCOVERs from 2,000 spoofed relays at about 5,000/s for 6 s): the
/// storm's own DHCP still gets through.
#[test]
fn a_dhcp_flood_does_not_stop_a_storm() {
    let (root, mut server) = server_with("", &[]);
    let storm = Storm::start(&server, root.path());
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(6) && sent < 30_000 {
        let relay = Ipv4Addr::new(127, 3, ((sent % 2000) >> 8) as u8, (sent % 250) as u8 + 1);
        let _ = sender.send_to(&discover(relay, sent), server.dhcp);
        sent += 1;
        if sent.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    storm.finish(&mut server, "a DHCP flood");
}

/// Defect 4: an inventory flood on `/report` (20,000 reports with forged MACs, and junk) from
/// one source while the storm reports for real.
#[test]
fn an_inventory_flood_on_report_does_not_stop_a_storm() {
    let (root, mut server) = server_with("", &[]);
    let web = server.web;
    let storm = Storm::start(&server, root.path());
    let flood = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut sent = 0u32;
        'conns: while sent < 20_000 && Instant::now() < deadline {
            let Ok(mut c) = TcpStream::connect(web) else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            c.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut reqs = String::new();
            for _ in 0..8 {
                let i = sent;
                sent += 1;
                reqs.push_str(&format!(
                    "GET /report?mac=02:00:{:02x}:{:02x}:{:02x}:00&stage=<script>x{i}</script> HTTP/1.1\r\nHost: x\r\n\r\n",
                    i >> 16 & 0xff,
                    i >> 8 & 0xff,
                    i & 0xff
                ));
            }
            reqs.push_str("GET /report?mac=zz&stage=' OR 1=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            if c.write_all(reqs.as_bytes()).is_err() {
                continue 'conns;
            }
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
        sent
    });
    storm.finish(&mut server, "a /report flood");
    let sent = flood.join().expect("flood");
    assert!(sent > 1_000, "the flood sent only {sent} reports");
    // The inventory stayed bounded and answers in pages.
    let (ok, page) = run(
        std::process::Command::new(require("curl"))
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{web}/api/clients?limit=10")),
        Duration::from_secs(10),
    );
    assert!(ok, "{page}");
    assert!(
        page.len() < 64 * 1024,
        "a 10-entry page is {} bytes",
        page.len()
    );
}

/// A PXE REQUEST to 4011 as EDK2 sends it, transaction `xid`.
fn pxe_request(xid: u32) -> Vec<u8> {
    let mut p = discover(Ipv4Addr::UNSPECIFIED, xid);
    p[3] = 0;
    // Option 53 follows the magic cookie: DHCPREQUEST.
    p[238] = 3;
    p
}

/// Every byte a spoofed source receives within `window`, in datagrams.
fn collect(socket: &UdpSocket, window: Duration) -> u64 {
    socket.set_nonblocking(false).ok();
    let deadline = Instant::now() + window;
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        socket.set_read_timeout(Some(left)).ok();
        match eintr(|| socket.recv(&mut buf)) {
            Ok(n) => got += n as u64,
            Err(_) => return got,
        }
    }
}

/// The README's amplification table: for each request a spoofer can send, the bytes zpxe sends
/// to the forged source (which never answers, or answers once where it says so) and the ratio to
/// what was sent. Where the source has not shown that it receives, no entry may exceed 10x.
#[test]
fn what_a_spoofer_gets_back_is_bounded() {
    let (root, server) = server_with("", &[]);
    let wait = Duration::from_secs(20);
    // (request, bytes in, bytes out, the most zpxe may send back)
    let mut rows: Vec<(String, u64, u64, u64)> = Vec::new();
    std::thread::scope(|scope| {
        let mut jobs = Vec::new();
        // Relayed DISCOVER: the offer goes to the relay (giaddr) on the server's DHCP port.
        jobs.push(scope.spawn(|| {
            let relay = Ipv4Addr::new(127, 4, 0, 1);
            let victim = relay_socket(SocketAddrV4::new(relay, server.dhcp.port()).into());
            let sender = spoofed_socket(5000, 43000);
            let req = discover(relay, 7);
            sender.send_to(&req, server.dhcp).expect("send");
            (
                "DHCP DISCOVER (relayed)".to_string(),
                req.len() as u64,
                collect(&victim, wait),
                10,
            )
        }));
        jobs.push(scope.spawn(|| {
            let victim = spoofed_socket(5001, 43001);
            let req = pxe_request(8);
            victim.send_to(&req, server.pxe).expect("send");
            (
                "PXE REQUEST to 4011".to_string(),
                req.len() as u64,
                collect(&victim, wait),
                10,
            )
        }));
        jobs.push(scope.spawn(|| {
            let victim = spoofed_socket(5002, 43002);
            let req = rrq("ipxe.efi", &[]);
            victim.send_to(&req, server.tftp).expect("send");
            (
                "TFTP RRQ, no options".to_string(),
                req.len() as u64,
                collect(&victim, wait),
                10,
            )
        }));
        jobs.push(scope.spawn(|| {
            let victim = spoofed_socket(5003, 43003);
            let req = rrq(
                "ipxe.efi",
                &[
                    ("tsize", "0"),
                    ("blksize", "1468"),
                    ("windowsize", "64"),
                    ("timeout", "255"),
                ],
            );
            victim.send_to(&req, server.tftp).expect("send");
            (
                "TFTP RRQ, blksize 1468, windowsize 64, timeout 255".to_string(),
                req.len() as u64,
                collect(&victim, wait),
                10,
            )
        }));
        jobs.push(scope.spawn(|| {
            let victim = spoofed_socket(5004, 43004);
            let req = rrq("ipxe.efi", &[("blksize", "1468"), ("windowsize", "64")]);
            for _ in 0..42 {
                victim.send_to(&req, server.tftp).expect("send");
                std::thread::sleep(Duration::from_millis(50));
            }
            (
                "42 repeated RRQs, windowsize 64".to_string(),
                42 * req.len() as u64,
                collect(&victim, wait),
                10,
            )
        }));
        jobs.push(scope.spawn(|| {
            let victim = spoofed_socket(5005, 43005);
            let req = rrq("ipxe.efi", &[("blksize", "1468"), ("windowsize", "64")]);
            victim.send_to(&req, server.tftp).expect("send");
            victim.set_nonblocking(false).expect("blocking");
            victim.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = vec![0u8; 65536];
            let (n, from) = eintr(|| victim.recv_from(&mut buf)).expect("OACK");
            victim.send_to(&[0, 4, 0, 0], from).expect("ack");
            let sent = (req.len() + 4) as u64;
            (
                "RRQ windowsize 64, ACK 0, then silence".to_string(),
                sent,
                n as u64 + collect(&victim, wait),
                0,
            )
        }));
        for j in jobs {
            rows.push(j.join().expect("job"));
        }
    });
    drop(root);
    let mut table = String::from("| request | bytes in | bytes out | ratio |\n|---|---|---|---|\n");
    for (what, sent, back, _) in &rows {
        table.push_str(&format!(
            "| {what} | {sent} | {back} | {:.1}x |\n",
            *back as f64 / *sent as f64
        ));
    }
    println!("{table}");
    for (what, sent, back, factor) in &rows {
        let limit = match (*factor, what.as_str()) {
            // The peer acknowledged: one window (64 x 1468), two blocks per retry (5), OACK, ERROR.
            (0, _) => (64 + 2 * 5 + 2) * 1472,
            // A plain RRQ is answered with its first 512-byte block (RFC 1350 has no other
            // answer), resent at most `retries` times while nothing is acknowledged.
            (_, "TFTP RRQ, no options") => 6 * 516,
            (f, _) => f * *sent,
        };
        assert!(
            *back <= limit,
            "{what}: {back} bytes back for {sent} (limit {limit})\n{table}"
        );
    }
}
