//! Conditional requests (RFC 9110 section 13): `If-None-Match`, `If-Modified-Since`, `If-Range`.
//! `If-Match` and `If-Unmodified-Since` are not evaluated: boot clients never send them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::date;

/// What the server knows about the selected representation.
#[derive(Clone, Copy, Debug)]
pub struct Validators<'a> {
    /// Strong entity tag, quoted.
    pub etag: &'a str,
    pub last_modified: Option<SystemTime>,
}

/// Drops sub-second precision, as an HTTP-date has none.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    t.duration_since(UNIX_EPOCH).map_or(UNIX_EPOCH, |d| {
        UNIX_EPOCH + Duration::from_secs(d.as_secs())
    })
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-13.2.2
//# When the method is GET or HEAD, If-None-Match is not present, and If-Modified-Since is
//# present, evaluate the If-Modified-Since precondition:
/// Whether a GET or HEAD should be answered with 304 Not Modified.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    v: Validators<'_>,
) -> bool {
    if let Some(inm) = if_none_match {
        //= https://www.rfc-editor.org/rfc/rfc9110#section-13.1.2
        //# A recipient MUST use the weak comparison function when comparing entity tags for
        //# If-None-Match (Section 8.8.3.2), since weak entity tags can be used for cache
        //# validation even if there have been changes to the representation data.
        return inm.trim() == "*" || entity_tags(inm).any(|t| weak_eq(t, v.etag));
    }
    //= https://www.rfc-editor.org/rfc/rfc9110#section-13.1.3
    //# A recipient MUST ignore the If-Modified-Since header field if the received field value is
    //# not a valid HTTP-date, the field value has more than one member, or if the request
    //# method is neither GET nor HEAD.
    let (Some(ims), Some(modified)) = (if_modified_since.and_then(date::parse), v.last_modified)
    else {
        return false;
    };
    //= https://www.rfc-editor.org/rfc/rfc9110#section-13.1.3
    //# if the selected representation's last modification date is earlier or equal to the date
    //# provided in the field value, the condition is false.
    whole_seconds(modified) <= ims
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-13.1.5
//# 1. If the validator given in the If-Range header field is an entity tag, the condition is
//# true if the entity tag is strong and matches ... 2. If the validator is an HTTP-date, the
//# condition is true if the selected representation has a Last-Modified that is a strong
//# validator and the HTTP-date exactly matches ... 3. Otherwise, the condition is false.
/// Whether the `Range` header may be honoured given this `If-Range` value.
pub fn if_range_holds(if_range: &str, v: Validators<'_>, wall: SystemTime) -> bool {
    let value = if_range.trim_matches([' ', '\t']);
    if value.starts_with('"') || value.starts_with("W/") {
        return !value.starts_with("W/") && value == v.etag;
    }
    let (Some(date), Some(modified)) = (date::parse(value), v.last_modified) else {
        return false;
    };
    let modified = whole_seconds(modified);
    //= https://www.rfc-editor.org/rfc/rfc9110#section-8.8.2.2
    //# the presented Last-Modified time is at least one second before the Date value
    let strong = modified + Duration::from_secs(1) <= wall;
    strong && date == modified
}

/// The entity tags of an `If-None-Match` list, with their `W/` prefix (malformed ones skipped).
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| {
            let opaque = t.strip_prefix("W/").unwrap_or(t);
            opaque.len() >= 2 && opaque.starts_with('"') && opaque.ends_with('"')
        })
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-8.8.3.2
//# Weak comparison: two entity tags are equivalent if their opaque-tags match
//# character-by-character, regardless of either or both being tagged as "weak".
fn weak_eq(a: &str, b: &str) -> bool {
    a.strip_prefix("W/").unwrap_or(a) == b.strip_prefix("W/").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    const MOD: u64 = 784_111_777;
    const MOD_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn v() -> Validators<'static> {
        Validators {
            etag: "\"abc-10\"",
            last_modified: Some(at(MOD) + Duration::from_millis(300)),
        }
    }

    #[test]
    fn if_none_match() {
        assert!(not_modified(Some("\"abc-10\""), None, v()));
        assert!(not_modified(Some("\"x\", W/\"abc-10\""), None, v()));
        assert!(not_modified(Some("*"), None, v()));
        assert!(!not_modified(Some("\"abc-11\""), None, v()));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(Some("\"nope\""), Some(MOD_DATE), v()));
    }

    #[test]
    fn if_modified_since() {
        assert!(not_modified(None, Some(MOD_DATE), v()));
        assert!(not_modified(
            None,
            Some("Mon, 07 Nov 1994 08:49:37 GMT"),
            v()
        ));
        assert!(!not_modified(
            None,
            Some("Sun, 06 Nov 1994 08:49:36 GMT"),
            v()
        ));
        assert!(!not_modified(None, Some("garbage"), v()));
        let no_mtime = Validators {
            last_modified: None,
            ..v()
        };
        assert!(!not_modified(None, Some(MOD_DATE), no_mtime));
    }

    #[test]
    fn if_range() {
        let wall = at(MOD + 100);
        assert!(if_range_holds("\"abc-10\"", v(), wall));
        assert!(!if_range_holds("W/\"abc-10\"", v(), wall));
        assert!(!if_range_holds("\"abc-11\"", v(), wall));
        assert!(if_range_holds(MOD_DATE, v(), wall));
        assert!(!if_range_holds("Sun, 06 Nov 1994 08:49:38 GMT", v(), wall));
        // Modified within the same second as now: the date is a weak validator.
        assert!(!if_range_holds(MOD_DATE, v(), at(MOD)));
        assert!(!if_range_holds("junk", v(), wall));
    }
}
