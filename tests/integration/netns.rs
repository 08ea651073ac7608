//! Network namespaces for tests that need real broadcast, real interfaces or real loss: the
//! veth pair of [`zpxe_testkit::netns`] (shared with zpxe-bench) on the tests' 10.77.x subnets,
//! plus what only the tests do with it (a second link, impairment). Everything is removed on
//! drop.

#![allow(dead_code)]

use std::ops::Deref;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use zpxe_testkit::netns;

use crate::common::require;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`; panics with its error output when it fails.
pub fn ip(args: &[&str]) {
    require("ip");
    netns::ip(args).expect("ip");
}

/// Two namespaces, `server` and `client`, joined by veth `s0` (10.77.N.1/24) and `c0`
/// (10.77.N.2/24); the names and addresses are the fields of [`netns::NetPair`], reached by
/// deref. The server side can get a second link for multi-NIC tests.
pub struct NetPair {
    pair: netns::NetPair,
    pub subnet: u32,
}

impl Deref for NetPair {
    type Target = netns::NetPair;

    fn deref(&self) -> &netns::NetPair {
        &self.pair
    }
}

impl NetPair {
    pub fn new(tag: &str) -> Self {
        require("ip");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = (std::process::id() % 200 + n) % 250 + 1;
        let pair = netns::NetPair::new(
            &format!("zpxe-{tag}-s{}-{n}", std::process::id()),
            &format!("zpxe-{tag}-c{}-{n}", std::process::id()),
            &format!("10.77.{subnet}.1"),
            &format!("10.77.{subnet}.2"),
        )
        .expect("veth namespace pair");
        NetPair { pair, subnet }
    }

    /// Adds a second interface to the server namespace on its own subnet (multi-NIC), with a
    /// matching interface in a third namespace; returns (namespace, server ip, client ip).
    pub fn add_second_link(&self) -> (String, String, String) {
        let third = format!("{}-b", self.client);
        ip(&["netns", "add", &third]);
        ip(&[
            "link",
            "add",
            "s1",
            "netns",
            &self.server,
            "type",
            "veth",
            "peer",
            "name",
            "c1",
            "netns",
            &third,
        ]);
        let s = format!("10.78.{}.1", self.subnet);
        let c = format!("10.78.{}.2", self.subnet);
        ip(&[
            "-n",
            &self.server,
            "addr",
            "add",
            &format!("{s}/24"),
            "dev",
            "s1",
        ]);
        ip(&["-n", &self.server, "link", "set", "s1", "up"]);
        ip(&["-n", &third, "addr", "add", &format!("{c}/24"), "dev", "c1"]);
        ip(&["-n", &third, "link", "set", "c1", "up"]);
        ip(&["-n", &third, "link", "set", "lo", "up"]);
        (third, s, c)
    }

    /// Impairs both directions: `loss` percent of datagrams dropped on arrival, `dup` percent
    /// sent twice and `reorder` percent held back behind a slow queue so later ones overtake
    /// them. (This kernel has no netem; nftables and an HTB class do the same job.)
    pub fn impair(&self, loss: u32, dup: u32, reorder: u32) {
        let sides = [
            (&self.server, "s0", &self.client_ip),
            (&self.client, "c0", &self.server_ip),
        ];
        for (ns, dev, peer) in sides {
            let rules = format!(
                "table ip zpxe_impair {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
                 ip daddr {peer} numgen random mod 100 < {dup} dup to {peer}\n  \
                 ip daddr {peer} numgen random mod 100 < {reorder} meta priority set 1:20\n }}\n}}\n\
                 table netdev zpxe_loss {{\n chain in {{\n  type filter hook ingress device \"{dev}\" priority 0; policy accept;\n  \
                 numgen random mod 100 < {loss} drop\n }}\n}}\n"
            );
            let mut nft = Self::command(ns, require("nft"));
            nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
            let mut child = nft.spawn().expect("nft");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("stdin");
                stdin.write_all(rules.as_bytes()).expect("write rules");
            }
            let status = child.wait().expect("nft");
            assert!(status.success(), "nft rules in {ns} failed:\n{rules}");
            for args in [
                vec![
                    "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
                    "r2q", "100000",
                ],
                vec![
                    "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                    "10gbit",
                ],
                vec![
                    "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate",
                    "100mbit", "ceil", "100mbit", "burst", "4k",
                ],
            ] {
                let out = Command::new(require("tc"))
                    .args(["-n", ns])
                    .args(&args)
                    .output()
                    .expect("tc");
                assert!(
                    out.status.success(),
                    "tc {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        require("ip");
        netns::NetPair::command(ns, program)
    }
}

impl Drop for NetPair {
    /// The third namespace of [`NetPair::add_second_link`], if any; the pair removes its own two.
    fn drop(&mut self) {
        let third = format!("{}-b", self.client);
        let _ = Command::new("ip").args(["netns", "del", &third]).output();
    }
}
