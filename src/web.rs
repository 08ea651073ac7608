//! The web service (TCP 8051): boot reports from clients, the status and inventory API,
//! Prometheus metrics and a live status page.
//!
//! Routes (GET or HEAD; iPXE's `imgfetch` can only GET):
//! - `/report?mac=..&stage=..[&uuid=..&arch=..&ip=..&detail=..]` records a boot stage: 200,
//!   400 when a value is malformed, 429 when its source sent more than the report rate, 403
//!   (as every route) from outside `web.allow`;
//! - `/api/status` server counters and client counts by stage, JSON;
//! - `/api/clients[?offset=..&limit=..]` one page of the inventory, most recently seen first:
//!   `limit` defaults to [`DEFAULT_PAGE`], at most [`MAX_PAGE`], and a page stops early at
//!   [`MAX_PAGE_BYTES`] (`next_offset` says where the next one starts), JSON;
//! - `/api/v1/clients?offset&limit&stage&mac&subnet&since` machines from the database, most
//!   recently seen first, with their latest boot, JSON (`since` in ms since the epoch);
//! - `/api/v1/clients/{mac}` that machine's last boots, each with its timeline, JSON;
//! - `/api/v1/boots?since=..&limit=..` boots with an event since then, oldest first, JSON;
//! - `/metrics` Prometheus text format (with the database writer's counters);
//! - `/api/v1/status` services, I/O driver, uptime, active transfers with progress and rate,
//!   machines booting, counts by stage and per leg, recent errors, the throughput graph, JSON;
//! - `/api/v1/events` Server-Sent Events of every leg as it happens (see [`live`]), as the
//!   first request of a connection; otherwise 400;
//! - `/` the live page (`/app.js`, `/app.css`: no inline script, a strict CSP).
//!
//! Every request is counted by route and status (`zpxe_web_requests_total`), apart from the
//! boot ports' `zpxe_http_requests_total`.
//!
//! Nothing a client sends grows without bound: the inventory keeps [`MAX_CLIENTS`] entries
//! (the least recently seen goes first), every stored value has a length limit and a charset,
//! stage names beyond the script's own are capped at [`MAX_CUSTOM_STAGES`], and the report rate
//! per source address is a token bucket in a table of [`RATE_TABLE`] sources. Counts by stage
//! are kept as entries change, so the status costs the same at any inventory size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use zpxe_engine::dhcp::ClientUuid;
use zpxe_engine::dhcp::MacAddr;
use zpxe_engine::path::decode_query_component;

use crate::db::{self, Cidr, ClientQuery, Database, Event, EventKind, Recorder};
use crate::metrics::Metrics;

pub mod access;
pub mod machines;
pub use access::{Access, WebConfig};

pub mod live;
mod page;

/// The most clients the inventory keeps; past it, the least recently seen one is dropped.
pub const MAX_CLIENTS: usize = 65_536;
/// Clients in an `/api/clients` page when the query names no `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `limit` honoured (larger ones are cut to it).
pub const MAX_PAGE: usize = 1000;
/// A page stops adding clients once its body is this long, whatever the `limit`.
pub const MAX_PAGE_BYTES: usize = 256 * 1024;
/// Longest stage name, and longest `arch`.
const MAX_NAME: usize = 32;
/// Longest `detail` (bytes).
const MAX_DETAIL: usize = 256;
/// Longest value of any query parameter, stored or not.
const MAX_VALUE: usize = 256;
/// The stages zpxe's own scripts report: always accepted.
const SCRIPT_STAGES: [&str; 4] = ["script", "chosen", "loaded", "failed"];
/// Distinct stage names accepted besides [`SCRIPT_STAGES`] (a site's own scripts may report
/// theirs); a new name past this is refused while the others are in use.
pub const MAX_CUSTOM_STAGES: usize = 64;
/// Reports a source may send at once, and per second after that. A boot reports four or five
/// stages; a machine boots far less often than this allows.
const REPORT_BURST: f64 = 32.0;
const REPORT_RATE_PER_S: f64 = 4.0;
/// Sources the rate limiter remembers; past it, those whose bucket is full again are
/// forgotten first, then the least recently seen.
pub const RATE_TABLE: usize = 4096;

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

/// The inventory's state, behind one lock.
#[derive(Debug, Default)]
struct Clients {
    by_mac: HashMap<MacAddr, (u64, ClientEntry)>,
    /// (sequence of the last report, MAC), oldest first: eviction takes the first, pages read
    /// from the last.
    by_recency: BTreeSet<(u64, MacAddr)>,
    next_seq: u64,
    /// Clients per stage; a stage leaves the map when its count reaches 0.
    stages: HashMap<String, u64>,
}

impl Clients {
    fn count_stage(&mut self, stage: &str) {
        *self.stages.entry(stage.to_owned()).or_insert(0) += 1;
    }

    fn uncount_stage(&mut self, stage: &str) {
        if let Some(n) = self.stages.get_mut(stage) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.stages.remove(stage);
            }
        }
    }

    /// Whether a report may name `stage`: a known one, one in use, or room for one more.
    fn stage_allowed(&self, stage: &str) -> bool {
        if SCRIPT_STAGES.contains(&stage) || self.stages.contains_key(stage) {
            return true;
        }
        let custom = self
            .stages
            .keys()
            .filter(|s| !SCRIPT_STAGES.contains(&s.as_str()))
            .count();
        custom < MAX_CUSTOM_STAGES
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, mac)) = self.by_recency.pop_first() else {
            return false;
        };
        if let Some((_, old)) = self.by_mac.remove(&mac) {
            self.uncount_stage(&old.stage);
        }
        true
    }
}

/// Boot reports, shared by the web service's connections.
#[derive(Debug)]
pub struct Inventory {
    clients: Mutex<Clients>,
    capacity: usize,
}

impl Default for Inventory {
    fn default() -> Self {
        Self::with_capacity(MAX_CLIENTS)
    }
}

/// A validated report.
#[derive(Debug)]
struct Report {
    mac: MacAddr,
    stage: String,
    uuid: Option<String>,
    arch: Option<String>,
    ip: Option<String>,
    detail: Option<String>,
}

/// What [`Inventory::report`] did with a valid report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Updated,
    Added,
    /// Added, and the least recently seen client was dropped to make room.
    AddedEvicting,
}

impl Inventory {
    /// An inventory of at most `capacity` clients (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            clients: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a report; values are validated (MAC and stage are required, all are short and
    /// of a narrow charset). `peer_ip` stands in for a missing `ip`.
    pub fn report(
        &self,
        query: &str,
        peer_ip: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<Recorded, String> {
        let r = parse_report(query)?;
        self.apply(r, peer_ip, now)
    }

    fn apply(
        &self,
        r: Report,
        peer_ip: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<Recorded, String> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mut c = self.lock();
        if !c.stage_allowed(&r.stage) {
            return Err(format!(
                "too many distinct stages (at most {MAX_CUSTOM_STAGES} besides the script's)"
            ));
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        let mut recorded = Recorded::Updated;
        let old = match c.by_mac.remove(&r.mac) {
            Some((old_seq, entry)) => {
                c.by_recency.remove(&(old_seq, r.mac));
                c.uncount_stage(&entry.stage);
                entry
            }
            None => {
                recorded = Recorded::Added;
                while c.by_mac.len() >= self.capacity {
                    if !c.evict_oldest() {
                        break;
                    }
                    recorded = Recorded::AddedEvicting;
                }
                ClientEntry {
                    mac: r.mac.to_string(),
                    uuid: None,
                    arch: None,
                    ip: None,
                    stage: String::new(),
                    detail: None,
                    first_seen_unix: now,
                    last_seen_unix: now,
                    reports: 0,
                }
            }
        };
        let entry = ClientEntry {
            stage: r.stage,
            detail: r.detail,
            uuid: r.uuid.or(old.uuid),
            arch: r.arch.or(old.arch),
            ip: r.ip.or(peer_ip.map(|ip| ip.to_string())).or(old.ip),
            last_seen_unix: now,
            reports: old.reports.saturating_add(1),
            ..old
        };
        c.count_stage(&entry.stage);
        c.by_recency.insert((seq, r.mac));
        c.by_mac.insert(r.mac, (seq, entry));
        Ok(recorded)
    }

    /// Clients known.
    pub fn len(&self) -> usize {
        self.lock().by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients per stage, by name.
    pub fn stages(&self) -> BTreeMap<String, u64> {
        self.lock()
            .stages
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// One page of clients, most recently seen first, as the JSON body of `/api/clients`.
    fn page_json(&self, offset: usize, limit: usize) -> Vec<u8> {
        let c = self.lock();
        let total = c.by_mac.len();
        let mut list = Vec::with_capacity(limit.min(total).saturating_mul(256).min(MAX_PAGE_BYTES));
        let mut taken = 0;
        for (_, mac) in c.by_recency.iter().rev().skip(offset) {
            if taken == limit || list.len() >= MAX_PAGE_BYTES {
                break;
            }
            let Some((_, entry)) = c.by_mac.get(mac) else {
                continue;
            };
            if taken > 0 {
                list.push(b',');
            }
            // Cannot fail: plain strings and integers into a Vec.
            let _ = serde_json::to_writer(&mut list, entry);
            taken += 1;
        }
        let end = offset.saturating_add(taken);
        let next = if end < total {
            end.to_string()
        } else {
            "null".to_owned()
        };
        let mut body = format!(
            "{{\"total\":{total},\"offset\":{offset},\"limit\":{limit},\"next_offset\":{next},\"clients\":["
        )
        .into_bytes();
        body.extend_from_slice(&list);
        body.extend_from_slice(b"]}\n");
        body
    }

    /// Every client, most recently seen first (tests).
    #[cfg(test)]
    fn all(&self) -> Vec<ClientEntry> {
        let c = self.lock();
        c.by_recency
            .iter()
            .rev()
            .filter_map(|(_, mac)| c.by_mac.get(mac).map(|(_, e)| e.clone()))
            .collect()
    }
}

/// A letter, digit, `.`, `_` or `-` name of 1 to `max` bytes.
fn plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `01-aa-..` (PXELINUX) or 12 bare hex digits; a
/// unicast address, as a client's own is.
fn parse_mac(text: &str) -> Option<MacAddr> {
    // Only hex digits and separators: `from_str_radix` would also take a `+` sign.
    if text.len() > 20
        || !text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'-')
    {
        return None;
    }
    let mac = if text.len() == 12 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut bytes = [0u8; 6];
        for (i, slot) in bytes.iter_mut().enumerate() {
            *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        MacAddr(bytes)
    } else {
        text.parse::<MacAddr>().ok()?
    };
    let unicast = mac.0[0] & 1 == 0 && mac.0 != [0; 6];
    unicast.then_some(mac)
}

fn parse_report(query: &str) -> Result<Report, String> {
    let params = parse_query(query)?;
    for (k, v) in &params {
        if v.len() > MAX_VALUE || v.chars().any(char::is_control) {
            return Err(format!("bad value for {}", truncate(k, 32)));
        }
    }
    let get = |k: &str| params.get(k).filter(|v| !v.is_empty());
    let mac = get("mac").ok_or("missing mac")?;
    let mac = parse_mac(mac).ok_or("bad mac")?;
    let stage = get("stage").ok_or("missing stage")?;
    if !plain_name(stage, MAX_NAME) {
        return Err(format!(
            "bad stage (1 to {MAX_NAME} letters, digits, '.', '_' or '-')"
        ));
    }
    let uuid = match get("uuid") {
        Some(u) => Some(u.parse::<ClientUuid>().map_err(|_| "bad uuid")?.to_string()),
        None => None,
    };
    let arch = match get("arch") {
        Some(a) if plain_name(a, MAX_NAME) => Some(a.clone()),
        Some(_) => return Err("bad arch".into()),
        None => None,
    };
    let ip = match get("ip") {
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| "bad ip".to_owned())?
                .to_string(),
        ),
        None => None,
    };
    let detail = match get("detail") {
        Some(d) if d.len() <= MAX_DETAIL => Some(d.clone()),
        Some(_) => return Err(format!("detail longer than {MAX_DETAIL} bytes")),
        None => None,
    };
    Ok(Report {
        mac,
        stage: stage.clone(),
        uuid,
        arch,
        ip,
        detail,
    })
}

/// A token bucket per source address, for `/report`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + dt * REPORT_RATE_PER_S).min(REPORT_BURST)
    }
}

impl RateLimiter {
    /// Takes one token from `source`'s bucket; false when it is empty.
    pub fn allow(&self, source: Option<IpAddr>, now: Instant) -> bool {
        let key = source.map_or(IpAddr::from([0u8; 4]), source_key);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= RATE_TABLE {
            // A full bucket is the same as none: forget those first.
            buckets.retain(|_, b| b.refilled(now) < REPORT_BURST);
            if buckets.len() >= RATE_TABLE
                && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: REPORT_BURST,
            at: now,
        });
        let tokens = bucket.refilled(now);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }

    /// Sources remembered.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rate limiter's key: an IPv4 address, or an IPv6 /64 (one host picks freely among the
/// addresses of its /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
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

/// The web service's routes over shared state.
#[derive(Debug, Clone)]
pub struct WebService {
    pub metrics: Arc<Metrics>,
    pub inventory: Arc<Inventory>,
    pub limiter: Arc<RateLimiter>,
    pub started: SystemTime,
    /// The database the v1 API reads, when recording is on.
    pub db: Option<Arc<Database>>,
    recorder: Recorder,
    /// Who may read, and the token for changes (src/web/access.rs); replaced whole by a
    /// reload ([`WebService::follow_reloads`]).
    access: Arc<arc_swap::ArcSwap<Access>>,
    /// The menu's entry ids, which machine records may name.
    menu_entries: Option<Arc<BTreeSet<String>>>,
    /// The live view: SSE, `/api/v1/status`, the page.
    pub live: Arc<live::Live>,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_s: u64,
    clients: usize,
    clients_by_stage: BTreeMap<String, u64>,
    counters: BTreeMap<&'static str, u64>,
}

impl WebService {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            inventory: Arc::default(),
            limiter: Arc::default(),
            started: SystemTime::now(),
            db: None,
            recorder: Recorder::disabled(),
            live: Arc::default(),
            access: Arc::new(arc_swap::ArcSwap::from_pointee(Access::open())),
            menu_entries: None,
        }
    }

    /// Access rules, and the menu entry ids machine records may name.
    pub fn with_access(mut self, access: Access, menu_entries: Option<BTreeSet<String>>) -> Self {
        self.access = Arc::new(arc_swap::ArcSwap::from_pointee(access));
        self.menu_entries = menu_entries.map(Arc::new);
        self
    }

    /// The access rules in force (one lock-free load; hold it only for the request).
    pub fn access(&self) -> arc_swap::Guard<Arc<Access>> {
        self.access.load()
    }

    /// `web.token-sha256`, `web.token-file` and `web.allow` follow `reloader`'s reloads: each
    /// reload builds the rules from the new `[web]` (reading the token file) before it
    /// applies anything, and a failure refuses the whole reload. Requests already past their
    /// check keep the rules they were checked with.
    pub fn follow_reloads(&self, reloader: &crate::serve::Reloader) {
        let access = Arc::clone(&self.access);
        reloader.on_reload(move |new: &crate::config::Config| {
            let rules = Access::from_config(&new.web, &new.listen_addrs())?;
            let access = Arc::clone(&access);
            Ok(Box::new(move || {
                tracing::info!(
                    allow = %rules.allow_list().join(", "),
                    token = rules.has_token(),
                    "web access rules reloaded"
                );
                access.store(Arc::new(rules));
            }))
        });
    }

    /// Counts one request to `path` answered with `status` (`zpxe_web_requests_total`).
    pub fn count_request(&self, path: &str, status: u16) {
        self.metrics.web_request(path, status);
    }

    /// Reports also go to `db`, which the v1 API reads.
    pub fn with_database(mut self, db: Option<Arc<Database>>) -> Self {
        self.recorder = db
            .as_ref()
            .map_or_else(Recorder::disabled, |d| d.recorder());
        self.db = db;
        self
    }

    /// The live view `live` (shared with the event loops' recorder) gets this service's
    /// reports too.
    pub fn with_live(mut self, live: Arc<live::Live>) -> Self {
        self.recorder = self.recorder.clone().with_live(Some(live.tap()));
        self.live = live;
        self
    }

    /// Answers one request for `path` (no query) with `query` (no `?`) from `peer_ip`, and
    /// counts it by route and status.
    pub fn respond(
        &self,
        path: &str,
        query: &str,
        peer_ip: Option<String>,
        now: SystemTime,
    ) -> WebReply {
        let r = self.answer(path, query, peer_ip, now);
        self.count_request(path, r.status);
        r
    }

    fn answer(
        &self,
        path: &str,
        query: &str,
        peer_ip: Option<String>,
        now: SystemTime,
    ) -> WebReply {
        let peer = peer_ip.and_then(|p| p.parse::<IpAddr>().ok());
        // Every route, `/report` too: a peer outside web.allow neither reads nor feeds the
        // inventory, the live page or the database (relayed clients' networks go in web.allow).
        let access = self.access();
        if !access.allows(peer) {
            return access.forbidden_peer(peer);
        }
        drop(access);
        if path == "/api/v1/machines" || path.starts_with("/api/v1/machines/") {
            return self.machines_read(path, query);
        }
        match path {
            "/" | "/index.html" | page::APP_JS | page::APP_CSS => page::asset(path),
            "/api/v1/status" => self.v1_status(now),
            // A stream is only ever a connection's first request, a whole `GET` head
            // (`live::events_request`, src/serve/http.rs); this is a `HEAD`, or a `GET` after
            // another request on a kept-alive connection, which the request loop cannot turn
            // into a stream.
            live::EVENTS_PATH => WebReply::new(
                400,
                "text/plain",
                "an event stream is served as the first request of a connection, by GET: \
                 open a new connection for it\n",
            ),
            "/report" => self.report(query, peer, now, Instant::now()),
            "/api/status" => {
                let (clients, clients_by_stage) = {
                    let c = self.inventory.lock();
                    let by = c.stages.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    (c.by_mac.len(), by)
                };
                WebReply::json(&Status {
                    version: env!("CARGO_PKG_VERSION"),
                    uptime_s: now
                        .duration_since(self.started)
                        .unwrap_or_default()
                        .as_secs(),
                    clients,
                    clients_by_stage,
                    counters: self.metrics.snapshot().into_iter().collect(),
                })
            }
            "/api/clients" => match parse_page(query) {
                Ok((offset, limit)) => WebReply::new(
                    200,
                    "application/json",
                    self.inventory.page_json(offset, limit),
                ),
                Err(e) => WebReply::new(400, "text/plain", format!("{e}\n")),
            },
            "/metrics" => {
                let mut out = String::new();
                self.metrics.render(&mut out);
                if let Some(db) = &self.db {
                    db.stats().render(&mut out);
                }
                self.live.render_metrics(&mut out);
                WebReply::new(200, "text/plain; version=0.0.4", out)
            }
            "/api/v1/explain" => crate::explain::web_reply(query),
            "/api/v1/clients" => self.api(|db| {
                let q = parse_client_query(query)?;
                Ok(WebReply::json(&db.clients(&q).map_err(internal)?))
            }),
            "/api/v1/boots" => self.api(|db| {
                let params = parse_query(query).map_err(bad_request)?;
                let since = number(&params, "since")?.unwrap_or(0);
                let limit = number(&params, "limit")?.map_or(MAX_PAGE, |l| l.clamp(1, MAX_PAGE));
                let since = i64::try_from(since).unwrap_or(i64::MAX);
                let limit = u32::try_from(limit).unwrap_or(u32::MAX);
                Ok(WebReply::json(
                    &db.boots_since(since, limit).map_err(internal)?,
                ))
            }),
            _ => match path.strip_prefix("/api/v1/clients/") {
                Some(mac) => self.api(|db| {
                    let mac = parse_mac(mac).ok_or_else(|| bad_request("bad mac".into()))?;
                    let params = parse_query(query).map_err(bad_request)?;
                    let limit =
                        number(&params, "limit")?.map_or(BOOTS_SHOWN, |l| l.clamp(1, MAX_BOOTS));
                    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
                    let boots = db.boots_of(mac, limit).map_err(internal)?;
                    if boots.is_empty() {
                        return Err(WebReply::new(404, "text/plain", "no such client\n"));
                    }
                    Ok(WebReply::json(&ClientBoots {
                        mac: mac.to_string(),
                        boots,
                    }))
                }),
                None => WebReply::new(404, "text/plain", "not found\n"),
            },
        }
    }

    fn report(
        &self,
        query: &str,
        peer: Option<IpAddr>,
        now: SystemTime,
        mono: Instant,
    ) -> WebReply {
        // Before parsing: a flood of malformed reports costs its sender tokens too.
        if !self.limiter.allow(peer, mono) {
            Metrics::add(&self.metrics.boot_reports_limited_total, 1);
            //= https://www.rfc-editor.org/rfc/rfc6585#section-4
            //# The 429 status code indicates that the user has sent too many
            //# requests in a given amount of time ("rate limiting").
            return WebReply::new(429, "text/plain", "too many reports from this address\n");
        }
        let r = match parse_report(query) {
            Ok(r) => r,
            Err(e) => {
                Metrics::add(&self.metrics.boot_reports_refused_total, 1);
                return WebReply::new(400, "text/plain", format!("{e}\n"));
            }
        };
        let event = self.recorder.enabled().then(|| {
            let ip = r.ip.as_deref().and_then(|ip| ip.parse().ok()).or(peer);
            let mut ev = Event::now(EventKind::Stage {
                stage: db::Stage::new(&r.stage),
                detail: db::Detail::new(r.detail.as_deref().unwrap_or_default()),
            })
            .mac(r.mac)
            .uuid(r.uuid.as_deref().and_then(|u| u.parse().ok()));
            if let Some(ip) = ip {
                ev = ev.ip(ip);
            }
            ev
        });
        match self.inventory.apply(r, peer, now) {
            Ok(recorded) => {
                // Only what the inventory took: a refused stage name is not recorded either.
                if let Some(ev) = event {
                    self.recorder.record(ev);
                }
                Metrics::add(&self.metrics.boot_reports_total, 1);
                if recorded == Recorded::AddedEvicting {
                    Metrics::add(&self.metrics.inventory_evicted_total, 1);
                }
                WebReply::new(200, "text/plain", "ok\n")
            }
            Err(e) => {
                Metrics::add(&self.metrics.boot_reports_refused_total, 1);
                WebReply::new(400, "text/plain", format!("{e}\n"))
            }
        }
    }
}

/// Boots `/api/v1/clients/{mac}` shows without a `limit`, and the most it shows.
const BOOTS_SHOWN: usize = 10;
const MAX_BOOTS: usize = 100;

#[derive(Serialize)]
struct ClientBoots {
    mac: String,
    boots: Vec<db::BootTimeline>,
}

impl WebService {
    /// Runs a v1 API query. Queries are bounded (`LIMIT`ed pages, indexed lookups), so they
    /// run on the web service's own loop: they can delay other web requests, never a boot.
    fn api(&self, f: impl FnOnce(&Database) -> Result<WebReply, WebReply>) -> WebReply {
        match &self.db {
            Some(db) => f(db).unwrap_or_else(|e| e),
            None => WebReply::new(
                404,
                "text/plain",
                "the database is off (database.enabled = false)\n",
            ),
        }
    }
}

fn bad_request(e: String) -> WebReply {
    WebReply::new(400, "text/plain", format!("{e}\n"))
}

fn internal(e: anyhow::Error) -> WebReply {
    tracing::warn!(error = %format!("{e:#}"), "database query failed");
    WebReply::new(500, "text/plain", "database query failed\n")
}

/// A decimal parameter, if given.
fn number(params: &HashMap<String, String>, k: &str) -> Result<Option<usize>, WebReply> {
    match params.get(k) {
        None => Ok(None),
        Some(v) if v.len() <= 15 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(Some)
            .map_err(|_| bad_request(format!("bad {k}"))),
        Some(_) => Err(bad_request(format!("bad {k} (a decimal number)"))),
    }
}

/// The filters and page of `/api/v1/clients`.
fn parse_client_query(query: &str) -> Result<ClientQuery, WebReply> {
    let params = parse_query(query).map_err(bad_request)?;
    let mut q = ClientQuery {
        offset: number(&params, "offset")?.unwrap_or(0) as u64,
        limit: number(&params, "limit")?.map_or(0, |l| u32::try_from(l).unwrap_or(u32::MAX)),
        since_ms: number(&params, "since")?.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        ..ClientQuery::default()
    };
    if let Some(stage) = params.get("stage").filter(|s| !s.is_empty()) {
        if !plain_name(stage, MAX_NAME) {
            return Err(bad_request("bad stage".into()));
        }
        q.stage = Some(stage.clone());
    }
    if let Some(mac) = params.get("mac").filter(|s| !s.is_empty()) {
        q.mac = Some(parse_mac(mac).ok_or_else(|| bad_request("bad mac".into()))?);
    }
    if let Some(subnet) = params.get("subnet").filter(|s| !s.is_empty()) {
        q.subnet = Some(subnet.parse::<Cidr>().map_err(bad_request)?);
    }
    Ok(q)
}

/// `offset` and `limit` of an `/api/clients` query.
fn parse_page(query: &str) -> Result<(usize, usize), String> {
    let params = parse_query(query)?;
    let number = |k: &str| -> Result<Option<usize>, String> {
        match params.get(k) {
            None => Ok(None),
            Some(v) if v.len() <= 12 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse().map(Some).map_err(|_| format!("bad {k}"))
            }
            Some(_) => Err(format!("bad {k} (a decimal number)")),
        }
    };
    let offset = number("offset")?.unwrap_or(0);
    let limit = number("limit")?.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok((offset, limit))
}

fn parse_query(query: &str) -> Result<HashMap<String, String>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (decode_query_component(k), decode_query_component(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err("bad percent-encoding in the query".to_owned()),
            }
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> WebService {
        WebService::new(Arc::new(Metrics::default()))
    }

    fn json(r: &WebReply) -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("JSON")
    }

    #[test]
    fn reports_build_the_inventory() {
        let s = svc();
        let now = SystemTime::now();
        let r = s.respond(
            "/report",
            "mac=52-54-00-12-34-56&stage=loader&arch=x86_64",
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
        let clients = s.inventory.all();
        assert_eq!(clients.len(), 1);
        let c = &clients[0];
        assert_eq!(c.mac, "52:54:00:12:34:56");
        assert_eq!((c.stage.as_str(), c.reports), ("winpe", 2));
        assert_eq!(c.arch.as_deref(), Some("x86_64"));
        assert_eq!(c.ip.as_deref(), Some("10.0.0.9"));
        let status = String::from_utf8(s.respond("/api/status", "", None, now).body).expect("utf8");
        assert!(status.contains("\"winpe\": 1"), "{status}");
        assert!(!status.contains("\"loader\""), "{status}");
        let metrics = String::from_utf8(s.respond("/metrics", "", None, now).body).expect("utf8");
        assert!(metrics.contains("zpxe_boot_reports_total 2"), "{metrics}");
    }

    #[test]
    fn bad_reports_are_refused() {
        let s = svc();
        let now = SystemTime::now();
        let long = "x".repeat(MAX_NAME + 1);
        let long_detail = "d".repeat(MAX_DETAIL + 1);
        for q in [
            "stage=x".to_owned(),
            "mac=zz&stage=x".into(),
            "mac=525400123456".into(),
            "mac=525400123456&stage=a%0Ab".into(),
            "mac=525400123456&stage=a%20b".into(),
            "mac=525400123456&stage=<script>".into(),
            format!("mac=525400123456&stage={long}"),
            format!("mac=525400123456&stage=x&detail={long_detail}"),
            "mac=525400123456&stage=x&uuid=nope".into(),
            "mac=525400123456&stage=x&ip=10.0.0.300".into(),
            "mac=525400123456&stage=x&arch=a/b".into(),
            "mac=525400123456&stage=x&detail=%ff".into(),
            "mac=+2:54:00:12:34:56&stage=x".into(),
            "mac=52:54:00:12:34&stage=x".into(),
            "mac=ff:ff:ff:ff:ff:ff&stage=x".into(),
            "mac=00:00:00:00:00:00&stage=x".into(),
            "mac=01:00:5e:00:00:01&stage=x".into(),
        ] {
            assert_eq!(s.respond("/report", &q, None, now).status, 400, "{q}");
        }
        assert_eq!(s.respond("/nope", "", None, now).status, 404);
        assert!(s.inventory.is_empty());
        let m = &s.metrics;
        assert_eq!(
            m.boot_reports_refused_total
                .load(std::sync::atomic::Ordering::Relaxed),
            17
        );
    }

    #[test]
    fn stored_values_are_normalized() {
        let inv = Inventory::default();
        let now = SystemTime::now();
        inv.report(
            "mac=01-52-54-00-AB-CD-EF&stage=x&uuid=4C4C4544003510528035C4C04F4D3132&ip=fe80:0:0::1",
            None,
            now,
        )
        .expect("valid");
        let c = &inv.all()[0];
        assert_eq!(c.mac, "52:54:00:ab:cd:ef");
        assert_eq!(
            c.uuid.as_deref(),
            Some("4c4c4544-0035-1052-8035-c4c04f4d3132")
        );
        assert_eq!(c.ip.as_deref(), Some("fe80::1"));
    }

    #[test]
    fn the_inventory_drops_the_least_recently_seen_and_counts_stay_right() {
        let inv = Inventory::with_capacity(3);
        let now = SystemTime::now();
        let mac = |i: u8| format!("mac=52:54:00:00:00:{i:02x}");
        for i in 1..=3 {
            assert_eq!(
                inv.report(&format!("{}&stage=script", mac(i)), None, now),
                Ok(Recorded::Added)
            );
        }
        // 1 is seen again: 2 is now the least recently seen.
        assert_eq!(
            inv.report(&format!("{}&stage=loaded", mac(1)), None, now),
            Ok(Recorded::Updated)
        );
        assert_eq!(
            inv.report(&format!("{}&stage=failed", mac(4)), None, now),
            Ok(Recorded::AddedEvicting)
        );
        let macs: Vec<String> = inv.all().into_iter().map(|c| c.mac).collect();
        assert_eq!(
            macs,
            [
                "52:54:00:00:00:04",
                "52:54:00:00:00:01",
                "52:54:00:00:00:03"
            ]
        );
        let stages = inv.stages();
        assert_eq!(
            stages,
            BTreeMap::from([
                ("failed".to_owned(), 1),
                ("loaded".to_owned(), 1),
                ("script".to_owned(), 1)
            ])
        );
        // Counts always equal what a full recount finds, through many updates and evictions.
        for i in 0..500u32 {
            let stage = ["script", "chosen", "loaded", "custom-a"][(i % 4) as usize];
            let q = format!("mac=52:54:00:00:{:02x}:{:02x}&stage={stage}", i % 7, i % 5);
            inv.report(&q, None, now).expect("valid");
            let mut recount = BTreeMap::new();
            for c in inv.all() {
                *recount.entry(c.stage).or_insert(0) += 1;
            }
            assert_eq!(inv.stages(), recount);
            assert!(inv.len() <= 3);
        }
    }

    #[test]
    fn custom_stage_names_are_capped() {
        let inv = Inventory::default();
        let now = SystemTime::now();
        for i in 0..MAX_CUSTOM_STAGES {
            inv.report(&format!("mac=52:54:00:00:01:{i:02x}&stage=s{i}"), None, now)
                .expect("room for it");
        }
        let err = inv.report("mac=52:54:00:00:02:00&stage=one-more", None, now);
        assert!(err.is_err(), "{err:?}");
        // The script's own stages and stages in use still go in.
        inv.report("mac=52:54:00:00:02:00&stage=loaded", None, now)
            .expect("a script stage");
        inv.report("mac=52:54:00:00:02:01&stage=s3", None, now)
            .expect("a stage in use");
        // A name whose last client moved on frees its place.
        inv.report("mac=52:54:00:00:01:05&stage=loaded", None, now)
            .expect("moves on");
        inv.report("mac=52:54:00:00:02:02&stage=one-more", None, now)
            .expect("a freed place");
    }

    #[test]
    fn pages_are_bounded_and_walk_the_inventory() {
        let s = svc();
        let now = SystemTime::now();
        for i in 0..250u32 {
            let q = format!(
                "mac=52:54:00:00:{:02x}:{:02x}&stage=script",
                i / 256,
                i % 256
            );
            assert_eq!(s.inventory.report(&q, None, now).map(|_| ()), Ok(()));
        }
        let page = json(&s.respond("/api/clients", "", None, now));
        assert_eq!(page["total"], 250);
        assert_eq!(
            page["clients"].as_array().expect("list").len(),
            DEFAULT_PAGE
        );
        // Most recently seen first.
        assert_eq!(page["clients"][0]["mac"], "52:54:00:00:00:f9");
        assert_eq!(page["next_offset"], 100);
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0;
        loop {
            let r = s.respond(
                "/api/clients",
                &format!("offset={offset}&limit=70"),
                None,
                now,
            );
            let page = json(&r);
            for c in page["clients"].as_array().expect("list") {
                assert!(seen.insert(c["mac"].as_str().expect("mac").to_owned()));
            }
            match page["next_offset"].as_u64() {
                Some(n) => offset = n as usize,
                None => break,
            }
        }
        assert_eq!(seen.len(), 250);
        let huge = json(&s.respond("/api/clients", "limit=999999999", None, now));
        assert_eq!(huge["limit"], MAX_PAGE);
        let past = json(&s.respond("/api/clients", "offset=999999", None, now));
        assert!(past["clients"].as_array().expect("list").is_empty());
        assert!(past["next_offset"].is_null());
        for q in [
            "limit=-1",
            "offset=x",
            "limit=1e3",
            "limit=99999999999999999999",
        ] {
            assert_eq!(s.respond("/api/clients", q, None, now).status, 400, "{q}");
        }
    }

    #[test]
    fn a_page_stops_at_its_byte_budget() {
        let s = svc();
        let now = SystemTime::now();
        // Long details: 1000 of them would be well past the budget.
        let detail = "%22".repeat(MAX_DETAIL);
        for i in 0..1000u32 {
            let q = format!(
                "mac=52:54:00:00:{:02x}:{:02x}&stage=script&detail={detail}",
                i / 256,
                i % 256
            );
            s.inventory.report(&q, None, now).expect("valid");
        }
        let r = s.respond("/api/clients", "limit=1000", None, now);
        assert!(r.body.len() <= MAX_PAGE_BYTES + 2048, "{}", r.body.len());
        let page = json(&r);
        let n = page["clients"].as_array().expect("list").len();
        assert!(n < 1000 && n > 100, "{n}");
        assert_eq!(page["next_offset"], n);
    }

    #[test]
    fn reports_are_rate_limited_per_source() {
        let s = svc();
        let now = SystemTime::now();
        let t0 = Instant::now();
        let a = Some("10.0.0.1".parse().expect("ip"));
        let b = Some("10.0.0.2".parse().expect("ip"));
        let q = |i: u32| {
            format!(
                "mac=52:54:00:00:{:02x}:{:02x}&stage=script",
                i / 256,
                i % 256
            )
        };
        let mut ok = 0;
        for i in 0..1000 {
            match s.report(&q(i), a, now, t0).status {
                200 => ok += 1,
                429 => {}
                other => panic!("status {other}"),
            }
        }
        assert_eq!(ok, REPORT_BURST as u32);
        // Malformed reports spend tokens too; another source has its own bucket.
        assert_eq!(s.report("mac=zz", a, now, t0).status, 429);
        assert_eq!(s.report("mac=zz", b, now, t0).status, 400);
        assert_eq!(s.report(&q(5000), b, now, t0).status, 200);
        // The bucket refills at the rate.
        let later = t0 + Duration::from_secs(1);
        let refilled = (0..100)
            .filter(|i| s.report(&q(6000 + i), a, now, later).status == 200)
            .count();
        assert_eq!(refilled, REPORT_RATE_PER_S as usize);
    }

    #[test]
    fn the_rate_table_stays_bounded() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..(RATE_TABLE as u32 * 3) {
            let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            assert!(limiter.allow(Some(ip), t0));
            assert!(limiter.len() <= RATE_TABLE);
        }
        // IPv6 sources count per /64.
        let v6 = RateLimiter::default();
        for i in 0..100u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, i, i, i, i));
            v6.allow(Some(ip), t0);
        }
        assert_eq!(v6.len(), 1);
        let ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 7, 7, 7, 7));
        assert!(!v6.allow(Some(ip), t0), "the /64 shares one bucket");
    }
}
