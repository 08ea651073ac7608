//! A boot file rewritten in place while a slow client downloads it over HTTP (issue 13,
//! defect 1). Seen before the fix: `sendfile` queued page-cache pages by reference, and the
//! client got a complete 200 whose last few MB were the new file's.
//!
//! Whatever the client gets must be bytes of the file as it was when the response started: a
//! byte-exact prefix of the old contents, cut short once the server sees the change (a lease
//! break, or size and mtime with `server.leases = false`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use crate::common::{Server, pattern_file};

/// Big enough that the download at [`READ_RATE`] is still under way when the rewrite comes.
const LEN: usize = 64 << 20;
/// The probe's pace, bytes per second.
const READ_RATE: f64 = 5e6;
const REWRITE_AFTER: Duration = Duration::from_secs(1);

#[test]
fn in_place_rewrite_never_reaches_a_slow_client_with_leases() {
    slow_download_during_rewrite(true);
}

#[test]
fn in_place_rewrite_never_reaches_a_slow_client_without_leases() {
    slow_download_during_rewrite(false);
}

fn slow_download_during_rewrite(leases: bool) {
    let root = tempfile::tempdir().expect("tmp");
    let aside = tempfile::tempdir().expect("tmp");
    let path = root.path().join("victim.bin");
    let old = pattern_file(&path, LEN, 13);
    let new = pattern_file(&aside.path().join("new.bin"), LEN, 31);
    let config = aside.path().join("zpxe.toml");
    std::fs::write(&config, format!("[server]\nleases = {leases}\n")).expect("config");
    let config = config.display().to_string();
    let server = Server::start(root.path(), &["--config", &config]);

    let mut client = TcpStream::connect(server.http).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    client
        .write_all(b"GET /victim.bin HTTP/1.1\r\nHost: zpxe\r\nConnection: close\r\n\r\n")
        .expect("request");
    let start = Instant::now();

    // Another program: opens the file for writing (with a lease held, that waits until zpxe
    // lets go) and writes the new contents over the old, from offset 0.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(REWRITE_AFTER);
        let asked = Instant::now();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for writing");
        f.write_all_at(&new, 0).expect("pwrite");
        (asked.elapsed(), new)
    });

    let mut got = Vec::with_capacity(LEN + 4096);
    let mut buf = vec![0u8; 64 << 10];
    let end = loop {
        match eintr(|| client.read(&mut buf)) {
            Ok(0) => break "EOF".to_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e.to_string(),
        }
        // Stay at READ_RATE: the socket buffers fill and the server's sends wait on us.
        let due = Duration::from_secs_f64(got.len() as f64 / READ_RATE);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "download ran 60 s"
        );
    };
    let (writer_waited, new) = writer.join().expect("writer");

    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let content_length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    assert_eq!(content_length, LEN);
    let body = &got[head_end..];
    assert!(
        body.len() <= content_length,
        "more body than Content-Length"
    );

    if let Some(at) = (0..body.len()).find(|&i| body[i] != old[i]) {
        let pages = body[at..]
            .chunks(4096)
            .zip(new[at..].chunks(4096))
            .filter(|(b, n)| b == n)
            .count();
        panic!(
            "leases={leases}: body ({} of {content_length} bytes, ended by {end}) differs from \
             the old file at offset {at}; {pages} pages from there equal the new file",
            body.len()
        );
    }
    assert!(
        body.len() < content_length,
        "leases={leases}: the response completed although the file changed 1 s into it"
    );
    assert!(
        writer_waited < Duration::from_secs(20),
        "leases={leases}: the writer waited {writer_waited:?}: zpxe kept its lease \
         after the transfer stopped"
    );
    eprintln!(
        "leases={leases}: {} of {content_length} bytes, all old, ended by {end}; \
         the writer waited {writer_waited:?}",
        body.len()
    );
}
