//! The boot storms' pair of network namespaces ([`zpxe_testkit::netns::NetPair`]): the servers in
//! one, the load generator in the other, DHCP by real broadcast between them. What is zpxe-bench's
//! own is the names, the 10.83.x subnets and the client's default route.

pub use zpxe_testkit::netns::NetPair;
use zpxe_testkit::netns::ip;

/// The pair for `tag`; `index` keeps the pairs of one run apart (names and subnets), the PID
/// keeps runs apart. The client routes everything (limited broadcast included) out of `c0`.
pub fn net_pair(tag: &str, index: u32) -> anyhow::Result<NetPair> {
    let pid = std::process::id();
    let subnet = (pid % 50) * 5 + index % 5;
    let pair = NetPair::new(
        &format!("zpxe-bench-{pid}-{tag}-s"),
        &format!("zpxe-bench-{pid}-{tag}-c"),
        &format!("10.83.{subnet}.1"),
        &format!("10.83.{subnet}.2"),
    )?;
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
