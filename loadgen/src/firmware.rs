//! What each firmware does on the wire, as captured from real clients (see shared design notes):
//! its DHCP architecture and vendor class, whether it asks port 4011, and the TFTP requests it
//! sends for the loader.

use std::time::Duration;

use zpxe_engine::tftp::ClientConfig as TftpClientConfig;

/// A firmware profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Firmware {
    /// EDK2/OVMF UEFI PXE: arch 7, asks 4011, probes `tsize` then aborts with ERROR 8, then
    /// `blksize=1468 windowsize=4`; 4 s timeout, 6 retries.
    Edk2,
    /// iPXE's TFTP: `blksize=1432 tsize=0`, no windowsize.
    Ipxe,
    /// A legacy BIOS PXE ROM: arch 0, `tsize blksize=1456`.
    Bios,
    /// PXELINUX: `tsize=0 blksize=1408`.
    Pxelinux,
    /// Windows boot manager: `blksize=1456 windowsize msftwindow=31416`.
    Bootmgr,
}

impl Firmware {
    pub const ALL: [Firmware; 5] = [
        Firmware::Edk2,
        Firmware::Ipxe,
        Firmware::Bios,
        Firmware::Pxelinux,
        Firmware::Bootmgr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Firmware::Edk2 => "edk2",
            Firmware::Ipxe => "ipxe",
            Firmware::Bios => "bios",
            Firmware::Pxelinux => "pxelinux",
            Firmware::Bootmgr => "bootmgr",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// DHCP option 93.
    pub fn arch(self) -> u16 {
        match self {
            Firmware::Edk2 | Firmware::Bootmgr => 7,
            Firmware::Ipxe | Firmware::Bios | Firmware::Pxelinux => 0,
        }
    }

    /// DHCP option 60.
    pub fn vendor_class(self) -> String {
        match self {
            Firmware::Edk2 | Firmware::Bootmgr => "PXEClient:Arch:00007:UNDI:003000".into(),
            Firmware::Ipxe => "PXEClient:Arch:00000:UNDI:002001".into(),
            Firmware::Bios | Firmware::Pxelinux => "PXEClient:Arch:00000:UNDI:002001".into(),
        }
    }

    /// EDK2 asks the boot server on 4011 even after a full offer; iPXE ROMs do in proxy setups.
    pub fn asks_4011(self) -> bool {
        matches!(self, Firmware::Edk2 | Firmware::Ipxe)
    }

    pub fn dhcp_timeout(self) -> Duration {
        match self {
            Firmware::Edk2 => Duration::from_secs(4),
            _ => Duration::from_secs(2),
        }
    }

    /// The TFTP requests this firmware sends for `file`, in order (EDK2 probes first).
    pub fn tftp_requests(self, file: &str) -> Vec<TftpClientConfig> {
        use zpxe_engine::tftp::ClientProfile as P;
        let profiles: &[P] = match self {
            Firmware::Edk2 => &[P::Edk2Probe, P::Edk2],
            Firmware::Ipxe => &[P::Ipxe],
            Firmware::Bios => &[P::Bios],
            Firmware::Pxelinux => &[P::Pxelinux],
            Firmware::Bootmgr => &[P::Bootmgr],
        };
        profiles.iter().map(|p| p.config(file)).collect()
    }
}
