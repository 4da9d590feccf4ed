//! The Burn glue of the GPU kernels ([`super::gpu_kernels`]): two backend extension traits
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
use burn::backend::{Autodiff, Backend, backend_extension};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;

use super::gpu_kernels as kernels;

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
}

impl GpuFusedOps for CubeBackend {
    fn qkv_gpu_layer_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        eps: f64,
    ) -> CubeTensor {
        kernels::layer_norm(x, gamma, beta, eps)
    }

    fn qkv_gpu_scaled_softmax(scores: CubeTensor, scale: f64, causal: bool) -> CubeTensor {
        kernels::scaled_softmax(scores, scale, causal)
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
}

impl GpuFusedBackward for CubeBackend {
    fn qkv_gpu_layer_norm_backward(
        x: CubeTensor,
        gamma: CubeTensor,
        dy: CubeTensor,
        eps: f64,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        kernels::layer_norm_backward(x, gamma, dy, eps)
    }

    fn qkv_gpu_scaled_softmax_backward(
        probs: CubeTensor,
        dprobs: CubeTensor,
        scale: f64,
    ) -> CubeTensor {
        kernels::scaled_softmax_backward(probs, dprobs, scale)
    }

    fn qkv_gpu_gelu_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
        kernels::gelu_backward(x, dy)
    }

    fn qkv_gpu_gelu_tanh_backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
        kernels::gelu_tanh_backward(x, dy)
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
