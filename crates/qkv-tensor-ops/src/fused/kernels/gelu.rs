//! GELU's kernels, exact and tanh-approximated: the value and derivative formulas written once
//! ([`gelu_and_slope_at`]), the elementwise forward and backward passes, and the one-pass
//! training kernel that writes GELU over its input with the derivative beside it.

use rayon::prelude::*;

use super::{TASK_ELEMS, exp, simd};

/// The standard normal CDF `Φ(x)` and density `φ(x)` together (they share `e^{-x²/2}`).
/// `erf` is Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7; with `f32` rounding both
/// results are within 3e-7 of the exact values).
#[inline(always)]
pub(super) fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let e = exp(-0.5 * x * x); // e^{-z²}
    let t = 1.0 / (1.0 + P * z.abs());
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let erf = (1.0 - poly * e).copysign(z);
    let inv_sqrt_2pi = 0.398_942_3;
    (0.5 * (1.0 + erf), inv_sqrt_2pi * e)
}

/// `√(2/π)`, and the cubic coefficient of GELU's tanh approximation.
const GELU_TANH_C: f32 = 0.797_884_6;
const GELU_TANH_A: f32 = 0.044_715;

/// `tanh(u)` as `1 − 2/(e^{2u} + 1)`, with [`exp`]: absolute error about 1e-7, ±1 exactly
/// far out (the clamp inside `exp` keeps it finite).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// GELU at `x` and its derivative, `(gelu(x), gelu'(x))`: exact, `x·Φ(x)` and
/// `Φ(x) + x·φ(x)`, or with `TANH` the tanh approximation (GPT-2's `gelu_new`),
/// `x/2 · (1 + t)` with `t = tanh(√(2/π)·(x + 0.044715·x³))`, and
/// `½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715·x²)`. The two share `Φ` and `φ` (or `t`);
/// inlined where only one is used, the other's arithmetic is dropped by the compiler.
#[inline(always)]
fn gelu_and_slope_at<const TANH: bool>(x: f32) -> (f32, f32) {
    if TANH {
        let t = tanh(GELU_TANH_C * (x + GELU_TANH_A * x * x * x));
        let du = GELU_TANH_C * (1.0 + 3.0 * GELU_TANH_A * x * x);
        (
            0.5 * x * (1.0 + t),
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
        )
    } else {
        let (cdf, pdf) = normal_cdf_pdf(x);
        (x * cdf, cdf + x * pdf)
    }
}

/// GELU at `x` (see [`gelu_and_slope_at`]).
#[inline(always)]
pub(in crate::fused) fn gelu_at<const TANH: bool>(x: f32) -> f32 {
    gelu_and_slope_at::<TANH>(x).0
}

/// GELU's derivative at `x` (see [`gelu_and_slope_at`]).
#[inline(always)]
pub(in crate::fused) fn gelu_slope<const TANH: bool>(x: f32) -> f32 {
    gelu_and_slope_at::<TANH>(x).1
}

/// GELU ([`gelu_at`]) elementwise: `out[i] = gelu(x[i])`.
fn gelu_elementwise<const TANH: bool>(x: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(TASK_ELEMS)
        .zip(x.par_chunks(TASK_ELEMS))
        .for_each(|(out, x)| {
            simd!({
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = gelu_at::<TANH>(x);
                }
            })
        });
}

/// GELU's backward pass ([`gelu_slope`]) elementwise: `dx[i] = dy[i] · gelu'(x[i])`.
fn gelu_elementwise_backward<const TANH: bool>(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(TASK_ELEMS)
        .zip(x.par_chunks(TASK_ELEMS).zip(dy.par_chunks(TASK_ELEMS)))
        .for_each(|(dx, (x, dy))| {
            simd!({
                for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                    *o = g * gelu_slope::<TANH>(x);
                }
            })
        });
}

/// Exact GELU, `x·Φ(x)`, elementwise: `out[i] = gelu(x[i])`.
pub fn gelu_forward(x: &[f32], out: &mut [f32]) {
    gelu_elementwise::<false>(x, out)
}

/// GELU's backward pass: `dx[i] = dy[i] · (Φ(x[i]) + x[i]·φ(x[i]))`.
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    gelu_elementwise_backward::<false>(x, dy, dx)
}

/// GELU's tanh approximation (GPT-2's `gelu_new`), elementwise:
/// `out[i] = x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub fn gelu_tanh_forward(x: &[f32], out: &mut [f32]) {
    gelu_elementwise::<true>(x, out)
}

/// The tanh approximation's backward pass:
/// `dx = dy · (½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715·x²))`.
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    gelu_elementwise_backward::<true>(x, dy, dx)
}

/// GELU and its derivative in one pass, for training: `values[i] ← gelu(values[i])` and
/// `slope[i] = gelu'(values[i])` (exact, or with `TANH` the tanh approximation). The backward
/// pass is then `dx = dy · slope` ([`mul_in_place`]): the activation's input need not be kept,
/// and the derivative costs nothing extra, because `gelu` and `gelu'` share `Φ` and `φ` (or `t`).
///
/// # Panics
/// If the two slices differ in length.
fn gelu_and_slope_elementwise<const TANH: bool>(values: &mut [f32], slope: &mut [f32]) {
    assert_eq!(
        values.len(),
        slope.len(),
        "gelu_and_slope: one slope per value"
    );
    values
        .par_chunks_mut(TASK_ELEMS)
        .zip(slope.par_chunks_mut(TASK_ELEMS))
        .for_each(|(values, slope)| {
            simd!({
                for (v, s) in values.iter_mut().zip(slope.iter_mut()) {
                    (*v, *s) = gelu_and_slope_at::<TANH>(*v);
                }
            })
        });
}

/// Exact GELU in place with its derivative beside it: `values[i] ← x·Φ(x)`,
/// `slope[i] = Φ(x) + x·φ(x)` for `x = values[i]` (see [`gelu_backward`] for the same
/// derivative computed from `x`).
///
/// # Panics
/// If the two slices differ in length.
pub fn gelu_and_slope(values: &mut [f32], slope: &mut [f32]) {
    gelu_and_slope_elementwise::<false>(values, slope)
}

/// GELU's tanh approximation in place with its derivative beside it (see [`gelu_tanh_forward`]
/// and [`gelu_tanh_backward`] for the two separately).
///
/// # Panics
/// If the two slices differ in length.
pub fn gelu_tanh_and_slope(values: &mut [f32], slope: &mut [f32]) {
    gelu_and_slope_elementwise::<true>(values, slope)
}

/// `x[i] ← x[i] · by[i]`: an elementwise activation's backward pass from its stored slope.
///
/// # Panics
/// If the two slices differ in length.
pub fn mul_in_place(x: &mut [f32], by: &[f32]) {
    assert_eq!(
        x.len(),
        by.len(),
        "mul_in_place: the slices differ in length"
    );
    x.par_chunks_mut(TASK_ELEMS)
        .zip(by.par_chunks(TASK_ELEMS))
        .for_each(|(x, by)| {
            simd!({
                for (x, &b) in x.iter_mut().zip(by) {
                    *x *= b;
                }
            })
        });
}
