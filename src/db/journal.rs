//! The DHCP server's lease journal (SQLite only): two files beside the lease file that the event
//! loop appends each commit to before it ACKs, so an ACK waits for a write into the page cache
//! on its own loop and never for another thread. The lease writer brings the lease file up to
//! date behind it and empties a journal file once every commit in it is in the lease file.
//!
//! Crash safety is the lease file's own: a completed write is in the page cache, so a killed
//! process loses nothing (as a WAL commit with `synchronous = NORMAL`); power loss can take
//! what was written since the last checkpoint in both.
//!
//! A file is a run of frames: `magic u32, length u32, crc32 u32` (little-endian), then `length`
//! bytes of payload: `seq u64`, `rows u16`, and per row `ip u32 (network order), state,
//! mac [6], expires_ms i64, client: 0 | 1 len u8 bytes`, where
//! `state` is its name (`len u8` and the bytes of `bound`, `released`, ...). The loop has one write in flight at a
//! time, so only the last frame of a file can be torn by a crash; reading stops at the first
//! frame that is short or fails its checksum.
//!
//! At start, frames of both files are applied in `seq` order on top of the lease file (one
//! transaction), and both files are emptied.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use zpxe_engine::dhcp::MacAddr;
use zpxe_engine::dhcp::leases::LeaseState;

use super::leases::Row;

const MAGIC: u32 = 0x5A4C_4A31;
const HEADER: usize = 12;
/// A commit's frame at most: far above the engine's few rows per commit.
const MAX_PAYLOAD: usize = 1 << 20;
/// A journal file past this size is swapped for the other one (once that one is empty).
pub(crate) const ROTATE_BYTES: u64 = 4 << 20;

/// The two journal files of the lease file at `lease_path`.
pub(crate) fn paths(lease_path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut name = lease_path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [with(".journal-0"), with(".journal-1")]
}

/// Appends commit `seq`'s frame to `out`.
pub(crate) fn encode(seq: u64, rows: &[Row], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&seq.to_le_bytes());
    let count = u16::try_from(rows.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for row in rows.iter().take(usize::from(count)) {
        out.extend_from_slice(&row.ip.octets());
        let state = row.state.as_str().as_bytes();
        out.push(state.len() as u8);
        out.extend_from_slice(state);
        out.extend_from_slice(&row.mac.0);
        out.extend_from_slice(&row.expires_ms.to_le_bytes());
        match &row.client {
            None => out.push(0),
            Some(c) => {
                let c = &c[..c.len().min(usize::from(u8::MAX))];
                out.push(1);
                out.push(c.len() as u8);
                out.extend_from_slice(c);
            }
        }
    }
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&MAGIC.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// A cursor over a payload; `None` when it runs short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn decode_payload(payload: &[u8]) -> Option<(u64, Vec<Row>)> {
    let mut r = Reader(payload);
    let seq = u64::from_le_bytes(r.array()?);
    let count = u16::from_le_bytes(r.array()?);
    let mut rows = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let ip = Ipv4Addr::from(r.array::<4>()?);
        let state_len = r.array::<1>()?[0];
        let state = std::str::from_utf8(r.take(usize::from(state_len))?).ok()?;
        let state = LeaseState::parse(state)?;
        let mac = MacAddr(r.array()?);
        let expires_ms = i64::from_le_bytes(r.array()?);
        let client = match r.array::<1>()?[0] {
            0 => None,
            1 => {
                let len = r.array::<1>()?[0];
                Some(r.take(usize::from(len))?.to_vec())
            }
            _ => return None,
        };
        rows.push(Row {
            ip,
            state,
            client,
            mac,
            expires_ms,
        });
    }
    r.0.is_empty().then_some((seq, rows))
}

/// The whole commits in `bytes`, in file order, and whether it ended in a frame that was cut
/// short or corrupt (everything from there on is ignored).
pub(crate) fn decode(bytes: &[u8]) -> (Vec<(u64, Vec<Row>)>, bool) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(header) = rest.get(..HEADER) else {
            return (out, true);
        };
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (magic, len, crc) = (word(0), word(4) as usize, word(8));
        if magic != MAGIC || len > MAX_PAYLOAD {
            return (out, true);
        }
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            return (out, true);
        };
        if crc32fast::hash(payload) != crc {
            return (out, true);
        }
        let Some(commit) = decode_payload(payload) else {
            return (out, true);
        };
        out.push(commit);
        rest = &rest[HEADER + len..];
    }
    (out, false)
}

/// The commits of both journal files in the order they were made (by `seq`), for replay at
/// start. A file that does not exist holds none.
pub(crate) fn read(paths: &[PathBuf; 2]) -> anyhow::Result<Vec<(u64, Vec<Row>)>> {
    let mut all = Vec::new();
    for path in paths {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "reading the lease journal {}: {e}",
                    path.display()
                ));
            }
        };
        let (commits, torn) = decode(&bytes);
        if torn {
            tracing::warn!(
                path = %path.display(),
                commits = commits.len(),
                "the lease journal ends in a frame cut short (a crash mid-write): keeping the whole commits before it"
            );
        }
        all.extend(commits);
    }
    all.sort_by_key(|(seq, _)| *seq);
    Ok(all)
}

/// Empties the journal file at `path` (created when missing).
pub(crate) fn empty(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(last: u8, client: Option<Vec<u8>>) -> Row {
        Row {
            ip: Ipv4Addr::new(10, 0, 0, last),
            state: LeaseState::Bound,
            client,
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            expires_ms: 1_700_000_000_000 + i64::from(last),
        }
    }

    type Key = (Ipv4Addr, LeaseState, Option<Vec<u8>>, [u8; 6], i64);

    fn key(rows: &[Row]) -> Vec<Key> {
        rows.iter()
            .map(|r| (r.ip, r.state, r.client.clone(), r.mac.0, r.expires_ms))
            .collect()
    }

    /// Frames read back as written, with and without a client identifier.
    #[test]
    fn frames_read_back_as_written() {
        let a = vec![row(5, Some(vec![1, 2, 3])), row(6, None)];
        let b = vec![row(7, Some(vec![9; 64]))];
        let mut bytes = Vec::new();
        encode(1, &a, &mut bytes);
        encode(2, &b, &mut bytes);
        let (commits, torn) = decode(&bytes);
        assert!(!torn);
        assert_eq!(commits.len(), 2);
        assert_eq!(commits[0].0, 1);
        assert_eq!(key(&commits[0].1), key(&a));
        assert_eq!(commits[1].0, 2);
        assert_eq!(key(&commits[1].1), key(&b));
    }

    /// A crash mid-write leaves a short or corrupt last frame: the commits before it are kept,
    /// nothing of it is.
    #[test]
    fn a_torn_last_frame_is_dropped_and_the_rest_kept() {
        let mut bytes = Vec::new();
        encode(1, &[row(5, None)], &mut bytes);
        let whole = bytes.len();
        encode(2, &[row(6, Some(vec![4; 20]))], &mut bytes);
        for cut in whole + 1..bytes.len() {
            let (commits, torn) = decode(&bytes[..cut]);
            assert!(torn, "cut at {cut}");
            assert_eq!(commits.len(), 1, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        let (commits, torn) = decode(&flipped);
        assert!(torn);
        assert_eq!(commits.len(), 1);
        // Zeros where a write never landed read as a torn frame, not as commits.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(decode(&zeros).0.len(), 2);
    }

    /// Garbage never panics and never yields a commit whose checksum did not match.
    #[test]
    fn garbage_yields_nothing() {
        let mut x = 0x1234_5678u32;
        for len in 0..2_000 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(decode(&bytes).0.is_empty());
        }
    }

    /// Both files are read, in `seq` order whichever file holds what.
    #[test]
    fn both_files_replay_in_commit_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = paths(&dir.path().join("zpxe-leases.db"));
        let mut first = Vec::new();
        encode(3, &[row(3, None)], &mut first);
        encode(4, &[row(4, None)], &mut first);
        let mut second = Vec::new();
        encode(1, &[row(1, None)], &mut second);
        encode(2, &[row(2, None)], &mut second);
        std::fs::write(&paths[0], &first).expect("write");
        std::fs::write(&paths[1], &second).expect("write");
        let seqs: Vec<u64> = read(&paths).expect("read").iter().map(|c| c.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        empty(&paths[0]).expect("empty");
        assert_eq!(std::fs::metadata(&paths[0]).expect("meta").len(), 0);
    }
}
