//! `dhcp.mode = "server"` between network namespaces: zpxe is the only DHCP server on the link.
//! busybox udhcpc gets a lease and renews it; a restart keeps every lease (the same clients get
//! the same addresses, new clients never get one of them); a 1,000-client loadgen storm gets
//! no address twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Server, require, run, zpxe_bin};
use crate::netns::NetPair;

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

/// A server-mode configuration: one pool on the link's /16 (room for a storm), `lease` seconds.
fn write_config(dir: &Path, pair: &NetPair, lease: u32) -> PathBuf {
    let path = dir.join("zpxe.toml");
    std::fs::write(
        &path,
        format!(
            "[dhcp]\nmode = \"server\"\nlease-time-secs = {lease}\n\n\
             [[dhcp.pool]]\nsubnet = \"10.77.0.0/16\"\n\
             range = [\"10.77.240.1\", \"10.77.247.254\"]\n\
             router = [\"{s}\"]\ndns = [\"{s}\"]\n",
            s = pair.server_ip
        ),
    )
    .expect("config");
    path
}

fn start(pair: &NetPair, root: &Path, config: &Path, db: &str) -> Server {
    Server::start_in_ns(
        &pair.server,
        "0.0.0.0",
        root,
        &[
            "--no-tftp",
            "--config",
            config.to_str().expect("utf-8"),
            "--database-url",
            db,
        ],
    )
}

/// Runs loadgen's DHCP leg for `clients` broadcast clients (seed `seed`: the same seed, the
/// same MACs) and returns each client's leased address.
fn storm(pair: &NetPair, clients: usize, seed: u64, json: &Path) -> Vec<String> {
    let mut cmd = NetPair::command(&pair.client, zpxe_bin());
    cmd.args(["loadgen", "--only", "dhcp", "--broadcast", "--quiet"])
        .args(["--server", &pair.server_ip])
        .args(["--dhcp-port", "67", "--pxe-port", "4011"])
        .args(["--clients", &clients.to_string(), "--limit", "100"])
        .args(["--profile", "edk2:50,bios:50", "--seed", &seed.to_string()])
        .arg("--json")
        .arg(json);
    let (ok, log) = run(&mut cmd, Duration::from_secs(60));
    assert!(ok, "loadgen: {log}");
    let text = std::fs::read_to_string(json).expect("loadgen json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["booted"], clients, "{log}");
    v["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            let answers: Vec<&str> = c["answers"]
                .as_array()
                .expect("answers")
                .iter()
                .filter_map(|a| a.as_str())
                .collect();
            let leased: Vec<&str> = answers
                .iter()
                .filter_map(|a| a.strip_prefix("dhcp: leased "))
                .collect();
            assert_eq!(leased.len(), 1, "one lease per client: {answers:?}");
            leased[0].to_owned()
        })
        .collect()
}

fn assert_unique(addresses: &[String]) -> BTreeSet<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for a in addresses {
        *count.entry(a).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "addresses leased twice: {dups:?}");
    addresses.iter().cloned().collect()
}

#[test]
fn udhcpc_gets_a_lease_and_renews_it() {
    let pair = NetPair::new("dsu");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), &pair, 10);
    let db = format!("sqlite://{}", dir.path().join("zpxe.db").display());
    let mut server = start(&pair, dir.path(), &config, &db);

    // udhcpc's script records each event and puts the address on the link, so the renewal
    // (unicast from that address to the server) can leave.
    let events = dir.path().join("events");
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $ip $subnet $router $dns $lease $serverid\" >> {events}\n\
             case \"$1\" in bound|renew) ip addr replace \"$ip/24\" dev \"$interface\";; esac\n",
            events = events.display()
        ),
    )
    .expect("script");
    let mut perms = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod");
    let mut udhcpc = NetPair::command(&pair.client, require("busybox"))
        .args(["udhcpc", "-f", "-i", "c0", "-t", "5", "-T", "1", "-s"])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("udhcpc");

    // T1 is half of the 10 s lease: the renewal comes about 5 s after the lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        lines = std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.iter().any(|l| l.starts_with("renew ")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGUSR2: udhcpc releases its lease (RFC 2131 RELEASE, unicast to the server).
    let (released, out) = run(
        Command::new("kill").args(["-USR2", &udhcpc.id().to_string()]),
        Duration::from_secs(5),
    );
    assert!(released, "kill -USR2: {out}");
    let release = server.wait_for_log("DHCP release", Duration::from_secs(5));
    let _ = udhcpc.kill();
    let _ = udhcpc.wait();
    let log = server.drain_log().join("\n");
    let bound = lines
        .iter()
        .find(|l| l.starts_with("bound "))
        .unwrap_or_else(|| panic!("no lease: {lines:?}\nserver:\n{log}"));
    let f: Vec<&str> = bound.split(' ').collect();
    let leased = f[1];
    assert!(leased.starts_with("10.77.24"), "{bound}");
    assert_eq!(f[2], "255.255.0.0", "{bound}");
    assert_eq!(f[3], pair.server_ip, "router: {bound}");
    assert_eq!(f[4], pair.server_ip, "dns: {bound}");
    assert_eq!(f[5], "10", "lease time: {bound}");
    assert_eq!(f[6], pair.server_ip, "server id: {bound}");
    let renew = lines
        .iter()
        .find(|l| l.starts_with("renew "))
        .unwrap_or_else(|| panic!("no renewal within 20 s: {lines:?}\nserver:\n{log}"));
    assert_eq!(renew.split(' ').nth(1), Some(leased), "{renew}");
    assert!(log.matches("DHCP ack").count() >= 2, "{log}");
    assert!(release.contains(&format!("ip={leased}")), "{release}");
}

#[test]
fn a_restart_keeps_the_leases() {
    let pair = NetPair::new("dsr");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), &pair, 3600);
    let db = format!("sqlite://{}", dir.path().join("leases.db").display());
    let mut server = start(&pair, dir.path(), &config, &db);
    let first = storm(&pair, 50, 1, &dir.path().join("a.json"));
    let first_set = assert_unique(&first);
    server.stop();

    let mut server = start(&pair, dir.path(), &config, &db);
    let log = server.wait_for_log("leases loaded", Duration::from_secs(5));
    assert!(log.contains("restored=50"), "{log}");
    // The same 50 machines again (same MACs): each gets its address back.
    let again = storm(&pair, 50, 1, &dir.path().join("b.json"));
    assert_eq!(again, first, "the same clients, the same addresses");
    // 50 other machines: none of those addresses.
    let others = storm(&pair, 50, 2, &dir.path().join("c.json"));
    let other_set = assert_unique(&others);
    let shared: Vec<_> = first_set.intersection(&other_set).collect();
    assert!(
        shared.is_empty(),
        "handed out again after a restart: {shared:?}"
    );
}

/// With the loops polling before they sleep (`server.busy-poll-us`), as a server tuned for
/// reply latency runs: the storm is served the same.
#[test]
fn a_storm_of_1000_clients_gets_no_address_twice() {
    let pair = NetPair::new("dss");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), &pair, 3600);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[server]\nbusy-poll-us = 200\n");
    std::fs::write(&config, text).expect("config");
    let db = format!("sqlite://{}", dir.path().join("zpxe.db").display());
    let mut server = start(&pair, dir.path(), &config, &db);
    let t0 = Instant::now();
    let leased = storm(&pair, 1000, 7, &dir.path().join("storm.json"));
    let took = t0.elapsed();
    let set = assert_unique(&leased);
    assert_eq!(set.len(), 1000);
    eprintln!("1,000 server-mode leases in {took:?}");
    let log = server.drain_log().join("\n");
    assert!(!log.contains("backed up"), "{log}");
}

/// `dhcp.conflict-check-ms`: a host on the link already uses the pool's first address (set by
/// hand, unknown to zpxe). Before offering it zpxe sends an ICMP echo, gets the host's answer,
/// holds the address out and offers the next one; every client gets an address nobody else
/// answers at, and the conflict is counted once.
#[test]
fn the_conflict_check_skips_an_address_someone_answers_at() {
    let pair = NetPair::new("dsk");
    ip(
        &pair.client,
        &["route", "add", "default", "via", &pair.server_ip],
    );
    let squatter = "10.77.240.1";
    ip(
        &pair.client,
        &["addr", "add", &format!("{squatter}/16"), "dev", "c0"],
    );
    ip(
        &pair.server,
        &["route", "add", "10.77.240.0/24", "dev", "s0"],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("zpxe.toml");
    std::fs::write(
        &config,
        format!(
            "[dhcp]\nmode = \"server\"\nconflict-check-ms = 300\n\n\
             [[dhcp.pool]]\nsubnet = \"10.77.0.0/16\"\n\
             range = [\"10.77.240.1\", \"10.77.247.254\"]\nrouter = [\"{s}\"]\n",
            s = pair.server_ip
        ),
    )
    .expect("config");
    let db = format!("sqlite://{}", dir.path().join("zpxe.db").display());
    let mut server = start(&pair, dir.path(), &config, &db);
    server.wait_for_log("conflict check on", Duration::from_secs(5));
    let leased = std::panic::catch_unwind(|| storm(&pair, 5, 11, &dir.path().join("storm.json")))
        .unwrap_or_else(|_| panic!("server:\n{}", server.drain_log().join("\n")));
    let set = assert_unique(&leased);
    assert_eq!(set.len(), 5);
    assert!(!set.contains(squatter), "{set:?}");
    let warned = server.wait_for_log("DHCP conflict check", Duration::from_secs(5));
    assert!(warned.contains(&format!("ip={squatter}")), "{warned}");
    let mut cmd = NetPair::command(&pair.server, require("curl"));
    cmd.args(["-sf", "http://127.0.0.1:8051/metrics"]);
    let (ok, body) = run(&mut cmd, Duration::from_secs(10));
    assert!(ok, "/metrics: {body}");
    assert!(
        body.lines()
            .any(|l| l == "zpxe_dhcp_server_conflicts_total 1"),
        "{body}"
    );
}
