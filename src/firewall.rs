//! The inbound firewall rules zpxe needs, as one list ([`rules`]) rendered for five firewalls
//! (`zpxe firewall print`), and on Windows created and removed through `netsh advfirewall`
//! ([`apply`], [`remove`]) behind the [`Netsh`] seam, so tests see the exact command lines.
//!
//! 2PXE creates four rules when it starts (DHCP UDP 67, PXE UDP 4011, TFTP UDP 69, HTTP TCP
//! 8050, every interface type); zpxe adds the web service, HTTPS and the TFTP transfer ports.
//! A service turned off in the configuration gets no rule.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Config, PortRange};

/// Where the MSI installs zpxe.exe: the program named by rules printed on other systems.
pub const DEFAULT_WINDOWS_PROGRAM: &str = r"C:\Program Files\zpxe\zpxe.exe";

/// Every rule name zpxe ever creates: removal deletes them all, whatever the configuration
/// says now (a service turned off since keeps no stale rule).
pub const RULE_NAMES: [&str; 7] = [
    "zpxe DHCP (UDP-In)",
    "zpxe PXE (UDP-In)",
    "zpxe TFTP (UDP-In)",
    "zpxe TFTP data (UDP-In)",
    "zpxe HTTP (TCP-In)",
    "zpxe HTTPS (TCP-In)",
    "zpxe web (TCP-In)",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    fn upper(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        }
    }
    fn lower(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The local ports a rule admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    One(u16),
    Range(PortRange),
    /// Whatever port the system hands out (TFTP transfers without `ports.tftp-range`).
    Ephemeral,
}

/// One inbound rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// One of [`RULE_NAMES`].
    pub name: &'static str,
    pub protocol: Protocol,
    pub ports: Ports,
}

/// The rules the configuration needs, in [`RULE_NAMES`] order.
pub fn rules(config: &Config) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut add = |name, protocol, ports| {
        out.push(Rule {
            name,
            protocol,
            ports,
        })
    };
    let (p, s) = (&config.ports, &config.services);
    if s.dhcp {
        // In pxe-only mode a DHCP server on this host owns 67; zpxe answers on 4011 only.
        if config.dhcp.mode.binds_dhcp_port() {
            add(RULE_NAMES[0], Protocol::Udp, Ports::One(p.dhcp));
        }
        add(RULE_NAMES[1], Protocol::Udp, Ports::One(p.pxe));
    }
    if s.tftp {
        add(RULE_NAMES[2], Protocol::Udp, Ports::One(p.tftp));
        // With single-port every transfer answers from the TFTP port itself.
        if !config.tftp.single_port {
            let data = config.tftp_range().map_or(Ports::Ephemeral, Ports::Range);
            add(RULE_NAMES[3], Protocol::Udp, data);
        }
    }
    if s.http {
        add(RULE_NAMES[4], Protocol::Tcp, Ports::One(p.http));
        // HTTPS runs beside HTTP, on its own port, when a certificate is configured.
        if config.tls.cert.is_some() && config.tls.key.is_some() {
            add(RULE_NAMES[5], Protocol::Tcp, Ports::One(config.tls.port));
        }
    }
    if s.web {
        add(RULE_NAMES[6], Protocol::Tcp, Ports::One(p.web));
    }
    out
}

/// The firewalls `zpxe firewall print` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Windows: `netsh advfirewall` commands for an elevated cmd.exe.
    Netsh,
    /// Windows: `New-NetFirewallRule` for an elevated PowerShell.
    Powershell,
    /// Linux: `nft -f` input, into the input chain of `table inet filter`.
    Nftables,
    /// Linux: `firewall-cmd` commands (a `zpxe` service in the default zone).
    Firewalld,
    /// Linux: `ufw` commands.
    Ufw,
}

/// What the ephemeral transfer ports mean for a stateful Linux firewall.
const EPHEMERAL_LINUX: &str = "TFTP transfers use ephemeral ports (net.ipv4.ip_local_port_range, \
     32768-60999 by default). Each transfer sends first from its port, so the client's \
     ACKs are replies a stateful firewall admits as established; set ports.tftp-range in \
     zpxe.toml to open a fixed range instead.";

/// The rules as `format`'s commands; `program` is zpxe.exe's path (Windows rules for the
/// ephemeral transfer ports name the program), `source` the configuration they came from.
pub fn render(format: Format, rules: &[Rule], program: &str, source: &str) -> String {
    let mut s = String::new();
    // `writeln!` into a String cannot fail.
    macro_rules! line {
        ($($t:tt)*) => { let _ = writeln!(s, $($t)*); };
    }
    match format {
        Format::Netsh => {
            line!("REM zpxe: Windows Firewall rules for {source}; run in an elevated cmd.exe.");
            line!("REM Remove them with `zpxe firewall remove`, or one by one:");
            line!("REM   netsh advfirewall firewall delete rule name=\"zpxe DHCP (UDP-In)\"");
            for r in rules {
                if r.ports == Ports::Ephemeral {
                    line!(
                        "REM TFTP transfers use ephemeral ports (49152-65535 on Windows): this \
                         rule admits UDP to any port zpxe.exe binds."
                    );
                }
                line!("netsh {}", netsh_add(r, program));
            }
        }
        Format::Powershell => {
            line!("# zpxe: Windows Firewall rules for {source}; run in an elevated PowerShell.");
            line!("# Remove them with: Remove-NetFirewallRule -Group 'zpxe'");
            for r in rules {
                let ports = match r.ports {
                    Ports::One(p) => format!(" -LocalPort {p}"),
                    Ports::Range(range) => format!(" -LocalPort {}-{}", range.lo, range.hi),
                    Ports::Ephemeral => {
                        line!(
                            "# TFTP transfers use ephemeral ports (49152-65535 on Windows): this \
                             rule admits UDP to any port zpxe.exe binds."
                        );
                        format!(" -Program {}", ps_quote(program))
                    }
                };
                line!(
                    "New-NetFirewallRule -DisplayName {} -Group 'zpxe' -Direction Inbound \
                     -Action Allow -Protocol {}{ports} -Profile Any -InterfaceType Any",
                    ps_quote(r.name),
                    r.protocol.upper()
                );
            }
        }
        Format::Nftables => {
            line!("#!/usr/sbin/nft -f");
            line!(
                "# zpxe: inbound rules for {source}, added to the input chain of table inet \
                 filter (Debian's /etc/nftables.conf)."
            );
            for r in rules {
                let what = match r.ports {
                    Ports::One(p) => format!("{} dport {p}", r.protocol.lower()),
                    Ports::Range(range) => {
                        format!("{} dport {}-{}", r.protocol.lower(), range.lo, range.hi)
                    }
                    Ports::Ephemeral => {
                        line!("# {EPHEMERAL_LINUX}");
                        "ct state established,related".to_owned()
                    }
                };
                line!(
                    "add rule inet filter input {what} accept comment \"{}\"",
                    r.name
                );
            }
        }
        Format::Firewalld => {
            line!("# zpxe: inbound rules for {source}, as a firewalld service `zpxe`.");
            line!("firewall-cmd --permanent --new-service=zpxe");
            for r in rules {
                let port = match r.ports {
                    Ports::One(p) => format!("{p}"),
                    Ports::Range(range) => format!("{}-{}", range.lo, range.hi),
                    Ports::Ephemeral => {
                        line!("# {} (firewalld admits established traffic)", r.name);
                        line!("# {EPHEMERAL_LINUX}");
                        continue;
                    }
                };
                line!("# {}", r.name);
                line!(
                    "firewall-cmd --permanent --service=zpxe --add-port={port}/{}",
                    r.protocol.lower()
                );
            }
            line!("firewall-cmd --permanent --add-service=zpxe");
            line!("firewall-cmd --reload");
        }
        Format::Ufw => {
            line!("# zpxe: inbound rules for {source}.");
            for r in rules {
                let port = match r.ports {
                    Ports::One(p) => format!("{p}"),
                    Ports::Range(range) => format!("{}:{}", range.lo, range.hi),
                    Ports::Ephemeral => {
                        line!("# {} (ufw admits established traffic)", r.name);
                        line!("# {EPHEMERAL_LINUX}");
                        continue;
                    }
                };
                line!(
                    "ufw allow {port}/{} comment '{}'",
                    r.protocol.lower(),
                    r.name
                );
            }
        }
    }
    s
}

/// A PowerShell single-quoted string.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The arguments of `netsh` that create `rule`, as typed at a prompt (and passed verbatim as
/// the command line on Windows).
pub fn netsh_add(rule: &Rule, program: &str) -> String {
    let ports = match rule.ports {
        Ports::One(p) => format!("localport={p}"),
        Ports::Range(r) => format!("localport={}-{}", r.lo, r.hi),
        Ports::Ephemeral => format!("program=\"{program}\""),
    };
    format!(
        "advfirewall firewall add rule name=\"{}\" dir=in action=allow protocol={} {ports} \
         profile=any interfacetype=any enable=yes",
        rule.name,
        rule.protocol.upper()
    )
}

/// The arguments of `netsh` that tell whether a rule named `name` exists (exit status 0).
pub fn netsh_show(name: &str) -> String {
    format!("advfirewall firewall show rule name=\"{name}\"")
}

/// The arguments of `netsh` that delete every rule named `name`.
pub fn netsh_delete(name: &str) -> String {
    format!("advfirewall firewall delete rule name=\"{name}\"")
}

/// What one `netsh` run gave.
#[derive(Debug, Clone)]
pub struct NetshOutcome {
    pub success: bool,
    /// stdout and stderr, for error messages.
    pub output: String,
}

/// Runs `netsh` with an argument string (the seam tests replace).
pub trait Netsh {
    fn run(&mut self, args: &str) -> io::Result<NetshOutcome>;
}

/// Creates the rules: each zpxe rule that exists is deleted first, so a restart or a changed
/// configuration leaves exactly `rules` (no duplicates, no rule for a service turned off).
pub fn apply(rules: &[Rule], program: &str, netsh: &mut dyn Netsh) -> anyhow::Result<()> {
    remove(netsh)?;
    for r in rules {
        run_checked(netsh, &netsh_add(r, program))?;
    }
    Ok(())
}

/// Deletes every rule zpxe creates ([`RULE_NAMES`]) that exists.
pub fn remove(netsh: &mut dyn Netsh) -> anyhow::Result<()> {
    for name in RULE_NAMES {
        // `show` fails for a missing rule (and needs no elevation): a failed `delete` is then
        // a real failure, whatever language netsh reports it in.
        let exists = netsh
            .run(&netsh_show(name))
            .map_err(|e| anyhow::anyhow!("running netsh: {e}"))?
            .success;
        if exists {
            run_checked(netsh, &netsh_delete(name))?;
        }
    }
    Ok(())
}

fn run_checked(netsh: &mut dyn Netsh, args: &str) -> anyhow::Result<()> {
    let out = netsh
        .run(args)
        .map_err(|e| anyhow::anyhow!("running netsh {args}: {e}"))?;
    if !out.success {
        anyhow::bail!("netsh {args} failed: {}", out.output.trim());
    }
    Ok(())
}

/// The real `netsh.exe`, given the argument string verbatim (`raw_arg`), as typed at a prompt.
#[cfg(windows)]
#[derive(Debug, Default)]
pub struct SystemNetsh;

#[cfg(windows)]
impl Netsh for SystemNetsh {
    fn run(&mut self, args: &str) -> io::Result<NetshOutcome> {
        use std::os::windows::process::CommandExt;
        // No console window flashes when the service (or the MSI) runs netsh.
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        let out = std::process::Command::new("netsh")
            .raw_arg(args)
            .creation_flags(CREATE_NO_WINDOW)
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok(NetshOutcome {
            success: out.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// This program's path for rules that name it (the ephemeral transfer ports): on Windows the
/// running zpxe.exe, elsewhere where the MSI installs it.
pub fn this_program() -> String {
    if cfg!(windows)
        && let Ok(exe) = std::env::current_exe()
    {
        return exe.display().to_string();
    }
    DEFAULT_WINDOWS_PROGRAM.to_owned()
}

/// `zpxe firewall`.
#[derive(Debug, clap::Subcommand)]
pub enum FirewallCommand {
    /// Print the inbound rules the configuration needs, for a firewall, on any system.
    Print {
        #[arg(long, value_enum)]
        format: Format,
        /// TOML configuration file (default: the built-in defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// zpxe.exe's path, for the Windows rule that names it (default: this program on
        /// Windows, C:\Program Files\zpxe\zpxe.exe elsewhere).
        #[arg(long, value_name = "PATH")]
        program: Option<String>,
    },
    /// Windows: create the rules now (needs an elevated prompt).
    #[cfg(windows)]
    Apply {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Windows: remove every rule zpxe created (needs an elevated prompt).
    #[cfg(windows)]
    Remove,
}

/// Reads a configuration for its ports and services only: the paths in it may name another
/// system's files (a Windows configuration printed on Linux).
pub fn read_ports(file: Option<&Path>) -> anyhow::Result<(Config, String)> {
    let Some(file) = file else {
        return Ok((Config::default(), "the default configuration".to_owned()));
    };
    let (config, _) = Config::read(file).map_err(|p| anyhow::anyhow!("{p}"))?;
    if let Some(e) = config
        .ports
        .tftp_range
        .as_ref()
        .and_then(|r| r.get_ref().error())
    {
        anyhow::bail!("{}: ports.tftp-range: {e}", file.display());
    }
    Ok((config, file.display().to_string()))
}

/// Runs `zpxe firewall ...`.
pub fn run(command: FirewallCommand) -> anyhow::Result<()> {
    match command {
        FirewallCommand::Print {
            format,
            config,
            program,
        } => {
            let (config, source) = read_ports(config.as_deref())?;
            let program = program.unwrap_or_else(this_program);
            print!("{}", render(format, &rules(&config), &program, &source));
            Ok(())
        }
        #[cfg(windows)]
        FirewallCommand::Apply { config } => {
            let (config, _) = read_ports(config.as_deref())?;
            apply(&rules(&config), &this_program(), &mut SystemNetsh)
        }
        #[cfg(windows)]
        FirewallCommand::Remove => remove(&mut SystemNetsh),
    }
}

/// At `zpxe serve` start: creates the rules where zpxe manages the firewall (Windows,
/// `firewall.manage`); a failure (no elevation) is logged, not fatal: the server still serves
/// the networks the firewall lets through. Elsewhere an explicit `manage = true` gets a note.
pub fn at_start(config: &Config) {
    if config.firewall.manage() {
        manage_at_start(config);
    } else if !cfg!(windows) && config.firewall.manage == Some(true) {
        tracing::info!(
            "firewall.manage applies to the Windows Firewall only; here `zpxe firewall print \
             --format nftables|firewalld|ufw` prints the rules to add"
        );
    }
}

#[cfg(windows)]
fn manage_at_start(config: &Config) {
    let rules = rules(config);
    match apply(&rules, &this_program(), &mut SystemNetsh) {
        Ok(()) => tracing::info!(rules = rules.len(), "Windows Firewall rules in place"),
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "could not create the Windows Firewall rules (run elevated once, or `zpxe firewall \
             apply`; set firewall.manage = false to stop trying)"
        ),
    }
}

#[cfg(not(windows))]
fn manage_at_start(_config: &Config) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with every port moved, a transfer range, HTTPS on, the web service off.
    const CUSTOM: &str = "[server]\nroot = \"/tmp\"\n\
        [ports]\ndhcp = 1067\npxe = 14011\ntftp = 1069\nhttp = 18050\nweb = 18051\n\
        tftp-range = \"50000-50099\"\n\
        [services]\nweb = false\n\
        [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nport = 18443\n";

    fn config(text: &str) -> Config {
        Config::parse_unchecked(Path::new("t.toml"), text).expect("parses")
    }

    fn custom() -> String {
        render_for(Format::Netsh, CUSTOM)
    }

    fn render_for(format: Format, text: &str) -> String {
        render(format, &rules(&config(text)), r"C:\zpxe\zpxe.exe", "t.toml")
    }

    /// The lines that are commands (not comments).
    fn commands(out: &str, comment: &str) -> Vec<String> {
        out.lines()
            .filter(|l| !l.starts_with(comment))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn defaults_are_2pxes_four_plus_web_and_ephemeral_transfers() {
        let r = rules(&Config::default());
        let got: Vec<_> = r.iter().map(|r| (r.name, r.protocol, r.ports)).collect();
        assert_eq!(
            got,
            [
                ("zpxe DHCP (UDP-In)", Protocol::Udp, Ports::One(67)),
                ("zpxe PXE (UDP-In)", Protocol::Udp, Ports::One(4011)),
                ("zpxe TFTP (UDP-In)", Protocol::Udp, Ports::One(69)),
                ("zpxe TFTP data (UDP-In)", Protocol::Udp, Ports::Ephemeral),
                ("zpxe HTTP (TCP-In)", Protocol::Tcp, Ports::One(8050)),
                ("zpxe web (TCP-In)", Protocol::Tcp, Ports::One(8051)),
            ]
        );
    }

    #[test]
    fn services_turned_off_get_no_rule() {
        let text = "[services]\ndhcp = false\nhttp = false\n[tftp]\nsingle-port = true\n";
        let names: Vec<_> = rules(&config(text)).iter().map(|r| r.name).collect();
        // single-port: transfers answer from the TFTP port, no data rule.
        assert_eq!(names, ["zpxe TFTP (UDP-In)", "zpxe web (TCP-In)"]);
        let pxe_only = "[dhcp]\nmode = \"pxe-only\"\n[services]\ntftp = false\nhttp = false\n";
        let names: Vec<_> = rules(&config(pxe_only)).iter().map(|r| r.name).collect();
        assert_eq!(names, ["zpxe PXE (UDP-In)", "zpxe web (TCP-In)"]);
        let off = "[services]\ndhcp = false\ntftp = false\nhttp = false\nweb = false\n";
        assert!(rules(&config(off)).is_empty());
        for format in [
            Format::Netsh,
            Format::Powershell,
            Format::Nftables,
            Format::Ufw,
        ] {
            let out = render_for(format, off);
            let comment = if format == Format::Netsh { "REM" } else { "#" };
            assert!(commands(&out, comment).is_empty(), "{format:?}: {out}");
        }
    }

    #[test]
    fn netsh_commands_carry_the_configured_ports() {
        assert_eq!(
            commands(&custom(), "REM"),
            [
                "netsh advfirewall firewall add rule name=\"zpxe DHCP (UDP-In)\" dir=in \
                 action=allow protocol=UDP localport=1067 profile=any interfacetype=any enable=yes",
                "netsh advfirewall firewall add rule name=\"zpxe PXE (UDP-In)\" dir=in \
                 action=allow protocol=UDP localport=14011 profile=any interfacetype=any enable=yes",
                "netsh advfirewall firewall add rule name=\"zpxe TFTP (UDP-In)\" dir=in \
                 action=allow protocol=UDP localport=1069 profile=any interfacetype=any enable=yes",
                "netsh advfirewall firewall add rule name=\"zpxe TFTP data (UDP-In)\" dir=in \
                 action=allow protocol=UDP localport=50000-50099 profile=any interfacetype=any \
                 enable=yes",
                "netsh advfirewall firewall add rule name=\"zpxe HTTP (TCP-In)\" dir=in \
                 action=allow protocol=TCP localport=18050 profile=any interfacetype=any enable=yes",
                "netsh advfirewall firewall add rule name=\"zpxe HTTPS (TCP-In)\" dir=in \
                 action=allow protocol=TCP localport=18443 profile=any interfacetype=any enable=yes",
            ]
        );
        // Without a range, the program rule covers the ephemeral ports.
        let out = render_for(Format::Netsh, "");
        assert!(
            out.contains(
                "netsh advfirewall firewall add rule name=\"zpxe TFTP data (UDP-In)\" dir=in \
                 action=allow protocol=UDP program=\"C:\\zpxe\\zpxe.exe\" profile=any \
                 interfacetype=any enable=yes\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("REM TFTP transfers use ephemeral ports"),
            "{out}"
        );
    }

    #[test]
    fn powershell_commands_carry_the_configured_ports() {
        let out = render_for(Format::Powershell, CUSTOM);
        let tail = " -Profile Any -InterfaceType Any";
        let rule = |name: &str, proto: &str, port: &str| {
            format!(
                "New-NetFirewallRule -DisplayName '{name}' -Group 'zpxe' -Direction Inbound \
                 -Action Allow -Protocol {proto} -LocalPort {port}{tail}"
            )
        };
        assert_eq!(
            commands(&out, "#"),
            [
                rule("zpxe DHCP (UDP-In)", "UDP", "1067"),
                rule("zpxe PXE (UDP-In)", "UDP", "14011"),
                rule("zpxe TFTP (UDP-In)", "UDP", "1069"),
                rule("zpxe TFTP data (UDP-In)", "UDP", "50000-50099"),
                rule("zpxe HTTP (TCP-In)", "TCP", "18050"),
                rule("zpxe HTTPS (TCP-In)", "TCP", "18443"),
            ]
        );
        let out = render(
            Format::Powershell,
            &rules(&Config::default()),
            r"C:\It's\zpxe.exe",
            "x",
        );
        assert!(
            out.contains(
                "New-NetFirewallRule -DisplayName 'zpxe TFTP data (UDP-In)' -Group 'zpxe' \
                 -Direction Inbound -Action Allow -Protocol UDP -Program 'C:\\It''s\\zpxe.exe' \
                 -Profile Any -InterfaceType Any\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn nftables_rules_carry_the_configured_ports() {
        let out = render_for(Format::Nftables, CUSTOM);
        assert_eq!(
            commands(&out, "#"),
            [
                "add rule inet filter input udp dport 1067 accept comment \"zpxe DHCP (UDP-In)\"",
                "add rule inet filter input udp dport 14011 accept comment \"zpxe PXE (UDP-In)\"",
                "add rule inet filter input udp dport 1069 accept comment \"zpxe TFTP (UDP-In)\"",
                "add rule inet filter input udp dport 50000-50099 accept comment \
                 \"zpxe TFTP data (UDP-In)\"",
                "add rule inet filter input tcp dport 18050 accept comment \"zpxe HTTP (TCP-In)\"",
                "add rule inet filter input tcp dport 18443 accept comment \"zpxe HTTPS (TCP-In)\"",
            ]
        );
        assert!(out.starts_with("#!/usr/sbin/nft -f\n"), "{out}");
        let out = render_for(Format::Nftables, "");
        assert!(
            out.contains(
                "add rule inet filter input ct state established,related accept comment \
                 \"zpxe TFTP data (UDP-In)\"\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn firewalld_commands_carry_the_configured_ports() {
        let out = render_for(Format::Firewalld, CUSTOM);
        let add = |p: &str| format!("firewall-cmd --permanent --service=zpxe --add-port={p}");
        assert_eq!(
            commands(&out, "#"),
            [
                "firewall-cmd --permanent --new-service=zpxe".to_owned(),
                add("1067/udp"),
                add("14011/udp"),
                add("1069/udp"),
                add("50000-50099/udp"),
                add("18050/tcp"),
                add("18443/tcp"),
                "firewall-cmd --permanent --add-service=zpxe".to_owned(),
                "firewall-cmd --reload".to_owned(),
            ]
        );
        // Ephemeral transfer ports: no port opened, the reason printed.
        let out = render_for(Format::Firewalld, "");
        assert!(!out.contains("--add-port=0"), "{out}");
        assert!(
            out.contains("# TFTP transfers use ephemeral ports"),
            "{out}"
        );
        assert_eq!(commands(&out, "#").len(), 1 + 5 + 2, "{out}");
    }

    #[test]
    fn ufw_commands_carry_the_configured_ports() {
        let out = render_for(Format::Ufw, CUSTOM);
        assert_eq!(
            commands(&out, "#"),
            [
                "ufw allow 1067/udp comment 'zpxe DHCP (UDP-In)'",
                "ufw allow 14011/udp comment 'zpxe PXE (UDP-In)'",
                "ufw allow 1069/udp comment 'zpxe TFTP (UDP-In)'",
                "ufw allow 50000:50099/udp comment 'zpxe TFTP data (UDP-In)'",
                "ufw allow 18050/tcp comment 'zpxe HTTP (TCP-In)'",
                "ufw allow 18443/tcp comment 'zpxe HTTPS (TCP-In)'",
            ]
        );
        let out = render_for(Format::Ufw, "");
        assert!(
            out.contains("# TFTP transfers use ephemeral ports"),
            "{out}"
        );
        assert_eq!(commands(&out, "#").len(), 5, "{out}");
    }

    /// Records every netsh call; `existing` rules answer `show` with success.
    struct Recorder {
        calls: Vec<String>,
        existing: Vec<&'static str>,
        fail_on: Option<&'static str>,
    }

    impl Netsh for Recorder {
        fn run(&mut self, args: &str) -> io::Result<NetshOutcome> {
            self.calls.push(args.to_owned());
            let success = match args.strip_prefix("advfirewall firewall show rule name=") {
                Some(name) => self.existing.iter().any(|e| name == format!("\"{e}\"")),
                None => self.fail_on.is_none_or(|f| !args.contains(f)),
            };
            Ok(NetshOutcome {
                success,
                output: if success {
                    "Ok.".into()
                } else {
                    "No rules match the specified criteria.".into()
                },
            })
        }
    }

    fn recorder(existing: &[&'static str]) -> Recorder {
        Recorder {
            calls: Vec::new(),
            existing: existing.to_vec(),
            fail_on: None,
        }
    }

    #[test]
    fn apply_replaces_existing_rules_with_the_configured_ones() {
        let mut netsh = recorder(&["zpxe HTTP (TCP-In)", "zpxe web (TCP-In)"]);
        let text = "[ports]\ntftp-range = \"64001-65000\"\nhttp = 8080\n[services]\nweb = false\n";
        apply(
            &rules(&config(text)),
            r"C:\Program Files\zpxe\zpxe.exe",
            &mut netsh,
        )
        .expect("apply");
        let show = |n: &str| format!("advfirewall firewall show rule name=\"{n}\"");
        let add = |n: &str, proto: &str, port: &str| {
            format!(
                "advfirewall firewall add rule name=\"{n}\" dir=in action=allow protocol={proto} \
                 localport={port} profile=any interfacetype=any enable=yes"
            )
        };
        assert_eq!(
            netsh.calls,
            [
                show("zpxe DHCP (UDP-In)"),
                show("zpxe PXE (UDP-In)"),
                show("zpxe TFTP (UDP-In)"),
                show("zpxe TFTP data (UDP-In)"),
                show("zpxe HTTP (TCP-In)"),
                "advfirewall firewall delete rule name=\"zpxe HTTP (TCP-In)\"".to_owned(),
                show("zpxe HTTPS (TCP-In)"),
                show("zpxe web (TCP-In)"),
                // The web service is off now: its old rule goes and does not come back.
                "advfirewall firewall delete rule name=\"zpxe web (TCP-In)\"".to_owned(),
                add("zpxe DHCP (UDP-In)", "UDP", "67"),
                add("zpxe PXE (UDP-In)", "UDP", "4011"),
                add("zpxe TFTP (UDP-In)", "UDP", "69"),
                add("zpxe TFTP data (UDP-In)", "UDP", "64001-65000"),
                add("zpxe HTTP (TCP-In)", "TCP", "8080"),
            ]
        );
    }

    #[test]
    fn a_failed_netsh_call_is_an_error_naming_it() {
        let mut netsh = recorder(&[]);
        netsh.fail_on = Some("add rule name=\"zpxe TFTP (UDP-In)\"");
        let err = apply(&rules(&Config::default()), "zpxe.exe", &mut netsh)
            .expect_err("the add fails")
            .to_string();
        assert!(err.contains("zpxe TFTP (UDP-In)"), "{err}");
        assert!(err.contains("No rules match"), "{err}");
        // It stopped at the failure.
        assert!(
            netsh
                .calls
                .last()
                .is_some_and(|c| c.contains("TFTP (UDP-In)")),
            "{:?}",
            netsh.calls
        );
    }

    #[test]
    fn remove_deletes_only_the_rules_that_exist() {
        let mut netsh = recorder(&["zpxe TFTP data (UDP-In)"]);
        remove(&mut netsh).expect("remove");
        assert_eq!(netsh.calls.len(), RULE_NAMES.len() + 1, "{:?}", netsh.calls);
        assert_eq!(
            netsh
                .calls
                .iter()
                .filter(|c| c.contains("delete"))
                .collect::<Vec<_>>(),
            ["advfirewall firewall delete rule name=\"zpxe TFTP data (UDP-In)\""]
        );
    }

    #[test]
    fn manage_defaults_to_windows_only() {
        assert_eq!(Config::default().firewall.manage(), cfg!(windows));
        assert!(!config("[firewall]\nmanage = false\n").firewall.manage());
        assert_eq!(
            config("[firewall]\nmanage = true\n").firewall.manage(),
            cfg!(windows)
        );
    }

    #[test]
    fn a_bad_transfer_range_is_refused_when_printing() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("z.toml");
        std::fs::write(&file, "[ports]\ntftp-range = \"9-1\"\n").expect("write");
        let err = read_ports(Some(&file)).expect_err("bad range").to_string();
        assert!(err.contains("ports.tftp-range"), "{err}");
        // A root that does not exist here (a Windows path) does not matter for printing.
        std::fs::write(&file, "[server]\nroot = 'D:\\zpxe'\n").expect("write");
        assert!(read_ports(Some(&file)).is_ok());
    }
}
