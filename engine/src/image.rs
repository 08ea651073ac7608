//! How the engine names boot files: by an id the image store hands out and a byte range.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use crate::path::{self, NameFlavor, PathError};

/// One version of one file in the image store. A file replaced on disk gets a new id; transfers
/// holding the old id finish on the old version.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u64);

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image#{}", self.0)
    }
}

/// A half-open byte range `start..end` of an image.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end);
        Self { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What the engine learns about an image when it opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: ImageId,
    /// Size in bytes of this version.
    pub len: u64,
    /// Modification time, for `Last-Modified`.
    pub modified: Option<SystemTime>,
    /// A validator that changes whenever the file does (device, inode, size, mtime), for `ETag`.
    pub tag: u64,
}

/// Why an image could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("no such file")]
    NotFound,
    #[error("refused path: {0}")]
    Refused(#[from] PathError),
    #[error("not a regular file")]
    NotAFile,
    #[error("access denied")]
    Denied,
    /// Another program has the file open for writing (Windows refuses to share it then).
    #[error("the file is being written")]
    Busy,
    #[error("image store error: {0}")]
    Io(String),
}

/// The image store as the engine sees it. The platform's store implements it over memory maps;
/// [`MemoryCatalog`] implements it over owned bytes for tests and simulations.
///
/// Every successful `open` is matched by exactly one `close` of the same id once the transfer that
/// needed it has ended, so the store knows when an old version can be unmapped.
pub trait ImageCatalog {
    /// Opens the file a client named. `flavor` tells how to read the name (TFTP names may use
    /// backslashes; HTTP paths are percent-encoded).
    fn open(&mut self, name: &str, flavor: NameFlavor) -> Result<ImageInfo, OpenError>;
    /// Releases one reference taken by `open`.
    fn close(&mut self, id: ImageId);
}

/// An in-memory image catalog: the same contract as the platform's store, without files.
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    files: HashMap<String, ImageId>,
    images: HashMap<ImageId, MemoryImage>,
    next_id: u64,
    case_insensitive: bool,
}

#[derive(Debug)]
struct MemoryImage {
    bytes: Vec<u8>,
    refs: usize,
    current: bool,
}

impl MemoryCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes lookups ignore ASCII case, like a store configured for Windows clients.
    pub fn set_case_insensitive(&mut self, on: bool) {
        self.case_insensitive = on;
    }

    /// Adds or replaces a file; a replaced file keeps its old bytes for those who opened it.
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) -> ImageId {
        self.next_id += 1;
        let id = ImageId(self.next_id);
        let key = self.key(name);
        if let Some(old) = self.files.insert(key, id) {
            self.retire(old);
        }
        self.images.insert(
            id,
            MemoryImage {
                bytes,
                refs: 0,
                current: true,
            },
        );
        id
    }

    /// Removes a file; open references keep their bytes.
    pub fn remove(&mut self, name: &str) {
        let key = self.key(name);
        if let Some(old) = self.files.remove(&key) {
            self.retire(old);
        }
    }

    /// The bytes of an image version, if it is still held.
    pub fn bytes(&self, id: ImageId) -> Option<&[u8]> {
        self.images.get(&id).map(|i| i.bytes.as_slice())
    }

    /// The bytes of `range` of an image, if held and in bounds.
    pub fn slice(&self, id: ImageId, range: ByteRange) -> Option<&[u8]> {
        let bytes = self.bytes(id)?;
        let start = usize::try_from(range.start).ok()?;
        let end = usize::try_from(range.end).ok()?;
        bytes.get(start..end)
    }

    /// How many `open`s of `id` are not yet closed.
    pub fn open_refs(&self, id: ImageId) -> usize {
        self.images.get(&id).map_or(0, |i| i.refs)
    }

    /// Total open references over all images: zero once every transfer has ended.
    pub fn total_open_refs(&self) -> usize {
        self.images.values().map(|i| i.refs).sum()
    }

    fn key(&self, name: &str) -> String {
        let name = name.trim_start_matches('/');
        if self.case_insensitive {
            name.to_ascii_lowercase()
        } else {
            name.to_owned()
        }
    }

    fn retire(&mut self, id: ImageId) {
        if let Some(img) = self.images.get_mut(&id) {
            img.current = false;
            if img.refs == 0 {
                self.images.remove(&id);
            }
        }
    }
}

impl ImageCatalog for MemoryCatalog {
    fn open(&mut self, name: &str, flavor: NameFlavor) -> Result<ImageInfo, OpenError> {
        let rel = path::sanitize(name, flavor)?;
        let key = self.key(&rel.to_string());
        let id = *self.files.get(&key).ok_or(OpenError::NotFound)?;
        let img = self.images.get_mut(&id).ok_or(OpenError::NotFound)?;
        img.refs += 1;
        Ok(ImageInfo {
            id,
            len: img.bytes.len() as u64,
            modified: None,
            tag: id.0,
        })
    }

    fn close(&mut self, id: ImageId) {
        if let Some(img) = self.images.get_mut(&id) {
            img.refs = img.refs.saturating_sub(1);
            if img.refs == 0 && !img.current {
                self.images.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_file_keeps_old_bytes_until_closed() {
        let mut cat = MemoryCatalog::new();
        cat.insert("boot.wim", b"old".to_vec());
        let old = cat.open("boot.wim", NameFlavor::Tftp).expect("open old");
        cat.insert("boot.wim", b"new!".to_vec());
        let new = cat.open("boot.wim", NameFlavor::Tftp).expect("open new");
        assert_ne!(old.id, new.id);
        assert_eq!(cat.bytes(old.id), Some(&b"old"[..]));
        assert_eq!(new.len, 4);
        cat.close(old.id);
        assert_eq!(cat.bytes(old.id), None);
        cat.close(new.id);
        assert_eq!(cat.bytes(new.id), Some(&b"new!"[..]));
        assert_eq!(cat.total_open_refs(), 0);
    }

    #[test]
    fn case_insensitive_lookup_with_backslashes() {
        let mut cat = MemoryCatalog::new();
        cat.set_case_insensitive(true);
        cat.insert("Boot/BCD", b"bcd".to_vec());
        let info = cat.open("\\boot\\bcd", NameFlavor::Tftp).expect("open");
        assert_eq!(info.len, 3);
        assert_eq!(
            cat.open("../etc/passwd", NameFlavor::Tftp),
            Err(OpenError::Refused(PathError::Traversal))
        );
    }
}
