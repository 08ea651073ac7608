//! Datagrams in and out of the machines.

use std::net::{IpAddr, SocketAddr};

use crate::image::{ByteRange, ImageId};

/// Where a received datagram came from and arrived at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DatagramMeta {
    /// The sender.
    pub remote: SocketAddr,
    /// The local address the datagram was sent to (from `IP_PKTINFO`), when known. Replies leave
    /// from this address so that multi-homed servers answer from the right interface.
    pub local_ip: Option<IpAddr>,
    /// The interface the datagram arrived on, when known.
    pub ifindex: Option<u32>,
}

impl DatagramMeta {
    pub fn from_remote(remote: SocketAddr) -> Self {
        Self {
            remote,
            local_ip: None,
            ifindex: None,
        }
    }
}

/// One send a machine asks for. The bytes are either in the caller's buffer or named in an image.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// Send from this local address (and interface), or let the OS choose.
    pub source_ip: Option<IpAddr>,
    pub ifindex: Option<u32>,
    pub payload: Payload,
}

/// The contents of a [`Transmit`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// One datagram: the first `len` bytes of the buffer passed to `poll_transmit`.
    Bytes { len: usize },
    /// `count` datagrams, each a `header_len`-byte header from the buffer passed to
    /// `poll_transmit` (datagram `i` takes bytes `i*header_len..(i+1)*header_len`) followed by
    /// the next `segment` bytes of `range` of `image`. Every datagram but the last carries exactly
    /// `segment` image bytes; the last carries what remains (possibly none). This is the shape
    /// UDP segmentation offload sends in one call.
    Segments {
        header_len: u8,
        count: u16,
        segment: u32,
        image: ImageId,
        range: ByteRange,
    },
}

impl Payload {
    /// Number of datagrams this payload makes.
    pub fn datagrams(&self) -> usize {
        match self {
            Payload::Bytes { .. } => 1,
            Payload::Segments { count, .. } => usize::from(*count),
        }
    }
}
