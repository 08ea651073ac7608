//! The TOML configuration: one section per concern, every unknown key an error, every problem
//! reported with file, line and column.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Config {
    pub server: ServerSection,
    pub ports: PortsSection,
    pub services: ServicesSection,
    /// How zpxe takes part in DHCP (proxy beside the site's server, or 4011 only).
    pub dhcp: DhcpSection,
    /// TFTP protocol settings (the engine's).
    pub tftp: zpxe_engine::tftp::TftpServerConfig,
    /// Which loader or script each client gets (proxyDHCP).
    pub boot: zpxe_engine::dhcp::BootPolicy,
    /// HTTP protocol settings.
    pub http: zpxe_engine::http::HttpConfig,
    /// The generated iPXE boot menu.
    pub menu: zpxe_engine::http::BootMenu,
    /// HTTPS for the boot service (iPXE can fetch over HTTPS; 2PXE serves iPXE over HTTPS only).
    pub tls: TlsSection,
    /// Windows Firewall rules zpxe creates itself (src/firewall.rs).
    pub firewall: FirewallSection,
    /// Boot timelines and the machine registry (src/db).
    pub database: crate::db::DatabaseConfig,
    /// Log format (src/logging.rs).
    pub log: crate::logging::LogSection,
    /// The files this configuration was read from, for positions in problems.
    #[serde(skip)]
    pub sources: Sources,
    /// Who may use the web service: bearer token, allowed networks (src/web/access.rs).
    pub web: crate::web::WebConfig,
    /// `boot.hook-*`: the request-handler hook (src/serve/hook.rs), read apart from the
    /// engine's `[boot]` (see [`take_hook_keys`]).
    #[serde(skip)]
    pub hook: crate::serve::HookConfig,
    /// `[[machine]]`: machine registry records kept in the configuration (zpxe.toml and
    /// conf.d/), beside the database's; checked like an API record, applied on reload.
    pub machine: Vec<Spanned<FileMachine>>,
}

/// One `[[machine]]` table: the fields of an API record (src/web/machines.rs), without the
/// database's state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct FileMachine {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    pub name: String,
    pub group: String,
    /// A `[[menu.entries]]` id booted directly.
    pub entry: Option<String>,
    /// A loader replacing the policy's, for firmware not yet running iPXE.
    pub loader: Option<String>,
    /// `set` in the machine's iPXE script.
    pub variables: std::collections::BTreeMap<String, String>,
    /// After a successful deployment, boot from local disk.
    pub boot_once: bool,
}

/// `[firewall]`: whether zpxe manages its Windows Firewall rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct FirewallSection {
    /// Create the rules at start (and at `service install`), remove them at uninstall. Absent:
    /// true on Windows. Other systems have no firewall zpxe manages: there the key is ignored
    /// (`zpxe firewall print` gives the rules to add by hand).
    pub manage: Option<bool>,
}

impl FirewallSection {
    /// Whether zpxe manages the firewall here.
    pub fn manage(&self) -> bool {
        cfg!(windows) && self.manage.unwrap_or(true)
    }
}

/// `[tls]`: a certificate and key turn on HTTPS for the boot service on its own port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert: Option<Spanned<PathBuf>>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<Spanned<PathBuf>>,
    /// The HTTPS port.
    pub port: u16,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            port: 8443,
        }
    }
}

/// Where files come from and where the server listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct ServerSection {
    /// The image root: every file served over TFTP and HTTP lives below it.
    pub root: Spanned<PathBuf>,
    /// Addresses to listen on; empty = all IPv4 addresses.
    pub listen: Vec<Spanned<String>>,
    /// Network devices to bind DHCP to (Linux `SO_BINDTODEVICE`); empty = all.
    pub interfaces: Vec<String>,
    /// Match file names ignoring ASCII case (Windows clients).
    pub case_insensitive: bool,
    /// Hold read leases on mapped files so in-place rewrites wait for transfers to end.
    pub leases: bool,
    /// Event loops (threads); 0 = one per core.
    pub threads: usize,
    /// One loop holds the listening sockets and hands connections and TFTP requests to the
    /// others, instead of each loop listening on the ports itself (`SO_REUSEPORT`). Always so
    /// on Windows, which cannot share a port between sockets.
    pub loop_handoff: bool,
    /// The address to name in replies when a request's arrival address is unknown.
    pub advertise: Option<Spanned<String>>,
    /// Send TFTP windows with UDP segmentation offload where the kernel has it. Turn off for
    /// paths that mangle large UDP sends (some tunnels and drivers).
    pub udp_gso: bool,
    /// On SIGTERM or SIGINT, how long transfers under way may take to finish (milliseconds)
    /// before they are cut; a second signal cuts them at once.
    pub drain_timeout_ms: u64,
    /// How long (microseconds) a boot loop that has just gone idle keeps polling for I/O
    /// before it sleeps in the kernel, while traffic is dense (the spin adapts, down to none on
    /// an idle server). Waking a sleeping thread costs a cross-CPU interrupt, up to about a
    /// millisecond on a busy or virtual machine; polling keeps the reply latency's tail short
    /// at the cost of about one core while traffic lasts. 0 (the default): sleep at once.
    pub busy_poll_us: u64,
}

/// The longest `server.busy-poll-us`: past it a loop would rather sleep.
pub const MAX_BUSY_POLL_US: u64 = 1000;

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            root: Spanned::new(0..0, default_root()),
            listen: Vec::new(),
            interfaces: Vec::new(),
            case_insensitive: true,
            leases: true,
            threads: 0,
            loop_handoff: !zpxe_platform::LOOPS_SHARE_PORTS,
            advertise: None,
            udp_gso: true,
            drain_timeout_ms: 60_000,
            busy_poll_us: 0,
        }
    }
}

/// Ports, as 2PXE deployments expect them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PortsSection {
    pub dhcp: u16,
    pub pxe: u16,
    pub tftp: u16,
    pub http: u16,
    pub web: u16,
    /// Ports for TFTP transfers, `"LO-HI"`; absent = any ephemeral port.
    pub tftp_range: Option<Spanned<TftpRange>>,
}

impl Default for PortsSection {
    fn default() -> Self {
        Self {
            dhcp: 67,
            pxe: 4011,
            tftp: 69,
            http: 8050,
            web: 8051,
            tftp_range: None,
        }
    }
}

/// Which services run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct ServicesSection {
    pub dhcp: bool,
    pub tftp: bool,
    pub http: bool,
    pub web: bool,
}

impl Default for ServicesSection {
    fn default() -> Self {
        Self {
            dhcp: true,
            tftp: true,
            http: true,
            web: true,
        }
    }
}

/// `[dhcp]`: how zpxe answers PXE clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct DhcpSection {
    pub mode: DhcpMode,
    /// Server mode: one `[[dhcp.pool]]` per subnet (subnet, range, router, dns).
    pub pool: Vec<zpxe_engine::dhcp::server::PoolConfig>,
    /// Server mode: `[[dhcp.reservation]]`, a fixed address per MAC.
    pub reservation: Vec<zpxe_engine::dhcp::server::Reservation>,
    /// Server mode: lease time where a pool gives none (T1 is half of it, T2 seven eighths).
    pub lease_time_secs: u32,
    /// Server mode: how long an offered address is held for its client.
    pub offer_hold_secs: u32,
    /// Server mode: how long an address a client declined (found in use) stays out of the pool.
    pub decline_hold_secs: u32,
    /// Server mode: addresses relay agents forward from when that is not their `giaddr` (a
    /// relayed message is taken only from its `giaddr` or one of these).
    pub relays: Vec<std::net::Ipv4Addr>,
    /// Server mode: before offering an address its client does not hold, send it an ICMP echo
    /// and wait this long for an answer (an answer holds the address out as a DECLINE does);
    /// 0: no check.
    pub conflict_check_ms: u64,
}

impl Default for DhcpSection {
    fn default() -> Self {
        Self {
            mode: DhcpMode::default(),
            pool: Vec::new(),
            reservation: Vec::new(),
            lease_time_secs: 3600,
            offer_hold_secs: 10,
            decline_hold_secs: 600,
            relays: Vec::new(),
            conflict_check_ms: 0,
        }
    }
}

impl DhcpSection {
    /// Server mode's settings: the pools and reservations must be sound; in other modes they
    /// must be absent, so a config meant for server mode never runs as a proxy by mistake.
    fn check(&self) -> Vec<String> {
        if self.mode != DhcpMode::Server {
            if !self.pool.is_empty() || !self.reservation.is_empty() {
                return vec![
                    "[[dhcp.pool]] and [[dhcp.reservation]] are for dhcp.mode = \"server\"; \
                     in proxy and pxe-only modes the site's DHCP server hands out addresses"
                        .to_owned(),
                ];
            }
            if self.conflict_check_ms > 0 {
                return vec![
                    "dhcp.conflict-check-ms is for dhcp.mode = \"server\": in proxy and \
                     pxe-only modes the site's DHCP server chooses the addresses"
                        .to_owned(),
                ];
            }
            return Vec::new();
        }
        let mut problems = zpxe_engine::dhcp::server::DhcpServerConfig::check(
            &self.pool,
            &self.reservation,
            self.lease_time_secs,
        );
        if self.offer_hold_secs == 0 || self.offer_hold_secs > 300 {
            problems.push(format!(
                "dhcp.offer-hold-secs = {}: between 1 and 300",
                self.offer_hold_secs
            ));
        }
        // Clients wait for the offer meanwhile: PXE firmware sends its second DISCOVER about
        // 4 s after the first.
        if self.conflict_check_ms > 3000 {
            problems.push(format!(
                "dhcp.conflict-check-ms = {}: at most 3000 (0 turns the check off)",
                self.conflict_check_ms
            ));
        }
        problems
    }
}

/// `dhcp.mode`: proxy beside the site's DHCP server, 4011 only beside one on this host, or the
/// only DHCP server of the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DhcpMode {
    /// proxyDHCP on UDP 67 and PXE boot server on UDP 4011, beside the site's DHCP server.
    #[default]
    Proxy,
    /// UDP 4011 only: the site's DHCP server runs on this host and owns 67. It sends option 60
    /// "PXEClient" so PXE clients ask this host's 4011 for their boot file (Windows DHCP beside
    /// WDS works this way).
    PxeOnly,
    /// zpxe is the only DHCP server (an isolated imaging network): it hands out addresses from
    /// `[[dhcp.pool]]` and puts the boot answer in the same reply; 4011 is answered too.
    Server,
}

impl DhcpMode {
    /// Whether zpxe binds the DHCP port (67) in this mode.
    pub fn binds_dhcp_port(self) -> bool {
        match self {
            DhcpMode::Proxy | DhcpMode::Server => true,
            DhcpMode::PxeOnly => false,
        }
    }
}

impl TryFrom<String> for DhcpMode {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "proxy" => Ok(DhcpMode::Proxy),
            "pxe-only" => Ok(DhcpMode::PxeOnly),
            "server" => Ok(DhcpMode::Server),
            other => Err(format!(
                "dhcp.mode {other:?} is not a mode: expected \"proxy\", \"pxe-only\" or \
                 \"server\""
            )),
        }
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// An inclusive port range for TFTP transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// `ports.tftp-range` as read: parsed once, when the file is read. A value that is no range
/// keeps its error, which `validate` reports at its position with every other problem.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub struct TftpRange(Result<PortRange, String>);

impl TftpRange {
    /// The range; `None` when the value was not one (see [`TftpRange::error`]).
    pub fn range(&self) -> Option<PortRange> {
        self.0.as_ref().ok().copied()
    }

    /// Why the value is not a range.
    pub fn error(&self) -> Option<&str> {
        self.0.as_ref().err().map(String::as_str)
    }
}

impl From<String> for TftpRange {
    fn from(text: String) -> Self {
        Self(PortRange::parse(&text))
    }
}

impl From<PortRange> for TftpRange {
    fn from(range: PortRange) -> Self {
        Self(Ok(range))
    }
}

impl PortRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("port range {s:?} is not of the form LO-HI"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} in port range {s:?} is not a port number"))
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo == 0 || lo > hi {
            return Err(format!(
                "port range {s:?} is empty or starts at 0 (LO must be 1..=HI)"
            ));
        }
        Ok(Self { lo, hi })
    }

    /// How many ports the range holds (at least one: `parse` refuses empty ranges).
    pub fn count(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }
}

impl Config {
    /// Parses and validates `text` read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Problems> {
        let config = Self::parse_unchecked(file, text)?;
        let problems = config.validate(file, text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }

    /// Parses `text` without the checks that depend on the machine (paths, ports): for callers
    /// that override values first and validate after. No `conf.d` includes.
    pub fn parse_unchecked(file: &Path, text: &str) -> Result<Self, Problems> {
        parse_files(vec![(file.to_owned(), text.to_owned())])
    }

    /// Reads a configuration file and the `conf.d/*.toml` beside it (see [`include_files`]):
    /// the parsed configuration (not yet validated) and the main file's text.
    pub fn read(file: &Path) -> Result<(Self, String), Problems> {
        let mut files = Vec::new();
        let mut problems = Vec::new();
        for path in std::iter::once(Ok(file.to_owned())).chain(include_files(file)) {
            let read = path.and_then(|path| match std::fs::read_to_string(&path) {
                Ok(text) => Ok((path, text)),
                Err(e) => Err(Problem {
                    file: path,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the configuration: {e}"),
                }),
            });
            match read {
                Ok(f) => files.push(f),
                Err(p) => problems.push(p),
            }
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let config = parse_files(files)?;
        let text = config.sources.main_text().to_owned();
        Ok((config, text))
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(file: &Path) -> Result<Self, Problems> {
        let (config, text) = Self::read(file)?;
        let problems = config.validate(file, &text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }

    /// Checks what the types alone cannot: that paths exist, addresses parse, ports differ.
    /// Positions come from the files the configuration was read from; `file` and `text` name
    /// the source when it was built otherwise (defaults and flags).
    pub fn validate(&self, file: &Path, text: &str) -> Vec<Problem> {
        let single;
        let sources = if self.sources.is_empty() {
            single = Sources::single(file, text);
            &single
        } else {
            &self.sources
        };
        let mut out = Vec::new();
        let mut at = |span: Range<usize>, message: String| out.push(sources.problem(span, message));
        let root = &self.server.root;
        if self.services.tftp || self.services.http {
            match std::fs::metadata(root.get_ref()) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => at(
                    root.span(),
                    format!(
                        "server.root {} is not a directory",
                        root.get_ref().display()
                    ),
                ),
                Err(e) => at(
                    root.span(),
                    format!("server.root {}: {e}", root.get_ref().display()),
                ),
            }
        }
        for l in &self.server.listen {
            if l.get_ref().parse::<IpAddr>().is_err() {
                at(
                    l.span(),
                    format!("server.listen {:?} is not an IP address", l.get_ref()),
                );
            }
        }
        if let Some(a) = &self.server.advertise
            && a.get_ref().parse::<IpAddr>().is_err()
        {
            at(
                a.span(),
                format!("server.advertise {:?} is not an IP address", a.get_ref()),
            );
        }
        if let Some(r) = &self.ports.tftp_range
            && let Some(e) = r.get_ref().error()
        {
            at(r.span(), format!("ports.tftp-range: {e}"));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(c), Some(k)) => {
                for f in [c, k] {
                    if let Err(e) = std::fs::metadata(f.get_ref()) {
                        at(f.span(), format!("tls: {}: {e}", f.get_ref().display()));
                    }
                }
            }
            (Some(f), None) | (None, Some(f)) => {
                at(f.span(), "tls: give both cert and key".to_owned());
            }
            (None, None) => {}
        }
        if self.server.busy_poll_us > MAX_BUSY_POLL_US {
            let span = sources.key("server.busy-poll-us").unwrap_or(0..0);
            at(
                span,
                format!(
                    "server.busy-poll-us = {}: at most {MAX_BUSY_POLL_US} (0 turns polling off)",
                    self.server.busy_poll_us
                ),
            );
        }
        if !self.server.loop_handoff && !zpxe_platform::LOOPS_SHARE_PORTS {
            let span = sources.key("server.loop-handoff").unwrap_or(0..0);
            at(
                span,
                "server.loop-handoff = false: this system cannot give several sockets one port \
                 (no SO_REUSEPORT), so one loop listens and hands work to the others: remove \
                 the key or set it to true"
                    .to_owned(),
            );
        }
        if let Err(e) = self.menu.check() {
            let span = match &e {
                zpxe_engine::http::MenuError::BadRule(i, _) => {
                    sources.value(&format!("menu.rules[{i}]"))
                }
                _ => None,
            };
            let span = span.or_else(|| sources.value("menu")).unwrap_or(0..0);
            at(span, format!("menu: {e}"));
        }
        if self.database.enabled {
            for e in self.database.check() {
                let span = if e.starts_with("database url") {
                    self.database.url.span()
                } else {
                    sources.value("database").unwrap_or(0..0)
                };
                at(span, e);
            }
        }
        for (span, e) in self.web.check() {
            at(span, e);
        }
        let udp = [
            (
                "dhcp",
                self.services.dhcp && self.dhcp.mode.binds_dhcp_port(),
                self.ports.dhcp,
            ),
            ("pxe", self.services.dhcp, self.ports.pxe),
            ("tftp", self.services.tftp, self.ports.tftp),
        ];
        let tcp = [
            ("http", self.services.http, self.ports.http),
            ("web", self.services.web, self.ports.web),
        ];
        for set in [&udp[..], &tcp[..]] {
            for (i, (a, on_a, pa)) in set.iter().enumerate() {
                for (b, on_b, pb) in &set[i + 1..] {
                    if *on_a && *on_b && pa == pb {
                        let span = sources.key(&format!("ports.{b}")).unwrap_or(0..0);
                        at(
                            span,
                            format!("ports.{a} and ports.{b} are both {pa}: give each its own"),
                        );
                    }
                }
            }
        }
        for e in self.dhcp.check() {
            let span = sources
                .key("dhcp.pool")
                .or_else(|| sources.key("dhcp.mode"));
            at(span.unwrap_or(0..0), e);
        }
        self.check_more(sources, &mut out);
        out
    }

    /// The TFTP transfer port range, if configured (validated by `parse`).
    pub fn tftp_range(&self) -> Option<PortRange> {
        self.ports
            .tftp_range
            .as_ref()
            .and_then(|r| r.get_ref().range())
    }

    /// The addresses to listen on.
    pub fn listen_addrs(&self) -> Vec<IpAddr> {
        let addrs: Vec<IpAddr> = self
            .server
            .listen
            .iter()
            .filter_map(|l| l.get_ref().parse().ok())
            .collect();
        if addrs.is_empty() {
            vec![IpAddr::from([0, 0, 0, 0])]
        } else {
            addrs
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `server.root` when unset: /srv/zpxe, or %ProgramData%\zpxe\root on Windows (the folder
/// the MSI creates).
pub fn default_root() -> PathBuf {
    #[cfg(windows)]
    {
        crate::winservice::data_dir().join("root")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/srv/zpxe")
    }
}

/// The configuration file `serve`, `check` and `explain` read when given none:
/// /etc/zpxe/zpxe.toml, or %ProgramData%\zpxe\zpxe.toml on Windows.
pub fn default_path() -> PathBuf {
    #[cfg(windows)]
    {
        crate::winservice::data_dir().join("zpxe.toml")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/etc/zpxe/zpxe.toml")
    }
}

/// The files `file` includes: `conf.d/*.toml` in its directory, sorted by name (byte order),
/// hidden files left out. None when there is no such directory.
///
/// How they combine with the main file, in that order: tables are merged key by key; arrays
/// of tables (`[[boot.rule]]`, `[[menu.entries]]`, `[[menu.rules]]`, ...) are appended, so an
/// include adds rules after the main file's; any other key set in two files is an error that
/// names both places.
pub fn include_files(file: &Path) -> Vec<Result<PathBuf, Problem>> {
    let dir = file.parent().unwrap_or(Path::new(".")).join("conf.d");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            return vec![Err(Problem {
                file: dir,
                line: 0,
                column: 0,
                message: format!("cannot read the include directory: {e}"),
            })];
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
                && p.is_file()
        })
        .collect();
    files.sort();
    files.into_iter().map(Ok).collect()
}

/// Where a configuration came from: each file's text at a base offset in one virtual buffer
/// (file after file), so that every span, whichever file it is in, names one place; and the
/// span of every key in the merged document, by dotted path (`ports.http`, `boot.rule[2]`).
#[derive(Debug, Clone, Default)]
pub struct Sources(std::sync::Arc<SourcesInner>);

#[derive(Debug, Default)]
struct SourcesInner {
    files: Vec<SourceFile>,
    /// Dotted path -> (key span, value span).
    keys: std::collections::HashMap<String, (Range<usize>, Range<usize>)>,
    /// The merged document (includes applied) as TOML values, positions left out.
    document: toml::Table,
}

#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    text: String,
    base: usize,
}

impl Sources {
    /// One file, no index of keys (for configurations built from defaults and flags).
    pub fn single(file: &Path, text: &str) -> Self {
        Self(std::sync::Arc::new(SourcesInner {
            files: vec![SourceFile {
                path: file.to_owned(),
                text: text.to_owned(),
                base: 0,
            }],
            keys: Default::default(),
            document: toml::Table::new(),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.0.files.is_empty()
    }

    /// The main file's text (empty when there is none).
    pub fn main_text(&self) -> &str {
        self.0.files.first().map_or("", |f| f.text.as_str())
    }

    /// The files read, main file first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.0.files.iter().map(|f| f.path.as_path())
    }

    /// File, 1-based line and column of a virtual offset.
    pub fn locate(&self, offset: usize) -> (PathBuf, usize, usize) {
        let file = self
            .0
            .files
            .iter()
            .rev()
            .find(|f| f.base <= offset)
            .or(self.0.files.first());
        match file {
            Some(f) => {
                let (line, column) = line_col(&f.text, offset - f.base.min(offset));
                (f.path.clone(), line, column)
            }
            None => (PathBuf::from("command line"), 1, 1),
        }
    }

    /// `file:line:column` of a span's start.
    pub fn position(&self, span: &Range<usize>) -> String {
        let (file, line, column) = self.locate(span.start);
        format!("{}:{line}:{column}", file.display())
    }

    pub fn problem(&self, span: Range<usize>, message: String) -> Problem {
        let (file, line, column) = self.locate(span.start);
        Problem {
            file,
            line,
            column,
            message,
        }
    }

    /// The span of the key at a dotted path (`ports.http`, `menu`, `boot.rule[1]`), wherever
    /// and however it was written (table header, dotted key, inline table).
    pub fn key(&self, path: &str) -> Option<Range<usize>> {
        self.0.keys.get(path).map(|(k, _)| k.clone())
    }

    /// The span of the value at a dotted path.
    pub fn value(&self, path: &str) -> Option<Range<usize>> {
        self.0.keys.get(path).map(|(_, v)| v.clone())
    }

    /// The merged document as written (includes applied), without positions: what a reload
    /// compares key by key. Empty for a configuration built from defaults and flags.
    pub fn document(&self) -> &toml::Table {
        &self.0.document
    }

    /// `file:line:column` of each element of the array at `path`, in order.
    pub fn positions_of(&self, path: &str) -> Vec<String> {
        (0..)
            .map_while(|i| self.value(&format!("{path}[{i}]")))
            .map(|span| self.position(&span))
            .collect()
    }
}

type Tree<'i> = toml::de::DeTable<'i>;

/// A problem found before the sources are indexed; `other` is a second place it names.
struct Pending {
    span: Range<usize>,
    message: String,
    other: Option<Range<usize>>,
}

impl Pending {
    fn new(span: Range<usize>, message: String) -> Self {
        Self {
            span,
            message,
            other: None,
        }
    }
}
type Node<'i> = toml::Spanned<toml::de::DeValue<'i>>;

/// Parses, merges and deserializes `files` (main file first), reporting every problem found.
fn parse_files(files: Vec<(PathBuf, String)>) -> Result<Config, Problems> {
    let mut inner = SourcesInner::default();
    let mut base = 0;
    for (path, text) in files {
        let len = text.len();
        inner.files.push(SourceFile { path, text, base });
        base += len + 1;
    }
    let mut spanned: Vec<Pending> = Vec::new();
    let mut root: Tree<'_> = Tree::new();
    let mut parsed = Vec::new();
    for f in &inner.files {
        let (tree, errors) = toml::de::DeTable::parse_recoverable(&f.text);
        for e in &errors {
            let span = e
                .span()
                .map_or(f.base..f.base, |s| s.start + f.base..s.end + f.base);
            spanned.push(Pending::new(span, e.message().trim().to_owned()));
        }
        if errors.is_empty() {
            parsed.push(shift_table(tree.into_inner(), f.base, 0));
        }
    }
    if spanned.is_empty() {
        for tree in parsed {
            merge(&mut root, tree, "", &mut spanned);
        }
    }
    let config = if spanned.is_empty() {
        let mut doc = root.clone();
        let hook = take_hook_keys(&mut doc, 0..base, &mut spanned);
        let whole = toml::Spanned::new(0..base, doc);
        match deserialize_all(whole) {
            Ok(c) => hook.map(|hook| Config { hook, ..c }),
            Err(errors) => {
                spanned.extend(errors.into_iter().map(|(s, m)| Pending::new(s, m)));
                None
            }
        }
    } else {
        None
    };
    index_keys(&root, "", 0, &mut inner.keys);
    if config.is_some() {
        let whole = toml::Spanned::new(0..base, root);
        inner.document =
            toml::Table::deserialize(toml::de::Deserializer::from(whole)).unwrap_or_default();
    }
    let sources = Sources(std::sync::Arc::new(inner));
    let problems: Vec<Problem> = spanned
        .into_iter()
        .map(|p| {
            let message = match &p.other {
                Some(other) => format!("{} {}", p.message, sources.position(other)),
                None => p.message,
            };
            sources.problem(p.span, message)
        })
        .collect();
    match config {
        Some(mut c) if problems.is_empty() => {
            c.sources = sources;
            Ok(c)
        }
        _ => Err(Problems(problems)),
    }
}

/// Takes `boot.hook-*` out of `doc` (the engine's `BootPolicy` refuses unknown keys) and reads
/// them as the hook's settings; `None` after pushing their problems to `problems`.
fn take_hook_keys(
    doc: &mut Tree<'_>,
    whole: Range<usize>,
    problems: &mut Vec<Pending>,
) -> Option<crate::serve::HookConfig> {
    use serde::Deserialize as _;
    let mut hook = Tree::new();
    if let Some(boot) = doc.get_mut("boot")
        && let toml::de::DeValue::Table(t) = boot.get_mut()
    {
        for key in crate::serve::HookConfig::KEYS {
            if let Some((k, v)) = t.remove_entry(*key) {
                hook.insert(k, v);
            }
        }
    }
    let doc = toml::Spanned::new(whole.clone(), hook);
    match crate::serve::HookConfig::deserialize(toml::de::Deserializer::from(doc)) {
        Ok(h) => Some(h),
        Err(e) => {
            let span = e.span().unwrap_or(whole.start..whole.start);
            problems.push(Pending::new(span, format!("boot: {}", e.message().trim())));
            None
        }
    }
}

/// How deep the walks over a document go (a configuration nests three or four levels; the
/// limit keeps a pathological file from exhausting the stack).
const MAX_DEPTH: usize = 32;

fn shift(node: Node<'_>, by: usize, depth: usize) -> Node<'_> {
    let span = node.span();
    let value = match node.into_inner() {
        toml::de::DeValue::Array(a) if depth < MAX_DEPTH => {
            toml::de::DeValue::Array(a.into_iter().map(|v| shift(v, by, depth + 1)).collect())
        }
        toml::de::DeValue::Table(t) if depth < MAX_DEPTH => {
            toml::de::DeValue::Table(shift_table(t, by, depth + 1))
        }
        other => other,
    };
    toml::Spanned::new(span.start + by..span.end + by, value)
}

fn shift_table(table: Tree<'_>, by: usize, depth: usize) -> Tree<'_> {
    table
        .into_iter()
        .map(|(k, v)| {
            let span = k.span();
            (
                toml::Spanned::new(span.start + by..span.end + by, k.into_inner()),
                shift(v, by, depth),
            )
        })
        .collect()
}

fn is_array_of_tables(node: &Node<'_>) -> bool {
    match node.get_ref() {
        toml::de::DeValue::Array(a) => {
            !a.is_empty()
                && a.iter()
                    .all(|v| matches!(v.get_ref(), toml::de::DeValue::Table(_)))
        }
        _ => false,
    }
}

/// Merges an include into what came before (see [`include_files`]).
fn merge<'i>(into: &mut Tree<'i>, from: Tree<'i>, prefix: &str, problems: &mut Vec<Pending>) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let Some((old_key, _)) = into.get_key_value(key.get_ref().as_ref()) else {
            into.insert(key, value);
            continue;
        };
        let old_key_span = old_key.span();
        let Some(old) = into.get_mut(key.get_ref().as_ref()) else {
            continue;
        };
        if is_array_of_tables(old) && is_array_of_tables(&value) {
            if let toml::de::DeValue::Array(a) = old.get_mut()
                && let toml::de::DeValue::Array(b) = value.into_inner()
            {
                for item in b {
                    a.push(item);
                }
            }
            continue;
        }
        match (old.get_mut(), value.into_inner()) {
            (toml::de::DeValue::Table(a), toml::de::DeValue::Table(b)) => {
                merge(a, b, &path, problems);
            }
            _ => problems.push(Pending {
                span: key.span(),
                message: format!("{path} is set twice: here and at"),
                other: Some(old_key_span),
            }),
        }
    }
}

/// Deserializes the whole document; on failure, each top-level key, each key of a table and
/// each element of an array of tables is tried alone, so every error is reported, not only
/// the first serde meets.
fn deserialize_all(root: toml::Spanned<Tree<'_>>) -> Result<Config, Vec<(Range<usize>, String)>> {
    use serde::Deserialize as _;
    let whole = root.span();
    let first = match Config::deserialize(toml::de::Deserializer::from(root.clone())) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let mut errors = Vec::new();
    narrow(root.get_ref(), &mut Vec::new(), whole.clone(), &mut errors);
    if errors.is_empty() {
        let span = first.span().unwrap_or(whole.start..whole.start);
        errors.push((span, first.message().trim().to_owned()));
    }
    Err(errors)
}

/// One key of `table` at a time, inside the tables on the way to it (`path`).
fn narrow<'i>(
    table: &Tree<'i>,
    path: &mut Vec<(toml::Spanned<toml::de::DeString<'i>>, Range<usize>)>,
    whole: Range<usize>,
    errors: &mut Vec<(Range<usize>, String)>,
) {
    for (key, value) in table {
        let try_alone =
            |value: Node<'i>, path: &[(toml::Spanned<toml::de::DeString<'i>>, Range<usize>)]| {
                use serde::Deserialize as _;
                let mut t = Tree::new();
                t.insert(key.clone(), value);
                for (k, span) in path.iter().rev() {
                    let mut outer = Tree::new();
                    outer.insert(
                        k.clone(),
                        toml::Spanned::new(span.clone(), toml::de::DeValue::Table(t)),
                    );
                    t = outer;
                }
                let doc = toml::Spanned::new(whole.clone(), t);
                Config::deserialize(toml::de::Deserializer::from(doc)).err()
            };
        let Some(error) = try_alone(value.clone(), path) else {
            continue;
        };
        let before = errors.len();
        // Look inside only when the error is not the key's own (an unknown key).
        let inside =
            error.span().is_none_or(|s| s.start != key.span().start) && path.len() < MAX_DEPTH;
        match value.get_ref() {
            _ if !inside => {}
            toml::de::DeValue::Table(inner) if !inner.is_empty() => {
                path.push((key.clone(), value.span()));
                narrow(inner, path, whole.clone(), errors);
                path.pop();
            }
            toml::de::DeValue::Array(items) if is_array_of_tables(value) => {
                for item in items.iter() {
                    let mut one = toml::de::DeArray::new();
                    one.push(item.clone());
                    let alone = toml::Spanned::new(value.span(), toml::de::DeValue::Array(one));
                    if let Some(e) = try_alone(alone, path) {
                        let span = e.span().unwrap_or(item.span());
                        errors.push((span, e.message().trim().to_owned()));
                    }
                }
            }
            _ => {}
        }
        if errors.len() == before {
            let span = error.span().unwrap_or(key.span());
            errors.push((span, error.message().trim().to_owned()));
        }
    }
}

fn index_keys(
    table: &Tree<'_>,
    prefix: &str,
    depth: usize,
    out: &mut std::collections::HashMap<String, (Range<usize>, Range<usize>)>,
) {
    if depth >= MAX_DEPTH {
        return;
    }
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(path.clone(), (key.span(), value.span()));
        index_value(value, &path, depth + 1, out);
    }
}

fn index_value(
    value: &Node<'_>,
    path: &str,
    depth: usize,
    out: &mut std::collections::HashMap<String, (Range<usize>, Range<usize>)>,
) {
    if depth >= MAX_DEPTH {
        return;
    }
    match value.get_ref() {
        toml::de::DeValue::Table(t) => index_keys(t, path, depth, out),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.insert(p.clone(), (item.span(), item.span()));
                index_value(item, &p, depth + 1, out);
            }
        }
        _ => {}
    }
}

impl Config {
    /// Checks beyond single values: ports HTTP and HTTPS would share, TLS files that do not
    /// load, rules that can never match.
    fn check_more(&self, sources: &Sources, out: &mut Vec<Problem>) {
        let mut at = |span: Option<Range<usize>>, message: String| {
            out.push(sources.problem(span.unwrap_or(0..0), message));
        };
        let tls_on = self.tls.cert.is_some() && self.tls.key.is_some();
        if tls_on && self.services.http {
            // Both would bind it (SO_REUSEPORT) and the kernel would split the connections.
            for (name, on, port) in [
                ("ports.http", true, self.ports.http),
                ("ports.web", self.services.web, self.ports.web),
            ] {
                if on && port == self.tls.port {
                    at(
                        sources.key("tls.port").or_else(|| sources.key(name)),
                        format!(
                            "tls.port and {name} are both {port}: HTTPS and HTTP cannot share a \
                             port, give each its own"
                        ),
                    );
                }
            }
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key)
            && std::fs::metadata(cert.get_ref()).is_ok()
            && std::fs::metadata(key.get_ref()).is_ok()
        {
            for (span, e) in check_tls_files(cert, key) {
                at(Some(span), e);
            }
        }
        for (i, rule) in self.boot.rule.iter().enumerate() {
            if let Some(key) = rule.misplaced_action(false) {
                at(
                    sources.key(&format!("boot.rule[{i}].{key}")),
                    format!(
                        "boot.rule[{i}].{key}: a proxyDHCP rule has no {key} (it belongs to \
                         [[menu.rules]])"
                    ),
                );
            }
            if let Some(arch) = rule.named_arch() {
                at(
                    sources
                        .value(&format!("boot.rule[{i}].arch"))
                        .or_else(|| sources.value(&format!("boot.rule[{i}]"))),
                    format!(
                        "boot.rule[{i}].arch: {arch:?} is a name; DHCP clients send their \
                         architecture as a number (option 93: 0 BIOS, 6 IA32 UEFI, 7 and 9 x64 \
                         UEFI, 11 ARM64 UEFI, 16 and 19 UEFI HTTP)",
                        arch = arch.to_string()
                    ),
                );
            }
        }
        for (key, message) in self.hook.problems() {
            at(sources.value(&format!("boot.{key}")), message);
        }
        for (span, message) in self.file_machines().1 {
            at(Some(span), message);
        }
        for (i, message) in never_matching_boot_rules(&self.boot) {
            at(
                sources.value(&format!("boot.rule[{i}]")),
                format!("boot.rule[{i}] can never match: {message}"),
            );
        }
        for (i, message) in never_matching_menu_rules(&self.menu) {
            at(
                sources.value(&format!("menu.rules[{i}]")),
                format!("menu.rules[{i}] can never match: {message}"),
            );
        }
    }

    /// The `[[machine]]` records, each with its source (`file:line:column`), for the
    /// registry (every one passed [`Config::validate`]).
    pub fn machine_records(&self) -> Vec<crate::db::MachineRecord> {
        self.file_machines().0
    }

    /// The `[[machine]]` records that pass the API's checks (entries against this
    /// configuration's menu), and a problem, with its span, for each that does not, for each
    /// MAC or UUID two records name, and for `boot-once` (see below).
    fn file_machines(&self) -> (Vec<crate::db::MachineRecord>, Vec<(Range<usize>, String)>) {
        let sources = &self.sources;
        let entries: std::collections::BTreeSet<String> =
            self.menu.entries.iter().map(|e| e.id.clone()).collect();
        let mut records: Vec<crate::db::MachineRecord> = Vec::new();
        let mut problems = Vec::new();
        let mut seen: std::collections::HashMap<String, Range<usize>> = Default::default();
        for (i, m) in self.machine.iter().enumerate() {
            let here = format!("machine[{i}]");
            let whole = sources.value(&here).unwrap_or(m.span());
            let field = |key: &str| sources.value(&format!("{here}.{key}"));
            let f = m.get_ref().clone();
            if f.boot_once && !self.database.enabled {
                // The deployed state is kept in the database (table file_deployed).
                problems.push((
                    field("boot-once").unwrap_or(whole.clone()),
                    format!(
                        "{here}.boot-once: a boot-once machine's deployed state is kept in the \
                         database, which is off (database.enabled = false)"
                    ),
                ));
                continue;
            }
            let body = crate::web::machines::MachineBody {
                mac: f.mac,
                uuid: f.uuid,
                name: f.name,
                group: f.group,
                entry: f.entry,
                loader: f.loader,
                variables: f.variables,
                boot_once: f.boot_once,
                state: None,
            };
            let mut rec = match body.into_record(None, Some(&entries)) {
                Ok(r) => r,
                Err(e) => {
                    let mut words = e.split_whitespace();
                    let span = match (words.next(), words.next()) {
                        (Some(k @ ("mac" | "uuid" | "entry" | "loader" | "name" | "group")), _) => {
                            field(k)
                        }
                        (Some("variable"), Some(name)) if name != "name" => {
                            field(&format!("variables.{}", name.trim_end_matches(':')))
                        }
                        _ => None,
                    };
                    problems.push((span.unwrap_or(whole.clone()), format!("{here}: {e}")));
                    continue;
                }
            };
            let keys = [
                rec.mac.map(|m| ("mac", m.to_string())),
                rec.uuid.map(|u| ("uuid", u.to_string())),
            ];
            let mut twice = false;
            for (what, value) in keys.into_iter().flatten() {
                let span = field(what).unwrap_or(whole.clone());
                match seen.get(&value) {
                    Some(first) => {
                        problems.push((
                            span,
                            format!(
                                "{here}: {what} {value} has a record already, at {}",
                                sources.position(first)
                            ),
                        ));
                        twice = true;
                    }
                    None => {
                        seen.insert(value, whole.clone());
                    }
                }
            }
            if twice {
                continue;
            }
            rec.source = Some(sources.position(&whole));
            records.push(rec);
        }
        (records, problems)
    }

    /// `[[machine]]` records that shadow a database record for the same MAC or UUID (the
    /// file's decides; see [`crate::db::RegistrySnapshot`]), as warnings; a database that
    /// cannot be read is a warning too. Nothing when there are no `[[machine]]` records.
    pub fn registry_warnings(&self) -> Vec<Problem> {
        let files = self.machine_records();
        if files.is_empty() || !self.database.enabled {
            return Vec::new();
        }
        let at = |rec: &crate::db::MachineRecord, message: String| {
            let source = rec.source.as_deref().unwrap_or_default();
            let mut parts = source.rsplitn(3, ':');
            let column = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let line = parts.next().and_then(|l| l.parse().ok()).unwrap_or(0);
            Problem {
                file: PathBuf::from(parts.next().unwrap_or_default()),
                line,
                column,
                message,
            }
        };
        let stored = match crate::db::stored_machines(&self.database) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Vec::new(),
            Err(e) => {
                return vec![at(
                    &files[0],
                    format!(
                        "warning: cannot read the database's machine records to compare them \
                         with [[machine]]: {e:#}"
                    ),
                )];
            }
        };
        crate::db::shadowed(&files, &stored)
            .into_iter()
            .map(|(file, db)| {
                let id = match (db.mac, db.uuid) {
                    (Some(m), _) => format!("MAC {m}"),
                    (None, Some(u)) => format!("UUID {u}"),
                    (None, None) => "no key".to_owned(),
                };
                at(
                    file,
                    format!(
                        "warning: this [[machine]] record shadows the database's record for \
                         {id} (name {:?}): the configuration's decides, the database's is \
                         unused until this one is removed",
                        db.name
                    ),
                )
            })
            .collect()
    }

    /// What may be fine but likely is not: loaders and menu files missing under the root.
    /// `check` prints them; `serve` logs them.
    pub fn warnings(&self) -> Vec<Problem> {
        let sources = if self.sources.is_empty() {
            Sources::single(Path::new("command line"), "")
        } else {
            self.sources.clone()
        };
        let mut out = Vec::new();
        let root = self.server.root.get_ref();
        if !(self.services.tftp || self.services.http) || !root.is_dir() {
            return out;
        }
        let ci = self.server.case_insensitive;
        let mut missing = |key: String, file: &str, what: &str| {
            if let Some(rel) = served_path(file, self.ports.http)
                && !exists_below(root, &rel, ci)
            {
                out.push(sources.problem(
                    sources.value(&key).unwrap_or(0..0),
                    format!(
                        "warning: {key}: {what} {rel} is not under server.root {}",
                        root.display()
                    ),
                ));
            }
        };
        let b = &self.boot;
        for (key, file) in [
            ("bios", &b.bios),
            ("efi32", &b.efi32),
            ("efi64", &b.efi64),
            ("arm64", &b.arm64),
            ("http-boot", &b.http_boot),
            ("http-boot-arm64", &b.http_boot_arm64),
        ] {
            missing(format!("boot.{key}"), file, "loader");
        }
        for (i, rule) in b.rule.iter().enumerate() {
            for (key, file) in [("loader", &rule.loader), ("http-boot", &rule.http_boot)] {
                if let Some(f) = file {
                    missing(format!("boot.rule[{i}].{key}"), f, "loader");
                }
            }
        }
        for (i, entry) in self.menu.entries.iter().enumerate() {
            use zpxe_engine::http::EntryKind;
            let files: Vec<(&str, &String)> = match &entry.kind {
                EntryKind::Winpe {
                    wimboot,
                    bcd,
                    boot_sdi,
                    boot_wim,
                } => vec![
                    ("wimboot", wimboot),
                    ("bcd", bcd),
                    ("boot-sdi", boot_sdi),
                    ("boot-wim", boot_wim),
                ],
                EntryKind::Linux { kernel, initrd, .. } => std::iter::once(("kernel", kernel))
                    .chain(initrd.as_ref().map(|i| ("initrd", i)))
                    .collect(),
                _ => Vec::new(),
            };
            for (key, f) in files {
                missing(
                    format!("menu.entries[{i}].kind.{key}"),
                    f,
                    &format!("entry {:?} file", entry.id),
                );
            }
        }
        out
    }
}

/// The path below the root a boot file names: a plain TFTP path, or the path of an HTTP URL
/// on this server (`http://{server}:{http-port}/...`). `None` when it cannot be told (other
/// hosts, per-client templates, empty).
fn served_path(file: &str, http_port: u16) -> Option<String> {
    let path = match file.split_once("://") {
        Some((_, rest)) => {
            let (host, path) = rest.split_at(rest.find('/')?);
            let local = host == "{server}"
                || host == format!("{{server}}:{http_port}")
                || host == "{server}:{http-port}";
            if !local {
                return None;
            }
            path.split('?').next()?
        }
        None => file,
    };
    let path = path.trim_start_matches('/');
    (!path.is_empty() && !path.contains('{')).then(|| path.to_owned())
}

/// Whether `rel` (with `/` or `\` separators) names a file below `root`, matching names
/// ignoring ASCII case when the server does.
fn exists_below(root: &Path, rel: &str, case_insensitive: bool) -> bool {
    let mut dir = root.to_path_buf();
    for part in rel.split(['/', '\\']).filter(|p| !p.is_empty()) {
        if part == ".." {
            return false;
        }
        let exact = dir.join(part);
        if exact.exists() {
            dir = exact;
            continue;
        }
        if !case_insensitive {
            return false;
        }
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(part))
        });
        match found {
            Some(e) => dir = e.path(),
            None => return false,
        }
    }
    dir.is_file()
}

/// Loads the certificate chain and key as `serve` does (src/serve/https.rs): an empty file,
/// PEM without a certificate or key, or a key that does not fit the certificate is a problem.
fn check_tls_files(cert: &Spanned<PathBuf>, key: &Spanned<PathBuf>) -> Vec<(Range<usize>, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut out = Vec::new();
    let chain: Result<Vec<_>, _> = CertificateDer::pem_file_iter(cert.get_ref())
        .and_then(|it| it.collect::<Result<Vec<_>, _>>());
    let chain = match chain {
        Ok(c) if c.is_empty() => {
            out.push((
                cert.span(),
                format!(
                    "tls.cert {}: no PEM certificate in it",
                    cert.get_ref().display()
                ),
            ));
            None
        }
        Ok(c) => Some(c),
        Err(e) => {
            out.push((
                cert.span(),
                format!("tls.cert {}: {e}", cert.get_ref().display()),
            ));
            None
        }
    };
    let private = match PrivateKeyDer::from_pem_file(key.get_ref()) {
        Ok(k) => Some(k),
        Err(e) => {
            out.push((
                key.span(),
                format!(
                    "tls.key {}: no usable PEM private key ({e})",
                    key.get_ref().display()
                ),
            ));
            None
        }
    };
    if let (Some(chain), Some(private)) = (chain, private) {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let built = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(chain, private)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = built {
            out.push((
                key.span(),
                format!("tls: the key does not fit the certificate or is not supported: {e}"),
            ));
        }
    }
    out
}

/// `[[boot.rule]]`s no client can reach, with why: an earlier rule matches every client it
/// matches ([`zpxe_engine::rule::BootRule::covers`], exact on the typed criteria), or the ignore
/// lists, consulted first, refuse every client it matches.
pub fn never_matching_boot_rules(policy: &zpxe_engine::dhcp::BootPolicy) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, rule) in policy.rule.iter().enumerate() {
        if let Some(j) = policy.rule[..i].iter().position(|e| e.covers(rule)) {
            out.push((
                i,
                format!("boot.rule[{j}] before it matches every client it matches"),
            ));
        } else if rule.only_matches(&policy.ignore_macs, &policy.ignore_uuids) {
            out.push((
                i,
                "every client it matches is on boot.ignore-macs or boot.ignore-uuids".into(),
            ));
        }
    }
    out
}

/// `[[menu.rules]]` no client can reach: without any criterion (the engine requires one), or
/// after a rule that matches every client it matches.
pub fn never_matching_menu_rules(menu: &zpxe_engine::http::BootMenu) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, rule) in menu.rules.iter().enumerate() {
        if !rule.has_criteria() {
            out.push((
                i,
                "it names no mac, mac-prefix, uuid, group, subnet or arch".to_owned(),
            ));
            continue;
        }
        let shadow = menu.rules[..i]
            .iter()
            .position(|earlier| earlier.has_criteria() && earlier.covers(rule));
        if let Some(j) = shadow {
            out.push((
                i,
                format!("menu.rules[{j}] before it matches every client it matches"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(Path::new("zpxe.toml"), text) {
            Ok(_) => Vec::new(),
            Err(p) => p.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn unknown_key_is_an_error_with_line_and_column() {
        let p = problems("[server]\nroot = \"/tmp\"\n\n[ports]\n  tfpt = 4\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("zpxe.toml:5:3: "), "{p:?}");
        assert!(p[0].contains("tfpt"), "{p:?}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let p = problems("[server]\nroot = \"/tmp\"\n[tfpt]\nport = 1\n");
        assert!(p[0].starts_with("zpxe.toml:3:"), "{p:?}");
    }

    #[test]
    fn wrong_type_points_at_value() {
        let p = problems("[server]\nroot = \"/tmp\"\n[ports]\ntftp = \"sixty-nine\"\n");
        assert!(p[0].starts_with("zpxe.toml:4:8: "), "{p:?}");
    }

    #[test]
    fn semantic_problems_are_all_reported_with_positions() {
        let text = "[server]\nroot = \"/nonexistent/zpxe\"\nlisten = [\"10.0.0.300\"]\n\
                    [ports]\nhttp = 9000\nweb = 9000\ntftp-range = \"65000-64001\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("zpxe.toml:2:8: server.root"), "{p:?}");
        assert!(p[1].starts_with("zpxe.toml:3:11: server.listen"), "{p:?}");
        assert!(
            p.iter()
                .any(|l| l.starts_with("zpxe.toml:7:14: ports.tftp-range")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("zpxe.toml:6:1: ports.http and ports.web")),
            "{p:?}"
        );
    }

    #[test]
    fn defaults_match_2pxe_ports() {
        let c = Config::parse(Path::new("x"), "[server]\nroot = \"/tmp\"\n").expect("valid");
        assert_eq!(
            (
                c.ports.dhcp,
                c.ports.pxe,
                c.ports.tftp,
                c.ports.http,
                c.ports.web
            ),
            (67, 4011, 69, 8050, 8051)
        );
        assert!(c.services.dhcp && c.services.tftp && c.services.http && c.services.web);
    }

    #[test]
    fn menu_from_toml_and_its_problems() {
        let good = "[server]\nroot = \"/tmp\"\n[menu]\ndefault = \"winpe\"\n\
                    [[menu.entries]]\nid = \"winpe\"\nlabel = \"WinPE\"\n\
                    kind = { type = \"winpe\", wimboot = \"wimboot\", bcd = \"Boot/BCD\", \
                    boot-sdi = \"Boot/boot.sdi\", boot-wim = \"sources/boot.wim\" }\n";
        let c = Config::parse(Path::new("z.toml"), good).expect("valid menu");
        assert_eq!(c.menu.entries.len(), 1);
        let bad = good.replace("default = \"winpe\"", "default = \"nope\"");
        let p = problems(&bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("zpxe.toml:3:1: menu:"), "{p:?}");
    }

    #[test]
    fn several_loops_share_ports_or_hand_work_over() {
        let base = "[server]\nroot = \"/tmp\"\nthreads = 4\n";
        assert!(problems(base).is_empty(), "{:?}", problems(base));
        let c = Config::parse(Path::new("x"), base).expect("valid");
        assert_eq!(c.server.loop_handoff, !zpxe_platform::LOOPS_SHARE_PORTS);
        let on = format!("{base}loop-handoff = true\n");
        assert!(problems(&on).is_empty(), "{:?}", problems(&on));
        let off = format!("{base}loop-handoff = false\n");
        let p = problems(&off);
        if zpxe_platform::LOOPS_SHARE_PORTS {
            assert!(p.is_empty(), "{p:?}");
        } else {
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with("zpxe.toml:4:1: server.loop-handoff = false"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn busy_polling_is_bounded() {
        let base = "[server]\nroot = \"/tmp\"\n";
        let c = Config::parse(Path::new("x"), base).expect("valid");
        assert_eq!(c.server.busy_poll_us, 0, "off unless asked for");
        let on = format!("{base}busy-poll-us = 1000\n");
        assert!(problems(&on).is_empty(), "{:?}", problems(&on));
        let c = Config::parse(Path::new("x"), &on).expect("valid");
        assert_eq!(c.server.busy_poll_us, 1000);
        let p = problems(&format!("{base}busy-poll-us = 1001\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("zpxe.toml:3:1: server.busy-poll-us = 1001: at most 1000"),
            "{p:?}"
        );
    }

    #[test]
    fn the_conflict_check_is_for_server_mode_and_bounded() {
        let server = "[server]\nroot = \"/tmp\"\n[dhcp]\nmode = \"server\"\nconflict-check-ms = {ms}\n\n\
                      [[dhcp.pool]]\nsubnet = \"10.0.0.0/24\"\n\
                      range = [\"10.0.0.100\", \"10.0.0.199\"]\n";
        let with = |ms: u64| server.replace("{ms}", &ms.to_string());
        assert!(
            problems(&with(500)).is_empty(),
            "{:?}",
            problems(&with(500))
        );
        let c = Config::parse(Path::new("x"), &with(500)).expect("valid");
        assert_eq!(c.dhcp.conflict_check_ms, 500);
        let p = problems(&with(3001));
        assert!(
            p.len() == 1 && p[0].contains("dhcp.conflict-check-ms = 3001: at most 3000"),
            "{p:?}"
        );
        let p = problems("[server]\nroot = \"/tmp\"\n[dhcp]\nconflict-check-ms = 500\n");
        assert!(
            p.len() == 1 && p[0].contains("is for dhcp.mode = \"server\""),
            "{p:?}"
        );
    }

    #[test]
    fn dhcp_mode_proxy_by_default_pxe_only_and_server() {
        let base = "[server]\nroot = \"/tmp\"\n";
        let c = Config::parse(Path::new("x"), base).expect("valid");
        assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
        assert!(c.dhcp.mode.binds_dhcp_port());
        let c = Config::parse(
            Path::new("x"),
            &format!("{base}[dhcp]\nmode = \"pxe-only\"\n"),
        )
        .expect("valid");
        assert_eq!(c.dhcp.mode, DhcpMode::PxeOnly);
        assert!(!c.dhcp.mode.binds_dhcp_port());
        // 67 is left to the local DHCP server, so it may equal another port of zpxe's.
        let shared = format!("{base}[dhcp]\nmode = \"pxe-only\"\n[ports]\ndhcp = 69\n");
        assert!(problems(&shared).is_empty(), "{:?}", problems(&shared));

        // Server mode needs a pool.
        let p = problems(&format!("{base}[dhcp]\nmode = \"server\"\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("zpxe.toml:4:1: "), "{p:?}");
        assert!(p[0].contains("at least one [[dhcp.pool]]"), "{p:?}");
        let server = format!(
            "{base}[dhcp]\nmode = \"server\"\nlease-time-secs = 120\n\
             [[dhcp.pool]]\nsubnet = \"10.0.0.0/24\"\nrange = [\"10.0.0.100\", \"10.0.0.199\"]\n\
             router = [\"10.0.0.1\"]\ndns = [\"10.0.0.53\"]\n\
             [[dhcp.reservation]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.20\"\n"
        );
        assert!(problems(&server).is_empty(), "{:?}", problems(&server));
        let c = Config::parse(Path::new("x"), &server).expect("valid");
        assert_eq!(c.dhcp.mode, DhcpMode::Server);
        assert!(c.dhcp.mode.binds_dhcp_port());
        assert_eq!(c.dhcp.pool.len(), 1);
        assert_eq!(c.dhcp.lease_time_secs, 120);
        assert_eq!(
            c.dhcp.reservation[0].ip,
            std::net::Ipv4Addr::new(10, 0, 0, 20)
        );
        let p = problems(&server.replace("10.0.0.199", "10.0.1.199"));
        assert!(p[0].contains("not inside the subnet"), "{p:?}");
        // Pools outside server mode are refused rather than ignored.
        let p = problems(&server.replace("mode = \"server\"", "mode = \"proxy\""));
        assert!(p[0].contains("are for dhcp.mode = \"server\""), "{p:?}");
        let p = problems(&format!("{base}[dhcp]\nmode = \"relay\"\n"));
        assert!(
            p[0].contains("\"proxy\", \"pxe-only\" or \"server\""),
            "{p:?}"
        );
        assert!(!problems(&format!("{base}[dhcp]\nmood = \"proxy\"\n")).is_empty());
    }

    #[test]
    fn rules_take_lists_prefixes_groups_and_subnets_checked_with_positions() {
        let base = "[server]\nroot = \"/tmp\"\n[menu]\n[[menu.entries]]\nid = \"x\"\n\
                    label = \"X\"\nkind = { type = \"exit\" }\n";
        let good = format!(
            "{base}[[menu.rules]]\nmac = [\"52:54:00:00:00:01\", \"52:54:00:00:00:02\"]\n\
             mac-prefix = \"00:50:56:*\"\ngroup = [\"lab\"]\nsubnet = [\"10.1.0.0/16\"]\n\
             arch = [\"efi\", 7]\nentry = \"x\"\n\
             [[boot.rule]]\nmac-prefix = [\"00:0c:29\"]\narch = [7, 9]\nloader = \"vm.efi\"\n"
        );
        let c = Config::parse(Path::new("zpxe.toml"), &good).expect("valid");
        assert_eq!(c.menu.rules[0].mac.len(), 2);
        assert_eq!(c.boot.rule[0].mac_prefix[0].to_string(), "00:0c:29:*");
        // Bad values: each reported where it is written.
        let p = problems(&format!(
            "{base}[[menu.rules]]\nmac = [\"52:54:00:00:00:01\", \"nope\"]\nentry = \"x\"\n\
             [[boot.rule]]\nmac-prefix = \"00:50:56:11:22:33\"\n"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("zpxe.toml:9:29: ")), "{p:?}");
        assert!(
            p.iter().any(|l| l.starts_with("zpxe.toml:12:14: ")),
            "{p:?}"
        );
        // Actions in the wrong kind of rule, and a DHCP rule naming an architecture by name.
        let p = problems(&format!(
            "{base}[[menu.rules]]\nmac = \"52:54:00:00:00:01\"\nentry = \"x\"\nloader = \"a.efi\"\n\
             [[boot.rule]]\narch = \"efi\"\nentry = \"x\"\n"
        ));
        assert!(
            p.iter()
                .any(|l| l.starts_with("zpxe.toml:8:1: menu: rules[0]: loader")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("zpxe.toml:14:1: boot.rule[0].entry")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("zpxe.toml:13:8: boot.rule[0].arch")),
            "{p:?}"
        );
        // A prefix covers a later rule's MAC list and narrower prefix.
        let p = problems(&format!(
            "{base}[[menu.rules]]\nmac-prefix = \"52:54:00\"\nentry = \"x\"\n\
             [[menu.rules]]\nmac = [\"52:54:00:00:00:01\"]\nmac-prefix = \"52:54:00:aa\"\n\
             arch = 7\nentry = \"x\"\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("menu.rules[1] can never match: menu.rules[0] before it"),
            "{p:?}"
        );
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(
            PortRange::parse("64001-65000"),
            Ok(PortRange {
                lo: 64001,
                hi: 65000
            })
        );
        assert!(PortRange::parse("65000-64001").is_err());
        assert!(PortRange::parse("0-10").is_err());
        assert!(PortRange::parse("x-10").is_err());
        assert!(PortRange::parse("10").is_err());
    }
}

#[cfg(test)]
mod include_and_position_tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(Path::new("z.toml"), text) {
            Ok(_) => Vec::new(),
            Err(p) => p.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn dotted_and_inline_keys_are_located_where_they_are_written() {
        let base = "[server]\nroot = \"/tmp\"\n";
        let p = problems(&format!("ports.http = 9000\nports.web = 9000\n{base}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("z.toml:2:7: ports.http and ports.web"),
            "{p:?}"
        );
        let p = problems(&format!("ports = {{ http = 9000, web = 9000 }}\n{base}"));
        assert!(
            p[0].starts_with("z.toml:1:24: ports.http and ports.web"),
            "{p:?}"
        );
        // Two wrong values and an unknown key, reported together.
        let p = problems(&format!(
            "{base}[tftp]\nretries = \"x\"\nmtu = -5\n[boot]\nbogus = 1\n"
        ));
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn a_deeply_nested_document_is_refused_without_exhausting_the_stack() {
        let deep = format!("{} = 1\n", vec!["a"; 5000].join("."));
        let p = problems(&deep);
        assert_eq!(p.len(), 1, "{p:?}");
        let deep_arrays = format!("x = {}1{}\n", "[".repeat(200), "]".repeat(200));
        assert!(!problems(&deep_arrays).is_empty());
    }
}

#[cfg(test)]
mod machine_tests {
    use super::*;

    const BASE: &str = "[server]\nroot = \"/tmp\"\n[[menu.entries]]\nid = \"w11\"\n\
                        label = \"W11\"\nkind = { type = \"exit\" }\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(Path::new("z.toml"), text) {
            Ok(_) => Vec::new(),
            Err(p) => p.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn machine_tables_become_records_with_their_place() {
        let text = format!(
            "{BASE}[[machine]]\nmac = \"52:54:00:00:00:01\"\nname = \"pc1\"\ngroup = \"lab\"\n\
             entry = \"w11\"\nloader = \"custom/ipxe.efi\"\nvariables = {{ site = \"north\" }}\n\
             [[machine]]\nuuid = \"8f4e2a1c-0000-4000-8000-00000000000a\"\n"
        );
        let c = Config::parse(Path::new("z.toml"), &text).expect("valid");
        let recs = c.machine_records();
        assert_eq!(recs.len(), 2);
        let r = &recs[0];
        assert_eq!(
            r.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(r.name, "pc1");
        assert_eq!(r.group, "lab");
        assert_eq!(r.entry.as_deref(), Some("w11"));
        assert_eq!(r.loader.as_deref(), Some("custom/ipxe.efi"));
        assert_eq!(r.variables.get("site").map(String::as_str), Some("north"));
        assert_eq!(r.source.as_deref(), Some("z.toml:7:1"));
        assert!(recs[1].mac.is_none() && recs[1].uuid.is_some());
        assert_eq!(recs[1].source.as_deref(), Some("z.toml:14:1"));
    }

    #[test]
    fn bad_machine_fields_are_reported_where_they_are_written() {
        let at = |extra: &str| problems(&format!("{BASE}[[machine]]\n{extra}"));
        // Line 8 is the first line after `[[machine]]`.
        let p = at("mac = \"52:54:00:zz:00:01\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("z.toml:8:7: machine[0]: mac "), "{p:?}");
        let p = at("mac = \"52:54:00:00:00:01\"\nentry = \"w10\"\n");
        assert!(
            p[0].starts_with("z.toml:9:9: machine[0]: entry \"w10\""),
            "{p:?}"
        );
        assert!(p[0].contains("w11"), "{p:?}");
        let p = at("mac = \"52:54:00:00:00:01\"\nloader = \"../etc/passwd\"\n");
        assert!(p[0].starts_with("z.toml:9:10: machine[0]: loader"), "{p:?}");
        let p = at("mac = \"52:54:00:00:00:01\"\nvariables = { os = \"${x}\" }\n");
        assert!(
            p[0].starts_with("z.toml:9:20: machine[0]: variable os"),
            "{p:?}"
        );
        let p = at("name = \"no key\"\n");
        assert!(
            p[0].starts_with("z.toml:7:1: machine[0]: a machine record needs a MAC"),
            "{p:?}"
        );
        // The database's state is not a configuration key.
        let p = at("mac = \"52:54:00:00:00:01\"\nstate = \"deployed\"\n");
        assert!(
            p[0].starts_with("z.toml:9:1: ") && p[0].contains("state"),
            "{p:?}"
        );
        let p = problems(&format!(
            "{BASE}[database]\nenabled = false\n[[machine]]\nmac = \"52:54:00:00:00:01\"\n\
             boot-once = true\n"
        ));
        assert!(
            p[0].starts_with("z.toml:11:13: machine[0].boot-once"),
            "{p:?}"
        );
        assert!(p[0].contains("database.enabled = false"), "{p:?}");
        // With the database on (the default), a boot-once record is fine.
        assert!(at("mac = \"52:54:00:00:00:01\"\nboot-once = true\n").is_empty());
        // Two problems in two records: both reported.
        let p = problems(&format!(
            "{BASE}[[machine]]\nmac = \"x\"\n[[machine]]\nuuid = \"y\"\n"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn a_machine_named_twice_across_files_is_refused_with_both_places() {
        let dir = tempfile::tempdir().expect("temp dir");
        let main = dir.path().join("zpxe.toml");
        std::fs::write(
            &main,
            format!("{BASE}[[machine]]\nmac = \"52:54:00:00:00:01\"\nname = \"main\"\n"),
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
        let lab = dir.path().join("conf.d").join("lab.toml");
        std::fs::write(
            &lab,
            "[[machine]]\nmac = \"52:54:00:00:00:02\"\nname = \"lab\"\n\
             [[machine]]\nmac = \"52:54:00:00:00:01\"\n",
        )
        .expect("write");
        let (config, text) = Config::read(&main).expect("reads");
        let p: Vec<String> = config
            .validate(&main, &text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(&format!(
                "{}:5:7: machine[2]: mac 52:54:00:00:00:01",
                lab.display()
            )),
            "{p:?}"
        );
        assert!(p[0].ends_with(&format!("{}:7:1", main.display())), "{p:?}");
        // Without the duplicate: the include's record carries the include's place.
        std::fs::write(
            &lab,
            "[[machine]]\nmac = \"52:54:00:00:00:02\"\nname = \"lab\"\n",
        )
        .expect("write");
        let config = Config::load(&main).expect("valid");
        let recs = config.machine_records();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].name, "lab");
        assert_eq!(
            recs[1].source.as_deref(),
            Some(format!("{}:1:1", lab.display()).as_str())
        );
    }
}
