//! HTTP/1.1 for boot files: a sans-IO server connection machine (port 8050), byte ranges, iPXE
//! script generation, and a client machine for the load generator and tests.
//!
//! The server never reads request bodies and never copies image bytes: a response names them by
//! ([`ImageId`](crate::ImageId), [`ByteRange`](crate::ByteRange)) in [`Output::Body`] and the
//! platform sends them with its own zero-copy path.

pub mod client;
pub mod conditional;
pub mod conn;
pub mod date;
pub mod handler;
pub mod ipxe;
pub mod range;
pub mod request;
pub mod response;

#[cfg(test)]
mod pair_tests;
#[cfg(test)]
mod prop_tests;

pub use client::{ClientError, ClientEvent, ContentRange, HttpClient};
pub use conn::{HttpConfig, HttpConnection, HttpEvent, Output};
pub use handler::{Handler, Reply, StaticFiles};
pub use ipxe::{BootMenu, BootQuery, BootRule, BootScripts, EntryKind, MenuEntry, MenuError};
pub use range::RangeOutcome;
pub use request::{Method, Request, RequestError, Version};
pub use response::StatusCode;
