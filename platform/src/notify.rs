//! systemd readiness notification (`Type=notify`), without linking libsystemd.

use std::io;

/// Tells the service manager we are ready, if one is listening (`$NOTIFY_SOCKET`). Returns
/// whether a notification was sent.
pub fn ready(status: &str) -> io::Result<bool> {
    send(&format!("READY=1\nSTATUS={status}\n"))
}

/// Tells the service manager we are stopping.
pub fn stopping() -> io::Result<bool> {
    send("STOPPING=1\n")
}

#[cfg(target_os = "linux")]
fn send(msg: &str) -> io::Result<bool> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn send(_msg: &str) -> io::Result<bool> {
    Ok(false)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn sends_ready_to_notify_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // SAFETY: tests in this module are the only readers of NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(super::ready("serving").expect("send"));
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving\n");
    }
}
