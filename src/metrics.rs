//! Counters shared by every event loop and read by the web service (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Server-wide counters. Relaxed atomics: each is independent and only ever grows.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Renders every counter in the Prometheus text exposition format.
            pub fn render(&self, out: &mut String) {
                $(
                    let _ = writeln!(out, "# HELP zpxe_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE zpxe_{} counter", stringify!($name));
                    let _ = writeln!(out, "zpxe_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
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
    tftp_transfers_failed_total: "TFTP transfers that ended without completing",
    tftp_requests_refused_total: "TFTP requests refused (not found, denied, busy)",
    tftp_datagrams_sent_total: "TFTP data datagrams sent",
    tftp_bytes_sent_total: "TFTP file bytes sent (retransmissions included)",
    http_requests_total: "HTTP requests answered on the boot port",
    http_bytes_sent_total: "HTTP body bytes sent from images",
    http_accept_paused_total: "times an HTTP listener stopped accepting at max-connections",
    boot_reports_total: "boot progress reports received by the web service",
    boot_reports_refused_total: "boot reports refused as malformed (400)",
    boot_reports_limited_total: "boot reports refused over their source's rate (429)",
    inventory_evicted_total: "clients dropped from the full inventory (least recently seen)",
}

impl Metrics {
    pub fn tftp_started(&self) {
        self.tftp_transfers_started_total.fetch_add(1, Relaxed);
    }
    pub fn tftp_completed(&self) {
        self.tftp_transfers_completed_total.fetch_add(1, Relaxed);
    }
    pub fn tftp_failed(&self) {
        self.tftp_transfers_failed_total.fetch_add(1, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
