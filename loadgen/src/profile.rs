//! Which firmware each virtual client runs: one profile, or a mix by percentage.

use std::fmt;
use std::str::FromStr;

use crate::firmware::Firmware;

/// Firmware profiles with weights (percentages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileMix {
    parts: Vec<(Firmware, u32)>,
}

impl ProfileMix {
    /// The default mix, roughly a mixed fleet: mostly UEFI, some legacy BIOS, a few Windows
    /// boot manager downloads.
    pub fn default_mix() -> Self {
        Self {
            parts: vec![
                (Firmware::Edk2, 40),
                (Firmware::Ipxe, 30),
                (Firmware::Bios, 15),
                (Firmware::Bootmgr, 10),
                (Firmware::Pxelinux, 5),
            ],
        }
    }

    /// The firmware of client `i`: deterministic, and spread so that any prefix of clients
    /// follows the weights closely.
    pub fn pick(&self, i: usize, seed: u64) -> Firmware {
        let total: u64 = self.parts.iter().map(|(_, w)| u64::from(*w)).sum();
        let x = (i as u64)
            .wrapping_add(seed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17)
            % total.max(1);
        let mut acc = 0;
        for (f, w) in &self.parts {
            acc += u64::from(*w);
            if x < acc {
                return *f;
            }
        }
        self.parts.first().map_or(Firmware::Bios, |p| p.0)
    }
}

impl fmt::Display for ProfileMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(fw, w)| format!("{}:{w}", fw.name()))
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for ProfileMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "mix" {
            return Ok(Self::default_mix());
        }
        let mut parts = Vec::new();
        for part in s.split(',') {
            let (name, weight) = part.split_once(':').unwrap_or((part, "100"));
            let fw = Firmware::from_name(name.trim()).ok_or_else(|| {
                format!("unknown profile {name:?}: edk2, ipxe, bios, pxelinux, bootmgr or mix")
            })?;
            let w: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight {weight:?} for {name}"))?;
            if w > 0 {
                parts.push((fw, w));
            }
        }
        if parts.is_empty() {
            return Err("empty profile mix".into());
        }
        Ok(Self { parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_follows_weights() {
        let m: ProfileMix = "edk2:50,bios:50".parse().expect("parse");
        let edk2 = (0..1000)
            .filter(|&i| m.pick(i, 3) == Firmware::Edk2)
            .count();
        assert!((400..600).contains(&edk2), "{edk2}");
        let one: ProfileMix = "bootmgr".parse().expect("parse");
        assert!((0..50).all(|i| one.pick(i, 1) == Firmware::Bootmgr));
        let mix: ProfileMix = "mix".parse().expect("parse");
        let kinds: std::collections::HashSet<_> = (0..200).map(|i| mix.pick(i, 1)).collect();
        assert_eq!(kinds.len(), 5);
        assert!("efi".parse::<ProfileMix>().is_err());
        assert!("edk2:x".parse::<ProfileMix>().is_err());
    }
}
