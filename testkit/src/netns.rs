//! A pair of network namespaces joined by a veth pair, for what loopback cannot show: real
//! broadcast, real interfaces, real loss. zpxe-bench runs its boot storms across one (servers in
//! one namespace, the load generator in the other) and zpxe's integration tests their DHCP and
//! lossy-TFTP cases. Made with iproute2's `ip` and removed on drop; no traffic leaves them.
//!
//! Namespaces exist on Linux only, but nothing here is Linux-specific to build, and zpxe's
//! integration tests, which name it, build on Windows too; so it is not behind a cfg.

use std::ffi::OsStr;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `ip ARGS`; the error carries the arguments and `ip`'s own message.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
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

/// Namespaces `server` and `client` joined by veth `s0` (`server_ip`/24, in `server`) and `c0`
/// (`client_ip`/24, in `client`), both up, loopback up on each side. Names and addresses are
/// the caller's: each caller keeps its runs apart in its own way and its own subnets (zpxe-bench
/// 10.83.x, the tests 10.77.x), so the two never meet when they run at once.
#[derive(Debug)]
pub struct NetPair {
    pub server: String,
    pub client: String,
    pub server_ip: String,
    pub client_ip: String,
}

impl NetPair {
    /// Creates the pair; when a step fails, what was already created is removed again.
    pub fn new(
        server: &str,
        client: &str,
        server_ip: &str,
        client_ip: &str,
    ) -> anyhow::Result<Self> {
        ip(&["netns", "add", server])?;
        // From here on, drop removes whatever was created.
        let pair = NetPair {
            server: server.to_owned(),
            client: client.to_owned(),
            server_ip: server_ip.to_owned(),
            client_ip: client_ip.to_owned(),
        };
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
        Ok(pair)
    }

    /// `program` run inside namespace `ns` (`ip netns exec` execs it: the child's PID is the
    /// program's).
    pub fn command(ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for NetPair {
    /// Deleting a namespace deletes its end of the veth, and with it the other end.
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
