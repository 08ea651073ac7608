//! The boot-storm simulator against zpxe: a mixed storm boots with every byte right, and a
//! broken target (a server that dies mid-storm, a file changed under the manifest) is reported
//! as failures with a non-zero exit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Server, run, zpxe_bin};

const MENU: &str = r#"
[menu]
title = "storm"
timeout-ms = 1000
default = "winpe"

[[menu.entries]]
id = "winpe"
label = "Windows PE"
kind = { type = "winpe", wimboot = "wimboot", bcd = "Boot/BCD", boot-sdi = "Boot/boot.sdi", boot-wim = "sources/boot.wim" }
"#;

/// A demo image set (4 MiB boot.wim) and a config with a WinPE menu.
pub(crate) fn image_set() -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().expect("tmp");
    zpxe::demo_images::create(root.path(), 4 << 20).expect("images");
    let config = root.path().join("zpxe.toml");
    std::fs::write(&config, MENU).expect("config");
    (root, config.to_string_lossy().into_owned())
}

pub(crate) fn loadgen(
    server: &Server,
    root: &Path,
    clients: usize,
    json: &Path,
    limit_s: u32,
) -> Command {
    let mut cmd = Command::new(zpxe_bin());
    cmd.args([
        "loadgen",
        "--quiet",
        "--profile",
        "mix",
        "--limit",
        &limit_s.to_string(),
    ])
    .args(["--clients", &clients.to_string()])
    .args(["--server", &server.tftp.ip().to_string()])
    .args(["--dhcp-port", &server.dhcp.port().to_string()])
    .args(["--pxe-port", &server.pxe.port().to_string()])
    .args(["--tftp-port", &server.tftp.port().to_string()])
    .arg("--manifest")
    .arg(root.join("manifest.sha256"))
    .arg("--json")
    .arg(json);
    cmd
}

pub(crate) fn report(json: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(json).expect("json")).expect("parse")
}

#[test]
fn storm_of_500_mixed_clients_boots_with_every_byte_right() {
    let (root, config) = image_set();
    let server = Server::start(root.path(), &["--config", &config]);
    let json = root.path().join("storm.json");
    let (ok, log) = run(
        &mut loadgen(&server, root.path(), 500, &json, 240),
        Duration::from_secs(300),
    );
    assert!(ok, "{log}");
    let r = report(&json);
    assert_eq!(r["booted"], 500, "{log}");
    assert_eq!(r["failed"], 0);
    assert_eq!(r["byte_errors"], 0);
    // Every client walked every phase.
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        ["dhcp", "tftp", "ipxe-dhcp", "script", "http", "total"]
    );
    // The web service received the scripts' progress reports.
    let (ok, status) = run(
        Command::new(crate::common::require("curl"))
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}/api/status", server.web)),
        Duration::from_secs(20),
    );
    assert!(ok && status.contains("\"clients\": 500"), "{status}");
}

/// `server.loop-handoff` (Windows' only way to run several loops) on Linux: loop 0 holds
/// every port and hands connections and TFTP requests to loop 1 (or keeps them); a storm
/// boots with every byte right and both kinds of work were handed over.
#[test]
fn a_storm_over_two_loops_that_hand_work_over_boots_with_every_byte_right() {
    let (root, config) = image_set();
    let handoff = root.path().join("handoff.toml");
    let menu = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&handoff, format!("[server]\nloop-handoff = true\n{menu}")).expect("write");
    let mut server = Server::start(
        root.path(),
        &["--config", &handoff.to_string_lossy(), "--threads", "2"],
    );
    storm_over_handing_loops(&mut server, root.path(), 120);
}

/// A 100-client storm against `server`, started with two loops that hand work over: every
/// client boots byte-exact, and both connections and TFTP requests crossed loops (connections
/// go to the loops in turn; TFTP requests by the client's address, and the load generator
/// gives each client its own, so loop 1 gets none only by a 1-in-2^100 chance).
pub(crate) fn storm_over_handing_loops(server: &mut Server, root: &Path, limit_s: u32) {
    let ready = server.wait_for_log("zpxe ready", Duration::from_secs(1));
    assert!(ready.contains("threads=2"), "{ready}");
    assert!(ready.contains("loop_handoff=true"), "{ready}");
    let json = root.join("storm.json");
    let (ok, log) = run(
        &mut loadgen(server, root, 100, &json, limit_s),
        Duration::from_secs(u64::from(limit_s) + 30),
    );
    assert!(ok, "{log}");
    let r = report(&json);
    assert_eq!(r["booted"], 100, "{log}");
    assert_eq!(r["failed"], 0, "{log}");
    assert_eq!(r["byte_errors"], 0, "{log}");
    let conns = crate::common::counter(server, "loop_handoff_connections_total");
    let tftp = crate::common::counter(server, "loop_handoff_tftp_total");
    assert!(conns >= 50, "connections handed over: {conns}");
    assert!(tftp > 0, "TFTP requests handed over: {tftp}");
    assert_eq!(
        crate::common::counter(server, "loop_handoffs_dropped_total"),
        0
    );
}

#[test]
fn a_server_that_dies_mid_storm_is_reported_and_fails_the_run() {
    let (root, config) = image_set();
    let mut server = Server::start(root.path(), &["--config", &config]);
    let json = root.path().join("broken.json");
    let child = loadgen(&server, root.path(), 100, &json, 20)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen");
    server.wait_for_log("TFTP transfer started", Duration::from_secs(30));
    drop(server);
    let out = child.wait_with_output().expect("loadgen");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "non-zero exit when clients fail:\n{text}"
    );
    let r = report(&json);
    assert!(r["failed"].as_u64().unwrap_or(0) > 0, "{text}");
    assert!(text.contains("failures:"), "{text}");
}

#[test]
fn a_file_changed_under_the_manifest_is_a_byte_error() {
    let (root, config) = image_set();
    // Same size, different bytes: only checking content catches this.
    let bcd = root.path().join("Boot/BCD");
    let mut bytes = std::fs::read(&bcd).expect("read");
    bytes[1000] ^= 0xff;
    std::fs::write(&bcd, &bytes).expect("write");
    let server = Server::start(root.path(), &["--config", &config]);
    let json = root.path().join("changed.json");
    let (ok, log) = run(
        &mut loadgen(&server, root.path(), 20, &json, 60),
        Duration::from_secs(120),
    );
    assert!(!ok, "a byte error must fail the run:\n{log}");
    let r = report(&json);
    assert_eq!(r["booted"], 0, "{log}");
    assert!(r["byte_errors"].as_u64().unwrap_or(0) >= 20, "{log}");
    assert!(log.contains("bytes differ from the manifest"), "{log}");
}
