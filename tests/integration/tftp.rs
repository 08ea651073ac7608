//! Real TFTP clients against the zpxe binary: curl, atftp, busybox.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
