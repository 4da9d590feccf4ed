//! A linear layer with a bias on Flex, two ways: the bias folded into the product
//! (`fused::matmul_bias`, what `fused::linear` runs) and the product followed by a separate
//! broadcast add (`fused::matmul(x, w) + bias`, what it ran before). Forward alone and
//! forward + backward, at the attention benchmark's projection shapes (`rows × d → d`).
//! Throughput is in output elements.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkv_benches::sync;
use qkv_tensor_ops::fused::{matmul, matmul_bias};

/// `(rows, d)`: a 64-token and a 1024-token sequence at width 384, 256 tokens at 768.
const SHAPES: [(usize, usize); 3] = [(64, 384), (1024, 384), (256, 768)];

fn linear(c: &mut Criterion) {
    for backward in [false, true] {
        let device = if backward {
            Device::flex().autodiff()
        } else {
            Device::flex()
        };
        device.seed(0);
        for (rows, d) in SHAPES {
            let normal = Distribution::Normal(0.0, 1.0);
            let x = Tensor::<2>::random([rows, d], normal, &device);
            let w = Tensor::<2>::random([d, d], normal, &device);
            let bias = Tensor::<1>::random([d], normal, &device);
            let (w, bias) = if backward {
                (w.require_grad(), bias.require_grad())
            } else {
                (w, bias)
            };
            let pass = if backward { "fwd_bwd" } else { "fwd" };
            let mut group = c.benchmark_group(format!("flex/linear_bias/{pass}/{rows}x{d}x{d}"));
            group.sample_size(50);
            group.throughput(Throughput::Elements((rows * d) as u64));
            let run = |y: Tensor<2>| {
                if backward {
                    let grads = y.sum().backward();
                    let g = w.grad(&grads).expect("the weight is tracked");
                    sync(&device);
                    drop(g);
                } else {
                    sync(&device);
                }
            };
            group.bench_function("folded", |b| {
                b.iter(|| run(matmul_bias(x.clone(), w.clone(), bias.clone())))
            });
            group.bench_function("separate_add", |b| {
                b.iter(|| run(matmul(x.clone(), w.clone()) + bias.clone().unsqueeze::<2>()))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, linear);
criterion_main!(benches);
