//! Real HTTP clients against the zpxe binary's boot port: curl and raw sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use sha2::{Digest, Sha256};

use crate::common::{Server, curl_bytes, pattern_file, require, run};

fn curl(args: &[&str]) -> (bool, String) {
    run(
        Command::new(require("curl"))
            .args(["-sS", "--max-time", "60"])
            .args(args),
        Duration::from_secs(70),
    )
}

fn setup() -> (tempfile::TempDir, Vec<u8>, Server) {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(
        &root.path().join("sources/boot.wim"),
        5 * 1024 * 1024 + 11,
        21,
    );
    let server = Server::start(root.path(), &[]);
    (root, data, server)
}

#[test]
fn full_and_ranged_downloads_are_byte_exact() {
    let (_root, data, server) = setup();
    let url = format!("http://{}/sources/boot.wim", server.http);
    let full = curl_bytes(&[&url]);
    assert_eq!(Sha256::digest(&full), Sha256::digest(&data));
    assert_eq!(curl_bytes(&["-r", "0-0", &url]), data[..1]);
    assert_eq!(curl_bytes(&["-r", "-1", &url]), data[data.len() - 1..]);
    assert_eq!(curl_bytes(&["-r", "1000-", &url]), data[1000..]);
    assert_eq!(
        curl_bytes(&["-r", "4096-1052671", &url]),
        data[4096..1_052_672]
    );
}

#[test]
fn range_past_the_end_is_416_with_length() {
    let (_root, data, server) = setup();
    let url = format!("http://{}/sources/boot.wim", server.http);
    let (ok, out) = curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-r",
        &format!("{}-", data.len() + 10),
        &url,
    ]);
    assert!(ok, "{out}");
    assert!(out.starts_with("HTTP/1.1 416"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("content-range: bytes */{}", data.len())),
        "{out}"
    );
}

#[test]
fn multi_range_is_multipart_byteranges() {
    let (_root, data, server) = setup();
    let url = format!("http://{}/sources/boot.wim", server.http);
    let (ok, out) = curl(&["-D", "-", "-o", "/dev/null", "-r", "0-9,100-109", &url]);
    assert!(ok, "{out}");
    assert!(out.starts_with("HTTP/1.1 206"), "{out}");
    assert!(out.contains("multipart/byteranges; boundary="), "{out}");
    let body = curl_bytes(&["-r", "0-9,100-109", &url]);
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        find(&data[0..10]) && find(&data[100..110]),
        "both parts present"
    );
    assert!(find(
        format!("Content-Range: bytes 0-9/{}", data.len()).as_bytes()
    ));
}

#[test]
fn head_and_conditional_requests() {
    let (_root, data, server) = setup();
    let url = format!("http://{}/sources/boot.wim", server.http);
    let (ok, head) = curl(&["-I", &url]);
    assert!(ok, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    assert!(lower.contains("accept-ranges: bytes"), "{head}");
    let etag = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("ETag: ")
                .or_else(|| l.strip_prefix("etag: "))
        })
        .expect("etag")
        .trim()
        .to_owned();
    let last_modified = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Last-Modified: ")
                .or_else(|| l.strip_prefix("last-modified: "))
        })
        .expect("last-modified")
        .trim()
        .to_owned();
    let (ok, out) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &format!("If-None-Match: {etag}"),
        &url,
    ]);
    assert!(ok && out.starts_with("HTTP/1.1 304"), "{out}");
    let (ok, out) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &format!("If-Modified-Since: {last_modified}"),
        &url,
    ]);
    assert!(ok && out.starts_with("HTTP/1.1 304"), "{out}");
    // If-Range with a stale validator: the whole file, not the range.
    let body = curl_bytes(&["-r", "0-9", "-H", "If-Range: \"stale\"", &url]);
    assert_eq!(body.len(), data.len());
    let body = curl_bytes(&["-r", "0-9", "-H", &format!("If-Range: {etag}"), &url]);
    assert_eq!(body, data[..10]);
}

fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("header byte");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf8");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("body");
    (head, body)
}

#[test]
fn pipelined_requests_over_one_connection() {
    let (_root, data, server) = setup();
    let mut s = TcpStream::connect(server.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = |range: &str| {
        format!("GET /sources/boot.wim HTTP/1.1\r\nHost: x\r\nRange: bytes={range}\r\n\r\n")
    };
    let all = format!("{}{}{}", req("0-99"), req("100-199"), req("-50"));
    s.write_all(all.as_bytes()).expect("write");
    for want in [&data[0..100], &data[100..200], &data[data.len() - 50..]] {
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert_eq!(body, want);
    }
}

#[test]
fn oversized_header_gets_431() {
    let (_root, _data, server) = setup();
    let mut s = TcpStream::connect(server.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let big = "a".repeat(64 * 1024);
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let mut buf = [0u8; 64];
    let n = eintr(|| s.read(&mut buf)).expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[test]
fn slowloris_is_dropped_while_others_are_served() {
    let (_root, data, server) = setup();
    let mut slow = TcpStream::connect(server.http).expect("connect");
    slow.write_all(b"GET /sources/boot.wim HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let started = Instant::now();
    // Others are served meanwhile.
    let url = format!("http://{}/sources/boot.wim", server.http);
    assert_eq!(curl_bytes(&["-r", "0-9", &url]), data[..10]);
    // The slow client trickles a header line now and then but never finishes; the server's
    // header deadline closes it.
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slow client still connected after 60 s"
        );
        let _ = slow.write_all(b"X-Slow: 1\r\n");
        match eintr(|| slow.read(&mut buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => break,
        }
    }
}

/// zpxe with HTTPS on a free port, a fresh self-signed certificate in `root`.
fn https_server(root: &std::path::Path) -> (Server, u16) {
    let (config, port) = tls_config(root, |p| p.display().to_string());
    let config = config.to_string_lossy().into_owned();
    let server = Server::start(root, &["--config", &config]);
    (server, port)
}

/// Makes a throwaway certificate in `root` and a config beside it whose `[tls]` names it (each
/// path as `name` spells it for the server); returns the config's path and the HTTPS port.
pub(crate) fn tls_config(
    root: &std::path::Path,
    name: impl Fn(&std::path::Path) -> String,
) -> (std::path::PathBuf, u16) {
    let (cert, key) = (root.join("cert.pem"), root.join("key.pem"));
    let (ok, log) = run(
        Command::new(require("openssl"))
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=zpxe-test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(30),
    );
    assert!(ok, "{log}");
    let port = crate::common::free_tcp_port();
    let config = root.join("zpxe.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nport = {port}\n",
            name(&cert),
            name(&key)
        ),
    )
    .expect("config");
    (config, port)
}

#[test]
fn https_serves_files_and_scripts_that_stay_on_https() {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(
        &root.path().join("sources/boot.wim"),
        3 * 1024 * 1024 + 5,
        23,
    );
    let (server, port) = https_server(root.path());
    let base = format!("https://127.0.0.1:{port}");
    let full = curl_bytes(&["-k", &format!("{base}/sources/boot.wim")]);
    assert_eq!(Sha256::digest(&full), Sha256::digest(&data));
    assert_eq!(
        curl_bytes(&["-k", "-r", "1000-2999", &format!("{base}/sources/boot.wim")]),
        data[1000..3000]
    );
    let script = String::from_utf8(curl_bytes(&[
        "-k",
        &format!("{base}/boot.ipxe?mac=52:54:00:00:00:01"),
    ]))
    .expect("utf8");
    assert!(script.starts_with("#!ipxe"), "{script}");
    // Plain HTTP still works beside it.
    let plain = curl_bytes(&[
        "-r",
        "0-9",
        &format!("http://{}/sources/boot.wim", server.http),
    ]);
    assert_eq!(plain, data[..10]);
    // A client speaking plain HTTP to the TLS port gets no file.
    let (ok, _) = curl(&[
        &format!("http://127.0.0.1:{port}/sources/boot.wim"),
        "-o",
        "/dev/null",
    ]);
    assert!(!ok);
}

#[test]
fn at_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let root = tempfile::tempdir().expect("tmp");
    let small = pattern_file(&root.path().join("small.bin"), 4000, 3);
    let config = root.path().join("zpxe.toml");
    std::fs::write(&config, "[http]\nmax-connections = 2\n").expect("config");
    // One loop: the cap is shared by all loops anyway, one keeps the timing plain.
    let mut server = Server::start(
        root.path(),
        &["--config", config.to_str().expect("utf8"), "--threads", "1"],
    );
    let fetch = |c: &mut TcpStream| {
        write!(c, "GET /small.bin HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        while !got.ends_with(&small) {
            let n = eintr(|| c.read(&mut chunk))?;
            if n == 0 {
                return Err(std::io::Error::other("closed"));
            }
            got.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(server.http).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        fetch(&mut c).expect("served under the cap");
        open.push(c);
    }
    // The third connects (the kernel's backlog) but is not served while two are open.
    let mut third = TcpStream::connect(server.http).expect("connect");
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("timeout");
    assert!(fetch(&mut third).is_err(), "served past the cap");
    // One closes: the third is served.
    drop(open.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Its request was sent already; the response follows once it is accepted.
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while !got.ends_with(&small) {
        let n = eintr(|| third.read(&mut chunk)).expect("served once a slot freed");
        assert!(n > 0, "closed instead of served");
        got.extend_from_slice(&chunk[..n]);
    }
    server.wait_for_log("connection cap reached", Duration::from_secs(2));
}

#[test]
fn an_idle_https_connection_is_closed_by_the_drain() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("f.bin"), 1000, 5);
    let (mut server, port) = https_server(root.path());
    // A TLS client that sends nothing and keeps its input open: it ends when zpxe closes.
    let mut client = Command::new(require("openssl"))
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        matches!(client.try_wait(), Ok(None)),
        "s_client ended before the drain"
    );
    server.sigterm();
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(client.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = client.kill();
            panic!("the idle TLS connection was not closed by the drain");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("zpxe did not exit after draining");
    assert!(status.success(), "exit status {status}");
}

/// `http.access-log`: one line per response on the boot port, in nginx's combined format with
/// the seconds taken after it; User-Agent and Referer as the client sent them, a 404 and a 400
/// too; a quote in the User-Agent cannot end its field.
#[test]
fn the_access_log_has_a_combined_line_per_response() {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(&root.path().join("small.bin"), 3000, 5);
    let log = root.path().join("access.log");
    let config = root.path().join("zpxe.toml");
    std::fs::write(
        &config,
        format!("[http]\naccess-log = {:?}\n", log.to_str().expect("utf8")),
    )
    .expect("config");
    let server = Server::start(root.path(), &["--config", config.to_str().expect("utf8")]);
    let url = format!("http://{}/small.bin?x=1", server.http);
    let got = curl_bytes(&[
        "-A",
        "zpxe-test/1.0 \"q\"",
        "-e",
        "http://ref.example/p",
        &url,
    ]);
    assert_eq!(got, data);
    let missing = format!("http://{}/nothing.bin", server.http);
    let (ok, _) = curl(&["-o", "/dev/null", &missing]);
    assert!(ok);
    let mut c = TcpStream::connect(server.http).expect("connect");
    c.write_all(b"GET /small.bin HTTP/1.1\r\n\r\n")
        .expect("send");
    let mut bad = Vec::new();
    let _ = c.read_to_end(&mut bad);
    // The writer flushes after each batch: wait for the three lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let ok_line = lines[0];
    assert!(ok_line.starts_with("127.0.0.1 - - ["), "{ok_line}");
    assert!(
        ok_line.contains(
            "] \"GET /small.bin?x=1 HTTP/1.1\" 200 3000 \"http://ref.example/p\" \
             \"zpxe-test/1.0 \\x22q\\x22\" "
        ),
        "{ok_line}"
    );
    let seconds = ok_line.rsplit(' ').next().expect("time");
    assert!(seconds.parse::<f64>().is_ok(), "{ok_line}");
    // [dd/Mon/yyyy:hh:mm:ss +0000]
    let time = &ok_line[ok_line.find('[').expect("[") + 1..ok_line.find(']').expect("]")];
    assert_eq!(time.len(), 26, "{time}");
    assert!(time.ends_with(" +0000"), "{time}");
    assert!(
        lines[1].contains("\"GET /nothing.bin HTTP/1.1\" 404 "),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("\"-\" \"curl/"), "{}", lines[1]);
    assert!(lines[2].contains("] \"-\" 400 "), "{}", lines[2]);
}
