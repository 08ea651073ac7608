//! The TFTP client machine the load generator and tests boot with. It reproduces what real
//! firmware sends (see [`ClientProfile`]) and hands every new in-order byte to the caller
//! without copying it.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::options::{DEFAULT_BLKSIZE, MSFT_WINDOW_REQUEST};
use super::transfer::Rollover;
use super::wire::{ErrorCode, Request, TftpRepr};
use crate::net::{Payload, Transmit};

/// One download's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub file: String,
    pub blksize: Option<u16>,
    /// Ask the size (`tsize=0`).
    pub tsize: bool,
    pub windowsize: Option<u16>,
    /// Windows boot manager's `msftwindow=31416`.
    pub msftwindow: bool,
    pub timeout: Duration,
    pub retries: u32,
    /// EDK2's size probe: read the OACK, answer ERROR 8, stop.
    pub abort_after_oack: bool,
    pub rollover: Rollover,
}

/// What real clients send, captured from them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientProfile {
    /// EDK2's first request: `tsize=0 blksize=1468 windowsize=4`, aborted after the OACK.
    Edk2Probe,
    /// EDK2's real request: `blksize=1468 windowsize=4`; 4 s timeout, 6 retries.
    Edk2,
    /// iPXE: `blksize=1432 tsize=0`, no windowsize.
    Ipxe,
    /// PXELINUX: `tsize=0 blksize=1408`.
    Pxelinux,
    /// Legacy BIOS PXE ROMs: `tsize blksize=1456`.
    Bios,
    /// Windows boot manager: `blksize=1456 windowsize=8 msftwindow=31416`.
    Bootmgr,
    /// RFC 1350 only: 512-byte blocks, lock-step.
    Plain,
}

impl ClientProfile {
    pub fn config(self, file: &str) -> ClientConfig {
        let base = ClientConfig {
            file: file.to_owned(),
            blksize: None,
            tsize: false,
            windowsize: None,
            msftwindow: false,
            timeout: Duration::from_secs(1),
            retries: 5,
            abort_after_oack: false,
            rollover: Rollover::Zero,
        };
        match self {
            ClientProfile::Edk2Probe => ClientConfig {
                blksize: Some(1468),
                tsize: true,
                windowsize: Some(4),
                timeout: Duration::from_secs(4),
                retries: 6,
                abort_after_oack: true,
                ..base
            },
            ClientProfile::Edk2 => ClientConfig {
                blksize: Some(1468),
                windowsize: Some(4),
                timeout: Duration::from_secs(4),
                retries: 6,
                ..base
            },
            ClientProfile::Ipxe => ClientConfig {
                blksize: Some(1432),
                tsize: true,
                ..base
            },
            ClientProfile::Pxelinux => ClientConfig {
                blksize: Some(1408),
                tsize: true,
                ..base
            },
            ClientProfile::Bios => ClientConfig {
                blksize: Some(1456),
                tsize: true,
                timeout: Duration::from_secs(2),
                ..base
            },
            ClientProfile::Bootmgr => ClientConfig {
                blksize: Some(1456),
                windowsize: Some(8),
                msftwindow: true,
                ..base
            },
            ClientProfile::Plain => base,
        }
    }
}

/// New file bytes: `data[range]` of the datagram just handled, at `offset` in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub offset: u64,
    pub range: Range<usize>,
}

/// How a download ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDone {
    /// Bytes received (0 for an aborted probe).
    pub size: u64,
    /// The size the server announced in its OACK.
    pub tsize: Option<u64>,
    pub blksize: u32,
    pub windowsize: u16,
}

/// Why a download failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("server error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("no answer after {0} tries")]
    TimedOut(u32),
    #[error("server sent an invalid OACK: {0}")]
    BadOack(String),
    #[error("request does not fit in a datagram")]
    RequestTooLarge,
}

/// Counters of one download.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub datagrams: u64,
    pub duplicates: u64,
    pub retransmits: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Requesting,
    Receiving,
    Done,
}

/// What the client must send next.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Owed {
    Nothing,
    Request,
    /// ACK of absolute block n.
    Ack(u64),
    /// ERROR to the server (probe abort or stranger).
    Error(ErrorCode, SocketAddr),
}

/// One download.
#[derive(Debug)]
pub struct TftpClient {
    config: ClientConfig,
    server: SocketAddr,
    /// The server's transfer port, once it answered.
    tid: Option<SocketAddr>,
    state: State,
    owed: Owed,
    blksize: u32,
    windowsize: u16,
    msftwindow: bool,
    tsize: Option<u64>,
    /// Next absolute block expected.
    expected: u64,
    /// Blocks received in order since the last ACK.
    in_window: u16,
    /// A gap was already reported for this position.
    gap_acked: bool,
    deadline: Instant,
    tries: u32,
    received: u64,
    outcome: Option<Result<ClientDone, ClientError>>,
    stats: ClientStats,
}

impl TftpClient {
    pub fn new(now: Instant, server: SocketAddr, config: ClientConfig) -> Self {
        Self {
            server,
            tid: None,
            state: State::Requesting,
            owed: Owed::Request,
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            msftwindow: false,
            tsize: None,
            expected: 1,
            in_window: 0,
            gap_acked: false,
            deadline: now + config.timeout,
            tries: 0,
            received: 0,
            outcome: None,
            stats: ClientStats::default(),
            config,
        }
    }

    pub fn outcome(&self) -> Option<Result<ClientDone, ClientError>> {
        self.outcome.clone()
    }

    pub fn stats(&self) -> ClientStats {
        self.stats.clone()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Done).then_some(self.deadline)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done || now < self.deadline {
            return;
        }
        if self.tries >= self.config.retries {
            self.finish(Err(ClientError::TimedOut(self.tries + 1)));
            return;
        }
        self.tries += 1;
        self.stats.retransmits += 1;
        self.owed = match self.state {
            State::Requesting => Owed::Request,
            _ => Owed::Ack(self.expected - 1),
        };
        self.in_window = 0;
        self.gap_acked = false;
        self.deadline = now + self.config.timeout;
    }

    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let owed = std::mem::replace(&mut self.owed, Owed::Nothing);
        let to = self.tid.unwrap_or(self.server);
        let (len, destination) = match owed {
            Owed::Nothing => return None,
            Owed::Request => {
                let mut opts: Vec<(&str, String)> = Vec::new();
                if self.config.tsize {
                    opts.push(("tsize", "0".into()));
                }
                if let Some(b) = self.config.blksize {
                    opts.push(("blksize", b.to_string()));
                }
                if let Some(w) = self.config.windowsize {
                    opts.push(("windowsize", w.to_string()));
                }
                if self.config.msftwindow {
                    opts.push(("msftwindow", MSFT_WINDOW_REQUEST.into()));
                }
                let request = TftpRepr::Rrq(Request {
                    filename: &self.config.file,
                    mode: "octet",
                    options: opts.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                });
                match request.emit(buf) {
                    Ok(n) => (n, self.server),
                    Err(_) => {
                        self.finish(Err(ClientError::RequestTooLarge));
                        return None;
                    }
                }
            }
            Owed::Ack(block) => {
                let extra = self
                    .msftwindow
                    .then(|| self.windowsize.min(u16::from(u8::MAX)) as u8);
                let wire = self.config.rollover.wire(block);
                let ack = TftpRepr::Ack { block: wire, extra };
                (ack.emit(buf).ok()?, to)
            }
            Owed::Error(code, dest) => {
                let msg = if code == ErrorCode::OptionRefused {
                    "size probe done"
                } else {
                    "unknown transfer ID"
                };
                let error = TftpRepr::Error { code, message: msg };
                (error.emit(buf).ok()?, dest)
            }
        };
        let _ = now;
        Some(Transmit {
            destination,
            source_ip: None,
            ifindex: None,
            payload: Payload::Bytes { len },
        })
    }

    /// Handles a datagram from `from`; returns the new in-order file bytes it carried.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Delivered> {
        if self.state == State::Done {
            return None;
        }
        //= https://www.rfc-editor.org/rfc/rfc1350#section-4
        //# If a source TID does not match, the packet should be discarded as erroneously sent
        //# from somewhere else.  An error packet should be sent to the source of the incorrect
        //# packet, while not disturbing the transfer.
        match self.tid {
            Some(tid) if tid != from => {
                self.owed = Owed::Error(ErrorCode::UnknownTransferId, from);
                return None;
            }
            None if from.ip() != self.server.ip() => return None,
            _ => {}
        }
        let packet = TftpRepr::parse_bytes(data).ok()?;
        self.stats.datagrams += 1;
        match packet {
            TftpRepr::Oack { options } if self.state == State::Requesting => {
                self.tid = Some(from);
                if let Err(e) = self.accept_oack(&options) {
                    self.finish(Err(e));
                    return None;
                }
                if self.config.abort_after_oack {
                    //= https://www.rfc-editor.org/rfc/rfc2347#section-5
                    //# the client ... may send an ERROR packet (error code 8) and terminate.
                    self.owed = Owed::Error(ErrorCode::OptionRefused, from);
                    let done = ClientDone {
                        size: 0,
                        tsize: self.tsize,
                        blksize: self.blksize,
                        windowsize: self.windowsize,
                    };
                    self.finish(Ok(done));
                    return None;
                }
                self.state = State::Receiving;
                self.tries = 0;
                self.owed = Owed::Ack(0);
                self.deadline = now + self.config.timeout;
                None
            }
            TftpRepr::Data {
                block,
                data: payload,
            } => {
                if self.state == State::Requesting {
                    // No OACK: the server took none of our options (RFC 2347 fallback).
                    self.tid = Some(from);
                    self.state = State::Receiving;
                }
                self.handle_data(now, block, payload.len(), data.len())
            }
            TftpRepr::Error { code, message } => {
                self.finish(Err(ClientError::Server {
                    code: code.code(),
                    message: message.to_owned(),
                }));
                None
            }
            _ => None,
        }
    }

    fn accept_oack(&mut self, options: &[(&str, &str)]) -> Result<(), ClientError> {
        for (name, value) in options {
            let bad = || ClientError::BadOack(format!("{name}={value}"));
            match name.to_ascii_lowercase().as_str() {
                "blksize" => {
                    let v: u32 = value.parse().map_err(|_| bad())?;
                    let asked = self.config.blksize.map(u32::from).ok_or_else(bad)?;
                    if !(8..=asked).contains(&v) {
                        return Err(bad());
                    }
                    self.blksize = v;
                }
                "windowsize" => {
                    let v: u16 = value.parse().map_err(|_| bad())?;
                    let asked = self.config.windowsize.ok_or_else(bad)?;
                    if v == 0 || v > asked {
                        return Err(bad());
                    }
                    self.windowsize = v;
                }
                "tsize" => self.tsize = Some(value.parse().map_err(|_| bad())?),
                "msftwindow" => {
                    self.msftwindow = self.config.msftwindow;
                    if self.msftwindow && self.config.windowsize.is_none() {
                        self.windowsize = 8;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn handle_data(
        &mut self,
        now: Instant,
        wire: u16,
        len: usize,
        total: usize,
    ) -> Option<Delivered> {
        let expected_wire = self.config.rollover.wire(self.expected);
        if wire != expected_wire {
            self.stats.duplicates += 1;
            // Behind: a duplicate. Ahead: a gap; say once where we are.
            //= https://www.rfc-editor.org/rfc/rfc7440#section-4
            //# the receiver ... sends an ACK for the last packet received in sequence
            let behind = self.expected > 1 && wire == self.config.rollover.wire(self.expected - 1);
            if !behind && !self.gap_acked {
                self.gap_acked = true;
                self.in_window = 0;
                self.owed = Owed::Ack(self.expected - 1);
                self.deadline = now + self.config.timeout;
            }
            return None;
        }
        let offset = (self.expected - 1) * u64::from(self.blksize);
        self.expected += 1;
        self.received += len as u64;
        self.tries = 0;
        self.gap_acked = false;
        self.in_window += 1;
        self.deadline = now + self.config.timeout;
        let last = len < self.blksize as usize;
        if last || self.in_window >= self.windowsize {
            self.in_window = 0;
            self.owed = Owed::Ack(self.expected - 1);
        }
        if last {
            let done = ClientDone {
                size: self.received,
                tsize: self.tsize,
                blksize: self.blksize,
                windowsize: self.windowsize,
            };
            self.finish(Ok(done));
        }
        Some(Delivered {
            offset,
            range: total - len..total,
        })
    }

    fn finish(&mut self, outcome: Result<ClientDone, ClientError>) {
        self.state = State::Done;
        self.outcome = Some(outcome);
    }
}
