//! The request-handler hook (`boot.hook-url`, issue 16), like 2PXE's request handlers: an HTTP
//! service of the site's decides per client (a loader, a script URL, a menu entry, variables
//! for the iPXE script, or "ignore"), and zpxe applies the decision as it applies a machine
//! registry record (src/serve/registry.rs). Precedence: a registry record, then the hook's
//! decision, then the static `[boot]` policy and rules. The static ignore lists and refusals
//! still apply: the hook is asked only about clients the policy would answer.
//!
//! The DHCP path never waits on the handler. It reads a per-client cache ([`Hook::consult`]);
//! a miss queues one lookup (bounded queue, at most one lookup per client queued or in flight,
//! a token bucket of `boot.hook-rate` lookups per second, so a flood of made-up MACs costs the
//! handler no more than that) and answers by the static policy now. Worker threads POST the
//! client's facts, and the decision is cached for `boot.hook-cache-ttl-s`, so the firmware's
//! next DISCOVER (PXE retries after about 4, 8 and 16 s) gets it. A timeout, a refused
//! connection, a status other than 200 or an answer that fails the checks falls back to the
//! static policy for [`FAILURE_TTL`], counted and logged (at most one line per
//! [`LOG_EVERY`]). The script request over HTTP only reads the cache, never queues.
//!
//! The exchange, one request per connection (`Connection: close`):
//!
//! ```text
//! POST /decide HTTP/1.1            {"mac": "52:54:00:12:34:56", "uuid": null, "arch": 7,
//! Content-Type: application/json    "ipxe": false, "http-client": false,
//! Authorization: Bearer TOKEN       "relay": "10.1.0.1", "client-ip": null,
//!                                   "vendor-class": "PXEClient:Arch:00007:UNDI:003016",
//!                                   "user-class": [], "message": "DISCOVER"}
//!
//! HTTP/1.1 200 OK                  {"action": "boot", "loader": "custom/ipxe.efi",
//! Content-Length: ...               "script-url": "http://10.0.0.1:8050/special.ipxe",
//!                                   "entry": "win11", "variables": {"site": "lab"}}
//! ```
//!
//! `action` is `boot` (every other field optional), `ignore` (send this client nothing) or
//! `default` (the static policy). Answers are at most [`MAX_ANSWER`] bytes and checked as the
//! registry API checks a record (src/web/machines.rs): loader a plain relative path, entry an
//! id of `[[menu.entries]]`, variables nothing iPXE reads as syntax; a script URL is an
//! `http://` or `https://` URL of plain characters, at most [`MAX_URL`] bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use zpxe_engine::dhcp::{ClientFacts, DhcpRepr, MacAddr, MessageType};

use crate::db::{MachineKey, MachineRecord};
use crate::metrics::Metrics;

/// Largest answer body the handler may send.
pub(crate) const MAX_ANSWER: usize = 16 * 1024;
/// Largest response head.
const MAX_HEAD: usize = 8 * 1024;
/// Longest script URL in an answer (it goes into option 67).
pub(crate) const MAX_URL: usize = 255;
/// Lookups waiting for a worker; a miss that finds the queue full is dropped and counted.
const QUEUE: usize = 256;
/// Threads that talk to the handler (each one exchange at a time).
const WORKERS: usize = 4;
/// How long a failed lookup's fallback (static policy) is kept before the client's next
/// request asks the handler again.
pub(crate) const FAILURE_TTL: Duration = Duration::from_secs(10);
/// A queued or in-flight lookup older than this no longer stops a new one for its client.
const PENDING_LIMIT: Duration = Duration::from_secs(60);
/// The cache is split by MAC so the DHCP loop, HTTP loops and workers rarely meet on a lock.
const SHARDS: usize = 16;
/// At most one failure line per this long (with how many were held back).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `boot.hook-*` in the configuration: taken out of `[boot]` before the engine's
/// `BootPolicy` is read (src/config.rs), since the engine knows nothing of the hook.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct HookConfig {
    /// The handler, `http://host[:port]/path`. Unset: no hook.
    pub hook_url: Option<String>,
    /// Sent as `Authorization: Bearer ...` when set.
    pub hook_token: Option<String>,
    /// The whole exchange (connect, request, answer) must finish within this.
    pub hook_timeout_ms: u64,
    /// How long a decision is kept.
    pub hook_cache_ttl_s: u64,
    /// Clients whose decision is kept at most; the oldest go first.
    pub hook_cache_size: usize,
    /// Lookups started per second at most (also the burst).
    pub hook_rate: u32,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            hook_url: None,
            hook_token: None,
            hook_timeout_ms: 500,
            hook_cache_ttl_s: 300,
            hook_cache_size: 65_536,
            hook_rate: 50,
        }
    }
}

impl fmt::Debug for HookConfig {
    // The token never reaches a log; a digest still tells a reload that it changed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use sha2::Digest as _;
        let token = self.hook_token.as_ref().map(|t| {
            let d = sha2::Sha256::digest(t.as_bytes());
            format!("sha256:{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
        });
        f.debug_struct("HookConfig")
            .field("hook_url", &self.hook_url)
            .field("hook_token", &token)
            .field("hook_timeout_ms", &self.hook_timeout_ms)
            .field("hook_cache_ttl_s", &self.hook_cache_ttl_s)
            .field("hook_cache_size", &self.hook_cache_size)
            .field("hook_rate", &self.hook_rate)
            .finish()
    }
}

impl HookConfig {
    /// Every key of `[boot]` that belongs here.
    pub const KEYS: &[&str] = &[
        "hook-url",
        "hook-token",
        "hook-timeout-ms",
        "hook-cache-ttl-s",
        "hook-cache-size",
        "hook-rate",
    ];

    /// What is wrong with the values, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(url) = &self.hook_url
            && let Err(e) = Target::parse(url)
        {
            out.push(("hook-url", format!("boot.hook-url {url:?}: {e}")));
        }
        if let Some(t) = &self.hook_token
            && (t.is_empty() || t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            out.push((
                "hook-token",
                "boot.hook-token: 1 to 4096 visible ASCII characters (no spaces)".to_owned(),
            ));
        }
        let ranges: [(&'static str, u64, u64, u64); 4] = [
            ("hook-timeout-ms", self.hook_timeout_ms, 1, 10_000),
            ("hook-cache-ttl-s", self.hook_cache_ttl_s, 1, 7 * 86_400),
            (
                "hook-cache-size",
                u64::try_from(self.hook_cache_size).unwrap_or(u64::MAX),
                1,
                1 << 20,
            ),
            ("hook-rate", u64::from(self.hook_rate), 1, 10_000),
        ];
        for (key, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                out.push((key, format!("boot.{key} = {v}: give {lo} to {hi}")));
            }
        }
        out
    }
}

/// Where the handler is, from `boot.hook-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// As written (a name, an IPv4 address or a bracketed IPv6 one), for `Host` and lookup.
    host: String,
    port: u16,
    /// Path and query.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        if url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("at most 2048 visible ASCII characters".into());
        }
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(
                    "https is not supported for the hook: give http:// (a handler on \
                            this host or a trusted network)"
                        .into(),
                );
            }
            _ => return Err("give http://host[:port]/path".into()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if path.contains('#') || authority.contains('@') {
            return Err("no fragment and no user:password@ (use boot.hook-token)".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "not an IPv6 address between [ ]")?;
            (format!("[{addr}]"), after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
        {
            return Err("no host name or address".into());
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port is not 1 to 65535")?,
        };
        Ok(Self { host, port, path })
    }

    fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        Ok((host, self.port).to_socket_addrs()?.collect())
    }
}

/// What the handler decided for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The static policy (the handler said `default`, or the lookup failed).
    Default,
    /// Send this client nothing.
    Ignore,
    /// Boot as this says: `record` carries the loader, entry and variables as a registry
    /// record would (its MAC is the client's), `script_url` replaces the policy's for iPXE.
    Boot {
        record: Box<MachineRecord>,
        script_url: Option<String>,
    },
}

/// The answer as the handler writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Answer {
    action: Action,
    #[serde(default)]
    loader: Option<String>,
    #[serde(default)]
    script_url: Option<String>,
    #[serde(default)]
    entry: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Boot,
    Ignore,
    Default,
}

/// Checks an answer body for `mac`: the verdict, or why it is refused. `entries` are the
/// ids of `[[menu.entries]]`.
pub(crate) fn parse_answer(
    body: &[u8],
    mac: MacAddr,
    entries: &BTreeSet<String>,
) -> Result<Verdict, String> {
    if body.len() > MAX_ANSWER {
        return Err(format!(
            "answer of {} bytes (at most {MAX_ANSWER})",
            body.len()
        ));
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("answer is not a decision: {e}"))?;
    let boot_fields = a.loader.is_some()
        || a.script_url.is_some()
        || a.entry.is_some()
        || !a.variables.is_empty();
    match a.action {
        Action::Ignore | Action::Default if boot_fields => Err(format!(
            "action {:?} takes no loader, script-url, entry or variables",
            a.action
        )),
        Action::Ignore => Ok(Verdict::Ignore),
        Action::Default => Ok(Verdict::Default),
        Action::Boot => {
            if let Some(u) = &a.script_url
                && !plain_url(u)
            {
                return Err(format!(
                    "script-url {u:?}: an http:// or https:// URL of at most {MAX_URL} plain \
                     characters"
                ));
            }
            // The registry API's own checks, so a decision is held to a record's rules.
            let body = crate::web::machines::MachineBody {
                loader: a.loader,
                entry: a.entry,
                variables: a.variables,
                ..Default::default()
            };
            let record = body.into_record(Some(MachineKey::Mac(mac)), Some(entries))?;
            Ok(Verdict::Boot {
                record: Box::new(record),
                script_url: a.script_url.filter(|u| !u.is_empty()),
            })
        }
    }
}

/// A script URL iPXE takes from the DHCP reply as it is: no spaces, quotes, `${` or control
/// characters.
fn plain_url(u: &str) -> bool {
    u.len() <= MAX_URL
        && (u.starts_with("http://") || u.starts_with("https://"))
        && u.len() > "https://".len()
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!&()*+,;=%".contains(&b))
}

/// The JSON the handler receives for a client.
pub(crate) fn facts_json(facts: &ClientFacts, request: &DhcpRepr) -> Vec<u8> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let options = &request.options;
    let message = match options.message_type {
        Some(MessageType::Discover) => "DISCOVER",
        Some(MessageType::Request) => "REQUEST",
        Some(MessageType::Inform) => "INFORM",
        _ => "OTHER",
    };
    let v = serde_json::json!({
        "mac": facts.mac.to_string(),
        "uuid": facts.uuid.map(|u| u.to_string()),
        "arch": facts.arch,
        "ipxe": facts.ipxe,
        "http-client": facts.http_client,
        "relay": facts.relay.map(|r| r.to_string()),
        "client-ip": facts.client_ip.map(|r| r.to_string()),
        "vendor-class": options.vendor_class.as_deref().map(text),
        "user-class": options.user_classes().into_iter().map(text).collect::<Vec<_>>(),
        "message": message,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

#[derive(Debug)]
enum Slot {
    /// A lookup is queued or in flight.
    Pending,
    Ready(Arc<Verdict>),
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    expires: Instant,
    seq: u64,
}

/// One shard of the cache: a map and the order entries were written in (oldest first; stale
/// positions are skipped), for eviction.
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<MacAddr, Entry>,
    order: VecDeque<(MacAddr, u64)>,
    seq: u64,
}

impl Shard {
    /// Writes `mac`'s entry, evicting the oldest when the shard holds `cap`; true if one was.
    fn put(&mut self, mac: MacAddr, slot: Slot, expires: Instant, cap: usize) -> bool {
        let mut evicted = false;
        if !self.map.contains_key(&mac) {
            while self.map.len() >= cap {
                let Some((old, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&old);
                    evicted = true;
                }
            }
        }
        self.seq += 1;
        let seq = self.seq;
        self.map.insert(mac, Entry { slot, expires, seq });
        self.order.push_back((mac, seq));
        // Rewrites leave stale positions behind: drop them before they outgrow the map.
        if self.order.len() > 2 * cap + 64 {
            let map = &self.map;
            self.order
                .retain(|(m, s)| map.get(m).is_some_and(|e| e.seq == *s));
        }
        evicted
    }
}

/// A token bucket: `rate` per second, at most `rate` at once.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Job {
    mac: MacAddr,
    body: Vec<u8>,
}

/// Failures logged at most once per [`LOG_EVERY`].
#[derive(Debug)]
struct FailureLog {
    last: Option<Instant>,
    held_back: u64,
}

/// The hook: its cache, queue and workers. Shared by every loop (`Arc`).
pub(crate) struct Hook {
    target: Target,
    token: Option<String>,
    timeout: Duration,
    ttl: Duration,
    shard_cap: usize,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    bucket: Mutex<Bucket>,
    queue: SyncSender<Job>,
    metrics: Arc<Metrics>,
    /// The menu's entry ids now (they change on reload).
    entries: Box<dyn Fn() -> BTreeSet<String> + Send + Sync>,
    failures: Mutex<FailureLog>,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hook {
    /// Starts the workers for `config` (whose `hook_url` is set and checked). `None` without a
    /// hook URL.
    pub(crate) fn start(
        config: &HookConfig,
        metrics: Arc<Metrics>,
        entries: Box<dyn Fn() -> BTreeSet<String> + Send + Sync>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = &config.hook_url else {
            return Ok(None);
        };
        let target = Target::parse(url).map_err(|e| anyhow::anyhow!("boot.hook-url: {e}"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let rate = f64::from(config.hook_rate.max(1));
        let hook = Arc::new(Self {
            target,
            token: config.hook_token.clone(),
            timeout: Duration::from_millis(config.hook_timeout_ms.max(1)),
            ttl: Duration::from_secs(config.hook_cache_ttl_s.max(1)),
            shard_cap: config.hook_cache_size.max(1).div_ceil(SHARDS),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            bucket: Mutex::new(Bucket {
                tokens: rate,
                last: Instant::now(),
                rate,
            }),
            queue: tx,
            metrics,
            entries,
            failures: Mutex::new(FailureLog {
                last: None,
                held_back: 0,
            }),
        });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            // The workers hold the hook weakly: it goes with the server, and so do they
            // (the queue's sender is the hook's; when it drops, `recv` fails).
            let weak = Arc::downgrade(&hook);
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("zpxe-hook-{i}"))
                .spawn(move || worker(&weak, &rx))
                .map_err(|e| anyhow::anyhow!("starting a hook worker: {e}"))?;
        }
        tracing::info!(
            url = %url,
            timeout_ms = config.hook_timeout_ms,
            cache_ttl_s = config.hook_cache_ttl_s,
            cache_size = config.hook_cache_size,
            rate = config.hook_rate,
            "request-handler hook: decisions by the handler, static policy meanwhile"
        );
        Ok(Some(hook))
    }

    fn shard(&self, mac: MacAddr) -> &Mutex<Shard> {
        let i = usize::try_from(self.hasher.hash_one(mac) % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// The DHCP path: the cached decision for this client, or `None` (static policy) after
    /// queueing a lookup on a miss. Never blocks on the handler.
    pub(crate) fn consult(&self, facts: &ClientFacts, request: &DhcpRepr) -> Option<Arc<Verdict>> {
        let now = Instant::now();
        let mac = facts.mac;
        {
            let shard = lock(self.shard(mac));
            if let Some(e) = shard.map.get(&mac)
                && e.expires > now
            {
                return match &e.slot {
                    Slot::Ready(v) => {
                        Metrics::add(&self.metrics.hook_cache_hits_total, 1);
                        Some(Arc::clone(v))
                    }
                    Slot::Pending => None,
                };
            }
        }
        if !lock(&self.bucket).take(now) {
            Metrics::add(&self.metrics.hook_rate_limited_total, 1);
            return None;
        }
        // Pending first, so a worker that answers at once is not overwritten by it.
        let seq = {
            let mut shard = lock(self.shard(mac));
            if shard.put(mac, Slot::Pending, now + PENDING_LIMIT, self.shard_cap) {
                Metrics::add(&self.metrics.hook_cache_evicted_total, 1);
            }
            shard.seq
        };
        let job = Job {
            mac,
            body: facts_json(facts, request),
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Metrics::add(&self.metrics.hook_queue_dropped_total, 1);
                let mut shard = lock(self.shard(mac));
                if shard.map.get(&mac).is_some_and(|e| e.seq == seq) {
                    shard.map.remove(&mac);
                }
            }
        }
        None
    }

    /// The script path: the cached decision for `mac`, if there is one (never queues).
    pub(crate) fn cached(&self, mac: MacAddr) -> Option<Arc<Verdict>> {
        let shard = lock(self.shard(mac));
        let e = shard.map.get(&mac)?;
        match &e.slot {
            Slot::Ready(v) if e.expires > Instant::now() => Some(Arc::clone(v)),
            _ => None,
        }
    }

    fn store(&self, mac: MacAddr, verdict: Verdict, ttl: Duration) {
        let mut shard = lock(self.shard(mac));
        let expires = Instant::now() + ttl;
        if shard.put(mac, Slot::Ready(Arc::new(verdict)), expires, self.shard_cap) {
            Metrics::add(&self.metrics.hook_cache_evicted_total, 1);
        }
    }

    /// One lookup, on a worker thread.
    fn lookup(&self, job: &Job) {
        Metrics::add(&self.metrics.hook_lookups_total, 1);
        let result =
            post(&self.target, self.token.as_deref(), &job.body, self.timeout).and_then(|body| {
                parse_answer(&body, job.mac, &(self.entries)()).map_err(HookError::Answer)
            });
        match result {
            Ok(verdict) => {
                Metrics::add(&self.metrics.hook_decisions_total, 1);
                tracing::debug!(mac = %job.mac, decision = ?verdict, "hook decided");
                self.store(job.mac, verdict, self.ttl);
            }
            Err(e) => {
                let counter = if matches!(e, HookError::Timeout) {
                    &self.metrics.hook_timeouts_total
                } else {
                    &self.metrics.hook_errors_total
                };
                Metrics::add(counter, 1);
                self.log_failure(job.mac, &e);
                self.store(job.mac, Verdict::Default, FAILURE_TTL.min(self.ttl));
            }
        }
    }

    fn log_failure(&self, mac: MacAddr, e: &HookError) {
        let now = Instant::now();
        let mut f = lock(&self.failures);
        if f.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            f.held_back += 1;
            return;
        }
        let held_back = std::mem::take(&mut f.held_back);
        f.last = Some(now);
        drop(f);
        tracing::warn!(
            %mac,
            error = %e,
            held_back,
            "hook lookup failed, static policy for this client"
        );
    }
}

/// One lookup now, on the caller's thread, within `boot.hook-timeout-ms`: what the handler
/// decides for this client, or why it could not (the server then uses the static policy).
/// For `zpxe explain` only: the data path never waits on the handler.
pub(crate) fn ask_now(
    config: &HookConfig,
    facts: &ClientFacts,
    request: &DhcpRepr,
    entries: &BTreeSet<String>,
) -> Result<Verdict, String> {
    let url = config.hook_url.as_deref().ok_or("no boot.hook-url")?;
    let target = Target::parse(url).map_err(|e| format!("boot.hook-url: {e}"))?;
    let timeout = Duration::from_millis(config.hook_timeout_ms.max(1));
    let body = post(
        &target,
        config.hook_token.as_deref(),
        &facts_json(facts, request),
        timeout,
    )
    .map_err(|e| e.to_string())?;
    parse_answer(&body, facts.mac, entries)
}

fn worker(hook: &std::sync::Weak<Hook>, rx: &Mutex<Receiver<Job>>) {
    loop {
        // One worker waits on the queue at a time; the others wait for the lock.
        let job = match lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let Some(hook) = hook.upgrade() else { return };
        hook.lookup(&job);
    }
}

#[derive(Debug)]
enum HookError {
    Timeout,
    Io(io::Error),
    Status(String),
    Http(&'static str),
    Answer(String),
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookError::Timeout => f.write_str("no answer within boot.hook-timeout-ms"),
            HookError::Io(e) => write!(f, "cannot reach the handler: {e}"),
            HookError::Status(s) => write!(f, "the handler answered {s:?}"),
            HookError::Http(s) => write!(f, "malformed HTTP answer: {s}"),
            HookError::Answer(s) => f.write_str(s),
        }
    }
}

fn io_error(e: io::Error) -> HookError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HookError::Timeout,
        _ => HookError::Io(e),
    }
}

/// POSTs `body` to the handler and returns the answer body, all within `timeout`.
fn post(
    target: &Target,
    token: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, HookError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(HookError::Timeout)
    };
    let addrs = target.addrs().map_err(HookError::Io)?;
    let mut stream = None;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(io_error(e)),
        (None, None) => {
            return Err(HookError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                "the host name has no address",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: zpxe/{}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        target.path,
        target.host_header(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    stream.set_write_timeout(Some(left()?)).map_err(io_error)?;
    stream.write_all(&out).map_err(io_error)?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let mut need: Option<(usize, Option<usize>)> = None;
    loop {
        if let Some((head_len, Some(len))) = need
            && buf.len() >= head_len + len
        {
            buf.truncate(head_len + len);
            break;
        }
        stream.set_read_timeout(Some(left()?)).map_err(io_error)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        if n == 0 {
            match need {
                // Without Content-Length the body ends with the connection.
                Some((_, None)) => break,
                Some(_) => return Err(HookError::Http("connection closed inside the body")),
                None => return Err(HookError::Http("connection closed inside the head")),
            }
        }
        buf.extend_from_slice(&chunk[..n]);
        if need.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head_len = end + 4;
                let len = parse_head(&buf[..end])?;
                need = Some((head_len, len));
            } else if buf.len() > MAX_HEAD {
                return Err(HookError::Http("head too long"));
            }
        }
        if let Some((head_len, _)) = need
            && buf.len() - head_len > MAX_ANSWER
        {
            return Err(HookError::Answer(format!(
                "answer longer than {MAX_ANSWER} bytes"
            )));
        }
    }
    let head_len = need.map_or(buf.len(), |(h, _)| h);
    Ok(buf.split_off(head_len))
}

/// Checks the status line and headers; the body's length when the head gives it.
fn parse_head(head: &[u8]) -> Result<Option<usize>, HookError> {
    let head = std::str::from_utf8(head).map_err(|_| HookError::Http("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HookError::Http("not an HTTP/1.x status line"));
    }
    if code != "200" {
        let shown: String = status.chars().take(80).collect();
        return Err(HookError::Status(shown));
    }
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(HookError::Http("header without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| HookError::Http("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HookError::Http("two different Content-Lengths"));
            }
            if n > MAX_ANSWER {
                return Err(HookError::Answer(format!(
                    "answer of {n} bytes (at most {MAX_ANSWER})"
                )));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HookError::Http(
                "Transfer-Encoding is not supported: answer with a Content-Length",
            ));
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    fn entries() -> BTreeSet<String> {
        ["win11".to_owned(), "shell".to_owned()].into()
    }

    #[test]
    fn answers_are_checked_strictly() {
        let ok = parse_answer(
            br#"{"action":"boot","loader":"custom/ipxe.efi","script-url":"http://10.0.0.1:8050/x.ipxe?mac=1","entry":"win11","variables":{"site":"lab-2"}}"#,
            MAC,
            &entries(),
        )
        .unwrap();
        let Verdict::Boot { record, script_url } = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(record.mac, Some(MAC));
        assert_eq!(record.loader.as_deref(), Some("custom/ipxe.efi"));
        assert_eq!(record.entry.as_deref(), Some("win11"));
        assert_eq!(record.variables["site"], "lab-2");
        assert_eq!(
            script_url.as_deref(),
            Some("http://10.0.0.1:8050/x.ipxe?mac=1")
        );
        assert_eq!(
            parse_answer(br#"{"action":"ignore"}"#, MAC, &entries()),
            Ok(Verdict::Ignore)
        );
        assert_eq!(
            parse_answer(br#"{"action":"default"}"#, MAC, &entries()),
            Ok(Verdict::Default)
        );
        let long = format!(
            r#"{{"action":"boot","variables":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_ANSWER)
        );
        let bad: &[(&[u8], &str)] = &[
            (b"", "not a decision"),
            (b"[]", "not a decision"),
            (br#"{"action":"reboot"}"#, "not a decision"),
            (br#"{"loader":"x.efi"}"#, "not a decision"),
            (br#"{"action":"boot","bogus":1}"#, "not a decision"),
            (br#"{"action":"ignore","loader":"x.efi"}"#, "takes no"),
            (br#"{"action":"boot","loader":"../etc/passwd"}"#, "loader"),
            (br#"{"action":"boot","loader":"/abs.efi"}"#, "loader"),
            (br#"{"action":"boot","entry":"nope"}"#, "not an id"),
            (
                br#"{"action":"boot","variables":{"x":"${net0/ip}"}}"#,
                "variable x",
            ),
            (
                br#"{"action":"boot","variables":{"x":"a\nchain evil"}}"#,
                "variable x",
            ),
            (
                br#"{"action":"boot","variables":{"bad name":"1"}}"#,
                "variable name",
            ),
            (
                br#"{"action":"boot","script-url":"tftp://x/y"}"#,
                "script-url",
            ),
            (
                br#"{"action":"boot","script-url":"http://a/b c"}"#,
                "script-url",
            ),
            (
                br#"{"action":"boot","script-url":"http://a/${x}"}"#,
                "script-url",
            ),
            (long.as_bytes(), "at most"),
        ];
        for (body, want) in bad {
            let e = parse_answer(body, MAC, &entries()).unwrap_err();
            assert!(
                e.contains(want),
                "{:?}: {e:?} lacks {want:?}",
                String::from_utf8_lossy(body)
            );
        }
        let url = format!("http://h/{}", "a".repeat(MAX_URL));
        let e = parse_answer(
            format!(r#"{{"action":"boot","script-url":"{url}"}}"#).as_bytes(),
            MAC,
            &entries(),
        )
        .unwrap_err();
        assert!(e.contains("script-url"), "{e}");
    }

    #[test]
    fn hook_urls_are_checked() {
        let t = Target::parse("http://127.0.0.1:9000/decide?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/decide?x=1")
        );
        let t = Target::parse("http://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 80));
        assert_eq!(Target::parse("http://hooks.lan").unwrap().path, "/");
        for bad in [
            "https://h/x",
            "ftp://h/x",
            "h/x",
            "http://",
            "http://h:0/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://h/a#b",
            "http://h/a b",
            "http://[zz]/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let mut c = HookConfig {
            hook_url: Some("http://127.0.0.1:9/d".into()),
            ..HookConfig::default()
        };
        assert!(c.problems().is_empty());
        c.hook_timeout_ms = 0;
        c.hook_rate = 0;
        c.hook_token = Some("two words".into());
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["hook-token", "hook-timeout-ms", "hook-rate"]);
        // The token is never printed.
        c.hook_token = Some("s3cret".into());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let mut s = Shard::default();
        let far = Instant::now() + Duration::from_secs(60);
        for i in 0..10u8 {
            s.put(MacAddr([0, 0, 0, 0, 0, i]), Slot::Pending, far, 4);
        }
        assert_eq!(s.map.len(), 4);
        assert!(s.map.contains_key(&MacAddr([0, 0, 0, 0, 0, 9])));
        assert!(!s.map.contains_key(&MacAddr([0, 0, 0, 0, 0, 5])));
        // Rewriting one client many times leaves the order bounded.
        for _ in 0..1000 {
            s.put(MacAddr([0, 0, 0, 0, 0, 9]), Slot::Pending, far, 4);
        }
        assert!(s.order.len() <= 2 * 4 + 64 + 1, "{}", s.order.len());
        assert_eq!(s.map.len(), 4);
    }

    #[test]
    fn the_bucket_limits_lookups_per_second() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 3.0,
            last: t0,
            rate: 3.0,
        };
        let taken = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(taken, 3);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.take(t1)).count(), 3);
    }

    #[test]
    fn answer_heads_are_checked() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5").unwrap(),
            Some(5)
        );
        assert_eq!(parse_head(b"HTTP/1.0 200 OK").unwrap(), None);
        assert!(matches!(
            parse_head(b"HTTP/1.1 500 Oops"),
            Err(HookError::Status(_))
        ));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2").is_err());
        assert!(parse_head(b"SSH-2.0").is_err());
    }
}
