//! `zpxe-bench dora`: DHCP server mode, DISCOVER to ACK, zpxe against dnsmasq (issue 17's
//! benchmark). Both servers hand out the same pool from a namespace of their own
//! ([`crate::netns::NetPair`]); the clients run in the other namespace as a relay (giaddr =
//! the client side's address, replies to its port 67), so every exchange can be a new client
//! without raw sockets:
//! - Kea's `perfdhcp` (Debian: kea-admin) at each target rate of a ladder (`-r`, default
//!   1,000 to 30,000/s), `-R` a million clients, for the run's seconds: its "4-way
//!   exchanges/second" and the average DISCOVER-OFFER plus REQUEST-ACK delay (perfdhcp reports
//!   no percentiles). Past a server's capacity perfdhcp keeps sending at its target and the
//!   completed rate collapses, so the best rate over the ladder is the server's;
//! - zpxe's own blaster ([`crate::dhcp_blast::run_dora`]) closed loop (64 exchanges in flight,
//!   a new client at each ACK): exchanges per second, p50 and p99 from DISCOVER to ACK;
//! - the blaster paced at `--rate` (10,000 exchanges/s by default): p50 and p99 at that load.
//!
//! Each (server, client) sample runs against a fresh server with an empty lease table; the
//! server's CPU time (its process, from /proc) over the client's run divided by the exchanges
//! completed gives CPU per exchange. Every run is bounded: seconds per sample and at most
//! `MAX_EXCHANGES` clients.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::dhcp_blast::{self, Pace};
use crate::netns::{NetPair, net_pair};
use crate::procstat;
use crate::servers::{self, NS_DHCP};

/// The servers of each run, in order; "zpxe-poll" is zpxe with `server.busy-poll-us`.
const SERVERS: [&str; 3] = ["zpxe", "zpxe-poll", "dnsmasq"];

/// Clients per sample at most (each leases one address of the 524,286 in the pool).
const MAX_EXCHANGES: u32 = 400_000;

#[derive(Debug, clap::Args)]
pub struct DoraArgs {
    /// Samples per (server, client); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds each sample sends for.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Exchanges per second of the paced run.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    /// perfdhcp's target rates (`-r`), one sample each: past a server's capacity perfdhcp
    /// keeps sending and the server's completed rate collapses, so the highest completed rate
    /// over the ladder is the one to compare.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000,10000,30000")]
    pub perfdhcp_rates: Vec<u32>,
    /// Also run zpxe with `server.busy-poll-us` at this (as "zpxe-poll"); 0: not.
    #[arg(long, default_value_t = 200)]
    pub busy_poll_us: u64,
    /// Also write every sample as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Directory of zpxe (default: beside this binary).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// The blaster's side, run by `dora` inside the client namespace.
#[derive(Debug, clap::Args)]
pub struct BlastArgs {
    #[arg(long)]
    pub server: std::net::SocketAddr,
    #[arg(long)]
    pub relay: std::net::Ipv4Addr,
    /// Exchanges in flight (closed loop); without it, `--rate`.
    #[arg(long)]
    pub window: Option<usize>,
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    #[arg(long)]
    pub seconds: u64,
    #[arg(long)]
    pub max: u32,
    #[arg(long, default_value_t = 1)]
    pub salt: u8,
}

/// One client's figures against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub server: String,
    pub client: String,
    pub exchanges: u64,
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The blaster: REQUEST to ACK only, the leg that waits for the lease write.
    pub ack_p99_ms: Option<f64>,
    /// The blaster: DISCOVER to OFFER only.
    pub offer_p99_ms: Option<f64>,
    /// perfdhcp: average DISCOVER-OFFER plus REQUEST-ACK delay.
    pub avg_ms: Option<f64>,
    pub lost: u64,
    pub cpu_us_per_exchange: f64,
}

/// `dora-blast`: prints one JSON object.
pub fn blast(args: BlastArgs) -> anyhow::Result<()> {
    let pace = match args.window {
        Some(w) => Pace::Window(w),
        None => Pace::Rate(args.rate),
    };
    let r = dhcp_blast::run_dora(
        args.server,
        args.relay,
        pace,
        Duration::from_secs(args.seconds),
        args.max,
        args.salt,
    )?;
    let out = serde_json::json!({
        "exchanges": r.replies,
        "per_second": r.per_second(),
        "p50_ms": r.quantile_ms(0.5),
        "p99_ms": r.quantile_ms(0.99),
        "ack_p99_ms": dhcp_blast::quantile_ms(&r.ack_us, 0.99),
        "offer_p99_ms": dhcp_blast::quantile_ms(&r.offer_us, 0.99),
        "lost": r.lost,
    });
    println!("{out}");
    Ok(())
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Runs `cmd` to its end (bounded by `limit`: killed by PID after it), returning stdout; an
/// exit status other than 0 and `also_ok` is an error.
fn output_within(cmd: &mut Command, limit: Duration, also_ok: &[i32]) -> anyhow::Result<String> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out?,
        Err(_) => {
            // SAFETY: plain kill(2) on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("{:?} ran past {limit:?}", cmd.get_program());
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && !out.status.code().is_some_and(|c| also_ok.contains(&c)) {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// perfdhcp's "Rate: X 4-way exchanges/second" and its per-exchange-type statistics.
fn parse_perfdhcp(text: &str) -> anyhow::Result<(f64, u64, u64, f64)> {
    let rate = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Rate: ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .context("no \"Rate:\" line in perfdhcp's report")?;
    // Two sections, "***Statistics for: DISCOVER-OFFER***" and "...REQUEST-ACK...", each with
    // "sent packets", "received packets", "drops" and "avg delay: X ms".
    let mut section = "";
    let (mut acks, mut drops, mut avg_ms) = (0u64, 0u64, 0.0f64);
    for l in text.lines().map(str::trim) {
        if let Some(s) = l.strip_prefix("***Statistics for: ") {
            section = if s.starts_with("REQUEST-ACK") {
                "ra"
            } else {
                "do"
            };
            continue;
        }
        let value = |key: &str| -> Option<f64> {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if let Some(v) = value("avg delay") {
            avg_ms += v;
        }
        if let Some(v) = value("drops") {
            drops += v as u64;
        }
        if section == "ra"
            && let Some(v) = value("received packets")
        {
            acks = v as u64;
        }
    }
    Ok((rate, acks, drops, avg_ms))
}

pub fn run(args: DoraArgs) -> anyhow::Result<()> {
    let bin_dir = match args.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let zpxe = bin_dir.join("zpxe");
    if !zpxe.is_file() {
        bail!(
            "{} not found: build first with `cargo build --release -p zpxe`",
            zpxe.display()
        );
    }
    let dnsmasq = servers::which(&["dnsmasq"]).context("dnsmasq is not installed")?;
    let perfdhcp = servers::which(&["perfdhcp"])
        .context("perfdhcp is not installed (Debian: apt-get install kea-admin)")?;
    let me = std::env::current_exe()?;
    let pair = net_pair("dora", 0)?;
    let server_addr = std::net::SocketAddr::new(pair.server_ip.parse()?, NS_DHCP);
    let secs = args.seconds.max(1);
    let mut samples: Vec<Sample> = Vec::new();
    let mut salt = 0u8;
    for run in 0..args.runs {
        for server_name in SERVERS
            .into_iter()
            .filter(|s| *s != "zpxe-poll" || args.busy_poll_us > 0)
        {
            let clients: Vec<String> = args
                .perfdhcp_rates
                .iter()
                .map(|r| format!("perfdhcp@{r}"))
                .chain(["blast".to_owned(), "blast-paced".to_owned()])
                .collect();
            for client in clients.iter().map(String::as_str) {
                salt = salt.wrapping_add(1);
                let dir = tempfile::tempdir()?;
                let server = match server_name {
                    "zpxe" => {
                        servers::start_zpxe_dhcp_server_in(&zpxe, dir.path(), &pair.server, 0)?
                    }
                    "zpxe-poll" => servers::start_zpxe_dhcp_server_in(
                        &zpxe,
                        dir.path(),
                        &pair.server,
                        args.busy_poll_us,
                    )?,
                    _ => servers::start_dnsmasq_dhcp_server_in(&dnsmasq, dir.path(), &pair.server)?,
                };
                let cpu0 = procstat::cpu_seconds(server.pid());
                let limit = Duration::from_secs(secs + 20);
                let t0 = Instant::now();
                let result = match client.strip_prefix("perfdhcp@") {
                    Some(target) => {
                        let mut cmd = NetPair::command(&pair.client, &perfdhcp);
                        cmd.args(["-4", "-r", target])
                            .args(["-R", "1000000", "-p", &secs.to_string()])
                            .args(["-n", &MAX_EXCHANGES.to_string()])
                            .args(["-l", &pair.client_ip, &pair.server_ip]);
                        // perfdhcp exits with 3 when any packet went unanswered.
                        output_within(&mut cmd, limit, &[3]).and_then(|text| {
                            let (rate, acks, drops, avg) = parse_perfdhcp(&text)
                                .with_context(|| format!("perfdhcp said:\n{text}"))?;
                            Ok(Sample {
                                server: server_name.into(),
                                client: client.into(),
                                exchanges: acks,
                                per_second: rate,
                                p50_ms: None,
                                p99_ms: None,
                                ack_p99_ms: None,
                                offer_p99_ms: None,
                                avg_ms: Some(avg),
                                lost: drops,
                                cpu_us_per_exchange: 0.0,
                            })
                        })
                    }
                    None => {
                        let mut cmd = NetPair::command(&pair.client, &me);
                        cmd.arg("dora-blast")
                            .args(["--server", &server_addr.to_string()])
                            .args(["--relay", &pair.client_ip])
                            .args(["--seconds", &secs.to_string()])
                            .args(["--max", &MAX_EXCHANGES.to_string()])
                            .args(["--salt", &salt.to_string()])
                            .args(["--rate", &args.rate.to_string()]);
                        if client == "blast" {
                            cmd.args(["--window", "64"]);
                        }
                        output_within(&mut cmd, limit, &[]).and_then(|text| {
                            let v: serde_json::Value = serde_json::from_str(text.trim())
                                .with_context(|| format!("dora-blast said: {text}"))?;
                            Ok(Sample {
                                server: server_name.into(),
                                client: client.into(),
                                exchanges: v["exchanges"].as_u64().unwrap_or(0),
                                per_second: v["per_second"].as_f64().unwrap_or(f64::NAN),
                                p50_ms: v["p50_ms"].as_f64(),
                                p99_ms: v["p99_ms"].as_f64(),
                                ack_p99_ms: v["ack_p99_ms"].as_f64(),
                                offer_p99_ms: v["offer_p99_ms"].as_f64(),
                                avg_ms: None,
                                lost: v["lost"].as_u64().unwrap_or(0),
                                cpu_us_per_exchange: 0.0,
                            })
                        })
                    }
                };
                let cpu = procstat::cpu_seconds(server.pid()) - cpu0;
                let took = t0.elapsed();
                server.stop();
                let mut sample =
                    result.with_context(|| format!("{client} against {server_name}"))?;
                sample.cpu_us_per_exchange = cpu * 1e6 / (sample.exchanges.max(1) as f64);
                eprintln!(
                    "run {}: {server_name:9} {client:12} {:>9.0}/s  p99 {}  lost {}  cpu {:.1} us/exchange ({:.1} s)",
                    run + 1,
                    sample.per_second,
                    sample
                        .p99_ms
                        .map_or_else(|| "-".to_owned(), |p| format!("{p:.3} ms")),
                    sample.lost,
                    sample.cpu_us_per_exchange,
                    took.as_secs_f64()
                );
                samples.push(sample);
            }
        }
    }
    drop(pair);
    print_table(&samples, &args);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&samples)?)?;
    }
    Ok(())
}

fn print_table(samples: &[Sample], args: &DoraArgs) {
    println!(
        "\nDHCP server mode, DISCOVER to ACK (relayed, a new client per exchange); medians of {} runs",
        args.runs
    );
    println!(
        "{:<14} {:<9} {:>12} {:>9} {:>9} {:>12} {:>10} {:>9} {:>8} {:>10}",
        "client",
        "server",
        "exchanges/s",
        "p50 ms",
        "p99 ms",
        "offer p99 ms",
        "ack p99 ms",
        "avg ms",
        "lost",
        "cpu us/ex"
    );
    println!(
        "(offer p99: DISCOVER to OFFER only; ack p99: REQUEST to ACK only, the leg that waits for the lease write)"
    );
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let mut rates = std::collections::HashMap::new();
    let clients: Vec<String> = args
        .perfdhcp_rates
        .iter()
        .map(|r| format!("perfdhcp@{r}"))
        .chain(["blast".to_owned(), "blast-paced".to_owned()])
        .collect();
    let mut best: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for client in clients.iter().map(String::as_str) {
        for server in SERVERS {
            let of: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.server == server && s.client == client)
                .collect();
            if of.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Sample) -> Option<f64>| {
                median(&of.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
            };
            let per_second = m(&|s| Some(s.per_second));
            rates.insert((client, server), per_second);
            if client.starts_with("perfdhcp")
                && let Some(r) = per_second
            {
                let b = best.entry(server).or_insert(0.0);
                *b = b.max(r);
            }
            let label = if client == "blast-paced" {
                format!("blast@{}/s", args.rate)
            } else {
                client.to_owned()
            };
            println!(
                "{:<14} {:<9} {:>12.0} {:>9} {:>9} {:>12} {:>10} {:>9} {:>8.0} {:>10.1}",
                label,
                server,
                per_second.unwrap_or(f64::NAN),
                fmt(m(&|s| s.p50_ms)),
                fmt(m(&|s| s.p99_ms)),
                fmt(m(&|s| s.offer_p99_ms)),
                fmt(m(&|s| s.ack_p99_ms)),
                fmt(m(&|s| s.avg_ms)),
                m(&|s| Some(s.lost as f64)).unwrap_or(f64::NAN),
                m(&|s| Some(s.cpu_us_per_exchange)).unwrap_or(f64::NAN),
            );
        }
    }
    if let (Some(z), Some(d)) = (best.get("zpxe"), best.get("dnsmasq")) {
        println!(
            "perfdhcp, best median over the ladder: zpxe {z:.0}/s, dnsmasq {d:.0}/s = {:.2}x",
            z / d
        );
    }
    for client in ["blast"] {
        if let (Some(Some(z)), Some(Some(d))) = (
            rates.get(&(client, "zpxe")),
            rates.get(&(client, "dnsmasq")),
        ) {
            println!(
                "{client}: zpxe/dnsmasq exchanges per second = {:.2}x",
                z / d
            );
        }
    }
}
