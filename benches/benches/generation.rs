//! Greedy generation with the shakespeare-char model (4 layers, 4 heads, 128 wide, block 64,
//! vocabulary 65, random weights), batch 1: 63 new tokens from a one-token prompt, with the
//! KV cache and without it, on each backend of `QKV_BENCH_BACKENDS` (default: flex,
//! ndarray). Throughput is in tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn generation(c: &mut Criterion) {
    common::bench_prefix(c, "generate");
}

criterion_group!(benches, generation);
criterion_main!(benches);
