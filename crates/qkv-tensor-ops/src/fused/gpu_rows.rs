//! The row kernels of the fused ops on the GPU: LayerNorm and the scaled causal softmax,
//! forward and backward, and the softmax cross-entropy of the LM head. One cube takes a row: its units stride over the row, and a row's sums
//! and maxima are reduced through shared memory. A causal softmax row only reads the keys its
//! query can see, so no `-inf` is ever written or compared (WGSL has no infinity literal).

use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::gpu_kernels::{empty_like, size_u32, storage};

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

/// The mean of row `x[base..base + d]`, the cube's units striding over it.
#[cube]
fn row_mean<F: Float>(x: &Tensor<F>, base: usize, d: usize, shared: &mut Shared<[F]>) -> F {
    let mut acc = F::new(0.0);
    let mut j = UNIT_POS_X as usize;
    while j < d {
        acc += x[base + j];
        j += CUBE_DIM_X as usize;
    }
    cube_sum::<F>(shared, acc) / F::cast_from(d as u32)
}

/// `1 / sqrt(var + eps)` of row `x[base..base + d]` around its `mean` (biased variance, the
/// second of two passes).
#[cube]
fn row_inv_std<F: Float>(
    x: &Tensor<F>,
    base: usize,
    d: usize,
    mean: F,
    eps: f32,
    shared: &mut Shared<[F]>,
) -> F {
    let mut acc = F::new(0.0);
    let mut j = UNIT_POS_X as usize;
    while j < d {
        let c = x[base + j] - mean;
        acc += c * c;
        j += CUBE_DIM_X as usize;
    }
    let var = cube_sum::<F>(shared, acc) / F::cast_from(d as u32);
    F::new(1.0) / (var + F::cast_from(eps)).sqrt()
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

    let mean = row_mean::<F>(x, base, d, &mut shared);
    let inv_std = row_inv_std::<F>(x, base, d, mean, eps, &mut shared);

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

    let mean = row_mean::<F>(x, base, d, &mut shared);
    let inv_std = row_inv_std::<F>(x, base, d, mean, eps, &mut shared);

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
pub(super) fn visible_keys(q: usize, seq_q: usize, seq_k: usize, causal: bool) -> usize {
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

/// Launch geometry of a row kernel: one cube of `ROW_UNITS` units per row.
fn per_row(t: &CubeTensor, rows: usize) -> (CubeCount, CubeDim) {
    let count = calculate_cube_count_elemwise(&t.client, rows, CubeDim::new_1d(1));
    (count, CubeDim::new_1d(ROW_UNITS as u32))
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

/// Softmax cross-entropy of each row of `logits` (`rows × vocab`) against `targets` (one id a
/// row, as a float; negative = ignored): writes the row's loss `lse − (1 − ε)·x_t − ε·mean(x)`
/// and, `with_grad`, its gradient `softmax − (1 − ε)·onehot(t) − ε/vocab` (zeros for an ignored
/// row).
#[cube(launch)]
fn cross_entropy_kernel<F: Float>(
    logits: &Tensor<F>,
    targets: &Tensor<F>,
    row_loss: &mut Tensor<F>,
    grad: &mut Tensor<F>,
    rows: u32,
    vocab: u32,
    smoothing: f32,
    #[comptime] with_grad: bool,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let vocab = vocab as usize;
    let base = row * vocab;
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let target = targets[row];
    // Every unit of the cube reads the same target, so the whole cube leaves together.
    if target < F::new(0.0) {
        if with_grad {
            let mut j = unit;
            while j < vocab {
                grad[base + j] = F::new(0.0);
                j += step;
            }
        }
        if unit == 0 {
            row_loss[row] = F::new(0.0);
        }
        terminate!();
    }
    let t = u32::cast_from(target) as usize;
    let mut shared = Shared::<[F]>::new_slice(units);

    // Logits are finite, so any value below them bounds the maximum from below.
    let mut m = F::new(-3.0e38);
    let mut total = F::new(0.0);
    let mut j = unit;
    while j < vocab {
        m = max(m, logits[base + j]);
        total += logits[base + j];
        j += step;
    }
    let m = cube_max::<F>(&mut shared, m);
    let total = cube_sum::<F>(&mut shared, total);

    let mut acc = F::new(0.0);
    let mut j = unit;
    while j < vocab {
        acc += (logits[base + j] - m).exp();
        j += step;
    }
    let lse = m + cube_sum::<F>(&mut shared, acc).ln();

    let eps = F::cast_from(smoothing);
    let n = F::cast_from(vocab as u32);
    if unit == 0 {
        row_loss[row] = lse - (F::new(1.0) - eps) * logits[base + t] - eps * total / n;
    }
    if with_grad {
        let mut j = unit;
        while j < vocab {
            let mut g = (logits[base + j] - lse).exp() - eps / n;
            if j == t {
                g -= F::new(1.0) - eps;
            }
            grad[base + j] = g;
            j += step;
        }
    }
}

/// Each row's softmax cross-entropy (`[rows]`) of `logits` (`[rows, vocab]`) against `targets`
/// (`[rows]`, ids as floats, negative = ignored), and with `with_grad` the gradient of each
/// row's loss with respect to its logits (`[rows, vocab]`).
pub fn cross_entropy_rows(
    logits: CubeTensor,
    targets: CubeTensor,
    smoothing: f64,
    with_grad: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let (logits, targets) = (into_contiguous(logits), into_contiguous(targets));
    let shape = logits.shape();
    let (rows, vocab) = rows_and_last(&shape);
    let row_loss = empty_like(&logits, Shape::new([rows]));
    // Without the gradient, the kernel still takes a tensor there: one element, never written.
    let grad = empty_like(&logits, if with_grad { shape } else { Shape::new([1]) });
    let (count, dim) = per_row(&logits, rows);
    let dtype = storage(&logits);
    cross_entropy_kernel::launch(
        &logits.client.clone(),
        count,
        dim,
        logits.into_tensor_arg(),
        targets.into_tensor_arg(),
        row_loss.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        size_u32(rows, "rows"),
        size_u32(vocab, "the vocabulary"),
        smoothing as f32,
        with_grad,
        ROW_UNITS,
        dtype,
    );
    (row_loss, with_grad.then_some(grad))
}
