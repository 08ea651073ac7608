//! Server mode's defences against forged messages, between network namespaces (the engine's
//! unit tests check each rule; these check that the running server keeps them on real sockets):
//! - a RELEASE naming another client's lease (its `ciaddr` and its MAC), sent from an address
//!   other than that lease, frees nothing;
//! - an INFORM naming an address other than its sender gets no ACK, there or anywhere;
//! - a relayed DISCOVER (`giaddr` set) from a source that is neither `giaddr` nor in
//!   `[dhcp] relays` gets no OFFER, and the same DISCOVER from a listed relay does.
//!
//! Each outcome is read from structured output: the `leases` table, `/metrics` counters, the
//! fields of zpxe's JSON log, and the datagrams that did or did not arrive.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use zpxe_engine::dhcp::{DhcpOptions, DhcpRepr, MacAddr, MessageType};
use zpxe_testkit::dhcp::boot_request;

use crate::common::{Server, require, run};
use crate::netns::NetPair;

/// Sends one datagram from inside a namespace and prints what comes back, one line per
/// datagram (`source-ip hex`). argv: bind-ip bind-port dest-ip dest-port listen-ip listen-port
/// wait-ms hex. The reply may arrive on the sending socket (`listen-port` 0) or on a second
/// socket bound to listen-ip:listen-port (a relay's or a client's address). Bounded by wait-ms.
const SEND_AND_LISTEN: &str = r#"
import socket, sys, time
bip, bport, dip, dport, lip, lport, wait, payload = sys.argv[1:9]
def sock(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind((ip, int(port)))
    return s
tx = sock(bip, bport)
rx = sock(lip, lport) if int(lport) else tx
tx.sendto(bytes.fromhex(payload), (dip, int(dport)))
end = time.monotonic() + int(wait) / 1000
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    rx.settimeout(left)
    try:
        data, src = rx.recvfrom(2048)
    except socket.timeout:
        break
    print(src[0], data.hex(), flush=True)
"#;

/// One datagram sent from `from` (ip, port) in namespace `ns` to `to`; returns the DHCP
/// replies with transaction id `xid` that reach `listen` (or the sending socket) within `wait`.
fn send(
    ns: &str,
    from: (&str, u16),
    to: (&str, u16),
    listen: Option<(&str, u16)>,
    packet: &DhcpRepr,
    wait: Duration,
) -> Vec<(String, DhcpRepr)> {
    let (lip, lport) = listen.unwrap_or(("0.0.0.0", 0));
    let mut cmd = NetPair::command(ns, require("python3"));
    cmd.args(["-c", SEND_AND_LISTEN])
        .args([from.0, &from.1.to_string(), to.0, &to.1.to_string()])
        .args([lip, &lport.to_string(), &wait.as_millis().to_string()])
        .arg(hex(&packet.to_bytes()));
    let (ok, out) = run(&mut cmd, wait + Duration::from_secs(10));
    assert!(ok, "sending from {ns}: {out}");
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(src, h)| {
            let reply = DhcpRepr::parse_bytes(&unhex(h)?).ok()?;
            (reply.xid == packet.xid).then(|| (src.to_owned(), reply))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A BOOTREQUEST of type `kind` from `mac`.
fn message(kind: MessageType, mac: [u8; 6], xid: u32) -> DhcpRepr {
    let options = DhcpOptions {
        message_type: Some(kind),
        ..Default::default()
    };
    boot_request(xid, MacAddr(mac), Ipv4Addr::UNSPECIFIED, options)
}

const VICTIM: [u8; 6] = [0x52, 0x54, 0x00, 0x5a, 0x00, 0x01];

/// zpxe in server mode in `pair`'s server namespace, one pool on 10.77.0.0/16 (the link's
/// /24 is inside it), `relays` listed, JSON log with the DHCP server's debug lines (where
/// ignored requests and their reasons go). Routes: the client side reaches the server for
/// broadcast, the server reaches the pool's addresses on its link.
struct Lab {
    pair: NetPair,
    dir: tempfile::TempDir,
    server: Server,
}

impl Lab {
    /// `relay_hosts`: hosts of the link's /24 listed in `[dhcp] relays`.
    fn start(tag: &str, relay_hosts: &[u8]) -> Lab {
        let pair = NetPair::new(tag);
        ip(
            &pair.client,
            &["route", "add", "default", "via", &pair.server_ip],
        );
        ip(&pair.server, &["route", "add", "10.77.0.0/16", "dev", "s0"]);
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join("zpxe.toml");
        let relays: Vec<String> = relay_hosts
            .iter()
            .map(|h| format!("\"10.77.{}.{h}\"", pair.subnet))
            .collect();
        std::fs::write(
            &config,
            format!(
                "[log]\nformat = \"json\"\n\n\
                 [dhcp]\nmode = \"server\"\nlease-time-secs = 3600\nrelays = [{}]\n\n\
                 [[dhcp.pool]]\nsubnet = \"10.77.0.0/16\"\n\
                 range = [\"10.77.240.1\", \"10.77.240.254\"]\nrouter = [\"{s}\"]\n",
                relays.join(", "),
                s = pair.server_ip
            ),
        )
        .expect("config");
        let db = format!("sqlite://{}", dir.path().join("zpxe.db").display());
        let server = Server::start_in_ns_logging(
            &pair.server,
            "0.0.0.0",
            dir.path(),
            &[
                "--no-tftp",
                "--config",
                config.to_str().expect("utf-8"),
                "--database-url",
                &db,
            ],
            "info,zpxe::serve::dhcp_server=debug",
        );
        Lab { pair, dir, server }
    }

    /// An address of the client side's own on its link (10.77.N.`host`).
    fn client_address(&self, host: u8) -> String {
        let a = format!("10.77.{}.{host}", self.pair.subnet);
        ip(
            &self.pair.client,
            &["addr", "add", &format!("{a}/32"), "dev", "c0"],
        );
        a
    }

    /// DISCOVER, OFFER, REQUEST, ACK by broadcast for `mac`; returns the address leased.
    fn lease(&self, mac: [u8; 6]) -> Ipv4Addr {
        let bcast = ("255.255.255.255", 67);
        let offer = send(
            &self.pair.client,
            ("0.0.0.0", 68),
            bcast,
            None,
            &message(MessageType::Discover, mac, 0x1001),
            Duration::from_millis(1500),
        );
        let (_, offer) = offer.first().expect("an OFFER").clone();
        assert_eq!(offer.options.message_type, Some(MessageType::Offer));
        let mut request = message(MessageType::Request, mac, 0x1002);
        request.options.requested_ip = Some(offer.yiaddr);
        request.options.server_id = offer.options.server_id;
        let ack = send(
            &self.pair.client,
            ("0.0.0.0", 68),
            bcast,
            None,
            &request,
            Duration::from_millis(1500),
        );
        let (_, ack) = ack.first().expect("an ACK").clone();
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, offer.yiaddr);
        ack.yiaddr
    }

    /// The state of `ip`'s row in the `leases` table, as zpxe wrote it.
    fn lease_state(&self, addr: Ipv4Addr) -> Option<String> {
        // SQLite leases have a file of their own beside the database (db::leases_url).
        lease_state(&self.dir.path().join("zpxe-leases.db"), addr)
    }

    /// zpxe's counters, from `/metrics` inside the server's namespace.
    fn metrics(&self) -> HashMap<String, u64> {
        let mut cmd = NetPair::command(&self.pair.server, require("curl"));
        cmd.args(["-sf", "http://127.0.0.1:8051/metrics"]);
        let (ok, body) = run(&mut cmd, Duration::from_secs(10));
        assert!(ok, "/metrics: {body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
            .collect()
    }

    /// The `reason` fields of "DHCP request ignored" events in zpxe's JSON log so far.
    fn ignored_reasons(&mut self) -> Vec<String> {
        self.server
            .drain_log()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "DHCP request ignored")
            .filter_map(|v| v["reason"].as_str().map(str::to_owned))
            .collect()
    }
}

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new(require("ip"))
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lease_state(db: &Path, addr: Ipv4Addr) -> Option<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the lease database");
    conn.query_row(
        "SELECT state FROM leases WHERE ip = ?1",
        [i64::from(u32::from(addr))],
        |r| r.get(0),
    )
    .ok()
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `within`.
fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const IGNORED: &str = "zpxe_dhcp_ignored_total";
const REPLIES: &str = "zpxe_dhcp_replies_total";
const WRONG_SENDER: &str = "RELEASE or INFORM not sent from the address it names (ciaddr)";
const UNTRUSTED_RELAY: &str =
    "relayed, but not from its relay (giaddr) or an address of dhcp.relays";

#[test]
fn a_forged_release_frees_no_lease_and_the_holders_own_does() {
    let mut lab = Lab::start("dfr", &[]);
    let leased = lab.lease(VICTIM);
    assert_eq!(lab.lease_state(leased).as_deref(), Some("bound"));
    let before = lab.metrics();

    // The forger knows the victim's MAC and address (both are on the wire) and sends from its
    // own address, 10.77.N.2: everything right but the source.
    let mut release = message(MessageType::Release, VICTIM, 0x2001);
    release.ciaddr = leased;
    release.options.server_id = Some(lab.pair.server_ip.parse().expect("ip"));
    let server_ip = lab.pair.server_ip.clone();
    let server = (server_ip.as_str(), 67);
    let client_ip = lab.pair.client_ip.clone();
    send(
        &lab.pair.client,
        (&client_ip, 68),
        server,
        None,
        &release,
        Duration::from_millis(200),
    );
    // Either the server counts it ignored or the table shows the lease freed.
    let counted = wait_for(Duration::from_secs(5), || {
        let m = lab.metrics();
        let freed = lab.lease_state(leased).as_deref() != Some("bound");
        (m[IGNORED] > before[IGNORED] || freed).then_some(m)
    })
    .unwrap_or_else(|| panic!("the forged RELEASE left no trace in 5 s"));
    assert_eq!(
        lab.lease_state(leased).as_deref(),
        Some("bound"),
        "a forged RELEASE freed {leased}"
    );
    assert_eq!(counted[IGNORED], before[IGNORED] + 1);
    assert_eq!(counted[REPLIES], before[REPLIES]);
    assert_eq!(lab.ignored_reasons(), [WRONG_SENDER]);

    // The holder, from its address, releases it: the table shows it, so the check above would
    // have seen a forged one succeed.
    let holder = leased.to_string();
    ip(
        &lab.pair.client,
        &["addr", "add", &format!("{holder}/32"), "dev", "c0"],
    );
    release.xid = 0x2002;
    send(
        &lab.pair.client,
        (&holder, 68),
        server,
        None,
        &release,
        Duration::from_millis(200),
    );
    let state = wait_for(Duration::from_secs(5), || {
        lab.lease_state(leased).filter(|s| s == "released")
    });
    assert_eq!(state.as_deref(), Some("released"), "the holder's RELEASE");
}

#[test]
fn a_forged_inform_gets_no_ack_and_the_senders_own_does() {
    let mut lab = Lab::start("dfi", &[]);
    // The address the forger names: another host on the link, listening on port 68.
    let target = lab.client_address(3);
    let before = lab.metrics();
    let mut inform = message(MessageType::Inform, VICTIM, 0x3001);
    inform.ciaddr = target.parse().expect("ip");
    let server_ip = lab.pair.server_ip.clone();
    let server = (server_ip.as_str(), 67);
    let client_ip = lab.pair.client_ip.clone();
    let got = send(
        &lab.pair.client,
        (&client_ip, 0),
        server,
        Some((&target, 68)),
        &inform,
        Duration::from_millis(1500),
    );
    assert!(got.is_empty(), "a forged INFORM was answered: {got:?}");
    let m = lab.metrics();
    assert_eq!(m[IGNORED], before[IGNORED] + 1);
    assert_eq!(m[REPLIES], before[REPLIES]);
    assert_eq!(lab.ignored_reasons(), [WRONG_SENDER]);

    // From the address it names, the same INFORM gets its ACK there: the listener would have
    // heard a forged one answered.
    inform.xid = 0x3002;
    let got = send(
        &lab.pair.client,
        (&target, 68),
        server,
        None,
        &inform,
        Duration::from_millis(1500),
    );
    let (from, ack) = got.first().expect("an ACK to the INFORM's sender");
    assert_eq!(from, &lab.pair.server_ip);
    assert_eq!(ack.options.message_type, Some(MessageType::Ack));
    assert_eq!(
        ack.options.lease_time, None,
        "RFC 2131 4.3.5: no lease time"
    );
    assert_eq!(lab.metrics()[REPLIES], before[REPLIES] + 1);
}

#[test]
fn a_relayed_discover_gets_an_offer_only_from_its_relay() {
    // On the client side: the relay's client-side address (giaddr, .3, where the OFFER goes),
    // its server-side address (.4, listed in relays), and a stranger (.2, not listed).
    let mut lab = Lab::start("dfg", &[4]);
    let giaddr = lab.client_address(3);
    let listed = lab.client_address(4);
    assert_eq!(
        listed,
        format!("10.77.{}.4", lab.pair.subnet),
        "the listed relay"
    );
    let stranger = lab.pair.client_ip.clone();
    let mut discover = message(MessageType::Discover, VICTIM, 0x4001);
    discover.giaddr = giaddr.parse().expect("ip");
    discover.hops = 1;
    let server_ip = lab.pair.server_ip.clone();
    let server = (server_ip.as_str(), 67);
    let before = lab.metrics();

    let got = send(
        &lab.pair.client,
        (&stranger, 0),
        server,
        Some((&giaddr, 67)),
        &discover,
        Duration::from_millis(1500),
    );
    assert!(got.is_empty(), "an OFFER for a forged giaddr: {got:?}");
    let m = lab.metrics();
    assert_eq!(m[IGNORED], before[IGNORED] + 1);
    assert_eq!(m[REPLIES], before[REPLIES]);
    assert_eq!(lab.ignored_reasons(), [UNTRUSTED_RELAY]);

    // The same DISCOVER from the listed relay: the OFFER goes to giaddr's port 67, from the
    // pool (the giaddr's subnet).
    discover.xid = 0x4002;
    let got = send(
        &lab.pair.client,
        (&listed, 0),
        server,
        Some((&giaddr, 67)),
        &discover,
        Duration::from_millis(1500),
    );
    let (from, offer) = got.first().expect("an OFFER through the listed relay");
    assert_eq!(from, &lab.pair.server_ip);
    assert_eq!(offer.options.message_type, Some(MessageType::Offer));
    assert!(
        offer.yiaddr.to_string().starts_with("10.77.240."),
        "{offer:?}"
    );
    assert_eq!(offer.giaddr.to_string(), giaddr);
    assert_eq!(lab.metrics()[REPLIES], before[REPLIES] + 1);
    assert_eq!(lab.ignored_reasons(), [UNTRUSTED_RELAY]);
}
