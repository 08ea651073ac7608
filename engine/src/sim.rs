//! A deterministic in-memory network: a virtual clock and seeded loss, duplication, reordering
//! and latency. Any failure replays from its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::image::MemoryCatalog;
use crate::net::{Payload, Transmit};

/// How the network misbehaves.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Faults {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by up to `jitter` (and so overtaken).
    pub reorder: f64,
    pub latency: Duration,
    pub jitter: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        latency: Duration::from_micros(100),
        jitter: Duration::ZERO,
    };

    /// 5% loss, 1% duplication, 10% reordering within 2 ms.
    pub const LOSSY: Faults = Faults {
        loss: 0.05,
        duplicate: 0.01,
        reorder: 0.10,
        latency: Duration::from_micros(200),
        jitter: Duration::from_millis(2),
    };
}

/// A datagram in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The network and its clock.
#[derive(Debug)]
pub struct SimNet {
    pub seed: u64,
    rng: SmallRng,
    faults: Faults,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    /// Datagrams sent and dropped, for assertions.
    pub sent: u64,
    pub dropped: u64,
}

impl SimNet {
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            faults,
            now: Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            sent: 0,
            dropped: 0,
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends one datagram.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.sent += 1;
        if self.rng.random_bool(self.faults.loss) {
            self.dropped += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.faults.latency;
            if !self.faults.jitter.is_zero() && self.rng.random_bool(self.faults.reorder) {
                delay += self.faults.jitter.mul_f64(self.rng.random::<f64>());
            }
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                at: self.now + delay,
                seq: self.seq,
                from,
                to,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Sends what a machine polled, reading image bytes from `images` for segment runs.
    pub fn send_transmit(
        &mut self,
        from: SocketAddr,
        t: &Transmit,
        buf: &[u8],
        images: &MemoryCatalog,
    ) {
        match t.payload {
            Payload::Bytes { len } => self.send(from, t.destination, buf[..len].to_vec()),
            Payload::Segments {
                header_len,
                count,
                segment,
                image,
                range,
            } => {
                let hl = usize::from(header_len);
                for i in 0..u64::from(count) {
                    let start = range.start + i * u64::from(segment);
                    let end = (start + u64::from(segment)).min(range.end);
                    let mut d = buf[i as usize * hl..(i as usize + 1) * hl].to_vec();
                    if start < end {
                        let slice = images
                            .slice(image, crate::image::ByteRange::new(start, end))
                            .expect("segment inside a held image");
                        d.extend_from_slice(slice);
                    }
                    self.send(from, t.destination, d);
                }
            }
        }
    }

    /// When the next datagram lands.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(f)| f.at)
    }

    /// Moves the clock forward to `t` (never back).
    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
        }
    }

    /// Delivers the next datagram due at or before the current time.
    pub fn deliver(&mut self) -> Option<Datagram> {
        if self.queue.peek().is_some_and(|Reverse(f)| f.at <= self.now) {
            let Reverse(f) = self.queue.pop()?;
            return Some(Datagram {
                from: f.from,
                to: f.to,
                bytes: f.bytes,
            });
        }
        None
    }
}
