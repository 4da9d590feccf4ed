//! One full training step (forward, loss, backward, clipping, AdamW) of nanoGPT's two
//! shakespeare-char recipes, on each backend of `QKV_BENCH_BACKENDS` (default: flex,
//! ndarray): 4/4/128 block 64 batch 12, and 6/6/384 block 256 batch 64. Throughput is in
//! tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn training(c: &mut Criterion) {
    common::bench_prefix(c, "train_step");
}

criterion_group!(benches, training);
criterion_main!(benches);
