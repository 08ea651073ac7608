//! Windows socket settings and system facts the rest of the platform layer needs.

use std::io;
use std::os::windows::io::AsRawSocket;
use std::sync::OnceLock;

use socket2::Socket;
use windows_sys::Win32::Networking::WinSock::{
    SIO_UDP_CONNRESET, SO_EXCLUSIVEADDRUSE, SOCKET, SOCKET_ERROR, SOL_SOCKET, WSAIoctl, setsockopt,
};
use windows_sys::Win32::System::SystemInformation::{GetVersionExW, OSVERSIONINFOEXW};
use windows_sys::Win32::System::SystemServices::VER_NT_WORKSTATION;

/// Claims the port for this socket alone: without it, a socket of another program that sets
/// `SO_REUSEADDR` could bind the same port and take its traffic.
pub(crate) fn exclusive_address_use(socket: &Socket) -> io::Result<()> {
    set_int(socket, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, 1)
}

/// `setsockopt` of one integer option.
pub(crate) fn set_int(socket: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live i32 and its size.
    let rc = unsafe {
        setsockopt(
            socket.as_raw_socket() as SOCKET,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as i32,
        )
    };
    winsock(rc)
}

/// Stops an ICMP port-unreachable (a client that went away) from failing the socket's next
/// receive with `WSAECONNRESET`: on a shared port 69 that would be every client's problem.
pub(crate) fn udp_connreset_off(socket: &Socket) -> io::Result<()> {
    let off: u32 = 0;
    let mut returned = 0u32;
    // SAFETY: a synchronous WSAIoctl with a live 4-byte input and no output buffer.
    let rc = unsafe {
        WSAIoctl(
            socket.as_raw_socket() as SOCKET,
            SIO_UDP_CONNRESET,
            (&raw const off).cast(),
            std::mem::size_of::<u32>() as u32,
            std::ptr::null_mut(),
            0,
            &mut returned,
            std::ptr::null_mut(),
            None,
        )
    };
    winsock(rc)
}

/// Whether this is a server edition of Windows (client editions limit `TransmitFile`).
pub(crate) fn server_edition() -> bool {
    static SERVER: OnceLock<bool> = OnceLock::new();
    *SERVER.get_or_init(|| {
        let mut info = OSVERSIONINFOEXW {
            dwOSVersionInfoSize: std::mem::size_of::<OSVERSIONINFOEXW>() as u32,
            ..OSVERSIONINFOEXW::default()
        };
        // SAFETY: `info` is a live OSVERSIONINFOEXW whose size field says so, which the call
        // accepts in place of the plain OSVERSIONINFOW. The product type is reported truly even
        // where the version numbers are not.
        let ok = unsafe { GetVersionExW((&raw mut info).cast()) } != 0;
        ok && u32::from(info.wProductType) != VER_NT_WORKSTATION
    })
}

fn winsock(rc: i32) -> io::Result<()> {
    if rc == SOCKET_ERROR {
        // SAFETY: reads this thread's last Winsock error.
        Err(io::Error::from_raw_os_error(unsafe {
            windows_sys::Win32::Networking::WinSock::WSAGetLastError()
        }))
    } else {
        Ok(())
    }
}
