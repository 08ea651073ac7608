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
    /// Who may use the web service: bearer token, allowed networks (src/web/access.rs).
    pub web: crate::web::WebConfig,
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
    /// The address to name in replies when a request's arrival address is unknown.
    pub advertise: Option<Spanned<String>>,
    /// Send TFTP windows with UDP segmentation offload where the kernel has it. Turn off for
    /// paths that mangle large UDP sends (some tunnels and drivers).
    pub udp_gso: bool,
    /// On SIGTERM or SIGINT, how long transfers under way may take to finish (milliseconds)
    /// before they are cut; a second signal cuts them at once.
    pub drain_timeout_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            root: Spanned::new(0..0, PathBuf::from("/srv/zpxe")),
            listen: Vec::new(),
            interfaces: Vec::new(),
            case_insensitive: true,
            leases: true,
            threads: 0,
            advertise: None,
            udp_gso: true,
            drain_timeout_ms: 60_000,
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
    pub tftp_range: Option<Spanned<String>>,
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
    /// that override values first and validate after.
    pub fn parse_unchecked(file: &Path, text: &str) -> Result<Self, Problems> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            Problems(vec![Problem {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }])
        })
    }

    /// Reads a configuration file: the parsed configuration (not yet validated) and its text.
    pub fn read(file: &Path) -> Result<(Self, String), Problems> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Problems(vec![Problem {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        Ok((Self::parse_unchecked(file, &text)?, text))
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
    pub fn validate(&self, file: &Path, text: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut at = |span: Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            out.push(Problem {
                file: file.to_owned(),
                line,
                column,
                message,
            });
        };
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
            && let Err(e) = PortRange::parse(r.get_ref())
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
        if self.server.threads > 1 && !zpxe_platform::LOOPS_SHARE_PORTS {
            let span = find_key(text, "server", "threads").unwrap_or(0..0);
            at(
                span,
                format!(
                    "server.threads = {}: this system cannot give several event loops one port \
                     (no SO_REUSEPORT), so zpxe runs a single loop here: set 0 or 1",
                    self.server.threads
                ),
            );
        }
        if let Err(e) = self.menu.check() {
            let span = find_section(text, "menu").unwrap_or(0..0);
            at(span, format!("menu: {e}"));
        }
        if self.database.enabled {
            for e in self.database.check() {
                let span = if e.starts_with("database url") {
                    self.database.url.span()
                } else {
                    find_section(text, "database").unwrap_or(0..0)
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
                        let span = find_key(text, "ports", b).unwrap_or(0..0);
                        at(
                            span,
                            format!("ports.{a} and ports.{b} are both {pa}: give each its own"),
                        );
                    }
                }
            }
        }
        for e in self.dhcp.check() {
            let span =
                find_key(text, "dhcp.pool", "subnet").or_else(|| find_key(text, "dhcp", "mode"));
            at(span.unwrap_or(0..0), e);
        }
        out
    }

    /// The TFTP transfer port range, if configured (validated by `parse`).
    pub fn tftp_range(&self) -> Option<PortRange> {
        self.ports
            .tftp_range
            .as_ref()
            .and_then(|r| PortRange::parse(r.get_ref()).ok())
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

/// The span of the first `[section]` or `[[section.x]]` header.
fn find_section(text: &str, section: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let name = t.trim_matches(['[', ']']).trim();
        if t.starts_with('[') && (name == section || name.starts_with(&format!("{section}."))) {
            let start = offset + (line.len() - line.trim_start().len());
            return Some(start..start + t.len());
        }
        offset += line.len();
    }
    None
}

/// The span of `key = ...` inside `[section]`, for problems the types cannot locate.
fn find_key(text: &str, section: &str, key: &str) -> Option<Range<usize>> {
    let mut in_section = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(['[', ']']).trim() == section;
        } else if in_section && t.split('=').next().map(str::trim) == Some(key) {
            let start = offset + (line.len() - line.trim_start().len());
            return Some(start..start + key.len());
        }
        offset += line.len();
    }
    None
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
    fn several_loops_need_ports_shared_between_them() {
        let p = problems("[server]\nroot = \"/tmp\"\nthreads = 4\n");
        if zpxe_platform::LOOPS_SHARE_PORTS {
            assert!(p.is_empty(), "{p:?}");
        } else {
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with("zpxe.toml:3:1: server.threads = 4"),
                "{p:?}"
            );
        }
        assert!(problems("[server]\nroot = \"/tmp\"\nthreads = 1\n").is_empty());
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
