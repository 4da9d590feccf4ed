//! The Burn glue of the fused ops: a backend extension trait and its Flex implementation on top
//! of [`super::kernels`]. The autodiff implementation, where each op is one graph node whose
//! backward pass calls the matching backward kernel, is in `nodes.rs`.
//!
//! Only Flex (and autodiff over Flex) is routed here; [`super::has_fused_kernels`] keeps every
//! other device on the explicit path before the extension is ever called.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Shape, TensorData};

use super::flash::{self, FlashDropout, FlashProblem, HeadLayout};
use super::{adamw_kernel, kernels};

/// A `[batch, seq_k]` key mask on the host, `true` = hidden, shared by a forward pass and its
/// backward pass.
#[derive(Debug, Clone)]
pub struct KeyMask(pub std::sync::Arc<[bool]>);

/// The fused ops as a Burn backend extension. Each forward op has a backward op that its
/// autodiff node calls; the backward ops are not themselves differentiable.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// LayerNorm over the last dimension. `x`: `[..., d]`; `gamma`, `beta`: `[d]`.
    fn qkv_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;

    /// Masked softmax of `scores · scale` over the last dimension. `scores`:
    /// `[batch, n_heads, seq_q, seq_k]`.
    fn qkv_scaled_softmax(scores: FloatTensor<Self>, scale: f64, causal: bool)
    -> FloatTensor<Self>;

    /// Exact GELU, elementwise.
    fn qkv_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// GELU's tanh approximation (GPT-2's `gelu_new`), elementwise.
    fn qkv_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Inverted dropout with the counter-based mask of `seed`. Its own backward pass: the
    /// gradient goes through the same mask.
    fn qkv_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self>;

    /// Attention without materialised probabilities (see [`flash`]). `q`:
    /// `[batch, n_heads, seq_q, d_head]`, `k`, `v`: `[batch, n_heads, seq_k, d_head]`, in any
    /// layout; `key_hidden`: `[batch, seq_k]`, `true` = hidden. Returns
    /// `[batch, n_heads, seq_q, d_head]`, stored in `[batch, seq_q, n_heads, d_head]` order.
    fn qkv_flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_hidden: Option<KeyMask>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> FloatTensor<Self>;
}

/// Optimizer kernels as a Burn backend extension: Flex only, on parameters outside autodiff
/// (an optimizer updates the inner tensors).
#[backend_extension(Flex)]
pub trait FusedOptim: Backend {
    /// One AdamW update of a flattened parameter `p` from its gradient `g` and moments `m`,
    /// `v` (all `[n]`): returns the new `(p, m, v)`.
    fn qkv_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: kernels::AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl FusedOptim for Flex {
    fn qkv_adamw(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        step: kernels::AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut p, g, mut m, mut v) = (contiguous(p), contiguous(g), contiguous(m), contiguous(v));
        let shape = p.shape();
        let n = shape.num_elements();
        // The optimizer usually owns the parameter and both moments alone: update them where
        // they lie. Otherwise (a shared buffer, or a view into a larger one) write new ones.
        if [&p, &m, &v].iter().all(|t| own_whole(t, n))
            && let (Some(ps), Some(ms), Some(vs)) = (
                p.try_storage_mut::<f32>(),
                m.try_storage_mut::<f32>(),
                v.try_storage_mut::<f32>(),
            )
        {
            adamw_kernel::adamw_in_place(ps, elems(&g), ms, vs, &step);
            return (p, m, v);
        }
        let (mut p_out, mut m_out, mut v_out) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        kernels::adamw(
            elems(&p),
            elems(&g),
            elems(&m),
            elems(&v),
            &step,
            &mut p_out,
            &mut m_out,
            &mut v_out,
        );
        (
            tensor(p_out, shape.clone()),
            tensor(m_out, shape.clone()),
            tensor(v_out, shape),
        )
    }
}

/// The backward kernels the autodiff implementation of [`FusedOps`] calls on its inner backend.
pub trait FusedBackward: Backend {
    /// LayerNorm's backward pass: `(dx, dgamma, dbeta)` from `x`, `gamma` and `dy`.
    fn qkv_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The scaled softmax's backward pass from its output `probs` and `dprobs`.
    fn qkv_scaled_softmax_backward(
        probs: FloatTensor<Self>,
        dprobs: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;

    /// GELU (exact, or its tanh approximation with `tanh_approx`) for training: `(gelu(x),
    /// gelu'(x))`, the derivative being what the backward pass keeps instead of `x`.
    fn qkv_gelu_and_slope(
        x: FloatTensor<Self>,
        tanh_approx: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// An elementwise activation's backward pass from its stored derivative: `dy · slope`.
    fn qkv_mul_by_slope(dy: FloatTensor<Self>, slope: FloatTensor<Self>) -> FloatTensor<Self>;

    /// [`FusedOps::qkv_flash_attention`] that also returns each query's log-sum-exp,
    /// `[batch, n_heads, seq_q]`, which its backward pass needs.
    fn qkv_flash_attention_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_hidden: Option<KeyMask>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Flash attention's backward pass: `(dq, dk, dv)` from the forward pass's inputs, output,
    /// log-sum-exp and the output's gradient `dout`.
    #[allow(clippy::too_many_arguments)]
    fn qkv_flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_hidden: Option<KeyMask>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// A contiguous copy of `t` unless it is contiguous already (then `t` itself, no copy).
pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fused kernels take f32 tensors");
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// Whether `t` is a contiguous tensor of `n` elements that is all of its buffer and the only
/// owner of it (so it can be updated in place).
fn own_whole(t: &FlexTensor, n: usize) -> bool {
    t.is_unique()
        && t.layout().start_offset() == 0
        && t.bytes().len() == n * core::mem::size_of::<f32>()
}

/// `t` as a contiguous `f32` tensor of `n` elements that owns its whole buffer alone, so a
/// kernel may write over it: `t` itself when it already is one, else a copy.
fn owned(t: FlexTensor, n: usize) -> FlexTensor {
    let t = contiguous(t);
    if own_whole(&t, n) {
        t
    } else {
        tensor(elems(&t).to_vec(), t.shape())
    }
}

/// The elements of a tensor made by [`contiguous`].
pub(super) fn elems(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor has a slice view")
}

/// A new Flex tensor owning `data`, shaped `shape`.
pub(super) fn tensor(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// A new tensor shaped `shape` whose elements `fill` writes (the kernel's output slice).
fn output(shape: Shape, fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut data = vec![0.0; shape.num_elements()];
    fill(&mut data);
    tensor(data, shape)
}

/// The last dimension of `shape`.
fn last_dim(shape: &Shape) -> usize {
    shape[shape.num_dims() - 1]
}

/// A 4-D `f32` tensor as flash attention reads it: itself when its last dimension is
/// contiguous and its strides are non-negative (a head view of a projection is), else a
/// contiguous copy.
fn heads(t: FlexTensor) -> (FlexTensor, HeadLayout) {
    assert_eq!(t.dtype(), DType::F32, "fused kernels take f32 tensors");
    let read = |t: &FlexTensor| {
        let layout = t.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        assert_eq!(shape.num_dims(), 4, "flash attention takes 4-D tensors");
        let inner = strides[3] == 1 || shape[3] == 1;
        let positive = strides[..3].iter().all(|&s| s >= 0);
        (inner && positive).then(|| HeadLayout {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            strides: [strides[0], strides[1], strides[2]].map(|s| s as usize),
            offset: layout.start_offset(),
        })
    };
    match read(&t) {
        Some(layout) => (t, layout),
        None => {
            let t = t.to_contiguous();
            let layout = read(&t).expect("a contiguous tensor has head strides");
            (t, layout)
        }
    }
}

/// A `[batch, seq, n_heads, d_head]` buffer as the `[batch, n_heads, seq, d_head]` tensor it
/// holds (a transposed view, no copy).
fn heads_tensor(data: Vec<f32>, [batch, n_heads, seq, d_head]: [usize; 4]) -> FlexTensor {
    tensor(data, Shape::new([batch, seq, n_heads, d_head])).transpose(1, 2)
}

/// The problem that `q` and `k` describe.
fn problem(
    q: &HeadLayout,
    k: &HeadLayout,
    causal: bool,
    scale: f64,
    dropout: Option<(f64, u64)>,
) -> FlashProblem {
    let [batch, n_heads, seq_q, d_head] = q.shape;
    FlashProblem {
        batch,
        n_heads,
        seq_q,
        seq_k: k.shape[2],
        d_head,
        causal,
        scale: scale as f32,
        dropout: dropout.map(|(prob, seed)| FlashDropout::new(prob as f32, seed)),
    }
}

impl FusedOps for Flex {
    fn qkv_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f64) -> FlexTensor {
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        output(x.shape(), |out| {
            kernels::layer_norm_forward(elems(&x), elems(&gamma), elems(&beta), eps as f32, out)
        })
    }

    fn qkv_scaled_softmax(scores: FlexTensor, scale: f64, causal: bool) -> FlexTensor {
        let scores = contiguous(scores);
        let shape = scores.shape();
        let (seq_q, seq_k) = (shape[shape.num_dims() - 2], last_dim(&shape));
        output(shape, |out| {
            kernels::scaled_softmax_forward(elems(&scores), seq_q, seq_k, scale as f32, causal, out)
        })
    }

    fn qkv_gelu(x: FlexTensor) -> FlexTensor {
        let x = contiguous(x);
        output(x.shape(), |out| kernels::gelu_forward(elems(&x), out))
    }

    fn qkv_gelu_tanh(x: FlexTensor) -> FlexTensor {
        let x = contiguous(x);
        output(x.shape(), |out| kernels::gelu_tanh_forward(elems(&x), out))
    }

    fn qkv_dropout(x: FlexTensor, prob: f64, seed: u64) -> FlexTensor {
        let x = contiguous(x);
        output(x.shape(), |out| {
            kernels::dropout(elems(&x), prob as f32, seed, out)
        })
    }

    fn qkv_flash_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        key_hidden: Option<KeyMask>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> FlexTensor {
        Self::qkv_flash_attention_with_lse(q, k, v, key_hidden, causal, scale, dropout).0
    }
}

impl FusedBackward for Flex {
    fn qkv_layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        dy: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, gamma, dy) = (contiguous(x), contiguous(gamma), contiguous(dy));
        let shape = x.shape();
        let d = last_dim(&shape);
        let mut dx = vec![0.0; shape.num_elements()];
        let (dgamma, dbeta) =
            kernels::layer_norm_backward(elems(&x), elems(&gamma), elems(&dy), eps as f32, &mut dx);
        (
            tensor(dx, shape),
            tensor(dgamma, Shape::new([d])),
            tensor(dbeta, Shape::new([d])),
        )
    }

    fn qkv_scaled_softmax_backward(
        probs: FlexTensor,
        dprobs: FlexTensor,
        scale: f64,
    ) -> FlexTensor {
        let (probs, dprobs) = (contiguous(probs), contiguous(dprobs));
        let shape = probs.shape();
        let seq_k = last_dim(&shape);
        output(shape, |ds| {
            kernels::scaled_softmax_backward(elems(&probs), elems(&dprobs), seq_k, scale as f32, ds)
        })
    }

    fn qkv_gelu_and_slope(x: FlexTensor, tanh_approx: bool) -> (FlexTensor, FlexTensor) {
        let shape = x.shape();
        let n = shape.num_elements();
        // The matrix product before the activation usually leaves `x` to this op alone: write
        // GELU over it. A shared or partial buffer is copied first, so no one else sees it
        // change.
        let mut values = owned(x, n);
        let mut slope = vec![0.0; n];
        let data = values
            .try_storage_mut::<f32>()
            .expect("an owned contiguous f32 tensor is writable");
        if tanh_approx {
            kernels::gelu_tanh_and_slope(data, &mut slope);
        } else {
            kernels::gelu_and_slope(data, &mut slope);
        }
        (values, tensor(slope, shape))
    }

    fn qkv_mul_by_slope(dy: FlexTensor, slope: FlexTensor) -> FlexTensor {
        let slope = contiguous(slope);
        let n = slope.shape().num_elements();
        let mut dx = owned(dy, n);
        kernels::mul_in_place(
            dx.try_storage_mut::<f32>()
                .expect("an owned contiguous f32 tensor is writable"),
            elems(&slope),
        );
        dx
    }

    fn qkv_flash_attention_with_lse(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        key_hidden: Option<KeyMask>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (FlexTensor, FlexTensor) {
        let ((q, ql), (k, kl), (v, vl)) = (heads(q), heads(k), heads(v));
        let p = problem(&ql, &kl, causal, scale, dropout);
        let (out, lse) = flash::forward(
            &p,
            (q.storage(), ql),
            (k.storage(), kl),
            (v.storage(), vl),
            key_hidden.as_ref().map(|m| &m.0[..]),
        );
        (
            heads_tensor(out, ql.shape),
            tensor(lse, Shape::new([p.batch, p.n_heads, p.seq_q])),
        )
    }

    fn qkv_flash_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        key_hidden: Option<KeyMask>,
        out: FlexTensor,
        lse: FlexTensor,
        dout: FlexTensor,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let ((q, ql), (k, kl), (v, vl)) = (heads(q), heads(k), heads(v));
        let ((out, ol), (dout, dl)) = (heads(out), heads(dout));
        let lse = contiguous(lse);
        let p = problem(&ql, &kl, causal, scale, dropout);
        let grads = flash::backward(
            &p,
            (q.storage(), ql),
            (k.storage(), kl),
            (v.storage(), vl),
            key_hidden.as_ref().map(|m| &m.0[..]),
            (out.storage(), ol),
            elems(&lse),
            (dout.storage(), dl),
        );
        (
            heads_tensor(grads.dq, ql.shape),
            heads_tensor(grads.dk, kl.shape),
            heads_tensor(grads.dv, vl.shape),
        )
    }
}
