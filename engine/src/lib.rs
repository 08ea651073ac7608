//! zpxe's protocol engine. It performs no I/O whatsoever.
//!
//! Every machine here follows one shape: the caller passes received bytes and the current time in
//! (`handle_*`), then polls what to send and when it next needs attention out (`poll_transmit`,
//! `poll_timeout`). Image bytes are never copied here: a [`Transmit`] names them by
//! ([`ImageId`], [`ByteRange`]) and each platform backend picks its own zero-copy send.
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod http;
pub mod icmp;
pub mod ids;
pub mod image;
pub mod net;
pub mod path;
#[cfg(test)]
mod proptest_config;
pub mod rule;
pub mod sharded;
pub mod sim;
pub mod tftp;

pub use image::{ByteRange, ImageCatalog, ImageId, ImageInfo, MemoryCatalog, OpenError};
pub use net::{DatagramMeta, Payload, Transmit};
