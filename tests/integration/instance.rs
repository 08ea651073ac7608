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
        .args(["--listen", ip, "--no-web", "--no-dhcp", "--no-database"])
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

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let root = tempfile::tempdir().expect("tmp");
    // NO_COLOR unset: the pipe alone must turn colour off (journald reads a pipe).
    let mut child = Command::new(zpxe_bin())
        .arg("serve")
        .arg("--root")
        .arg(root.path())
        .args([
            "--listen",
            "127.0.0.1",
            "--no-web",
            "--no-dhcp",
            "--no-database",
        ])
        .args(["--tftp-port", &crate::common::free_udp_port().to_string()])
        .args(["--http-port", &crate::common::free_tcp_port().to_string()])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zpxe");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = String::from_utf8_lossy(&line).contains("zpxe ready");
                lines.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let text: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert!(
        ready,
        "zpxe did not log \"zpxe ready\":\n{}",
        text.join("\n")
    );
    assert!(
        lines.iter().all(|l| !l.contains(&0x1b)),
        "ESC bytes in the log:\n{}",
        text.join("\n").escape_debug()
    );
}
