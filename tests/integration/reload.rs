//! Live reload (`zpxe reload`, SIGHUP): a storm boots through a reload untouched while new
//! requests get the new menu; a broken configuration is refused with every problem's position
//! and the old one keeps serving; a rotated certificate reaches new HTTPS connections.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Server, curl_bytes, require, run, zpxe_bin};

/// `zpxe reload --control PATH`: its exit code and what it printed (stdout, then stderr).
fn reload(control: &Path) -> (Option<i32>, String) {
    let out = Command::new(zpxe_bin())
        .arg("reload")
        .arg("--control")
        .arg(control)
        .stdin(Stdio::null())
        .output()
        .expect("zpxe reload");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The generated iPXE script a client with a fixed MAC gets over HTTP.
fn script(server: &Server) -> String {
    let url = format!("http://{}/boot.ipxe?mac=52:54:00:00:00:01", server.http);
    String::from_utf8(curl_bytes(&[&url])).expect("utf8")
}

fn control_path(root: &Path) -> String {
    root.join("control.sock").to_string_lossy().into_owned()
}

#[test]
fn a_reload_during_a_storm_of_200_fails_no_client_and_new_requests_get_the_new_menu() {
    let (root, config) = crate::loadgen::image_set();
    let control = control_path(root.path());
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("title = \"storm\""), "{text}");
    let mut server = Server::start(root.path(), &["--config", &config, "--control", &control]);
    assert!(script(&server).contains("\nmenu storm\n"));

    let json = root.path().join("storm.json");
    // Arrivals spread over 4 s: clients in every phase when the reload comes, and more
    // starting after it.
    let storm = crate::loadgen::loadgen(&server, root.path(), 200, &json, 120)
        .args(["--arrival", "ramp:4s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen");
    // Mid-storm: transfers are under way when the menu changes.
    server.wait_for_log("TFTP transfer started", Duration::from_secs(30));
    std::fs::write(
        &config,
        text.replace("title = \"storm\"", "title = \"reloaded\""),
    )
    .expect("new config");
    let (code, out) = reload(Path::new(&control));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("generation 2"), "{out}");
    // A request that starts after the reload gets the new menu, and only it.
    let after = script(&server);
    assert!(after.contains("\nmenu reloaded\n"), "{after}");
    assert!(!after.contains("menu storm"), "{after}");

    let out = storm.wait_with_output().expect("loadgen");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    let r = crate::loadgen::report(&json);
    assert_eq!(r["booted"], 200, "{log}");
    assert_eq!(r["failed"], 0, "{log}");
    assert_eq!(r["byte_errors"], 0, "{log}");
    server.wait_for_log("configuration reloaded", Duration::from_secs(5));
}

#[test]
fn a_broken_config_is_refused_with_positions_and_the_old_one_keeps_serving() {
    let root = tempfile::tempdir().expect("tmp");
    let config = root.path().join("zpxe.toml");
    let control = control_path(root.path());
    let menu = "[menu]\ntitle = \"first\"\n";
    std::fs::write(&config, menu).expect("config");
    let cfg = config.to_string_lossy().into_owned();
    let mut server = Server::start(root.path(), &["--config", &cfg, "--control", &control]);
    assert!(script(&server).contains("\nmenu first\n"));

    // Two problems at once: a menu default naming no entry, and an empty port range.
    std::fs::write(
        &config,
        "[menu]\ntitle = \"second\"\ndefault = \"nope\"\n\n[ports]\ntftp-range = \"9-1\"\n",
    )
    .expect("broken config");
    let (code, out) = reload(Path::new(&control));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("previous configuration keeps serving"),
        "{out}"
    );
    let file = config.display().to_string();
    assert!(out.contains(&format!("{file}:1:1: menu:")), "{out}");
    assert!(
        out.contains(&format!("{file}:6:14: ports.tftp-range")),
        "{out}"
    );
    // The server logged them too, and still serves the first menu.
    server.wait_for_log("reload refused", Duration::from_secs(5));
    server.wait_for_log(
        &format!("{file}:6:14: ports.tftp-range"),
        Duration::from_secs(5),
    );
    assert!(script(&server).contains("\nmenu first\n"));

    // Fixed, plus a key bound at start: the menu applies, the key is named.
    std::fs::write(
        &config,
        "[server]\nthreads = 3\n[menu]\ntitle = \"third\"\n",
    )
    .expect("config");
    let (code, out) = reload(Path::new(&control));
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("server.threads: changed, needs a restart"),
        "{out}"
    );
    assert!(script(&server).contains("\nmenu third\n"));

    // No server on the socket: an error and a non-zero exit, not a hang.
    drop(server);
    let (code, out) = reload(Path::new(&control));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot reach"), "{out}");
}

/// The certificate the server at `port` presents, as PEM.
fn served_certificate(port: u16) -> String {
    let (ok, out) = run(
        Command::new(require("openssl"))
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    pem(&out).unwrap_or_else(|| panic!("no certificate in:\n{out}"))
}

fn pem(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(text[start..end].trim().to_owned())
}

#[test]
fn a_certificate_rotated_by_sighup_reaches_new_https_connections() {
    let root = tempfile::tempdir().expect("tmp");
    let (config, port) = crate::http::tls_config(root.path(), |p| p.display().to_string());
    let cfg = config.to_string_lossy().into_owned();
    let control = control_path(root.path());
    let mut server = Server::start(root.path(), &["--config", &cfg, "--control", &control]);
    let (cert, key) = (root.path().join("cert.pem"), root.path().join("key.pem"));
    let first = std::fs::read_to_string(&cert).expect("cert");
    assert_eq!(served_certificate(port), pem(&first).expect("pem"));

    // Rotated the way certbot and friends do it: new files renamed over the old.
    let (new_cert, new_key) = (root.path().join("cert.new"), root.path().join("key.new"));
    let (ok, log) = run(
        Command::new(require("openssl"))
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=zpxe-rotated"])
            .arg("-keyout")
            .arg(&new_key)
            .arg("-out")
            .arg(&new_cert),
        Duration::from_secs(30),
    );
    assert!(ok, "{log}");
    std::fs::rename(&new_key, &key).expect("rotate key");
    std::fs::rename(&new_cert, &cert).expect("rotate cert");
    let second = std::fs::read_to_string(&cert).expect("cert");
    assert_ne!(first, second);

    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -HUP");
    server.wait_for_log("configuration reloaded", Duration::from_secs(10));
    assert!(server.alive(), "SIGHUP must reload, not end the process");
    assert_eq!(served_certificate(port), pem(&second).expect("pem"));
    // And it serves over the new certificate.
    let script = String::from_utf8(curl_bytes(&[
        "-k",
        &format!("https://127.0.0.1:{port}/boot.ipxe?mac=52:54:00:00:00:01"),
    ]))
    .expect("utf8");
    assert!(script.starts_with("#!ipxe"), "{script}");

    // A rotation gone wrong (no certificate in the file) is refused with its position, and
    // new connections keep getting the certificate that works.
    std::fs::write(&new_cert, "not a certificate\n").expect("broken cert");
    std::fs::rename(&new_cert, &cert).expect("rotate cert");
    let (code, out) = reload(Path::new(&control));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&format!("{cfg}:2:8: tls.cert")), "{out}");
    assert_eq!(served_certificate(port), pem(&second).expect("pem"));
}

#[test]
fn a_reload_changes_the_loader_proxydhcp_offers_to_the_next_client() {
    let (root, config) = crate::loadgen::image_set();
    let control = control_path(root.path());
    let text = std::fs::read_to_string(&config).expect("config");
    let server = Server::start(root.path(), &["--config", &config, "--control", &control]);
    let boot = |name: &str| {
        let json = root.path().join(format!("{name}.json"));
        run(
            Command::new(zpxe_bin())
                .args(["loadgen", "--quiet", "--profile", "bios", "--clients", "1"])
                .args(["--limit", "30", "--server", &server.tftp.ip().to_string()])
                .args(["--dhcp-port", &server.dhcp.port().to_string()])
                .args(["--pxe-port", &server.pxe.port().to_string()])
                .args(["--tftp-port", &server.tftp.port().to_string()])
                .arg("--manifest")
                .arg(root.path().join("manifest.sha256"))
                .arg("--json")
                .arg(json),
            Duration::from_secs(60),
        )
    };
    let (ok, log) = boot("before");
    assert!(ok, "{log}");
    // The policy now names a loader that is not there: the next BIOS client is offered it
    // and fails to fetch it, which only a reloaded proxyDHCP policy can cause.
    std::fs::write(&config, format!("[boot]\nbios = \"reloaded.kpxe\"\n{text}")).expect("config");
    let (code, out) = reload(Path::new(&control));
    assert_eq!(code, Some(0), "{out}");
    let (ok, log) = boot("after");
    assert!(!ok, "{log}");
    assert!(log.contains("reloaded.kpxe"), "{log}");
}
