//! Read-only TFTP: RFC 1350 with option negotiation (RFC 2347), blksize (2348), tsize and
//! timeout (2349), windowsize (7440) and Windows Deployment Services' variable window.
//!
//! [`TftpServer`] serves any number of transfers with a few integers of state each and names
//! file bytes by (image, range) so the platform can send a window in one call. [`TftpClient`]
//! reproduces what real firmware sends ([`ClientProfile`]).

pub mod client;
pub mod options;
pub mod server;
pub mod transfer;
pub mod wire;

pub use client::{
    ClientConfig, ClientDone, ClientError, ClientProfile, ClientStats, Delivered, TftpClient,
};
pub use server::{Local, SocketId, TftpEvent, TftpServer, TftpServerConfig, TransferId};
pub use transfer::{Abort, ClientAbort, Rollover, ServerAbort, TransferOutcome};

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
