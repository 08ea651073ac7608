//! The HTTP request head parser (what a client sends to 8050 and 8051), and the header values
//! the server interprets: Range, the iPXE query, connection options.
//!
//! Oracles: no panic; a parsed head lies inside the input and does not depend on the bytes
//! after it; every strict prefix of a complete head is "need more bytes" (the connection
//! buffers partial heads on that promise); Range outcomes lie inside the representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zpxe_engine::http::range::{self, RangeOutcome};
use zpxe_engine::http::request::HeadLimits;
use zpxe_engine::http::{BootQuery, Request};

const LIMITS: [HeadLimits; 2] = [
    HeadLimits {
        max_request_line: 2048,
        max_header_bytes: 8192,
        max_headers: 64,
    },
    HeadLimits {
        max_request_line: 24,
        max_header_bytes: 40,
        max_headers: 2,
    },
];

fn check_range(header: &str, len: u64) {
    match range::evaluate(header, len, 16) {
        RangeOutcome::Full | RangeOutcome::Unsatisfiable => {}
        RangeOutcome::Single(r) => assert!(r.start < r.end && r.end <= len, "{r:?} of {len}"),
        RangeOutcome::Multiple(rs) => {
            assert!(rs.len() >= 2 && rs.len() <= 16);
            assert!(rs.iter().all(|r| r.start < r.end && r.end <= len));
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    for limits in &LIMITS {
        let Ok(Some((req, n))) = Request::parse(data, limits) else {
            continue;
        };
        assert!(n > 0 && n <= data.len());
        assert!(
            n <= limits.max_head_bytes(),
            "head of {n} bytes over the limits"
        );
        let alone = Request::parse(&data[..n], limits);
        assert_eq!(
            alone,
            Ok(Some((req.clone(), n))),
            "the head depends on what follows"
        );
        for cut in [n - 1, n / 2, 1] {
            if cut < n {
                assert_eq!(
                    Request::parse(&data[..cut], limits),
                    Ok(None),
                    "a prefix of {cut} bytes of a good head was refused"
                );
            }
        }
        assert!(req.target.starts_with(req.path));
        let _ = (req.keep_alive(), req.has_connection_option("close"));
        for h in req.headers() {
            assert_eq!(h.value, h.value.trim_matches([' ', '\t']));
            let _ = req.header_count(h.name);
        }
        if let Some(r) = req.header("range") {
            for len in [0, 1, 10_000, u64::MAX] {
                check_range(r, len);
            }
        }
        let _ = BootQuery::parse(req.query.unwrap_or_default());
    }
});
