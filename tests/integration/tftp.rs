//! Real TFTP clients against the zpxe binary: curl, atftp, busybox.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use sha2::{Digest, Sha256};

use crate::common::{Server, pattern_file, require, run};

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn curl_get(server: &Server, file: &str, blksize: u32, out: &Path) -> (bool, String) {
    let url = format!("tftp://{}/{}", server.tftp, file);
    run(
        Command::new(require("curl"))
            .args(["-sS", "--max-time", "60", "--tftp-blksize"])
            .arg(blksize.to_string())
            .arg("-o")
            .arg(out)
            .arg(url),
        Duration::from_secs(70),
    )
}

#[test]
fn curl_downloads_are_byte_exact_at_every_blksize() {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(
        &root.path().join("boot/loader.efi"),
        3 * 1024 * 1024 + 123,
        1,
    );
    // A size that is an exact multiple of the block size ends with an empty DATA packet.
    let exact = pattern_file(&root.path().join("exact.bin"), 1468 * 100, 2);
    std::fs::write(root.path().join("empty.bin"), b"").expect("write");
    let server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().expect("tmp");
    for blksize in [512, 1468, 8192, 65464] {
        let dst = out.path().join(format!("loader-{blksize}"));
        let (ok, log) = curl_get(&server, "boot/loader.efi", blksize, &dst);
        assert!(ok, "curl blksize {blksize} failed: {log}");
        let got = std::fs::read(&dst).expect("read");
        assert_eq!(got.len(), data.len(), "blksize {blksize}");
        assert_eq!(sha(&got), sha(&data), "blksize {blksize}");
    }
    let dst = out.path().join("exact");
    let (ok, log) = curl_get(&server, "exact.bin", 1468, &dst);
    assert!(ok, "{log}");
    assert_eq!(sha(&std::fs::read(&dst).expect("read")), sha(&exact));
    // curl 7.88 reports "getpeername() failed" on every zero-length TFTP download (its own
    // quirk: busybox and atftp take the same single empty DATA packet), so check with those.
    let dst = out.path().join("empty");
    let (ok, log) = run(
        Command::new(require("busybox"))
            .args(["tftp", "-g", "-r", "empty.bin", "-l"])
            .arg(&dst)
            .arg(server.tftp.ip().to_string())
            .arg(server.tftp.port().to_string()),
        Duration::from_secs(30),
    );
    assert!(ok, "{log}");
    assert_eq!(std::fs::read(&dst).expect("read").len(), 0);
}

#[test]
fn curl_gets_errors_for_missing_and_escaping_names() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("a.bin"), 10, 3);
    let server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().expect("tmp");
    for name in ["missing.bin", "../../etc/passwd", "..%2f..%2fetc%2fpasswd"] {
        let dst = out.path().join("x");
        let (ok, log) = curl_get(&server, name, 1468, &dst);
        assert!(!ok, "{name} should fail: {log}");
    }
}

#[test]
fn atftp_with_windowsize_64_is_byte_exact() {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(&root.path().join("big.bin"), 16 * 1024 * 1024 + 7, 4);
    let server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().expect("tmp");
    for (window, blksize) in [(64, 1468), (4, 1468), (1, 512)] {
        let dst = out.path().join(format!("big-{window}"));
        let (ok, log) = run(
            Command::new(require("atftp"))
                .args(["--option", &format!("windowsize {window}")])
                .args(["--option", &format!("blksize {blksize}")])
                .args(["--option", "tsize 0"])
                .args(["-g", "-r", "big.bin", "-l"])
                .arg(&dst)
                .arg(server.tftp.ip().to_string())
                .arg(server.tftp.port().to_string()),
            Duration::from_secs(120),
        );
        assert!(ok, "atftp windowsize {window} failed: {log}");
        let got = std::fs::read(&dst).expect("read");
        assert_eq!(sha(&got), sha(&data), "windowsize {window}");
    }
}

#[test]
fn busybox_tftp_is_byte_exact() {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(&root.path().join("undionly.kpxe"), 1024 * 1024 + 1, 5);
    let server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().expect("tmp");
    for blksize in [None, Some(1456)] {
        let dst = out.path().join(format!("u-{blksize:?}"));
        let mut cmd = Command::new(require("busybox"));
        cmd.arg("tftp");
        if let Some(b) = blksize {
            cmd.args(["-b", &b.to_string()]);
        }
        cmd.args(["-g", "-r", "undionly.kpxe", "-l"])
            .arg(&dst)
            .arg(server.tftp.ip().to_string())
            .arg(server.tftp.port().to_string());
        let (ok, log) = run(&mut cmd, Duration::from_secs(60));
        assert!(ok, "busybox tftp {blksize:?} failed: {log}");
        assert_eq!(sha(&std::fs::read(&dst).expect("read")), sha(&data));
    }
}

/// A slow lock-step download (blksize 512, no window) of a large file, started in the
/// background; returns the child and its output path.
fn slow_download(server: &Server, name: &str, dst: &Path) -> std::process::Child {
    Command::new(require("curl"))
        .args(["-sS", "--max-time", "120", "--tftp-blksize", "512", "-o"])
        .arg(dst)
        .arg(format!("tftp://{}/{}", server.tftp, name))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn curl")
}

#[test]
fn rename_replace_during_transfer_keeps_old_bytes_and_serves_new_ones_after() {
    let root = tempfile::tempdir().expect("tmp");
    let path = root.path().join("boot.wim");
    let old = pattern_file(&path, 48 * 1024 * 1024, 6);
    let mut server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().expect("tmp");
    let dst_old = out.path().join("old");
    let mut child = slow_download(&server, "boot.wim", &dst_old);
    server.wait_for_log("TFTP transfer started", Duration::from_secs(10));
    let new = pattern_file(&root.path().join("boot.wim.new"), 1024 * 1024, 7);
    std::fs::rename(root.path().join("boot.wim.new"), &path).expect("rename");
    let dst_new = out.path().join("new");
    let (ok, log) = curl_get(&server, "boot.wim", 1468, &dst_new);
    assert!(ok, "{log}");
    assert_eq!(
        sha(&std::fs::read(&dst_new).expect("read")),
        sha(&new),
        "new requests see the new file"
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "old transfer failed");
    assert_eq!(
        sha(&std::fs::read(&dst_old).expect("read")),
        sha(&old),
        "old transfer byte-exact"
    );
    assert!(server.alive());
}

#[test]
fn truncation_during_transfer_ends_that_transfer_and_nothing_else() {
    let root = tempfile::tempdir().expect("tmp");
    let path = root.path().join("boot.wim");
    pattern_file(&path, 48 * 1024 * 1024, 8);
    let other = pattern_file(&root.path().join("other.bin"), 2 * 1024 * 1024, 9);
    let mut server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().expect("tmp");
    let mut child = slow_download(&server, "boot.wim", &out.path().join("cut"));
    server.wait_for_log("TFTP transfer started", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    // The writer blocks on the server's read lease until the transfer is ended.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for write");
    f.set_len(1000).expect("truncate");
    drop(f);
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "a transfer whose file was truncated must not succeed"
    );
    assert!(server.alive(), "the server survived the truncation");
    server.wait_for_log("image changed", Duration::from_secs(10));
    let dst = out.path().join("other");
    let (ok, log) = curl_get(&server, "other.bin", 1468, &dst);
    assert!(ok, "{log}");
    assert_eq!(sha(&std::fs::read(&dst).expect("read")), sha(&other));
    let dst = out.path().join("after");
    let (ok, log) = curl_get(&server, "boot.wim", 1468, &dst);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(&dst).expect("read").len(),
        1000,
        "new requests see the truncated file"
    );
}

/// RRQ `name` in octet mode with `options` (name, value pairs).
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

/// `server.threads = 2` and a range of 64 transfer ports, 64 transfers at once from 64
/// addresses: each gets a port of its own. Seen before the fix (each loop kept its own list of
/// the ports it held): a loop tried ports the other held (up to 8 failing binds), then shared
/// a socket or, holding none itself, ended the transfer "out of transfer ports" while ports
/// were still free: in 3 runs, 61, 59 and 53 distinct ports for the 64 transfers.
#[test]
fn two_event_loops_take_transfer_ports_from_one_range() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("small.bin"), 4096, 10);
    let config = root.path().join("zpxe.toml");
    std::fs::write(&config, "[server]\nthreads = 2\n").expect("config");
    let config = config.display().to_string();
    let base = 10_000 + crate::common::free_udp_port() % 20_000;
    let range = format!("{base}-{}", base + 63);
    // A loopback address of its own: no other test's socket holds a port of the range there.
    let server = Server::start_on(
        "127.0.8.1",
        root.path(),
        &["--config", &config, "--tftp-port-range", &range],
    );
    // One address per client: the per-client cap is 8.
    let clients: Vec<UdpSocket> = (0..65u8)
        .map(|i| {
            let s = UdpSocket::bind((Ipv4Addr::new(127, 3, 0, i + 1), 0)).expect("bind client");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            s
        })
        .collect();
    let request = rrq("small.bin", &[]);
    // Block 1 comes from the transfer's port; nobody ACKs, so every transfer holds its port.
    let answer = |s: &UdpSocket| -> Option<u16> {
        s.send_to(&request, server.tftp).expect("send");
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            if let Ok((n, from)) = eintr(|| s.recv_from(&mut buf)) {
                return (n >= 4 && buf[..4] == [0, 3, 0, 1]).then_some(from.port());
            }
        }
        None
    };
    let ports: Vec<Option<u16>> = clients[..64].iter().map(answer).collect();
    let answered: Vec<u16> = ports.iter().flatten().copied().collect();
    let distinct: HashSet<u16> = answered.iter().copied().collect();
    assert!(
        answered.iter().all(|p| (base..base + 64).contains(p)),
        "ports outside {range}: {answered:?}"
    );
    assert_eq!(
        (answered.len(), distinct.len()),
        (64, 64),
        "64 transfers on a range of 64 ports: answered, distinct ports"
    );
    // The range is used up: the next transfer shares a port of it.
    let shared = answer(&clients[64]).expect("the 65th transfer is answered");
    assert!(distinct.contains(&shared), "{shared}");
}

/// `server.loop-handoff` with two loops: loop 0 holds port 69 and hands each request to the
/// loop its client's address picks. A refused request's ERROR leaves from the listener, which
/// a loop that was handed the request does not hold: it goes back to loop 0. 32 clients on 32
/// addresses ask for a missing file; each gets "file not found" from the listener's port, and
/// requests went to the other loop.
#[test]
fn handed_over_requests_get_their_errors_from_the_listener() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("small.bin"), 4096, 10);
    let config = root.path().join("zpxe.toml");
    std::fs::write(&config, "[server]\nthreads = 2\nloop-handoff = true\n").expect("config");
    let config = config.display().to_string();
    let server = Server::start_on("127.0.9.1", root.path(), &["--config", &config]);
    let missing = rrq("missing.bin", &[]);
    let present = rrq("small.bin", &[]);
    for i in 0..32u8 {
        let s = UdpSocket::bind((Ipv4Addr::new(127, 4, 0, i + 1), 0)).expect("bind client");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.send_to(&missing, server.tftp).expect("send");
        let mut buf = [0u8; 1024];
        let (n, from) = eintr(|| s.recv_from(&mut buf)).expect("an answer to every request");
        assert_eq!(
            from, server.tftp,
            "client {i}: the ERROR leaves from the listener"
        );
        assert_eq!(buf[..4], [0, 5, 0, 1], "client {i}: {:?}", &buf[..n]);
        // A file that is there: block 1, from a transfer port of the loop serving the client.
        s.send_to(&present, server.tftp).expect("send");
        let (n, from) = eintr(|| s.recv_from(&mut buf)).expect("block 1");
        assert_ne!(from, server.tftp, "client {i}");
        assert_eq!(buf[..4], [0, 3, 0, 1], "client {i}: {:?}", &buf[..n]);
    }
    let handed = crate::common::counter(&server, "loop_handoff_tftp_total");
    assert!(handed > 0, "requests handed to loop 1: {handed}");
}

/// `--tftp-single-port`: every transfer leaves from port 69. Seen before the fix: the live
/// view's progress and the end of a transfer whose file changed were keyed on a transfer
/// socket, so in this mode the status showed 0 bytes done (after 1,049,620 bytes received)
/// and a truncated file's transfer went on (its sends failing) until the client gave up.
#[test]
fn single_port_transfers_report_progress_and_end_when_their_file_changes() {
    let root = tempfile::tempdir().expect("tmp");
    let path = root.path().join("big.bin");
    pattern_file(&path, 48 << 20, 11);
    let server = Server::start(root.path(), &["--tftp-single-port"]);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let request = rrq("big.bin", &[("blksize", "1468")]);
    client.send_to(&request, server.tftp).expect("send");
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    let mut got = 0usize;
    let mut expected: u16 = 0;
    let mut progress = None;
    let mut writer: Option<std::thread::JoinHandle<()>> = None;
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the transfer neither ended nor was told to: {got} bytes, progress {progress:?}"
        );
        let Ok((n, from)) = eintr(|| client.recv_from(&mut buf)) else {
            continue;
        };
        assert_eq!(from, server.tftp, "single-port: everything from port 69");
        match (buf[1], n) {
            // The OACK: ACK 0.
            (6, _) => {
                client.send_to(&[0, 4, 0, 0], from).expect("ack");
            }
            (3, n) if n >= 4 => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block == expected.wrapping_add(1) {
                    expected = block;
                    got += n - 4;
                }
                client
                    .send_to(&[0, 4, (expected >> 8) as u8, expected as u8], from)
                    .expect("ack");
                // About 700 KB/s: the file stays under way for the whole test.
                std::thread::sleep(Duration::from_millis(2));
            }
            (5, _) => break String::from_utf8_lossy(&buf[4..n]).into_owned(),
            other => panic!("unexpected {other:?}"),
        }
        if got > (1 << 20) && progress.is_none() {
            let (status, body) = web_get(&server, "/api/v1/status");
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            let t = v["transfers"]
                .as_array()
                .expect("transfers")
                .iter()
                .find(|t| t["leg"] == "tftp" && t["file"] == "big.bin")
                .cloned()
                .unwrap_or_else(|| panic!("the transfer is not in the status: {v}"));
            let done = t["done"].as_u64().expect("done");
            progress = Some(done);
            assert!(done > 0, "no progress reported after {got} bytes: {t}");
            // Now the file changes under the transfer. The writer waits on the server's read
            // lease until the transfer lets go of the file.
            let path = path.clone();
            writer = Some(std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open for write");
                f.set_len(1000).expect("truncate");
            }));
        }
    };
    assert!(ended.contains("file changed"), "{ended}");
    assert!(
        writer.is_some(),
        "the ERROR came before the file changed: {ended}"
    );
    if let Some(w) = writer {
        w.join().expect("writer");
    }
}

/// `GET path` on the web service: status and body.
fn web_get(server: &Server, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&server.web, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.web
    )
    .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// With `tftp.timeout-ms = 20`, an unacknowledged DATA block goes again about 20 ms after it
/// went, in every transfer: the TFTP driver task sleeps until the engine's next deadline, and a
/// receive task that arms an earlier one (here: the ACK of block 1 arms block 2's timer) wakes
/// it. Before, the driver woke on a 250 ms period when nothing was due sooner and a receive
/// task did not wake it, so the retransmission came whenever the next wake-up fell: up to
/// ~250 ms late.
#[test]
fn retransmission_follows_the_timeout_not_a_polling_period() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("f.bin"), 512 * 40, 3);
    let etc = tempfile::tempdir().expect("tmp");
    let config = etc.path().join("zpxe.toml");
    std::fs::write(&config, "[tftp]\ntimeout-ms = 20\n").expect("config");
    let config = config.to_str().expect("utf-8 path");
    let server = Server::start(root.path(), &["--config", config]);
    let mut gaps = Vec::new();
    for trial in 0..8u64 {
        // A socket per transfer: nothing of the last one arrives here.
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        sock.send_to(&rrq("f.bin", &[]), server.tftp).expect("rrq");
        let mut buf = [0u8; 600];
        let (n, from) = eintr(|| sock.recv_from(&mut buf)).expect("DATA 1");
        assert_eq!(&buf[..4], &[0, 3, 0, 1], "{:?}", &buf[..n.min(40)]);
        sock.send_to(&[0, 4, 0, 1], from).expect("ACK 1");
        let (_, _) = eintr(|| sock.recv_from(&mut buf)).expect("DATA 2");
        assert_eq!(&buf[..4], &[0, 3, 0, 2]);
        let sent = Instant::now();
        let (_, _) = eintr(|| sock.recv_from(&mut buf)).expect("DATA 2 again");
        gaps.push(sent.elapsed());
        assert_eq!(&buf[..4], &[0, 3, 0, 2], "a retransmission of block 2");
        // The client gives up (ERROR 0), and the next transfer starts at another moment.
        sock.send_to(b"\x00\x05\x00\x00done\x00", from)
            .expect("ERROR");
        std::thread::sleep(Duration::from_millis(13 + 29 * trial));
    }
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(150)),
        "retransmissions 20 ms after the block should come well within 150 ms: {gaps:?}"
    );
}
