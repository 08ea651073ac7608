//! The web service (8051) under abuse: report floods, huge inventories, pipelining clients that
//! never read, and heavy web load beside boot traffic (issue 13, defect 4). Nothing sent to the
//! web port may take memory or time from booting.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use zpxe_platform::runtime::{EventLoop, spawn};
use zpxe_platform::tcp::TcpConn;

use crate::common::{Server, pattern_file};

/// Reports a filling source sends: within the per-source burst, so all are recorded.
const PER_SOURCE: u32 = 30;

fn request(path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: zpxe\r\nConnection: {connection}\r\n\r\n")
}

/// One response at the start of `buf`: (status, body, bytes it took), or None if incomplete.
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let body = buf.get(end..end + len)?.to_vec();
    Some((status, body, end + len))
}

/// Reads `n` responses (fewer if the server closes first).
fn read_responses(stream: &mut impl Read, n: usize) -> Vec<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while out.len() < n {
        while let Some((status, body, used)) = parse_response(&buf) {
            out.push((status, body));
            buf.drain(..used);
            if out.len() == n {
                return out;
            }
        }
        match eintr(|| stream.read(&mut chunk)) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!(
                    "read after {} responses and {} more bytes: {e}",
                    out.len(),
                    buf.len()
                );
                break;
            }
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    out
}

/// GET `path` on a connection of its own: (status, body, time to the whole response).
fn get(web: SocketAddr, path: &str) -> (u16, Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(web).expect("connect to the web port");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request(path, true).as_bytes()).expect("send");
    let mut r = read_responses(&mut s, 1);
    let (status, body) = r.pop().unwrap_or_else(|| panic!("no answer to {path}"));
    (status, body, t0.elapsed())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })
}

/// Loopback source `i` for filling: 127.20.x.y.
fn source(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 20, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// A locally administered unicast MAC, distinct for each (source, n).
fn mac(i: u32, n: u32) -> String {
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// Fills the inventory with `sources * PER_SOURCE` clients, each source on its own loopback
/// address and within its rate; returns the statuses that were not 200.
fn fill(web: SocketAddr, sources: u32) -> Vec<u16> {
    let ev = EventLoop::new().expect("event loop");
    ev.block_on(async move {
        let refused: Rc<std::cell::RefCell<Vec<u16>>> = Rc::default();
        let next = Rc::new(Cell::new(0u32));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (refused, next) = (Rc::clone(&refused), Rc::clone(&next));
            tasks.push(spawn(async move {
                loop {
                    let i = next.get();
                    if i >= sources {
                        return;
                    }
                    next.set(i + 1);
                    let mut reqs = String::new();
                    for n in 0..PER_SOURCE {
                        let path = format!("/report?mac={}&stage=script", mac(i, n));
                        reqs.push_str(&request(&path, n + 1 == PER_SOURCE));
                    }
                    let statuses = exchange(source(i), web, reqs.into_bytes()).await;
                    assert_eq!(
                        statuses.len(),
                        PER_SOURCE as usize,
                        "answers from source {i}"
                    );
                    refused
                        .borrow_mut()
                        .extend(statuses.into_iter().filter(|s| *s != 200));
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        refused.take()
    })
}

/// Sends `reqs` from `src` and reads until the server closes: the statuses, in order.
async fn exchange(src: IpAddr, web: SocketAddr, reqs: Vec<u8>) -> Vec<u16> {
    let mut conn = TcpConn::connect_from(src, web)
        .await
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let (res, _) = conn.write_all(reqs).await;
    res.expect("send the requests");
    let mut all = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let (res, b) = conn.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let mut statuses = Vec::new();
    let mut rest = &all[..];
    while let Some((status, _, used)) = parse_response(rest) {
        statuses.push(status);
        rest = &rest[used..];
    }
    statuses
}

fn status_json(web: SocketAddr) -> serde_json::Value {
    let (status, body, _) = get(web, "/api/status");
    assert_eq!(status, 200);
    json(&body)
}

#[test]
fn a_report_flood_from_one_address_is_rate_limited_and_bad_macs_refused() {
    let root = tempfile::tempdir().expect("tmp");
    let server = Server::start(root.path(), &["--no-dhcp"]);
    // 20,000 reports on one connection from 127.0.0.1, every other one with a bad MAC.
    const N: usize = 20_000;
    let bad = [
        "zz:zz:zz:zz:zz:zz",
        "%3Cscript%3E",
        "ff:ff:ff:ff:ff:ff",
        "1234",
        "+2:00:00:00:00:01",
    ];
    let mut reqs = String::new();
    for i in 0..N {
        let m = if i.is_multiple_of(2) {
            mac(1_000_000 + i as u32, 0)
        } else {
            bad[i / 2 % bad.len()].to_owned()
        };
        reqs.push_str(&request(
            &format!("/report?mac={m}&stage=script"),
            i + 1 == N,
        ));
    }
    let mut stream = TcpStream::connect(server.web).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let t0 = Instant::now();
    let sender = std::thread::spawn(move || writer.write_all(reqs.as_bytes()).expect("send"));
    let answers = read_responses(&mut stream, N);
    let took = t0.elapsed();
    sender.join().expect("sender");
    assert_eq!(answers.len(), N, "every request answered");
    let (mut ok, mut limited, mut refused) = (0, 0, 0);
    for (i, (status, _)) in answers.iter().enumerate() {
        match (i % 2, status) {
            (_, 429) => limited += 1,
            (0, 200) => ok += 1,
            (1, 400) => refused += 1,
            (_, s) => panic!("request {i}: status {s}"),
        }
    }
    eprintln!("{N} reports in {took:?}: {ok} recorded, {refused} refused, {limited} limited");
    // The burst, plus the refill over the run, plus slack.
    let allowed = 32 + (took.as_secs_f64() * 4.0) as usize + 8;
    assert!(
        ok + refused <= allowed,
        "{ok} + {refused} passed the rate limit in {took:?}"
    );
    assert!(limited >= N - allowed);
    assert!(
        refused > 0,
        "bad MACs were seen and refused before the limit"
    );
    let s = status_json(server.web);
    assert_eq!(s["clients"], ok as u64, "{s}");
    let counters = &s["counters"];
    assert_eq!(counters["boot_reports_limited_total"], limited as u64);

    // Another address has its own budget: a bad MAC is refused as such, a good one recorded.
    let ev = EventLoop::new().expect("event loop");
    let other = IpAddr::V4(Ipv4Addr::new(127, 21, 0, 1));
    let statuses = ev.block_on(exchange(
        other,
        server.web,
        [
            request("/report?mac=not-a-mac&stage=script", false),
            request("/report?mac=02:aa:bb:cc:dd:ee&stage=x%0Ay", false),
            request("/report?mac=02:aa:bb:cc:dd:ee&stage=loaded", true),
        ]
        .concat()
        .into_bytes(),
    ));
    assert_eq!(statuses, [400, 400, 200]);
}

#[test]
fn the_inventory_api_answers_bounded_pages_quickly_at_any_size() {
    let root = tempfile::tempdir().expect("tmp");
    let server = Server::start(root.path(), &["--no-dhcp"]);
    let sources = 1_400; // 42,000 clients
    let t0 = Instant::now();
    let refused = fill(server.web, sources);
    assert!(refused.is_empty(), "fill refused: {refused:?}");
    let total = (sources * PER_SOURCE) as u64;
    eprintln!("{total} clients reported in {:?}", t0.elapsed());

    let (status, body, took) = get(server.web, "/api/clients");
    assert_eq!(status, 200);
    eprintln!("/api/clients: {} bytes in {took:?}", body.len());
    assert!(
        body.len() < 64 * 1024,
        "a default page of {} bytes",
        body.len()
    );
    let page = json(&body);
    assert_eq!(page["total"], total);
    assert_eq!(page["clients"].as_array().expect("clients").len(), 100);
    assert_eq!(page["next_offset"], 100);
    assert!(took < Duration::from_millis(500), "{took:?}");

    // The largest page, far into the inventory, stays within its byte budget.
    let (status, body, took) = get(server.web, "/api/clients?offset=30000&limit=1000000");
    assert_eq!(status, 200);
    eprintln!(
        "/api/clients?offset=30000&limit=1000000: {} bytes in {took:?}",
        body.len()
    );
    assert!(body.len() <= 256 * 1024 + 2048, "{} bytes", body.len());
    let page = json(&body);
    assert_eq!(page["limit"], 1000);
    let n = page["clients"].as_array().expect("clients").len() as u64;
    assert!(n > 0 && n <= 1000);
    assert_eq!(page["next_offset"], 30_000 + n);
    assert!(took < Duration::from_millis(500), "{took:?}");

    let (status, body, took) = get(server.web, "/api/status");
    assert_eq!(status, 200);
    let s = json(&body);
    assert_eq!(s["clients"], total);
    assert_eq!(s["clients_by_stage"]["script"], total);
    eprintln!("/api/status in {took:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
    assert_eq!(get(server.web, "/api/clients?limit=x").0, 400);
}

/// RRQ for `file` (one block), the time to its DATA 1, then ACK it.
fn tftp_latency(sock: &UdpSocket, tftp: SocketAddr, file: &str) -> Duration {
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(file.as_bytes());
    rrq.extend_from_slice(b"\0octet\0");
    let t0 = Instant::now();
    sock.send_to(&rrq, tftp).expect("RRQ");
    let mut buf = [0u8; 1024];
    loop {
        match eintr(|| sock.recv_from(&mut buf)) {
            Ok((n, from)) if n >= 4 && buf[..4] == [0, 3, 0, 1] => {
                let took = t0.elapsed();
                let _ = sock.send_to(&[0, 4, 0, 1], from);
                return took;
            }
            Ok(_) => continue,
            Err(e) => panic!("no DATA 1 within the timeout ({:?}): {e}", t0.elapsed()),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn boot_requests_are_answered_promptly_while_the_web_service_is_hammered() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("tiny.bin"), 300, 3);
    // One boot loop: before, the web service shared it with TFTP and proxyDHCP.
    let server = Server::start(root.path(), &["--no-dhcp", "--threads", "1"]);
    let refused = fill(server.web, 1_400);
    assert!(refused.is_empty(), "fill refused: {refused:?}");

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let quiet: Vec<Duration> = (0..20)
        .map(|_| tftp_latency(&sock, server.tftp, "tiny.bin"))
        .collect();

    // Three clients asking for the largest pages and the status back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    let web = server.web;
    let hammers: Vec<_> = (0..3)
        .map(|k| {
            let (stop, pages) = (Arc::clone(&stop), Arc::clone(&pages));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = if i % 4 == 3 {
                        "/api/status".to_owned()
                    } else {
                        format!("/api/clients?limit=1000&offset={}", (i * 997 + k) % 40_000)
                    };
                    let (status, _, _) = get(web, &path);
                    assert_eq!(status, 200, "{path}");
                    pages.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut loaded = Vec::new();
    while t0.elapsed() < Duration::from_secs(4) {
        loaded.push(tftp_latency(&sock, server.tftp, "tiny.bin"));
        std::thread::sleep(Duration::from_millis(40));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().expect("web client");
    }
    let mut quiet = quiet;
    quiet.sort();
    loaded.sort();
    let (p50, p90, max) = (
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.9),
        percentile(&loaded, 1.0),
    );
    eprintln!(
        "TFTP first block: quiet median {:?}; under web load ({} web requests, {} probes) \
         median {p50:?}, p90 {p90:?}, max {max:?}",
        percentile(&quiet, 0.5),
        pages.load(Ordering::Relaxed),
        loaded.len()
    );
    assert!(pages.load(Ordering::Relaxed) >= 30, "the web load ran");
    // Generous for a shared 2-core machine (measured: a median of 0.2 ms, a p90 under 1 ms).
    // With the web service on the boot loop, each whole-inventory answer stalled TFTP while it
    // was built (measured there: a median of 122 ms, a p90 of 241 ms).
    assert!(p50 < Duration::from_millis(25), "median {p50:?}");
    assert!(p90 < Duration::from_millis(100), "p90 {p90:?}");
}

#[test]
fn clients_that_pipeline_page_requests_and_never_read_cannot_grow_memory() {
    let root = tempfile::tempdir().expect("tmp");
    let server = Server::start(root.path(), &["--no-dhcp"]);
    let refused = fill(server.web, 1_400);
    assert!(refused.is_empty(), "fill refused: {refused:?}");
    // Warm up: one of each page size, read, so steady allocations are in the baseline.
    for path in ["/api/clients?limit=1000", "/api/status"] {
        assert_eq!(get(server.web, path).0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = server.rss_anon_kib();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(server.web).expect("connect");
        let reqs = request("/api/clients?limit=1000", false).repeat(8);
        s.write_all(reqs.as_bytes()).expect("pipeline");
        sockets.push(s);
    }
    // Long enough for the server to answer everything it will answer.
    let mut peak = before;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        peak = peak.max(server.rss_anon_kib());
    }
    let grown = peak.saturating_sub(before);
    eprintln!("RssAnon {before} KiB before, peak {peak} KiB: +{grown} KiB");
    // Each connection holds at most one page it could not send (256 KiB) beyond what the kernel
    // buffers; 3 connections: well under this bound.
    assert!(grown < 16 * 1024, "RssAnon grew by {grown} KiB");
    // The service still answers others.
    let (status, _, took) = get(server.web, "/api/status");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(sockets);
}

#[test]
fn the_web_loop_drains_with_the_boot_loops() {
    let root = tempfile::tempdir().expect("tmp");
    let mut server = Server::start(root.path(), &["--no-dhcp"]);
    // An idle keep-alive web connection, one request answered.
    let mut idle = TcpStream::connect(server.web).expect("connect");
    idle.write_all(request("/api/status", false).as_bytes())
        .expect("send");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(read_responses(&mut idle, 1)[0].0, 200);
    let t0 = Instant::now();
    server.sigterm();
    // The idle connection is closed and the port stops accepting.
    let mut b = [0u8; 16];
    let eof = loop {
        match eintr(|| idle.read(&mut b)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    assert_eq!(eof.expect("EOF, not a timeout"), 0);
    crate::drain::wait_until_refused(server.web);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("zpxe still running after the drain");
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}
