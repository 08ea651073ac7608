//! One rule type for every per-client choice: `[[boot.rule]]` (what proxyDHCP answers) and
//! `[[menu.rules]]` (which menu entry an iPXE script boots directly) are both [`BootRule`]s.
//!
//! A rule's criteria are parsed once, when the configuration is read, into typed values (MAC
//! addresses, MAC prefixes, UUIDs, CIDRs, architectures); a request is matched by comparing
//! values, never by normalizing text again. Every criterion given must match; within one
//! criterion any listed value may (a `mac` and a `mac-prefix` list are one criterion: the
//! client's MAC is one of them).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};

use crate::dhcp::policy::Ipv4Cidr;
use crate::ids::{ClientUuid, MacAddr, MacPrefix};

/// One rule. The criteria come first; then what the rule does, which depends on where it is:
/// `[[boot.rule]]` uses `loader`, `http-boot`, `ipxe-script-url`, `next-server` and `ignore`,
/// `[[menu.rules]]` uses `entry` ([`BootRule::misplaced_action`] names a key given in the wrong
/// place).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BootRule {
    /// MAC addresses (`mac = "52:54:00:12:34:56"` or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub mac: Vec<MacAddr>,
    /// MAC prefixes, e.g. an OUI (`"00:50:56"` or `"00:50:56:*"`), or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub mac_prefix: Vec<MacPrefix>,
    /// Machine UUIDs (option 97, as dmidecode shows them).
    #[serde(deserialize_with = "one_or_many")]
    pub uuid: Vec<ClientUuid>,
    /// Machine registry groups (a registered machine's `group`).
    #[serde(deserialize_with = "one_or_many")]
    pub group: Vec<String>,
    /// Networks: for proxyDHCP the relay address (`giaddr`) or the client's own address; for
    /// scripts the address the script request comes from.
    #[serde(deserialize_with = "one_or_many")]
    pub subnet: Vec<Ipv4Cidr>,
    /// Architectures: option 93 numbers for proxyDHCP; for scripts the `arch` of the script
    /// URL (the number zpxe's default URL carries, or a name such as iPXE's `${buildarch}`).
    #[serde(deserialize_with = "one_or_many")]
    pub arch: Vec<Arch>,

    /// Loader for clients not yet running iPXE, whatever their architecture.
    pub loader: Option<String>,
    /// URL for UEFI HTTP boot clients, whatever their architecture (match `arch` to narrow it).
    pub http_boot: Option<String>,
    pub ipxe_script_url: Option<String>,
    pub next_server: Option<Ipv4Addr>,
    /// Do not answer matching clients.
    pub ignore: bool,
    /// The menu entry booted without the menu (`[[menu.rules]]`).
    pub entry: Option<String>,
}

/// What a rule is matched against: what one request says about its client, already parsed.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Client<'a> {
    pub mac: Option<MacAddr>,
    pub uuid: Option<ClientUuid>,
    pub arch: Option<Arch>,
    /// The addresses `subnet` looks at (relay and client address, or the script request's
    /// source).
    pub addresses: [Option<Ipv4Addr>; 2],
    /// The machine registry group of the client's record.
    pub group: Option<&'a str>,
}

impl BootRule {
    /// Whether the rule names any criterion (a `[[boot.rule]]` without one matches everyone;
    /// a `[[menu.rules]]` without one matches no one).
    pub fn has_criteria(&self) -> bool {
        !(self.mac.is_empty()
            && self.mac_prefix.is_empty()
            && self.uuid.is_empty()
            && self.group.is_empty()
            && self.subnet.is_empty()
            && self.arch.is_empty())
    }

    /// Whether `client` meets every criterion the rule gives.
    pub fn matches(&self, client: &Client<'_>) -> bool {
        let mac = (self.mac.is_empty() && self.mac_prefix.is_empty())
            || client.mac.is_some_and(|m| {
                self.mac.contains(&m) || self.mac_prefix.iter().any(|p| p.matches(m))
            });
        mac && (self.uuid.is_empty() || client.uuid.is_some_and(|u| self.uuid.contains(&u)))
            && (self.arch.is_empty() || client.arch.is_some_and(|a| self.arch.contains(&a)))
            && (self.group.is_empty()
                || client
                    .group
                    .is_some_and(|g| self.group.iter().any(|want| want == g)))
            && (self.subnet.is_empty()
                || client
                    .addresses
                    .iter()
                    .flatten()
                    .any(|ip| self.subnet.iter().any(|net| net.contains(*ip))))
    }

    /// Whether every client `later` matches, this rule matches too (so `later`, placed after
    /// this one, can never be the first match). Exact, from the criteria alone.
    pub fn covers(&self, later: &BootRule) -> bool {
        fn subset<T: PartialEq>(mine: &[T], theirs: &[T]) -> bool {
            mine.is_empty() || (!theirs.is_empty() && theirs.iter().all(|t| mine.contains(t)))
        }
        let mac = (self.mac.is_empty() && self.mac_prefix.is_empty())
            || ((!later.mac.is_empty() || !later.mac_prefix.is_empty())
                && later.mac.iter().all(|m| {
                    self.mac.contains(m) || self.mac_prefix.iter().any(|p| p.matches(*m))
                })
                && later
                    .mac_prefix
                    .iter()
                    .all(|q| self.mac_prefix.iter().any(|p| p.covers(q))));
        let subnet = self.subnet.is_empty()
            || (!later.subnet.is_empty()
                && later.subnet.iter().all(|inner| {
                    self.subnet.iter().any(|outer| {
                        outer.prefix_len <= inner.prefix_len && outer.contains(inner.network)
                    })
                }));
        mac && subnet
            && subset(&self.uuid, &later.uuid)
            && subset(&self.arch, &later.arch)
            && subset(&self.group, &later.group)
    }

    /// Whether the rule only ever matches clients whose MAC is in `macs` or whose UUID is in
    /// `uuids` (the ignore lists, which are consulted before any rule).
    pub fn only_matches(&self, macs: &[MacAddr], uuids: &[ClientUuid]) -> bool {
        let by_mac = !self.mac.is_empty()
            && self.mac_prefix.is_empty()
            && self.mac.iter().all(|m| macs.contains(m));
        let by_uuid = !self.uuid.is_empty() && self.uuid.iter().all(|u| uuids.contains(u));
        by_mac || by_uuid
    }

    /// A key this rule gives that does nothing where it is: `entry` in a `[[boot.rule]]`
    /// (`menu = false`), or a proxyDHCP action in a `[[menu.rules]]` (`menu = true`).
    pub fn misplaced_action(&self, menu: bool) -> Option<&'static str> {
        if menu {
            [
                ("loader", self.loader.is_some()),
                ("http-boot", self.http_boot.is_some()),
                ("ipxe-script-url", self.ipxe_script_url.is_some()),
                ("next-server", self.next_server.is_some()),
                ("ignore", self.ignore),
            ]
            .into_iter()
            .find_map(|(key, given)| given.then_some(key))
        } else {
            self.entry.is_some().then_some("entry")
        }
    }

    /// The first architecture this rule names that DHCP can never send (a name: option 93
    /// carries numbers).
    pub fn named_arch(&self) -> Option<&Arch> {
        self.arch.iter().find(|a| matches!(a, Arch::Name(_)))
    }
}

/// A client architecture: an option 93 number (RFC 4578 section 2.1, IANA's Processor
/// Architecture Types), or a name a script URL carries (iPXE's `${buildarch}` such as
/// `x86_64`, or `${platform}` such as `efi`), kept lowercase.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Code(u16),
    Name(ArchName),
}

/// 1 to 16 of `a-z`, `0-9`, `_`, `-`.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct ArchName {
    bytes: [u8; 16],
    len: u8,
}

impl ArchName {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for ArchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::Code(n) => write!(f, "{n}"),
            Arch::Name(name) => f.write_str(name.as_str()),
        }
    }
}

/// An architecture that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid architecture {0:?}: a number 0-65535 or a name of 1 to 16 letters, digits, '_' or '-'"
)]
pub struct ArchParseError(String);

impl FromStr for Arch {
    type Err = ArchParseError;

    /// Digits are the option 93 number (`7`, `0007`); anything else a name, any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ArchParseError(text.to_owned());
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse().map(Arch::Code).map_err(|_| error());
        }
        if !(1..=16).contains(&text.len())
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(error());
        }
        let mut bytes = [0u8; 16];
        for (slot, b) in bytes.iter_mut().zip(text.bytes()) {
            *slot = b.to_ascii_lowercase();
        }
        Ok(Arch::Name(ArchName {
            bytes,
            len: u8::try_from(text.len()).map_err(|_| error())?,
        }))
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Arch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an architecture: a number (option 93) or a name")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Arch, E> {
                u16::try_from(n)
                    .map(Arch::Code)
                    .map_err(|_| E::custom(format!("architecture {n} is not 0-65535")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Arch, E> {
                u16::try_from(n)
                    .map(Arch::Code)
                    .map_err(|_| E::custom(format!("architecture {n} is not 0-65535")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Arch, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One value or a list of them (`mac = "..."` or `mac = ["...", "..."]`).
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value or a list of values")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(Scalar(item)) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            T::deserialize(s.into_deserializer()).map(|v| vec![v])
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Vec<T>, E> {
            T::deserialize(n.into_deserializer()).map(|v| vec![v])
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Vec<T>, E> {
            T::deserialize(n.into_deserializer()).map(|v| vec![v])
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// One list element, converted while its own deserializer runs, so that an error carries the
/// element's position (a `try_from` conversion after the element is read would be reported at
/// the whole list).
struct Scalar<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Scalar<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
                T::deserialize(s.into_deserializer())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
                T::deserialize(n.into_deserializer())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
                T::deserialize(n.into_deserializer())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData)).map(Scalar)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(text: &str) -> BootRule {
        toml::from_str(text).unwrap()
    }

    fn client(mac: &str) -> Client<'static> {
        Client {
            mac: Some(mac.parse().unwrap()),
            ..Client::default()
        }
    }

    #[test]
    fn one_value_or_a_list_parsed_once() {
        let r = rule(
            "mac = [\"52:54:00:00:00:01\", \"52-54-00-00-00-02\"]\nmac-prefix = \"00:50:56:*\"\n\
             arch = [7, \"x86_64\", \"9\"]\nsubnet = \"10.1.0.0/16\"\ngroup = [\"lab\"]\n",
        );
        assert_eq!(r.mac.len(), 2);
        assert_eq!(r.mac_prefix[0].to_string(), "00:50:56:*");
        assert_eq!(r.arch[0], Arch::Code(7));
        assert_eq!(r.arch[1].to_string(), "x86_64");
        assert_eq!(r.arch[2], Arch::Code(9));
        assert_eq!(r.group, ["lab"]);
        let one = rule("mac = \"52:54:00:00:00:01\"\narch = 0\n");
        assert_eq!((one.mac.len(), one.arch.clone()), (1, vec![Arch::Code(0)]));
        for bad in [
            "mac = \"zz\"",
            "mac = [\"52:54:00:00:00:01\", 3]",
            "mac-prefix = \"00:50:56:11:22:33\"",
            "arch = 70000",
            "arch = \"x 86\"",
            "subnet = \"10.0.0.0/33\"",
            "uuid = \"nope\"",
            "bogus = 1",
        ] {
            assert!(toml::from_str::<BootRule>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_is_by_value() {
        let r = rule("mac = [\"52:54:00:00:00:01\"]\nmac-prefix = [\"00:50:56\"]\n");
        assert!(r.matches(&client("52:54:00:00:00:01")));
        assert!(r.matches(&client("00:50:56:aa:bb:cc")));
        assert!(!r.matches(&client("00:50:57:aa:bb:cc")));
        assert!(!r.matches(&Client::default()), "no MAC known");

        let arch = rule("arch = [\"EFI\", 7]\n");
        let named = Client {
            arch: Some("efi".parse().unwrap()),
            ..Client::default()
        };
        assert!(arch.matches(&named));
        let coded = Client {
            arch: Some("0007".parse().unwrap()),
            ..Client::default()
        };
        assert!(arch.matches(&coded));

        let net = rule("subnet = [\"10.1.0.0/16\", \"192.168.5.0/24\"]\ngroup = \"lab\"\n");
        let mut c = Client {
            addresses: [None, Some(Ipv4Addr::new(192, 168, 5, 9))],
            group: Some("lab"),
            ..Client::default()
        };
        assert!(net.matches(&c));
        c.group = Some("office");
        assert!(!net.matches(&c));
        c.group = None;
        assert!(!net.matches(&c));
        assert!(
            rule("").matches(&Client::default()),
            "no criteria: everyone"
        );
        assert!(!rule("").has_criteria());
    }

    #[test]
    fn covers_is_exact_on_the_criteria() {
        let oui = rule("mac-prefix = \"00:50:56\"\n");
        assert!(oui.covers(&rule("mac = \"00:50:56:01:02:03\"\narch = 7\n")));
        assert!(oui.covers(&rule("mac-prefix = \"00:50:56:aa\"\n")));
        assert!(!oui.covers(&rule(
            "mac = [\"00:50:56:01:02:03\", \"52:54:00:00:00:01\"]\n"
        )));
        assert!(!oui.covers(&rule("arch = 7\n")));
        let wide = rule("subnet = \"10.0.0.0/8\"\n");
        assert!(wide.covers(&rule("subnet = [\"10.1.0.0/16\", \"10.2.3.0/24\"]\n")));
        assert!(!wide.covers(&rule("subnet = [\"10.1.0.0/16\", \"11.0.0.0/24\"]\n")));
        assert!(rule("").covers(&rule("group = \"x\"\n")));
        assert!(!rule("group = [\"a\", \"b\"]\n").covers(&rule("group = [\"b\", \"c\"]\n")));
        assert!(rule("arch = [7, 9]\n").covers(&rule(
            "arch = 9\nuuid = \"01020304-0506-0708-090a-0b0c0d0e0f10\"\n"
        )));

        let ignored = rule("mac = [\"52:54:00:00:00:01\"]\n");
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        assert!(ignored.only_matches(&[mac], &[]));
        assert!(!rule("mac-prefix = \"52:54:00\"\n").only_matches(&[mac], &[]));
    }

    #[test]
    fn actions_in_the_wrong_place_are_named() {
        assert_eq!(
            rule("entry = \"x\"\n").misplaced_action(false),
            Some("entry")
        );
        assert_eq!(rule("entry = \"x\"\n").misplaced_action(true), None);
        assert_eq!(
            rule("loader = \"a.efi\"\n").misplaced_action(true),
            Some("loader")
        );
        assert_eq!(
            rule("ignore = true\n").misplaced_action(true),
            Some("ignore")
        );
        assert!(rule("arch = \"efi\"\n").named_arch().is_some());
        assert!(rule("arch = 7\n").named_arch().is_none());
    }
}
