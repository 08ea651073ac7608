//! Requests as PXE firmware sends them, for tests.
//!
//! These are NOT packet captures (none exist in this repository). They are reconstructed from
//! the documented layouts: RFC 2131/2132/4578, the option sets iPXE and EDK2 put in their
//! requests (read from their sources and from the notes in /work/shared/platform-notes.md), and
//! a tcpdump decode of an iPXE ROM DISCOVER. Each fixture is the 44-byte fixed header
//! (op..chaddr) and the option TLVs in the firmware's order; `bytes()` inserts the all-zero
//! sname/file fields and the magic cookie between them and appends End.

pub(crate) struct Fixture {
    /// op htype hlen hops | xid | secs | flags | ciaddr | yiaddr | siaddr | giaddr | chaddr
    pub(crate) header: &'static str,
    pub(crate) options: &'static [&'static str],
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).expect("fixture hex"))
        .collect()
}

impl Fixture {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut bytes = hex(self.header);
        assert_eq!(bytes.len(), 44, "fixed header through chaddr");
        bytes.resize(44 + 64 + 128, 0);
        bytes.extend_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        for option in self.options {
            let tlv = hex(option);
            assert_eq!(
                usize::from(tlv[1]) + 2,
                tlv.len(),
                "option length in {option}"
            );
            bytes.extend_from_slice(&tlv);
        }
        bytes.push(0xff);
        bytes
    }
}

/// iPXE option 175: bus id, version, and feature flags (HTTP, PXE extensions, iSCSI, ...).
const IPXE_175: &str = "af 2a b1 05 01 80 86 10 00 eb 03 01 00 00 17 01 01 15 01 01 13 01 01 11 01 01 \
                        27 01 01 19 01 01 29 01 01 10 01 02 22 01 01 2b 01 01";
const IPXE_PRL: &str = "37 17 01 03 06 07 0c 0f 11 1a 2b 3c 42 43 77 79 80 81 82 83 84 85 86 87 af";
const EDK2_PRL: &str = "37 23 01 02 03 04 05 06 0c 0d 0f 11 12 16 17 1c 28 29 2a 2b 32 33 36 3a 3b \
                        3c 42 43 61 80 81 82 83 84 85 86 87";
/// Option 97, type 0, SMBIOS UUID 01020304-0506-0708-090a-0b0c0d0e0f10 in the little-endian
/// GUID layout firmware uses on the wire.
const UUID_97: &str = "61 11 00 04 03 02 01 06 05 08 07 09 0a 0b 0c 0d 0e 0f 10";
pub(crate) const UUID_TEXT: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";
pub(crate) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x62, 0x40, 0x01];

/// iPXE ROM (pxe-virtio.rom under SeaBIOS) DISCOVER: no broadcast flag, 93=0, 77 "iPXE", 175.
pub(crate) const IPXE_BIOS_DISCOVER: Fixture = Fixture {
    header: "01 01 06 00  48 6e d0 19  00 04  00 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 01",
        "39 02 05 c0",
        "5d 02 00 00",
        "5e 03 01 02 01",
        // "PXEClient:Arch:00000:UNDI:002001"
        "3c 20 50 58 45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30 30 30 3a 55 4e 44 49 3a \
         30 30 32 30 30 31",
        "4d 04 69 50 58 45",
        IPXE_PRL,
        IPXE_175,
        "3d 07 01 52 54 00 62 40 01",
        UUID_97,
    ],
};

/// iPXE ROM's follow-up REQUEST to the proxy on 4011: sent from port 68, xid 0, ciaddr set.
pub(crate) const IPXE_BIOS_REQUEST_4011: Fixture = Fixture {
    header: "01 01 06 00  00 00 00 00  00 06  00 00  0a 00 00 3c  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 03",
        "39 02 05 c0",
        "5d 02 00 00",
        "5e 03 01 02 01",
        "3c 20 50 58 45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30 30 30 3a 55 4e 44 49 3a \
         30 30 32 30 30 31",
        "4d 04 69 50 58 45",
        IPXE_PRL,
        IPXE_175,
        "3d 07 01 52 54 00 62 40 01",
        UUID_97,
    ],
};

/// iPXE EFI (snponly.efi chainloaded by OVMF) DISCOVER: 93=7.
pub(crate) const IPXE_EFI_DISCOVER: Fixture = Fixture {
    header: "01 01 06 00  1c 2d 3e 4f  00 00  00 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 01",
        "39 02 05 c0",
        "5d 02 00 07",
        "5e 03 01 03 10",
        // "PXEClient:Arch:00007:UNDI:003010"
        "3c 20 50 58 45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30 30 37 3a 55 4e 44 49 3a \
         30 30 33 30 31 30",
        "4d 04 69 50 58 45",
        IPXE_PRL,
        IPXE_175,
        "3d 07 01 52 54 00 62 40 01",
        UUID_97,
    ],
};

/// OVMF (EDK2 PxeBcDxe) DISCOVER: broadcast flag, 97 before 94/93/60.
pub(crate) const EDK2_DISCOVER: Fixture = Fixture {
    header: "01 01 06 00  9a 3b c2 71  00 00  80 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 01",
        "39 02 05 c0",
        EDK2_PRL,
        UUID_97,
        "5e 03 01 03 00",
        "5d 02 00 07",
        // "PXEClient:Arch:00007:UNDI:003000"
        "3c 20 50 58 45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30 30 37 3a 55 4e 44 49 3a \
         30 30 33 30 30 30",
    ],
};

/// OVMF's REQUEST to the boot server on 4011 after DHCP completed: new xid, ciaddr = its
/// lease, sent from port 4011, vendor class just "PXEClient", option 43 asking boot item 0/0.
pub(crate) const EDK2_REQUEST_4011: Fixture = Fixture {
    header: "01 01 06 00  5e 11 8a 03  00 00  00 00  0a 00 00 32  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 03",
        "39 02 05 c0",
        EDK2_PRL,
        UUID_97,
        "5e 03 01 03 00",
        "5d 02 00 07",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "2b 07 47 04 00 00 00 00 ff",
    ],
};

/// A legacy BIOS PXE ROM's DISCOVER relayed by a router: giaddr 10.20.0.1, hops 1.
pub(crate) const RELAYED_DISCOVER: Fixture = Fixture {
    header: "01 01 06 01  00 00 be ef  00 00  00 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             0a 14 00 01  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 01",
        "39 02 04 ec",
        "5d 02 00 00",
        "5e 03 01 02 01",
        "3c 20 50 58 45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30 30 30 3a 55 4e 44 49 3a \
         30 30 32 30 30 31",
        "37 18 01 02 03 05 06 0b 0c 0d 0f 10 11 12 2b 36 3c 43 80 81 82 83 84 85 86 87",
        UUID_97,
    ],
};

/// UEFI HTTP boot (x64, arch 16) DISCOVER with vendor class HTTPClient.
pub(crate) const HTTP_BOOT_DISCOVER: Fixture = Fixture {
    header: "01 01 06 00  77 00 00 01  00 00  80 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 01",
        "39 02 05 c0",
        "5d 02 00 10",
        "5e 03 01 03 00",
        // "HTTPClient:Arch:00016:UNDI:003000"
        "3c 21 48 54 54 50 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30 31 36 3a 55 4e 44 49 3a \
         30 30 33 30 30 30",
        UUID_97,
    ],
};

/// An ordinary (non-PXE) client: must be ignored.
pub(crate) const LINUX_DISCOVER: Fixture = Fixture {
    header: "01 01 06 00  12 34 56 78  00 00  00 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  02 00 00 00 00 07 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 01",
        "0c 06 6c 61 70 74 6f 70",
        "3c 0f 61 6e 64 72 6f 69 64 2d 64 68 63 70 2d 31 34",
        "37 0a 01 03 06 0f 1a 1c 33 3a 3b 2b",
    ],
};

/// A DISCOVER using option overload (52 = 3): the vendor class starts in the options field and
/// continues in `file` (RFC 3396 concatenation), option 93 sits in `sname`.
pub(crate) fn overloaded_discover() -> Vec<u8> {
    let mut bytes = hex(EDK2_DISCOVER.header);
    let mut sname = hex("5d 02 00 07 ff");
    sname.resize(64, 0);
    let mut file =
        hex("3c 17 3a 41 72 63 68 3a 30 30 30 30 37 3a 55 4e 44 49 3a 30 30 33 30 30 30 ff");
    file.resize(128, 0);
    bytes.extend_from_slice(&sname);
    bytes.extend_from_slice(&file);
    bytes.extend_from_slice(&[0x63, 0x82, 0x53, 0x63]);
    bytes.extend_from_slice(&hex("35 01 01  34 01 03  3c 09 50 58 45 43 6c 69 65 6e 74"));
    bytes.extend_from_slice(&hex(UUID_97));
    bytes.push(0xff);
    bytes
}

/// Replies of dnsmasq 2.90 in proxy mode, captured in a network namespace (server 10.79.1.1,
/// client 10.79.1.2) with this configuration:
///
/// ```text
/// dhcp-range=10.79.1.0,proxy
/// dhcp-userclass=set:ipxe,iPXE
/// pxe-prompt="boot",0
/// pxe-service=tag:!ipxe,x86PC,"boot",undionly.kpxe
/// pxe-service=tag:!ipxe,X86-64_EFI,"boot",ipxe.efi
/// pxe-service=tag:ipxe,x86PC,"script",http://10.79.1.1:8080/boot.ipxe
/// pxe-service=tag:ipxe,X86-64_EFI,"script",http://10.79.1.1:8080/boot.ipxe
/// ```
///
/// The xid is the capture's; tests put their client's xid in with [`with_xid`].
/// To a BIOS ROM (arch 0): no boot file, option 43 with discovery control 3 (no broadcast or
/// multicast discovery), boot servers (type 0x8000 at 10.79.1.1), menu (0x8000 "boot"), prompt.
pub(crate) const DNSMASQ_BIOS_OFFER: Fixture = Fixture {
    header: "02 01 06 00  90 4c 0d dc  00 00  80 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 02",
        "36 04 0a 4f 01 01",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "61 11 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10",
        "2b 1d 06 01 03 08 07 80 00 01 0a 4f 01 01 09 07 80 00 04 62 6f 6f 74 0a 05 00 62 6f \
         6f 74 ff",
    ],
};

/// dnsmasq's ACK on 4011 to the BIOS ROM's request for item 0x8000 layer 0: yiaddr = the
/// client, siaddr = the TFTP server, file `undionly.kpxe` (see [`Fixture::bytes_with_fields`]),
/// the item echoed in option 43.
pub(crate) const DNSMASQ_BIOS_ACK_4011: Fixture = Fixture {
    header: "02 01 06 00  2b d6 94 88  00 00  00 00  00 00 00 00  0a 4f 01 02  0a 4f 01 01  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 05",
        "36 04 0a 4f 01 01",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "61 11 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10",
        "2b 0e 47 04 80 00 00 00 0a 05 00 62 6f 6f 74 ff",
    ],
};

/// To iPXE on BIOS (user class iPXE): the menu names the `ipxe` service, type 0x8002.
pub(crate) const DNSMASQ_IPXE_BIOS_OFFER: Fixture = Fixture {
    header: "02 01 06 00  dc 4e 2a 5b  00 00  80 00  00 00 00 00  00 00 00 00  00 00 00 00  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 02",
        "36 04 0a 4f 01 01",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "61 11 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10",
        "2b 1f 06 01 03 08 07 80 02 01 0a 4f 01 01 09 09 80 02 06 73 63 72 69 70 74 0a 05 00 \
         62 6f 6f 74 ff",
    ],
};

/// dnsmasq's ACK on 4011 to iPXE's request for item 0x8002: the script URL in `file`
/// (`http://10.79.1.1:8080/boot.ipxe`).
pub(crate) const DNSMASQ_IPXE_BIOS_ACK_4011: Fixture = Fixture {
    header: "02 01 06 00  ba 8e 6e 22  00 00  00 00  00 00 00 00  0a 4f 01 02  0a 4f 01 01  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 05",
        "36 04 0a 4f 01 01",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "61 11 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10",
        "2b 0e 47 04 80 02 00 00 0a 05 00 62 6f 6f 74 ff",
    ],
};

/// To EDK2 (arch 7), where one service fits the arch: dnsmasq's UEFI workaround sends no
/// option 43 at all, only siaddr (a BINL offer in EDK2's terms). The file comes on 4011.
pub(crate) const DNSMASQ_EFI_OFFER: Fixture = Fixture {
    header: "02 01 06 00  82 f6 81 ff  00 00  80 00  00 00 00 00  00 00 00 00  0a 4f 01 01  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 02",
        "36 04 0a 4f 01 01",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "61 11 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10",
    ],
};

/// dnsmasq's ACK on 4011 to EDK2's BINL request (no boot item): ciaddr echoed, siaddr, sname
/// "10.79.1.1" and file `ipxe.efi` (see [`Fixture::bytes_with_fields`]). It answers only a
/// request without sub-option 71; a request for item 0 gets nothing.
pub(crate) const DNSMASQ_EFI_ACK_4011: Fixture = Fixture {
    header: "02 01 06 00  e2 73 64 4c  00 00  00 00  0a 4f 01 02  00 00 00 00  0a 4f 01 01  \
             00 00 00 00  52 54 00 62 40 01 00 00 00 00 00 00 00 00 00 00",
    options: &[
        "35 01 05",
        "36 04 0a 4f 01 01",
        "3c 09 50 58 45 43 6c 69 65 6e 74",
        "61 11 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10",
    ],
};

impl Fixture {
    /// [`Fixture::bytes`] with text in the `sname` and `file` fields.
    pub(crate) fn bytes_with_fields(&self, sname: &str, file: &str) -> Vec<u8> {
        let mut bytes = self.bytes();
        bytes[44..44 + sname.len()].copy_from_slice(sname.as_bytes());
        bytes[108..108 + file.len()].copy_from_slice(file.as_bytes());
        bytes
    }
}

/// `bytes` with its xid replaced (a captured reply answers another client's xid).
pub(crate) fn with_xid(mut bytes: Vec<u8>, xid: u32) -> Vec<u8> {
    bytes[4..8].copy_from_slice(&xid.to_be_bytes());
    bytes
}
