//! HTTPS for the boot service: rustls's sans-IO server connection between the TCP connection
//! and the engine's `HttpConnection`, as the TLS [`Transport`] of the HTTP connection loop
//! (src/serve/http.rs), which plain HTTP shares. Bodies are encrypted, so they are copied once,
//! with positional reads from the image (never by touching the mapping: see the image store).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConnection;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zpxe_engine::ByteRange;
use zpxe_engine::http::{Handler, HttpConfig};
use zpxe_platform::runtime::spawn;
use zpxe_platform::tcp::{TcpConn, TcpServer};
use zpxe_platform::udp::SendError;
use zpxe_platform::{Version, VersionBroken};

use super::ThreadCtx;
use super::http::Transport;

const READ_BUF: usize = 16 * 1024;
/// Plaintext per TLS write of a body: a few records at a time.
const BODY_CHUNK: usize = 64 * 1024;

/// Loads a PEM certificate chain and private key into a rustls server configuration.
pub(crate) fn load_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificates from {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key do not match or are not supported")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TLS connections on `server` until the loop stops (without one: serves those the
/// listening loop hands over).
pub(crate) fn start(
    ctx: &Rc<ThreadCtx>,
    server: Option<TcpServer>,
    handler: super::http::BootSite,
    config: Arc<HttpConfig>,
    reloader: super::Reloader,
    cap: Arc<super::http::ConnCap>,
) {
    let conn_ctx = Rc::clone(ctx);
    super::http::accept_until_drained(ctx, server, cap, move |conn, peer, slot| {
        let ctx = Rc::clone(&conn_ctx);
        let h: Box<dyn Handler> = Box::new(handler.for_peer(peer));
        // Each connection takes the certificate last loaded: a reload rotates it.
        let Some(tls) = reloader.tls() else { return };
        let config = Arc::clone(&config);
        spawn(async move {
            if let Err(e) = serve_connection(ctx, conn, peer, h, config, tls).await {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended");
            }
            drop(slot);
        })
        .detach();
    });
}

/// Serves one TLS connection with the same loop as plain HTTP (`super::http::serve`). Fails
/// only when no TLS session can be set up for it.
async fn serve_connection(
    ctx: Rc<ThreadCtx>,
    tcp: TcpConn,
    peer: SocketAddr,
    handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
    tls_config: Arc<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    let tls = Tls::new(tcp, tls_config)?;
    let recorder = ctx.shared.recorder.clone();
    let transport = Transport::Tls(Box::new(tls));
    super::http::serve(ctx, transport, peer, handler, config, &recorder, Vec::new()).await;
    Ok(())
}

/// rustls's sans-IO server session over a TCP connection, with its buffers kept across
/// writes.
pub(super) struct Tls {
    tcp: TcpConn,
    session: ServerConnection,
    /// TLS records on their way to the socket.
    records: Vec<u8>,
    /// Plaintext of a body, a chunk at a time.
    chunk: Vec<u8>,
}

impl Tls {
    fn new(tcp: TcpConn, config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            tcp,
            session: ServerConnection::new(config)?,
            records: Vec::new(),
            chunk: Vec::new(),
        })
    }

    pub(super) fn tcp(&mut self) -> &mut TcpConn {
        &mut self.tcp
    }

    /// Writes whatever TLS records rustls has ready (each write under the connection's send
    /// timeout).
    async fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            let mut out = std::mem::take(&mut self.records);
            out.clear();
            self.session.write_tls(&mut out)?;
            let (res, buf) = self.tcp.write_all(out).await;
            self.records = buf;
            res?;
        }
        Ok(())
    }

    /// Decrypts `raw` (as read from the socket) into `plain` and answers what the handshake
    /// asks. Returns whether the client said goodbye.
    pub(super) async fn absorb(&mut self, raw: &[u8], plain: &mut Vec<u8>) -> io::Result<bool> {
        let mut input = raw;
        while !input.is_empty() {
            self.session.read_tls(&mut input)?;
            if let Err(e) = self.session.process_new_packets() {
                // Tell the client why before hanging up.
                let _ = self.flush().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        let mut eof = false;
        loop {
            let at = plain.len();
            plain.resize(at + READ_BUF, 0);
            let res = self
                .session
                .reader()
                .read(plain.get_mut(at..).unwrap_or_default());
            match res {
                Ok(0) => eof = true,
                Ok(k) => {
                    plain.truncate(at + k);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    plain.truncate(at);
                    return Err(e);
                }
            }
            plain.truncate(at);
            break;
        }
        self.flush().await?;
        Ok(eof)
    }

    /// Encrypts and writes `bytes`.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.encrypt(bytes).await?;
        self.flush().await
    }

    /// Hands `bytes` to the session, writing out records whenever its buffer (rustls's
    /// buffer limit, 64 KiB by default) is full.
    async fn encrypt(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.session.writer().write(bytes)?;
            bytes = bytes.get(n..).unwrap_or_default();
            if !bytes.is_empty() {
                if n == 0 && !self.session.wants_write() {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Encrypts and writes `head`, then `range` of `image`. Bodies are encrypted, so they are
    /// copied once, with positional reads that are checked against the version after each
    /// read ([`Version::read_at`]; never by touching the mapping: see the image store).
    pub(super) async fn send_body(
        &mut self,
        head: &[u8],
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        self.encrypt(head).await?;
        if self.chunk.len() < BODY_CHUNK {
            self.chunk.resize(BODY_CHUNK, 0);
        }
        let mut at = range.start;
        while at < range.end {
            let want = (range.end - at).min(BODY_CHUNK as u64) as usize;
            let buf = self.chunk.get_mut(..want).unwrap_or_default();
            let n = image.read_at(buf, at)?;
            if n == 0 {
                return Err(SendError::Image(VersionBroken::Modified));
            }
            at += n as u64;
            // The chunk moves out of the buffer it was read into, and back.
            let chunk = std::mem::take(&mut self.chunk);
            let sent = self.encrypt(chunk.get(..n).unwrap_or_default()).await;
            self.chunk = chunk;
            sent?;
            self.flush().await?;
        }
        self.flush().await?;
        Ok(range.len())
    }

    /// Says goodbye (`close_notify`).
    pub(super) async fn close_notify(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        self.flush().await
    }
}
