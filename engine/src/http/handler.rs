//! What a request is answered with: the [`Handler`] trait, [`Reply`], the [`StaticFiles`]
//! handler, and the planning of a reply into a response head plus body chunks (ranges and
//! conditionals are applied here, once, for every handler).

use std::collections::VecDeque;
use std::time::SystemTime;

use super::conditional::{self, Validators};
use super::date;
use super::range::{self, MultipartBody, RangeOutcome};
use super::request::{Method, Request};
use super::response::{self, ResponseHead, StatusCode};
use crate::image::{ByteRange, ImageCatalog, ImageId, ImageInfo, OpenError};
use crate::path::NameFlavor;

/// Answers requests. Called by the connection once per request head, in order.
pub trait Handler {
    /// A [`Reply::File`] carries a reference the handler took with `images.open`; the connection
    /// releases it once the response is sent or the connection dies.
    fn respond(&mut self, req: &Request<'_>, images: &mut dyn ImageCatalog) -> Reply;
}

/// A handler's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// An opened image; the connection applies `Range`, `If-Range` and conditional headers.
    File(ImageInfo),
    /// Bytes made for this request (a script, a page). Served whole, never ranged.
    Generated {
        status: StatusCode,
        content_type: String,
        body: Vec<u8>,
    },
    NotFound,
    Error(StatusCode),
}

/// Serves files from the image catalog by request path. Every refused path (traversal,
/// encoded separators, control bytes) answers 404, so nothing tells a prober what exists.
#[derive(Copy, Clone, Debug, Default)]
pub struct StaticFiles;

impl Handler for StaticFiles {
    fn respond(&mut self, req: &Request<'_>, images: &mut dyn ImageCatalog) -> Reply {
        match images.open(req.path, NameFlavor::Http) {
            Ok(info) => Reply::File(info),
            Err(OpenError::Denied) => Reply::Error(StatusCode::FORBIDDEN),
            // Being written: a moment later it may be whole.
            Err(OpenError::Busy) => Reply::Error(StatusCode::SERVICE_UNAVAILABLE),
            Err(OpenError::Io(_)) => Reply::Error(StatusCode::INTERNAL_SERVER_ERROR),
            Err(_) => Reply::NotFound,
        }
    }
}

/// One piece of a response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Bytes(Vec<u8>),
    Image(ImageId, ByteRange),
}

/// A reply turned into a head and body chunks, before connection management headers.
#[derive(Debug)]
pub(crate) struct Planned {
    pub head: ResponseHead,
    pub body: VecDeque<Chunk>,
    /// The image reference to release once the response is done.
    pub image: Option<ImageId>,
    /// Content bytes announced (what a GET sends; HEAD sends none of them).
    pub content_len: u64,
}

/// Per-request inputs to planning that are not in the request itself.
#[derive(Copy, Clone, Debug)]
pub(crate) struct PlanContext {
    pub wall: SystemTime,
    pub max_ranges: usize,
    pub multipart: bool,
}

/// The `Content-Security-Policy` of generated HTML: its own origin only, no inline script.
pub const GENERATED_PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

pub(crate) fn plan(req: &Request<'_>, reply: Reply, ctx: PlanContext) -> Planned {
    let mut planned = match reply {
        Reply::File(info) => plan_file(req, info, ctx),
        Reply::Generated {
            status,
            content_type,
            body,
        } => {
            let mut head = ResponseHead::new(status, ctx.wall);
            // A generated page loads only its own scripts and styles: whatever a client got
            // into the data it shows cannot run, and nothing loads from elsewhere.
            let html = content_type.starts_with("text/html");
            head.push("Content-Type", content_type);
            head.push("Cache-Control", "no-store".to_owned());
            head.push("X-Content-Type-Options", "nosniff".to_owned());
            if html {
                head.push("Content-Security-Policy", GENERATED_PAGE_CSP.to_owned());
            }
            with_bytes_body(head, body)
        }
        Reply::NotFound => plan_error(StatusCode::NOT_FOUND, ctx.wall),
        Reply::Error(status) => plan_error(status, ctx.wall),
    };
    //= https://www.rfc-editor.org/rfc/rfc9110#section-9.3.2
    //# The HEAD method is identical to GET except that the server MUST NOT send content in the
    //# response.
    if req.method == Method::Head {
        planned.body.clear();
    }
    planned
}

/// A small text response for an error status.
pub(crate) fn plan_error(status: StatusCode, wall: SystemTime) -> Planned {
    let mut head = ResponseHead::new(status, wall);
    head.push("Content-Type", "text/plain; charset=utf-8".to_owned());
    //= https://www.rfc-editor.org/rfc/rfc9110#section-15.5.6
    //# The origin server MUST generate an Allow header field in a 405 response containing a list
    //# of the target resource's currently supported methods.
    if status == StatusCode::METHOD_NOT_ALLOWED {
        head.push("Allow", "GET, HEAD".to_owned());
    }
    with_bytes_body(head, format!("{status}\n").into_bytes())
}

fn with_bytes_body(mut head: ResponseHead, body: Vec<u8>) -> Planned {
    let content_len = body.len() as u64;
    head.push("Content-Length", content_len.to_string());
    let mut chunks = VecDeque::new();
    if !body.is_empty() {
        chunks.push_back(Chunk::Bytes(body));
    }
    Planned {
        head,
        body: chunks,
        image: None,
        content_len,
    }
}

fn plan_file(req: &Request<'_>, info: ImageInfo, ctx: PlanContext) -> Planned {
    let etag = response::etag(&info);
    let validators = Validators {
        etag: &etag,
        last_modified: info.modified,
    };
    let content_type = response::content_type(req.path);
    let mut body = VecDeque::new();

    //= https://www.rfc-editor.org/rfc/rfc9110#section-13.2.2
    //# When the method is GET or HEAD, If-None-Match is present, and the condition is false ...
    //# respond with a 304 (Not Modified) status code
    // (The If-None-Match condition is false when a tag matches: `not_modified` says so.)
    let (status, content_len, content_range) = if conditional::not_modified(
        req.header("if-none-match"),
        req.header("if-modified-since"),
        validators,
    ) {
        (StatusCode::NOT_MODIFIED, None, None)
    } else {
        match range_outcome(req, &info, validators, ctx) {
            RangeOutcome::Single(r) => {
                body.push_back(Chunk::Image(info.id, r));
                let cr = range::content_range(r, info.len);
                (StatusCode::PARTIAL_CONTENT, Some(r.len()), Some(cr))
            }
            RangeOutcome::Multiple(ranges) => {
                let boundary = range::boundary_for(info.tag, info.len);
                let mp = MultipartBody::new(boundary, &ranges, info.len, content_type);
                let len = mp.body_len();
                for (part_head, r) in mp.parts.iter() {
                    body.push_back(Chunk::Bytes(part_head.clone()));
                    body.push_back(Chunk::Image(info.id, *r));
                }
                body.push_back(Chunk::Bytes(mp.trailer.clone()));
                let mut head = file_head(StatusCode::PARTIAL_CONTENT, &info, &etag, ctx.wall);
                head.push("Content-Type", mp.content_type());
                head.push("Content-Length", len.to_string());
                return Planned {
                    head,
                    body,
                    image: Some(info.id),
                    content_len: len,
                };
            }
            //= https://www.rfc-editor.org/rfc/rfc9110#section-15.5.17
            //# For byte ranges, failing to overlap the current extent means that the first-pos
            //# of all of the range-spec values were greater than or equal to the current length
            //# of the selected representation. When this status code is generated in response
            //# to a byte-range request, the sender SHOULD generate a Content-Range header field
            //# specifying the current length of the selected representation
            RangeOutcome::Unsatisfiable => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                Some(0),
                Some(range::unsatisfied_content_range(info.len)),
            ),
            _ => {
                if info.len > 0 {
                    body.push_back(Chunk::Image(info.id, ByteRange::new(0, info.len)));
                }
                (StatusCode::OK, Some(info.len), None)
            }
        }
    };
    let mut head = file_head(status, &info, &etag, ctx.wall);
    if status != StatusCode::RANGE_NOT_SATISFIABLE && status != StatusCode::NOT_MODIFIED {
        head.push("Content-Type", content_type.to_owned());
    }
    if let Some(cr) = content_range {
        head.push("Content-Range", cr);
    }
    //= https://www.rfc-editor.org/rfc/rfc9110#section-8.6
    //# A server MAY send a Content-Length header field in a 304 (Not Modified) response to a
    //# conditional GET request (Section 15.4.5); a server MUST NOT send Content-Length in such
    //# a response unless its field value equals the decimal number of octets that would have
    //# been sent in the content of a 200 (OK) response to the same request.
    if let Some(len) = content_len {
        head.push("Content-Length", len.to_string());
    }
    Planned {
        head,
        body,
        image: Some(info.id),
        content_len: content_len.unwrap_or(0),
    }
}

fn range_outcome(
    req: &Request<'_>,
    info: &ImageInfo,
    validators: Validators<'_>,
    ctx: PlanContext,
) -> RangeOutcome {
    // Two Range lines cannot be one valid ranges-specifier: ignore them like invalid syntax.
    if req.method != Method::Get && req.method != Method::Head || req.header_count("range") != 1 {
        return RangeOutcome::Full;
    }
    let Some(range_header) = req.header("range") else {
        return RangeOutcome::Full;
    };
    //= https://www.rfc-editor.org/rfc/rfc9110#section-13.1.5
    //# If the condition is false, the server SHOULD ignore the Range header field and send the
    //# entire selected representation
    if let Some(if_range) = req.header("if-range")
        && !conditional::if_range_holds(if_range, validators, ctx.wall)
    {
        return RangeOutcome::Full;
    }
    match range::evaluate(range_header, info.len, ctx.max_ranges) {
        RangeOutcome::Multiple(_) if !ctx.multipart => RangeOutcome::Full,
        outcome => outcome,
    }
}

fn file_head(status: StatusCode, info: &ImageInfo, etag: &str, wall: SystemTime) -> ResponseHead {
    let mut head = ResponseHead::new(status, wall);
    //= https://www.rfc-editor.org/rfc/rfc9110#section-14.3
    //# A server that supports range requests MAY send the field "Accept-Ranges: bytes"
    head.push("Accept-Ranges", "bytes".to_owned());
    head.push("ETag", etag.to_owned());
    if let Some(modified) = info.modified {
        //= https://www.rfc-editor.org/rfc/rfc9110#section-8.8.2.1
        //# An origin server with a clock MUST NOT generate a Last-Modified date that is later
        //# than the server's time of message origination (Date).
        head.push("Last-Modified", date::format(modified.min(wall)));
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::HeadLimits;

    /// A catalog whose every open fails the same way.
    struct Failing(OpenError);

    impl ImageCatalog for Failing {
        fn open(&mut self, _: &str, _: NameFlavor) -> Result<ImageInfo, OpenError> {
            Err(self.0.clone())
        }
        fn close(&mut self, _: ImageId) {}
    }

    #[test]
    fn open_errors_map_to_statuses() {
        let limits = HeadLimits::default();
        let (req, _) = Request::parse(b"GET /boot.wim HTTP/1.1\r\nHost: s\r\n\r\n", &limits)
            .expect("parses")
            .expect("whole");
        for (error, status) in [
            (OpenError::Denied, Some(StatusCode::FORBIDDEN)),
            (OpenError::Busy, Some(StatusCode::SERVICE_UNAVAILABLE)),
            (
                OpenError::Io("disk".into()),
                Some(StatusCode::INTERNAL_SERVER_ERROR),
            ),
            (OpenError::NotFound, None),
            (OpenError::NotAFile, None),
        ] {
            let got = match StaticFiles.respond(&req, &mut Failing(error.clone())) {
                Reply::Error(s) => Some(s),
                Reply::NotFound => None,
                _ => panic!("{error:?}: not an error reply"),
            };
            assert_eq!(got, status, "{error:?}");
        }
    }
}
