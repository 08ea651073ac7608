//! The command line, shared by `zpxe-loadgen` and `zpxe loadgen`.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::arrival::Arrival;
use crate::client::{Only, Target};
use crate::profile::ProfileMix;
use crate::storm::{StormConfig, run};

/// Boot-storm simulator: virtual PXE clients walk DHCP, 4011, TFTP, iPXE DHCP and HTTP against
/// a boot server, every byte checked, with latency histograms per phase.
#[derive(Debug, Parser)]
#[command(name = "zpxe-loadgen", version, about)]
struct Cli {
    /// The boot server's address.
    #[arg(long, default_value = "127.0.0.1")]
    server: IpAddr,
    /// Its proxyDHCP port.
    #[arg(long, default_value_t = 67)]
    dhcp_port: u16,
    /// Its PXE (4011) port.
    #[arg(long, default_value_t = 4011)]
    pxe_port: u16,
    /// Its TFTP port.
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// Its HTTP port (for --only http).
    #[arg(long, default_value_t = 8050)]
    http_port: u16,
    /// Virtual clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Firmware profiles: edk2, ipxe, bios, pxelinux, bootmgr, mix, or e.g. edk2:50,bios:50.
    #[arg(long, default_value = "mix")]
    profile: String,
    /// Arrivals: storm (all at once), ramp:30s, poisson:50 (clients per second).
    #[arg(long, default_value = "storm")]
    arrival: String,
    /// Wall-clock limit for the whole run, in seconds; unfinished clients fail.
    #[arg(long, default_value_t = 300)]
    limit: u64,
    /// Walk only one leg of the boot (to compare with single-protocol peers).
    #[arg(long, value_enum, default_value_t = OnlyArg::All)]
    only: OnlyArg,
    /// Files to fetch with --only tftp or --only http (paths below the server's root).
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<String>,
    /// SHA-256 manifest (sha256sum format) of the server's files.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// A local copy of the server's root to check downloads against (instead of a manifest).
    #[arg(long, value_name = "DIR")]
    reference_root: Option<PathBuf>,
    /// TFTP blksize for every client (replaces the profiles' TFTP options).
    #[arg(long, value_name = "N")]
    tftp_blksize: Option<u16>,
    /// TFTP windowsize for every client (replaces the profiles' TFTP options).
    #[arg(long, value_name = "N")]
    tftp_windowsize: Option<u16>,
    /// DHCP by real broadcast (inside a network namespace) instead of as a relay agent.
    #[arg(long)]
    broadcast: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event loops; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnlyArg {
    All,
    Dhcp,
    Tftp,
    Http,
}

/// Runs the load generator with `args` (the first is the program name). Exit status: 0 when
/// every client booted with every byte right, 1 when any failed, 2 on a usage or setup error.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("zpxe-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let only = match cli.only {
        OnlyArg::All => Only::All,
        OnlyArg::Dhcp => Only::Dhcp,
        OnlyArg::Tftp => Only::Tftp,
        OnlyArg::Http => Only::Http,
    };
    if matches!(only, Only::Tftp | Only::Http) && cli.files.is_empty() {
        anyhow::bail!("--only tftp/http needs at least one --file PATH");
    }
    if only != Only::Dhcp && cli.manifest.is_none() && cli.reference_root.is_none() {
        anyhow::bail!(
            "every byte is checked: give --manifest FILE (sha256sum format) or --reference-root DIR"
        );
    }
    let threads = match cli.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let config = StormConfig {
        target: Target {
            dhcp: SocketAddr::new(cli.server, cli.dhcp_port),
            pxe_port: cli.pxe_port,
            tftp: SocketAddr::new(cli.server, cli.tftp_port),
            http: SocketAddr::new(cli.server, cli.http_port),
            files: cli.files,
        },
        only,
        clients: cli.clients,
        mix: cli
            .profile
            .parse::<ProfileMix>()
            .map_err(|e| anyhow::anyhow!("--profile: {e}"))?,
        arrival: cli
            .arrival
            .parse::<Arrival>()
            .map_err(|e| anyhow::anyhow!("--arrival: {e}"))?,
        limit: Duration::from_secs(cli.limit),
        seed: cli.seed,
        threads,
        manifest: cli.manifest,
        reference_root: cli.reference_root,
        broadcast: cli.broadcast,
        progress: !cli.quiet,
        tftp_options: (cli.tftp_blksize.is_some() || cli.tftp_windowsize.is_some()).then_some(
            crate::client::TftpOverride {
                blksize: cli.tftp_blksize,
                windowsize: cli.tftp_windowsize,
                tsize: true,
            },
        ),
    };
    let report = run(config)?;
    println!("{}", report.render_table());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.to_json())?)?;
    }
    if let Some(path) = &cli.html {
        std::fs::write(path, report.to_html())?;
    }
    Ok(report.success())
}
