//! One read transfer's state: a few integers, no buffers. Blocks are counted from 1 in a u64, so
//! files past 65535 blocks roll the 16-bit wire number over without losing their place.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::image::{ByteRange, ImageId};

/// What block number follows 65535 on the wire.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rollover {
    /// 65535 -> 0, what most clients (iPXE, EDK2, tftp-hpa) expect.
    #[default]
    Zero,
    /// 65535 -> 1, for clients that never expect block 0 again.
    One,
}

impl Rollover {
    /// The wire number of absolute block `n` (n >= 1 for data; 0 is the OACK's ACK).
    pub fn wire(self, n: u64) -> u16 {
        match self {
            Rollover::Zero => n as u16,
            Rollover::One if n == 0 => 0,
            Rollover::One => ((n - 1) % 65_535 + 1) as u16,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// OACK sent; waiting for ACK 0.
    Negotiating,
    /// Sending data.
    Sending,
}

/// What the transfer owes its client now.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owed {
    Nothing,
    Oack,
    /// Data blocks from `next` up to the window end.
    Window,
}

#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) remote: SocketAddr,
    pub(crate) local_ip: Option<IpAddr>,
    pub(crate) ifindex: Option<u32>,
    pub(crate) file: String,
    pub(crate) image: ImageId,
    pub(crate) len: u64,
    pub(crate) blksize: u32,
    pub(crate) windowsize: u16,
    pub(crate) msftwindow: bool,
    pub(crate) timeout: Duration,
    pub(crate) rollover: Rollover,
    pub(crate) oack: Vec<(&'static str, String)>,
    pub(crate) phase: Phase,
    pub(crate) owed: Owed,
    /// Highest block the client acknowledged (0 = none).
    pub(crate) acked: u64,
    /// Next block to send in the current window.
    pub(crate) next: u64,
    /// Highest block sent so far.
    pub(crate) sent_max: u64,
    /// The client acknowledged something (the OACK or a block): it showed it receives.
    pub(crate) heard: bool,
    /// When a transfer that was never `heard` ends.
    pub(crate) expires: Instant,
    /// When the RRQ that started it arrived.
    pub(crate) born: Instant,
    /// A retransmission timeout fired and no ACK came since: windows are one block.
    pub(crate) probing: bool,
    pub(crate) deadline: Instant,
    /// The earliest entry this transfer has in the server's timer heap, if any. A new deadline
    /// at or after it adds no entry: that one, when it fires, re-arms at the real deadline.
    /// So the heap holds about one entry per transfer, not one per ACK.
    pub(crate) timer_at: Option<Instant>,
    /// The acknowledged block a window was already resent after on a repeated ACK (at most
    /// once per position: see `handle_ack`).
    pub(crate) fast_resent: Option<u64>,
    /// In the server's ready queue.
    pub(crate) queued: bool,
    pub(crate) tries: u32,
    pub(crate) retransmits: u64,
    pub(crate) bytes_sent: u64,
}

impl Transfer {
    /// Blocks in the file: the last one is shorter than `blksize`, possibly empty.
    pub(crate) fn total_blocks(&self) -> u64 {
        self.len / u64::from(self.blksize) + 1
    }

    /// The last block of the window that starts after `acked`.
    pub(crate) fn window_end(&self) -> u64 {
        (self.acked + u64::from(self.windowsize)).min(self.total_blocks())
    }

    /// The last block of the run that starts at `next`: the window's end, or while probing
    /// `next` alone (the probe is the window's first and last block, sent one by one).
    pub(crate) fn stop(&self) -> u64 {
        if self.probing {
            self.next
        } else {
            self.window_end()
        }
    }

    /// The byte range of blocks `first..first+count`.
    pub(crate) fn range_of(&self, first: u64, count: u64) -> ByteRange {
        let bs = u64::from(self.blksize);
        let start = ((first - 1) * bs).min(self.len);
        let end = ((first - 1 + count) * bs).min(self.len);
        ByteRange::new(start, end)
    }

    /// The absolute block an ACK's wire number names, among the blocks in flight.
    pub(crate) fn resolve_ack(&self, wire: u16) -> Option<u64> {
        if self.phase == Phase::Negotiating {
            return (wire == 0).then_some(0);
        }
        // Candidates: acked..=sent_max (a window is at most 65535 blocks, so one matches).
        let lo = self.acked;
        let hi = self.sent_max;
        let span = hi.saturating_sub(lo);
        (0..=span.min(65_535))
            .map(|k| hi - k)
            .find(|&n| self.rollover.wire(n) == wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollover_modes() {
        assert_eq!(Rollover::Zero.wire(65_535), 65_535);
        assert_eq!(Rollover::Zero.wire(65_536), 0);
        assert_eq!(Rollover::Zero.wire(65_537), 1);
        assert_eq!(Rollover::One.wire(65_535), 65_535);
        assert_eq!(Rollover::One.wire(65_536), 1);
        assert_eq!(Rollover::One.wire(131_070), 65_535);
        assert_eq!(Rollover::One.wire(131_071), 1);
    }
}
