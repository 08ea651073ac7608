//! Which file each PXE client boots: the loader for its architecture, the iPXE script once it
//! runs iPXE, an HTTP URL for UEFI HTTP boot (x64 and ARM64), with per-MAC/UUID/subnet rules and
//! ignore lists.

use std::net::Ipv4Addr;
use std::str::FromStr;

use super::template::{TemplateValues, render};
use crate::ids::{ClientUuid, MacAddr};
pub use crate::rule::BootRule;
use crate::rule::{Arch, Client};

/// `[boot]` in the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BootPolicy {
    /// Loader for legacy BIOS PXE ROMs (architecture 0).
    pub bios: String,
    /// Loader for 32-bit x86 UEFI (architecture 6).
    pub efi32: String,
    /// Loader for x64 UEFI (architectures 7 and 9).
    pub efi64: String,
    /// Loader for ARM64 UEFI (architecture 11).
    pub arm64: String,
    /// URL template handed to x64 UEFI HTTP boot clients (architecture 16). Its name predates
    /// ARM64 HTTP boot and stays for existing configurations.
    pub http_boot: String,
    /// URL template handed to ARM64 UEFI HTTP boot clients (architecture 19).
    pub http_boot_arm64: String,
    /// URL template handed to clients already running iPXE.
    pub ipxe_script_url: String,
    /// Boot server to name instead of the address the request arrived on.
    pub next_server: Option<Ipv4Addr>,
    /// Clients never answered.
    pub ignore_macs: Vec<MacAddr>,
    pub ignore_uuids: Vec<ClientUuid>,
    /// `[[boot.rule]]`: the first rule that matches a client overrides the defaults above.
    pub rule: Vec<BootRule>,
}

impl Default for BootPolicy {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            efi32: "ipxe.efi".into(),
            efi64: "ipxe.efi".into(),
            arm64: "ipxe-arm64.efi".into(),
            http_boot: "http://{server}:{http-port}/ipxe.efi".into(),
            http_boot_arm64: "http://{server}:{http-port}/ipxe-arm64.efi".into(),
            ipxe_script_url:
                "http://{server}:{http-port}/boot.ipxe?mac={mac}&uuid={uuid}&arch={arch}".into(),
            next_server: None,
            ignore_macs: Vec::new(),
            ignore_uuids: Vec::new(),
            rule: Vec::new(),
        }
    }
}

/// An IPv4 prefix such as `10.1.0.0/16`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.mask());
        u32::from(ip) & mask == u32::from(self.network) & mask
    }

    /// The subnet mask (option 1): `/24` is 255.255.255.0, `/0` is 0.0.0.0.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }

    /// The subnet's broadcast address (option 28): every host bit set.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?} (expected a.b.c.d/len)")]
pub struct CidrParseError(String);

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrParseError(text.to_owned());
        let (network, len) = text.split_once('/').ok_or_else(error)?;
        let network: Ipv4Addr = network.parse().map_err(|_| error())?;
        let prefix_len: u8 = len.parse().map_err(|_| error())?;
        if prefix_len > 32 {
            return Err(error());
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = CidrParseError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// What the responder learned about a client from its request.
#[derive(Clone, Debug)]
pub struct ClientFacts {
    pub mac: MacAddr,
    pub uuid: Option<ClientUuid>,
    /// Option 93 (first entry), or the architecture in `PXEClient:Arch:xxxxx`.
    pub arch: Option<u16>,
    /// User class `iPXE` or option 175.
    pub ipxe: bool,
    /// Vendor class `HTTPClient`.
    pub http_client: bool,
    /// `giaddr`, when relayed.
    pub relay: Option<Ipv4Addr>,
    /// `ciaddr`, or the datagram's source address when it is not 0.0.0.0.
    pub client_ip: Option<Ipv4Addr>,
    /// The machine registry group of the client's record, when the policy's rules name
    /// groups ([`BootPolicy::uses_groups`]) and the client is registered.
    pub group: Option<String>,
}

impl ClientFacts {
    /// The facts as rules see them.
    pub fn client(&self) -> Client<'_> {
        Client {
            mac: Some(self.mac),
            uuid: self.uuid,
            arch: self.arch.map(Arch::Code),
            addresses: [self.relay, self.client_ip],
            group: self.group.as_deref(),
        }
    }
}

/// How the chosen file is fetched.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootKind {
    /// A loader over TFTP from the next server.
    Loader,
    /// An iPXE script URL.
    IpxeScript,
    /// An absolute URL for UEFI HTTP boot.
    HttpBoot,
}

/// The answer for one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTarget {
    pub next_server: Ipv4Addr,
    pub boot_file: String,
    pub kind: BootKind,
}

/// A [`BootTarget`] with where each part of it came from, for `zpxe explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub target: BootTarget,
    /// The index of the first `[[boot.rule]]` that matched, if any.
    pub rule: Option<usize>,
    /// The key the boot file came from: `bios`, `efi32`, `efi64`, `arm64`, `http-boot`,
    /// `http-boot-arm64` or `ipxe-script-url` of `[boot]`, or `loader`, `http-boot` or
    /// `ipxe-script-url` of the rule.
    pub boot_file_key: &'static str,
    /// Whether the boot file came from the rule.
    pub boot_file_from_rule: bool,
    /// Where the next server came from.
    pub next_server_from: NextServerFrom,
}

/// Where a [`BootTarget::next_server`] came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NextServerFrom {
    Rule,
    Policy,
    /// The address the request arrived on.
    Arrival,
}

/// Why the policy does not answer a client.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    #[error("MAC is on the ignore list")]
    IgnoredMac,
    #[error("UUID is on the ignore list")]
    IgnoredUuid,
    #[error("a boot rule says ignore")]
    IgnoredByRule,
    #[error("no boot file configured for client architecture {0:?}")]
    UnsupportedArch(Option<u16>),
}

//= https://www.rfc-editor.org/rfc/rfc4578#section-2.1
//# Octets "n1" and "n2" encode a 16-bit architecture type identifier
//# that describes the pre-boot runtime environment(s) of the client
//# machine.
//
// The values are those of IANA's "Processor Architecture Types" registry, which RFC 4578 set up
// (its errata swapped 7 and 9 to match the registry). The HTTP boot types (16 = x64 UEFI HTTP,
// 19 = ARM64 UEFI HTTP) were added to the registry later, for the UEFI 2.5 HTTP Boot clients.
const ARCH_BIOS: u16 = 0x0000;
const ARCH_EFI_IA32: u16 = 0x0006;
const ARCH_EFI_X64: u16 = 0x0007;
const ARCH_EFI_BC: u16 = 0x0009;
const ARCH_EFI_ARM64: u16 = 0x000b;
const ARCH_EFI_X64_HTTP: u16 = 0x0010;
const ARCH_EFI_ARM64_HTTP: u16 = 0x0013;

impl BootPolicy {
    /// Picks the boot file. `server` is the address the request arrived on.
    pub fn decide(
        &self,
        facts: &ClientFacts,
        server: Ipv4Addr,
        http_port: u16,
    ) -> Result<BootTarget, PolicyRefusal> {
        self.decide_explained(facts, server, http_port)
            .map(|d| d.target)
    }

    /// The index of the first `[[boot.rule]]` that matches the client (ignore lists aside).
    pub fn rule_index(&self, facts: &ClientFacts) -> Option<usize> {
        let client = facts.client();
        self.rule.iter().position(|rule| rule.matches(&client))
    }

    /// Whether any rule names a machine registry group (so the caller must look the client's
    /// group up before deciding).
    pub fn uses_groups(&self) -> bool {
        self.rule.iter().any(|r| !r.group.is_empty())
    }

    /// [`BootPolicy::decide`] with where each part of the answer came from.
    pub fn decide_explained(
        &self,
        facts: &ClientFacts,
        server: Ipv4Addr,
        http_port: u16,
    ) -> Result<Decision, PolicyRefusal> {
        if self.ignore_macs.contains(&facts.mac) {
            return Err(PolicyRefusal::IgnoredMac);
        }
        if let Some(uuid) = facts.uuid
            && self.ignore_uuids.contains(&uuid)
        {
            return Err(PolicyRefusal::IgnoredUuid);
        }
        let index = self.rule_index(facts);
        let rule = index.and_then(|i| self.rule.get(i));
        if rule.is_some_and(|r| r.ignore) {
            return Err(PolicyRefusal::IgnoredByRule);
        }
        let (next_server, next_server_from) =
            match (rule.and_then(|r| r.next_server), self.next_server) {
                (Some(ip), _) => (ip, NextServerFrom::Rule),
                (None, Some(ip)) => (ip, NextServerFrom::Policy),
                (None, None) => (server, NextServerFrom::Arrival),
            };
        let values = TemplateValues {
            server: next_server,
            http_port,
            mac: facts.mac,
            uuid: facts.uuid,
            arch: facts.arch,
        };
        // (template, key, from the rule)
        fn pick(
            from_rule: Option<&String>,
            rule_key: &'static str,
            default: &str,
            default_key: &'static str,
        ) -> (String, &'static str, bool) {
            match from_rule {
                Some(t) => (t.clone(), rule_key, true),
                None => (default.to_owned(), default_key, false),
            }
        }

        // iPXE first: whatever its architecture, handing it the loader again loops forever.
        let ((template, key, from_rule), kind) = if facts.ipxe {
            let url = pick(
                rule.and_then(|r| r.ipxe_script_url.as_ref()),
                "ipxe-script-url",
                &self.ipxe_script_url,
                "ipxe-script-url",
            );
            (url, BootKind::IpxeScript)
        } else if let Some((default, default_key)) = self.http_boot_url(facts.arch) {
            let url = pick(
                rule.and_then(|r| r.http_boot.as_ref()),
                "http-boot",
                default,
                default_key,
            );
            (url, BootKind::HttpBoot)
        } else if facts.http_client {
            return Err(PolicyRefusal::UnsupportedArch(facts.arch));
        } else {
            let (by_arch, arch_key) = match facts.arch {
                Some(ARCH_BIOS) => (&self.bios, "bios"),
                Some(ARCH_EFI_IA32) => (&self.efi32, "efi32"),
                Some(ARCH_EFI_X64 | ARCH_EFI_BC) => (&self.efi64, "efi64"),
                Some(ARCH_EFI_ARM64) => (&self.arm64, "arm64"),
                _ => return Err(PolicyRefusal::UnsupportedArch(facts.arch)),
            };
            let file = pick(
                rule.and_then(|r| r.loader.as_ref()),
                "loader",
                by_arch,
                arch_key,
            );
            (file, BootKind::Loader)
        };
        if template.is_empty() {
            return Err(PolicyRefusal::UnsupportedArch(facts.arch));
        }
        Ok(Decision {
            target: BootTarget {
                next_server,
                boot_file: render(&template, &values),
                kind,
            },
            rule: index,
            boot_file_key: key,
            boot_file_from_rule: from_rule,
            next_server_from,
        })
    }
}

impl BootPolicy {
    /// The HTTP boot URL template for an HTTP boot architecture; `None` for the others.
    ///
    /// UEFI 2.10 section 24.7 (HTTP Boot): a client booting over HTTP names the HTTP variant of
    /// its architecture type in option 93 (and in `HTTPClient:Arch:xxxxx`) and takes a URI, not
    /// a TFTP path, as its boot file.
    fn http_boot_url(&self, arch: Option<u16>) -> Option<(&String, &'static str)> {
        match arch {
            Some(ARCH_EFI_X64_HTTP) => Some((&self.http_boot, "http-boot")),
            Some(ARCH_EFI_ARM64_HTTP) => Some((&self.http_boot_arm64, "http-boot-arm64")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn facts(arch: u16) -> ClientFacts {
        ClientFacts {
            mac: MAC,
            uuid: None,
            arch: Some(arch),
            ipxe: false,
            http_client: false,
            relay: None,
            client_ip: None,
            group: None,
        }
    }

    fn file(policy: &BootPolicy, facts: &ClientFacts) -> Result<String, PolicyRefusal> {
        policy.decide(facts, SERVER, 8080).map(|t| t.boot_file)
    }

    #[test]
    fn loader_by_architecture() {
        let policy = BootPolicy::default();
        assert_eq!(file(&policy, &facts(0)).unwrap(), "undionly.kpxe");
        assert_eq!(file(&policy, &facts(6)).unwrap(), "ipxe.efi");
        assert_eq!(file(&policy, &facts(7)).unwrap(), "ipxe.efi");
        assert_eq!(file(&policy, &facts(9)).unwrap(), "ipxe.efi");
        assert_eq!(file(&policy, &facts(11)).unwrap(), "ipxe-arm64.efi");
        assert_eq!(
            file(&policy, &facts(10)),
            Err(PolicyRefusal::UnsupportedArch(Some(10)))
        );
        let target = policy.decide(&facts(0), SERVER, 8080).unwrap();
        assert_eq!(
            (target.next_server, target.kind),
            (SERVER, BootKind::Loader)
        );
    }

    #[test]
    fn ipxe_gets_the_script_not_the_loader() {
        let policy = BootPolicy::default();
        for arch in [0, 7, 11, 10] {
            let mut f = facts(arch);
            f.ipxe = true;
            f.uuid = Some("01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap());
            let target = policy.decide(&f, SERVER, 8080).unwrap();
            assert_eq!(target.kind, BootKind::IpxeScript);
            assert_eq!(
                target.boot_file,
                format!(
                    "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A12%3A34%3A56\
                     &uuid=01020304-0506-0708-090a-0b0c0d0e0f10&arch={arch}"
                )
            );
        }
    }

    #[test]
    fn http_boot_gets_an_absolute_url() {
        let policy = BootPolicy::default();
        let mut f = facts(16);
        f.http_client = true;
        let target = policy.decide(&f, SERVER, 80).unwrap();
        assert_eq!(target.kind, BootKind::HttpBoot);
        assert_eq!(target.boot_file, "http://10.0.0.1:80/ipxe.efi");
        // An HTTPClient of an architecture without an HTTP URL gets nothing (15 is x86 UEFI HTTP).
        f.arch = Some(15);
        assert_eq!(
            policy.decide(&f, SERVER, 80),
            Err(PolicyRefusal::UnsupportedArch(Some(15)))
        );
    }

    #[test]
    fn arm64_http_boot_gets_its_own_url() {
        let mut f = facts(19);
        f.http_client = true;
        let policy = BootPolicy::default();
        let target = policy.decide(&f, SERVER, 8050).unwrap();
        assert_eq!(target.kind, BootKind::HttpBoot);
        assert_eq!(target.boot_file, "http://10.0.0.1:8050/ipxe-arm64.efi");
        assert_eq!(target.next_server, SERVER);

        // Configured apart from x64's, which keeps its old key.
        let policy = BootPolicy {
            http_boot: "http://{server}/x64/{mac-hyphen}.efi".into(),
            http_boot_arm64: "http://{server}/arm64/{mac-hyphen}.efi".into(),
            ..Default::default()
        };
        assert_eq!(
            file(&policy, &f).unwrap(),
            "http://10.0.0.1/arm64/01-52-54-00-12-34-56.efi"
        );
        let mut x64 = f.clone();
        x64.arch = Some(16);
        assert_eq!(
            file(&policy, &x64).unwrap(),
            "http://10.0.0.1/x64/01-52-54-00-12-34-56.efi"
        );

        // An empty template turns ARM64 HTTP boot off without touching x64.
        let off = BootPolicy {
            http_boot_arm64: String::new(),
            ..Default::default()
        };
        assert_eq!(
            file(&off, &f),
            Err(PolicyRefusal::UnsupportedArch(Some(19)))
        );
        assert!(file(&off, &x64).is_ok());

        // A rule narrowed by arch overrides one architecture's URL only.
        let ruled = BootPolicy {
            rule: vec![BootRule {
                arch: vec![Arch::Code(19)],
                http_boot: Some("http://{server}/rule-arm64.efi".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(file(&ruled, &f).unwrap(), "http://10.0.0.1/rule-arm64.efi");
        assert_eq!(file(&ruled, &x64).unwrap(), "http://10.0.0.1:8080/ipxe.efi");

        // iPXE started by HTTP boot DHCPs as PXEClient with its own architecture and user
        // class iPXE: it gets the script, not the HTTP boot loader again.
        let mut ipxe = facts(11);
        ipxe.ipxe = true;
        assert_eq!(
            policy.decide(&ipxe, SERVER, 80).unwrap().kind,
            BootKind::IpxeScript
        );
    }

    #[test]
    fn rules_by_mac_uuid_subnet_and_ignore_lists() {
        let uuid: ClientUuid = "8d1b2f34-0000-4000-8000-0000000000aa".parse().unwrap();
        let policy = BootPolicy {
            next_server: Some(Ipv4Addr::new(10, 0, 0, 5)),
            ignore_macs: vec!["52:54:00:00:00:99".parse().unwrap()],
            ignore_uuids: vec!["8d1b2f34-0000-4000-8000-0000000000ff".parse().unwrap()],
            rule: vec![
                BootRule {
                    mac: vec![MAC],
                    loader: Some("special.kpxe".into()),
                    ..Default::default()
                },
                BootRule {
                    uuid: vec![uuid],
                    ipxe_script_url: Some("http://{server}/u/{uuid}.ipxe".into()),
                    next_server: Some(Ipv4Addr::new(10, 9, 9, 9)),
                    ..Default::default()
                },
                BootRule {
                    subnet: vec!["192.168.50.0/24".parse().unwrap()],
                    loader: Some("lab.efi".into()),
                    ..Default::default()
                },
                BootRule {
                    subnet: vec!["172.16.0.0/12".parse().unwrap()],
                    ignore: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let by_mac = policy.decide(&facts(0), SERVER, 80).unwrap();
        assert_eq!(by_mac.boot_file, "special.kpxe");
        assert_eq!(by_mac.next_server, Ipv4Addr::new(10, 0, 0, 5));

        let mut other = facts(7);
        other.mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(file(&policy, &other).unwrap(), "ipxe.efi");

        let mut by_uuid = other.clone();
        by_uuid.uuid = Some(uuid);
        by_uuid.ipxe = true;
        let target = policy.decide(&by_uuid, SERVER, 80).unwrap();
        assert_eq!(target.next_server, Ipv4Addr::new(10, 9, 9, 9));
        assert_eq!(
            target.boot_file,
            "http://10.9.9.9/u/8d1b2f34-0000-4000-8000-0000000000aa.ipxe"
        );

        let mut relayed = other.clone();
        relayed.relay = Some(Ipv4Addr::new(192, 168, 50, 1));
        assert_eq!(file(&policy, &relayed).unwrap(), "lab.efi");
        let mut by_client_ip = other.clone();
        by_client_ip.client_ip = Some(Ipv4Addr::new(192, 168, 50, 77));
        assert_eq!(file(&policy, &by_client_ip).unwrap(), "lab.efi");
        let mut ignored_net = other.clone();
        ignored_net.relay = Some(Ipv4Addr::new(172, 20, 1, 1));
        assert_eq!(
            file(&policy, &ignored_net),
            Err(PolicyRefusal::IgnoredByRule)
        );

        let mut ignored_mac = other.clone();
        ignored_mac.mac = "52:54:00:00:00:99".parse().unwrap();
        assert_eq!(file(&policy, &ignored_mac), Err(PolicyRefusal::IgnoredMac));
        let mut ignored_uuid = other;
        ignored_uuid.uuid = Some("8d1b2f34-0000-4000-8000-0000000000ff".parse().unwrap());
        assert_eq!(
            file(&policy, &ignored_uuid),
            Err(PolicyRefusal::IgnoredUuid)
        );
    }

    #[test]
    fn lists_prefixes_groups_and_where_the_answer_came_from() {
        let policy: BootPolicy = toml::from_str(
            r#"
            efi64 = "default.efi"
            [[rule]]
            mac-prefix = ["00:50:56", "00:0c:29:*"]
            loader = "vmware.efi"
            [[rule]]
            group = ["lab", "rack-7"]
            next-server = "10.0.0.9"
            [[rule]]
            mac = ["52:54:00:00:00:01", "52:54:00:00:00:02"]
            arch = [7, 9]
            ipxe-script-url = "http://{server}/two.ipxe"
            "#,
        )
        .unwrap();
        let mut vm = facts(7);
        vm.mac = "00:0c:29:01:02:03".parse().unwrap();
        let d = policy.decide_explained(&vm, SERVER, 80).unwrap();
        assert_eq!(d.target.boot_file, "vmware.efi");
        assert_eq!(
            (d.rule, d.boot_file_key, d.boot_file_from_rule),
            (Some(0), "loader", true)
        );
        assert_eq!(d.next_server_from, NextServerFrom::Arrival);

        let mut grouped = facts(7);
        grouped.group = Some("rack-7".into());
        assert!(policy.uses_groups());
        let d = policy.decide_explained(&grouped, SERVER, 80).unwrap();
        assert_eq!((d.rule, d.boot_file_key), (Some(1), "efi64"));
        assert_eq!(d.target.next_server, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(d.next_server_from, NextServerFrom::Rule);
        grouped.group = Some("office".into());
        assert_eq!(policy.rule_index(&grouped), None);

        let mut listed = facts(9);
        listed.mac = "52:54:00:00:00:02".parse().unwrap();
        listed.ipxe = true;
        let d = policy.decide_explained(&listed, SERVER, 80).unwrap();
        assert_eq!((d.rule, d.boot_file_key), (Some(2), "ipxe-script-url"));
        assert_eq!(d.target.boot_file, "http://10.0.0.1/two.ipxe");
        listed.arch = Some(0);
        assert_eq!(policy.rule_index(&listed), None);
    }

    #[test]
    fn cidr() {
        let net: Ipv4Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        let host: Ipv4Cidr = "10.0.0.7/32".parse().unwrap();
        assert!(
            host.contains(Ipv4Addr::new(10, 0, 0, 7)) && !host.contains(Ipv4Addr::new(10, 0, 0, 8))
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_shape() {
        #[derive(serde::Deserialize)]
        struct Root {
            boot: BootPolicy,
        }
        let root: Root = toml::from_str(
            r#"
            [boot]
            bios = "ipxe.kpxe"
            ipxe-script-url = "http://{server}/s.ipxe"
            next-server = "10.0.0.2"
            ignore-macs = ["aa:bb:cc:dd:ee:ff"]
            [[boot.rule]]
            subnet = "10.5.0.0/16"
            loader = "snponly.efi"
            [[boot.rule]]
            uuid = "01020304-0506-0708-090a-0b0c0d0e0f10"
            ignore = true
            "#,
        )
        .unwrap();
        assert_eq!(root.boot.bios, "ipxe.kpxe");
        assert_eq!(root.boot.efi64, "ipxe.efi");
        assert_eq!(root.boot.http_boot, "http://{server}:{http-port}/ipxe.efi");
        assert_eq!(
            root.boot.http_boot_arm64,
            "http://{server}:{http-port}/ipxe-arm64.efi"
        );
        assert_eq!(root.boot.rule.len(), 2);
        assert!(root.boot.rule[1].ignore);
        assert!(toml::from_str::<Root>("[boot]\nbogus = 1\n").is_err());
        let arm: Root =
            toml::from_str("[boot]\nhttp-boot-arm64 = \"http://{server}/a.efi\"\n").unwrap();
        assert_eq!(arm.boot.http_boot_arm64, "http://{server}/a.efi");
        assert!(toml::from_str::<Root>("[boot]\n[[boot.rule]]\nmac = \"zz\"\n").is_err());
    }
}
