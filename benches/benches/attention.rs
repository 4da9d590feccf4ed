//! Causal multi-head self-attention, forward and forward + backward, at seq 64, 256, 1024 and
//! d_model 128, 384, 768 (64-wide heads), batch 1, on each backend of `QKV_BENCH_BACKENDS`
//! (default: flex, ndarray). Throughput is in tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkv_benches::{Workload, bench_backends};

fn attention(c: &mut Criterion) {
    for backend in bench_backends() {
        let device = backend.check().unwrap_or_else(|e| panic!("{e}"));
        for backward in [false, true] {
            let op = if backward { "fwd_bwd" } else { "fwd" };
            let mut group = c.benchmark_group(format!("{backend}/attention_{op}"));
            group.sample_size(10);
            for w in Workload::suite() {
                let (seq, d_model) = match (w, backward) {
                    (Workload::AttentionForward { seq, d_model }, false)
                    | (Workload::AttentionForwardBackward { seq, d_model }, true) => (seq, d_model),
                    _ => continue,
                };
                let mut iteration = w.prepare(&device);
                group.throughput(Throughput::Elements(w.tokens_per_iter() as u64));
                group.bench_function(BenchmarkId::new(format!("d{d_model}"), seq), |b| {
                    b.iter(&mut iteration)
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, attention);
criterion_main!(benches);
