//! zpxe's OS layer: the only crate with OS code and `unsafe`.
//!
//! It keeps compio (io_uring on Linux, IOCP on Windows, epoll where io_uring is blocked) behind a
//! small interface of its own: [`runtime`] starts event loops, [`udp`] and [`tcp`] wrap sockets
//! with the control messages and batched sends zpxe needs, [`store`] maps boot files.

pub mod bind;
pub mod notify;
pub mod runtime;
pub mod signals;
pub mod store;
pub mod tcp;
pub mod udp;

pub use store::{ImageStore, StoreOptions, Version, VersionBroken};
