//! TFTP packets: parsing never panics, emitting writes exactly the computed length.

use std::fmt;

//= https://www.rfc-editor.org/rfc/rfc1350#section-5
//# TFTP supports five types of packets ... 1 Read request (RRQ) 2 Write request (WRQ)
//# 3 Data (DATA) 4 Acknowledgment (ACK) 5 Error (ERROR)
pub const OP_RRQ: u16 = 0x0001;
pub const OP_WRQ: u16 = 0x0002;
pub const OP_DATA: u16 = 0x0003;
pub const OP_ACK: u16 = 0x0004;
pub const OP_ERROR: u16 = 0x0005;
//= https://www.rfc-editor.org/rfc/rfc2347#section-2
//# opc  The opcode field contains a 6, for Option Acknowledgment.
pub const OP_OACK: u16 = 0x0006;

/// Size of a DATA header (opcode + block number).
pub const DATA_HEADER_LEN: usize = 4;

/// TFTP error codes (RFC 1350 appendix, RFC 2347 adds 8).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTransferId,
    FileExists,
    NoSuchUser,
    OptionRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            c => ErrorCode::Other(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Why a datagram is not a TFTP packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("packet too short")]
    Truncated,
    #[error("unknown opcode {0}")]
    BadOpcode(u16),
    #[error("missing NUL terminator")]
    Unterminated,
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("option without a value")]
    OddOptions,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A parsed packet borrowing from the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data {
        block: u16,
        data: &'a [u8],
    },
    /// `extra` is the WDS variable-window byte some ACKs carry.
    Ack {
        block: u16,
        extra: Option<u8>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    Oack {
        options: Vec<(&'a str, &'a str)>,
    },
}

/// A read or write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a str,
    pub mode: &'a str,
    /// Options in the order sent; names as sent (compare case-insensitively).
    pub options: Vec<(&'a str, &'a str)>,
}

impl<'a> Packet<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let op = u16::from_be_bytes([
            *buf.first().ok_or(WireError::Truncated)?,
            *buf.get(1).ok_or(WireError::Truncated)?,
        ]);
        let body = buf.get(2..).unwrap_or_default();
        match op {
            OP_RRQ | OP_WRQ => {
                let mut fields = Strings(body);
                let filename = fields.next_str()?.ok_or(WireError::Truncated)?;
                let mode = fields.next_str()?.ok_or(WireError::Truncated)?;
                let options = fields.pairs()?;
                let req = Request {
                    filename,
                    mode,
                    options,
                };
                Ok(if op == OP_RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            OP_DATA => {
                let block = be16(body)?;
                Ok(Packet::Data {
                    block,
                    data: body.get(2..).unwrap_or_default(),
                })
            }
            OP_ACK => {
                let block = be16(body)?;
                Ok(Packet::Ack {
                    block,
                    extra: body.get(2).copied(),
                })
            }
            OP_ERROR => {
                let code = ErrorCode::from_code(be16(body)?);
                let mut fields = Strings(body.get(2..).unwrap_or_default());
                // Some clients omit the terminating NUL of the message: accept what is there.
                let message = match fields.next_str() {
                    Ok(Some(m)) => m,
                    _ => std::str::from_utf8(body.get(2..).unwrap_or_default()).unwrap_or(""),
                };
                Ok(Packet::Error { code, message })
            }
            OP_OACK => Ok(Packet::Oack {
                options: Strings(body).pairs()?,
            }),
            other => Err(WireError::BadOpcode(other)),
        }
    }
}

fn be16(b: &[u8]) -> Result<u16, WireError> {
    match b {
        [h, l, ..] => Ok(u16::from_be_bytes([*h, *l])),
        _ => Err(WireError::Truncated),
    }
}

/// NUL-terminated strings in a row.
struct Strings<'a>(&'a [u8]);

impl<'a> Strings<'a> {
    fn next_str(&mut self) -> Result<Option<&'a str>, WireError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Unterminated)?;
        let s = std::str::from_utf8(&self.0[..end]).map_err(|_| WireError::NotUtf8)?;
        self.0 = &self.0[end + 1..];
        Ok(Some(s))
    }

    fn pairs(mut self) -> Result<Vec<(&'a str, &'a str)>, WireError> {
        let mut out = Vec::new();
        while let Some(name) = self.next_str()? {
            // Some clients pad requests with trailing NULs.
            if name.is_empty() && self.0.iter().all(|&b| b == 0) {
                break;
            }
            let value = self.next_str()?.ok_or(WireError::OddOptions)?;
            out.push((name, value));
        }
        Ok(out)
    }
}

/// Writes packets into caller buffers; each returns the length written.
#[derive(Debug)]
pub struct Emit;

impl Emit {
    pub fn request(
        buf: &mut [u8],
        op: u16,
        filename: &str,
        mode: &str,
        options: &[(&str, String)],
    ) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(op)?;
        w.cstr(filename)?;
        w.cstr(mode)?;
        for (k, v) in options {
            w.cstr(k)?;
            w.cstr(v)?;
        }
        Ok(w.len)
    }

    pub fn ack(buf: &mut [u8], block: u16, extra: Option<u8>) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(OP_ACK)?;
        w.u16(block)?;
        if let Some(e) = extra {
            w.bytes(&[e])?;
        }
        Ok(w.len)
    }

    pub fn error(buf: &mut [u8], code: ErrorCode, message: &str) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(OP_ERROR)?;
        w.u16(code.code())?;
        w.cstr(message)?;
        Ok(w.len)
    }

    pub fn oack(buf: &mut [u8], options: &[(&str, String)]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(OP_OACK)?;
        for (k, v) in options {
            w.cstr(k)?;
            w.cstr(v)?;
        }
        Ok(w.len)
    }

    /// A DATA header.
    pub fn data_header(buf: &mut [u8], block: u16) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(OP_DATA)?;
        w.u16(block)?;
        Ok(w.len)
    }

    /// A whole DATA packet (tests and the simulated network).
    pub fn data(buf: &mut [u8], block: u16, data: &[u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(OP_DATA)?;
        w.u16(block)?;
        w.bytes(data)?;
        Ok(w.len)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), WireError> {
        let dst = self
            .buf
            .get_mut(self.len..self.len + b.len())
            .ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }

    fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.bytes(&v.to_be_bytes())
    }

    fn cstr(&mut self, s: &str) -> Result<(), WireError> {
        self.bytes(s.as_bytes())?;
        self.bytes(&[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edk2_probe_rrq() {
        let raw = b"\x00\x01boot/ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00";
        let Packet::Rrq(r) = Packet::parse(raw).expect("parse") else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "boot/ipxe.efi");
        assert_eq!(r.mode, "octet");
        assert_eq!(
            r.options,
            vec![("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]
        );
    }

    #[test]
    fn round_trips() {
        let mut buf = [0u8; 512];
        let n = Emit::oack(
            &mut buf,
            &[("blksize", "1432".into()), ("tsize", "99".into())],
        )
        .expect("emit");
        assert_eq!(
            Packet::parse(&buf[..n]),
            Ok(Packet::Oack {
                options: vec![("blksize", "1432"), ("tsize", "99")]
            })
        );
        let n = Emit::ack(&mut buf, 65535, Some(31)).expect("emit");
        assert_eq!(n, 5);
        assert_eq!(
            Packet::parse(&buf[..n]),
            Ok(Packet::Ack {
                block: 65535,
                extra: Some(31)
            })
        );
        let n = Emit::error(&mut buf, ErrorCode::OptionRefused, "probe").expect("emit");
        assert_eq!(
            Packet::parse(&buf[..n]),
            Ok(Packet::Error {
                code: ErrorCode::OptionRefused,
                message: "probe"
            })
        );
        assert_eq!(
            Emit::error(&mut buf[..4], ErrorCode::NotDefined, "x"),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..40 {
            let raw: Vec<u8> = (0..len).map(|i| (i * 37 % 7) as u8).collect();
            let _ = Packet::parse(&raw);
        }
        assert_eq!(Packet::parse(b"\x00\x09"), Err(WireError::BadOpcode(9)));
        assert_eq!(Packet::parse(b"\x00\x01file"), Err(WireError::Unterminated));
        assert_eq!(
            Packet::parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(WireError::OddOptions)
        );
        assert_eq!(Packet::parse(b"\x00\x04\x00"), Err(WireError::Truncated));
    }
}
