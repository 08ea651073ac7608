//! The live page at `/` and `/api/v1/status`, which it and scripts read.
//!
//! The page is three static files built into the binary: its HTML, `/app.js` and `/app.css`.
//! No inline script or style, so the page's `Content-Security-Policy` (the engine's
//! `GENERATED_PAGE_CSP`: its own origin only) lets nothing else run; the script builds every
//! element with `textContent`, so what a client sent (MACs, stages, details) stays text.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::live::{LiveStatus, ServerInfo};
use super::{WebReply, WebService};

pub(super) const APP_JS: &str = "/app.js";
pub(super) const APP_CSS: &str = "/app.css";

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("app.js");
const PAGE_CSS: &str = include_str!("app.css");

/// The page and its two assets.
pub(super) fn asset(path: &str) -> WebReply {
    match path {
        APP_JS => WebReply::new(200, "text/javascript; charset=utf-8", PAGE_JS),
        APP_CSS => WebReply::new(200, "text/css; charset=utf-8", PAGE_CSS),
        _ => WebReply::new(200, "text/html; charset=utf-8", PAGE_HTML),
    }
}

#[derive(Serialize)]
struct V1Status<'a> {
    version: &'static str,
    uptime_s: u64,
    /// Services, their addresses, the I/O driver and threads (absent until the loops are up).
    server: Option<&'a ServerInfo>,
    /// `sqlite`, `postgres`, or absent with the database off.
    database: Option<&'static str>,
    /// Machines per current stage: from the database when it runs, else from the reports
    /// the web service received.
    stages: BTreeMap<String, u64>,
    counters: BTreeMap<&'static str, u64>,
    #[serde(flatten)]
    live: LiveStatus,
}

impl WebService {
    /// `/api/v1/status`.
    pub(super) fn v1_status(&self, now: SystemTime) -> WebReply {
        let stages = match &self.db {
            Some(db) => match db.stage_counts() {
                Ok(counts) => counts.into_iter().map(|c| (c.stage, c.machines)).collect(),
                Err(e) => return super::internal(e),
            },
            None => self.inventory.stages(),
        };
        let mut counters: BTreeMap<&'static str, u64> =
            self.metrics.snapshot().into_iter().collect();
        if let Some(db) = &self.db {
            let s = db.stats();
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            counters.insert("db_queue_depth", load(&s.queued));
            counters.insert("db_events_dropped_total", load(&s.dropped));
            counters.insert("db_events_written_total", load(&s.written));
        }
        WebReply::json(&V1Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: now
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs(),
            server: self.live.server(),
            database: self.db.as_ref().map(|d| d.kind()),
            stages,
            counters,
            live: self.live.status(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        // No inline script or style: the CSP ('self' only) would block them.
        assert!(!PAGE_HTML.contains("<script>"), "inline script");
        assert!(!PAGE_HTML.contains("<style"), "inline style");
        assert!(!PAGE_HTML.contains(" on"), "inline handler attribute");
        assert!(PAGE_HTML.contains("<script src=\"/app.js\" defer></script>"));
        assert!(PAGE_HTML.contains("href=\"/app.css\""));
        for text in [PAGE_HTML, PAGE_JS, PAGE_CSS] {
            // The SVG namespace is a name, not a fetch.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn") && !text.contains("@import"));
        }
        // Data reaches the DOM as text only.
        assert!(!PAGE_JS.contains("innerHTML") && !PAGE_JS.contains("outerHTML"));
        assert!(!PAGE_JS.contains("insertAdjacentHTML") && !PAGE_JS.contains("document.write"));
        assert!(!PAGE_JS.contains("eval("));
    }

    #[test]
    fn v1_status_is_json_with_the_live_state() {
        let s = WebService::new(Arc::new(Metrics::default())).with_live(Arc::default());
        let now = SystemTime::now();
        assert_eq!(
            s.respond(
                "/report",
                "mac=525400123456&stage=failed&detail=%3Cscript%3E",
                None,
                now
            )
            .status,
            200
        );
        s.live.drain_queue(&s.metrics);
        let r = s.respond("/api/v1/status", "", None, now);
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["stages"]["failed"], 1, "{v}");
        assert_eq!(v["errors"][0]["reason"], "<script>", "{v}");
        assert_eq!(v["machines"][0]["mac"], "52:54:00:12:34:56", "{v}");
        assert!(v["counters"]["boot_reports_total"].is_u64());
        for path in ["/", APP_JS, APP_CSS] {
            assert_eq!(s.respond(path, "", None, now).status, 200, "{path}");
        }
    }
}
