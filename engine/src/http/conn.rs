//! [`HttpConnection`]: the server side of one TCP connection, sans-IO.
//!
//! # Driving it
//! - Received bytes go to [`handle_input`](HttpConnection::handle_input), which returns how
//!   many it consumed. The connection buffers at most one unfinished request head internally
//!   (bounded by the head limits). It stops consuming when `max-pipelined` responses are queued:
//!   the caller keeps the rest and offers it again once output has drained
//!   ([`wants_input`](HttpConnection::wants_input) says when).
//! - [`poll_output`](HttpConnection::poll_output) until `None`: `Bytes` are in the caller's
//!   buffer; `Body` names image bytes to send as they are, then the caller reports
//!   [`body_done`](HttpConnection::body_done) (nothing more comes out until then); `Close` means
//!   close the socket after everything before it was sent.
//! - Sending: once the socket has taken everything handed out so far, the caller reports
//!   [`handle_flushed`](HttpConnection::handle_flushed); while a long send is under way it
//!   reports [`handle_send_progress`](HttpConnection::handle_send_progress) whenever the socket
//!   took more bytes (`body_done` counts as progress too).
//! - Timers: [`poll_timeout`](HttpConnection::poll_timeout) /
//!   [`handle_timeout`](HttpConnection::handle_timeout). The connection times the client: the
//!   first request (from the connection's start, as short as a request head), the idle gap
//!   between requests, the time to send one request head (slowloris), and, while output is
//!   queued or unsent, the time without send progress (a client that stops reading). The
//!   caller races its sends against `poll_timeout`.
//! - On a dead socket, [`abort`](HttpConnection::abort) releases every image reference.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::handler::{self, Chunk, Handler, PlanContext, Planned};
use super::request::{HeadLimits, Method, Request, RequestError, Version};
use super::response::StatusCode;
use crate::image::{ByteRange, ImageCatalog, ImageId};

/// Server connection settings (the `[http]` table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Longest request line; longer gets 414.
    pub max_request_line: usize,
    /// Most bytes of header fields in one request; more gets 431.
    pub max_header_bytes: usize,
    /// Most header field lines in one request; more gets 431.
    pub max_headers: usize,
    /// Time a client has to send a whole request head once it started one (slowloris guard).
    pub header_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests. A new connection waits at
    /// most `header_timeout_ms` for its first request.
    pub idle_timeout_ms: u64,
    /// Time a response may wait for the socket to take more of it (a client that stopped
    /// reading) before the connection is dropped.
    pub send_timeout_ms: u64,
    /// Bytes per second a client must take, on average over each `send_timeout_ms` its
    /// response waits for the socket; fewer and the connection is dropped (a client that reads
    /// a trickle to hold its connection). 0: any byte taken is progress. For the server's
    /// sockets; one connection's machine ignores it.
    pub min_send_rate: u64,
    /// Where the server writes one line per response (nginx's combined format); `None`: no
    /// access log. For the server; one connection's machine ignores it.
    pub access_log: Option<std::path::PathBuf>,
    /// Most range-specs honoured in one `Range` header; more and the header is ignored (200).
    pub max_ranges: usize,
    /// Answer multi-range requests with `multipart/byteranges`; off: 200 with the whole file.
    pub multipart: bool,
    /// Responses queued before the connection stops reading pipelined requests.
    pub max_pipelined: usize,
    /// Most connections the server keeps open on its boot ports (HTTP and HTTPS together); at
    /// the cap it stops accepting until one closes, and new ones wait in the kernel's backlog.
    /// 0: no cap. For the server that accepts connections; one connection's machine ignores it.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = HeadLimits::default();
        Self {
            max_request_line: limits.max_request_line,
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            send_timeout_ms: 30_000,
            // 4 KiB/s (32 kbit/s): below the slowest link anyone boots over (a 64 kbit/s
            // channel carries 8 KB/s), so only a client holding its connection on purpose
            // falls under it; holding one costs such a client 120 KiB per 30 s window.
            min_send_rate: 4096,
            access_log: None,
            max_ranges: 16,
            multipart: true,
            max_pipelined: 8,
            max_connections: 8192,
        }
    }
}

impl HttpConfig {
    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_request_line: self.max_request_line,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
        }
    }
}

/// What to send next.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// The first `len` bytes of the buffer passed to `poll_output`.
    Bytes { len: usize },
    /// These bytes of this image, as they are; report `body_done` once sent.
    Body { image: ImageId, range: ByteRange },
    /// Close the connection (everything before was sent).
    Close,
}

/// Something that happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpEvent {
    /// A response was sent completely.
    Served {
        /// `None` when the request was refused before its method was known.
        method: Option<Method>,
        /// The request path as sent (percent-encoded, at most 256 bytes), or empty.
        path: String,
        /// The query after `?` as sent (at most 256 bytes), or empty.
        query: String,
        /// The request's version; `None` when it was refused before it was known.
        version: Option<Version>,
        /// The `User-Agent` and `Referer` fields as sent (at most 256 bytes each), or empty:
        /// for the access log.
        user_agent: String,
        referer: String,
        status: StatusCode,
        /// Content bytes sent (0 for HEAD, 304, ...).
        bytes: u64,
        /// From the input that completed the request head to the response's last byte
        /// handed out (by the caller's clock, as given to the `handle_*` calls).
        elapsed: Duration,
    },
    /// The client took too long at what `timer` times; the connection closes.
    TimedOut { timer: Timer },
}

/// What a connection was waiting for when it timed out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timer {
    /// The first byte of the first request (the header timeout from the connection's start).
    FirstRequest,
    /// The next request on a keep-alive connection.
    Idle,
    /// The rest of a request head (answered with 408).
    Head,
    /// The socket to take more of a response: the client stopped reading.
    Send,
}

impl Timer {
    pub fn as_str(self) -> &'static str {
        match self {
            Timer::FirstRequest => "first request",
            Timer::Idle => "idle",
            Timer::Head => "request head",
            Timer::Send => "send",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// Reading requests.
    Open,
    /// No more requests: send what is queued, then close.
    Closing,
    Closed,
}

/// One queued response.
#[derive(Debug)]
struct Pending {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front `Chunk::Bytes` already copied out.
    offset: usize,
    image: Option<ImageId>,
    close_after: bool,
    /// When its request was taken (the caller's clock at that input).
    started: Instant,
    event: HttpEvent,
}

/// The server side of one HTTP/1.1 connection.
#[derive(Debug)]
pub struct HttpConnection {
    config: Arc<HttpConfig>,
    limits: HeadLimits,
    state: State,
    /// An unfinished request head (never more than `limits.max_head_bytes()`).
    head_buf: Vec<u8>,
    /// When the unfinished head's first byte arrived.
    head_started: Option<Instant>,
    /// When the connection last became idle (no queued response, no unfinished head).
    idle_since: Instant,
    /// No byte has arrived yet: the idle wait is as short as the header timeout.
    fresh: bool,
    /// Output was handed out that the caller has not reported flushed.
    unflushed: bool,
    /// When the socket last took bytes, or output became due: the send timer's start.
    send_progress: Instant,
    /// Latest time passed in; stamps completions reported without one.
    last_now: Instant,
    /// Latest wall clock passed in, for the `Date` of a 408 sent from `handle_timeout`.
    last_wall: SystemTime,
    queue: VecDeque<Pending>,
    /// A `Body` was handed out and `body_done` has not come yet.
    body_in_flight: bool,
    events: VecDeque<HttpEvent>,
}

impl HttpConnection {
    pub fn new(now: Instant, config: Arc<HttpConfig>) -> Self {
        let limits = config.head_limits();
        Self {
            config,
            limits,
            state: State::Open,
            head_buf: Vec::new(),
            head_started: None,
            idle_since: now,
            fresh: true,
            unflushed: false,
            send_progress: now,
            last_now: now,
            last_wall: SystemTime::UNIX_EPOCH,
            queue: VecDeque::new(),
            body_in_flight: false,
            events: VecDeque::new(),
        }
    }

    /// Feeds received bytes; returns how many were consumed. Unconsumed bytes must be offered
    /// again later (once [`wants_input`](Self::wants_input)). After the connection decided to
    /// close, input is discarded (reported consumed).
    pub fn handle_input(
        &mut self,
        now: Instant,
        data: &[u8],
        wall: SystemTime,
        handler: &mut dyn Handler,
        images: &mut dyn ImageCatalog,
    ) -> usize {
        self.last_now = now;
        self.last_wall = wall;
        if !data.is_empty() {
            self.fresh = false;
        }
        let mut consumed = 0;
        while consumed < data.len() && self.wants_input() {
            let rest = data.get(consumed..).unwrap_or_default();
            if self.head_buf.is_empty() {
                // Fast path: parse straight from the caller's bytes.
                match Request::parse(rest, &self.limits) {
                    Ok(Some((req, n))) => {
                        self.serve(&req, wall, handler, images);
                        consumed += n;
                    }
                    Ok(None) => {
                        // The parser vouches that an unfinished head is within the limits.
                        self.head_buf.extend_from_slice(rest);
                        self.head_started = Some(now);
                        consumed = data.len();
                    }
                    Err(e) => {
                        self.refuse(e, wall);
                        consumed = data.len();
                    }
                }
                continue;
            }
            let old = self.head_buf.len();
            let room = self.limits.max_head_bytes().saturating_sub(old);
            let take = rest.len().min(room);
            let new = rest.get(..take).unwrap_or_default();
            if take == 0 {
                self.refuse(RequestError::HeadersTooLarge, wall);
                consumed = data.len();
                continue;
            }
            self.head_buf.extend_from_slice(new);
            // A head ends with a line feed: without a new one it cannot have completed. Parse
            // anyway while short (garbage is refused early) or long (limits are enforced).
            let may_complete = new.contains(&b'\n')
                || self.head_buf.len() <= 16
                || self.head_buf.len() > self.limits.max_request_line;
            if !may_complete {
                consumed += take;
                continue;
            }
            let buf = std::mem::take(&mut self.head_buf);
            match Request::parse(&buf, &self.limits) {
                Ok(Some((req, n))) => {
                    self.serve(&req, wall, handler, images);
                    consumed += n.saturating_sub(old);
                    self.head_buf = buf;
                    self.head_buf.clear();
                }
                Ok(None) => {
                    self.head_buf = buf;
                    consumed += take;
                }
                Err(e) => {
                    self.refuse(e, wall);
                    consumed = data.len();
                }
            }
        }
        if self.state != State::Open {
            consumed = data.len();
        }
        consumed
    }

    /// Whether `handle_input` would consume bytes now.
    pub fn wants_input(&self) -> bool {
        self.state == State::Open && self.queue.len() < self.config.max_pipelined.max(1)
    }

    /// The client closed its sending side: answer what was asked, then close.
    pub fn handle_eof(&mut self, now: Instant) {
        self.last_now = now;
        if self.state == State::Open {
            self.state = State::Closing;
        }
        self.head_buf = Vec::new();
        self.head_started = None;
    }

    /// The next thing to send, if any.
    pub fn poll_output(&mut self, buf: &mut [u8]) -> Option<Output> {
        if self.state == State::Closed || self.body_in_flight {
            return None;
        }
        let mut written = 0;
        while let Some(front) = self.queue.front_mut() {
            match front.chunks.front() {
                None => {
                    self.finish_front();
                }
                Some(Chunk::Bytes(bytes)) => {
                    let src = bytes.get(front.offset..).unwrap_or_default();
                    let dst = buf.get_mut(written..).unwrap_or_default();
                    let n = src.len().min(dst.len());
                    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                        d.copy_from_slice(s);
                    }
                    written += n;
                    front.offset += n;
                    if front.offset >= bytes.len() {
                        front.chunks.pop_front();
                        front.offset = 0;
                    } else {
                        break;
                    }
                }
                Some(Chunk::Image(image, range)) => {
                    if written > 0 {
                        break;
                    }
                    let (image, range) = (*image, *range);
                    self.body_in_flight = true;
                    self.unflushed = true;
                    return Some(Output::Body { image, range });
                }
            }
        }
        if written > 0 {
            self.unflushed = true;
            return Some(Output::Bytes { len: written });
        }
        if self.queue.is_empty() && self.state == State::Closing {
            self.state = State::Closed;
            return Some(Output::Close);
        }
        None
    }

    /// The caller finished sending the last [`Output::Body`].
    pub fn body_done(&mut self, now: Instant, images: &mut dyn ImageCatalog) {
        self.last_now = now;
        if !self.body_in_flight {
            return;
        }
        self.send_progress = now;
        self.body_in_flight = false;
        if let Some(front) = self.queue.front_mut() {
            front.chunks.pop_front();
            front.offset = 0;
            // After the last image chunk only framing bytes remain (a multipart trailer):
            // release the image now, while the catalog is at hand.
            if !front.chunks.iter().any(|c| matches!(c, Chunk::Image(..)))
                && let Some(id) = front.image.take()
            {
                images.close(id);
            }
            if front.chunks.is_empty() {
                self.finish_front();
            }
        }
    }

    /// The socket took more of the output handed out (part of a body, part of the bytes).
    pub fn handle_send_progress(&mut self, now: Instant) {
        self.last_now = now;
        self.send_progress = now;
    }

    /// The socket took everything handed out so far: the send timer stops (until more output
    /// is due) and an idle connection's wait for its next request starts now.
    pub fn handle_flushed(&mut self, now: Instant) {
        self.last_now = now;
        self.send_progress = now;
        // A body handed out is flushed only once `body_done` came.
        if !self.unflushed || self.body_in_flight {
            return;
        }
        self.unflushed = false;
        if self.queue.is_empty() {
            self.idle_since = now;
            if self.head_started.is_some() {
                self.head_started = Some(now);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        let Some((timer, deadline)) = self.timer() else {
            return;
        };
        if now < deadline {
            return;
        }
        self.events.push_back(HttpEvent::TimedOut { timer });
        self.head_buf = Vec::new();
        self.head_started = None;
        match timer {
            // The socket takes nothing: nothing more can be said, not even a 408. The queued
            // responses keep their image references until `abort`.
            Timer::Send => {
                self.unflushed = false;
                self.state = State::Closed;
                return;
            }
            Timer::Head => {
                //= https://www.rfc-editor.org/rfc/rfc9110#section-15.5.9
                //# The 408 (Request Timeout) status code indicates that the server did not
                //# receive a complete request message within the time that it was prepared
                //# to wait.
                let planned = handler::plan_error(StatusCode::REQUEST_TIMEOUT, self.last_wall);
                self.enqueue(planned, None, Asked::default(), false, Version::Http11);
            }
            // Nothing was asked: close without a word, as after an idle keep-alive wait.
            Timer::FirstRequest | Timer::Idle => {}
        }
        self.state = State::Closing;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer().map(|(_, deadline)| deadline)
    }

    /// The timer running now and its deadline.
    fn timer(&self) -> Option<(Timer, Instant)> {
        let ms = Duration::from_millis;
        // Output queued or handed out and not yet taken by the socket, also after `Close` was
        // handed out (the caller still writes what came before it).
        let sending = self.unflushed || (self.state != State::Closed && !self.queue.is_empty());
        if sending {
            let deadline = self.send_progress + ms(self.config.send_timeout_ms);
            return Some((Timer::Send, deadline));
        }
        if self.state != State::Open {
            return None;
        }
        Some(match self.head_started {
            Some(start) => (Timer::Head, start + ms(self.config.header_timeout_ms)),
            // A connection that never sends a byte is a slowloris that has not started: it gets
            // no longer than a request head would.
            None if self.fresh => {
                let wait = self
                    .config
                    .header_timeout_ms
                    .min(self.config.idle_timeout_ms);
                (Timer::FirstRequest, self.idle_since + ms(wait))
            }
            None => (
                Timer::Idle,
                self.idle_since + ms(self.config.idle_timeout_ms),
            ),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    pub fn poll_event(&mut self) -> Option<HttpEvent> {
        self.events.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The connection died: release every image reference and stop.
    pub fn abort(&mut self, images: &mut dyn ImageCatalog) {
        for pending in self.queue.drain(..) {
            if let Some(id) = pending.image {
                images.close(id);
            }
        }
        self.body_in_flight = false;
        self.unflushed = false;
        self.head_buf = Vec::new();
        self.state = State::Closed;
    }

    fn serve(
        &mut self,
        req: &Request<'_>,
        wall: SystemTime,
        handler: &mut dyn Handler,
        images: &mut dyn ImageCatalog,
    ) {
        self.head_started = None;
        let reply = handler.respond(req, images);
        let ctx = PlanContext {
            wall,
            max_ranges: self.config.max_ranges,
            multipart: self.config.multipart,
        };
        let mut planned = handler::plan(req, reply, ctx);
        // HEAD, 304 and 416 send no image bytes: release the reference now, while the catalog
        // is at hand, so that only responses with image chunks hold one.
        if !planned.body.iter().any(|c| matches!(c, Chunk::Image(..)))
            && let Some(id) = planned.image.take()
        {
            images.close(id);
        }
        let keep_alive = req.keep_alive();
        self.enqueue(
            planned,
            Some(req.method),
            Asked::of(req),
            keep_alive,
            req.version,
        );
        if !keep_alive {
            self.state = State::Closing;
        }
    }

    /// Answers a head that could not be parsed, then closes: its framing cannot be trusted.
    fn refuse(&mut self, error: RequestError, wall: SystemTime) {
        self.head_buf = Vec::new();
        self.head_started = None;
        let planned = handler::plan_error(error.status(), wall);
        self.enqueue(planned, None, Asked::default(), false, Version::Http11);
        self.state = State::Closing;
    }

    fn enqueue(
        &mut self,
        mut planned: Planned,
        method: Option<Method>,
        asked: Asked,
        keep_alive: bool,
        version: Version,
    ) {
        //= https://www.rfc-editor.org/rfc/rfc9112#section-9.6
        //# A server that sends a "close" connection option MUST initiate closure of the
        //# connection (see below) after it sends the response containing the "close"
        //# connection option.
        if !keep_alive {
            planned.head.push("Connection", "close".to_owned());
        } else if version == Version::Http10 {
            planned.head.push("Connection", "keep-alive".to_owned());
        }
        let mut head_bytes = Vec::with_capacity(planned.head.buffer_len());
        planned.head.write(&mut head_bytes);
        // HEAD and bodiless statuses have no chunks: those responses send no content bytes.
        let bytes = if planned.body.is_empty() {
            0
        } else {
            planned.content_len
        };
        planned.body.push_front(Chunk::Bytes(head_bytes));
        if self.queue.is_empty() && !self.unflushed {
            self.send_progress = self.last_now;
        }
        self.queue.push_back(Pending {
            chunks: planned.body,
            offset: 0,
            image: planned.image,
            close_after: !keep_alive,
            started: self.last_now,
            event: HttpEvent::Served {
                method,
                version: method.map(|_| version),
                path: asked.path,
                query: asked.query,
                user_agent: asked.user_agent,
                referer: asked.referer,
                status: planned.head.status,
                bytes,
                elapsed: Duration::ZERO,
            },
        });
    }

    /// Completes the front response. It holds no image any more: references are released
    /// when the planned body has no image chunk (`serve`) or after the last one (`body_done`).
    fn finish_front(&mut self) {
        if let Some(p) = self.queue.pop_front() {
            debug_assert!(p.image.is_none());
            let mut event = p.event;
            if let HttpEvent::Served { elapsed, .. } = &mut event {
                *elapsed = self.last_now.saturating_duration_since(p.started);
            }
            self.complete(event, p.close_after);
        }
    }

    fn complete(&mut self, event: HttpEvent, close_after: bool) {
        self.events.push_back(event);
        if close_after {
            // Nothing is parsed after a "close" request, so nothing is queued behind it.
            self.state = State::Closing;
        }
        if self.queue.is_empty() {
            self.idle_since = self.last_now;
            if self.head_started.is_some() {
                self.head_started = Some(self.last_now);
            }
        }
    }
}

/// What a response's event says of its request, each part bounded.
#[derive(Default)]
struct Asked {
    path: String,
    query: String,
    user_agent: String,
    referer: String,
}

impl Asked {
    fn of(req: &Request<'_>) -> Self {
        let field = |name| truncate(req.header(name).unwrap_or_default(), 256);
        Self {
            path: truncate(req.path, 256),
            query: truncate(req.query.unwrap_or_default(), 256),
            user_agent: field("user-agent"),
            referer: field("referer"),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::StaticFiles;
    use crate::image::MemoryCatalog;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::time::UNIX_EPOCH;

    struct Harness {
        conn: HttpConnection,
        cat: MemoryCatalog,
        now: Instant,
        wall: SystemTime,
        closed: bool,
    }

    fn harness(config: HttpConfig) -> Harness {
        let mut cat = MemoryCatalog::new();
        cat.insert(
            "boot.wim",
            (0..10_000u32).map(|i| (i % 251) as u8).collect(),
        );
        cat.insert("Boot/BCD", b"bcd-bytes".to_vec());
        cat.insert("empty", Vec::new());
        let now = Instant::now();
        Harness {
            conn: HttpConnection::new(now, Arc::new(config)),
            cat,
            now,
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            closed: false,
        }
    }

    impl Harness {
        fn input(&mut self, data: &[u8]) -> usize {
            self.conn
                .handle_input(self.now, data, self.wall, &mut StaticFiles, &mut self.cat)
        }

        /// Everything the connection sends now, image bytes materialized from the catalog, as
        /// a socket that takes it all at once.
        fn drain(&mut self) -> Vec<u8> {
            let out = self.drain_unflushed();
            self.conn.handle_flushed(self.now);
            out
        }

        /// What the connection hands out now, none of it reported flushed.
        fn drain_unflushed(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            let mut buf = [0u8; 97]; // odd size: heads span several polls
            while let Some(o) = self.conn.poll_output(&mut buf) {
                match o {
                    Output::Bytes { len } => out.extend_from_slice(&buf[..len]),
                    Output::Body { image, range } => {
                        out.extend_from_slice(self.cat.slice(image, range).expect("held"));
                        self.conn.body_done(self.now, &mut self.cat);
                    }
                    Output::Close => self.closed = true,
                }
            }
            out
        }

        fn exchange(&mut self, data: &[u8]) -> String {
            String::from_utf8_lossy(&self.exchange_raw(data)).into_owned()
        }

        fn exchange_raw(&mut self, data: &[u8]) -> Vec<u8> {
            assert_eq!(self.input(data), data.len());
            self.drain()
        }
    }

    fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        let head = response.split("\r\n\r\n").next()?;
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    fn raw_body_len(raw: &[u8]) -> usize {
        let at = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end");
        raw.len() - at - 4
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[test]
    fn get_head_and_refs() {
        let mut h = harness(HttpConfig::default());
        let r = h.exchange(b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(header(&r, "content-length"), Some("9"));
        assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
        assert_eq!(header(&r, "server"), Some("zpxe"));
        assert_eq!(header(&r, "date"), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert_eq!(body(&r), "bcd-bytes");
        let head = h.exchange(b"HEAD /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n");
        assert_eq!(header(&head, "content-length"), Some("9"));
        assert_eq!(body(&head), "");
        assert!(!h.closed);
        assert_eq!(h.cat.total_open_refs(), 0);
        let events: Vec<_> = std::iter::from_fn(|| h.conn.poll_event()).collect();
        assert!(
            matches!(
                &events[0],
                HttpEvent::Served {
                    method: Some(Method::Get),
                    path,
                    status: StatusCode::OK,
                    bytes: 9,
                    ..
                } if path == "/Boot/BCD"
            ),
            "{events:?}"
        );
        assert!(matches!(events[1], HttpEvent::Served { bytes: 0, .. }));
    }

    #[test]
    fn not_found_and_refused_paths_leak_nothing() {
        let mut h = harness(HttpConfig::default());
        for path in [
            "/nope",
            "/../boot.wim",
            "/%2e%2e/boot.wim",
            "/",
            "/a%5cb",
            "/x:y",
        ] {
            let r = h.exchange(format!("GET {path} HTTP/1.1\r\nHost: s\r\n\r\n").as_bytes());
            assert!(r.starts_with("HTTP/1.1 404 "), "{path}: {r}");
        }
        assert!(!h.closed);
    }

    #[test]
    fn pipelined_requests_answer_in_order() {
        let mut h = harness(HttpConfig::default());
        let r = h.exchange(
            b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\nGET /nope HTTP/1.1\r\nHost: s\r\n\r\n\
              GET /Boot/BCD HTTP/1.1\r\nHost: s\r\nRange: bytes=0-2\r\n\r\n",
        );
        let statuses: Vec<_> = r
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &r[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["200", "404", "206"]);
        assert!(r.ends_with("\r\n\r\nbcd"));
        assert_eq!(h.cat.total_open_refs(), 0);
    }

    #[test]
    fn pipelining_is_bounded_and_resumes() {
        let config = HttpConfig {
            max_pipelined: 2,
            ..HttpConfig::default()
        };
        let mut h = harness(config);
        let one = b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n";
        let three = [&one[..], one, one].concat();
        let n = h.input(&three);
        assert_eq!(n, 2 * one.len());
        assert!(!h.conn.wants_input());
        let first = h.drain();
        assert!(h.conn.wants_input());
        assert_eq!(h.input(&three[n..]), one.len());
        let second = h.drain();
        let all = String::from_utf8_lossy(&[first, second].concat()).into_owned();
        assert_eq!(all.matches("bcd-bytes").count(), 3);
    }

    #[test]
    fn keep_alive_and_close() {
        let mut h = harness(HttpConfig::default());
        let r = h.exchange(b"GET /Boot/BCD HTTP/1.0\r\n\r\n");
        assert_eq!(header(&r, "connection"), Some("close"));
        assert!(h.closed && h.conn.is_closed());

        let mut h = harness(HttpConfig::default());
        let r = h.exchange(b"GET /Boot/BCD HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(header(&r, "connection"), Some("keep-alive"));
        assert!(!h.closed);

        let mut h = harness(HttpConfig::default());
        // Requests after a "close" request are never answered.
        let r = h.exchange(
            b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\nGET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n",
        );
        assert_eq!(r.matches("HTTP/1.1").count(), 1);
        assert_eq!(header(&r, "connection"), Some("close"));
        assert!(h.closed);

        let mut h = harness(HttpConfig::default());
        assert_eq!(h.input(b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n"), 35);
        h.conn.handle_eof(h.now);
        let r = String::from_utf8_lossy(&h.drain()).into_owned();
        assert!(r.ends_with("bcd-bytes") && h.closed, "answers, then closes");
    }

    #[test]
    fn conditional_get_and_if_range() {
        let mut h = harness(HttpConfig::default());
        let r = h.exchange(b"GET /boot.wim HTTP/1.1\r\nHost: s\r\n\r\n");
        let etag = header(&r, "etag").expect("etag").to_owned();
        let r = h.exchange(
            format!("GET /boot.wim HTTP/1.1\r\nHost: s\r\nIf-None-Match: {etag}\r\n\r\n")
                .as_bytes(),
        );
        assert!(r.starts_with("HTTP/1.1 304 "), "{r}");
        assert_eq!(header(&r, "content-length"), None);
        assert_eq!(header(&r, "etag"), Some(etag.as_str()));
        assert!(r.ends_with("\r\n\r\n"));
        // If-Range with the current tag: ranged; with a stale one: the whole file.
        let ranged = format!(
            "GET /boot.wim HTTP/1.1\r\nHost: s\r\nRange: bytes=10-19\r\nIf-Range: {etag}\r\n\r\n"
        );
        let r = h.exchange(ranged.as_bytes());
        assert!(r.starts_with("HTTP/1.1 206 "));
        assert_eq!(header(&r, "content-range"), Some("bytes 10-19/10000"));
        let r = h.exchange_raw(
            b"GET /boot.wim HTTP/1.1\r\nHost: s\r\nRange: bytes=10-19\r\nIf-Range: \"old\"\r\n\r\n",
        );
        assert!(r.starts_with(b"HTTP/1.1 200 "));
        assert_eq!(raw_body_len(&r), 10_000);
        assert_eq!(h.cat.total_open_refs(), 0);
    }

    #[test]
    fn ranges_416_and_multipart_switch() {
        let mut h = harness(HttpConfig::default());
        let r = h.exchange(b"GET /boot.wim HTTP/1.1\r\nHost: s\r\nRange: bytes=10000-\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 416 "), "{r}");
        assert_eq!(header(&r, "content-range"), Some("bytes */10000"));
        assert_eq!(header(&r, "content-length"), Some("0"));
        let r = h.exchange(b"GET /boot.wim HTTP/1.1\r\nHost: s\r\nRange: bytes=0-0,-1\r\n\r\n");
        assert!(
            header(&r, "content-type")
                .is_some_and(|t| t.starts_with("multipart/byteranges; boundary="))
        );
        let r = h.exchange(b"GET /empty HTTP/1.1\r\nHost: s\r\n\r\n");
        assert_eq!(header(&r, "content-length"), Some("0"));
        assert!(!h.closed);

        let mut h = harness(HttpConfig {
            multipart: false,
            ..HttpConfig::default()
        });
        let r = h.exchange_raw(b"GET /boot.wim HTTP/1.1\r\nHost: s\r\nRange: bytes=0-0,-1\r\n\r\n");
        assert!(r.starts_with(b"HTTP/1.1 200 "));
        assert_eq!(raw_body_len(&r), 10_000);
        assert_eq!(h.cat.total_open_refs(), 0);
    }

    #[test]
    fn bad_heads_get_their_status_and_close() {
        for (raw, status) in [
            (&b"POST / HTTP/1.1\r\nHost: s\r\n\r\n"[..], "405"),
            (b"GET / HTTP/1.1\r\n\r\n", "400"),
            (b"GET / HTTP/3.0\r\nHost: s\r\n\r\n", "505"),
            (b"\x16\x03\x01\x00\xa5\x01\x00", "400"),
        ] {
            let mut h = harness(HttpConfig::default());
            let r = h.exchange(raw);
            assert!(r.starts_with(&format!("HTTP/1.1 {status} ")), "{r}");
            assert_eq!(header(&r, "connection"), Some("close"));
            assert!(h.closed);
            if status == "405" {
                assert_eq!(header(&r, "allow"), Some("GET, HEAD"));
            }
        }
        // An oversized header arriving in pieces: 431 once the limit is passed.
        let mut h = harness(HttpConfig::default());
        assert_eq!(h.input(b"GET / HTTP/1.1\r\nHost: s\r\nX-Big: "), 32);
        let chunk = [b'a'; 1000];
        for _ in 0..9 {
            h.input(&chunk);
        }
        let r = String::from_utf8_lossy(&h.drain()).into_owned();
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        assert!(h.closed);
    }

    #[test]
    fn slowloris_is_cut_at_the_header_deadline() {
        let mut h = harness(HttpConfig::default());
        let start = h.now;
        h.input(b"GET /boot.wim HTTP/1.1\r\n");
        assert_eq!(h.conn.poll_timeout(), Some(start + Duration::from_secs(10)));
        for i in 1..10 {
            h.now = start + Duration::from_secs(i);
            h.input(b"X: y\r\n");
            h.conn.handle_timeout(h.now);
            assert!(h.drain().is_empty());
        }
        h.now = start + Duration::from_secs(10);
        h.conn.handle_timeout(h.now);
        let r = String::from_utf8_lossy(&h.drain()).into_owned();
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
        assert_eq!(header(&r, "date"), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert!(h.closed);
        assert_eq!(
            h.conn.poll_event(),
            Some(HttpEvent::TimedOut { timer: Timer::Head })
        );
    }

    /// Issue 13, defect 6: a connection that never sent a byte waited the 60 s idle timeout,
    /// so 520 silent sockets held the web port's 512 slots for a minute.
    #[test]
    fn a_silent_new_connection_gets_the_header_timeout() {
        let mut h = harness(HttpConfig::default());
        let start = h.now;
        let deadline = start + Duration::from_secs(10);
        assert_eq!(h.conn.poll_timeout(), Some(deadline));
        h.conn.handle_timeout(deadline - Duration::from_millis(1));
        assert!(h.drain().is_empty() && !h.closed);
        h.conn.handle_timeout(deadline);
        assert!(h.drain().is_empty(), "nothing was asked: no 408");
        assert!(h.closed);
        assert_eq!(
            h.conn.poll_event(),
            Some(HttpEvent::TimedOut {
                timer: Timer::FirstRequest
            })
        );
        // An idle timeout shorter than the header timeout still applies from the start.
        let h = harness(HttpConfig {
            idle_timeout_ms: 3_000,
            ..HttpConfig::default()
        });
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(3)));
        // After a first request, the keep-alive wait is the idle timeout.
        let mut h = harness(HttpConfig::default());
        h.now += Duration::from_secs(2);
        h.exchange(b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n");
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    }

    /// Issue 13, defect 5: with a response queued the connection set no timer, so clients
    /// that asked for a big file and never read held their connections (and the cap) forever.
    #[test]
    fn a_client_that_stops_reading_is_dropped_at_the_send_deadline() {
        let mut h = harness(HttpConfig::default());
        let send_timeout = Duration::from_secs(30);
        h.input(b"GET /boot.wim HTTP/1.1\r\nHost: s\r\n\r\n");
        // Queued, nothing handed out yet: the send timer runs from the request.
        assert_eq!(h.conn.poll_timeout(), Some(h.now + send_timeout));
        let mut buf = [0u8; 4096];
        assert!(matches!(
            h.conn.poll_output(&mut buf),
            Some(Output::Bytes { .. })
        ));
        assert!(matches!(
            h.conn.poll_output(&mut buf),
            Some(Output::Body { .. })
        ));
        // The socket takes part of the body now and then: each time the deadline moves.
        for _ in 0..3 {
            h.now += Duration::from_secs(20);
            h.conn.handle_timeout(h.now);
            assert!(!h.conn.is_closed());
            h.conn.handle_send_progress(h.now);
            assert_eq!(h.conn.poll_timeout(), Some(h.now + send_timeout));
        }
        // Then it takes nothing more.
        let deadline = h.now + send_timeout;
        h.conn.handle_timeout(deadline - Duration::from_millis(1));
        assert!(!h.conn.is_closed());
        h.conn.handle_timeout(deadline);
        assert!(h.conn.is_closed());
        assert_eq!(h.conn.poll_output(&mut buf), None, "nothing more to send");
        assert_eq!(h.conn.poll_timeout(), None);
        assert_eq!(
            h.conn.poll_event(),
            Some(HttpEvent::TimedOut { timer: Timer::Send })
        );
        assert_eq!(
            h.conn.poll_event(),
            None,
            "the stalled response was not served"
        );
        h.conn.abort(&mut h.cat);
        assert_eq!(h.cat.total_open_refs(), 0);
    }

    #[test]
    fn the_send_timer_covers_output_handed_out_until_flushed() {
        let mut h = harness(HttpConfig {
            send_timeout_ms: 5_000,
            ..HttpConfig::default()
        });
        let start = h.now;
        // A generated response is popped from the queue as its bytes are handed out; until
        // the caller reports them flushed the send timer runs, not the idle one.
        h.input(b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n");
        assert!(!h.drain_unflushed().is_empty());
        assert_eq!(h.conn.poll_timeout(), Some(start + Duration::from_secs(5)));
        h.now += Duration::from_secs(4);
        h.conn.handle_flushed(h.now);
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(60)));
        // A "close" response: `Close` is handed out with its bytes unflushed, and the
        // deadline still holds while the caller writes them.
        h.input(b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
        assert!(!h.drain_unflushed().is_empty() && h.closed);
        let deadline = h.now + Duration::from_secs(5);
        assert_eq!(h.conn.poll_timeout(), Some(deadline));
        h.conn.handle_timeout(deadline);
        assert_eq!(
            std::iter::from_fn(|| h.conn.poll_event()).last(),
            Some(HttpEvent::TimedOut { timer: Timer::Send })
        );
        assert_eq!(h.conn.poll_timeout(), None);
        // A 408 that the client never reads is dropped at the send deadline too.
        let mut h = harness(HttpConfig {
            send_timeout_ms: 5_000,
            ..HttpConfig::default()
        });
        h.input(b"GET /boot.wim HTTP/1.1\r\n");
        h.now += Duration::from_secs(10);
        h.conn.handle_timeout(h.now);
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(5)));
        h.now += Duration::from_secs(5);
        h.conn.handle_timeout(h.now);
        assert!(h.conn.is_closed());
    }

    #[test]
    fn idle_keep_alive_connection_closes_silently() {
        let mut h = harness(HttpConfig::default());
        h.now += Duration::from_secs(5);
        h.exchange(b"GET /Boot/BCD HTTP/1.1\r\nHost: s\r\n\r\n");
        let deadline = h.now + Duration::from_secs(60);
        assert_eq!(h.conn.poll_timeout(), Some(deadline));
        h.conn.handle_timeout(deadline - Duration::from_millis(1));
        assert!(h.drain().is_empty() && !h.closed);
        h.conn.handle_timeout(deadline);
        assert!(h.drain().is_empty());
        assert!(h.closed);
    }

    #[test]
    fn abort_mid_body_releases_refs() {
        let mut h = harness(HttpConfig::default());
        h.input(
            b"GET /boot.wim HTTP/1.1\r\nHost: s\r\n\r\nGET /boot.wim HTTP/1.1\r\nHost: s\r\n\r\n",
        );
        assert_eq!(h.cat.total_open_refs(), 2);
        let mut buf = [0u8; 4096];
        assert!(matches!(
            h.conn.poll_output(&mut buf),
            Some(Output::Bytes { .. })
        ));
        assert!(matches!(
            h.conn.poll_output(&mut buf),
            Some(Output::Body { .. })
        ));
        assert_eq!(h.conn.poll_output(&mut buf), None, "waits for body_done");
        h.conn.abort(&mut h.cat);
        assert_eq!(h.cat.total_open_refs(), 0);
        assert!(h.conn.is_closed());
    }

    #[test]
    fn random_input_never_panics_and_never_leaks() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let seeds: [&[u8]; 4] = [
            b"GET /boot.wim HTTP/1.1\r\nHost: s\r\nRange: bytes=0-5,7-9,-3\r\n\r\n",
            b"HEAD /Boot/BCD HTTP/1.0\r\nIf-None-Match: *\r\n\r\n",
            b"GET /boot.wim HTTP/1.1\r\nHost: s\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\nRange: bytes=1-\r\n\r\n",
            b"\r\nGET /%2e%2e/x?mac=1 HTTP/1.1\r\nHost: [::1]:80\r\nConnection: keep-alive, close\r\n\r\n",
        ];
        let config = HttpConfig {
            max_header_bytes: 512,
            max_request_line: 128,
            ..HttpConfig::default()
        };
        for _ in 0..1500 {
            let mut h = harness(config.clone());
            for _ in 0..rng.random_range(1..6) {
                let mut data = seeds[rng.random_range(0..seeds.len())].to_vec();
                let mutations = rng.random_range(0..6);
                for _ in 0..mutations {
                    let i = rng.random_range(0..data.len());
                    match rng.random_range(0..3) {
                        0 => data[i] = rng.random(),
                        1 => {
                            data.remove(i);
                        }
                        _ => data.insert(i, rng.random()),
                    }
                }
                if rng.random_bool(0.2) {
                    data = (0..rng.random_range(0..300))
                        .map(|_| rng.random())
                        .collect();
                }
                let mut offset = 0;
                while offset < data.len() {
                    let end = (offset + rng.random_range(1..64)).min(data.len());
                    let n = h.input(&data[offset..end]);
                    offset += n;
                    h.drain();
                    if n == 0 && !h.conn.wants_input() {
                        break;
                    }
                }
                h.now += Duration::from_millis(rng.random_range(0..20_000));
                h.conn.handle_timeout(h.now);
                h.drain();
            }
            if rng.random_bool(0.5) {
                h.conn.handle_eof(h.now);
                h.drain();
                assert!(h.conn.is_closed());
            }
            h.conn.abort(&mut h.cat);
            assert_eq!(h.cat.total_open_refs(), 0);
        }
    }
}
