//! Time to first byte under load: while wrk keeps 64 connections busy, one more connection asks
//! for 1 MiB ranges at a steady pace and times each request from the write of the request to the
//! first byte of the response (then reads the rest, so the next request starts clean).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use zpxe_engine::ByteRange;
use zpxe_engine::http::{ClientEvent, HttpClient};

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
    /// (a status other than 206, the wrong bytes' range, a short body) is an error, not a
    /// sample. Responses are read by the engine's HTTP client.
    pub fn run(&self) -> io::Result<Vec<Duration>> {
        let started = Instant::now();
        std::thread::sleep(self.start_after);
        let mut conn = connect(self.port)?;
        let mut client = HttpClient::new(1);
        let mut samples = Vec::new();
        let mut state = 0x2545_f491u64;
        let mibs = (self.len >> 20).max(1);
        let mut buf = vec![0u8; 1 << 16];
        let mut events = Vec::new();
        let path = format!("/{}", self.path.trim_start_matches('/'));
        while started.elapsed() < self.stop_after {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let start = ((state >> 33) % mibs) << 20;
            let want = ByteRange::new(start, (start + (1 << 20)).min(self.len));
            let id = client.get(&path, "127.0.0.1", Some(want));
            let t0 = Instant::now();
            while let Some(n) = client.poll_transmit(&mut buf) {
                conn.write_all(&buf[..n])?;
            }
            let mut first = true;
            let mut got = 0u64;
            'response: loop {
                let n = conn.read(&mut buf)?;
                if first {
                    samples.push(t0.elapsed());
                    first = false;
                }
                events.clear();
                let input = buf.get(..n).unwrap_or_default();
                if n == 0 {
                    client.handle_eof(&mut events)
                } else {
                    client.handle_input(input, &mut events)
                }
                .map_err(io::Error::other)?;
                for ev in events.drain(..) {
                    match ev {
                        ClientEvent::Response {
                            status,
                            content_range,
                            ..
                        } => {
                            let range = content_range.and_then(|c| c.range);
                            if status.0 != 206 || range != Some(want) {
                                return Err(io::Error::other(format!(
                                    "expected 206 for {want:?}, got {} for {range:?}",
                                    status.0
                                )));
                            }
                        }
                        ClientEvent::Delivered { range, .. } => got += range.len() as u64,
                        ClientEvent::Finished { request } if request == id => break 'response,
                        ClientEvent::Closed { .. } => {
                            return Err(io::Error::other("connection closed mid-response"));
                        }
                        _ => {}
                    }
                }
            }
            if got != want.len() {
                return Err(io::Error::other(format!(
                    "{got} body bytes for a {}-byte range",
                    want.len()
                )));
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
