//! `Range` header values against representations of any length, and the multipart framing
//! built from what they select.
//!
//! Input: a length selector, a max-ranges byte, then the header value.
//! Oracles: no panic; selected ranges are non-empty, inside the representation, at most
//! max-ranges of them, and pairwise apart (coalesced); the multipart length adds up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zpxe_engine::http::range::{self, MultipartBody, RangeOutcome};
use zpxe_fuzz::Script;

fuzz_target!(|data: &[u8]| {
    let mut script = Script::new(data);
    // Representation lengths are file sizes: up to a few TiB here (2^48), so that framing
    // lengths cannot overflow.
    let len = match script.byte() {
        0 => 0,
        1 => 1,
        2 => 1 << 48,
        3 => (1 << 48) - 1,
        4 => 1 << 32,
        b @ 5..=127 => u64::from(b) * 1000,
        _ => u64::from(script.u16()) * 977 + u64::from(script.byte()),
    };
    let max_ranges = usize::from(script.byte() % 40);
    let header = String::from_utf8_lossy(script.rest());
    match range::evaluate(&header, len, max_ranges) {
        RangeOutcome::Full => {}
        RangeOutcome::Unsatisfiable => {
            let _ = range::unsatisfied_content_range(len);
        }
        RangeOutcome::Single(r) => {
            assert!(r.start < r.end && r.end <= len, "{r:?} of {len}");
            assert!(max_ranges >= 1);
            let _ = range::content_range(r, len);
        }
        RangeOutcome::Multiple(rs) => {
            assert!(rs.len() >= 2 && rs.len() <= max_ranges, "{rs:?}");
            for (i, r) in rs.iter().enumerate() {
                assert!(r.start < r.end && r.end <= len, "{r:?} of {len}");
                for o in &rs[i + 1..] {
                    assert!(
                        r.end < o.start || o.end < r.start,
                        "{r:?} and {o:?} overlap"
                    );
                }
            }
            let body = MultipartBody::new(
                range::boundary_for(7, len),
                &rs,
                len,
                "application/octet-stream",
            );
            let framing: u64 = body.parts.iter().map(|(h, _)| h.len() as u64).sum::<u64>()
                + body.trailer.len() as u64;
            let content: u64 = rs.iter().map(|r| r.len()).sum();
            assert_eq!(body.body_len(), framing + content);
        }
        _ => {}
    }
});
