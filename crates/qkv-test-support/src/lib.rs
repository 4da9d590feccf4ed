//! Test-only helpers shared by the qkv crates: which devices a cross-backend test runs on,
//! seeded random tensors, and tensor comparison with a readable failure message.
//!
//! This crate is a `dev-dependency` only. It is one of the few places (with xtask and the
//! benches) allowed to name a concrete backend; library code never does.

use burn::prelude::*;

pub mod hub;

/// Expands to one `#[test]` per CPU backend (flex and ndarray) that calls `$body(&device)`.
///
/// ```text
/// qkv_test_support::test_on_cpu_backends!(softmax_rows_sum_to_one, |device: &Device| { ... });
/// ```
/// generates `softmax_rows_sum_to_one::flex` and `softmax_rows_sum_to_one::ndarray`.
#[macro_export]
macro_rules! test_on_cpu_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn flex() {
                let device = $crate::flex();
                ($body)(&device);
            }
            #[test]
            fn ndarray() {
                let device = $crate::ndarray();
                ($body)(&device);
            }
        }
    };
}

/// The Flex CPU backend, Burn's maintained pure-Rust CPU backend.
pub fn flex() -> Device {
    Device::flex()
}

/// The NdArray CPU backend (deprecated in Burn 0.22 in favour of Flex, still tested).
#[allow(deprecated)]
pub fn ndarray() -> Device {
    Device::ndarray()
}

/// Test inputs drawn from qkv's one generator ([`qkv_rng::SplitMix64`]), not from a
/// backend's own random number generator: every backend sees the very same numbers.
#[derive(Debug, Clone)]
pub struct SeededRng(qkv_rng::SplitMix64);

impl SeededRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(qkv_rng::SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A float uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        self.0.uniform_f32(-1.0, 1.0)
    }

    /// `n` floats uniform in `[-scale, scale)`.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }

    /// An integer uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }
}

/// A float tensor of the given shape filled from `rng`, uniform in `[-scale, scale)`.
pub fn random_tensor<const D: usize>(
    rng: &mut SeededRng,
    shape: [usize; D],
    scale: f32,
    device: &Device,
) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(rng.vec(n, scale), shape), device)
}

/// The values of a float tensor, read back to the host.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor data")
}

/// Runs `op` forward and backward (loss = Σ output ∘ weights, the weights random from
/// `weights_seed`) on `inputs`, which must be on an autodiff device; returns the output values
/// and each input's gradient.
pub fn forward_backward<const D: usize, const N: usize>(
    inputs: [Tensor<D>; N],
    op: impl Fn([Tensor<D>; N]) -> Tensor<D>,
    weights_seed: u64,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let inputs = inputs.map(|t| t.require_grad());
    let out = op(inputs.clone());
    let device = out.device();
    let weights = random_tensor(&mut SeededRng::new(weights_seed), out.dims(), 1.0, &device);
    let grads = (out.clone() * weights).sum().backward();
    let grads = inputs
        .iter()
        .map(|t| values(t.grad(&grads).expect("input is tracked")))
        .collect();
    (values(out), grads)
}

/// A loss of `logits` against integer `targets` (`ids`, on the logits' device), and the
/// logits' gradient after `(loss · weight).backward()`: a weight other than 1 checks that a
/// loss's backward pass scales by its incoming gradient. `logits` must be on an autodiff
/// device; `loss` returns a `[1]` tensor.
pub fn loss_and_grad(
    logits: Tensor<2>,
    ids: &[i64],
    weight: f32,
    loss: impl Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
) -> (f32, Vec<f32>) {
    let device = logits.device();
    let logits = logits.require_grad();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids.to_vec(), [ids.len()]), &device);
    let value = loss(logits.clone(), targets);
    let grads = value.clone().mul_scalar(weight).backward();
    let grad = values(logits.grad(&grads).expect("logits are tracked"));
    (values(value)[0], grad)
}

/// Two paths of one op (a fast one and its oracle) on the same inputs, compared within `tol`:
/// the values absolutely, each input's gradient within `tol` times that gradient's largest
/// magnitude (at least 1).
pub fn check_parity<const D: usize, const N: usize>(
    what: &str,
    inputs: [Tensor<D>; N],
    fast: impl Fn([Tensor<D>; N]) -> Tensor<D>,
    oracle: impl Fn([Tensor<D>; N]) -> Tensor<D>,
    tol: f32,
) {
    let (fv, fg) = forward_backward(inputs.clone(), fast, 99);
    let (ev, eg) = forward_backward(inputs, oracle, 99);
    assert_close(&fv, &ev, tol, &format!("{what}: values"));
    for (i, (f, e)) in fg.iter().zip(&eg).enumerate() {
        let scale = e.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        assert_close(f, e, tol * scale, &format!("{what}: gradient of input {i}"));
    }
}

/// The largest absolute element-wise difference between `a` and `b`.
///
/// # Panics
/// If the lengths differ, or either side holds a NaN (a NaN must never pass a tolerance).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared tensors have different sizes");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(!x.is_nan() && !y.is_nan(), "NaN in compared values");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

/// Asserts that `a` and `b` agree element-wise within `tol`, naming `what` on failure.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= tol,
        "{what}: max |difference| {diff:e} exceeds the tolerance {tol:e}"
    );
}

/// Asserts that `a` is within `rel` of `b` relative to `b`'s scale: the largest element-wise
/// difference is at most `rel` times the largest `|b|`. Unlike an absolute tolerance, this
/// holds small tensors (a LayerNorm's gradient of 1e-4) to the same standard as large ones:
/// with `rel` below 0.1, a 10% error in any tensor fails.
///
/// # Panics
/// On failure, when `b` is all zeros (nothing to be relative to), or on a NaN.
pub fn assert_rel_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the reference is all zeros");
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= rel * scale,
        "{what}: max |difference| {diff:e} is {:.2e} of the largest value {scale:e}, above {rel:e}",
        diff / scale
    );
}

/// A fresh, empty temporary directory, unique per call (the same test body runs on several
/// backends at once, so a name alone would be shared).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qkv-test-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
