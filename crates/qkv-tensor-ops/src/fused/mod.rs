//! Fused training ops with hand-written backward passes: LayerNorm, the scaled causal softmax
//! of attention, exact GELU, dropout, whole attention without materialised probabilities
//! ([`flash_attention`]), a linear layer's bias with the GELU after it ([`bias_gelu()`]), the
//! residual add with the LayerNorm that reads it ([`add_layer_norm`]), the softmax
//! cross-entropy of the LM head ([`cross_entropy`]), and the matrix product of a linear layer
//! ([`matmul`], [`linear`], [`matmul_bias`]) on `qkv-gemm`, the bias folded into the product.
//!
//! Written the obvious way, each of these is a chain of small tensor ops: a LayerNorm is nine
//! on the forward pass and about twenty on the backward pass, each with its own output buffer
//! and its own pass over memory. Here each is one kernel forward and one backward, registered
//! with Burn's autodiff as a single node.
//!
//! Where the kernels run: on the Flex CPU backend (with or without autodiff), for `f32`
//! tensors; and, with the `gpu` feature, LayerNorm, the scaled softmax, both GELUs, dropout
//! and unmasked flash attention on Burn's CubeCL backend (wgpu, vulkan, cuda), also for
//! `f32`. On every other device, and for
//! other dtypes, the public functions below run the explicit tensor-op path instead, so
//! callers never need to know. The explicit path is also the oracle: the tests check values
//! and gradients of every fused op against it.
//!
//! The CPU kernels are plain Rust over contiguous `f32` slices ([`kernels`]; AdamW's in
//! [`adamw_kernel`], and bias + GELU and the cross-entropy beside their glue in [`mod@bias_gelu`]
//! and [`loss`]; the glue of add + LayerNorm in [`residual`]), parallel over rows with rayon; the Burn glue (backend extension, autodiff nodes) is in [`backend`]. The
//! GPU kernels are CubeCL kernels (`gpu_kernels`, `gpu_rows`, `gpu_flash`), with their glue
//! in `gpu`.

pub mod adamw_kernel;
pub mod backend;
pub mod bias_gelu;
pub mod flash;
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(feature = "gpu")]
pub mod gpu_flash;
#[cfg(feature = "gpu")]
pub mod gpu_kernels;
#[cfg(feature = "gpu")]
pub mod gpu_rows;
pub mod kernels;
pub mod loss;
pub mod matmul;
mod nodes;
pub mod residual;
pub mod tile_matmul;

use burn::backend::DispatchDevice;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Distribution, FloatDType};

use crate::mask::causal_mask;
use backend::{FusedOps, FusedOptim};
pub use bias_gelu::{bias_gelu, bias_gelu_explicit};
use burn::backend::Dispatch;
pub use kernels::AdamWStep;
pub use loss::{cross_entropy, cross_entropy_explicit};
pub use matmul::{linear, matmul, matmul_bias};
pub use residual::{add_layer_norm, add_layer_norm_explicit};

/// Whether the fused kernels serve tensors on `device` with dtype `dtype`: Flex (with or
/// without autodiff) and `f32`.
pub fn has_fused_kernels(device: &Device, dtype: DType) -> bool {
    if dtype != DType::F32 {
        return false;
    }
    matches!(
        device.as_dispatch().clone().inner(),
        DispatchDevice::Flex(_)
    )
}

/// Whether the GPU kernels serve `device`: built with the `gpu` feature, a CubeCL device (wgpu,
/// vulkan, cuda, with or without autodiff), and not turned off by `QKV_GPU_KERNELS=off` in the
/// environment (read once per process), which keeps every GPU op on the explicit path, to
/// compare the two in one build.
pub fn gpu_kernels_serve(device: &Device) -> bool {
    #[cfg(feature = "gpu")]
    {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let enabled =
            *ENABLED.get_or_init(|| std::env::var("QKV_GPU_KERNELS").map_or(true, |v| v != "off"));
        enabled
            && matches!(
                device.as_dispatch().clone().inner(),
                DispatchDevice::Cube(_)
            )
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = device;
        false
    }
}

/// Whether the GPU kernels serve `t`: on a device they serve ([`gpu_kernels_serve`]), `f32`,
/// and with fewer than 2³² elements (the kernels index with `u32`).
pub fn has_gpu_kernels<const D: usize>(t: &Tensor<D>) -> bool {
    gpu_kernels_take(&t.device(), t.dtype(), t.shape().num_elements())
}

/// Whether the GPU kernels serve a tensor of `elements` elements of `dtype` on `device` (see
/// [`has_gpu_kernels`]).
pub fn gpu_kernels_take(device: &Device, dtype: DType, elements: usize) -> bool {
    dtype == DType::F32 && elements < u32::MAX as usize && gpu_kernels_serve(device)
}

/// The half-precision type `dtype` is, if it is one (f16 or bf16). The ops that lose most in
/// half precision (LayerNorm, the attention softmax, flash attention, the loss) compute in
/// f32 for such inputs, on the same kernels as f32 callers, and cast their result back, as
/// PyTorch's autocast runs them in f32.
pub fn half_dtype(dtype: DType) -> Option<FloatDType> {
    matches!(dtype, DType::F16 | DType::BF16).then(|| dtype.into())
}

/// The dtype an op computes in for inputs of `dtype`: f32 for the half types (see
/// [`half_dtype`]), `dtype` itself otherwise.
pub fn compute_dtype(dtype: DType) -> DType {
    if half_dtype(dtype).is_some() {
        DType::F32
    } else {
        dtype
    }
}

/// `t` in f32.
pub(crate) fn to_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.cast(FloatDType::F32)
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`, with the
/// biased variance, as `torch.nn.LayerNorm` and Burn's `LayerNorm` compute it.
///
/// - `x`: `[..., d]`
/// - `gamma`, `beta`: `[d]`
/// - returns `[..., d]`, in `x`'s dtype (computed in f32 for half-precision `x`)
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    eps: f64,
) -> Tensor<D> {
    if let Some(half) = half_dtype(x.dtype()) {
        let (x, gamma, beta) = (to_f32(x), to_f32(gamma), beta.map(to_f32));
        return layer_norm(x, gamma, beta, eps).cast(half);
    }
    #[cfg(feature = "gpu")]
    if has_gpu_kernels(&x) {
        let beta = beta.unwrap_or_else(|| gamma.zeros_like());
        return Tensor::from_dispatch(<Dispatch as gpu::GpuFusedOps>::qkv_gpu_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            eps,
        ));
    }
    if !has_fused_kernels(&x.device(), x.dtype()) {
        return layer_norm_explicit(x, gamma, beta, eps);
    }
    let beta = beta.unwrap_or_else(|| gamma.zeros_like());
    Tensor::from_dispatch(<Dispatch as FusedOps>::qkv_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
}

/// The explicit LayerNorm: mean, centre, variance, normalise, scale and shift as separate ops.
/// It is the oracle for [`layer_norm`] and the path on devices without fused kernels.
pub fn layer_norm_explicit<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    eps: f64,
) -> Tensor<D> {
    let last = D - 1;
    let mean = x.clone().mean_dim(last);
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(last);
    let normed = centred / var.add_scalar(eps).sqrt();
    let d = gamma.dims()[0];
    let mut shape = [1; D];
    shape[last] = d;
    let y = normed * gamma.reshape(shape);
    match beta {
        Some(beta) => y + beta.reshape(shape),
        None => y,
    }
}

/// `softmax(scores · scale)` over the last dimension, with each query's future keys hidden
/// when `causal` is set (aligned bottom-right, as [`causal_mask`]: query `i` of `seq_q` sees
/// keys `0..=i + seq_k - seq_q`). Hidden entries are exactly 0.
///
/// - `scores`: `[batch, n_heads, seq_q, seq_k]` (raw `Q·Kᵀ`, before scaling)
/// - returns `[batch, n_heads, seq_q, seq_k]`, in `scores`' dtype (computed in f32 for half
///   precision)
pub fn scaled_softmax(scores: Tensor<4>, scale: f64, causal: bool) -> Tensor<4> {
    if let Some(half) = half_dtype(scores.dtype()) {
        return scaled_softmax(to_f32(scores), scale, causal).cast(half);
    }
    #[cfg(feature = "gpu")]
    if has_gpu_kernels(&scores) {
        return Tensor::from_dispatch(<Dispatch as gpu::GpuFusedOps>::qkv_gpu_scaled_softmax(
            scores.into_dispatch(),
            scale,
            causal,
        ));
    }
    if !has_fused_kernels(&scores.device(), scores.dtype()) {
        return scaled_softmax_explicit(scores, scale, causal);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::qkv_scaled_softmax(
        scores.into_dispatch(),
        scale,
        causal,
    ))
}

/// The explicit form of [`scaled_softmax`]: scale, fill the causal mask with −∞, softmax.
pub fn scaled_softmax_explicit(scores: Tensor<4>, scale: f64, causal: bool) -> Tensor<4> {
    let [_, _, seq_q, seq_k] = scores.dims();
    let scores = scores.mul_scalar(scale);
    if !causal {
        return softmax(scores, 3);
    }
    let mask = causal_mask(seq_q, seq_k, &scores.device()).reshape([1, 1, seq_q, seq_k]);
    crate::softmax::masked_softmax(scores, Some(mask))
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, with an `erf` written so the compiler can
/// vectorise it (`Φ` within 3e-7 of exact). Under autodiff on Flex the forward kernel also
/// writes the derivative `Φ(x) + x·φ(x)`, which the graph keeps instead of `x`, so the backward
/// pass is one multiply; an input nothing else holds is overwritten with the result.
///
/// - `x`: any shape; returns the same shape
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "gpu")]
    if has_gpu_kernels(&x) {
        return Tensor::from_dispatch(<Dispatch as gpu::GpuFusedOps>::qkv_gpu_gelu(
            x.into_dispatch(),
        ));
    }
    if !has_fused_kernels(&x.device(), x.dtype()) {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::qkv_gelu(x.into_dispatch()))
}

/// GELU's tanh approximation, `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))` (GPT-2's
/// `gelu_new`, PyTorch's `gelu(approximate="tanh")`): one kernel forward and one backward on
/// Flex, [`gelu_tanh_explicit`] elsewhere.
///
/// - `x`: any shape; returns the same shape
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "gpu")]
    if has_gpu_kernels(&x) {
        return Tensor::from_dispatch(<Dispatch as gpu::GpuFusedOps>::qkv_gpu_gelu_tanh(
            x.into_dispatch(),
        ));
    }
    if !has_fused_kernels(&x.device(), x.dtype()) {
        return gelu_tanh_explicit(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::qkv_gelu_tanh(x.into_dispatch()))
}

/// The tanh approximation with tensor ops (a cube, a tanh, products), differentiated by
/// autodiff: the oracle for [`gelu_tanh`] and its path off Flex.
///
/// - `x`: any shape; returns the same shape
pub fn gelu_tanh_explicit<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let sqrt_2_over_pi = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner =
        (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(sqrt_2_over_pi);
    (x.clone() * (inner.tanh().add_scalar(1.0))).mul_scalar(0.5)
}

/// Inverted dropout: each element is zeroed with probability `prob`, the rest are scaled by
/// `1 / (1 - prob)`. Always active: callers decide whether they are training (see
/// `qkv_attention::dropout`, which follows `burn::nn::Dropout`).
///
/// On Flex and on the GPU (with the `gpu` feature) the mask is counter-based: a hash of a seed
/// and each element's index, the same hash on both, so the same seed drops the same elements.
/// The seed is drawn from the backend's random generator, so a run that reseeds it (as the
/// trainer does every step) gets the same masks; the backward pass recomputes the mask
/// instead of storing it. Elsewhere it is `burn::nn::Dropout`'s computation (a Bernoulli
/// tensor).
///
/// - `x`: any shape; returns the same shape
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    if prob == 0.0 {
        return x;
    }
    let device = x.device();
    #[cfg(feature = "gpu")]
    if has_gpu_kernels(&x) {
        let seed = draw_seed(&device);
        return Tensor::from_dispatch(<Dispatch as gpu::GpuFusedOps>::qkv_gpu_dropout(
            x.into_dispatch(),
            prob,
            seed,
        ));
    }
    if !has_fused_kernels(&device, x.dtype()) {
        let keep = 1.0 - prob;
        let mask = x.random_like(Distribution::Bernoulli(keep));
        return x * mask * (1.0 / keep);
    }
    let seed = draw_seed(&device);
    Tensor::from_dispatch(<Dispatch as FusedOps>::qkv_dropout(
        x.into_dispatch(),
        prob,
        seed,
    ))
}

/// Scaled dot-product attention, `softmax(Q·Kᵀ·scale + mask)·V`, as one kernel with its own
/// backward pass on Flex: online softmax over key tiles, so the
/// `[batch, n_heads, seq_q, seq_k]` probabilities are never written out, and the backward pass
/// recomputes them a tile at a time from one log-sum-exp per query (see [`flash`]). Heads
/// are read in place, so `q`, `k` and `v` may be transposed views of `[batch, seq, n_heads,
/// d_head]` projections; the result is stored in that order too, so merging the heads back
/// is free.
///
/// `dropout` (in `[0, 1)`, 0 for none) drops probabilities after the softmax, as
/// [`dropout`] on the materialised probabilities would: on Flex with the same counter-based
/// mask and a seed drawn the same way from the backend's generator, so a reseeded run drops
/// the same entries on either path. The caller decides when it is training.
///
/// On other devices (and dtypes) it is the explicit path, [`flash_attention_explicit`], which
/// is also the oracle of the tests. A query that sees no key gets a zero row, as there.
///
/// # Shapes
/// - `q`: `[batch, n_heads, seq_q, d_head]`
/// - `k`, `v`: `[batch, n_heads, seq_k, d_head]`; with `causal`, `seq_k >= seq_q` (query `i`
///   sees keys `0..=i + seq_k - seq_q`)
/// - `key_hidden`: `[batch, seq_k]`, `true` = hidden
/// - returns `[batch, n_heads, seq_q, d_head]`
///
/// # Panics
/// If the shapes disagree as above (`qkv_attention::MultiHeadAttention` checks them and
/// reports an error first), or `dropout` is outside `[0, 1)`.
pub fn flash_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_hidden: Option<Tensor<2, Bool>>,
    causal: bool,
    scale: Option<f64>,
    dropout: f64,
) -> Tensor<4> {
    let [batch, n_heads, seq_q, d_head] = q.dims();
    let seq_k = k.dims()[2];
    assert_eq!(
        k.dims(),
        [batch, n_heads, seq_k, d_head],
        "flash attention: k"
    );
    assert_eq!(
        v.dims(),
        [batch, n_heads, seq_k, d_head],
        "flash attention: v"
    );
    assert!(
        !causal || seq_q <= seq_k,
        "causal attention needs seq_k >= seq_q"
    );
    if let Some(mask) = &key_hidden {
        assert_eq!(mask.dims(), [batch, seq_k], "flash attention: key mask");
    }
    assert!(
        (0.0..1.0).contains(&dropout),
        "flash attention: dropout {dropout} outside [0, 1)"
    );
    let scale = scale.unwrap_or(1.0 / (d_head as f64).sqrt());
    if let Some(half) = half_dtype(q.dtype()) {
        let (q, k, v) = (to_f32(q), to_f32(k), to_f32(v));
        return flash_attention(q, k, v, key_hidden, causal, Some(scale), dropout).cast(half);
    }
    let device = q.device();
    #[cfg(feature = "gpu")]
    if gpu_flash_serves(&q, &k, key_hidden.is_some()) {
        let dropout = (dropout > 0.0).then(|| (dropout, draw_seed(&device)));
        return Tensor::from_dispatch(<Dispatch as gpu::GpuFusedOps>::qkv_gpu_flash_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            causal,
            scale,
            dropout,
        ));
    }
    if !has_fused_kernels(&device, q.dtype()) {
        return flash_attention_explicit(q, k, v, key_hidden, causal, Some(scale), dropout);
    }
    let dropout = (dropout > 0.0).then(|| (dropout, draw_seed(&device)));
    Tensor::from_dispatch(<Dispatch as FusedOps>::qkv_flash_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        key_hidden.map(|m| backend::KeyMask(m.into_data().iter::<bool>().collect())),
        causal,
        scale,
        dropout,
    ))
}

/// Whether the GPU flash kernels serve these queries and keys: on a GPU with the `gpu`
/// feature, without a key mask (the GPU kernels take none; masked calls take the explicit
/// form), with at least one key, a head dimension of at most 256 (a row's accumulators live
/// in registers), and every probability's index within `u32` (dropout's mask is indexed by
/// it).
pub fn gpu_flash_serves(q: &Tensor<4>, k: &Tensor<4>, key_mask: bool) -> bool {
    let [batch, n_heads, seq_q, d_head] = q.dims();
    let seq_k = k.dims()[2];
    let probs = (batch * n_heads * seq_q).checked_mul(seq_k);
    !key_mask
        && has_gpu_kernels(q)
        && seq_k > 0
        && (1..=256).contains(&d_head)
        && probs.is_some_and(|n| n < u32::MAX as usize)
}

/// The explicit form of [`flash_attention`]: the probabilities materialised by
/// [`attention_probs`](crate::attention_probs), [`dropout`] on them, then a matmul with `v`.
pub fn flash_attention_explicit(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_hidden: Option<Tensor<2, Bool>>,
    causal: bool,
    scale: Option<f64>,
    dropout_prob: f64,
) -> Tensor<4> {
    let [batch, _, seq_q, _] = q.dims();
    let seq_k = k.dims()[2];
    let mask = key_hidden.map(|m| {
        m.reshape([batch, 1, 1, seq_k])
            .expand([batch, 1, seq_q, seq_k])
    });
    dropout(
        crate::attention_probs(q, k, mask, causal, scale),
        dropout_prob,
    )
    .matmul(v)
}

/// One AdamW update of a flattened parameter, PyTorch's `torch.optim.AdamW` formula:
///
/// ```text
/// g ← g·grad_scale
/// m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
/// p ← p·decay_factor − step_size · m / (√v / bias2_sqrt + ε)
/// ```
///
/// On Flex, outside autodiff, one kernel reads each tensor once and writes the three results
/// (thirteen tensor ops, each a pass over memory, on the explicit path); elsewhere it is
/// [`adamw_update_explicit`], which the tests compare it with.
///
/// - `p`, `g`, `m`, `v`: `[n]` (first step: zero moments)
/// - returns the new `(p, m, v)`, each `[n]`
pub fn adamw_update(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    step: AdamWStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let device = p.device();
    if device.is_autodiff() || !has_fused_kernels(&device, p.dtype()) {
        return adamw_update_explicit(p, g, m, v, step);
    }
    let (p, m, v) = <Dispatch as FusedOptim>::qkv_adamw(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// [`adamw_update`] as separate tensor ops: the oracle, and the path off Flex.
pub fn adamw_update_explicit(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    step: AdamWStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let s = step;
    let g = if s.grad_scale == 1.0 {
        g
    } else {
        g.mul_scalar(s.grad_scale)
    };
    let m = m.mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1);
    let v = v.mul_scalar(s.beta2) + g.powi_scalar(2).mul_scalar(1.0 - s.beta2);
    let update = m.clone() / v.clone().sqrt().div_scalar(s.bias2_sqrt).add_scalar(s.eps);
    let p = if s.decay_factor == 1.0 {
        p
    } else {
        p.mul_scalar(s.decay_factor)
    };
    (p - update.mul_scalar(s.step_size), m, v)
}

thread_local! {
    /// The state of this thread's dropout-seed stream, while [`with_dropout_seeds`] runs.
    static SEED_STREAM: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the seeds of the fused dropout kernels ([`dropout`] and the dropout of
/// [`flash_attention`]) drawn from a generator private to this thread, seeded with `seed`,
/// instead of from the backend's generator.
///
/// The backend's generator is one per device, and Flex has one device: threads that train
/// replicas of a model side by side on it (data-parallel workers on one CPU) would take their
/// seeds from it in whatever order they happen to run. Inside this call each thread's masks
/// depend on `seed` and on its own calls only, so a run is the same every time. The previous
/// stream (or none) is restored when `f` returns or panics.
pub fn with_dropout_seeds<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SEED_STREAM.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SEED_STREAM.with(|s| s.replace(Some(seed))));
    f()
}

/// A 48-bit seed: from this thread's stream inside [`with_dropout_seeds`], otherwise from the
/// backend's generator (24 random bits from each of two uniform draws).
fn draw_seed(device: &Device) -> u64 {
    if let Some(state) = SEED_STREAM.with(|s| s.get()) {
        let mut rng = qkv_rng::SplitMix64::new(state);
        let seed = rng.next_u64() >> 16;
        SEED_STREAM.with(|s| s.set(Some(rng.state)));
        return seed;
    }
    let draws = Tensor::<1>::random([2], Distribution::Default, device)
        .into_data()
        .try_to_vec::<f32>()
        .expect("a float tensor reads as f32");
    let bits = |u: f32| (u as f64 * 16_777_216.0) as u64;
    (bits(draws[0]) << 24) | bits(draws[1])
}

#[cfg(test)]
mod tests;
