//! The DHCPv4/BOOTP message (RFC 2131 section 2, RFC 951): a checked view over bytes
//! ([`Packet`]) and the parsed form ([`DhcpRepr`]) that emits exactly `buffer_len()` bytes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::ids::MacAddr;
use super::options::{DhcpOptions, code, gather_area};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server discovery port (PXE 2.1 specification).
pub const PXE_PORT: u16 = 4011;

const MAGIC_COOKIE: [u8; 4] = [0x63, 0x82, 0x53, 0x63];
const HTYPE_ETHERNET: u8 = 0x01;
const FLAG_BROADCAST: u16 = 0x8000;
/// RFC 1542 section 2.1: relay agents and some PXE ROMs drop BOOTP messages shorter than this.
const MIN_MESSAGE_LEN: usize = 300;

/// Byte ranges of the fixed header.
mod field {
    use std::ops::Range;
    pub(super) const OP: usize = 0;
    pub(super) const HTYPE: usize = 1;
    pub(super) const HLEN: usize = 2;
    pub(super) const HOPS: usize = 3;
    pub(super) const XID: Range<usize> = 4..8;
    pub(super) const SECS: Range<usize> = 8..10;
    pub(super) const FLAGS: Range<usize> = 10..12;
    pub(super) const CIADDR: Range<usize> = 12..16;
    pub(super) const YIADDR: Range<usize> = 16..20;
    pub(super) const SIADDR: Range<usize> = 20..24;
    pub(super) const GIADDR: Range<usize> = 24..28;
    pub(super) const CHADDR: Range<usize> = 28..44;
    pub(super) const SNAME: Range<usize> = 44..108;
    pub(super) const FILE: Range<usize> = 108..236;
    pub(super) const COOKIE: Range<usize> = 236..240;
    pub(super) const OPTIONS: usize = 240;
}

/// Why bytes are not a usable DHCP message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("truncated message or option")]
    Truncated,
    #[error("missing DHCP magic cookie")]
    BadMagicCookie,
    #[error("unknown BOOTP op {0}")]
    BadOp(u8),
    #[error("hardware type {htype} length {hlen}: only Ethernet is served")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("malformed option {code}")]
    BadOption { code: u8 },
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A read-only view of a DHCP message; every accessor is in bounds once
/// [`Packet::new_checked`] succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the fixed header and the magic cookie are present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        if bytes.len() < field::OPTIONS {
            return Err(WireError::Truncated);
        }
        if bytes[field::COOKIE] != MAGIC_COOKIE {
            return Err(WireError::BadMagicCookie);
        }
        Ok(Self { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn ip(&self, range: std::ops::Range<usize>) -> Ipv4Addr {
        let mut octets = [0u8; 4];
        octets.copy_from_slice(&self.bytes()[range]);
        Ipv4Addr::from(octets)
    }

    pub fn op(&self) -> u8 {
        self.bytes()[field::OP]
    }
    pub fn htype(&self) -> u8 {
        self.bytes()[field::HTYPE]
    }
    pub fn hlen(&self) -> u8 {
        self.bytes()[field::HLEN]
    }
    pub fn hops(&self) -> u8 {
        self.bytes()[field::HOPS]
    }
    pub fn xid(&self) -> u32 {
        let b = &self.bytes()[field::XID];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn secs(&self) -> u16 {
        let b = &self.bytes()[field::SECS];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn flags(&self) -> u16 {
        let b = &self.bytes()[field::FLAGS];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn ciaddr(&self) -> Ipv4Addr {
        self.ip(field::CIADDR)
    }
    pub fn yiaddr(&self) -> Ipv4Addr {
        self.ip(field::YIADDR)
    }
    pub fn siaddr(&self) -> Ipv4Addr {
        self.ip(field::SIADDR)
    }
    pub fn giaddr(&self) -> Ipv4Addr {
        self.ip(field::GIADDR)
    }
    pub fn chaddr(&self) -> &[u8] {
        &self.bytes()[field::CHADDR]
    }
    pub fn sname(&self) -> &[u8] {
        &self.bytes()[field::SNAME]
    }
    pub fn file(&self) -> &[u8] {
        &self.bytes()[field::FILE]
    }
    pub fn options(&self) -> &[u8] {
        &self.bytes()[field::OPTIONS..]
    }
}

/// BOOTP `op`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootOp {
    Request,
    Reply,
}

/// A parsed DHCP message (Ethernet clients only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpRepr {
    pub op: BootOp,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub client_mac: MacAddr,
    /// `sname` up to its first NUL; empty when the field carries options.
    pub server_name: Vec<u8>,
    /// `file` up to its first NUL; empty when the field carries options. Emitted truncated to
    /// 128 bytes: longer names belong in option 67.
    pub boot_file: Vec<u8>,
    pub options: DhcpOptions,
}

fn until_nul(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field.iter().take(end).copied().collect()
}

impl DhcpRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, WireError> {
        let op = match packet.op() {
            0x01 => BootOp::Request,
            0x02 => BootOp::Reply,
            other => return Err(WireError::BadOp(other)),
        };
        if packet.htype() != HTYPE_ETHERNET || packet.hlen() != 6 {
            return Err(WireError::NotEthernet {
                htype: packet.htype(),
                hlen: packet.hlen(),
            });
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&packet.chaddr()[..6]);

        let mut all = BTreeMap::new();
        gather_area(packet.options(), &mut all)?;
        //= https://www.rfc-editor.org/rfc/rfc2132#section-9.3
        //# If this option is present, the client interprets the specified
        //# additional fields after it concludes interpretation of the standard
        //# option fields.
        let overload = match all.remove(&code::OVERLOAD).as_deref() {
            None => 0,
            Some([value @ 1..=3]) => *value,
            Some(_) => {
                return Err(WireError::BadOption {
                    code: code::OVERLOAD,
                });
            }
        };
        //= https://www.rfc-editor.org/rfc/rfc3396#section-5
        //# The aggregate option buffer is made up of the optional parameters field,
        //# the file field, and the sname field, in that order.
        let file_has_options = overload & 0x01 != 0;
        let sname_has_options = overload & 0x02 != 0;
        let mut extra = BTreeMap::new();
        if file_has_options {
            gather_area(packet.file(), &mut extra)?;
        }
        if sname_has_options {
            gather_area(packet.sname(), &mut extra)?;
        }
        // Option 52 only counts in the options field.
        extra.remove(&code::OVERLOAD);
        for (code, value) in extra {
            all.entry(code).or_default().extend_from_slice(&value);
        }

        Ok(DhcpRepr {
            op,
            hops: packet.hops(),
            xid: packet.xid(),
            secs: packet.secs(),
            broadcast: packet.flags() & FLAG_BROADCAST != 0,
            ciaddr: packet.ciaddr(),
            yiaddr: packet.yiaddr(),
            siaddr: packet.siaddr(),
            giaddr: packet.giaddr(),
            client_mac: MacAddr(mac),
            server_name: if sname_has_options {
                Vec::new()
            } else {
                until_nul(packet.sname())
            },
            boot_file: if file_has_options {
                Vec::new()
            } else {
                until_nul(packet.file())
            },
            options: DhcpOptions::from_aggregate(all)?,
        })
    }

    /// Parses untrusted bytes.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    /// Bytes [`DhcpRepr::emit`] writes: header, cookie, options, End, padded to 300.
    pub fn buffer_len(&self) -> usize {
        (field::OPTIONS + self.options.buffer_len() + 1).max(MIN_MESSAGE_LEN)
    }

    /// Writes exactly [`DhcpRepr::buffer_len`] bytes to the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.buffer_len();
        let out = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
        out.fill(0);
        out[field::OP] = match self.op {
            BootOp::Request => 0x01,
            BootOp::Reply => 0x02,
        };
        out[field::HTYPE] = HTYPE_ETHERNET;
        out[field::HLEN] = 6;
        out[field::HOPS] = self.hops;
        out[field::XID].copy_from_slice(&self.xid.to_be_bytes());
        out[field::SECS].copy_from_slice(&self.secs.to_be_bytes());
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        out[field::FLAGS].copy_from_slice(&flags.to_be_bytes());
        out[field::CIADDR].copy_from_slice(&self.ciaddr.octets());
        out[field::YIADDR].copy_from_slice(&self.yiaddr.octets());
        out[field::SIADDR].copy_from_slice(&self.siaddr.octets());
        out[field::GIADDR].copy_from_slice(&self.giaddr.octets());
        out[field::CHADDR][..6].copy_from_slice(&self.client_mac.0);
        copy_truncated(&mut out[field::SNAME], &self.server_name);
        copy_truncated(&mut out[field::FILE], &self.boot_file);
        out[field::COOKIE].copy_from_slice(&MAGIC_COOKIE);
        let written = self.options.emit(&mut out[field::OPTIONS..])?;
        if let Some(end) = out.get_mut(field::OPTIONS + written) {
            *end = code::END;
        }
        Ok(len)
    }

    /// The encoded message in a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; self.buffer_len()];
        // The buffer has exactly the length emit needs, so it cannot fail.
        let _ = self.emit(&mut bytes);
        bytes
    }
}

fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::options::MessageType;

    fn sample() -> DhcpRepr {
        DhcpRepr {
            op: BootOp::Reply,
            hops: 1,
            xid: 0xdead_beef,
            secs: 4,
            broadcast: true,
            ciaddr: Ipv4Addr::new(10, 0, 0, 9),
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::new(10, 0, 0, 1),
            giaddr: Ipv4Addr::new(10, 1, 0, 1),
            client_mac: MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            server_name: b"zpxe".to_vec(),
            boot_file: b"undionly.kpxe".to_vec(),
            options: DhcpOptions {
                message_type: Some(MessageType::Offer),
                server_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
                vendor_class: Some(b"PXEClient".to_vec()),
                client_arch: vec![7],
                other: [(0xe0, vec![1, 2, 3])].into_iter().collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn emit_parse_round_trip() {
        let repr = sample();
        let bytes = repr.to_bytes();
        assert_eq!(bytes.len(), repr.buffer_len());
        assert_eq!(bytes.len(), 300);
        assert_eq!(DhcpRepr::parse_bytes(&bytes), Ok(repr.clone()));
        let mut short = vec![0u8; 299];
        assert_eq!(repr.emit(&mut short), Err(WireError::BufferTooSmall));
        // emit writes exactly buffer_len bytes even into a larger buffer.
        let mut large = vec![0xaa; 400];
        assert_eq!(repr.emit(&mut large), Ok(300));
        assert!(large[300..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn header_checks() {
        let bytes = sample().to_bytes();
        assert_eq!(
            DhcpRepr::parse_bytes(&bytes[..239]),
            Err(WireError::Truncated)
        );
        let mut no_cookie = bytes.clone();
        no_cookie[236] = 0;
        assert_eq!(
            DhcpRepr::parse_bytes(&no_cookie),
            Err(WireError::BadMagicCookie)
        );
        let mut token_ring = bytes.clone();
        token_ring[1] = 6;
        assert!(matches!(
            DhcpRepr::parse_bytes(&token_ring),
            Err(WireError::NotEthernet { htype: 6, hlen: 6 })
        ));
        let mut long_hlen = bytes.clone();
        long_hlen[2] = 16;
        assert!(matches!(
            DhcpRepr::parse_bytes(&long_hlen),
            Err(WireError::NotEthernet { .. })
        ));
        let mut op = bytes;
        op[0] = 3;
        assert_eq!(DhcpRepr::parse_bytes(&op), Err(WireError::BadOp(3)));
    }
}
