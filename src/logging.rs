//! Logging: `[log]` in the configuration, the subscriber, and the rate limit on refusal lines.
//!
//! Refusals ("why won't this machine PXE?") are logged at info level, but a LAN can send a
//! refused request as often as it likes: each client's refusal is logged at most once per
//! [`REPEAT`], and at most [`BURST`] refusal lines a second leave each event loop in all. What
//! is held back is counted and the count rides on the next line that is logged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct LogSection {
    /// `text` (one line per event, for people and journald) or `json` (one object per line).
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the process's subscriber: `RUST_LOG` if set, else `default_level`, on stderr.
pub fn init(default_level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person at a terminal: journald and files get plain text.
        LogFormat::Text => builder
            .with_ansi(
                std::env::var_os("NO_COLOR").is_none()
                    && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )
            .init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// How long one client's refusal stays unlogged after it was logged once. Firmware retries a
/// DISCOVER after about 4, 8 and 16 s: one line per try would say nothing new.
pub const REPEAT: Duration = Duration::from_secs(30);
/// Refusal lines an event loop logs in one second at most.
pub const BURST: u32 = 20;
/// Clients remembered for [`REPEAT`]; past it the oldest are forgotten.
const REMEMBERED: usize = 4096;

/// The limiter of one kind of refusal on one thread.
#[derive(Debug)]
pub struct RefusalLimiter {
    second: Instant,
    in_second: u32,
    last: HashMap<u64, Instant>,
    held_back: u64,
}

impl RefusalLimiter {
    pub fn new(now: Instant) -> Self {
        Self {
            second: now,
            in_second: 0,
            last: HashMap::new(),
            held_back: 0,
        }
    }

    /// Whether to log the refusal of `key` now: `Some(n)` with the lines held back since the
    /// last one logged, `None` to stay quiet (counted).
    pub fn allow(&mut self, key: u64, now: Instant) -> Option<u64> {
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.in_second = 0;
        }
        let recent = self
            .last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < REPEAT);
        if recent || self.in_second >= BURST {
            self.held_back += 1;
            return None;
        }
        if self.last.len() >= REMEMBERED {
            self.last.retain(|_, t| now.duration_since(*t) < REPEAT);
            if self.last.len() >= REMEMBERED {
                self.last.clear();
            }
        }
        self.last.insert(key, now);
        self.in_second += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

thread_local! {
    static LIMITERS: RefCell<HashMap<&'static str, RefusalLimiter>> = RefCell::new(HashMap::new());
}

/// Whether this thread logs a refusal of kind `kind` (`"dhcp"`, `"tftp"`) for client `key`
/// now; see [`RefusalLimiter::allow`].
pub fn allow_refusal(kind: &'static str, key: impl Hash) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let key = h.finish();
    let now = Instant::now();
    LIMITERS.with(|l| {
        l.borrow_mut()
            .entry(kind)
            .or_insert_with(|| RefusalLimiter::new(now))
            .allow(key, now)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_client_per_repeat_and_a_burst_cap() {
        let t0 = Instant::now();
        let mut l = RefusalLimiter::new(t0);
        assert_eq!(l.allow(1, t0), Some(0));
        // The same client's retries stay quiet until REPEAT has passed.
        for s in [4, 8, 16] {
            assert_eq!(l.allow(1, t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(l.allow(1, t0 + REPEAT), Some(3));

        // A flood of distinct clients: BURST lines a second, the rest counted.
        let t1 = t0 + REPEAT + Duration::from_secs(5);
        let logged = (100..1100u64).filter(|k| l.allow(*k, t1).is_some()).count();
        assert_eq!(logged, BURST as usize);
        let next = t1 + Duration::from_secs(1);
        assert_eq!(l.allow(5000, next), Some(1000 - u64::from(BURST)));
    }

    #[test]
    fn remembered_clients_stay_bounded() {
        let t0 = Instant::now();
        let mut l = RefusalLimiter::new(t0);
        for k in 0..(REMEMBERED as u64 * 3) {
            let now = t0 + Duration::from_secs(k);
            l.allow(k, now);
            assert!(l.last.len() <= REMEMBERED);
        }
    }

    #[test]
    fn log_format_parses() {
        #[derive(Deserialize)]
        struct Root {
            log: LogSection,
        }
        let r: Root = toml::from_str("[log]\nformat = \"json\"\n").expect("json");
        assert_eq!(r.log.format, LogFormat::Json);
        assert!(toml::from_str::<Root>("[log]\nformat = \"xml\"\n").is_err());
        assert!(toml::from_str::<Root>("[log]\nlevel = \"x\"\n").is_err());
    }
}
