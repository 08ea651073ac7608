//! Property tests: request heads written by any client parse back to what was written, a
//! connection answers the same bytes however the client's stream is cut into reads, and Range
//! evaluation selects exactly the satisfiable bytes asked for.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use proptest::collection::vec;
use proptest::prelude::*;

use super::range::{self, RangeOutcome};
use super::request::HeadLimits;
use super::{HttpConfig, HttpConnection, HttpEvent, Method, Output, Request, StaticFiles, Version};
use crate::image::{ByteRange, MemoryCatalog};
use crate::proptest_config::config;

/// A request a client may send: method, target, version and header fields.
#[derive(Clone, Debug)]
struct Head {
    method: Method,
    path: String,
    query: Option<String>,
    version: Version,
    host: Option<String>,
    /// Other fields, names without `Host`, values without surrounding whitespace.
    fields: Vec<(String, String)>,
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {}", self.method.as_str(), self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        s.push(' ');
        s.push_str(self.version.as_str());
        s.push_str("\r\n");
        if let Some(h) = &self.host {
            s.push_str(&format!("Host: {h}\r\n"));
        }
        for (k, v) in &self.fields {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/boot.wim".to_owned()),
        Just("/ipxe.efi".to_owned()),
        Just("/nope".to_owned()),
        Just("/../etc/passwd".to_owned()),
        "/[A-Za-z0-9._~%/-]{0,40}",
    ]
}

fn field() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        Just("User-Agent".to_owned()),
        Just("Accept".to_owned()),
        Just("Range".to_owned()),
        Just("If-None-Match".to_owned()),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}".prop_filter("one Host, no body", |n| {
            let n = n.to_ascii_lowercase();
            n != "host" && n != "content-length" && n != "transfer-encoding" && n != "connection"
        }),
    ];
    let value = prop_oneof![
        "bytes=[0-9]{1,5}-[0-9]{0,5}",
        "[!-~]([ -~]{0,30}[!-~])?",
        Just(String::new()),
    ];
    (name, value)
}

fn head() -> impl Strategy<Value = Head> {
    (
        prop_oneof![Just(Method::Get), Just(Method::Head)],
        path(),
        proptest::option::of("[A-Za-z0-9=&:%-]{0,40}"),
        prop_oneof![Just(Version::Http11), Just(Version::Http10)],
        proptest::option::of(prop_oneof![
            Just("10.0.0.1:8050".to_owned()),
            Just("[fe80::1]:8050".to_owned()),
            "[a-z0-9.-]{1,20}",
        ]),
        vec(field(), 0..6),
    )
        .prop_map(|(method, path, query, version, host, fields)| Head {
            method,
            path,
            query,
            version,
            // HTTP/1.1 requires exactly one Host.
            host: if version == Version::Http11 && host.is_none() {
                Some("h".to_owned())
            } else {
                host
            },
            fields,
        })
}

/// Runs a connection over `stream` delivered in reads of the given sizes (the platform's
/// loop: offer what is unconsumed, drain output, offer again), returning every byte sent and
/// the events.
fn serve(stream: &[u8], reads: &[usize]) -> (Vec<u8>, Vec<HttpEvent>) {
    let mut images = MemoryCatalog::new();
    images.insert(
        "boot.wim",
        (0..10_000u32).map(|i| (i % 251) as u8).collect(),
    );
    images.insert("ipxe.efi", vec![7; 300]);
    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut conn = HttpConnection::new(now, Arc::new(HttpConfig::default()));
    let mut handler = StaticFiles;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut sizes = reads.iter().copied().cycle();
    let mut closed = false;
    while !closed {
        if at < stream.len() {
            let n = sizes.next().unwrap_or(1).clamp(1, stream.len() - at);
            pending.extend_from_slice(&stream[at..at + n]);
            at += n;
        } else if pending.is_empty() || !conn.wants_input() {
            conn.handle_eof(now);
        }
        loop {
            if conn.wants_input() && !pending.is_empty() {
                let n = conn.handle_input(now, &pending, wall, &mut handler, &mut images);
                pending.drain(..n);
            }
            let mut progressed = false;
            while let Some(o) = conn.poll_output(&mut buf) {
                progressed = true;
                match o {
                    Output::Bytes { len } => out.extend_from_slice(&buf[..len]),
                    Output::Body { image, range } => {
                        out.extend_from_slice(images.slice(image, range).expect("in bounds"));
                        conn.body_done(now, &mut images);
                    }
                    Output::Close => closed = true,
                }
            }
            if !progressed || closed {
                break;
            }
        }
        while let Some(e) = conn.poll_event() {
            events.push(e);
        }
    }
    assert_eq!(images.total_open_refs(), 0, "an image is still held");
    (out, events)
}

/// Byte positions covered by `ranges`, as sorted disjoint intervals.
fn union(mut ranges: Vec<ByteRange>) -> Vec<(u64, u64)> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.1 => last.1 = last.1.max(r.end),
            _ => out.push((r.start, r.end)),
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Spec {
    Int(u64, Option<u64>),
    Suffix(u64),
}

fn spec() -> impl Strategy<Value = Spec> {
    let pos = prop_oneof![
        0u64..12_000,
        Just(0),
        Just(9_999),
        Just(10_000),
        any::<u64>()
    ];
    prop_oneof![
        (pos.clone(), proptest::option::of(pos.clone()))
            .prop_filter("last >= first", |(f, l)| l.is_none_or(|l| l >= *f))
            .prop_map(|(f, l)| Spec::Int(f, l)),
        pos.prop_map(Spec::Suffix),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn heads_parse_back_to_what_was_written(h in head(), tail in vec(any::<u8>(), 0..20)) {
        let mut bytes = h.bytes();
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        let parsed = Request::parse(&bytes, &HeadLimits::default());
        let Ok(Some((req, n))) = parsed else {
            return Err(TestCaseError::fail(format!("{parsed:?}")));
        };
        prop_assert_eq!(n, len);
        prop_assert_eq!(req.method, h.method);
        prop_assert_eq!(req.version, h.version);
        prop_assert_eq!(req.path, h.path.as_str());
        prop_assert_eq!(req.query, h.query.as_deref());
        prop_assert_eq!(req.header("HOST"), h.host.as_deref());
        for (k, v) in &h.fields {
            let first = h.fields.iter().find(|(o, _)| o.eq_ignore_ascii_case(k)).map(|(_, v)| v);
            prop_assert_eq!(req.header(k), first.map(String::as_str));
            prop_assert!(req.headers().any(|f| f.name == k && f.value == v));
        }
        // Until its last byte the head is incomplete, never refused.
        for cut in [0, 1, len / 2, len - 1] {
            prop_assert_eq!(Request::parse(&bytes[..cut], &HeadLimits::default()), Ok(None));
        }
    }

    /// However the stream of pipelined requests is cut into reads, the connection sends the
    /// same bytes and reports the same events.
    #[test]
    fn answers_do_not_depend_on_how_reads_cut_the_stream(
        heads in vec(head(), 1..5),
        reads in vec(1usize..64, 1..8),
    ) {
        let stream: Vec<u8> = heads.iter().flat_map(Head::bytes).collect();
        let whole = serve(&stream, &[stream.len()]);
        prop_assert!(!whole.1.is_empty());
        let cut = serve(&stream, &reads);
        prop_assert!(whole.0 == cut.0, "bytes differ for reads {:?}", reads);
        prop_assert_eq!(whole.1, cut.1);
    }

    /// A Range header selects exactly the satisfiable bytes it names (RFC 9110 section
    /// 14.1.1), as disjoint ranges, or is ignored or unsatisfiable as a whole.
    #[test]
    fn ranges_select_exactly_the_satisfiable_bytes(
        specs in vec(spec(), 1..6),
        len in prop_oneof![Just(0u64), Just(1), Just(10_000), 0u64..20_000],
    ) {
        let header = format!(
            "bytes={}",
            specs
                .iter()
                .map(|s| match s {
                    Spec::Int(f, Some(l)) => format!("{f}-{l}"),
                    Spec::Int(f, None) => format!("{f}-"),
                    Spec::Suffix(n) => format!("-{n}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        );
        let wanted: Vec<ByteRange> = specs
            .iter()
            .filter_map(|s| match *s {
                Spec::Int(f, l) if f < len => {
                    Some(ByteRange::new(f, l.map_or(len, |l| l.min(len - 1) + 1)))
                }
                Spec::Suffix(n) if n > 0 && len > 0 => Some(ByteRange::new(len - n.min(len), len)),
                _ => None,
            })
            .collect();
        let outcome = range::evaluate(&header, len, 16);
        let got = match &outcome {
            RangeOutcome::Single(r) => vec![*r],
            RangeOutcome::Multiple(rs) => rs.clone(),
            RangeOutcome::Unsatisfiable => {
                prop_assert!(wanted.is_empty(), "{} on {} is satisfiable", header, len);
                return Ok(());
            }
            RangeOutcome::Full => {
                // Served whole only for an empty representation a suffix asks for.
                let suffix = specs.iter().any(|s| matches!(s, Spec::Suffix(n) if *n > 0));
                prop_assert!(len == 0 && suffix, "{} on {} ignored", header, len);
                return Ok(());
            }
        };
        prop_assert!(got.iter().all(|r| r.start < r.end && r.end <= len));
        prop_assert!(got.len() <= specs.len());
        prop_assert_eq!(union(got.clone()), union(wanted));
        // Coalesced: no two parts touch.
        prop_assert_eq!(union(got.clone()).len(), got.len());
    }
}
