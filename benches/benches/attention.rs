//! Causal multi-head self-attention, forward and forward + backward, at seq 64, 256, 1024 and
//! d_model 128, 384, 768 (64-wide heads), batch 1, on each backend of `QKV_BENCH_BACKENDS`
//! (default: flex, ndarray). Throughput is in tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn attention(c: &mut Criterion) {
    common::bench_prefix(c, "attention_fwd");
    common::bench_prefix(c, "attention_fwd_bwd");
}

criterion_group!(benches, attention);
criterion_main!(benches);
