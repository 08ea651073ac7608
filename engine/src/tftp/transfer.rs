//! One read transfer and its state machine: a few integers, no buffers. It takes ACKs and
//! timeouts and says what to send next; the server around it keeps the tables, the timer heap
//! and the ready queue. Blocks are counted from 1 in a u64, so files past 65535 blocks roll the
//! 16-bit wire number over without losing their place.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::options::Negotiated;
use super::server::{Local, SocketId};
use super::wire::{DATA_HEADER_LEN, emit_data_header, emit_oack};
use crate::image::{ByteRange, ImageId};
use crate::net::Payload;

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

/// How a transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferOutcome {
    /// The client acknowledged the last block.
    Completed { bytes: u64, retransmits: u64 },
    /// It ended before that; the reason says whose doing it was.
    Aborted(Abort),
}

impl TransferOutcome {
    /// EDK2's size probe: it reads `tsize` from the OACK and ends the transfer with ERROR 8
    /// (RFC 2347 section 5). Neither a failure nor a download.
    pub fn is_probe(&self) -> bool {
        matches!(
            self,
            TransferOutcome::Aborted(Abort::Client(ClientAbort::Error { code: 8, .. }))
        )
    }
}

/// Why a transfer ended early, by side, as rustls's `Error` tells an alert the peer sent
/// from a failure of its own: the client's doing (it sent an ERROR, a new request, or went
/// silent) or the server's (it ran out of something, or its file changed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Abort {
    #[error("client: {0}")]
    Client(ClientAbort),
    #[error("server: {0}")]
    Server(ServerAbort),
}

/// The client ended the transfer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientAbort {
    /// It sent an ERROR (EDK2 ends its size probe with ERROR 8).
    #[error("sent ERROR {code}: {message:?}")]
    Error { code: u16, message: String },
    /// A new request from the same address and port replaced it.
    #[error("superseded by a new request")]
    Superseded,
    /// It never acknowledged the first answer, or stopped acknowledging and the retries ran
    /// out.
    #[error("timed out after {retransmits} retransmissions")]
    TimedOut { retransmits: u64 },
}

/// The server ended the transfer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerAbort {
    /// No socket could be had for it.
    #[error("server out of transfer ports")]
    OutOfPorts,
    /// The file changed or went away on the server while it was sent.
    #[error("file changed on the server")]
    FileChanged,
    /// It had not got its first ACK and made room for a new request (server at capacity).
    #[error("evicted before its first ACK: server at capacity")]
    Evicted,
}

/// Where a transfer stands. What it owes its client is part of the state: the OACK again, or
/// a run of DATA blocks, each with what it needs to be sent.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// The OACK is out, or owed (again) when `owed`; waiting for ACK 0.
    Negotiating { owed: bool },
    /// Sending data: a run of blocks is owed (`Some`), or the window is out and the transfer
    /// waits for an ACK (`None`).
    Sending { run: Option<Run> },
}

/// DATA blocks owed now.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// The next block to send.
    pub(crate) next: u64,
    /// A retransmission timeout fired and no ACK came since: the run is the window's first
    /// and last blocks only.
    pub(crate) probe: bool,
}

impl Run {
    fn from(next: u64) -> Self {
        Self { next, probe: false }
    }
}

impl State {
    /// Whether something is owed (the transfer is in, or due in, the ready queue).
    pub(crate) fn owes(&self) -> bool {
        matches!(
            self,
            State::Negotiating { owed: true } | State::Sending { run: Some(_) }
        )
    }
}

/// What an ACK did to a transfer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum AckStep {
    /// Nothing: not a block in flight, a stale or repeated ACK.
    Ignore,
    /// The last block is acknowledged.
    Complete,
    /// A run is owed: queue the transfer.
    Send,
}

/// What a retransmission timer firing does to a transfer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum TimeoutStep {
    /// A run is owed; sending it arms the next deadline.
    Busy,
    /// The transfer moved on: wait for its real deadline.
    Wait,
    /// Never acknowledged: end it, without a word.
    Expire,
    /// The retries ran out: tell the client and end.
    GiveUp,
    /// Resend: a probe run is owed.
    Resend,
}

/// What the transfer sends next (see [`Transfer::poll`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing now; when `armed`, it waits for its client until its deadline.
    Idle { armed: bool },
    /// `buf` holds too little for one DATA header: poll again with room.
    NoRoom,
    /// This payload; `armed`: it was the last of what the transfer owed.
    Send { payload: Payload, armed: bool },
}

#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) remote: SocketAddr,
    /// The transfer socket it sends from and hears on; none: the TFTP port (single-port mode).
    pub(crate) socket: Option<SocketId>,
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
    pub(crate) state: State,
    /// Highest block the client acknowledged (0 = none).
    pub(crate) acked: u64,
    /// Highest block sent so far.
    pub(crate) sent_max: u64,
    /// The client acknowledged something (the OACK or a block): it showed it receives.
    pub(crate) heard: bool,
    /// When a transfer that was never `heard` ends.
    pub(crate) expires: Instant,
    pub(crate) deadline: Instant,
    /// The earliest entry this transfer has in the server's timer heap, if any. A new deadline
    /// at or after it adds no entry: that one, when it fires, re-arms at the real deadline.
    /// So the heap holds about one entry per transfer, not one per ACK.
    pub(crate) timer_at: Option<Instant>,
    /// The acknowledged block a window was already resent after on a repeated ACK (at most
    /// once per position: see [`Transfer::on_ack`]).
    pub(crate) fast_resent: Option<u64>,
    /// In the server's ready queue.
    pub(crate) queued: bool,
    pub(crate) tries: u32,
    pub(crate) retransmits: u64,
    pub(crate) bytes_sent: u64,
}

/// Where a new transfer's request came from and what was agreed for it.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) remote: SocketAddr,
    pub(crate) local_ip: Option<IpAddr>,
    pub(crate) ifindex: Option<u32>,
    pub(crate) file: String,
    pub(crate) image: ImageId,
    pub(crate) len: u64,
    pub(crate) negotiated: Negotiated,
    /// The retransmission timeout when the client asked none.
    pub(crate) default_timeout: Duration,
    /// How long it waits for its first ACK when the client asked no timeout.
    pub(crate) first_ack_timeout: Duration,
    pub(crate) rollover: Rollover,
}

impl Transfer {
    pub(crate) fn new(start: Start, now: Instant) -> Self {
        let n = start.negotiated;
        let has_oack = !n.oack.is_empty();
        let timeout = n.timeout.unwrap_or(start.default_timeout);
        // A client's retransmissions in the handshake come its own timeout apart: the
        // negotiated one, or one the server does not know (`first_ack_timeout` covers it).
        let first_ack = start.first_ack_timeout.max(
            n.timeout
                .map_or(Duration::ZERO, |t| t * 2 + Duration::from_secs(1)),
        );
        Self {
            remote: start.remote,
            socket: None,
            local_ip: start.local_ip,
            ifindex: start.ifindex,
            file: start.file,
            image: start.image,
            len: start.len,
            blksize: n.blksize,
            windowsize: n.windowsize,
            msftwindow: n.msftwindow,
            timeout,
            rollover: start.rollover,
            oack: n.oack,
            //= https://www.rfc-editor.org/rfc/rfc2347#section-4
            //# If the transfer was initiated with a Read Request, then an ACK (with the data
            //# block number set to 0) is sent by the client to confirm the values in the
            //# server's OACK packet.
            state: if has_oack {
                State::Negotiating { owed: true }
            } else {
                State::Sending {
                    run: Some(Run::from(1)),
                }
            },
            acked: 0,
            sent_max: 0,
            heard: false,
            expires: now + first_ack,
            deadline: now,
            timer_at: None,
            fast_resent: None,
            queued: false,
            tries: 0,
            retransmits: 0,
            bytes_sent: 0,
        }
    }

    /// The socket it sends from and hears on.
    pub(crate) fn local(&self) -> Local {
        self.socket.map_or(Local::Listener, Local::Socket)
    }

    /// Blocks in the file: the last one is shorter than `blksize`, possibly empty.
    pub(crate) fn total_blocks(&self) -> u64 {
        self.len / u64::from(self.blksize) + 1
    }

    /// The last block of the window that starts after `acked`.
    pub(crate) fn window_end(&self) -> u64 {
        (self.acked + u64::from(self.windowsize)).min(self.total_blocks())
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
        if matches!(self.state, State::Negotiating { .. }) {
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

    /// A repeated RRQ while the transfer never heard from its client: the first answer is
    /// owed again (the OACK, or block 1 when there is no OACK, whose window is then one
    /// block). Never a whole window, and the transfer's life is not extended, so repeated
    /// RRQs from a spoofed source get back about what they sent. Returns whether something
    /// is owed.
    pub(crate) fn on_repeated_request(&mut self) -> bool {
        if self.heard {
            return false;
        }
        self.state = match self.state {
            State::Negotiating { .. } => State::Negotiating { owed: true },
            State::Sending { run } => State::Sending {
                run: Some(Run {
                    next: 1,
                    probe: run.is_some_and(|r| r.probe),
                }),
            },
        };
        true
    }

    /// An ACK of wire block `wire` arrived at `now` (`extra`: the WDS window byte).
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        wire: u16,
        extra: Option<u8>,
        max_windowsize: u16,
    ) -> AckStep {
        let Some(block) = self.resolve_ack(wire) else {
            return AckStep::Ignore;
        };
        let negotiating = matches!(self.state, State::Negotiating { .. });
        if !self.heard {
            // Without an OACK, ACK 0 acknowledges nothing we sent.
            if !negotiating && block == 0 {
                return AckStep::Ignore;
            }
            self.heard = true;
        }
        if self.msftwindow
            && let Some(w) = extra
        {
            self.windowsize = u16::from(w).clamp(1, max_windowsize.max(1));
        }
        if negotiating {
            self.acked = 0;
        } else if block < self.acked {
            return AckStep::Ignore;
        } else if block == self.acked {
            //= https://www.rfc-editor.org/rfc/rfc7440#section-4
            //# the receiver ... sends an ACK for the last packet received in sequence
            //
            // The same ACK again, while blocks after it are out, means the block after it was
            // lost: resend from there, once per position. Every further copy of that ACK is
            // ignored, so duplicated ACKs never breed duplicate windows (RFC 1350's Sorcerer's
            // Apprentice); the timeout covers the rest.
            if self.sent_max <= self.acked || self.fast_resent == Some(block) {
                return AckStep::Ignore;
            }
            self.fast_resent = Some(block);
            self.retransmits += self.window_end().saturating_sub(self.acked);
        } else {
            self.acked = block;
        }
        if self.acked >= self.total_blocks() {
            return AckStep::Complete;
        }
        //= https://www.rfc-editor.org/rfc/rfc7440#section-4
        //# If the sender receives an ACK for a block that is not the last one of the window,
        //# it ... starts a new window beginning with the block that follows the acknowledged
        //# one.
        //
        // The client answered: whole windows again.
        self.state = State::Sending {
            run: Some(Run::from(self.acked + 1)),
        };
        self.tries = 0;
        self.deadline = now + self.timeout;
        AckStep::Send
    }

    /// Its timer fired at `now`; `retries`: how many probes before it gives up.
    pub(crate) fn on_timeout(&mut self, now: Instant, retries: u32) -> TimeoutStep {
        // Sending: the run it owes arms a new deadline when it leaves.
        if self.state.owes() {
            return TimeoutStep::Busy;
        }
        if self.deadline > now {
            return TimeoutStep::Wait;
        }
        if !self.heard {
            //= https://www.rfc-editor.org/rfc/rfc1350#section-2
            //# If a packet gets lost in the network, the intended recipient will timeout
            //# and may retransmit his last packet (which may be data or an
            //# acknowledgment), thus causing the sender of the lost packet to retransmit
            //# that lost packet.
            //
            // Never acknowledged: the peer's last packet is its RRQ, which a real client
            // retransmits (answered again, or it starts afresh once this one is gone).
            // Nothing was resent on a timer, and a spoofed source needs no ERROR either.
            return TimeoutStep::Expire;
        }
        if self.tries >= retries {
            return TimeoutStep::GiveUp;
        }
        self.tries += 1;
        //= https://www.rfc-editor.org/rfc/rfc5681#section-3.1
        //# Furthermore, upon a timeout (as specified in [RFC2988]) cwnd MUST be set to no
        //# more than the loss window, LW, which equals 1 full-sized segment (regardless of
        //# the value of IW).
        //
        // TFTP's window plays cwnd's part: until the client answers, each timeout resends
        // the window's first and last blocks only, so a client that acknowledged once and
        // vanished costs one window and two blocks per retry. One block is not enough: an
        // RFC 7440 receiver that has nothing of the window takes the first block in order
        // and then waits for the rest (its own timeout, 4 s for EDK2), and one that has all
        // of it may drop a repeat of the last block it got; the last block, out of order or
        // completing the window, makes the first kind answer, and the first block, a
        // repeat, the second. The first ACK restores whole windows at once, because such a
        // receiver acknowledges only a full window, so a window grown step by step would
        // stall it at every step.
        self.fast_resent = None;
        self.state = State::Sending {
            run: Some(Run {
                next: self.acked + 1,
                probe: true,
            }),
        };
        self.retransmits += if self.window_end() > self.acked + 1 {
            2
        } else {
            1
        };
        TimeoutStep::Resend
    }

    /// Nothing is owed any more: the transfer waits for its client until `now + timeout`;
    /// one that never heard from its client, until it expires (sending again does not extend
    /// its life).
    fn arm(&mut self, now: Instant) {
        self.state = match self.state {
            State::Negotiating { .. } => State::Negotiating { owed: false },
            State::Sending { .. } => State::Sending { run: None },
        };
        self.deadline = if self.heard {
            now + self.timeout
        } else {
            self.expires
        };
    }

    /// What it sends next: the OACK into `buf` (`Payload::Bytes`), or up to `max_datagrams`
    /// DATA blocks of its run (`Payload::Segments`, their headers in `buf`). A run that does
    /// not fit continues in the next poll.
    pub(crate) fn poll(&mut self, now: Instant, max_datagrams: usize, buf: &mut [u8]) -> Next {
        match self.state {
            State::Negotiating { owed: false } | State::Sending { run: None } => {
                Next::Idle { armed: false }
            }
            State::Negotiating { owed: true } => {
                let options = self.oack.iter().map(|(k, v)| (*k, v.as_str()));
                let sent = emit_oack(buf, options);
                self.arm(now);
                match sent {
                    Ok(len) => Next::Send {
                        payload: Payload::Bytes { len },
                        armed: true,
                    },
                    // The buffer holds any OACK this server builds; if not, the timer ends it.
                    Err(_) => Next::Idle { armed: true },
                }
            }
            State::Sending { run: Some(run) } => self.poll_run(now, run, max_datagrams, buf),
        }
    }

    fn poll_run(&mut self, now: Instant, run: Run, max_datagrams: usize, buf: &mut [u8]) -> Next {
        let end = self.window_end();
        // The last block of this run: the window's end, or while probing `next` alone (the
        // probe is the window's first and last block, sent one by one).
        let stop = if run.probe { run.next } else { end };
        if run.next > end {
            self.arm(now);
            return Next::Idle { armed: true };
        }
        let fit = buf.len() / DATA_HEADER_LEN;
        let count = (stop - run.next + 1)
            .min(max_datagrams.max(1) as u64)
            .min(fit as u64)
            .min(u64::from(u16::MAX));
        if count == 0 {
            return Next::NoRoom;
        }
        for k in 0..count {
            let at = (k as usize) * DATA_HEADER_LEN;
            let wire = self.rollover.wire(run.next + k);
            // In bounds: `count` headers fit in `buf`.
            let _ = emit_data_header(&mut buf[at..], wire);
        }
        let range = self.range_of(run.next, count);
        let mut next = run.next + count;
        self.sent_max = self.sent_max.max(next - 1);
        if run.probe && next > self.acked + 1 {
            // The probe's second block is the window's last.
            next = next.max(end);
        }
        self.bytes_sent += range.len();
        let armed = next > end;
        if armed {
            self.arm(now);
        } else {
            self.state = State::Sending {
                run: Some(Run { next, ..run }),
            };
        }
        Next::Send {
            payload: Payload::Segments {
                header_len: DATA_HEADER_LEN as u8,
                count: count as u16,
                segment: self.blksize,
                image: self.image,
                range,
            },
            armed,
        }
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
