//! The request head parser: request line and header fields over a byte buffer.
//!
//! Incremental in the simplest way: it returns `Ok(None)` until a whole head (up to the empty
//! line) is in the buffer, and the caller calls it again with more bytes. Limits are checked on
//! partial input too, so a peer can never make the caller buffer more than the configured head
//! size. Request bodies are never read on this port: a request that announces one is refused.

use super::response::StatusCode;

/// Size limits for one request head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request line (method, target, version), without the line ending.
    pub max_request_line: usize,
    /// Most bytes in the header section (after the request line, up to the empty line).
    pub max_header_bytes: usize,
    /// Most header field lines.
    pub max_headers: usize,
}

impl HeadLimits {
    /// Most bytes a caller ever needs to buffer for one head.
    pub fn max_head_bytes(&self) -> usize {
        MAX_LEADING_EMPTY_LINES * 2 + self.max_request_line + 2 + self.max_header_bytes + 2
    }
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_request_line: 2048,
            max_header_bytes: 8192,
            max_headers: 64,
        }
    }
}

//= https://www.rfc-editor.org/rfc/rfc9112#section-2.2
//# In the interest of robustness, a server that is expecting to receive and parse a
//# request-line SHOULD ignore at least one empty line (CRLF) received prior to the
//# request-line.
const MAX_LEADING_EMPTY_LINES: usize = 4;

/// The methods this server serves.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// The protocol versions this server speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Why a request head was refused; each maps to the status code the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("method not implemented")]
    NotImplemented,
    #[error("request line too long")]
    UriTooLong,
    #[error("header section too large")]
    HeadersTooLarge,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("request body not accepted")]
    ContentTooLarge,
}

impl RequestError {
    pub fn status(self) -> StatusCode {
        match self {
            RequestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RequestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            RequestError::UriTooLong => StatusCode::URI_TOO_LONG,
            RequestError::HeadersTooLarge => StatusCode::HEADER_FIELDS_TOO_LARGE,
            RequestError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            RequestError::ContentTooLarge => StatusCode::CONTENT_TOO_LARGE,
        }
    }
}

/// One header field line.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    /// The value without leading and trailing whitespace.
    pub value: &'a str,
}

/// A parsed request head, borrowing from the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    pub version: Version,
    /// The request target as sent (origin-form, or the path part of an absolute-form target).
    pub target: &'a str,
    /// The target before `?`, still percent-encoded.
    pub path: &'a str,
    /// The target after `?`, if any.
    pub query: Option<&'a str>,
    headers: Vec<Header<'a>>,
}

impl<'a> Request<'a> {
    /// Parses one request head from the start of `buf`. `Ok(None)`: more bytes needed.
    /// `Ok(Some((request, n)))`: the head took the first `n` bytes.
    pub fn parse(
        buf: &'a [u8],
        limits: &HeadLimits,
    ) -> Result<Option<(Request<'a>, usize)>, RequestError> {
        let mut pos = 0;
        let mut skipped = 0;
        loop {
            match buf.get(pos..) {
                Some([b'\r', b'\n', ..]) => pos += 2,
                Some([b'\n', ..]) => pos += 1,
                Some([b'\r']) => return Ok(None),
                _ => break,
            }
            skipped += 1;
            if skipped > MAX_LEADING_EMPTY_LINES {
                return Err(RequestError::BadRequest("too many empty lines"));
            }
        }
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(line_len) = rest.iter().position(|&b| b == b'\n') else {
            check_partial_request_line(rest, limits)?;
            return Ok(None);
        };
        let line = strip_cr(rest.get(..line_len).unwrap_or_default())?;
        if line.len() > limits.max_request_line {
            return Err(RequestError::UriTooLong);
        }
        let headers_start = pos + line_len + 1;
        let (method, target, version) = parse_request_line(line)?;

        let mut headers = Vec::new();
        let mut at = headers_start;
        let end = loop {
            let rest = buf.get(at..).unwrap_or_default();
            let Some(len) = rest.iter().position(|&b| b == b'\n') else {
                if at + rest.len() - headers_start > limits.max_header_bytes {
                    return Err(RequestError::HeadersTooLarge);
                }
                return Ok(None);
            };
            if at + len - headers_start > limits.max_header_bytes {
                return Err(RequestError::HeadersTooLarge);
            }
            let line = strip_cr(rest.get(..len).unwrap_or_default())?;
            at += len + 1;
            if line.is_empty() {
                break at;
            }
            if headers.len() >= limits.max_headers {
                return Err(RequestError::HeadersTooLarge);
            }
            headers.push(parse_header_line(line)?);
        };

        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let request = Request {
            method: method?,
            version,
            target,
            path,
            query,
            headers,
        };
        request.check_fields()?;
        Ok(Some((request, end)))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The `Host` field split into host and port; `None` without one. A request with an
    /// invalid one never parses, so this is `Some` whenever the field is present.
    pub fn host(&self) -> Option<HostPort<'a>> {
        self.header("host").and_then(HostPort::parse)
    }

    /// How many lines carry header `name`.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn headers(&self) -> impl Iterator<Item = &Header<'a>> {
        self.headers.iter()
    }

    /// Whether a `Connection` header lists `option` (case-insensitive).
    pub fn has_connection_option(&self, option: &str) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(','))
            .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(option))
    }

    //= https://www.rfc-editor.org/rfc/rfc9112#section-9.3
    //# If the "close" connection option is present, the connection will not persist after the
    //# current response; else, If the received protocol is HTTP/1.1 (or later), the connection
    //# will persist after the current response; else, If the received protocol is HTTP/1.0,
    //# the "keep-alive" connection option is present, ... the connection will persist
    /// Whether the client lets the connection persist after this request.
    pub fn keep_alive(&self) -> bool {
        if self.has_connection_option("close") {
            return false;
        }
        match self.version {
            Version::Http11 => true,
            Version::Http10 => self.has_connection_option("keep-alive"),
        }
    }

    fn check_fields(&self) -> Result<(), RequestError> {
        //= https://www.rfc-editor.org/rfc/rfc9112#section-3.2
        //# A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request
        //# message that lacks a Host header field and to any request message that contains more
        //# than one Host header field line or a Host header field with an invalid field value.
        match (self.header_count("host"), self.version) {
            (0, Version::Http11) => return Err(RequestError::BadRequest("missing Host")),
            (0, _) => {}
            (1, _) => {
                if !self.header("host").is_some_and(valid_host) {
                    return Err(RequestError::BadRequest("invalid Host"));
                }
            }
            _ => return Err(RequestError::BadRequest("more than one Host")),
        }
        // This port never reads request bodies, so a request that announces one would leave
        // body bytes that the next head parse would misread: refuse it (and close).
        if self.header_count("transfer-encoding") > 0 {
            return Err(RequestError::BadRequest("request body not accepted"));
        }
        match self.header_count("content-length") {
            0 => {}
            1 => {
                let value = self.header("content-length").unwrap_or_default();
                //= https://www.rfc-editor.org/rfc/rfc9110#section-8.6
                //# Content-Length = 1*DIGIT
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(RequestError::BadRequest("invalid Content-Length"));
                }
                if value.bytes().any(|b| b != b'0') {
                    return Err(RequestError::ContentTooLarge);
                }
            }
            _ => return Err(RequestError::BadRequest("more than one Content-Length")),
        }
        Ok(())
    }
}

fn strip_cr(line: &[u8]) -> Result<&[u8], RequestError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    //= https://www.rfc-editor.org/rfc/rfc9112#section-2.2
    //# A sender MUST NOT generate a bare CR (a CR character not immediately followed by LF)
    //# within any protocol elements other than the content. A recipient of such a bare CR MUST
    //# consider that element to be invalid or replace each bare CR with SP before processing
    //# the element or forwarding the message.
    if line.contains(&b'\r') {
        return Err(RequestError::BadRequest("bare CR"));
    }
    Ok(line)
}

/// Refuses an unfinished request line early when it is already too long or cannot be HTTP
/// (a TLS handshake, binary noise), instead of waiting for the limit or the timeout.
fn check_partial_request_line(partial: &[u8], limits: &HeadLimits) -> Result<(), RequestError> {
    let body = partial.strip_suffix(b"\r").unwrap_or(partial);
    if body.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Err(RequestError::BadRequest("not an HTTP request line"));
    }
    if body.len() > limits.max_request_line {
        return Err(RequestError::UriTooLong);
    }
    Ok(())
}

type RequestLine<'a> = (Result<Method, RequestError>, &'a str, Version);

//= https://www.rfc-editor.org/rfc/rfc9112#section-3
//# request-line   = method SP request-target SP HTTP-version
fn parse_request_line(line: &[u8]) -> Result<RequestLine<'_>, RequestError> {
    let line = std::str::from_utf8(line).map_err(|_| RequestError::BadRequest("not ASCII"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(RequestError::BadRequest("invalid method"));
    }
    let version = parse_version(version)?;
    let target = origin_target(target)?;
    //= https://www.rfc-editor.org/rfc/rfc9110#section-9.1
    //# An origin server that receives a request method that is unrecognized or not implemented
    //# SHOULD respond with the 501 (Not Implemented) status code. An origin server that
    //# receives a request method that is recognized and implemented, but not allowed for the
    //# target resource, SHOULD respond with the 405 (Method Not Allowed) status code.
    // The method error is returned only after the head is complete, so that a well-framed 405
    // still consumes exactly its head.
    let method = match method {
        "GET" => Ok(Method::Get),
        "HEAD" => Ok(Method::Head),
        "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" | "TRACE" | "CONNECT" => {
            Err(RequestError::MethodNotAllowed)
        }
        _ => Err(RequestError::NotImplemented),
    };
    Ok((method, target, version))
}

//= https://www.rfc-editor.org/rfc/rfc9112#section-2.3
//# HTTP-version  = HTTP-name "/" DIGIT "." DIGIT
fn parse_version(v: &str) -> Result<Version, RequestError> {
    match v.as_bytes() {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(RequestError::VersionNotSupported)
        }
        _ => Err(RequestError::BadRequest("invalid HTTP version")),
    }
}

/// Reduces a request target to origin-form (`/path?query`).
fn origin_target(target: &str) -> Result<&str, RequestError> {
    if target.is_empty()
        || !target
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'#')
    {
        return Err(RequestError::BadRequest("invalid request target"));
    }
    if target.starts_with('/') {
        return Ok(target);
    }
    //= https://www.rfc-editor.org/rfc/rfc9112#section-3.2.2
    //# A server MUST accept the absolute-form in requests even though most HTTP/1.1 clients
    //# will only send the absolute-form to a proxy.
    let lower_scheme = target.get(..7).map(str::to_ascii_lowercase);
    if lower_scheme.as_deref() == Some("http://") {
        let after = target.get(7..).unwrap_or_default();
        return Ok(after.find('/').and_then(|i| after.get(i..)).unwrap_or("/"));
    }
    Err(RequestError::BadRequest("unsupported request target form"))
}

//= https://www.rfc-editor.org/rfc/rfc9112#section-5
//# field-line   = field-name ":" OWS field-value OWS
fn parse_header_line(line: &[u8]) -> Result<Header<'_>, RequestError> {
    //= https://www.rfc-editor.org/rfc/rfc9112#section-5.2
    //# A server that receives an obs-fold in a request message that is not within a
    //# "message/http" container MUST either reject the message by sending a 400 (Bad Request),
    //# preferably with a representation explaining that obsolete line folding is unacceptable,
    //# or replace each received obs-fold with one or more SP octets prior to interpreting the
    //# field value or forwarding the message downstream.
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(RequestError::BadRequest("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(RequestError::BadRequest("header line without colon"))?;
    let (name, value) = line.split_at(colon);
    let value = value.get(1..).unwrap_or_default();
    //= https://www.rfc-editor.org/rfc/rfc9112#section-5.1
    //# A server MUST reject, with a response status code of 400 (Bad Request), any received
    //# request message that contains whitespace between a header field name and colon.
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(RequestError::BadRequest("invalid header name"));
    }
    let value = trim_ows(value);
    //= https://www.rfc-editor.org/rfc/rfc9110#section-5.5
    //# Field values containing CR, LF, or NUL characters are invalid and dangerous
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(RequestError::BadRequest(
            "control character in header value",
        ));
    }
    let name = std::str::from_utf8(name).map_err(|_| RequestError::BadRequest("header name"))?;
    let value = std::str::from_utf8(value).map_err(|_| RequestError::BadRequest("header value"))?;
    Ok(Header { name, value })
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-5.6.2
//# tchar          = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" /
//# "`" / "|" / "~" / DIGIT / ALPHA
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `Host` field value split into host and port, checked against the grammar: brackets only
/// around a whole IP literal, at most one port, digits only in the port, escapes complete.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// A registered name, an IPv4 address, or an IP literal with its brackets (`[::1]`); empty
    /// when the field is (RFC 9112 section 3.2, targets without an authority).
    pub host: &'a str,
    /// The port digits when the value has a port part (RFC 3986 allows them to be empty).
    pub port: Option<&'a str>,
}

impl<'a> HostPort<'a> {
    //= https://www.rfc-editor.org/rfc/rfc9110#section-7.2
    //# Host = uri-host [ ":" port ] ; Section 4
    //= https://www.rfc-editor.org/rfc/rfc3986#section-3.2.2
    //# host        = IP-literal / IPv4address / reg-name
    //# IP-literal = "[" ( IPv6address / IPvFuture  ) "]"
    /// Splits `value`, or `None` when it is not a host with an optional port. The character set
    /// is narrower than RFC 3986's (no sub-delims): the value is echoed into generated scripts.
    pub fn parse(value: &'a str) -> Option<Self> {
        if value.len() > 255 {
            return None;
        }
        let (host, rest) = if value.starts_with('[') {
            let close = value.find(']')?;
            let (literal, rest) = value.split_at_checked(close + 1)?;
            let inner = literal.get(1..close)?;
            let ok = !inner.is_empty() && host_chars(inner, b"-._~:%");
            (ok.then_some(literal)?, rest)
        } else {
            let (name, rest) = value.split_at_checked(value.find(':').unwrap_or(value.len()))?;
            (host_chars(name, b"-._~%").then_some(name)?, rest)
        };
        //= https://www.rfc-editor.org/rfc/rfc3986#section-3.2.3
        //# port        = *DIGIT
        let port = match rest.strip_prefix(':') {
            None if rest.is_empty() => None,
            Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits),
            _ => return None,
        };
        Some(Self { host, port })
    }
}

/// Whether `s` holds only letters, digits and `extra`, with every `%` starting a whole escape.
fn host_chars(s: &str, extra: &[u8]) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        if b == b'%' {
            //= https://www.rfc-editor.org/rfc/rfc3986#section-2.1
            //# pct-encoded = "%" HEXDIG HEXDIG
            return bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        }
        b.is_ascii_alphanumeric() || extra.contains(&b)
    })
}

/// Whether `host` is a valid `Host` field value (see [`HostPort::parse`]).
pub(crate) fn valid_host(host: &str) -> bool {
    HostPort::parse(host).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits::default()
    }

    fn parse(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, RequestError> {
        Request::parse(buf, &limits())
    }

    fn err(buf: &[u8]) -> RequestError {
        match parse(buf) {
            Err(e) => e,
            Ok(r) => panic!("{:?} parsed: {r:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn parses_a_typical_ipxe_request() {
        let raw = b"GET /boot.ipxe?mac=52:54:00:12:34:56 HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8050\r\n\r\nGET /next";
        let (req, n) = parse(raw).expect("valid").expect("complete");
        assert_eq!(n, raw.len() - b"GET /next".len());
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.version, Version::Http11);
        assert_eq!(req.path, "/boot.ipxe");
        assert_eq!(req.query, Some("mac=52:54:00:12:34:56"));
        assert_eq!(req.header("HOST"), Some("10.0.0.1:8050"));
        assert_eq!(req.header("user-agent"), Some("iPXE/1.21.1"));
        assert!(req.keep_alive());
    }

    #[test]
    fn incomplete_until_the_empty_line() {
        let raw = b"\r\nHEAD /a HTTP/1.0\nHost: x\n\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        let (req, n) = parse(raw).expect("valid").expect("complete");
        assert_eq!(
            (req.method, req.version, n),
            (Method::Head, Version::Http10, raw.len())
        );
        assert!(!req.keep_alive());
    }

    #[test]
    fn absolute_form_target_is_reduced_to_its_path() {
        let raw = b"GET http://host:8050/x/y?z HTTP/1.1\r\nHost: host:8050\r\n\r\n";
        let (req, _) = parse(raw).expect("valid").expect("complete");
        assert_eq!((req.path, req.query), ("/x/y", Some("z")));
    }

    #[test]
    fn connection_options() {
        let raw = b"GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n";
        assert!(parse(raw).expect("valid").expect("complete").0.keep_alive());
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        assert!(!parse(raw).expect("valid").expect("complete").0.keep_alive());
    }

    #[test]
    fn status_for_each_error() {
        use RequestError::*;
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(3000));
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: y\r\n".repeat(65));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "y".repeat(9000)
        );
        let cases: Vec<(&[u8], RequestError)> = vec![
            (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", MethodNotAllowed),
            (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", NotImplemented),
            (
                b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
                BadRequest("invalid method"),
            ),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", VersionNotSupported),
            (b"GET / HTTP/0.9\r\n\r\n", VersionNotSupported),
            (
                b"GET / HTTX/1.1\r\n\r\n",
                BadRequest("invalid HTTP version"),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", BadRequest("missing Host")),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                BadRequest("more than one Host"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                BadRequest("invalid Host"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                ContentTooLarge,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
                BadRequest("invalid Content-Length"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadRequest("request body not accepted"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
                BadRequest("obsolete line folding"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                BadRequest("invalid header name"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
                BadRequest("bare CR"),
            ),
            (
                b"GET  / HTTP/1.1\r\n\r\n",
                BadRequest("malformed request line"),
            ),
            (
                b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                BadRequest("unsupported request target form"),
            ),
            (
                b"\x16\x03\x01\x02\x00",
                BadRequest("not an HTTP request line"),
            ),
            (long_target.as_bytes(), UriTooLong),
            (many.as_bytes(), HeadersTooLarge),
            (big.as_bytes(), HeadersTooLarge),
        ];
        for (raw, want) in cases {
            assert_eq!(err(raw), want, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(ContentTooLarge.status().0, 413);
        assert_eq!(HeadersTooLarge.status().0, 431);
    }

    #[test]
    fn limits_apply_to_partial_heads() {
        let partial = format!("GET /{}", "a".repeat(3000));
        assert_eq!(err(partial.as_bytes()), RequestError::UriTooLong);
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(9000));
        assert_eq!(err(partial.as_bytes()), RequestError::HeadersTooLarge);
        assert_eq!(
            err(b"\r\n\r\n\r\n\r\n\r\nGET"),
            RequestError::BadRequest("too many empty lines")
        );
    }

    /// A Host value with an unclosed bracket once reached the boot site's host/port split,
    /// which sliced past its end and panicked (issue 13, defect 7). Malformed hosts are 400s
    /// now, and the split never slices.
    #[test]
    fn host_values_follow_the_grammar() {
        for bad in [
            "[",
            "[]",
            "[::1",
            "]",
            "a]",
            "[::1]x",
            "[::1]:8o",
            "[[::1]]",
            "a:b:c",
            "a:8050x",
            "a:-1",
            "a%",
            "a%4",
            "a%zz",
            "[fe80::1%2]",
            "a b",
            "a,b",
        ] {
            let raw = format!("GET /boot.ipxe HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(
                err(raw.as_bytes()),
                RequestError::BadRequest("invalid Host"),
                "{bad:?}"
            );
            assert_eq!(HostPort::parse(bad), None, "{bad:?}");
        }
        let long = "a".repeat(256);
        assert_eq!(HostPort::parse(&long), None);
        for (good, host, port) in [
            ("", "", None),
            ("10.0.0.1", "10.0.0.1", None),
            ("10.0.0.1:8050", "10.0.0.1", Some("8050")),
            ("boot.example", "boot.example", None),
            ("boot.example:", "boot.example", Some("")),
            ("[::1]", "[::1]", None),
            ("[::1]:8050", "[::1]", Some("8050")),
            ("[fe80::1%25eth0]:80", "[fe80::1%25eth0]", Some("80")),
            ("a%41b", "a%41b", None),
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            let (req, _) = parse(raw.as_bytes())
                .unwrap_or_else(|e| panic!("{good:?}: {e}"))
                .expect("complete");
            assert_eq!(req.host(), Some(HostPort { host, port }), "{good:?}");
        }
        let (req, _) = parse(b"GET / HTTP/1.0\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(req.host(), None);
    }
}
