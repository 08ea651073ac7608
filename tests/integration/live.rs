//! The live view on the web service: Server-Sent Events during a storm (and a client that
//! never reads them), `/api/v1/status` during a slow download, and the page at `/` in headless
//! Chromium, with client-sent markup shown as text.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use serde_json::Value;

use crate::common::{Server, require, run};
use crate::loadgen::{image_set, loadgen, report};

/// `GET path` on the web service: status, head and body.
fn get(web: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&web, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

fn json(web: SocketAddr, path: &str) -> Value {
    let (status, _, body) = get(web, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// One counter from `/metrics`.
fn metric(web: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = get(web, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// Opens `/api/v1/events` and checks the stream's head.
fn open_events(web: SocketAddr) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect_timeout(&web, Duration::from_secs(5)).expect("connect");
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: {web}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    r
}

/// Reads SSE frames into `frames` (their JSON) until `stop`.
fn collect(
    mut r: BufReader<TcpStream>,
    frames: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    std::thread::spawn(move || {
        // Bytes, not a String: a read that times out mid-character keeps what it read.
        let mut line = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) if line.ends_with(b"\n") => {
                    if let Some(data) = line.strip_prefix(b"data: ") {
                        let v: Value = serde_json::from_slice(data).unwrap_or_else(|e| {
                            panic!("frame {:?}: {e}", String::from_utf8_lossy(data))
                        });
                        frames.lock().expect("frames").push(v);
                    }
                    line.clear();
                }
                // A partial line stays in `line` until the rest comes.
                Ok(_) | Err(_) => {}
            }
        }
    })
}

#[test]
fn sse_streams_every_leg_of_a_storm_and_a_client_that_never_reads_is_dropped() {
    let (root, config) = image_set();
    let server = Server::start(root.path(), &["--config", &config]);

    let frames = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = collect(open_events(server.web), frames.clone(), stop.clone());
    // Sends its request, then never reads a byte.
    let mut sleeper = TcpStream::connect(server.web).expect("connect");
    write!(
        sleeper,
        "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.web
    )
    .expect("send");

    let json_path = root.path().join("storm.json");
    let (ok, log) = run(
        &mut loadgen(&server, root.path(), 100, &json_path, 60),
        Duration::from_secs(90),
    );
    assert!(ok, "{log}");
    let r = report(&json_path);
    assert_eq!(r["booted"], 100, "{log}");
    assert_eq!(r["failed"], 0, "{log}");

    // The MACs the storm's scripts reported.
    let inventory = json(server.web, "/api/clients?limit=1000");
    let macs: Vec<String> = inventory["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["mac"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(macs.len(), 100, "{inventory}");

    // Every client's legs reach the stream (within a few pumps).
    let deadline = Instant::now() + Duration::from_secs(10);
    let lacking = loop {
        let got = frames.lock().expect("frames").clone();
        let has = |mac: &str, pred: &dyn Fn(&Value) -> bool| {
            got.iter().any(|f| f["mac"] == mac && pred(f))
        };
        let lacking: Vec<String> = macs
            .iter()
            .filter_map(|mac| {
                let mut lack = Vec::new();
                if !has(mac, &|f| f["kind"] == "dhcp-offer") {
                    lack.push("dhcp-offer");
                }
                if !has(mac, &|f| f["kind"] == "ipxe-dhcp") {
                    lack.push("ipxe-dhcp");
                }
                if !has(mac, &|f| f["kind"] == "stage" && f["stage"] == "chosen") {
                    lack.push("stage chosen");
                }
                (!lack.is_empty()).then(|| format!("{mac}: {}", lack.join(", ")))
            })
            .collect();
        let count = |pred: &dyn Fn(&Value) -> bool| got.iter().filter(|f| pred(f)).count();
        let tftp_ends = count(&|f| f["kind"] == "tftp-end" && f["outcome"] == "ok");
        let http_files = count(&|f| f["kind"] == "http-file" && f["bytes"].as_u64() > Some(0));
        let progress_tftp = count(&|f| f["type"] == "progress" && f["leg"] == "tftp");
        let progress_http = count(&|f| f["type"] == "progress" && f["leg"] == "http");
        let done = lacking.is_empty()
            && tftp_ends >= 100
            && http_files >= 100
            && progress_tftp >= 100
            && progress_http >= 100;
        if done || Instant::now() > deadline {
            break (lacking, tftp_ends, http_files, progress_tftp, progress_http);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let got = frames.lock().expect("frames").clone();
    let missed: Vec<&Value> = got.iter().filter(|f| f.get("missed").is_some()).collect();
    assert!(
        lacking.0.is_empty(),
        "legs missing ({} frames, lagged: {missed:?}, first: {:?}, streams dropped: {}, \
         events dropped: {}) for {:?}",
        got.len(),
        got.first(),
        metric(server.web, "zpxe_sse_streams_dropped_total"),
        metric(server.web, "zpxe_live_events_dropped_total"),
        lacking.0
    );
    assert!(lacking.1 >= 100, "TFTP ends streamed: {}", lacking.1);
    assert!(lacking.2 >= 100, "HTTP files streamed: {}", lacking.2);
    assert!(
        lacking.3 >= 100 && lacking.4 >= 100,
        "progress frames: {} TFTP, {} HTTP",
        lacking.3,
        lacking.4
    );
    assert_eq!(metric(server.web, "zpxe_live_events_dropped_total"), 0);

    // Now enough frames to fill the sleeper's socket buffers: refused TFTP requests (each an
    // error event), in bursts the pump keeps up with.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    for burst in 0..8 {
        for i in 0..4000 {
            let mut rrq = b"\x00\x01".to_vec();
            rrq.extend_from_slice(
                format!("no-such-file-{burst}-{i}-{}", "x".repeat(80)).as_bytes(),
            );
            rrq.extend_from_slice(b"\x00octet\x00");
            udp.send_to(&rrq, server.tftp).expect("rrq");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // A stream that takes nothing for 5 s is dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(server.web, "zpxe_sse_streams_dropped_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "the never-reading client is still streamed to"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Its connection is closed: what was buffered, then the end.
    sleeper
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut sink = Vec::new();
    let end = sleeper.read_to_end(&mut sink);
    assert!(end.is_ok() || sink.len() > 1000, "{end:?}");
    // The reader that keeps up is still streamed to, and was told when it fell behind.
    let before = frames.lock().expect("frames").len();
    let (status, _, _) = get(
        server.web,
        "/report?mac=52:54:00:fe:fe:fe&stage=loaded&detail=after",
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !frames.lock().expect("frames")[before..]
        .iter()
        .any(|f| f["mac"] == "52:54:00:fe:fe:fe")
    {
        assert!(
            Instant::now() < deadline,
            "the live reader got no new frame"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    assert_eq!(metric(server.web, "zpxe_sse_streams_opened_total"), 2);
    assert_eq!(metric(server.web, "zpxe_sse_streams_dropped_total"), 1);
}

#[test]
fn status_shows_a_slow_download_under_way_with_progress_and_rate() {
    let (root, config) = image_set();
    let big = 48 << 20;
    std::fs::write(root.path().join("big.bin"), vec![7u8; big]).expect("big file");
    let server = Server::start(root.path(), &["--config", &config]);

    let mut s = TcpStream::connect(server.http).expect("connect");
    write!(s, "GET /big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", server.http).expect("send");
    // About 4 MB/s: the whole file would take 12 s.
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0usize;
    let started = Instant::now();
    let mut seen: Option<Value> = None;
    while started.elapsed() < Duration::from_secs(8) {
        let n = eintr(|| s.read(&mut buf)).expect("read");
        assert!(n > 0, "the download ended early");
        got += n;
        std::thread::sleep(Duration::from_millis(15));
        if got > (8 << 20) && seen.is_none() {
            let status = json(server.web, "/api/v1/status");
            let t = status["transfers"]
                .as_array()
                .expect("transfers")
                .iter()
                .find(|t| t["leg"] == "http" && t["file"] == "big.bin")
                .cloned();
            if let Some(t) = t {
                assert_eq!(status["active_transfers"], 1, "{status}");
                assert_eq!(
                    status["server"]["services"]["http"][0],
                    server.http.to_string()
                );
                assert!(status["server"]["io_driver"].is_string(), "{status}");
                assert!(status["uptime_s"].is_u64());
                seen = Some(t);
                break;
            }
        }
    }
    let t = seen.expect("the download never showed in /api/v1/status");
    assert_eq!(t["total"], big as u64, "{t}");
    let done = t["done"].as_u64().expect("done");
    assert!(done > 0 && done < big as u64, "{t}");
    assert!(t["rate"].as_u64() > Some(100_000), "{t}");
    assert_eq!(t["remote"], s.local_addr().expect("addr").to_string());
    // The client goes: the transfer leaves the list (10 s without progress at the latest).
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = json(server.web, "/api/v1/status");
        if status["active_transfers"] == 0 {
            assert_eq!(status["legs"]["http"]["started"], 1, "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still active: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_transfer_that_ends_takes_only_itself_off_the_list() {
    let (root, config) = image_set();
    std::fs::write(root.path().join("big.bin"), vec![7u8; 32 << 20]).expect("big file");
    let server = Server::start(root.path(), &["--config", &config]);
    // A: a download that reads 4 MiB, then stalls (its socket buffers fill; it stays listed
    // for 10 s after its last progress).
    let mut a = TcpStream::connect(server.http).expect("connect");
    write!(a, "GET /big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", server.http).expect("send");
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < (4 << 20) {
        let n = eintr(|| a.read(&mut buf)).expect("read");
        assert!(n > 0, "the download ended early");
        got += n;
    }
    let mine = a.local_addr().expect("addr").to_string();
    let listed = |status: &Value| {
        status["transfers"]
            .as_array()
            .expect("transfers")
            .iter()
            .any(|t| t["remote"] == mine.as_str() && t["file"] == "big.bin")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listed(&json(server.web, "/api/v1/status")) {
        assert!(Instant::now() < deadline, "the download never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // B: the same file from the same address, a range, whole at once; then its end event.
    let mut b = TcpStream::connect(server.http).expect("connect");
    write!(
        b,
        "GET /big.bin HTTP/1.1\r\nHost: {}\r\nRange: bytes=0-99999\r\nConnection: close\r\n\r\n",
        server.http
    )
    .expect("send");
    let mut whole = Vec::new();
    b.read_to_end(&mut whole).expect("read");
    assert!(whole.starts_with(b"HTTP/1.1 206"), "{:?}", &whole[..40]);
    // B ended (its file counted ok) and A is still under way: on the previous code the end of
    // B's `/big.bin` for 127.0.0.1 matched A by address and file name and took it off too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = json(server.web, "/api/v1/status");
        if status["legs"]["http"]["ok"].as_u64() >= Some(1) {
            break status;
        }
        assert!(Instant::now() < deadline, "B's end never came: {status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed(&status), "A left the list with B's end: {status}");
    assert_eq!(status["active_transfers"], 1, "{status}");
    drop(a);
}

#[test]
fn one_address_holds_at_most_four_event_streams() {
    let root = tempfile::tempdir().expect("tmp");
    let server = Server::start(root.path(), &["--no-dhcp"]);
    let mut streams: Vec<_> = (0..4).map(|_| open_events(server.web)).collect();
    // A fifth from the same address: 503, told when to come back.
    let (status, head, body) = get(server.web, "/api/v1/events");
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 5"),
        "{head}"
    );
    assert!(body.contains("per address"), "{body}");
    // Another address still gets one (on the previous code the 32 places were anyone's).
    let out = Command::new(require("curl"))
        .args(["-s", "-N", "-m", "2", "-D", "-", "-o", "/dev/null"])
        .args(["--interface", "127.0.0.3"])
        .arg(format!("http://{}/api/v1/events", server.web))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(metric(server.web, "zpxe_sse_streams_refused_total") >= 1);
    // A stream that ends gives its place back (noticed at its next write: a report makes one).
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = get(server.web, "/report?mac=52:54:00:fe:00:01&stage=script");
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(300));
        let mut s = TcpStream::connect(server.web).expect("connect");
        write!(
            s,
            "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.web
        )
        .expect("send");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut first = [0u8; 12];
        s.read_exact(&mut first).expect("status line");
        if &first == b"HTTP/1.1 200" {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
    }
    drop(streams);
}

/// What a client could send to put markup in the page.
const XSS: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn chromium_shows_the_storm_and_client_markup_as_text() {
    let chromium = require("chromium");
    let (root, config) = image_set();
    let server = Server::start(root.path(), &["--config", &config]);
    // The page's headers: a strict policy, its own origin only.
    let (status, head, _) = get(server.web, "/");
    assert_eq!(status, 200);
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
        .unwrap_or_else(|| panic!("no CSP: {head}"));
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let (status, head, js) = get(server.web, "/app.js");
    assert_eq!(status, 200);
    assert!(
        head.contains("text/javascript") && js.contains("EventSource"),
        "{head}"
    );

    let json_path = root.path().join("storm.json");
    let (ok, log) = run(
        &mut loadgen(&server, root.path(), 30, &json_path, 60),
        Duration::from_secs(90),
    );
    assert!(ok, "{log}");
    assert_eq!(report(&json_path)["booted"], 30, "{log}");
    let (status, _, body) = get(
        server.web,
        &format!(
            "/report?mac=52:54:00:ab:cd:ef&stage=failed&detail={}",
            percent_encode(XSS)
        ),
    );
    assert_eq!(status, 200, "{body}");
    // The writer commits every 100 ms; the stage counts come from the database.
    std::thread::sleep(Duration::from_millis(500));

    let profile = tempfile::tempdir().expect("profile");
    let shot = root.path().join("page.png");
    let url = format!("http://{}/", server.web);
    let browse = |extra: &[&str]| {
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--window-size=1400,1200",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url);
        run(&mut cmd, Duration::from_secs(60))
    };
    let (ok, dom) = browse(&["--dump-dom"]);
    assert!(ok, "{dom}");
    // The storm's machines, with their stages and progress bars, and the counts by stage.
    let rows = dom.matches("<tr class=\"machine\">").count();
    assert!(rows >= 30, "{rows} machine rows:\n{dom}");
    assert!(dom.contains("<progress"), "{dom}");
    assert!(dom.contains("class=\"stage-count\""), "{dom}");
    assert!(dom.contains("52:54:00:ab:cd:ef"), "{dom}");
    assert!(dom.contains("<polyline class=\"http\" points=\""), "{dom}");
    // The report's markup is text: escaped in the DOM, no element made from it, and the
    // script in it never ran.
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x"),
        "{dom}"
    );
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("<title>zpxe</title>"), "{dom}");
    assert!(!dom.contains("status unavailable"), "{dom}");
    let (ok, out) = browse(&[&format!("--screenshot={}", shot.display())]);
    assert!(ok, "{out}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}
