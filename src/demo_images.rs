//! The demo image set: stand-ins for a WinPE boot (loaders, wimboot, BCD, boot.sdi, boot.wim)
//! with deterministic contents, and a manifest of their SHA-256 sums so every byte a client
//! downloads can be checked.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The files of the demo set, relative to the root, with their sizes.
pub fn demo_files(wim_size: u64) -> Vec<(&'static str, u64)> {
    vec![
        ("undionly.kpxe", 1 << 20),
        ("ipxe.efi", 1 << 20),
        ("snponly.efi", 1 << 20),
        ("ipxe-arm64.efi", 1 << 20),
        ("wimboot", 64 << 10),
        ("Boot/BCD", 256 << 10),
        ("Boot/boot.sdi", 3 << 20),
        ("sources/boot.wim", wim_size),
    ]
}

/// Writes the demo set below `root` and `manifest.sha256` (sha256sum format) beside the files.
pub fn create(root: &Path, wim_size: u64) -> io::Result<()> {
    let mut manifest = String::new();
    for (name, size) in demo_files(wim_size) {
        let path = root.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let digest = write_pattern(&path, name, size)?;
        manifest.push_str(&format!("{digest}  {name}\n"));
    }
    fs::write(root.join("manifest.sha256"), manifest)
}

/// Fills a file with a pseudo-random stream seeded by its name: every block differs, so a block
/// served at the wrong offset or from the wrong file is caught.
fn write_pattern(path: &Path, name: &str, size: u64) -> io::Result<String> {
    let mut seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let tmp = path.with_extension("partial");
    let mut out = io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        for word in chunk[..n].chunks_mut(8) {
            // xorshift64*
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        out.write_all(&chunk[..n])?;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    out.flush()?;
    drop(out);
    fs::rename(&tmp, path)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_files_and_matching_manifest() {
        let dir = tempfile::tempdir().expect("tmp");
        create(dir.path(), 100_003).expect("create");
        let manifest = fs::read_to_string(dir.path().join("manifest.sha256")).expect("manifest");
        assert_eq!(manifest.lines().count(), demo_files(0).len());
        for line in manifest.lines() {
            let (sum, name) = line.split_once("  ").expect("format");
            let bytes = fs::read(dir.path().join(name)).expect("file");
            assert_eq!(hex(&Sha256::digest(&bytes)), sum, "{name}");
        }
        let wim = fs::metadata(dir.path().join("sources/boot.wim")).expect("wim");
        assert_eq!(wim.len(), 100_003);
        let a = fs::read(dir.path().join("ipxe.efi")).expect("a");
        let b = fs::read(dir.path().join("snponly.efi")).expect("b");
        assert_ne!(a, b, "files of equal size differ");
    }
}
