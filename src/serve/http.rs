//! HTTP services: the boot port (files and generated iPXE scripts) and the web service port,
//! both the engine's `HttpConnection` over a TCP connection, with bodies sent from the mapping.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use futures_util::future::{Either, select};
use zpxe_engine::ImageCatalog;
use zpxe_engine::http::{
    Handler, HttpConfig, HttpConnection, HttpEvent, Output, Reply, Request, StatusCode,
};
use zpxe_platform::runtime::{sleep, spawn};
use zpxe_platform::tcp::{TcpConn, TcpServer};

use super::ThreadCtx;
use crate::metrics::Metrics;
use crate::web::WebService;

const READ_BUF: usize = 16 * 1024;
const WRITE_BUF: usize = 16 * 1024;

/// Which service a listener runs.
#[derive(Clone)]
pub(crate) enum Site {
    /// Files and iPXE scripts.
    Boot(BootSite),
    /// Reports, status, metrics.
    Web(WebService),
}

/// Files and scripts; scripts report to the web service at the address the client used.
#[derive(Clone)]
pub(crate) struct BootSite {
    pub(crate) scripts: zpxe_engine::http::BootScripts,
    /// The web service's port, when it runs (then scripts report each boot stage to it).
    pub(crate) web_port: Option<u16>,
    /// Scripts served over HTTPS point at HTTPS URLs.
    pub(crate) https: bool,
}

impl Handler for BootSite {
    fn respond(&mut self, req: &Request<'_>, images: &mut dyn ImageCatalog) -> Reply {
        if !matches!(req.path, "/boot.ipxe" | "/menu.ipxe") {
            return self.scripts.respond(req, images);
        }
        let host = req.header("host").filter(|h| plain_host(h));
        let mut scripts = self.scripts.clone();
        if let (Some(port), Some(host), None) = (self.web_port, host, &scripts.report_url) {
            scripts.report_url = Some(format!("http://{}:{port}/report", host_without_port(host)));
        }
        if self.https
            && scripts.base_url.is_none()
            && let Some(host) = host
        {
            scripts.base_url = Some(format!("https://{host}"));
        }
        scripts.respond(req, images)
    }
}

/// A Host header made only of what a host name or address can hold.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 2]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

struct WebHandler {
    web: WebService,
    peer: SocketAddr,
}

impl Handler for WebHandler {
    fn respond(&mut self, req: &Request<'_>, _images: &mut dyn ImageCatalog) -> Reply {
        let r = self.web.respond(
            req.path,
            req.query.unwrap_or_default(),
            Some(self.peer.ip().to_string()),
            SystemTime::now(),
        );
        Reply::Generated {
            status: StatusCode(r.status),
            content_type: r.content_type.to_owned(),
            body: r.body,
        }
    }
}

/// Accepts connections on `server` until the loop stops or drains (the listener closes then).
pub(crate) fn start(
    ctx: &Rc<ThreadCtx>,
    server: TcpServer,
    site: Site,
    config: Arc<HttpConfig>,
    cap: Arc<ConnCap>,
) {
    let conn_ctx = Rc::clone(ctx);
    accept_until_drained(ctx, server, cap, move |conn, peer, slot| {
        let handler: Box<dyn Handler> = match &site {
            Site::Boot(scripts) => Box::new(scripts.clone()),
            Site::Web(web) => Box::new(WebHandler {
                web: web.clone(),
                peer,
            }),
        };
        let (ctx, config) = (Rc::clone(&conn_ctx), Arc::clone(&config));
        spawn(async move {
            serve_connection(ctx, conn, peer, handler, config).await;
            drop(slot);
        })
        .detach();
    });
}

/// How often a listener at its connection cap looks for a free slot.
const CAP_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Open connections of a group of listeners (the boot ports, or the web service), against a
/// cap, across every event loop.
#[derive(Debug)]
pub(crate) struct ConnCap {
    open: AtomicUsize,
    /// 0: no cap.
    max: usize,
    /// The first pause is logged; every pause is counted in the metrics. Under a sustained cap
    /// a listener pauses once per connection it takes, which would be a log line each.
    warned: AtomicBool,
}

impl ConnCap {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            warned: AtomicBool::new(false),
        })
    }

    /// A slot for one more connection, unless `max` are open.
    fn try_take(self: &Arc<Self>) -> Option<ConnSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max == 0 || n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(Arc::clone(self)))
    }
}

/// One open connection's place under its [`ConnCap`], given back when it drops.
pub(crate) struct ConnSlot(Arc<ConnCap>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hands every connection accepted on `server` to `serve`, until the loop drains (the
/// listener closes then) or stops. At `cap` it stops accepting: new connections wait in the
/// kernel's backlog (or their SYNs are retried) until one of ours closes, rather than being
/// refused.
pub(crate) fn accept_until_drained(
    ctx: &Rc<ThreadCtx>,
    server: TcpServer,
    cap: Arc<ConnCap>,
    mut serve: impl FnMut(TcpConn, SocketAddr, ConnSlot) + 'static,
) {
    let ctx = Rc::clone(ctx);
    spawn(async move {
        loop {
            let mut paused = false;
            let slot = loop {
                if let Some(slot) = cap.try_take() {
                    break slot;
                }
                if !std::mem::replace(&mut paused, true) {
                    Metrics::add(&ctx.shared.metrics.http_accept_paused_total, 1);
                    if !cap.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            max = cap.max,
                            "connection cap reached: accepting paused until one closes \
                             (further pauses: zpxe_http_accept_paused_total)"
                        );
                    }
                }
                let wait = std::pin::pin!(sleep(CAP_POLL));
                if let Either::Right(_) = select(wait, ctx.drain.wait()).await {
                    return;
                }
            };
            let accepted = {
                let accept = std::pin::pin!(server.accept());
                match select(accept, ctx.drain.wait()).await {
                    Either::Left((accepted, _)) => accepted,
                    Either::Right(((), _)) => break,
                }
            };
            match accepted {
                Ok((conn, peer)) => serve(conn, peer, slot),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
    .detach();
}

async fn serve_connection(
    ctx: Rc<ThreadCtx>,
    mut tcp: TcpConn,
    peer: SocketAddr,
    mut handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
) {
    let mut conn = HttpConnection::new(Instant::now(), config);
    let mut pending: Vec<u8> = Vec::new();
    let mut rbuf = Vec::with_capacity(READ_BUF);
    let mut wbuf = vec![0u8; WRITE_BUF];
    let mut timer: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> = None;
    let mut armed: Option<Instant> = None;
    let metrics = Arc::clone(&ctx.shared.metrics);
    let _busy = ctx.drain.busy();
    loop {
        // Send everything the connection has ready.
        // Response heads (and generated bodies) gather in `head` and go out with the next image
        // body in one vectored write, or on their own when nothing follows.
        let mut head: Vec<u8> = Vec::new();
        while let Some(out) = conn.poll_output(&mut wbuf) {
            match out {
                Output::Bytes { len } => head.extend_from_slice(&wbuf[..len]),
                Output::Body { image, range } => {
                    let version = ctx.store.borrow().version(image);
                    let sent = match version {
                        Some(v) => {
                            tcp.send_head_and_image(std::mem::take(&mut head), &v, range)
                                .await
                        }
                        None => Err(zpxe_platform::udp::SendError::Image(
                            zpxe_platform::VersionBroken::Gone,
                        )),
                    };
                    match sent {
                        Ok(n) => {
                            Metrics::add(&metrics.http_bytes_sent_total, n);
                            conn.body_done(Instant::now(), &mut *ctx.store.borrow_mut());
                        }
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "HTTP body ended early");
                            conn.abort(&mut *ctx.store.borrow_mut());
                            return;
                        }
                    }
                }
                Output::Close => {
                    if !head.is_empty() {
                        let (_, _) = tcp.write_all(std::mem::take(&mut head)).await;
                    }
                    let _ = tcp.shutdown().await;
                    return;
                }
                _ => {}
            }
        }
        if !head.is_empty() {
            let (res, _) = tcp.write_all(head).await;
            if res.is_err() {
                conn.abort(&mut *ctx.store.borrow_mut());
                return;
            }
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                HttpEvent::Served {
                    method,
                    path,
                    status,
                    bytes,
                    ..
                } => {
                    Metrics::add(&metrics.http_requests_total, 1);
                    tracing::info!(%peer, ?method, path, status = status.0, bytes, "HTTP request");
                }
                HttpEvent::TimedOut { reading_head } => {
                    tracing::info!(%peer, reading_head, "HTTP connection timed out");
                }
                _ => {}
            }
        }
        if conn.is_closed() {
            conn.abort(&mut *ctx.store.borrow_mut());
            return;
        }
        // Draining: the response in flight is out; close instead of reading another request
        // (a pipelined one the client sent is left for it to send again elsewhere).
        if ctx.drain.fired() {
            conn.abort(&mut *ctx.store.borrow_mut());
            let _ = tcp.shutdown().await;
            return;
        }
        // Offer what is already read before reading more.
        if !pending.is_empty() && conn.wants_input() {
            let n = {
                let mut store = ctx.store.borrow_mut();
                conn.handle_input(
                    Instant::now(),
                    &pending,
                    SystemTime::now(),
                    &mut *handler,
                    &mut *store,
                )
            };
            pending.drain(..n.min(pending.len()));
            continue;
        }
        // One timer per connection, re-armed only when it fires or the deadline moves earlier
        // (a request head started: the header deadline is nearer than the idle one). Every
        // request moves the idle deadline later; a timer per read would cost more than the
        // read, and a timer that fires early finds nothing due and is set again.
        let deadline = conn
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        if timer.is_none() || armed.is_none_or(|a| deadline < a) {
            let wait = deadline.saturating_duration_since(Instant::now());
            timer = Some(Box::pin(sleep(wait)));
            armed = Some(deadline);
        }
        let Some(t) = timer.as_mut() else { continue };
        let read = std::pin::pin!(tcp.read(std::mem::take(&mut rbuf)));
        let timer_or_drain = select(t.as_mut(), ctx.drain.wait());
        match select(read, timer_or_drain).await {
            Either::Right((Either::Right(_), _)) => {
                // Draining while idle or mid-request: the check above closes the connection.
                rbuf = Vec::with_capacity(READ_BUF);
                continue;
            }
            Either::Left(((res, b), _)) => {
                rbuf = b;
                match res {
                    Ok(0) | Err(_) => conn.handle_eof(Instant::now()),
                    Ok(n) => {
                        let consumed = {
                            let mut store = ctx.store.borrow_mut();
                            conn.handle_input(
                                Instant::now(),
                                &rbuf[..n],
                                SystemTime::now(),
                                &mut *handler,
                                &mut *store,
                            )
                        };
                        if consumed < n {
                            pending.extend_from_slice(&rbuf[consumed..n]);
                        }
                    }
                }
            }
            Either::Right((Either::Left(_), _)) => {
                rbuf = Vec::with_capacity(READ_BUF);
                timer = None;
                armed = None;
                conn.handle_timeout(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_and_zero_means_no_cap() {
        let cap = ConnCap::new(2);
        let a = cap.try_take().expect("first");
        let _b = cap.try_take().expect("second");
        assert!(cap.try_take().is_none(), "a third past the cap");
        drop(a);
        assert!(cap.try_take().is_some(), "the freed slot");
        let uncapped = ConnCap::new(0);
        let many: Vec<ConnSlot> = (0..10_000)
            .map(|_| uncapped.try_take().expect("no cap"))
            .collect();
        assert_eq!(uncapped.open.load(Ordering::Relaxed), 10_000);
        drop(many);
        assert_eq!(uncapped.open.load(Ordering::Relaxed), 0);
    }
}
