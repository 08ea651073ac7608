//! The image store: boot files memory-mapped once and shared by every transfer on this thread.
//!
//! Each event-loop thread owns its own store (no locks on the data path); mapping the same file
//! in several threads shares the page cache.
//!
//! Safety against files changing under a mapping, which would otherwise raise SIGBUS (truncated)
//! or serve mixed bytes (rewritten in place):
//! - Mapped bytes are only ever read by the kernel (they go out through `sendmsg`/`write` iovecs).
//!   A kernel read of a page past a new end of file fails that one call with `EFAULT`; no signal is
//!   raised. No user-space code touches a mapping.
//! - Where the kernel grants it, each version holds a read lease (`F_SETLEASE`). Anyone opening the
//!   file for writing or truncating it then blocks (up to `/proc/sys/fs/lease-break-time`) until we
//!   let go. Before each send the version checks its lease; once a break is pending it is marked
//!   broken, its transfers end with an error, and the mapping is dropped, which releases the writer.
//! - Where no lease can be had (another user's file without CAP_LEASE, a filesystem without
//!   leases), size and mtime are re-checked with `fstat` instead. A write in place updates mtime
//!   before it changes a byte, so a check that passes *after* bytes were copied out proves the
//!   copy is this version's ([`Version::read_at`]); a check before a send proves nothing about
//!   what the kernel copies during it.
//! - Either way bytes leave as copies taken while the version was known intact, never as
//!   page-cache pages by reference (`sendfile`, `splice`): those are read when the packet is
//!   built or, for a reader on this host (loopback, veth), when that reader reads them, by which
//!   time a rewrite may have replaced them. See `tcp/linux.rs`.
//!
//! No byte of new contents is ever served from the old version.
//!
//! A file replaced by rename is a new inode: new opens get a new version, transfers in flight finish
//! on the old mapping, which is unmapped when the last of them closes it.
//!
//! Windows has no leases and its own rules. It refuses to truncate a file while a view of it is
//! mapped (`ERROR_USER_MAPPED_FILE`), and may refuse to replace or delete one (Wine does). So
//! there files are opened without write sharing (see [`open_for_serving`]: no in-place rewrite
//! while a version holds the file), and a version nobody holds is unmapped at once instead of
//! staying cached for the next open ([`KEEP_IDLE_VERSIONS`]): an administrator can then copy a
//! new boot.wim over the old one whenever no transfer is reading it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use memmap2::Mmap;
use zpxe_engine::path::{self, NameFlavor};
use zpxe_engine::{ByteRange, ImageCatalog, ImageId, ImageInfo, OpenError};

use crate::udp::SendError;

/// Whether a version nobody holds stays mapped for the next open. Not on Windows, where a mapped
/// file cannot be replaced or deleted (see the module docs).
pub const KEEP_IDLE_VERSIONS: bool = cfg!(unix);

/// How the store treats the files below its root.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Match each path component ignoring ASCII case when the exact name does not exist
    /// (Windows clients ask for `\Boot\BCD` as `\boot\bcd`).
    pub case_insensitive: bool,
    /// Take read leases so in-place rewrites wait for transfers to stop.
    pub leases: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            case_insensitive: false,
            leases: true,
        }
    }
}

/// Why a version can no longer be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionBroken {
    #[error("the file is being rewritten or truncated in place")]
    Modified,
    #[error("the image was closed")]
    Gone,
}

/// One mapped version of one file.
#[derive(Debug)]
pub struct Version {
    id: ImageId,
    path: PathBuf,
    file: File,
    map: Option<Mmap>,
    len: u64,
    mtime: Option<SystemTime>,
    leased: bool,
    broken: Cell<bool>,
    refs: Cell<usize>,
}

impl Version {
    pub fn id(&self) -> ImageId {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a lease protects this version (else `fstat` checks do).
    pub fn leased(&self) -> bool {
        self.leased
    }

    /// Whether nobody can write the file while this version is intact: a writer waits on our
    /// lease (Linux) or is refused by the sharing mode the file was opened with (Windows). Then
    /// bytes copied straight from the mapping after a passing [`Version::check`] are this
    /// version's; otherwise they must be copied out and verified first ([`Version::read_at`]).
    pub fn writers_excluded(&self) -> bool {
        self.leased || cfg!(windows)
    }

    /// Checks that the file under this mapping has not been touched. Call before every send.
    pub fn check(&self) -> Result<(), VersionBroken> {
        if self.broken.get() {
            return Err(VersionBroken::Modified);
        }
        let intact = if self.leased {
            lease::held(&self.file)
        } else {
            match self.file.metadata() {
                Ok(m) => m.len() == self.len && m.modified().ok() == self.mtime,
                Err(_) => false,
            }
        };
        if intact {
            Ok(())
        } else {
            self.broken.set(true);
            Err(VersionBroken::Modified)
        }
    }

    /// The mapped bytes of `range`, to hand to the kernel. Never read them in user space: see the
    /// module docs. Returns `None` when the range is outside the version.
    pub fn kernel_slice(&self, range: ByteRange) -> Option<&[u8]> {
        if range.is_empty() {
            return Some(&[]);
        }
        let map = self.map.as_ref()?;
        let start = usize::try_from(range.start).ok()?;
        let end = usize::try_from(range.end).ok()?;
        map.get(start..end)
    }

    /// The open file, for positional reads and `sendfile`/`splice` paths.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Copies bytes at `offset` into `buf` with a positional read, for paths that must see the
    /// bytes in user space (TLS encrypts them) or that must not send from a file that can change
    /// (see [`Version::writers_excluded`]). Unlike touching the mapping, a read past a new end of
    /// file just comes back short.
    ///
    /// The version is checked again after the read: a writer that started before that check
    /// has already moved mtime (or broken the lease), so `Ok` means every byte in `buf` is this
    /// version's, even without a lease. A write racing the read fails it instead.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.read_verified(buf, offset).map_err(|e| match e {
            SendError::Image(broken) => io::Error::new(io::ErrorKind::UnexpectedEof, broken),
            SendError::Io(e) => e,
        })
    }

    /// [`Version::read_at`], with a change reported as such.
    pub(crate) fn read_verified(&self, buf: &mut [u8], offset: u64) -> Result<usize, SendError> {
        self.check()?;
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)?;
        self.check()?;
        Ok(n)
    }
}

/// Memory-mapped boot files below one root directory.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    options: StoreOptions,
    /// Canonical path -> the version new opens get.
    current: RefCell<HashMap<PathBuf, ImageId>>,
    versions: RefCell<HashMap<ImageId, Rc<Version>>>,
    next_id: Cell<u64>,
}

impl ImageStore {
    /// Opens a store over `root`, which must be an existing directory.
    pub fn new(root: impl AsRef<Path>, options: StoreOptions) -> io::Result<Self> {
        let root = fs::canonicalize(root.as_ref()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("image root {}: {e}", root.as_ref().display()),
            )
        })?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("image root {} is not a directory", root.display()),
            ));
        }
        if options.leases {
            lease::ignore_break_signal();
        }
        Ok(Self {
            root,
            options,
            current: RefCell::default(),
            versions: RefCell::default(),
            next_id: Cell::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The version behind an id handed out by `open`, while it is held.
    pub fn version(&self, id: ImageId) -> Option<Rc<Version>> {
        self.versions.borrow().get(&id).cloned()
    }

    /// Number of versions currently mapped (current and retired).
    pub fn mapped_versions(&self) -> usize {
        self.versions.borrow().len()
    }

    /// Drops cached versions whose file changed and that nobody holds, releasing their leases so
    /// writers can proceed. Call periodically (every few hundred milliseconds).
    pub fn sweep(&self) {
        let mut dead = Vec::new();
        for (id, v) in self.versions.borrow().iter() {
            if v.refs.get() == 0 && v.check().is_err() {
                dead.push(*id);
            }
        }
        for id in dead {
            self.forget(id);
        }
    }

    fn forget(&self, id: ImageId) {
        if let Some(v) = self.versions.borrow_mut().remove(&id) {
            let mut current = self.current.borrow_mut();
            if current.get(&v.path) == Some(&id) {
                current.remove(&v.path);
            }
        }
    }

    fn resolve(&self, name: &str, flavor: NameFlavor) -> Result<PathBuf, OpenError> {
        let rel = path::sanitize(name, flavor)?;
        let mut p = self.root.clone();
        for comp in rel.components() {
            let exact = p.join(comp);
            if self.options.case_insensitive && fs::symlink_metadata(&exact).is_err() {
                p = find_ignoring_case(&p, comp).ok_or(OpenError::NotFound)?;
            } else {
                p = exact;
            }
        }
        let canonical = fs::canonicalize(&p).map_err(|e| io_to_open(&e))?;
        if !canonical.starts_with(&self.root) {
            return Err(OpenError::Refused(path::PathError::Traversal));
        }
        Ok(canonical)
    }

    fn map_version(&self, path: PathBuf) -> Result<Rc<Version>, OpenError> {
        let file = open_for_serving(&path).map_err(|e| io_to_open(&e))?;
        let meta = file.metadata().map_err(|e| io_to_open(&e))?;
        if !meta.is_file() {
            return Err(OpenError::NotAFile);
        }
        // Lease first, then read the size: a writer that slipped in before the lease shows up in
        // the size or the mtime we record.
        let leased = self.options.leases && lease::take(&file);
        let meta = file.metadata().map_err(|e| io_to_open(&e))?;
        let len = meta.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is only ever read by the kernel (see the module docs), so a file
            // that shrinks under it cannot raise SIGBUS in this process.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| OpenError::Io(e.to_string()))?)
        };
        let id = ImageId(self.next_id.get() + 1);
        self.next_id.set(id.0);
        tracing::debug!(%id, path = %path.display(), len, leased, "mapped image");
        Ok(Rc::new(Version {
            id,
            path,
            file,
            map,
            len,
            mtime: meta.modified().ok(),
            leased,
            broken: Cell::new(false),
            refs: Cell::new(0),
        }))
    }

    fn info(v: &Version) -> ImageInfo {
        ImageInfo {
            id: v.id,
            len: v.len,
            modified: v.mtime,
            tag: tag_of(v),
        }
    }
}

impl ImageCatalog for ImageStore {
    fn open(&mut self, name: &str, flavor: NameFlavor) -> Result<ImageInfo, OpenError> {
        let path = self.resolve(name, flavor)?;
        let meta = fs::metadata(&path).map_err(|e| io_to_open(&e))?;
        if !meta.is_file() {
            return Err(OpenError::NotAFile);
        }
        let cached = self.current.borrow().get(&path).copied();
        if let Some(id) = cached {
            let v = self.version(id);
            match v {
                Some(v) if same_file(&v, &meta) && v.check().is_ok() => {
                    v.refs.set(v.refs.get() + 1);
                    return Ok(Self::info(&v));
                }
                Some(v) => {
                    // Replaced (rename) or modified: new opens get a new version; the old one
                    // lives on for its holders.
                    self.current.borrow_mut().remove(&path);
                    if v.refs.get() == 0 {
                        self.forget(id);
                    }
                }
                None => {
                    self.current.borrow_mut().remove(&path);
                }
            }
        }
        let v = self.map_version(path.clone())?;
        v.refs.set(1);
        let info = Self::info(&v);
        self.versions.borrow_mut().insert(v.id, v);
        self.current.borrow_mut().insert(path, info.id);
        Ok(info)
    }

    fn close(&mut self, id: ImageId) {
        let Some(v) = self.version(id) else { return };
        v.refs.set(v.refs.get().saturating_sub(1));
        if v.refs.get() > 0 {
            return;
        }
        let is_current = self.current.borrow().get(&v.path) == Some(&id);
        if !is_current || v.broken.get() || !KEEP_IDLE_VERSIONS {
            self.forget(id);
        }
    }
}

/// Opens a file to serve from. On Windows others may read it while we hold it (and rename or
/// delete it, where Windows allows that for a mapped file), but not write to it: a writer is
/// refused with a sharing violation until the transfers reading this version end (Windows'
/// counterpart of the read lease, and stricter: the writer fails instead of waiting). A file
/// already open for writing cannot be opened here either, so a file being copied in is never
/// served half-written.
fn open_for_serving(path: &Path) -> io::Result<File> {
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_SHARE_READ: u32 = 0x1;
        const FILE_SHARE_DELETE: u32 = 0x4;
        fs::OpenOptions::new()
            .read(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_DELETE)
            .open(path)
    }
    #[cfg(not(windows))]
    {
        File::open(path)
    }
}

fn same_file(v: &Version, meta: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(own) = v.file.metadata()
            && (own.dev() != meta.dev() || own.ino() != meta.ino())
        {
            return false;
        }
    }
    meta.len() == v.len && meta.modified().ok() == v.mtime
}

fn tag_of(v: &Version) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = v.file.metadata() {
            m.dev().hash(&mut h);
            m.ino().hash(&mut h);
        }
    }
    v.len.hash(&mut h);
    v.mtime.hash(&mut h);
    h.finish()
}

fn find_ignoring_case(dir: &Path, comp: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(comp))
        })
        .map(|e| e.path())
}

fn io_to_open(e: &io::Error) -> OpenError {
    // Windows' ERROR_SHARING_VIOLATION: someone holds the file open for writing.
    #[cfg(windows)]
    if e.raw_os_error() == Some(32) {
        return OpenError::Busy;
    }
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => OpenError::NotFound,
        io::ErrorKind::PermissionDenied => OpenError::Denied,
        _ => OpenError::Io(e.to_string()),
    }
}

#[cfg(target_os = "linux")]
mod lease {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::Once;

    /// A lease break is announced with SIGIO, whose default action ends the process. We poll the
    /// lease state instead, so the signal is ignored.
    pub(super) fn ignore_break_signal() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
            unsafe {
                libc::signal(libc::SIGIO, libc::SIG_IGN);
            }
        });
    }

    pub(super) fn take(file: &File) -> bool {
        // SAFETY: fcntl on an fd we own, with integer arguments.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no read lease; falling back to fstat checks");
        }
        rc == 0
    }

    /// While a break is pending, F_GETLEASE reports the target type (F_UNLCK), not F_RDLCK.
    pub(super) fn held(file: &File) -> bool {
        // SAFETY: as above.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) };
        rc == libc::F_RDLCK
    }
}

#[cfg(not(target_os = "linux"))]
mod lease {
    use std::fs::File;

    pub(super) fn ignore_break_signal() {}

    pub(super) fn take(_file: &File) -> bool {
        false
    }

    pub(super) fn held(_file: &File) -> bool {
        false
    }
}

/// One file in a fresh image root, opened: what the socket tests send from.
#[cfg(test)]
pub(crate) struct TestImage {
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) dir: tempfile::TempDir,
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) path: std::path::PathBuf,
    /// Kept open: the version's mapping belongs to it.
    pub(crate) _store: ImageStore,
    pub(crate) version: Rc<Version>,
}

#[cfg(test)]
impl TestImage {
    /// Writes `data` to `img`, opens it with `leases` and names it as `flavor` would.
    pub(crate) fn new(data: &[u8], leases: bool, flavor: zpxe_engine::path::NameFlavor) -> Self {
        use zpxe_engine::ImageCatalog;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("img");
        std::fs::write(&path, data).expect("write");
        let options = StoreOptions {
            leases,
            ..StoreOptions::default()
        };
        let mut store = ImageStore::new(dir.path(), options).expect("store");
        let info = store.open("img", flavor).expect("open");
        let version = store.version(info.id).expect("version");
        Self {
            dir,
            path,
            _store: store,
            version,
        }
    }

    /// Truncates the file under its open version, as another program would. Windows refuses
    /// while the version holds the file (see [`open_for_serving`]).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn truncate(&self, len: u64) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_len(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, options: StoreOptions) -> ImageStore {
        ImageStore::new(dir, options).expect("store")
    }

    #[test]
    fn opens_maps_and_refcounts() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(dir.path().join("a.bin"), b"hello").expect("write");
        let mut s = store(dir.path(), StoreOptions::default());
        let a = s.open("a.bin", NameFlavor::Tftp).expect("open");
        let b = s.open("/a.bin", NameFlavor::Tftp).expect("open again");
        assert_eq!(a.id, b.id, "one mapping shared");
        assert_eq!(a.len, 5);
        let v = s.version(a.id).expect("held");
        assert_eq!(v.kernel_slice(ByteRange::new(1, 3)), Some(&b"el"[..]));
        assert!(v.check().is_ok());
        s.close(a.id);
        s.close(b.id);
        assert_eq!(
            s.mapped_versions(),
            usize::from(KEEP_IDLE_VERSIONS),
            "the current version stays cached, except on Windows"
        );
    }

    #[test]
    fn refuses_traversal_and_symlinks_out_of_root() {
        let outside = tempfile::tempdir().expect("tmp");
        fs::write(outside.path().join("secret"), b"x").expect("write");
        let dir = tempfile::tempdir().expect("tmp");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(dir.path().join("sub/in.bin"), b"in").expect("write");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
                .expect("symlink");
            std::os::unix::fs::symlink(dir.path().join("sub/in.bin"), dir.path().join("inlink"))
                .expect("symlink");
        }
        let mut s = store(dir.path(), StoreOptions::default());
        let refused = |s: &mut ImageStore, n: &str, f| s.open(n, f).map(|i| i.len);
        #[cfg(unix)]
        {
            assert!(matches!(
                refused(&mut s, "link", NameFlavor::Tftp),
                Err(OpenError::Refused(_))
            ));
            assert_eq!(refused(&mut s, "inlink", NameFlavor::Tftp), Ok(2));
        }
        assert!(matches!(
            refused(&mut s, "../secret", NameFlavor::Tftp),
            Err(OpenError::Refused(_))
        ));
        assert!(matches!(
            refused(&mut s, "/%2e%2e/secret", NameFlavor::Http),
            Err(OpenError::Refused(_))
        ));
        assert_eq!(
            refused(&mut s, "/etc/passwd", NameFlavor::Tftp),
            Err(OpenError::NotFound),
            "absolute names stay below the root"
        );
        assert_eq!(
            refused(&mut s, "sub", NameFlavor::Tftp),
            Err(OpenError::NotAFile)
        );
        assert_eq!(refused(&mut s, "sub\\in.bin", NameFlavor::Tftp), Ok(2));
    }

    #[test]
    fn case_insensitive_lookup() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::create_dir(dir.path().join("Boot")).expect("mkdir");
        fs::write(dir.path().join("Boot/BCD"), b"bcd").expect("write");
        let mut exact = store(dir.path(), StoreOptions::default());
        // Windows file systems ignore case themselves.
        let expected = if cfg!(windows) {
            Ok(3)
        } else {
            Err(OpenError::NotFound)
        };
        assert_eq!(
            exact.open("\\boot\\bcd", NameFlavor::Tftp).map(|i| i.len),
            expected
        );
        let mut ci = store(
            dir.path(),
            StoreOptions {
                case_insensitive: true,
                ..StoreOptions::default()
            },
        );
        assert_eq!(
            ci.open("\\boot\\bcd", NameFlavor::Tftp).map(|i| i.len),
            Ok(3)
        );
    }

    #[cfg(unix)]
    #[test]
    fn rename_replace_keeps_old_version_for_holders() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("boot.wim");
        fs::write(&p, b"old contents").expect("write");
        let mut s = store(dir.path(), StoreOptions::default());
        let old = s.open("boot.wim", NameFlavor::Http).expect("open");
        let tmp = dir.path().join("boot.wim.tmp");
        fs::write(&tmp, b"new").expect("write");
        fs::rename(&tmp, &p).expect("rename");
        let new = s.open("boot.wim", NameFlavor::Http).expect("open new");
        assert_ne!(old.id, new.id);
        assert_eq!(new.len, 3);
        let ov = s.version(old.id).expect("old held");
        assert_eq!(
            ov.kernel_slice(ByteRange::new(0, 12)),
            Some(&b"old contents"[..])
        );
        assert!(ov.check().is_ok(), "rename does not touch the old inode");
        s.close(old.id);
        assert!(
            s.version(old.id).is_none(),
            "old version unmapped when released"
        );
        assert!(s.version(new.id).is_some());
    }

    /// Windows may refuse to replace a file while a version holds it mapped (Wine does); either
    /// way the holder keeps the old bytes, and once nobody holds it the file can be replaced and
    /// the next open sees the new one.
    #[cfg(windows)]
    #[test]
    fn replace_waits_for_holders_and_then_succeeds() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("boot.wim");
        fs::write(&p, b"old contents").expect("write");
        let mut s = store(dir.path(), StoreOptions::default());
        let old = s.open("boot.wim", NameFlavor::Http).expect("open");
        let tmp = dir.path().join("boot.wim.tmp");
        fs::write(&tmp, b"new").expect("write");
        let replaced_while_held = fs::rename(&tmp, &p).is_ok();
        let ov = s.version(old.id).expect("old held");
        assert_eq!(
            ov.kernel_slice(ByteRange::new(0, 12)),
            Some(&b"old contents"[..])
        );
        drop(ov);
        s.close(old.id);
        assert_eq!(s.mapped_versions(), 0, "nothing stays mapped once released");
        if !replaced_while_held {
            fs::rename(&tmp, &p).expect("replace once nobody holds the file");
        }
        let new = s.open("boot.wim", NameFlavor::Http).expect("open new");
        assert_ne!(old.id, new.id);
        assert_eq!(new.len, 3);
    }

    /// Writers (in place or truncating) are refused while a version holds the file, and a file
    /// someone is writing cannot be opened; once released, the writer goes ahead.
    #[cfg(windows)]
    #[test]
    fn writers_are_refused_while_held() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        fs::write(&p, vec![7u8; 8192]).expect("write");
        let mut s = store(dir.path(), StoreOptions::default());
        let info = s.open("f", NameFlavor::Tftp).expect("open");
        let writer = fs::OpenOptions::new().write(true).open(&p);
        assert_eq!(
            writer.map(drop).map_err(|e| e.raw_os_error()),
            Err(Some(32)),
            "sharing violation while held"
        );
        s.close(info.id);
        let writer = fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("writer once released");
        assert_eq!(
            s.open("f", NameFlavor::Tftp).map(|i| i.len),
            Err(OpenError::Busy),
            "a file open for writing is not served"
        );
        writer.set_len(100).expect("truncate");
        drop(writer);
        assert_eq!(s.open("f", NameFlavor::Tftp).map(|i| i.len), Ok(100));
    }

    #[cfg(unix)]
    #[test]
    fn in_place_change_without_lease_is_detected() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        fs::write(&p, vec![7u8; 8192]).expect("write");
        let mut s = store(
            dir.path(),
            StoreOptions {
                leases: false,
                ..StoreOptions::default()
            },
        );
        let info = s.open("f", NameFlavor::Tftp).expect("open");
        let v = s.version(info.id).expect("held");
        assert!(!v.leased());
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        assert_eq!(v.check(), Err(VersionBroken::Modified));
        let again = s.open("f", NameFlavor::Tftp).expect("reopen");
        assert_ne!(again.id, info.id, "a modified file gets a new version");
        assert_eq!(again.len, 100);
    }

    /// A truncation during a transfer: the writer waits on our lease, the version reports the
    /// break before any changed byte could be sent, and dropping the version lets the writer go.
    #[cfg(target_os = "linux")]
    #[test]
    fn lease_break_holds_writer_until_version_dropped() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("boot.wim");
        fs::write(&p, vec![1u8; 1 << 20]).expect("write");
        let mut s = store(dir.path(), StoreOptions::default());
        let info = s.open("boot.wim", NameFlavor::Http).expect("open");
        let v = s.version(info.id).expect("held");
        assert!(v.leased(), "owner of the file gets a read lease");
        let writer_path = p.clone();
        let writer = std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(&writer_path)?;
            f.set_len(0)?;
            Ok::<Instant, io::Error>(Instant::now())
        });
        let mut seen_break = None;
        for _ in 0..200 {
            if v.check().is_err() {
                seen_break = Some(Instant::now());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen_break = seen_break.expect("lease break noticed within 2 s");
        assert_eq!(
            v.kernel_slice(ByteRange::new(0, 4)).map(<[u8]>::len),
            Some(4),
            "mapping still whole while the writer waits"
        );
        assert!(!writer.is_finished(), "writer blocked by the lease");
        drop(v);
        s.close(info.id);
        assert!(s.version(info.id).is_none());
        let truncated_at = writer.join().expect("join").expect("truncate");
        assert!(truncated_at >= seen_break);
        assert_eq!(fs::metadata(&p).expect("meta").len(), 0);
    }
}
