//! The element-wise fused ops as CubeCL kernels, for Burn's CubeCL backend (wgpu, vulkan,
//! cuda): exact and tanh GELU, forward and backward, and dropout, one unit an element; and
//! the helpers every GPU kernel file shares. The row kernels (LayerNorm, softmax) are in
//! `gpu_rows`, attention in `gpu_flash`.
//!
//! Every launcher takes contiguous copies of its inputs (no copy when they are contiguous
//! already) and returns a fresh contiguous output.

use burn::backend::TensorMetadata;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::Client;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

/// `x · Φ(x)`, with `Φ` from `erf`.
#[cube(launch)]
fn gelu_forward_kernel<F: Float>(
    x: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let v = x[i];
    let half = F::new(0.5);
    out[i] = half * v * (F::new(1.0) + (v * F::new(core::f32::consts::FRAC_1_SQRT_2)).erf());
}

/// `dy · (Φ(x) + x · φ(x))`.
#[cube(launch)]
fn gelu_backward_kernel<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= dx.len() {
        terminate!();
    }
    let v = x[i];
    let cdf = F::new(0.5) * (F::new(1.0) + (v * F::new(core::f32::consts::FRAC_1_SQRT_2)).erf());
    // 1/√(2π)
    let pdf = F::new(0.398_942_3) * (F::new(-0.5) * v * v).exp();
    dx[i] = dy[i] * (cdf + v * pdf);
}

/// `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`.
#[cube(launch)]
fn gelu_tanh_forward_kernel<F: Float>(
    x: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let v = x[i];
    // √(2/π)
    let u = F::new(0.797_884_6) * (v + F::new(0.044_715) * v * v * v);
    out[i] = F::new(0.5) * v * (F::new(1.0) + u.tanh());
}

/// The derivative of the tanh approximation times `dy`.
#[cube(launch)]
fn gelu_tanh_backward_kernel<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= dx.len() {
        terminate!();
    }
    let v = x[i];
    let u = F::new(0.797_884_6) * (v + F::new(0.044_715) * v * v * v);
    let t = u.tanh();
    let du = F::new(0.797_884_6) * (F::new(1.0) + F::new(3.0 * 0.044_715) * v * v);
    let half = F::new(0.5);
    dx[i] = dy[i] * (half * (F::new(1.0) + t) + half * v * (F::new(1.0) - t * t) * du);
}

/// Chris Wellons' `lowbias32` hash, as the CPU kernels' (`u32` products wrap on every GPU).
#[cube]
pub(super) fn hash32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h *= 0x21f0_aaad;
    h ^= h >> 15;
    h *= 0x735a_2d97;
    h ^ (h >> 15)
}

/// Whether dropout keeps element `index` (of the flattened tensor) under the seed's halves:
/// the CPU kernels' counter-based draw, `threshold` being `prob · 2³²`.
#[cube]
pub(super) fn keeps(
    index: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    multiplier: u32,
) -> bool {
    let h = hash32((index * multiplier) ^ seed_lo);
    hash32(h ^ seed_hi) >= threshold
}

/// `prob · 2³²` (at most `u32::MAX`): the threshold of [`keeps`].
pub(super) fn drop_threshold(prob: f64) -> u32 {
    (prob * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// The golden-ratio multiplier that spreads element indices before hashing, as on the CPU
/// (a kernel argument: as a literal, rustc's overflow lint rejects the wrapping product).
pub(super) const INDEX_MULTIPLIER: u32 = 0x9e37_79b9;

/// Inverted dropout with the CPU kernels' counter-based mask: element `i` is kept when a hash
/// of the seed and `i` reaches `threshold` (`prob · 2³²`), so the GPU drops the same elements
/// as Flex for the same seed.
#[cube(launch)]
fn dropout_kernel<F: Float>(
    x: &Tensor<F>,
    out: &mut Tensor<F>,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    index_multiplier: u32,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    if keeps(i as u32, seed_lo, seed_hi, threshold, index_multiplier) {
        out[i] = x[i] * F::cast_from(scale);
    } else {
        out[i] = F::new(0.0);
    }
}

/// The storage type of `t`'s dtype, which the kernels are compiled for.
pub(super) fn storage(t: &CubeTensor) -> ElemType {
    burn::backend::cubecl::dtype_to_storage_type(t.dtype)
}

/// An empty contiguous tensor like `t`.
pub(super) fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, t.dtype)
}

/// Launch geometry of an element-wise kernel over `n` elements.
pub(super) fn elementwise(t: &CubeTensor, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

/// A size as a kernel's `u32` argument; sizes past `u32` are refused before any launch.
pub(super) fn size_u32(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("{what} of {n} exceeds the GPU kernels' u32 range"))
}

/// What an element-wise launch receives: the client, the launch geometry, the inputs' and the
/// output's arguments, and the storage type.
type ElementwiseLaunch<'a, const N: usize> = (
    &'a Client,
    CubeCount,
    CubeDim,
    [TensorArg; N],
    TensorArg,
    ElemType,
);

/// Runs an element-wise kernel over `inputs` (made contiguous; the first one's shape and dtype
/// are the output's) through `launch`, and returns the fresh output.
fn elementwise_op<const N: usize>(
    inputs: [CubeTensor; N],
    launch: impl FnOnce(ElementwiseLaunch<'_, N>),
) -> CubeTensor {
    let inputs = inputs.map(into_contiguous);
    let shape = inputs[0].shape();
    let out = empty_like(&inputs[0], shape.clone());
    let (count, dim) = elementwise(&inputs[0], shape.num_elements());
    let dtype = storage(&inputs[0]);
    let client = inputs[0].client.clone();
    let args = inputs.map(CubeTensor::into_tensor_arg);
    launch((
        &client,
        count,
        dim,
        args,
        out.clone().into_tensor_arg(),
        dtype,
    ));
    out
}

/// Exact GELU, element-wise.
pub fn gelu(x: CubeTensor) -> CubeTensor {
    elementwise_op([x], |(client, count, dim, [x], out, dtype)| {
        gelu_forward_kernel::launch(client, count, dim, x, out, dtype)
    })
}

/// GELU's backward pass: `dx` from `x` and `dy`.
pub fn gelu_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
    elementwise_op([x, dy], |(client, count, dim, [x, dy], dx, dtype)| {
        gelu_backward_kernel::launch(client, count, dim, x, dy, dx, dtype)
    })
}

/// GELU's tanh approximation, element-wise.
pub fn gelu_tanh(x: CubeTensor) -> CubeTensor {
    elementwise_op([x], |(client, count, dim, [x], out, dtype)| {
        gelu_tanh_forward_kernel::launch(client, count, dim, x, out, dtype)
    })
}

/// The tanh approximation's backward pass.
pub fn gelu_tanh_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
    elementwise_op([x, dy], |(client, count, dim, [x, dy], dx, dtype)| {
        gelu_tanh_backward_kernel::launch(client, count, dim, x, dy, dx, dtype)
    })
}

/// Inverted dropout of `x` with the counter-based mask of `seed` (the same elements as Flex
/// drops for that seed); its backward pass is the same op on the gradient.
pub fn dropout(x: CubeTensor, prob: f64, seed: u64) -> CubeTensor {
    let threshold = drop_threshold(prob as f32 as f64);
    let keep_scale = 1.0 / (1.0 - prob as f32);
    elementwise_op([x], |(client, count, dim, [x], out, dtype)| {
        dropout_kernel::launch(
            client,
            count,
            dim,
            x,
            out,
            seed as u32,
            (seed >> 32) as u32,
            threshold,
            keep_scale,
            INDEX_MULTIPLIER,
            dtype,
        )
    })
}
