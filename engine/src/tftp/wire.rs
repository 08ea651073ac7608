//! TFTP packets (RFC 1350 section 5, RFC 2347's OACK), in the shape `dhcp::wire` has: a
//! checked view over bytes ([`Packet`]) and the parsed form ([`TftpRepr`]) that emits exactly
//! `buffer_len()` bytes. Parsing never panics.

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

/// Byte ranges of the fixed fields (RFC 1350 section 5).
mod field {
    use std::ops::Range;
    pub(super) const OPCODE: Range<usize> = 0..2;
    /// DATA and ACK: the block number; ERROR: the error code.
    pub(super) const BLOCK: Range<usize> = 2..4;
    /// RRQ, WRQ, OACK: NUL-terminated strings from here.
    pub(super) const STRINGS: usize = 2;
    /// DATA: the data; ERROR: the message; ACK: the WDS variable-window byte, if any.
    pub(super) const REST: usize = 4;
}

/// A read-only (or, over a mutable buffer, writable) view of a TFTP packet; the accessors of
/// the fixed fields are in bounds once [`Packet::new_checked`] succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: for writing a header into a buffer of at least
    /// [`DATA_HEADER_LEN`] bytes.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks that the opcode is known and that its fixed fields are present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self { buffer };
        let len = packet.bytes().len();
        if len < field::OPCODE.end {
            return Err(WireError::Truncated);
        }
        match packet.opcode() {
            OP_RRQ | OP_WRQ | OP_OACK => Ok(packet),
            OP_DATA | OP_ACK | OP_ERROR if len < field::BLOCK.end => Err(WireError::Truncated),
            OP_DATA | OP_ACK | OP_ERROR => Ok(packet),
            other => Err(WireError::BadOpcode(other)),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn opcode(&self) -> u16 {
        let b = &self.bytes()[field::OPCODE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// DATA and ACK: the block number (ERROR: the error code). Checked packets only.
    pub fn block(&self) -> u16 {
        let b = &self.bytes()[field::BLOCK];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// ERROR: the error code. Checked packets only.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_code(self.block())
    }

    /// RRQ, WRQ, OACK: the NUL-terminated strings after the opcode.
    pub fn strings(&self) -> &[u8] {
        self.bytes().get(field::STRINGS..).unwrap_or_default()
    }

    /// DATA: the data; ERROR: the message; ACK: the WDS byte, if any.
    pub fn rest(&self) -> &[u8] {
        self.bytes().get(field::REST..).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_opcode(&mut self, op: u16) {
        self.buffer.as_mut()[field::OPCODE].copy_from_slice(&op.to_be_bytes());
    }

    pub fn set_block(&mut self, block: u16) {
        self.buffer.as_mut()[field::BLOCK].copy_from_slice(&block.to_be_bytes());
    }
}

/// A TFTP packet's content, borrowing from the datagram: [`TftpRepr::parse`] reads it from a
/// checked [`Packet`], [`TftpRepr::emit`] writes exactly [`TftpRepr::buffer_len`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TftpRepr<'a> {
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

impl<'a> TftpRepr<'a> {
    /// Reads a checked packet's fields.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self, WireError> {
        let buffer: &'a [u8] = packet.buffer;
        match packet.opcode() {
            op @ (OP_RRQ | OP_WRQ) => {
                let mut fields = Strings(packet_strings(buffer));
                let filename = fields.next_str()?.ok_or(WireError::Truncated)?;
                let mode = fields.next_str()?.ok_or(WireError::Truncated)?;
                let options = fields.pairs()?;
                let req = Request {
                    filename,
                    mode,
                    options,
                };
                Ok(if op == OP_RRQ {
                    TftpRepr::Rrq(req)
                } else {
                    TftpRepr::Wrq(req)
                })
            }
            OP_DATA => Ok(TftpRepr::Data {
                block: packet.block(),
                data: packet_rest(buffer),
            }),
            OP_ACK => Ok(TftpRepr::Ack {
                block: packet.block(),
                extra: packet_rest(buffer).first().copied(),
            }),
            OP_ERROR => {
                let rest = packet_rest(buffer);
                let mut fields = Strings(rest);
                // Some clients omit the terminating NUL of the message: accept what is there.
                let message = match fields.next_str() {
                    Ok(Some(m)) => m,
                    _ => std::str::from_utf8(rest).unwrap_or(""),
                };
                Ok(TftpRepr::Error {
                    code: packet.error_code(),
                    message,
                })
            }
            OP_OACK => Ok(TftpRepr::Oack {
                options: Strings(packet_strings(buffer)).pairs()?,
            }),
            other => Err(WireError::BadOpcode(other)),
        }
    }

    /// Checks and parses a datagram.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, WireError> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    fn opcode(&self) -> u16 {
        match self {
            TftpRepr::Rrq(_) => OP_RRQ,
            TftpRepr::Wrq(_) => OP_WRQ,
            TftpRepr::Data { .. } => OP_DATA,
            TftpRepr::Ack { .. } => OP_ACK,
            TftpRepr::Error { .. } => OP_ERROR,
            TftpRepr::Oack { .. } => OP_OACK,
        }
    }

    /// The length [`TftpRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        let pairs = |options: &[(&str, &str)]| -> usize {
            options.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
        };
        2 + match self {
            TftpRepr::Rrq(r) | TftpRepr::Wrq(r) => {
                r.filename.len() + r.mode.len() + 2 + pairs(&r.options)
            }
            TftpRepr::Data { data, .. } => 2 + data.len(),
            TftpRepr::Ack { extra, .. } => 2 + usize::from(extra.is_some()),
            TftpRepr::Error { message, .. } => 2 + message.len() + 1,
            TftpRepr::Oack { options } => pairs(options),
        }
    }

    /// Writes the packet at the start of `buf`; returns the length written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u16(self.opcode())?;
        match self {
            TftpRepr::Rrq(r) | TftpRepr::Wrq(r) => {
                w.cstr(r.filename)?;
                w.cstr(r.mode)?;
                w.pairs(&r.options)?;
            }
            TftpRepr::Data { block, data } => {
                w.u16(*block)?;
                w.bytes(data)?;
            }
            TftpRepr::Ack { block, extra } => {
                w.u16(*block)?;
                if let Some(e) = extra {
                    w.bytes(&[*e])?;
                }
            }
            TftpRepr::Error { code, message } => {
                w.u16(code.code())?;
                w.cstr(message)?;
            }
            TftpRepr::Oack { options } => w.pairs(options)?,
        }
        debug_assert_eq!(w.len, self.buffer_len());
        Ok(w.len)
    }
}

/// A DATA header for block `block` in `buf` (the data follows from the image).
pub fn emit_data_header(buf: &mut [u8], block: u16) -> Result<usize, WireError> {
    let header = buf
        .get_mut(..DATA_HEADER_LEN)
        .ok_or(WireError::BufferTooSmall)?;
    let mut packet = Packet::new_unchecked(header);
    packet.set_opcode(OP_DATA);
    packet.set_block(block);
    Ok(DATA_HEADER_LEN)
}

/// An ERROR with `message` written straight into `buf` (no string is built first); returns
/// the length written.
pub fn emit_error(
    buf: &mut [u8],
    code: ErrorCode,
    message: &dyn fmt::Display,
) -> Result<usize, WireError> {
    let mut w = Writer::new(buf);
    w.u16(OP_ERROR)?;
    w.u16(code.code())?;
    fmt::write(&mut w, format_args!("{message}")).map_err(|_| WireError::BufferTooSmall)?;
    w.bytes(&[0])?;
    Ok(w.len)
}

/// An OACK of `options` (name, value) written straight into `buf`; returns the length written.
pub fn emit_oack<'a>(
    buf: &mut [u8],
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<usize, WireError> {
    let mut w = Writer::new(buf);
    w.u16(OP_OACK)?;
    for (k, v) in options {
        w.cstr(k)?;
        w.cstr(v)?;
    }
    Ok(w.len)
}

fn packet_strings(buffer: &[u8]) -> &[u8] {
    buffer.get(field::STRINGS..).unwrap_or_default()
}

fn packet_rest(buffer: &[u8]) -> &[u8] {
    buffer.get(field::REST..).unwrap_or_default()
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

struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes()).map_err(|_| fmt::Error)
    }
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

    fn pairs(&mut self, options: &[(&str, &str)]) -> Result<(), WireError> {
        for (k, v) in options {
            self.cstr(k)?;
            self.cstr(v)?;
        }
        Ok(())
    }
}

/// Emitting in one call, for the tests: each builds a [`TftpRepr`] and emits it.
#[cfg(test)]
pub(crate) struct Emit;

#[cfg(test)]
impl Emit {
    pub(crate) fn request(
        buf: &mut [u8],
        op: u16,
        filename: &str,
        mode: &str,
        options: &[(&str, String)],
    ) -> Result<usize, WireError> {
        let req = Request {
            filename,
            mode,
            options: options.iter().map(|(k, v)| (*k, v.as_str())).collect(),
        };
        match op {
            OP_RRQ => TftpRepr::Rrq(req),
            _ => TftpRepr::Wrq(req),
        }
        .emit(buf)
    }

    pub(crate) fn ack(buf: &mut [u8], block: u16, extra: Option<u8>) -> Result<usize, WireError> {
        TftpRepr::Ack { block, extra }.emit(buf)
    }

    pub(crate) fn error(
        buf: &mut [u8],
        code: ErrorCode,
        message: &str,
    ) -> Result<usize, WireError> {
        TftpRepr::Error { code, message }.emit(buf)
    }

    pub(crate) fn oack(buf: &mut [u8], options: &[(&str, String)]) -> Result<usize, WireError> {
        let options = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
        TftpRepr::Oack { options }.emit(buf)
    }

    pub(crate) fn data(buf: &mut [u8], block: u16, data: &[u8]) -> Result<usize, WireError> {
        TftpRepr::Data { block, data }.emit(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edk2_probe_rrq() {
        let raw = b"\x00\x01boot/ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00";
        let packet = Packet::new_checked(&raw[..]).expect("check");
        assert_eq!(packet.opcode(), OP_RRQ);
        let TftpRepr::Rrq(r) = TftpRepr::parse(&packet).expect("parse") else {
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
        let oack = TftpRepr::Oack {
            options: vec![("blksize", "1432"), ("tsize", "99")],
        };
        let n = oack.emit(&mut buf).expect("emit");
        assert_eq!(n, oack.buffer_len());
        assert_eq!(TftpRepr::parse_bytes(&buf[..n]), Ok(oack));
        let ack = TftpRepr::Ack {
            block: 65535,
            extra: Some(31),
        };
        let n = ack.emit(&mut buf).expect("emit");
        assert_eq!(n, 5);
        assert_eq!(TftpRepr::parse_bytes(&buf[..n]), Ok(ack));
        let error = TftpRepr::Error {
            code: ErrorCode::OptionRefused,
            message: "probe",
        };
        let n = error.emit(&mut buf).expect("emit");
        assert_eq!(TftpRepr::parse_bytes(&buf[..n]), Ok(error));
        let short = TftpRepr::Error {
            code: ErrorCode::NotDefined,
            message: "x",
        };
        assert_eq!(short.emit(&mut buf[..4]), Err(WireError::BufferTooSmall));
    }

    #[test]
    fn data_headers_are_written_through_the_view() {
        let mut buf = [0u8; 8];
        assert_eq!(emit_data_header(&mut buf, 513), Ok(DATA_HEADER_LEN));
        let packet = Packet::new_checked(&buf[..DATA_HEADER_LEN]).expect("check");
        assert_eq!((packet.opcode(), packet.block()), (OP_DATA, 513));
        assert_eq!(
            emit_data_header(&mut buf[..3], 1),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..40 {
            let raw: Vec<u8> = (0..len).map(|i| (i * 37 % 7) as u8).collect();
            let _ = TftpRepr::parse_bytes(&raw);
        }
        assert_eq!(
            TftpRepr::parse_bytes(b"\x00\x09"),
            Err(WireError::BadOpcode(9))
        );
        assert_eq!(
            TftpRepr::parse_bytes(b"\x00\x01file"),
            Err(WireError::Unterminated)
        );
        assert_eq!(
            TftpRepr::parse_bytes(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(WireError::OddOptions)
        );
        assert_eq!(
            TftpRepr::parse_bytes(b"\x00\x04\x00"),
            Err(WireError::Truncated)
        );
        assert_eq!(TftpRepr::parse_bytes(b"\x00"), Err(WireError::Truncated));
    }
}
