//! Client identities as they appear in DHCP, in script URLs and in configuration: MAC, MAC
//! prefix (OUI) and machine UUID. Parsed once (a request, a configuration load) and compared as
//! values from then on.

use std::fmt;
use std::str::FromStr;

/// An Ethernet hardware address (`chaddr` with `htype` 1, `hlen` 6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The PXELINUX form `01-aa-bb-cc-dd-ee-ff` (ARP type 1, then the address).
    pub fn pxelinux_form(&self) -> String {
        let mut text = String::from("01");
        for byte in self.0 {
            text.push_str(&format!("-{byte:02x}"));
        }
        text
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A MAC or UUID in configuration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {text:?}")]
pub struct IdParseError {
    what: &'static str,
    text: String,
}

impl FromStr for MacAddr {
    type Err = IdParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabbccddeeff` and the PXELINUX
    /// `01-aa-bb-...` form, any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || IdParseError {
            what: "MAC address",
            text: text.to_owned(),
        };
        if text.len() == 12 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut mac = [0u8; 6];
            for (i, slot) in mac.iter_mut().enumerate() {
                let pair = text.get(2 * i..2 * i + 2).ok_or_else(error)?;
                *slot = u8::from_str_radix(pair, 16).map_err(|_| error())?;
            }
            return Ok(MacAddr(mac));
        }
        let groups: Vec<&str> = text.split([':', '-']).collect();
        let groups = match groups.as_slice() {
            ["01", rest @ ..] if rest.len() == 6 => rest,
            all => all,
        };
        if groups.len() != 6 {
            return Err(error());
        }
        let mut mac = [0u8; 6];
        for (slot, group) in mac.iter_mut().zip(groups) {
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            *slot = u8::from_str_radix(group, 16).map_err(|_| error())?;
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = IdParseError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// The first 1 to 5 octets of a MAC address: an OUI (`00:50:56`, also written `00:50:56:*`)
/// or a longer block of one vendor's addresses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct MacPrefix {
    octets: [u8; 6],
    len: u8,
}

impl MacPrefix {
    /// The octets given (1 to 5).
    pub fn octets(&self) -> &[u8] {
        &self.octets[..usize::from(self.len)]
    }

    /// Whether `mac` starts with this prefix.
    pub fn matches(&self, mac: MacAddr) -> bool {
        mac.0.starts_with(self.octets())
    }

    /// Whether every address this prefix matches, `other` matches too.
    pub fn covers(&self, other: &MacPrefix) -> bool {
        other.octets().starts_with(self.octets())
    }
}

impl fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.octets().iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        f.write_str(":*")
    }
}

impl FromStr for MacPrefix {
    type Err = IdParseError;

    /// `00:50:56`, `00-50-56`, `00:50:56:*`: 1 to 5 octets of two hex digits each.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || IdParseError {
            what: "MAC prefix (1 to 5 octets, e.g. 00:50:56)",
            text: text.to_owned(),
        };
        let trimmed = text
            .strip_suffix(":*")
            .or_else(|| text.strip_suffix("-*"))
            .unwrap_or(text);
        let groups: Vec<&str> = trimmed.split([':', '-']).collect();
        if groups.is_empty() || groups.len() > 5 {
            return Err(error());
        }
        let mut octets = [0u8; 6];
        for (slot, group) in octets.iter_mut().zip(&groups) {
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            *slot = u8::from_str_radix(group, 16).map_err(|_| error())?;
        }
        Ok(Self {
            octets,
            len: u8::try_from(groups.len()).map_err(|_| error())?,
        })
    }
}

impl TryFrom<String> for MacPrefix {
    type Error = IdParseError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// A client machine identifier (option 97, type 0): 16 bytes kept exactly as received.
///
/// Firmware fills it from the SMBIOS UUID in the little-endian GUID layout (EDK2 and iPXE both),
/// so the first three fields arrive byte-swapped relative to the text form. `Display` and
/// `FromStr` use the text form that `dmidecode` and the firmware setup screens show.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct ClientUuid {
    wire: [u8; 16],
}

impl ClientUuid {
    pub fn from_wire(wire: [u8; 16]) -> Self {
        Self { wire }
    }

    /// The bytes as they travel in option 97 (after its type byte).
    pub fn wire_bytes(&self) -> [u8; 16] {
        self.wire
    }

    /// Swaps the first three fields between the wire (little-endian) and text (big-endian) orders;
    /// the swap is its own inverse.
    fn swap_guid_fields(mut bytes: [u8; 16]) -> [u8; 16] {
        bytes[0..4].reverse();
        bytes[4..6].reverse();
        bytes[6..8].reverse();
        bytes
    }
}

impl fmt::Display for ClientUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text_order = Self::swap_guid_fields(self.wire);
        for (i, byte) in text_order.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for ClientUuid {
    type Err = IdParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || IdParseError {
            what: "UUID",
            text: text.to_owned(),
        };
        let groups: Vec<&str> = text.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] && lens != [32] {
            return Err(error());
        }
        let hex: String = groups.concat();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error());
        }
        let mut text_order = [0u8; 16];
        for (i, slot) in text_order.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(error)?;
            *slot = u8::from_str_radix(pair, 16).map_err(|_| error())?;
        }
        Ok(Self::from_wire(Self::swap_guid_fields(text_order)))
    }
}

impl TryFrom<String> for ClientUuid {
    type Error = IdParseError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(mac.pxelinux_form(), "01-52-54-00-ab-cd-01");
        assert_eq!("52-54-00-ab-cd-01".parse::<MacAddr>().unwrap(), mac);
        assert_eq!("01-52-54-00-ab-cd-01".parse::<MacAddr>().unwrap(), mac);
        assert_eq!("525400ABCD01".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "+5:54:00:ab:cd:01",
            "525400abcd0",
            "52:54:00abcd01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_prefixes() {
        let oui: MacPrefix = "00:50:56".parse().unwrap();
        assert_eq!(oui, "00-50-56-*".parse().unwrap());
        assert_eq!(oui, "00:50:56:*".parse().unwrap());
        assert_eq!(oui.to_string(), "00:50:56:*");
        assert!(oui.matches(MacAddr([0, 0x50, 0x56, 1, 2, 3])));
        assert!(!oui.matches(MacAddr([0, 0x50, 0x57, 1, 2, 3])));
        let longer: MacPrefix = "00:50:56:aa".parse().unwrap();
        assert!(oui.covers(&longer) && !longer.covers(&oui) && oui.covers(&oui));
        for bad in [
            "",
            "*",
            "0:50:56",
            "00:50:56:11:22:33",
            "00:5g:56",
            "00:50:56*",
            "+0:50",
        ] {
            assert!(bad.parse::<MacPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn uuid_wire_is_little_endian_guid() {
        // SMBIOS UUID 01020304-0506-0708-090a-0b0c0d0e0f10 travels as 04 03 02 01 06 05 08 07 09..
        let wire = [
            0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0x08, 0x07, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
            0x0f, 0x10,
        ];
        let uuid = ClientUuid::from_wire(wire);
        assert_eq!(uuid.to_string(), "01020304-0506-0708-090a-0b0c0d0e0f10");
        let parsed: ClientUuid = "01020304-0506-0708-090A-0B0C0D0E0F10".parse().unwrap();
        assert_eq!(parsed.wire_bytes(), wire);
        assert!("01020304-0506-0708-090a".parse::<ClientUuid>().is_err());
        assert_eq!(
            "0102030405060708090a0b0c0d0e0f10"
                .parse::<ClientUuid>()
                .unwrap(),
            uuid
        );
        assert!(
            "+1020304-0506-0708-090a-0b0c0d0e0f10"
                .parse::<ClientUuid>()
                .is_err()
        );
        assert!(
            "0102030g-0506-0708-090a-0b0c0d0e0f10"
                .parse::<ClientUuid>()
                .is_err()
        );
    }
}
