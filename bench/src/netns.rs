//! A pair of network namespaces joined by a veth pair, for the boot storms: the servers in one,
//! the load generator in the other, DHCP by real broadcast between them. Created with `ip`,
//! removed on drop; no traffic leaves them.

use std::process::Command;

use anyhow::{Context, bail};

/// Namespaces `server` and `client`, veth `s0` (`server_ip`/24) and `c0` (`client_ip`/24); the
/// client routes everything (limited broadcast included) out of `c0`.
#[derive(Debug)]
pub struct NetPair {
    pub server: String,
    pub client: String,
    pub server_ip: String,
    pub client_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetPair {
    /// `index` keeps the pairs of one run apart (names and subnets); the PID keeps runs apart.
    pub fn new(tag: &str, index: u32) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let subnet = (pid % 50) * 5 + index % 5;
        let pair = NetPair {
            server: format!("zpxe-bench-{pid}-{tag}-s"),
            client: format!("zpxe-bench-{pid}-{tag}-c"),
            server_ip: format!("10.83.{subnet}.1"),
            client_ip: format!("10.83.{subnet}.2"),
        };
        ip(&["netns", "add", &pair.server])?;
        // From here on, drop removes whatever was created.
        ip(&["netns", "add", &pair.client])?;
        ip(&[
            "link",
            "add",
            "s0",
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            &pair.client,
        ])?;
        for (ns, dev, addr) in [
            (&pair.server, "s0", &pair.server_ip),
            (&pair.client, "c0", &pair.client_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n",
            &pair.client,
            "route",
            "add",
            "default",
            "via",
            &pair.server_ip,
        ])?;
        Ok(pair)
    }

    /// `program` run inside namespace `ns` (`ip netns exec` execs it: the child's PID is the
    /// program's).
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
