//! Micro-benchmarks of the engine's hot paths. Run: `cargo bench -p zpxe-bench --bench engine`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use zpxe_engine::path::{NameFlavor, sanitize};

fn paths(c: &mut Criterion) {
    c.bench_function("path/sanitize tftp \\Boot\\BCD", |b| {
        b.iter(|| sanitize(black_box("\\Boot\\BCD"), NameFlavor::Tftp))
    });
    c.bench_function("path/sanitize http encoded", |b| {
        b.iter(|| sanitize(black_box("/sources/boot%20x64/boot.wim"), NameFlavor::Http))
    });
}

criterion_group!(benches, paths);
criterion_main!(benches);
