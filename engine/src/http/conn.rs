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
//! - Timers: [`poll_timeout`](HttpConnection::poll_timeout) /
//!   [`handle_timeout`](HttpConnection::handle_timeout). The connection only times the client:
//!   the idle gap between requests and the time to send one request head (slowloris). While a
//!   response is queued it sets no timer; send stalls are the platform's business.
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
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Most range-specs honoured in one `Range` header; more and the header is ignored (200).
    pub max_ranges: usize,
    /// Answer multi-range requests with `multipart/byteranges`; off: 200 with the whole file.
    pub multipart: bool,
    /// Responses queued before the connection stops reading pipelined requests.
    pub max_pipelined: usize,
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
            max_ranges: 16,
            multipart: true,
            max_pipelined: 8,
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
        status: StatusCode,
        /// Content bytes sent (0 for HEAD, 304, ...).
        bytes: u64,
    },
    /// The client took too long: idle (`reading_head == false`) or sending a head.
    TimedOut { reading_head: bool },
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
    /// Latest time passed in; stamps completions reported without one.
    last_now: Instant,
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
            last_now: now,
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
                    return Some(Output::Body { image, range });
                }
            }
        }
        if written > 0 {
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
        self.body_in_flight = false;
        if let Some(front) = self.queue.front_mut() {
            front.chunks.pop_front();
            front.offset = 0;
            if front.chunks.is_empty() {
                self.finish_front_with(images);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        let reading_head = self.head_started.is_some();
        self.events.push_back(HttpEvent::TimedOut { reading_head });
        self.head_buf = Vec::new();
        self.head_started = None;
        if reading_head {
            //= https://www.rfc-editor.org/rfc/rfc9110#section-15.5.9
            //# The 408 (Request Timeout) status code indicates that the server did not receive a
            //# complete request message within the time that it was prepared to wait.
            let planned = handler::plan_error(StatusCode::REQUEST_TIMEOUT, SystemTime::UNIX_EPOCH);
            self.enqueue(planned, None, String::new(), false, Version::Http11);
        }
        self.state = State::Closing;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Open || !self.queue.is_empty() {
            return None;
        }
        Some(match self.head_started {
            Some(start) => start + Duration::from_millis(self.config.header_timeout_ms),
            None => self.idle_since + Duration::from_millis(self.config.idle_timeout_ms),
        })
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
        let path = truncate(req.path, 256);
        self.enqueue(planned, Some(req.method), path, keep_alive, req.version);
        if !keep_alive {
            self.state = State::Closing;
        }
    }

    /// Answers a head that could not be parsed, then closes: its framing cannot be trusted.
    fn refuse(&mut self, error: RequestError, wall: SystemTime) {
        self.head_buf = Vec::new();
        self.head_started = None;
        let planned = handler::plan_error(error.status(), wall);
        self.enqueue(planned, None, String::new(), false, Version::Http11);
        self.state = State::Closing;
    }

    fn enqueue(
        &mut self,
        mut planned: Planned,
        method: Option<Method>,
        path: String,
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
        self.queue.push_back(Pending {
            chunks: planned.body,
            offset: 0,
            image: planned.image,
            close_after: !keep_alive,
            event: HttpEvent::Served {
                method,
                path,
                status: planned.head.status,
                bytes,
            },
        });
    }

    /// Completes the front response; it holds no image (see `serve`).
    fn finish_front(&mut self) {
        if let Some(p) = self.queue.pop_front() {
            debug_assert!(p.image.is_none());
            self.complete(p.event, p.close_after);
        }
    }

    fn finish_front_with(&mut self, images: &mut dyn ImageCatalog) {
        if let Some(p) = self.queue.pop_front() {
            if let Some(id) = p.image {
                images.close(id);
            }
            self.complete(p.event, p.close_after);
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

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}
