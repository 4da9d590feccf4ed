//! Attention without materialised probabilities on the GPU, for training: three CubeCL kernels.
//!
//! - **Forward**, one unit per query row: the row's visible keys stream past once, with an
//!   online softmax (running maximum and sum, the accumulated output rescaled whenever the
//!   maximum grows), and the row's log-sum-exp is kept for the backward pass.
//! - **Backward for `dq`**, one unit per query row, and **for `dk` and `dv`**, one unit per key
//!   row: each recomputes the probabilities it needs from the log-sum-exp, so no
//!   `seq_q × seq_k` matrix is ever in memory, and neither needs atomics.
//!
//! Dropout on the probabilities uses the counter-based mask of [`super::dropout`], indexed as
//! in the materialised `[batch, n_heads, seq_q, seq_k]` tensor, so the explicit path (softmax,
//! dropout, product) is an exact oracle, as on Flex. The head dimension is a compile-time
//! constant of each kernel (one compilation per `d_head`), so a row's accumulators live in
//! registers. Inputs are read through their strides, so head views of `[batch, seq, n_heads,
//! d_head]` projections need no copy; only a row of `d_head` must be contiguous. Outputs are
//! contiguous `[batch, n_heads, seq, d_head]` tensors.
//!
//! The kernels stream keys from global memory one at a time rather than through tiles in
//! shared memory: written for correctness and few launches (three, against about fifteen on
//! the explicit path), not tuned on a GPU.

use burn::backend::TensorMetadata;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::gpu_kernels::{
    INDEX_MULTIPLIER, drop_threshold, elementwise, empty_like, keeps, size_u32, storage,
};
use super::gpu_rows::visible_keys;

/// What every flash kernel reads besides its tensors.
#[derive(CubeLaunch, CubeType)]
struct Problem {
    rows: u32,
    heads: u32,
    seq_q: u32,
    seq_k: u32,
    scale: f32,
    causal: u32,
    dropout: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    keep_scale: f32,
    multiplier: u32,
}

/// The factor dropout applies to probability `index` of the flattened `[.., seq_q, seq_k]`
/// tensor: 1 without dropout, else 0 or `1 / (1 - prob)`.
#[cube]
fn drop_factor<F: Float>(p: &Problem, index: usize) -> F {
    let mut factor = F::new(1.0);
    if p.dropout == 1 {
        if keeps(
            index as u32,
            p.seed_lo,
            p.seed_hi,
            p.threshold,
            p.multiplier,
        ) {
            factor = F::cast_from(p.keep_scale);
        } else {
            factor = F::new(0.0);
        }
    }
    factor
}

/// Where head `bh` (`batch · n_heads + head`) of a `[batch, n_heads, seq, d_head]` tensor
/// starts, through the tensor's strides: the kernels read q, k, v, the output and its gradient
/// in whatever layout they come (a head view of a `[batch, seq, n_heads, d_head]` projection,
/// say) as long as the last dimension is contiguous.
#[cube]
fn head_start<F: Float>(t: &Tensor<F>, bh: usize, heads: usize) -> usize {
    (bh / heads) * t.stride(0) + (bh % heads) * t.stride(1)
}

/// `a[a_base..a_base + d] · b[b_base..b_base + d]`.
#[cube]
fn dot<F: Float>(
    a: &Tensor<F>,
    a_base: usize,
    b: &Tensor<F>,
    b_base: usize,
    #[comptime] d: usize,
) -> F {
    let mut acc = F::new(0.0);
    for dd in 0..d {
        acc += a[a_base + dd] * b[b_base + dd];
    }
    acc
}

#[cube(launch)]
fn flash_forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    p: &Problem,
    #[comptime] d_head: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= p.rows as usize {
        terminate!();
    }
    let seq_q = p.seq_q as usize;
    let seq_k = p.seq_k as usize;
    let heads = p.heads as usize;
    let bh = row / seq_q;
    let q_base = head_start::<F>(q, bh, heads) + (row % seq_q) * q.stride(2);
    let k_base = head_start::<F>(k, bh, heads);
    let v_base = head_start::<F>(v, bh, heads);
    let n = visible_keys(row % seq_q, seq_q, seq_k, p.causal == 1);
    let scale = F::cast_from(p.scale);

    let mut acc = Array::<F>::new(d_head);
    for dd in 0..d_head {
        acc[dd] = F::new(0.0);
    }
    let mut m = F::new(-3.0e38);
    let mut l = F::new(0.0);
    for j in 0..n {
        let kr = k_base + j * k.stride(2);
        let vr = v_base + j * v.stride(2);
        let s = dot::<F>(q, q_base, k, kr, d_head) * scale;
        let m_new = max(m, s);
        let correction = (m - m_new).exp();
        let e = (s - m_new).exp();
        l = l * correction + e;
        let w = e * drop_factor::<F>(p, row * seq_k + j);
        for dd in 0..d_head {
            acc[dd] = acc[dd] * correction + w * v[vr + dd];
        }
        m = m_new;
    }
    for dd in 0..d_head {
        out[row * d_head + dd] = acc[dd] / l;
    }
    lse[row] = m + l.ln();
}

/// `dq` of each query row, and `delta = rowsum(dout ⊙ out)`, which the `dk`/`dv` kernel
/// reads.
#[cube(launch)]
fn flash_backward_dq_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &Tensor<F>,
    lse: &Tensor<F>,
    dout: &Tensor<F>,
    dq: &mut Tensor<F>,
    delta: &mut Tensor<F>,
    p: &Problem,
    #[comptime] d_head: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= p.rows as usize {
        terminate!();
    }
    let seq_q = p.seq_q as usize;
    let seq_k = p.seq_k as usize;
    let heads = p.heads as usize;
    let bh = row / seq_q;
    let i = row % seq_q;
    let q_base = head_start::<F>(q, bh, heads) + i * q.stride(2);
    let o_base = head_start::<F>(out, bh, heads) + i * out.stride(2);
    let do_base = head_start::<F>(dout, bh, heads) + i * dout.stride(2);
    let k_base = head_start::<F>(k, bh, heads);
    let v_base = head_start::<F>(v, bh, heads);
    let n = visible_keys(i, seq_q, seq_k, p.causal == 1);
    let scale = F::cast_from(p.scale);
    let lse_i = lse[row];
    let delta_i = dot::<F>(dout, do_base, out, o_base, d_head);
    delta[row] = delta_i;

    let mut acc = Array::<F>::new(d_head);
    for dd in 0..d_head {
        acc[dd] = F::new(0.0);
    }
    for j in 0..n {
        let kr = k_base + j * k.stride(2);
        let vr = v_base + j * v.stride(2);
        let prob = (dot::<F>(q, q_base, k, kr, d_head) * scale - lse_i).exp();
        let dprob = dot::<F>(dout, do_base, v, vr, d_head) * drop_factor::<F>(p, row * seq_k + j);
        let ds = prob * (dprob - delta_i) * scale;
        for dd in 0..d_head {
            acc[dd] += ds * k[kr + dd];
        }
    }
    for dd in 0..d_head {
        dq[row * d_head + dd] = acc[dd];
    }
}

/// `dk` and `dv` of each key row, over the queries that see it.
#[cube(launch)]
fn flash_backward_dkdv_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    dout: &Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    p: &Problem,
    #[comptime] d_head: usize,
    #[define(F)] _dtype: ElemType,
) {
    let seq_q = p.seq_q as usize;
    let seq_k = p.seq_k as usize;
    let key_rows = p.rows as usize / seq_q * seq_k;
    let key_row = ABSOLUTE_POS;
    if key_row >= key_rows {
        terminate!();
    }
    let heads = p.heads as usize;
    let bh = key_row / seq_k;
    let j = key_row % seq_k;
    let kr = head_start::<F>(k, bh, heads) + j * k.stride(2);
    let vr = head_start::<F>(v, bh, heads) + j * v.stride(2);
    let q_head = head_start::<F>(q, bh, heads);
    let do_head = head_start::<F>(dout, bh, heads);
    let scale = F::cast_from(p.scale);
    // Query i sees key j when j <= i + seq_k - seq_q.
    let mut first = 0;
    if p.causal == 1 && j + seq_q > seq_k {
        first = j + seq_q - seq_k;
    }

    let mut dk_acc = Array::<F>::new(d_head);
    let mut dv_acc = Array::<F>::new(d_head);
    for dd in 0..d_head {
        dk_acc[dd] = F::new(0.0);
        dv_acc[dd] = F::new(0.0);
    }
    for i in first..seq_q {
        let row = bh * seq_q + i;
        let q_base = q_head + i * q.stride(2);
        let do_base = do_head + i * dout.stride(2);
        let prob = (dot::<F>(q, q_base, k, kr, d_head) * scale - lse[row]).exp();
        let factor = drop_factor::<F>(p, row * seq_k + j);
        let dprob = dot::<F>(dout, do_base, v, vr, d_head) * factor;
        let ds = prob * (dprob - delta[row]) * scale;
        let kept = prob * factor;
        for dd in 0..d_head {
            dk_acc[dd] += ds * q[q_base + dd];
            dv_acc[dd] += kept * dout[do_base + dd];
        }
    }
    let kv = key_row * d_head;
    for dd in 0..d_head {
        dk[kv + dd] = dk_acc[dd];
        dv[kv + dd] = dv_acc[dd];
    }
}

/// `t` (`[batch, n_heads, seq, d_head]`) itself when each row of `d_head` is contiguous (the
/// kernels read the other dimensions through their strides), else a contiguous copy.
fn rows_contiguous(t: CubeTensor) -> CubeTensor {
    let rows_packed = t.meta.strides()[3] == 1 || t.meta.shape()[3] == 1;
    if rows_packed { t } else { into_contiguous(t) }
}

/// The problem's sizes and options as the kernels read them.
fn problem(
    q: &CubeTensor,
    k: &CubeTensor,
    causal: bool,
    scale: f64,
    dropout: Option<(f64, u64)>,
) -> (ProblemLaunch, usize, usize) {
    let [batch, n_heads, seq_q, d_head] = q.shape().dims();
    let seq_k = k.shape().dims::<4>()[2];
    let rows = batch * n_heads * seq_q;
    let (prob, seed) = dropout.unwrap_or((0.0, 0));
    let launch = ProblemLaunch::new(
        size_u32(rows, "rows"),
        size_u32(n_heads, "heads"),
        size_u32(seq_q, "seq_q"),
        size_u32(seq_k, "seq_k"),
        scale as f32,
        u32::from(causal),
        u32::from(dropout.is_some()),
        seed as u32,
        (seed >> 32) as u32,
        drop_threshold(prob as f32 as f64),
        1.0 / (1.0 - prob as f32),
        INDEX_MULTIPLIER,
    );
    (launch, rows, d_head)
}

/// Flash attention forward: `(out, lse)`, `out` `[batch, n_heads, seq_q, d_head]` and the
/// log-sum-exp of each query's scores `[batch, n_heads, seq_q]`.
pub fn flash_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    causal: bool,
    scale: f64,
    dropout: Option<(f64, u64)>,
) -> (CubeTensor, CubeTensor) {
    let (q, k, v) = (rows_contiguous(q), rows_contiguous(k), rows_contiguous(v));
    let (problem, rows, d_head) = problem(&q, &k, causal, scale, dropout);
    let shape = q.shape();
    let out = empty_like(&q, shape.clone());
    let lse = empty_like(&q, Shape::new([shape[0], shape[1], shape[2]]));
    let (count, dim) = elementwise(&q, rows);
    let dtype = storage(&q);
    flash_forward_kernel::launch(
        &q.client.clone(),
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        problem,
        d_head,
        dtype,
    );
    (out, lse)
}

/// Flash attention backward: `(dq, dk, dv)` from the forward pass's inputs, output and
/// log-sum-exp, and the output's gradient.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    out: CubeTensor,
    lse: CubeTensor,
    dout: CubeTensor,
    causal: bool,
    scale: f64,
    dropout: Option<(f64, u64)>,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let (q, k, v) = (rows_contiguous(q), rows_contiguous(k), rows_contiguous(v));
    let (out, lse, dout) = (
        rows_contiguous(out),
        into_contiguous(lse),
        rows_contiguous(dout),
    );
    let (problem_dq, rows, d_head) = problem(&q, &k, causal, scale, dropout);
    let (problem_dkdv, _, _) = problem(&q, &k, causal, scale, dropout);
    let dq = empty_like(&q, q.shape());
    let dk = empty_like(&k, k.shape());
    let dv = empty_like(&v, v.shape());
    let delta = empty_like(&lse, lse.shape());
    let dtype = storage(&q);
    let client = q.client.clone();

    let (count, dim) = elementwise(&q, rows);
    flash_backward_dq_kernel::launch(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        out.into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        dout.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        problem_dq,
        d_head,
        dtype,
    );
    let key_rows = k.shape().num_elements() / d_head.max(1);
    let (count, dim) = elementwise(&k, key_rows);
    flash_backward_dkdv_kernel::launch(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        dout.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        problem_dkdv,
        d_head,
        dtype,
    );
    (dq, dk, dv)
}
