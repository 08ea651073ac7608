//! `zpxe-bench compare`: zpxe against the peers installed here, same clients, same files, one
//! run, alternating servers inside each round; medians and zpxe/peer ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::netns::{NetPair, net_pair};
use crate::servers::{self, Server};
use crate::{ceiling, dhcp_blast, procstat, ttfb};

const MIB: f64 = (1u64 << 20) as f64;

/// Options of `compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// 3 rounds and shorter timed runs (about 7 minutes) instead of 5 rounds.
    #[arg(long)]
    pub quick: bool,
    /// Rounds instead of 3 (`--quick`) or 5: more samples for a tighter median.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=50))]
    pub rounds: Option<u16>,
    /// Also write every sample as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// atftpd binary or unpacked .deb root (also `$ZPXE_BENCH_ATFTPD`).
    #[arg(long, value_name = "PATH")]
    pub atftpd: Option<PathBuf>,
    /// Sections to run (comma-separated): ceiling, tftp, storm, http, dhcp, boot; and, not by
    /// default: boot-hpa, the boot storms against the classic stack with tftpd-hpa too;
    /// inventory, 1,000-client boot storms against zpxe with its SQLite inventory on and off
    /// (`rounds` of each, alternating).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,tftp,storm,http,dhcp,boot"
    )]
    pub sections: Vec<String>,
    /// Directory of zpxe and zpxe-loadgen (default: beside this binary).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// One measured figure for one (workload, client, server).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: String,
    pub workload: String,
    pub client: String,
    pub server: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub samples: Vec<f64>,
    pub median: f64,
    /// Median server CPU seconds per run.
    pub cpu_s: Option<f64>,
    /// Highest RssAnon of the server's process tree seen during any run, MiB.
    pub peak_anon_mib: Option<f64>,
    /// Peak resident set (VmHWM, mapped file pages included) of the main process, MiB.
    pub vm_hwm_mib: Option<f64>,
    pub failures: u64,
    /// zpxe's median / this server's median for the same workload and client.
    pub zpxe_ratio: Option<f64>,
    pub notes: Vec<String>,
    /// Server CPU seconds of every run.
    pub cpu_runs: Vec<f64>,
}

#[derive(Debug, Default)]
struct Sample {
    value: f64,
    failures: u64,
    note: Option<String>,
}

#[derive(Debug, Default)]
struct Table {
    rows: Vec<Row>,
    skipped: Vec<String>,
    /// zpxe's single TFTP transfer against the raw UDP ceilings of the same run.
    distances: Vec<String>,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        section: &str,
        workload: &str,
        client: &str,
        server: &str,
        unit: &str,
        higher: bool,
        s: Sample,
        usage: Option<(f64, u64, u64)>,
    ) {
        let i = match self
            .rows
            .iter()
            .position(|r| r.workload == workload && r.client == client && r.server == server)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    section: section.into(),
                    workload: workload.into(),
                    client: client.into(),
                    server: server.into(),
                    unit: unit.into(),
                    higher_is_better: higher,
                    samples: Vec::new(),
                    median: f64::NAN,
                    cpu_s: None,
                    peak_anon_mib: None,
                    vm_hwm_mib: None,
                    failures: 0,
                    zpxe_ratio: None,
                    notes: Vec::new(),
                    cpu_runs: Vec::new(),
                });
                self.rows.len() - 1
            }
        };
        let row = &mut self.rows[i];
        row.samples.push(s.value);
        row.failures += s.failures;
        // The latest run's note (failure reason, latency) stands for the row.
        if let Some(n) = s.note {
            row.notes = vec![n];
        }
        if let Some((cpu, anon, hwm)) = usage {
            row.cpu_runs.push(cpu);
            let anon = anon as f64 / 1024.0;
            row.peak_anon_mib = Some(row.peak_anon_mib.map_or(anon, |a| a.max(anon)));
            let hwm = hwm as f64 / 1024.0;
            row.vm_hwm_mib = Some(row.vm_hwm_mib.map_or(hwm, |a| a.max(hwm)));
        }
    }

    fn finish(&mut self) {
        for row in &mut self.rows {
            row.median = median(&row.samples);
            if !row.cpu_runs.is_empty() {
                row.cpu_s = Some(median(&row.cpu_runs));
            }
        }
        let zpxe: BTreeMap<(String, String), (f64, u64)> = self
            .rows
            .iter()
            .filter(|r| r.server == "zpxe")
            .map(|r| {
                (
                    (r.workload.clone(), r.client.clone()),
                    (r.median, r.failures),
                )
            })
            .collect();
        for row in &mut self.rows {
            if row.server == "zpxe" || row.server == "ceiling" {
                continue;
            }
            if let Some((z, z_failures)) = zpxe.get(&(row.workload.clone(), row.client.clone())) {
                // Time-to-booted counts booted clients only: with failures on either side the
                // two medians are of different populations, and their ratio would mislead.
                if (row.section == "boot" || row.section == "inventory")
                    && row.unit == "s"
                    && (row.failures > 0 || *z_failures > 0)
                {
                    continue;
                }
                row.zpxe_ratio = Some(z / row.median);
            }
        }
        let ceilings: Vec<(&str, f64)> = self
            .rows
            .iter()
            .filter(|r| r.server == "ceiling" && r.client.starts_with("UDP GSO"))
            .map(|r| (r.client.as_str(), r.median))
            .collect();
        for row in self.rows.iter().filter(|r| {
            r.server == "zpxe" && r.section == "tftp" && r.workload.ends_with("windowsize 64")
        }) {
            for (ceiling, c) in &ceilings {
                self.distances.push(format!(
                    "{} from zpxe, windowsize 64: {:.0}% of the {ceiling} ceiling ({} of {} MiB/s)",
                    row.client,
                    100.0 * row.median / c,
                    fmt_num(row.median),
                    fmt_num(*c)
                ));
            }
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs `f` while watching `pid`: returns its sample and (CPU s, peak RssAnon KiB, VmHWM KiB).
fn watched(
    pid: u32,
    f: impl FnOnce() -> anyhow::Result<Sample>,
) -> (Sample, Option<(f64, u64, u64)>) {
    watched_many(&[pid], f)
}

/// [`watched`] over the processes of a stack: CPU summed, the peak of the summed RssAnon, the
/// sum of the VmHWMs.
fn watched_many(
    pids: &[u32],
    f: impl FnOnce() -> anyhow::Result<Sample>,
) -> (Sample, Option<(f64, u64, u64)>) {
    let cpu = || pids.iter().map(|p| procstat::cpu_seconds(*p)).sum::<f64>();
    let cpu0 = cpu();
    let sampler = procstat::PeakSampler::start_many(pids.to_vec());
    let sample = f().unwrap_or_else(|e| Sample {
        value: f64::NAN,
        failures: 1,
        note: Some(format!("{e:#}")),
    });
    let peak = sampler.stop();
    let used = cpu() - cpu0;
    let hwm = pids.iter().map(|p| procstat::hwm_kib(*p)).sum();
    (sample, Some((used, peak, hwm)))
}

struct Env {
    root: PathBuf,
    work: PathBuf,
    loadgen: PathBuf,
    quick: bool,
}

/// The files every server serves.
const TFTP_BIG: &str = "tftp-64m.bin";
const TFTP_SMALL: &str = "tftp-1m.bin";
const HTTP_BIG: &str = "http-256m.bin";
/// The load at which proxyDHCP reply latency is measured (issue target: p99 under 1 ms).
const PACED_RATE: u32 = 10_000;
/// The boot storm serves the demo's image set (4 MiB boot.wim).
const STORM_WIM: u64 = 4 << 20;

fn make_root(root: &Path) -> anyhow::Result<()> {
    let mut files: Vec<(&str, u64)> = vec![
        (TFTP_BIG, 64 << 20),
        (TFTP_SMALL, 1 << 20),
        (HTTP_BIG, 256 << 20),
    ];
    files.extend(zpxe::demo_images::demo_files(STORM_WIM));
    for (i, (name, size)) in files.into_iter().enumerate() {
        ceiling::write_pattern_file(&root.join(name), size, 0x9e37_79b9 + i as u64)?;
    }
    // Peers run as nobody / tftp: everything world-readable.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(root)
        .status()?;
    let mut dir = root.to_path_buf();
    while let Some(parent) = dir.parent() {
        if parent.as_os_str().is_empty() || parent == Path::new("/") {
            break;
        }
        dir = parent.to_path_buf();
        if dir.starts_with("/tmp") && dir != Path::new("/tmp") {
            Command::new("chmod").arg("a+rx").arg(&dir).status()?;
        }
    }
    Ok(())
}

fn run_loadgen(
    env: &Env,
    args: &[String],
    tag: &str,
    limit: u64,
) -> anyhow::Result<serde_json::Value> {
    run_loadgen_in(env, None, args, tag, limit)
}

/// [`run_loadgen`] inside network namespace `ns`.
fn run_loadgen_in(
    env: &Env,
    ns: Option<&str>,
    args: &[String],
    tag: &str,
    limit: u64,
) -> anyhow::Result<serde_json::Value> {
    let json = env.work.join(format!("loadgen-{tag}.json"));
    let _ = fs::remove_file(&json);
    let mut cmd = match ns {
        Some(ns) => NetPair::command(ns, &env.loadgen),
        None => Command::new(&env.loadgen),
    };
    let out = cmd
        .args(args)
        .arg("--reference-root")
        .arg(&env.root)
        .args(["--quiet", "--limit", &limit.to_string(), "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .context("running zpxe-loadgen")?;
    let text = fs::read_to_string(&json).with_context(|| {
        format!(
            "zpxe-loadgen wrote no report: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

fn phase(report: &serde_json::Value, name: &str, key: &str) -> f64 {
    report["phases"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["phase"] == name))
        .and_then(|p| p[key].as_f64())
        .unwrap_or(f64::NAN)
}

fn failures_of(report: &serde_json::Value) -> (u64, Option<String>) {
    let failed =
        report["failed"].as_u64().unwrap_or(0) + report["byte_errors"].as_u64().unwrap_or(0);
    let note = report["failures"]
        .as_array()
        .and_then(|a| a.first())
        .map(|f| format!("{} x {}", f[1], f[0].as_str().unwrap_or("?")));
    (failed, note)
}

fn atftp_get(env: &Env, port: u16, file: &str, ws: u16) -> anyhow::Result<Sample> {
    let out = env.work.join("atftp.out");
    let _ = fs::remove_file(&out);
    let t0 = Instant::now();
    let mut cmd = Command::new("atftp");
    cmd.args(["-g", "-r", file, "-l"])
        .arg(&out)
        .args(["--option", "blksize 1468"]);
    if ws > 1 {
        cmd.args(["--option", &format!("windowsize {ws}")]);
    }
    let status = cmd
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let secs = t0.elapsed().as_secs_f64();
    let got = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let want = fs::metadata(env.root.join(file))?.len();
    if !status.success() || got != want {
        bail!("atftp: {status}, {got} of {want} bytes");
    }
    Ok(Sample {
        value: want as f64 / MIB / secs,
        ..Sample::default()
    })
}

fn loadgen_tftp(
    env: &Env,
    port: u16,
    file: &str,
    clients: usize,
    profile: &str,
    opts: Option<u16>,
) -> anyhow::Result<Sample> {
    let mut args: Vec<String> = ["--only", "tftp", "--file", file, "--profile", profile]
        .map(String::from)
        .to_vec();
    args.extend([
        "--tftp-port".into(),
        port.to_string(),
        "--clients".into(),
        clients.to_string(),
    ]);
    if let Some(ws) = opts {
        args.extend([
            "--tftp-blksize".into(),
            "1468".into(),
            "--tftp-windowsize".into(),
            ws.to_string(),
        ]);
    }
    let r = run_loadgen(env, &args, "tftp", 120)?;
    let (failures, note) = failures_of(&r);
    let value = if clients == 1 {
        // One transfer: its own time, without the loadgen's start-up.
        r["bytes"].as_f64().unwrap_or(0.0) / MIB / (phase(&r, "tftp", "max_ms") / 1000.0)
    } else {
        r["bytes"].as_f64().unwrap_or(0.0) / MIB / r["wall_s"].as_f64().unwrap_or(f64::NAN)
    };
    Ok(Sample {
        value: if failures > 0 && clients == 1 {
            f64::NAN
        } else {
            value
        },
        failures,
        note,
    })
}

/// One wrk run; `nice` > 0 runs wrk at that niceness (below the servers).
fn wrk(env: &Env, port: u16, ranges: bool, secs: u64, nice: i32) -> anyhow::Result<Sample> {
    let script = env
        .work
        .join(if ranges { "ranges.lua" } else { "full.lua" });
    let mut lua = String::new();
    if ranges {
        let _ = writeln!(
            lua,
            "request = function()\n  local s = math.random(0, 255) * 1048576\n  \
             return wrk.format(\"GET\", nil, {{[\"Range\"] = \"bytes=\" .. s .. \"-\" .. (s + 1048575)}})\nend"
        );
    }
    let _ = writeln!(
        lua,
        "done = function(s, lat, req)\n  io.write(string.format(\"ZPXE %d %d %d %d %d %d\\n\", \
         s.bytes, s.duration, s.requests, s.errors.connect + s.errors.read + s.errors.write + \
         s.errors.timeout, s.errors.status, lat:percentile(99)))\nend"
    );
    fs::write(&script, lua)?;
    let mut cmd = if nice == 0 {
        Command::new("wrk")
    } else {
        let mut c = Command::new("nice");
        c.args(["-n", &nice.to_string(), "wrk"]);
        c
    };
    let out = cmd
        .args([
            "-t2",
            "-c64",
            &format!("-d{secs}s"),
            "--timeout",
            "30s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/{HTTP_BIG}"))
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ZPXE "))
        .with_context(|| format!("wrk printed no summary: {}", text.trim()))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [bytes, dur_us, requests, errors, status, p99_us] = f[..] else {
        bail!("wrk summary {line:?}");
    };
    Ok(Sample {
        value: bytes / MIB / (dur_us / 1e6),
        failures: (errors + status) as u64,
        note: ranges.then(|| {
            format!(
                "{:.0} req/s, p99 {:.1} ms",
                requests / (dur_us / 1e6),
                p99_us / 1000.0
            )
        }),
    })
}

/// One full boot storm from the client namespace by broadcast against the stack in the server
/// namespace: (p50, p99, aggregate MiB/s), failures on the first two.
fn boot_storm(
    env: &Env,
    pair: &NetPair,
    clients: usize,
) -> anyhow::Result<(Sample, Sample, Sample)> {
    let args: Vec<String> = vec![
        "--broadcast".into(),
        "--server".into(),
        pair.server_ip.clone(),
        "--dhcp-port".into(),
        servers::NS_DHCP.to_string(),
        "--pxe-port".into(),
        servers::NS_PXE.to_string(),
        "--tftp-port".into(),
        servers::NS_TFTP.to_string(),
        "--clients".into(),
        clients.to_string(),
        "--profile".into(),
        "mix".into(),
    ];
    let r = run_loadgen_in(env, Some(&pair.client), &args, "boot", BOOT_LIMIT_S)?;
    let (failures, note) = failures_of(&r);
    let booted = r["booted"].as_u64().unwrap_or(0);
    let mut notes = vec![format!(
        "booted {booted}/{clients}, {} DHCP/TFTP retransmissions",
        r["retransmits"].as_u64().unwrap_or(0)
    )];
    notes.extend(note);
    let p50 = phase(&r, "total", "p50_ms") / 1000.0;
    let p99 = phase(&r, "total", "p99_ms") / 1000.0;
    Ok((
        Sample {
            value: p50,
            failures,
            note: Some(notes.join("; ")),
        },
        Sample {
            value: p99,
            failures,
            note: None,
        },
        Sample {
            value: r["mib_per_s"].as_f64().unwrap_or(f64::NAN),
            failures: 0,
            note: None,
        },
    ))
}

/// Wall-clock limit of one boot storm (the loadgen fails clients still unfinished).
const BOOT_LIMIT_S: u64 = 120;

/// A stack the boot section runs.
enum BootStack {
    /// zpxe, recording the storm in its SQLite inventory or (`false`) with `--no-database`.
    Zpxe {
        inventory: bool,
    },
    Classic(String, servers::ClassicTftp),
}

/// The boot section: full storms against zpxe and the classic stack, each in a fresh pair of
/// namespaces (servers in one, the loadgen by broadcast in the other), one storm per size.
fn boot_section(
    env: &Env,
    zpxe_bin: &Path,
    atftpd: Option<PathBuf>,
    with_hpa: bool,
    table: &mut Table,
    started: Instant,
) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        table.skipped.push(
            "boot storms (zpxe and the classic stack): not run, network namespaces need root"
                .into(),
        );
        return;
    }
    if servers::which(&["ip"]).is_none() {
        table
            .skipped
            .push("boot storms: not run, `ip` (iproute2) not installed".into());
        return;
    }
    let mut stacks = vec![BootStack::Zpxe { inventory: true }];
    let dnsmasq = servers::which(&["dnsmasq"]);
    let nginx = servers::which(&["nginx"]);
    match (&dnsmasq, &nginx) {
        (Some(_), Some(_)) => {
            // The classic stack's TFTP server is atftpd, or tftpd-hpa where atftpd is missing;
            // both with `boot-hpa` (which does not fit the default run's 15 minutes).
            let hpa = servers::which(&["in.tftpd"]);
            match &atftpd {
                Some(b) => stacks.push(BootStack::Classic(
                    "classic-atftpd".into(),
                    servers::ClassicTftp::Atftpd(b.clone(), 1000),
                )),
                None => table
                    .skipped
                    .push("classic stack with atftpd: atftpd not found".into()),
            }
            if with_hpa || atftpd.is_none() {
                match hpa {
                    Some(b) => stacks.push(BootStack::Classic(
                        "classic-tftpd-hpa".into(),
                        servers::ClassicTftp::TftpdHpa(b),
                    )),
                    None => table
                        .skipped
                        .push("classic stack with tftpd-hpa: in.tftpd not installed".into()),
                }
            }
        }
        _ => table.skipped.push(format!(
            "classic stack storms: not run, {} not installed",
            [("dnsmasq", &dnsmasq), ("nginx", &nginx)]
                .iter()
                .filter(|(_, b)| b.is_none())
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
    // One storm per size and stack, with or without --quick: more rounds would not fit the whole
    // comparison in 15 minutes.
    for clients in [200usize, 1000] {
        let workload = format!("full boot storm, {clients} clients, mix, broadcast in netns");
        boot_round(
            env,
            zpxe_bin,
            &stacks,
            (&dnsmasq, &nginx),
            (clients, "boot", &workload),
            table,
            started,
        );
    }
}

/// The inventory section (issue 14's benchmark): what reporting costs the data path. `rounds`
/// 1,000-client boot storms against zpxe with its SQLite inventory and as many with
/// `--no-database`, alternating which goes first; the rows' ratio is inventory on / off.
fn inventory_section(
    env: &Env,
    zpxe_bin: &Path,
    rounds: usize,
    table: &mut Table,
    started: Instant,
) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        table
            .skipped
            .push("inventory storms: not run, network namespaces need root".into());
        return;
    }
    let clients = 1000;
    let workload = format!("full boot storm, {clients} clients, mix, inventory on / off");
    for round in 0..rounds {
        let mut stacks = [
            BootStack::Zpxe { inventory: true },
            BootStack::Zpxe { inventory: false },
        ];
        if round % 2 == 1 {
            stacks.reverse();
        }
        boot_round(
            env,
            zpxe_bin,
            &stacks,
            (&None, &None),
            (clients, "inventory", &workload),
            table,
            started,
        );
    }
}

/// One storm of `clients` against every stack in order, as rows of `section` and `workload`.
fn boot_round(
    env: &Env,
    zpxe_bin: &Path,
    stacks: &[BootStack],
    (dnsmasq, nginx): (&Option<PathBuf>, &Option<PathBuf>),
    (clients, section, workload): (usize, &str, &str),
    table: &mut Table,
    started: Instant,
) {
    for (index, spec) in stacks.iter().enumerate() {
        let name = match spec {
            BootStack::Zpxe { inventory: true } => "zpxe",
            BootStack::Zpxe { inventory: false } => "zpxe-no-inventory",
            BootStack::Classic(name, _) => name.as_str(),
        };
        eprintln!(
            "compare: boot storm, {clients} clients, {name} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let pair = match net_pair(&format!("{index}{clients}"), index as u32) {
            Ok(p) => p,
            Err(e) => {
                table
                    .skipped
                    .push(format!("boot storm {clients} x {name}: namespaces: {e:#}"));
                continue;
            }
        };
        let stack = match spec {
            BootStack::Zpxe { inventory } => {
                servers::start_zpxe_in(zpxe_bin, &env.root, &env.work, &pair.server, *inventory)
            }
            BootStack::Classic(name, tftp) => servers::start_classic_in(
                name,
                dnsmasq.as_deref().unwrap_or(Path::new("dnsmasq")),
                nginx.as_deref().unwrap_or(Path::new("nginx")),
                tftp,
                &env.root,
                &env.work,
                &pair.server,
                &pair.server_ip,
            ),
        };
        let mut stack = match stack {
            Ok(s) => s,
            Err(e) => {
                table
                    .skipped
                    .push(format!("boot storm {clients} x {name}: {e:#}"));
                continue;
            }
        };
        let mut rest = None;
        let (mut p50, usage) = watched_many(&stack.pids(), || {
            let (a, b, c) = boot_storm(env, &pair, clients)?;
            rest = Some((b, c));
            Ok(a)
        });
        let exited = stack.exited();
        if !exited.is_empty() {
            let mut notes: Vec<String> = p50.note.take().into_iter().collect();
            notes.extend(exited);
            p50.note = Some(notes.join("; "));
        }
        stack.stop();
        drop(pair);
        table.add(
            section,
            workload,
            "p50 time-to-booted",
            name,
            "s",
            false,
            p50,
            usage,
        );
        if let Some((p99, tput)) = rest {
            table.add(
                section,
                workload,
                "p99 time-to-booted",
                name,
                "s",
                false,
                p99,
                None,
            );
            table.add(
                section,
                workload,
                "aggregate download",
                name,
                "MiB/s",
                true,
                tput,
                None,
            );
        }
    }
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let zpxe_bin = bin_dir.join("zpxe");
    let loadgen = bin_dir.join("zpxe-loadgen");
    for b in [&zpxe_bin, &loadgen] {
        if !b.is_file() {
            bail!(
                "{} not found: build first with `cargo build --release -p zpxe -p zpxe-loadgen`",
                b.display()
            );
        }
    }
    let want = |s: &str| args.sections.iter().any(|x| x == s);
    let rounds = args
        .rounds
        .map_or(if args.quick { 3 } else { 5 }, usize::from);
    let tmp = tempfile::Builder::new().prefix("zpxe-bench-").tempdir()?;
    let root = tmp.path().join("root");
    let work = tmp.path().join("work");
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&work)?;
    eprintln!("compare: writing files to {}", root.display());
    make_root(&root)?;
    let env = Env {
        root: root.clone(),
        work: work.clone(),
        loadgen,
        quick: args.quick,
    };
    let mut table = Table::default();

    // Servers: zpxe always, peers when installed.
    let mut tftp_servers: Vec<Server> = Vec::new();
    let mut http_servers: Vec<Server> = Vec::new();
    let mut dhcp_servers: Vec<Server> = Vec::new();
    let zpxe = servers::start_zpxe(&zpxe_bin, &root, &work)?;
    let start = |name: &str,
                 r: anyhow::Result<Server>,
                 into: &mut Vec<Server>,
                 skipped: &mut Vec<String>| match r {
        Ok(s) => into.push(s),
        Err(e) => skipped.push(format!("{name}: {e:#}")),
    };
    let tftp_wanted = want("tftp") || want("storm");
    if tftp_wanted {
        match servers::find_atftpd(args.atftpd.as_deref()) {
            Some(b) => start(
                "atftpd",
                servers::start_atftpd(&b, &root, &work, 1000),
                &mut tftp_servers,
                &mut table.skipped,
            ),
            None => table.skipped.push(
                "atftpd: not found (see bench/README.md: apt-get download atftpd && dpkg -x ...)"
                    .into(),
            ),
        }
        match servers::which(&["in.tftpd"]) {
            Some(b) => start(
                "tftpd-hpa",
                servers::start_tftpd_hpa(&b, &root, &work),
                &mut tftp_servers,
                &mut table.skipped,
            ),
            None => table
                .skipped
                .push("tftpd-hpa: in.tftpd not installed".into()),
        }
    }
    let dnsmasq = servers::which(&["dnsmasq"]);
    if let Some(b) = &dnsmasq {
        if tftp_wanted {
            start(
                "dnsmasq TFTP",
                servers::start_dnsmasq_tftp(b, &root, &work, 1000),
                &mut tftp_servers,
                &mut table.skipped,
            );
        }
        if want("dhcp") {
            start(
                "dnsmasq proxyDHCP",
                servers::start_dnsmasq_proxy(b, &work),
                &mut dhcp_servers,
                &mut table.skipped,
            );
        }
    } else {
        table.skipped.push("dnsmasq: not installed".into());
    }
    if want("http") {
        match servers::which(&["nginx"]) {
            Some(b) => start(
                "nginx",
                servers::start_nginx(&b, &root, &work),
                &mut http_servers,
                &mut table.skipped,
            ),
            None => table.skipped.push("nginx: not installed".into()),
        }
    }
    let has_atftp = servers::which(&["atftp"]).is_some();
    let has_wrk = servers::which(&["wrk"]).is_some();
    if !has_atftp {
        table
            .skipped
            .push("atftp client not installed: TFTP single transfers use only zpxe-loadgen".into());
    }
    if !has_wrk {
        table
            .skipped
            .push("wrk not installed: HTTP uses zpxe-loadgen, full files only".into());
    }
    // zpxe is first in every list; peers follow, and the order rotates every round.
    let pid_of = |s: &Server| s.pid();

    for round in 0..rounds {
        eprintln!(
            "compare: round {}/{rounds} ({:.0} s so far)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
        let order = |n: usize| -> Vec<usize> { (0..n).map(|i| (i + round) % n).collect() };

        if want("ceiling") {
            for path in [
                ceiling::UdpPath::GsoToGro,
                ceiling::UdpPath::Gso,
                ceiling::UdpPath::Plain,
            ] {
                let r = ceiling::udp_windows_via(&root, TFTP_BIG, path);
                let s = r.map(|m| Sample {
                    value: m.mib_per_s(),
                    ..Sample::default()
                });
                let name = path.label();
                table.add(
                    "ceiling",
                    "raw loopback 64 MiB, windows of 64 x 1468",
                    name,
                    "ceiling",
                    "MiB/s",
                    true,
                    to_sample(s),
                    None,
                );
            }
            let r = ceiling::tcp_stream(&root, HTTP_BIG);
            let s = r.map(|m| Sample {
                value: m.mib_per_s(),
                ..Sample::default()
            });
            table.add(
                "ceiling",
                "raw loopback TCP 256 MiB, one connection",
                "TcpConn::send_image",
                "ceiling",
                "MiB/s",
                true,
                to_sample(s),
                None,
            );
        }

        let mut all_tftp: Vec<&Server> = vec![&zpxe];
        all_tftp.extend(tftp_servers.iter());
        if want("tftp") {
            for ws in [1u16, 64] {
                let workload = format!("TFTP 64 MiB, blksize 1468, windowsize {ws}");
                for i in order(all_tftp.len()) {
                    let s = all_tftp[i];
                    let port = s.tftp_port.unwrap_or(69);
                    if has_atftp {
                        let (sample, u) =
                            watched(pid_of(s), || atftp_get(&env, port, TFTP_BIG, ws));
                        table.add(
                            "tftp", &workload, "atftp", &s.name, "MiB/s", true, sample, u,
                        );
                    }
                    let (sample, u) = watched(pid_of(s), || {
                        loadgen_tftp(&env, port, TFTP_BIG, 1, "edk2", Some(ws))
                    });
                    table.add(
                        "tftp",
                        &workload,
                        "zpxe-loadgen",
                        &s.name,
                        "MiB/s",
                        true,
                        sample,
                        u,
                    );
                }
            }
        }
        if want("storm") {
            for profile in ["edk2", "ipxe"] {
                let workload = format!("TFTP storm 500 x 1 MiB, {profile} options");
                for i in order(all_tftp.len()) {
                    let s = all_tftp[i];
                    let port = s.tftp_port.unwrap_or(69);
                    let (sample, u) = watched(pid_of(s), || {
                        loadgen_tftp(&env, port, TFTP_SMALL, 500, profile, None)
                    });
                    table.add(
                        "storm",
                        &workload,
                        "zpxe-loadgen",
                        &s.name,
                        "MiB/s",
                        true,
                        sample,
                        u,
                    );
                }
            }
        }
        if want("http") {
            let mut all: Vec<&Server> = vec![&zpxe];
            all.extend(http_servers.iter());
            let secs = if env.quick { 3 } else { 5 };
            for ranges in [false, true] {
                let workload = if ranges {
                    "HTTP 64 conns, 256 MiB file, random 1 MiB ranges"
                } else {
                    "HTTP 64 conns x 256 MiB, full"
                };
                for i in order(all.len()) {
                    let s = all[i];
                    let port = s.http_port.unwrap_or(0);
                    if has_wrk {
                        // Twice: wrk at the servers' priority, then at nice 19 so the
                        // servers and the probe get the CPU first, as they would if the
                        // clients were other machines (2 cores: wrk's two threads otherwise
                        // preempt a server's loop for whole 4 ms scheduler ticks).
                        for nice in [0, 19] {
                            let probe = ttfb::Probe {
                                port,
                                path: HTTP_BIG.into(),
                                len: 256 << 20,
                                start_after: Duration::from_millis(500),
                                stop_after: Duration::from_secs(secs)
                                    .saturating_sub(Duration::from_millis(300)),
                                gap: Duration::from_millis(5),
                            };
                            let prober = std::thread::spawn(move || probe.run());
                            let (sample, u) =
                                watched(pid_of(s), || wrk(&env, port, ranges, secs, nice));
                            let (client, probe_label) = if nice == 0 {
                                (
                                    format!("wrk ({secs} s)"),
                                    "time to first byte, 65th conn".to_owned(),
                                )
                            } else {
                                (
                                    format!("wrk nice {nice} ({secs} s)"),
                                    format!("time to first byte, wrk at nice {nice}"),
                                )
                            };
                            table.add("http", workload, &client, &s.name, "MiB/s", true, sample, u);
                            let ttfb = match prober.join() {
                                Ok(Ok(mut v)) => {
                                    match (
                                        ttfb::quantile(&mut v, 0.99),
                                        ttfb::quantile(&mut v, 0.5),
                                    ) {
                                        (Some(p99), Some(p50)) => Sample {
                                            value: p99.as_secs_f64() * 1000.0,
                                            note: Some(format!(
                                                "{} probes, p50 {:.2} ms",
                                                v.len(),
                                                p50.as_secs_f64() * 1000.0
                                            )),
                                            ..Sample::default()
                                        },
                                        _ => Sample {
                                            value: f64::NAN,
                                            failures: 1,
                                            note: Some("no probe finished".into()),
                                        },
                                    }
                                }
                                Ok(Err(e)) => Sample {
                                    value: f64::NAN,
                                    failures: 1,
                                    note: Some(format!("probe: {e}")),
                                },
                                Err(_) => Sample {
                                    value: f64::NAN,
                                    failures: 1,
                                    note: Some("probe thread panicked".into()),
                                },
                            };
                            table.add(
                                "http",
                                workload,
                                &probe_label,
                                &s.name,
                                "ms p99",
                                false,
                                ttfb,
                                None,
                            );
                        }
                    } else if !ranges {
                        let args: Vec<String> = [
                            "--only",
                            "http",
                            "--file",
                            HTTP_BIG,
                            "--clients",
                            "64",
                            "--http-port",
                        ]
                        .map(String::from)
                        .into_iter()
                        .chain([port.to_string()])
                        .collect();
                        let (sample, u) = watched(pid_of(s), || {
                            let r = run_loadgen(&env, &args, "http", 180)?;
                            let (failures, note) = failures_of(&r);
                            Ok(Sample {
                                value: r["mib_per_s"].as_f64().unwrap_or(f64::NAN),
                                failures,
                                note,
                            })
                        });
                        table.add(
                            "http",
                            workload,
                            "zpxe-loadgen",
                            &s.name,
                            "MiB/s",
                            true,
                            sample,
                            u,
                        );
                    }
                }
            }
        }
        if want("dhcp") {
            let mut all: Vec<&Server> = vec![&zpxe];
            all.extend(dhcp_servers.iter());
            let secs = if env.quick { 2 } else { 3 };
            for i in order(all.len()) {
                let s = all[i];
                let server = SocketAddr::from((Ipv4Addr::LOCALHOST, s.dhcp_port.unwrap_or(67)));
                let (sample, u) = watched(pid_of(s), || {
                    let r = dhcp_blast::run(server, Duration::from_secs(secs))?;
                    Ok(Sample {
                        value: r.per_second(),
                        failures: 0,
                        note: Some(format!(
                            "p50 {:.2} ms, p99 {:.2} ms, {} lost",
                            r.quantile_ms(0.5),
                            r.quantile_ms(0.99),
                            r.lost
                        )),
                    })
                });
                table.add(
                    "dhcp",
                    "proxyDHCP relayed DISCOVER -> offer, 4 relays x 16 outstanding",
                    "dhcp_blast",
                    &s.name,
                    "replies/s",
                    true,
                    sample,
                    u,
                );
                let (paced, u) = watched(pid_of(s), || {
                    let r = dhcp_blast::run_paced(server, PACED_RATE, Duration::from_secs(secs))?;
                    Ok(Sample {
                        value: r.quantile_ms(0.99),
                        failures: r.lost,
                        note: Some(format!(
                            "{:.0} replies/s, p50 {:.3} ms, {} lost",
                            r.per_second(),
                            r.quantile_ms(0.5),
                            r.lost
                        )),
                    })
                });
                table.add(
                    "dhcp",
                    "proxyDHCP reply latency at 10,000 relayed DISCOVERs/s",
                    "dhcp_blast paced",
                    &s.name,
                    "ms p99",
                    false,
                    paced,
                    u,
                );
            }
        }
    }

    if want("boot") || want("boot-hpa") {
        let atftpd = servers::find_atftpd(args.atftpd.as_deref());
        boot_section(
            &env,
            &zpxe_bin,
            atftpd,
            want("boot-hpa"),
            &mut table,
            started,
        );
    }

    if want("inventory") {
        inventory_section(&env, &zpxe_bin, rounds, &mut table, started);
    }

    zpxe.stop();
    for s in tftp_servers
        .into_iter()
        .chain(http_servers)
        .chain(dhcp_servers)
    {
        s.stop();
    }
    table.finish();
    let text = render(&table, rounds, started.elapsed());
    println!("{text}");
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "rounds": rounds,
            "quick": args.quick,
            "elapsed_s": started.elapsed().as_secs_f64(),
            "rows": table.rows,
            "skipped": table.skipped,
            "distances": table.distances,
        });
        fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}

fn to_sample(r: std::io::Result<Sample>) -> Sample {
    r.unwrap_or_else(|e| Sample {
        value: f64::NAN,
        failures: 1,
        note: Some(e.to_string()),
    })
}

fn render(table: &Table, rounds: usize, elapsed: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "zpxe compare: {rounds} rounds, servers alternating, medians; {:.0} s total",
        elapsed.as_secs_f64()
    );
    let mut last = String::new();
    for r in &table.rows {
        if r.workload != last {
            let _ = writeln!(out, "\n{}", r.workload);
            let _ = writeln!(
                out,
                "  {:<20} {:<17} {:>12} {:<9} {:>9} {:>8} {:>8} {:>6} {:>10}",
                "client",
                "server",
                "median",
                "unit",
                "min-max",
                "cpu s",
                "anon MiB",
                "fails",
                "zpxe/peer"
            );
            last = r.workload.clone();
        }
        let (lo, hi) = r
            .samples
            .iter()
            .filter(|x| x.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(*x), b.max(*x))
            });
        // One sample has no spread.
        let spread = if lo.is_finite() && r.median.abs() > 0.0 && r.samples.len() > 1 {
            format!("{:.0}%", (hi - lo) / r.median * 100.0)
        } else {
            "-".into()
        };
        let ratio = r.zpxe_ratio.map_or("-".into(), |x| format!("{x:.2}x"));
        let _ = writeln!(
            out,
            "  {:<20} {:<17} {:>12} {:<9} {:>9} {:>8} {:>8} {:>6} {:>10}{}",
            r.client,
            r.server,
            fmt_num(r.median),
            r.unit,
            spread,
            r.cpu_s.map_or("-".into(), |c| format!("{c:.2}")),
            r.peak_anon_mib.map_or("-".into(), |a| format!("{a:.1}")),
            r.failures,
            ratio,
            if r.notes.is_empty() {
                String::new()
            } else {
                format!("  [{}]", r.notes.join("; "))
            }
        );
    }
    if !table.distances.is_empty() {
        let _ = writeln!(out, "\ndistance to the machine's limit:");
        for d in &table.distances {
            let _ = writeln!(out, "  - {d}");
        }
    }
    if !table.skipped.is_empty() {
        let _ = writeln!(out, "\nnot measured:");
        for s in &table.skipped {
            let _ = writeln!(out, "  - {s}");
        }
    }
    let _ = writeln!(
        out,
        "\nmin-max: spread of the samples relative to the median. zpxe/peer > 1 is zpxe ahead for \
         MiB/s and replies/s; for ms rows, and for s (time-to-booted, booted clients only; no \
         ratio when either side failed clients), below 1 is zpxe ahead. fails: failed \
         transfers/requests, or clients that did not boot. cpu s: server CPU per run (median), \
         summed over a stack's processes. anon MiB: peak RssAnon of the server's processes."
    );
    out
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "failed".into()
    } else if x >= 1000.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}
