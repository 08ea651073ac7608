//! `zpxe-bench`: the side-by-side comparison against peer servers. See bench/README.md.

#[cfg(target_os = "linux")]
use clap::{Parser, Subcommand};
#[cfg(target_os = "linux")]
use zpxe_bench::compare;

#[cfg(target_os = "linux")]
#[derive(Debug, Parser)]
#[command(
    version,
    about = "zpxe benchmarks against the peers installed on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start zpxe and every installed peer on loopback, drive them with the same clients,
    /// print medians and zpxe/peer ratios.
    Compare(compare::CompareArgs),
    /// Time to first byte of 1 MiB ranged GETs on one connection, at a steady pace, against
    /// any HTTP server on loopback (run it beside a load such as wrk).
    Ttfb(zpxe_bench::ttfb::ProbeArgs),
    /// DHCP server mode, DISCOVER to ACK: zpxe against dnsmasq in network namespaces, with
    /// Kea's perfdhcp and zpxe's own blaster (exchanges per second, p99, CPU per exchange).
    Dora(zpxe_bench::dora::DoraArgs),
    /// The blaster's side of `dora`, run by it inside the client namespace.
    #[command(hide = true)]
    DoraBlast(zpxe_bench::dora::BlastArgs),
    /// proxyDHCP reply latency at 10,000 DISCOVERs/s with `boot.hook-url` and a warm hook
    /// cache, beside the same zpxe without a hook (issue 16).
    Hook(zpxe_bench::hook_bench::HookArgs),
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Compare(args) => compare::run(args),
        Cmd::Ttfb(args) => zpxe_bench::ttfb::run(args),
        Cmd::Dora(args) => zpxe_bench::dora::run(args),
        Cmd::DoraBlast(args) => zpxe_bench::dora::blast(args),
        Cmd::Hook(args) => zpxe_bench::hook_bench::run(args),
    }
}

#[cfg(not(target_os = "linux"))]
fn main() -> anyhow::Result<()> {
    anyhow::bail!("zpxe-bench compare runs on Linux (its peers and /proc readings are Linux's)")
}
