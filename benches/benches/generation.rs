//! Greedy generation with the shakespeare-char model (4 layers, 4 heads, 128 wide, block 64,
//! vocabulary 65, random weights), batch 1: 63 new tokens from a one-token prompt, with the
//! KV cache and without it, on each backend of `QKV_BENCH_BACKENDS` (default: flex,
//! ndarray). Throughput is in tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkv_benches::{Workload, bench_backends};

fn generation(c: &mut Criterion) {
    for backend in bench_backends() {
        let device = backend.check().unwrap_or_else(|e| panic!("{e}"));
        let mut group = c.benchmark_group(format!("{backend}/generate"));
        group.sample_size(10);
        for w in Workload::suite() {
            let Workload::Generate { .. } = w else {
                continue;
            };
            let mut iteration = w.prepare(&device);
            group.throughput(Throughput::Elements(w.tokens_per_iter() as u64));
            group.bench_function(w.id().trim_start_matches("generate/"), |b| {
                b.iter(&mut iteration)
            });
        }
        group.finish();
    }
}

criterion_group!(benches, generation);
criterion_main!(benches);
