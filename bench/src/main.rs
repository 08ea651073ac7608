//! `zpxe-bench`: the side-by-side comparison against peer servers. See bench/README.md.

use clap::{Parser, Subcommand};
use zpxe_bench::compare;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "zpxe benchmarks against the peers installed on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start zpxe and every installed peer on loopback, drive them with the same clients,
    /// print medians and zpxe/peer ratios.
    Compare(compare::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Compare(args) => compare::run(args),
    }
}
