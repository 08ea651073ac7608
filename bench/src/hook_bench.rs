//! `zpxe-bench hook`: proxyDHCP reply latency at 10,000 relayed DISCOVERs/s with the
//! request-handler hook (`boot.hook-url`) and a warm decision cache, beside the same zpxe
//! without a hook (issue 16: p99 must stay under 1 ms).
//!
//! Two zpxe servers on loopback, started together: one with the static policy only, one whose
//! `[boot] hook-url` names a small handler this program runs (one thread, 127.0.0.1, answering
//! every client `{"action": "boot", "loader": "hook/ipxe.efi"}`). Before measuring, the hook
//! server's cache is warmed: the paced blaster's 4,096 clients are sent DISCOVERs at a modest
//! rate until `zpxe_hook_decisions_total` counts a decision for each. Then the runs alternate
//! (static, hook, static, ...) with `dhcp_blast::run_paced`, the same blaster as
//! `compare`'s `dhcp_blast paced` row. Each hook run must ask the handler nothing
//! (`zpxe_hook_lookups_total` unchanged) and answer every reply from the cache
//! (`zpxe_hook_cache_hits_total` grows by at least the replies): otherwise the run is
//! reported as not warm. Everything is bounded: each run by `--secs`, the warm-up by 60 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::dhcp_blast;
use crate::servers::{self, Server};

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// Runs per mode (the report gives medians).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// DISCOVERs per second during a run.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    /// Where zpxe is (default: beside this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Print the result as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// What the handler answers, for every client.
const DECISION: &str = r#"{"action": "boot", "loader": "hook/ipxe.efi"}"#;
/// The paced blaster's distinct clients (`dhcp_blast::POOL`).
const CLIENTS: u64 = 4096;
/// DISCOVERs per second while warming (below the hook's rate and queue limits).
const WARM_RATE: u32 = 1_000;
/// The warm-up's bound.
const WARM_LIMIT: Duration = Duration::from_secs(60);

/// A request handler on 127.0.0.1: one thread, one connection at a time, until stopped.
#[derive(Debug)]
pub struct HookServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HookServer {
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("hook-server".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if answer(conn).is_ok() {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })?;
        Ok(Self {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One exchange: the request head and its `Content-Length` body, then the decision.
fn answer(conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = 0usize;
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0).min(64 * 1024);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{DECISION}",
        DECISION.len()
    )?;
    conn.flush()
}

/// A zpxe in proxy mode on loopback with `boot` lines added to its `[boot]`; its DHCP and web
/// ports.
fn start_zpxe(
    bin: &Path,
    root: &Path,
    dir: &Path,
    boot: &str,
) -> anyhow::Result<(Server, SocketAddr, SocketAddr)> {
    std::fs::create_dir_all(dir)?;
    let (tftp, http, dhcp, pxe, web) = (
        servers::free_udp()?,
        servers::free_tcp()?,
        servers::free_udp()?,
        servers::free_udp()?,
        servers::free_tcp()?,
    );
    let config = dir.join("zpxe.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nroot = {root:?}\nlisten = [\"127.0.0.1\"]\n\n[boot]\n{boot}\n\
             [database]\nenabled = false\n"
        ),
    )?;
    let log = dir.join("zpxe.log");
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn")
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--tftp-port", &tftp.to_string()])
        .args(["--http-port", &http.to_string()])
        .args(["--dhcp-port", &dhcp.to_string()])
        .args(["--pxe-port", &pxe.to_string()])
        .args(["--web-port", &web.to_string()]);
    let mut child = servers::spawn(&mut cmd, &log)?;
    servers::wait_port(&mut child, web, true, &log).context("zpxe")?;
    servers::wait_port(&mut child, dhcp, false, &log).context("zpxe")?;
    let server = Server {
        name: "zpxe".into(),
        child,
        tftp_port: Some(tftp),
        http_port: Some(http),
        dhcp_port: Some(dhcp),
        pxe_port: Some(pxe),
    };
    Ok((
        server,
        SocketAddr::from((Ipv4Addr::LOCALHOST, dhcp)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, web)),
    ))
}

/// One counter from zpxe's `/metrics`.
fn metric(web: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect_timeout(&web, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .with_context(|| format!("{name} is not in /metrics"))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub mode: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub replies_per_s: f64,
    pub lost: u64,
    /// Hook runs: handler lookups during the run (0 when the cache was warm throughout).
    pub lookups: Option<u64>,
    /// Hook runs: DHCP requests answered from the cache during the run.
    pub cache_hits: Option<u64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(args: HookArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.secs == 0 || args.rate == 0 {
        bail!("--runs, --secs and --rate must be at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let bin = bin_dir.join("zpxe");
    if !bin.is_file() {
        bail!(
            "{} not found: build first with `cargo build --release -p zpxe -p zpxe-bench`",
            bin.display()
        );
    }
    let work = tempfile::tempdir()?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    let handler = HookServer::start()?;
    let (plain, plain_dhcp, _) = start_zpxe(&bin, &root, &work.path().join("static"), "")?;
    let boot = format!(
        "hook-url = \"http://{}/decide\"\nhook-rate = 10000\nhook-cache-ttl-s = 3600\n\
         hook-cache-size = 65536\nhook-timeout-ms = 500\n",
        handler.addr
    );
    let (hooked, hook_dhcp, hook_web) = start_zpxe(&bin, &root, &work.path().join("hook"), &boot)?;
    let result = measure(&args, plain_dhcp, hook_dhcp, hook_web, &handler);
    plain.stop();
    hooked.stop();
    let runs = result?;
    report(&args, &runs)
}

fn measure(
    args: &HookArgs,
    plain: SocketAddr,
    hooked: SocketAddr,
    web: SocketAddr,
    handler: &HookServer,
) -> anyhow::Result<Vec<Run>> {
    // Warm: every client of the blaster's pool gets its decision cached.
    let started = Instant::now();
    let mut passes = 0;
    loop {
        let decided = metric(web, "zpxe_hook_decisions_total")?;
        if decided >= CLIENTS {
            break;
        }
        if started.elapsed() > WARM_LIMIT {
            bail!("the hook cache did not warm within {WARM_LIMIT:?}: {decided} decisions");
        }
        // One pass sends each client one DISCOVER; a second finds the ones a full queue
        // dropped.
        let secs = (CLIENTS as f64 / f64::from(WARM_RATE)).ceil() as u64 + 1;
        dhcp_blast::run_paced(hooked, WARM_RATE, Duration::from_secs(secs))?;
        passes += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "hook cache warm: {} decisions, {} handler requests, {passes} warm-up passes, {:.1} s",
        metric(web, "zpxe_hook_decisions_total")?,
        handler.requests.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for i in 0..args.runs {
        for (mode, server) in [("static", plain), ("hook", hooked)] {
            let before = (mode == "hook")
                .then(|| {
                    anyhow::Ok((
                        metric(web, "zpxe_hook_lookups_total")?,
                        metric(web, "zpxe_hook_cache_hits_total")?,
                    ))
                })
                .transpose()?;
            let r = dhcp_blast::run_paced(server, args.rate, Duration::from_secs(args.secs))?;
            let after = (mode == "hook")
                .then(|| {
                    anyhow::Ok((
                        metric(web, "zpxe_hook_lookups_total")?,
                        metric(web, "zpxe_hook_cache_hits_total")?,
                    ))
                })
                .transpose()?;
            let (lookups, cache_hits) = match (before, after) {
                (Some(b), Some(a)) => (Some(a.0 - b.0), Some(a.1 - b.1)),
                _ => (None, None),
            };
            let run = Run {
                mode,
                p50_ms: r.quantile_ms(0.5),
                p99_ms: r.quantile_ms(0.99),
                replies_per_s: r.per_second(),
                lost: r.lost,
                lookups,
                cache_hits,
            };
            eprintln!(
                "run {} {mode:<6}: p50 {:.3} ms, p99 {:.3} ms, {:.0} replies/s, {} lost{}",
                i + 1,
                run.p50_ms,
                run.p99_ms,
                run.replies_per_s,
                run.lost,
                match (lookups, cache_hits) {
                    (Some(l), Some(h)) => format!(", {l} hook lookups, {h} cache hits"),
                    _ => String::new(),
                }
            );
            if mode == "hook" && (lookups != Some(0) || cache_hits < Some(r.replies)) {
                bail!(
                    "run {} was not served from a warm cache: {lookups:?} lookups, \
                     {cache_hits:?} cache hits for {} replies",
                    i + 1,
                    r.replies
                );
            }
            runs.push(run);
        }
    }
    Ok(runs)
}

fn report(args: &HookArgs, runs: &[Run]) -> anyhow::Result<()> {
    println!(
        "proxyDHCP reply latency at {} relayed DISCOVERs/s, {} s per run, medians of {} runs",
        args.rate, args.secs, args.runs
    );
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>8}",
        "mode", "p50 ms", "p99 ms", "replies/s", "lost"
    );
    let mut summary = Vec::new();
    for (mode, label) in [
        ("static", "static policy (no hook)"),
        ("hook", "hook-url, warm cache"),
    ] {
        let of = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().filter(|r| r.mode == mode).map(f).collect();
            median(&mut v)
        };
        let (p50, p99, rate, lost) = (
            of(|r| r.p50_ms),
            of(|r| r.p99_ms),
            of(|r| r.replies_per_s),
            of(|r| r.lost as f64),
        );
        println!("{label:<28} {p50:>10.3} {p99:>10.3} {rate:>12.0} {lost:>8.0}");
        summary.push(serde_json::json!({
            "mode": mode, "p50_ms": p50, "p99_ms": p99, "replies_per_s": rate, "lost": lost,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "rate": args.rate, "secs": args.secs, "medians": summary, "runs": runs,
            }))?
        );
    }
    Ok(())
}
