//! The fused ops as CubeCL kernels, for Burn's CubeCL backend (wgpu, vulkan, cuda): GELU (exact
//! and tanh), LayerNorm and the scaled causal softmax, each forward and backward, and dropout.
//!
//! The element-wise kernels give one unit an element. The row kernels (LayerNorm, softmax) give
//! one cube a row: its units stride over the row, and a row's sums and maxima are reduced
//! through shared memory. A causal softmax row only reads the keys its query can see, so no
//! `-inf` is ever written or compared (WGSL has no infinity literal).
//!
//! Every launcher takes contiguous copies of its inputs (no copy when they are contiguous
//! already) and returns a fresh contiguous output.

use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

/// Units in a cube of the row kernels (a power of two: the reductions halve it).
const ROW_UNITS: usize = 128;

/// The sum over the cube of each unit's `value`, through `shared` (`ROW_UNITS` long); every
/// unit gets the total.
#[cube]
fn cube_sum<F: Float>(shared: &mut Shared<[F]>, value: F) -> F {
    let unit = UNIT_POS_X as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            shared[unit] = shared[unit] + shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The maximum over the cube of each unit's `value`, through `shared`; every unit gets it.
#[cube]
fn cube_max<F: Float>(shared: &mut Shared<[F]>, value: F) -> F {
    let unit = UNIT_POS_X as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            shared[unit] = max(shared[unit], shared[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

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
fn hash32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h *= 0x21f0_aaad;
    h ^= h >> 15;
    h *= 0x735a_2d97;
    h ^ (h >> 15)
}

/// The golden-ratio multiplier that spreads element indices before hashing, as on the CPU
/// (a kernel argument: as a literal, rustc's overflow lint rejects the wrapping product).
const INDEX_MULTIPLIER: u32 = 0x9e37_79b9;

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
    let h = hash32(((i as u32) * index_multiplier) ^ seed_lo);
    let h = hash32(h ^ seed_hi);
    if h >= threshold {
        out[i] = x[i] * F::cast_from(scale);
    } else {
        out[i] = F::new(0.0);
    }
}

/// LayerNorm of each row of `x` (`rows × d`): one cube a row.
#[cube(launch)]
fn layer_norm_forward_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    d: u32,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let d = d as usize;
    let base = row * d;
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let mut shared = Shared::<[F]>::new_slice(units);

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < d {
        acc += x[base + j];
        j += step;
    }
    let mean = cube_sum::<F>(&mut shared, acc) / F::cast_from(d as u32);

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < d {
        let c = x[base + j] - mean;
        acc += c * c;
        j += step;
    }
    let var = cube_sum::<F>(&mut shared, acc) / F::cast_from(d as u32);
    let inv_std = F::new(1.0) / (var + F::cast_from(eps)).sqrt();

    let mut j = unit;
    while j < d {
        out[base + j] = (x[base + j] - mean) * inv_std * gamma[j] + beta[j];
        j += step;
    }
}

/// LayerNorm's backward pass for each row: `dx`, and `dy · x̂` (summed over rows afterwards
/// for `dgamma`).
#[cube(launch)]
fn layer_norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    dy_xhat: &mut Tensor<F>,
    rows: u32,
    d: u32,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let d = d as usize;
    let base = row * d;
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let n = F::cast_from(d as u32);
    let mut shared = Shared::<[F]>::new_slice(units);

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < d {
        acc += x[base + j];
        j += step;
    }
    let mean = cube_sum::<F>(&mut shared, acc) / n;

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < d {
        let c = x[base + j] - mean;
        acc += c * c;
        j += step;
    }
    let var = cube_sum::<F>(&mut shared, acc) / n;
    let inv_std = F::new(1.0) / (var + F::cast_from(eps)).sqrt();

    // mean(g·dy) and mean(g·dy·x̂)
    let mut acc_g = F::new(0.0);
    let mut acc_gx = F::new(0.0);
    let mut j = unit;
    while j < d {
        let xhat = (x[base + j] - mean) * inv_std;
        let g = gamma[j] * dy[base + j];
        acc_g += g;
        acc_gx += g * xhat;
        j += step;
    }
    let mean_g = cube_sum::<F>(&mut shared, acc_g) / n;
    let mean_gx = cube_sum::<F>(&mut shared, acc_gx) / n;

    let mut j = unit;
    while j < d {
        let xhat = (x[base + j] - mean) * inv_std;
        let g = gamma[j] * dy[base + j];
        dx[base + j] = inv_std * (g - mean_g - xhat * mean_gx);
        dy_xhat[base + j] = dy[base + j] * xhat;
        j += step;
    }
}

/// The keys query `q` of `seq_q` sees among `seq_k` (aligned bottom-right when causal).
#[cube]
fn visible_keys(q: usize, seq_q: usize, seq_k: usize, causal: bool) -> usize {
    let mut n = seq_k;
    if causal {
        // q + seq_k - seq_q + 1, clamped to 0..=seq_k without going below zero in usize
        if q + seq_k + 1 > seq_q {
            n = min(q + seq_k + 1 - seq_q, seq_k);
        } else {
            n = 0;
        }
    }
    n
}

/// `softmax(scores · scale)` of each row (`rows × seq_k`, rows in `[.., seq_q]` order), the
/// hidden keys of a causal row set to 0: one cube a row.
#[cube(launch)]
fn softmax_forward_kernel<F: Float>(
    scores: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    seq_q: u32,
    seq_k: u32,
    scale: f32,
    causal: u32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let seq_k = seq_k as usize;
    let base = row * seq_k;
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let n = visible_keys(row % seq_q as usize, seq_q as usize, seq_k, causal == 1);
    let scale = F::cast_from(scale);
    let mut shared = Shared::<[F]>::new_slice(units);

    // Scores are finite, so the first visible one bounds the maximum from below.
    let mut m = F::new(-3.0e38);
    let mut j = unit;
    while j < n {
        m = max(m, scores[base + j] * scale);
        j += step;
    }
    let m = cube_max::<F>(&mut shared, m);

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < n {
        acc += (scores[base + j] * scale - m).exp();
        j += step;
    }
    let total = cube_sum::<F>(&mut shared, acc);

    let mut j = unit;
    while j < seq_k {
        if j < n {
            out[base + j] = (scores[base + j] * scale - m).exp() / total;
        } else {
            out[base + j] = F::new(0.0);
        }
        j += step;
    }
}

/// The scaled softmax's backward pass for each row: `scale · p ⊙ (dp − Σ p·dp)`.
#[cube(launch)]
fn softmax_backward_kernel<F: Float>(
    probs: &Tensor<F>,
    dprobs: &Tensor<F>,
    dscores: &mut Tensor<F>,
    rows: u32,
    seq_k: u32,
    scale: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let seq_k = seq_k as usize;
    let base = row * seq_k;
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let mut shared = Shared::<[F]>::new_slice(units);

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < seq_k {
        acc += probs[base + j] * dprobs[base + j];
        j += step;
    }
    let dot = cube_sum::<F>(&mut shared, acc);

    let scale = F::cast_from(scale);
    let mut j = unit;
    while j < seq_k {
        let p = probs[base + j];
        dscores[base + j] = scale * p * (dprobs[base + j] - dot);
        j += step;
    }
}

/// The storage type of `t`'s dtype, which the kernels are compiled for.
fn storage(t: &CubeTensor) -> ElemType {
    burn::backend::cubecl::dtype_to_storage_type(t.dtype)
}

/// An empty contiguous tensor like `t`.
fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, t.dtype)
}

/// Launch geometry of an element-wise kernel over `n` elements.
fn elementwise(t: &CubeTensor, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

/// Launch geometry of a row kernel: one cube of `ROW_UNITS` units per row.
fn per_row(t: &CubeTensor, rows: usize) -> (CubeCount, CubeDim) {
    let count = calculate_cube_count_elemwise(&t.client, rows, CubeDim::new_1d(1));
    (count, CubeDim::new_1d(ROW_UNITS as u32))
}

/// A size as a kernel's `u32` argument; sizes past `u32` are refused before any launch.
fn size_u32(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("{what} of {n} exceeds the GPU kernels' u32 range"))
}

/// Exact GELU, element-wise.
pub fn gelu(x: CubeTensor) -> CubeTensor {
    let x = into_contiguous(x);
    let shape = x.shape();
    let out = empty_like(&x, shape.clone());
    let (count, dim) = elementwise(&x, shape.num_elements());
    let dtype = storage(&x);
    gelu_forward_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype,
    );
    out
}

/// GELU's backward pass: `dx` from `x` and `dy`.
pub fn gelu_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
    let (x, dy) = (into_contiguous(x), into_contiguous(dy));
    let shape = x.shape();
    let dx = empty_like(&x, shape.clone());
    let (count, dim) = elementwise(&x, shape.num_elements());
    let dtype = storage(&x);
    gelu_backward_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        dy.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        dtype,
    );
    dx
}

/// GELU's tanh approximation, element-wise.
pub fn gelu_tanh(x: CubeTensor) -> CubeTensor {
    let x = into_contiguous(x);
    let shape = x.shape();
    let out = empty_like(&x, shape.clone());
    let (count, dim) = elementwise(&x, shape.num_elements());
    let dtype = storage(&x);
    gelu_tanh_forward_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype,
    );
    out
}

/// The tanh approximation's backward pass.
pub fn gelu_tanh_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
    let (x, dy) = (into_contiguous(x), into_contiguous(dy));
    let shape = x.shape();
    let dx = empty_like(&x, shape.clone());
    let (count, dim) = elementwise(&x, shape.num_elements());
    let dtype = storage(&x);
    gelu_tanh_backward_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        dy.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        dtype,
    );
    dx
}

/// Inverted dropout of `x` with the counter-based mask of `seed` (the same elements as Flex
/// drops for that seed); its backward pass is the same op on the gradient.
pub fn dropout(x: CubeTensor, prob: f64, seed: u64) -> CubeTensor {
    let x = into_contiguous(x);
    let shape = x.shape();
    let out = empty_like(&x, shape.clone());
    let (count, dim) = elementwise(&x, shape.num_elements());
    let dtype = storage(&x);
    let prob = prob as f32;
    let threshold = (prob as f64 * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    dropout_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        seed as u32,
        (seed >> 32) as u32,
        threshold,
        1.0 / (1.0 - prob),
        INDEX_MULTIPLIER,
        dtype,
    );
    out
}

/// The rows and row length of `shape` (`[..., d]`).
fn rows_and_last(shape: &Shape) -> (usize, usize) {
    let d = shape[shape.num_dims() - 1];
    (shape.num_elements() / d.max(1), d)
}

/// LayerNorm over the last dimension.
pub fn layer_norm(x: CubeTensor, gamma: CubeTensor, beta: CubeTensor, eps: f64) -> CubeTensor {
    let (x, gamma, beta) = (
        into_contiguous(x),
        into_contiguous(gamma),
        into_contiguous(beta),
    );
    let shape = x.shape();
    let (rows, d) = rows_and_last(&shape);
    let out = empty_like(&x, shape);
    let (count, dim) = per_row(&x, rows);
    let dtype = storage(&x);
    layer_norm_forward_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        size_u32(rows, "rows"),
        size_u32(d, "a row"),
        eps as f32,
        ROW_UNITS,
        dtype,
    );
    out
}

/// LayerNorm's backward pass: `(dx, dgamma, dbeta)`. The two parameter gradients are sums over
/// rows, taken by the backend's own reduction.
pub fn layer_norm_backward(
    x: CubeTensor,
    gamma: CubeTensor,
    dy: CubeTensor,
    eps: f64,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let (x, gamma, dy) = (
        into_contiguous(x),
        into_contiguous(gamma),
        into_contiguous(dy),
    );
    let shape = x.shape();
    let (rows, d) = rows_and_last(&shape);
    let dx = empty_like(&x, shape.clone());
    let dy_xhat = empty_like(&x, shape);
    let (count, dim) = per_row(&x, rows);
    let dtype = storage(&x);
    layer_norm_backward_kernel::launch(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        dy_xhat.clone().into_tensor_arg(),
        size_u32(rows, "rows"),
        size_u32(d, "a row"),
        eps as f32,
        ROW_UNITS,
        dtype,
    );
    let column_sum = |t: CubeTensor| {
        let t = CubeBackend::float_reshape(t, Shape::new([rows, d]));
        CubeBackend::float_reshape(CubeBackend::float_sum_dim(t, 0), Shape::new([d]))
    };
    (dx, column_sum(dy_xhat), column_sum(dy))
}

/// `softmax(scores · scale)` over the last dimension of `[batch, n_heads, seq_q, seq_k]`
/// scores, future keys hidden when `causal`.
pub fn scaled_softmax(scores: CubeTensor, scale: f64, causal: bool) -> CubeTensor {
    let scores = into_contiguous(scores);
    let shape = scores.shape();
    let (seq_q, seq_k) = (shape[2], shape[3]);
    let rows = shape.num_elements() / seq_k.max(1);
    let out = empty_like(&scores, shape);
    let (count, dim) = per_row(&scores, rows);
    let dtype = storage(&scores);
    softmax_forward_kernel::launch(
        &scores.client.clone(),
        count,
        dim,
        scores.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        size_u32(rows, "rows"),
        size_u32(seq_q, "seq_q"),
        size_u32(seq_k, "seq_k"),
        scale as f32,
        u32::from(causal),
        ROW_UNITS,
        dtype,
    );
    out
}

/// The scaled softmax's backward pass from its output `probs` and `dprobs`.
pub fn scaled_softmax_backward(probs: CubeTensor, dprobs: CubeTensor, scale: f64) -> CubeTensor {
    let (probs, dprobs) = (into_contiguous(probs), into_contiguous(dprobs));
    let shape = probs.shape();
    let seq_k = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / seq_k.max(1);
    let ds = empty_like(&probs, shape);
    let (count, dim) = per_row(&probs, rows);
    let dtype = storage(&probs);
    softmax_backward_kernel::launch(
        &probs.client.clone(),
        count,
        dim,
        probs.into_tensor_arg(),
        dprobs.into_tensor_arg(),
        ds.clone().into_tensor_arg(),
        size_u32(rows, "rows"),
        size_u32(seq_k, "seq_k"),
        scale as f32,
        ROW_UNITS,
        dtype,
    );
    ds
}
