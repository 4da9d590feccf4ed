//! Times the flash attention kernel's parts on plain slices, outside Burn: the tile product
//! (`C += A·B` at 64 × 64 × 64, one thread) and the forward and backward passes over 12 causal
//! heads of 64 at seq 1024 (all threads). The figures in ARCHITECTURE.md ("Decisions", the
//! flash kernel's tile products) come from it.
//!
//! ```sh
//! cargo run --release -p qkv-examples --example flash_kernel
//! ```

use std::time::Instant;

use pulp::{Simd, WithSimd};
use qkv_tensor_ops::fused::flash::{self, FlashProblem, HeadLayout};
use qkv_tensor_ops::fused::tile_matmul::matmul_acc;

/// 2000 products `C += A·B` of `[n, n]` tiles.
struct Products<'a> {
    a: &'a [f32],
    b: &'a [f32],
    c: &'a mut [f32],
    n: usize,
}

impl WithSimd for Products<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let n = self.n;
        for _ in 0..2000 {
            matmul_acc(simd, n, n, n, self.a, n, self.b, n, self.c, n);
        }
    }
}

/// The median of five timed runs of `f`, in milliseconds, after one untimed run.
fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut ms: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[2]
}

fn main() {
    let n = 64;
    let (a, b) = (vec![0.01f32; n * n], vec![0.02f32; n * n]);
    let mut c = vec![0.0f32; n * n];
    let ms = median_ms(|| {
        pulp::Arch::new().dispatch(Products {
            a: &a,
            b: &b,
            c: &mut c,
            n,
        })
    });
    let flops = 2000.0 * 2.0 * (n * n * n) as f64;
    println!(
        "tile product {n}x{n}x{n}, one thread: {:.1} GFLOP/s",
        flops / (ms / 1e3) / 1e9
    );

    let (heads, seq, d) = (12, 1024, 64);
    let p = FlashProblem {
        batch: 1,
        n_heads: heads,
        seq_q: seq,
        seq_k: seq,
        d_head: d,
        causal: true,
        scale: 1.0 / (d as f32).sqrt(),
        dropout: None,
    };
    let x: Vec<f32> = (0..heads * seq * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let l = HeadLayout::contiguous([1, heads, seq, d]);
    let forward_ms = median_ms(|| {
        flash::forward(&p, (&x, l), (&x, l), (&x, l), None);
    });
    let (out, lse) = flash::forward(&p, (&x, l), (&x, l), (&x, l), None);
    // The output is stored [batch, seq, n_heads, d_head].
    let ol = HeadLayout {
        shape: [1, heads, seq, d],
        strides: [seq * heads * d, d, heads * d],
        offset: 0,
    };
    let backward_ms = median_ms(|| {
        flash::backward(
            &p,
            (&x, l),
            (&x, l),
            (&x, l),
            None,
            (&out, ol),
            &lse,
            (&out, ol),
        );
    });
    println!(
        "flash attention, {heads} causal heads of {d} at seq {seq}, {} threads: forward {forward_ms:.2} ms, backward {backward_ms:.2} ms",
        rayon::current_num_threads()
    );
}
