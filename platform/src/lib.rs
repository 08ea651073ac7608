//! zpxe's OS layer: the only crate with OS code and `unsafe`.
//!
//! It keeps compio (io_uring on Linux, IOCP on Windows, epoll where io_uring is blocked) behind a
//! small interface of its own: [`runtime`] starts event loops, [`udp`] and [`tcp`] wrap sockets
//! with the control messages and batched sends zpxe needs, [`store`] maps boot files.

pub mod append;
pub mod bind;
pub mod icmp;
#[cfg(unix)]
pub mod instance_lock;
pub mod notify;
pub mod runtime;
pub mod signals;
pub mod store;
pub mod tcp;
pub mod thread;
pub mod udp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub mod windows_eventlog;
#[cfg(windows)]
pub mod windows_pipe;

pub use store::{ImageStore, StoreOptions, Version, VersionBroken};

/// What a send returns when the kernel cannot read one of its buffers: for a mapping, the file
/// shrank under it (see [`store`]).
#[cfg(unix)]
pub(crate) const EFAULT: i32 = libc::EFAULT;
/// WSAEFAULT.
#[cfg(windows)]
pub(crate) const EFAULT: i32 = 10014;
#[cfg(not(any(unix, windows)))]
pub(crate) const EFAULT: i32 = 14;

/// Whether several event loops can each bind the same TCP and UDP port, the kernel spreading
/// connections and datagrams between them (`SO_REUSEPORT`). Windows has nothing like it (its
/// `SO_REUSEADDR` lets a second socket steal the port), so there one loop holds the ports and
/// hands work to the others (`TcpServer::accept_pending`, src/serve/handoff.rs).
pub const LOOPS_SHARE_PORTS: bool = cfg!(unix);
