//! What hooks cost: a forward pass of the shakespeare-char model (4 layers, 4 heads, 128
//! wide, random weights) on a batch of 12 sequences of 64 tokens, on Flex, three ways:
//! `Gpt::forward`; `Gpt::run_with_hooks` with no hook set (the interpretability path when
//! nothing is asked of it); and recording every hook point. Throughput is in tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkv_benches::{Recipe, SHAKESPEARE_VOCAB, sync};
use qkv_transformer::interp::Hooks;

fn hooks(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let recipe = Recipe::ShakespeareChar;
    let config = recipe.model();
    let model = config.init(&device);
    let (batch, seq) = (recipe.batch_size(), config.block_size);
    let tokens = Tensor::<2, Int>::random(
        [batch, seq],
        burn::tensor::Distribution::Uniform(0.0, SHAKESPEARE_VOCAB as f64),
        &device,
    );
    let mut group = c.benchmark_group("flex/forward/4x4x128_b12_t64");
    group.sample_size(20);
    group.throughput(Throughput::Elements((batch * seq) as u64));
    group.bench_function("plain", |b| {
        b.iter(|| {
            let logits = model.forward(tokens.clone());
            sync(&device);
            logits
        })
    });
    group.bench_function("hooks_unused", |b| {
        b.iter(|| {
            let logits = model
                .run_with_hooks(tokens.clone(), &mut Hooks::new())
                .unwrap();
            sync(&device);
            logits
        })
    });
    group.bench_function("record_all", |b| {
        b.iter(|| {
            let mut hooks = Hooks::new().record_all();
            let logits = model.run_with_hooks(tokens.clone(), &mut hooks).unwrap();
            sync(&device);
            (logits, hooks.take_cache())
        })
    });
    group.finish();
}

criterion_group!(benches, hooks);
criterion_main!(benches);
