//! One zpxe per port: a lock file per (address, port, protocol), `flock`ed before the bind and
//! held for the life of the process.
//!
//! The event loops of one process share their ports through `SO_REUSEPORT`, and so would a
//! second zpxe: the kernel would then spread TFTP and HTTP traffic over both, and an old and a
//! new version would answer side by side. The socket option cannot tell our own loops from
//! another process, so the claim is made here, once per process, before any loop binds.
//!
//! A wildcard address (`0.0.0.0`, `::`) takes every address of its family on that port: it
//! takes the family's `any` lock exclusively, and a specific address takes that lock shared plus
//! its own exclusively. Two specific addresses coexist; a wildcard conflicts with everything.
//! Lock files are keyed by network namespace too, so zpxe in another namespace (a container, a
//! test) on the same port is not a conflict. The kernel drops a `flock` when its holder exits,
//! however it exits, so a crashed zpxe never leaves a stale claim.
//!
//! Windows needs none of this: every socket there is bound with `SO_EXCLUSIVEADDRUSE`
//! (`crate::windows::exclusive_address_use`, in `udp.rs` and `tcp/mod.rs`), so a second bind on
//! the port fails in the kernel, and the bind error already names the port.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where lock files live when `/run` is writable (root, a systemd service).
pub const RUN_DIR: &str = "/run/zpxe";

/// The transport of a claimed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One socket the process is about to bind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    /// `SO_BINDTODEVICE`: two processes on `0.0.0.0:67` bound to different interfaces do not
    /// share traffic, so the device is part of the address.
    pub device: Option<String>,
}

impl Claim {
    fn wildcard(&self) -> bool {
        self.addr.is_unspecified() && self.device.is_none()
    }

    /// The file name shared by every claim of this family, protocol and port, up to the address.
    fn prefix(&self, ns: &str) -> String {
        let family = if self.addr.is_ipv4() { "v4" } else { "v6" };
        format!("{ns}{}-{family}-{}-", self.proto, self.port)
    }

    fn any_name(&self, ns: &str) -> String {
        format!("{}any.lock", self.prefix(ns))
    }

    fn own_name(&self, ns: &str) -> String {
        match &self.device {
            Some(dev) => format!("{}{}%{dev}.lock", self.prefix(ns), self.addr),
            None => format!("{}{}.lock", self.prefix(ns), self.addr),
        }
    }

    fn where_(&self) -> String {
        match &self.device {
            Some(dev) => format!("{} ({dev})", self.addr),
            None => self.addr.to_string(),
        }
    }
}

/// Why the claims could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds one of the ports: the caller must not bind.
    Conflict {
        claim: Claim,
        /// The holder's PID, when its lock file already says.
        pid: Option<u32>,
        /// The address the holder claimed, when it is not the one asked for (a specific
        /// address against a wildcard, or the other way round).
        holder: Option<String>,
    },
    /// The lock directory or a lock file could not be used (permissions, read-only file
    /// system): the claim is unchecked, not refused.
    Io { path: PathBuf, error: io::Error },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Conflict { claim, pid, holder } => {
                write!(
                    f,
                    "port {}/{} on {} is already served by another zpxe (",
                    claim.port,
                    claim.proto,
                    claim.where_()
                )?;
                match pid {
                    Some(pid) => write!(f, "pid {pid}")?,
                    None => f.write_str("pid unknown")?,
                }
                if let Some(holder) = holder {
                    write!(f, ", listening on {holder}")?;
                }
                f.write_str(")")
            }
            LockError::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for LockError {}

/// The held claims; dropping it (or exiting) releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
    dir: PathBuf,
}

impl InstanceLock {
    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Takes every claim under [`RUN_DIR`], or under the temporary directory when `/run` is not
/// writable (an unprivileged run). Claims with port 0 (the kernel picks a free port) are
/// skipped.
pub fn acquire(claims: &[Claim]) -> Result<InstanceLock, LockError> {
    let dir = match make_dir(Path::new(RUN_DIR)) {
        Ok(()) => PathBuf::from(RUN_DIR),
        Err(_) => {
            let tmp = std::env::temp_dir().join("zpxe");
            make_dir(&tmp).map_err(|error| LockError::Io {
                path: tmp.clone(),
                error,
            })?;
            tmp
        }
    };
    acquire_in(&dir, &netns_tag(), claims)
}

/// [`acquire`] in `dir`, with `ns` naming the network namespace (empty where there is none).
pub fn acquire_in(dir: &Path, ns: &str, claims: &[Claim]) -> Result<InstanceLock, LockError> {
    let claims: BTreeSet<&Claim> = claims.iter().filter(|c| c.port != 0).collect();
    // flock conflicts between two open files of the same process too, so a wildcard this
    // process claims covers its own specific addresses on that port.
    let wild: BTreeSet<String> = claims
        .iter()
        .filter(|c| c.wildcard())
        .map(|c| c.any_name(ns))
        .collect();
    let mut files = Vec::new();
    let mut shared_any = BTreeSet::new();
    for claim in &claims {
        let any = claim.any_name(ns);
        if claim.wildcard() {
            let file = open(dir, &any)?;
            match file.try_lock() {
                Ok(()) => {
                    write_pid(&file, dir, &any)?;
                    files.push(file);
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(wildcard_conflict(dir, ns, claim, file));
                }
                Err(TryLockError::Error(error)) => return Err(io_error(dir, &any, error)),
            }
            continue;
        }
        if wild.contains(&any) {
            continue;
        }
        if shared_any.insert(any.clone()) {
            let file = open(dir, &any)?;
            match file.try_lock_shared() {
                Ok(()) => files.push(file),
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Conflict {
                        claim: (*claim).clone(),
                        pid: read_pid(file),
                        holder: Some(
                            if claim.addr.is_ipv4() {
                                "0.0.0.0"
                            } else {
                                "::"
                            }
                            .into(),
                        ),
                    });
                }
                Err(TryLockError::Error(error)) => return Err(io_error(dir, &any, error)),
            }
        }
        let own = claim.own_name(ns);
        let file = open(dir, &own)?;
        match file.try_lock() {
            Ok(()) => {
                write_pid(&file, dir, &own)?;
                files.push(file);
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Conflict {
                    claim: (*claim).clone(),
                    pid: read_pid(file),
                    holder: None,
                });
            }
            Err(TryLockError::Error(error)) => return Err(io_error(dir, &own, error)),
        }
    }
    Ok(InstanceLock {
        _files: files,
        dir: dir.to_owned(),
    })
}

/// A wildcard refused: either another wildcard holds the `any` lock (its PID is in it), or
/// specific addresses hold it shared; then the first of their files found locked names one.
fn wildcard_conflict(dir: &Path, ns: &str, claim: &Claim, any: File) -> LockError {
    let prefix = claim.prefix(ns);
    let any_name = claim.any_name(ns);
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(addr) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".lock"))
        else {
            continue;
        };
        if name == any_name {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        if let Err(TryLockError::WouldBlock) = file.try_lock_shared() {
            return LockError::Conflict {
                claim: claim.clone(),
                pid: read_pid(file),
                holder: Some(addr.replace('%', " on ")),
            };
        }
    }
    LockError::Conflict {
        claim: claim.clone(),
        pid: read_pid(any),
        holder: None,
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Writable is what matters: an existing directory of another user is no use.
    let probe = dir.join(".probe");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&probe)
        .map(drop)
}

fn open(dir: &Path, name: &str) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dir.join(name))
        .map_err(|error| io_error(dir, name, error))
}

fn io_error(dir: &Path, name: &str, error: io::Error) -> LockError {
    LockError::Io {
        path: dir.join(name),
        error,
    }
}

fn write_pid(mut file: &File, dir: &Path, name: &str) -> Result<(), LockError> {
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|error| io_error(dir, name, error))
}

/// The holder's PID; `None` when it has not written it yet (it locks, then writes).
fn read_pid(mut file: File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The network namespace, as the inode of `/proc/self/ns/net`: the same port in another
/// namespace is another socket.
fn netns_tag() -> String {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self/ns/net") {
            return format!("net{}-", meta.ino());
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(proto: Proto, addr: &str, port: u16) -> Claim {
        Claim {
            proto,
            addr: addr.parse().expect("address"),
            port,
            device: None,
        }
    }

    fn conflict(r: Result<InstanceLock, LockError>) -> String {
        match r {
            Err(e @ LockError::Conflict { .. }) => e.to_string(),
            Err(e) => panic!("expected a conflict, got {e}"),
            Ok(_) => panic!("expected a conflict, got the lock"),
        }
    }

    #[test]
    fn same_port_twice_conflicts_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = [claim(Proto::Tcp, "0.0.0.0", 8050)];
        let first = acquire_in(dir.path(), "t-", &c).expect("lock");
        let msg = conflict(acquire_in(dir.path(), "t-", &c));
        assert_eq!(
            msg,
            format!(
                "port 8050/tcp on 0.0.0.0 is already served by another zpxe (pid {})",
                std::process::id()
            )
        );
        drop(first);
        acquire_in(dir.path(), "t-", &c).expect("lock");
    }

    #[test]
    fn wildcard_conflicts_with_a_specific_address_both_ways() {
        let dir = tempfile::tempdir().expect("tmp");
        let any = [claim(Proto::Udp, "0.0.0.0", 69)];
        let one = [claim(Proto::Udp, "10.0.0.1", 69)];
        let held = acquire_in(dir.path(), "", &one).expect("lock");
        let msg = conflict(acquire_in(dir.path(), "", &any));
        assert!(msg.contains("listening on 10.0.0.1"), "{msg}");
        drop(held);
        let held = acquire_in(dir.path(), "", &any).expect("lock");
        let msg = conflict(acquire_in(dir.path(), "", &one));
        assert!(
            msg.starts_with("port 69/udp on 10.0.0.1 is already"),
            "{msg}"
        );
        assert!(msg.contains("listening on 0.0.0.0"), "{msg}");
        drop(held);
    }

    #[test]
    fn distinct_addresses_protocols_families_and_namespaces_coexist() {
        let dir = tempfile::tempdir().expect("tmp");
        let _a = acquire_in(dir.path(), "", &[claim(Proto::Tcp, "10.0.0.1", 80)]).expect("lock");
        let _b = acquire_in(dir.path(), "", &[claim(Proto::Tcp, "10.0.0.2", 80)]).expect("lock");
        let _c = acquire_in(dir.path(), "", &[claim(Proto::Udp, "0.0.0.0", 80)]).expect("lock");
        let _d = acquire_in(dir.path(), "", &[claim(Proto::Tcp, "::", 80)]).expect("lock");
        let _e = acquire_in(dir.path(), "", &[claim(Proto::Tcp, "10.0.0.1", 8080)]).expect("lock");
        let _f =
            acquire_in(dir.path(), "other-", &[claim(Proto::Tcp, "0.0.0.0", 80)]).expect("lock");
        // Port 0 is the kernel's choice, never a conflict.
        let z = [claim(Proto::Tcp, "0.0.0.0", 0)];
        let _g = acquire_in(dir.path(), "", &z).expect("lock");
        let _h = acquire_in(dir.path(), "", &z).expect("lock");
    }

    #[test]
    fn one_process_may_claim_a_wildcard_and_its_own_specific_address() {
        let dir = tempfile::tempdir().expect("tmp");
        let both = [
            claim(Proto::Tcp, "127.0.0.1", 8050),
            claim(Proto::Tcp, "0.0.0.0", 8050),
            claim(Proto::Tcp, "0.0.0.0", 8050),
        ];
        let _held = acquire_in(dir.path(), "", &both).expect("lock");
        conflict(acquire_in(
            dir.path(),
            "",
            &[claim(Proto::Tcp, "127.0.0.1", 8050)],
        ));
    }

    #[test]
    fn devices_split_a_wildcard_port() {
        let dir = tempfile::tempdir().expect("tmp");
        let on = |dev: &str| Claim {
            device: Some(dev.to_owned()),
            ..claim(Proto::Udp, "0.0.0.0", 67)
        };
        let _a = acquire_in(dir.path(), "", &[on("eth0")]).expect("lock");
        let _b = acquire_in(dir.path(), "", &[on("eth1")]).expect("lock");
        let msg = conflict(acquire_in(dir.path(), "", &[on("eth0")]));
        assert!(msg.starts_with("port 67/udp on 0.0.0.0 (eth0)"), "{msg}");
        let msg = conflict(acquire_in(
            dir.path(),
            "",
            &[claim(Proto::Udp, "0.0.0.0", 67)],
        ));
        assert!(msg.contains("listening on 0.0.0.0 on eth"), "{msg}");
    }
}
