//! A file an event loop writes without waiting on the disk: positional writes submitted to the
//! loop's driver (io_uring `WRITE`, an overlapped `WriteFile` on IOCP), so a slow disk delays
//! the write's completion, never the loop. The DHCP server's lease journal is one.

use std::io;
use std::path::Path;

use compio::buf::{BufResult, IoBuf};
use compio::io::AsyncWriteAt;

/// A file open for positional writes on the calling thread's event loop.
#[derive(Debug)]
pub struct LoopFile {
    file: compio::fs::File,
}

impl LoopFile {
    /// Opens `path` for reading and writing, creating it when missing, on the current event
    /// loop. Blocking (one open): call while the loop sets up, before it serves.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(windows)]
        {
            use std::os::windows::fs::OpenOptionsExt;
            // Overlapped, so the loop's completion port takes its writes.
            options.custom_flags(windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OVERLAPPED);
        }
        let std_file = options.open(path)?;
        #[cfg(unix)]
        let file = {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the descriptor was just opened and is owned by nothing else; the compio
            // file takes it over (io_uring needs no attaching).
            unsafe { compio::fs::File::from_raw_fd(std_file.into_raw_fd()) }
        };
        #[cfg(windows)]
        let file = {
            use std::os::windows::io::{AsRawHandle, FromRawHandle, IntoRawHandle};
            compio::runtime::Runtime::with_current(|r| r.attach(std_file.as_raw_handle() as _))?;
            // SAFETY: the handle was just opened (overlapped) and attached to this loop's
            // completion port; the compio file takes it over.
            unsafe { compio::fs::File::from_raw_handle(std_file.into_raw_handle()) }
        };
        Ok(Self { file })
    }

    /// Writes all of `buf` at `pos`, in as many writes as the kernel needs.
    pub async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        let mut buf = buf;
        let mut done = 0usize;
        while done < buf.len() {
            let mut file = &self.file;
            let BufResult(res, slice) = file.write_at(buf.slice(done..), pos + done as u64).await;
            buf = compio::buf::IntoInner::into_inner(slice);
            match res {
                Ok(0) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the file took nothing",
                        )),
                        buf,
                    );
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes at positions land where they were asked to, past the end too.
    #[test]
    fn writes_land_at_their_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let f = LoopFile::open(&path).expect("open");
                let (r, _) = f.write_all_at(b"hello".to_vec(), 0).await;
                r.expect("write");
                let (r, _) = f.write_all_at(b"world".to_vec(), 5).await;
                r.expect("write");
                let (r, _) = f.write_all_at(b"J".to_vec(), 0).await;
                r.expect("write");
            });
        assert_eq!(std::fs::read(&path).expect("read"), b"Jelloworld");
    }
}
