//! Binding sockets, with errors that say what to do.

use std::io;
use std::net::SocketAddr;

/// A socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error(
        "cannot bind {service} on {addr}: port {port} is privileged (below 1024) and this process \
         may not bind it. Run zpxe as root, grant it the capability once with \
         `sudo setcap cap_net_bind_service=+ep $(command -v zpxe)`, run it from the systemd unit \
         (AmbientCapabilities=CAP_NET_BIND_SERVICE), or choose a port above 1023 \
         (--{flag} PORT)",
        port = addr.port()
    )]
    Privileged {
        service: &'static str,
        flag: &'static str,
        addr: SocketAddr,
    },
    #[error(
        "cannot bind {service} on {addr}: the port is in use by another program (another PXE, \
         TFTP or DHCP server?). Stop it, or choose another port with --{flag} PORT"
    )]
    InUse {
        service: &'static str,
        flag: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot bind {service} on {addr}: the address is not on this machine")]
    NotLocal {
        service: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot bind {service} on {addr}: {source}")]
    Other {
        service: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    /// Explains an error from `bind(2)` for the service listening on `addr`.
    pub fn explain(
        service: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: io::Error,
    ) -> Self {
        match source.kind() {
            io::ErrorKind::PermissionDenied if addr.port() < 1024 => Self::Privileged {
                service,
                flag,
                addr,
            },
            io::ErrorKind::AddrInUse => Self::InUse {
                service,
                flag,
                addr,
            },
            io::ErrorKind::AddrNotAvailable => Self::NotLocal { service, addr },
            _ => Self::Other {
                service,
                addr,
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_port_message_names_port_and_fix() {
        let addr: SocketAddr = "0.0.0.0:69".parse().expect("addr");
        let e = BindError::explain(
            "TFTP",
            "tftp-port",
            addr,
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let msg = e.to_string();
        assert!(msg.contains("port 69"), "{msg}");
        assert!(msg.contains("cap_net_bind_service"), "{msg}");
        assert!(msg.contains("--tftp-port"), "{msg}");
    }
}
