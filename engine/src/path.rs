//! Client-supplied file names are untrusted. This turns one into a path relative to the image
//! root, or refuses it.
//!
//! A single leading separator means "the root", as TFTP clients send `/pxelinux.0` and Windows
//! boot manager sends `\Boot\BCD`: names are never resolved against the host filesystem, only
//! below the root (like tftpd-hpa's `--secure`). Everything that could step outside the root, or
//! that Windows would read differently, is refused: `..` in any spelling, UNC and drive-letter
//! forms, NUL and control bytes, percent-encoded traversal, names over 255 bytes. Symlinks are the
//! image store's business: it resolves them and refuses those that leave the root.

use std::fmt;

/// The longest name accepted, in bytes, after decoding.
pub const MAX_NAME_LEN: usize = 255;

/// How a name arrived, which decides how it is read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameFlavor {
    /// A TFTP file name: `/` and `\` both separate components.
    Tftp,
    /// The path of an HTTP request target (no query): percent-encoded, `/` separates.
    Http,
}

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("empty name")]
    Empty,
    #[error("name longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("name contains NUL or a control character")]
    ControlChar,
    #[error("name steps outside the root")]
    Traversal,
    #[error("absolute, UNC or drive-letter name")]
    Absolute,
    #[error("backslash in an HTTP path")]
    Backslash,
    #[error("bad or encoded-traversal percent escape")]
    BadEscape,
    #[error("name is not UTF-8")]
    NotUtf8,
}

/// A name that passed every check: components with no separators, no `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelPath {
    components: Vec<String>,
}

impl RelPath {
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.components.iter().map(String::as_str)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(c)?;
        }
        Ok(())
    }
}

/// Checks a client-supplied name and returns it relative to the image root.
pub fn sanitize(raw: &str, flavor: NameFlavor) -> Result<RelPath, PathError> {
    if raw.len() > 3 * MAX_NAME_LEN {
        return Err(PathError::TooLong);
    }
    let decoded;
    let name = match flavor {
        NameFlavor::Tftp => raw,
        NameFlavor::Http => {
            decoded = percent_decode(raw)?;
            if decoded.contains('\\') {
                return Err(PathError::Backslash);
            }
            decoded.as_str()
        }
    };
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PathError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    // An escape that survives decoding is double encoding, the classic way past a filter.
    if has_encoded_separator_or_dot(name) {
        return Err(PathError::BadEscape);
    }
    let is_sep = |c: char| c == '/' || (flavor == NameFlavor::Tftp && c == '\\');
    let mut rest = name;
    if let Some(first) = rest.chars().next().filter(|&c| is_sep(c)) {
        rest = &rest[first.len_utf8()..];
        if rest.starts_with(is_sep) {
            return Err(PathError::Absolute);
        }
    }
    let mut components = Vec::new();
    for part in rest.split(is_sep) {
        match part {
            "" | "." => continue,
            _ if part.bytes().all(|b| b == b'.') => return Err(PathError::Traversal),
            // Windows drops trailing dots and spaces: `.. ` and `..\u{20}.` mean `..` there.
            _ if part.trim_end_matches(['.', ' ']).is_empty() => return Err(PathError::Traversal),
            // Drive letters (`C:`), alternate data streams (`file:stream`), device paths.
            _ if part.contains(':') => return Err(PathError::Absolute),
            _ => components.push(part.to_owned()),
        }
    }
    if components.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(RelPath { components })
}

fn has_encoded_separator_or_dot(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["%2e", "%2f", "%5c", "%00", "%25"]
        .iter()
        .any(|p| lower.contains(p))
}

/// Decodes `%XX` escapes (RFC 3986 section 2.1) into UTF-8; bad escapes, NUL and non-UTF-8
/// results are errors.
pub fn percent_decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hi = hex_val(hex[0]).ok_or(PathError::BadEscape)?;
            let lo = hex_val(hex[1]).ok_or(PathError::BadEscape)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(PathError::ControlChar);
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Decodes one component of a query string as browsers and iPXE write them (form encoding:
/// `+` is a space, a literal `+` arrives as `%2B`).
pub fn decode_query_component(raw: &str) -> Option<String> {
    percent_decode(&raw.replace('+', " ")).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str, flavor: NameFlavor) -> String {
        sanitize(raw, flavor)
            .unwrap_or_else(|e| panic!("{raw:?} refused: {e}"))
            .to_string()
    }

    #[test]
    fn accepts_what_real_clients_send() {
        assert_eq!(ok("undionly.kpxe", NameFlavor::Tftp), "undionly.kpxe");
        assert_eq!(ok("/pxelinux.0", NameFlavor::Tftp), "pxelinux.0");
        assert_eq!(ok("\\Boot\\BCD", NameFlavor::Tftp), "Boot/BCD");
        assert_eq!(
            ok("boot/./x64//ipxe.efi", NameFlavor::Tftp),
            "boot/x64/ipxe.efi"
        );
        assert_eq!(
            ok("/sources/boot%20x.wim", NameFlavor::Http),
            "sources/boot x.wim"
        );
        assert_eq!(ok("/caf%C3%A9", NameFlavor::Http), "café");
    }

    #[test]
    fn refuses_every_traversal_form() {
        use PathError::*;
        let cases: &[(&str, NameFlavor, PathError)] = &[
            ("", NameFlavor::Tftp, Empty),
            ("/", NameFlavor::Http, Empty),
            ("../etc/passwd", NameFlavor::Tftp, Traversal),
            ("a/../../etc/passwd", NameFlavor::Tftp, Traversal),
            ("..\\..\\windows\\win.ini", NameFlavor::Tftp, Traversal),
            ("a\\..\\..\\b", NameFlavor::Tftp, Traversal),
            ("/..", NameFlavor::Http, Traversal),
            ("...", NameFlavor::Tftp, Traversal),
            (".. ", NameFlavor::Tftp, Traversal),
            ("//etc/passwd", NameFlavor::Tftp, Absolute),
            ("\\\\server\\share\\x", NameFlavor::Tftp, Absolute),
            ("\\\\?\\C:\\x", NameFlavor::Tftp, Absolute),
            ("C:\\Windows\\win.ini", NameFlavor::Tftp, Absolute),
            ("c:/boot.ini", NameFlavor::Tftp, Absolute),
            ("/boot.wim:stream", NameFlavor::Http, Absolute),
            ("boot\0.wim", NameFlavor::Tftp, ControlChar),
            ("/boot%00.wim", NameFlavor::Http, ControlChar),
            ("boot\n.wim", NameFlavor::Tftp, ControlChar),
            ("/%2e%2e/etc/passwd", NameFlavor::Http, Traversal),
            ("/%2E%2E%2Fetc%2Fpasswd", NameFlavor::Http, Traversal),
            ("/..%2fetc", NameFlavor::Http, Traversal),
            ("/%252e%252e/etc/passwd", NameFlavor::Http, BadEscape),
            ("%2e%2e/etc/passwd", NameFlavor::Tftp, BadEscape),
            ("/a%5c..%5cb", NameFlavor::Http, Backslash),
            ("/a\\b", NameFlavor::Http, Backslash),
            ("/bad%zzescape", NameFlavor::Http, BadEscape),
            ("/trunc%2", NameFlavor::Http, BadEscape),
            ("/%ff%fe", NameFlavor::Http, NotUtf8),
        ];
        for (raw, flavor, want) in cases {
            assert_eq!(sanitize(raw, *flavor), Err(*want), "{raw:?}");
        }
    }

    #[test]
    fn refuses_long_names() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(sanitize(&long, NameFlavor::Tftp), Err(PathError::TooLong));
        let just = "a".repeat(MAX_NAME_LEN);
        assert!(sanitize(&just, NameFlavor::Tftp).is_ok());
        let encoded = "%61".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            sanitize(&encoded, NameFlavor::Http),
            Err(PathError::TooLong)
        );
    }
}
