//! What every downloaded byte is checked against: a manifest of SHA-256 sums (sha256sum format),
//! or a local copy of the image root hashed on first use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Expected digests by path relative to the image root.
#[derive(Debug, Default)]
pub struct Expected {
    sums: Mutex<HashMap<String, Option<[u8; 32]>>>,
    root: Option<PathBuf>,
}

impl Expected {
    /// Reads a `sha256sum`-format manifest: `<hex>  <path>` per line.
    pub fn from_manifest(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
        let mut sums = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (hex, name) = line
                .split_once("  ")
                .or_else(|| line.split_once(" *"))
                .ok_or_else(|| {
                    anyhow::anyhow!("{}:{}: not `<sha256>  <path>`", path.display(), n + 1)
                })?;
            let digest = parse_hex(hex.trim())
                .ok_or_else(|| anyhow::anyhow!("{}:{}: bad digest", path.display(), n + 1))?;
            sums.insert(normalize(name), Some(digest));
        }
        Ok(Self {
            sums: Mutex::new(sums),
            root: None,
        })
    }

    /// Hashes files below `root` when first asked for them.
    pub fn from_root(root: &Path) -> Self {
        Self {
            sums: Mutex::default(),
            root: Some(root.to_owned()),
        }
    }

    /// The digest a file must have, if known.
    pub fn digest(&self, name: &str) -> Option<[u8; 32]> {
        let key = normalize(name);
        let mut sums = self.sums.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = sums.get(&key) {
            return *d;
        }
        let d = self.root.as_ref().and_then(|root| {
            let bytes = std::fs::read(root.join(&key)).ok()?;
            Some(Sha256::digest(&bytes).into())
        });
        sums.insert(key, d);
        d
    }
}

/// Checks one download as its bytes arrive, in order.
#[derive(Debug)]
pub struct Check {
    hasher: Sha256,
    next: u64,
    out_of_order: bool,
}

impl Default for Check {
    fn default() -> Self {
        Self::new()
    }
}

impl Check {
    pub fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            next: 0,
            out_of_order: false,
        }
    }

    pub fn update(&mut self, offset: u64, bytes: &[u8]) {
        if offset != self.next {
            self.out_of_order = true;
        }
        self.hasher.update(bytes);
        self.next = offset + bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.next
    }

    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    /// Whether the bytes match `expected`; `None` when nothing is known to compare with.
    pub fn matches(self, expected: Option<[u8; 32]>) -> Option<bool> {
        let got: [u8; 32] = self.hasher.finalize().into();
        expected.map(|e| e == got && !self.out_of_order)
    }
}

fn normalize(name: &str) -> String {
    name.trim_start_matches(['/', '\\']).replace('\\', "/")
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_and_check() {
        let dir = tempfile::tempdir().expect("tmp");
        let sum = Sha256::digest(b"hello");
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("m"), format!("{hex}  Boot/BCD\n")).expect("write");
        let e = Expected::from_manifest(&dir.path().join("m")).expect("manifest");
        let mut c = Check::new();
        c.update(0, b"hel");
        c.update(3, b"lo");
        assert_eq!(c.matches(e.digest("\\Boot\\BCD")), Some(true));
        let mut c = Check::new();
        c.update(0, b"help!");
        assert_eq!(c.matches(e.digest("/Boot/BCD")), Some(false));
        assert_eq!(Check::new().matches(e.digest("other")), None);
    }

    #[test]
    fn root_hashes_on_demand() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a"), b"abc").expect("write");
        let e = Expected::from_root(dir.path());
        let mut c = Check::new();
        c.update(0, b"abc");
        assert_eq!(c.matches(e.digest("a")), Some(true));
        assert_eq!(e.digest("missing"), None);
    }
}
