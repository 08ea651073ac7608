//! `Range: bytes=` requests (RFC 9110 section 14) and `multipart/byteranges` framing.

use crate::image::ByteRange;

/// What to send for a request with a `Range` header, for a representation of a given length.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RangeOutcome {
    /// Ignore the header: 200 with the whole representation.
    Full,
    /// 206 with one range.
    Single(ByteRange),
    /// 206 `multipart/byteranges`, parts in request order after coalescing.
    Multiple(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-` (`last` = `u64::MAX`).
    Int { first: u64, last: u64 },
    /// `-suffix`
    Suffix(u64),
}

/// Evaluates a `Range` header value against a representation of `len` bytes, accepting at most
/// `max_ranges` range-specs.
pub fn evaluate(header: &str, len: u64, max_ranges: usize) -> RangeOutcome {
    let Some(specs) = parse(header, max_ranges) else {
        return RangeOutcome::Full;
    };
    //= https://www.rfc-editor.org/rfc/rfc9110#section-14.1.1
    //# If the selected representation has zero length, the only satisfiable form of range-spec
    //# is a suffix-range with a non-zero suffix-length.
    // ... and no Content-Range can describe a part of nothing, so that case is served whole.
    if len == 0 {
        let any_suffix = specs.iter().any(|s| matches!(s, Spec::Suffix(n) if *n > 0));
        return if any_suffix {
            RangeOutcome::Full
        } else {
            RangeOutcome::Unsatisfiable
        };
    }
    let satisfiable = specs.iter().filter_map(|spec| match *spec {
        //= https://www.rfc-editor.org/rfc/rfc9110#section-14.1.1
        //# A byte-range-spec is invalid if the last-pos value is present and less than the
        //# first-pos.
        //= https://www.rfc-editor.org/rfc/rfc9110#section-14.1.1
        //# For byte ranges, a range-spec is satisfiable if the first-pos is less than the
        //# current length of the selected representation
        Spec::Int { first, last } if first < len => {
            Some(ByteRange::new(first, last.min(len - 1) + 1))
        }
        Spec::Int { .. } => None,
        //= https://www.rfc-editor.org/rfc/rfc9110#section-14.1.1
        //# If the selected representation is shorter than the specified suffix-length, the
        //# entire representation is used.
        Spec::Suffix(n) if n > 0 => Some(ByteRange::new(len - n.min(len), len)),
        Spec::Suffix(_) => None,
    });
    let ranges = coalesce(satisfiable);
    match ranges.as_slice() {
        [] => RangeOutcome::Unsatisfiable,
        [one] => RangeOutcome::Single(*one),
        _ => RangeOutcome::Multiple(ranges),
    }
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-14.1.2
//# ranges-specifier = range-unit "=" range-set
//# range-set        = 1#range-spec
/// `None`: ignore the header (unknown unit, invalid syntax, too many ranges).
fn parse(header: &str, max_ranges: usize) -> Option<Vec<Spec>> {
    let (unit, set) = header.trim_matches([' ', '\t']).split_once('=')?;
    //= https://www.rfc-editor.org/rfc/rfc9110#section-14.2
    //# An origin server MUST ignore a Range header field that contains a range unit it does not
    //# understand.
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for (i, element) in set.split(',').enumerate() {
        //= https://www.rfc-editor.org/rfc/rfc9110#section-14.2
        //# A server that supports range requests MAY ignore or reject a Range header field that
        //# contains an invalid ranges-specifier (Section 14.1.1), a ranges-specifier with more
        //# than two overlapping ranges, or a set of many small ranges that are not listed in
        //# ascending order, since these are indications of either a broken client or a
        //# deliberate denial-of-service attack (Section 17.15).
        if specs.len() >= max_ranges || i >= max_ranges.saturating_mul(2).max(4) {
            return None;
        }
        let element = element.trim_matches([' ', '\t']);
        //= https://www.rfc-editor.org/rfc/rfc9110#section-5.6.1.2
        //# Empty elements do not contribute to the count of elements present.
        if element.is_empty() {
            continue;
        }
        let (first, last) = element.split_once('-')?;
        let spec = if first.is_empty() {
            Spec::Suffix(digits(last)?)
        } else {
            let first = digits(first)?;
            let last = if last.is_empty() {
                u64::MAX
            } else {
                digits(last)?
            };
            if last < first {
                return None;
            }
            Spec::Int { first, last }
        };
        specs.push(spec);
    }
    (!specs.is_empty()).then_some(specs)
}

/// `1*DIGIT`, saturating at `u64::MAX` (a position that large is simply past every end).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-14.6
//# When multiple ranges are requested, a server MAY coalesce any of the ranges that overlap,
//# or that are separated by a gap that is smaller than the overhead of sending multiple parts,
//# regardless of the order in which the corresponding range-spec appeared in the received
//# Range header field.
//= https://www.rfc-editor.org/rfc/rfc9110#section-15.3.7.2
//# When a multipart response is generated, the server SHOULD send the parts in the same order
//# that the corresponding range-spec appeared in the received Range header field, excluding
//# those ranges that were deemed unsatisfiable or that were coalesced into other ranges.
/// Merges overlapping and adjacent ranges; a merged range takes the place of its earliest part.
fn coalesce(ranges: impl Iterator<Item = ByteRange>) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::new();
    for mut r in ranges {
        let mut at = out.len();
        while let Some(i) = out
            .iter()
            .position(|o| o.start <= r.end && r.start <= o.end)
        {
            let o = out.remove(i);
            r = ByteRange::new(o.start.min(r.start), o.end.max(r.end));
            at = at.min(i);
        }
        out.insert(at.min(out.len()), r);
    }
    out
}

/// `Content-Range` for a satisfied range.
pub fn content_range(range: ByteRange, len: u64) -> String {
    format!(
        "bytes {}-{}/{}",
        range.start,
        range.end.saturating_sub(1),
        len
    )
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-14.4
//# unsatisfied-range = "*/" complete-length
pub fn unsatisfied_content_range(len: u64) -> String {
    format!("bytes */{len}")
}

/// The framing of a `multipart/byteranges` body: each part's header bytes followed by its
/// image range, then the closing delimiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartBody {
    pub boundary: String,
    pub parts: Vec<(Vec<u8>, ByteRange)>,
    pub trailer: Vec<u8>,
}

impl MultipartBody {
    //= https://www.rfc-editor.org/rfc/rfc9110#section-14.6
    //# When a multipart response payload is generated, the server SHOULD send the parts in the
    //# same order that the corresponding range-spec appeared in the received Range header field
    /// Frames `ranges` of a representation of `len` bytes and type `content_type`.
    pub fn new(boundary: String, ranges: &[ByteRange], len: u64, content_type: &str) -> Self {
        let parts = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let lead = if i == 0 { "" } else { "\r\n" };
                let head = format!(
                    "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
                    content_range(*r, len)
                );
                (head.into_bytes(), *r)
            })
            .collect();
        let trailer = format!("\r\n--{boundary}--\r\n").into_bytes();
        Self {
            boundary,
            parts,
            trailer,
        }
    }

    /// The `Content-Type` of the whole response.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    /// Exact body length, for `Content-Length`.
    pub fn body_len(&self) -> u64 {
        let parts: u64 = self
            .parts
            .iter()
            .map(|(h, r)| h.len() as u64 + r.len())
            .sum();
        parts + self.trailer.len() as u64
    }
}

/// A boundary unlikely to occur in an image version: derived from its validator.
pub fn boundary_for(tag: u64, len: u64) -> String {
    let mixed = (tag ^ len.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("zpxe-{mixed:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end)
    }

    #[test]
    fn rfc_9110_examples_on_10000_bytes() {
        use RangeOutcome::*;
        let len = 10_000;
        let cases: &[(&str, RangeOutcome)] = &[
            // 14.1.2: the first 500 bytes, the second 500, the final 500 (two ways).
            ("bytes=0-499", Single(r(0, 500))),
            ("bytes=500-999", Single(r(500, 1000))),
            ("bytes=-500", Single(r(9500, 10_000))),
            ("bytes=9500-", Single(r(9500, 10_000))),
            ("bytes=0-0,-1", Multiple(vec![r(0, 1), r(9999, 10_000)])),
            ("bytes=0-0", Single(r(0, 1))),
            ("bytes=-1", Single(r(9999, 10_000))),
            ("bytes=0-", Single(r(0, 10_000))),
            ("bytes=0-99999", Single(r(0, 10_000))),
            ("bytes=-99999", Single(r(0, 10_000))),
            ("BYTES = 1-2", Full),
            ("Bytes=1-2", Single(r(1, 3))),
            // Overlapping and adjacent ranges coalesce (14.1.2's "500-600,601-999").
            ("bytes=500-600,601-999", Single(r(500, 1000))),
            ("bytes=500-700,601-999", Single(r(500, 1000))),
            (
                "bytes=9000-,0-9,5-20",
                Multiple(vec![r(9000, 10_000), r(0, 21)]),
            ),
            ("bytes=0-1,100-200,2-99", Single(r(0, 201))),
            ("bytes=  0-1 , ,7-8", Multiple(vec![r(0, 2), r(7, 9)])),
            ("bytes=10000-", Unsatisfiable),
            ("bytes=10000-20000,-0", Unsatisfiable),
            ("bytes=99999999999999999999999-", Unsatisfiable),
            ("bytes=10000-,5-5", Single(r(5, 6))),
            // Invalid syntax or units: ignored.
            ("bytes=5-4", Full),
            ("bytes=abc", Full),
            ("bytes=1-2-3", Full),
            ("bytes=", Full),
            ("bytes=,", Full),
            ("bytes=--1", Full),
            ("items=0-1", Full),
            ("0-1", Full),
        ];
        for (header, want) in cases {
            assert_eq!(&evaluate(header, len, 16), want, "{header}");
        }
    }

    #[test]
    fn empty_representation() {
        assert_eq!(evaluate("bytes=0-", 0, 16), RangeOutcome::Unsatisfiable);
        assert_eq!(evaluate("bytes=-5", 0, 16), RangeOutcome::Full);
    }

    #[test]
    fn too_many_ranges_are_ignored() {
        let many: Vec<String> = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        let header = format!("bytes={}", many.join(","));
        assert_eq!(evaluate(&header, 1000, 16), RangeOutcome::Full);
        let sixteen = format!("bytes={}", many[..16].join(","));
        assert!(matches!(evaluate(&sixteen, 1000, 16), RangeOutcome::Multiple(v) if v.len() == 16));
        let empties = format!("bytes=0-1{}", ",".repeat(100));
        assert_eq!(evaluate(&empties, 1000, 16), RangeOutcome::Full);
    }

    #[test]
    fn multipart_framing_length_is_exact() {
        let body = MultipartBody::new("B".into(), &[r(0, 1), r(9, 10)], 10, "text/plain");
        let mut bytes = Vec::new();
        let data = b"abcdefghij";
        for (head, range) in &body.parts {
            bytes.extend_from_slice(head);
            bytes.extend_from_slice(&data[range.start as usize..range.end as usize]);
        }
        bytes.extend_from_slice(&body.trailer);
        assert_eq!(bytes.len() as u64, body.body_len());
        assert_eq!(
            String::from_utf8(bytes).expect("ascii"),
            "--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-0/10\r\n\r\na\r\n\
             --B\r\nContent-Type: text/plain\r\nContent-Range: bytes 9-9/10\r\n\r\nj\r\n--B--\r\n"
        );
    }
}
