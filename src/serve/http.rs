//! HTTP services: the boot port (files and generated iPXE scripts) and the web service port,
//! both the engine's `HttpConnection` over a TCP connection, with bodies sent from the mapping.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{Either, select};
use zpxe_engine::http::conn::Timer;
use zpxe_engine::http::{
    Handler, HttpConfig, HttpConnection, HttpEvent, Output, Reply, Request, StatusCode,
};
use zpxe_engine::{ByteRange, ImageCatalog};
use zpxe_platform::runtime::{sleep, spawn};
use zpxe_platform::store::Version;
use zpxe_platform::tcp::{TcpConn, TcpServer, is_stalled};
use zpxe_platform::udp::SendError;

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
    /// The menu of the last reload, taken by each script request (src/serve/reload.rs).
    pub(crate) reloader: super::Reloader,
    /// The web service's port, when it runs (then scripts report each boot stage to it).
    pub(crate) web_port: Option<u16>,
    /// Scripts served over HTTPS point at HTTPS URLs.
    pub(crate) https: bool,
    /// Registered machines' entries, variables and boot-once (src/serve/registry.rs).
    pub(crate) registry: Option<Arc<crate::db::Registry>>,
    /// The request-handler hook's cached decisions (src/serve/hook.rs).
    pub(crate) hook: Option<Arc<super::hook::Hook>>,
}

impl Handler for BootSite {
    fn respond(&mut self, req: &Request<'_>, images: &mut dyn ImageCatalog) -> Reply {
        if !matches!(req.path, "/boot.ipxe" | "/menu.ipxe") {
            return self.scripts.respond(req, images);
        }
        // The parser refused malformed Host values (400), so the split is the grammar's.
        let host = req.header("host").filter(|h| plain_host(h)).zip(req.host());
        let mut scripts = self.scripts.clone();
        scripts.menu = self.reloader.menu();
        if let (Some(port), Some((_, parts)), None) = (self.web_port, host, &scripts.report_url) {
            scripts.report_url = Some(format!("http://{}:{port}/report", parts.host));
        }
        if self.https
            && scripts.base_url.is_none()
            && let Some((host, _)) = host
        {
            scripts.base_url = Some(format!("https://{host}"));
        }
        if let Some(reply) = super::registry::script(
            self.registry.as_deref(),
            self.hook.as_deref(),
            &scripts,
            req,
            images,
        ) {
            return reply;
        }
        scripts.respond(req, images)
    }
}

impl BootSite {
    /// The site for one connection from `peer`, whose address `[[menu.rules]]` naming subnets
    /// match.
    pub(crate) fn for_peer(&self, peer: SocketAddr) -> Self {
        let mut site = self.clone();
        site.scripts.peer = match peer.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
        };
        site
    }
}

/// A Host header made only of what a host name or address can hold: it is written into
/// scripts.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
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

/// Accepts connections on `server` until the loop stops or drains (the listener closes then);
/// without one, serves the connections the listening loop hands over (src/serve/handoff.rs).
pub(crate) fn start(
    ctx: &Rc<ThreadCtx>,
    server: Option<TcpServer>,
    site: Site,
    config: Arc<HttpConfig>,
    cap: Arc<ConnCap>,
) {
    let conn_ctx = Rc::clone(ctx);
    accept_until_drained(ctx, server, cap, move |conn, peer, slot| {
        let handler: Box<dyn Handler> = match &site {
            Site::Boot(site) => Box::new(site.for_peer(peer)),
            Site::Web(web) => Box::new(WebHandler {
                web: web.clone(),
                peer,
            }),
        };
        let (ctx, config) = (Rc::clone(&conn_ctx), Arc::clone(&config));
        // The web service's own requests are not a boot's legs.
        let records = matches!(site, Site::Boot(_));
        let web = match &site {
            Site::Web(web) => Some(web.clone()),
            Site::Boot(_) => None,
        };
        spawn(async move {
            match web {
                Some(web) => web_connection(ctx, conn, peer, handler, config, web).await,
                None => {
                    serve_connection(ctx, conn, peer, handler, config, records, Vec::new()).await
                }
            }
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
/// refused. With loop handoff, `serve` runs on the loop whose turn it is; a loop without
/// `server` only registers `serve` for the connections handed to it.
pub(crate) fn accept_until_drained(
    ctx: &Rc<ThreadCtx>,
    server: Option<TcpServer>,
    cap: Arc<ConnCap>,
    serve: impl FnMut(TcpConn, SocketAddr, ConnSlot) + 'static,
) {
    let service = ctx.add_conn_service(Box::new(serve));
    let Some(server) = server else { return };
    let ctx = Rc::clone(ctx);
    let loops = ctx.loops().cloned();
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
            let accepted = match &loops {
                Some(loops) => {
                    let accept = std::pin::pin!(server.accept_pending());
                    match select(accept, ctx.drain.wait()).await {
                        Either::Left((Ok((conn, peer)), _)) => {
                            super::handoff::hand_connection(&ctx, loops, service, conn, peer, slot);
                            Ok(())
                        }
                        Either::Left((Err(e), _)) => Err(e),
                        Either::Right(((), _)) => break,
                    }
                }
                None => {
                    let accept = std::pin::pin!(server.accept());
                    match select(accept, ctx.drain.wait()).await {
                        Either::Left((Ok((conn, peer)), _)) => {
                            ctx.serve_conn(service, conn, peer, slot);
                            Ok(())
                        }
                        Either::Left((Err(e), _)) => Err(e),
                        Either::Right(((), _)) => break,
                    }
                }
            };
            if let Err(e) = accepted {
                tracing::warn!(error = %e, "accept failed");
                sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    })
    .detach();
}

/// A web port connection: state-changing requests (`PUT`, `POST`, `DELETE`, with bodies) go to
/// the web service's own reader (src/web/machines.rs), one per connection; the rest to the
/// engine's machine, which serves `GET` and `HEAD`.
async fn web_connection(
    ctx: Rc<ThreadCtx>,
    mut tcp: TcpConn,
    peer: SocketAddr,
    handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
    web: WebService,
) {
    let mut first = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(config.header_timeout_ms);
    // Until the method is whole: a `PUT` split across segments must not reach the engine.
    while first.is_empty() || crate::web::machines::may_be_write_method(&first) {
        let read = std::pin::pin!(tcp.read(Vec::with_capacity(READ_BUF)));
        let wait = std::pin::pin!(sleep(deadline.saturating_duration_since(Instant::now())));
        match select(read, wait).await {
            Either::Left(((Ok(n), b), _)) if n > 0 => {
                first.extend_from_slice(b.get(..n).unwrap_or_default());
            }
            _ => return,
        }
    }
    let header_timeout = Duration::from_millis(config.header_timeout_ms);
    let first = crate::web::live::complete_events_head(&mut tcp, first, header_timeout).await;
    // Server-Sent Events: the connection becomes a stream (src/web/live.rs). A peer outside
    // web.allow goes on to the engine's machine, whose answer is the 403.
    if let Some(req) = crate::web::live::events_request(&first)
        && web.access().allows(Some(peer.ip()))
    {
        let _busy = ctx.drain.busy();
        let stop = ctx.drain.wait();
        crate::web::live::serve_events(&web, &mut tcp, peer, req, stop).await;
        return;
    }
    if crate::web::machines::is_write_request(&first) {
        let _busy = ctx.drain.busy();
        crate::web::machines::serve_write(&web, &mut tcp, peer, first).await;
        return;
    }
    serve_connection(ctx, tcp, peer, handler, config, false, first).await;
}

/// A plain HTTP connection (`first`: bytes already read from it).
async fn serve_connection(
    ctx: Rc<ThreadCtx>,
    tcp: TcpConn,
    peer: SocketAddr,
    handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
    records: bool,
    first: Vec<u8>,
) {
    let recorder = if records {
        ctx.shared.recorder.clone()
    } else {
        crate::db::Recorder::disabled()
    };
    let transport = Transport::Plain(tcp);
    serve_site(
        ctx, transport, peer, handler, config, &recorder, first, records,
    )
    .await;
}

/// What carries a connection's bytes: the TCP connection itself, or TLS over it. Both serve
/// the same loop ([`serve`]): the same timeouts, logs, metrics, records and drain.
pub(super) enum Transport {
    Plain(TcpConn),
    Tls(Box<super::https::Tls>),
}

impl Transport {
    fn tcp(&mut self) -> &mut TcpConn {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.tcp(),
        }
    }

    /// Hands what arrived (`raw`, as read from the socket) to `plain` as request bytes.
    /// Returns whether the peer ended its side (a TLS `close_notify`; plain TCP's end is a
    /// read of 0).
    async fn absorb(&mut self, raw: &[u8], plain: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => {
                plain.extend_from_slice(raw);
                Ok(false)
            }
            Transport::Tls(tls) => tls.absorb(raw, plain).await,
        }
    }

    /// Writes `bytes` (handing the buffer back for reuse).
    async fn write(&mut self, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        match self {
            Transport::Plain(tcp) => {
                let (res, buf) = tcp.write_all(bytes).await;
                res.map(|()| buf)
            }
            Transport::Tls(tls) => tls.write(&bytes).await.map(|()| bytes),
        }
    }

    /// Writes `head`, then `range` of `image`.
    async fn send_body(
        &mut self,
        head: Vec<u8>,
        image: &Rc<Version>,
        range: ByteRange,
    ) -> Result<u64, SendError> {
        match self {
            Transport::Plain(tcp) => tcp.send_head_and_image(head, image, range).await,
            Transport::Tls(tls) => tls.send_body(&head, image, range).await,
        }
    }

    /// Ends the stream after what was sent (TLS says goodbye first).
    async fn close(&mut self) {
        if let Transport::Tls(tls) = self {
            let _ = tls.close_notify().await;
        }
        let _ = self.tcp().shutdown().await;
    }
}

/// What a connection does after sending what it had ready.
enum Sent {
    /// Read the next request.
    Open,
    /// The connection said `Close`: end the stream after what was sent.
    Close,
    /// The socket failed or stopped taking bytes: drop it.
    Drop,
}

/// Serves one connection until it closes, times out, fails, or the loop drains.
pub(super) async fn serve(
    ctx: Rc<ThreadCtx>,
    transport: Transport,
    peer: SocketAddr,
    handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
    recorder: &crate::db::Recorder,
    first: Vec<u8>,
) {
    serve_site(ctx, transport, peer, handler, config, recorder, first, true).await;
}

/// [`serve`]; `boot`: a boot port's connection (the web service's is not a boot's leg: it
/// counts in `zpxe_web_requests_total`, src/web.rs).
#[allow(clippy::too_many_arguments)]
async fn serve_site(
    ctx: Rc<ThreadCtx>,
    mut transport: Transport,
    peer: SocketAddr,
    mut handler: Box<dyn Handler>,
    config: Arc<HttpConfig>,
    recorder: &crate::db::Recorder,
    first: Vec<u8>,
    boot: bool,
) {
    // The live view's id of this connection's transfers: progress and each file's end carry
    // it (src/web/live.rs).
    let transfer = boot.then(crate::web::live::next_transfer_id);
    // Every write gives up once the client took less than `min-send-rate` over a send timeout
    // of waiting.
    let send_timeout = Duration::from_millis(config.send_timeout_ms);
    transport.tcp().set_min_send_rate(config.min_send_rate);
    transport.tcp().set_send_timeout(Some(send_timeout));
    let mut conn = HttpConnection::new(Instant::now(), config);
    let metrics = Arc::clone(&ctx.shared.metrics);
    let _busy = ctx.drain.busy();
    serve_requests(
        &ctx,
        &mut transport,
        peer,
        &mut *handler,
        &mut conn,
        recorder,
        first,
        transfer,
    )
    .await;
    // Every exit records what was answered, also a response that went out with a close.
    let access = transfer.and(ctx.shared.access_log.as_ref());
    record(&mut conn, &metrics, peer, recorder, transfer, access);
    conn.abort(&mut *ctx.store.borrow_mut());
}

#[allow(clippy::too_many_arguments)]
async fn serve_requests(
    ctx: &ThreadCtx,
    transport: &mut Transport,
    peer: SocketAddr,
    handler: &mut dyn Handler,
    conn: &mut HttpConnection,
    recorder: &crate::db::Recorder,
    first: Vec<u8>,
    transfer: Option<u64>,
) {
    // Request bytes not yet taken by the machine: those read before it took the connection
    // (the web port's peek), what it left of a read (pipelined requests past
    // `max-pipelined`), and over TLS the decrypted bytes. Plain reads are parsed where they
    // were read; only leftovers are copied here.
    let mut pending: Vec<u8> = first;
    let mut rbuf = Vec::with_capacity(READ_BUF);
    let mut out = Outbox::new();
    let mut timer: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> = None;
    let mut armed: Option<Instant> = None;
    let metrics = &ctx.shared.metrics;
    // The boot ports' responses go to the access log (the web service's do not).
    let access = transfer.and(ctx.shared.access_log.as_ref());
    loop {
        match send_ready(ctx, transport, peer, conn, &mut out, transfer).await {
            Sent::Open => {}
            Sent::Close => {
                transport.close().await;
                return;
            }
            Sent::Drop => return,
        }
        record(conn, metrics, peer, recorder, transfer, access);
        if conn.is_closed() {
            return;
        }
        // Draining: the response in flight is out; close instead of reading another request
        // (a pipelined one the client sent is left for it to send again elsewhere).
        if ctx.drain.fired() {
            transport.close().await;
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
                    handler,
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
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if timer.is_none() || armed.is_none_or(|a| deadline < a) {
            let wait = deadline.saturating_duration_since(Instant::now());
            timer = Some(Box::pin(sleep(wait)));
            armed = Some(deadline);
        }
        let Some(t) = timer.as_mut() else { continue };
        let got = {
            let read = std::pin::pin!(transport.tcp().read(std::mem::take(&mut rbuf)));
            let timer_or_drain = select(t.as_mut(), ctx.drain.wait());
            match select(read, timer_or_drain).await {
                Either::Left(((res, b), _)) => Some((res, b)),
                Either::Right((Either::Right(_), _)) => {
                    // Draining while idle or mid-request: the check above closes the
                    // connection.
                    rbuf = Vec::with_capacity(READ_BUF);
                    continue;
                }
                Either::Right((Either::Left(_), _)) => None,
            }
        };
        match got {
            Some((res, b)) => {
                rbuf = b;
                match res {
                    Ok(0) | Err(_) => conn.handle_eof(Instant::now()),
                    Ok(n) if pending.is_empty() && matches!(transport, Transport::Plain(_)) => {
                        let raw = rbuf.get(..n).unwrap_or_default();
                        let taken = {
                            let mut store = ctx.store.borrow_mut();
                            conn.handle_input(
                                Instant::now(),
                                raw,
                                SystemTime::now(),
                                handler,
                                &mut *store,
                            )
                        };
                        pending.extend_from_slice(raw.get(taken..).unwrap_or_default());
                    }
                    Ok(n) => {
                        let raw = rbuf.get(..n).unwrap_or_default();
                        match transport.absorb(raw, &mut pending).await {
                            Ok(false) => {}
                            Ok(true) => conn.handle_eof(Instant::now()),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "HTTPS connection ended");
                                return;
                            }
                        }
                    }
                }
            }
            None => {
                rbuf = Vec::with_capacity(READ_BUF);
                timer = None;
                armed = None;
                conn.handle_timeout(Instant::now());
            }
        }
    }
}

/// A connection's output buffers, kept across responses.
struct Outbox {
    /// What the machine writes each `Output::Bytes` into.
    wbuf: Vec<u8>,
    /// Response heads and generated bodies gathered for one write.
    head: Vec<u8>,
}

impl Outbox {
    fn new() -> Self {
        Self {
            wbuf: vec![0u8; WRITE_BUF],
            head: Vec::new(),
        }
    }
}

/// Generated bytes (response heads, scripts, web replies) gather up to this much before they
/// are written: one write for a head and small body.
const FLUSH_AT: usize = 64 * 1024;

/// Image bodies go to the transport in steps of this many bytes: the bytes-sent metric moves
/// per step, and the engine hears of the progress. (Whether the client still reads is the
/// socket's send timeout's business, which sees every byte it takes.)
const BODY_STEP: u64 = 1 << 20;

/// Sends everything the connection has ready. Response heads (and generated bodies) gather and
/// go out with the next image body in one write, or on their own when nothing follows.
async fn send_ready(
    ctx: &ThreadCtx,
    transport: &mut Transport,
    peer: SocketAddr,
    conn: &mut HttpConnection,
    out: &mut Outbox,
    transfer: Option<u64>,
) -> Sent {
    let metrics = &ctx.shared.metrics;
    let mut close = false;
    let mut any = false;
    while let Some(next) = conn.poll_output(&mut out.wbuf) {
        any = true;
        match next {
            Output::Bytes { len } => {
                out.head
                    .extend_from_slice(out.wbuf.get(..len).unwrap_or_default());
                if out.head.len() >= FLUSH_AT {
                    if let Err(sent) = write(transport, conn, peer, &mut out.head).await {
                        return sent;
                    }
                    conn.handle_send_progress(Instant::now());
                }
            }
            Output::Body { image, range } => {
                let Some(version) = ctx.store.borrow().version(image) else {
                    tracing::info!(%peer, "HTTP body ended early: image released");
                    return Sent::Drop;
                };
                let mut at = range.start;
                // The live view's progress (src/web/live.rs): at the first and last step, and
                // at most every `PROGRESS_EVERY` between, one `try_send` each.
                let live = ctx.shared.recorder.live();
                let mut reported: Option<Instant> = None;
                loop {
                    let step = ByteRange::new(at, range.end.min(at.saturating_add(BODY_STEP)));
                    let head = std::mem::take(&mut out.head);
                    match transport.send_body(head, &version, step).await {
                        Ok(n) => Metrics::add(&metrics.http_bytes_sent_total, n),
                        Err(SendError::Io(e)) if is_stalled(&e) => {
                            conn.handle_timeout(Instant::now());
                            return Sent::Drop;
                        }
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "HTTP body ended early");
                            return Sent::Drop;
                        }
                    }
                    at = step.end;
                    if let (Some(live), Some(transfer)) = (live, transfer)
                        && (at >= range.end
                            || reported
                                .is_none_or(|r| r.elapsed() >= crate::web::live::PROGRESS_EVERY))
                    {
                        reported = Some(Instant::now());
                        let root = ctx.shared.config.server.root.get_ref();
                        let path = version.path();
                        let file = path.strip_prefix(root).unwrap_or(path).to_string_lossy();
                        live.progress(
                            crate::db::Leg::Http,
                            transfer,
                            peer,
                            &file,
                            at - range.start,
                            Some(range.len()),
                        );
                    }
                    if at >= range.end {
                        break;
                    }
                    conn.handle_send_progress(Instant::now());
                }
                conn.body_done(Instant::now(), &mut *ctx.store.borrow_mut());
            }
            Output::Close => close = true,
            _ => {}
        }
    }
    if !out.head.is_empty()
        && let Err(sent) = write(transport, conn, peer, &mut out.head).await
    {
        return sent;
    }
    if any {
        conn.handle_flushed(Instant::now());
    }
    if close { Sent::Close } else { Sent::Open }
}

/// Writes and empties `bytes`; a stall is the connection's send timeout.
async fn write(
    transport: &mut Transport,
    conn: &mut HttpConnection,
    peer: SocketAddr,
    bytes: &mut Vec<u8>,
) -> Result<(), Sent> {
    match transport.write(std::mem::take(bytes)).await {
        Ok(mut buf) => {
            buf.clear();
            *bytes = buf;
            Ok(())
        }
        Err(e) if is_stalled(&e) => {
            conn.handle_timeout(Instant::now());
            Err(Sent::Drop)
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP write failed");
            Err(Sent::Drop)
        }
    }
}

/// Logs and counts what the connection reports, and records each response to a boot.
pub(super) fn record(
    conn: &mut HttpConnection,
    metrics: &Metrics,
    peer: SocketAddr,
    recorder: &crate::db::Recorder,
    transfer: Option<u64>,
    access: Option<&super::access_log::AccessLog>,
) {
    while let Some(ev) = conn.poll_event() {
        match ev {
            HttpEvent::Served {
                method,
                path,
                status,
                bytes,
                elapsed,
                query,
                version,
                user_agent,
                referer,
                ..
            } => {
                // The web service counts its own (`zpxe_web_requests_total`).
                if transfer.is_some() {
                    metrics.http_served(bytes, elapsed);
                }
                tracing::info!(
                    %peer,
                    method = method.map_or("-", |m| m.as_str()),
                    path,
                    status = status.0,
                    bytes,
                    "HTTP request"
                );
                if recorder.enabled() && method.is_some() {
                    let event = served_event(&path, status.0, bytes).ip(peer.ip());
                    recorder.record(event.transfer(transfer));
                }
                if let Some(log) = access {
                    log.log(super::access_log::Entry {
                        peer,
                        at: SystemTime::now(),
                        method,
                        version,
                        path,
                        query,
                        status: status.0,
                        bytes,
                        referer,
                        user_agent,
                        elapsed,
                    });
                }
            }
            // A client that stalls a request head or stops reading is worth a line; an idle
            // keep-alive connection (or a silent one, by the thousand in a flood) is routine.
            HttpEvent::TimedOut {
                timer: timer @ (Timer::Head | Timer::Send),
            } => {
                tracing::info!(%peer, timer = timer.as_str(), "HTTP connection timed out");
            }
            HttpEvent::TimedOut { timer } => {
                tracing::debug!(%peer, timer = timer.as_str(), "HTTP connection timed out");
            }
            _ => {}
        }
    }
}

/// The timeline event for one response: the generated scripts are the script fetch, anything
/// else a file. The engine reports neither duration nor range yet, so both stay empty.
fn served_event(path: &str, status: u16, bytes: u64) -> crate::db::Event {
    use crate::db::{Event, EventKind, Name, Outcome};
    let file = path.split('?').next().unwrap_or_default();
    let kind = if matches!(file, "/boot.ipxe" | "/menu.ipxe") {
        EventKind::ScriptFetch {
            path: Name::new(path),
            status,
        }
    } else {
        EventKind::HttpFile {
            path: Name::new(path),
            bytes,
            duration_ms: 0,
            range: None,
            status,
            outcome: if status < 400 {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
        }
    };
    Event::now(kind)
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
