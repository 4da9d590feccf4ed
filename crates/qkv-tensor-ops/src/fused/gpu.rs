//! The Burn glue of the GPU kernels ([`super::gpu_kernels`], [`super::gpu_rows`],
//! [`super::gpu_flash`]): two backend extension traits
//! implemented on Burn's CubeCL backend, lazily through Burn's fusion (each op is one opaque
//! custom op in the fusion stream), and on autodiff, where each op is one graph node whose
//! backward pass calls the matching backward kernel.
//!
//! Only CubeCL devices with `f32` tensors are routed here ([`super::has_gpu_kernels`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;

use burn::tensor::Shape;

use super::gpu_kernels as kernels;
use super::{gpu_flash, gpu_rows};

/// The fused forward ops on the GPU, as a Burn backend extension.
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait GpuFusedOps: Backend {
    /// LayerNorm over the last dimension. `x`: `[..., d]`; `gamma`, `beta`: `[d]`.
    #[fusion(dtype = x, shape = x)]
    fn qkv_gpu_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;

    /// Masked softmax of `scores · scale` over the last dimension. `scores`:
    /// `[batch, n_heads, seq_q, seq_k]`.
    #[fusion(dtype = scores, shape = scores)]
    fn qkv_gpu_scaled_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Exact GELU, elementwise.
    #[fusion(dtype = x, shape = x)]
    fn qkv_gpu_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// GELU's tanh approximation, elementwise.
    #[fusion(dtype = x, shape = x)]
    fn qkv_gpu_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Inverted dropout with the counter-based mask of `seed`; its backward pass is the same
    /// op on the gradient.
    #[fusion(dtype = x, shape = x)]
    fn qkv_gpu_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self>;

    /// Attention without materialised probabilities (see [`super::gpu_flash`]). `q`, `k`,
    /// `v`: `[batch, n_heads, seq, d_head]`; returns `[batch, n_heads, seq_q, d_head]`.
    /// `dropout`: the probability and the seed of its mask.
    #[fusion(dtype = q, shape = q)]
    fn qkv_gpu_flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> FloatTensor<Self>;

    /// Each row's softmax cross-entropy of `logits` (`[rows, vocab]`) against `targets`
    /// (`[rows]`, ids as floats, negative = ignored), with label smoothing: `[rows]`.
    #[fusion(meta = |logits: &TensorSpec, _targets: &TensorSpec, _smoothing: &f64| {
        TensorSpec::new(Shape::new([logits.shape[0]]), logits.dtype)
    })]
    fn qkv_gpu_cross_entropy_rows(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        smoothing: f64,
    ) -> FloatTensor<Self>;
}

/// The backward kernels that the autodiff implementation of [`GpuFusedOps`] calls on its inner
/// backend.
#[backend_extension(Cube, Fusion)]
pub trait GpuFusedBackward: Backend {
    /// LayerNorm's backward pass: `(dx, dgamma, dbeta)` from `x`, `gamma` and `dy`.
    #[fusion(meta = |x: &TensorSpec, gamma: &TensorSpec, _dy: &TensorSpec, _eps: &f64| {
        (x.clone(), gamma.clone(), gamma.clone())
    })]
    fn qkv_gpu_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The scaled softmax's backward pass from its output `probs` and `dprobs`.
    #[fusion(dtype = probs, shape = probs)]
    fn qkv_gpu_scaled_softmax_backward(
        probs: FloatTensor<Self>,
        dprobs: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;

    /// GELU's backward pass from its input `x` and `dy`.
    #[fusion(dtype = x, shape = x)]
    fn qkv_gpu_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The tanh approximation's backward pass from its input `x` and `dy`.
    #[fusion(dtype = x, shape = x)]
    fn qkv_gpu_gelu_tanh_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>)
    -> FloatTensor<Self>;

    /// [`GpuFusedOps::qkv_gpu_flash_attention`] that also returns each query's log-sum-exp,
    /// `[batch, n_heads, seq_q]`, which its backward pass needs.
    #[fusion(meta = |q: &TensorSpec, _k: &TensorSpec, _v: &TensorSpec, _causal: &bool,
        _scale: &f64, _dropout: &Option<(f64, u64)>| {
        let lse = Shape::new([q.shape[0], q.shape[1], q.shape[2]]);
        (q.clone(), TensorSpec::new(lse, q.dtype))
    })]
    fn qkv_gpu_flash_attention_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Flash attention's backward pass: `(dq, dk, dv)` from the forward pass's inputs,
    /// output, log-sum-exp and the output's gradient `dout`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |q: &TensorSpec, k: &TensorSpec, v: &TensorSpec, _out: &TensorSpec,
        _lse: &TensorSpec, _dout: &TensorSpec, _causal: &bool, _scale: &f64,
        _dropout: &Option<(f64, u64)>| (q.clone(), k.clone(), v.clone()))]
    fn qkv_gpu_flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// [`GpuFusedOps::qkv_gpu_cross_entropy_rows`] with each row loss's gradient with respect to
    /// the logits (`[rows, vocab]`, zero rows where ignored).
    #[fusion(meta = |logits: &TensorSpec, _targets: &TensorSpec, _smoothing: &f64| {
        let rows = Shape::new([logits.shape[0]]);
        (TensorSpec::new(rows, logits.dtype), logits.clone())
    })]
    fn qkv_gpu_cross_entropy_rows_with_grad(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        smoothing: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl GpuFusedOps for CubeBackend {
    fn qkv_gpu_layer_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        eps: f64,
    ) -> CubeTensor {
        gpu_rows::layer_norm(x, gamma, beta, eps)
    }

    fn qkv_gpu_scaled_softmax(scores: CubeTensor, scale: f64, causal: bool) -> CubeTensor {
        gpu_rows::scaled_softmax(scores, scale, causal)
    }

    fn qkv_gpu_gelu(x: CubeTensor) -> CubeTensor {
        kernels::gelu(x)
    }

    fn qkv_gpu_gelu_tanh(x: CubeTensor) -> CubeTensor {
        kernels::gelu_tanh(x)
    }

    fn qkv_gpu_dropout(x: CubeTensor, prob: f64, seed: u64) -> CubeTensor {
        kernels::dropout(x, prob, seed)
    }

    fn qkv_gpu_flash_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> CubeTensor {
        gpu_flash::flash_attention(q, k, v, causal, scale, dropout).0
    }

    fn qkv_gpu_cross_entropy_rows(
        logits: CubeTensor,
        targets: CubeTensor,
        smoothing: f64,
    ) -> CubeTensor {
        gpu_rows::cross_entropy_rows(logits, targets, smoothing, false).0
    }
}

impl GpuFusedBackward for CubeBackend {
    fn qkv_gpu_layer_norm_backward(
        x: CubeTensor,
        gamma: CubeTensor,
        dy: CubeTensor,
        eps: f64,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        gpu_rows::layer_norm_backward(x, gamma, dy, eps)
    }

    fn qkv_gpu_scaled_softmax_backward(
        probs: CubeTensor,
        dprobs: CubeTensor,
        scale: f64,
    ) -> CubeTensor {
        gpu_rows::scaled_softmax_backward(probs, dprobs, scale)
    }

    fn qkv_gpu_gelu_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
        kernels::gelu_backward(x, dy)
    }

    fn qkv_gpu_gelu_tanh_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
        kernels::gelu_tanh_backward(x, dy)
    }

    fn qkv_gpu_flash_attention_with_lse(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> (CubeTensor, CubeTensor) {
        gpu_flash::flash_attention(q, k, v, causal, scale, dropout)
    }

    fn qkv_gpu_flash_attention_backward(
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
        gpu_flash::flash_attention_backward(q, k, v, out, lse, dout, causal, scale, dropout)
    }

    fn qkv_gpu_cross_entropy_rows_with_grad(
        logits: CubeTensor,
        targets: CubeTensor,
        smoothing: f64,
    ) -> (CubeTensor, CubeTensor) {
        let (loss, grad) = gpu_rows::cross_entropy_rows(logits, targets, smoothing, true);
        (loss, grad.expect("asked for the gradient"))
    }
}

/// LayerNorm's autodiff node: keeps `x`, `gamma` and `eps`.
#[derive(Debug)]
struct LayerNormNode;

impl<B: GpuFusedBackward> Backward<B, 3> for LayerNormNode {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, gamma, eps) = ops.state;
        let (dx, dgamma, dbeta) = B::qkv_gpu_layer_norm_backward(x, gamma, dy, eps);
        for (node, grad) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The scaled softmax's autodiff node: keeps its output and the scale.
#[derive(Debug)]
struct ScaledSoftmaxNode;

impl<B: GpuFusedBackward> Backward<B, 1> for ScaledSoftmaxNode {
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dprobs = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            let (probs, scale) = ops.state;
            let ds = B::qkv_gpu_scaled_softmax_backward(probs, dprobs, scale);
            grads.register::<B>(node.id, ds);
        }
    }
}

/// A GELU's autodiff node (exact when `tanh` is false): keeps its input.
#[derive(Debug)]
struct GeluNode {
    tanh: bool,
}

impl<B: GpuFusedBackward> Backward<B, 1> for GeluNode {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            let dx = if self.tanh {
                B::qkv_gpu_gelu_tanh_backward(ops.state, dy)
            } else {
                B::qkv_gpu_gelu_backward(ops.state, dy)
            };
            grads.register::<B>(node.id, dx);
        }
    }
}

/// Dropout's autodiff node: keeps the probability and the seed, and recomputes the mask.
#[derive(Debug)]
struct DropoutNode;

impl<B: GpuFusedOps> Backward<B, 1> for DropoutNode {
    type State = (f64, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            let (prob, seed) = ops.state;
            grads.register::<B>(node.id, B::qkv_gpu_dropout(dy, prob, seed));
        }
    }
}

/// Flash attention's autodiff node: keeps the inputs, the output and its log-sum-exp, and
/// the options.
#[derive(Debug)]
struct FlashNode;

/// What [`FlashNode`] keeps for its backward pass.
type FlashState<B> = (
    [FloatTensor<B>; 3],
    FloatTensor<B>,
    FloatTensor<B>,
    bool,
    f64,
    Option<(f64, u64)>,
);

impl<B: GpuFusedBackward> Backward<B, 3> for FlashNode {
    type State = FlashState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<B>(&ops.node);
        let ([q, k, v], out, lse, causal, scale, dropout) = ops.state;
        let (dq, dk, dv) =
            B::qkv_gpu_flash_attention_backward(q, k, v, out, lse, dout, causal, scale, dropout);
        for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The row losses' autodiff node: keeps the gradient of each row's loss, written by the
/// forward kernel, and scales each row by its incoming gradient.
#[derive(Debug)]
struct CrossEntropyNode;

impl<B: GpuFusedBackward> Backward<B, 2> for CrossEntropyNode {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [logits_node, _targets] = ops.parents;
        let drows = grads.consume::<B>(&ops.node);
        if let Some(node) = logits_node {
            let grad = ops.state;
            let rows = grad.shape()[0];
            let drows = B::float_reshape(drows, Shape::new([rows, 1]));
            grads.register::<B>(node.id, B::float_mul(grad, drows));
        }
    }
}

/// One GELU (exact or tanh) as an autodiff node.
fn autodiff_gelu<B: GpuFusedOps + GpuFusedBackward, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    tanh: bool,
) -> FloatTensor<Autodiff<B, C>> {
    {
        let forward = |x| {
            if tanh {
                B::qkv_gpu_gelu_tanh(x)
            } else {
                B::qkv_gpu_gelu(x)
            }
        };
        let prep = GeluNode { tanh }
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        match prep {
            OpsKind::Tracked(prep) => {
                let out = forward(x.clone());
                prep.finish(x, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x)),
        }
    }
}

impl<B: GpuFusedOps + GpuFusedBackward, C: CheckpointStrategy> GpuFusedOps for Autodiff<B, C> {
    fn qkv_gpu_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let prep = LayerNormNode
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::qkv_gpu_layer_norm(x.clone(), gamma.clone(), beta, eps);
                prep.finish((x, gamma, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qkv_gpu_layer_norm(x, gamma, beta, eps)),
        }
    }

    fn qkv_gpu_scaled_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        causal: bool,
    ) -> FloatTensor<Self> {
        let prep = ScaledSoftmaxNode
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful();
        let out = B::qkv_gpu_scaled_softmax(scores.into_primitive(), scale, causal);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((out.clone(), scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn qkv_gpu_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        autodiff_gelu::<B, C>(x, false)
    }

    fn qkv_gpu_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        autodiff_gelu::<B, C>(x, true)
    }

    fn qkv_gpu_flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> FloatTensor<Self> {
        let prep = FlashNode
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::qkv_gpu_flash_attention_with_lse(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    causal,
                    scale,
                    dropout,
                );
                let state = ([q, k, v], out.clone(), lse, causal, scale, dropout);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::qkv_gpu_flash_attention(q, k, v, causal, scale, dropout))
            }
        }
    }

    fn qkv_gpu_cross_entropy_rows(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        smoothing: f64,
    ) -> FloatTensor<Self> {
        let prep = CrossEntropyNode
            .prepare::<C>([logits.node(), targets.node()])
            .compute_bound()
            .stateful();
        let (logits, targets) = (logits.into_primitive(), targets.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let (loss, grad) =
                    B::qkv_gpu_cross_entropy_rows_with_grad(logits, targets, smoothing);
                prep.finish(grad, loss)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::qkv_gpu_cross_entropy_rows(logits, targets, smoothing))
            }
        }
    }

    fn qkv_gpu_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        let prep = DropoutNode
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let out = B::qkv_gpu_dropout(x.into_primitive(), prob, seed);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((prob, seed), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
