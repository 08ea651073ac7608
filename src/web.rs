//! The web service (TCP 8051): boot reports from clients, the status and inventory API,
//! Prometheus metrics and a live status page.
//!
//! Routes (GET or HEAD; iPXE's `imgfetch` can only GET):
//! - `/report?mac=..&stage=..[&uuid=..&arch=..&ip=..&detail=..]` records a boot stage;
//! - `/api/status` server counters and client counts by stage, JSON;
//! - `/api/clients` the inventory: every client seen, its last stage and when, JSON;
//! - `/metrics` Prometheus text format;
//! - `/` the status page, which polls `/api/status` and `/api/clients`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use zpxe_engine::http::ipxe::normalize_mac;
use zpxe_engine::path::decode_query_component;

use crate::metrics::Metrics;

/// The most clients the inventory keeps; the oldest report is dropped past this.
const MAX_CLIENTS: usize = 100_000;

/// One client as the inventory knows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientEntry {
    pub mac: String,
    pub uuid: Option<String>,
    pub arch: Option<String>,
    pub ip: Option<String>,
    pub stage: String,
    pub detail: Option<String>,
    pub first_seen_unix: u64,
    pub last_seen_unix: u64,
    pub reports: u64,
}

/// Boot reports, shared by the web service's connections.
#[derive(Debug, Default)]
pub struct Inventory {
    clients: Mutex<HashMap<String, ClientEntry>>,
}

/// A web service answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl WebReply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn json(value: &impl Serialize) -> Self {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Self::new(200, "application/json", body),
            Err(e) => Self::new(500, "text/plain", format!("encoding failed: {e}\n")),
        }
    }
}

impl Inventory {
    /// Records a report; values are validated (MAC and stage are required, all are short and
    /// printable).
    pub fn report(
        &self,
        query: &str,
        peer_ip: Option<String>,
        now: SystemTime,
    ) -> Result<(), String> {
        let params = parse_query(query);
        let get = |k: &str| params.get(k).cloned();
        let mac = get("mac").ok_or("missing mac")?;
        let mac = normalize_mac(&mac).ok_or_else(|| format!("bad mac {mac:?}"))?;
        let stage = get("stage").ok_or("missing stage")?;
        for (k, v) in &params {
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(format!("bad value for {k}"));
            }
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS
            && !clients.contains_key(&mac)
            && let Some(oldest) = clients
                .values()
                .min_by_key(|c| c.last_seen_unix)
                .map(|c| c.mac.clone())
        {
            clients.remove(&oldest);
        }
        let entry = clients.entry(mac.clone()).or_insert_with(|| ClientEntry {
            mac,
            uuid: None,
            arch: None,
            ip: None,
            stage: String::new(),
            detail: None,
            first_seen_unix: now,
            last_seen_unix: now,
            reports: 0,
        });
        entry.stage = stage;
        entry.detail = get("detail");
        entry.uuid = get("uuid").or(entry.uuid.take());
        entry.arch = get("arch").or(entry.arch.take());
        entry.ip = get("ip").or(peer_ip).or(entry.ip.take());
        entry.last_seen_unix = now;
        entry.reports += 1;
        Ok(())
    }

    fn clients(&self) -> Vec<ClientEntry> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ClientEntry> = clients.values().cloned().collect();
        v.sort_by(|a, b| {
            b.last_seen_unix
                .cmp(&a.last_seen_unix)
                .then(a.mac.cmp(&b.mac))
        });
        v
    }

    fn stages(&self) -> HashMap<String, u64> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut by = HashMap::new();
        for c in clients.values() {
            *by.entry(c.stage.clone()).or_insert(0) += 1;
        }
        by
    }
}

/// The web service's routes over shared state.
#[derive(Debug, Clone)]
pub struct WebService {
    pub metrics: Arc<Metrics>,
    pub inventory: Arc<Inventory>,
    pub started: SystemTime,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_s: u64,
    clients: usize,
    clients_by_stage: HashMap<String, u64>,
    counters: HashMap<&'static str, u64>,
}

impl WebService {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            inventory: Arc::default(),
            started: SystemTime::now(),
        }
    }

    /// Answers one request for `path` (no query) with `query` (no `?`).
    pub fn respond(
        &self,
        path: &str,
        query: &str,
        peer_ip: Option<String>,
        now: SystemTime,
    ) -> WebReply {
        match path {
            "/" | "/index.html" => WebReply::new(200, "text/html; charset=utf-8", STATUS_PAGE),
            "/report" => match self.inventory.report(query, peer_ip, now) {
                Ok(()) => {
                    Metrics::add(&self.metrics.boot_reports_total, 1);
                    WebReply::new(200, "text/plain", "ok\n")
                }
                Err(e) => WebReply::new(400, "text/plain", format!("{e}\n")),
            },
            "/api/status" => {
                let clients = self.inventory.clients().len();
                WebReply::json(&Status {
                    version: env!("CARGO_PKG_VERSION"),
                    uptime_s: now
                        .duration_since(self.started)
                        .unwrap_or_default()
                        .as_secs(),
                    clients,
                    clients_by_stage: self.inventory.stages(),
                    counters: self.metrics.snapshot().into_iter().collect(),
                })
            }
            "/api/clients" => WebReply::json(&self.inventory.clients()),
            "/metrics" => {
                let mut out = String::new();
                self.metrics.render(&mut out);
                WebReply::new(200, "text/plain; version=0.0.4", out)
            }
            _ => WebReply::new(404, "text/plain", "not found\n"),
        }
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode_query_component(k)?, decode_query_component(v)?))
        })
        .collect()
}

const STATUS_PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zpxe status</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} table{border-collapse:collapse;margin-top:1em}
td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
.num{text-align:right;font-variant-numeric:tabular-nums}
#stages span{display:inline-block;margin-right:1.5em}
</style></head><body>
<h1>zpxe</h1>
<div id="summary">loading…</div>
<div id="stages"></div>
<h2>Counters</h2><table id="counters"></table>
<h2>Clients</h2><table id="clients"><thead><tr><th>MAC</th><th>stage</th><th>IP</th><th>arch</th><th>last seen</th><th>reports</th></tr></thead><tbody></tbody></table>
<script>
function esc(s){return String(s??"").replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]))}
async function refresh(){
  try{
    const s=await (await fetch("/api/status")).json();
    document.getElementById("summary").textContent=`version ${s.version}, up ${s.uptime_s} s, ${s.clients} clients`;
    document.getElementById("stages").innerHTML=Object.entries(s.clients_by_stage).map(([k,v])=>`<span><b>${esc(v)}</b> ${esc(k)}</span>`).join("");
    document.getElementById("counters").innerHTML=Object.entries(s.counters).sort().map(([k,v])=>`<tr><td>${esc(k)}</td><td class="num">${esc(v)}</td></tr>`).join("");
    const c=await (await fetch("/api/clients")).json();
    document.querySelector("#clients tbody").innerHTML=c.slice(0,500).map(x=>`<tr><td>${esc(x.mac)}</td><td>${esc(x.stage)}</td><td>${esc(x.ip)}</td><td>${esc(x.arch)}</td><td>${esc(new Date(x.last_seen_unix*1000).toLocaleTimeString())}</td><td class="num">${esc(x.reports)}</td></tr>`).join("");
  }catch(e){document.getElementById("summary").textContent="status unavailable: "+e}
}
refresh();setInterval(refresh,2000);
</script></body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> WebService {
        WebService::new(Arc::new(Metrics::default()))
    }

    #[test]
    fn reports_build_the_inventory() {
        let s = svc();
        let now = SystemTime::now();
        let r = s.respond(
            "/report",
            "mac=52-54-00-12-34-56&stage=loader&arch=7",
            None,
            now,
        );
        assert_eq!(r.status, 200);
        let r = s.respond(
            "/report",
            "mac=525400123456&stage=winpe&detail=boot.wim",
            Some("10.0.0.9".into()),
            now,
        );
        assert_eq!(r.status, 200);
        let clients = s.inventory.clients();
        assert_eq!(clients.len(), 1);
        let c = &clients[0];
        assert_eq!(c.mac, "52:54:00:12:34:56");
        assert_eq!((c.stage.as_str(), c.reports), ("winpe", 2));
        assert_eq!(c.arch.as_deref(), Some("7"));
        assert_eq!(c.ip.as_deref(), Some("10.0.0.9"));
        let status = String::from_utf8(s.respond("/api/status", "", None, now).body).expect("utf8");
        assert!(status.contains("\"winpe\": 1"), "{status}");
        let metrics = String::from_utf8(s.respond("/metrics", "", None, now).body).expect("utf8");
        assert!(metrics.contains("zpxe_boot_reports_total 2"), "{metrics}");
    }

    #[test]
    fn bad_reports_are_refused() {
        let s = svc();
        let now = SystemTime::now();
        for q in [
            "stage=x",
            "mac=zz&stage=x",
            "mac=525400123456",
            "mac=525400123456&stage=a%0Ab",
        ] {
            assert_eq!(s.respond("/report", q, None, now).status, 400, "{q}");
        }
        assert_eq!(s.respond("/nope", "", None, now).status, 404);
        assert!(s.inventory.clients().is_empty());
    }
}
