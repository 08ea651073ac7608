//! `zpxe demo`: a generated image set served on loopback, and a boot storm against it.

use std::path::PathBuf;

/// Options of `zpxe demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated clients.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Size of the demo boot.wim, e.g. 32M or 1G.
    #[arg(long, default_value = "32M")]
    pub wim_size: String,
    /// Keep the image set in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo storm needs zpxe-loadgen, which is not built yet")
}
