//! Who may use the web service (issue 14, security): a bearer token for everything that
//! changes state, and `web.allow` networks for the read-only API and the page.
//!
//! - State-changing requests (`PUT`/`POST`/`DELETE`) need `Authorization: Bearer <token>`. The
//!   configuration holds the token's SHA-256 (`web.token-sha256`) or names a file holding the
//!   token itself (`web.token-file`, refused when every user may read it). Presented tokens are
//!   hashed and compared with every configured hash in constant time. With no token configured
//!   such requests get 403 and a message saying how to configure one; a missing or wrong token
//!   gets 401 with `WWW-Authenticate: Bearer`.
//! - Every other route answers only peers inside `web.allow` (default: loopback and the
//!   networks this host is connected to, or those of the listen addresses); others get 403.
//!   `/report` too: a peer outside `web.allow` can neither forge a machine on the live page nor
//!   a stage in the database. The clients being booted fetch it from their iPXE script, so the
//!   subnets relayed clients boot from belong in `web.allow`. Reports are also validated field
//!   by field and rate-limited per source.
//! - The rules are rebuilt at each reload (`WebService::follow_reloads`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::WebReply;
use crate::db::Cidr;

/// `[web]`: access to the web service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct WebConfig {
    /// Hex SHA-256 of the bearer token (`printf %s TOKEN | sha256sum`).
    pub token_sha256: Option<Spanned<String>>,
    /// A file holding the bearer token (trailing whitespace ignored); must not be readable by
    /// every user.
    pub token_file: Option<Spanned<PathBuf>>,
    /// Networks (CIDR) allowed to read the API and the page. Absent: loopback and the networks
    /// zpxe serves.
    pub allow: Option<Vec<Spanned<String>>>,
}

impl WebConfig {
    /// Problems the types cannot catch, each with the span it concerns.
    pub fn check(&self) -> Vec<(std::ops::Range<usize>, String)> {
        let mut out = Vec::new();
        if let Some(h) = &self.token_sha256
            && parse_sha256(h.get_ref()).is_none()
        {
            out.push((
                h.span(),
                "web.token-sha256 must be 64 hex digits (the SHA-256 of the token, e.g. \
                 `printf %s TOKEN | sha256sum`)"
                    .to_owned(),
            ));
        }
        if let Some(f) = &self.token_file
            && !f.get_ref().is_file()
        {
            out.push((
                f.span(),
                format!("web.token-file {} is not a file", f.get_ref().display()),
            ));
        }
        for a in self.allow.iter().flatten() {
            if let Err(e) = a.get_ref().parse::<Cidr>() {
                out.push((a.span(), format!("web.allow: {e}")));
            }
        }
        out
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The access rules in force.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// SHA-256 of each accepted token; empty: no token configured.
    tokens: Vec<[u8; 32]>,
    /// Peers allowed on the read-only routes; `None` allows everyone (tests, embedding).
    allow: Option<Vec<Cidr>>,
    /// What `allow` holds, for the log and the 403 message.
    allow_text: Vec<String>,
}

/// Why a state-changing request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    NoTokenConfigured,
    Unauthorized,
}

impl Access {
    /// Everything open and no token: the web service alone, as unit tests build it.
    pub fn open() -> Self {
        Self::default()
    }

    /// Builds the rules from `[web]`. `listen` are the addresses zpxe listens on; reads the token
    /// file (and checks its permissions) and, for the default allow list, the routing table.
    pub fn from_config(c: &WebConfig, listen: &[IpAddr]) -> Result<Self> {
        let mut tokens = Vec::new();
        if let Some(h) = &c.token_sha256 {
            match parse_sha256(h.get_ref()) {
                Some(h) => tokens.push(h),
                None => bail!("web.token-sha256 must be 64 hex digits"),
            }
        }
        if let Some(f) = &c.token_file {
            tokens.push(read_token_file(f.get_ref())?);
        }
        let allow_text: Vec<String> = match &c.allow {
            Some(list) => list.iter().map(|a| a.get_ref().clone()).collect(),
            None => default_allow(listen),
        };
        let allow = allow_text
            .iter()
            .map(|a| a.parse::<Cidr>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()
            .context("web.allow")?;
        Ok(Self {
            tokens,
            allow: Some(allow),
            allow_text,
        })
    }

    /// Rules with the given token hashes and allow list (tests).
    pub fn new(tokens: Vec<[u8; 32]>, allow: Option<Vec<Cidr>>) -> Self {
        Self {
            tokens,
            allow,
            allow_text: Vec::new(),
        }
    }

    pub fn allow_list(&self) -> &[String] {
        &self.allow_text
    }

    pub fn has_token(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `peer` may use the read-only routes.
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        match (&self.allow, peer) {
            (None, _) => true,
            (Some(list), Some(ip)) => {
                let ip = canonical(ip);
                list.iter().any(|c| c.contains(ip))
            }
            (Some(_), None) => false,
        }
    }

    /// Checks an `Authorization` header value for a state-changing request.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), Denied> {
        if self.tokens.is_empty() {
            return Err(Denied::NoTokenConfigured);
        }
        //= https://www.rfc-editor.org/rfc/rfc6750#section-2.1
        //# credentials = "Bearer" 1*SP b64token
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let presented = authorization
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim_start_matches(' '))
            })
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthorized)?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every configured hash is compared in full, whatever matched before.
        let mut ok = false;
        for t in &self.tokens {
            ok |= constant_time_eq(t, &hash);
        }
        if ok {
            Ok(())
        } else {
            Err(Denied::Unauthorized)
        }
    }

    /// The 403 for a peer outside `web.allow`.
    pub fn forbidden_peer(&self, peer: Option<IpAddr>) -> WebReply {
        let who = peer.map_or_else(|| "this client".to_owned(), |p| p.to_string());
        WebReply::new(
            403,
            "text/plain; charset=utf-8",
            format!(
                "{who} is not in web.allow; add its network to web.allow in the configuration\n"
            ),
        )
    }
}

impl Denied {
    /// The answer, with the header line (`WWW-Authenticate`) it needs.
    pub fn reply(self) -> (WebReply, Option<&'static str>) {
        match self {
            Self::NoTokenConfigured => (
                WebReply::new(
                    403,
                    "text/plain; charset=utf-8",
                    "changes through the API need a bearer token, and none is configured: set \
                     [web] token-sha256 = \"<sha256 of the token in hex>\" (printf %s TOKEN | \
                     sha256sum) or token-file = \"/etc/zpxe/token\" (mode 0600 or 0640) and \
                     restart zpxe\n",
                ),
                None,
            ),
            //= https://www.rfc-editor.org/rfc/rfc6750#section-3
            //# If the protected resource request does not include authentication
            //# credentials or does not contain an access token that enables access to
            //# the protected resource, the resource server MUST include the HTTP
            //# "WWW-Authenticate" response header field
            Self::Unauthorized => (
                WebReply::new(
                    401,
                    "text/plain; charset=utf-8",
                    "a valid bearer token is needed: Authorization: Bearer <token>\n",
                ),
                Some("WWW-Authenticate: Bearer realm=\"zpxe\""),
            ),
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // A data dependency the optimizer cannot turn into an early exit.
    std::hint::black_box(diff) == 0
}

/// An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Reads the token file: the token is its content without trailing whitespace.
pub fn read_token_file(path: &Path) -> Result<[u8; 32]> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("web.token-file {}", path.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o004 != 0 {
            bail!(
                "web.token-file {} is readable by every user (mode {:04o}): chmod o-r it \
                 (0600, or 0640 with the zpxe group)",
                path.display(),
                mode & 0o7777
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading web.token-file {}", path.display()))?;
    let token = text.trim_end();
    if token.is_empty() {
        bail!("web.token-file {} is empty", path.display());
    }
    if token.len() > 4096 || token.chars().any(char::is_control) {
        bail!(
            "web.token-file {}: the token must be one line of at most 4096 bytes",
            path.display()
        );
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// Loopback, and the networks zpxe serves: those of the listen addresses, or with a wildcard
/// listen address every network this host is directly connected to (Linux routing table).
fn default_allow(listen: &[IpAddr]) -> Vec<String> {
    let mut out = vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()];
    let wildcard = listen.iter().any(IpAddr::is_unspecified);
    let connected = connected_networks();
    for (net, len) in &connected {
        let cidr = format!("{net}/{len}");
        let serves = wildcard
            || listen.iter().any(|ip| {
                cidr.parse::<Cidr>()
                    .is_ok_and(|c| c.contains(canonical(*ip)))
            });
        if serves && !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    // A listen address whose network the table does not show still serves its own address.
    for ip in listen.iter().filter(|ip| !ip.is_unspecified()) {
        let covered = out
            .iter()
            .any(|c| c.parse::<Cidr>().is_ok_and(|c| c.contains(canonical(*ip))));
        if !covered {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            out.push(format!("{ip}/{len}"));
        }
    }
    out
}

/// IPv4 networks routed directly (no gateway) by this host, from `/proc/net/route`. Empty
/// elsewhere: there `web.allow` lists the networks to serve.
fn connected_networks() -> Vec<(std::net::Ipv4Addr, u32)> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_proc_route(&t))
        .unwrap_or_default()
}

fn parse_proc_route(text: &str) -> Vec<(std::net::Ipv4Addr, u32)> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(flags), Some(mask)) = (f.get(1), f.get(3), f.get(7)) else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(flags), Some(mask)) = (hex(dest), hex(flags), hex(mask)) else {
            continue;
        };
        // The kernel prints each address as a host-order word of network-order bytes.
        let dest = std::net::Ipv4Addr::from(dest.to_ne_bytes());
        let mask = u32::from_be_bytes(mask.to_ne_bytes());
        let len = mask.count_ones();
        // A default route (mask 0) would allow every address.
        if flags & RTF_UP == 0 || flags & RTF_GATEWAY != 0 || len == 0 || mask.leading_ones() != len
        {
            continue;
        }
        if !out.contains(&(dest, len)) {
            out.push((dest, len));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hash(t: &str) -> [u8; 32] {
        Sha256::digest(t.as_bytes()).into()
    }

    #[test]
    fn tokens_compare_by_hash() {
        let a = Access::new(vec![hash("s3cret")], None);
        assert_eq!(a.authorize(Some("Bearer s3cret")), Ok(()));
        assert_eq!(a.authorize(Some("bearer s3cret")), Ok(()));
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer s3cre"),
            Some("Bearer s3cret "),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            assert_eq!(a.authorize(bad), Err(Denied::Unauthorized), "{bad:?}");
        }
        let none = Access::new(Vec::new(), None);
        assert_eq!(
            none.authorize(Some("Bearer s3cret")),
            Err(Denied::NoTokenConfigured)
        );
        let (r, h) = Denied::Unauthorized.reply();
        assert_eq!((r.status, h.is_some()), (401, true));
        assert_eq!(Denied::NoTokenConfigured.reply().0.status, 403);
    }

    #[test]
    fn sha256_hex_parses() {
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_sha256(h), Some(hash("test")));
        assert_eq!(parse_sha256(&h.to_uppercase()), Some(hash("test")));
        assert_eq!(parse_sha256(&h[1..]), None);
        assert_eq!(parse_sha256(&format!("{}g", &h[1..])), None);
    }

    #[test]
    fn allow_lists_match_peers() {
        let a = Access::new(
            Vec::new(),
            Some(vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ]),
        );
        assert!(a.allows(Some("127.0.0.1".parse().unwrap())));
        assert!(a.allows(Some("::ffff:10.1.2.3".parse().unwrap())));
        assert!(!a.allows(Some("10.2.0.1".parse().unwrap())));
        assert!(!a.allows(None));
        assert!(Access::open().allows(None));
        let one = Access::new(Vec::new(), Some(vec!["127.0.0.1/32".parse().unwrap()]));
        assert!(one.allows(Some("127.0.0.1".parse().unwrap())));
        assert!(!one.allows(Some("127.0.0.2".parse().unwrap())));
        let v6 = Access::new(Vec::new(), Some(vec!["::1/128".parse().unwrap()]));
        assert!(v6.allows(Some("::1".parse().unwrap())));
        assert!(!v6.allows(Some("::2".parse().unwrap())));
    }

    #[test]
    fn connected_networks_from_the_routing_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            eth2\t0001A8C0\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_route(table),
            vec![
                ("10.0.0.0".parse().unwrap(), 24),
                ("192.168.0.0".parse().unwrap(), 16)
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn token_files_readable_by_everyone_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token_file(&f).unwrap_err().to_string();
        assert!(e.contains("readable by every user"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&f).unwrap(), hash("s3cret"));
        std::fs::write(&f, "\n").unwrap();
        assert!(read_token_file(&f).is_err());
    }
}
