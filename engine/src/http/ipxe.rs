//! iPXE script generation: a boot menu (or a direct boot chosen by MAC/UUID/arch rules) for
//! `/boot.ipxe?mac=..&uuid=..&arch=..`, with optional progress reports.
//!
//! Every value written into a script is either from the configuration and checked against a
//! character whitelist, or from the client and reduced to a normalized form (hex, `:` and
//! `-`). Nothing a client sends can start a new line, an iPXE operator (`||`, `&&`, `;`) or a
//! settings expansion (`${...}`). The only free-form texts are an entry's `cmdline` and
//! `snippet`, which the administrator writes as iPXE on purpose.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::handler::{Handler, Reply, StaticFiles};
use super::request::{Request, valid_host};
use super::response::StatusCode;
use crate::ids::{ClientUuid, MacAddr};
use crate::image::ImageCatalog;
pub use crate::rule::BootRule;
use crate::rule::{Arch, Client};

/// The boot menu (the `[http.menu]` table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BootMenu {
    pub title: String,
    /// How long the menu waits before booting the default entry; 0 waits forever.
    pub timeout_ms: u64,
    /// The id of the entry chosen when the timeout expires.
    pub default: Option<String>,
    pub entries: Vec<MenuEntry>,
    /// Clients that boot one entry directly, without a menu. First match wins.
    pub rules: Vec<BootRule>,
}

impl Default for BootMenu {
    fn default() -> Self {
        Self {
            title: "zpxe boot menu".to_owned(),
            timeout_ms: 10_000,
            default: None,
            entries: Vec::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MenuEntry {
    /// Letters, digits, `.`, `_`, `-`; also the script label.
    pub id: String,
    pub label: String,
    pub kind: EntryKind,
}

/// What an entry boots. Paths are relative to the HTTP root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum EntryKind {
    /// Windows PE through wimboot.
    #[serde(rename_all = "kebab-case")]
    Winpe {
        wimboot: String,
        bcd: String,
        boot_sdi: String,
        boot_wim: String,
    },
    Linux {
        kernel: String,
        #[serde(default)]
        initrd: Option<String>,
        #[serde(default)]
        cmdline: String,
    },
    /// Custom iPXE lines (like 2PXE's custom menu items), inserted as written.
    Script {
        snippet: String,
    },
    /// Leave iPXE and let the firmware try the next boot device.
    Exit,
    Shell,
}

/// A configuration value that cannot go into a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MenuError {
    #[error("entry id {0:?}: use letters, digits, '.', '_' and '-'")]
    BadId(String),
    #[error("entry {0:?}: path {1:?} has characters not allowed in a script URL")]
    BadPath(String, String),
    #[error("entry {0:?}: cmdline or snippet contains a control character")]
    BadText(String),
    #[error("duplicate entry id {0:?}")]
    Duplicate(String),
    #[error("default or rule names unknown entry {0:?}")]
    UnknownEntry(String),
    #[error("rules[{0}]: {1}")]
    BadRule(usize, String),
    #[error("URL {0:?} has characters not allowed in a script")]
    BadUrl(String),
}

impl BootMenu {
    /// Checks the whole menu (for configuration loading). `generate` skips what fails here.
    pub fn check(&self) -> Result<(), MenuError> {
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            check_entry(e)?;
            if !seen.insert(e.id.as_str()) {
                return Err(MenuError::Duplicate(e.id.clone()));
            }
        }
        let known = |id: &str| self.entries.iter().any(|e| e.id == id);
        if let Some(d) = &self.default
            && !known(d)
        {
            return Err(MenuError::UnknownEntry(d.clone()));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let Some(entry) = &r.entry else {
                return Err(MenuError::BadRule(i, "no entry to boot".into()));
            };
            if !known(entry) {
                return Err(MenuError::UnknownEntry(entry.clone()));
            }
            if let Some(key) = r.misplaced_action(true) {
                return Err(MenuError::BadRule(
                    i,
                    format!("{key} belongs to [[boot.rule]]; a menu rule boots an entry"),
                ));
            }
        }
        Ok(())
    }

    /// The index of the first rule that matches this client and names an entry it can boot.
    /// A rule without criteria matches no one.
    pub fn rule_index(&self, q: &BootQuery) -> Option<usize> {
        let client = q.client();
        self.rules
            .iter()
            .position(|r| r.has_criteria() && r.matches(&client) && self.rule_entry(r).is_some())
    }

    /// The rule-selected entry for this client, with the rule's index, if any.
    pub fn rule_for(&self, q: &BootQuery) -> Option<(usize, &MenuEntry)> {
        let i = self.rule_index(q)?;
        Some((i, self.rule_entry(self.rules.get(i)?)?))
    }

    /// Whether any rule names a machine registry group (so the caller must look the client's
    /// group up first).
    pub fn uses_groups(&self) -> bool {
        self.rules.iter().any(|r| !r.group.is_empty())
    }

    fn rule_entry(&self, rule: &BootRule) -> Option<&MenuEntry> {
        let id = rule.entry.as_deref()?;
        self.entries
            .iter()
            .find(|e| e.id == id && check_entry(e).is_ok())
    }

    /// The script for one client. `base_url` is where the boot files are served (no trailing
    /// slash needed); `report_url`, when given, receives `?mac=..&stage=..` fetches.
    /// With `menu_only`, rules are not applied.
    pub fn generate(
        &self,
        q: &BootQuery,
        base_url: &str,
        report_url: Option<&str>,
        menu_only: bool,
    ) -> String {
        let base = if safe_url(base_url) {
            base_url.trim_end_matches('/')
        } else {
            ""
        };
        let report = Report {
            url: report_url.filter(|u| safe_url(u)),
            mac: q.mac,
        };
        let mut s = String::from("#!ipxe\n# generated by zpxe\n");
        report.line(&mut s, "script", None);
        if !menu_only && let Some((_, entry)) = self.rule_for(q) {
            entry_body(&mut s, entry, base, &report);
            failed_block(&mut s, &report);
            return s;
        }
        let entries: Vec<&MenuEntry> = self
            .entries
            .iter()
            .filter(|e| check_entry(e).is_ok())
            .collect();
        let _ = writeln!(s, ":zpxe-menu\nmenu {}", safe_label(&self.title));
        for e in &entries {
            let _ = writeln!(s, "item {} {}", e.id, safe_label(&e.label));
        }
        let mut choose = String::from("choose");
        let default = self
            .default
            .as_deref()
            .filter(|d| entries.iter().any(|e| e.id == *d));
        if let Some(d) = default {
            if self.timeout_ms > 0 {
                let _ = write!(choose, " --timeout {}", self.timeout_ms);
            }
            let _ = write!(choose, " --default {d}");
        }
        let _ = writeln!(s, "{choose} zpxe_selected || goto zpxe-cancel");
        s.push_str("goto zpxe-entry-${zpxe_selected}\n:zpxe-cancel\nexit\n");
        for e in &entries {
            let _ = writeln!(s, ":zpxe-entry-{}", e.id);
            entry_body(&mut s, e, base, &report);
        }
        failed_block(&mut s, &report);
        s
    }
}

fn check_entry(e: &MenuEntry) -> Result<(), MenuError> {
    if !safe_id(&e.id) {
        return Err(MenuError::BadId(e.id.clone()));
    }
    let path_ok = |p: &str| {
        if safe_path(p) {
            Ok(())
        } else {
            Err(MenuError::BadPath(e.id.clone(), p.to_owned()))
        }
    };
    let text_ok = |t: &str, newlines: bool| {
        if t.chars()
            .any(|c| c.is_control() && !(newlines && (c == '\n' || c == '\t')))
        {
            Err(MenuError::BadText(e.id.clone()))
        } else {
            Ok(())
        }
    };
    match &e.kind {
        EntryKind::Winpe {
            wimboot,
            bcd,
            boot_sdi,
            boot_wim,
        } => [wimboot, bcd, boot_sdi, boot_wim]
            .into_iter()
            .try_for_each(|p| path_ok(p)),
        EntryKind::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            path_ok(kernel)?;
            initrd.as_deref().map_or(Ok(()), path_ok)?;
            text_ok(cmdline, false)
        }
        EntryKind::Script { snippet } => text_ok(snippet, true),
        EntryKind::Exit | EntryKind::Shell => Ok(()),
    }
}

/// Progress reports: `imgfetch` of the report URL, failures ignored.
struct Report<'a> {
    url: Option<&'a str>,
    mac: Option<MacAddr>,
}

impl Report<'_> {
    fn line(&self, s: &mut String, stage: &str, entry: Option<&str>) {
        let Some(url) = self.url else { return };
        let sep = if url.contains('?') { '&' } else { '?' };
        // Unknown MAC: let iPXE fill in its own (our expansion, not client text).
        let mac = self
            .mac
            .map_or_else(|| "${net0/mac}".to_owned(), |m| m.to_string());
        let entry = entry.map(|e| format!("&entry={e}")).unwrap_or_default();
        //= https://ipxe.org/cmd/isset
        //# To avoid this problem, you can use the || operator
        let _ = writeln!(
            s,
            "imgfetch --name zpxe-report {url}{sep}mac={mac}&stage={stage}{entry} && imgfree zpxe-report ||"
        );
    }
}

fn entry_body(s: &mut String, e: &MenuEntry, base: &str, report: &Report<'_>) {
    report.line(s, "chosen", Some(&e.id));
    let url = |p: &str| format!("{base}/{}", p.trim_start_matches('/'));
    match &e.kind {
        EntryKind::Winpe {
            wimboot,
            bcd,
            boot_sdi,
            boot_wim,
        } => {
            // wimboot finds the files by these names (set both as image name and argument,
            // which old and new iPXE/wimboot pairs each read).
            let _ = writeln!(s, "kernel {} || goto zpxe-failed", url(wimboot));
            for (name, path) in [("BCD", bcd), ("boot.sdi", boot_sdi), ("boot.wim", boot_wim)] {
                let _ = writeln!(
                    s,
                    "initrd -n {name} {} {name} || goto zpxe-failed",
                    url(path)
                );
            }
            report.line(s, "loaded", Some(&e.id));
            s.push_str("boot || goto zpxe-failed\n");
        }
        EntryKind::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            // UEFI kernels find their initrd by name on the command line.
            let initrd_arg = if initrd.is_some() {
                " initrd=initrd"
            } else {
                ""
            };
            let cmd = if cmdline.is_empty() {
                String::new()
            } else {
                format!(" {cmdline}")
            };
            let _ = writeln!(
                s,
                "kernel {}{initrd_arg}{cmd} || goto zpxe-failed",
                url(kernel)
            );
            if let Some(initrd) = initrd {
                let _ = writeln!(s, "initrd -n initrd {} || goto zpxe-failed", url(initrd));
            }
            report.line(s, "loaded", Some(&e.id));
            s.push_str("boot || goto zpxe-failed\n");
        }
        EntryKind::Script { snippet } => {
            for line in snippet.lines() {
                let _ = writeln!(s, "{line}");
            }
            s.push_str("goto zpxe-failed\n");
        }
        EntryKind::Exit => s.push_str("exit\n"),
        EntryKind::Shell => s.push_str("shell\n"),
    }
}

fn failed_block(s: &mut String, report: &Report<'_>) {
    s.push_str(":zpxe-failed\necho zpxe: boot failed\n");
    report.line(s, "failed", None);
    s.push_str("sleep 5\nexit 1\n");
}

fn safe_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.split('/').any(|c| c == "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~/-%".contains(&b))
}

/// URL characters that iPXE reads as plain text inside one argument: no whitespace, quotes,
/// backslashes or `$` (settings expansion).
fn safe_url(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 1024
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?[]@!()*+,;=%&".contains(&b))
}

/// Menu text: letters, digits, spaces and harmless punctuation; anything else is dropped.
fn safe_label(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .,:_()/+-".contains(*c))
        .take(100)
        .collect();
    let trimmed = kept.trim().trim_start_matches('-').trim();
    if trimmed.is_empty() {
        "-".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// What a client says about itself in the script URL, parsed (invalid values are dropped), and
/// what the server knows beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootQuery {
    /// `52:54:00:12:34:56`, `52-54-00-12-34-56` or `525400123456`, any case.
    pub mac: Option<MacAddr>,
    /// 8-4-4-4-12 or 32 hex digits, any case.
    pub uuid: Option<ClientUuid>,
    /// A number (option 93, as zpxe's default URL sends it) or a name such as `x86_64`.
    pub arch: Option<Arch>,
    /// The address the request came from (not from the URL: the server sets it).
    pub peer: Option<Ipv4Addr>,
    /// The client's machine registry group (not from the URL: the server sets it).
    pub group: Option<String>,
}

impl BootQuery {
    pub fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for pair in query.split('&').take(32) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(value) = percent_decode(raw) else {
                continue;
            };
            match key {
                "mac" => q.mac = value.parse().ok(),
                "uuid" => q.uuid = value.parse().ok(),
                "arch" => q.arch = value.parse().ok(),
                _ => {}
            }
        }
        q
    }

    /// The query as rules see it.
    pub fn client(&self) -> Client<'_> {
        Client {
            mac: self.mac,
            uuid: self.uuid,
            arch: self.arch,
            addresses: [self.peer, None],
            group: self.group.as_deref(),
        }
    }
}

fn percent_decode(raw: &str) -> Option<String> {
    // Client values are short; anything longer is not a MAC, UUID or architecture.
    if raw.len() > 128 {
        return None;
    }
    crate::path::decode_query_component(raw)
}

/// Answers `/boot.ipxe` (rules, then the menu) and `/menu.ipxe` (always the menu); every
/// other path goes to [`StaticFiles`].
#[derive(Clone, Debug, Default)]
pub struct BootScripts {
    pub menu: Arc<BootMenu>,
    /// Where scripts point for boot files, e.g. `http://10.0.0.1:8050`. `None`: built from the
    /// request's `Host` (checked), so one configuration serves every interface.
    pub base_url: Option<String>,
    pub report_url: Option<String>,
    /// The address the connection comes from, for rules that name subnets (the server sets it
    /// per connection).
    pub peer: Option<Ipv4Addr>,
    /// The client's machine registry group, for rules that name groups (the server sets it
    /// for a registered client).
    pub group: Option<String>,
}

impl Handler for BootScripts {
    fn respond(&mut self, req: &Request<'_>, images: &mut dyn ImageCatalog) -> Reply {
        let menu_only = match req.path {
            "/boot.ipxe" => false,
            "/menu.ipxe" => true,
            _ => return StaticFiles.respond(req, images),
        };
        let base = match (&self.base_url, req.header("host")) {
            (Some(base), _) => base.clone(),
            (None, Some(host)) if !host.is_empty() && valid_host(host) => format!("http://{host}"),
            _ => return Reply::Error(StatusCode::BAD_REQUEST),
        };
        let mut q = BootQuery::parse(req.query.unwrap_or_default());
        q.peer = self.peer;
        q.group = self.group.clone();
        let script = self
            .menu
            .generate(&q, &base, self.report_url.as_deref(), menu_only);
        Reply::Generated {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8".to_owned(),
            body: script.into_bytes(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn winpe() -> EntryKind {
        EntryKind::Winpe {
            wimboot: "wimboot".into(),
            bcd: "Boot/BCD".into(),
            boot_sdi: "Boot/boot.sdi".into(),
            boot_wim: "sources/boot.wim".into(),
        }
    }

    fn menu() -> BootMenu {
        BootMenu {
            title: "Lab boot".into(),
            timeout_ms: 5000,
            default: Some("win".into()),
            entries: vec![
                MenuEntry {
                    id: "win".into(),
                    label: "Windows PE (x64)".into(),
                    kind: winpe(),
                },
                MenuEntry {
                    id: "debian".into(),
                    label: "Debian installer".into(),
                    kind: EntryKind::Linux {
                        kernel: "debian/linux".into(),
                        initrd: Some("debian/initrd.gz".into()),
                        cmdline: "priority=critical".into(),
                    },
                },
                MenuEntry {
                    id: "custom".into(),
                    label: "Custom".into(),
                    kind: EntryKind::Script {
                        snippet: "echo hello\nchain http://x/y.ipxe".into(),
                    },
                },
                MenuEntry {
                    id: "local".into(),
                    label: "Local disk".into(),
                    kind: EntryKind::Exit,
                },
                MenuEntry {
                    id: "shell".into(),
                    label: "iPXE shell".into(),
                    kind: EntryKind::Shell,
                },
            ],
            rules: vec![BootRule {
                mac: vec!["AA-BB-CC-DD-EE-FF".parse().unwrap()],
                entry: Some("debian".into()),
                ..BootRule::default()
            }],
        }
    }

    #[test]
    fn menu_script() {
        let m = menu();
        assert_eq!(m.check(), Ok(()));
        let q = BootQuery::parse("mac=52%3a54%3a00%3a12%3a34%3a56&arch=x86_64");
        let s = m.generate(&q, "http://10.0.0.1:8050/", None, false);
        assert!(s.starts_with("#!ipxe\n"));
        for want in [
            "menu Lab boot\n",
            "item win Windows PE (x64)\n",
            "item debian Debian installer\n",
            "choose --timeout 5000 --default win zpxe_selected || goto zpxe-cancel\n",
            "goto zpxe-entry-${zpxe_selected}\n",
            ":zpxe-entry-win\nkernel http://10.0.0.1:8050/wimboot || goto zpxe-failed\n",
            "initrd -n BCD http://10.0.0.1:8050/Boot/BCD BCD || goto zpxe-failed\n",
            "initrd -n boot.sdi http://10.0.0.1:8050/Boot/boot.sdi boot.sdi || goto zpxe-failed\n",
            "initrd -n boot.wim http://10.0.0.1:8050/sources/boot.wim boot.wim || goto zpxe-failed\n",
            "kernel http://10.0.0.1:8050/debian/linux initrd=initrd priority=critical || goto zpxe-failed\n",
            "initrd -n initrd http://10.0.0.1:8050/debian/initrd.gz || goto zpxe-failed\n",
            ":zpxe-entry-custom\necho hello\nchain http://x/y.ipxe\n",
            ":zpxe-entry-local\nexit\n",
            ":zpxe-entry-shell\nshell\n",
            ":zpxe-failed\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("imgfetch"), "no reports unless asked");
    }

    #[test]
    fn rules_boot_directly() {
        let m = menu();
        let q = BootQuery::parse("mac=aa:bb:cc:dd:ee:ff");
        let s = m.generate(&q, "http://h", None, false);
        assert!(!s.contains("menu "), "{s}");
        assert!(s.contains("kernel http://h/debian/linux"));
        assert!(!s.contains("wimboot"));
        // /menu.ipxe ignores rules.
        assert!(
            m.generate(&q, "http://h", None, true)
                .contains("menu Lab boot")
        );
        // Other clients get the menu.
        let other = BootQuery::parse("mac=aa:bb:cc:dd:ee:00");
        assert!(
            m.generate(&other, "http://h", None, false)
                .contains("menu ")
        );
    }

    #[test]
    fn rules_by_prefix_subnet_and_group_name_their_index() {
        let mut m = menu();
        m.rules.push(BootRule {
            mac_prefix: vec!["00:50:56".parse().unwrap()],
            subnet: vec!["10.9.0.0/16".parse().unwrap()],
            entry: Some("shell".into()),
            ..BootRule::default()
        });
        m.rules.push(BootRule {
            group: vec!["lab".into()],
            arch: vec!["efi".parse().unwrap(), Arch::Code(7)],
            entry: Some("local".into()),
            ..BootRule::default()
        });
        assert_eq!(m.check(), Ok(()));
        assert!(m.uses_groups());
        let mut q = BootQuery::parse("mac=00505601020c&arch=EFI");
        assert_eq!(m.rule_index(&q), None, "no peer address, no group");
        q.peer = Some(Ipv4Addr::new(10, 9, 1, 2));
        assert_eq!(
            m.rule_for(&q).map(|(i, e)| (i, e.id.as_str())),
            Some((1, "shell"))
        );
        q.peer = Some(Ipv4Addr::new(10, 10, 1, 2));
        q.group = Some("lab".into());
        assert_eq!(
            m.rule_for(&q).map(|(i, e)| (i, e.id.as_str())),
            Some((2, "local"))
        );
        let s = m.generate(&q, "http://h", None, false);
        assert!(s.contains("exit\n") && !s.contains("menu "), "{s}");
        // A rule without criteria matches no one.
        m.rules = vec![BootRule {
            entry: Some("local".into()),
            ..BootRule::default()
        }];
        assert_eq!(m.rule_index(&q), None);
    }

    #[test]
    fn reports_at_each_stage() {
        let m = menu();
        let q = BootQuery::parse("mac=52-54-00-12-34-56");
        let s = m.generate(&q, "http://h", Some("http://h:8051/report"), false);
        assert!(s.contains(
            "imgfetch --name zpxe-report http://h:8051/report?mac=52:54:00:12:34:56&stage=script && imgfree zpxe-report ||\n"
        ));
        assert!(s.contains("&stage=chosen&entry=win "));
        assert!(s.contains("&stage=loaded&entry=win "));
        assert!(s.contains("&stage=failed "));
        let unknown = m.generate(
            &BootQuery::default(),
            "http://h",
            Some("http://h/r?x=1"),
            false,
        );
        assert!(unknown.contains("http://h/r?x=1&mac=${net0/mac}&stage=script"));
    }

    #[test]
    fn client_values_cannot_inject() {
        for query in [
            "mac=aa:bb:cc:dd:ee:ff%0Ashell",
            "mac=${net0/ip}",
            "mac=aa:bb:cc:dd:ee:ff%20||%20shell",
            "uuid=x%0A%23!ipxe",
            "arch=x86_64%0Ashell",
            "arch=${platform}",
            "mac=aa:bb:cc:dd:ee:f%",
            "mac=aabbccddeeff00",
        ] {
            let q = BootQuery::parse(query);
            assert_eq!(q, BootQuery::default(), "{query}");
        }
        let q =
            BootQuery::parse("mac=AABBCCDDEEFF&uuid=00112233445566778899AABBCCDDEEFF&arch=ARM64");
        assert_eq!(
            q.mac.map(|m| m.to_string()).as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert!(q.uuid.is_some());
        assert_eq!(q.arch.map(|a| a.to_string()).as_deref(), Some("arm64"));
    }

    #[test]
    fn config_values_are_whitelisted() {
        let mut m = menu();
        m.title = "Evil ${net0/ip}\nshell || exit".into();
        m.entries[0].label = "Win && shell ; exit $x".into();
        m.entries.push(MenuEntry {
            id: "bad id".into(),
            label: "x".into(),
            kind: EntryKind::Shell,
        });
        m.entries.push(MenuEntry {
            id: "badpath".into(),
            label: "x".into(),
            kind: EntryKind::Linux {
                kernel: "a b/${x}".into(),
                initrd: None,
                cmdline: String::new(),
            },
        });
        assert_eq!(m.check(), Err(MenuError::BadId("bad id".into())));
        let s = m.generate(
            &BootQuery::default(),
            "http://h",
            Some("http://h/r ${x}"),
            false,
        );
        assert!(s.contains("menu Evil net0/ipshell  exit\n"), "{s}");
        assert!(s.contains("item win Win  shell  exit x\n"), "{s}");
        assert!(!s.contains("bad id") && !s.contains("badpath"), "{s}");
        assert!(!s.contains("imgfetch"), "unsafe report URL dropped");
        let s = m.generate(&BootQuery::default(), "http://h ${x}", None, false);
        assert!(
            s.contains("kernel /wimboot"),
            "unsafe base URL dropped: {s}"
        );
        m.entries.truncate(5);
        m.rules[0].loader = Some("x.efi".into());
        assert!(matches!(m.check(), Err(MenuError::BadRule(0, _))));
        m.rules[0].loader = None;
        m.rules[0].entry = None;
        assert!(matches!(m.check(), Err(MenuError::BadRule(0, _))));
    }
}
