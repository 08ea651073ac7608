//! Time to first byte under load: while wrk keeps 64 connections busy, one more connection asks
//! for 1 MiB ranges at a steady pace and times each request from the write of the request to the
//! first byte of the response (then reads the rest, so the next request starts clean).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

/// How the probe paces itself and which file it asks for.
#[derive(Debug, Clone)]
pub struct Probe {
    pub port: u16,
    pub path: String,
    /// The file's length: ranges are whole MiB inside it.
    pub len: u64,
    /// Wait this long before the first request (let the load ramp up).
    pub start_after: Duration,
    /// Stop asking after this long (counted from the start of [`Probe::run`]).
    pub stop_after: Duration,
    /// Pause between requests.
    pub gap: Duration,
}

impl Probe {
    /// Runs the probe; returns one time to first byte per request. Any protocol surprise
    /// (a status other than 206, a short body) is an error, not a sample.
    pub fn run(&self) -> io::Result<Vec<Duration>> {
        let started = Instant::now();
        std::thread::sleep(self.start_after);
        let mut conn = connect(self.port)?;
        let mut samples = Vec::new();
        let mut state = 0x2545_f491u64;
        let mibs = (self.len >> 20).max(1);
        let mut buf = vec![0u8; 1 << 16];
        while started.elapsed() < self.stop_after {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let start = ((state >> 33) % mibs) << 20;
            let end = (start + (1 << 20)).min(self.len) - 1;
            let request = format!(
                "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes={start}-{end}\r\n\r\n",
                self.path
            );
            let t0 = Instant::now();
            conn.write_all(request.as_bytes())?;
            let mut n = conn.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("connection closed before the response"));
            }
            samples.push(t0.elapsed());
            let mut head = buf[..n].to_vec();
            let body_at = loop {
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                n = conn.read(&mut buf)?;
                if n == 0 || head.len() > 16 << 10 {
                    return Err(io::Error::other("no complete response head"));
                }
                head.extend_from_slice(&buf[..n]);
            };
            let text = String::from_utf8_lossy(&head[..body_at]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 206") {
                let line = text.lines().next().unwrap_or_default().to_owned();
                return Err(io::Error::other(format!("expected 206, got {line:?}")));
            }
            let want = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| io::Error::other("206 without Content-Length"))?;
            let mut got = head.len() - body_at;
            while got < want {
                let n = conn.read(&mut buf[..(want - got).min(1 << 16)])?;
                if n == 0 {
                    return Err(io::Error::other("body ended early"));
                }
                got += n;
            }
            if got != want {
                return Err(io::Error::other("more bytes than Content-Length"));
            }
            std::thread::sleep(self.gap);
        }
        Ok(samples)
    }
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(conn)
}

/// `zpxe-bench ttfb`: the compare run's probe on its own.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The server's port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// The file to ask for (path below the server's root).
    #[arg(long)]
    pub path: String,
    /// The file's length in bytes.
    #[arg(long)]
    pub len: u64,
    /// Seconds to probe for.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Milliseconds between requests.
    #[arg(long, default_value_t = 5)]
    pub gap_ms: u64,
}

/// Runs the probe and prints its quantiles.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let probe = Probe {
        port: args.port,
        path: args.path,
        len: args.len,
        start_after: Duration::ZERO,
        stop_after: Duration::from_secs_f64(args.secs),
        gap: Duration::from_millis(args.gap_ms),
    };
    let mut v = probe.run()?;
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let (p50, p90, p99) = (
        ms(quantile(&mut v, 0.5)),
        ms(quantile(&mut v, 0.9)),
        ms(quantile(&mut v, 0.99)),
    );
    println!(
        "ttfb {} probes: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        v.len(),
        ms(v.last().copied())
    );
    Ok(())
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub fn quantile(samples: &mut [Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&mut v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
