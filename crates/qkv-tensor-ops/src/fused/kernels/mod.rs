//! The fused kernels: plain Rust over contiguous `f32` slices, parallel over rows with rayon.
//!
//! Inner loops are written branch-free over fixed-width lanes so the compiler vectorises them;
//! `exp` and `erf` are polynomial approximations for the same reason (libm's scalar `expf` and
//! `erff` cannot be vectorised). Every function here is checked against the explicit tensor-op
//! path in the tests of [`super`].

use rayon::prelude::*;

mod gelu;

pub use gelu::{
    gelu_and_slope, gelu_backward, gelu_forward, gelu_tanh_and_slope, gelu_tanh_backward,
    gelu_tanh_forward, mul_in_place,
};
pub(super) use gelu::{gelu_at, gelu_slope};

/// Elements per rayon task: enough work to pay for the task, small enough to share two cores
/// on the model sizes this project trains.
pub(super) const TASK_ELEMS: usize = 16 * 1024;

/// How many rows of `row_len` elements one rayon task takes.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (TASK_ELEMS / row_len.max(1)).max(1)
}

/// Lanes of the accumulators below: eight `f32` fill one AVX register, two SSE registers.
pub(super) const LANES: usize = 8;

/// Runs the expression or block given compiled for the best instruction set this CPU has
/// (AVX-512, or AVX2 and FMA), detected at run time and narrowed by a limit if one is set
/// (see [`crate::simd`]), so the loops inside vectorise at full width; a plain build targets
/// baseline x86-64 (SSE2). Everything it calls must be `#[inline(always)]` to be compiled the
/// same way. The macro wraps the body in an
/// `#[inline(always)]` closure: a plain closure handed to `pulp` is a function of its own that
/// LLVM may decline to inline (it did for the LayerNorm, GELU, softmax and loss kernels), and
/// it is then compiled for SSE2 whatever the CPU.
macro_rules! simd {
    ($($body:tt)*) => {
        $crate::simd::arch().dispatch(#[inline(always)] || { $($body)* })
    };
}
pub(super) use simd;

/// `Σ xs`, summed in [`LANES`] independent accumulators so that it vectorises.
#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `Σ (x - mean)²`, vectorised as [`sum`].
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>()
}

/// `max xs` (−∞ for an empty slice), vectorised as [`sum`].
#[inline(always)]
pub(super) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `Σ a∘b`, vectorised as [`sum`].
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES).zip(b.chunks_exact(LANES));
    for (a, b) in chunks {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let tail = a.len() - a.len() % LANES;
    acc.iter().sum::<f32>() + (tail..a.len()).map(|j| a[j] * b[j]).sum::<f32>()
}

/// `e^x` for `f32`, branch-free so that loops over it vectorise: Cody–Waite range reduction
/// `x = n·ln2 + r`, a degree-7 polynomial for `e^r` on `|r| ≤ ln2/2` (the Cephes `expf`
/// coefficients), and `2^n` built from the exponent bits. Relative error about 1e-7. Inputs
/// are clamped to `[-87.3, 88.7]`, so `e^-∞` gives about 1e-38 rather than 0: callers that
/// need exact zeros (masked attention) do not call it on those entries.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in the FPU's own mode.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4b40_0000;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // `t`'s bits are those of 1.5·2²³ plus the integer `n` (|n| ≤ 127): subtracting them
    // leaves `n` with integer ops only (a float-to-int cast would not vectorise).
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND_BITS - 127) << 23);
    e_r * two_n
}

/// Chris Wellons' `lowbias32` integer hash: a bijection on `u32` with good avalanche, built
/// from shifts, xors and 32-bit multiplies, all of which vectorise.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x21f0_aaad);
    x ^= x >> 15;
    x = x.wrapping_mul(0x735a_2d97);
    x ^ (x >> 15)
}

/// Whether dropout keeps element `index` under `seed`: a counter-based draw (a hash of seed and
/// index, no generator state), so any element's decision can be recomputed, in any order, on
/// any thread, in the backward pass as in the forward. `threshold` is `prob · 2³²`.
#[inline(always)]
pub(super) fn keeps(seed: u64, index: usize, threshold: u32) -> bool {
    let h = hash32((index as u32).wrapping_mul(0x9e37_79b9) ^ seed as u32);
    let h = hash32(h ^ (seed >> 32) as u32);
    h >= threshold
}

/// `prob · 2³²` (at most `u32::MAX`), the threshold of [`keeps`].
pub(super) fn drop_threshold(prob: f32) -> u32 {
    (prob as f64 * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// Inverted dropout: `out[i] = x[i] / (1 - prob)` where the counter-based draw keeps it, else 0. The
/// backward pass is the same function applied to the gradient with the same seed.
pub fn dropout(x: &[f32], prob: f32, seed: u64, out: &mut [f32]) {
    let scale = 1.0 / (1.0 - prob);
    let threshold = drop_threshold(prob);
    out.par_chunks_mut(TASK_ELEMS)
        .zip(x.par_chunks(TASK_ELEMS))
        .enumerate()
        .for_each(|(task, (out, x))| {
            simd!(dropout_chunk(
                x,
                task * TASK_ELEMS,
                scale,
                seed,
                threshold,
                out
            ))
        });
}

/// [`dropout`] on the elements `first..first + x.len()`. The per-chunk bodies are
/// `#[inline(always)]` functions so that [`simd`] compiles them whole for the wide registers.
#[inline(always)]
fn dropout_chunk(x: &[f32], first: usize, scale: f32, seed: u64, threshold: u32, out: &mut [f32]) {
    for (i, (o, &x)) in out.iter_mut().zip(x).enumerate() {
        let keep = keeps(seed, first + i, threshold);
        *o = if keep { x * scale } else { 0.0 };
    }
}

/// Mean and `1/sqrt(var + eps)` of one row (biased variance, two passes for accuracy).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = sum(x) / d;
    let var = sum_sq_dev(x, mean) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm forward over rows of `d = gamma.len()`: `out = (x - mean)·rstd·gamma + beta`.
pub fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    let chunk = rows_per_task(d) * d;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(out, x)| simd!(layer_norm_rows(x, gamma, beta, eps, out)));
}

/// [`layer_norm_forward`] on whole rows.
#[inline(always)]
fn layer_norm_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (out, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let (mean, rstd) = row_stats(x, eps);
        for j in 0..d {
            out[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
        }
    }
}

/// The residual add and the LayerNorm that reads it, in one pass over rows of
/// `d = gamma.len()`: `sum = x + branch`, `out = LayerNorm(sum)`. Writes both.
pub fn add_layer_norm_forward(
    x: &[f32],
    branch: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    out: &mut [f32],
) {
    let d = gamma.len();
    let chunk = rows_per_task(d) * d;
    out.par_chunks_mut(chunk)
        .zip(sum.par_chunks_mut(chunk))
        .zip(x.par_chunks(chunk).zip(branch.par_chunks(chunk)))
        .for_each(|((out, sum), (x, branch))| {
            simd!({
                for (s, (x, b)) in sum.iter_mut().zip(x.iter().zip(branch)) {
                    *s = x + b;
                }
                layer_norm_rows(sum, gamma, beta, eps, out)
            })
        });
}

/// LayerNorm backward over rows of `d = gamma.len()`. With `x̂ = (x - mean)·rstd` and
/// `g = dy·gamma`: `dx = rstd·(g - mean(g) - x̂·mean(g·x̂))`, `dgamma = Σ_rows dy·x̂`,
/// `dbeta = Σ_rows dy`. Writes `dx`; returns `(dgamma, dbeta)`.
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let chunk = rows_per_task(d) * d;
    let zeros = || (vec![0.0f32; d], vec![0.0f32; d]);
    dx.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(dx, (x, dy))| simd!(layer_norm_backward_rows(x, gamma, dy, eps, dx)))
        .reduce(zeros, |(mut ga, mut ba), (gb, bb)| {
            for j in 0..d {
                ga[j] += gb[j];
                ba[j] += bb[j];
            }
            (ga, ba)
        })
}

/// [`layer_norm_backward`] on whole rows: writes their `dx`, returns their share of
/// `(dgamma, dbeta)`.
#[inline(always)]
fn layer_norm_backward_rows(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
    let mut xhat = vec![0.0f32; d];
    let mut g = vec![0.0f32; d];
    for ((dx, x), dy) in dx
        .chunks_exact_mut(d)
        .zip(x.chunks_exact(d))
        .zip(dy.chunks_exact(d))
    {
        let (mean, rstd) = row_stats(x, eps);
        for j in 0..d {
            xhat[j] = (x[j] - mean) * rstd;
            g[j] = dy[j] * gamma[j];
            dgamma[j] += dy[j] * xhat[j];
            dbeta[j] += dy[j];
        }
        let mean_g = sum(&g) / d as f32;
        let mean_gx = dot(&g, &xhat) / d as f32;
        for j in 0..d {
            dx[j] = rstd * (g[j] - mean_g - xhat[j] * mean_gx);
        }
    }
    (dgamma, dbeta)
}

/// How many keys query row `i` of `seq_q` may see: all `seq_k` without `causal`, else
/// `i + 1 + seq_k - seq_q` (bottom-right alignment), clamped to `0..=seq_k`.
#[inline(always)]
fn visible_keys(i: usize, seq_q: usize, seq_k: usize, causal: bool) -> usize {
    if !causal {
        return seq_k;
    }
    (i as isize + 1 + seq_k as isize - seq_q as isize).clamp(0, seq_k as isize) as usize
}

/// Softmax of `scores·scale` over rows of `seq_k`, where row `r` is query `r % seq_q`; hidden
/// keys (after `i + 1 + seq_k - seq_q` with `causal`) get exactly 0, and a row with no visible
/// key is all zeros.
pub fn scaled_softmax_forward(
    scores: &[f32],
    seq_q: usize,
    seq_k: usize,
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let chunk = rows_per_task(seq_k) * seq_k;
    out.par_chunks_mut(chunk)
        .zip(scores.par_chunks(chunk))
        .enumerate()
        .for_each(|(task, (out, scores))| {
            simd!({
                let first_row = task * (chunk / seq_k);
                softmax_rows(scores, first_row, seq_q, seq_k, scale, causal, out)
            })
        });
}

/// [`scaled_softmax_forward`] on whole rows, the first of them row `first_row`.
#[inline(always)]
fn softmax_rows(
    scores: &[f32],
    first_row: usize,
    seq_q: usize,
    seq_k: usize,
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let rows = out.chunks_exact_mut(seq_k).zip(scores.chunks_exact(seq_k));
    for (r, (out, s)) in rows.enumerate() {
        let n = visible_keys((first_row + r) % seq_q, seq_q, seq_k, causal);
        let (seen, hidden) = out.split_at_mut(n);
        hidden.fill(0.0);
        if n == 0 {
            continue;
        }
        let m = max(&s[..n]) * scale;
        for (o, &s) in seen.iter_mut().zip(&s[..n]) {
            *o = exp(s * scale - m);
        }
        let inv = 1.0 / sum(seen);
        for o in seen.iter_mut() {
            *o *= inv;
        }
    }
}

/// Backward of [`scaled_softmax_forward`] from its output `probs`:
/// `dscores = scale · p ∘ (dp − Σ_row dp∘p)`. Hidden keys have `p = 0`, so they get 0.
pub fn scaled_softmax_backward(
    probs: &[f32],
    dprobs: &[f32],
    seq_k: usize,
    scale: f32,
    dscores: &mut [f32],
) {
    let chunk = rows_per_task(seq_k) * seq_k;
    dscores
        .par_chunks_mut(chunk)
        .zip(probs.par_chunks(chunk).zip(dprobs.par_chunks(chunk)))
        .for_each(|(ds, (p, dp))| simd!(softmax_backward_rows(p, dp, seq_k, scale, ds)));
}

/// [`scaled_softmax_backward`] on whole rows.
#[inline(always)]
fn softmax_backward_rows(p: &[f32], dp: &[f32], seq_k: usize, scale: f32, ds: &mut [f32]) {
    let rows = ds
        .chunks_exact_mut(seq_k)
        .zip(p.chunks_exact(seq_k))
        .zip(dp.chunks_exact(seq_k));
    for ((ds, p), dp) in rows {
        let dot = dot(p, dp);
        for j in 0..seq_k {
            ds[j] = scale * p[j] * (dp[j] - dot);
        }
    }
}

pub use super::adamw_kernel::{AdamWStep, adamw};

#[cfg(test)]
mod tests {
    use super::gelu::normal_cdf_pdf;
    use super::*;

    #[test]
    fn exp_matches_std_within_3e7_relative() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            let rel = ((exp(x) - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn normal_cdf_and_pdf_match_f64_within_3e7() {
        let mut worst = 0.0f64;
        let mut x = -9.0f32;
        while x < 9.0 {
            let (cdf, pdf) = normal_cdf_pdf(x);
            let xd = x as f64;
            let want_cdf = 0.5 * (1.0 + libm_erf(xd / std::f64::consts::SQRT_2));
            let want_pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst = worst.max((cdf as f64 - want_cdf).abs());
            worst = worst.max((pdf as f64 - want_pdf).abs());
            x += 0.001;
        }
        assert!(worst < 3e-7, "worst absolute error {worst}");
    }

    /// `erf` in f64 by its Maclaurin series (|x| < 3) or continued fraction: slow and obvious.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut total = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                total += term / (2 * n + 1) as f64;
            }
            2.0 / std::f64::consts::PI.sqrt() * total
        } else {
            // erfc(x) ≈ e^{-x²}/(x√π) · (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶)), ample at |x| ≥ 3.
            let a = x.abs();
            let x2 = a * a;
            let erfc = (-x2).exp() / (a * std::f64::consts::PI.sqrt())
                * (1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2));
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn dropout_draws_are_independent_with_the_right_rate() {
        let n = 200_000;
        for prob in [0.1f32, 0.2, 0.5] {
            let threshold = drop_threshold(prob);
            let kept: Vec<bool> = (0..n).map(|i| keeps(42, i, threshold)).collect();
            let rate = kept.iter().filter(|&&k| k).count() as f64 / n as f64;
            // Standard deviation of the rate is below 0.0012 here; 0.005 is four of them.
            assert!(
                (rate - (1.0 - prob as f64)).abs() < 0.005,
                "p {prob}: kept {rate}"
            );
            // Neighbours are independent: both kept at the rate (1-p)².
            let both = kept.windows(2).filter(|w| w[0] && w[1]).count() as f64 / (n - 1) as f64;
            let want = (1.0 - prob as f64).powi(2);
            assert!(
                (both - want).abs() < 0.005,
                "p {prob}: pairs {both} vs {want}"
            );
        }
        // Another seed gives another mask (about half the decisions differ at p = 0.5).
        let t = drop_threshold(0.5);
        let differ = (0..10_000)
            .filter(|&i| keeps(1, i, t) != keeps(2, i, t))
            .count();
        assert!((4_000..6_000).contains(&differ), "{differ} of 10000 differ");
    }

    #[test]
    fn visible_keys_aligns_bottom_right() {
        assert_eq!(visible_keys(0, 4, 4, true), 1);
        assert_eq!(visible_keys(3, 4, 4, true), 4);
        assert_eq!(visible_keys(0, 1, 9, true), 9);
        assert_eq!(visible_keys(0, 3, 2, true), 0);
        assert_eq!(visible_keys(0, 3, 2, false), 2);
    }
}
