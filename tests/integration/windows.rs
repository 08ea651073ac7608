//! The Windows build under Wine: zpxe.exe on IOCP serves HTTP (by `TransmitFile` on a server
//! edition, from the mapping on a client edition), HTTPS, TFTP and the web service to Linux
//! clients on loopback, boots a storm and drains on Ctrl-C.
//!
//! tests/run-all.sh builds the .exe (`ZPXE_WIN_BIN`) and prepares the Wine prefixes
//! (`ZPXE_WINE_CACHE`, by tests/fixtures/windows/setup-wine.sh).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{
    Server, WINE, curl_bytes, free_tcp_port, pattern_file, require, run, wine_path,
};
use crate::drain::{finish_body, get, wait_until_refused};

/// What the suite set up; a missing piece fails the test (the suite never skips).
fn windows_build() -> (PathBuf, PathBuf) {
    let need = |var: &str| {
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
            panic!("this test needs ${var}: run tests/run-all.sh, which builds and sets it")
        })
    };
    let exe = need("ZPXE_WIN_BIN");
    let cache = need("ZPXE_WINE_CACHE");
    assert!(exe.is_file(), "{} is not a file", exe.display());
    assert!(
        std::path::Path::new(WINE).is_file(),
        "{WINE} is missing: run tests/run-all.sh, which installs wine64"
    );
    (exe, cache)
}

/// Serves one image set from zpxe.exe in the Wine prefix `edition` and checks every leg.
fn serves_every_leg(edition: &str, bodies: &str) {
    let (exe, cache) = windows_build();
    let root = tempfile::tempdir().expect("tmp");
    // Over four BODY_CHUNKs: several TransmitFile calls per response.
    let wim = pattern_file(&root.path().join("sources/boot.wim"), (17 << 20) + 3, 5);
    let bcd = pattern_file(&root.path().join("Boot/BCD"), 262_144, 6);
    // HTTPS beside HTTP: rustls, with bodies read from the file.
    let (config, https_port) = crate::http::tls_config(root.path(), wine_path);
    let mut server = Server::start_windows(
        &exe,
        &cache.join(edition),
        root.path(),
        &["--no-dhcp", "--config", &wine_path(&config)],
    );
    let ready = server.wait_for_log("zpxe ready", Duration::from_secs(1));
    assert!(ready.contains("driver=\"IOCP\""), "{ready}");
    // One loop per core by default; with more than one, loop 0 hands work to the others.
    let several = !ready.contains("threads=1 ");
    assert!(
        ready.contains(&format!("loop_handoff={several}")),
        "{ready}"
    );
    assert!(
        ready.contains(&format!("http_bodies=\"{bodies}")),
        "{ready}"
    );

    let url = format!("http://{}/sources/boot.wim", server.http);
    assert!(curl_bytes(&[&url]) == wim, "full body differs");
    assert_eq!(curl_bytes(&["-r", "0-0", &url]), wim[..1]);
    assert_eq!(curl_bytes(&["-r", "-1", &url]), wim[wim.len() - 1..]);
    let (a, b) = ((5 << 20) + 7, (13 << 20) + 9);
    assert!(
        curl_bytes(&["-r", &format!("{a}-{b}"), &url]) == wim[a..=b],
        "range differs"
    );
    let head = String::from_utf8(curl_bytes(&["-I", &url])).expect("utf-8 head");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", wim.len())),
        "{head}"
    );
    // Case-insensitive names, as Windows clients send them.
    assert!(
        curl_bytes(&[&format!("http://{}/boot/bcd", server.http)]) == bcd,
        "BCD differs"
    );

    let secure = format!("https://127.0.0.1:{https_port}/sources/boot.wim");
    assert!(curl_bytes(&["-k", &secure]) == wim, "HTTPS body differs");
    assert!(
        curl_bytes(&["-k", "-r", &format!("{a}-{b}"), &secure]) == wim[a..=b],
        "HTTPS range differs"
    );

    // Four downloads at once: each its own connection, all on the one loop.
    let outs: Vec<tempfile::NamedTempFile> = (0..4)
        .map(|_| tempfile::NamedTempFile::new().expect("tmp"))
        .collect();
    let mut children: Vec<_> = outs
        .iter()
        .map(|o| {
            Command::new(require("curl"))
                .args(["-sS", "--max-time", "60", "-o"])
                .arg(o.path())
                .arg(&url)
                .spawn()
                .expect("curl")
        })
        .collect();
    for c in &mut children {
        assert!(
            c.wait().expect("wait").success(),
            "a parallel download failed"
        );
    }
    for o in &outs {
        assert!(
            std::fs::read(o.path()).expect("read") == wim,
            "parallel body differs"
        );
    }

    // TFTP: windowed as EDK2 asks, and lock-step with a Windows-style name.
    let got = tempfile::tempdir().expect("tmp");
    let tftp = |remote: &str, local: &str, opts: &[&str]| {
        let mut cmd = Command::new(require("atftp"));
        for o in opts {
            cmd.args(["--option", o]);
        }
        cmd.args(["-g", "-r", remote, "-l"])
            .arg(got.path().join(local))
            .arg(server.tftp.ip().to_string())
            .arg(server.tftp.port().to_string());
        let (ok, out) = run(&mut cmd, Duration::from_secs(60));
        assert!(ok, "atftp {remote}: {out}");
        std::fs::read(got.path().join(local)).expect("read")
    };
    assert!(
        tftp(
            "sources/boot.wim",
            "wim",
            &["blksize 1468", "windowsize 16"]
        ) == wim,
        "TFTP windowed body differs"
    );
    assert!(tftp("\\Boot\\BCD", "bcd", &[]) == bcd, "TFTP BCD differs");

    let metrics = String::from_utf8(curl_bytes(&[&format!("http://{}/metrics", server.web)]))
        .expect("utf-8 metrics");
    assert!(metrics.contains("zpxe_http_requests_total"), "{metrics}");
    server.stop();
}

#[test]
fn windows_server_edition_serves_bodies_by_transmit_file() {
    serves_every_leg("server", "TransmitFile");
}

#[test]
fn windows_client_edition_writes_bodies_from_the_mapping() {
    serves_every_leg("client", "writes from the mapping");
}

/// A whole boot storm (relayed DHCP and 4011 through `WSARecvMsg` with `IP_PKTINFO`, TFTP with
/// each firmware's options, iPXE's DHCP, the script and the WinPE files over HTTP) from the
/// Linux load generator against zpxe.exe. (On 127.0.0.1: the virtual relays bind the DHCP port
/// on their own loopback addresses, which a server on the wildcard address would hold.)
#[test]
fn windows_build_boots_a_storm_with_every_byte_right() {
    use crate::loadgen::{image_set, loadgen, report};
    let (exe, cache) = windows_build();
    let (root, config) = image_set();
    let server = Server::start_windows(
        &exe,
        &cache.join("server"),
        root.path(),
        &["--config", &wine_path(std::path::Path::new(&config))],
    );
    let json = root.path().join("storm.json");
    let (ok, log) = run(
        &mut loadgen(&server, root.path(), 20, &json, 120),
        Duration::from_secs(150),
    );
    assert!(ok, "{log}");
    let r = report(&json);
    assert_eq!(r["booted"], 20, "{log}");
    assert_eq!(r["failed"], 0, "{log}");
    assert_eq!(r["byte_errors"], 0, "{log}");
}

/// More than one core on Windows: with `--threads 2`, loop 0 holds every port (Windows has no
/// `SO_REUSEPORT`) and hands accepted connections and TFTP requests to loop 1, which serves
/// them on its own completion port. A 100-client storm boots with every byte right, and both
/// kinds of work crossed loops.
#[test]
fn windows_build_with_two_loops_boots_a_100_client_storm() {
    use crate::loadgen::image_set;
    let (exe, cache) = windows_build();
    let (root, config) = image_set();
    let mut server = Server::start_windows(
        &exe,
        &cache.join("server"),
        root.path(),
        &[
            "--config",
            &wine_path(std::path::Path::new(&config)),
            "--threads",
            "2",
        ],
    );
    crate::loadgen::storm_over_handing_loops(&mut server, root.path(), 240);
}

/// Ctrl-C drains on Windows as SIGTERM does on Linux: the download under way finishes
/// byte-exact, the listener closes, and the process exits 0.
#[test]
fn windows_ctrl_c_drains() {
    let (exe, cache) = windows_build();
    let root = tempfile::tempdir().expect("tmp");
    let big = pattern_file(&root.path().join("big.bin"), 64 << 20, 9);
    let mut server =
        Server::start_windows(&exe, &cache.join("server"), root.path(), &["--no-dhcp"]);
    let (mut slow, head, body) = get(server.http, "big.bin");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.interrupt();
    server.wait_for_log("draining", Duration::from_secs(10));
    wait_until_refused(server.http);
    finish_body(&mut slow, body, &big);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("zpxe.exe still running after its download ended");
    assert!(status.success(), "exit status {status}");
}

/// `zpxe reload` reaches a console `zpxe.exe serve` over its named pipe (`--control`), with the
/// exit codes of Linux: 0 reloaded (the menu script follows the file, no restart), 2 refused
/// (every problem with its place; the running menu stays), 1 when nobody answers.
#[test]
fn windows_reload_over_the_control_pipe() {
    let (exe, cache) = windows_build();
    let prefix = cache.join("server");
    let root = tempfile::tempdir().expect("tmp");
    let config = root.path().join("zpxe.toml");
    let write = |text: &str| std::fs::write(&config, text).expect("write config");
    write("[menu]\ntitle = \"before the reload\"\n");
    // Unique per test process (a port is never handed out twice in one), so that parallel
    // tests never share a pipe.
    let pipe = format!("zpxe-test-{}-{}", std::process::id(), free_tcp_port());
    let server = Server::start_windows(
        &exe,
        &prefix,
        root.path(),
        &[
            "--no-dhcp",
            "--config",
            &wine_path(&config),
            "--control",
            &pipe,
        ],
    );
    let menu = format!("http://{}/menu.ipxe", server.http);
    let script = || String::from_utf8_lossy(&curl_bytes(&[&menu])).into_owned();
    assert!(script().contains("before the reload"));
    let reload = |name: &str| {
        let out = tempfile::NamedTempFile::new().expect("tmp");
        let status = Command::new(WINE)
            .arg(&exe)
            .args(["reload", "--control", name])
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            .stdin(std::process::Stdio::null())
            .stdout(out.reopen().expect("reopen"))
            .stderr(out.reopen().expect("reopen"))
            .status()
            .expect("wine zpxe reload");
        let text = String::from_utf8_lossy(&std::fs::read(out.path()).expect("read")).into_owned();
        (status.code(), text)
    };
    write("[menu]\ntitle = \"after the reload\"\n");
    let (code, out) = reload(&pipe);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("generation 2"), "{out}");
    assert!(script().contains("after the reload"));
    write("\n[menu]\ntitle = 5\n");
    let (code, out) = reload(&pipe);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("zpxe.toml:3:"), "{out}");
    assert!(script().contains("after the reload"));
    let (code, out) = reload(&format!("{pipe}-nobody"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot reach zpxe's control pipe"), "{out}");
}
