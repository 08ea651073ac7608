//! Response heads: status line and header fields, plus the per-file metadata they carry
//! (content type by extension, strong ETag, Last-Modified).

use std::fmt;
use std::time::SystemTime;

use super::date;
use crate::image::ImageInfo;

/// An HTTP status code.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(pub u16);

impl StatusCode {
    pub const OK: Self = Self(200);
    pub const PARTIAL_CONTENT: Self = Self(206);
    pub const NOT_MODIFIED: Self = Self(304);
    pub const BAD_REQUEST: Self = Self(400);
    pub const FORBIDDEN: Self = Self(403);
    pub const NOT_FOUND: Self = Self(404);
    pub const METHOD_NOT_ALLOWED: Self = Self(405);
    pub const REQUEST_TIMEOUT: Self = Self(408);
    pub const CONTENT_TOO_LARGE: Self = Self(413);
    pub const URI_TOO_LONG: Self = Self(414);
    pub const RANGE_NOT_SATISFIABLE: Self = Self(416);
    pub const HEADER_FIELDS_TOO_LARGE: Self = Self(431);
    pub const INTERNAL_SERVER_ERROR: Self = Self(500);
    pub const NOT_IMPLEMENTED: Self = Self(501);
    pub const SERVICE_UNAVAILABLE: Self = Self(503);
    pub const HTTP_VERSION_NOT_SUPPORTED: Self = Self(505);

    pub fn reason(self) -> &'static str {
        match self.0 {
            200 => "OK",
            206 => "Partial Content",
            304 => "Not Modified",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Content Too Large",
            414 => "URI Too Long",
            416 => "Range Not Satisfiable",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    /// Whether responses with this status carry content at all.
    //= https://www.rfc-editor.org/rfc/rfc9112#section-6.3
    //# Any response to a HEAD request and any response with a 1xx (Informational), 204 (No
    //# Content), or 304 (Not Modified) status code is always terminated by the first empty line
    //# after the header fields, regardless of the header fields present in the message, and
    //# thus cannot contain a message body or trailer section.
    pub fn has_body(self) -> bool {
        !(self.0 < 200 || self.0 == 204 || self.0 == 304)
    }

    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

/// The media type for a path, by extension. iPXE recognises scripts by their `#!ipxe` magic,
/// not by type; EDK2 HTTP boot does look at the type to tell an EFI binary from an ISO or disk
/// image (`application/efi`, `application/vnd.efi-iso`, `application/vnd.efi-img`).
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("ipxe" | "txt" | "cfg" | "conf" | "sh") => "text/plain; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("efi") => "application/efi",
        Some("iso") => "application/vnd.efi-iso",
        Some("img") => "application/vnd.efi-img",
        // .kpxe .pxe .0 .wim .sdi .com .lkrn, BCD (no extension) and everything else.
        _ => "application/octet-stream",
    }
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-8.8.3
//# entity-tag = [ weak ] opaque-tag
/// The strong entity tag of an image version: its store validator and length, quoted hex.
pub fn etag(info: &ImageInfo) -> String {
    format!("\"{:x}-{:x}\"", info.tag, info.len)
}

/// A response head under construction. The status line is always `HTTP/1.1`:
//= https://www.rfc-editor.org/rfc/rfc9110#section-6.2
//# A server SHOULD send a response version equal to the highest version to which the server
//# is conformant that has a major version less than or equal to the one received in the
//# request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: StatusCode,
    headers: Vec<(&'static str, String)>,
}

impl ResponseHead {
    /// A head with `Date` (from the caller's wall clock) and `Server` already set.
    pub fn new(status: StatusCode, wall: SystemTime) -> Self {
        let mut head = Self {
            status,
            headers: Vec::with_capacity(10),
        };
        //= https://www.rfc-editor.org/rfc/rfc9110#section-6.6.1
        //# An origin server with a clock (as defined in Section 5.6.7) MUST generate a Date
        //# header field in all 2xx (Successful), 3xx (Redirection), and 4xx (Client Error)
        //# responses, and MAY generate a Date header field in 1xx (Informational) and 5xx
        //# (Server Error) responses.
        head.push("Date", date::format(wall));
        head.push("Server", "zpxe".to_owned());
        head
    }

    /// Adds a header line. Values come from this crate (never raw client input).
    pub fn push(&mut self, name: &'static str, value: String) -> &mut Self {
        self.headers.push((name, value));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Exact number of bytes [`write`](Self::write) appends.
    pub fn buffer_len(&self) -> usize {
        let status_line = "HTTP/1.1 ".len() + 3 + 1 + self.status.reason().len() + 2;
        let fields: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + 2 + v.len() + 2)
            .sum();
        status_line + fields + 2
    }

    /// Appends the head, ending with the empty line.
    pub fn write(&self, out: &mut Vec<u8>) {
        let before = out.len();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(format!("{:03} ", self.status.0 % 1000).as_bytes());
        out.extend_from_slice(self.status.reason().as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            // Defence in depth against response splitting: no line breaks in values.
            out.extend(
                value
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        debug_assert_eq!(out.len() - before, self.buffer_len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageId;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn writes_exactly_buffer_len() {
        let mut head = ResponseHead::new(
            StatusCode::OK,
            UNIX_EPOCH + Duration::from_secs(784_111_777),
        );
        head.push("Content-Length", "12".to_owned());
        head.push("X-Evil", "a\r\nSet-Cookie: x".to_owned());
        let mut out = Vec::new();
        head.write(&mut out);
        assert_eq!(out.len(), head.buffer_len());
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with(
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: zpxe\r\n"
        ));
        assert!(text.contains("X-Evil: a  Set-Cookie: x\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn types_and_tags() {
        assert_eq!(content_type("/boot.ipxe"), "text/plain; charset=utf-8");
        assert_eq!(content_type("/EFI/ipxe.EFI"), "application/efi");
        assert_eq!(content_type("/Boot/BCD"), "application/octet-stream");
        assert_eq!(
            content_type("/sources/boot.wim"),
            "application/octet-stream"
        );
        assert_eq!(content_type("/undionly.kpxe"), "application/octet-stream");
        assert_eq!(content_type("/win.iso"), "application/vnd.efi-iso");
        assert_eq!(content_type("/a.dir/noext"), "application/octet-stream");
        let info = ImageInfo {
            id: ImageId(1),
            len: 255,
            modified: None,
            tag: 0xabc,
        };
        assert_eq!(etag(&info), "\"abc-ff\"");
    }
}
