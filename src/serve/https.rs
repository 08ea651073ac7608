//! HTTPS for the boot service: rustls's sans-IO server connection between the TCP connection
//! and the engine's `HttpConnection`. Bodies are encrypted, so they are copied once, with
//! positional reads from the image (never by touching the mapping: see the image store).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use futures_util::future::{Either, select};
use rustls::ServerConnection;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zpxe_engine::http::{Handler, HttpConfig, HttpConnection, Output};
use zpxe_platform::runtime::{sleep, spawn};
use zpxe_platform::tcp::{TcpConn, TcpServer};

use super::ThreadCtx;
use crate::metrics::Metrics;

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

/// Accepts TLS connections on `server` until the loop stops.
pub(crate) fn start(
    ctx: &Rc<ThreadCtx>,
    server: TcpServer,
    handler: super::http::BootSite,
    config: Arc<HttpConfig>,
    reloader: super::Reloader,
    cap: Arc<super::http::ConnCap>,
) {
    let conn_ctx = Rc::clone(ctx);
    super::http::accept_until_drained(ctx, server, cap, move |conn, peer, slot| {
        let ctx = Rc::clone(&conn_ctx);
        let h: Box<dyn Handler> = Box::new(handler.clone());
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

/// Writes whatever TLS records rustls has ready, each write before the connection's send
/// deadline (a handshake's before its first-request deadline; a goodbye's within a send
/// timeout).
async fn flush(
    tls: &mut ServerConnection,
    tcp: &mut TcpConn,
    conn: &mut HttpConnection,
) -> anyhow::Result<()> {
    while tls.wants_write() {
        let mut out = Vec::with_capacity(READ_BUF);
        tls.write_tls(&mut out)?;
        let deadline = super::http::send_deadline(conn);
        match super::http::before_deadline(deadline, tcp.write_all(out)).await {
            Some((res, _)) => res?,
            None => {
                conn.handle_timeout(Instant::now());
                anyhow::bail!("the client stopped taking bytes");
            }
        }
        conn.handle_send_progress(Instant::now());
    }
    Ok(())
}

async fn serve_connection(
    ctx: Rc<ThreadCtx>,
    mut tcp: TcpConn,
    peer: SocketAddr,
    mut handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
    tls_config: Arc<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    let mut tls = ServerConnection::new(tls_config)?;
    let mut conn = HttpConnection::new(Instant::now(), config);
    let metrics = Arc::clone(&ctx.shared.metrics);
    let mut pending: Vec<u8> = Vec::new();
    let mut rbuf = Vec::with_capacity(READ_BUF);
    let mut wbuf = vec![0u8; READ_BUF];
    let mut chunk = vec![0u8; BODY_CHUNK];
    let _busy = ctx.drain.busy();
    let result = async {
        loop {
            let mut close = false;
            let mut any = false;
            while let Some(out) = conn.poll_output(&mut wbuf) {
                any = true;
                match out {
                    Output::Bytes { len } => {
                        tls.writer()
                            .write_all(wbuf.get(..len).unwrap_or_default())?;
                        flush(&mut tls, &mut tcp, &mut conn).await?;
                    }
                    Output::Body { image, range } => {
                        let version = ctx
                            .store
                            .borrow()
                            .version(image)
                            .context("image released mid-response")?;
                        let mut at = range.start;
                        while at < range.end {
                            let want = (range.end - at).min(BODY_CHUNK as u64) as usize;
                            let buf = chunk.get_mut(..want).unwrap_or_default();
                            let n = version.read_at(buf, at)?;
                            anyhow::ensure!(n > 0, "file shrank under the response");
                            tls.writer().write_all(buf.get(..n).unwrap_or_default())?;
                            flush(&mut tls, &mut tcp, &mut conn).await?;
                            at += n as u64;
                        }
                        Metrics::add(&metrics.http_bytes_sent_total, range.len());
                        conn.body_done(Instant::now(), &mut *ctx.store.borrow_mut());
                    }
                    Output::Close => close = true,
                    _ => {}
                }
            }
            if close {
                // Still unflushed: the goodbye goes within the responses' send deadline.
                tls.send_close_notify();
                flush(&mut tls, &mut tcp, &mut conn).await?;
                let _ = tcp.shutdown().await;
                return Ok(());
            }
            if any {
                conn.handle_flushed(Instant::now());
            }
            super::http::record(&mut conn, &metrics, peer, &ctx.shared.recorder);
            if conn.is_closed() {
                return Ok(());
            }
            // Draining: the response in flight is out; say goodbye instead of reading more.
            if ctx.drain.fired() {
                tls.send_close_notify();
                flush(&mut tls, &mut tcp, &mut conn).await?;
                let _ = tcp.shutdown().await;
                return Ok(());
            }
            if !pending.is_empty() && conn.wants_input() {
                let n = conn.handle_input(
                    Instant::now(),
                    &pending,
                    SystemTime::now(),
                    &mut *handler,
                    &mut *ctx.store.borrow_mut(),
                );
                pending.drain(..n.min(pending.len()));
                continue;
            }
            let deadline = conn.poll_timeout();
            let wait = deadline.map_or(std::time::Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let got = {
                let read = std::pin::pin!(tcp.read(std::mem::take(&mut rbuf)));
                let timer = std::pin::pin!(sleep(wait));
                match select(read, select(timer, ctx.drain.wait())).await {
                    Either::Left(((res, b), _)) => Some((res, b)),
                    // Draining: the loop top closes the connection.
                    Either::Right((Either::Right(_), _)) => continue,
                    Either::Right((Either::Left(_), _)) => None,
                }
            };
            match got {
                Some((res, b)) => {
                    rbuf = b;
                    let n = res?;
                    if n == 0 {
                        conn.handle_eof(Instant::now());
                        continue;
                    }
                    let mut input = rbuf.get(..n).unwrap_or_default();
                    while !input.is_empty() {
                        tls.read_tls(&mut input)?;
                        if let Err(e) = tls.process_new_packets() {
                            // Tell the client why before hanging up.
                            let _ = flush(&mut tls, &mut tcp, &mut conn).await;
                            return Err(e.into());
                        }
                    }
                    let mut plain = [0u8; READ_BUF];
                    loop {
                        match tls.reader().read(&mut plain) {
                            Ok(0) => {
                                conn.handle_eof(Instant::now());
                                break;
                            }
                            Ok(k) => pending.extend_from_slice(plain.get(..k).unwrap_or_default()),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    flush(&mut tls, &mut tcp, &mut conn).await?;
                }
                None => {
                    rbuf = Vec::with_capacity(READ_BUF);
                    conn.handle_timeout(Instant::now());
                }
            }
        }
    }
    .await;
    // Every exit records what was answered, also a response that went out with a close.
    super::http::record(&mut conn, &metrics, peer, &ctx.shared.recorder);
    conn.abort(&mut *ctx.store.borrow_mut());
    result
}
