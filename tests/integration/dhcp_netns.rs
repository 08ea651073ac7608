//! proxyDHCP over real broadcast between network namespaces: the offer on 67 and the ACK on
//! 4011 reach the client on its own link, and a multi-homed server names the address of the
//! interface each request came in on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Server, require, run, zpxe_bin};
use crate::netns::NetPair;

fn loadgen_in(ns: &str, server_ip: &str, profile: &str, json: &Path) -> (bool, String) {
    loadgen_clients(ns, server_ip, profile, 1, json)
}

fn loadgen_clients(
    ns: &str,
    server_ip: &str,
    profile: &str,
    clients: usize,
    json: &Path,
) -> (bool, String) {
    let clients = clients.to_string();
    let mut cmd = NetPair::command(ns, zpxe_bin());
    cmd.args(["loadgen", "--only", "dhcp", "--broadcast", "--quiet"])
        .args([
            "--server",
            server_ip,
            "--dhcp-port",
            "67",
            "--pxe-port",
            "4011",
        ])
        .args(["--clients", &clients, "--limit", "40", "--profile", profile])
        .arg("--json")
        .arg(json);
    run(&mut cmd, Duration::from_secs(60))
}

fn answers(json: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(json).expect("loadgen json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["clients"][0]["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new(require("ip"))
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broadcast_offer_and_4011_ack_on_each_interface_of_a_multihomed_server() {
    let pair = NetPair::new("dhcp");
    let (third, second_server_ip, _) = pair.add_second_link();
    // Limited broadcast needs a route out of the client's only link.
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    ip(
        &third,
        &["route", "add", "default", "via", &second_server_ip],
    );
    let root = tempfile::tempdir().expect("tmp");
    std::fs::write(root.path().join("undionly.kpxe"), b"x").expect("write");
    let mut server = Server::start_in_ns(&pair.server, "0.0.0.0", root.path(), &["--no-tftp"]);
    let out = tempfile::tempdir().expect("tmp");

    // A legacy BIOS ROM on the first link: offer by broadcast, no 4011.
    let json = out.path().join("bios.json");
    let (ok, log) = loadgen_in(&pair.client, &pair.server_ip, "bios", &json);
    assert!(
        ok,
        "BIOS client on link 1: {log}\nserver:\n{}",
        server.drain_log().join("\n")
    );
    let a = answers(&json);
    assert!(
        a[0].starts_with(&format!(
            "dhcp: next-server {} file undionly.kpxe via-4011 false",
            pair.server_ip
        )),
        "{a:?}"
    );

    // EDK2 on the second link: the offer and the 4011 ACK name the second interface's address.
    let json = out.path().join("edk2.json");
    let (ok, log) = loadgen_in(&third, &second_server_ip, "edk2", &json);
    assert!(
        ok,
        "EDK2 client on link 2: {log}\nserver:\n{}",
        server.drain_log().join("\n")
    );
    let a = answers(&json);
    assert!(
        a[0].starts_with(&format!(
            "dhcp: next-server {second_server_ip} file ipxe.efi via-4011 true"
        )),
        "{a:?}"
    );
    server.wait_for_log("PXE ack", Duration::from_secs(5));
    let log = server.drain_log().join("\n");
    assert!(log.contains("proxyDHCP offer"), "{log}");
}

#[test]
fn non_pxe_clients_get_no_answer() {
    let pair = NetPair::new("dhcpq");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let root = tempfile::tempdir().expect("tmp");
    let mut server = Server::start_in_ns(&pair.server, "0.0.0.0", root.path(), &["--no-tftp"]);
    // busybox udhcpc: a plain DHCP client with no PXE vendor class. zpxe must stay silent, so
    // udhcpc gets no offer at all and gives up.
    let mut cmd = NetPair::command(&pair.client, require("busybox"));
    cmd.args([
        "udhcpc",
        "-i",
        "c0",
        "-n",
        "-q",
        "-t",
        "2",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    let (ok, log) = run(&mut cmd, Duration::from_secs(30));
    assert!(
        !ok,
        "udhcpc must get no lease from a proxyDHCP server: {log}"
    );
    let log = server.drain_log().join("\n");
    assert!(!log.contains("proxyDHCP offer"), "{log}");
}

#[test]
fn many_broadcast_clients_on_one_link_each_get_their_own_answers() {
    let pair = NetPair::new("dhcpm");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let root = tempfile::tempdir().expect("tmp");
    let _server = Server::start_in_ns(&pair.server, "0.0.0.0", root.path(), &["--no-tftp"]);
    let json = root.path().join("many.json");
    let (ok, log) = loadgen_clients(&pair.client, &pair.server_ip, "edk2:50,bios:50", 20, &json);
    assert!(ok, "{log}");
    let text = std::fs::read_to_string(&json).expect("json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["booted"], 20, "{log}");
}

/// The same client against dnsmasq in proxy mode: the mode the peer comparison uses.
#[test]
fn broadcast_clients_boot_against_dnsmasq_proxy_too() {
    let pair = NetPair::new("dnsm");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "port=0\ninterface=s0\nbind-interfaces\ndhcp-range={},proxy\n\
             pxe-prompt=\"boot\",0\npxe-service=x86PC,\"boot\",undionly\n\
             pxe-service=X86-64_EFI,\"boot\",ipxe.efi\n",
            pair.server_ip
        ),
    )
    .expect("conf");
    let mut dnsmasq = NetPair::command(&pair.server, require("dnsmasq"))
        .arg("-k")
        .arg(format!("--conf-file={}", conf.display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dnsmasq");
    std::thread::sleep(Duration::from_millis(500));
    // BIOS ROMs get a menu and ask 4011 for its first item (the layer suffix ".0" is dnsmasq's
    // for a basename without one); EDK2 (arch 7, one fitting service) gets dnsmasq's menu-less
    // offer and asks 4011 without a boot item.
    let mut results = Vec::new();
    for (profile, file) in [("bios", "undionly.0"), ("edk2", "ipxe.efi")] {
        let json = dir.path().join(format!("dnsmasq-{profile}.json"));
        let (ok, log) = loadgen_clients(&pair.client, &pair.server_ip, profile, 10, &json);
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        results.push((profile, file, ok, log, text));
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    for (profile, file, ok, log, text) in results {
        assert!(ok, "{profile}: {log}");
        assert!(
            text.contains(&format!("file {file} via-4011 true")),
            "{profile}: dnsmasq names the file on 4011: {text}"
        );
    }
}
