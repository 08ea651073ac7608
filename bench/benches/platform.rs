//! In-process loopback throughput of the platform data path. Run:
//! `cargo bench -p zpxe-bench --bench platform`.
//!
//! TFTP-shaped windows (1468-byte blocks, 64 per ACK) through `UdpEndpoint::send_transmit` with and
//! without GSO to a counting receiver thread, and an HTTP-like body through
//! `TcpConn::send_image` to a reading thread. Sizes are small (16 and 64 MiB) and each sample
//! is bounded by the helpers' own time limit.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zpxe_bench::ceiling;

const UDP_FILE: u64 = 16 << 20;
const TCP_FILE: u64 = 64 << 20;

fn platform(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    ceiling::write_pattern_file(&dir.path().join("udp.bin"), UDP_FILE, 1).unwrap();
    ceiling::write_pattern_file(&dir.path().join("tcp.bin"), TCP_FILE, 2).unwrap();
    let mut group = c.benchmark_group("platform loopback");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(UDP_FILE));
    for gso in [true, false] {
        let name = if gso {
            "udp send_transmit 16 MiB, windows of 64 x 1468, GSO"
        } else {
            "udp send_transmit 16 MiB, windows of 64 x 1468, no GSO"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        ceiling::udp_windows(dir.path(), "udp.bin", gso)
                            .unwrap()
                            .elapsed
                    })
                    .sum()
            })
        });
    }
    group.throughput(Throughput::Bytes(TCP_FILE));
    group.bench_function("tcp send_image 64 MiB", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| ceiling::tcp_stream(dir.path(), "tcp.bin").unwrap().elapsed)
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, platform);
criterion_main!(benches);
