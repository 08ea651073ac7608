//! [`HttpClient`]: the client side of one keep-alive HTTP/1.1 connection, sans-IO. Used by the
//! load generator and tests to download boot files and check every byte.
//!
//! Requests are queued with [`get`](HttpClient::get) / [`head`](HttpClient::head), written out
//! by [`poll_transmit`](HttpClient::poll_transmit) (pipelined up to a limit), and answered in
//! order. Body bytes are never copied: [`ClientEvent::Delivered`] indexes into the slice passed
//! to [`handle_input`](HttpClient::handle_input). Bodies must be framed by `Content-Length` or by
//! the connection closing; chunked responses are refused with [`ClientError::Chunked`].

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::Range;

use super::response::StatusCode;
use crate::image::ByteRange;

/// Most bytes of a response head the client buffers.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What a response said, for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A final response head arrived for `request`.
    Response {
        request: u64,
        status: StatusCode,
        content_length: Option<u64>,
        content_range: Option<ContentRange>,
        content_type: Option<String>,
        etag: Option<String>,
    },
    /// Body bytes of `request`: `data[range]` of the slice just passed in, which sits at
    /// `offset` in the resource (a 206's Content-Range start; 0 otherwise).
    Delivered {
        request: u64,
        offset: u64,
        range: Range<usize>,
    },
    /// The response to `request` is complete.
    Finished { request: u64 },
    /// The connection is done (the server closed or said it would); these requests were never
    /// answered and may be retried on a new connection.
    Closed { unanswered: Vec<u64> },
}

/// A parsed `Content-Range: bytes a-b/len` or `bytes */len`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ContentRange {
    /// The bytes carried, half-open; `None` for `*/len` (416).
    pub range: Option<ByteRange>,
    /// The full length, when the server knows it.
    pub complete_len: Option<u64>,
}

/// Why the connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response uses Transfer-Encoding (chunked), which this client does not read")]
    Chunked,
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("connection closed with {missing} body bytes missing")]
    Truncated { missing: u64 },
    #[error("response received with no request outstanding")]
    Unsolicited,
}

#[derive(Clone, Debug)]
struct Queued {
    id: u64,
    head_only: bool,
    bytes: Vec<u8>,
}

#[derive(Copy, Clone, Debug)]
struct Sent {
    id: u64,
    head_only: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Recv {
    Head,
    Body {
        request: u64,
        /// `None`: until the connection closes.
        remaining: Option<u64>,
        offset: u64,
        close_after: bool,
    },
    Closed,
}

/// The client side of one connection.
#[derive(Debug)]
pub struct HttpClient {
    max_in_flight: usize,
    next_id: u64,
    queued: VecDeque<Queued>,
    in_flight: VecDeque<Sent>,
    /// Request bytes being written out, and how many were.
    out: Vec<u8>,
    out_offset: usize,
    head_buf: Vec<u8>,
    recv: Recv,
}

impl HttpClient {
    /// `max_in_flight`: requests written before their responses arrive (1 = no pipelining).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            next_id: 0,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            out: Vec::new(),
            out_offset: 0,
            head_buf: Vec::new(),
            recv: Recv::Head,
        }
    }

    /// Queues `GET path` (an origin-form target, `/...`); `range` asks for those bytes
    /// (`end == u64::MAX`: to the end). Returns the request id used in events.
    pub fn get(&mut self, path: &str, host: &str, range: Option<ByteRange>) -> u64 {
        self.queue("GET", path, host, range)
    }

    pub fn head(&mut self, path: &str, host: &str) -> u64 {
        self.queue("HEAD", path, host, None)
    }

    fn queue(&mut self, method: &str, path: &str, host: &str, range: Option<ByteRange>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = format!("{method} ");
        for b in path.bytes() {
            if (0x21..0x7f).contains(&b) {
                req.push(char::from(b));
            } else {
                let _ = write!(req, "%{b:02X}");
            }
        }
        let host: String = host.chars().filter(|c| c.is_ascii_graphic()).collect();
        let _ = write!(req, " HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zpxe\r\n");
        if let Some(r) = range {
            if r.end == u64::MAX {
                let _ = write!(req, "Range: bytes={}-\r\n", r.start);
            } else {
                let _ = write!(
                    req,
                    "Range: bytes={}-{}\r\n",
                    r.start,
                    r.end.saturating_sub(1)
                );
            }
        }
        req.push_str("\r\n");
        self.queued.push_back(Queued {
            id,
            head_only: method == "HEAD",
            bytes: req.into_bytes(),
        });
        id
    }

    /// Writes request bytes into `buf`; `None` when there is nothing to send now.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.recv == Recv::Closed {
            return None;
        }
        let mut written = 0;
        loop {
            if self.out_offset >= self.out.len() {
                if self.in_flight.len() >= self.max_in_flight {
                    break;
                }
                let Some(q) = self.queued.pop_front() else {
                    break;
                };
                self.in_flight.push_back(Sent {
                    id: q.id,
                    head_only: q.head_only,
                });
                self.out = q.bytes;
                self.out_offset = 0;
            }
            let src = self.out.get(self.out_offset..).unwrap_or_default();
            let dst = buf.get_mut(written..).unwrap_or_default();
            let n = src.len().min(dst.len());
            if n == 0 {
                break;
            }
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            written += n;
            self.out_offset += n;
        }
        (written > 0).then_some(written)
    }

    /// Whether every queued request was answered.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty() && self.out_offset >= self.out.len()
    }

    pub fn is_closed(&self) -> bool {
        self.recv == Recv::Closed
    }

    /// Feeds received bytes; every byte is consumed. Events refer to ranges of `data`.
    pub fn handle_input(
        &mut self,
        data: &[u8],
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        let mut pos = 0;
        while pos < data.len() {
            match self.recv {
                Recv::Closed => break,
                Recv::Head => {
                    let rest = data.get(pos..).unwrap_or_default();
                    let old = self.head_buf.len();
                    let take = rest.len().min(MAX_RESPONSE_HEAD + 4 - old);
                    self.head_buf
                        .extend_from_slice(rest.get(..take).unwrap_or_default());
                    let buf = std::mem::take(&mut self.head_buf);
                    match parse_head(&buf)? {
                        Some((head, n)) => {
                            pos += n.saturating_sub(old);
                            self.start_response(head, events)?;
                        }
                        None if buf.len() > MAX_RESPONSE_HEAD => {
                            return Err(ClientError::HeadTooLarge);
                        }
                        None => {
                            self.head_buf = buf;
                            pos += take;
                        }
                    }
                }
                Recv::Body {
                    request,
                    remaining,
                    offset,
                    close_after,
                } => {
                    let available = (data.len() - pos) as u64;
                    let take = remaining.map_or(available, |r| r.min(available));
                    let end = pos + take as usize;
                    events.push(ClientEvent::Delivered {
                        request,
                        offset,
                        range: pos..end,
                    });
                    pos = end;
                    let remaining = remaining.map(|r| r - take);
                    if remaining == Some(0) {
                        self.finish(request, close_after, events);
                    } else {
                        self.recv = Recv::Body {
                            request,
                            remaining,
                            offset: offset + take,
                            close_after,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self, events: &mut Vec<ClientEvent>) -> Result<(), ClientError> {
        match self.recv {
            Recv::Body {
                request,
                remaining: None,
                ..
            } => self.finish(request, true, events),
            Recv::Body {
                remaining: Some(missing),
                ..
            } => {
                self.close(events);
                return Err(ClientError::Truncated { missing });
            }
            Recv::Head => self.close(events),
            Recv::Closed => {}
        }
        Ok(())
    }

    fn start_response(
        &mut self,
        head: ResponseHead,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        // Interim responses (100 Continue, ...) precede the real one.
        if head.status.0 < 200 {
            return Ok(());
        }
        let sent = self.in_flight.pop_front().ok_or(ClientError::Unsolicited)?;
        //= https://www.rfc-editor.org/rfc/rfc9112#section-6.3
        //# Any response to a HEAD request and any response with a 1xx (Informational), 204 (No
        //# Content), or 304 (Not Modified) status code is always terminated by the first empty
        //# line after the header fields
        let no_body = sent.head_only || !head.status.has_body();
        if !no_body && head.chunked {
            return Err(ClientError::Chunked);
        }
        let offset = match (head.status, head.content_range) {
            (StatusCode::PARTIAL_CONTENT, Some(ContentRange { range: Some(r), .. })) => r.start,
            _ => 0,
        };
        events.push(ClientEvent::Response {
            request: sent.id,
            status: head.status,
            content_length: head.content_length,
            content_range: head.content_range,
            content_type: head.content_type,
            etag: head.etag,
        });
        let remaining = if no_body {
            Some(0)
        } else {
            head.content_length
        };
        if remaining == Some(0) {
            self.finish(sent.id, head.close, events);
        } else {
            self.recv = Recv::Body {
                request: sent.id,
                remaining,
                offset,
                close_after: head.close || remaining.is_none(),
            };
        }
        Ok(())
    }

    fn finish(&mut self, request: u64, close_after: bool, events: &mut Vec<ClientEvent>) {
        events.push(ClientEvent::Finished { request });
        self.recv = Recv::Head;
        if close_after {
            self.close(events);
        }
    }

    fn close(&mut self, events: &mut Vec<ClientEvent>) {
        let unanswered: Vec<u64> = self
            .in_flight
            .drain(..)
            .map(|s| s.id)
            .chain(self.queued.drain(..).map(|q| q.id))
            .collect();
        self.recv = Recv::Closed;
        events.push(ClientEvent::Closed { unanswered });
    }
}

#[derive(Clone, Debug)]
struct ResponseHead {
    status: StatusCode,
    content_length: Option<u64>,
    content_range: Option<ContentRange>,
    content_type: Option<String>,
    etag: Option<String>,
    chunked: bool,
    close: bool,
}

/// Parses a response head from the start of `buf`; `None` until it is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ClientError> {
    let Some(end) = head_end(buf) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(buf.get(..end).unwrap_or_default())
        .map_err(|_| ClientError::Malformed("head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    //= https://www.rfc-editor.org/rfc/rfc9112#section-4
    //# status-line = HTTP-version SP status-code SP [ reason-phrase ]
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ClientError::Malformed("status line version")),
    };
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ClientError::Malformed("status code"));
    }
    let mut head = ResponseHead {
        status: StatusCode(
            code.parse()
                .map_err(|_| ClientError::Malformed("status code"))?,
        ),
        content_length: None,
        content_range: None,
        content_type: None,
        etag: None,
        chunked: false,
        close: false,
    };
    let mut keep_alive_10 = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(ClientError::Malformed("header line"))?;
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let len = value
                    .parse::<u64>()
                    .map_err(|_| ClientError::Malformed("Content-Length"))?;
                if head.content_length.is_some_and(|l| l != len) {
                    return Err(ClientError::Malformed("conflicting Content-Length"));
                }
                head.content_length = Some(len);
            }
            "content-range" => head.content_range = Some(parse_content_range(value)?),
            "content-type" => head.content_type = Some(value.to_owned()),
            "etag" => head.etag = Some(value.to_owned()),
            "transfer-encoding" => head.chunked = true,
            "connection" => {
                for opt in value.split(',').map(|o| o.trim().to_ascii_lowercase()) {
                    head.close |= opt == "close";
                    keep_alive_10 |= opt == "keep-alive";
                }
            }
            _ => {}
        }
    }
    head.close |= http10 && !keep_alive_10;
    Ok(Some((head, end)))
}

/// Index just past the empty line ending the head.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = buf.get(line_start..i).unwrap_or_default();
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-14.4
//# Content-Range       = range-unit SP ( range-resp / unsatisfied-range )
/// Parses `bytes first-last/complete` (complete may be `*`) or `bytes */complete`.
pub fn parse_content_range(value: &str) -> Result<ContentRange, ClientError> {
    let bad = ClientError::Malformed("Content-Range");
    let rest = value.strip_prefix("bytes ").ok_or_else(|| bad.clone())?;
    let (range, complete) = rest.split_once('/').ok_or_else(|| bad.clone())?;
    let complete_len = match complete {
        "*" => None,
        n => Some(n.parse::<u64>().map_err(|_| bad.clone())?),
    };
    let range = match range {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-').ok_or_else(|| bad.clone())?;
            let a = a.parse::<u64>().map_err(|_| bad.clone())?;
            let b = b.parse::<u64>().map_err(|_| bad.clone())?;
            if b < a || complete_len.is_some_and(|l| b >= l) {
                return Err(bad);
            }
            Some(ByteRange::new(
                a,
                b.checked_add(1).ok_or_else(|| bad.clone())?,
            ))
        }
    };
    Ok(ContentRange {
        range,
        complete_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_requests_and_reads_a_split_response() {
        let mut c = HttpClient::new(2);
        let a = c.get("/boot wim", "10.0.0.1:8050", Some(ByteRange::new(5, 10)));
        let b = c.head("/x", "h");
        let _queued = c.get("/y", "h", Some(ByteRange::new(7, u64::MAX)));
        let mut buf = [0u8; 1024];
        let n = c.poll_transmit(&mut buf).expect("requests");
        let text = std::str::from_utf8(&buf[..n]).expect("ascii");
        assert_eq!(
            text,
            "GET /boot%20wim HTTP/1.1\r\nHost: 10.0.0.1:8050\r\nUser-Agent: zpxe\r\nRange: bytes=5-9\r\n\r\n\
             HEAD /x HTTP/1.1\r\nHost: h\r\nUser-Agent: zpxe\r\n\r\n",
            "two in flight at most"
        );
        let resp = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-9/100\r\nContent-Length: 5\r\n\r\nfghijHTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let mut events = Vec::new();
        for chunk in resp.chunks(7) {
            c.handle_input(chunk, &mut events).expect("valid");
        }
        let delivered: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Delivered {
                    request,
                    offset,
                    range,
                } => Some((*request, *offset, range.len())),
                _ => None,
            })
            .collect();
        let total: usize = delivered.iter().map(|d| d.2).sum();
        assert_eq!(total, 5);
        assert_eq!(
            delivered[0].1, 5,
            "offset starts at the Content-Range start"
        );
        assert!(events.contains(&ClientEvent::Finished { request: a }));
        assert!(
            events.contains(&ClientEvent::Finished { request: b }),
            "HEAD has no body"
        );
        let n = c.poll_transmit(&mut buf).expect("third request");
        assert!(
            std::str::from_utf8(&buf[..n])
                .expect("ascii")
                .contains("Range: bytes=7-\r\n")
        );
    }

    #[test]
    fn refuses_chunked_and_reports_truncation_and_close() {
        let mut c = HttpClient::new(4);
        c.get("/a", "h", None);
        let mut buf = [0u8; 256];
        c.poll_transmit(&mut buf);
        let mut ev = Vec::new();
        assert_eq!(
            c.handle_input(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &mut ev
            ),
            Err(ClientError::Chunked)
        );

        let mut c = HttpClient::new(4);
        c.get("/a", "h", None);
        let second = c.get("/b", "h", None);
        c.poll_transmit(&mut buf);
        let mut ev = Vec::new();
        c.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", &mut ev)
            .expect("ok");
        assert_eq!(
            c.handle_eof(&mut ev),
            Err(ClientError::Truncated { missing: 7 })
        );
        assert_eq!(
            ev.last(),
            Some(&ClientEvent::Closed {
                unanswered: vec![second]
            })
        );

        // HTTP/1.0 without Content-Length: the body runs to the close.
        let mut c = HttpClient::new(1);
        let id = c.get("/a", "h", None);
        c.poll_transmit(&mut buf);
        let mut ev = Vec::new();
        c.handle_input(b"HTTP/1.0 200 OK\r\n\r\nall of it", &mut ev)
            .expect("ok");
        c.handle_eof(&mut ev).expect("clean end");
        assert!(ev.contains(&ClientEvent::Finished { request: id }));
        assert!(c.is_closed());
    }

    #[test]
    fn content_range_forms() {
        let r = parse_content_range("bytes 0-0/10").expect("valid");
        assert_eq!(
            (r.range, r.complete_len),
            (Some(ByteRange::new(0, 1)), Some(10))
        );
        let r = parse_content_range("bytes */10").expect("valid");
        assert_eq!((r.range, r.complete_len), (None, Some(10)));
        assert!(parse_content_range("bytes 5-4/10").is_err());
        assert!(parse_content_range("bytes 0-10/10").is_err());
        assert!(parse_content_range("items 0-1/2").is_err());
        assert!(parse_content_range("bytes 0-18446744073709551615/*").is_err());
    }
}
