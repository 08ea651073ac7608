//! DHCP options (RFC 2132 and the PXE-related RFCs): the typed set zpxe reads and writes, how
//! they are gathered from the aggregate option buffer, and how they are written back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::ids::ClientUuid;
use super::wire::WireError;

/// Option codes.
pub mod code {
    pub const PAD: u8 = 0x00;
    pub const SUBNET_MASK: u8 = 0x01;
    pub const ROUTER: u8 = 0x03;
    pub const HOSTNAME: u8 = 0x0c;
    pub const VENDOR_SPECIFIC: u8 = 0x2b;
    pub const REQUESTED_IP: u8 = 0x32;
    pub const LEASE_TIME: u8 = 0x33;
    pub const OVERLOAD: u8 = 0x34;
    pub const MESSAGE_TYPE: u8 = 0x35;
    pub const SERVER_ID: u8 = 0x36;
    pub const PARAMETER_REQUEST_LIST: u8 = 0x37;
    pub const MAX_MESSAGE_SIZE: u8 = 0x39;
    pub const VENDOR_CLASS: u8 = 0x3c;
    pub const CLIENT_ID: u8 = 0x3d;
    pub const TFTP_SERVER_NAME: u8 = 0x42;
    pub const BOOTFILE_NAME: u8 = 0x43;
    pub const USER_CLASS: u8 = 0x4d;
    pub const CLIENT_ARCH: u8 = 0x5d;
    pub const CLIENT_NDI: u8 = 0x5e;
    pub const CLIENT_MACHINE_ID: u8 = 0x61;
    pub const IPXE_ENCAP: u8 = 0xaf;
    pub const END: u8 = 0xff;
}

/// PXE vendor-encapsulated sub-option codes inside option 43 (PXE 2.1 spec, table 2-1).
pub mod pxe_code {
    pub const DISCOVERY_CONTROL: u8 = 0x06;
    pub const BOOT_SERVERS: u8 = 0x08;
    pub const BOOT_MENU: u8 = 0x09;
    pub const MENU_PROMPT: u8 = 0x0a;
    pub const BOOT_ITEM: u8 = 0x47;
}

/// Option 53.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    /// A type zpxe does not handle (lease query and the like); kept so it round-trips.
    Unknown(u8),
}

impl MessageType {
    pub fn from_wire(value: u8) -> Self {
        match value {
            0x01 => Self::Discover,
            0x02 => Self::Offer,
            0x03 => Self::Request,
            0x04 => Self::Decline,
            0x05 => Self::Ack,
            0x06 => Self::Nak,
            0x07 => Self::Release,
            0x08 => Self::Inform,
            other => Self::Unknown(other),
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            Self::Discover => 0x01,
            Self::Offer => 0x02,
            Self::Request => 0x03,
            Self::Decline => 0x04,
            Self::Ack => 0x05,
            Self::Nak => 0x06,
            Self::Release => 0x07,
            Self::Inform => 0x08,
            Self::Unknown(other) => other,
        }
    }
}

/// The options of one message. Fields zpxe uses are typed; the rest stay in `other` so that
/// parse and emit round-trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhcpOptions {
    pub message_type: Option<MessageType>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub hostname: Option<Vec<u8>>,
    /// Option 43, raw; for PXE clients see [`PxeVendorOptions::parse`].
    pub vendor_specific: Option<Vec<u8>>,
    pub requested_ip: Option<Ipv4Addr>,
    pub lease_time: Option<u32>,
    pub server_id: Option<Ipv4Addr>,
    pub parameter_request_list: Option<Vec<u8>>,
    pub max_message_size: Option<u16>,
    pub vendor_class: Option<Vec<u8>>,
    pub client_id: Option<Vec<u8>>,
    pub tftp_server_name: Option<Vec<u8>>,
    pub bootfile_name: Option<Vec<u8>>,
    /// Option 77, raw; see [`DhcpOptions::user_classes`].
    pub user_class: Option<Vec<u8>>,
    /// Option 93: the client's architecture types, most preferred first.
    pub client_arch: Vec<u16>,
    /// Option 94: interface type, major, minor.
    pub client_ndi: Option<[u8; 3]>,
    /// Option 97 with type 0 and 16 bytes.
    pub client_uuid: Option<ClientUuid>,
    /// Option 175, raw (iPXE's encapsulated settings); its presence means the client runs iPXE.
    pub ipxe_encap: Option<Vec<u8>>,
    /// Every other option, by code.
    pub other: BTreeMap<u8, Vec<u8>>,
}

impl DhcpOptions {
    /// The user classes in option 77.
    ///
    /// RFC 3004 section 4 makes option 77 a list of length-prefixed user classes.
    /// iPXE (and Microsoft clients before RFC 3004) send one bare string instead, e.g. `iPXE`:
    /// when the bytes are not a well-formed RFC 3004 list they are taken as one class.
    pub fn user_classes(&self) -> Vec<&[u8]> {
        let Some(raw) = self.user_class.as_deref() else {
            return Vec::new();
        };
        let mut classes = Vec::new();
        let mut rest = raw;
        while let Some((&len, tail)) = rest.split_first() {
            match tail.split_at_checked(usize::from(len)) {
                Some((class, after)) if len > 0 => {
                    classes.push(class);
                    rest = after;
                }
                _ => return vec![raw],
            }
        }
        if classes.is_empty() {
            vec![raw]
        } else {
            classes
        }
    }

    /// Calls `visit(code, value)` for every option to emit, option 53 first (some PXE ROMs look
    /// for it there), then by code.
    fn visit(&self, visit: &mut dyn FnMut(u8, &[u8])) {
        if let Some(kind) = self.message_type {
            visit(code::MESSAGE_TYPE, &[kind.to_wire()]);
        }
        if let Some(mask) = self.subnet_mask {
            visit(code::SUBNET_MASK, &mask.octets());
        }
        if !self.routers.is_empty() {
            let bytes: Vec<u8> = self.routers.iter().flat_map(|r| r.octets()).collect();
            visit(code::ROUTER, &bytes);
        }
        if let Some(name) = &self.hostname {
            visit(code::HOSTNAME, name);
        }
        if let Some(raw) = &self.vendor_specific {
            visit(code::VENDOR_SPECIFIC, raw);
        }
        if let Some(ip) = self.requested_ip {
            visit(code::REQUESTED_IP, &ip.octets());
        }
        if let Some(secs) = self.lease_time {
            visit(code::LEASE_TIME, &secs.to_be_bytes());
        }
        if let Some(ip) = self.server_id {
            visit(code::SERVER_ID, &ip.octets());
        }
        if let Some(list) = &self.parameter_request_list {
            visit(code::PARAMETER_REQUEST_LIST, list);
        }
        if let Some(size) = self.max_message_size {
            visit(code::MAX_MESSAGE_SIZE, &size.to_be_bytes());
        }
        if let Some(class) = &self.vendor_class {
            visit(code::VENDOR_CLASS, class);
        }
        if let Some(id) = &self.client_id {
            visit(code::CLIENT_ID, id);
        }
        if let Some(name) = &self.tftp_server_name {
            visit(code::TFTP_SERVER_NAME, name);
        }
        if let Some(name) = &self.bootfile_name {
            visit(code::BOOTFILE_NAME, name);
        }
        if let Some(raw) = &self.user_class {
            visit(code::USER_CLASS, raw);
        }
        if !self.client_arch.is_empty() {
            let bytes: Vec<u8> = self
                .client_arch
                .iter()
                .flat_map(|a| a.to_be_bytes())
                .collect();
            visit(code::CLIENT_ARCH, &bytes);
        }
        if let Some(ndi) = &self.client_ndi {
            visit(code::CLIENT_NDI, ndi);
        }
        if let Some(uuid) = &self.client_uuid {
            let mut bytes = [0u8; 17];
            bytes[1..].copy_from_slice(&uuid.wire_bytes());
            visit(code::CLIENT_MACHINE_ID, &bytes);
        }
        if let Some(raw) = &self.ipxe_encap {
            visit(code::IPXE_ENCAP, raw);
        }
        for (&code, value) in &self.other {
            visit(code, value);
        }
    }

    /// Bytes [`DhcpOptions::emit`] writes (without the End option).
    pub fn buffer_len(&self) -> usize {
        let mut len = 0;
        self.visit(&mut |_, value| len += encoded_len(value.len()));
        len
    }

    /// Writes the options as TLVs, splitting values over 255 bytes into several instances of the
    /// same code. `buf` must hold [`DhcpOptions::buffer_len`] bytes; returns the bytes written.
    //= https://www.rfc-editor.org/rfc/rfc3396#section-1
    //# Multiple instances of the same option are generated when an option exceeds
    //# 255 octets in size (the maximum size of a single option)
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut at = 0;
        let mut short = false;
        self.visit(&mut |code, value| {
            short |= !write_option(buf, &mut at, code, value);
        });
        if short {
            return Err(WireError::BufferTooSmall);
        }
        Ok(at)
    }

    /// Builds the typed options from the aggregate buffer (code -> concatenated value).
    pub(crate) fn from_aggregate(mut all: BTreeMap<u8, Vec<u8>>) -> Result<Self, WireError> {
        let mut options = DhcpOptions::default();
        let bad = |code: u8| WireError::BadOption { code };
        if let Some(v) = all.remove(&code::MESSAGE_TYPE) {
            let [kind] = v.as_slice() else {
                return Err(bad(code::MESSAGE_TYPE));
            };
            options.message_type = Some(MessageType::from_wire(*kind));
        }
        options.subnet_mask = take_ip(&mut all, code::SUBNET_MASK)?;
        if let Some(v) = all.remove(&code::ROUTER) {
            if v.is_empty() || v.len() % 4 != 0 {
                return Err(bad(code::ROUTER));
            }
            options.routers = v
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect();
        }
        options.hostname = all.remove(&code::HOSTNAME);
        options.vendor_specific = all.remove(&code::VENDOR_SPECIFIC);
        options.requested_ip = take_ip(&mut all, code::REQUESTED_IP)?;
        if let Some(v) = all.remove(&code::LEASE_TIME) {
            let bytes: [u8; 4] = v.try_into().map_err(|_| bad(code::LEASE_TIME))?;
            options.lease_time = Some(u32::from_be_bytes(bytes));
        }
        options.server_id = take_ip(&mut all, code::SERVER_ID)?;
        options.parameter_request_list = all.remove(&code::PARAMETER_REQUEST_LIST);
        if let Some(v) = all.remove(&code::MAX_MESSAGE_SIZE) {
            let bytes: [u8; 2] = v.try_into().map_err(|_| bad(code::MAX_MESSAGE_SIZE))?;
            options.max_message_size = Some(u16::from_be_bytes(bytes));
        }
        options.vendor_class = all.remove(&code::VENDOR_CLASS);
        options.client_id = all.remove(&code::CLIENT_ID);
        options.tftp_server_name = all.remove(&code::TFTP_SERVER_NAME);
        options.bootfile_name = all.remove(&code::BOOTFILE_NAME);
        options.user_class = all.remove(&code::USER_CLASS);
        //= https://www.rfc-editor.org/rfc/rfc4578#section-2.1
        //# Octets "n1" and "n2" encode a 16-bit architecture type identifier that
        //# describes the pre-boot runtime environment(s) of the client machine.
        if let Some(v) = all.remove(&code::CLIENT_ARCH) {
            if v.is_empty() || v.len() % 2 != 0 {
                return Err(bad(code::CLIENT_ARCH));
            }
            options.client_arch = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
        }
        if let Some(v) = all.remove(&code::CLIENT_NDI) {
            options.client_ndi = Some(v.try_into().map_err(|_| bad(code::CLIENT_NDI))?);
        }
        // RFC 4578 section 2.3: a type octet of 0, then a 16-octet GUID.
        if let Some(v) = all.remove(&code::CLIENT_MACHINE_ID) {
            match v.split_first() {
                Some((0x00, guid)) => {
                    let wire: [u8; 16] =
                        guid.try_into().map_err(|_| bad(code::CLIENT_MACHINE_ID))?;
                    options.client_uuid = Some(ClientUuid::from_wire(wire));
                }
                _ => return Err(bad(code::CLIENT_MACHINE_ID)),
            }
        }
        options.ipxe_encap = all.remove(&code::IPXE_ENCAP);
        options.other = all;
        Ok(options)
    }
}

fn take_ip(all: &mut BTreeMap<u8, Vec<u8>>, code: u8) -> Result<Option<Ipv4Addr>, WireError> {
    match all.remove(&code) {
        None => Ok(None),
        Some(v) => {
            let octets: [u8; 4] = v.try_into().map_err(|_| WireError::BadOption { code })?;
            Ok(Some(Ipv4Addr::from(octets)))
        }
    }
}

/// Bytes a value of `len` takes once split into TLVs of at most 255 bytes each.
fn encoded_len(len: usize) -> usize {
    let instances = len.div_ceil(0xff).max(1);
    instances * 2 + len
}

/// Writes one option (several instances when long) at `*at`; false when `buf` is too short.
fn write_option(buf: &mut [u8], at: &mut usize, code: u8, value: &[u8]) -> bool {
    let mut chunks: Vec<&[u8]> = value.chunks(0xff).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for chunk in chunks {
        let Some(slot) = buf.get_mut(*at..*at + 2 + chunk.len()) else {
            return false;
        };
        slot[0] = code;
        slot[1] = chunk.len() as u8; // chunks() keeps it at most 255
        slot[2..].copy_from_slice(chunk);
        *at += 2 + chunk.len();
    }
    true
}

/// Walks one option area (options, or an overloaded `file`/`sname` field) and appends every
/// option's value to `all`, so repeated codes concatenate.
//= https://www.rfc-editor.org/rfc/rfc3396#section-1
//# When multiple instances of the same option appear in the options, file and/or
//# sname fields in a DHCP packet, the contents of these options are concatenated
//# together to form a single option prior to processing.
pub(crate) fn gather_area(area: &[u8], all: &mut BTreeMap<u8, Vec<u8>>) -> Result<(), WireError> {
    let mut rest = area;
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            code::PAD => rest = tail,
            code::END => return Ok(()),
            _ => {
                let (&len, tail) = tail.split_first().ok_or(WireError::Truncated)?;
                let (value, after) = tail
                    .split_at_checked(usize::from(len))
                    .ok_or(WireError::Truncated)?;
                all.entry(code).or_default().extend_from_slice(value);
                rest = after;
            }
        }
    }
    // No End option: some ROMs stop at the end of the buffer; accept it.
    Ok(())
}

/// One PXE boot item (sub-option 71): which boot server type and layer the client asks for or
/// is given.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PxeBootItem {
    pub server_type: u16,
    pub layer: u16,
}

/// Option 43 as PXE defines it for `PXEClient` messages. Menu and server lists stay raw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PxeVendorOptions {
    pub discovery_control: Option<u8>,
    pub boot_servers: Option<Vec<u8>>,
    pub boot_menu: Option<Vec<u8>>,
    pub menu_prompt: Option<Vec<u8>>,
    pub boot_item: Option<PxeBootItem>,
    pub other: BTreeMap<u8, Vec<u8>>,
}

/// PXE_DISCOVERY_CONTROL bit 3.
// PXE 2.1 specification, table 2-1, PXE_DISCOVERY_CONTROL bit 3: if set, and a boot file
// name is present in the initial DHCP or ProxyDHCP offer packet, download the boot file (do
// not prompt, menu or discover).
pub const DISCOVERY_USE_BOOT_FILE: u8 = 0x08;

impl PxeVendorOptions {
    pub fn parse(raw: &[u8]) -> Result<Self, WireError> {
        let mut all = BTreeMap::new();
        gather_area(raw, &mut all)?;
        let bad = WireError::BadOption {
            code: code::VENDOR_SPECIFIC,
        };
        let mut options = PxeVendorOptions::default();
        if let Some(v) = all.remove(&pxe_code::DISCOVERY_CONTROL) {
            let [bits] = v.as_slice() else {
                return Err(bad);
            };
            options.discovery_control = Some(*bits);
        }
        options.boot_servers = all.remove(&pxe_code::BOOT_SERVERS);
        options.boot_menu = all.remove(&pxe_code::BOOT_MENU);
        options.menu_prompt = all.remove(&pxe_code::MENU_PROMPT);
        if let Some(v) = all.remove(&pxe_code::BOOT_ITEM) {
            let [t0, t1, l0, l1] = v.as_slice() else {
                return Err(bad);
            };
            options.boot_item = Some(PxeBootItem {
                server_type: u16::from_be_bytes([*t0, *t1]),
                layer: u16::from_be_bytes([*l0, *l1]),
            });
        }
        options.other = all;
        Ok(options)
    }

    /// The encoded sub-options, End included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut fields: Vec<(u8, Vec<u8>)> = Vec::new();
        if let Some(bits) = self.discovery_control {
            fields.push((pxe_code::DISCOVERY_CONTROL, vec![bits]));
        }
        if let Some(v) = &self.boot_servers {
            fields.push((pxe_code::BOOT_SERVERS, v.clone()));
        }
        if let Some(v) = &self.boot_menu {
            fields.push((pxe_code::BOOT_MENU, v.clone()));
        }
        if let Some(v) = &self.menu_prompt {
            fields.push((pxe_code::MENU_PROMPT, v.clone()));
        }
        if let Some(item) = self.boot_item {
            let mut v = item.server_type.to_be_bytes().to_vec();
            v.extend_from_slice(&item.layer.to_be_bytes());
            fields.push((pxe_code::BOOT_ITEM, v));
        }
        fields.extend(self.other.iter().map(|(c, v)| (*c, v.clone())));
        let len: usize = fields.iter().map(|(_, v)| encoded_len(v.len())).sum();
        let mut out = vec![0u8; len + 1];
        let mut at = 0;
        for (code, value) in &fields {
            write_option(&mut out, &mut at, *code, value);
        }
        if let Some(end) = out.get_mut(at) {
            *end = code::END;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(area: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, WireError> {
        let mut all = BTreeMap::new();
        gather_area(area, &mut all).map(|()| all)
    }

    #[test]
    fn user_class_bare_and_rfc3004() {
        let mut options = DhcpOptions {
            user_class: Some(b"iPXE".to_vec()),
            ..Default::default()
        };
        assert_eq!(options.user_classes(), vec![b"iPXE".as_slice()]);
        options.user_class = Some(b"\x04iPXE\x03foo".to_vec());
        assert_eq!(options.user_classes(), vec![b"iPXE".as_slice(), b"foo"]);
        // A length running past the end: not RFC 3004, so one bare class.
        options.user_class = Some(b"\x09iPXE".to_vec());
        assert_eq!(options.user_classes(), vec![b"\x09iPXE".as_slice()]);
    }

    #[test]
    fn repeated_options_concatenate_and_pad_is_skipped() {
        let all = gather(&[
            0x00, 0x3c, 0x03, b'P', b'X', b'E', 0x00, 0x3c, 0x02, b'C', b'l', 0xff, 0x3c,
        ])
        .unwrap();
        assert_eq!(all.get(&0x3c).unwrap(), b"PXECl");
        assert_eq!(gather(&[0x3c, 0x05, b'a']), Err(WireError::Truncated));
        assert_eq!(gather(&[0x3c]), Err(WireError::Truncated));
        // No End option is tolerated.
        assert_eq!(
            gather(&[0x0c, 0x01, b'h']).unwrap().get(&0x0c).unwrap(),
            b"h"
        );
    }

    #[test]
    fn long_option_splits_and_round_trips() {
        let options = DhcpOptions {
            bootfile_name: Some(vec![b'x'; 600]),
            message_type: Some(MessageType::Ack),
            ..Default::default()
        };
        let mut buf = vec![0u8; options.buffer_len()];
        assert_eq!(options.emit(&mut buf), Ok(buf.len()));
        assert_eq!(&buf[..3], &[0x35, 0x01, 0x05]);
        assert_eq!(buf.len(), 3 + 600 + 3 * 2);
        let back = DhcpOptions::from_aggregate(gather(&buf).unwrap()).unwrap();
        assert_eq!(back, options);
        assert_eq!(options.emit(&mut buf[..10]), Err(WireError::BufferTooSmall));
    }

    #[test]
    fn typed_options_reject_wrong_lengths() {
        for area in [
            &[0x35, 0x00][..],
            &[0x36, 0x03, 1, 2, 3],
            &[0x5d, 0x03, 0, 0, 7],
            &[0x61, 0x05, 0, 1, 2, 3, 4],
            &[0x5e, 0x02, 1, 2],
            &[0x39, 0x01, 1],
        ] {
            assert!(matches!(
                DhcpOptions::from_aggregate(gather(area).unwrap()),
                Err(WireError::BadOption { .. })
            ));
        }
    }

    #[test]
    fn pxe_vendor_options_round_trip() {
        let pxe = PxeVendorOptions {
            discovery_control: Some(DISCOVERY_USE_BOOT_FILE),
            boot_item: Some(PxeBootItem {
                server_type: 0x8000,
                layer: 0,
            }),
            menu_prompt: Some(b"\x00PXE".to_vec()),
            ..Default::default()
        };
        let bytes = pxe.to_bytes();
        assert_eq!(&bytes[..3], &[0x06, 0x01, 0x08]);
        assert_eq!(bytes.last(), Some(&0xff));
        assert_eq!(PxeVendorOptions::parse(&bytes).unwrap(), pxe);
        assert!(PxeVendorOptions::parse(&[0x47, 0x02, 0, 0]).is_err());
    }
}
