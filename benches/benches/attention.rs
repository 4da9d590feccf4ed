//! Multi-head self-attention (causal) forward, and forward + backward, per backend, at
//! seq 64, 256, 1024 and d_model 128, 384, 768 (64-wide heads), batch 1. Throughput is in
//! tokens.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkv_attention::{MhaInput, MultiHeadAttentionConfig};
use qkv_benches::{cpu_backends, sync};

const SEQ_LENS: [usize; 3] = [64, 256, 1024];
const D_MODELS: [usize; 3] = [128, 384, 768];
const D_HEAD: usize = 64;

fn attention(c: &mut Criterion) {
    for (name, device) in cpu_backends() {
        for backward in [false, true] {
            let op = if backward { "fwd_bwd" } else { "fwd" };
            let mut group = c.benchmark_group(format!("{name}_attention_{op}_f32"));
            group.sample_size(10);
            for d_model in D_MODELS {
                for seq in SEQ_LENS {
                    let dev = if backward {
                        device.clone().autodiff()
                    } else {
                        device.clone()
                    };
                    let mha = MultiHeadAttentionConfig::new(d_model, d_model / D_HEAD).init(&dev);
                    let x = Tensor::<3>::random(
                        [1, seq, d_model],
                        Distribution::Normal(0.0, 1.0),
                        &dev,
                    );
                    group.throughput(Throughput::Elements(seq as u64));
                    group.bench_with_input(
                        BenchmarkId::new(format!("d{d_model}"), seq),
                        &seq,
                        |b, _| {
                            b.iter(|| {
                                let input = if backward {
                                    x.clone().require_grad()
                                } else {
                                    x.clone()
                                };
                                let out = mha
                                    .forward(MhaInput::self_attn(input.clone()).causal())
                                    .context;
                                if backward {
                                    let grads = out.sum().backward();
                                    let g = input.grad(&grads).expect("input gradient");
                                    sync(&device);
                                    g.dims()
                                } else {
                                    sync(&device);
                                    out.dims()
                                }
                            })
                        },
                    );
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, attention);
criterion_main!(benches);
