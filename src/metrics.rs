//! Counters shared by every event loop and read by the web service (Prometheus text format).
//!
//! Besides the plain counters: labelled families (TFTP transfers by outcome, web service
//! requests by route and status) and histograms (TFTP transfer duration, HTTP response
//! duration and bytes), each a fixed table of relaxed atomics, so a data-path update is one
//! or two `fetch_add`s and the label sets are bounded by construction.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use zpxe_engine::tftp::{Abort, TransferOutcome};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Server-wide counters. Relaxed atomics: each is independent and only ever grows.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub $name: AtomicU64,)*
            /// The labelled families and histograms.
            pub labelled: Labelled,
        }

        impl Metrics {
            /// Renders every counter, family and histogram in the Prometheus text exposition
            /// format.
            pub fn render(&self, out: &mut String) {
                $(
                    let _ = writeln!(out, "# HELP zpxe_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE zpxe_{} counter", stringify!($name));
                    let _ = writeln!(out, "zpxe_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
                self.labelled.render(out);
            }

            /// Every counter as (name, value), for the status API.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Relaxed)),)*]
            }
        }
    };
}

counters! {
    dhcp_requests_total: "proxyDHCP and PXE (4011) requests received",
    dhcp_replies_total: "proxyDHCP offers and acks sent",
    dhcp_ignored_total: "DHCP requests ignored (not PXE, ignored clients, malformed)",
    tftp_transfers_started_total: "TFTP transfers started",
    tftp_transfers_completed_total: "TFTP transfers completed",
    tftp_transfers_failed_total: "TFTP transfers aborted by either side (EDK2 size probes are not failures: zpxe_tftp_transfers_total{outcome=\"size_probe\"})",
    tftp_requests_refused_total: "TFTP requests refused (not found, denied, busy)",
    tftp_datagrams_sent_total: "TFTP data datagrams sent",
    tftp_bytes_sent_total: "TFTP file bytes sent (retransmissions included)",
    http_requests_total: "HTTP and HTTPS requests answered on the boot ports (the web service counts in zpxe_web_requests_total)",
    http_bytes_sent_total: "HTTP body bytes sent from images",
    http_accept_paused_total: "times an HTTP listener stopped accepting at max-connections",
    dhcp_server_conflicts_total: "addresses that answered the DHCP server's conflict check before an offer (held out for dhcp.decline-hold-secs)",
    loop_handoff_connections_total: "HTTP and HTTPS connections the listening loop handed to another event loop (server.loop-handoff)",
    loop_handoff_tftp_total: "TFTP requests the listening loop handed to another event loop (server.loop-handoff)",
    loop_handoffs_dropped_total: "TFTP requests dropped because the event loop they belong to had a full queue or was draining (the client asks again)",
    boot_reports_total: "boot progress reports received by the web service",
    boot_reports_refused_total: "boot reports refused as malformed (400)",
    boot_reports_limited_total: "boot reports refused over their source's rate (429)",
    inventory_evicted_total: "clients dropped from the full inventory (least recently seen)",
    hook_lookups_total: "request-handler hook lookups sent to the handler",
    hook_decisions_total: "hook answers that passed the checks (boot, ignore or default)",
    hook_errors_total: "hook lookups that failed (unreachable, status, bad answer): static policy",
    hook_timeouts_total: "hook lookups past boot.hook-timeout-ms: static policy",
    hook_cache_hits_total: "DHCP requests answered with a cached hook decision",
    hook_rate_limited_total: "hook lookups skipped over boot.hook-rate: static policy",
    hook_queue_dropped_total: "hook lookups dropped with the queue full: static policy",
    hook_cache_evicted_total: "hook decisions evicted from the full cache (oldest first)",
}

impl Metrics {
    pub fn tftp_started(&self) {
        self.tftp_transfers_started_total.fetch_add(1, Relaxed);
    }
    /// A transfer ended: counted by outcome (`zpxe_tftp_transfers_total`), and a completed
    /// one's duration (`took`, when known) goes into the histogram. An EDK2 size probe is
    /// neither completed nor failed.
    pub fn tftp_ended(&self, outcome: &TransferOutcome, took: Option<Duration>) {
        let o = TftpOutcome::of(outcome);
        self.labelled.tftp_outcomes[o as usize].fetch_add(1, Relaxed);
        match o {
            TftpOutcome::Complete => {
                self.tftp_transfers_completed_total.fetch_add(1, Relaxed);
                if let Some(t) = took {
                    self.labelled.tftp_duration.observe_duration(t);
                }
            }
            TftpOutcome::AbortedClient | TftpOutcome::AbortedServer => {
                self.tftp_transfers_failed_total.fetch_add(1, Relaxed);
            }
            TftpOutcome::SizeProbe => {}
        }
    }
    /// One response answered on a boot port (HTTP or HTTPS).
    pub fn http_served(&self, bytes: u64, took: Duration) {
        self.http_requests_total.fetch_add(1, Relaxed);
        self.labelled.http_duration.observe_duration(took);
        self.labelled.http_bytes.observe(bytes);
    }
    /// One web service request answered with `status`; `path` is reduced to its route.
    pub fn web_request(&self, path: &str, status: u16) {
        let r = route_index(path);
        let s = status_index(status);
        if let Some(c) = self.labelled.web_requests.get(r * STATUS_COLUMNS + s) {
            c.fetch_add(1, Relaxed);
        }
    }
    pub fn tftp_refused(&self) {
        self.tftp_requests_refused_total.fetch_add(1, Relaxed);
    }
    pub fn tftp_datagrams(&self, datagrams: u64, bytes: u64) {
        self.tftp_datagrams_sent_total.fetch_add(datagrams, Relaxed);
        self.tftp_bytes_sent_total.fetch_add(bytes, Relaxed);
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// How a TFTP transfer ended, as `zpxe_tftp_transfers_total`'s `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TftpOutcome {
    Complete = 0,
    AbortedClient = 1,
    AbortedServer = 2,
    //= https://www.rfc-editor.org/rfc/rfc2347#section-5
    //# the client ... may send an ERROR packet (error code 8) and terminate.
    /// EDK2 reads `tsize` from the OACK and ends with ERROR 8 before downloading.
    SizeProbe = 3,
}

const TFTP_OUTCOMES: [&str; 4] = ["complete", "aborted_client", "aborted_server", "size_probe"];

impl TftpOutcome {
    pub fn of(outcome: &TransferOutcome) -> Self {
        match outcome {
            TransferOutcome::Completed { .. } => Self::Complete,
            o if o.is_probe() => Self::SizeProbe,
            TransferOutcome::Aborted(Abort::Client(_)) => Self::AbortedClient,
            TransferOutcome::Aborted(Abort::Server(_)) => Self::AbortedServer,
            // An ending added to the engine later counts against the server until named here.
            _ => Self::AbortedServer,
        }
    }
}

/// The web service's routes, as `zpxe_web_requests_total`'s `route` label; anything else is
/// `other` (a path a client makes up never becomes a label).
const WEB_ROUTES: [&str; 17] = [
    "/",
    "/app.js",
    "/app.css",
    "/report",
    "/metrics",
    "/api/status",
    "/api/clients",
    "/api/v1/status",
    "/api/v1/events",
    "/api/v1/explain",
    "/api/v1/clients",
    "/api/v1/clients/{mac}",
    "/api/v1/boots",
    "/api/v1/machines",
    "/api/v1/machines/{key}",
    "/favicon.ico",
    "other",
];

/// The statuses the web service answers with, as the `status` label; any other is `other`.
const WEB_STATUSES: [u16; 17] = [
    200, 201, 304, 400, 401, 403, 404, 405, 408, 409, 411, 413, 429, 431, 500, 503, 505,
];
/// Status columns: [`WEB_STATUSES`], then `other`.
const STATUS_COLUMNS: usize = WEB_STATUSES.len() + 1;

fn route_index(path: &str) -> usize {
    let route = match path {
        "/index.html" => "/",
        p if p.starts_with("/api/v1/clients/") => "/api/v1/clients/{mac}",
        p if p.starts_with("/api/v1/machines/") => "/api/v1/machines/{key}",
        p => p,
    };
    WEB_ROUTES
        .iter()
        .position(|r| *r == route)
        .unwrap_or(WEB_ROUTES.len() - 1)
}

fn status_index(status: u16) -> usize {
    WEB_STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(WEB_STATUSES.len())
}

/// A Prometheus histogram over fixed bucket bounds: per-bucket counts (cumulated when
/// rendered), the sum in integer units (`1/scale` of the rendered unit) and the count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
    /// Units per rendered unit (1e6 for seconds kept in microseconds, 1 for bytes).
    scale: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    /// Records `units` (in `1/scale` of the rendered unit).
    pub fn observe(&self, units: u64) {
        let v = units as f64 / self.scale;
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(units, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Records a duration in a histogram of seconds (scale 1e6).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    //= https://prometheus.io/docs/instrumenting/exposition_formats/#histograms-and-summaries
    //# Each bucket count of a histogram named x is given as a separate sample line with the
    //# name x_bucket and a label {le="y"} (where y is the upper bound of the bucket).
    //# A histogram must have a bucket with {le="+Inf"}. Its value must be identical to the
    //# value of x_count.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        // Loaded once each, then cumulated: `+Inf` and `_count` agree even while observed.
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let mut cumulative = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum.load(Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

const SECONDS_LONG: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const SECONDS_SHORT: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const BYTES: [f64; 12] = [
    0.0,
    1024.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// The labelled families and histograms of [`Metrics`].
#[derive(Debug)]
pub struct Labelled {
    /// By [`TftpOutcome`].
    tftp_outcomes: [AtomicU64; 4],
    /// Completed TFTP transfers, RRQ to last ACK.
    pub tftp_duration: Histogram,
    /// Boot-port HTTP responses: request head to last byte, and content bytes.
    pub http_duration: Histogram,
    pub http_bytes: Histogram,
    /// `WEB_ROUTES.len() * STATUS_COLUMNS`, by route then status.
    web_requests: Box<[AtomicU64]>,
}

impl Default for Labelled {
    fn default() -> Self {
        Self {
            tftp_outcomes: Default::default(),
            tftp_duration: Histogram::new(&SECONDS_LONG, 1e6),
            http_duration: Histogram::new(&SECONDS_SHORT, 1e6),
            http_bytes: Histogram::new(&BYTES, 1.0),
            web_requests: (0..WEB_ROUTES.len() * STATUS_COLUMNS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Labelled {
    /// TFTP transfers by outcome.
    pub fn tftp_transfers(&self, o: TftpOutcome) -> u64 {
        self.tftp_outcomes[o as usize].load(Relaxed)
    }

    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP zpxe_tftp_transfers_total TFTP transfers ended, by outcome (size_probe: \
             EDK2 read the size from the OACK and stopped, as it does before every download)\n\
             # TYPE zpxe_tftp_transfers_total counter\n",
        );
        for (name, c) in TFTP_OUTCOMES.iter().zip(&self.tftp_outcomes) {
            let _ = writeln!(
                out,
                "zpxe_tftp_transfers_total{{outcome=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        self.tftp_duration.render(
            out,
            "zpxe_tftp_transfer_duration_seconds",
            "completed TFTP transfers, from the request to the last acknowledgement",
        );
        self.http_duration.render(
            out,
            "zpxe_http_response_duration_seconds",
            "boot-port HTTP responses, from the whole request head to the last byte handed to the socket",
        );
        self.http_bytes.render(
            out,
            "zpxe_http_response_bytes",
            "content bytes of boot-port HTTP responses",
        );
        out.push_str(
            "# HELP zpxe_web_requests_total web service requests, by route and status\n\
             # TYPE zpxe_web_requests_total counter\n",
        );
        for (r, route) in WEB_ROUTES.iter().enumerate() {
            for s in 0..STATUS_COLUMNS {
                let status = WEB_STATUSES
                    .get(s)
                    .map_or_else(|| "other".to_owned(), ToString::to_string);
                let n = self
                    .web_requests
                    .get(r * STATUS_COLUMNS + s)
                    .map_or(0, |c| c.load(Relaxed));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "zpxe_web_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use zpxe_engine::tftp::{ClientAbort, ServerAbort};

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.tftp_datagrams(3, 4000);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "# TYPE zpxe_tftp_bytes_sent_total counter\nzpxe_tftp_bytes_sent_total 4000\n"
        ));
        assert!(out.contains("zpxe_tftp_datagrams_sent_total 3\n"));
        check_exposition(&out).expect("valid exposition");
    }

    /// A strict reading of the text exposition format (version 0.0.4): every sample belongs
    /// to the family its `# TYPE` named before it, each family is typed once, names and
    /// labels are of their grammar, values are numbers, and a histogram's buckets rise with
    /// `le`, are cumulative, end with `+Inf` equal to `_count`, and come with a `_sum`.
    /// Returns the samples by name and label text.
    pub(crate) fn check_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut current: Option<(String, String)> = None;
        let mut samples = BTreeMap::new();
        // Per histogram (family + labels other than le): (le, value) in order, sum, count.
        type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
        let mut histograms: BTreeMap<String, Series> = BTreeMap::new();
        if !text.ends_with('\n') {
            return Err("the text must end with a line feed".into());
        }
        for (i, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name, arg) = (parts.next(), parts.next(), parts.next());
                let (Some(kind), Some(name)) = (kind, name) else {
                    return Err(at("a comment without a name".into()));
                };
                if !name_ok(name) {
                    return Err(at("bad metric name".into()));
                }
                match kind {
                    "HELP" => {
                        if !helped.insert(name.to_owned()) {
                            return Err(at("HELP twice".into()));
                        }
                    }
                    "TYPE" => {
                        let t = arg.unwrap_or_default();
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                            return Err(at("unknown type".into()));
                        }
                        if types.insert(name.to_owned(), t.to_owned()).is_some() {
                            return Err(at("TYPE twice".into()));
                        }
                        current = Some((name.to_owned(), t.to_owned()));
                    }
                    _ => return Err(at("unknown comment".into())),
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                return Err(at("stray line".into()));
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| at("value is not a number".into()))?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (
                    n,
                    l.strip_suffix('}')
                        .ok_or_else(|| at("unclosed labels".into()))?,
                ),
                None => (series, ""),
            };
            if !name_ok(name) {
                return Err(at("bad sample name".into()));
            }
            let mut pairs = Vec::new();
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, after) = rest
                    .split_once("=\"")
                    .ok_or_else(|| at("bad label".into()))?;
                if !name_ok(k) || k.contains(':') {
                    return Err(at("bad label name".into()));
                }
                let mut end = None;
                let mut escaped = false;
                for (j, c) in after.char_indices() {
                    match (escaped, c) {
                        (true, '\\' | '"' | 'n') => escaped = false,
                        (true, _) => return Err(at("bad escape".into())),
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(j);
                            break;
                        }
                        (false, '\n') => return Err(at("line feed in a label".into())),
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| at("unterminated label value".into()))?;
                pairs.push((k, &after[..end]));
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            let Some((family, kind)) = &current else {
                return Err(at("a sample before any TYPE".into()));
            };
            let suffix = name
                .strip_prefix(family.as_str())
                .ok_or_else(|| at(format!("a sample outside its family {family}")))?;
            match (kind.as_str(), suffix) {
                ("histogram", "_bucket" | "_sum" | "_count") => {
                    let others: Vec<String> = pairs
                        .iter()
                        .filter(|(k, _)| *k != "le")
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let key = format!("{family}{{{}}}", others.join(","));
                    let h = histograms.entry(key).or_default();
                    match suffix {
                        "_bucket" => {
                            let le = pairs
                                .iter()
                                .find(|(k, _)| *k == "le")
                                .ok_or_else(|| at("a bucket without le".into()))?
                                .1;
                            let le: f64 = if le == "+Inf" {
                                f64::INFINITY
                            } else {
                                le.parse().map_err(|_| at("le is not a number".into()))?
                            };
                            if let Some(&(prev_le, prev)) = h.0.last() {
                                if le <= prev_le {
                                    return Err(at("buckets out of order".into()));
                                }
                                if value < prev {
                                    return Err(at("buckets not cumulative".into()));
                                }
                            }
                            h.0.push((le, value));
                        }
                        "_sum" => h.1 = Some(value),
                        _ => h.2 = Some(value),
                    }
                }
                ("histogram", _) => return Err(at("a histogram sample without its suffix".into())),
                (_, "") => {}
                _ => return Err(at(format!("{name} is not {family}"))),
            }
            if kind == "counter" && (value < 0.0 || !value.is_finite()) {
                return Err(at("a counter below 0".into()));
            }
            if samples.insert(series.to_owned(), value).is_some() {
                return Err(at("a series twice".into()));
            }
        }
        for (key, (buckets, sum, count)) in &histograms {
            let Some(&(le, last)) = buckets.last() else {
                return Err(format!("{key}: no buckets"));
            };
            if le != f64::INFINITY {
                return Err(format!("{key}: no +Inf bucket"));
            }
            if Some(last) != *count {
                return Err(format!("{key}: +Inf {last} is not _count {count:?}"));
            }
            if sum.is_none() {
                return Err(format!("{key}: no _sum"));
            }
        }
        Ok(samples)
    }

    #[test]
    fn tftp_outcomes_keep_size_probes_out_of_failures() {
        let m = Metrics::default();
        let done = TransferOutcome::Completed {
            bytes: 10,
            retransmits: 0,
        };
        m.tftp_ended(&done, Some(Duration::from_millis(300)));
        m.tftp_ended(&done, Some(Duration::from_secs(7)));
        let probe = TransferOutcome::Aborted(Abort::Client(ClientAbort::Error {
            code: 8,
            message: "size probe".into(),
        }));
        assert!(probe.is_probe());
        for _ in 0..24 {
            m.tftp_ended(&probe, Some(Duration::from_millis(1)));
        }
        let client = TransferOutcome::Aborted(Abort::Client(ClientAbort::Error {
            code: 0,
            message: "bye".into(),
        }));
        m.tftp_ended(&client, None);
        let server = TransferOutcome::Aborted(Abort::Server(ServerAbort::OutOfPorts));
        m.tftp_ended(&server, None);
        assert_eq!(m.tftp_transfers_failed_total.load(Relaxed), 2);
        assert_eq!(m.tftp_transfers_completed_total.load(Relaxed), 2);
        let mut out = String::new();
        m.render(&mut out);
        let s = check_exposition(&out).expect("valid exposition");
        let get = |k: &str| s.get(k).copied().unwrap_or_else(|| panic!("{k}:\n{out}"));
        assert_eq!(get("zpxe_tftp_transfers_total{outcome=\"complete\"}"), 2.0);
        assert_eq!(
            get("zpxe_tftp_transfers_total{outcome=\"size_probe\"}"),
            24.0
        );
        assert_eq!(
            get("zpxe_tftp_transfers_total{outcome=\"aborted_client\"}"),
            1.0
        );
        assert_eq!(
            get("zpxe_tftp_transfers_total{outcome=\"aborted_server\"}"),
            1.0
        );
        // Completed transfers only: 0.3 s and 7 s.
        assert_eq!(get("zpxe_tftp_transfer_duration_seconds_count"), 2.0);
        assert_eq!(
            get("zpxe_tftp_transfer_duration_seconds_bucket{le=\"0.25\"}"),
            0.0
        );
        assert_eq!(
            get("zpxe_tftp_transfer_duration_seconds_bucket{le=\"0.5\"}"),
            1.0
        );
        assert_eq!(
            get("zpxe_tftp_transfer_duration_seconds_bucket{le=\"10\"}"),
            2.0
        );
        assert!((get("zpxe_tftp_transfer_duration_seconds_sum") - 7.3).abs() < 1e-9);
    }

    #[test]
    fn http_and_web_requests_are_counted_apart_with_bounded_labels() {
        let m = Metrics::default();
        m.http_served(5_000_000, Duration::from_millis(40));
        m.http_served(0, Duration::from_micros(300));
        m.web_request("/api/v1/status", 200);
        m.web_request("/api/v1/status", 200);
        m.web_request("/api/v1/clients/52:54:00:00:00:01", 404);
        m.web_request("/api/v1/machines/52:54:00:00:00:01", 200);
        m.web_request("/index.html", 200);
        // Made-up paths and statuses fold into `other`: no label a client controls.
        for i in 0..100 {
            m.web_request(&format!("/nope/{i}\"<script>"), 404);
        }
        m.web_request("/metrics", 418);
        assert_eq!(m.http_requests_total.load(Relaxed), 2);
        let mut out = String::new();
        m.render(&mut out);
        let s = check_exposition(&out).expect("valid exposition");
        let get = |k: &str| s.get(k).copied().unwrap_or_else(|| panic!("{k}:\n{out}"));
        let web = |r: &str, st: &str| {
            get(&format!(
                "zpxe_web_requests_total{{route=\"{r}\",status=\"{st}\"}}"
            ))
        };
        assert_eq!(web("/api/v1/status", "200"), 2.0);
        assert_eq!(web("/api/v1/clients/{mac}", "404"), 1.0);
        assert_eq!(web("/api/v1/machines/{key}", "200"), 1.0);
        assert_eq!(web("/", "200"), 1.0);
        assert_eq!(web("other", "404"), 100.0);
        assert_eq!(web("/metrics", "other"), 1.0);
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("zpxe_web_requests_total"))
                .count(),
            6
        );
        assert_eq!(get("zpxe_http_response_duration_seconds_count"), 2.0);
        assert_eq!(
            get("zpxe_http_response_duration_seconds_bucket{le=\"0.001\"}"),
            1.0
        );
        assert_eq!(
            get("zpxe_http_response_duration_seconds_bucket{le=\"0.05\"}"),
            2.0
        );
        assert_eq!(get("zpxe_http_response_bytes_bucket{le=\"0\"}"), 1.0);
        assert_eq!(get("zpxe_http_response_bytes_bucket{le=\"4194304\"}"), 1.0);
        assert_eq!(get("zpxe_http_response_bytes_bucket{le=\"16777216\"}"), 2.0);
        assert_eq!(get("zpxe_http_response_bytes_sum"), 5_000_000.0);
    }

    #[test]
    fn the_checker_refuses_broken_text() {
        for bad in [
            "zpxe_x 1\n",
            "# TYPE zpxe_x counter\nzpxe_y 1\n",
            "# TYPE zpxe_x counter\nzpxe_x one\n",
            "# TYPE zpxe_x counter\nzpxe_x{a=\"b} 1\n",
            "# TYPE zpxe_h histogram\nzpxe_h_bucket{le=\"1\"} 2\nzpxe_h_bucket{le=\"+Inf\"} 1\nzpxe_h_sum 1\nzpxe_h_count 1\n",
            "# TYPE zpxe_h histogram\nzpxe_h_bucket{le=\"1\"} 1\nzpxe_h_sum 1\nzpxe_h_count 1\n",
            "# TYPE zpxe_h histogram\nzpxe_h_bucket{le=\"+Inf\"} 2\nzpxe_h_sum 1\nzpxe_h_count 1\n",
            "# TYPE zpxe_x counter\n# TYPE zpxe_x counter\nzpxe_x 1\n",
            "# TYPE zpxe_x counter\nzpxe_x 1",
        ] {
            assert!(check_exposition(bad).is_err(), "{bad}");
        }
    }
}
