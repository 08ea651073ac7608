//! `zpxe demo`: a generated image set served on loopback, and a boot storm against it.
//! Needs no configuration and no privileges: every port is above 1023.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use zpxe_engine::http::{BootMenu, EntryKind, MenuEntry};
use zpxe_loadgen::arrival::Arrival;
use zpxe_loadgen::client::{Only, Target};
use zpxe_loadgen::storm::{StormConfig, run as run_storm};

use crate::config::Config;
use crate::serve::{self, Stop};

/// Options of `zpxe demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated clients.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Size of the demo boot.wim, e.g. 16M, 300M or 1G.
    #[arg(long, default_value = "16M")]
    pub wim_size: String,
    /// Firmware mix: edk2, ipxe, bios, pxelinux, bootmgr, mix, or e.g. edk2:50,bios:50.
    #[arg(long, default_value = "mix")]
    pub profile: String,
    /// Keep the image set in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Write the storm's report as HTML.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 300)]
    pub limit: u64,
}

/// Parses `16M`, `1G`, `512K` or a plain byte count.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().with_context(|| format!("size {s:?}"))?;
    n.checked_mul(mult).context("size too large")
}

fn free_port(udp: bool) -> anyhow::Result<u16> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    Ok(if udp {
        std::net::UdpSocket::bind(addr)?.local_addr()?.port()
    } else {
        std::net::TcpListener::bind(addr)?.local_addr()?.port()
    })
}

/// The demo's boot menu: one WinPE entry through wimboot, chosen by default.
pub fn demo_menu() -> BootMenu {
    BootMenu {
        title: "zpxe demo".into(),
        timeout_ms: 3000,
        default: Some("winpe".into()),
        entries: vec![MenuEntry {
            id: "winpe".into(),
            label: "Windows PE (demo stand-ins)".into(),
            kind: EntryKind::Winpe {
                wimboot: "wimboot".into(),
                bcd: "Boot/BCD".into(),
                boot_sdi: "Boot/boot.sdi".into(),
                boot_wim: "sources/boot.wim".into(),
            },
        }],
        rules: Vec::new(),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let wim_size = parse_size(&args.wim_size)?;
    let tmp;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("temporary directory")?;
            tmp.path().to_owned()
        }
    };
    eprintln!(
        "zpxe demo: writing the image set ({} MiB boot.wim) to {}",
        wim_size >> 20,
        root.display()
    );
    crate::demo_images::create(&root, wim_size)?;

    let mut config = Config::default();
    config.server.root = toml::Spanned::new(0..0, root.clone());
    config.server.listen = vec![toml::Spanned::new(0..0, "127.0.0.1".to_owned())];
    config.ports.dhcp = free_port(true)?;
    config.ports.pxe = free_port(true)?;
    config.ports.tftp = free_port(true)?;
    config.ports.http = free_port(false)?;
    config.ports.web = free_port(false)?;
    config.menu = demo_menu();
    // Its own database, gone with the demo: never the system's /var/lib/zpxe, and not in the
    // root, whose files are served.
    let db_dir = tempfile::tempdir().context("temporary directory for the database")?;
    config.database.url = toml::Spanned::new(0..0, sqlite_url(&db_dir.path().join("zpxe.db")));
    let ports = config.ports.clone();
    let stop = Stop::new();
    let server = serve::start(config, stop.clone()).context("starting the demo server")?;
    eprintln!(
        "zpxe demo: serving on 127.0.0.1 (proxyDHCP :{}, PXE :{}, TFTP :{}, HTTP :{}, web :{}); \
         booting {} clients",
        ports.dhcp, ports.pxe, ports.tftp, ports.http, ports.web, args.clients
    );
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let storm = StormConfig {
        target: Target {
            dhcp: SocketAddr::new(ip, ports.dhcp),
            pxe_port: ports.pxe,
            tftp: SocketAddr::new(ip, ports.tftp),
            http: SocketAddr::new(ip, ports.http),
            files: Vec::new(),
        },
        only: Only::All,
        clients: args.clients,
        mix: args
            .profile
            .parse()
            .map_err(|e| anyhow::anyhow!("--profile: {e}"))?,
        arrival: Arrival::Storm,
        limit: Duration::from_secs(args.limit),
        seed: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        manifest: Some(root.join("manifest.sha256")),
        reference_root: None,
        broadcast: false,
        progress: true,
        tftp_options: None,
    };
    let report = run_storm(storm);
    server.stop();
    let join = server.join();
    let report = report?;
    join?;
    println!("{}", report.render_table());
    if let Some(path) = &args.html {
        std::fs::write(path, report.to_html())?;
        eprintln!("zpxe demo: HTML report in {}", path.display());
    }
    if report.success() {
        Ok(())
    } else {
        anyhow::bail!("some clients did not boot (see the report above)")
    }
}

/// `sqlite://` and a path: `sqlite:///tmp/x.db`, `sqlite:///C:/x.db`.
fn sqlite_url(path: &std::path::Path) -> String {
    let p = path.display().to_string();
    if p.starts_with('/') {
        format!("sqlite://{p}")
    } else {
        format!("sqlite:///{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16M").expect("size"), 16 << 20);
        assert_eq!(parse_size("1G").expect("size"), 1 << 30);
        assert_eq!(parse_size("123").expect("size"), 123);
        assert!(parse_size("12X").is_err());
        assert!(demo_menu().check().is_ok());
    }
}
