//! One zpxe per port: a second instance on the ports of a running one refuses to start, and
//! the first keeps serving.

use std::process::Command;
use std::time::Duration;

use crate::common::{Server, curl_bytes, pattern_file, run, zpxe_bin};

/// `zpxe serve` with the first server's ports, listening on `ip`.
fn second(server: &Server, root: &std::path::Path, ip: &str) -> (bool, String) {
    let mut cmd = Command::new(zpxe_bin());
    cmd.arg("serve")
        .arg("--root")
        .arg(root)
        .args(["--listen", ip, "--no-web", "--no-dhcp"])
        .args(["--tftp-port", &server.tftp.port().to_string()])
        .args(["--http-port", &server.http.port().to_string()])
        .env("NO_COLOR", "1");
    // Without the lock the second one serves until killed: the time limit makes that a failure.
    run(&mut cmd, Duration::from_secs(10))
}

#[test]
fn a_second_zpxe_on_the_same_ports_refuses_to_start() {
    let root = tempfile::tempdir().expect("tmp");
    let data = pattern_file(&root.path().join("boot/ipxe.efi"), 3 * 1024 * 1024 + 5, 16);
    // The web port and proxyDHCP's sockets are not shared between loops (no SO_REUSEPORT), so
    // the kernel refuses those itself; TFTP and HTTP are the ports a second zpxe could share.
    let mut server = Server::start(root.path(), &["--no-web", "--no-dhcp"]);
    let pid = server.pid();

    let (ok, out) = second(&server, root.path(), "127.0.0.1");
    assert!(!ok, "the second zpxe did not fail:\n{out}");
    let want = format!(
        "port {}/tcp on 127.0.0.1 is already served by another zpxe (pid {pid})",
        server.http.port()
    );
    assert!(out.contains(&want), "want {want:?} in:\n{out}");

    // A wildcard takes every address, so it conflicts with the first's 127.0.0.1.
    let (ok, out) = second(&server, root.path(), "0.0.0.0");
    assert!(!ok, "the second zpxe on 0.0.0.0 did not fail:\n{out}");
    let want = format!(
        "port {}/tcp on 0.0.0.0 is already served by another zpxe (pid {pid}, listening on \
         127.0.0.1)",
        server.http.port()
    );
    assert!(out.contains(&want), "want {want:?} in:\n{out}");

    assert!(server.alive(), "the first zpxe exited");
    let url = format!("http://{}/boot/ipxe.efi", server.http);
    assert!(curl_bytes(&[&url]) == data, "the first zpxe's bytes differ");
}
