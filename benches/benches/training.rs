//! One full training step (forward, loss, backward, clipping, AdamW) of nanoGPT's two
//! shakespeare-char recipes, on each backend of `QKV_BENCH_BACKENDS` (default: flex,
//! ndarray): 4/4/128 block 64 batch 12, and 6/6/384 block 256 batch 64. Throughput is in
//! tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkv_benches::{Workload, bench_backends};

fn training(c: &mut Criterion) {
    for backend in bench_backends() {
        let device = backend.check().unwrap_or_else(|e| panic!("{e}"));
        let mut group = c.benchmark_group(format!("{backend}/train_step"));
        group.sample_size(10);
        for w in Workload::suite() {
            let Workload::TrainStep(_) = w else { continue };
            let mut iteration = w.prepare(&device);
            group.throughput(Throughput::Elements(w.tokens_per_iter() as u64));
            group.bench_function(w.id().trim_start_matches("train_step/"), |b| {
                b.iter(&mut iteration)
            });
        }
        group.finish();
    }
}

criterion_group!(benches, training);
criterion_main!(benches);
