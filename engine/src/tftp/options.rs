//! Option negotiation (RFC 2347) for blksize (2348), tsize and timeout (2349), windowsize (7440)
//! and the WDS variable window (`msftwindow`).

use std::time::Duration;

/// `msftwindow` value Windows boot manager sends, and the one WDS answers with.
pub const MSFT_WINDOW_REQUEST: &str = "31416";
pub const MSFT_WINDOW_REPLY: &str = "27182";

//= https://www.rfc-editor.org/rfc/rfc2348#section-2
//# Valid values range between "8" and "65464" octets, inclusive.
pub const MIN_BLKSIZE: u32 = 8;
pub const MAX_BLKSIZE: u32 = 65_464;
pub const DEFAULT_BLKSIZE: u32 = 512;

/// What the server agreed to for one transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u32,
    pub windowsize: u16,
    pub timeout: Option<Duration>,
    pub msftwindow: bool,
    /// Options to echo in the OACK, in the client's order; empty = no OACK.
    pub oack: Vec<(&'static str, String)>,
}

/// Limits the server applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_blksize: u32,
    pub max_windowsize: u16,
    /// The longest `timeout` accepted; a longer one is left out of the OACK.
    pub max_timeout: Duration,
    pub msftwindow: bool,
}

/// Reads the client's options and decides. Invalid values are ignored (not echoed), and so is
/// every repeat of an option: the first occurrence decides.
pub fn negotiate(options: &[(&str, &str)], file_len: u64, limits: Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: None,
        msftwindow: false,
        oack: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in options {
        let value = value.trim();
        let name = name.to_ascii_lowercase();
        // RFC 2347 does not say what a repeated option means. A client that reads the first
        // value must see the value the blocks follow, and the OACK must name each option once.
        if seen.contains(&name) {
            continue;
        }
        seen.push(name.clone());
        match name.as_str() {
            "blksize" => {
                //= https://www.rfc-editor.org/rfc/rfc2348#section-2
                //# If the server is willing to accept the blocksize option, it sends an Option
                //# Acknowledgment (OACK) to the client.  The specified value must be less than
                //# or equal to the value specified by the client.
                if let Ok(v) = value.parse::<u32>()
                    && (MIN_BLKSIZE..=MAX_BLKSIZE).contains(&v)
                {
                    n.blksize = v.min(limits.max_blksize).max(MIN_BLKSIZE);
                    n.oack.push(("blksize", n.blksize.to_string()));
                }
            }
            //= https://www.rfc-editor.org/rfc/rfc2349#section-4
            //# In Read Request packets, a size of "0" is specified in the request and the
            //# size of the file, in octets, is returned in the OACK.
            "tsize" if value.parse::<u64>().is_ok() => {
                n.oack.push(("tsize", file_len.to_string()));
            }
            "timeout" => {
                //= https://www.rfc-editor.org/rfc/rfc2349#section-3
                //# Valid values range between "1" and "255" seconds, inclusive.
                //
                //= https://www.rfc-editor.org/rfc/rfc2349#section-3
                //# If the server is willing to accept the timeout option, it sends an Option
                //# Acknowledgment (OACK) to the client.  The specified timeout value must
                //# match the value specified by the client.
                //
                // So a timeout above the cap cannot be lowered in the OACK: it is left out, and
                // the transfer runs on the server's own timeout. Uncapped, 255 s times the
                // retries held a transfer slot and a port for about 25 minutes per spoofed RRQ.
                if let Ok(v) = value.parse::<u64>()
                    && (1..=255).contains(&v)
                    && Duration::from_secs(v) <= limits.max_timeout
                {
                    n.timeout = Some(Duration::from_secs(v));
                    n.oack.push(("timeout", v.to_string()));
                }
            }
            "windowsize" => {
                //= https://www.rfc-editor.org/rfc/rfc7440#section-3
                //# Valid values range between "1" and "65535" blocks, inclusive.
                if let Ok(v) = value.parse::<u32>()
                    && (1..=65_535).contains(&v)
                {
                    n.windowsize = (v as u16).min(limits.max_windowsize).max(1);
                    n.oack.push(("windowsize", n.windowsize.to_string()));
                }
            }
            // Windows Deployment Services' variable window: bootmgr asks with 31416, WDS answers
            // 27182, and from then on each ACK carries one more byte, the next window size.
            "msftwindow" if limits.msftwindow && value == MSFT_WINDOW_REQUEST => {
                n.msftwindow = true;
                n.oack.push(("msftwindow", MSFT_WINDOW_REPLY.to_owned()));
            }
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        max_timeout: Duration::from_secs(10),
        msftwindow: true,
    };

    #[test]
    fn clamps_and_echoes_in_order() {
        let n = negotiate(
            &[("TSIZE", "0"), ("blksize", "8192"), ("windowsize", "200")],
            1234,
            LIMITS,
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 64);
        assert_eq!(
            n.oack,
            vec![
                ("tsize", "1234".to_owned()),
                ("blksize", "1468".to_owned()),
                ("windowsize", "64".to_owned())
            ]
        );
    }

    #[test]
    fn ignores_invalid_values() {
        let n = negotiate(
            &[
                ("blksize", "7"),
                ("blksize", "70000"),
                ("timeout", "0"),
                ("timeout", "256"),
                ("windowsize", "0"),
                ("tsize", "x"),
                ("msftwindow", "12"),
                ("unknown", "1"),
            ],
            5,
            LIMITS,
        );
        assert!(n.oack.is_empty());
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, None));
    }

    #[test]
    fn wds_variable_window() {
        let n = negotiate(
            &[
                ("blksize", "1456"),
                ("windowsize", "8"),
                ("msftwindow", "31416"),
            ],
            5,
            LIMITS,
        );
        assert!(n.msftwindow);
        assert!(n.oack.contains(&("msftwindow", "27182".to_owned())));
        let off = Limits {
            msftwindow: false,
            ..LIMITS
        };
        assert!(!negotiate(&[("msftwindow", "31416")], 5, off).msftwindow);
    }

    #[test]
    fn timeout_above_the_cap_is_left_out_of_the_oack() {
        let n = negotiate(&[("timeout", "10"), ("blksize", "1468")], 5, LIMITS);
        assert_eq!(n.timeout, Some(Duration::from_secs(10)));
        assert!(n.oack.contains(&("timeout", "10".to_owned())));
        let n = negotiate(&[("timeout", "255"), ("blksize", "1468")], 5, LIMITS);
        assert_eq!(n.timeout, None, "the server's own timeout applies");
        assert_eq!(n.oack, vec![("blksize", "1468".to_owned())]);
    }

    #[test]
    fn the_first_occurrence_of_an_option_decides_and_is_echoed_once() {
        let n = negotiate(
            &[
                ("blksize", "1468"),
                ("BLKSIZE", "512"),
                ("windowsize", "4"),
                ("windowsize", "64"),
                ("timeout", "2"),
                ("timeout", "3"),
                ("tsize", "0"),
                ("tsize", "0"),
            ],
            1234,
            LIMITS,
        );
        assert_eq!(
            (n.blksize, n.windowsize, n.timeout),
            (1468, 4, Some(Duration::from_secs(2)))
        );
        assert_eq!(
            n.oack,
            vec![
                ("blksize", "1468".to_owned()),
                ("windowsize", "4".to_owned()),
                ("timeout", "2".to_owned()),
                ("tsize", "1234".to_owned()),
            ]
        );
        // A first value that is invalid still decides: the option is ignored, not replaced.
        let n = negotiate(&[("blksize", "7"), ("blksize", "1468")], 5, LIMITS);
        assert_eq!(n.blksize, DEFAULT_BLKSIZE);
        assert!(n.oack.is_empty());
    }
}
