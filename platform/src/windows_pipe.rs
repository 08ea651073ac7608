//! A local control pipe (`\\.\pipe\NAME`): one client at a time sends one short request and
//! gets one answer. zpxe's `zpxe reload` talks to a running server through it, as it does
//! through a Unix socket elsewhere.
//!
//! Only Administrators and SYSTEM may open the pipe (its DACL), remote clients are refused
//! (`PIPE_REJECT_REMOTE_CLIENTS`), and the server creates the pipe as its first instance
//! (`FILE_FLAG_FIRST_PIPE_INSTANCE`): if anyone already holds the name, the server refuses to
//! start instead of sharing it. The one instance is reused for every client (disconnected and
//! connected again), so the server never needs a right its own DACL does not give it. Every
//! read and write has a deadline: a client that connects and says nothing holds the pipe for
//! [`IO_TIMEOUT`] at most.
//!
//! Framing: the request is bytes up to `\n` (at most [`MAX_REQUEST`]); the answer is a 4-byte
//! little-endian length, then that many bytes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_BROKEN_PIPE, ERROR_IO_PENDING, ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED,
    GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, LocalFree, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX, ReadFile, WriteFile,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, DisconnectNamedPipe, PIPE_READMODE_BYTE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_WAIT, WaitNamedPipeW,
};
use windows_sys::Win32::System::Threading::{CreateEventW, INFINITE, WaitForSingleObject};

/// How long either side waits for the other's bytes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request read.
pub const MAX_REQUEST: usize = 64;
/// The longest answer a client accepts.
const MAX_ANSWER: usize = 1 << 20;
/// Only SYSTEM and the Administrators group: generic all, nothing inherited, nothing else.
const SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// An owned kernel handle.
#[derive(Debug)]
struct Owned(HANDLE);

// SAFETY: a kernel handle may be used and closed from any thread.
unsafe impl Send for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// One end of a pipe opened for overlapped I/O, with the event its operations signal.
#[derive(Debug)]
struct Pipe {
    handle: Owned,
    event: Owned,
}

impl Pipe {
    fn new(handle: HANDLE) -> io::Result<Self> {
        let handle = Owned(handle);
        // SAFETY: no name, no attributes: a fresh manual-reset event.
        let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            handle,
            event: Owned(event),
        })
    }

    fn overlapped(&self) -> OVERLAPPED {
        // SAFETY: OVERLAPPED is plain data; all zeros is its documented initial state.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = self.event.0;
        ov
    }

    /// Completes an operation that was started with `ov` and returned `ok`: waits for at most
    /// `limit` (`None`: forever), cancelling it past that. Returns the bytes it moved.
    fn finish(&self, ok: i32, ov: &mut OVERLAPPED, limit: Option<Duration>) -> io::Result<u32> {
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_IO_PENDING as i32) {
                return Err(e);
            }
            let ms = limit.map_or(INFINITE, |d| {
                u32::try_from(d.as_millis()).unwrap_or(INFINITE - 1)
            });
            // SAFETY: the event is ours and valid.
            let waited = unsafe { WaitForSingleObject(self.event.0, ms) };
            if waited != WAIT_OBJECT_0 {
                // SAFETY: cancels this operation only; the wait below lets it end before `ov`
                // goes out of scope.
                unsafe { CancelIoEx(self.handle.0, ov) };
                let mut n = 0;
                // SAFETY: as below.
                unsafe { GetOverlappedResult(self.handle.0, ov, &mut n, 1) };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the other end of the pipe did not answer in time",
                ));
            }
        }
        let mut n = 0;
        // SAFETY: `ov` is the operation's, which has completed (or completes now: bWait).
        if unsafe { GetOverlappedResult(self.handle.0, ov, &mut n, 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n)
    }

    /// Reads up to `buf.len()` bytes; 0 when the other end closed.
    fn read(&self, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
        let mut ov = self.overlapped();
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // SAFETY: `buf` and `ov` outlive the operation: `finish` waits for it (or cancels it
        // and waits for that).
        let ok = unsafe {
            ReadFile(
                self.handle.0,
                buf.as_mut_ptr(),
                len,
                std::ptr::null_mut(),
                &mut ov,
            )
        };
        match self.finish(ok, &mut ov, Some(limit)) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.raw_os_error() == Some(ERROR_BROKEN_PIPE as i32) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn write_all(&self, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ov = self.overlapped();
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            // SAFETY: as in `read`.
            let ok = unsafe {
                WriteFile(
                    self.handle.0,
                    bytes.as_ptr(),
                    len,
                    std::ptr::null_mut(),
                    &mut ov,
                )
            };
            let n = self.finish(ok, &mut ov, Some(limit))? as usize;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// The serving end; the thread answering on it ends when this drops.
#[derive(Debug)]
pub struct PipeServer {
    name: String,
    closed: Arc<AtomicBool>,
}

impl PipeServer {
    /// `\\.\pipe\NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PipeServer {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        // Wakes the thread out of its wait for a client; failing that (another client holds
        // the pipe), it sees the flag when that client is done.
        if let Ok(h) = open_client(&self.name, Duration::from_millis(200)) {
            drop(h);
        }
    }
}

/// Creates the pipe `name` (`\\.\pipe\...`) and answers each request with `handler` on a
/// thread of its own (named `thread`). Fails when the name is taken (another server, or
/// anyone who created it first).
pub fn serve(
    name: &str,
    thread: &str,
    handler: impl Fn(&[u8]) -> Vec<u8> + Send + 'static,
) -> io::Result<PipeServer> {
    let pipe = create(name)?;
    let closed = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&closed);
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = answer_one(&pipe, &stop, &handler) {
                    tracing::warn!(pipe = %label, error = %e, "control pipe: request failed");
                }
                // SAFETY: our pipe; ends whatever connection the last client had.
                unsafe { DisconnectNamedPipe(pipe.handle.0) };
            }
        })?;
    Ok(PipeServer {
        name: name.to_owned(),
        closed,
    })
}

fn create(name: &str) -> io::Result<Pipe> {
    let sddl = wide(SDDL);
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: a valid string; `sd` receives a LocalAlloc'ed descriptor, freed below.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let attributes = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd,
        bInheritHandle: 0,
    };
    let wname = wide(name);
    // SAFETY: valid name and attributes; the descriptor is copied into the pipe's object.
    let handle = unsafe {
        CreateNamedPipeW(
            wname.as_ptr(),
            PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            4096,
            4096,
            0,
            &attributes,
        )
    };
    let created = io::Error::last_os_error();
    // SAFETY: allocated by the conversion above.
    unsafe { LocalFree(sd) };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::new(
            created.kind(),
            format!("creating the pipe {name}: {created} (is another zpxe serving it?)"),
        ));
    }
    Pipe::new(handle)
}

fn answer_one(
    pipe: &Pipe,
    stop: &AtomicBool,
    handler: &impl Fn(&[u8]) -> Vec<u8>,
) -> io::Result<()> {
    let mut ov = pipe.overlapped();
    // SAFETY: `ov` lives until the connection completes (waited for without a limit).
    let ok = unsafe { ConnectNamedPipe(pipe.handle.0, &mut ov) };
    let connected = if ok == 0
        && io::Error::last_os_error().raw_os_error() == Some(ERROR_PIPE_CONNECTED as i32)
    {
        Ok(0)
    } else {
        pipe.finish(ok, &mut ov, None)
    };
    connected?;
    if stop.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut request = Vec::with_capacity(MAX_REQUEST);
    let mut buf = [0u8; MAX_REQUEST];
    while request.len() < MAX_REQUEST && !request.contains(&b'\n') {
        let n = pipe.read(&mut buf[..MAX_REQUEST - request.len()], IO_TIMEOUT)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = handler(&request);
    let mut answer = u32::try_from(body.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes()
        .to_vec();
    answer.extend_from_slice(&body);
    pipe.write_all(&answer, IO_TIMEOUT)?;
    // Disconnecting drops what the client has not read yet: wait until it closes its end.
    let mut rest = [0u8; 16];
    while pipe.read(&mut rest, IO_TIMEOUT)? > 0 {}
    Ok(())
}

fn open_client(name: &str, wait: Duration) -> io::Result<Pipe> {
    let wname = wide(name);
    let deadline = std::time::Instant::now() + wait;
    loop {
        // SAFETY: a valid name; no attributes.
        let handle = unsafe {
            CreateFileW(
                wname.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                std::ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                std::ptr::null_mut(),
            )
        };
        if handle != INVALID_HANDLE_VALUE {
            return Pipe::new(handle);
        }
        let e = io::Error::last_os_error();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if e.raw_os_error() != Some(ERROR_PIPE_BUSY as i32) || left.is_zero() {
            return Err(e);
        }
        // Another client holds the one instance: wait for it (bounded), then try again.
        let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
        // SAFETY: a valid name.
        unsafe { WaitNamedPipeW(wname.as_ptr(), ms) };
    }
}

/// Sends `request` (ending in `\n`) to the server on `name` and returns its answer. Waits up
/// to [`IO_TIMEOUT`] for a busy pipe and for each read and write.
pub fn request(name: &str, request: &[u8]) -> io::Result<Vec<u8>> {
    let pipe = open_client(name, IO_TIMEOUT)?;
    pipe.write_all(request, IO_TIMEOUT)?;
    let mut len = [0u8; 4];
    read_exact(&pipe, &mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_ANSWER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an answer of {len} bytes on {name}"),
        ));
    }
    let mut body = vec![0u8; len];
    read_exact(&pipe, &mut body)?;
    Ok(body)
}

fn read_exact(pipe: &Pipe, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = pipe.read(buf, IO_TIMEOUT)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the pipe before its answer was whole",
            ));
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique() -> String {
        format!(
            r"\\.\pipe\zpxe-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
    }

    #[test]
    fn one_request_one_answer_and_the_name_is_taken_once() {
        let name = unique();
        let server = serve(&name, "pipe-test", |req: &[u8]| {
            let mut out = b"got ".to_vec();
            out.extend_from_slice(req);
            out
        })
        .expect("serve");
        assert!(serve(&name, "pipe-test-2", |_: &[u8]| Vec::new()).is_err());
        for _ in 0..3 {
            let answer = request(&name, b"reload\n").expect("request");
            assert_eq!(answer, b"got reload\n");
        }
        // A request is cut at MAX_REQUEST bytes.
        let long = vec![b'x'; 200];
        let answer = request(&name, &long).expect("long request");
        assert_eq!(answer.len(), 4 + MAX_REQUEST);
        drop(server);
    }

    #[test]
    fn nobody_listening_is_an_error() {
        assert!(request(&unique(), b"reload\n").is_err());
    }
}
