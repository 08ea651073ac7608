//! A boot storm: virtual clients spread over one event loop per core, started on an arrival
//! schedule, bounded by a client count and a wall-clock limit.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use zpxe_engine::dhcp::{ClientUuid, MacAddr};
use zpxe_platform::runtime::{EventLoop, sleep, spawn};

use crate::arrival::Arrival;
use crate::client::{self, ClientSpec, Only, RunShared, Target};
use crate::profile::ProfileMix;
use crate::report::{ClientRecord, Report, RunMeta};
use crate::verify::Expected;

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct StormConfig {
    pub target: Target,
    pub only: Only,
    pub clients: usize,
    pub mix: ProfileMix,
    pub arrival: Arrival,
    /// The whole run stops after this long; unfinished clients count as failed.
    pub limit: Duration,
    pub seed: u64,
    pub threads: usize,
    /// Digests to check downloads against: a manifest file, or a local copy of the root.
    pub manifest: Option<PathBuf>,
    pub reference_root: Option<PathBuf>,
    /// Broadcast DHCP (inside a namespace) instead of relaying from 127.x.y.z.
    pub broadcast: bool,
    pub progress: bool,
    /// Replace the profiles' TFTP options (for like-for-like comparisons with peers).
    pub tftp_options: Option<crate::client::TftpOverride>,
}

/// The loopback address of client `i`: 127.1.0.1 upwards, skipping .0 and .255.
pub fn client_ip(i: usize) -> Ipv4Addr {
    let n = (i / 254) as u32;
    let host = (i % 254) as u8 + 1;
    Ipv4Addr::new(127, (1 + (n >> 8)) as u8, n as u8, host)
}

fn client_mac(i: usize, seed: u64) -> MacAddr {
    let s = seed as u16;
    let b = (i as u32).to_be_bytes();
    MacAddr([
        0x52,
        0x54,
        (s >> 8) as u8 ^ b[0],
        s as u8 ^ b[1],
        b[2],
        b[3],
    ])
}

fn client_uuid(i: usize, seed: u64) -> ClientUuid {
    let mut w = [0u8; 16];
    w[..8].copy_from_slice(&seed.to_le_bytes());
    w[8..16].copy_from_slice(&(i as u64).to_be_bytes());
    ClientUuid::from_wire(w)
}

/// Runs a storm to the end (all clients finished or the limit reached) and reports.
pub fn run(config: StormConfig) -> anyhow::Result<Report> {
    let expected = Arc::new(match (&config.manifest, &config.reference_root) {
        (Some(m), _) => Expected::from_manifest(m)?,
        (None, Some(root)) => Expected::from_root(root),
        (None, None) => Expected::default(),
    });
    // Hash the reference copies of the files named up front now, before the clock starts:
    // otherwise the first client to finish each one pays for it inside its phase time.
    for file in &config.target.files {
        let _ = expected.digest(file);
    }
    let threads = config.threads.max(1).min(config.clients.max(1));
    let schedule = config.arrival.schedule(config.clients, config.seed);
    let start = Instant::now();
    let deadline = start + config.limit;
    let (tx, rx) = mpsc::channel::<ClientRecord>();
    let mut handles = Vec::new();
    for t in 0..threads {
        let tx = tx.clone();
        let config = config.clone();
        let schedule = schedule.clone();
        let expected = expected.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let ev = EventLoop::new()?;
            let shared = Rc::new(RunShared {
                tftp_options: config.tftp_options,
                target: config.target.clone(),
                only: config.only,
                expected,
                start,
                deadline,
                client_port: Default::default(),
            });
            ev.block_on(async move {
                let mut tasks = Vec::new();
                for i in (t..config.clients).step_by(threads) {
                    let spec = ClientSpec {
                        index: i as u32,
                        firmware: config.mix.pick(i, config.seed),
                        mac: client_mac(i, config.seed),
                        uuid: client_uuid(i, config.seed),
                        ip: client_ip(i),
                        broadcast: config.broadcast,
                        seed: config.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    };
                    let at = schedule.get(i).copied().unwrap_or_default();
                    let shared = Rc::clone(&shared);
                    let tx = tx.clone();
                    tasks.push(spawn(async move {
                        let wait = (start + at).saturating_duration_since(Instant::now());
                        if !wait.is_zero() {
                            sleep(wait).await;
                        }
                        let rec = client::boot(spec, shared).await;
                        let _ = tx.send(rec);
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
            Ok(())
        }));
    }
    drop(tx);
    let progress = crate::progress::Progress::new(config.clients as u64, config.progress);
    let mut records = Vec::with_capacity(config.clients);
    for rec in rx {
        progress.record(&rec);
        records.push(rec);
    }
    progress.finish();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))??;
    }
    let wall = start.elapsed();
    let meta = RunMeta {
        target: describe_target(&config.target, config.only),
        clients: config.clients,
        profile: config.mix.to_string(),
        arrival: config.arrival.to_string(),
        seed: config.seed,
    };
    Ok(Report::build(records, wall, meta))
}

fn describe_target(t: &Target, only: Only) -> String {
    let addr = |a: &SocketAddr| a.to_string();
    match only {
        Only::All => format!("dhcp {} (4011 on :{})", addr(&t.dhcp), t.pxe_port),
        Only::Dhcp => format!("dhcp {} only", addr(&t.dhcp)),
        Only::Tftp => format!("tftp {} only", addr(&t.tftp)),
        Only::Http => format!("http {} only", addr(&t.http)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_distinct_loopback_hosts() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..70_000 {
            let ip = client_ip(i);
            assert!(ip.is_loopback());
            assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255);
            assert!(seen.insert(ip), "{ip} twice");
        }
        assert_ne!(client_mac(1, 7), client_mac(2, 7));
    }
}
